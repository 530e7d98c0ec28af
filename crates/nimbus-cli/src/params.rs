//! Parameters and annotations given as `-p KEY VALUE` pairs and JSON files.

use std::path::Path;

use clap::{ArgAction, Args};
use serde_json::{Map, Value};

use crate::error::{CliError, CliResult};

/// `-p KEY VALUE` (repeatable) and `--param-file FILE`.
#[derive(Debug, Clone, Default, Args)]
pub struct ParamArgs {
    /// Parameter KEY VALUE; VALUE is parsed as JSON when it is valid JSON, else taken as a string
    #[arg(
        short = 'p',
        long = "param",
        num_args = 2,
        value_names = ["KEY", "VALUE"],
        allow_hyphen_values = true,
        action = ArgAction::Append
    )]
    pub param: Vec<String>,

    /// JSON file holding an object of parameters (flags given with -p override it)
    #[arg(short = 'P', long = "param-file", value_name = "FILE")]
    pub param_file: Option<std::path::PathBuf>,
}

impl ParamArgs {
    pub fn is_given(&self) -> bool {
        !self.param.is_empty() || self.param_file.is_some()
    }

    pub fn collect(&self) -> CliResult<KeyValues> {
        collect(self.param_file.as_deref(), &self.param, "parameter")
    }
}

/// `-a KEY VALUE` (repeatable) and `--annotation-file FILE`.
#[derive(Debug, Clone, Default, Args)]
pub struct AnnotationArgs {
    /// Annotation KEY VALUE; VALUE is parsed as JSON when it is valid JSON, else taken as a string
    #[arg(
        short = 'a',
        long = "annotation",
        num_args = 2,
        value_names = ["KEY", "VALUE"],
        allow_hyphen_values = true,
        action = ArgAction::Append
    )]
    pub annotation: Vec<String>,

    /// JSON file holding an object of annotations (flags given with -a override it)
    #[arg(short = 'A', long = "annotation-file", value_name = "FILE")]
    pub annotation_file: Option<std::path::PathBuf>,
}

impl AnnotationArgs {
    pub fn is_given(&self) -> bool {
        !self.annotation.is_empty() || self.annotation_file.is_some()
    }

    pub fn collect(&self) -> CliResult<KeyValues> {
        collect(
            self.annotation_file.as_deref(),
            &self.annotation,
            "annotation",
        )
    }
}

/// Ordered key/value pairs; setting a key again replaces its value in place.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyValues(Vec<(String, Value)>);

impl KeyValues {
    pub fn new() -> KeyValues {
        KeyValues::default()
    }

    pub fn set(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds every pair of `other`, replacing equal keys.
    pub fn extend(&mut self, other: KeyValues) {
        for (k, v) in other.0 {
            self.set(k, v);
        }
    }

    /// The OpenWhisk form `[{"key": k, "value": v}, ...]`.
    pub fn to_key_value_array(&self) -> Value {
        Value::Array(
            self.0
                .iter()
                .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
                .collect(),
        )
    }

    /// A JSON object (an invoke or fire payload).
    pub fn to_object(&self) -> Value {
        Value::Object(self.0.iter().cloned().collect::<Map<String, Value>>())
    }
}

/// A command-line value: JSON when it parses as JSON, else the string itself.
pub fn parse_value(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
}

/// Pairs up the flat `KEY VALUE KEY VALUE ...` list clap collects.
pub fn pairs(flat: &[String], what: &str) -> CliResult<KeyValues> {
    if !flat.len().is_multiple_of(2) {
        return Err(CliError::usage(format!(
            "each {what} needs a KEY and a VALUE"
        )));
    }
    let mut out = KeyValues::new();
    for pair in flat.chunks(2) {
        if let [key, value] = pair {
            if key.is_empty() {
                return Err(CliError::usage(format!("a {what} key is empty")));
            }
            out.set(key.clone(), parse_value(value));
        }
    }
    Ok(out)
}

/// Reads a JSON object from a file into key/value pairs.
pub fn load_object_file(path: &Path, what: &str) -> CliResult<KeyValues> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::usage(format!(
            "cannot read the {what} file {}: {e}",
            path.display()
        ))
    })?;
    object_pairs(&text)
        .map_err(|e| CliError::usage(format!("the {what} file {}: {e}", path.display())))
}

fn object_pairs(text: &str) -> Result<KeyValues, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(KeyValues(map.into_iter().collect())),
        Ok(_) => Err("must hold a JSON object".to_string()),
        Err(e) => Err(format!("is not valid JSON: {e}")),
    }
}

/// The file's pairs first, then the flags' pairs (which win).
pub fn collect(file: Option<&Path>, flat: &[String], what: &str) -> CliResult<KeyValues> {
    let mut out = match file {
        Some(path) => load_object_file(path, what)?,
        None => KeyValues::new(),
    };
    out.extend(pairs(flat, what)?);
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn values_parse_as_json_or_string() {
        assert_eq!(parse_value("5"), json!(5));
        assert_eq!(parse_value("true"), json!(true));
        assert_eq!(parse_value("null"), json!(null));
        assert_eq!(parse_value("{\"a\":[1]}"), json!({"a": [1]}));
        assert_eq!(parse_value("\"5\""), json!("5"));
        assert_eq!(parse_value("hello"), json!("hello"));
        assert_eq!(parse_value("12abc"), json!("12abc"));
        assert_eq!(parse_value(""), json!(""));
    }

    #[test]
    fn pairs_keep_order_and_last_wins() {
        let kv = pairs(&strings(&["a", "1", "b", "x", "a", "2"]), "parameter").unwrap();
        assert_eq!(
            kv.to_key_value_array(),
            json!([{"key": "a", "value": 2}, {"key": "b", "value": "x"}])
        );
        assert_eq!(kv.to_object(), json!({"a": 2, "b": "x"}));
        assert!(pairs(&strings(&["a"]), "parameter").is_err());
        assert!(pairs(&strings(&["", "1"]), "parameter").is_err());
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, r#"{"a": 1, "b": {"c": true}}"#).unwrap();
        let kv = collect(Some(&path), &strings(&["a", "9"]), "parameter").unwrap();
        assert_eq!(kv.to_object(), json!({"a": 9, "b": {"c": true}}));
        std::fs::write(&path, "[1]").unwrap();
        assert!(collect(Some(&path), &[], "parameter").is_err());
        assert!(collect(Some(&dir.path().join("none")), &[], "parameter").is_err());
    }
}
