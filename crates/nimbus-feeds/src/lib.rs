//! Built-in feed providers, behind the OpenWhisk feed protocol.
//!
//! OpenWhisk clients (`wsk trigger create --feed`, the `openwhisk` npm client's `feeds.create`)
//! create a trigger, then invoke the feed action with `lifecycleEvent` (`CREATE`, `READ`,
//! `UPDATE`, `DELETE`, `PAUSE`, `UNPAUSE`), `triggerName` (`/ns/name`), `authKey` and the feed's
//! own parameters. [`Feeds`] serves those invocations for the actions
//! `/whisk.system/alarms/{alarm,interval,once}`, `/whisk.system/mqtt/subscribe`,
//! `/whisk.system/nats/subscribe`, `/whisk.system/webhook` and `/whisk.system/postgres/changes`
//! (as a [`NativeActions`] implementation), persists each registration through
//! [`FeedStore`] and runs one task per active registration; [`Feeds::resume`] restarts them after
//! a restart. Events are fired through the controller as the trigger's owner; a fire returns once
//! the rule activations are in the fsynced invocation queue, and only then are message-broker
//! deliveries acknowledged. Every connection to a broker or database goes through the server's
//! egress policy (checked at CREATE and at every connect, dialling the checked address). See
//! `docs/events.md`.

mod alarms;
mod error;
pub mod event;
mod fire;
mod mqtt;
mod nats;
mod postgres;
mod tls;
pub mod webhook;

use async_trait::async_trait;
use nimbus_controller::{Controller, Identity, NativeActions, NativeOutcome};
use nimbus_egress::EgressPolicy;
use nimbus_model::{FullyQualifiedName, now_millis};
use nimbus_store::{FeedRegistration, FeedStore};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::task::JoinHandle;

pub use error::{FeedError, FeedResult};
pub use event::CloudEvent;
pub use fire::{DeadLetterSink, Fired, Firer};
pub use webhook::{HookOutcome, HookRequest};

/// The namespace that owns the built-in providers.
pub const SYSTEM_NAMESPACE: &str = "whisk.system";

/// Parameters of the feed protocol itself; never part of a provider's configuration.
const PROTOCOL_PARAMS: &[&str] = &["lifecycleEvent", "triggerName", "authKey"];

/// The built-in providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Alarm,
    Interval,
    Once,
    Mqtt,
    Nats,
    Webhook,
    Postgres,
}

impl Provider {
    pub const ALL: [Provider; 7] = [
        Provider::Alarm,
        Provider::Interval,
        Provider::Once,
        Provider::Mqtt,
        Provider::Nats,
        Provider::Webhook,
        Provider::Postgres,
    ];

