//! Namespaces and credentials: Basic `uuid:key`, generated keys stored as digests, rotation and
//! revocation, the development keys, and the short-lived keys functions receive.
//!
//! Keys have OpenWhisk's shape (`uuid:secret`, 64 random alphanumerics) so `wsk` and the
//! `openwhisk` client take them unchanged. The store keeps only SHA-256 of the secret; checks
//! compare digests in constant time (`subtle`). Verified credentials are cached for
//! [`AUTH_CACHE_TTL`], so a rotation or revocation made by another process (`nimbus admin key`)
//! takes effect within that time, and at once for changes made through this controller.

use crate::{Controller, ControllerError, Result};
use hmac::{Hmac, Mac};
use nimbus_model::now_millis;
use nimbus_store::{AuthStore, Credential, key_digest};
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::Sha256;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// How long a verified credential is trusted without reading the store again.
pub const AUTH_CACHE_TTL: Duration = Duration::from_secs(5);

/// Function keys (`__OW_API_KEY`) stay valid this long after the activation's deadline.
const FUNCTION_KEY_GRACE_MS: i64 = 60_000;

/// The secret half of a function key starts with this; generated secrets are alphanumeric, so
/// the two can never be confused.
const FUNCTION_KEY_PREFIX: &str = "nbfn1.";

/// An authenticated caller: a namespace and the credential (uuid) it authenticated with. It
/// carries no secret: work done on the caller's behalf later (queued invocations, feeds, web
/// actions) is bound to the uuid, and a function that needs to call the API gets a short-lived
/// key minted for it ([`Controller::function_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub uuid: String,
}

impl From<&Credential> for Identity {
    fn from(c: &Credential) -> Self {
        Identity {
            namespace: c.namespace.clone(),
            uuid: c.uuid.clone(),
        }
    }
}

impl Identity {
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

/// Whether `uuid` is one of the public development credentials.
pub fn is_dev_uuid(uuid: &str) -> bool {
    DEV_KEYS.iter().any(|(_, u, _)| *u == uuid)
}

/// A key in full, as shown once to its owner and written to `DATA/auth/<namespace>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub namespace: String,
    pub uuid: String,
    pub secret: String,
}

impl NewKey {
    /// `uuid:secret`, the form clients send.
    pub fn api_key(&self) -> String {
        format!("{}:{}", self.uuid, self.secret)
    }

    /// What the store keeps of it.
    pub fn credential(&self) -> Credential {
        Credential::new(&self.namespace, &self.uuid, &self.secret, now_millis())
    }
}

fn random_secret() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(64)
        .map(char::from)
        .collect()
}

/// A fresh credential: a random UUID and 64 random alphanumeric characters (OpenWhisk's key shape).
pub fn generate_key(namespace: &str) -> NewKey {
    NewKey {
        namespace: namespace.to_string(),
        uuid: uuid::Uuid::new_v4().to_string(),
        secret: random_secret(),
    }
}

/// A credential of a built-in namespace at start-up.
#[derive(Debug, Clone)]
pub struct BootstrapKey {
    pub namespace: String,
    pub uuid: String,
    /// The full key when this start created it (to be stored in the 0600 file and shown once);
    /// `None` for an existing credential, whose secret nobody can read back.
    pub created: Option<NewKey>,
}

/// Whether `secret` matches the credential's current secret, or its previous one during a
/// rotation's grace period. Digests are compared in constant time.
fn secret_matches(c: &Credential, secret: &str, now: i64) -> bool {
    let d = key_digest(secret);
    let current = d.as_bytes().ct_eq(c.key_digest.as_bytes());
    let previous = match (&c.previous_digest, c.previous_expires) {
        (Some(p), Some(until)) if now < until => d.as_bytes().ct_eq(p.as_bytes()),
        _ => subtle::Choice::from(0),
    };
    bool::from(current | previous)
}

/// Signs the short-lived keys handed to functions. The secret lives only in this process's
/// memory: a function reaches the API of the node that runs it, and its instances end with the
/// process, so nothing needs to survive a restart.
pub(crate) struct FunctionKeys {
    secret: [u8; 32],
}

impl Default for FunctionKeys {
    fn default() -> Self {
        FunctionKeys {
            secret: rand::rng().random(),
        }
    }
}

impl FunctionKeys {
    fn mac(&self, uuid: &str, expires: i64) -> Hmac<Sha256> {
        // Infallible: HMAC takes keys of any length.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        m.update(uuid.as_bytes());
        m.update(&[0]);
        m.update(expires.to_string().as_bytes());
        m
    }

    /// `nbfn1.<expires ms>.<hex HMAC(uuid, expires)>`.
    fn mint(&self, uuid: &str, expires: i64) -> String {
        let tag = hex::encode(self.mac(uuid, expires).finalize().into_bytes());
        format!("{FUNCTION_KEY_PREFIX}{expires}.{tag}")
    }

