//! The embedded store: one SQLite file in WAL mode.
//!
//! # Connections
//! * One **writer** connection, owned by a dedicated writer thread. SQLite admits a single
//!   writer at a time anyway; serialising writers in-process is fair and cheap, whereas several
//!   writer connections would contend on the file lock through `busy_timeout` sleeps.
//! * **Group commit.** Writes are jobs sent to that thread. It takes every job waiting (up to
//!   [`MAX_BATCH`]) and runs them in one transaction, each job inside its own savepoint, so a
//!   failing job is rolled back alone; then one `COMMIT`, so one fsync, for the whole batch. A
//!   job's caller is answered only after that commit. While one fsync runs, the next batch
//!   gathers, so the rate of durable writes is no longer capped at one per fsync.
//! * A few (`READERS`) **reader** connections, each behind its own mutex and opened with
//!   `query_only`. WAL lets them read a committed snapshot while the writer writes. A reader is
//!   chosen round-robin, preferring one that is free.
//!
//! Reads run inside `tokio::task::spawn_blocking`, writes on the writer thread: never on the
//! async executor.
//! [`SqliteStore::open`] itself is synchronous (it is called once at start-up).
//!
//! # Durability
//! `synchronous` is a per-connection setting and SQLite refuses to change it inside a
//! transaction, so the writer sets it right before each batch, outside any transaction, to the
//! strongest level a job of the batch asks for:
//! * `FULL` for entity, auth and queue writes (and migrations): in WAL mode the WAL is
//!   fsynced at every commit, so an acknowledged write survives power loss (the API answers
//!   202 only after `enqueue` returns).
//! * `NORMAL` for [`ActivationStore::put_activation`] and [`InvocationQueue::claim`]: no fsync
//!   at commit, the WAL is synced at checkpoints. Still atomic and safe against a killed
//!   process; a power cut may lose the last few records, which is acceptable for logs of
//!   finished runs, and a lost claim costs nothing (start-up returns every claimed item to
//!   pending anyway). Since the WAL is sequential, the next `FULL` commit also makes those
//!   earlier records durable.
//!
//! The writer remembers the level it last set and issues the pragma only when a batch needs
//! another one; a failed pragma forgets it, so the next batch sets it again. A durable write
//! therefore never runs at `NORMAL`.
//!
//! Each write is one savepoint inside the batch's transaction (`BEGIN IMMEDIATE`), so an error
//! such as `SQLITE_FULL` rolls it back completely and is returned as [`StoreError::Backend`]; a
//! failed `COMMIT` fails every job of the batch, and nothing of it is written.
//!
//! # Schema
//! Migrations live in `src/migrations/NNNN_*.sql`, are applied in order and recorded in
//! `PRAGMA user_version`. The SQL avoids SQLite-only features so it can be ported to PostgreSQL
//! (except the usage triggers of `0007`, which a port writes in PL/pgSQL).
//!
//! # Full disks and quotas
//! `SQLITE_FULL` (SQLite's `ENOSPC`) becomes [`StoreError::Full`]. New work (entity writes,
//! enqueues, records of blocking invokes) is also refused with `Full` while the free space of
//! the store's filesystem is below the configured reserve, so the reserve stays for work
//! already accepted (completions, retries, retention's deletes). New work of a namespace at its
//! quota gets [`StoreError::QuotaExceeded`] (see [`crate::storage`]).
//!
//! # Integrity
//! See `sqlite/integrity.rs`: the checks [`SqliteStore::open_with`] runs before it trusts a
//! database, the seal that detects lost commits, and backup, restore and check.

use crate::{
    ActivationQuery, ActivationStore, AuthStore, Credential, EntityQuery, EntityStore,
    InvocationQueue, QueuedInvocation, StorageLimits, StoreError, StoreResult, StoredDoc, Usage,
    UsageDay, UsageRow,
};
use async_trait::async_trait;
use nimbus_model::{Activation, ActivationId, EntityKind};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use serde_json::Value;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError, mpsc};
use std::time::{Duration, Instant};

pub use integrity::{CheckReport, Copied, Installation, backup, check, restore};
use storage::Shared;

/// One schema migration: SQL, or a step that needs Rust (e.g. hashing existing keys).
enum Migration {
    Sql(&'static str),
    Rust(fn(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>),
}

/// Schema migrations; entry `i` brings `user_version` from `i` to `i + 1`.
const MIGRATIONS: &[Migration] = &[
    Migration::Sql(include_str!("migrations/0001_initial.sql")),
    Migration::Sql(include_str!("migrations/0002_delivery.sql")),
    Migration::Sql(include_str!("migrations/0003_usage.sql")),
    Migration::Sql(include_str!("migrations/0004_feeds.sql")),
    Migration::Sql(include_str!("migrations/0005_queue_indexes.sql")),
    Migration::Rust(migrations::hash_credentials),
    Migration::Sql(include_str!("migrations/0007_storage.sql")),
];

/// Number of reader connections.
const READERS: usize = 3;

/// Most write jobs committed together in one transaction.
const MAX_BATCH: usize = 256;

/// How long a connection waits for a lock held by another connection or process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes a WAL is truncated to when it restarts (`PRAGMA journal_size_limit`).
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// How often, at most, the writer copies the namespaces' byte counters into memory (for
/// [`crate::StorageAccounting::admit`]).
const USAGE_REFRESH: Duration = Duration::from_millis(100);

/// What [`SqliteStore::open_with`] may find.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Expect {
    /// A missing or empty database is a new installation.
    #[default]
    Any,
    /// The data directory shows an installation (the string says why, e.g. "it holds key
    /// files in DIR/auth"): the database must exist and hold one.
    Existing(String),
}

/// Settings of [`SqliteStore::open_with`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    pub expect: Expect,
    /// Run `PRAGMA quick_check` before trusting the file.
    pub quick_check: bool,
    /// Server-wide storage limits.
    pub limits: StorageLimits,
    /// Free bytes of the filesystem kept for work already accepted: below it, new writes get
    /// [`StoreError::Full`].
    pub reserve_bytes: u64,
    /// Longest time between a write and the seal that covers it (see `sqlite/integrity.rs`).
    pub seal_interval: Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            expect: Expect::Any,
            quick_check: false,
            limits: StorageLimits::default(),
            reserve_bytes: 0,
            seal_interval: Duration::from_secs(1),
        }
    }
}

