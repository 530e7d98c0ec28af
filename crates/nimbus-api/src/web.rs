//! Web actions: `/api/v1/web/{ns}/{pkg|default}/{action}[.ext][/rest]`.
//!
//! The request becomes parameters (`__ow_method`, `__ow_headers`, `__ow_path`, promoted query and
//! body, or `__ow_query`/`__ow_body` for `raw-http`), the action runs blocking as its owner, and
//! the result becomes the response according to the extension.

use crate::AppState;
use crate::context::{Tid, basic_credentials};
use crate::error::ApiError;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine;
use nimbus_controller::{InvokeRequest, InvokeResponse};
use nimbus_model::ResponseStatus;
use serde_json::{Map, Value, json};

const EXTENSIONS: &[&str] = &["json", "http", "html", "text", "svg"];

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/web/{ns}/{*rest}", any(web))
}

/// The parts of a web URL after the namespace.
#[derive(Debug, PartialEq)]
struct WebPath {
    package: Option<String>,
    action: String,
    ext: String,
    rest: String,
}

fn parse_path(rest: &str) -> Result<WebPath, String> {
    let mut segs = rest.splitn(3, '/');
    let pkg = segs.next().unwrap_or_default();
    let action_seg = segs.next().unwrap_or_default();
    let tail = segs.next().map(|t| format!("/{t}")).unwrap_or_default();
    if pkg.is_empty() || action_seg.is_empty() {
        return Err(
            "The web action URL must be /api/v1/web/{namespace}/{package or default}/{action}."
                .into(),
        );
    }
    let (action, ext) = match action_seg.rsplit_once('.') {
        Some((a, e)) if EXTENSIONS.contains(&e) => (a.to_string(), e.to_string()),
        Some((_, e))
            if !e.is_empty() && e.chars().all(|c| c.is_ascii_alphanumeric()) && e.len() <= 5 =>
        {
            return Err(format!(
                "Resource representation '.{e}' is not supported; use one of: {}.",
                EXTENSIONS
                    .iter()
                    .map(|x| format!(".{x}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        _ => (action_seg.to_string(), "http".to_string()),
    };
    let package = (pkg != "default").then(|| pkg.to_string());
    Ok(WebPath {
        package,
        action,
        ext,
        rest: tail,
    })
}

fn is_binary_type(ct: &str) -> bool {
    let ct = ct.to_ascii_lowercase();
    !(ct.starts_with("text/")
        || ct.contains("json")
        || ct.contains("xml")
        || ct.contains("javascript")
        || ct.starts_with("application/x-www-form-urlencoded")
        || ct.is_empty())
}

fn cors_headers(h: &mut HeaderMap, req_headers: &HeaderMap) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("OPTIONS, GET, DELETE, POST, PUT, HEAD, PATCH"),
    );
    let allow = req_headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or(HeaderValue::from_static(
            "Authorization, Origin, X-Requested-With, Content-Type, Accept, User-Agent",
        ));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow);
}

async fn web(
    State(s): State<AppState>,
    Path((ns, rest)): Path<(String, String)>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let tid = parts
        .extensions
        .get::<Tid>()
        .map(|t| t.0.clone())
        .unwrap_or_else(|| nimbus_model::ActivationId::generate().to_string());
    match handle(&s, &ns, &rest, &parts, body, &tid).await {
        Ok(r) => r,
        Err(e) => {
            let mut r = e.into_response();
            cors_headers(r.headers_mut(), &parts.headers);
            r
        }
    }
}

async fn handle(
    s: &AppState,
    ns: &str,
    rest: &str,
    parts: &Parts,
    body: Result<Bytes, BytesRejection>,
    tid: &str,
) -> Result<Response, ApiError> {
    let wp = parse_path(rest).map_err(|m| ApiError::new(StatusCode::NOT_ACCEPTABLE, m, tid))?;
    let body = crate::parse::body(body, tid)?;
    let target = s
        .controller
        .resolve_web_action(ns, wp.package.as_deref(), &wp.action)
        .await
        .map_err(|e| ApiError::from_controller(e, tid))?;
    let ann = target.annotations();
    // A wasm:http component gets the request as it came and answers it itself (OPTIONS too).
    let wasm_http = ann.get("exec").and_then(Value::as_str) == Some("wasm:http");
    let custom_options = ann.is_truthy("web-custom-options") || wasm_http;
    if parts.method == Method::OPTIONS && !custom_options {
        let mut r = StatusCode::OK.into_response();
        cors_headers(r.headers_mut(), &parts.headers);
        return Ok(r);
    }
    // require-whisk-auth: true demands valid credentials; a string/number demands a matching header.
    let mut user: Option<String> = None;
    match ann.get("require-whisk-auth") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            let Some((u, k)) = basic_credentials(parts) else {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "The resource requires authentication, which was not supplied with the request",
                    tid,
                ));
            };
            let who = s
                .controller
                .authenticate(&u, &k)
                .await
                .map_err(|e| ApiError::from_controller(e, tid))?;
            // Only the owning namespace's keys open a protected web action: a key of another
            // namespace is valid, but not for this namespace's data.
            if who.namespace != target.owner.namespace {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "The supplied authentication is not valid for this namespace's web actions",
                    tid,
                ));
            }
            user = Some(who.namespace);
        }
        Some(secret) => {
            let expected = match secret {
                Value::String(x) => x.clone(),
                other => other.to_string(),
            };
            let given = parts
                .headers
                .get("x-require-whisk-auth")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !bool::from(subtle::ConstantTimeEq::ct_eq(
                given.as_bytes(),
                expected.as_bytes(),
            )) {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "The supplied authentication is invalid",
                    tid,
                ));
            }
        }
    }
    if user.is_none()
        && let Some((u, k)) = basic_credentials(parts)
        && let Ok(who) = s.controller.authenticate(&u, &k).await
    {
        user = Some(who.namespace);
    }
    let params = if wasm_http {
        wasm_http_params(parts, &body, &wp.rest, user)
    } else {
        build_params(parts, &body, &wp.rest, ann.is_truthy("raw-http"), user, tid)?
    };
    let req = InvokeRequest {
        action: target.action.clone(),
        params,
        blocking: true,
        wait: None,
        cause: None,
    };
    let outcome = s
        .controller
        .invoke_web(target, req)
        .await
        .map_err(|e| ApiError::from_controller(e, tid))?;
    let a = match outcome {
        InvokeResponse::Done(a) => a,
        InvokeResponse::Accepted(id) => {
            let mut r = (
                StatusCode::ACCEPTED,
                axum::Json(json!({"error": "Response not yet ready.", "code": tid})),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(id.as_str()) {
                r.headers_mut().insert("x-openwhisk-activation-id", v);
            }
            return Ok(r);
        }
    };
    let mut r = match a.response.status() {
        ResponseStatus::Success if wasm_http => wasm_http_response(&a.response.result, tid)?,
        ResponseStatus::Success => render(&wp, a.response.result.clone(), tid)?,
        ResponseStatus::ApplicationError => {
            let err = a.response.result.get("error").cloned().unwrap_or(Value::Null);
            // OpenWhisk projects the `error` field and applies the extension's rules to it.
            render(&wp, err, tid)?
        }
        ResponseStatus::DeveloperError => (
            StatusCode::BAD_GATEWAY,
            axum::Json(json!({"error": a.response.result.get("error").cloned().unwrap_or(Value::Null), "code": tid})),
        )
            .into_response(),
        ResponseStatus::WhiskError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": a.response.result.get("error").cloned().unwrap_or(Value::Null), "code": tid})),
        )
            .into_response(),
    };
    if let Ok(v) = HeaderValue::from_str(a.activation_id.as_str()) {
        r.headers_mut().insert("x-openwhisk-activation-id", v);
    }
    let mut r = crate::routes::with_record_header(r, &a);
    if !custom_options {
        r.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    Ok(r)
}

