//! Errors of the gateway core, each mapped to one HTTP status by the router.

use nimbus_controller::ControllerError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthorized(String),
    /// This server refuses the operation by policy (e.g. an unsandboxed build).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Throttled(String),
    #[error("{0}")]
    Unavailable(String),
    /// The namespace reached its storage quota.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The server's disk is full.
    #[error("{0}")]
    InsufficientStorage(String),
    #[error("{0}")]
    Internal(String),
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::BadRequest(_) => 400,
            GatewayError::Unauthorized(_) => 401,
            GatewayError::Forbidden(_) => 403,
            GatewayError::NotFound(_) => 404,
            GatewayError::Conflict(_) => 409,
            GatewayError::TooLarge(_) => 413,
            GatewayError::Throttled(_) => 429,
            GatewayError::Unavailable(_) => 503,
            GatewayError::QuotaExceeded(_) => 403,
            GatewayError::InsufficientStorage(_) => 507,
            GatewayError::Internal(_) => 500,
        }
    }

    pub(crate) fn io(what: &str, e: impl std::fmt::Display) -> Self {
        GatewayError::Internal(format!("{what}: {e}"))
    }
}

impl From<ControllerError> for GatewayError {
    fn from(e: ControllerError) -> Self {
        match e {
            ControllerError::BadRequest(m) | ControllerError::NotAcceptable(m) => {
                GatewayError::BadRequest(m)
            }
            ControllerError::Unauthorized => GatewayError::Unauthorized(e.to_string()),
            ControllerError::Forbidden(m) => GatewayError::Unauthorized(m),
            ControllerError::NotFound(m) => GatewayError::NotFound(m),
            ControllerError::Conflict(m) => GatewayError::Conflict(m),
            ControllerError::TooLarge(m) => GatewayError::TooLarge(m),
            ControllerError::Throttled(m) => GatewayError::Throttled(m),
            ControllerError::Unavailable(m) => GatewayError::Unavailable(m),
            ControllerError::QuotaExceeded(m) => GatewayError::QuotaExceeded(m),
            ControllerError::InsufficientStorage(m) => GatewayError::InsufficientStorage(m),
            ControllerError::Internal(m) => GatewayError::Internal(m),
        }
    }
}

pub type Result<T> = std::result::Result<T, GatewayError>;
