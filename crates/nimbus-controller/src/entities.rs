//! Entity use cases: create/update with OpenWhisk's merge rules, get, list, delete.
//!
//! The public surface is one call per operation over [`EntityKind`] (the API routes every
//! collection through it); the kind-specific rules sit in the private functions below it.

use crate::requests::{ActionPut, PackagePut, RulePut, TriggerPut, parse_body};
use crate::{Controller, ControllerError, Identity, Result};
use nimbus_model::entity::{Action, BindingRef, EntityPathDoc, Package, Rule, RuleStatus, Trigger};
use nimbus_model::exec::Exec;
use nimbus_model::limits::ActionLimits;
use nimbus_model::names::validate_name;
use nimbus_model::{EntityKind, EntityPath, FullyQualifiedName, KeyValues, now_millis};
use nimbus_store::EntityQuery;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Paging of entity lists (`limit` 0 = the maximum, 200).
#[derive(Debug, Clone, Copy)]
pub struct Paging {
    pub skip: u64,
    pub limit: u64,
}

fn conflict_unless(overwrite: bool, exists: bool) -> Result<()> {
    if exists && !overwrite {
        Err(ControllerError::Conflict("resource already exists".into()))
    } else {
        Ok(())
    }
}

impl Controller {
    // ----- storage helpers -----

    pub(crate) async fn load<T: DeserializeOwned>(
        &self,
        ns: &str,
        kind: EntityKind,
        key: &str,
    ) -> Result<Option<(T, i64)>> {
        match self.store.get_entity(ns, kind, key).await? {
            None => Ok(None),
            Some(d) => {
                let v: T = serde_json::from_value(d.doc).map_err(|e| {
                    ControllerError::Internal(format!(
                        "stored {} '{ns}/{key}' is unreadable: {e}",
                        kind.collection()
                    ))
                })?;
                Ok(Some((v, d.rev)))
            }
        }
    }

    /// Loads an entity of the caller's own namespace, or answers 403/404.
    async fn load_own<T: DeserializeOwned>(
        &self,
        who: &Identity,
        ns: &str,
        kind: EntityKind,
        key: &str,
    ) -> Result<(T, i64)> {
        self.ensure_own(who, ns)?;
        self.load(&who.namespace, kind, key)
            .await?
            .ok_or_else(ControllerError::not_found)
    }

    pub(crate) async fn save<T: Serialize>(
        &self,
        ns: &str,
        kind: EntityKind,
        key: &str,
        v: &T,
        updated: i64,
        expected_rev: Option<i64>,
    ) -> Result<i64> {
        let doc = serde_json::to_value(v).map_err(|e| ControllerError::Internal(e.to_string()))?;
        Ok(self
            .store
            .put_entity(ns, kind, key, &doc, updated, expected_rev)
            .await?)
    }

    fn check_params_size(&self, p: &Option<KeyValues>) -> Result<()> {
        if let Some(p) = p {
            let size = p.json_size();
            let max = self.cfg.limits.max_parameter_size as usize;
            if size > max {
                return Err(ControllerError::TooLarge(format!(
                    "The parameters are {size} bytes, over the limit of {max} bytes."
                )));
            }
        }
        Ok(())
    }

    async fn list_docs<T: DeserializeOwned>(
        &self,
        ns: &str,
        kind: EntityKind,
        q: EntityQuery,
    ) -> Result<Vec<T>> {
        let docs = self.store.list_entities(ns, kind, &q).await?;
        docs.into_iter()
            .map(|d| {
                serde_json::from_value(d.doc).map_err(|e| ControllerError::Internal(e.to_string()))
            })
            .collect()
    }

    fn page(paging: Paging) -> EntityQuery {
        EntityQuery {
            skip: paging.skip,
            limit: Some(paging.limit),
            ..Default::default()
        }
    }

    // ----- the public surface, one call per operation -----

