//! `nimbus admin`: namespaces, keys and storage limits, and the store's check, backup and
//! restore, working on the data directory directly.

use anyhow::Context;
use clap::{Args, Subcommand};
use nimbus_store::{AuthStore, NamespaceLimits, SqliteStore, StorageAccounting};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args)]
pub struct AdminArgs {
    /// The server's data directory.
    #[arg(
        long,
        env = "NIMBUS_DATA_DIR",
        default_value = ".nimbus",
        global = true
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    cmd: AdminCmd,
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Namespaces and their keys.
    Namespace {
        #[command(subcommand)]
        cmd: NamespaceCmd,
    },
    /// Check the store: SQLite's full integrity check, the schema version, the installation
    /// record and the seal. Exits non-zero on a problem. Safe while the server runs.
    Check,
    /// Copy the store into FILE with SQLite's online backup (consistent even while the server
    /// runs and writes), then verify the copy.
    Backup {
        /// The new backup file (must not exist).
        file: PathBuf,
    },
    /// Replace the store with the backup FILE, after verifying it. Refused while a server
    /// runs on the data directory; the current database is kept aside as
    /// `nimbus.db.before-restore-<time>`.
    Restore {
        /// A file made by `nimbus admin backup`.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum NamespaceCmd {
    /// Create a namespace (or add a key to an existing one) and print its key.
    Create { name: String },
    /// List namespaces.
    List,
    /// Show a namespace's storage use and limits; with options, set its overrides of the
    /// server's quota and retention (a running server applies them within its retention
    /// interval; quotas of new writes at once).
    Limits {
        name: String,
        /// Storage quota (e.g. 256MiB, 5GiB).
        #[arg(long, value_parser = crate::datadir::parse_size)]
        quota: Option<u64>,
        /// Keep activation records this long (e.g. 30d, 12h).
        #[arg(long, value_parser = crate::datadir::parse_duration)]
        max_age: Option<Duration>,
        /// Keep at most this many activation records.
        #[arg(long)]
        max_count: Option<u64>,
        /// Remove the overrides: back to the server's settings.
        #[arg(long, conflicts_with_all = ["quota", "max_age", "max_count"])]
        reset: bool,
    },
}

/// Where a namespace's key is written: `DIR/auth/<namespace>`, one line `uuid:key`, mode 0600.
pub fn write_auth_file(
    data_dir: &Path,
    ns: &str,
    uuid: &str,
    key: &str,
) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = data_dir.join("auth");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(ns);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(f, "{uuid}:{key}")?;
    f.sync_all()?;
    Ok(path)
}

/// Opens the data directory's store for a namespace command: never as a new installation
/// when the directory shows one (a missing database is reported, not recreated).
fn open_store(data_dir: &Path) -> anyhow::Result<SqliteStore> {
    let db = data_dir.join("nimbus.db");
    SqliteStore::open_with(
        &db,
        &nimbus_store::OpenOptions {
            expect: crate::datadir::expect(data_dir),
            ..Default::default()
        },
    )
    .with_context(|| format!("opening the store {}", db.display()))
}

pub async fn run(a: AdminArgs) -> anyhow::Result<()> {
    let db = a.data_dir.join("nimbus.db");
    match a.cmd {
        AdminCmd::Namespace { cmd } => namespace(&a.data_dir, cmd).await,
        AdminCmd::Check => {
            let report = tokio::task::spawn_blocking(move || nimbus_store::sqlite::check(&db))
                .await
                .context("running the check")?;
            for n in &report.notes {
                println!("{n}");
            }
            for p in &report.problems {
                println!("PROBLEM: {p}");
            }
            if report.ok() {
                println!("ok: the store can be trusted");
                Ok(())
            } else {
                anyhow::bail!(
                    "the store {} has {} problem(s); see docs/security.md, \"Store integrity, backup and recovery\"",
                    a.data_dir.join("nimbus.db").display(),
                    report.problems.len()
                )
            }
        }
        AdminCmd::Backup { file } => {
            let to = file.clone();
            let done = tokio::task::spawn_blocking(move || nimbus_store::sqlite::backup(&db, &to))
                .await
                .context("running the backup")??;
            println!(
                "backed up installation {} to {} ({} bytes), verified",
                done.installation,
                file.display(),
                done.bytes
            );
            Ok(())
        }
        AdminCmd::Restore { file } => {
            super::serve::create_private_dir(&a.data_dir)?;
            let _lock = crate::datadir::lock(&a.data_dir, "a restore")?;
            let from = file.clone();
            let done =
                tokio::task::spawn_blocking(move || nimbus_store::sqlite::restore(&from, &db))
                    .await
                    .context("running the restore")??;
            println!(
                "restored installation {} from {} into {}",
                done.installation,
                file.display(),
                a.data_dir.display()
            );
            eprintln!(
                "keys: the data directory's key files (auth/) are not part of the backup; keep your copies of them"
            );
            Ok(())
        }
    }
}

async fn namespace(data_dir: &Path, cmd: NamespaceCmd) -> anyhow::Result<()> {
    let store = open_store(data_dir)?;
    match cmd {
        NamespaceCmd::Create { name } => {
            nimbus_model::names::validate_name(&name).map_err(|e| anyhow::anyhow!("{e}"))?;
            let existing = store.credentials_of(&name).await?;
            let auth = nimbus_controller::generate_key(&name);
            store.add_credential(&auth).await?;
            let path = if existing.is_empty() {
                Some(write_auth_file(data_dir, &name, &auth.uuid, &auth.key)?)
            } else {
                None
            };
            println!("{}:{}", auth.uuid, auth.key);
            match path {
                Some(p) => eprintln!("namespace '{name}' created; key stored in {}", p.display()),
                None => eprintln!(
                    "namespace '{name}' already existed; added a new key (printed above, not stored)"
                ),
            }
        }
        NamespaceCmd::List => {
            for ns in store.list_namespaces().await? {
                println!("{ns}");
            }
        }
        NamespaceCmd::Limits {
            name,
            quota,
            max_age,
            max_count,
            reset,
        } => {
            nimbus_model::names::validate_name(&name).map_err(|e| anyhow::anyhow!("{e}"))?;
            if reset || quota.is_some() || max_age.is_some() || max_count.is_some() {
                let mut l = if reset {
                    NamespaceLimits::default()
                } else {
                    store.namespace_limits(&name).await?
                };
                if quota.is_some() {
                    l.quota_bytes = quota;
                }
                if let Some(d) = max_age {
                    l.max_age_ms = Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                }
                if max_count.is_some() {
                    l.max_count = max_count;
                }
                store.set_namespace_limits(&name, &l).await?;
            }
            // The server's defaults are not known here: show the overrides and the use.
            let s = store.namespace_storage(&name).await?;
            let show = |v: Option<String>| v.unwrap_or_else(|| "server default".into());
            println!("namespace:   {name}");
            println!(
                "stored:      {} ({} activation records)",
                nimbus_store::storage::human_bytes(s.bytes),
                s.activations
            );
            println!(
                "quota:       {}",
                show(
                    s.overrides
                        .quota_bytes
                        .map(nimbus_store::storage::human_bytes)
                )
            );
            println!(
                "max age:     {}",
                show(s.overrides.max_age_ms.map(|ms| format!("{} s", ms / 1000)))
            );
            println!(
                "max count:   {}",
                show(s.overrides.max_count.map(|n| n.to_string()))
            );
        }
    }
    Ok(())
}
