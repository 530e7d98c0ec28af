//! Test fixture: a `wasi:http/proxy` component that reports what it received and probes its
//! sandbox.
//!
//! - Web requests (any path but `POST /`): answers `{method, path, query, headers, body}` as
//!   JSON with status from the `x-status` request header and an `x-probe: 1` and two `x-multi`
//!   response headers; `/raw` echoes the body bytes as `application/octet-stream`.
//! - `POST /` with JSON parameters (an invocation): `{"env": NAME}` reads a variable,
//!   `{"envCount": true}` counts them, `{"readFile": PATH}` reads a file, `{"fetch": URL}` makes
//!   an outbound request; otherwise `{"greeting": ...}`.

use serde_json::{Map, Value, json};
use wstd::http::{Body, Client, Error, HeaderValue, Request, Response, StatusCode};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let mut headers = Map::new();
    for (k, v) in request.headers() {
        headers.insert(
            k.as_str().to_string(),
            Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        );
    }
    let status = request
        .headers()
        .get("x-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok());
    let mut body = request.into_body();
    let bytes = body.contents().await?.to_vec();
    if method == "POST" && path == "/" {
        let params: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        return Ok(Response::new(Body::from(invoked(&params).await.to_string())));
    }
    if path == "/raw" {
        let mut resp = Response::new(Body::from(bytes));
        resp.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("application/octet-stream"),
        );
        return Ok(resp);
    }
    eprintln!("{method} {path}");
    let out = json!({
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
        "body": String::from_utf8_lossy(&bytes),
    });
    let mut resp = Response::new(Body::from(out.to_string()));
    if let Some(s) = status.and_then(|s| StatusCode::from_u16(s).ok()) {
        *resp.status_mut() = s;
    }
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("x-probe", HeaderValue::from_static("1"));
    h.append("x-multi", HeaderValue::from_static("a"));
    h.append("x-multi", HeaderValue::from_static("b"));
    Ok(resp)
}

async fn invoked(params: &Value) -> Value {
    if let Some(name) = params.get("env").and_then(Value::as_str) {
        return json!({"value": std::env::var(name).ok()});
    }
    if params.get("envCount").is_some() {
        return json!({"count": std::env::vars().count()});
    }
    if let Some(p) = params.get("readFile").and_then(Value::as_str) {
        return match std::fs::read_to_string(p) {
            Ok(text) => json!({"text": text}),
            Err(e) => json!({"readError": e.to_string()}),
        };
    }
    if let Some(url) = params.get("fetch").and_then(Value::as_str) {
        let outcome = async {
            let req = Request::get(url).body(Body::empty())?;
            let resp = Client::new().send(req).await?;
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let text = body.str_contents().await?.to_string();
            Ok::<_, Error>((status, text))
        }
        .await;
        return match outcome {
            Ok((status, text)) => json!({"status": status, "body": text}),
            Err(e) => json!({"fetchError": format!("{e:?}")}),
        };
    }
    let name = params.get("name").and_then(Value::as_str).unwrap_or("stranger");
    json!({"greeting": format!("Hello, {name}!")})
}