    /// `GET /{collection}`. `public` adds other namespaces' shared packages.
    pub async fn list_entities(
        &self,
        who: &Identity,
        ns: &str,
        kind: EntityKind,
        paging: Paging,
        public: bool,
    ) -> Result<Vec<Value>> {
        let q = Self::page(paging);
        let own = || self.ensure_own(who, ns).map(|_| who.namespace.as_str());
        Ok(match kind {
            EntityKind::Package => return self.list_packages(who, ns, public, paging).await,
            EntityKind::Action => {
                let list: Vec<Action> = self.list_docs(own()?, kind, q).await?;
                list.iter().map(Action::list_json).collect()
            }
            EntityKind::Trigger => {
                let list: Vec<Trigger> = self.list_docs(own()?, kind, q).await?;
                list.iter().map(Trigger::list_json).collect()
            }
            EntityKind::Rule => {
                let list: Vec<Rule> = self.list_docs(own()?, kind, q).await?;
                list.iter().map(Rule::list_json).collect()
            }
        })
    }

    /// `GET /{collection}?count=true`.
    pub async fn count(&self, who: &Identity, ns: &str, kind: EntityKind) -> Result<u64> {
        self.ensure_own(who, ns)?;
        Ok(self
            .store
            .count_entities(&who.namespace, kind, &EntityQuery::default())
            .await?)
    }

    /// `GET /{collection}/{path}`; `with_code` only matters for actions.
    pub async fn get_entity(
        &self,
        who: &Identity,
        ns: &str,
        kind: EntityKind,
        path: &str,
        with_code: bool,
    ) -> Result<Value> {
        match kind {
            EntityKind::Action => self.get_action(who, ns, path, with_code).await,
            EntityKind::Package => self.get_package(who, ns, path).await,
            EntityKind::Trigger => {
                let (t, _) = self.load_own::<Trigger>(who, ns, kind, path).await?;
                let rules = self.trigger_rules_map(&t).await?;
                Ok(t.api_json(rules))
            }
            EntityKind::Rule => Ok(self
                .load_own::<Rule>(who, ns, kind, path)
                .await?
                .0
                .api_json()),
        }
    }

    /// `PUT /{collection}/{path}[?overwrite=true]` with the JSON body.
    pub async fn put_entity(
        &self,
        who: &Identity,
        ns: &str,
        kind: EntityKind,
        path: &str,
        body: Value,
        overwrite: bool,
    ) -> Result<Value> {
        match kind {
            EntityKind::Action => {
                self.put_action(who, ns, path, parse_body(body)?, overwrite)
                    .await
            }
            EntityKind::Package => {
                self.put_package(who, ns, path, parse_body(body)?, overwrite)
                    .await
            }
            EntityKind::Trigger => {
                self.put_trigger(who, ns, path, parse_body(body)?, overwrite)
                    .await
            }
            EntityKind::Rule => {
                self.put_rule(who, ns, path, parse_body(body)?, overwrite)
                    .await
            }
        }
    }

    /// `DELETE /{collection}/{path}`; `force` empties a package first.
    pub async fn delete_entity(
        &self,
        who: &Identity,
        ns: &str,
        kind: EntityKind,
        path: &str,
        force: bool,
    ) -> Result<Value> {
        let key = match kind {
            EntityKind::Action => EntityPath::parse(path)?.key(),
            _ => path.to_string(),
        };
        let view = match kind {
            EntityKind::Action => {
                let (mut a, rev) = self.load_own::<Action>(who, ns, kind, &key).await?;
                let view = a.api_json(false);
                if a.limits.min_instances > 0 {
                    // No more warm instances for a deleted action.
                    a.limits.min_instances = 0;
                    self.apply_min_instances(&a);
                }
                (view, rev)
            }
            EntityKind::Package => {
                let (p, rev) = self.load_own::<Package>(who, ns, kind, &key).await?;
                self.empty_package(&p, force).await?;
                (p.list_json(), rev)
            }
            EntityKind::Trigger => {
                let (t, rev) = self.load_own::<Trigger>(who, ns, kind, &key).await?;
                let rules = self.trigger_rules_map(&t).await?;
                (t.api_json(rules), rev)
            }
            EntityKind::Rule => {
                let (r, rev) = self.load_own::<Rule>(who, ns, kind, &key).await?;
                (r.api_json(), rev)
            }
        };
        if !self
            .store
            .delete_entity(&who.namespace, kind, &key, Some(view.1))
            .await?
        {
            return Err(ControllerError::not_found());
        }
        Ok(view.0)
    }

