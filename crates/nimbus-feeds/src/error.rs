use thiserror::Error;

/// Why a feed lifecycle call failed; shown to the caller as the feed action's error.
#[derive(Debug, Error)]
pub enum FeedError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    /// A destination the egress policy refuses: answered 403 before anything is stored.
    #[error("{0}")]
    EgressRefused(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("storage failure: {0}")]
    Store(#[from] nimbus_store::StoreError),
}

pub type FeedResult<T> = Result<T, FeedError>;

pub fn invalid(msg: impl Into<String>) -> FeedError {
    FeedError::Invalid(msg.into())
}
