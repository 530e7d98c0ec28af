//! Invocation: blocking (run now, wait up to the blocking limit, else 202), non-blocking (durably
//! queued before the 202), sequences, the queue dispatcher, and graceful shutdown.

use crate::access::ResolvedAction;
use crate::inflight::InflightEntry;
use crate::throttle::ConcurrencySlot;
use crate::{Controller, ControllerError, Identity, Result};
use nimbus_invoker::{Start, enforce_result_size};
use nimbus_model::exec::Exec;
use nimbus_model::{
    Activation, ActivationId, ActivationResponse, FullyQualifiedName, KeyValues, ResponseStatus,
    now_millis,
};
use nimbus_runtime::RunRequest;
use nimbus_store::QueuedInvocation;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// One invocation as the API hands it over.
#[derive(Debug, Clone)]
pub struct InvokeRequest {
    pub action: FullyQualifiedName,
    pub params: Map<String, Value>,
    pub blocking: bool,
    /// How long a blocking call waits before answering 202 (capped by the configuration).
    pub wait: Option<Duration>,
    pub cause: Option<ActivationId>,
}

#[derive(Debug, Clone)]
pub enum InvokeResponse {
    /// Non-blocking, or blocking but not finished in time: the id to poll.
    Accepted(ActivationId),
    /// Blocking and finished: the stored record.
    Done(Box<Activation>),
}

/// What the durable queue holds for one accepted non-blocking invocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct QueuedPayload {
    /// Credential of the caller (the key itself is not stored in the queue).
    pub(crate) uuid: String,
    pub(crate) namespace: String,
    pub(crate) action: String,
    pub(crate) params: Map<String, Value>,
    #[serde(default)]
    pub(crate) cause: Option<ActivationId>,
    pub(crate) accepted_at: i64,
    /// Rule-fired entries: retry policy, attempt and ordering (see `delivery.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) delivery: Option<crate::delivery::DeliveryInfo>,
    /// The API request that caused it (annotated as `requestId` on the record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) request_id: Option<String>,
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Annotation on the record a blocking invoke answers with when that record could not be
/// stored (its value: why). The APIs also answer with `x-nimbus-record: not-stored`.
pub const RECORD_NOT_STORED: &str = "recordNotStored";

/// Longest wait between two attempts to record finished accepted work.
const PERSIST_RETRY_MAX: Duration = Duration::from_secs(2);

fn annotation(key: &str, value: Value) -> nimbus_model::params::KeyValue {
    nimbus_model::params::KeyValue {
        key: key.to_string(),
        value,
    }
}

impl Controller {
    fn check_payload(&self, params: &Map<String, Value>) -> Result<()> {
        let size = serde_json::to_vec(params).map(|b| b.len()).unwrap_or(0);
        if size > self.cfg.max_payload_bytes {
            return Err(ControllerError::TooLarge(format!(
                "The request payload is {size} bytes, over the limit of {} bytes.",
                self.cfg.max_payload_bytes
            )));
        }
        Ok(())
    }

    /// Parameters a run receives: inherited, then the action's, then the caller's. With the
    /// `final` annotation the caller may not override bound parameters.
    fn merge_params(
        &self,
        r: &ResolvedAction,
        payload: &Map<String, Value>,
    ) -> Result<Map<String, Value>> {
        let bound = r.inherited.merged(&r.action.parameters);
        if r.action.annotations.is_truthy("final") && payload.keys().any(|k| bound.get(k).is_some())
        {
            return Err(ControllerError::BadRequest(
                "Request defines parameters that are not allowed (e.g., reserved properties)."
                    .into(),
            ));
        }
        let mut m = bound.to_object();
        for (k, v) in payload {
            m.insert(k.clone(), v.clone());
        }
        Ok(m)
    }

