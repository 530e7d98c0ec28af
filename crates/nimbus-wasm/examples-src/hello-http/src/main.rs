//! A `wasm:http` function (a `wasi:http/proxy` component). Invoked with parameters it gets a
//! POST whose body is the JSON parameters; it answers with a JSON body.

use serde_json::{Value, json};
use wstd::http::{Body, Error, Request, Response, StatusCode};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let mut body = request.into_body();
    let params: Value = body.json().await.unwrap_or(Value::Null);
    let name = params.get("name").and_then(Value::as_str).unwrap_or("stranger");
    eprintln!("{method} {path} for {name}");
    if params.get("notFound").is_some() {
        let mut resp = Response::new(Body::from("no such thing"));
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return Ok(resp);
    }
    let out = json!({
        "greeting": format!("Hello, {name}!"),
        "method": method,
        "path": path,
    });
    Ok(Response::new(Body::from(out.to_string())))
}
