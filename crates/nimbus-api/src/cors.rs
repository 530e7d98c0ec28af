//! CORS on every API answer, and OPTIONS answered for the REST routes (web actions answer
//! their own OPTIONS, since `web-custom-options` lets an action take it over).

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

const API_METHODS: &str = "GET, DELETE, POST, PUT, HEAD";
const API_HEADERS: &str =
    "Authorization, Origin, X-Requested-With, Content-Type, Accept, User-Agent";

pub async fn cors(req: Request, next: Next) -> Response {
    let is_web = req.uri().path().starts_with("/api/v1/web/");
    if req.method() == Method::OPTIONS && !is_web {
        let mut r = StatusCode::OK.into_response();
        add(&mut r);
        return r;
    }
    let mut r = next.run(req).await;
    if !is_web {
        add(&mut r);
    }
    r
}

fn add(r: &mut Response) {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(API_METHODS),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(API_HEADERS),
    );
}
