//! The controller: Nimbus's use cases, free of HTTP.
//!
//! It authenticates callers, applies OpenWhisk's entity rules (merge on overwrite, version bumps,
//! packages and bindings, sharing), invokes actions (blocking directly, non-blocking through the
//! store's durable queue), runs sequences, fires triggers through rules, throttles namespaces and
//! writes activation records. The API layer parses HTTP into these calls and maps
//! [`ControllerError`] back to statuses.

mod access;
mod action_cache;
mod activations;
mod auth;
mod catalog;
mod deadletters;
mod delivery;
mod entities;
mod error;
mod inflight;
mod instances;
mod invoke;
mod native;
mod observe;
mod requests;
mod throttle;
mod triggers;
mod wasm;

use nimbus_invoker::Invoker;
use nimbus_model::SystemLimits;
use nimbus_store::Store;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio::sync::Notify;

pub use access::{OPENFAAS_PUBLIC, WebTarget};
pub use activations::ActivationListQuery;
pub use auth::{
    AUTH_CACHE_TTL, BootstrapKey, DEV_KEYS, Identity, NewKey, generate_key, is_dev_uuid, keys,
};
pub use deadletters::NewDeadLetter;
pub use delivery::RetryPolicy;
pub use entities::Paging;
pub use error::{ControllerError, Result};
pub use invoke::{InvokeRequest, InvokeResponse, RECORD_NOT_STORED};
pub use native::{NativeActions, NativeOutcome};
pub use nimbus_store::DeadLetter;
pub use observe::{current_request_id, function_of, with_request_id};
pub use requests::{ActionPut, CommonPut, PackagePut, RulePut, TriggerPut};

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub limits: SystemLimits,
    /// The URL functions use to call back into the API (`__OW_API_HOST`).
    pub api_host: String,
    /// Longest a blocking invocation waits before answering 202 (OpenWhisk: 60 s).
    pub max_blocking_wait: Duration,
    /// Largest invoke/fire payload in bytes (OpenWhisk: 1 MB).
    pub max_payload_bytes: usize,
    /// Largest activation result in bytes (OpenWhisk: 1 MB).
    pub max_result_bytes: usize,
    /// Queued (async) activations run at once by this node.
    pub dispatch_concurrency: usize,
    /// On shutdown, how long in-flight activations may take before they are recorded as interrupted.
    pub shutdown_grace: Duration,
    /// Root of per-function read-only mounts (OpenFaaS secrets): `<root>/<ns>/<action>` is bound
    /// at `/var/openfaas/secrets` when it exists. `None`: no mounts.
    pub function_mounts: Option<std::path::PathBuf>,
    /// `--dev`: the public OpenWhisk development keys are accepted (and created at start-up).
    pub dev: bool,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            limits: SystemLimits::default(),
            api_host: "http://127.0.0.1:3233".into(),
            max_blocking_wait: Duration::from_secs(60),
            max_payload_bytes: 1024 * 1024,
            max_result_bytes: 1024 * 1024,
            dispatch_concurrency: 32,
            shutdown_grace: Duration::from_secs(30),
            function_mounts: None,
            dev: false,
        }
    }
}

pub struct Controller {
    store: Arc<dyn Store>,
    invoker: Arc<Invoker>,
    cfg: ControllerConfig,
    /// Verified credentials by uuid, for [`auth::AUTH_CACHE_TTL`].
    auth_cache: moka::sync::Cache<String, nimbus_store::Credential>,
    /// Namespace → the identity its web actions run as (same expiry as credentials).
    owner_cache: moka::sync::Cache<String, Identity>,
    function_keys: auth::FunctionKeys,
    /// Triggers with their active rules, for fires (see `triggers.rs`).
    fire_cache: triggers::FireCache,
    action_cache: action_cache::ActionCache,
    throttles: throttle::Throttles,
    inflight: inflight::Inflight,
    queue_wakeup: Notify,
    shutting_down: AtomicBool,
    filters: delivery::FilterCache,
    monitor: observe::Monitor,
    /// Built-in actions served by the server itself (feed providers); see [`native`].
    native: std::sync::OnceLock<Arc<dyn NativeActions>>,
}

impl Controller {
    pub fn new(
        store: Arc<dyn Store>,
        invoker: Arc<Invoker>,
        cfg: ControllerConfig,
    ) -> Arc<Controller> {
        Arc::new(Controller {
            store,
            invoker,
            throttles: throttle::Throttles::new(cfg.limits.clone()),
            cfg,
            auth_cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(auth::AUTH_CACHE_TTL)
                .build(),
            owner_cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(auth::AUTH_CACHE_TTL)
                .build(),
            function_keys: Default::default(),
            fire_cache: Default::default(),
            action_cache: Default::default(),
            inflight: Default::default(),
            queue_wakeup: Notify::new(),
            shutting_down: AtomicBool::new(false),
            filters: Default::default(),
            monitor: Default::default(),
            native: std::sync::OnceLock::new(),
        })
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.cfg
    }

    pub fn limits(&self) -> &SystemLimits {
        &self.cfg.limits
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn invoker(&self) -> &Arc<Invoker> {
        &self.invoker
    }
}