/// SQLite-backed implementation of every store trait. Cheap to clone (shared connections).
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Limits, counters and the disk state, shared with the writer thread.
    shared: Arc<Shared>,
    installation: Installation,
    /// Jobs for the writer thread; it stops when this sender is dropped.
    writer: mpsc::Sender<Job>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// Bumped after every entity write or delete (see `EntityStore::entity_generation`).
    entity_generation: std::sync::atomic::AtomicU64,
    /// Deferred activation records queued and not yet committed (reads of activations wait
    /// while there are any).
    deferred: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// The `synchronous` level a write runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Durability {
    /// fsync at checkpoints only: survives a process crash.
    Normal,
    /// fsync at each commit: survives power loss.
    Full,
}

impl Durability {
    fn pragma_value(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        }
    }
}

/// Maps a SQLite error to `Full` (the disk is full) or `Backend`, naming the failed operation.
fn db_err(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| sql_error(op, &e)
}

fn sql_error(op: &str, e: &rusqlite::Error) -> StoreError {
    if matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    ) {
        return StoreError::Corrupt(format!("{op} failed: {e}"));
    }
    if is_disk_full(e) {
        StoreError::Full(format!(
            "{op} failed: the disk holding the store is full, nothing was written ({e}); free space on it (work already accepted is retried by itself)"
        ))
    } else {
        StoreError::Backend(format!("{op} failed: {e}"))
    }
}

/// `SQLITE_FULL`, or a failure to grow the WAL index (`SQLITE_IOERR_SHMSIZE`, what a full
/// tmpfs gives when the `-shm` file must grow).
fn is_disk_full(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => {
            f.code == ErrorCode::DiskFull || f.extended_code == rusqlite::ffi::SQLITE_IOERR_SHMSIZE
        }
        _ => false,
    }
}

fn encode<T: serde::Serialize>(op: &'static str, v: &T) -> StoreResult<String> {
    serde_json::to_string(v)
        .map_err(|e| StoreError::Backend(format!("{op}: cannot encode JSON: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn parse_id(text: &str) -> StoreResult<ActivationId> {
    ActivationId::parse(text).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "stored activation id {text:?} is not 32 hex characters"
        ))
    })
}

/// SQLite integers are signed; counts and offsets beyond `i64::MAX` are clamped.
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `LIMIT ? OFFSET ?` arguments; SQLite spells "no limit" as -1.
fn paging(skip: u64, limit: Option<u64>) -> [SqlValue; 2] {
    [
        SqlValue::Integer(limit.map_or(-1, to_i64)),
        SqlValue::Integer(to_i64(skip)),
    ]
}

/// The part of the `path` annotation after the namespace (`guest/pkg/a` -> `pkg/a`), or the
/// record's name when there is no usable annotation.
fn path_tail(a: &Activation) -> String {
    a.path_annotation()
        .and_then(|p| p.split_once('/'))
        .map(|(_, tail)| tail)
        .filter(|tail| !tail.is_empty())
        .unwrap_or(&a.name)
        .to_string()
}

fn open_connection(path: &Path) -> StoreResult<Connection> {
    let op = "open database";
    let conn = Connection::open(path).map_err(db_err(op))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err(op))?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(db_err(op))?;
    // A 32 MiB page cache per connection (SQLite's default is 2 MiB): under load the writer
    // otherwise spent much of its time copying pages in `pread`. No mmap: a reader remaps the
    // growing file (munmap, a TLB shootdown on every core) at the start of its transactions,
    // which cost more on the request path than the copies it saves.
    conn.pragma_update(None, "cache_size", -32_768)
        .map_err(db_err(op))?;
    Ok(conn)
}

fn migrate(conn: &mut Connection, path: &Path) -> StoreResult<()> {
    let op = "schema migration";
    let target = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    loop {
        // Read the version inside the write transaction: another process may migrate too.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err(op))?;
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db_err(op))?;
        if version > target {
            return Err(integrity::newer_schema(path, version, target));
        }
        if version == target {
            return Ok(());
        }
        let step = usize::try_from(version)
            .ok()
            .and_then(|i| MIGRATIONS.get(i))
            .ok_or_else(|| {
                StoreError::Backend(format!("invalid database schema version {version}"))
            })?;
        match step {
            Migration::Sql(sql) => tx.execute_batch(sql).map_err(db_err(op))?,
            Migration::Rust(f) => f(&tx).map_err(db_err(op))?,
        }
        tx.pragma_update(None, "user_version", version + 1)
            .map_err(db_err(op))?;
        tx.commit().map_err(db_err(op))?;
        tracing::info!(version = version + 1, "store schema migrated");
        if matches!(step, Migration::Rust(_)) {
            // Rust steps may delete secrets (plaintext keys): push the WAL into the file and
            // truncate it so no copy of the old pages is left behind.
            let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
    }
}

