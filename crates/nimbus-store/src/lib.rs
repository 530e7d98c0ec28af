//! Storage boundaries of Nimbus.
//!
//! Four traits, one concern each, collected in [`Store`]: entities (actions, packages, triggers,
//! rules as JSON documents with an optimistic revision), activation records, the durable
//! invocation queue, and namespace credentials. The controller only sees `Arc<dyn Store>`, so a
//! PostgreSQL implementation can be added beside [`sqlite::SqliteStore`] without touching it.

pub mod delivery;
pub mod feeds;
pub mod sqlite;
pub mod storage;

use async_trait::async_trait;
use nimbus_model::{Activation, ActivationId, EntityKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

pub use delivery::{DeadLetter, DeadLetterStore, DeliveryQueue, Schedule};
pub use feeds::{FeedRegistration, FeedStore};
pub use sqlite::{Expect, OpenOptions, SqliteStore};
pub use storage::{NamespaceLimits, NamespaceStorage, StorageAccounting, StorageLimits};

#[derive(Debug, Clone, Error)]
pub enum StoreError {
    /// Insert of an existing key, or an update whose expected revision is stale.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("storage failure: {0}")]
    Backend(String),
    #[error("stored document is corrupt: {0}")]
    Corrupt(String),
    /// The disk holding the store is full (`SQLITE_FULL`, `ENOSPC`), or its free space fell
    /// below the reserve kept for already accepted work. Nothing of the write was stored.
    #[error("{0}")]
    Full(String),
    /// The namespace's stored bytes reached its storage quota; nothing was stored.
    #[error(
        "namespace {namespace} has used {} of its {} storage quota; delete actions, packages or dead letters, wait for activation retention to remove old records, or ask the operator to raise the quota",
        storage::human_bytes(*used),
        storage::human_bytes(*quota)
    )]
    QuotaExceeded {
        namespace: String,
        used: u64,
        quota: u64,
    },
    /// The database cannot be trusted or does not match the data directory (missing, damaged,
    /// newer schema, lost commits). The message says what is wrong and how to recover.
    #[error("{0}")]
    Integrity(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One stored entity document.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDoc {
    pub namespace: String,
    pub kind: EntityKind,
    /// `name` or `pkg/name`.
    pub key: String,
    pub doc: Value,
    /// Epoch ms of the last write; lists are sorted by it, newest first.
    pub updated: i64,
    /// Increases by one on each write; used for optimistic concurrency.
    pub rev: i64,
}

/// Paging for entity lists.
#[derive(Debug, Clone, Default)]
pub struct EntityQuery {
    /// Only keys under this package (`pkg/…`); `None` lists every entity of the kind.
    pub package: Option<String>,
    /// Only top-level entities (no package part), e.g. for package-less listings.
    pub top_level_only: bool,
    pub skip: u64,
    /// `None` = no limit.
    pub limit: Option<u64>,
}

/// Filters for activation lists. Lists are newest first (by `start`; activations that started in
/// the same millisecond, the one recorded last first).
#[derive(Debug, Clone, Default)]
pub struct ActivationQuery {
    /// `action` or `pkg/action`: matches the record's name, or the tail of its `path` annotation.
    pub name: Option<String>,
    /// Epoch ms, inclusive.
    pub since: Option<i64>,
    /// Epoch ms, inclusive.
    pub upto: Option<i64>,
    pub skip: u64,
    pub limit: Option<u64>,
}

/// An accepted asynchronous invocation waiting in the durable queue.
///
/// The payload is opaque to the store except for one convention: a top-level `cause` string
/// names an activation record the entry depends on (a trigger's record for a rule's
/// activation), which retention keeps while the entry is queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedInvocation {
    pub activation_id: ActivationId,
    /// The invoking namespace.
    pub namespace: String,
    /// The controller's serialized request (opaque to the store).
    pub payload: Value,
    pub enqueued_at: i64,
    /// How many times it was claimed before (0 on first delivery).
    pub attempts: u32,
}

