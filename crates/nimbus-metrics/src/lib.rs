//! Nimbus's own metrics, free of HTTP and of the other crates: the controller feeds one
//! [`Observation`] per finished activation (and one call per throttled request), and reads back
//! * the Prometheus text exposition ([`Metrics::render`]), which the API serves at `/metrics`
//!   together with any extra [`MetricsSource`] registered at start-up (e.g. a gateway's own
//!   counters), and
//! * the recent per-function time series ([`series::Series`]) the web console charts, so no
//!   Prometheus server is needed to see the last hour.
//!
//! Everything lives in memory and starts from zero with the process; exact, durable figures
//! (usage metering) come from the activation store instead.

pub mod hist;
pub mod series;
pub mod text;

use hist::Histogram;
use std::collections::BTreeMap;
use std::sync::Mutex;

pub use series::{FunctionSeries, Series};

/// Something that appends Prometheus text lines to the `/metrics` answer.
pub trait MetricsSource: Send + Sync {
    fn render(&self, out: &mut String);
}

/// One finished activation, as the metrics see it.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// The invoking namespace.
    pub namespace: &'a str,
    /// The function within it: the `path` annotation after the namespace (`pkg/name`).
    pub function: &'a str,
    /// `success`, `application_error`, `developer_error` or `whisk_error`.
    pub status: &'a str,
    /// Epoch ms the run started (places it in a time-series bucket).
    pub start_ms: i64,
    pub duration_ms: i64,
    /// Set for cold starts.
    pub init_ms: Option<i64>,
    pub cold: bool,
}

type FnKey = (String, String);

#[derive(Default)]
struct Counters {
    /// (namespace, function, status) → count.
    activations: BTreeMap<(String, String, String), u64>,
    duration: BTreeMap<FnKey, Histogram>,
    init: BTreeMap<FnKey, Histogram>,
    cold: BTreeMap<FnKey, u64>,
    /// (namespace, reason) → count of 429 answers.
    throttled: BTreeMap<(String, String), u64>,
    /// (namespace, trigger) → fires recorded.
    fires: BTreeMap<FnKey, u64>,
}

/// The registry: counters since start-up plus the recent time series.
pub struct Metrics {
    counters: Mutex<Counters>,
    series: Series,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            counters: Mutex::new(Counters::default()),
            series: Series::new(series::BUCKET_MS, series::BUCKETS),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records one finished activation.
    pub fn observe(&self, o: &Observation<'_>) {
        let key = (o.namespace.to_string(), o.function.to_string());
        {
            let mut c = self.lock();
            *c.activations
                .entry((key.0.clone(), key.1.clone(), o.status.to_string()))
                .or_default() += 1;
            c.duration
                .entry(key.clone())
                .or_insert_with(Histogram::seconds)
                .observe_ms(o.duration_ms);
            if o.cold {
                *c.cold.entry(key.clone()).or_default() += 1;
            }
            if let Some(init) = o.init_ms {
                c.init
                    .entry(key)
                    .or_insert_with(Histogram::seconds)
                    .observe_ms(init);
            }
        }
        self.series.record(o);
    }

    /// Records one request answered 429 (`reason`: `invocations`, `concurrency` or `fires`).
    pub fn throttled(&self, namespace: &str, reason: &str) {
        *self
            .lock()
            .throttled
            .entry((namespace.to_string(), reason.to_string()))
            .or_default() += 1;
    }

    /// Records one trigger fire.
    pub fn fired(&self, namespace: &str, trigger: &str) {
        *self
            .lock()
            .fires
            .entry((namespace.to_string(), trigger.to_string()))
            .or_default() += 1;
    }

    /// The recent time series.
    pub fn series(&self) -> &Series {
        &self.series
    }

    /// Appends the counters and histograms in the Prometheus text format (version 0.0.4).
    pub fn render(&self, out: &mut String) {
        use text::{family, sample};
        let c = self.lock();
        family(
            out,
            "nimbus_activations_total",
            "counter",
            "Finished activations by namespace, function and status.",
        );
        for ((ns, f, st), n) in &c.activations {
            sample(
                out,
                "nimbus_activations_total",
                &[("namespace", ns), ("action", f), ("status", st)],
                *n as f64,
            );
        }
        family(
            out,
            "nimbus_activation_duration_seconds",
            "histogram",
            "Run time of activations (start to end, initialisation included).",
        );
        for ((ns, f), h) in &c.duration {
            h.render(
                out,
                "nimbus_activation_duration_seconds",
                &[("namespace", ns), ("action", f)],
            );
        }
        family(
            out,
            "nimbus_activation_init_seconds",
            "histogram",
            "Initialisation time of cold starts.",
        );
        for ((ns, f), h) in &c.init {
            h.render(
                out,
                "nimbus_activation_init_seconds",
                &[("namespace", ns), ("action", f)],
            );
        }
        family(
            out,
            "nimbus_cold_starts_total",
            "counter",
            "Activations that started a new instance.",
        );
        for ((ns, f), n) in &c.cold {
            sample(
                out,
                "nimbus_cold_starts_total",
                &[("namespace", ns), ("action", f)],
                *n as f64,
            );
        }
        family(
            out,
            "nimbus_throttled_total",
            "counter",
            "Requests refused with 429 by reason (invocations, concurrency, fires).",
        );
        for ((ns, r), n) in &c.throttled {
            sample(
                out,
                "nimbus_throttled_total",
                &[("namespace", ns), ("reason", r)],
                *n as f64,
            );
        }
        family(
            out,
            "nimbus_trigger_fires_total",
            "counter",
            "Trigger fires that matched at least one active rule.",
        );
        for ((ns, t), n) in &c.fires {
            sample(
                out,
                "nimbus_trigger_fires_total",
                &[("namespace", ns), ("trigger", t)],
                *n as f64,
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn obs<'a>(f: &'a str, status: &'a str, d: i64, cold: bool) -> Observation<'a> {
        Observation {
            namespace: "guest",
            function: f,
            status,
            start_ms: 1_000_000,
            duration_ms: d,
            init_ms: cold.then_some(40),
            cold,
        }
    }

    #[test]
    fn counts_by_status_and_renders_histograms() {
        let m = Metrics::new();
        m.observe(&obs("hello", "success", 3, true));
        m.observe(&obs("hello", "success", 700, false));
        m.observe(&obs("hello", "application_error", 1, false));
        m.throttled("guest", "invocations");
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains(
            "nimbus_activations_total{namespace=\"guest\",action=\"hello\",status=\"success\"} 2\n"
        ));
        assert!(out.contains("nimbus_activations_total{namespace=\"guest\",action=\"hello\",status=\"application_error\"} 1\n"));
        assert!(out.contains("nimbus_cold_starts_total{namespace=\"guest\",action=\"hello\"} 1\n"));
        assert!(out.contains(
            "nimbus_activation_duration_seconds_bucket{namespace=\"guest\",action=\"hello\",le=\"0.005\"} 2\n"
        ));
        assert!(out.contains(
            "nimbus_activation_duration_seconds_bucket{namespace=\"guest\",action=\"hello\",le=\"+Inf\"} 3\n"
        ));
        assert!(out.contains(
            "nimbus_activation_duration_seconds_sum{namespace=\"guest\",action=\"hello\"} 0.704\n"
        ));
        assert!(out.contains(
            "nimbus_activation_init_seconds_count{namespace=\"guest\",action=\"hello\"} 1\n"
        ));
        assert!(
            out.contains("nimbus_throttled_total{namespace=\"guest\",reason=\"invocations\"} 1\n")
        );
    }
}
