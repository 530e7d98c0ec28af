//! The built `examples/wasm` artifacts, shared by the runtime's tests and the server's (included
//! with `#[path]`): `scripts/build-wasm-examples.sh` builds them once into `<target>/wasm-examples`
//! (a no-op when the sources are unchanged), or `NIMBUS_WASM_EXAMPLES` names a directory.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The directory holding the built examples.
pub fn examples_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("NIMBUS_WASM_EXAMPLES") {
            return PathBuf::from(dir);
        }
        let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("target dir")
            .to_path_buf();
        let dir = target.join("wasm-examples");
        // Both including crates live at crates/<name>.
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-wasm-examples.sh");
        let status = std::process::Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .expect("run scripts/build-wasm-examples.sh");
        assert!(
            status.success(),
            "scripts/build-wasm-examples.sh {} failed (see its output above)",
            dir.display()
        );
        dir
    })
}

/// One built example, e.g. `rust-wasi.wasm`.
pub fn example(file: &str) -> Vec<u8> {
    let path = examples_dir().join(file);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (build the examples with scripts/build-wasm-examples.sh)",
            path.display()
        )
    })
}
