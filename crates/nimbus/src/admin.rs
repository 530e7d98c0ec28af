//! `nimbus admin`: namespaces and keys, working on the data directory directly.

use anyhow::Context;
use clap::{Args, Subcommand};
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
            let auth = nimbus_controller::generate_key(&name);
            store.add_credential(&auth).await?;
            let path = if existing.is_empty() {
                Some(write_auth_file(&a.data_dir, &name, &auth.uuid, &auth.key)?)
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
        AdminCmd::Namespace {
            cmd: NamespaceCmd::List,
        } => {
            for ns in store.list_namespaces().await? {
                println!("{ns}");
            }
        }
    }
    Ok(())
}
