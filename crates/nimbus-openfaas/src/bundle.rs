//! Function bundles: what an OpenFaaS `image` names in Nimbus, and how one is built.
//!
//! A bundle is a directory (or a `.tar`/`.tar.gz` of one) holding the user's code under
//! `function/` and its language in `nimbus.json` (`{"lang": "python3-http"}`) or in an OpenFaaS
//! `template.yml` (`language: python3-http`). Dependencies live beside it: `packages/` (pip
//! `--target`) for Python, `function/node_modules/` for Node.js. At deploy time the gateway turns
//! a bundle into an action: a zip of the bundle plus the language's adapter
//! (`nimbus_runtime::openfaas`) as entry point, and the deployment's environment.
//!
//! Building (`nimbus up`, and `POST /build` from `faas-cli --remote-builder`) starts from a
//! handler directory or an OpenFaaS shrinkwrapped build context (`function/` + template files),
//! copies the code and installs `requirements.txt` with pip / `package.json` with npm.

use crate::error::{GatewayError, Result};
use base64::Engine;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The languages (OpenFaaS template names) Nimbus bundles, with their Nimbus kind.
pub const LANGS: &[(&str, &str)] = &[
    ("python3-http", "python:3.11"),
    ("python3", "python:3.11"),
    ("node20", "nodejs:20"),
    ("exec", "python:3.11"),
    ("rust-wasm", "wasm:http"),
];

/// Nimbus kind of an OpenFaaS language.
pub fn kind_of(lang: &str) -> Option<&'static str> {
    let lang = match lang {
        "python3-http-debian" | "python3-flask" | "python3-http" => "python3-http",
        "python" | "python3" | "python3-debian" => "python3",
        "node" | "node18" | "node20" | "node22" => "node20",
        other => other,
    };
    LANGS.iter().find(|(l, _)| *l == lang).map(|(_, k)| *k)
}

fn canonical_lang(lang: &str) -> &str {
    match lang {
        "python3-http-debian" | "python3-flask" => "python3-http",
        "python" | "python3-debian" => "python3",
        "node" | "node18" | "node22" => "node20",
        other => other,
    }
}

/// What an action is made of: its kind and its code (base64 zip).
#[derive(Debug, Clone)]
pub struct ActionCode {
    pub lang: String,
    pub kind: String,
    pub code_base64: String,
}

/// Largest bundle zip (the action code limit, 48 MB).
const MAX_ZIP: usize = nimbus_model::exec::MAX_CODE_BYTES / 4 * 3;

/// Reads the language of a bundle or build context directory.
pub fn read_lang(dir: &Path) -> Option<String> {
    if let Ok(s) = std::fs::read_to_string(dir.join("nimbus.json"))
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&s)
        && let Some(l) = v.get("lang").and_then(|l| l.as_str())
    {
        return Some(l.to_string());
    }
    let yml = std::fs::read_to_string(dir.join("template.yml")).ok()?;
    yml.lines().find_map(|l| {
        l.strip_prefix("language:")
            .map(|v| v.trim().trim_matches('"').to_string())
    })
}

/// A bundle directory from an `image` reference: `file:///dir`, `file:///x.tar[.gz]`, or the
/// name of a bundle built by `POST /build` (kept under `built`).
pub fn resolve_image(image: &str, built: &Path) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    if let Some(p) = image.strip_prefix("file://") {
        let path = PathBuf::from(p);
        if path.is_dir() {
            return Ok((path, None));
        }
        if path.is_file() {
            let tmp = tempfile::tempdir().map_err(|e| GatewayError::io("temporary dir", e))?;
            let data = std::fs::read(&path).map_err(|e| GatewayError::io("reading bundle", e))?;
            unpack_tar(&data, tmp.path())?;
            let root = tmp.path().to_path_buf();
            return Ok((root, Some(tmp)));
        }
        return Err(GatewayError::BadRequest(format!(
            "image '{image}': no such bundle directory or tarball on the server"
        )));
    }
    let dir = built.join(image_dir_name(image));
    if dir.is_dir() {
        return Ok((dir, None));
    }
    Err(GatewayError::BadRequest(format!(
        "image '{image}' is not a Nimbus function bundle: use file:///path/to/bundle (a directory or tarball built by `nimbus up`), or build it first with faas-cli --remote-builder (POST /build); container images are not run"
    )))
}