impl SqliteStore {
    /// Opens (creating the file and its parent directories if needed) the database at `path`,
    /// switches it to WAL mode and brings its schema up to date, with the default
    /// [`OpenOptions`]. Blocking: call it at start-up or from `spawn_blocking`.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        Self::open_with(path, &OpenOptions::default())
    }

    /// Like [`SqliteStore::open`], refusing with [`StoreError::Integrity`] a database that
    /// cannot be trusted: its file missing or empty where `opts.expect` says there is an
    /// installation, a `-wal` or seal file without it, a failed `quick_check`, a newer schema,
    /// no installation record, or fewer commits than its seal file recorded.
    pub fn open_with(path: &Path, opts: &OpenOptions) -> StoreResult<SqliteStore> {
        Self::open_checked(path, opts).map_err(|e| match e {
            StoreError::Corrupt(m) => integrity::damaged(path, &m),
            other => other,
        })
    }

    fn open_checked(path: &Path, opts: &OpenOptions) -> StoreResult<SqliteStore> {
        integrity::preflight(path, &opts.expect)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Backend(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        let mut writer = open_connection(path)?;
        // The writer thread's statements (BEGIN, SAVEPOINT, COMMIT) are cached as well.
        writer.set_prepared_statement_cache_capacity(64);
        let fresh = integrity::inspect(&writer, path, opts)?;
        let mode: String = writer
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(db_err("enable WAL"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "cannot enable WAL on {} (journal mode is {mode})",
                path.display()
            )));
        }
        writer
            .pragma_update(None, "synchronous", Durability::Full.pragma_value())
            .map_err(db_err("open database"))?;
        // After a burst (or a full disk) the WAL is cut back to this size when it restarts,
        // instead of keeping the space of its largest moment for good.
        writer
            .pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .map_err(db_err("open database"))?;
        migrate(&mut writer, path)?;
        let installation = integrity::verify_installation(&writer, path, fresh)?;

        let shared = Arc::new(Shared::new(path, opts));
        shared.reload(&writer)?;

        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = open_connection(path)?;
            r.pragma_update(None, "query_only", "ON")
                .map_err(db_err("open reader"))?;
            readers.push(Mutex::new(r));
        }
        let (jobs, queue) = mpsc::channel();
        let sealer = integrity::Sealer::new(path, &installation.id, opts.seal_interval);
        let writer_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("nimbus-sqlite-writer".into())
            .spawn(move || writer_thread(writer, queue, writer_shared, sealer))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                shared,
                installation,
                writer: jobs,
                readers,
                next_reader: AtomicUsize::new(0),
                entity_generation: std::sync::atomic::AtomicU64::new(0),
                deferred: Arc::default(),
            }),
        })
    }

    /// The installation this database belongs to.
    pub fn installation(&self) -> &Installation {
        &self.inner.installation
    }

    /// Copies the WAL into the database file and truncates it (`wal_checkpoint(TRUNCATE)`),
    /// e.g. at shutdown, so the file alone holds every commit.
    pub async fn checkpoint(&self) -> StoreResult<()> {
        let op = "checkpoint";
        self.submit(op, Durability::Full, true, move |c| {
            let busy: i64 = c
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                .map_err(db_err(op))?;
            if busy != 0 {
                return Err(StoreError::Backend(format!(
                    "{op}: the WAL is in use by another connection"
                )));
            }
            Ok(())
        })
        .await
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the writer thread, inside the next batch's transaction (in its own savepoint),
    /// and returns its result once that batch is committed with `synchronous` at least
    /// `durability`.
    async fn write<T, F>(&self, op: &'static str, durability: Durability, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        self.submit(op, durability, false, f).await
    }

    /// [`SqliteStore::write`] for new work of namespace `ns` (not the completion of work already
    /// accepted): refused with `Full` while the disk is below its reserve. `f` checks the quota
    /// itself ([`storage::check_quota`]) since only it knows how much it adds.
    async fn write_new<T, F>(
        &self,
        op: &'static str,
        durability: Durability,
        f: F,
    ) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        self.inner.shared.check_space()?;
        self.submit(op, durability, false, f).await
    }

    async fn submit<T, F>(
        &self,
        op: &'static str,
        durability: Durability,
        raw: bool,
        f: F,
    ) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let run = job(op, f, move |out| {
            let _ = tx.send(out);
        });
        self.inner
            .writer
            .send(Job {
                durability,
                raw,
                run,
            })
            .map_err(|_| StoreError::Backend(format!("{op} failed: the writer thread stopped")))?;
        rx.await
            .map_err(|_| StoreError::Backend(format!("{op} failed: the writer thread stopped")))?
    }

    /// Queues `f` for the writer without waiting for it; its failure is logged. The job counts
    /// in `deferred` until its batch's outcome is known. `false` if the writer is gone.
    fn submit_deferred<F>(&self, op: &'static str, f: F) -> bool
    where
        F: FnOnce(&mut Connection) -> StoreResult<()> + Send + 'static,
    {
        let deferred = Arc::clone(&self.inner.deferred);
        deferred.fetch_add(1, Ordering::AcqRel);
        let counter = Arc::clone(&deferred);
        let run = job(op, f, move |out| {
            if let Err(e) = out {
                tracing::error!(error = %e, "a deferred write failed");
            }
            counter.fetch_sub(1, Ordering::AcqRel);
        });
        let queued = Job {
            durability: Durability::Normal,
            raw: false,
            run,
        };
        if self.inner.writer.send(queued).is_err() {
            deferred.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Runs `f` on a reader connection, in a blocking thread.
    async fn read<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking(op, move || {
            let conn = inner.reader();
            f(&conn)
        })
        .await
    }

    /// `SELECT COUNT(*) FROM {table} WHERE {filter}` on a reader.
    async fn count_where(
        &self,
        op: &'static str,
        table: &'static str,
        filter: String,
        args: Vec<SqlValue>,
    ) -> StoreResult<u64> {
        self.read(op, move |c| {
            let sql = format!("SELECT COUNT(*) FROM {table} WHERE {filter}");
            c.prepare_cached(&sql)
                .and_then(|mut st| {
                    st.query_row(rusqlite::params_from_iter(args), |r| r.get::<_, i64>(0))
                })
                .map(to_u64)
                .map_err(db_err(op))
        })
        .await
    }

    /// Test hook: runs `f` on the writer connection as is (outside any transaction,
    /// `synchronous` left untouched), e.g. to inspect pragmas, corrupt a row or cap the file size.
    #[cfg(test)]
    async fn with_writer<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        self.submit("test hook", Durability::Normal, true, f).await
    }
}

/// A writer job running `f`, whose outcome goes to `done` once its batch's fate is known: `f`'s
/// error, or the batch's if the commit failed or the batch broke before `f` ran.
fn job<T, F, D>(op: &'static str, f: F, done: D) -> RunJob
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    D: FnOnce(StoreResult<T>) + Send + 'static,
{
    Box::new(move |conn: Option<&mut Connection>| {
        // A panic inside `f` must not take the writer thread down: it fails this job only (its
        // savepoint is rolled back like any failed job's). `None`: the batch broke before this
        // job could run.
        let result = conn.map(|conn| {
            std::panic::catch_unwind(AssertUnwindSafe(|| f(conn)))
                .unwrap_or_else(|_| Err(StoreError::Backend(format!("{op} failed: it panicked"))))
        });
        let ran = match &result {
            Some(Ok(_)) => Ran::Ok,
            Some(Err(StoreError::Full(_))) => Ran::Full,
            _ => Ran::Failed,
        };
        let deliver: Deliver = Box::new(move |commit: Option<&StoreError>| {
            done(match (result, commit) {
                (Some(Err(e)), _) => Err(e),
                (Some(Ok(v)), None) => Ok(v),
                (_, Some(e)) => Err(batch_error(op, e)),
                (None, None) => Err(StoreError::Backend(format!(
                    "{op} failed: the write was not run"
                ))),
            });
        });
        (ran, deliver)
    })
}

/// A job's error when its batch failed: the batch's error, under the job's name.
fn batch_error(op: &str, e: &StoreError) -> StoreError {
    match e {
        StoreError::Full(m) => StoreError::Full(format!("{op} failed: {m}")),
        other => StoreError::Backend(format!("{op} failed: {other}")),
    }
}

/// How a job's own statements went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    Ok,
    Failed,
    /// Failed because the disk is full.
    Full,
}

