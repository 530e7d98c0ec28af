//! Persistence of built-in feed registrations (see `nimbus-feeds`).

use crate::StoreResult;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One trigger's registration with a built-in feed provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedRegistration {
    pub namespace: String,
    pub trigger: String,
    /// `alarms/alarm`, `mqtt/subscribe`, …
    pub provider: String,
    /// Credential uuid of the namespace the feed fires as (the key is looked up, never stored here).
    pub uuid: String,
    pub config: Value,
    pub paused: bool,
    /// Provider progress, e.g. the last fired alarm slot.
    pub state: Value,
    pub created: i64,
    pub updated: i64,
}

#[async_trait]
pub trait FeedStore: Send + Sync {
    /// Inserts or replaces the registration of `(namespace, trigger)` (durable on return).
    async fn put_feed(&self, reg: &FeedRegistration) -> StoreResult<()>;
    async fn get_feed(&self, ns: &str, trigger: &str) -> StoreResult<Option<FeedRegistration>>;
    /// Returns whether it existed.
    async fn delete_feed(&self, ns: &str, trigger: &str) -> StoreResult<bool>;
    async fn list_feeds(&self) -> StoreResult<Vec<FeedRegistration>>;
    async fn set_feed_paused(&self, ns: &str, trigger: &str, paused: bool) -> StoreResult<bool>;
    /// Replaces the provider state (durable on return: alarms rely on it across crashes).
    async fn set_feed_state(&self, ns: &str, trigger: &str, state: &Value) -> StoreResult<bool>;
}