/// Directory name of a built image (`registry/name:tag` → safe characters only).
pub fn image_dir_name(image: &str) -> String {
    let image = if image.rsplit('/').next().is_some_and(|l| !l.contains(':')) {
        format!("{image}:latest")
    } else {
        image.to_string()
    };
    image
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Extracts a tar (optionally gzip-compressed) into `dir`, refusing paths that leave it.
pub fn unpack_tar(data: &[u8], dir: &Path) -> Result<()> {
    let reader: Box<dyn Read> = if data.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(data))
    } else {
        Box::new(data)
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    let entries = ar
        .entries()
        .map_err(|e| GatewayError::BadRequest(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| GatewayError::BadRequest(format!("bad tar entry: {e}")))?;
        // unpack_in refuses `..` and absolute paths.
        entry
            .unpack_in(dir)
            .map_err(|e| GatewayError::BadRequest(format!("cannot extract tar entry: {e}")))?;
    }
    Ok(())
}

/// Zips a bundle into an action's code, with the adapter of its language and the environment.
pub fn package(bundle: &Path, env: &BTreeMap<String, String>) -> Result<ActionCode> {
    let lang = read_lang(bundle).ok_or_else(|| {
        GatewayError::BadRequest(
            "the bundle names no language: it needs nimbus.json {\"lang\": ...} or template.yml"
                .into(),
        )
    })?;
    let lang = canonical_lang(&lang).to_string();
    let kind = kind_of(&lang).ok_or_else(|| {
        GatewayError::BadRequest(format!(
            "language '{lang}' is not supported; supported: {}",
            LANGS.iter().map(|l| l.0).collect::<Vec<_>>().join(", ")
        ))
    })?;
    if kind.starts_with("wasm:") {
        return Err(GatewayError::BadRequest(format!(
            "language '{lang}' needs the WebAssembly kinds, which this build does not include yet"
        )));
    }
    let function = bundle.join("function");
    if !function.is_dir() {
        return Err(GatewayError::BadRequest(
            "the bundle has no function/ directory".into(),
        ));
    }
    let adapter: &[(&str, &str)] = match lang.as_str() {
        "python3-http" => &[("__main__.py", nimbus_runtime::openfaas::PYTHON_HTTP)],
        "python3" => &[("__main__.py", nimbus_runtime::openfaas::PYTHON_CLASSIC)],
        "exec" => &[("__main__.py", nimbus_runtime::openfaas::EXEC_FORK)],
        _ => &[
            ("index.js", nimbus_runtime::openfaas::NODE_HTTP),
            ("package.json", "{\"main\": \"index.js\"}\n"),
        ],
    };
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = |mode: u32| {
        zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(mode)
    };
    let zerr = |e: zip::result::ZipError| GatewayError::io("building the bundle zip", e);
    let werr = |e: std::io::Error| GatewayError::io("building the bundle zip", e);
    for (name, text) in adapter {
        w.start_file(*name, opts(0o644)).map_err(zerr)?;
        w.write_all(text.as_bytes()).map_err(werr)?;
    }
    let env_json = serde_json::to_vec(env).map_err(|e| GatewayError::io("environment", e))?;
    w.start_file("openfaas.env.json", opts(0o644))
        .map_err(zerr)?;
    w.write_all(&env_json).map_err(werr)?;
    if kind.starts_with("python") && !function.join("__init__.py").exists() {
        w.start_file("function/__init__.py", opts(0o644))
            .map_err(zerr)?;
    }
    let mut total = 0usize;
    for top in ["function", "packages"] {
        let root = bundle.join(top);
        if root.is_dir() {
            add_dir(&mut w, bundle, &root, &mut total)?;
        }
    }
    let bytes = w.finish().map_err(zerr)?.into_inner();
    if bytes.len() > MAX_ZIP {
        return Err(GatewayError::TooLarge(format!(
            "the bundle is {} bytes zipped, over the limit of {MAX_ZIP} bytes",
            bytes.len()
        )));
    }
    Ok(ActionCode {
        lang,
        kind: kind.to_string(),
        code_base64: base64::engine::general_purpose::STANDARD.encode(bytes),
    })
}

