//! A `wasm:http` function (a `wasi:http/proxy` component). Invoked with parameters it gets a
//! POST whose body is the JSON parameters; it answers with a JSON body.

use serde_json::{Value, json};
use wstd::http::{Body, Client, Error, Request, Response, StatusCode};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let mut body = request.into_body();
    let params: Value = body.json().await.unwrap_or(Value::Null);
    let name = params.get("name").and_then(Value::as_str).unwrap_or("stranger");
    eprintln!("{method} {path} for {name}");
    // Misbehaviours for the runtime's tests: a busy loop and a large allocation.
    if params.get("spin").is_some() {
        let mut x = 0u64;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }
    if let Some(mb) = params.get("allocMb").and_then(Value::as_u64) {
        let v = vec![1u8; (mb as usize) << 20];
        std::hint::black_box(&v);
        return Ok(Response::new(Body::from(json!({"allocated": v.len()}).to_string())));
    }
    // Outbound HTTP: allowed only to the hosts the function was granted.
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
        let out = match outcome {
            Ok((status, text)) => json!({"status": status, "body": text}),
            Err(e) => json!({"fetchError": format!("{e:?}")}),
        };
        return Ok(Response::new(Body::from(out.to_string())));
    }
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
