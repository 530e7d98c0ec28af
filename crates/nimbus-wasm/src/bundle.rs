//! Zip uploads: the `.wasm` inside, and the read-only directory a function may bundle with it
//! (annotation `wasm-dir`, see `docs/wasm.md`).

use crate::init_error;
use nimbus_runtime::RuntimeError;
use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Most entries and bytes a bundled directory may unpack to.
const MAX_ENTRIES: usize = 10_000;
const MAX_EXTRACTED_BYTES: u64 = 256 << 20;
/// Largest `.wasm` read out of an archive.
const MAX_WASM_BYTES: u64 = 128 << 20;

/// Whether `bytes` are a zip archive (local file header).
pub(crate) fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

fn bad(e: &dyn std::fmt::Display) -> RuntimeError {
    init_error(format!("the zip archive cannot be read: {e}"))
}

/// `name` as a relative path of normal components only.
fn safe_path(name: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// The module of an archive: `main.wasm` at its root, else its only root-level `.wasm` file.
pub(crate) fn wasm_of_zip(bytes: &[u8]) -> Result<Vec<u8>, RuntimeError> {
    let mut archive = zip::ZipArchive::new(io::Cursor::new(bytes)).map_err(|e| bad(&e))?;
    let mut candidates = Vec::new();
    for i in 0..archive.len() {
        let entry = archive.by_index(i).map_err(|e| bad(&e))?;
        let name = entry.name().map_err(|e| bad(&e))?.into_owned();
        if !entry.is_dir() && !name.contains('/') && name.ends_with(".wasm") {
            candidates.push((i, name));
        }
    }
    let index = match candidates.iter().find(|(_, n)| n == "main.wasm") {
        Some((i, _)) => *i,
        None => match candidates.as_slice() {
            [(i, _)] => *i,
            [] => {
                return Err(init_error(
                    "the zip archive holds no .wasm file at its root (name it main.wasm)",
                ));
            }
            _ => {
                return Err(init_error(
                    "the zip archive holds several .wasm files at its root; name the function's main.wasm",
                ));
            }
        },
    };
    let entry = archive.by_index(index).map_err(|e| bad(&e))?;
    let mut out = Vec::new();
    entry
        .take(MAX_WASM_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(&e))?;
    if out.len() as u64 > MAX_WASM_BYTES {
        return Err(init_error(format!(
            "the .wasm in the archive is over {} MB",
            MAX_WASM_BYTES >> 20
        )));
    }
    Ok(out)
}

/// Where the directory `dir` of the archive `zip` is unpacked under `root`: the guest sees the
/// returned directory at `/`, so the files keep their archive paths (`/static/...`).
pub(crate) fn bundle_path(root: &Path, zip: &[u8], dir: &str) -> PathBuf {
    let mut h = Sha256::new();
    h.update(zip);
    h.update([0]);
    h.update(dir.as_bytes());
    root.join(hex::encode(h.finalize()))
}

/// Unpacks the entries under `dir/` of the archive into `target` (once: an existing `target` is
/// complete, because it is renamed into place only after a full extraction). Refuses archives
/// without that directory, unsafe paths, symlinks and oversized contents.
pub(crate) fn extract_dir(zip: &[u8], dir: &str, target: &Path) -> Result<(), RuntimeError> {
    if target.is_dir() {
        return Ok(());
    }
    let mut archive = zip::ZipArchive::new(io::Cursor::new(zip)).map_err(|e| bad(&e))?;
    if archive.len() > MAX_ENTRIES {
        return Err(init_error(format!(
            "the zip archive has more than {MAX_ENTRIES} entries"
        )));
    }
    let prefix = PathBuf::from(dir);
    let parent = target.parent().unwrap_or(target);
    std::fs::create_dir_all(parent).map_err(|e| platform(parent, &e))?;
    let tmp = target.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join(&prefix)).map_err(|e| platform(&tmp, &e))?;
    let result = (|| {
        let mut total = 0u64;
        let mut found = false;
        for i in 0..archive.len() {
            let mut entry = archive.by_index(i).map_err(|e| bad(&e))?;
            let name = entry.name().map_err(|e| bad(&e))?.into_owned();
            let rel = safe_path(&name).ok_or_else(|| {
                init_error(format!("the zip archive contains an unsafe path: '{name}'"))
            })?;
            if !rel.starts_with(&prefix) {
                continue;
            }
            found = true;
            if entry.is_symlink() {
                return Err(init_error(format!(
                    "the zip archive contains a symbolic link ('{name}'), which is not supported"
                )));
            }
            let out_path = tmp.join(&rel);
            if entry.is_dir() {
                std::fs::create_dir_all(&out_path).map_err(|e| platform(&out_path, &e))?;
                continue;
            }
            if let Some(p) = out_path.parent() {
                std::fs::create_dir_all(p).map_err(|e| platform(p, &e))?;
            }
            let mut out = std::fs::File::create(&out_path).map_err(|e| platform(&out_path, &e))?;
            // Whatever mode the archive stores (0600 from Python's `zipfile.writestr`): the
            // guest only reads, through this process.
            out.set_permissions(std::fs::Permissions::from_mode(0o644))
                .map_err(|e| platform(&out_path, &e))?;
            let room = MAX_EXTRACTED_BYTES - total;
            total += io::copy(&mut (&mut entry).take(room + 1), &mut out).map_err(|e| bad(&e))?;
            if total > MAX_EXTRACTED_BYTES {
                return Err(init_error(format!(
                    "the bundled directory expands to more than {} MB",
                    MAX_EXTRACTED_BYTES >> 20
                )));
            }
        }
        if !found {
            return Err(init_error(format!(
                "the zip archive has no directory '{dir}' (annotation wasm-dir)"
            )));
        }
        Ok(())
    })();
    match result {
        Ok(()) => match std::fs::rename(&tmp, target) {
            Ok(()) => Ok(()),
            // Another start extracted it first.
            Err(_) if target.is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(platform(target, &e))
            }
        },
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn platform(path: &Path, e: &dyn std::fmt::Display) -> RuntimeError {
    RuntimeError::Platform(format!(
        "cannot unpack the bundled directory at {}: {e}",
        path.display()
    ))
}
