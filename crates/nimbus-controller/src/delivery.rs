//! Rule-level delivery: filters (CEL expressions over the event), retries with exponential
//! backoff and jitter, the dead-letter hand-off, per-key ordering and redrive.
//!
//! A rule's delivery settings live in its annotations (set through the rule PUT body's `filter`,
//! `retry` and `orderingKey` fields or directly as annotations), so they are stored, versioned and
//! returned with the rule:
//! * `filter`: a CEL expression; the rule fires only when it evaluates to `true`.
//! * `retry`: `{maxAttempts, maxAgeSeconds, initialDelayMs, maxDelayMs, backoffRate}`.
//! * `orderingKey`: a dotted path into the event (`device`, `payload.device`); events of the
//!   rule with the same value run one at a time, in order.
//!
//! Retries are durable: a failed attempt is replaced in the store's queue, in one transaction
//! with its activation record, by the next attempt with a not-before time; the dispatcher only
//! claims it when it is due, so a restart neither loses nor repeats a retry.

use crate::invoke::QueuedPayload;
use crate::{Controller, ControllerError, Identity, Result};
use nimbus_model::entity::Rule;
use nimbus_model::{
    Activation, ActivationId, EntityKind, FullyQualifiedName, KeyValues, now_millis,
};
use nimbus_store::{DeadLetter, QueuedInvocation, Schedule};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Annotation names.
pub(crate) const FILTER: &str = "filter";
pub(crate) const RETRY: &str = "retry";
pub(crate) const ORDERING_KEY: &str = "orderingKey";

/// The retry policy of a rule. Defaults: 3 attempts in all, within one hour, waiting about
/// 1 s, 2 s, 4 s … (capped at 60 s) between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// No attempt starts later than this after the event was accepted.
    pub max_age_seconds: u64,
    /// Wait before the first retry (before jitter).
    pub initial_delay_ms: u64,
    /// Longest wait between two attempts (before jitter).
    pub max_delay_ms: u64,
    /// Each wait is the previous one times this.
    pub backoff_rate: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            max_age_seconds: 3600,
            initial_delay_ms: 1000,
            max_delay_ms: 60_000,
            backoff_rate: 2.0,
        }
    }
}

impl RetryPolicy {
    fn validate(&self) -> std::result::Result<(), String> {
        if !(1..=100).contains(&self.max_attempts) {
            return Err("retry.maxAttempts must be between 1 and 100".into());
        }
        if self.max_age_seconds == 0 || self.max_age_seconds > 7 * 24 * 3600 {
            return Err("retry.maxAgeSeconds must be between 1 and 604800 (7 days)".into());
        }
        if self.max_delay_ms > 24 * 3600 * 1000 || self.initial_delay_ms > self.max_delay_ms {
            return Err(
                "retry.initialDelayMs must not exceed retry.maxDelayMs, which must not exceed 86400000 (1 day)"
                    .into(),
            );
        }
        if !(1.0..=10.0).contains(&self.backoff_rate) {
            return Err("retry.backoffRate must be between 1 and 10".into());
        }
        Ok(())
    }

    /// The wait after failed attempt `attempt` (1-based): exponential, capped, with "equal
    /// jitter" (half fixed, half random) so retries of many events spread out but still grow.
    pub fn delay_ms(&self, attempt: u32) -> u64 {
        let exp = self
            .backoff_rate
            .powi(i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX));
        let base = ((self.initial_delay_ms as f64) * exp).min(self.max_delay_ms as f64) as u64;
        let half = base / 2;
        half + rand::rng().random_range(0..=base - half)
    }
}

/// What a rule-fired queue entry carries besides the action and event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeliveryInfo {
    /// `ns/rule`.
    pub rule: String,
    /// `ns/trigger`.
    pub trigger: String,
    #[serde(default)]
    pub trigger_activation: Option<ActivationId>,
    /// 1-based.
    pub attempt: u32,
    /// Epoch ms when the event was first accepted for this rule.
    pub first_at: i64,
    pub policy: RetryPolicy,
    #[serde(default)]
    pub order_key: Option<String>,
}

/// Compiled filters, by source text (compiling is far dearer than evaluating).
#[derive(Default)]
pub(crate) struct FilterCache {
    programs: Mutex<HashMap<String, Arc<cel::Program>>>,
}

const FILTER_CACHE_MAX: usize = 4096;

