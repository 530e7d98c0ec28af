//! Activation records: one per run of an action, trigger fire or sequence.

use crate::entity::Version;
use crate::params::KeyValues;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::fmt;

/// 32 lower-case hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActivationId(String);

impl ActivationId {
    pub fn generate() -> Self {
        let mut b = [0u8; 16];
        rand::rng().fill_bytes(&mut b);
        ActivationId(b.iter().map(|x| format!("{x:02x}")).collect())
    }

    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| ActivationId(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ActivationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ActivationId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ActivationId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ActivationId::parse(&s)
            .ok_or_else(|| serde::de::Error::custom("activation id must be 32 hex characters"))
    }
}

/// `response.status` with its numeric `statusCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseStatus {
    Success,
    ApplicationError,
    DeveloperError,
    WhiskError,
}

impl ResponseStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            ResponseStatus::Success => "success",
            ResponseStatus::ApplicationError => "application error",
            ResponseStatus::DeveloperError => "action developer error",
            ResponseStatus::WhiskError => "whisk internal error",
        }
    }

    pub fn code(&self) -> u8 {
        match self {
            ResponseStatus::Success => 0,
            ResponseStatus::ApplicationError => 1,
            ResponseStatus::DeveloperError => 2,
            ResponseStatus::WhiskError => 3,
        }
    }

    pub fn from_code(c: u8) -> Self {
        match c {
            0 => ResponseStatus::Success,
            1 => ResponseStatus::ApplicationError,
            2 => ResponseStatus::DeveloperError,
            _ => ResponseStatus::WhiskError,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationResponse {
    pub status: String,
    #[serde(rename = "statusCode")]
    pub status_code: u8,
    pub success: bool,
    pub result: Value,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub size: Option<usize>,
}

impl ActivationResponse {
    pub fn new(status: ResponseStatus, result: Value) -> Self {
        ActivationResponse {
            status: status.as_str().to_string(),
            status_code: status.code(),
            success: status == ResponseStatus::Success,
            result,
            size: None,
        }
    }

    pub fn success(result: Value) -> Self {
        Self::new(ResponseStatus::Success, result)
    }

    /// A failure whose result is `{"error": message}`.
    pub fn error(status: ResponseStatus, message: impl Into<String>) -> Self {
        Self::new(status, json!({ "error": message.into() }))
    }

    pub fn status(&self) -> ResponseStatus {
        ResponseStatus::from_code(self.status_code)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activation {
    /// The namespace of the caller (not of the action).
    pub namespace: String,
    pub name: String,
    pub subject: String,
    #[serde(rename = "activationId")]
    pub activation_id: ActivationId,
    pub version: Version,
    pub publish: bool,
    pub start: i64,
    /// 0 for records that have no end (trigger fires); then `end` and `duration` are left out of the JSON.
    #[serde(skip_serializing_if = "is_zero", default)]
    pub end: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub duration: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cause: Option<ActivationId>,
    pub logs: Vec<String>,
    pub annotations: KeyValues,
    pub response: ActivationResponse,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl Activation {
    /// One item of an activation list (`docs=false`).
    pub fn brief(&self) -> Value {
        let mut v = json!({
            "namespace": self.namespace,
            "name": self.name,
            "version": self.version,
            "publish": self.publish,
            "annotations": self.annotations,
            "activationId": self.activation_id,
            "start": self.start,
            "statusCode": self.response.status_code,
        });
        if let Some(obj) = v.as_object_mut() {
            if self.end != 0 {
                obj.insert("end".into(), json!(self.end));
                obj.insert(
                    "duration".into(),
                    json!(self.duration.unwrap_or(self.end - self.start)),
                );
            }
            if let Some(c) = &self.cause {
                obj.insert("cause".into(), json!(c));
            }
        }
        v
    }

    /// The `path` annotation (`ns/[pkg/]name`), which the `name` filter of a list matches.
    pub fn path_annotation(&self) -> Option<&str> {
        self.annotations.get("path").and_then(|v| v.as_str())
    }
}

/// Alias kept for the list view's type in signatures.
pub type ActivationBrief = Value;

/// Formats one log line as OpenWhisk does: `2017-08-01T07:05:14.974Z stdout: text`.
pub fn log_line(ts_millis: i64, stream: &str, text: &str) -> String {
    let ts = chrono::DateTime::from_timestamp_millis(ts_millis).unwrap_or_default();
    format!("{} {stream}: {text}", ts.format("%Y-%m-%dT%H:%M:%S%.3fZ"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_hex() {
        let id = ActivationId::generate();
        assert_eq!(id.as_str().len(), 32);
        assert!(ActivationId::parse(id.as_str()).is_some());
        assert!(ActivationId::parse("xyz").is_none());
    }

    #[test]
    fn trigger_records_omit_end_and_duration() {
        let a = Activation {
            namespace: "guest".into(),
            name: "t".into(),
            subject: "guest".into(),
            activation_id: ActivationId::generate(),
            version: Version::default(),
            publish: false,
            start: 5,
            end: 0,
            duration: None,
            cause: None,
            logs: vec![],
            annotations: KeyValues::new(),
            response: ActivationResponse::success(json!({})),
        };
        let v = serde_json::to_value(&a).unwrap();
        assert!(v.get("end").is_none() && v.get("duration").is_none());
        assert_eq!(a.brief()["statusCode"], 0);
        let back: Activation = serde_json::from_value(v).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn log_lines_have_the_openwhisk_format() {
        assert_eq!(
            log_line(1501571114974, "stdout", "hi"),
            "2017-08-01T07:05:14.974Z stdout: hi"
        );
    }
}
