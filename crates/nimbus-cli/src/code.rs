//! Action code files: kind inference from the file name and the encoding sent to the server.

use std::path::Path;

use base64::Engine;

use crate::error::{CliError, CliResult};

/// The kind for a code file when `--kind` is not given: `.js` → `nodejs:default`,
/// `.py` → `python:default`, `.wasm` → `wasm` (the server infers `wasm:wasi` or `wasm:http`),
/// `.zip` → an error (a zip needs `--kind`), anything else → `exec`
/// (a native executable or a script with a `#!` line).
pub fn infer_kind(path: &Path) -> CliResult<String> {
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "js" | "mjs" | "cjs" => Ok("nodejs:default".to_string()),
        "py" => Ok("python:default".to_string()),
        // The server reads the binary: wasm:http for a wasi:http component, else wasm:wasi.
        "wasm" => Ok("wasm".to_string()),
        "zip" => Err(CliError::usage(format!(
            "{}: a zip file needs --kind (e.g. --kind nodejs:default or --kind python:default)",
            path.display()
        ))),
        _ => Ok("exec".to_string()),
    }
}

/// Code as sent in `exec.code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    pub code: String,
    /// True when `code` is base64 (zip files and anything that is not UTF-8).
    pub base64: bool,
}

/// Encodes file contents: zip and wasm files and non-UTF-8 contents are sent base64, text as is.
pub fn encode_code(path: &Path, bytes: Vec<u8>) -> Code {
    // A small wasm module can be valid UTF-8 (`\0asm...`), but it is always binary code.
    let is_zip = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("zip") || e.eq_ignore_ascii_case("wasm"));
    if !is_zip {
        match String::from_utf8(bytes) {
            Ok(text) => {
                return Code {
                    code: text,
                    base64: false,
                };
            }
            Err(e) => return base64_code(e.as_bytes()),
        }
    }
    base64_code(&bytes)
}

fn base64_code(bytes: &[u8]) -> Code {
    Code {
        code: base64::engine::general_purpose::STANDARD.encode(bytes),
        base64: true,
    }
}

/// Reads a code file.
pub fn read_code(path: &Path) -> CliResult<Code> {
    let bytes = std::fs::read(path)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    if bytes.is_empty() {
        return Err(CliError::usage(format!("{} is empty", path.display())));
    }
    Ok(encode_code(path, bytes))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_extensions() {
        assert_eq!(infer_kind(Path::new("hello.js")).unwrap(), "nodejs:default");
        assert_eq!(
            infer_kind(Path::new("dir/x.MJS")).unwrap(),
            "nodejs:default"
        );
        assert_eq!(infer_kind(Path::new("a.py")).unwrap(), "python:default");
        assert_eq!(infer_kind(Path::new("run.sh")).unwrap(), "exec");
        assert_eq!(infer_kind(Path::new("binary")).unwrap(), "exec");
        assert_eq!(infer_kind(Path::new("f.wasm")).unwrap(), "wasm");
        let err = infer_kind(Path::new("bundle.zip")).unwrap_err();
        assert!(err.message.contains("--kind"));
    }

    #[test]
    fn encoding() {
        let text = encode_code(Path::new("a.js"), b"function main(){}".to_vec());
        assert_eq!(text.code, "function main(){}");
        assert!(!text.base64);
        let wasm = encode_code(Path::new("a.wasm"), b"\0asm\x01\0\0\0".to_vec());
        assert!(wasm.base64);
        assert_eq!(wasm.code, "AGFzbQEAAAA=");
        let zip = encode_code(Path::new("a.zip"), b"PK\x03\x04".to_vec());
        assert!(zip.base64);
        assert_eq!(zip.code, "UEsDBA==");
        let binary = encode_code(Path::new("exe"), vec![0x7f, b'E', b'L', b'F', 0xff, 0xfe]);
        assert!(binary.base64);
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(binary.code)
                .unwrap(),
            vec![0x7f, b'E', b'L', b'F', 0xff, 0xfe]
        );
    }

    #[test]
    fn reading_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.py");
        std::fs::write(&path, "def main(a):\n  return a\n").unwrap();
        assert!(!read_code(&path).unwrap().base64);
        std::fs::write(&path, "").unwrap();
        assert!(read_code(&path).is_err());
        assert!(read_code(&dir.path().join("missing.py")).is_err());
    }
}