    /// `GET /actions/{pkg}/`: the actions of a package or binding.
    pub async fn list_package_actions(
        &self,
        who: &Identity,
        ns: &str,
        package: &str,
        paging: Paging,
    ) -> Result<Vec<Value>> {
        let (p, _, _) = self.resolve_package(who, ns, package).await?;
        let q = EntityQuery {
            package: Some(p.name.clone()),
            ..Self::page(paging)
        };
        let list: Vec<Action> = self.list_docs(&p.namespace, EntityKind::Action, q).await?;
        Ok(list.iter().map(Action::list_json).collect())
    }

    // ----- actions -----

    pub(crate) async fn put_action(
        &self,
        who: &Identity,
        ns: &str,
        path: &str,
        body: ActionPut,
        overwrite: bool,
    ) -> Result<Value> {
        self.ensure_own(who, ns)?;
        let ns = who.namespace.clone();
        let path = EntityPath::parse(path)?;
        if let Some(pkg) = &path.package {
            match self.load_package(&ns, pkg).await? {
                None => {
                    return Err(ControllerError::NotFound(format!(
                        "The package '{ns}/{pkg}' does not exist; create it before adding actions to it."
                    )));
                }
                Some((p, _)) if p.binding.is_some() => {
                    return Err(ControllerError::BadRequest(
                        "Operation not permitted on package binding.".into(),
                    ));
                }
                _ => {}
            }
        }
        self.check_params_size(&body.parameters)?;
        let key = path.key();
        let existing: Option<(Action, i64)> = self.load(&ns, EntityKind::Action, &key).await?;
        conflict_unless(overwrite, existing.is_some())?;
        let exec = match body.exec.map(Exec::from_request).transpose()? {
            Some(Exec::Sequence { components }) => {
                self.validate_sequence(who, &ns, &path, &components).await?;
                // Stored fully qualified, with `_` resolved to the caller's namespace.
                let components = components
                    .iter()
                    .map(|c| FullyQualifiedName::parse(c, &ns).map(|f| f.to_string()))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Some(Exec::Sequence { components })
            }
            other => other,
        };
        let limits_put = body.limits.unwrap_or_default();
        let now = now_millis();
        let (mut action, rev) = match existing {
            None => {
                let exec =
                    exec.ok_or_else(|| ControllerError::BadRequest("exec undefined".into()))?;
                let mut annotations = body.common.initial_annotations();
                if annotations.get("provide-api-key").is_none() {
                    annotations.set("provide-api-key", json!(false));
                }
                let action = Action {
                    namespace: ns.clone(),
                    path: EntityPathDoc::from(&path),
                    version: body.common.version(None)?,
                    publish: body.common.publish.unwrap_or(false),
                    annotations,
                    exec,
                    parameters: body.parameters.unwrap_or_default(),
                    limits: ActionLimits::default().apply(&limits_put, &self.cfg.limits)?,
                    updated: now,
                };
                (action, None)
            }
            Some((mut old, rev)) => {
                if let Some(e) = exec {
                    old.exec = e;
                }
                if let Some(p) = body.parameters {
                    old.parameters = p;
                }
                old.limits = old.limits.apply(&limits_put, &self.cfg.limits)?;
                body.common.update(old.common_mut(), now)?;
                (old, Some(rev))
            }
        };
        action.annotations.set("exec", json!(action.exec.kind()));
        if action.limits.concurrency > 1 && !matches!(action.exec.kind(), "nodejs:20" | "sequence")
        {
            return Err(ControllerError::BadRequest(format!(
                "limits.concurrency above 1 is supported for nodejs actions only (kind '{}' runs one activation per instance).",
                action.exec.kind()
            )));
        }
        if !self.invoker.supports(action.exec.kind()) && action.exec.kind() != "sequence" {
            return Err(ControllerError::BadRequest(format!(
                "kind '{}' has no runtime on this server",
                action.exec.kind()
            )));
        }
        if nimbus_model::wasm::is_wasm_kind(action.exec.kind()) {
            self.check_wasm(&mut action).await?;
        }
        let rev = self
            .save(&ns, EntityKind::Action, &key, &action, now, rev)
            .await?;
        self.apply_min_instances(&action);
        let json = action.api_json(true);
        // The first invocation finds the action parsed, and a wasm action's compiled code
        // (remembered by its code string during the check above) ready: no cold lookup. The
        // entry is unconfirmed: the first lookup checks its revision once.
        self.action_cache
            .put(&ns, &key, rev, None, std::sync::Arc::new(action));
        Ok(json)
    }

