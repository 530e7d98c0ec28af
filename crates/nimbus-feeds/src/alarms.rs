//! `/whisk.system/alarms/{alarm,interval,once}`: time-based feeds.
//!
//! # Restart semantics (neither lost nor doubled)
//! Each registration's state holds `lastFired` (the last scheduled slot that fired, epoch ms).
//! Firing slot `s` is three durable steps: store `pending = s` (with the wall-clock time it was
//! set), fire (which returns once the rule activations are in the fsynced queue), store
//! `lastFired = s`. After a restart a leftover `pending` slot is resolved by looking for the
//! trigger activation that carries the slot's CloudEvents `id`: found, it counts as fired; not
//! found, it is fired now. The check is exact because a fire commits its rule activations and
//! its trigger record in one transaction (`DeliveryQueue::enqueue_fire`): a crash at any point
//! leaves both or neither. Slots that fell entirely inside a downtime are coalesced: the most
//! recent one fires once at start-up (its `time` is the slot's time), older ones are skipped
//! and logged — the behaviour of a cron daemon that catches up once, not a replay.

use crate::error::{FeedResult, invalid};
use crate::event::{CloudEvent, rfc3339};
use crate::fire::{Fired, Firer};
use crate::{Provider, SYSTEM_NAMESPACE};
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use nimbus_model::EntityKind;
use nimbus_store::ActivationQuery;
use serde_json::{Map, Value, json};
use std::time::Duration;

#[derive(Debug, Clone)]
enum Schedule {
    Cron(Box<Cron>, Tz),
    Interval {
        minutes: i64,
        anchor: Option<DateTime<Utc>>,
    },
    Once(DateTime<Utc>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeleteAfterFire {
    No,
    Trigger,
    TriggerAndRules,
}

#[derive(Debug, Clone)]
struct Spec {
    schedule: Schedule,
    start: Option<DateTime<Utc>>,
    stop: Option<DateTime<Utc>>,
    payload: Map<String, Value>,
    delete_after_fire: DeleteAfterFire,
}

fn date_param(params: &Map<String, Value>, key: &str) -> FeedResult<Option<DateTime<Utc>>> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            .map(Some)
            .ok_or_else(|| invalid(format!("'{key}' is not a valid epoch-milliseconds time."))),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map(|d| Some(d.with_timezone(&Utc)))
            .or_else(|_| {
                s.parse::<i64>()
                    .ok()
                    .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
                    .map(Some)
                    .ok_or(())
            })
            .map_err(|_| {
                invalid(format!(
                    "'{key}' must be an RFC 3339 date (e.g. 2030-01-01T00:00:00Z) or epoch milliseconds, not '{s}'."
                ))
            }),
        Some(_) => Err(invalid(format!("'{key}' must be a date string or epoch milliseconds."))),
    }
}

fn parse_cron(pattern: &str) -> FeedResult<Cron> {
    let fields = pattern.split_whitespace().count();
    if !(5..=6).contains(&fields) && !pattern.trim_start().starts_with('@') {
        return Err(invalid(format!(
            "'cron' must have 5 fields (minute hour day month weekday) or 6 with leading seconds; '{pattern}' has {fields}."
        )));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(pattern)
        .map_err(|e| {
            invalid(format!(
                "'cron' is not a valid cron expression ('{pattern}'): {e}"
            ))
        })
}

fn parse(p: Provider, params: &Map<String, Value>) -> FeedResult<Spec> {
    let start = date_param(params, "startDate")?;
    let stop = date_param(params, "stopDate")?;
    if let (Some(a), Some(b)) = (start, stop)
        && b <= a
    {
        return Err(invalid("'stopDate' must be after 'startDate'."));
    }
    let schedule = match p {
        Provider::Alarm => {
            let pattern = params.get("cron").and_then(Value::as_str).ok_or_else(|| {
                invalid("The alarm feed needs a 'cron' parameter, e.g. '*/5 * * * * *'.")
            })?;
            let tz = match params.get("timezone").and_then(Value::as_str) {
                None => Tz::UTC,
                Some(name) => name.parse::<Tz>().map_err(|_| {
                    invalid(format!(
                        "'timezone' must be an IANA time zone such as Europe/Paris, not '{name}'."
                    ))
                })?,
            };
            Schedule::Cron(Box::new(parse_cron(pattern)?), tz)
        }
        Provider::Interval => {
            let minutes = match params.get("minutes") {
                Some(Value::Number(n)) => n.as_i64(),
                Some(Value::String(s)) => s.trim().parse().ok(),
                _ => None,
            }
            .filter(|m| *m >= 1)
            .ok_or_else(|| {
                invalid("The interval feed needs 'minutes', a whole number of minutes ≥ 1.")
            })?;
            Schedule::Interval {
                minutes,
                anchor: start,
            }
        }
        Provider::Once => {
            let date = date_param(params, "date")?.ok_or_else(|| {
                invalid("The once feed needs a 'date' (RFC 3339 or epoch milliseconds).")
            })?;
            Schedule::Once(date)
        }
        _ => return Err(invalid("not an alarm feed")),
    };
    let payload = match params.get("trigger_payload") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(o)) => o,
            _ => Map::from_iter([("payload".to_string(), Value::String(s.clone()))]),
        },
        Some(_) => return Err(invalid("'trigger_payload' must be a JSON object.")),
    };
    let delete_after_fire = match params.get("deleteAfterFire") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => DeleteAfterFire::No,
        Some(Value::Bool(true)) => DeleteAfterFire::Trigger,
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "false" => DeleteAfterFire::No,
            "true" => DeleteAfterFire::Trigger,
            "rules" => DeleteAfterFire::TriggerAndRules,
            _ => {
                return Err(invalid(
                    "'deleteAfterFire' must be false, true or \"rules\".",
                ));
            }
        },
        Some(_) => {
            return Err(invalid(
                "'deleteAfterFire' must be false, true or \"rules\".",
            ));
        }
    };
    Ok(Spec {
        schedule,
        start,
        stop,
        payload,
        delete_after_fire,
    })
}

