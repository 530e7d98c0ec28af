//! `{error, code}` bodies with the status each controller error maps to.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nimbus_controller::ControllerError;
use serde_json::json;

/// An error answer; `code` is the request's transaction id.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub code: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>, code: &str) -> Self {
        ApiError {
            status,
            message: message.into(),
            code: code.to_string(),
        }
    }

    pub fn bad_request(message: impl Into<String>, code: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message, code)
    }

    pub fn from_controller(e: ControllerError, code: &str) -> Self {
        let status = match &e {
            ControllerError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ControllerError::Unauthorized => StatusCode::UNAUTHORIZED,
            ControllerError::Forbidden(_) => StatusCode::FORBIDDEN,
            ControllerError::NotFound(_) => StatusCode::NOT_FOUND,
            ControllerError::Conflict(_) => StatusCode::CONFLICT,
            ControllerError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ControllerError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            ControllerError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ControllerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ControllerError::QuotaExceeded(_) => StatusCode::FORBIDDEN,
            ControllerError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ControllerError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string(), code)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            axum::Json(json!({"error": self.message, "code": self.code})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"OpenWhisk secure realm\""),
            );
        }
        r
    }
}
