//! Storage accounting: per-namespace byte counters, storage quotas and activation retention.
//!
//! What a namespace is charged for: the stored bytes of its activation records (results and
//! logs included), entity documents (action code included), queued invocation payloads and
//! dead letters. The embedded store keeps one counter row per namespace, updated by the same
//! transaction as each write (SQLite triggers), so the figure is exact without scanning.

use crate::StoreResult;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Server-wide storage limits; each namespace may override them ([`NamespaceLimits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageLimits {
    /// Bytes a namespace may store (see the module docs for what counts).
    pub quota_bytes: u64,
    /// Activation records that started longer ago than this are deleted.
    #[serde(serialize_with = "millis")]
    pub max_age: Duration,
    /// Only the newest this many activation records of a namespace are kept.
    pub max_count: u64,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Default for StorageLimits {
    /// 1 GiB, 7 days and 10 000 records per namespace: a week of history for a moderately busy
    /// function, and at most a few GiB for a handful of tenants on a small server.
    fn default() -> Self {
        StorageLimits {
            quota_bytes: 1 << 30,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_count: 10_000,
        }
    }
}

/// Per-namespace overrides of [`StorageLimits`]; `None` keeps the server's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceLimits {
    pub quota_bytes: Option<u64>,
    /// Milliseconds.
    pub max_age_ms: Option<u64>,
    pub max_count: Option<u64>,
}

impl NamespaceLimits {
    /// The limits in force: these overrides over `defaults`.
    pub fn effective(&self, defaults: &StorageLimits) -> StorageLimits {
        StorageLimits {
            quota_bytes: self.quota_bytes.unwrap_or(defaults.quota_bytes),
            max_age: self
                .max_age_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.max_age),
            max_count: self.max_count.unwrap_or(defaults.max_count),
        }
    }

    pub fn is_empty(&self) -> bool {
        self == &NamespaceLimits::default()
    }
}

/// A namespace's storage use and the limits in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceStorage {
    pub namespace: String,
    /// Bytes charged against the quota.
    pub bytes: u64,
    /// Activation records stored.
    pub activations: u64,
    pub limits: StorageLimits,
    /// What of `limits` is set for this namespace (the rest is the server's default).
    pub overrides: NamespaceLimits,
}

#[async_trait]
pub trait StorageAccounting: Send + Sync {
    /// Whether a new write of `ns` (an invocation, an entity) can be admitted now:
    /// `QuotaExceeded` when the namespace has reached its quota, `Full` when the disk has.
    /// Answered from memory; it may lag the store by the writes of the last fraction of a
    /// second (the stores check again, exactly, when they write).
    fn admit(&self, _ns: &str) -> StoreResult<()> {
        Ok(())
    }
    async fn namespace_storage(&self, ns: &str) -> StoreResult<NamespaceStorage>;
    async fn namespace_limits(&self, ns: &str) -> StoreResult<NamespaceLimits>;
    /// Replaces the namespace's overrides (all `None`: back to the server defaults).
    async fn set_namespace_limits(&self, ns: &str, limits: &NamespaceLimits) -> StoreResult<()>;
    /// Deletes one activation record; returns whether it existed.
    async fn delete_activation(
        &self,
        ns: &str,
        id: &nimbus_model::ActivationId,
    ) -> StoreResult<bool>;
}

/// `1.5 MiB`, `512 B`: sizes in messages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if v.fract() < 0.05 || v >= 100.0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1 << 30), "1 GiB");
        assert_eq!(human_bytes(300 * (1 << 20)), "300 MiB");
    }

    #[test]
    fn overrides_apply_over_defaults() {
        let d = StorageLimits::default();
        let o = NamespaceLimits {
            max_count: Some(3),
            ..Default::default()
        };
        let e = o.effective(&d);
        assert_eq!(e.max_count, 3);
        assert_eq!(e.quota_bytes, d.quota_bytes);
        assert!(NamespaceLimits::default().is_empty());
    }
}