/// Delivers a job's result once its batch's fate is known (`Some(error)`: the commit failed).
type Deliver = Box<dyn FnOnce(Option<&StoreError>) + Send>;
/// Runs a job on the writer connection (`None`: skips it); returns how it went, and its
/// delivery.
type RunJob = Box<dyn FnOnce(Option<&mut Connection>) -> (Ran, Deliver) + Send>;

/// One write for the writer thread.
struct Job {
    durability: Durability,
    /// Run alone, outside any transaction (the test hook).
    raw: bool,
    run: RunJob,
}

/// The writer thread: takes the jobs waiting, commits them as one batch, answers them; between
/// batches, copies the usage counters into memory and seals (see `integrity.rs`); stops when
/// every sender is gone.
fn writer_thread(
    mut conn: Connection,
    queue: mpsc::Receiver<Job>,
    shared: Arc<Shared>,
    mut sealer: integrity::Sealer,
) {
    let mut next = None;
    // `synchronous` as last set on this connection (`open` sets FULL).
    let mut sync = Some(Durability::Full);
    // Usage counters changed since they were last copied, and when that was.
    let mut usage_dirty = false;
    let mut usage_at = Instant::now();
    loop {
        let first = match next.take() {
            Some(job) => job,
            None => {
                // Idle: wake up for the maintenance that is due, else wait for work.
                let due = [
                    usage_dirty.then(|| USAGE_REFRESH.saturating_sub(usage_at.elapsed())),
                    sealer.due_in(),
                ]
                .into_iter()
                .flatten()
                .min();
                let got = match due {
                    Some(wait) => queue.recv_timeout(wait),
                    None => queue
                        .recv()
                        .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                };
                match got {
                    Ok(job) => job,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if usage_dirty && usage_at.elapsed() >= USAGE_REFRESH {
                            usage_dirty = false;
                            usage_at = Instant::now();
                            shared.refresh_usage(&conn);
                        }
                        sealer.seal_if_due(&conn, &mut sync, &shared);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        sealer.seal_now(&conn, &mut sync, &shared);
                        return;
                    }
                }
            }
        };
        if first.raw {
            sync = None; // the hook may change anything
            let (_, deliver) = (first.run)(Some(&mut conn));
            deliver(None);
            continue;
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) if job.raw => {
                    next = Some(job);
                    break;
                }
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if commit_batch(&mut conn, batch, &mut sync, &shared) {
            usage_dirty = true;
            sealer.wrote();
        }
        if usage_dirty && usage_at.elapsed() >= USAGE_REFRESH {
            usage_dirty = false;
            usage_at = Instant::now();
            shared.refresh_usage(&conn);
        }
        sealer.seal_if_due(&conn, &mut sync, &shared);
    }
}

/// Runs `batch` in one transaction, each job in a savepoint, and answers every job after the
/// commit (or with the error that stopped the batch). Returns whether it committed.
fn commit_batch(
    conn: &mut Connection,
    batch: Vec<Job>,
    sync: &mut Option<Durability>,
    shared: &Shared,
) -> bool {
    let durability = batch
        .iter()
        .map(|j| j.durability)
        .max()
        .unwrap_or(Durability::Full);
    if let Err(e) =
        set_synchronous(conn, sync, durability).and_then(|_| savepoint(conn, "BEGIN IMMEDIATE"))
    {
        shared.note_outcome(Some(&e));
        for job in batch {
            reject(job, &e);
        }
        return false;
    }
    let mut done: Vec<Deliver> = Vec::with_capacity(batch.len());
    let mut broken: Option<StoreError> = None;
    let mut full = false;
    for job in batch {
        if let Some(e) = &broken {
            reject(job, e);
            continue;
        }
        if let Err(e) = savepoint(conn, "SAVEPOINT nimbus_job") {
            reject(job, &e);
            broken = Some(e);
            continue;
        }
        let (ran, deliver) = (job.run)(Some(conn));
        full |= ran == Ran::Full;
        let end = if ran == Ran::Ok {
            savepoint(conn, "RELEASE nimbus_job")
        } else {
            savepoint(conn, "ROLLBACK TO nimbus_job")
                .and_then(|_| savepoint(conn, "RELEASE nimbus_job"))
        };
        if let Err(e) = end {
            broken = Some(e);
        }
        done.push(deliver);
    }
    let outcome = match broken {
        Some(e) => Err(e),
        None => savepoint(conn, "COMMIT"),
    };
    let err = outcome.err();
    if err.is_some() && !conn.is_autocommit() {
        // Nothing of a batch that cannot commit is written.
        let _ = conn.execute_batch("ROLLBACK");
    }
    match &err {
        Some(e) => shared.note_outcome(Some(e)),
        None if full => shared.note_full(),
        None => shared.note_outcome(None),
    }
    for deliver in done {
        deliver(err.as_ref());
    }
    err.is_none()
}

/// Sets `synchronous` when the connection is not at `level` already. The pragma is parsed on
/// every call, hence the memory of the last level (`None`: unknown).
fn set_synchronous(
    conn: &Connection,
    sync: &mut Option<Durability>,
    level: Durability,
) -> StoreResult<()> {
    if *sync == Some(level) {
        return Ok(());
    }
    *sync = None;
    conn.pragma_update(None, "synchronous", level.pragma_value())
        .map_err(db_err("set synchronous"))?;
    *sync = Some(level);
    Ok(())
}

/// One transaction-control statement (cached: they run for every job).
fn savepoint(conn: &Connection, sql: &str) -> StoreResult<()> {
    conn.prepare_cached(sql)
        .and_then(|mut st| st.execute([]))
        .map(|_| ())
        .map_err(|e| sql_error("commit", &e))
}

/// Answers a job that never ran with the error that stopped its batch.
fn reject(job: Job, error: &StoreError) {
    let (_, deliver) = (job.run)(None);
    deliver(Some(error));
}

