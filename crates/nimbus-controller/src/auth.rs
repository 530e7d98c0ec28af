//! Namespaces and credentials: Basic `uuid:key`, generated keys, the development keys.

use crate::{Controller, ControllerError, Result};
use nimbus_store::NamespaceAuth;
use rand::Rng;
use rand::distr::Alphanumeric;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub uuid: String,
    pub key: String,
}

/// A stored credential is the identity it authenticates.
impl From<nimbus_store::NamespaceAuth> for Identity {
    fn from(c: nimbus_store::NamespaceAuth) -> Self {
        Identity {
            namespace: c.namespace,
            uuid: c.uuid,
            key: c.key,
        }
    }
}

impl Identity {
    /// `uuid:key`, as functions receive it in `__OW_API_KEY`.
    pub fn api_key(&self) -> String {
        format!("{}:{}", self.uuid, self.key)
    }

    /// Resolves `_` to the caller's namespace.
    pub fn resolve_ns<'a>(&'a self, ns: &'a str) -> &'a str {
        if ns == "_" { &self.namespace } else { ns }
    }
}

/// The well-known OpenWhisk development credentials (`--dev` only).
pub const DEV_KEYS: &[(&str, &str, &str)] = &[
    (
        "guest",
        "23bc46b1-71f6-4ed5-8c54-816aa4f8c502",
        "123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP",
    ),
    (
        "whisk.system",
        "789c46b1-71f6-4ed5-8c54-816aa4f8c502",
        "abczO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP",
    ),
];

/// A fresh credential: a random UUID and 64 random alphanumeric characters (OpenWhisk's key shape).
pub fn generate_key(namespace: &str) -> NamespaceAuth {
    let key: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(64)
        .map(char::from)
        .collect();
    NamespaceAuth {
        namespace: namespace.to_string(),
        uuid: uuid::Uuid::new_v4().to_string(),
        key,
    }
}

/// A credential created (or found) at start-up.
#[derive(Debug, Clone)]
pub struct BootstrapKey {
    pub auth: NamespaceAuth,
    /// True when it was created by this start (so it should be printed once).
    pub created: bool,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Controller {
    /// Checks `uuid:key`; 401 on anything else.
    pub async fn authenticate(&self, uuid: &str, key: &str) -> Result<Identity> {
        if let Some(id) = self
            .auth_cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(uuid)
        {
            return if constant_time_eq(id.key.as_bytes(), key.as_bytes()) {
                Ok(id.clone())
            } else {
                Err(ControllerError::Unauthorized)
            };
        }
        let Some(cred) = self.store.credential_by_uuid(uuid).await? else {
            return Err(ControllerError::Unauthorized);
        };
        if !constant_time_eq(cred.key.as_bytes(), key.as_bytes()) {
            return Err(ControllerError::Unauthorized);
        }
        let id = Identity::from(cred);
        self.auth_cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uuid.to_string(), id.clone());
        Ok(id)
    }

    /// The identity of a namespace's first credential (used for work the platform does on a
    /// namespace's behalf, such as queued invocations after a restart).
    pub async fn identity_by_uuid(&self, uuid: &str) -> Result<Option<Identity>> {
        Ok(self
            .store
            .credential_by_uuid(uuid)
            .await?
            .map(Identity::from))
    }

    /// Makes sure `guest` and `whisk.system` exist. With `dev`, the well-known keys are used
    /// (added beside any generated ones); otherwise a namespace without credentials gets a
    /// generated key.
    pub async fn bootstrap_namespaces(&self, dev: bool) -> Result<Vec<BootstrapKey>> {
        let mut out = Vec::new();
        for (ns, uuid, key) in DEV_KEYS {
            let existing = self.store.credentials_of(ns).await?;
            if dev {
                if let Some(c) = existing.iter().find(|c| c.uuid == *uuid) {
                    out.push(BootstrapKey {
                        auth: c.clone(),
                        created: false,
                    });
                } else {
                    let auth = NamespaceAuth {
                        namespace: ns.to_string(),
                        uuid: uuid.to_string(),
                        key: key.to_string(),
                    };
                    self.store.add_credential(&auth).await?;
                    out.push(BootstrapKey {
                        auth,
                        created: true,
                    });
                }
                continue;
            }
            // Outside dev mode the well-known keys must never grant access.
            if let Some(c) = existing.iter().find(|c| c.uuid != *uuid) {
                out.push(BootstrapKey {
                    auth: c.clone(),
                    created: false,
                });
            } else {
                let auth = generate_key(ns);
                self.store.add_credential(&auth).await?;
                out.push(BootstrapKey {
                    auth,
                    created: true,
                });
            }
        }
        Ok(out)
    }

    /// Adds a namespace with a generated key (the `admin` command).
    pub async fn create_namespace(&self, ns: &str) -> Result<NamespaceAuth> {
        nimbus_model::names::validate_name(ns)?;
        let auth = generate_key(ns);
        self.store.add_credential(&auth).await?;
        Ok(auth)
    }

    /// Whether the dev keys are currently refused (they are, unless the server runs with `--dev`).
    pub fn is_dev_uuid(uuid: &str) -> bool {
        DEV_KEYS.iter().any(|(_, u, _)| *u == uuid)
    }
}