    /// Whether `secret` (the part after the prefix) is a valid, unexpired key for `uuid`.
    fn verify(&self, uuid: &str, secret: &str, now: i64) -> bool {
        let Some((expires, tag)) = secret.split_once('.') else {
            return false;
        };
        let (Ok(expires), Ok(tag)) = (expires.parse::<i64>(), hex::decode(tag)) else {
            return false;
        };
        now <= expires && self.mac(uuid, expires).verify_slice(&tag).is_ok()
    }
}

impl Controller {
    /// The credential `uuid`, from the cache while it is fresh.
    async fn credential(&self, uuid: &str) -> Result<Option<Credential>> {
        if let Some(c) = self.auth_cache.get(uuid) {
            return Ok(Some(c));
        }
        let found = self.store.credential_by_uuid(uuid).await?;
        if let Some(c) = &found {
            self.auth_cache.insert(uuid.to_string(), c.clone());
        }
        Ok(found)
    }

    /// Checks `uuid:key`; 401 on anything else. Accepts a namespace key (or its predecessor
    /// during a rotation's grace period) and the short-lived keys minted for functions; the
    /// development keys only while the server runs with `--dev`.
    pub async fn authenticate(&self, uuid: &str, key: &str) -> Result<Identity> {
        if !self.cfg.dev && is_dev_uuid(uuid) {
            return Err(ControllerError::Unauthorized);
        }
        let Some(cred) = self.credential(uuid).await? else {
            return Err(ControllerError::Unauthorized);
        };
        let now = now_millis();
        let ok = match key.strip_prefix(FUNCTION_KEY_PREFIX) {
            Some(rest) => self.function_keys.verify(uuid, rest, now),
            None => secret_matches(&cred, key, now),
        };
        if ok {
            Ok(Identity::from(&cred))
        } else {
            Err(ControllerError::Unauthorized)
        }
    }

    /// The key a function receives as `__OW_API_KEY` (`provide-api-key`): it acts as `who`
    /// until shortly after `deadline` (epoch ms) and stops working when `who`'s credential is
    /// revoked. Functions never see a namespace's long-lived key.
    pub fn function_key(&self, who: &Identity, deadline: i64) -> String {
        let secret = self
            .function_keys
            .mint(&who.uuid, deadline.saturating_add(FUNCTION_KEY_GRACE_MS));
        format!("{}:{secret}", who.uuid)
    }

    /// The identity of credential `uuid` (used for work the platform does on a namespace's
    /// behalf, such as queued invocations after a restart).
    pub async fn identity_by_uuid(&self, uuid: &str) -> Result<Option<Identity>> {
        Ok(self.credential(uuid).await?.as_ref().map(Identity::from))
    }

    /// The identity work of namespace `ns` runs as when no caller's credential is at hand
    /// (web actions, the OpenFaaS gateway): its first credential usable in this mode.
    pub async fn namespace_identity(&self, ns: &str) -> Result<Option<Identity>> {
        Ok(self
            .store
            .credentials_of(ns)
            .await?
            .iter()
            .find(|c| self.cfg.dev || !is_dev_uuid(&c.uuid))
            .map(Identity::from))
    }

    /// Makes sure `guest` and `whisk.system` exist. With `--dev`, the well-known keys are added
    /// (beside any generated ones). Without it, the well-known keys are deleted — they are
    /// public, so they must never outlive a development run — and a namespace left without a
    /// credential gets a generated one.
    pub async fn bootstrap_namespaces(&self) -> Result<Vec<BootstrapKey>> {
        let mut out = Vec::new();
        for (ns, uuid, secret) in DEV_KEYS {
            let existing = self.store.credentials_of(ns).await?;
            if self.cfg.dev {
                let created = if existing.iter().any(|c| c.uuid == *uuid) {
                    None
                } else {
                    let k = NewKey {
                        namespace: ns.to_string(),
                        uuid: uuid.to_string(),
                        secret: secret.to_string(),
                    };
                    self.store.add_credential(&k.credential()).await?;
                    Some(k)
                };
                out.push(BootstrapKey {
                    namespace: ns.to_string(),
                    uuid: uuid.to_string(),
                    created,
                });
                continue;
            }
            if existing.iter().any(|c| c.uuid == *uuid) {
                self.store.delete_credential(uuid).await?;
                self.auth_cache.invalidate(*uuid);
                tracing::warn!(namespace = %ns, "removed the public development key (the server runs without --dev)");
            }
            if let Some(c) = existing.iter().find(|c| c.uuid != *uuid) {
                out.push(BootstrapKey {
                    namespace: c.namespace.clone(),
                    uuid: c.uuid.clone(),
                    created: None,
                });
            } else {
                let k = generate_key(ns);
                self.store.add_credential(&k.credential()).await?;
                out.push(BootstrapKey {
                    namespace: k.namespace.clone(),
                    uuid: k.uuid.clone(),
                    created: Some(k),
                });
            }
        }
        Ok(out)
    }

    /// Forgets cached credentials (after a change made through the store directly).
    pub fn invalidate_credentials(&self) {
        self.auth_cache.invalidate_all();
    }
}

/// Key administration on a store (`nimbus admin key …`), usable without a running controller.
pub mod keys {
    use super::*;

