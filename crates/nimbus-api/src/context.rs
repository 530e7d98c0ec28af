//! Per-request context: the transaction id, and the authenticated caller.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum_extra::headers::authorization::Basic;
use axum_extra::headers::{Authorization, HeaderMapExt};
use nimbus_controller::{ControllerError, Identity};
use nimbus_model::ActivationId;

/// A transaction id for the request (`code` in error bodies, `x-request-id` in logs).
#[derive(Debug, Clone)]
pub struct Tid(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Tid {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(t) = parts.extensions.get::<Tid>() {
            return Ok(t.clone());
        }
        let t = Tid(ActivationId::generate().to_string());
        parts.extensions.insert(t.clone());
        Ok(t)
    }
}

/// `Authorization: Basic base64(uuid:key)`, decoded.
pub fn basic_credentials(parts: &Parts) -> Option<(String, String)> {
    let b = parts.headers.typed_get::<Authorization<Basic>>()?;
    Some((b.username().to_string(), b.password().to_string()))
}

/// An authenticated caller plus the transaction id.
pub struct Ctx {
    pub who: Identity,
    pub tid: String,
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Ok(Tid(tid)) = Tid::from_request_parts(parts, state).await;
        let Some((uuid, key)) = basic_credentials(parts) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "The resource requires authentication, which was not supplied with the request",
                &tid,
            ));
        };
        match state.controller.authenticate(&uuid, &key).await {
            Ok(who) => Ok(Ctx { who, tid }),
            Err(ControllerError::Unauthorized) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "The supplied authentication is invalid",
                &tid,
            )),
            Err(e) => Err(ApiError::from_controller(e, &tid)),
        }
    }
}
