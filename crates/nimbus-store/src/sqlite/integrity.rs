//! Trusting a database file: the checks before it is used, the seal that detects lost
//! commits, and backup, restore and check.
//!
//! # What is detected at open ([`SqliteStore::open_with`](super::SqliteStore::open_with))
//! * A `-wal` or seal file without the database file (the database was deleted or moved).
//! * No database, or an empty one, where the caller knows of an installation
//!   ([`Expect::Existing`]: e.g. the data directory holds key files).
//! * A file SQLite does not recognise, or one that fails `PRAGMA quick_check` (optional).
//! * A schema newer than this build's.
//! * No installation record (`meta`) in a non-empty database.
//! * **Lost commits.** SQLite replays the WAL only up to the first frame with a bad checksum
//!   and silently drops the rest, and a deleted WAL loses every commit not yet checkpointed.
//!   SQLite alone cannot tell. So the writer *seals*: at most [`OpenOptions::seal_interval`]
//!   after a write it commits `meta.seal = seal + 1` (fsynced), and only then writes that
//!   number to the side file `<db>.seal`. The side file never runs ahead of a durable commit,
//!   so at open a database whose `meta.seal` is below the side file's has lost at least that
//!   seal commit, and with it every commit before it that was not checkpointed.
//!
//! # What is not detected
//! Losing only the commits made after the last seal (the last second of writes, by default),
//! e.g. a WAL truncated in its final frames, or a power cut on a disk that lies about
//! fsync. And a damaged page that `quick_check` does not read (it checks the b-tree structure,
//! not index contents; `nimbus admin check` runs the full `integrity_check`).