impl FilterCache {
    fn get(&self, src: &str) -> std::result::Result<Arc<cel::Program>, String> {
        let mut m = self.programs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = m.get(src) {
            return Ok(p.clone());
        }
        let p = Arc::new(compile_filter(src)?);
        if m.len() >= FILTER_CACHE_MAX {
            m.clear();
        }
        m.insert(src.to_string(), p.clone());
        Ok(p)
    }
}

/// Longest filter accepted.
const FILTER_MAX_LEN: usize = 4096;

fn compile_filter(src: &str) -> std::result::Result<cel::Program, String> {
    if src.len() > FILTER_MAX_LEN {
        return Err(format!(
            "the filter is {} bytes long, over the limit of {FILTER_MAX_LEN}",
            src.len()
        ));
    }
    if src.trim().is_empty() {
        return Err("the filter is empty".into());
    }
    // The parser is generated code; a panic on some input must not take the request down.
    match std::panic::catch_unwind(|| cel::Program::compile(src)) {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the filter could not be parsed".into()),
    }
}

/// Evaluates `program` over `event`: every top-level field of the event is a variable, and
/// `event` is the whole event (for fields that are not identifiers, or `has(event.x)`).
fn evaluate(
    program: &cel::Program,
    event: &Map<String, Value>,
) -> std::result::Result<bool, String> {
    let mut ctx = cel::Context::default();
    for (k, v) in event {
        let v = cel::to_value(v).map_err(|e| format!("field '{k}' cannot be used: {e}"))?;
        ctx.add_variable_from_value(k.clone(), v);
    }
    let whole = cel::to_value(event).map_err(|e| format!("the event cannot be used: {e}"))?;
    ctx.add_variable_from_value("event", whole);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| program.execute(&ctx))) {
        Ok(Ok(cel::Value::Bool(b))) => Ok(b),
        Ok(Ok(other)) => Err(format!(
            "the filter must evaluate to a bool, not {:?}",
            other.type_of()
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the filter failed while evaluating".into()),
    }
}

/// The value at a dotted path of the event (`device`, `payload.device`).
fn at_path<'a>(event: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut cur = event.get(parts.next()?)?;
    for p in parts {
        cur = cur.get(p)?;
    }
    Some(cur)
}

fn validate_ordering_key(v: &Value) -> std::result::Result<(), String> {
    match v.as_str() {
        Some(s)
            if !s.is_empty()
                && s.len() <= 256
                && s.split('.').all(|p| !p.is_empty()) =>
        {
            Ok(())
        }
        _ => Err("orderingKey must be a dotted path into the event, e.g. \"device\" or \"payload.device\"".into()),
    }
}

/// Checks the delivery annotations of a rule (filter compiles, retry policy and ordering key
/// are well formed); the message names the problem.
pub(crate) fn validate_rule_annotations(a: &KeyValues) -> Result<()> {
    if let Some(f) = a.get(FILTER) {
        let src = f.as_str().ok_or_else(|| {
            ControllerError::BadRequest(
                "The rule's filter must be a string (a CEL expression).".into(),
            )
        })?;
        compile_filter(src).map_err(|e| {
            ControllerError::BadRequest(format!("The rule's filter is not valid CEL: {e}"))
        })?;
    }
    if a.get(RETRY).is_some() {
        policy_of_annotations(a)?;
    }
    if let Some(k) = a.get(ORDERING_KEY) {
        validate_ordering_key(k).map_err(ControllerError::BadRequest)?;
    }
    Ok(())
}

/// Moves the PUT body's delivery fields into the rule's annotations (an empty string, object
/// or `null` removes the setting), then validates them all.
pub(crate) fn apply_rule_settings(
    a: &mut KeyValues,
    fields: [(&str, Option<Value>); 3],
) -> Result<()> {
    for (key, v) in fields {
        match v {
            None => {}
            Some(Value::Null) => a.remove(key),
            Some(Value::String(s)) if s.is_empty() => a.remove(key),
            Some(Value::Object(o)) if o.is_empty() => a.remove(key),
            Some(v) => a.set(key, v),
        }
    }
    validate_rule_annotations(a)
}

fn policy_of_annotations(a: &KeyValues) -> Result<RetryPolicy> {
    match a.get(RETRY) {
        None | Some(Value::Null) => Ok(RetryPolicy::default()),
        Some(v) => {
            let p: RetryPolicy = serde_json::from_value(v.clone()).map_err(|e| {
                ControllerError::BadRequest(format!("The rule's retry policy is not valid: {e}"))
            })?;
            p.validate().map_err(|e| {
                ControllerError::BadRequest(format!("The rule's retry policy is not valid: {e}"))
            })?;
            Ok(p)
        }
    }
}