/// A namespace credential as stored. The secret half of a key (`uuid:secret`) is never kept:
/// only its SHA-256 ([`key_digest`]), so a copy of the database does not give access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub namespace: String,
    pub uuid: String,
    /// Lower-case hex SHA-256 of the secret.
    pub key_digest: String,
    /// After a rotation with a grace period: the digest of the previous secret, accepted until
    /// `previous_expires` (epoch ms).
    pub previous_digest: Option<String>,
    pub previous_expires: Option<i64>,
    /// Epoch ms of creation (0 for credentials migrated from before it was recorded).
    pub created: i64,
}

impl Credential {
    /// A new credential for `secret` (which is hashed here and not kept).
    pub fn new(namespace: &str, uuid: &str, secret: &str, created: i64) -> Credential {
        Credential {
            namespace: namespace.to_string(),
            uuid: uuid.to_string(),
            key_digest: key_digest(secret),
            previous_digest: None,
            previous_expires: None,
            created,
        }
    }
}

/// The stored form of a key's secret: lower-case hex SHA-256. Keys are 64 random alphanumerics
/// (about 380 bits), so a fast hash is enough: there is no dictionary to guess from, and a slow
/// KDF on every request would only cost CPU (docs/security.md).
pub fn key_digest(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

#[async_trait]
pub trait EntityStore: Send + Sync {
    /// The stored revision of a document without reading the document (cheap; lets callers
    /// validate a cached copy).
    async fn entity_rev(&self, ns: &str, kind: EntityKind, key: &str) -> StoreResult<Option<i64>>;
    async fn get_entity(
        &self,
        ns: &str,
        kind: EntityKind,
        key: &str,
    ) -> StoreResult<Option<StoredDoc>>;
    /// Writes a document. `expected_rev: None` inserts and fails with `Conflict` if the key exists;
    /// `Some(rev)` replaces only if the stored revision is still `rev`. Returns the new revision.
    async fn put_entity(
        &self,
        ns: &str,
        kind: EntityKind,
        key: &str,
        doc: &Value,
        updated: i64,
        expected_rev: Option<i64>,
    ) -> StoreResult<i64>;
    /// Deletes a document (`expected_rev` as for put, `None` = unconditionally). Returns whether it existed.
    async fn delete_entity(
        &self,
        ns: &str,
        kind: EntityKind,
        key: &str,
        expected_rev: Option<i64>,
    ) -> StoreResult<bool>;
    async fn list_entities(
        &self,
        ns: &str,
        kind: EntityKind,
        q: &EntityQuery,
    ) -> StoreResult<Vec<StoredDoc>>;
    async fn count_entities(&self, ns: &str, kind: EntityKind, q: &EntityQuery)
    -> StoreResult<u64>;
    /// A number that changes after every entity write or delete, when the backend can tell
    /// (the embedded store, the only writer of its file, can); `None` otherwise. Lets callers
    /// keep documents derived from several entities (a trigger and its rules) without a
    /// read per use.
    fn entity_generation(&self) -> Option<u64> {
        None
    }
}

#[async_trait]
pub trait ActivationStore: Send + Sync {
    /// Inserts or replaces the record with the same id.
    async fn put_activation(&self, a: &Activation) -> StoreResult<()>;
    /// Like [`ActivationStore::put_activation`] without waiting for the write: the record is
    /// queued in order and every read of activations made afterwards sees it (reads wait for
    /// queued records). A crash can lose what was queued in the last milliseconds, so use it
    /// only where the caller already holds the record (a blocking invoke answers with it).
    /// `false`: this backend does not defer; call `put_activation`.
    fn put_activation_deferred(&self, _a: &Activation) -> bool {
        false
    }
    /// Returns once every deferred record queued before the call is written (at shutdown).
    async fn flush_deferred(&self) -> StoreResult<()> {
        Ok(())
    }
    async fn get_activation(&self, ns: &str, id: &ActivationId) -> StoreResult<Option<Activation>>;
    async fn list_activations(&self, ns: &str, q: &ActivationQuery)
    -> StoreResult<Vec<Activation>>;
    async fn count_activations(&self, ns: &str, q: &ActivationQuery) -> StoreResult<u64>;
    /// Usage of a namespace's activations that started in `[since, upto]` (epoch ms, inclusive),
    /// per function and per UTC day. Trigger records are not counted.
    async fn usage(&self, ns: &str, since: Option<i64>, upto: Option<i64>) -> StoreResult<Usage>;
}

/// Usage of one function (`path_tail`: `name` or `pkg/name`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    pub name: String,
    pub kind: String,
    pub invocations: u64,
    /// Activations whose status was not success.
    pub errors: u64,
    pub duration_ms: u64,
    /// Sum over runs of memory limit (MB) × duration (ms); sequences add none of their own.
    pub mb_ms: u64,
}

