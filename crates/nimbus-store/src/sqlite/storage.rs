//! [`StorageAccounting`] on SQLite: the in-memory copies of the usage counters and limits,
//! quota and free-space admission, and retention.

use super::{Durability, OpenOptions, SqliteStore, db_err, now_millis, to_i64, to_u64};
use crate::storage::human_bytes;
use crate::{
    NamespaceLimits, NamespaceStorage, StorageAccounting, StorageLimits, StoreError, StoreResult,
};
use async_trait::async_trait;
use nimbus_model::ActivationId;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

/// Free space, beyond the reserve, below which records of blocking invokes are written before
/// the caller is answered instead of behind the answer (so a failure can be reported).
const DEFER_HEADROOM: u64 = 64 << 20;

/// Limits, counters and disk state shared by the store's handles and its writer thread.
pub(super) struct Shared {
    /// The directory whose filesystem holds the database.
    dir: PathBuf,
    reserve: u64,
    /// The last write that ran into a full disk has not been followed by a successful one.
    full: AtomicBool,
    defaults: RwLock<StorageLimits>,
    overrides: RwLock<HashMap<String, NamespaceLimits>>,
    /// Bytes per namespace, as last copied from `namespace_usage`.
    usage: RwLock<HashMap<String, u64>>,
}

impl Shared {
    pub(super) fn new(path: &Path, opts: &OpenOptions) -> Shared {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Shared {
            dir,
            reserve: opts.reserve_bytes,
            full: AtomicBool::new(false),
            defaults: RwLock::new(opts.limits),
            overrides: RwLock::default(),
            usage: RwLock::default(),
        }
    }

    /// Loads the overrides and counters (at open).
    pub(super) fn reload(&self, c: &Connection) -> StoreResult<()> {
        let overrides = read_overrides(c)?;
        *self
            .overrides
            .write()
            .unwrap_or_else(PoisonError::into_inner) = overrides;
        self.refresh_usage(c);
        Ok(())
    }

    /// Copies `namespace_usage` into memory (a failure keeps the previous copy).
    pub(super) fn refresh_usage(&self, c: &Connection) {
        let rows = c
            .prepare_cached("SELECT namespace, bytes FROM namespace_usage")
            .and_then(|mut st| {
                st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                    .collect::<Result<HashMap<_, _>, _>>()
            });
        match rows {
            Ok(rows) => {
                let rows = rows.into_iter().map(|(k, v)| (k, to_u64(v))).collect();
                *self.usage.write().unwrap_or_else(PoisonError::into_inner) = rows;
            }
            Err(e) => tracing::warn!(error = %e, "could not read the storage counters"),
        }
    }

    /// Records a batch's outcome: a full disk sets the flag, a commit clears it.
    pub(super) fn note_outcome(&self, err: Option<&StoreError>) {
        match err {
            Some(StoreError::Full(_)) => self.note_full(),
            Some(_) => {}
            None => self.full.store(false, Ordering::Release),
        }
    }

    pub(super) fn note_full(&self) {
        if !self.full.swap(true, Ordering::AcqRel) {
            tracing::error!(dir = %self.dir.display(), "the disk holding the store is full: new writes get 507 until space is freed; accepted work is retried");
        }
    }

    pub(super) fn limits_of(&self, ns: &str) -> StorageLimits {
        let defaults = *self.defaults.read().unwrap_or_else(PoisonError::into_inner);
        self.overrides
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(ns)
            .map(|o| o.effective(&defaults))
            .unwrap_or(defaults)
    }