/// Outcome of a rule's filter for one event.
pub(crate) enum FilterOutcome {
    Pass,
    /// Evaluated to false.
    Skip,
    /// Could not be evaluated (missing field, type mismatch…): the rule does not fire.
    Error(String),
}

impl Controller {
    pub(crate) fn rule_filter(&self, rule: &Rule, event: &Map<String, Value>) -> FilterOutcome {
        let Some(f) = rule.annotations.get(FILTER) else {
            return FilterOutcome::Pass;
        };
        let Some(src) = f.as_str() else {
            return FilterOutcome::Error("the filter is not a string".into());
        };
        let program = match self.filters.get(src) {
            Ok(p) => p,
            Err(e) => return FilterOutcome::Error(e),
        };
        match evaluate(&program, event) {
            Ok(true) => FilterOutcome::Pass,
            Ok(false) => FilterOutcome::Skip,
            Err(e) => FilterOutcome::Error(e),
        }
    }

    /// Queues an entry made by [`Controller::rule_item`].
    pub(crate) async fn enqueue_item(
        &self,
        (item, schedule): (QueuedInvocation, Schedule),
    ) -> Result<ActivationId> {
        self.store.enqueue_scheduled(&item, &schedule).await?;
        self.queue_wakeup.notify_one();
        Ok(item.activation_id)
    }

    /// The queue entry that runs `rule`'s action for `event` with the rule's retry policy and
    /// ordering key (queued by `enqueue_item`, or by a trigger fire with its record).
    pub(crate) fn rule_item(
        &self,
        who: &Identity,
        rule: &Rule,
        action: &FullyQualifiedName,
        event: Map<String, Value>,
        trigger_activation: Option<ActivationId>,
    ) -> Result<(QueuedInvocation, Schedule)> {
        let policy = policy_of_annotations(&rule.annotations).unwrap_or_default();
        let order_key = rule
            .annotations
            .get(ORDERING_KEY)
            .and_then(|k| k.as_str())
            .and_then(|path| at_path(&event, path))
            .map(|v| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                format!("rule:{}/{}:{v}", rule.namespace, rule.name)
            });
        let trigger = rule
            .trigger_fqn()
            .map(|t| format!("{}/{}", t.namespace, t.path.name))
            .unwrap_or_else(|_| rule.trigger.clone());
        let info = DeliveryInfo {
            rule: format!("{}/{}", rule.namespace, rule.name),
            trigger,
            trigger_activation: trigger_activation.clone(),
            attempt: 1,
            first_at: now_millis(),
            policy,
            order_key: order_key.clone(),
        };
        delivery_item(who, action, event, trigger_activation, info, order_key)
    }

    /// Re-runs a dead letter: a rule's entry goes to the rule's current action (or, if the rule
    /// is gone, the action it failed on) with the original event and a fresh retry budget; an
    /// entry naming a trigger fires the trigger again. The entry is removed once accepted.
    pub async fn redrive_dead_letter(&self, who: &Identity, ns: &str, id: &str) -> Result<Value> {
        let dl = self.get_dead_letter(who, ns, id).await?;
        let Some(event) = dl.event.as_object().cloned() else {
            return Err(ControllerError::Conflict(format!(
                "The dead letter '{id}' cannot be redriven: its event is not a JSON object."
            )));
        };
        let details = &dl.details;
        let out = if details.get("kind").and_then(Value::as_str) == Some("rule") {
            let rule_name = details
                .get("rule")
                .and_then(Value::as_str)
                .and_then(|r| r.rsplit('/').next())
                .unwrap_or_default()
                .to_string();
            let rule: Option<(Rule, i64)> = if rule_name.is_empty() {
                None
            } else {
                self.load(&who.namespace, EntityKind::Rule, &rule_name)
                    .await?
            };
            let rule = match rule {
                Some((r, _)) => r,
                None => {
                    // The rule is gone: run the action it failed on, with the default policy.
                    let action = details
                        .get("action")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    Rule {
                        namespace: who.namespace.clone(),
                        name: if rule_name.is_empty() {
                            "unknown".into()
                        } else {
                            rule_name
                        },
                        version: Default::default(),
                        publish: false,
                        annotations: KeyValues::new(),
                        status: nimbus_model::entity::RuleStatus::Active,
                        trigger: details
                            .get("trigger")
                            .and_then(Value::as_str)
                            .map(|t| format!("/{t}"))
                            .unwrap_or_default(),
                        action: format!("/{}", action.trim_start_matches('/')),
                        updated: now_millis(),
                    }
                }
            };
            let action = rule.action_fqn()?;
            self.resolve_action(who, &action).await?;
            let aid = self
                .enqueue_item(self.rule_item(who, &rule, &action, event, None)?)
                .await?;
            json!({"activationId": aid})
        } else if let Some(trigger) = details.get("trigger").and_then(Value::as_str) {
            let name = trigger.rsplit('/').next().unwrap_or(trigger).to_string();
            match self.fire_trigger(who, ns, &name, event).await? {
                Some(tid) => json!({"triggerActivationId": tid}),
                None => {
                    return Err(ControllerError::Conflict(format!(
                        "The dead letter '{id}' was not redriven: the trigger '{name}' has no active rule."
                    )));
                }
            }
        } else {
            return Err(ControllerError::Conflict(format!(
                "The dead letter '{id}' cannot be redriven: it names no rule or trigger."
            )));
        };
        self.store.delete_dead_letter(&who.namespace, id).await?;
        Ok(out)
    }
}