fn build_params(
    parts: &Parts,
    body: &Bytes,
    rest: &str,
    raw: bool,
    user: Option<String>,
    tid: &str,
) -> Result<Map<String, Value>, ApiError> {
    let mut params = Map::new();
    let query = parts.uri.query().unwrap_or_default();
    let ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if raw {
        params.insert("__ow_query".into(), json!(query));
        let b = if body.is_empty() {
            String::new()
        } else if is_binary_type(&ct) || ct.contains("json") || std::str::from_utf8(body).is_err() {
            base64::engine::general_purpose::STANDARD.encode(body)
        } else {
            String::from_utf8_lossy(body).into_owned()
        };
        params.insert("__ow_body".into(), json!(b));
    } else {
        for (k, v) in form_urlencoded(query) {
            params.insert(k, json!(v));
        }
        if !body.is_empty() {
            if ct.contains("json") {
                match serde_json::from_slice::<Value>(body) {
                    Ok(Value::Object(o)) => params.extend(o),
                    Ok(other) => {
                        params.insert("__ow_body".into(), json!(other.to_string()));
                    }
                    Err(e) => {
                        return Err(ApiError::bad_request(
                            format!("The request content was malformed:\n{e}"),
                            tid,
                        ));
                    }
                }
            } else if ct.starts_with("application/x-www-form-urlencoded") {
                for (k, v) in form_urlencoded(&String::from_utf8_lossy(body)) {
                    params.insert(k, json!(v));
                }
            } else if is_binary_type(&ct) || std::str::from_utf8(body).is_err() {
                params.insert(
                    "__ow_body".into(),
                    json!(base64::engine::general_purpose::STANDARD.encode(body)),
                );
            } else {
                params.insert("__ow_body".into(), json!(String::from_utf8_lossy(body)));
            }
        }
    }
    if params
        .keys()
        .any(|k| k.starts_with("__ow_") && k != "__ow_body" && k != "__ow_query")
    {
        return Err(ApiError::bad_request(
            "Request defines parameters that are not allowed (e.g., reserved properties).",
            tid,
        ));
    }
    let headers: Map<String, Value> = parts
        .headers
        .iter()
        .filter(|(k, _)| *k != header::AUTHORIZATION)
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                json!(v.to_str().unwrap_or_default()),
            )
        })
        .collect();
    params.insert(
        "__ow_method".into(),
        json!(parts.method.as_str().to_ascii_lowercase()),
    );
    params.insert("__ow_headers".into(), Value::Object(headers));
    params.insert("__ow_path".into(), json!(rest));
    if let Some(u) = user {
        params.insert("__ow_user".into(), json!(u));
    }
    Ok(params)
}