    /// Errors of key administration, with messages for the operator.
    #[derive(Debug, thiserror::Error)]
    pub enum KeyError {
        #[error("namespace '{0}' has no credentials")]
        NoNamespace(String),
        #[error("credential '{uuid}' does not belong to namespace '{namespace}'")]
        NotInNamespace { uuid: String, namespace: String },
        #[error(
            "namespace '{namespace}' has {count} credentials; name one with --uuid (see `nimbus admin key list {namespace}`)"
        )]
        Ambiguous { namespace: String, count: usize },
        #[error(transparent)]
        Store(#[from] nimbus_store::StoreError),
    }

    async fn pick(
        store: &dyn AuthStore,
        ns: &str,
        uuid: Option<&str>,
    ) -> std::result::Result<Credential, KeyError> {
        let creds = store.credentials_of(ns).await?;
        if creds.is_empty() {
            return Err(KeyError::NoNamespace(ns.to_string()));
        }
        match uuid {
            Some(u) => {
                creds
                    .into_iter()
                    .find(|c| c.uuid == u)
                    .ok_or_else(|| KeyError::NotInNamespace {
                        uuid: u.to_string(),
                        namespace: ns.to_string(),
                    })
            }
            None if creds.len() == 1 => Ok(creds
                .into_iter()
                .next()
                .ok_or_else(|| KeyError::NoNamespace(ns.to_string()))?),
            None => Err(KeyError::Ambiguous {
                namespace: ns.to_string(),
                count: creds.len(),
            }),
        }
    }

    /// Adds a key to `ns` (creating the namespace if it has none).
    pub async fn add(store: &dyn AuthStore, ns: &str) -> std::result::Result<NewKey, KeyError> {
        let k = generate_key(ns);
        store.add_credential(&k.credential()).await?;
        Ok(k)
    }

    /// Gives credential `uuid` of `ns` (or its only credential) a new secret. With `grace`,
    /// the old secret keeps working that long (to roll clients over); otherwise it stops now.
    pub async fn rotate(
        store: &dyn AuthStore,
        ns: &str,
        uuid: Option<&str>,
        grace: Option<Duration>,
    ) -> std::result::Result<NewKey, KeyError> {
        let c = pick(store, ns, uuid).await?;
        let secret = random_secret();
        let until = grace
            .map(|g| now_millis().saturating_add(i64::try_from(g.as_millis()).unwrap_or(i64::MAX)));
        store
            .replace_key(&c.uuid, &key_digest(&secret), until)
            .await?;
        Ok(NewKey {
            namespace: c.namespace,
            uuid: c.uuid,
            secret,
        })
    }

    /// Deletes credential `uuid` of `ns`, or with `uuid: None` every credential of `ns`.
    /// Returns the revoked uuids. Feeds and queued work bound to a revoked credential stop
    /// being able to call the API; a namespace with no credential left cannot be reached.
    pub async fn revoke(
        store: &dyn AuthStore,
        ns: &str,
        uuid: Option<&str>,
    ) -> std::result::Result<Vec<String>, KeyError> {
        let targets = match uuid {
            Some(_) => vec![pick(store, ns, uuid).await?],
            None => {
                let all = store.credentials_of(ns).await?;
                if all.is_empty() {
                    return Err(KeyError::NoNamespace(ns.to_string()));
                }
                all
            }
        };
        let mut out = Vec::new();
        for c in targets {
            if store.delete_credential(&c.uuid).await? {
                out.push(c.uuid);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn function_keys_verify_only_their_own_uuid_and_time() {
        let k = FunctionKeys::default();
        let key = k.mint("u1", 1_000);
        let secret = key.strip_prefix(FUNCTION_KEY_PREFIX).unwrap();
        assert!(k.verify("u1", secret, 999));
        assert!(k.verify("u1", secret, 1_000));
        assert!(!k.verify("u1", secret, 1_001), "expired");
        assert!(!k.verify("u2", secret, 0), "another credential");
        assert!(
            !FunctionKeys::default().verify("u1", secret, 0),
            "another process's secret"
        );
        let forged = secret.replace("1000.", "9999.");
        assert!(!k.verify("u1", &forged, 0), "expiry is signed");
        assert!(!k.verify("u1", "garbage", 0));
    }

    #[test]
    fn secrets_match_current_and_previous_within_grace() {
        let mut c = Credential::new("ns", "u", "new", 0);
        assert!(secret_matches(&c, "new", 10));
        assert!(!secret_matches(&c, "old", 10));
        c.previous_digest = Some(key_digest("old"));
        c.previous_expires = Some(20);
        assert!(secret_matches(&c, "old", 19));
        assert!(!secret_matches(&c, "old", 20), "grace over");
        assert!(secret_matches(&c, "new", 30));
    }

    #[test]
    fn generated_keys_are_alphanumeric_and_unique() {
        let (a, b) = (generate_key("ns"), generate_key("ns"));
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.secret.len(), 64);
        assert!(a.secret.chars().all(|c| c.is_ascii_alphanumeric()));
        assert!(!a.secret.starts_with(FUNCTION_KEY_PREFIX));
    }
}