/// The queue entry of one attempt of a rule-fired activation.
fn delivery_item(
    who: &Identity,
    action: &FullyQualifiedName,
    event: Map<String, Value>,
    cause: Option<ActivationId>,
    info: DeliveryInfo,
    order_key: Option<String>,
) -> Result<(QueuedInvocation, Schedule)> {
    let now = now_millis();
    let payload = QueuedPayload {
        uuid: who.uuid.clone(),
        namespace: who.namespace.clone(),
        action: action.to_string(),
        params: event,
        cause,
        accepted_at: now,
        delivery: Some(info),
        request_id: crate::current_request_id(),
    };
    let item = QueuedInvocation {
        activation_id: ActivationId::generate(),
        namespace: who.namespace.clone(),
        payload: serde_json::to_value(&payload)
            .map_err(|e| ControllerError::Internal(e.to_string()))?,
        enqueued_at: now,
        attempts: 0,
    };
    Ok((
        item,
        Schedule {
            not_before: 0,
            order_key,
        },
    ))
}

impl Controller {
    /// Records a finished rule-fired attempt: success completes it; a failure is replaced by
    /// the next attempt (due after the backoff) or, once the policy gives up, dead-lettered.
    /// Each is one store transaction with the activation record.
    pub(crate) async fn finish_delivery(
        &self,
        item: &QueuedInvocation,
        p: QueuedPayload,
        mut record: Activation,
    ) {
        let id = &item.activation_id;
        let Some(info) = p.delivery.clone() else {
            return;
        };
        record.annotations.set("rule", json!(info.rule));
        record.annotations.set("attempt", json!(info.attempt));
        let keyed = info.order_key.is_some();
        let finish = if record.response.success {
            Finish::Complete
        } else {
            let now = now_millis();
            let delay = info.policy.delay_ms(info.attempt);
            let due = now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
            let max_age =
                i64::try_from(info.policy.max_age_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
            let reason = failure_reason(&record);
            if info.attempt < info.policy.max_attempts && due - info.first_at <= max_age {
                let next_id = ActivationId::generate();
                let mut next = p;
                next.accepted_at = due;
                if let Some(d) = next.delivery.as_mut() {
                    d.attempt += 1;
                }
                record.annotations.set(
                    "retry",
                    json!({"nextActivationId": next_id, "delayMs": delay, "reason": reason}),
                );
                match serde_json::to_value(&next) {
                    Ok(payload) => {
                        let q = QueuedInvocation {
                            activation_id: next_id.clone(),
                            namespace: item.namespace.clone(),
                            payload,
                            enqueued_at: item.enqueued_at,
                            attempts: 0,
                        };
                        tracing::info!(activation = %id, next = %next_id, delay_ms = delay, rule = %info.rule, "rule activation failed; retry scheduled");
                        Finish::Retry(q, due)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, activation = %id, "could not encode a rule retry; it goes back to the queue");
                        self.release_queued(id).await;
                        return;
                    }
                }
            } else {
                let why = if info.attempt >= info.policy.max_attempts {
                    format!("{} attempt(s) failed; the last: {reason}", info.attempt)
                } else {
                    format!(
                        "gave up after {} attempt(s): the next would start after the maximum age of {} s; the last error: {reason}",
                        info.attempt, info.policy.max_age_seconds
                    )
                };
                let dl = DeadLetter {
                    id: ActivationId::generate().to_string(),
                    namespace: item.namespace.clone(),
                    source: format!("rule:{}", info.rule),
                    reason: why,
                    event: Value::Object(p.params.clone()),
                    attempts: info.attempt,
                    created_at: now,
                    details: json!({
                        "kind": "rule",
                        "rule": info.rule,
                        "trigger": info.trigger,
                        "action": p.action.trim_start_matches('/'),
                        "triggerActivationId": info.trigger_activation,
                        "lastActivationId": id,
                        "firstAttemptAt": info.first_at,
                    }),
                };
                record.annotations.set("deadLetter", json!(dl.id));
                tracing::warn!(activation = %id, dead_letter = %dl.id, rule = %info.rule, "rule activation dead-lettered");
                Finish::DeadLetter(Box::new(dl))
            }
        };
        // Retried until stored, like any accepted work (see `persist_accepted`).
        let stored = self
            .persist_accepted(id, "a rule activation", || async {
                match &finish {
                    Finish::Complete => self.store.complete(id, &record).await,
                    Finish::Retry(q, due) => {
                        self.store.complete_and_retry(id, &record, q, *due).await
                    }
                    Finish::DeadLetter(dl) => {
                        self.store.complete_and_dead_letter(id, &record, dl).await
                    }
                }
            })
            .await;
        if stored && keyed {
            // The next event of this key may run now.
            self.queue_wakeup.notify_one();
        }
    }
}