    /// The action path under `/whisk.system`.
    pub fn path(self) -> &'static str {
        match self {
            Provider::Alarm => "alarms/alarm",
            Provider::Interval => "alarms/interval",
            Provider::Once => "alarms/once",
            Provider::Mqtt => "mqtt/subscribe",
            Provider::Nats => "nats/subscribe",
            Provider::Webhook => "webhook",
            Provider::Postgres => "postgres/changes",
        }
    }

    pub fn from_path(p: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|x| x.path() == p)
    }

    pub fn from_action(a: &FullyQualifiedName) -> Option<Provider> {
        if a.namespace != SYSTEM_NAMESPACE {
            return None;
        }
        Provider::from_path(&a.path.key())
    }

    /// Checks parameters and returns the configuration to store (with generated values filled in).
    fn configure(self, params: Map<String, Value>, existing: Option<&Value>) -> FeedResult<Value> {
        match self {
            Provider::Alarm | Provider::Interval | Provider::Once => {
                alarms::configure(self, params)
            }
            Provider::Mqtt => mqtt::configure(params),
            Provider::Nats => nats::configure(params),
            Provider::Webhook => webhook::configure(params, existing),
            Provider::Postgres => postgres::configure(params),
        }
    }

    /// The destinations a configuration connects to, checked against the egress policy now
    /// so that a refused one fails the CREATE with the policy's message. A name that does not
    /// resolve (yet) is accepted: the feed retries, and checks again at every connect.
    async fn check_destinations(self, egress: &EgressPolicy, config: &Value) -> FeedResult<()> {
        let Some(p) = config.as_object() else {
            return Ok(());
        };
        let targets = match self {
            Provider::Mqtt => vec![mqtt::destination(p)?],
            Provider::Nats => vec![nats::destination(p)?],
            Provider::Postgres => postgres::destinations(p)?,
            _ => Vec::new(),
        };
        for (host, port) in targets {
            match egress.resolve(&host, port).await {
                Ok(_) => {}
                Err(e) if e.is_refusal() => return Err(FeedError::EgressRefused(e.to_string())),
                Err(e) => {
                    tracing::info!(host = %host, port, error = %e, detail = e.detail(), "feed destination does not resolve yet; accepted")
                }
            }
        }
        Ok(())
    }

    /// Side effects outside Nimbus when a registration is created (e.g. the database trigger).
    async fn install(self, egress: &EgressPolicy, reg: &FeedRegistration) -> FeedResult<()> {
        match self {
            Provider::Postgres => postgres::install(egress, reg).await,
            _ => Ok(()),
        }
    }

    async fn uninstall(self, egress: &EgressPolicy, reg: &FeedRegistration) {
        if self == Provider::Postgres
            && let Err(e) = postgres::uninstall(egress, reg).await
        {
            tracing::warn!(trigger = %reg.trigger, error = %e, "could not remove the database trigger");
        }
    }

    fn spawn(self, inner: Arc<Inner>, reg: FeedRegistration) -> Option<JoinHandle<()>> {
        let firer = Firer::new(inner, reg);
        Some(match self {
            Provider::Alarm | Provider::Interval | Provider::Once => {
                tokio::spawn(alarms::run(self, firer))
            }
            Provider::Mqtt => tokio::spawn(mqtt::run(firer)),
            Provider::Nats => tokio::spawn(nats::run(firer)),
            Provider::Postgres => tokio::spawn(postgres::run(firer)),
            // Webhooks have no task: requests arrive through the API.
            Provider::Webhook => return None,
        })
    }
}

type Key = (String, String);

pub(crate) struct Inner {
    pub(crate) controller: Arc<Controller>,
    /// Where feeds may connect (brokers, databases); see `nimbus-egress`.
    pub(crate) egress: EgressPolicy,
    pub(crate) store: Arc<dyn FeedStore>,
    pub(crate) dead: Arc<dyn DeadLetterSink>,
    running: Mutex<HashMap<Key, JoinHandle<()>>>,
    /// Webhook id → registration key (active webhooks only).
    hooks: Mutex<HashMap<String, Key>>,
}

impl Inner {
    fn stop(&self, key: &Key) {
        if let Some(h) = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key)
        {
            h.abort();
        }
        self.hooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, k| k != key);
    }

    fn start(self: &Arc<Self>, reg: &FeedRegistration) {
        let key = (reg.namespace.clone(), reg.trigger.clone());
        self.stop(&key);
        let Some(provider) = Provider::from_path(&reg.provider) else {
            tracing::warn!(provider = %reg.provider, "unknown feed provider in the store; skipped");
            return;
        };
        if provider == Provider::Webhook {
            if let Some(id) = reg.config.get("id").and_then(Value::as_str) {
                self.hooks
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(id.to_string(), key);
            }
            return;
        }
        if let Some(h) = provider.spawn(self.clone(), reg.clone()) {
            self.running
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key, h);
        }
    }

    /// A provider task ends its own registration (e.g. a fired `once` alarm, a deleted trigger).
    pub(crate) async fn retire(&self, reg: &FeedRegistration) {
        if let Err(e) = self.store.delete_feed(&reg.namespace, &reg.trigger).await {
            tracing::error!(trigger = %reg.trigger, error = %e, "could not remove a finished feed registration");
        }
        // Dropping our own handle (not aborting: we may be that task).
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(reg.namespace.clone(), reg.trigger.clone()));
    }
}

/// The built-in feed providers of one server.
#[derive(Clone)]
pub struct Feeds {
    inner: Arc<Inner>,
}