    /// Bytes available to this process on the store's filesystem (`None`: unknown).
    // The field types are the platform's (`fsblkcnt_t`, `c_ulong`): u64 here, not everywhere.
    #[allow(clippy::useless_conversion)]
    fn free_bytes(&self) -> Option<u64> {
        let st = nix::sys::statvfs::statvfs(&self.dir).ok()?;
        Some(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
    }

    /// `Full` while the free space is below the reserve kept for accepted work.
    pub(super) fn check_space(&self) -> StoreResult<()> {
        if self.reserve == 0 {
            return Ok(());
        }
        match self.free_bytes() {
            Some(free) if free < self.reserve => Err(StoreError::Full(format!(
                "the disk holding the store ({}) has {} free, less than the {} this server keeps for work it already accepted; new writes are refused until space is freed",
                self.dir.display(),
                human_bytes(free),
                human_bytes(self.reserve)
            ))),
            _ => Ok(()),
        }
    }

    /// Whether a write can go behind the caller's answer: no recent full disk, and room to
    /// spare beyond the reserve.
    pub(super) fn roomy(&self) -> bool {
        !self.full.load(Ordering::Acquire)
            && self
                .free_bytes()
                .is_none_or(|free| free >= self.reserve.saturating_add(DEFER_HEADROOM))
    }

    fn quota_error(&self, ns: &str, used: u64) -> StoreError {
        StoreError::QuotaExceeded {
            namespace: ns.to_string(),
            used,
            quota: self.limits_of(ns).quota_bytes,
        }
    }
}

fn read_overrides(c: &Connection) -> StoreResult<HashMap<String, NamespaceLimits>> {
    let op = "read namespace limits";
    c.prepare_cached("SELECT namespace, quota_bytes, max_age_ms, max_count FROM namespace_limits")
        .and_then(|mut st| {
            st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    NamespaceLimits {
                        quota_bytes: r.get::<_, Option<i64>>(1)?.map(to_u64),
                        max_age_ms: r.get::<_, Option<i64>>(2)?.map(to_u64),
                        max_count: r.get::<_, Option<i64>>(3)?.map(to_u64),
                    },
                ))
            })?
            .collect()
        })
        .map_err(db_err(op))
}

