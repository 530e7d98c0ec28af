//! `nimbus admin`: namespaces and keys, working on the data directory directly.

use anyhow::Context;
use clap::{Args, Subcommand};
use nimbus_controller::keys;
use nimbus_store::{AuthStore, SqliteStore};
use std::path::{Path, PathBuf};

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

/// The uuid in `DATA/auth/<namespace>`, if that file exists.
fn auth_file_uuid(data_dir: &Path, ns: &str) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join("auth").join(ns)).ok()?;
    Some(text.trim().split_once(':')?.0.to_string())
}

pub async fn run(a: AdminArgs) -> anyhow::Result<()> {
    let db = a.data_dir.join("nimbus.db");
    let store =
        SqliteStore::open(&db).with_context(|| format!("opening the store {}", db.display()))?;
    match a.cmd {
        AdminCmd::Namespace {
            cmd: NamespaceCmd::Create { name },
        } => {
            nimbus_model::names::validate_name(&name).map_err(|e| anyhow::anyhow!("{e}"))?;
            let existing = store.credentials_of(&name).await?;
            let key = keys::add(&store, &name).await?;
            let path = if existing.is_empty() {
                Some(write_auth_file(&a.data_dir, &name, &key.uuid, &key.secret)?)
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
        AdminCmd::Namespace {
            cmd: NamespaceCmd::List,
        } => {
            for ns in store.list_namespaces().await? {
                println!("{ns}");
            }
        }
        AdminCmd::Key { cmd } => key_command(&a.data_dir, &store, cmd).await?,
    }
    Ok(())
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
