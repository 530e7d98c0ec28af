//! `wasm:http` on web actions: the HTTP request reaches the component as it came, and the
//! component's response goes back as it is.
//!
//! The API's web layer encodes a request to a `wasm:http` web action in the parameters
//! (`__ow_method`, `__ow_path` — the part of the URL after the action name —, `__ow_query`,
//! `__ow_headers` with repeated headers as arrays, and `__ow_body` always base64), and renders
//! the result `{statusCode, headers, body}` (body base64) byte for byte. Those parameters are the
//! contract between `nimbus-api/src/web.rs` and this module.

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Map, Value, json};

pub(crate) struct WebRequest {
    method: http::Method,
    path_and_query: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

fn b64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::STANDARD
}

impl WebRequest {
    /// The request a web action passed in `params`, `None` for an ordinary invocation.
    pub(crate) fn from_params(params: &Map<String, Value>) -> Option<Result<WebRequest, String>> {
        let method = params.get("__ow_method")?.as_str()?;
        let Some(Value::Object(headers)) = params.get("__ow_headers") else {
            return None;
        };
        Some(Self::parse(method, headers, params))
    }

    fn parse(
        method: &str,
        headers: &Map<String, Value>,
        params: &Map<String, Value>,
    ) -> Result<WebRequest, String> {
        let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("invalid HTTP method {method:?}"))?;
        let path = params
            .get("__ow_path")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut path_and_query = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        if let Some(q) = params.get("__ow_query").and_then(Value::as_str)
            && !q.is_empty()
        {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        let mut list = Vec::with_capacity(headers.len());
        for (k, v) in headers {
            match v {
                Value::String(s) => list.push((k.clone(), s.clone())),
                Value::Array(a) => {
                    for x in a {
                        if let Some(s) = x.as_str() {
                            list.push((k.clone(), s.to_string()));
                        }
                    }
                }
                _ => {}
            }
        }
        let body = match params.get("__ow_body").and_then(Value::as_str) {
            None | Some("") => Bytes::new(),
            Some(s) => Bytes::from(
                b64()
                    .decode(s)
                    .map_err(|e| format!("__ow_body is not base64: {e}"))?,
            ),
        };
        Ok(WebRequest {
            method,
            path_and_query,
            headers: list,
            body,
        })
    }

    pub(crate) fn to_http(&self) -> Result<http::Request<Full<Bytes>>, String> {
        let host = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.as_str())
            .filter(|h| !h.is_empty())
            .unwrap_or("localhost");
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(host)
            .path_and_query(self.path_and_query.as_str())
            .build()
            .or_else(|_| {
                http::Uri::builder()
                    .scheme("http")
                    .authority("localhost")
                    .path_and_query(self.path_and_query.as_str())
                    .build()
            })
            .map_err(|e| format!("invalid request target {:?}: {e}", self.path_and_query))?;
        let mut b = http::Request::builder()
            .method(self.method.clone())
            .uri(uri);
        for (k, v) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                b = b.header(name, value);
            }
        }
        b.body(Full::new(self.body.clone()))
            .map_err(|e| e.to_string())
    }
}

/// A component's response as the result of a web activation: `{statusCode, headers, body}`,
/// headers with repeated names as arrays, the body base64.
pub(crate) fn response_result(
    status: http::StatusCode,
    headers: &http::HeaderMap,
    body: &[u8],
) -> nimbus_runtime::RunResult {
    let mut h = Map::new();
    for name in headers.keys() {
        let values: Vec<Value> = headers
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let v = if values.len() == 1 {
            values.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(values)
        };
        h.insert(name.as_str().to_string(), v);
    }
    nimbus_runtime::RunResult::Ok(json!({
        "statusCode": status.as_u16(),
        "headers": h,
        "body": b64().encode(body),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_from_web_params() {
        let p = json!({
            "__ow_method": "put",
            "__ow_path": "/a/b",
            "__ow_query": "x=1&y=2",
            "__ow_headers": {"host": "example.org", "x-multi": ["1", "2"], "content-type": "text/plain"},
            "__ow_body": b64().encode("hi"),
        });
        let Value::Object(p) = p else { panic!() };
        let Some(Ok(w)) = WebRequest::from_params(&p) else {
            panic!("a web request")
        };
        let r = w.to_http().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.method(), http::Method::PUT);
        assert_eq!(r.uri().to_string(), "http://example.org/a/b?x=1&y=2");
        assert_eq!(r.headers().get_all("x-multi").iter().count(), 2);
        let mut plain = Map::new();
        plain.insert("a".into(), json!(1));
        assert!(WebRequest::from_params(&plain).is_none());
    }
}
