//! `POST /api/v1/webhooks/{id}`: requests to the endpoints of `/whisk.system/webhook` feeds.
//!
//! Authentication is the webhook's own secret (HMAC signature or token), checked by
//! `nimbus-feeds`; this handler only hands over headers and body and maps the outcome. The
//! [`Feeds`] come from a request extension that `nimbus serve` adds; without it the route
//! answers 404.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::{Extension, Path};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use nimbus_feeds::{Feeds, HookOutcome, HookRequest};

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/webhooks/{id}", post(receive))
}

async fn receive(
    feeds: Option<Extension<Feeds>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let tid = uuid_like();
    let Some(Extension(feeds)) = feeds else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "The requested resource does not exist.",
            &tid,
        )
        .into_response();
    };
    let req = HookRequest {
        headers: headers
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().ok()?.to_string(),
                ))
            })
            .collect(),
        body: body.to_vec(),
    };
    match feeds.webhook(&id, req).await {
        HookOutcome::Accepted(v) => (StatusCode::ACCEPTED, Json(v)).into_response(),
        HookOutcome::NotFound => ApiError::new(
            StatusCode::NOT_FOUND,
            "The requested resource does not exist.",
            &tid,
        )
        .into_response(),
        HookOutcome::Unauthorized(m) => {
            ApiError::new(StatusCode::UNAUTHORIZED, m, &tid).into_response()
        }
        HookOutcome::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, m, &tid).into_response(),
        HookOutcome::BadRequest(m) => {
            ApiError::new(StatusCode::BAD_REQUEST, m, &tid).into_response()
        }
        HookOutcome::TooLarge(m) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, m, &tid).into_response()
        }
        HookOutcome::Unavailable(m) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m, &tid).into_response()
        }
    }
}

/// A transaction id for error bodies.
fn uuid_like() -> String {
    nimbus_model::ActivationId::generate().to_string()
}