/// The request to a `wasm:http` web action, for the component (the contract with
/// `nimbus-wasm/src/web.rs`): method, the path after the action name, the raw query, every
/// header but `Authorization` (repeated ones as arrays) and the body, always base64.
fn wasm_http_params(
    parts: &Parts,
    body: &Bytes,
    rest: &str,
    user: Option<String>,
) -> Map<String, Value> {
    let mut headers = Map::new();
    for name in parts.headers.keys() {
        if name == header::AUTHORIZATION {
            continue;
        }
        let mut values: Vec<Value> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let v = if values.len() == 1 {
            values.pop().unwrap_or(Value::Null)
        } else {
            Value::Array(values)
        };
        headers.insert(name.as_str().to_string(), v);
    }
    let mut params = Map::new();
    params.insert(
        "__ow_method".into(),
        json!(parts.method.as_str().to_ascii_lowercase()),
    );
    params.insert("__ow_path".into(), json!(rest));
    params.insert(
        "__ow_query".into(),
        json!(parts.uri.query().unwrap_or_default()),
    );
    params.insert("__ow_headers".into(), Value::Object(headers));
    params.insert(
        "__ow_body".into(),
        json!(base64::engine::general_purpose::STANDARD.encode(body)),
    );
    if let Some(u) = user {
        params.insert("__ow_user".into(), json!(u));
    }
    params
}

/// A `wasm:http` component's response (`{statusCode, headers, body}`, body base64) as it was.
fn wasm_http_response(result: &Value, tid: &str) -> Result<Response, ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "The WebAssembly component's response could not be passed on.",
            tid,
        )
    };
    let code = result
        .get("statusCode")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(bad)?;
    let body = match result.get("body").and_then(Value::as_str) {
        Some(b) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|_| bad())?,
        None => Vec::new(),
    };
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = code;
    if let Some(Value::Object(h)) = result.get("headers") {
        for (k, v) in h {
            let Ok(name) = HeaderName::from_bytes(k.as_bytes()) else {
                continue;
            };
            // Framing is this server's business (the body is complete here).
            if name == header::CONTENT_LENGTH
                || name == header::TRANSFER_ENCODING
                || name == header::CONNECTION
            {
                continue;
            }
            let values: Vec<&str> = match v {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            for val in values {
                if let Ok(hv) = HeaderValue::from_str(val) {
                    r.headers_mut().append(name.clone(), hv);
                }
            }
        }
    }
    Ok(r)
}

