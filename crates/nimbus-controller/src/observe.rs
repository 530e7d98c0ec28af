//! What the console and operators see of the controller's work: the request id that ties an API
//! request to its activations, the metrics fed by every finished activation, the live feed of
//! finished activations (log tail), usage reports and the recent time series.

use crate::{Controller, Identity, Result};
use nimbus_metrics::{FunctionSeries, Metrics, Observation};
use nimbus_model::{Activation, now_millis};
use nimbus_store::Usage;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Runs `fut` with `id` as the current request id. The API wraps each request in it, so every
/// activation the request causes (directly, through a sequence, or queued) is annotated with
/// `requestId` without the id having to travel through every call signature.
pub async fn with_request_id<F: std::future::Future>(id: String, fut: F) -> F::Output {
    REQUEST_ID.scope(id, fut).await
}

/// The request id of the current task, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Runs `fut` under `id` when there is one.
pub(crate) async fn maybe_with_request_id<F: std::future::Future>(
    id: Option<String>,
    fut: F,
) -> F::Output {
    match id {
        Some(id) => REQUEST_ID.scope(id, fut).await,
        None => fut.await,
    }
}

/// How many finished activations the live feed buffers for a slow subscriber before it skips.
const FEED_CAPACITY: usize = 1024;

/// The controller's observability state.
pub(crate) struct Monitor {
    pub metrics: Arc<Metrics>,
    pub feed: broadcast::Sender<Arc<Activation>>,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor {
            metrics: Arc::new(Metrics::new()),
            feed: broadcast::channel(FEED_CAPACITY).0,
        }
    }
}

/// `response.status` as a metric label value.
fn status_label(code: u8) -> &'static str {
    match code {
        0 => "success",
        1 => "application_error",
        2 => "developer_error",
        _ => "whisk_error",
    }
}

/// The function a record belongs to within its namespace: the `path` annotation after the
/// namespace (`pkg/name`), as the store's `path_tail` and the usage report name it.
pub fn function_of(a: &Activation) -> String {
    a.path_annotation()
        .and_then(|p| p.split_once('/'))
        .map(|(_, tail)| tail)
        .filter(|t| !t.is_empty())
        .unwrap_or(&a.name)
        .to_string()
}

impl Controller {
    /// Called once for every activation record after it was stored: metrics, the live feed and
    /// the server log line that carries the request id.
    pub(crate) fn finished(&self, a: &Activation) {
        let function = function_of(a);
        let kind = a
            .annotations
            .get("kind")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let request_id = a
            .annotations
            .get("requestId")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if kind == "trigger" {
            self.monitor.metrics.fired(&a.namespace, &function);
        } else {
            let cold = a.annotations.get("start").and_then(|v| v.as_str()) == Some("cold");
            self.monitor.metrics.observe(&Observation {
                namespace: &a.namespace,
                function: &function,
                status: status_label(a.response.status_code),
                start_ms: a.start,
                duration_ms: a.duration.unwrap_or(0),
                init_ms: a.annotations.get("initTime").and_then(|v| v.as_i64()),
                cold,
            });
        }
        tracing::info!(
            request_id,
            activation_id = %a.activation_id,
            namespace = %a.namespace,
            action = %function,
            status = a.response.status.as_str(),
            duration_ms = a.duration.unwrap_or(0),
            "activation recorded"
        );
        // No subscriber is fine.
        let _ = self.monitor.feed.send(Arc::new(a.clone()));
    }

    /// Counts a 429 answer.
    pub(crate) fn throttled(&self, ns: &str, reason: &str) {
        self.monitor.metrics.throttled(ns, reason);
    }