/// Usage of one UTC day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageDay {
    /// Days since the epoch (`start / 86_400_000`).
    pub day: i64,
    pub invocations: u64,
    pub errors: u64,
    pub duration_ms: u64,
    pub mb_ms: u64,
}

/// A usage report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub functions: Vec<UsageRow>,
    pub days: Vec<UsageDay>,
}

#[async_trait]
pub trait InvocationQueue: Send + Sync {
    /// Durably records an accepted invocation (synced to disk before returning: the 202 follows it).
    async fn enqueue(&self, item: &QueuedInvocation) -> StoreResult<()>;
    /// Takes up to `max` pending items, oldest first, marking them claimed (and counting the attempt).
    async fn claim(&self, max: usize) -> StoreResult<Vec<QueuedInvocation>>;
    /// Atomically stores the finished activation and removes its queue entry.
    async fn complete(&self, id: &ActivationId, record: &Activation) -> StoreResult<()>;
    /// Puts a claimed item back to pending (graceful shutdown, retry).
    async fn release(&self, id: &ActivationId) -> StoreResult<()>;
    /// Run at start-up: every item claimed by a previous process that died goes back to pending.
    async fn recover_claimed(&self) -> StoreResult<u64>;
    /// Pending plus claimed items.
    async fn queue_depth(&self) -> StoreResult<u64>;
}

#[async_trait]
pub trait AuthStore: Send + Sync {
    /// Adds a credential; the namespace springs into existence with its first credential.
    async fn add_credential(&self, c: &Credential) -> StoreResult<()>;
    async fn credential_by_uuid(&self, uuid: &str) -> StoreResult<Option<Credential>>;
    /// A namespace's credentials, ordered by uuid.
    async fn credentials_of(&self, ns: &str) -> StoreResult<Vec<Credential>>;
    async fn list_namespaces(&self) -> StoreResult<Vec<String>>;
    /// Replaces the secret of credential `uuid` (its digest); with `previous_until`, the old
    /// secret stays valid until then (epoch ms), otherwise it stops working at once. Returns
    /// whether the credential exists.
    async fn replace_key(
        &self,
        uuid: &str,
        key_digest: &str,
        previous_until: Option<i64>,
    ) -> StoreResult<bool>;
    /// Deletes credential `uuid`; returns whether it existed.
    async fn delete_credential(&self, uuid: &str) -> StoreResult<bool>;
}

/// Everything the controller needs from storage.
pub trait Store:
    EntityStore
    + ActivationStore
    + InvocationQueue
    + AuthStore
    + DeliveryQueue
    + DeadLetterStore
    + StorageAccounting
{
}

impl<
    T: EntityStore
        + ActivationStore
        + InvocationQueue
        + AuthStore
        + DeliveryQueue
        + DeadLetterStore
        + StorageAccounting,
> Store for T
{
}