    async fn validate_sequence(
        &self,
        who: &Identity,
        ns: &str,
        path: &EntityPath,
        components: &[String],
    ) -> Result<()> {
        let max = self.cfg.limits.sequence_max_length as usize;
        if components.len() > max {
            return Err(ControllerError::BadRequest(format!(
                "Too many actions in the sequence (count: {}, allowed: {max}).",
                components.len()
            )));
        }
        let me = FullyQualifiedName::new(ns, path.clone());
        for c in components {
            let fqn = FullyQualifiedName::parse(c, &who.namespace).map_err(|_| {
                ControllerError::BadRequest(format!(
                    "Sequence component '{c}' is not a valid action name."
                ))
            })?;
            if fqn == me {
                return Err(ControllerError::BadRequest(
                    "Sequence may not refer to itself.".into(),
                ));
            }
            match self.resolve_action(who, &fqn).await {
                Ok(r) => {
                    // A component that is itself a sequence must not lead back to this one.
                    if let Exec::Sequence { components: inner } = &r.action.exec
                        && self.sequence_reaches(who, inner, &me, 0).await?
                    {
                        return Err(ControllerError::BadRequest(
                            "Sequence may not refer to itself.".into(),
                        ));
                    }
                }
                Err(ControllerError::NotFound(_)) | Err(ControllerError::Forbidden(_)) => {
                    return Err(ControllerError::BadRequest(
                        "Sequence component does not exist.".into(),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn sequence_reaches<'a>(
        &'a self,
        who: &'a Identity,
        components: &'a [String],
        target: &'a FullyQualifiedName,
        depth: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool>> + Send + 'a>> {
        Box::pin(async move {
            if depth > 16 {
                return Ok(true);
            }
            for c in components {
                let Ok(fqn) = FullyQualifiedName::parse(c, &who.namespace) else {
                    continue;
                };
                if &fqn == target {
                    return Ok(true);
                }
                if let Ok(r) = self.resolve_action(who, &fqn).await
                    && let Exec::Sequence { components: inner } = &r.action.exec
                    && self.sequence_reaches(who, inner, target, depth + 1).await?
                {
                    return Ok(true);
                }
            }
            Ok(false)
        })
    }

    async fn get_action(
        &self,
        who: &Identity,
        ns: &str,
        path: &str,
        with_code: bool,
    ) -> Result<Value> {
        let fqn = FullyQualifiedName::new(who.resolve_ns(ns), EntityPath::parse(path)?);
        let r = self.resolve_action(who, &fqn).await?;
        let mut v = r.action.api_json(with_code);
        if r.binding.is_some() {
            // Reading through a binding shows the inherited parameters merged in.
            v["parameters"] = serde_json::to_value(r.inherited.merged(&r.action.parameters))
                .unwrap_or(Value::Null);
        }
        Ok(v)
    }

    // ----- packages -----

    pub(crate) async fn put_package(
        &self,
        who: &Identity,
        ns: &str,
        name: &str,
        body: PackagePut,
        overwrite: bool,
    ) -> Result<Value> {
        self.ensure_own(who, ns)?;
        let ns = who.namespace.clone();
        validate_name(name)?;
        if name == "default" {
            return Err(ControllerError::BadRequest(
                "Package name 'default' is reserved.".into(),
            ));
        }
        self.check_params_size(&body.parameters)?;
        let binding = self.binding_target(who, &body.binding).await?;
        let existing = self.load_package(&ns, name).await?;
        conflict_unless(overwrite, existing.is_some())?;
        let now = now_millis();
        let (pkg, rev) = match existing {
            None => (
                Package {
                    namespace: ns.clone(),
                    name: name.to_string(),
                    version: body.common.version(None)?,
                    publish: body.common.publish.unwrap_or(false),
                    annotations: body.common.initial_annotations(),
                    parameters: body.parameters.unwrap_or_default(),
                    binding,
                    updated: now,
                },
                None,
            ),
            Some((mut old, rev)) => {
                if body.binding.is_some() {
                    if old.binding.is_some() != binding.is_some() {
                        return Err(ControllerError::Conflict(
                            "A package cannot be turned into a binding, nor a binding into a package.".into(),
                        ));
                    }
                    old.binding = binding;
                }
                if let Some(p) = body.parameters {
                    old.parameters = p;
                }
                body.common.update(old.common_mut(), now)?;
                (old, Some(rev))
            }
        };
        self.save(&ns, EntityKind::Package, name, &pkg, now, rev)
            .await?;
        self.package_view(&pkg, pkg.parameters.clone(), &pkg).await
    }

    /// Checks a request's `binding` (`{}`/absent: a plain package) and returns its target.
    async fn binding_target(
        &self,
        who: &Identity,
        binding: &Option<Value>,
    ) -> Result<Option<BindingRef>> {
        let v = match binding {
            None => return Ok(None),
            Some(Value::Object(o)) if o.is_empty() => return Ok(None),
            Some(v) => v,
        };
        let (Some(bns), Some(bname)) = (
            v.get("namespace").and_then(|x| x.as_str()),
            v.get("name").and_then(|x| x.as_str()),
        ) else {
            return Err(ControllerError::BadRequest(
                "binding must be {\"namespace\": …, \"name\": …}".into(),
            ));
        };
        let bns = who.resolve_ns(bns).to_string();
        let Some((target, _)) = self.load_package(&bns, bname).await? else {
            return Err(ControllerError::BadRequest(format!(
                "The package '/{bns}/{bname}' to bind does not exist."
            )));
        };
        if target.binding.is_some() {
            return Err(ControllerError::BadRequest(
                "A binding cannot refer to another binding.".into(),
            ));
        }
        if target.namespace != who.namespace && !target.publish {
            return Err(ControllerError::forbidden());
        }
        Ok(Some(BindingRef {
            namespace: bns,
            name: bname.to_string(),
        }))
    }

    async fn package_view(
        &self,
        shown: &Package,
        params: KeyValues,
        content: &Package,
    ) -> Result<Value> {
        let actions: Vec<Action> = self
            .list_docs(
                &content.namespace,
                EntityKind::Action,
                EntityQuery {
                    package: Some(content.name.clone()),
                    ..Default::default()
                },
            )
            .await?;
        let (feeds, list): (Vec<&Action>, Vec<&Action>) = actions
            .iter()
            .partition(|a| a.annotations.get("feed").is_some());
        let item = |a: &&Action| json!({"name": a.path.name, "version": a.version, "annotations": a.annotations});
        let mut shown = shown.clone();
        shown.parameters = params;
        Ok(shown.api_json(
            list.iter().map(item).collect(),
            feeds.iter().map(item).collect(),
        ))
    }

    async fn get_package(&self, who: &Identity, ns: &str, name: &str) -> Result<Value> {
        let ns = who.resolve_ns(ns);
        let (content, params, binding) = self.resolve_package(who, ns, name).await?;
        if binding.is_none() {
            return self.package_view(&content, params, &content).await;
        }
        // A binding shows itself, with the bound package's contents and merged parameters.
        let (b, _) = self
            .load_package(ns, name)
            .await?
            .ok_or_else(ControllerError::not_found)?;
        self.package_view(&b, params, &content).await
    }

    async fn list_packages(
        &self,
        who: &Identity,
        ns: &str,
        public: bool,
        paging: Paging,
    ) -> Result<Vec<Value>> {
        let ns = who.resolve_ns(ns).to_string();
        let own = ns == who.namespace;
        let mut list: Vec<Package> = self
            .list_docs(&ns, EntityKind::Package, EntityQuery::default())
            .await?;
        if !own {
            list.retain(|p| p.publish);
        } else if public {
            for other in self.store.list_namespaces().await? {
                if other == ns {
                    continue;
                }
                let shared: Vec<Package> = self
                    .list_docs(&other, EntityKind::Package, EntityQuery::default())
                    .await?;
                list.extend(
                    shared
                        .into_iter()
                        .filter(|p| p.publish && p.binding.is_none()),
                );
            }
            list.sort_by_key(|p| std::cmp::Reverse(p.updated));
        }
        Ok(list
            .iter()
            .skip(paging.skip as usize)
            .take(paging.limit as usize)
            .map(Package::list_json)
            .collect())
    }

    /// Deletes a package's actions when `force`, else refuses a non-empty package.
    async fn empty_package(&self, pkg: &Package, force: bool) -> Result<()> {
        let q = EntityQuery {
            package: Some(pkg.name.clone()),
            ..Default::default()
        };
        let contents = self
            .store
            .list_entities(&pkg.namespace, EntityKind::Action, &q)
            .await?;
        if !contents.is_empty() && !force {
            return Err(ControllerError::Conflict(format!(
                "Package not empty (contains {} entities). Set force param or delete package contents.",
                contents.len()
            )));
        }
        for d in contents {
            self.store
                .delete_entity(&pkg.namespace, EntityKind::Action, &d.key, None)
                .await?;
        }
        Ok(())
    }

    // ----- triggers -----

    async fn put_trigger(
        &self,
        who: &Identity,
        ns: &str,
        name: &str,
        body: TriggerPut,
        overwrite: bool,
    ) -> Result<Value> {
        self.ensure_own(who, ns)?;
        let ns = who.namespace.clone();
        validate_name(name)?;
        self.check_params_size(&body.parameters)?;
        let existing: Option<(Trigger, i64)> = self.load(&ns, EntityKind::Trigger, name).await?;
        conflict_unless(overwrite, existing.is_some())?;
        let now = now_millis();
        let (t, rev) = match existing {
            None => (
                Trigger {
                    namespace: ns.clone(),
                    name: name.to_string(),
                    version: body.common.version(None)?,
                    publish: body.common.publish.unwrap_or(false),
                    annotations: body.common.initial_annotations(),
                    parameters: body.parameters.unwrap_or_default(),
                    updated: now,
                },
                None,
            ),
            Some((mut old, rev)) => {
                if let Some(p) = body.parameters {
                    old.parameters = p;
                }
                body.common.update(old.common_mut(), now)?;
                (old, Some(rev))
            }
        };
        self.save(&ns, EntityKind::Trigger, name, &t, now, rev)
            .await?;
        let rules = self.trigger_rules_map(&t).await?;
        Ok(t.api_json(rules))
    }

    pub(crate) async fn rules_of_trigger(&self, t: &Trigger) -> Result<Vec<Rule>> {
        let rules: Vec<Rule> = self
            .list_docs(&t.namespace, EntityKind::Rule, EntityQuery::default())
            .await?;
        let me = t.fqn();
        Ok(rules
            .into_iter()
            .filter(|r| r.trigger_fqn().ok().as_ref() == Some(&me))
            .collect())
    }

    /// The trigger's `rules` map, computed from the stored rules (omitted when there are none).
    async fn trigger_rules_map(&self, t: &Trigger) -> Result<Option<Value>> {
        let rules = self.rules_of_trigger(t).await?;
        if rules.is_empty() {
            return Ok(None);
        }
        let map: serde_json::Map<String, Value> = rules
            .iter()
            .map(|r| {
                let action = r.api_json()["action"].clone();
                (
                    format!("{}/{}", r.namespace, r.name),
                    json!({"action": action, "status": r.status.as_str()}),
                )
            })
            .collect();
        Ok(Some(Value::Object(map)))
    }

    // ----- rules -----

    async fn put_rule(
        &self,
        who: &Identity,
        ns: &str,
        name: &str,
        body: RulePut,
        overwrite: bool,
    ) -> Result<Value> {
        self.ensure_own(who, ns)?;
        let ns = who.namespace.clone();
        validate_name(name)?;
        let existing: Option<(Rule, i64)> = self.load(&ns, EntityKind::Rule, name).await?;
        conflict_unless(overwrite, existing.is_some())?;
        let name_of = |v: &Option<Value>, what: &str| -> Result<Option<FullyQualifiedName>> {
            match v {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(FullyQualifiedName::parse(s, &ns)?)),
                Some(Value::Object(o)) => {
                    let path = o.get("path").and_then(|x| x.as_str()).unwrap_or(&ns);
                    let n = o.get("name").and_then(|x| x.as_str()).unwrap_or_default();
                    Ok(Some(FullyQualifiedName::parse(
                        &format!("/{path}/{n}"),
                        &ns,
                    )?))
                }
                Some(_) => Err(ControllerError::BadRequest(format!(
                    "rule {what} must be a fully qualified name"
                ))),
            }
        };
        let trigger = name_of(&body.trigger, "trigger")?;
        let action = name_of(&body.action, "action")?;
        let status = match body.status.as_deref() {
            None | Some("") | Some("active") => None,
            Some("inactive") => Some(RuleStatus::Inactive),
            Some(other) => {
                return Err(ControllerError::BadRequest(format!(
                    "Rule status '{other}' is not valid: use 'active' or 'inactive'."
                )));
            }
        };
        let (trigger, action) = match (&existing, trigger, action) {
            (_, Some(t), Some(a)) => (t, a),
            (Some((old, _)), t, a) => (
                t.map(Ok).unwrap_or_else(|| old.trigger_fqn())?,
                a.map(Ok).unwrap_or_else(|| old.action_fqn())?,
            ),
            (None, _, _) => {
                return Err(ControllerError::BadRequest(
                    "A rule needs both a trigger and an action.".into(),
                ));
            }
        };
        if trigger.namespace != ns || trigger.path.package.is_some() {
            return Err(ControllerError::BadRequest(
                "A rule's trigger must be in the rule's namespace.".into(),
            ));
        }
        if self
            .load::<Trigger>(&ns, EntityKind::Trigger, &trigger.path.name)
            .await?
            .is_none()
        {
            return Err(ControllerError::NotFound(format!(
                "The trigger '{trigger}' does not exist."
            )));
        }
        match self.resolve_action(who, &action).await {
            Ok(_) => {}
            Err(ControllerError::NotFound(_)) => {
                return Err(ControllerError::NotFound(format!(
                    "The action '{action}' does not exist."
                )));
            }
            Err(e) => return Err(e),
        }
        let now = now_millis();
        let (rule, rev) = match existing {
            None => (
                Rule {
                    namespace: ns.clone(),
                    name: name.to_string(),
                    version: body.common.version(None)?,
                    publish: body.common.publish.unwrap_or(false),
                    annotations: body.common.initial_annotations(),
                    status: status.unwrap_or(RuleStatus::Active),
                    trigger: trigger.to_string(),
                    action: action.to_string(),
                    updated: now,
                },
                None,
            ),
            Some((mut old, rev)) => {
                old.trigger = trigger.to_string();
                old.action = action.to_string();
                if let Some(s) = status {
                    old.status = s;
                }
                body.common.update(old.common_mut(), now)?;
                (old, Some(rev))
            }
        };
        let mut rule = rule;
        crate::delivery::apply_rule_settings(
            &mut rule.annotations,
            [
                (crate::delivery::FILTER, body.filter),
                (crate::delivery::RETRY, body.retry),
                (crate::delivery::ORDERING_KEY, body.ordering_key),
            ],
        )?;
        self.save(&ns, EntityKind::Rule, name, &rule, now, rev)
            .await?;
        Ok(rule.api_json())
    }

    pub async fn set_rule_status(
        &self,
        who: &Identity,
        ns: &str,
        name: &str,
        status: &str,
    ) -> Result<()> {
        let status = match status {
            "active" => RuleStatus::Active,
            "inactive" => RuleStatus::Inactive,
            other => {
                return Err(ControllerError::BadRequest(format!(
                    "Rule status '{other}' is not valid: use 'active' or 'inactive'."
                )));
            }
        };
        let (mut rule, rev) = self
            .load_own::<Rule>(who, ns, EntityKind::Rule, name)
            .await?;
        let t = rule.trigger_fqn()?;
        if self
            .load::<Trigger>(&t.namespace, EntityKind::Trigger, &t.path.name)
            .await?
            .is_none()
        {
            return Err(ControllerError::NotFound(
                "Only rules with existing triggers can be activated".into(),
            ));
        }
        if rule.status == status {
            return Ok(());
        }
        rule.status = status;
        let now = now_millis();
        rule.updated = now;
        self.save(
            &who.namespace,
            EntityKind::Rule,
            name,
            &rule,
            now,
            Some(rev),
        )
        .await
        .map(|_| ())
    }
}