impl Inner {
    /// A free reader if there is one, else waits for the next one in round-robin order.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        let n = self.readers.len();
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            match self.readers[(start + i) % n].try_lock() {
                Ok(g) => return g,
                Err(TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        self.readers[start]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

async fn blocking<T, F>(op: &'static str, f: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> StoreResult<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        StoreError::Backend(format!("{op} failed: blocking task did not finish: {e}"))
    })?
}

/// `WHERE` clause and arguments shared by `list_entities` and `count_entities`.
fn entity_filter(ns: &str, kind: EntityKind, q: &EntityQuery) -> (String, Vec<SqlValue>) {
    let mut sql = String::from("namespace = ? AND collection = ?");
    let mut args = vec![
        SqlValue::Text(ns.to_string()),
        SqlValue::Text(kind.collection().to_string()),
    ];
    if let Some(pkg) = &q.package {
        // A prefix comparison rather than LIKE: package names may contain `_` or `%`.
        sql.push_str(" AND substr(key, 1, length(?)) = ?");
        let prefix = format!("{pkg}/");
        args.push(SqlValue::Text(prefix.clone()));
        args.push(SqlValue::Text(prefix));
    }
    if q.top_level_only {
        sql.push_str(" AND key NOT LIKE '%/%'");
    }
    (sql, args)
}

/// `WHERE` clause and arguments shared by `list_activations` and `count_activations`.
fn activation_filter(ns: &str, q: &ActivationQuery) -> (String, Vec<SqlValue>) {
    let mut sql = String::from("namespace = ?");
    let mut args = vec![SqlValue::Text(ns.to_string())];
    if let Some(name) = &q.name {
        sql.push_str(if name.contains('/') {
            " AND path_tail = ?"
        } else {
            " AND name = ?"
        });
        args.push(SqlValue::Text(name.clone()));
    }
    if let Some(since) = q.since {
        sql.push_str(" AND start_ms >= ?");
        args.push(SqlValue::Integer(since));
    }
    if let Some(upto) = q.upto {
        sql.push_str(" AND start_ms <= ?");
        args.push(SqlValue::Integer(upto));
    }
    (sql, args)
}

/// `execute` through the connection's statement cache: the queue's writes run thousands of times
/// a second, and parsing their SQL every time showed in profiles.
pub(crate) fn exec_cached<P: rusqlite::Params>(
    c: &Connection,
    sql: &str,
    p: P,
) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(p)
}