    pub async fn invoke(
        self: &Arc<Self>,
        who: &Identity,
        req: InvokeRequest,
    ) -> Result<InvokeResponse> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ControllerError::Unavailable(
                "The server is shutting down; retry shortly.".into(),
            ));
        }
        if let Some(native) = self.native_for(&req.action) {
            return self.invoke_native(native, who, req).await;
        }
        self.check_payload(&req.params)?;
        let resolved = self.resolve_action(who, &req.action).await?;
        self.invoke_resolved(who, req, resolved).await
    }

    /// Invokes a web action found by [`Controller::resolve_web_action`], as its owner, without
    /// looking it up again.
    pub async fn invoke_web(
        self: &Arc<Self>,
        target: crate::WebTarget,
        req: InvokeRequest,
    ) -> Result<InvokeResponse> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ControllerError::Unavailable(
                "The server is shutting down; retry shortly.".into(),
            ));
        }
        self.check_payload(&req.params)?;
        self.invoke_resolved(&target.owner, req, target.resolved)
            .await
    }

    async fn invoke_resolved(
        self: &Arc<Self>,
        who: &Identity,
        req: InvokeRequest,
        resolved: ResolvedAction,
    ) -> Result<InvokeResponse> {
        // Check `final` before accepting anything.
        self.merge_params(&resolved, &req.params)?;
        // New work of a namespace at its storage quota, or while the disk is below the reserve
        // kept for accepted work, is refused before it runs.
        self.store.admit(&who.namespace)?;
        let slot = self
            .throttles
            .admit_invoke(&who.namespace)
            .inspect_err(|e| {
                let reason = if e.to_string().contains("concurrent") {
                    "concurrency"
                } else {
                    "invocations"
                };
                self.throttled(&who.namespace, reason);
            })?;
        let id = ActivationId::generate();
        let accepted_at = now_millis();
        if !req.blocking {
            let payload = QueuedPayload {
                uuid: who.uuid.clone(),
                namespace: who.namespace.clone(),
                action: req.action.to_string(),
                params: req.params,
                cause: req.cause,
                accepted_at,
                delivery: None,
                request_id: crate::current_request_id(),
            };
            self.enqueue(&id, &who.namespace, &payload).await?;
            drop(slot);
            return Ok(InvokeResponse::Accepted(id));
        }
        let wait = req
            .wait
            .unwrap_or(self.cfg.max_blocking_wait)
            .min(self.cfg.max_blocking_wait);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let who = who.clone();
        let run_id = id.clone();
        let request_id = crate::current_request_id();
        tokio::spawn(crate::observe::maybe_with_request_id(
            request_id,
            async move {
                let _slot = slot;
                let _guard = this.inflight.enter(
                    &run_id,
                    InflightEntry {
                        namespace: who.namespace.clone(),
                        name: resolved.action.path.name.clone(),
                        path: resolved.path(),
                        start: accepted_at,
                        queued: false,
                    },
                );
                let record = this
                    .run_resolved(
                        &who,
                        resolved,
                        req.params,
                        run_id,
                        req.cause,
                        accepted_at,
                        true,
                    )
                    .await;
                // The caller gets the record at once; its write is queued in order (any read
                // of activations made after this answer sees it) instead of awaited: waiting
                // for the commit halved a web action's throughput (docs/benchmarks.md). A
                // store short of space declines to defer: then the write is awaited, and a
                // failure is told to the caller rather than dropped silently.
                let mut record = record;
                if !this.store.put_activation_deferred(&record)
                    && let Err(e) = this.store.put_activation(&record).await
                {
                    tracing::error!(error = %e, activation = %record.activation_id, "could not store activation record");
                    record
                        .annotations
                        .set(RECORD_NOT_STORED, json!(e.to_string()));
                }
                this.finished(&record);
                let _ = tx.send(record);
            },
        ));
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(record)) => Ok(InvokeResponse::Done(Box::new(record))),
            Ok(Err(_)) => Err(ControllerError::Internal(
                "the activation task ended without a result".into(),
            )),
            Err(_) => Ok(InvokeResponse::Accepted(id)),
        }
    }

    pub(crate) async fn enqueue(
        &self,
        id: &ActivationId,
        ns: &str,
        payload: &QueuedPayload,
    ) -> Result<()> {
        let item = QueuedInvocation {
            activation_id: id.clone(),
            namespace: ns.to_string(),
            payload: serde_json::to_value(payload)
                .map_err(|e| ControllerError::Internal(e.to_string()))?,
            enqueued_at: payload.accepted_at,
            attempts: 0,
        };
        self.store.enqueue(&item).await?;
        self.queue_wakeup.notify_one();
        Ok(())
    }

    /// Queues an invocation on behalf of `who` without throttling (rules now go through
    /// `rule_item`, which adds their delivery policy).
    #[allow(dead_code)]
    pub(crate) async fn enqueue_for(
        &self,
        who: &Identity,
        action: &FullyQualifiedName,
        params: Map<String, Value>,
        cause: Option<ActivationId>,
    ) -> Result<ActivationId> {
        let id = ActivationId::generate();
        let payload = QueuedPayload {
            uuid: who.uuid.clone(),
            namespace: who.namespace.clone(),
            action: action.to_string(),
            params,
            cause,
            accepted_at: now_millis(),
            delivery: None,
            request_id: crate::current_request_id(),
        };
        self.enqueue(&id, &who.namespace, &payload).await?;
        Ok(id)
    }

    /// Runs a resolved action (or sequence) and builds its activation record. Never fails: every
    /// problem becomes a record with the matching status.
    #[allow(clippy::too_many_arguments)]
    fn run_resolved<'a>(
        &'a self,
        who: &'a Identity,
        r: ResolvedAction,
        payload: Map<String, Value>,
        id: ActivationId,
        cause: Option<ActivationId>,
        accepted_at: i64,
        topmost: bool,
    ) -> BoxFut<'a, Activation> {
        Box::pin(async move {
            let params = match self.merge_params(&r, &payload) {
                Ok(p) => p,
                Err(e) => {
                    let now = now_millis();
                    return self.record(
                        who,
                        &r,
                        id,
                        cause,
                        now,
                        now,
                        ActivationResponse::error(ResponseStatus::ApplicationError, e.to_string()),
                        vec![],
                        vec![annotation("waitTime", json!(now - accepted_at))],
                    );
                }
            };
            match self.instance_of(&r.action, &who.namespace) {
                None => {
                    let components = match &r.action.exec {
                        Exec::Sequence { components } => components.clone(),
                        Exec::Code { .. } => Vec::new(),
                    };
                    self.run_sequence(who, &r, components, params, id, cause, accepted_at, topmost)
                        .await
                }
                Some((f, spec)) => {
                    let action_name = f.action.clone();
                    let provide_key = match r.action.annotations.get("provide-api-key") {
                        None => true,
                        Some(_) => r.action.annotations.is_truthy("provide-api-key"),
                    };
                    let timeout = Duration::from_millis(r.action.limits.timeout);
                    let deadline = now_millis() + r.action.limits.timeout as i64;
                    let run = RunRequest {
                        value: params,
                        activation_id: id.to_string(),
                        namespace: who.namespace.clone(),
                        action_name,
                        action_version: r.action.version.to_string(),
                        transaction_id: id.to_string(),
                        deadline,
                        api_key: provide_key.then(|| self.function_key(who, deadline)),
                        timeout,
                        log_limit_bytes: (r.action.limits.logs as usize) * 1024 * 1024,
                    };
                    let begin = now_millis();
                    let out = self.invoker.invoke(&f, &spec, run).await;
                    let mut response = out.response;
                    enforce_result_size(&mut response, self.cfg.max_result_bytes);
                    let mut ann = vec![annotation("waitTime", json!((begin - accepted_at).max(0)))];
                    if let Some(init) = out.init_time {
                        ann.push(annotation("initTime", json!(init)));
                    }
                    // Every activation says how it started (OpenWhisk only implies it via initTime).
                    let (start, stem) = match out.start_kind {
                        Start::Warm => ("warm", false),
                        Start::Cold { stem, .. } => ("cold", stem),
                    };
                    ann.push(annotation("start", json!(start)));
                    if stem {
                        ann.push(annotation("stemCell", json!(true)));
                    }
                    if out.timed_out {
                        ann.push(annotation("timeout", json!(true)));
                    }
                    if !topmost {
                        ann.push(annotation("causedBy", json!("sequence")));
                    }
                    self.record(
                        who,
                        &r,
                        id,
                        cause,
                        begin,
                        out.end.max(begin),
                        response,
                        out.logs,
                        ann,
                    )
                }
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        who: &Identity,
        r: &ResolvedAction,
        id: ActivationId,
        cause: Option<ActivationId>,
        start: i64,
        end: i64,
        response: ActivationResponse,
        logs: Vec<String>,
        extra: Vec<nimbus_model::params::KeyValue>,
    ) -> Activation {
        let mut annotations = KeyValues::new();
        annotations.set("path", json!(r.path()));
        annotations.set("kind", json!(r.action.exec.kind()));
        annotations.set(
            "limits",
            serde_json::to_value(r.action.limits).unwrap_or(Value::Null),
        );
        if let Some(b) = &r.binding {
            annotations.set("binding", json!(b));
        }
        for kv in extra {
            annotations.set(kv.key, kv.value);
        }
        if let Some(rid) = crate::current_request_id() {
            annotations.set("requestId", json!(rid));
        }
        Activation {
            namespace: who.namespace.clone(),
            name: r.action.path.name.clone(),
            subject: who.namespace.clone(),
            activation_id: id,
            version: r.action.version,
            publish: false,
            start,
            end,
            duration: Some(end - start),
            cause,
            logs,
            annotations,
            response,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_sequence(
        &self,
        who: &Identity,
        seq: &ResolvedAction,
        components: Vec<String>,
        params: Map<String, Value>,
        id: ActivationId,
        cause: Option<ActivationId>,
        accepted_at: i64,
        topmost: bool,
    ) -> Activation {
        let start = now_millis();
        let mut input = params;
        let mut ids = Vec::new();
        let mut last = ActivationResponse::success(Value::Object(input.clone()));
        for c in &components {
            let resolved = match FullyQualifiedName::parse(c, &who.namespace) {
                Ok(f) => self.resolve_action(who, &f).await,
                Err(e) => Err(ControllerError::from(e)),
            };
            let resolved = match resolved {
                Ok(r) => r,
                Err(e) => {
                    last = ActivationResponse::error(
                        ResponseStatus::ApplicationError,
                        format!("Sequence component '{c}' could not be run: {e}"),
                    );
                    break;
                }
            };
            // Only the first component sees the sequence's own parameters; later ones get the
            // previous result (plus their own bound parameters, added by run_resolved).
            let child_id = ActivationId::generate();
            let child = self
                .run_resolved(
                    who,
                    resolved,
                    input.clone(),
                    child_id.clone(),
                    Some(id.clone()),
                    now_millis(),
                    false,
                )
                .await;
            if let Err(e) = self.store.put_activation(&child).await {
                tracing::error!(error = %e, "could not store component activation");
            }
            self.finished(&child);
            ids.push(child_id.to_string());
            last = child.response.clone();
            if !last.success {
                break;
            }
            input = match &last.result {
                Value::Object(o) => o.clone(),
                other => {
                    let mut m = Map::new();
                    m.insert("value".into(), other.clone());
                    m
                }
            };
        }
        let end = now_millis();
        let mut ann = vec![annotation("waitTime", json!((start - accepted_at).max(0)))];
        if topmost {
            ann.push(annotation("topmost", json!(true)));
        } else {
            ann.push(annotation("causedBy", json!("sequence")));
        }
        self.record(who, seq, id, cause, start, end, last, ids, ann)
    }

    // ----- the durable queue -----

    /// Starts the task that runs queued (non-blocking and rule-fired) activations. Items left
    /// claimed by a previous process are put back first, so nothing accepted is lost.
    pub async fn start_dispatcher(self: &Arc<Self>) -> Result<tokio::task::JoinHandle<()>> {
        let recovered = self.store.recover_claimed().await?;
        if recovered > 0 {
            tracing::info!(
                recovered,
                "re-queued activations accepted before the last stop"
            );
        }
        // The time-series sampler runs alongside the dispatcher (both are the server's
        // background work, started once).
        self.start_sampler();
        let this = self.clone();
        Ok(tokio::spawn(async move { this.dispatch_loop().await }))
    }

    async fn dispatch_loop(self: Arc<Self>) {
        let permits = Arc::new(tokio::sync::Semaphore::new(
            self.cfg.dispatch_concurrency.max(1),
        ));
        loop {
            if self.shutting_down.load(Ordering::SeqCst) {
                return;
            }
            let free = permits.available_permits();
            if free == 0 {
                // Wait for one run to finish before claiming more.
                if let Ok(p) = permits.clone().acquire_owned().await {
                    drop(p);
                }
                continue;
            }
            let items = match self.store.claim(free).await {
                Ok(items) => items,
                Err(e) => {
                    tracing::error!(error = %e, "could not read the invocation queue; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if items.is_empty() {
                // Sleep until woken, the next scheduled retry is due, or 1 s.
                let idle = match self.store.next_due().await {
                    Ok(Some(due)) => Duration::from_millis(
                        u64::try_from(due - now_millis())
                            .unwrap_or(0)
                            .clamp(1, 1000),
                    ),
                    _ => Duration::from_secs(1),
                };
                tokio::select! {
                    _ = self.queue_wakeup.notified() => {}
                    _ = tokio::time::sleep(idle) => {}
                }
                continue;
            }
            for item in items {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let this = self.clone();
                tokio::spawn(async move {
                    this.run_queued(item).await;
                    drop(permit);
                });
            }
        }
    }

    async fn run_queued(&self, item: QueuedInvocation) {
        let id = item.activation_id.clone();
        let mut delivered = None;
        let record = match serde_json::from_value::<QueuedPayload>(item.payload.clone()) {
            Ok(p) => {
                if p.delivery.is_some() {
                    delivered = Some(p.clone());
                }
                let rid = p.request_id.clone();
                crate::observe::maybe_with_request_id(rid, self.run_queued_payload(&id, p)).await
            }
            Err(e) => {
                tracing::error!(error = %e, activation = %id, "unreadable queue entry");
                None
            }
        };
        let Some(record) = record else { return };
        if let Some(p) = delivered {
            // Rule-fired: retried, dead-lettered or completed by its delivery policy.
            self.finish_delivery(&item, p, record).await;
            return;
        }
        let stored = self
            .persist_accepted(&id, "a queued activation", || {
                self.store.complete(&id, &record)
            })
            .await;
        if stored {
            self.finished(&record);
        }
    }

    /// Records the end of accepted work with `write`. A full disk (or another store failure
    /// that may pass) does not lose the run nor leave its entry claimed until a restart: the
    /// entry stays claimed by this process and the write is retried, backing off up to
    /// [`PERSIST_RETRY_MAX`], until it succeeds (as soon as space returns) or the server shuts
    /// down (then the entry is released, or recovered at the next start, and runs again).
    /// Errors that cannot pass (a conflict, a corrupt row) release the entry at once. Returns
    /// whether `write` succeeded.
    pub(crate) async fn persist_accepted<'a, F, Fut>(
        &'a self,
        id: &ActivationId,
        what: &str,
        mut write: F,
    ) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = nimbus_store::StoreResult<()>> + 'a,
    {
        let mut delay = Duration::from_millis(50);
        let mut failures = 0u32;
        loop {
            let e = match write().await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(activation = %id, attempts = failures + 1, "recorded {what} after the store recovered");
                    }
                    return true;
                }
                Err(e) => e,
            };
            let transient = matches!(
                e,
                nimbus_store::StoreError::Full(_) | nimbus_store::StoreError::Backend(_)
            );
            if !transient || self.shutting_down.load(Ordering::SeqCst) {
                tracing::error!(error = %e, activation = %id, "could not record {what}; it goes back to the queue");
                self.release_queued(id).await;
                return false;
            }
            if failures == 0 {
                tracing::error!(error = %e, activation = %id, "could not record {what}; retrying until the store accepts it");
            }
            failures += 1;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(PERSIST_RETRY_MAX);
        }
    }

    /// Puts a claimed entry back to pending, retrying like [`Controller::persist_accepted`]
    /// (a release is a write too, and fails on a full disk) but giving up at shutdown: start-up
    /// returns whatever is still claimed.
    pub(crate) async fn release_queued(&self, id: &ActivationId) {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.store.release(id).await {
                Ok(()) => return,
                Err(e) if self.shutting_down.load(Ordering::SeqCst) => {
                    tracing::warn!(error = %e, activation = %id, "could not release a queued activation; the next start re-queues it");
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, activation = %id, "could not release a queued activation; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(PERSIST_RETRY_MAX);
                }
            }
        }
    }

    async fn run_queued_payload(&self, id: &ActivationId, p: QueuedPayload) -> Option<Activation> {
        let who = match self.identity_by_uuid(&p.uuid).await {
            Ok(Some(w)) => w,
            Ok(None) => Identity {
                namespace: p.namespace.clone(),
                uuid: p.uuid.clone(),
            },
            Err(e) => {
                tracing::error!(error = %e, "credential lookup failed; retrying later");
                self.release_queued(id).await;
                return None;
            }
        };
        let fqn = match FullyQualifiedName::parse(&p.action, &who.namespace) {
            Ok(f) => f,
            Err(e) => return Some(self.failed_record(&who, &p, id, &e.to_string())),
        };
        let resolved = match self.resolve_action(&who, &fqn).await {
            Ok(r) => r,
            Err(e) => {
                return Some(self.failed_record(
                    &who,
                    &p,
                    id,
                    &format!("The action '{fqn}' could not be run: {e}"),
                ));
            }
        };
        let _slot: ConcurrencySlot = self.throttles.occupy(&who.namespace);
        let _guard = self.inflight.enter(
            id,
            InflightEntry {
                namespace: who.namespace.clone(),
                name: resolved.action.path.name.clone(),
                path: resolved.path(),
                start: p.accepted_at,
                queued: true,
            },
        );
        Some(
            self.run_resolved(
                &who,
                resolved,
                p.params,
                id.clone(),
                p.cause,
                p.accepted_at,
                true,
            )
            .await,
        )
    }

    fn failed_record(
        &self,
        who: &Identity,
        p: &QueuedPayload,
        id: &ActivationId,
        msg: &str,
    ) -> Activation {
        let now = now_millis();
        let name = p.action.rsplit('/').next().unwrap_or(&p.action).to_string();
        let mut annotations = KeyValues::new();
        annotations.set("path", json!(p.action.trim_start_matches('/')));
        if let Some(rid) = &p.request_id {
            annotations.set("requestId", json!(rid));
        }
        Activation {
            namespace: who.namespace.clone(),
            name,
            subject: who.namespace.clone(),
            activation_id: id.clone(),
            version: Default::default(),
            publish: false,
            start: now,
            end: now,
            duration: Some(0),
            cause: p.cause.clone(),
            logs: vec![],
            annotations,
            response: ActivationResponse::error(ResponseStatus::ApplicationError, msg),
        }
    }

    /// Graceful shutdown: refuse new work, let in-flight activations finish within the grace
    /// period, then record the rest as interrupted (blocking) or put them back in the queue
    /// (non-blocking, so they run after the restart).
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.queue_wakeup.notify_waiters();
        let deadline = tokio::time::Instant::now() + self.cfg.shutdown_grace;
        while self.inflight.len() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (id, e) in self.inflight.snapshot() {
            if e.queued {
                if let Err(err) = self.store.release(&id).await {
                    tracing::error!(error = %err, activation = %id, "could not re-queue interrupted activation");
                }
                continue;
            }
            let now = now_millis();
            let mut annotations = KeyValues::new();
            annotations.set("path", json!(e.path));
            let rec = Activation {
                namespace: e.namespace.clone(),
                name: e.name.clone(),
                subject: e.namespace.clone(),
                activation_id: id.clone(),
                version: Default::default(),
                publish: false,
                start: e.start,
                end: now,
                duration: Some(now - e.start),
                cause: None,
                logs: vec![],
                annotations,
                response: ActivationResponse::error(
                    ResponseStatus::WhiskError,
                    "The activation was interrupted because the server shut down.",
                ),
            };
            if let Err(err) = self.store.put_activation(&rec).await {
                tracing::error!(error = %err, "could not record interrupted activation");
            }
            self.finished(&rec);
        }
        // Records of blocking invokes are written behind their answers: commit them now.
        if let Err(err) = self.store.flush_deferred().await {
            tracing::error!(error = %err, "could not write the last activation records");
        }
        self.invoker.shutdown().await;
    }
}
