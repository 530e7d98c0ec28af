//! Query and body parsing with OpenWhisk's error messages.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use nimbus_controller::Paging;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::HashMap;

pub type Query = HashMap<String, String>;

pub fn flag(q: &Query, name: &str) -> Result<bool, String> {
    match q.get(name).map(|s| s.as_str()) {
        None => Ok(false),
        Some("true") | Some("") | Some("yes") => Ok(true),
        Some("false") | Some("no") => Ok(false),
        Some(other) => Err(format!(
            "The parameter '{name}' must be true or false, not '{other}'."
        )),
    }
}

pub fn flag_or(q: &Query, name: &str, tid: &str) -> Result<bool, ApiError> {
    flag(q, name).map_err(|m| ApiError::bad_request(m, tid))
}

pub fn paging(q: &Query, tid: &str) -> Result<Paging, ApiError> {
    let num = |name: &str, default: u64| -> Result<u64, ApiError> {
        match q.get(name) {
            None => Ok(default),
            Some(s) => s.parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    format!("The parameter '{name}' must be a non-negative integer, not '{s}'."),
                    tid,
                )
            }),
        }
    };
    let skip = num("skip", 0)?;
    let limit = num("limit", 30)?;
    if limit > 200 {
        return Err(ApiError::bad_request(
            format!("The value '{limit}' is not in the range of 0 to 200."),
            tid,
        ));
    }
    Ok(Paging {
        skip,
        limit: if limit == 0 { 200 } else { limit },
    })
}

/// Reads the body, mapping an over-size body to 413.
pub fn body(b: Result<Bytes, BytesRejection>, tid: &str) -> Result<Bytes, ApiError> {
    b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "The request content was too large: the limit is {} bytes.",
                    crate::MAX_BODY_BYTES
                ),
                tid,
            )
        } else {
            ApiError::bad_request(format!("The request content could not be read: {e}"), tid)
        }
    })
}

/// Parses a JSON body into `T`; an empty body is `{}`.
pub fn json<T: DeserializeOwned>(b: &Bytes, tid: &str) -> Result<T, ApiError> {
    let src: &[u8] = if b.iter().all(|c| c.is_ascii_whitespace()) {
        b"{}"
    } else {
        b
    };
    serde_json::from_slice(src)
        .map_err(|e| ApiError::bad_request(format!("The request content was malformed:\n{e}"), tid))
}

/// A JSON object body (invoke and fire payloads).
pub fn object(b: &Bytes, tid: &str) -> Result<Map<String, Value>, ApiError> {
    match json::<Value>(b, tid)? {
        Value::Object(o) => Ok(o),
        _ => Err(ApiError::bad_request(
            "The request content was malformed:\nexpected a JSON object",
            tid,
        )),
    }
}
