//! The Nimbus domain model.
//!
//! Everything here is plain data plus validation: entity shapes (serialised exactly as the
//! OpenWhisk REST API shows them), names and paths, limits, kinds and activation records.
//! No I/O, no HTTP types: the store, the controller and the API all speak these types.

pub mod activation;
pub mod entity;
pub mod error;
pub mod exec;
pub mod kinds;
pub mod limits;
pub mod names;
pub mod params;
pub mod wasm;

pub use activation::{
    Activation, ActivationBrief, ActivationId, ActivationResponse, ResponseStatus,
};
pub use entity::{Action, EntityKind, Package, Rule, RuleStatus, Trigger, Version};
pub use error::ModelError;
pub use exec::Exec;
pub use limits::{ActionLimits, SystemLimits};
pub use names::{EntityPath, FullyQualifiedName};
pub use params::KeyValues;

/// Milliseconds since the Unix epoch, the time unit of every OpenWhisk timestamp.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
