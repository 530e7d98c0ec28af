//! Runtime kinds: the names users give, the `:default` aliases, and the families.

use crate::error::ModelError;

/// A runtime family; every kind belongs to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Nodejs,
    Python,
    /// Any Linux executable speaking the ActionLoop protocol.
    Exec,
    Sequence,
    /// WebAssembly (`wasm:wasi`, `wasm:http`), run in-process by wasmtime.
    Wasm,
}

/// The kinds this build runs, with the default of each family first.
pub const KINDS: &[(&str, Family, bool)] = &[
    ("nodejs:20", Family::Nodejs, true),
    ("python:3.11", Family::Python, true),
    ("exec", Family::Exec, true),
    ("wasm:wasi", Family::Wasm, true),
    ("wasm:http", Family::Wasm, false),
];

/// Resolves aliases (`nodejs:default`, `python:3`, `blackbox`-free) to a stored kind, or says why not.
pub fn resolve_kind(kind: &str) -> Result<&'static str, ModelError> {
    let resolved = match kind {
        "nodejs:default" | "nodejs" | "nodejs:20" => "nodejs:20",
        "python:default" | "python" | "python:3" | "python:3.11" => "python:3.11",
        "exec" | "exec:default" | "native" => "exec",
        "sequence" => "sequence",
        "wasm:wasi" => crate::wasm::KIND_WASI,
        "wasm:http" => crate::wasm::KIND_HTTP,
        // Resolved by the server from the binary (a component exporting
        // wasi:http/incoming-handler is wasm:http, anything else wasm:wasi).
        "wasm" | "wasm:default" => crate::wasm::KIND_INFER,
        "blackbox" => {
            return Err(ModelError::invalid(
                "kind 'blackbox' (docker images) is not supported by Nimbus; use kind 'exec' with an executable named 'exec'",
            ));
        }
        other => {
            let known: Vec<&str> = KINDS.iter().map(|k| k.0).collect();
            return Err(ModelError::invalid(format!(
                "kind '{other}' is not supported; supported kinds: {}, plus the aliases nodejs:default, python:default and wasm (the server infers wasm:wasi or wasm:http)",
                known.join(", ")
            )));
        }
    };
    Ok(resolved)
}

pub fn family(kind: &str) -> Option<Family> {
    if kind == "sequence" {
        return Some(Family::Sequence);
    }
    if kind == crate::wasm::KIND_INFER {
        return Some(Family::Wasm);
    }
    KINDS.iter().find(|k| k.0 == kind).map(|k| k.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve() {
        assert_eq!(resolve_kind("nodejs:default").unwrap(), "nodejs:20");
        assert_eq!(resolve_kind("python:default").unwrap(), "python:3.11");
        assert_eq!(resolve_kind("exec").unwrap(), "exec");
        assert!(
            resolve_kind("java:8")
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
        assert_eq!(family("python:3.11"), Some(Family::Python));
        assert_eq!(resolve_kind("wasm").unwrap(), "wasm");
        assert_eq!(resolve_kind("wasm:http").unwrap(), "wasm:http");
        assert_eq!(family("wasm:wasi"), Some(Family::Wasm));
    }
}