fn add_dir<W: Write + std::io::Seek>(
    w: &mut zip::ZipWriter<W>,
    base: &Path,
    dir: &Path,
    total: &mut usize,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| GatewayError::io("reading the bundle", e))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| GatewayError::io("reading the bundle", e))?;
        let Ok(rel) = path.strip_prefix(base) else {
            continue;
        };
        let name = rel.to_string_lossy().to_string();
        if meta.is_dir() {
            if name.ends_with("__pycache__") {
                continue;
            }
            add_dir(w, base, &path, total)?;
        } else if meta.is_file() {
            let data =
                std::fs::read(&path).map_err(|e| GatewayError::io("reading the bundle", e))?;
            *total += data.len();
            if *total > 4 * MAX_ZIP {
                return Err(GatewayError::TooLarge(
                    "the bundle is too large (over 144 MB unpacked)".into(),
                ));
            }
            let mode = meta.permissions().mode() & 0o777;
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .unix_permissions(mode | 0o444);
            w.start_file(name, opts)
                .map_err(|e| GatewayError::io("building the bundle zip", e))?;
            w.write_all(&data)
                .map_err(|e| GatewayError::io("building the bundle zip", e))?;
        }
        // Symlinks are skipped: a bundle must not point outside itself.
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let ft = e.file_type()?;
        let dest = to.join(e.file_name());
        if ft.is_dir() {
            if e.file_name() == "node_modules" || e.file_name() == "__pycache__" {
                continue;
            }
            copy_dir(&e.path(), &dest)?;
        } else if ft.is_file() {
            std::fs::copy(e.path(), &dest)?;
        }
    }
    Ok(())
}

/// One step of a build, for progress reporting.
pub trait BuildProgress {
    fn step(&mut self, message: &str);
}

impl<F: FnMut(&str)> BuildProgress for F {
    fn step(&mut self, message: &str) {
        self(message)
    }
}

/// Builds a bundle in `out` (emptied first) from `handler` (the function's code, which becomes
/// `function/`) for `lang`, installing its dependencies.
pub fn build(
    lang: &str,
    handler: &Path,
    out: &Path,
    progress: &mut dyn BuildProgress,
) -> Result<()> {
    let lang = canonical_lang(lang);
    if kind_of(lang).is_none() {
        return Err(GatewayError::BadRequest(format!(
            "language '{lang}' is not supported; supported: {}",
            LANGS.iter().map(|l| l.0).collect::<Vec<_>>().join(", ")
        )));
    }
    if !handler.is_dir() {
        return Err(GatewayError::BadRequest(format!(
            "handler directory {} does not exist",
            handler.display()
        )));
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| GatewayError::io("cleaning the bundle", e))?;
    }
    progress.step("copying the handler");
    copy_dir(handler, &out.join("function")).map_err(|e| GatewayError::io("copying", e))?;
    std::fs::write(
        out.join("nimbus.json"),
        serde_json::json!({ "lang": lang }).to_string(),
    )
    .map_err(|e| GatewayError::io("writing nimbus.json", e))?;
    let req = out.join("function").join("requirements.txt");
    if lang.starts_with("python")
        && std::fs::metadata(&req).is_ok_and(|m| m.len() > 0)
        && std::fs::read_to_string(&req).is_ok_and(|s| {
            s.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
    {
        progress.step("pip install -r requirements.txt");
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-warn-script-location",
                "-r",
            ])
            .arg(&req)
            .arg("--target")
            .arg(out.join("packages")))?;
    }
    let pkg = out.join("function").join("package.json");
    if lang == "node20" && pkg.is_file() {
        progress.step("npm install");
        run(Command::new("npm")
            .args([
                "install",
                "--omit=dev",
                "--no-audit",
                "--no-fund",
                "--silent",
            ])
            .current_dir(out.join("function")))?;
    }
    if lang == "exec" {
        use std::os::unix::fs::PermissionsExt;
        let h = out.join("function").join("handler");
        if h.is_file() {
            let _ = std::fs::set_permissions(&h, std::fs::Permissions::from_mode(0o755));
        }
    }
    progress.step("done");
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .map_err(|e| GatewayError::Internal(format!("cannot run {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(GatewayError::BadRequest(format!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Builds from an OpenFaaS shrinkwrapped context (`function/` + template files; the language in
/// `template.yml`), as `faas-cli build --shrinkwrap` / `--remote-builder` sends it.
pub fn build_from_context(
    context: &Path,
    out: &Path,
    progress: &mut dyn BuildProgress,
) -> Result<String> {
    let lang = read_lang(context).unwrap_or_else(|| {
        // Templates without template.yml in the context: guess from the entry file.
        if context.join("index.js").is_file() {
            "node20".into()
        } else if context.join("function").join("handler.py").is_file() {
            if std::fs::read_to_string(context.join("index.py"))
                .is_ok_and(|s| s.contains("statusCode") || s.contains("waitress"))
            {
                "python3-http".into()
            } else {
                "python3".into()
            }
        } else {
            "exec".into()
        }
    });
    build(&lang, &context.join("function"), out, progress)?;
    Ok(canonical_lang(&lang).to_string())
}