impl Feeds {
    pub fn new(
        controller: Arc<Controller>,
        store: Arc<dyn FeedStore>,
        dead: Arc<dyn DeadLetterSink>,
        egress: EgressPolicy,
    ) -> Feeds {
        Feeds {
            inner: Arc::new(Inner {
                controller,
                egress,
                store,
                dead,
                running: Mutex::new(HashMap::new()),
                hooks: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Restarts every active registration from the store (at start-up). Returns how many.
    pub async fn resume(&self) -> FeedResult<usize> {
        let regs = self.inner.store.list_feeds().await?;
        let mut n = 0;
        for reg in regs.iter().filter(|r| !r.paused) {
            self.inner.start(reg);
            n += 1;
        }
        Ok(n)
    }

    /// Stops every provider task (shutdown). Registrations stay stored.
    pub fn stop_all(&self) {
        let handles: Vec<_> = self
            .inner
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect();
        for (_, h) in handles {
            h.abort();
        }
    }

    /// Handles one webhook request (see [`webhook`]).
    pub async fn webhook(&self, id: &str, req: HookRequest) -> HookOutcome {
        let key = self
            .inner
            .hooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned();
        let Some((ns, trigger)) = key else {
            return HookOutcome::NotFound;
        };
        let reg = match self.inner.store.get_feed(&ns, &trigger).await {
            Ok(Some(r)) if !r.paused => r,
            Ok(_) => return HookOutcome::NotFound,
            Err(e) => return HookOutcome::Unavailable(e.to_string()),
        };
        webhook::handle(Firer::new(self.inner.clone(), reg), req).await
    }

    async fn lifecycle(
        &self,
        who: &Identity,
        provider: Provider,
        mut params: Map<String, Value>,
    ) -> FeedResult<Value> {
        let event = params
            .get("lifecycleEvent")
            .and_then(Value::as_str)
            .map(str::to_ascii_uppercase)
            .ok_or_else(|| {
                error::invalid("The feed action needs a 'lifecycleEvent' parameter (CREATE, READ, UPDATE, DELETE, PAUSE or UNPAUSE).")
            })?;
        let trigger_name = params
            .get("triggerName")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                error::invalid(
                    "The feed action needs a 'triggerName' parameter (/namespace/trigger).",
                )
            })?;
        let fqn = FullyQualifiedName::parse(trigger_name, &who.namespace)
            .map_err(|e| error::invalid(e.to_string()))?;
        if fqn.path.package.is_some() {
            return Err(error::invalid(format!(
                "'{trigger_name}' is not a trigger name: triggers have no package."
            )));
        }
        if fqn.namespace != who.namespace {
            return Err(FeedError::Forbidden(format!(
                "The trigger {fqn} is not in your namespace '{}'.",
                who.namespace
            )));
        }
        let (ns, trigger) = (fqn.namespace.clone(), fqn.path.name.clone());
        for p in PROTOCOL_PARAMS {
            params.remove(*p);
        }
        let key = (ns.clone(), trigger.clone());
        let existing = self.inner.store.get_feed(&ns, &trigger).await?;
        let not_registered = || {
            FeedError::NotFound(format!(
                "The trigger {fqn} has no {} feed.",
                provider.path()
            ))
        };
        let mine = |r: &FeedRegistration| r.provider == provider.path();
        match event.as_str() {
            "CREATE" | "UPDATE" => {
                // The trigger must exist and belong to the caller.
                self.inner
                    .controller
                    .get_entity(who, &ns, nimbus_model::EntityKind::Trigger, &trigger, false)
                    .await
                    .map_err(|e| match e {
                        nimbus_controller::ControllerError::NotFound(_) => FeedError::NotFound(
                            format!("The trigger {fqn} does not exist; create it before its feed."),
                        ),
                        other => FeedError::Forbidden(other.to_string()),
                    })?;
                let (merged, prev) = if event == "UPDATE" {
                    let prev = existing.filter(mine).ok_or_else(not_registered)?;
                    let mut m = prev.config.as_object().cloned().unwrap_or_default();
                    m.extend(params);
                    (m, Some(prev))
                } else {
                    (params, existing)
                };
                let config = provider.configure(merged, prev.as_ref().map(|p| &p.config))?;
                provider
                    .check_destinations(&self.inner.egress, &config)
                    .await?;
                let now = now_millis();
                let reg = FeedRegistration {
                    namespace: ns.clone(),
                    trigger: trigger.clone(),
                    provider: provider.path().to_string(),
                    uuid: who.uuid.clone(),
                    config,
                    paused: prev.as_ref().is_some_and(|p| p.paused && event == "UPDATE"),
                    state: json!({}),
                    created: prev.as_ref().map_or(now, |p| p.created),
                    updated: now,
                };
                if let Some(p) = &prev {
                    self.inner.stop(&key);
                    if let Some(old) = Provider::from_path(&p.provider) {
                        old.uninstall(&self.inner.egress, p).await;
                    }
                }
                provider.install(&self.inner.egress, &reg).await?;
                self.inner.store.put_feed(&reg).await?;
                if !reg.paused {
                    self.inner.start(&reg);
                }
                tracing::info!(trigger = %fqn, provider = provider.path(), lifecycle = %event, "feed registered");
                Ok(self.describe(&reg, provider))
            }
            "READ" => {
                let reg = existing.filter(mine).ok_or_else(not_registered)?;
                Ok(self.describe(&reg, provider))
            }
            "DELETE" => {
                let reg = existing.filter(mine).ok_or_else(not_registered)?;
                self.inner.stop(&key);
                provider.uninstall(&self.inner.egress, &reg).await;
                self.inner.store.delete_feed(&ns, &trigger).await?;
                tracing::info!(trigger = %fqn, provider = provider.path(), "feed deleted");
                Ok(json!({"deleted": true, "triggerName": fqn.to_string()}))
            }
            "PAUSE" | "UNPAUSE" => {
                let mut reg = existing.filter(mine).ok_or_else(not_registered)?;
                let paused = event == "PAUSE";
                self.inner
                    .store
                    .set_feed_paused(&ns, &trigger, paused)
                    .await?;
                reg.paused = paused;
                if paused {
                    self.inner.stop(&key);
                } else if let Some(fresh) = self.inner.store.get_feed(&ns, &trigger).await? {
                    self.inner.start(&fresh);
                }
                tracing::info!(trigger = %fqn, provider = provider.path(), lifecycle = %event, "feed status changed");
                Ok(self.describe(&reg, provider))
            }
            other => Err(error::invalid(format!(
                "Unknown lifecycleEvent '{other}': expected CREATE, READ, UPDATE, DELETE, PAUSE or UNPAUSE."
            ))),
        }
    }

    /// What READ (and the other lifecycle events) answer: `{config, status}` (secrets of broker
    /// credentials are masked; a webhook's own secret is shown to its owner, who needs it).
    fn describe(&self, reg: &FeedRegistration, provider: Provider) -> Value {
        let mut config = reg.config.clone();
        if let Some(o) = config.as_object_mut() {
            for k in ["password", "token", "clientKey", "url"] {
                if k == "url" && provider != Provider::Postgres {
                    continue;
                }
                if let Some(v) = o.get_mut(k) {
                    *v = mask(k, v);
                }
            }
        }
        let mut status = json!({
            "active": !reg.paused,
            "dateChanged": reg.updated,
            "provider": format!("/{SYSTEM_NAMESPACE}/{}", provider.path()),
        });
        if let (Some(s), Some(st)) = (status.as_object_mut(), reg.state.as_object()) {
            for (k, v) in st {
                s.insert(k.clone(), v.clone());
            }
        }
        let mut out = json!({"config": config, "status": status, "triggerName": format!("/{}/{}", reg.namespace, reg.trigger)});
        if provider == Provider::Webhook
            && let (Some(o), Some(id)) = (out.as_object_mut(), reg.config.get("id"))
        {
            o.insert(
                "path".into(),
                json!(format!(
                    "{}{}",
                    webhook::ROUTE_PREFIX,
                    id.as_str().unwrap_or_default()
                )),
            );
        }
        out
    }
}

fn mask(key: &str, v: &Value) -> Value {
    match (key, v.as_str()) {
        ("password" | "token" | "clientKey", Some(_)) => json!("********"),
        // A connection string may embed a password: hide it, keep the rest readable.
        ("url", Some(s)) => json!(postgres::redact(s)),
        _ => v.clone(),
    }
}

#[async_trait]
impl NativeActions for Feeds {
    fn handles(&self, action: &FullyQualifiedName) -> bool {
        Provider::from_action(action).is_some()
    }

    async fn invoke(
        &self,
        who: &Identity,
        action: &FullyQualifiedName,
        params: Map<String, Value>,
    ) -> NativeOutcome {
        let Some(provider) = Provider::from_action(action) else {
            return NativeOutcome::Failed(format!("{action} is not a built-in feed."));
        };
        match self.lifecycle(who, provider, params).await {
            Ok(v) => NativeOutcome::Success(v),
            Err(FeedError::EgressRefused(m)) => {
                tracing::info!(action = %action, reason = %m, "feed destination refused by the egress policy");
                NativeOutcome::Refused(m)
            }
            Err(e) => {
                tracing::info!(action = %action, error = %e, "feed lifecycle call rejected");
                NativeOutcome::Failed(e.to_string())
            }
        }
    }
}
