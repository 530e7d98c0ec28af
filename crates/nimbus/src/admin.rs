//! `nimbus admin`: namespaces, keys and storage limits, and the store's check, backup and
//! restore, working on the data directory directly.

use anyhow::Context;
use clap::{Args, Subcommand};
use nimbus_controller::keys;
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
    /// API keys: list, add, rotate and revoke. Changes reach a running server within
    /// 5 seconds (its credential cache).
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// List a namespace's credentials (uuids and dates; secrets are not stored, so never shown).
    List { namespace: String },
    /// Add a key to a namespace and print it.
    Add { namespace: String },
    /// Give a credential a new secret and print the new key. The old secret stops working at
    /// once, or after --grace seconds to let clients switch.
    Rotate {
        namespace: String,
        /// The credential to rotate (needed when the namespace has several).
        #[arg(long)]
        uuid: Option<String>,
        /// Seconds the old secret stays valid.
        #[arg(long)]
        grace: Option<u64>,
    },
    /// Revoke one credential (--uuid) or every credential of a namespace (--all).
    Revoke {
        namespace: String,
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        uuid: Option<String>,
        #[arg(long)]
        all: bool,
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
        AdminCmd::Key { cmd } => {
            let store = open_store(&a.data_dir)?;
            key_command(&a.data_dir, &store, cmd).await
        }
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
            let key = keys::add(&store, &name).await?;
            let path = if existing.is_empty() {
                Some(write_auth_file(data_dir, &name, &key.uuid, &key.secret)?)
            } else {
                None
            };
            println!("{}", key.api_key());
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

/// The uuid in `DATA/auth/<namespace>`, if that file exists.
fn auth_file_uuid(data_dir: &Path, ns: &str) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join("auth").join(ns)).ok()?;
    Some(text.trim().split_once(':')?.0.to_string())
}

async fn key_command(data_dir: &Path, store: &SqliteStore, cmd: KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::List { namespace } => {
            let creds = store.credentials_of(&namespace).await?;
            if creds.is_empty() {
                anyhow::bail!("namespace '{namespace}' has no credentials");
            }
            for c in creds {
                let created = chrono::DateTime::from_timestamp_millis(c.created)
                    .filter(|_| c.created > 0)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "-".into());
                let grace = match c.previous_expires {
                    Some(t) if t > nimbus_model::now_millis() => {
                        chrono::DateTime::from_timestamp_millis(t)
                            .map(|t| format!("  previous secret valid until {}", t.to_rfc3339()))
                            .unwrap_or_default()
                    }
                    _ => String::new(),
                };
                println!("{}  created {created}{grace}", c.uuid);
            }
        }
        KeyCmd::Add { namespace } => {
            nimbus_model::names::validate_name(&namespace).map_err(|e| anyhow::anyhow!("{e}"))?;
            let key = keys::add(store, &namespace).await?;
            println!("{}", key.api_key());
        }
        KeyCmd::Rotate {
            namespace,
            uuid,
            grace,
        } => {
            let key = keys::rotate(
                store,
                &namespace,
                uuid.as_deref(),
                grace.map(std::time::Duration::from_secs),
            )
            .await?;
            if auth_file_uuid(data_dir, &namespace).as_deref() == Some(key.uuid.as_str()) {
                let p = write_auth_file(data_dir, &namespace, &key.uuid, &key.secret)?;
                eprintln!("updated {}", p.display());
            }
            println!("{}", key.api_key());
        }
        KeyCmd::Revoke {
            namespace,
            uuid,
            all: _,
        } => {
            let revoked = keys::revoke(store, &namespace, uuid.as_deref()).await?;
            if let Some(u) = auth_file_uuid(data_dir, &namespace)
                && revoked.contains(&u)
            {
                let p = data_dir.join("auth").join(&namespace);
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
                eprintln!("removed {}", p.display());
            }
            for u in revoked {
                println!("revoked {u}");
            }
        }
    }
    Ok(())
}
