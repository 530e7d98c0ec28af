//! Storage for event delivery: scheduled (delayed) and per-key ordered queue entries, and the
//! per-namespace dead-letter list.

use crate::{QueuedInvocation, StoreResult};
use async_trait::async_trait;
use nimbus_model::{Activation, ActivationId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An event that could not be delivered: a rule's action kept failing until its retry policy
/// gave up, or a feed message could not be turned into an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// 32 hex characters, unique within the namespace.
    pub id: String,
    pub namespace: String,
    /// Where the event came from, e.g. `rule:guest/r1` or `feed:mqtt:guest/t1`.
    pub source: String,
    /// Why it was not delivered (the last error).
    pub reason: String,
    /// The original event.
    pub event: Value,
    /// Delivery attempts made before giving up (0 when it was never deliverable).
    pub attempts: u32,
    /// Epoch ms.
    pub created_at: i64,
    /// What a redrive needs (rule, trigger, action, last activation…); opaque to the store.
    pub details: Value,
}

/// Where and when a queue entry may run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Epoch ms before which the entry is not claimed (0 = now).
    pub not_before: i64,
    /// Entries with the same key run one at a time, in the order they were enqueued; a
    /// scheduled retry keeps its place, so later entries of its key wait for it.
    pub order_key: Option<String>,
}

#[async_trait]
pub trait DeliveryQueue: Send + Sync {
    /// Like [`crate::InvocationQueue::enqueue`], with a not-before time and an ordering key.
    async fn enqueue_scheduled(&self, item: &QueuedInvocation, s: &Schedule) -> StoreResult<()>;
    /// One trigger fire, atomically: queues every rule activation in `items` and stores the
    /// trigger's activation `record`. A crash leaves all of them or none, so whoever fires an
    /// event again after a restart can tell by the record whether it had fired.
    async fn enqueue_fire(
        &self,
        items: &[(QueuedInvocation, Schedule)],
        record: &Activation,
    ) -> StoreResult<()>;
    /// Atomically stores the finished (failed) activation `record` of the claimed entry `id`
    /// and replaces that entry by `next` (a new activation id), pending from `not_before`. The
    /// entry keeps its ordering key and position, so a crash can neither lose nor double it.
    async fn complete_and_retry(
        &self,
        id: &ActivationId,
        record: &Activation,
        next: &QueuedInvocation,
        not_before: i64,
    ) -> StoreResult<()>;
    /// Atomically stores the finished activation, removes its queue entry and adds `dl` to the
    /// dead-letter list.
    async fn complete_and_dead_letter(
        &self,
        id: &ActivationId,
        record: &Activation,
        dl: &DeadLetter,
    ) -> StoreResult<()>;
    /// The earliest `not_before` of a pending entry that is not due yet, if any.
    async fn next_due(&self) -> StoreResult<Option<i64>>;
}

#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    /// Adds an entry; `Conflict` if its id exists in the namespace.
    async fn put_dead_letter(&self, dl: &DeadLetter) -> StoreResult<()>;
    async fn get_dead_letter(&self, ns: &str, id: &str) -> StoreResult<Option<DeadLetter>>;
    /// Newest first.
    async fn list_dead_letters(
        &self,
        ns: &str,
        skip: u64,
        limit: Option<u64>,
    ) -> StoreResult<Vec<DeadLetter>>;
    async fn count_dead_letters(&self, ns: &str) -> StoreResult<u64>;
    /// Returns whether it existed.
    async fn delete_dead_letter(&self, ns: &str, id: &str) -> StoreResult<bool>;
    /// Deletes every entry of the namespace; returns how many.
    async fn purge_dead_letters(&self, ns: &str) -> StoreResult<u64>;
}
