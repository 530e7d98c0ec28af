//! `[{key, value}]` lists: parameters and annotations.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    #[serde(default)]
    pub value: Value,
}

/// An ordered list of key/value pairs with unique keys (a later `set` replaces in place).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyValues(pub Vec<KeyValue>);

impl KeyValues {
    pub fn new() -> Self {
        KeyValues(Vec::new())
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|kv| kv.key == key).map(|kv| &kv.value)
    }

    pub fn set(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.0.iter_mut().find(|kv| kv.key == key) {
            Some(kv) => kv.value = value,
            None => self.0.push(KeyValue { key, value }),
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.0.retain(|kv| kv.key != key);
    }

    /// Adds every pair of `other`, replacing equal keys: `other` wins.
    pub fn merge(&mut self, other: &KeyValues) {
        for kv in &other.0 {
            self.set(kv.key.clone(), kv.value.clone());
        }
    }

    pub fn merged(&self, other: &KeyValues) -> KeyValues {
        let mut m = self.clone();
        m.merge(other);
        m
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when the annotation is present and truthy (OpenWhisk treats `"true"` like `true`).
    pub fn is_truthy(&self, key: &str) -> bool {
        match self.get(key) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => {
                s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("yes")
            }
            Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
            _ => false,
        }
    }

    /// The pairs as a JSON object, as an action receives its parameters.
    pub fn to_object(&self) -> Map<String, Value> {
        self.0
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect()
    }

    pub fn from_object(obj: &Map<String, Value>) -> KeyValues {
        KeyValues(
            obj.iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
        )
    }

    /// Serialized size in bytes, compared with the 1 MB parameter limit.
    pub fn json_size(&self) -> usize {
        serde_json::to_vec(self).map(|v| v.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_lets_the_later_list_win() {
        let mut a: KeyValues =
            serde_json::from_value(json!([{"key":"x","value":1},{"key":"y","value":2}])).unwrap();
        let b: KeyValues =
            serde_json::from_value(json!([{"key":"y","value":3},{"key":"z","value":4}])).unwrap();
        a.merge(&b);
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            json!([{"key":"x","value":1},{"key":"y","value":3},{"key":"z","value":4}])
        );
        assert_eq!(a.to_object().get("y"), Some(&json!(3)));
    }

    #[test]
    fn truthiness_matches_openwhisk_annotations() {
        let a: KeyValues = serde_json::from_value(json!([{"key":"web-export","value":true},{"key":"raw-http","value":"false"},{"key":"final","value":"true"}])).unwrap();
        assert!(a.is_truthy("web-export"));
        assert!(!a.is_truthy("raw-http"));
        assert!(a.is_truthy("final"));
        assert!(!a.is_truthy("missing"));
    }
}