pub(crate) fn configure(p: Provider, params: Map<String, Value>) -> FeedResult<Value> {
    let spec = parse(p, &params)?;
    if let Schedule::Once(d) = spec.schedule
        && d <= Utc::now()
    {
        return Err(invalid(format!("'date' {} is in the past.", rfc3339(d))));
    }
    Ok(Value::Object(params))
}

impl Spec {
    /// The first slot strictly after `t`, within start/stop; `None` when the schedule is over.
    fn next_after(&self, t: DateTime<Utc>, created: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let from = match self.start {
            Some(s) if s > t => s - chrono::Duration::milliseconds(1),
            _ => t,
        };
        let slot = match &self.schedule {
            Schedule::Cron(c, tz) => c
                .find_next_occurrence(&from.with_timezone(tz), false)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
            Schedule::Interval { minutes, anchor } => {
                let anchor = anchor.unwrap_or(created);
                let step = minutes * 60_000;
                let a = anchor.timestamp_millis();
                let f = from.timestamp_millis();
                let next = if f < a {
                    a
                } else {
                    a + ((f - a) / step + 1) * step
                };
                Utc.timestamp_millis_opt(next).single()
            }
            Schedule::Once(d) => (*d > t).then_some(*d),
        }?;
        match self.stop {
            Some(stop) if slot > stop => None,
            _ => Some(slot),
        }
    }
}

fn ms(d: DateTime<Utc>) -> i64 {
    d.timestamp_millis()
}

fn from_ms(v: Option<&Value>) -> Option<DateTime<Utc>> {
    v.and_then(Value::as_i64)
        .and_then(|m| Utc.timestamp_millis_opt(m).single())
}

struct Alarm {
    kind: Provider,
    spec: Spec,
    firer: Firer,
    created: DateTime<Utc>,
    last: Option<DateTime<Utc>>,
    fires: u64,
}

impl Alarm {
    fn event_id(&self, slot: DateTime<Utc>) -> String {
        let r = self.firer.registration();
        format!("{}/{}@{}", r.namespace, r.trigger, rfc3339(slot))
    }

    fn event(&self, slot: DateTime<Utc>) -> Map<String, Value> {
        CloudEvent::new(
            self.event_id(slot),
            format!("/{SYSTEM_NAMESPACE}/{}", self.kind.path()),
            format!("nimbus.{}", self.kind.path().replace('/', ".")),
        )
        .at(slot)
        .stamp(self.spec.payload.clone())
    }