/// Inside a write job: `QuotaExceeded` if adding `grow` bytes would take `ns` over its quota
/// (exact: reads the counter and the namespace's override in the writing transaction).
pub(super) fn check_quota(c: &Connection, shared: &Shared, ns: &str, grow: u64) -> StoreResult<()> {
    if grow == 0 {
        return Ok(());
    }
    let op = "check quota";
    let (used, quota): (i64, Option<i64>) = c
        .prepare_cached(
            "SELECT COALESCE((SELECT bytes FROM namespace_usage WHERE namespace = ?1), 0),
                    (SELECT quota_bytes FROM namespace_limits WHERE namespace = ?1)",
        )
        .and_then(|mut st| st.query_row(params![ns], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(db_err(op))?;
    let used = to_u64(used);
    let quota = quota
        .map(to_u64)
        .unwrap_or_else(|| shared.limits_of(ns).quota_bytes);
    if used.saturating_add(grow) > quota {
        return Err(StoreError::QuotaExceeded {
            namespace: ns.to_string(),
            used,
            quota,
        });
    }
    Ok(())
}

/// Records deleted per retention job at most, and record bytes: a job holds the writer, so
/// it stays short whatever the records' size.
const PRUNE_ROWS: usize = 200;
const PRUNE_BYTES: u64 = 16 << 20;

impl SqliteStore {
    /// Runs retention and refreshes the limits every `interval` until the store is dropped
    /// (the task holds only a weak handle). Deletes go through the writer in small jobs, so
    /// invocations keep flowing while old records are removed.
    pub fn start_housekeeping(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = std::sync::Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let store = SqliteStore { inner };
                match store.housekeeping_pass().await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(deleted = n, "retention deleted old activation records")
                    }
                    Err(e) => tracing::warn!(error = %e, "retention pass failed; retrying later"),
                }
                drop(store);
                tokio::time::sleep(interval).await;
            }
        })
    }

    /// One housekeeping pass: reloads the limits set by `nimbus admin`, then deletes what
    /// retention allows, job after job. Returns how many records it deleted.
    pub async fn housekeeping_pass(&self) -> StoreResult<u64> {
        let overrides = self.read("read namespace limits", read_overrides).await?;
        *self
            .inner
            .shared
            .overrides
            .write()
            .unwrap_or_else(PoisonError::into_inner) = overrides;
        // Records that queued work names as its cause (a trigger's record while its rules'
        // activations wait or retry) are kept. A snapshot is enough: new queue entries only
        // name records written with them.
        let keep: HashSet<String> = self
            .read("retention", |c| {
                c.prepare(
                    "SELECT DISTINCT json_extract(payload, '$.cause') FROM invocation_queue
                     WHERE json_valid(payload) AND json_type(payload, '$.cause') = 'text'",
                )
                .and_then(|mut st| st.query_map([], |r| r.get::<_, String>(0))?.collect())
                .map_err(db_err("retention"))
            })
            .await?;
        let keep = std::sync::Arc::new(keep);
        let mut total = 0;
        loop {
            let (n, more) = self.prune_step(std::sync::Arc::clone(&keep)).await?;
            total += n;
            if !more {
                return Ok(total);
            }
            // Let queued writes go first.
            tokio::task::yield_now().await;
        }
    }

    /// One retention job: deletes, oldest first, records past their namespace's age or count
    /// limit (at most [`PRUNE_ROWS`] / [`PRUNE_BYTES`]). Returns how many, and whether more may
    /// remain.
    pub(super) async fn prune_step(
        &self,
        keep: std::sync::Arc<HashSet<String>>,
    ) -> StoreResult<(u64, bool)> {
        let op = "retention";
        let shared = std::sync::Arc::clone(&self.inner.shared);
        self.write(op, Durability::Normal, move |c| {
            let now = now_millis();
            let namespaces: Vec<(String, i64)> = c
                .prepare_cached(
                    "SELECT namespace, activations FROM namespace_usage WHERE activations > 0",
                )
                .and_then(|mut st| {
                    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
                })
                .map_err(db_err(op))?;
            let mut rows_left = PRUNE_ROWS;
            let mut bytes_left = PRUNE_BYTES;
            let mut deleted = 0u64;
            for (ns, count) in namespaces {
                if rows_left == 0 || bytes_left == 0 {
                    return Ok((deleted, true));
                }
                let limits = shared.limits_of(&ns);
                let max_age = i64::try_from(limits.max_age.as_millis()).unwrap_or(i64::MAX);
                let cutoff = now.saturating_sub(max_age);
                let mut excess = to_u64(count).saturating_sub(limits.max_count);
                let candidates: Vec<(i64, String, i64, i64)> = c
                    .prepare_cached(
                        "SELECT rowid, activation_id, start_ms, octet_length(record) FROM activations
                         WHERE namespace = ?1 ORDER BY start_ms ASC LIMIT ?2",
                    )
                    .and_then(|mut st| {
                        st.query_map(params![ns, to_i64(rows_left as u64 * 2)], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                        })?
                        .collect()
                    })
                    .map_err(db_err(op))?;
                let mut delete = c
                    .prepare_cached("DELETE FROM activations WHERE rowid = ?1")
                    .map_err(db_err(op))?;
                for (rowid, id, start, bytes) in candidates {
                    if start >= cutoff && excess == 0 {
                        break; // oldest first: everything after is kept too
                    }
                    if keep.contains(&id) {
                        continue;
                    }
                    if rows_left == 0 || bytes_left == 0 {
                        return Ok((deleted, true));
                    }
                    delete.execute(params![rowid]).map_err(db_err(op))?;
                    deleted += 1;
                    excess = excess.saturating_sub(1);
                    rows_left -= 1;
                    bytes_left = bytes_left.saturating_sub(to_u64(bytes));
                }
            }
            Ok((deleted, rows_left == 0 || bytes_left == 0))
        })
        .await
    }
}

