//! OpenFaaS secrets: stored as files under the gateway's data directory (mode 0600, in a 0700
//! directory), never logged and never returned by any API (list answers names only). A function
//! that names a secret gets a read-only copy in its mount directory
//! (`<mounts>/<namespace>/<function>/<secret>`), which the sandbox binds at
//! `/var/openfaas/secrets` (see `ControllerConfig::function_mounts`).

use crate::error::{GatewayError, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub struct SecretStore {
    root: PathBuf,
    mounts: PathBuf,
}

/// OpenFaaS secret names are Kubernetes object names: lower-case alphanumerics, `-` and `.`.
pub fn validate_secret_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_'
        })
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(GatewayError::BadRequest(format!(
            "invalid secret name '{name}': use lower-case letters, digits, '-', '_' and '.'"
        )))
    }
}

fn write_private(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .ok_or_else(|| GatewayError::Internal("bad secret path".into()))?;
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| GatewayError::io("writing a secret", e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| GatewayError::io("writing a secret", e))?;
    std::fs::rename(&tmp, path).map_err(|e| GatewayError::io("writing a secret", e))?;
    Ok(())
}

use std::os::unix::fs::OpenOptionsExt;

fn private_dir(dir: &Path, mode: u32) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| GatewayError::io("creating a directory", e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| GatewayError::io("creating a directory", e))
}

impl SecretStore {
    pub fn new(root: PathBuf, mounts: PathBuf) -> Result<Self> {
        private_dir(&root, 0o700)?;
        private_dir(&mounts, 0o700)?;
        Ok(SecretStore { root, mounts })
    }

    fn path(&self, ns: &str, name: &str) -> PathBuf {
        self.root.join(ns).join(name)
    }

    pub fn exists(&self, ns: &str, name: &str) -> bool {
        self.path(ns, name).is_file()
    }

    pub fn list(&self, ns: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root.join(ns))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    /// Creates (`create`) or replaces (`!create`) a secret; 409 / 404 otherwise.
    pub fn put(&self, ns: &str, name: &str, value: &[u8], create: bool) -> Result<()> {
        validate_secret_name(name)?;
        let exists = self.exists(ns, name);
        if create && exists {
            return Err(GatewayError::Conflict(format!(
                "secret {name} already exists"
            )));
        }
        if !create && !exists {
            return Err(GatewayError::NotFound(format!("secret {name} not found")));
        }
        private_dir(&self.root.join(ns), 0o700)?;
        write_private(&self.path(ns, name), value, 0o600)?;
        self.refresh_mounts(ns, name)
    }

    pub fn delete(&self, ns: &str, name: &str) -> Result<()> {
        validate_secret_name(name)?;
        if !self.exists(ns, name) {
            return Err(GatewayError::NotFound(format!("secret {name} not found")));
        }
        std::fs::remove_file(self.path(ns, name))
            .map_err(|e| GatewayError::io("deleting a secret", e))?;
        // Functions that named it lose their copy (as a deleted Kubernetes secret would).
        for dir in self.function_dirs(ns) {
            let _ = std::fs::remove_file(dir.join(name));
        }
        Ok(())
    }

    fn function_dirs(&self, ns: &str) -> Vec<PathBuf> {
        std::fs::read_dir(self.mounts.join(ns))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect()
    }

    /// Rewrites the copies of secret `name` in every function that mounts it.
    fn refresh_mounts(&self, ns: &str, name: &str) -> Result<()> {
        let value = std::fs::read(self.path(ns, name))
            .map_err(|e| GatewayError::io("reading a secret", e))?;
        for dir in self.function_dirs(ns) {
            if dir.join(name).exists() {
                write_private(&dir.join(name), &value, 0o444)?;
            }
        }
        Ok(())
    }

    /// Makes the mount directory of function `func` hold exactly `names` (which must exist),
    /// or removes it when `names` is empty.
    pub fn mount_for(&self, ns: &str, func: &str, names: &[String]) -> Result<()> {
        for n in names {
            validate_secret_name(n)?;
            if !self.exists(ns, n) {
                return Err(GatewayError::BadRequest(format!(
                    "secret '{n}' does not exist in namespace {ns}; create it first (faas-cli secret create / POST /system/secrets)"
                )));
            }
        }
        let dir = self.mounts.join(ns).join(func);
        if names.is_empty() {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| GatewayError::io("removing mounts", e))?;
            }
            return Ok(());
        }
        private_dir(&self.mounts.join(ns), 0o700)?;
        // The bind's root is what the sandbox user sees: world-readable, read-only files.
        private_dir(&dir, 0o755)?;
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if let Some(n) = e.file_name().to_str()
                && !names.iter().any(|x| x == n)
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
        for n in names {
            let value = std::fs::read(self.path(ns, n))
                .map_err(|e| GatewayError::io("reading a secret", e))?;
            write_private(&dir.join(n), &value, 0o444)?;
        }
        Ok(())
    }

    pub fn unmount(&self, ns: &str, func: &str) {
        let _ = std::fs::remove_dir_all(self.mounts.join(ns).join(func));
    }
}
