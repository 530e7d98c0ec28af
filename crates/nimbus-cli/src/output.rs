//! Printing: messages, pretty JSON, tables, times and log lines. Writes never panic (a closed pipe
//! such as `| head` is ignored).

use std::io::Write;

use comfy_table::{Cell, Table, presets};
use serde_json::Value;

/// Prints a line on stdout.
pub fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}

/// Prints a line on stderr.
pub fn warn(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

/// Pretty JSON text.
pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// Prints pretty JSON on stdout.
pub fn json(value: &Value) {
    line(&pretty(value));
}

/// A borderless table with a header row; trailing spaces removed.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header(header.iter().map(Cell::new));
    for row in rows {
        table.add_row(row);
    }
    table
        .to_string()
        .lines()
        .map(|l| l.trim_end().strip_prefix(' ').unwrap_or(l.trim_end()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A two-column table without header (field, value).
pub fn fields(rows: Vec<(&str, String)>) -> String {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    for (k, v) in rows {
        table.add_row(vec![k.to_string(), v]);
    }
    table
        .to_string()
        .lines()
        .map(|l| l.trim_end().strip_prefix(' ').unwrap_or(l.trim_end()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Epoch milliseconds as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn format_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// A time option: epoch milliseconds, or an RFC 3339 date such as `2024-05-01T12:00:00Z`.
pub fn parse_time(raw: &str) -> Result<i64, String> {
    let raw = raw.trim();
    if let Ok(ms) = raw.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            format!(
                "{raw:?} is neither epoch milliseconds nor an RFC 3339 time (2024-05-01T12:00:00Z)"
            )
        })
}

/// A log line without its `TIMESTAMP STREAM: ` prefix (`2017-08-01T07:05:14.974Z stdout: text` →
/// `text`); lines in another format are returned unchanged.
pub fn strip_log_line(line: &str) -> &str {
    let Some((stamp, rest)) = line.split_once(' ') else {
        return line;
    };
    let looks_like_time = stamp.len() >= 10
        && stamp.as_bytes().first().is_some_and(u8::is_ascii_digit)
        && stamp.contains('T');
    if !looks_like_time {
        return line;
    }
    for stream in ["stdout:", "stderr:"] {
        if let Some(text) = rest.strip_prefix(stream) {
            return text.strip_prefix(' ').unwrap_or(text);
        }
    }
    line
}

/// The value of annotation `key` in an entity's `annotations` array.
pub fn annotation<'a>(entity: &'a Value, key: &str) -> Option<&'a Value> {
    key_value(entity.get("annotations")?, key)
}

/// The value for `key` in an OpenWhisk `[{key, value}]` array.
pub fn key_value<'a>(list: &'a Value, key: &str) -> Option<&'a Value> {
    list.as_array()?
        .iter()
        .find(|kv| kv.get("key").and_then(Value::as_str) == Some(key))
        .and_then(|kv| kv.get("value"))
}

/// `k=v, k=v` for a `[{key, value}]` array (values as compact JSON).
pub fn key_values_text(list: Option<&Value>) -> String {
    let Some(items) = list.and_then(Value::as_array) else {
        return String::new();
    };
    items
        .iter()
        .filter_map(|kv| {
            let key = kv.get("key")?.as_str()?;
            let value = kv.get("value").cloned().unwrap_or(Value::Null);
            Some(format!("{key}={value}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A string field, or "".
pub fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// `/namespace/name` of a listed entity (a packaged action's namespace is `ns/pkg`).
pub fn entity_path(entity: &Value) -> String {
    format!("/{}/{}", text(entity, "namespace"), text(entity, "name"))
}

/// The activation status for a list `statusCode` (0..3).
pub fn status_text(code: Option<i64>) -> &'static str {
    match code {
        Some(0) => "success",
        Some(1) => "application error",
        Some(2) => "developer error",
        Some(3) => "internal error",
        _ => "",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn log_stripping() {
        assert_eq!(
            strip_log_line("2017-08-01T07:05:14.974Z stdout: hello world"),
            "hello world"
        );
        assert_eq!(
            strip_log_line("2017-08-01T07:05:14.974Z stderr: oops"),
            "oops"
        );
        assert_eq!(strip_log_line("2017-08-01T07:05:14.974Z stdout:"), "");
        assert_eq!(strip_log_line("plain line"), "plain line");
        assert_eq!(strip_log_line("{\"statusCode\":0}"), "{\"statusCode\":0}");
    }

    #[test]
    fn times() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_493_327_653_769), "2017-04-27 21:14:13");
        assert_eq!(parse_time("1000").unwrap(), 1000);
        assert_eq!(parse_time("1970-01-01T00:00:01Z").unwrap(), 1000);
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn annotations_and_fields() {
        let entity = json!({
            "namespace": "guest/pkg", "name": "a", "version": "0.0.1",
            "annotations": [{"key": "exec", "value": "nodejs:20"}, {"key": "web-export", "value": true}]
        });
        assert_eq!(annotation(&entity, "exec"), Some(&json!("nodejs:20")));
        assert_eq!(annotation(&entity, "none"), None);
        assert_eq!(entity_path(&entity), "/guest/pkg/a");
        assert_eq!(
            key_values_text(entity.get("annotations")),
            "exec=\"nodejs:20\", web-export=true"
        );
        assert_eq!(text(&entity, "version"), "0.0.1");
        assert_eq!(text(&entity, "missing"), "");
    }

    #[test]
    fn tables_have_headers_and_no_trailing_space() {
        let t = table(
            &["NAME", "KIND"],
            vec![vec!["/_/a".into(), "nodejs:20".into()]],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NAME"));
        assert!(lines[1].starts_with("/_/a"));
        assert!(t.lines().all(|l| !l.ends_with(' ')));
    }
}