use super::{
    Durability, Expect, MIGRATIONS, OpenOptions, Shared, db_err, savepoint, set_synchronous, to_u64,
};
use crate::{StoreError, StoreResult};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The installation a database belongs to (its `meta` row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    /// 32 hex characters, random, fixed at creation.
    pub id: String,
    /// Epoch ms.
    pub created: i64,
    /// Created by this open (the file was missing or empty).
    pub fresh: bool,
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn wal_path(path: &Path) -> PathBuf {
    sibling(path, "-wal")
}

fn seal_path(path: &Path) -> PathBuf {
    sibling(path, ".seal")
}

fn data_dir(path: &Path) -> String {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .display()
        .to_string()
}

/// What to do about an untrustworthy database, for every [`StoreError::Integrity`] message.
fn recovery(path: &Path) -> String {
    let dir = data_dir(path);
    format!(
        "Nimbus will not start on it, so nothing is overwritten. To recover, stop every nimbus process using {dir}, then either restore your latest backup with `nimbus admin restore --data-dir {dir} BACKUP_FILE`, or move {dir} away to start over as a new installation (its namespaces, keys and functions are then gone). `nimbus admin check --data-dir {dir}` reports what it finds. See docs/security.md, \"Store integrity, backup and recovery\"."
    )
}

fn refuse(path: &Path, what: String) -> StoreError {
    StoreError::Integrity(format!("{what}. {}", recovery(path)))
}

/// A file SQLite reports as corrupt or not a database while it is being opened.
pub(super) fn damaged(path: &Path, detail: &str) -> StoreError {
    refuse(
        path,
        format!("the database {} is damaged ({detail})", path.display()),
    )
}

pub(super) fn newer_schema(path: &Path, version: i64, target: i64) -> StoreError {
    StoreError::Integrity(format!(
        "the database {} has schema version {version}, newer than this build of nimbus supports ({target}): it was written by a newer nimbus. Run that version (or newer), or restore a backup made with this one: `nimbus admin restore --data-dir {} BACKUP_FILE`",
        path.display(),
        data_dir(path)
    ))
}

/// Before the file is opened: the combinations of files that show a lost database.
pub(super) fn preflight(path: &Path, expect: &Expect) -> StoreResult<()> {
    if path.exists() {
        return Ok(());
    }
    let wal = wal_path(path);
    if wal.exists() {
        return Err(refuse(
            path,
            format!(
                "the database {} is missing but its write-ahead log {} is there: the database file was deleted or moved, and the log alone cannot rebuild it",
                path.display(),
                wal.display()
            ),
        ));
    }
    let seal = seal_path(path);
    if seal.exists() {
        return Err(refuse(
            path,
            format!(
                "the database {} is missing but its seal file {} shows it existed: the database file was deleted or moved",
                path.display(),
                seal.display()
            ),
        ));
    }
    if let Expect::Existing(why) = expect {
        return Err(refuse(
            path,
            format!(
                "{why}, but its database {} is missing: the file was deleted or moved",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// First reads of a newly opened file (which also replays a WAL left by a crash): refuses what
/// is not a usable database, runs `quick_check` if asked. Returns whether the file is empty
/// (a new installation).
pub(super) fn inspect(conn: &Connection, path: &Path, opts: &OpenOptions) -> StoreResult<bool> {
    let unreadable = |e: rusqlite::Error| {
        refuse(
            path,
            format!(
                "the database {} cannot be read as an SQLite database ({e})",
                path.display()
            ),
        )
    };
    let tables: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(unreadable)?;
    if tables == 0 {
        let seal = seal_path(path);
        if seal.exists() {
            return Err(refuse(
                path,
                format!(
                    "the database {} is empty but its seal file {} shows it held an installation: its content was lost (a deleted write-ahead log, or a truncated file)",
                    path.display(),
                    seal.display()
                ),
            ));
        }
        if let Expect::Existing(why) = &opts.expect {
            return Err(refuse(
                path,
                format!(
                    "{why}, but its database {} is empty: its content was lost (a deleted write-ahead log, or a truncated file)",
                    path.display()
                ),
            ));
        }
        return Ok(true);
    }
    // A seal file is written only once the installation record exists, so a database from
    // before that record beside a seal file lost its later commits (e.g. a deleted WAL after
    // an early checkpoint).
    let has_meta: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table' AND name = 'meta'",
            [],
            |r| r.get(0),
        )
        .map_err(unreadable)?;
    let seal = seal_path(path);
    if has_meta == 0 && seal.exists() {
        return Err(refuse(
            path,
            format!(
                "the database {} lost commits: it has no installation record but its seal file {} shows it held one (a deleted or truncated write-ahead log, or an older copy of the file)",
                path.display(),
                seal.display()
            ),
        ));
    }
    if opts.quick_check {
        let started = Instant::now();
        let problems = run_check(conn, "quick_check").map_err(unreadable)?;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "store quick_check done"
        );
        if !problems.is_empty() {
            return Err(refuse(
                path,
                format!(
                    "the database {} is damaged: PRAGMA quick_check reports {}",
                    path.display(),
                    problems.join("; ")
                ),
            ));
        }
    }
    Ok(false)
}

/// `PRAGMA integrity_check` or `quick_check`: the problems it lists (empty when `ok`).
fn run_check(conn: &Connection, pragma: &str) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare(&format!("PRAGMA {pragma}(100)"))?;
    let rows: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    Ok(rows.into_iter().filter(|r| r != "ok").collect())
}

fn read_meta(conn: &Connection) -> rusqlite::Result<Option<(String, i64, i64)>> {
    conn.query_row(
        "SELECT installation_id, created, seal FROM meta WHERE id = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()
}

/// The side file: `nimbus-seal 1 <installation> <seal>`.
fn read_seal(path: &Path) -> Result<Option<(String, i64)>, String> {
    let file = seal_path(path);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    let parts: Vec<&str> = text.split_whitespace().collect();
    match parts.as_slice() {
        ["nimbus-seal", "1", id, n] => n
            .parse()
            .map(|n| Some((id.to_string(), n)))
            .map_err(|_| format!("{} is not a seal file", file.display())),
        _ => Err(format!("{} is not a seal file", file.display())),
    }
}

/// Replaces the side file atomically (write, fsync, rename).
fn write_seal(path: &Path, installation: &str, seal: i64) -> std::io::Result<()> {
    // A name of its own: a second store on the file (an admin command, a reopen) may seal
    // at the same time.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = seal_path(path);
    let tmp = sibling(path, &format!(".seal.tmp.{}.{n}", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        writeln!(f, "nimbus-seal 1 {installation} {seal}")?;
        f.sync_data()
    });
    written
        .and_then(|_| std::fs::rename(&tmp, &file))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// After migrations: the installation record, and the seal against the side file.
pub(super) fn verify_installation(
    conn: &Connection,
    path: &Path,
    fresh: bool,
) -> StoreResult<Installation> {
    let Some((id, created, seal)) = read_meta(conn).map_err(db_err("read installation"))? else {
        return Err(refuse(
            path,
            format!(
                "the database {} holds tables but no installation record (table meta): it is damaged or was not written by nimbus",
                path.display()
            ),
        ));
    };
    let side = read_seal(path).map_err(|e| {
        refuse(
            path,
            format!("{e}; if the database itself is fine, delete that file to accept it as it is"),
        )
    })?;
    match side {
        Some((sid, _)) if sid != id => {
            return Err(refuse(
                path,
                format!(
                    "the database {} belongs to installation {id}, but this data directory was last used by installation {sid} (its seal file {}): the file was replaced by another installation's. If that is what you want, use `nimbus admin restore`, or delete the seal file to accept the database as it is",
                    path.display(),
                    seal_path(path).display()
                ),
            ));
        }
        Some((_, n)) if n > seal => {
            return Err(refuse(
                path,
                format!(
                    "the database {} lost commits: it holds seal {seal} but its seal file {} recorded seal {n} after a durable commit. Its write-ahead log (nimbus.db-wal) was deleted or truncated, or the file was replaced by an older copy; what was written since is gone (and the file may be inconsistent). If you accept that loss, delete the seal file and start again",
                    path.display(),
                    seal_path(path).display()
                ),
            ));
        }
        Some((_, n)) if n == seal => {}
        _ => {
            // Not fatal (a full disk must not stop the start): the next seal writes it.
            if let Err(e) = write_seal(path, &id, seal) {
                tracing::warn!(error = %e, file = %seal_path(path).display(), "could not write the store's seal file");
            }
        }
    }
    if fresh {
        tracing::info!(installation = %id, "new installation: created the store");
    }
    Ok(Installation { id, created, fresh })
}

/// The writer thread's sealing (see the module docs).
pub(super) struct Sealer {
    path: PathBuf,
    installation: String,
    interval: Duration,
    last: Instant,
    /// Something was committed since the last seal.
    dirty: bool,
    /// The last attempt failed (warn once per run of failures).
    failing: bool,
}

impl Sealer {
    pub(super) fn new(path: &Path, installation: &str, interval: Duration) -> Sealer {
        Sealer {
            path: path.to_path_buf(),
            installation: installation.to_string(),
            interval,
            last: Instant::now(),
            dirty: false,
            failing: false,
        }
    }

    pub(super) fn wrote(&mut self) {
        self.dirty = true;
    }

    /// How long until a seal is due (`None`: nothing to seal).
    pub(super) fn due_in(&self) -> Option<Duration> {
        self.dirty
            .then(|| self.interval.saturating_sub(self.last.elapsed()))
    }

    pub(super) fn seal_if_due(
        &mut self,
        conn: &Connection,
        sync: &mut Option<Durability>,
        shared: &Shared,
    ) {
        if self.dirty && self.last.elapsed() >= self.interval {
            self.seal_now(conn, sync, shared);
        }
    }

    pub(super) fn seal_now(
        &mut self,
        conn: &Connection,
        sync: &mut Option<Durability>,
        shared: &Shared,
    ) {
        if !self.dirty {
            return;
        }
        self.last = Instant::now();
        let failed = match seal(conn, sync) {
            Ok(n) => {
                self.dirty = false;
                // The database ahead of the file is safe: only less is detected meanwhile.
                write_seal(&self.path, &self.installation, n)
                    .err()
                    .map(|e| format!("could not write the seal file: {e}"))
            }
            Err(e) => {
                shared.note_outcome(Some(&e));
                Some(format!("could not seal the store: {e}"))
            }
        };
        match &failed {
            Some(e) if !self.failing => {
                tracing::warn!(error = %e, "sealing the store failed; retrying after the next write");
            }
            Some(_) => {}
            None if self.failing => tracing::info!("sealing the store works again"),
            None => {}
        }
        self.failing = failed.is_some();
    }
}

/// Commits `meta.seal + 1` durably; returns the new seal.
fn seal(conn: &Connection, sync: &mut Option<Durability>) -> StoreResult<i64> {
    set_synchronous(conn, sync, Durability::Full)?;
    savepoint(conn, "BEGIN IMMEDIATE")?;
    let r = conn
        .prepare_cached("UPDATE meta SET seal = seal + 1 WHERE id = 1 RETURNING seal")
        .and_then(|mut st| st.query_row([], |r| r.get::<_, i64>(0)))
        .map_err(db_err("seal"))
        .and_then(|n| savepoint(conn, "COMMIT").map(|_| n));
    if r.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    r
}

/// What `nimbus admin check` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Each problem, with what it means; empty when the database can be trusted.
    pub problems: Vec<String>,
    /// Facts about the database (installation, schema version, size).
    pub notes: Vec<String>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn open_existing(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let c = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    c.busy_timeout(super::BUSY_TIMEOUT)?;
    Ok(c)
}

/// Checks the database at `path` without changing it: `PRAGMA integrity_check` (the full
/// check), the schema version, the installation record and the seal. Safe while a server runs.
pub fn check(path: &Path) -> CheckReport {
    let mut report = CheckReport::default();
    if let Err(StoreError::Integrity(m)) = preflight(path, &Expect::Any) {
        report.problems.push(m);
        return report;
    }
    if !path.exists() {
        report
            .problems
            .push(format!("the database {} does not exist", path.display()));
        return report;
    }
    // Read-only: a read-write connection that happens to be the last to close would checkpoint
    // the WAL into the file, changing what is being examined.
    let conn = match open_existing(path, OpenFlags::SQLITE_OPEN_READ_ONLY) {
        Ok(c) => c,
        Err(e) => {
            report
                .problems
                .push(format!("cannot open {}: {e}", path.display()));
            return report;
        }
    };
    check_connection(&conn, path, &mut report);
    report
}

fn check_connection(conn: &Connection, path: &Path, report: &mut CheckReport) {
    match run_check(conn, "integrity_check") {
        Ok(p) if p.is_empty() => report.notes.push("integrity_check: ok".into()),
        Ok(p) => report
            .problems
            .push(format!("integrity_check reports damage: {}", p.join("; "))),
        Err(e) => {
            report.problems.push(format!(
                "{} cannot be read as an SQLite database: {e}",
                path.display()
            ));
            return;
        }
    }
    let target = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap_or(-1);
    if version > target {
        report
            .problems
            .push(newer_schema(path, version, target).to_string());
    } else if version < target {
        report.notes.push(format!(
            "schema version {version}; this build migrates it to {target} when it starts"
        ));
    } else {
        report.notes.push(format!("schema version {version}"));
    }
    let has_meta: bool = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table' AND name = 'meta'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .unwrap_or(false);
    if !has_meta {
        if version == 0 {
            report.problems.push(format!(
                "{} is empty: it holds no installation",
                path.display()
            ));
        } else if version >= target {
            report
                .problems
                .push("the installation record (table meta) is missing".into());
        }
        return;
    }
    match read_meta(conn) {
        Ok(Some((id, created, seal))) => {
            report
                .notes
                .push(format!("installation {id}, created {created} (epoch ms)"));
            match read_seal(path) {
                Ok(Some((sid, _))) if sid != id => report.problems.push(format!(
                    "the seal file belongs to installation {sid}, not to this database's"
                )),
                Ok(Some((_, n))) if n > seal => report.problems.push(format!(
                    "lost commits: the database holds seal {seal}, its seal file recorded {n} (a deleted or truncated write-ahead log, or an older copy of the file)"
                )),
                Ok(Some((_, n))) => report.notes.push(format!("seal {seal} (seal file: {n})")),
                Ok(None) => report.notes.push(format!("seal {seal} (no seal file)")),
                Err(e) => report.problems.push(e),
            }
        }
        Ok(None) => report
            .problems
            .push("the installation record (table meta) is empty".into()),
        Err(e) => report
            .problems
            .push(format!("cannot read the installation record: {e}")),
    }
    let pages: i64 = conn
        .pragma_query_value(None, "page_count", |r| r.get(0))
        .unwrap_or(0);
    let size: i64 = conn
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .unwrap_or(0);
    report.notes.push(format!(
        "size {}",
        crate::storage::human_bytes(to_u64(pages.saturating_mul(size)))
    ));
}

/// What a backup or restore copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub installation: String,
    pub bytes: u64,
}

/// Copies `from` into a new database file at `to` with SQLite's online backup API, in one step
/// (one read transaction): the copy is the consistent state of one moment, even while a
/// server writes, and in WAL mode the copy does not block its writers.
fn copy_database(from: &Connection, to: &Path) -> StoreResult<()> {
    let op = "backup";
    let mut dest = Connection::open(to).map_err(db_err(op))?;
    {
        let b = rusqlite::backup::Backup::new(from, &mut dest).map_err(db_err(op))?;
        loop {
            match b.step(-1).map_err(db_err(op))? {
                rusqlite::backup::StepResult::Done => break,
                // Busy/locked: a writer holds a lock for a moment; a step never restarts from
                // a changed source because it copies everything at once.
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    // A self-contained file: no -wal beside it.
    dest.pragma_update(None, "journal_mode", "DELETE")
        .map_err(db_err(op))?;
    drop(dest);
    std::fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::Backend(format!("cannot sync {}: {e}", to.display())))
}

/// Verifies a copy: the full integrity check, a known schema, an installation record.
fn verify_copy(path: &Path) -> StoreResult<(String, i64)> {
    let conn = open_existing(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| StoreError::Integrity(format!("cannot open {}: {e}", path.display())))?;
    let mut report = CheckReport::default();
    check_connection(&conn, path, &mut report);
    // A backup's seal file is not beside it; only the database's own content counts.
    report.problems.retain(|p| !p.contains("seal file"));
    if !report.ok() {
        return Err(StoreError::Integrity(format!(
            "{} is not a usable nimbus backup: {}",
            path.display(),
            report.problems.join("; ")
        )));
    }
    read_meta(&conn)
        .map_err(db_err("read installation"))?
        .map(|(id, _, seal)| (id, seal))
        .ok_or_else(|| {
            StoreError::Integrity(format!(
                "{} is not a usable nimbus backup: it holds no installation record",
                path.display()
            ))
        })
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// `nimbus admin backup`: copies the database at `db` to the new file `to` (online: a server
/// may be running), then verifies the copy.
pub fn backup(db: &Path, to: &Path) -> StoreResult<Copied> {
    if to.exists() {
        return Err(StoreError::Conflict(format!(
            "{} exists; choose a new file name",
            to.display()
        )));
    }
    preflight(db, &Expect::Any)?;
    if !db.exists() {
        return Err(StoreError::Integrity(format!(
            "there is no database at {} to back up",
            db.display()
        )));
    }
    let src = open_existing(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", db.display())))?;
    let partial = sibling(to, ".partial");
    let _ = std::fs::remove_file(&partial);
    let result = copy_database(&src, &partial).and_then(|_| verify_copy(&partial));
    let (installation, _) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, to).map_err(|e| {
        StoreError::Backend(format!("cannot move the backup to {}: {e}", to.display()))
    })?;
    Ok(Copied {
        installation,
        bytes: file_len(to),
    })
}

/// `nimbus admin restore`: verifies the backup `from`, moves the current database (and its
/// WAL) aside as `<db>.before-restore-<epoch ms>` if there is one, copies the backup in and
/// writes its seal file. The caller must make sure no server uses the data directory.
pub fn restore(from: &Path, db: &Path) -> StoreResult<Copied> {
    let (installation, seal) = verify_copy(from)?;
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Backend(format!("cannot create directory {}: {e}", dir.display()))
        })?;
    }
    let src = open_existing(from, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", from.display())))?;
    let incoming = sibling(db, ".restoring");
    let _ = std::fs::remove_file(&incoming);
    if let Err(e) = copy_database(&src, &incoming) {
        let _ = std::fs::remove_file(&incoming);
        return Err(e);
    }
    let stamp = super::now_millis();
    for suffix in ["", "-wal", "-shm"] {
        let f = sibling(db, suffix);
        if f.exists() {
            let aside = sibling(&f, &format!(".before-restore-{stamp}"));
            std::fs::rename(&f, &aside).map_err(|e| {
                StoreError::Backend(format!("cannot move {} aside: {e}", f.display()))
            })?;
        }
    }
    std::fs::rename(&incoming, db).map_err(|e| {
        StoreError::Backend(format!("cannot move the restored database into place: {e}"))
    })?;
    write_seal(db, &installation, seal).map_err(|e| {
        StoreError::Backend(format!(
            "cannot write the seal file {}: {e}",
            seal_path(db).display()
        ))
    })?;
    Ok(Copied {
        installation,
        bytes: file_len(db),
    })
}
