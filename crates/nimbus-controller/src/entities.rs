//! Entity use cases: create/update with OpenWhisk's merge rules, get, list, delete.

use crate::requests::{ActionPut, PackagePut, RulePut, TriggerPut};
use crate::{Controller, ControllerError, Identity, Result};
use nimbus_model::entity::{
    Action, BindingRef, EntityPathDoc, Package, Rule, RuleStatus, Trigger, Version,
};
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

fn version_for(given: &Option<String>, old: Option<Version>) -> Result<Version> {
    match given {
        Some(v) if !v.is_empty() => {
            let v = Version::parse(v)?;
            Ok(match old {
                Some(o) if v <= o => o.bump(),
                _ => v,
            })
        }
        _ => Ok(old.map(|o| o.bump()).unwrap_or_default()),
    }
}

impl Controller {
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

    pub(crate) async fn save<T: Serialize>(
        &self,
        ns: &str,
        kind: EntityKind,
        key: &str,
        v: &T,
        updated: i64,
        expected_rev: Option<i64>,
    ) -> Result<()> {
        let doc = serde_json::to_value(v).map_err(|e| ControllerError::Internal(e.to_string()))?;
        self.store
            .put_entity(ns, kind, key, &doc, updated, expected_rev)
            .await?;
        Ok(())
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

    // ----- actions -----

    pub async fn put_action(
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
        if existing.is_some() && !overwrite {
            return Err(ControllerError::Conflict("resource already exists".into()));
        }
        let exec = match body.exec {
            Some(e) => Some(Exec::from_request(e)?),
            None => None,
        };
        let exec = match exec {
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
        let (action, rev) = match existing {
            None => {
                let exec =
                    exec.ok_or_else(|| ControllerError::BadRequest("exec undefined".into()))?;
                let limits = ActionLimits::default().apply(&limits_put, &self.cfg.limits)?;
                let mut annotations = body.annotations.unwrap_or_default();
                if annotations.get("provide-api-key").is_none() {
                    annotations.set("provide-api-key", json!(false));
                }
                annotations.set("exec", json!(exec.kind()));
                if let Some(del) = &body.del_annotations {
                    for k in del {
                        annotations.remove(k);
                    }
                }
                let action = Action {
                    namespace: ns.clone(),
                    path: EntityPathDoc::from(&path),
                    version: version_for(&body.version, None)?,
                    publish: body.publish.unwrap_or(false),
                    annotations,
                    exec,
                    parameters: body.parameters.unwrap_or_default(),
                    limits,
                    updated: now,
                };
                (action, None)
            }
            Some((mut old, rev)) => {
                if let Some(e) = exec {
                    old.annotations.set("exec", json!(e.kind()));
                    old.exec = e;
                }
                if let Some(a) = &body.annotations {
                    old.annotations.merge(a);
                }
                if let Some(del) = &body.del_annotations {
                    for k in del {
                        old.annotations.remove(k);
                    }
                }
                if let Some(p) = body.parameters {
                    old.parameters = p;
                }
                old.limits = old.limits.apply(&limits_put, &self.cfg.limits)?;
                if let Some(p) = body.publish {
                    old.publish = p;
                }
                old.version = version_for(&body.version, Some(old.version))?;
                old.updated = now;
                (old, Some(rev))
            }
        };
        if !self.invoker.supports(action.exec.kind()) && action.exec.kind() != "sequence" {
            return Err(ControllerError::BadRequest(format!(
                "kind '{}' has no runtime on this server",
                action.exec.kind()
            )));
        }
        self.save(&ns, EntityKind::Action, &key, &action, now, rev)
            .await?;
        Ok(action.api_json(true))
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

    pub async fn get_action(
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

    pub async fn list_actions(
        &self,
        who: &Identity,
        ns: &str,
        package: Option<&str>,
        paging: Paging,
    ) -> Result<Vec<Value>> {
        let list: Vec<Action> = match package {
            Some(pkg) => {
                let (p, _, _) = self.resolve_package(who, ns, pkg).await?;
                self.list_docs(
                    &p.namespace,
                    EntityKind::Action,
                    EntityQuery {
                        package: Some(p.name.clone()),
                        skip: paging.skip,
                        limit: Some(paging.limit),
                        ..Default::default()
                    },
                )
                .await?
            }
            None => {
                self.ensure_own(who, ns)?;
                self.list_docs(
                    &who.namespace,
                    EntityKind::Action,
                    EntityQuery {
                        skip: paging.skip,
                        limit: Some(paging.limit),
                        ..Default::default()
                    },
                )
                .await?
            }
        };
        Ok(list.iter().map(Action::list_json).collect())
    }

    pub async fn count(&self, who: &Identity, ns: &str, kind: EntityKind) -> Result<u64> {
        self.ensure_own(who, ns)?;
        Ok(self
            .store
            .count_entities(&who.namespace, kind, &EntityQuery::default())
            .await?)
    }

    pub async fn delete_action(&self, who: &Identity, ns: &str, path: &str) -> Result<Value> {
        self.ensure_own(who, ns)?;
        let path = EntityPath::parse(path)?;
        let key = path.key();
        let Some((action, rev)) = self
            .load::<Action>(&who.namespace, EntityKind::Action, &key)
            .await?
        else {
            return Err(ControllerError::not_found());
        };
        if !self
            .store
            .delete_entity(&who.namespace, EntityKind::Action, &key, Some(rev))
            .await?
        {
            return Err(ControllerError::not_found());
        }
        Ok(action.api_json(false))
    }

    // ----- packages -----

    pub async fn put_package(
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
        let binding = match &body.binding {
            None => None,
            Some(Value::Object(o)) if o.is_empty() => None,
            Some(v) => {
                let ns_b = v.get("namespace").and_then(|x| x.as_str());
                let name_b = v.get("name").and_then(|x| x.as_str());
                let (Some(bns), Some(bname)) = (ns_b, name_b) else {
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
                Some(BindingRef {
                    namespace: bns,
                    name: bname.to_string(),
                })
            }
        };
        let existing = self.load_package(&ns, name).await?;
        if existing.is_some() && !overwrite {
            return Err(ControllerError::Conflict("resource already exists".into()));
        }
        let now = now_millis();
        let (pkg, rev) = match existing {
            None => (
                Package {
                    namespace: ns.clone(),
                    name: name.to_string(),
                    version: version_for(&body.version, None)?,
                    publish: body.publish.unwrap_or(false),
                    annotations: body.annotations.unwrap_or_default(),
                    parameters: body.parameters.unwrap_or_default(),
                    binding,
                    updated: now,
                },
                None,
            ),
            Some((mut old, rev)) => {
                let explicit_binding = body.binding.is_some();
                if explicit_binding && old.binding.is_some() != binding.is_some() {
                    return Err(ControllerError::Conflict(
                        "A package cannot be turned into a binding, nor a binding into a package."
                            .into(),
                    ));
                }
                if explicit_binding && binding.is_some() {
                    old.binding = binding;
                }
                if let Some(a) = &body.annotations {
                    old.annotations.merge(a);
                }
                if let Some(p) = body.parameters {
                    old.parameters = p;
                }
                if let Some(p) = body.publish {
                    old.publish = p;
                }
                old.version = version_for(&body.version, Some(old.version))?;
                old.updated = now;
                (old, Some(rev))
            }
        };
        self.save(&ns, EntityKind::Package, name, &pkg, now, rev)
            .await?;
        self.package_view(&pkg, pkg.parameters.clone(), &pkg).await
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
        let mut list = Vec::new();
        let mut feeds = Vec::new();
        for a in &actions {
            let item =
                json!({"name": a.path.name, "version": a.version, "annotations": a.annotations});
            if a.annotations.get("feed").is_some() {
                feeds.push(item);
            } else {
                list.push(item);
            }
        }
        let mut shown = shown.clone();
        shown.parameters = params;
        Ok(shown.api_json(list, feeds))
    }

    pub async fn get_package(&self, who: &Identity, ns: &str, name: &str) -> Result<Value> {
        let ns_r = who.resolve_ns(ns).to_string();
        let (content, params, binding) = self.resolve_package(who, &ns_r, name).await?;
        if binding.is_some() {
            let Some((b, _)) = self.load_package(&ns_r, name).await? else {
                return Err(ControllerError::not_found());
            };
            return self.package_view(&b, params, &content).await;
        }
        self.package_view(&content, params, &content).await
    }

    pub async fn list_packages(
        &self,
        who: &Identity,
        ns: &str,
        public: bool,
        paging: Paging,
    ) -> Result<Vec<Value>> {
        let ns = who.resolve_ns(ns).to_string();
        let own = ns == who.namespace;
        let mut list: Vec<Package> = self
            .list_docs(
                &ns,
                EntityKind::Package,
                EntityQuery {
                    skip: 0,
                    limit: None,
                    ..Default::default()
                },
            )
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

    pub async fn delete_package(
        &self,
        who: &Identity,
        ns: &str,
        name: &str,
        force: bool,
    ) -> Result<Value> {
        self.ensure_own(who, ns)?;
        let ns = who.namespace.clone();
        let Some((pkg, rev)) = self.load_package(&ns, name).await? else {
            return Err(ControllerError::not_found());
        };
        let q = EntityQuery {
            package: Some(name.to_string()),
            ..Default::default()
        };
        let contents = self
            .store
            .list_entities(&ns, EntityKind::Action, &q)
            .await?;
        if !contents.is_empty() {
            if !force {
                return Err(ControllerError::Conflict(format!(
                    "Package not empty (contains {} entities). Set force param or delete package contents.",
                    contents.len()
                )));
            }
            for d in contents {
                self.store
                    .delete_entity(&ns, EntityKind::Action, &d.key, None)
                    .await?;
            }
        }
        self.store
            .delete_entity(&ns, EntityKind::Package, name, Some(rev))
            .await?;
        Ok(pkg.list_json())
    }

    // ----- triggers -----

    pub async fn put_trigger(
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
        if existing.is_some() && !overwrite {
            return Err(ControllerError::Conflict("resource already exists".into()));
        }
        let now = now_millis();
        let (t, rev) = match existing {
            None => (
                Trigger {
                    namespace: ns.clone(),
                    name: name.to_string(),
                    version: version_for(&body.version, None)?,
                    publish: body.publish.unwrap_or(false),
                    annotations: body.annotations.unwrap_or_default(),
                    parameters: body.parameters.unwrap_or_default(),
                    updated: now,
                },
                None,
            ),
            Some((mut old, rev)) => {
                if let Some(a) = &body.annotations {
                    old.annotations.merge(a);
                }
                if let Some(p) = body.parameters {
                    old.parameters = p;
                }
                if let Some(p) = body.publish {
                    old.publish = p;
                }
                old.version = version_for(&body.version, Some(old.version))?;
                old.updated = now;
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

    async fn trigger_rules_map(&self, t: &Trigger) -> Result<Option<Value>> {
        let rules = self.rules_of_trigger(t).await?;
        if rules.is_empty() {
            return Ok(None);
        }
        let mut map = serde_json::Map::new();
        for r in rules {
            let action = r.api_json()["action"].clone();
            map.insert(
                format!("{}/{}", r.namespace, r.name),
                json!({"action": action, "status": r.status.as_str()}),
            );
        }
        Ok(Some(Value::Object(map)))
    }

    pub async fn get_trigger(&self, who: &Identity, ns: &str, name: &str) -> Result<Value> {
        self.ensure_own(who, ns)?;
        let Some((t, _)) = self
            .load::<Trigger>(&who.namespace, EntityKind::Trigger, name)
            .await?
        else {
            return Err(ControllerError::not_found());
        };
        let rules = self.trigger_rules_map(&t).await?;
        Ok(t.api_json(rules))
    }

    pub async fn list_triggers(
        &self,
        who: &Identity,
        ns: &str,
        paging: Paging,
    ) -> Result<Vec<Value>> {
        self.ensure_own(who, ns)?;
        let list: Vec<Trigger> = self
            .list_docs(
                &who.namespace,
                EntityKind::Trigger,
                EntityQuery {
                    skip: paging.skip,
                    limit: Some(paging.limit),
                    ..Default::default()
                },
            )
            .await?;
        Ok(list.iter().map(Trigger::list_json).collect())
    }

    pub async fn delete_trigger(&self, who: &Identity, ns: &str, name: &str) -> Result<Value> {
        self.ensure_own(who, ns)?;
        let Some((t, rev)) = self
            .load::<Trigger>(&who.namespace, EntityKind::Trigger, name)
            .await?
        else {
            return Err(ControllerError::not_found());
        };
        let rules = self.trigger_rules_map(&t).await?;
        self.store
            .delete_entity(&who.namespace, EntityKind::Trigger, name, Some(rev))
            .await?;
        Ok(t.api_json(rules))
    }

    // ----- rules -----

    pub async fn put_rule(
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
        if existing.is_some() && !overwrite {
            return Err(ControllerError::Conflict("resource already exists".into()));
        }
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
                    version: version_for(&body.version, None)?,
                    publish: body.publish.unwrap_or(false),
                    annotations: body.annotations.unwrap_or_default(),
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
                if let Some(a) = &body.annotations {
                    old.annotations.merge(a);
                }
                if let Some(p) = body.publish {
                    old.publish = p;
                }
                old.version = version_for(&body.version, Some(old.version))?;
                old.updated = now;
                (old, Some(rev))
            }
        };
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
        self.ensure_own(who, ns)?;
        let status = match status {
            "active" => RuleStatus::Active,
            "inactive" => RuleStatus::Inactive,
            other => {
                return Err(ControllerError::BadRequest(format!(
                    "Rule status '{other}' is not valid: use 'active' or 'inactive'."
                )));
            }
        };
        let Some((mut rule, rev)) = self
            .load::<Rule>(&who.namespace, EntityKind::Rule, name)
            .await?
        else {
            return Err(ControllerError::not_found());
        };
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
    }

    pub async fn get_rule(&self, who: &Identity, ns: &str, name: &str) -> Result<Value> {
        self.ensure_own(who, ns)?;
        let Some((r, _)) = self
            .load::<Rule>(&who.namespace, EntityKind::Rule, name)
            .await?
        else {
            return Err(ControllerError::not_found());
        };
        Ok(r.api_json())
    }

    pub async fn list_rules(&self, who: &Identity, ns: &str, paging: Paging) -> Result<Vec<Value>> {
        self.ensure_own(who, ns)?;
        let list: Vec<Rule> = self
            .list_docs(
                &who.namespace,
                EntityKind::Rule,
                EntityQuery {
                    skip: paging.skip,
                    limit: Some(paging.limit),
                    ..Default::default()
                },
            )
            .await?;
        Ok(list.iter().map(Rule::list_json).collect())
    }

    pub async fn delete_rule(&self, who: &Identity, ns: &str, name: &str) -> Result<Value> {
        self.ensure_own(who, ns)?;
        let Some((r, rev)) = self
            .load::<Rule>(&who.namespace, EntityKind::Rule, name)
            .await?
        else {
            return Err(ControllerError::not_found());
        };
        self.store
            .delete_entity(&who.namespace, EntityKind::Rule, name, Some(rev))
            .await?;
        Ok(r.api_json())
    }
}
