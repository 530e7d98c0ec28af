//! `exec`: what an action runs: code of a kind, or a sequence of other actions.

use crate::error::ModelError;
use crate::kinds::resolve_kind;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Largest action code accepted (OpenWhisk: 48 MB).
pub const MAX_CODE_BYTES: usize = 48 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum Exec {
    Code {
        kind: String,
        /// Shared: warm invocations clone actions, and code can be tens of megabytes.
        code: Arc<str>,
        /// Computed: the code is base64 (a zip archive or an executable), not text.
        binary: bool,
        main: Option<String>,
    },
    Sequence {
        components: Vec<String>,
    },
}

/// The JSON shape on the wire, both ways.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecJson {
    #[serde(default)]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub main: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub components: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub binary: Option<bool>,
}

/// OpenWhisk's `Exec.isBinaryCode`: non-empty, a length divisible by 4 and only base64 characters.
pub fn is_binary_code(code: &str) -> bool {
    let t = code.trim();
    if t.is_empty() || !t.len().is_multiple_of(4) {
        return false;
    }
    let body = t.trim_end_matches('=');
    if t.len() - body.len() > 2 {
        return false;
    }
    body.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

impl Exec {
    /// Validates a request's `exec` and resolves its kind.
    pub fn from_request(e: ExecJson) -> Result<Exec, ModelError> {
        if e.kind.is_empty() {
            return Err(ModelError::invalid("exec.kind is required"));
        }
        let kind = resolve_kind(&e.kind)?;
        if kind == "sequence" {
            let components = e
                .components
                .ok_or_else(|| ModelError::invalid("exec.components is required for a sequence"))?;
            if components.is_empty() {
                return Err(ModelError::invalid(
                    "A sequence must have at least one component.",
                ));
            }
            return Ok(Exec::Sequence { components });
        }
        let code = e.code.unwrap_or_default();
        if code.is_empty() {
            return Err(ModelError::invalid(
                "exec.code is required and must not be empty",
            ));
        }
        if code.len() > MAX_CODE_BYTES {
            return Err(ModelError::TooLarge(format!(
                "The action code is {} bytes, over the limit of {MAX_CODE_BYTES} bytes.",
                code.len()
            )));
        }
        let binary = is_binary_code(&code);
        if crate::wasm::is_wasm_kind(kind) && !binary {
            return Err(ModelError::invalid(format!(
                "kind '{kind}' needs the WebAssembly binary (or a zip archive holding it) as base64 code"
            )));
        }
        let main = e.main.filter(|m| !m.is_empty());
        Ok(Exec::Code {
            kind: kind.to_string(),
            code: Arc::from(code),
            binary,
            main,
        })
    }

    pub fn kind(&self) -> &str {
        match self {
            Exec::Code { kind, .. } => kind,
            Exec::Sequence { .. } => "sequence",
        }
    }

    pub fn is_binary(&self) -> bool {
        matches!(self, Exec::Code { binary: true, .. })
    }

    pub fn to_json(&self, with_code: bool) -> ExecJson {
        match self {
            Exec::Code {
                kind,
                code,
                binary,
                main,
            } => ExecJson {
                kind: kind.clone(),
                code: with_code.then(|| code.to_string()),
                main: main.clone(),
                binary: Some(*binary),
                ..Default::default()
            },
            Exec::Sequence { components } => ExecJson {
                kind: "sequence".into(),
                components: Some(components.clone()),
                binary: Some(false),
                ..Default::default()
            },
        }
    }
}

impl Serialize for Exec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json(true).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Exec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = ExecJson::deserialize(d)?;
        if j.kind == "sequence" {
            return Ok(Exec::Sequence {
                components: j.components.unwrap_or_default(),
            });
        }
        let code = j.code.unwrap_or_default();
        let binary = j.binary.unwrap_or_else(|| is_binary_code(&code));
        Ok(Exec::Code {
            kind: j.kind,
            code: Arc::from(code),
            binary,
            main: j.main,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_detection_follows_openwhisk() {
        assert!(is_binary_code("UEsDBA=="));
        assert!(!is_binary_code("function main(){}"));
        assert!(!is_binary_code("abc"));
        assert!(!is_binary_code(""));
    }

    #[test]
    fn requests_are_validated() {
        let e = Exec::from_request(ExecJson {
            kind: "nodejs:default".into(),
            code: Some("x".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(e.kind(), "nodejs:20");
        assert!(
            Exec::from_request(ExecJson {
                kind: "cobol".into(),
                code: Some("x".into()),
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            Exec::from_request(ExecJson {
                kind: "python:3.11".into(),
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            Exec::from_request(ExecJson {
                kind: "sequence".into(),
                components: Some(vec![]),
                ..Default::default()
            })
            .is_err()
        );
    }
}
