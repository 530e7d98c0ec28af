use thiserror::Error;

/// Validation failures of the domain. Each message is the one a user sees in a 400 body,
/// worded after OpenWhisk's where OpenWhisk has one.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ModelError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
}

impl ModelError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        ModelError::Invalid(msg.into())
    }
}
