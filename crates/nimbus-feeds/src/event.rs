//! CloudEvents 1.0 attributes carried by every fired event.
//!
//! A fired event is a flat JSON object: the provider's own fields (`topic`, `payload`, `row`, …)
//! plus the CloudEvents context attributes `specversion`, `id`, `source`, `type` and `time` at
//! the top level, the way the CloudEvents JSON format places them. The trigger's activation
//! record (its result) and every rule activation's parameters therefore carry them.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

pub const SPEC_VERSION: &str = "1.0";

/// The context attributes of one event.
#[derive(Debug, Clone)]
pub struct CloudEvent {
    pub id: String,
    pub source: String,
    pub ty: String,
    pub time: DateTime<Utc>,
}

impl CloudEvent {
    pub fn new(id: impl Into<String>, source: impl Into<String>, ty: impl Into<String>) -> Self {
        CloudEvent {
            id: id.into(),
            source: source.into(),
            ty: ty.into(),
            time: Utc::now(),
        }
    }

    pub fn at(mut self, time: DateTime<Utc>) -> Self {
        self.time = time;
        self
    }

    /// A random id (for sources without a natural one).
    pub fn random_id() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    /// Adds the attributes to `fields` (they win over same-named fields).
    pub fn stamp(&self, mut fields: Map<String, Value>) -> Map<String, Value> {
        fields.insert("specversion".into(), json!(SPEC_VERSION));
        fields.insert("id".into(), json!(self.id));
        fields.insert("source".into(), json!(self.source));
        fields.insert("type".into(), json!(self.ty));
        fields.insert("time".into(), json!(rfc3339(self.time)));
        fields
    }
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Message bodies: parsed JSON when they are JSON, else the text; `None` when not UTF-8.
pub fn parse_body(bytes: &[u8]) -> Option<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        return Some(v);
    }
    std::str::from_utf8(bytes)
        .ok()
        .map(|s| Value::String(s.to_string()))
}