/// How a rule-fired attempt is recorded.
enum Finish {
    Complete,
    /// The next attempt and when it is due.
    Retry(QueuedInvocation, i64),
    DeadLetter(Box<DeadLetter>),
}

/// A one-line reason from a failed activation.
fn failure_reason(record: &Activation) -> String {
    let status = record.response.status().as_str();
    match record.response.result.get("error") {
        Some(Value::String(s)) => format!("{status}: {s}"),
        Some(other) => format!("{status}: {other}"),
        None => status.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ev(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn filters_see_event_fields_at_top_level() {
        let p = compile_filter(r#"payload.temp > 50 && topic.startsWith("sensors/")"#).unwrap();
        let hot = ev(json!({"topic": "sensors/a", "payload": {"temp": 72.5}}));
        let cold = ev(json!({"topic": "sensors/a", "payload": {"temp": 20}}));
        let other = ev(json!({"topic": "x/a", "payload": {"temp": 90}}));
        assert_eq!(evaluate(&p, &hot), Ok(true));
        assert_eq!(evaluate(&p, &cold), Ok(false));
        assert_eq!(evaluate(&p, &other), Ok(false));
        let p = compile_filter(r#"has(event.device) && event.device == "d1""#).unwrap();
        assert_eq!(evaluate(&p, &ev(json!({"device": "d1"}))), Ok(true));
        assert_eq!(evaluate(&p, &ev(json!({"other": 1}))), Ok(false));
    }

    #[test]
    fn evaluation_errors_are_reported() {
        let p = compile_filter("payload.temp > 50").unwrap();
        assert!(evaluate(&p, &ev(json!({"topic": "t"}))).is_err());
        assert!(evaluate(&p, &ev(json!({"payload": {"temp": "hot"}}))).is_err());
        let p = compile_filter("1 + 1").unwrap();
        assert!(evaluate(&p, &ev(json!({}))).unwrap_err().contains("bool"));
    }

    #[test]
    fn invalid_filters_are_rejected_with_the_parser_message() {
        let e = compile_filter("payload.temp > ").unwrap_err();
        assert!(e.contains("ERROR"), "{e}");
        assert!(compile_filter("").is_err());
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let p = RetryPolicy {
            initial_delay_ms: 100,
            max_delay_ms: 1000,
            ..Default::default()
        };
        for _ in 0..50 {
            let d1 = p.delay_ms(1);
            let d3 = p.delay_ms(3);
            let d9 = p.delay_ms(9);
            assert!((50..=100).contains(&d1), "{d1}");
            assert!((200..=400).contains(&d3), "{d3}");
            assert!((500..=1000).contains(&d9), "{d9}");
        }
    }

    #[test]
    fn retry_policies_are_checked() {
        let mut a = KeyValues::new();
        a.set(RETRY, json!({"maxAttempts": 0}));
        assert!(validate_rule_annotations(&a).is_err());
        a.set(RETRY, json!({"maxAttempts": 5, "bogus": 1}));
        assert!(validate_rule_annotations(&a).is_err());
        a.set(RETRY, json!({"maxAttempts": 5, "initialDelayMs": 10}));
        assert!(validate_rule_annotations(&a).is_ok());
        a.set(ORDERING_KEY, json!("payload..x"));
        assert!(validate_rule_annotations(&a).is_err());
        a.set(ORDERING_KEY, json!("payload.device"));
        assert!(validate_rule_annotations(&a).is_ok());
    }
}