#[async_trait]
impl StorageAccounting for SqliteStore {
    fn admit(&self, ns: &str) -> StoreResult<()> {
        let shared = &self.inner.shared;
        let used = shared
            .usage
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(ns)
            .copied()
            .unwrap_or(0);
        if used >= shared.limits_of(ns).quota_bytes {
            return Err(shared.quota_error(ns, used));
        }
        shared.check_space()
    }

    async fn namespace_storage(&self, ns: &str) -> StoreResult<NamespaceStorage> {
        let op = "namespace storage";
        let ns = ns.to_string();
        let shared = std::sync::Arc::clone(&self.inner.shared);
        crate::ActivationStore::flush_deferred(self).await?;
        self.read(op, move |c| {
            let (bytes, activations): (i64, i64) = c
                .prepare_cached(
                    "SELECT bytes, activations FROM namespace_usage WHERE namespace = ?1",
                )
                .and_then(|mut st| {
                    st.query_row(params![ns], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(db_err(op))?
                .unwrap_or((0, 0));
            let overrides = read_limits_row(c, &ns)?;
            let defaults = *shared
                .defaults
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            Ok(NamespaceStorage {
                limits: overrides.effective(&defaults),
                overrides,
                namespace: ns,
                bytes: to_u64(bytes),
                activations: to_u64(activations),
            })
        })
        .await
    }

    async fn namespace_limits(&self, ns: &str) -> StoreResult<NamespaceLimits> {
        let ns = ns.to_string();
        self.read("namespace limits", move |c| read_limits_row(c, &ns))
            .await
    }

    async fn set_namespace_limits(&self, ns: &str, limits: &NamespaceLimits) -> StoreResult<()> {
        let op = "set namespace limits";
        let (ns, l) = (ns.to_string(), limits.clone());
        let shared = std::sync::Arc::clone(&self.inner.shared);
        self.write(op, Durability::Full, move |c| {
            if l.is_empty() {
                c.execute(
                    "DELETE FROM namespace_limits WHERE namespace = ?1",
                    params![ns],
                )
                .map_err(db_err(op))?;
            } else {
                c.execute(
                    "INSERT INTO namespace_limits (namespace, quota_bytes, max_age_ms, max_count)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (namespace) DO UPDATE SET quota_bytes = excluded.quota_bytes,
                         max_age_ms = excluded.max_age_ms, max_count = excluded.max_count",
                    params![
                        ns,
                        l.quota_bytes.map(to_i64),
                        l.max_age_ms.map(to_i64),
                        l.max_count.map(to_i64)
                    ],
                )
                .map_err(db_err(op))?;
            }
            let mut o = shared
                .overrides
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if l.is_empty() {
                o.remove(&ns);
            } else {
                o.insert(ns, l);
            }
            Ok(())
        })
        .await
    }

    async fn delete_activation(&self, ns: &str, id: &ActivationId) -> StoreResult<bool> {
        let op = "delete activation";
        crate::ActivationStore::flush_deferred(self).await?;
        let (ns, id) = (ns.to_string(), id.clone());
        self.write(op, Durability::Full, move |c| {
            c.execute(
                "DELETE FROM activations WHERE namespace = ?1 AND activation_id = ?2",
                params![ns, id.as_str()],
            )
            .map(|n| n > 0)
            .map_err(db_err(op))
        })
        .await
    }
}

fn read_limits_row(c: &Connection, ns: &str) -> StoreResult<NamespaceLimits> {
    let op = "namespace limits";
    c.prepare_cached(
        "SELECT quota_bytes, max_age_ms, max_count FROM namespace_limits WHERE namespace = ?1",
    )
    .and_then(|mut st| {
        st.query_row(params![ns], |r| {
            Ok(NamespaceLimits {
                quota_bytes: r.get::<_, Option<i64>>(0)?.map(to_u64),
                max_age_ms: r.get::<_, Option<i64>>(1)?.map(to_u64),
                max_count: r.get::<_, Option<i64>>(2)?.map(to_u64),
            })
        })
        .optional()
    })
    .map(Option::unwrap_or_default)
    .map_err(db_err(op))
}