/// Inserts or replaces one activation record (on any connection or transaction).
fn upsert_activation(
    conn: &Connection,
    op: &'static str,
    a: &Activation,
    record: &str,
) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO activations (namespace, activation_id, name, path_tail, start_ms, end_ms, record,
                                  kind, status_code, duration_ms, memory_mb)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (namespace, activation_id) DO UPDATE SET
             name = excluded.name, path_tail = excluded.path_tail, start_ms = excluded.start_ms,
             end_ms = excluded.end_ms, record = excluded.record, kind = excluded.kind,
             status_code = excluded.status_code, duration_ms = excluded.duration_ms,
             memory_mb = excluded.memory_mb",
    )
    .and_then(|mut st| {
        let kind = a
            .annotations
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let memory = a
            .annotations
            .get("limits")
            .and_then(|l| l.get("memory"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        st.execute(params![
            a.namespace,
            a.activation_id.as_str(),
            a.name,
            path_tail(a),
            a.start,
            a.end,
            record,
            kind,
            a.response.status_code,
            a.duration.unwrap_or(0),
            memory
        ])
    })
    .map_err(db_err(op))?;
    Ok(())
}

#[async_trait]
impl EntityStore for SqliteStore {
    async fn entity_rev(&self, ns: &str, kind: EntityKind, key: &str) -> StoreResult<Option<i64>> {
        let op = "entity_rev";
        let (ns, key) = (ns.to_string(), key.to_string());
        self.read(op, move |c| {
            c.prepare_cached(
                "SELECT rev FROM entities WHERE namespace = ?1 AND collection = ?2 AND key = ?3",
            )
            .and_then(|mut st| {
                st.query_row(params![ns, kind.collection(), key], |r| r.get(0))
                    .optional()
            })
            .map_err(db_err(op))
        })
        .await
    }

    async fn get_entity(
        &self,
        ns: &str,
        kind: EntityKind,
        key: &str,
    ) -> StoreResult<Option<StoredDoc>> {
        let op = "get_entity";
        let (ns, key) = (ns.to_string(), key.to_string());
        self.read(op, move |c| {
            let row: Option<(String, i64, i64)> = c
                .prepare_cached(
                    "SELECT doc, updated, rev FROM entities
                     WHERE namespace = ?1 AND collection = ?2 AND key = ?3",
                )
                .and_then(|mut st| {
                    st.query_row(params![ns, kind.collection(), key], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .optional()
                })
                .map_err(db_err(op))?;
            row.map(|(doc, updated, rev)| {
                let doc = decode(&format!("entity {ns}/{}/{key}", kind.collection()), &doc)?;
                Ok(StoredDoc {
                    namespace: ns,
                    kind,
                    key,
                    doc,
                    updated,
                    rev,
                })
            })
            .transpose()
        })
        .await
    }

    async fn put_entity(
        &self,
        ns: &str,
        kind: EntityKind,
        key: &str,
        doc: &Value,
        updated: i64,
        expected_rev: Option<i64>,
    ) -> StoreResult<i64> {
        let op = "put_entity";
        let doc = encode(op, doc)?;
        let (ns, key) = (ns.to_string(), key.to_string());
        let shared = Arc::clone(&self.inner.shared);
        let result = self
            .write_new(op, Durability::Full, move |c| {
                let what = format!("{} {ns}/{key}", kind.collection());
                // Charged: what the document adds (an update that does not grow is free).
                let old: i64 = match expected_rev {
                    None => 0,
                    Some(_) => c
                        .prepare_cached(
                            "SELECT octet_length(doc) FROM entities
                             WHERE namespace = ?1 AND collection = ?2 AND key = ?3",
                        )
                        .and_then(|mut st| {
                            st.query_row(params![ns, kind.collection(), key], |r| r.get(0))
                                .optional()
                        })
                        .map_err(db_err(op))?
                        .unwrap_or(0),
                };
                let grow = (doc.len() as u64).saturating_sub(to_u64(old));
                storage::check_quota(c, &shared, &ns, grow)?;
                match expected_rev {
                    None => {
                        let n = c
                        .execute(
                            "INSERT INTO entities (namespace, collection, key, doc, updated, rev)
                             VALUES (?1, ?2, ?3, ?4, ?5, 1)
                             ON CONFLICT (namespace, collection, key) DO NOTHING",
                            params![ns, kind.collection(), key, doc, updated],
                        )
                        .map_err(db_err(op))?;
                        if n == 0 {
                            return Err(StoreError::Conflict(format!("{what} already exists")));
                        }
                        Ok(1)
                    }
                    Some(rev) => {
                        let n = c
                            .execute(
                                "UPDATE entities SET doc = ?1, updated = ?2, rev = rev + 1
                             WHERE namespace = ?3 AND collection = ?4 AND key = ?5 AND rev = ?6",
                                params![doc, updated, ns, kind.collection(), key, rev],
                            )
                            .map_err(db_err(op))?;
                        if n == 0 {
                            return Err(StoreError::Conflict(format!(
                                "{what} was changed or deleted (expected revision {rev})"
                            )));
                        }
                        Ok(rev + 1)
                    }
                }
            })
            .await;
        // After the commit (or the failure): a cache filled before it sees a new generation.
        self.inner.entity_generation.fetch_add(1, Ordering::Release);
        result
    }

    async fn delete_entity(
        &self,
        ns: &str,
        kind: EntityKind,
        key: &str,
        expected_rev: Option<i64>,
    ) -> StoreResult<bool> {
        let op = "delete_entity";
        let (ns, key) = (ns.to_string(), key.to_string());
        let result = self.write(op, Durability::Full, move |c| {
            let n = c
                .execute(
                    "DELETE FROM entities
                     WHERE namespace = ?1 AND collection = ?2 AND key = ?3 AND (?4 IS NULL OR rev = ?4)",
                    params![ns, kind.collection(), key, expected_rev],
                )
                .map_err(db_err(op))?;
            match (n, expected_rev) {
                (0, Some(rev)) => Err(StoreError::Conflict(format!(
                    "{} {ns}/{key} was changed or deleted (expected revision {rev})",
                    kind.collection()
                ))),
                (n, _) => Ok(n > 0),
            }
        })
        .await;
        self.inner.entity_generation.fetch_add(1, Ordering::Release);
        result
    }

    async fn list_entities(
        &self,
        ns: &str,
        kind: EntityKind,
        q: &EntityQuery,
    ) -> StoreResult<Vec<StoredDoc>> {
        let op = "list_entities";
        let (filter, mut args) = entity_filter(ns, kind, q);
        args.extend(paging(q.skip, q.limit));
        let ns = ns.to_string();
        self.read(op, move |c| {
            let sql = format!(
                "SELECT key, doc, updated, rev FROM entities WHERE {filter}
                 ORDER BY updated DESC, key ASC LIMIT ? OFFSET ?"
            );
            let rows: Vec<(String, String, i64, i64)> = c
                .prepare_cached(&sql)
                .and_then(|mut st| {
                    st.query_map(rusqlite::params_from_iter(args), |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })?
                    .collect()
                })
                .map_err(db_err(op))?;
            rows.into_iter()
                .map(|(key, doc, updated, rev)| {
                    let doc = decode(&format!("entity {ns}/{}/{key}", kind.collection()), &doc)?;
                    Ok(StoredDoc {
                        namespace: ns.clone(),
                        kind,
                        key,
                        doc,
                        updated,
                        rev,
                    })
                })
                .collect()
        })
        .await
    }

    async fn count_entities(
        &self,
        ns: &str,
        kind: EntityKind,
        q: &EntityQuery,
    ) -> StoreResult<u64> {
        let (filter, args) = entity_filter(ns, kind, q);
        self.count_where("count_entities", "entities", filter, args)
            .await
    }

    fn entity_generation(&self) -> Option<u64> {
        Some(self.inner.entity_generation.load(Ordering::Acquire))
    }
}

#[async_trait]
impl ActivationStore for SqliteStore {
    async fn put_activation(&self, a: &Activation) -> StoreResult<()> {
        let op = "put_activation";
        let record = encode(op, a)?;
        let a = a.clone();
        self.write(op, Durability::Normal, move |c| {
            upsert_activation(c, op, &a, &record)
        })
        .await
    }

    /// Declined (so the caller writes and sees the outcome) when the disk is full or nearly.
    fn put_activation_deferred(&self, a: &Activation) -> bool {
        let op = "put_activation";
        if !self.inner.shared.roomy() {
            return false;
        }
        let Ok(record) = encode(op, a) else {
            return false;
        };
        let a = a.clone();
        self.submit_deferred(op, move |c| upsert_activation(c, op, &a, &record))
    }

    /// A no-op write queued now commits after every deferred record queued before it (the
    /// writer takes jobs in order).
    async fn flush_deferred(&self) -> StoreResult<()> {
        if self.inner.deferred.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        self.write("flush deferred", Durability::Normal, |_| Ok(()))
            .await
    }

    async fn get_activation(&self, ns: &str, id: &ActivationId) -> StoreResult<Option<Activation>> {
        let op = "get_activation";
        self.flush_deferred().await?;
        let (ns, id) = (ns.to_string(), id.clone());
        self.read(op, move |c| {
            let record: Option<String> = c
                .prepare_cached(
                    "SELECT record FROM activations WHERE namespace = ?1 AND activation_id = ?2",
                )
                .and_then(|mut st| {
                    st.query_row(params![ns, id.as_str()], |r| r.get(0))
                        .optional()
                })
                .map_err(db_err(op))?;
            record
                .map(|r| decode(&format!("activation {id}"), &r))
                .transpose()
        })
        .await
    }

    async fn list_activations(
        &self,
        ns: &str,
        q: &ActivationQuery,
    ) -> StoreResult<Vec<Activation>> {
        let op = "list_activations";
        self.flush_deferred().await?;
        let (filter, mut args) = activation_filter(ns, q);
        args.extend(paging(q.skip, q.limit));
        self.read(op, move |c| {
            let sql = format!(
                "SELECT activation_id, record FROM activations WHERE {filter}
                 ORDER BY start_ms DESC, rowid DESC LIMIT ? OFFSET ?"
            );
            let rows: Vec<(String, String)> = c
                .prepare_cached(&sql)
                .and_then(|mut st| {
                    st.query_map(rusqlite::params_from_iter(args), |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?
                    .collect()
                })
                .map_err(db_err(op))?;
            rows.iter()
                .map(|(id, record)| decode(&format!("activation {id}"), record))
                .collect()
        })
        .await
    }

    async fn count_activations(&self, ns: &str, q: &ActivationQuery) -> StoreResult<u64> {
        self.flush_deferred().await?;
        let (filter, args) = activation_filter(ns, q);
        self.count_where("count_activations", "activations", filter, args)
            .await
    }

    async fn usage(&self, ns: &str, since: Option<i64>, upto: Option<i64>) -> StoreResult<Usage> {
        let op = "usage";
        self.flush_deferred().await?;
        let (filter, args) = activation_filter(
            ns,
            &ActivationQuery {
                since,
                upto,
                ..Default::default()
            },
        );
        // Deleted records live on in `usage_rollup`, per whole UTC day.
        let day_of = |ms: i64| ms.div_euclid(86_400_000);
        let mut rollup_args = vec![
            SqlValue::Text(ns.to_string()),
            SqlValue::Integer(since.map_or(i64::MIN, day_of)),
            SqlValue::Integer(upto.map_or(i64::MAX, day_of)),
        ];
        let mut all_args = args;
        all_args.append(&mut rollup_args);
        self.read(op, move |c| {
            // Trigger records are not runs; sequences are counted as invocations but their
            // components carry the memory time, so a sequence adds no MB·ms of its own.
            let runs = format!(
                "SELECT path_tail, kind, start_ms / 86400000 AS day, 1 AS n, status_code <> 0 AS err,
                        duration_ms AS ms,
                        CASE WHEN kind <> 'sequence' THEN duration_ms * memory_mb ELSE 0 END AS mbms
                 FROM activations WHERE {filter} AND kind <> 'trigger'
                 UNION ALL
                 SELECT path_tail, kind, day, invocations, errors, duration_ms, mb_ms
                 FROM usage_rollup WHERE namespace = ? AND day BETWEEN ? AND ?"
            );
            let sql = format!(
                "SELECT path_tail, MAX(kind), SUM(n), SUM(err), SUM(ms), SUM(mbms)
                 FROM ({runs}) GROUP BY path_tail ORDER BY path_tail"
            );
            let functions = c
                .prepare_cached(&sql)
                .and_then(|mut st| {
                    st.query_map(rusqlite::params_from_iter(all_args.iter()), |r| {
                        Ok(UsageRow {
                            name: r.get(0)?,
                            kind: r.get(1)?,
                            invocations: to_u64(r.get(2)?),
                            errors: to_u64(r.get(3)?),
                            duration_ms: to_u64(r.get(4)?),
                            mb_ms: to_u64(r.get(5)?),
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()
                })
                .map_err(db_err(op))?;
            let sql = format!(
                "SELECT day, SUM(n), SUM(err), SUM(ms), SUM(mbms)
                 FROM ({runs}) GROUP BY day ORDER BY 1"
            );
            let days = c
                .prepare_cached(&sql)
                .and_then(|mut st| {
                    st.query_map(rusqlite::params_from_iter(all_args.iter()), |r| {
                        Ok(UsageDay {
                            day: r.get(0)?,
                            invocations: to_u64(r.get(1)?),
                            errors: to_u64(r.get(2)?),
                            duration_ms: to_u64(r.get(3)?),
                            mb_ms: to_u64(r.get(4)?),
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()
                })
                .map_err(db_err(op))?;
            Ok(Usage { functions, days })
        })
        .await
    }
}

/// Queue semantics of this implementation:
/// * `claim` returns each item with `attempts` = the number of claims *before* this one
///   (0 on first delivery), and stores the incremented count.
/// * `complete` of an id that is no longer queued still stores the record (idempotent).
/// * `release` of an id that is not claimed is a no-op.
/// * `claim` skips rows scheduled for later (`not_before`) and keyed rows that are not the first
///   of their ordering key (see [`crate::DeliveryQueue`]).
/// * Queue writes run with `synchronous=FULL`, except `claim` (see the module docs).
#[async_trait]
impl InvocationQueue for SqliteStore {
    async fn enqueue(&self, item: &QueuedInvocation) -> StoreResult<()> {
        let op = "enqueue";
        let row = delivery::QueueRow::new(op, item, &crate::Schedule::default())?;
        let shared = Arc::clone(&self.inner.shared);
        self.write_new(op, Durability::Full, move |c| {
            row.check_quota(c, &shared)?;
            row.insert(c, op)
        })
        .await
    }

    async fn claim(&self, max: usize) -> StoreResult<Vec<QueuedInvocation>> {
        let op = "claim";
        if max == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        self.write(op, Durability::Normal, move |c| {
            let tx = c.savepoint().map_err(db_err(op))?;
            let rows: Vec<(String, String, String, i64, i64)> = tx
                .prepare_cached(
                    "SELECT activation_id, namespace, payload, enqueued_at, attempts
                     FROM invocation_queue q WHERE state = 'pending' AND not_before <= ?2
                       AND (order_key IS NULL OR NOT EXISTS (
                           SELECT 1 FROM invocation_queue o
                           WHERE o.order_key = q.order_key AND o.seq < q.seq))
                     ORDER BY enqueued_at ASC, activation_id ASC LIMIT ?1",
                )
                .and_then(|mut st| {
                    st.query_map(params![limit, now_millis()], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })?
                    .collect()
                })
                .map_err(db_err(op))?;
            let now = now_millis();
            let mut items = Vec::with_capacity(rows.len());
            {
                let mut mark = tx
                    .prepare_cached(
                        "UPDATE invocation_queue SET state = 'claimed', attempts = attempts + 1, claimed_at = ?1
                         WHERE activation_id = ?2",
                    )
                    .map_err(db_err(op))?;
                for (id, namespace, payload, enqueued_at, attempts) in rows {
                    let item = QueuedInvocation {
                        activation_id: parse_id(&id)?,
                        namespace,
                        payload: decode(&format!("queued invocation {id}"), &payload)?,
                        enqueued_at,
                        attempts: u32::try_from(attempts).map_err(|_| {
                            StoreError::Corrupt(format!("queued invocation {id}: bad attempts {attempts}"))
                        })?,
                    };
                    mark.execute(params![now, id]).map_err(db_err(op))?;
                    items.push(item);
                }
            }
            tx.commit().map_err(db_err(op))?;
            Ok(items)
        })
        .await
    }

    async fn complete(&self, id: &ActivationId, record: &Activation) -> StoreResult<()> {
        let op = "complete";
        let json = encode(op, record)?;
        let (id, record) = (id.clone(), record.clone());
        self.write(op, Durability::Full, move |c| {
            let tx = c.savepoint().map_err(db_err(op))?;
            upsert_activation(&tx, op, &record, &json)?;
            exec_cached(
                &tx,
                "DELETE FROM invocation_queue WHERE activation_id = ?1",
                params![id.as_str()],
            )
            .map_err(db_err(op))?;
            tx.commit().map_err(db_err(op))
        })
        .await
    }

    async fn release(&self, id: &ActivationId) -> StoreResult<()> {
        let op = "release";
        let id = id.clone();
        self.write(op, Durability::Full, move |c| {
            c.execute(
                "UPDATE invocation_queue SET state = 'pending', claimed_at = NULL
                 WHERE activation_id = ?1 AND state = 'claimed'",
                params![id.as_str()],
            )
            .map_err(db_err(op))?;
            Ok(())
        })
        .await
    }

    async fn recover_claimed(&self) -> StoreResult<u64> {
        let op = "recover_claimed";
        self.write(op, Durability::Full, move |c| {
            let n = c
                .execute(
                    "UPDATE invocation_queue SET state = 'pending', claimed_at = NULL WHERE state = 'claimed'",
                    [],
                )
                .map_err(db_err(op))?;
            Ok(n as u64)
        })
        .await
    }

    async fn queue_depth(&self) -> StoreResult<u64> {
        let op = "queue_depth";
        self.read(op, move |c| {
            c.query_row("SELECT COUNT(*) FROM invocation_queue", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(to_u64)
            .map_err(db_err(op))
        })
        .await
    }
}

fn credential_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Credential> {
    Ok(Credential {
        uuid: r.get(0)?,
        namespace: r.get(1)?,
        key_digest: r.get(2)?,
        previous_digest: r.get(3)?,
        previous_expires: r.get(4)?,
        created: r.get(5)?,
    })
}

const CREDENTIAL_COLUMNS: &str =
    "uuid, namespace, key_digest, previous_digest, previous_expires, created";

#[async_trait]
impl AuthStore for SqliteStore {
    async fn add_credential(&self, c: &Credential) -> StoreResult<()> {
        let op = "add_credential";
        let c = c.clone();
        self.write(op, Durability::Full, move |conn| {
            let n = conn
                .execute(
                    "INSERT INTO credentials (uuid, namespace, key_digest, previous_digest, previous_expires, created)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (uuid) DO NOTHING",
                    params![
                        c.uuid,
                        c.namespace,
                        c.key_digest,
                        c.previous_digest,
                        c.previous_expires,
                        c.created
                    ],
                )
                .map_err(db_err(op))?;
            if n == 0 {
                return Err(StoreError::Conflict(format!(
                    "credential {} already exists",
                    c.uuid
                )));
            }
            Ok(())
        })
        .await
    }

    async fn credential_by_uuid(&self, uuid: &str) -> StoreResult<Option<Credential>> {
        let op = "credential_by_uuid";
        let uuid = uuid.to_string();
        self.read(op, move |c| {
            c.prepare_cached(&format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE uuid = ?1"
            ))
            .and_then(|mut st| st.query_row(params![uuid], credential_row).optional())
            .map_err(db_err(op))
        })
        .await
    }

    async fn credentials_of(&self, ns: &str) -> StoreResult<Vec<Credential>> {
        let op = "credentials_of";
        let ns = ns.to_string();
        self.read(op, move |c| {
            c.prepare_cached(&format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE namespace = ?1 ORDER BY uuid"
            ))
            .and_then(|mut st| st.query_map(params![ns], credential_row)?.collect())
            .map_err(db_err(op))
        })
        .await
    }

    async fn list_namespaces(&self) -> StoreResult<Vec<String>> {
        let op = "list_namespaces";
        self.read(op, move |c| {
            c.prepare_cached("SELECT DISTINCT namespace FROM credentials ORDER BY namespace")
                .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
                .map_err(db_err(op))
        })
        .await
    }

    async fn replace_key(
        &self,
        uuid: &str,
        key_digest: &str,
        previous_until: Option<i64>,
    ) -> StoreResult<bool> {
        let op = "replace_key";
        let (uuid, digest) = (uuid.to_string(), key_digest.to_string());
        self.write(op, Durability::Full, move |c| {
            let n = c
                .execute(
                    "UPDATE credentials SET
                       previous_digest = CASE WHEN ?3 IS NULL THEN NULL ELSE key_digest END,
                       previous_expires = ?3,
                       key_digest = ?2
                     WHERE uuid = ?1",
                    params![uuid, digest, previous_until],
                )
                .map_err(db_err(op))?;
            Ok(n > 0)
        })
        .await
    }

    async fn delete_credential(&self, uuid: &str) -> StoreResult<bool> {
        let op = "delete_credential";
        let uuid = uuid.to_string();
        self.write(op, Durability::Full, move |c| {
            let n = c
                .execute("DELETE FROM credentials WHERE uuid = ?1", params![uuid])
                .map_err(db_err(op))?;
            Ok(n > 0)
        })
        .await
    }
}

mod migrations {
    //! Migration steps that need more than SQL.

    use rusqlite::Transaction;

    /// Version 6: credentials keep the SHA-256 of their secret instead of the secret. The old
    /// table is rebuilt; `secure_delete` zeroes the freed pages that held the plaintext keys
    /// (the caller then truncates the WAL).
    pub(super) fn hash_credentials(tx: &Transaction<'_>) -> rusqlite::Result<()> {
        tx.pragma_update(None, "secure_delete", "ON")?;
        tx.execute_batch(
            "CREATE TABLE credentials_v6 (
                uuid             TEXT    NOT NULL PRIMARY KEY,
                namespace        TEXT    NOT NULL,
                key_digest       TEXT    NOT NULL, -- hex SHA-256 of the secret
                previous_digest  TEXT,             -- accepted until previous_expires (rotation grace)
                previous_expires INTEGER,          -- epoch ms
                created          INTEGER NOT NULL DEFAULT 0
             );",
        )?;
        let rows: Vec<(String, String, String)> = tx
            .prepare("SELECT uuid, namespace, key FROM credentials")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (uuid, ns, key) in rows {
            tx.execute(
                "INSERT INTO credentials_v6 (uuid, namespace, key_digest) VALUES (?1, ?2, ?3)",
                rusqlite::params![uuid, ns, crate::key_digest(&key)],
            )?;
        }
        tx.execute_batch(
            "DROP TABLE credentials;
             ALTER TABLE credentials_v6 RENAME TO credentials;
             CREATE INDEX credentials_by_namespace ON credentials (namespace);",
        )?;
        tx.pragma_update(None, "secure_delete", "OFF")
    }
}

mod delivery;
mod feeds;
mod integrity;
mod storage;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod guard_tests;