fn form_urlencoded(s: &str) -> Vec<(String, String)> {
    fn decode(x: &str) -> String {
        let bytes = x.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = |c: u8| (c as char).to_digit(16);
                    match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                        (Some(h), Some(l)) => {
                            out.push((h * 16 + l) as u8);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// Projects `.json/a/b` into the result.
fn project(mut v: Value, rest: &str) -> Value {
    for seg in rest.split('/').filter(|s| !s.is_empty()) {
        v = v.get(seg).cloned().unwrap_or(Value::Null);
    }
    v
}

fn render(wp: &WebPath, result: Value, tid: &str) -> Result<Response, ApiError> {
    let text_field =
        |result: &Value, field: &str, ctype: &'static str| -> Result<Response, ApiError> {
            let v = project(result.clone(), &wp.rest);
            let s = v
                .get(field)
                .or_else(|| v.get("body"))
                .and_then(|x| x.as_str())
                .map(str::to_string);
            match s {
                Some(s) => Ok(([(header::CONTENT_TYPE, ctype)], s).into_response()),
                None => Err(ApiError::bad_request(
                    format!(
                        "The action did not return a '{field}' property for a .{} response.",
                        wp.ext
                    ),
                    tid,
                )),
            }
        };
    match wp.ext.as_str() {
        "json" => Ok(axum::Json(project(result, &wp.rest)).into_response()),
        "html" => text_field(&result, "html", "text/html; charset=utf-8"),
        "text" => text_field(&result, "text", "text/plain; charset=utf-8"),
        "svg" => text_field(&result, "svg", "image/svg+xml"),
        _ => http_response(result, tid),
    }
}

/// `.http`: `{statusCode?, headers?, body?}`.
fn http_response(result: Value, tid: &str) -> Result<Response, ApiError> {
    let obj = result.as_object().cloned().unwrap_or_default();
    let mut headers = HeaderMap::new();
    if let Some(Value::Object(h)) = obj.get("headers") {
        for (k, v) in h {
            let values: Vec<String> = match v {
                Value::Array(a) => a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .collect(),
                Value::String(s) => vec![s.clone()],
                other => vec![other.to_string()],
            };
            let Ok(name) = HeaderName::from_bytes(k.as_bytes()) else {
                continue;
            };
            for val in values {
                if let Ok(hv) = HeaderValue::from_str(&val) {
                    headers.append(name.clone(), hv);
                }
            }
        }
    }
    let body = obj.get("body").cloned().unwrap_or(Value::Null);
    let code = match obj.get("statusCode").or_else(|| obj.get("code")) {
        Some(v) => v
            .as_u64()
            .and_then(|c| StatusCode::from_u16(c as u16).ok())
            .ok_or_else(|| {
                ApiError::bad_request("The action returned an invalid statusCode.", tid)
            })?,
        None if body.is_null() => StatusCode::NO_CONTENT,
        None => StatusCode::OK,
    };
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes: Vec<u8> = match (&body, ct.as_deref()) {
        (Value::Null, _) => Vec::new(),
        (Value::String(s), Some(t)) if is_binary_type(t) => {
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|_| {
                    ApiError::bad_request(
                        "Response type in header did not match generated content type.",
                        tid,
                    )
                })?
        }
        (Value::String(s), Some(_)) => s.clone().into_bytes(),
        (Value::String(s), None) => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            s.clone().into_bytes()
        }
        (other, _) => {
            if ct.is_none() {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            other.to_string().into_bytes()
        }
    };
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = code;
    r.headers_mut().extend(headers);
    Ok(r)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn web_paths_split_package_action_extension_and_rest() {
        let p = parse_path("default/hello.json/a/b").unwrap();
        assert_eq!(
            p,
            WebPath {
                package: None,
                action: "hello".into(),
                ext: "json".into(),
                rest: "/a/b".into()
            }
        );
        let p = parse_path("pkg/hello").unwrap();
        assert_eq!(p.package.as_deref(), Some("pkg"));
        assert_eq!(p.ext, "http");
        assert!(parse_path("default/hello.xml").is_err());
        assert!(parse_path("default").is_err());
    }

    #[test]
    fn form_decoding() {
        assert_eq!(
            form_urlencoded("a=1&b=x+y%21&c"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y!".into()),
                ("c".into(), "".into())
            ]
        );
    }

    #[test]
    fn http_results_become_responses() {
        let r = http_response(
            json!({"statusCode": 201, "headers": {"x-a": "1"}, "body": "hi"}),
            "t",
        )
        .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
        let r = http_response(json!({}), "t").unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let r = http_response(json!({"body": {"a": 1}}), "t").unwrap();
        assert_eq!(r.headers()["content-type"], "application/json");
    }
}
