use nimbus_model::ModelError;
use nimbus_store::StoreError;
use thiserror::Error;

/// Failures of a use case, each mapping to one HTTP status in the API layer.
#[derive(Debug, Error)]
pub enum ControllerError {
    #[error("{0}")]
    BadRequest(String),
    #[error("The supplied authentication is invalid.")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Throttled(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    Unavailable(String),
    /// The namespace reached its storage quota (nothing was stored).
    #[error("{0}")]
    QuotaExceeded(String),
    /// The server's disk is full (nothing was stored): HTTP 507.
    #[error("{0}")]
    InsufficientStorage(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, ControllerError>;

impl ControllerError {
    pub fn not_found() -> Self {
        ControllerError::NotFound("The requested resource does not exist.".into())
    }

    pub fn forbidden() -> Self {
        ControllerError::Forbidden(
            "The supplied authentication is not authorized to access this resource.".into(),
        )
    }
}

impl From<ModelError> for ControllerError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Invalid(m) => ControllerError::BadRequest(m),
            ModelError::TooLarge(m) => ControllerError::TooLarge(m),
        }
    }
}

impl From<StoreError> for ControllerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(_) => {
                ControllerError::Conflict("Concurrent modification to resource detected.".into())
            }
            e @ StoreError::QuotaExceeded { .. } => ControllerError::QuotaExceeded(format!("{e}.")),
            StoreError::Full(m) => {
                tracing::warn!(error = %m, "write refused: the store's disk is full");
                ControllerError::InsufficientStorage(format!(
                    "The server is out of storage space, nothing was stored: {m}"
                ))
            }
            other => {
                tracing::error!(error = %other, "store failure");
                ControllerError::Internal(format!(
                    "The platform could not access its store: {other}"
                ))
            }
        }
    }
}