    async fn save_state(&self, pending: Option<(DateTime<Utc>, i64)>) -> bool {
        let r = self.firer.registration();
        let state = json!({
            "lastFired": self.last.map(ms),
            "pending": pending.map(|(s, _)| ms(s)),
            "pendingSince": pending.map(|(_, at)| at),
            "fires": self.fires,
        });
        let mut delay = Duration::from_millis(100);
        loop {
            match self
                .firer
                .inner()
                .store
                .set_feed_state(&r.namespace, &r.trigger, &state)
                .await
            {
                Ok(exists) => return exists,
                Err(e) => {
                    tracing::error!(trigger = %r.trigger, error = %e, "cannot store alarm progress; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Fires `slot`; `false` when the feed must stop (trigger or registration gone).
    async fn fire_slot(&mut self, slot: DateTime<Utc>) -> bool {
        if !self
            .save_state(Some((slot, nimbus_model::now_millis())))
            .await
        {
            return false;
        }
        match self.firer.fire(self.event(slot)).await {
            Fired::Gone => return false,
            Fired::Accepted(_) | Fired::DeadLettered => {}
        }
        self.last = Some(slot);
        self.fires += 1;
        self.save_state(None).await;
        tracing::debug!(trigger = %self.firer.registration().trigger, slot = %rfc3339(slot), "alarm fired");
        true
    }

    /// Whether a trigger activation carrying the slot's event id was recorded since `since`.
    async fn was_fired(&self, slot: DateTime<Utc>, since: i64) -> bool {
        let r = self.firer.registration();
        let id = self.event_id(slot);
        let q = ActivationQuery {
            name: Some(r.trigger.clone()),
            since: Some(since),
            ..Default::default()
        };
        match self
            .firer
            .inner()
            .controller
            .store()
            .list_activations(&r.namespace, &q)
            .await
        {
            Ok(list) => list
                .iter()
                .any(|a| a.response.result.get("id").and_then(Value::as_str) == Some(id.as_str())),
            Err(e) => {
                tracing::warn!(error = %e, "cannot check whether an interrupted alarm fired; assuming it did not");
                false
            }
        }
    }

    async fn finish(&self) {
        let r = self.firer.registration();
        if self.kind == Provider::Once && self.spec.delete_after_fire != DeleteAfterFire::No {
            self.delete_trigger().await;
        }
        tracing::info!(trigger = %r.trigger, fires = self.fires, "alarm schedule complete; feed removed");
        self.firer.inner().retire(r).await;
    }

    async fn delete_trigger(&self) {
        let r = self.firer.registration();
        let Ok(Some(who)) = self.firer.identity().await else {
            return;
        };
        let ctl = &self.firer.inner().controller;
        if self.spec.delete_after_fire == DeleteAfterFire::TriggerAndRules
            && let Ok(t) = ctl
                .get_entity(&who, &r.namespace, EntityKind::Trigger, &r.trigger, false)
                .await
            && let Some(rules) = t.get("rules").and_then(Value::as_object)
        {
            for name in rules.keys() {
                let rule = name.rsplit('/').next().unwrap_or(name);
                let _ = ctl
                    .set_rule_status(&who, &r.namespace, rule, "inactive")
                    .await;
                if let Err(e) = ctl
                    .delete_entity(&who, &r.namespace, EntityKind::Rule, rule, false)
                    .await
                {
                    tracing::warn!(rule = %name, error = %e, "deleteAfterFire: could not delete a rule");
                }
            }
        }
        if let Err(e) = ctl
            .delete_entity(&who, &r.namespace, EntityKind::Trigger, &r.trigger, false)
            .await
        {
            tracing::warn!(trigger = %r.trigger, error = %e, "deleteAfterFire: could not delete the trigger");
        }
    }

    async fn run(mut self) {
        let r = self.firer.registration().clone();
        // 1. An interrupted fire from before a restart.
        if let (Some(p), Some(since)) = (
            from_ms(r.state.get("pending")),
            r.state.get("pendingSince").and_then(Value::as_i64),
        ) {
            if self.was_fired(p, since).await {
                self.last = Some(p);
                self.fires += 1;
                self.save_state(None).await;
            } else {
                tracing::info!(trigger = %r.trigger, slot = %rfc3339(p), "firing an alarm slot interrupted by a restart");
                if !self.fire_slot(p).await {
                    return self.firer.inner().retire(&r).await;
                }
            }
        }
        // 2. Slots missed while the server was down: the latest fires once.
        let base = self.last.unwrap_or(self.created);
        let now = Utc::now();
        let mut missed = Vec::new();
        let mut t = base;
        while let Some(s) = self.spec.next_after(t, self.created) {
            if s > now || missed.len() > 100_000 {
                break;
            }
            missed.push(s);
            t = s;
        }
        if let Some(&latest) = missed.last() {
            if missed.len() > 1 {
                tracing::warn!(trigger = %r.trigger, skipped = missed.len() - 1, "alarm slots missed while down were skipped; firing the latest once");
            }
            if !self.fire_slot(latest).await {
                return self.firer.inner().retire(&r).await;
            }
        }
        // 3. The schedule.
        loop {
            let after = self.last.unwrap_or(self.created);
            let Some(slot) = self.spec.next_after(after, self.created) else {
                return self.finish().await;
            };
            // Sleep in short steps against the wall clock (robust to clock changes and suspends).
            loop {
                let left = slot - Utc::now();
                let Ok(left) = left.to_std() else { break };
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(left.min(Duration::from_secs(30))).await;
            }
            if !self.fire_slot(slot).await {
                return self.firer.inner().retire(&r).await;
            }
        }
    }
}

pub(crate) async fn run(kind: Provider, firer: Firer) {
    let r = firer.registration().clone();
    let spec = match r.config.as_object().map(|p| parse(kind, p)) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            tracing::error!(trigger = %r.trigger, error = %e, "stored alarm configuration is invalid; feed not started");
            return;
        }
        None => return,
    };
    let created = Utc
        .timestamp_millis_opt(r.created)
        .single()
        .unwrap_or_else(Utc::now);
    let last = from_ms(r.state.get("lastFired"));
    let fires = r.state.get("fires").and_then(Value::as_u64).unwrap_or(0);
    Alarm {
        kind,
        spec,
        firer,
        created,
        last,
        fires,
    }
    .run()
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn p(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn cron_with_and_without_seconds_and_timezone() {
        let s = parse(Provider::Alarm, &p(json!({"cron": "*/5 * * * * *"}))).unwrap();
        let t = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 1).unwrap();
        assert_eq!(
            s.next_after(t, t),
            Some(Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 5).unwrap())
        );
        let s = parse(
            Provider::Alarm,
            &p(json!({"cron": "0 9 * * *", "timezone": "Europe/Paris"})),
        )
        .unwrap();
        // 09:00 in Paris in January is 08:00 UTC.
        assert_eq!(
            s.next_after(t, t),
            Some(Utc.with_ymd_and_hms(2030, 1, 1, 8, 0, 0).unwrap())
        );
        assert!(parse(Provider::Alarm, &p(json!({"cron": "* * *"}))).is_err());
        assert!(parse(Provider::Alarm, &p(json!({"cron": "61 * * * *"}))).is_err());
        assert!(
            parse(
                Provider::Alarm,
                &p(json!({"cron": "* * * * *", "timezone": "Mars/Base"}))
            )
            .is_err()
        );
    }

    #[test]
    fn start_and_stop_bound_the_schedule() {
        let s = parse(
            Provider::Alarm,
            &p(json!({"cron": "0 * * * *", "startDate": "2030-01-01T05:30:00Z", "stopDate": "2030-01-01T07:00:00Z"})),
        )
        .unwrap();
        let t = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
        let a = s.next_after(t, t).unwrap();
        assert_eq!(a, Utc.with_ymd_and_hms(2030, 1, 1, 6, 0, 0).unwrap());
        let b = s.next_after(a, t).unwrap();
        assert_eq!(b, Utc.with_ymd_and_hms(2030, 1, 1, 7, 0, 0).unwrap());
        assert_eq!(s.next_after(b, t), None);
    }

    #[test]
    fn interval_and_once() {
        let created = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
        let s = parse(Provider::Interval, &p(json!({"minutes": 2}))).unwrap();
        assert_eq!(
            s.next_after(created, created),
            Some(created + chrono::Duration::minutes(2))
        );
        let later = created + chrono::Duration::seconds(250);
        assert_eq!(
            s.next_after(later, created),
            Some(created + chrono::Duration::minutes(6))
        );
        assert!(parse(Provider::Interval, &p(json!({"minutes": 0}))).is_err());
        let s = parse(
            Provider::Once,
            &p(json!({"date": "2030-01-01T00:00:10Z", "deleteAfterFire": "rules"})),
        )
        .unwrap();
        assert_eq!(s.delete_after_fire, DeleteAfterFire::TriggerAndRules);
        assert_eq!(
            s.next_after(created, created),
            Some(created + chrono::Duration::seconds(10))
        );
        assert_eq!(
            s.next_after(created + chrono::Duration::seconds(10), created),
            None
        );
        assert!(configure(Provider::Once, p(json!({"date": "2001-01-01T00:00:00Z"}))).is_err());
    }
}
