//! Request ids: every request gets one (the caller's `X-Request-Id` when it is sane, else a new
//! one), answered in `X-Request-Id`, used as the `code` of error bodies, carried by the request's
//! tracing span, and made the current request id of the controller so every activation the
//! request causes is annotated `requestId` (see docs/console.md).

use crate::context::Tid;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use nimbus_model::ActivationId;
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

/// Longest caller-supplied id kept.
const MAX_LEN: usize = 128;

/// A caller's id is kept when it is 1–128 characters of `[A-Za-z0-9._:-]` (safe in logs and
/// headers); anything else is replaced rather than rejected, so a bad header never fails a call.
fn acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_string)
        .unwrap_or_else(|| ActivationId::generate().to_string());
    // The console asks not to get `WWW-Authenticate` on 401s, so a wrong key shows its own
    // message instead of the browser's password dialog.
    let console = req.headers().contains_key("x-nimbus-console");
    req.extensions_mut().insert(Tid(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path()
    );
    let started = std::time::Instant::now();
    let mut r = nimbus_controller::with_request_id(id.clone(), next.run(req))
        .instrument(span.clone())
        .await;
    span.in_scope(|| {
        tracing::debug!(
            status = r.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request answered"
        );
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        r.headers_mut().insert(HEADER, v);
    }
    if console {
        r.headers_mut().remove(header::WWW_AUTHENTICATE);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::acceptable;

    #[test]
    fn only_sane_ids_are_kept() {
        assert!(acceptable("abc-123_x.y:z"));
        assert!(!acceptable(""));
        assert!(!acceptable("has space"));
        assert!(!acceptable("new\nline"));
        assert!(!acceptable(&"a".repeat(129)));
    }
}
