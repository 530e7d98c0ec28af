//! WebAssembly functions: the kinds and the capability annotations (see `docs/wasm.md`).
//!
//! A wasm function gets nothing beyond clocks and randomness unless its annotations grant it:
//! - `wasm-dir`: a directory inside the uploaded zip archive, visible read-only to the guest at
//!   the same path (`/static/...` for `"static"`);
//! - `wasm-env`: names of parameters whose values become environment variables;
//! - `wasm-allowed-hosts`: hosts the function may call over `wasi:http` (`example.com`,
//!   `*.example.com`, `host:port`, optionally as a URL).
//!
//! The controller hands these to the runtime in [`WasmCaps`], serialised under the reserved
//! [`CAPS_ENV_KEY`] of the instance spec's environment (never passed to the guest).

use crate::error::ModelError;
use crate::params::KeyValues;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A WASI command: parameters as JSON on stdin, the result as JSON on stdout.
pub const KIND_WASI: &str = "wasm:wasi";
/// A `wasi:http/proxy` component.
pub const KIND_HTTP: &str = "wasm:http";
/// The generic kind given at deploy: the server inspects the binary and stores `wasm:wasi` or
/// `wasm:http` instead.
pub const KIND_INFER: &str = "wasm";

pub const ANNOTATION_DIR: &str = "wasm-dir";
pub const ANNOTATION_ENV: &str = "wasm-env";
pub const ANNOTATION_ALLOWED_HOSTS: &str = "wasm-allowed-hosts";

/// Key of the instance spec's `env` that carries [`WasmCaps`] as JSON to the wasm runtime.
pub const CAPS_ENV_KEY: &str = "__NIMBUS_WASM_CAPS";

/// Whether `kind` is a WebAssembly kind (including the generic `wasm`).
pub fn is_wasm_kind(kind: &str) -> bool {
    kind == KIND_WASI || kind == KIND_HTTP || kind == KIND_INFER
}

/// What a wasm function's annotations grant (empty: nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmCaps {
    /// Directory of the zip archive mounted read-only (a relative path, `/`-separated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Parameters passed as environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Outbound HTTP allowlist (patterns, checked by the runtime).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
}

fn string_list(v: &Value, name: &str) -> Result<Vec<String>, ModelError> {
    let items: Vec<String> = match v {
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str().map(str::to_string).ok_or_else(|| {
                    ModelError::invalid(format!(
                        "annotation '{name}' must be a list of strings (or one comma-separated string)"
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
        Value::Null => Vec::new(),
        _ => {
            return Err(ModelError::invalid(format!(
                "annotation '{name}' must be a list of strings (or one comma-separated string)"
            )));
        }
    };
    Ok(items)
}

impl WasmCaps {
    /// Reads and checks the capability annotations of an action.
    pub fn from_annotations(a: &KeyValues) -> Result<WasmCaps, ModelError> {
        let dir = match a.get(ANNOTATION_DIR) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                let d = s.trim().trim_matches('/');
                if d.is_empty()
                    || d.split('/')
                        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
                    || d.contains('\\')
                {
                    return Err(ModelError::invalid(format!(
                        "annotation '{ANNOTATION_DIR}' must name a directory of the zip archive (e.g. \"static\"), not {s:?}"
                    )));
                }
                Some(d.to_string())
            }
            Some(_) => {
                return Err(ModelError::invalid(format!(
                    "annotation '{ANNOTATION_DIR}' must be a string naming a directory of the zip archive"
                )));
            }
        };
        let env = match a.get(ANNOTATION_ENV) {
            None => Vec::new(),
            Some(v) => string_list(v, ANNOTATION_ENV)?,
        };
        if let Some(bad) = env.iter().find(|n| n.is_empty() || n.contains(['=', '\0'])) {
            return Err(ModelError::invalid(format!(
                "annotation '{ANNOTATION_ENV}': {bad:?} cannot be an environment variable name"
            )));
        }
        let allowed_hosts = match a.get(ANNOTATION_ALLOWED_HOSTS) {
            None => Vec::new(),
            Some(v) => string_list(v, ANNOTATION_ALLOWED_HOSTS)?,
        };
        Ok(WasmCaps {
            dir,
            env,
            allowed_hosts,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.dir.is_none() && self.env.is_empty() && self.allowed_hosts.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn caps_from_annotations() {
        let mut a = KeyValues::new();
        assert!(WasmCaps::from_annotations(&a).unwrap().is_empty());
        a.set(ANNOTATION_DIR, json!("/static/"));
        a.set(ANNOTATION_ENV, json!("A, B"));
        a.set(ANNOTATION_ALLOWED_HOSTS, json!(["example.com"]));
        let c = WasmCaps::from_annotations(&a).unwrap();
        assert_eq!(c.dir.as_deref(), Some("static"));
        assert_eq!(c.env, vec!["A", "B"]);
        assert_eq!(c.allowed_hosts, vec!["example.com"]);
        a.set(ANNOTATION_DIR, json!("../etc"));
        assert!(WasmCaps::from_annotations(&a).is_err());
        a.set(ANNOTATION_DIR, json!("x"));
        a.set(ANNOTATION_ENV, json!([1]));
        assert!(WasmCaps::from_annotations(&a).is_err());
    }
}
