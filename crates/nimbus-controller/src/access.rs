//! Who may read or invoke what: own namespace fully; another namespace only through
//! `publish: true` packages.

use crate::{Controller, ControllerError, Identity, Result};
use nimbus_model::entity::{Action, Package};
use nimbus_model::{EntityKind, FullyQualifiedName, KeyValues};

/// An action found for invocation, with the parameters it inherits.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedAction {
    pub action: std::sync::Arc<Action>,
    /// Package parameters, then binding parameters (the binding wins).
    pub inherited: KeyValues,
    /// `ns/binding` when reached through a binding.
    pub binding: Option<String>,
}

impl ResolvedAction {
    /// `ns/[pkg/]name` of the action actually run.
    pub fn path(&self) -> String {
        format!("{}/{}", self.action.namespace, self.action.path.to_path())
    }
}

impl Controller {
    pub(crate) fn ensure_own(&self, who: &Identity, ns: &str) -> Result<()> {
        if who.resolve_ns(ns) == who.namespace {
            Ok(())
        } else {
            Err(ControllerError::forbidden())
        }
    }

    pub(crate) async fn load_package(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<(Package, i64)>> {
        self.load(ns, EntityKind::Package, name).await
    }

    /// Resolves a package for reading by `who`, following a binding. Returns the package the
    /// actions live in and the merged parameters.
    pub(crate) async fn resolve_package(
        &self,
        who: &Identity,
        ns: &str,
        name: &str,
    ) -> Result<(Package, KeyValues, Option<String>)> {
        let ns = who.resolve_ns(ns);
        let own = ns == who.namespace;
        let Some((pkg, _)) = self.load_package(ns, name).await? else {
            return Err(if own {
                ControllerError::not_found()
            } else {
                ControllerError::forbidden()
            });
        };
        if !own && !pkg.publish {
            return Err(ControllerError::forbidden());
        }
        match &pkg.binding {
            None => Ok((pkg.clone(), pkg.parameters.clone(), None)),
            Some(b) => {
                let Some((target, _)) = self.load_package(&b.namespace, &b.name).await? else {
                    return Err(ControllerError::NotFound(format!(
                        "The binding '{ns}/{name}' points at the package '/{}/{}', which does not exist.",
                        b.namespace, b.name
                    )));
                };
                if target.namespace != who.namespace && !target.publish {
                    return Err(ControllerError::forbidden());
                }
                let params = target.parameters.merged(&pkg.parameters);
                Ok((target, params, Some(format!("{ns}/{name}"))))
            }
        }
    }

    /// Finds an action that `who` may read and invoke.
    pub(crate) async fn resolve_action(
        &self,
        who: &Identity,
        fqn: &FullyQualifiedName,
    ) -> Result<ResolvedAction> {
        let ns = who.resolve_ns(&fqn.namespace).to_string();
        match &fqn.path.package {
            None => {
                if ns != who.namespace {
                    return Err(ControllerError::forbidden());
                }
                let Some(action) = self.load_action(&ns, &fqn.path.name).await? else {
                    return Err(ControllerError::not_found());
                };
                Ok(ResolvedAction {
                    action,
                    inherited: KeyValues::new(),
                    binding: None,
                })
            }
            Some(pkg_name) => {
                let (pkg, inherited, binding) = self.resolve_package(who, &ns, pkg_name).await?;
                let key = format!("{}/{}", pkg.name, fqn.path.name);
                let Some(action) = self.load_action(&pkg.namespace, &key).await? else {
                    return Err(ControllerError::not_found());
                };
                Ok(ResolvedAction {
                    action,
                    inherited,
                    binding,
                })
            }
        }
    }
}

/// The annotation by which an owner opens a top-level action to anonymous callers of the
/// OpenFaaS face (`/function/NAME.NAMESPACE`).
pub const OPENFAAS_PUBLIC: &str = "openfaas-public";

impl Controller {
    /// Whether the top-level action `ns/name` may be called without credentials through the
    /// OpenFaaS face: it was deployed through the OpenFaaS gateway (whose functions OpenFaaS
    /// users expect to be public; only the gateway credential deploys there), or its owner
    /// annotated it `openfaas-public: true`. Packaged actions never are.
    pub async fn openfaas_public(&self, ns: &str, name: &str) -> Result<bool> {
        if name.contains('/') {
            return Ok(false);
        }
        Ok(self.load_action(ns, name).await?.is_some_and(|a| {
            a.annotations.get("openfaas").is_some() || a.annotations.is_truthy(OPENFAAS_PUBLIC)
        }))
    }
}

/// A web-exported action found by its public URL.
#[derive(Debug, Clone)]
pub struct WebTarget {
    /// The namespace owner's identity: web actions run as their owner.
    pub owner: Identity,
    pub action: FullyQualifiedName,
    /// The action as resolved for this request, so invoking it does not look it up again.
    pub(crate) resolved: ResolvedAction,
}

impl WebTarget {
    /// The web action's annotations (`web-export`, `raw-http`, `require-whisk-auth`, …).
    pub fn annotations(&self) -> &KeyValues {
        &self.resolved.action.annotations
    }
}

impl Controller {
    /// Finds `ns/[pkg/]name` for a web request. Anything not web-exported is "not found", so the
    /// URL space reveals nothing about private actions.
    pub async fn resolve_web_action(
        &self,
        ns: &str,
        package: Option<&str>,
        name: &str,
    ) -> Result<WebTarget> {
        let owner = self.namespace_owner(ns).await?;
        let path = nimbus_model::EntityPath::new(package.map(str::to_string), name);
        nimbus_model::names::validate_name(name)?;
        let fqn = FullyQualifiedName::new(ns, path);
        let r = match self.resolve_action(&owner, &fqn).await {
            Ok(r) => r,
            Err(ControllerError::Forbidden(_)) => return Err(ControllerError::not_found()),
            Err(e) => return Err(e),
        };
        if !r.action.annotations.is_truthy("web-export") {
            return Err(ControllerError::not_found());
        }
        Ok(WebTarget {
            owner,
            action: fqn,
            resolved: r,
        })
    }

    /// The identity web actions of `ns` run as (its first credential usable in this mode),
    /// cached for [`crate::AUTH_CACHE_TTL`] so a revocation takes effect within it. An unknown
    /// namespace is not cached.
    async fn namespace_owner(&self, ns: &str) -> Result<Identity> {
        if let Some(id) = self.owner_cache.get(ns) {
            return Ok(id);
        }
        let Some(owner) = self.namespace_identity(ns).await? else {
            return Err(ControllerError::not_found());
        };
        self.owner_cache.insert(ns.to_string(), owner.clone());
        Ok(owner)
    }
}