    /// The metrics registry (counters, histograms and recent series).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.monitor.metrics
    }

    /// Finished activations as they are recorded (all namespaces: filter by `namespace`).
    pub fn subscribe_activations(&self) -> broadcast::Receiver<Arc<Activation>> {
        self.monitor.feed.subscribe()
    }

    /// The whole Prometheus text: counters and histograms, plus gauges read now (pool, queue).
    pub async fn render_metrics(&self, out: &mut String) {
        use nimbus_metrics::text::{family, sample};
        self.monitor.metrics.render(out);
        let s = self.invoker.stats();
        family(
            out,
            "nimbus_pool_instances",
            "gauge",
            "Live function instances of this node by state.",
        );
        for (state, n) in [("starting", s.starting), ("idle", s.idle), ("busy", s.busy)] {
            sample(out, "nimbus_pool_instances", &[("state", state)], n as f64);
        }
        family(
            out,
            "nimbus_pool_stem_cells",
            "gauge",
            "Pre-started runtime processes by kind.",
        );
        for (kind, n) in &s.stem_cells {
            sample(out, "nimbus_pool_stem_cells", &[("kind", kind)], *n as f64);
        }
        family(
            out,
            "nimbus_pool_memory_used_megabytes",
            "gauge",
            "Memory reserved by live instances.",
        );
        sample(
            out,
            "nimbus_pool_memory_used_megabytes",
            &[],
            s.memory_used_mb as f64,
        );
        family(
            out,
            "nimbus_pool_memory_budget_megabytes",
            "gauge",
            "Memory all instances of this node may reserve together.",
        );
        sample(
            out,
            "nimbus_pool_memory_budget_megabytes",
            &[],
            s.memory_budget_mb as f64,
        );
        family(
            out,
            "nimbus_pool_waiting",
            "gauge",
            "Runs waiting for memory or an instance slot.",
        );
        sample(out, "nimbus_pool_waiting", &[], s.waiting as f64);
        family(
            out,
            "nimbus_queue_depth",
            "gauge",
            "Accepted asynchronous invocations not finished yet (pending and claimed).",
        );
        match self.store.queue_depth().await {
            Ok(n) => sample(out, "nimbus_queue_depth", &[], n as f64),
            Err(e) => tracing::warn!(error = %e, "queue depth unavailable for /metrics"),
        }
        family(
            out,
            "nimbus_inflight_activations",
            "gauge",
            "Activations running on this node now.",
        );
        sample(
            out,
            "nimbus_inflight_activations",
            &[],
            self.inflight.len() as f64,
        );
    }

    /// `GET /namespaces/{ns}/usage`: exact figures from the activation store.
    pub async fn usage(
        &self,
        who: &Identity,
        ns: &str,
        since: Option<i64>,
        upto: Option<i64>,
    ) -> Result<Usage> {
        self.ensure_own(who, ns)?;
        Ok(self.store.usage(&who.namespace, since, upto).await?)
    }

    /// The recent series of the caller's functions (all, or one with per-bucket points).
    pub fn series(
        &self,
        who: &Identity,
        ns: &str,
        name: Option<&str>,
    ) -> Result<Vec<FunctionSeries>> {
        self.ensure_own(who, ns)?;
        Ok(self
            .monitor
            .metrics
            .series()
            .query(&who.namespace, name, now_millis(), name.is_some()))
    }

    /// Samples the live instances of every function into the time series, once per bucket.
    pub(crate) fn start_sampler(self: &Arc<Self>) {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            let every = Duration::from_millis(
                u64::try_from(nimbus_metrics::series::BUCKET_MS / 2).unwrap_or(5000),
            );
            loop {
                tokio::time::sleep(every).await;
                let Some(c) = this.upgrade() else { return };
                c.sample_instances();
            }
        });
    }

    fn sample_instances(&self) {
        let now = now_millis();
        let mut counts: HashMap<(String, String), u32> = HashMap::new();
        for i in self.invoker.instances(None, None) {
            // `/ns/pkg/name` → (ns, pkg/name)
            let path = i.action.trim_start_matches('/');
            if let Some((ns, f)) = path.split_once('/') {
                *counts.entry((ns.to_string(), f.to_string())).or_default() += 1;
            }
        }
        let series = self.monitor.metrics.series();
        for ((ns, f), n) in counts {
            series.sample_instances(&ns, &f, now, n);
        }
        // Functions that had instances before and now have none get a 0 sample in the
        // charts through the query's empty buckets (None), which the console draws as 0.
    }
}

impl Controller {
    /// Fails with 403 unless `ns` is the caller's namespace (or `_`).
    pub fn ensure_namespace(&self, who: &Identity, ns: &str) -> Result<()> {
        self.ensure_own(who, ns)
    }
}
