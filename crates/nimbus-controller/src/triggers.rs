//! Firing a trigger: one trigger activation record, and one queued activation per active rule
//! whose filter (if any) passes. The record's logs say, per rule, what happened.

use crate::delivery::FilterOutcome;
use crate::{Controller, ControllerError, Identity, Result};
use nimbus_model::entity::{Rule, RuleStatus, Trigger};
use nimbus_model::{
    Activation, ActivationId, ActivationResponse, EntityKind, KeyValues, now_millis,
};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Most (namespace, trigger) entries kept by the fire cache before it starts over.
const FIRE_CACHE_CAPACITY: usize = 10_000;

/// A trigger with its active rules, as of one entity generation of the store.
pub(crate) type TriggerRules = Arc<(Trigger, Vec<Rule>)>;

#[derive(Default)]
pub(crate) struct FireCache {
    entries: Mutex<HashMap<(String, String), (u64, TriggerRules)>>,
}

impl Controller {
    /// The trigger `ns/name` and its active rules. A message feed fires the same trigger
    /// thousands of times a second: while the store reports no entity change since they were
    /// read (its entity generation), they come from memory instead of a trigger read and a
    /// parse of every rule of the namespace.
    async fn trigger_and_rules(&self, ns: &str, name: &str) -> Result<Option<TriggerRules>> {
        let generation = self.store.entity_generation();
        let key = (ns.to_string(), name.to_string());
        if let Some(g) = generation
            && let Some((at, found)) = self
                .fire_cache
                .entries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
            && *at == g
        {
            return Ok(Some(found.clone()));
        }
        let Some((trigger, _)) = self.load::<Trigger>(ns, EntityKind::Trigger, name).await? else {
            return Ok(None);
        };
        let rules: Vec<Rule> = self
            .rules_of_trigger(&trigger)
            .await?
            .into_iter()
            .filter(|r| r.status == RuleStatus::Active)
            .collect();
        let found = Arc::new((trigger, rules));
        if let Some(g) = generation {
            let mut entries = self
                .fire_cache
                .entries
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if entries.len() >= FIRE_CACHE_CAPACITY {
                entries.clear();
            }
            // Read at generation `g` or later: if anything changed meanwhile, the generation
            // moved on and the entry is simply never used.
            entries.insert(key, (g, found.clone()));
        }
        Ok(Some(found))
    }

    /// Fires `ns/name`. `None` means no active rule matched (204): nothing is recorded.
    pub async fn fire_trigger(
        &self,
        who: &Identity,
        ns: &str,
        name: &str,
        payload: Map<String, Value>,
    ) -> Result<Option<ActivationId>> {
        self.ensure_own(who, ns)?;
        let sz = serde_json::to_vec(&payload).map(|b| b.len()).unwrap_or(0);
        if sz > self.cfg.max_payload_bytes {
            return Err(ControllerError::TooLarge(format!(
                "The request payload is {sz} bytes, over the limit of {} bytes.",
                self.cfg.max_payload_bytes
            )));
        }
        let Some(found) = self.trigger_and_rules(&who.namespace, name).await? else {
            return Err(ControllerError::not_found());
        };
        let (trigger, rules) = (&found.0, &found.1);
        if rules.is_empty() {
            return Ok(None);
        }
        self.store.admit(&who.namespace)?;
        self.throttles
            .admit_fire(&who.namespace)
            .inspect_err(|_| self.throttled(&who.namespace, "fires"))?;
        let mut params = trigger.parameters.to_object();
        for (k, v) in payload {
            params.insert(k, v);
        }
        let trigger_id = ActivationId::generate();
        let start = now_millis();
        let mut logs = Vec::new();
        let mut items = Vec::new();
        for rule in rules.iter() {
            let rule_name = format!("{}/{}", rule.namespace, rule.name);
            let entry = match rule.action_fqn() {
                Ok(action) => {
                    let action_path = action.to_string().trim_start_matches('/').to_string();
                    let checked = match self.rule_filter(rule, &params) {
                        FilterOutcome::Pass => self
                            .resolve_action(who, &action)
                            .await
                            .map(Some)
                            .map_err(Ok),
                        FilterOutcome::Skip => Ok(None),
                        FilterOutcome::Error(e) => Err(Err(e)),
                    };
                    match checked {
                        Ok(None) => {
                            json!({"statusCode": 0, "success": true, "filtered": true, "rule": rule_name, "action": action_path})
                        }
                        Err(Err(e)) => {
                            json!({"statusCode": 4, "success": false, "error": format!("The rule's filter could not be evaluated, the rule did not fire: {e}"), "rule": rule_name, "action": action_path})
                        }
                        Ok(Some(_)) => match self.rule_item(
                            who,
                            rule,
                            &action,
                            params.clone(),
                            Some(trigger_id.clone()),
                        ) {
                            Ok(item) => {
                                let id = item.0.activation_id.clone();
                                items.push(item);
                                json!({"statusCode": 0, "success": true, "activationId": id, "rule": rule_name, "action": action_path})
                            }
                            Err(e) => {
                                json!({"statusCode": 3, "success": false, "error": e.to_string(), "rule": rule_name, "action": action_path})
                            }
                        },
                        Err(Ok(e)) => {
                            json!({"statusCode": 1, "success": false, "error": e.to_string(), "rule": rule_name, "action": action_path})
                        }
                    }
                }
                Err(e) => {
                    json!({"statusCode": 1, "success": false, "error": e.to_string(), "rule": rule_name})
                }
            };
            logs.push(entry.to_string());
        }
        let mut annotations = KeyValues::new();
        annotations.set(
            "path",
            json!(format!("{}/{}", trigger.namespace, trigger.name)),
        );
        annotations.set("kind", json!("trigger"));
        if let Some(rid) = crate::current_request_id() {
            annotations.set("requestId", json!(rid));
        }
        let record = Activation {
            namespace: who.namespace.clone(),
            name: trigger.name.clone(),
            subject: who.namespace.clone(),
            activation_id: trigger_id.clone(),
            version: trigger.version,
            publish: false,
            start,
            end: 0,
            duration: None,
            cause: None,
            logs,
            annotations,
            response: ActivationResponse::success(Value::Object(params)),
        };
        // The rule activations and the trigger's record in one transaction: a crash keeps
        // both or neither, so a feed re-firing an interrupted event can trust the record.
        self.store.enqueue_fire(&items, &record).await?;
        if !items.is_empty() {
            self.queue_wakeup.notify_one();
        }
        self.finished(&record);
        Ok(Some(trigger_id))
    }
}
