//! The OpenFaaS gateway's Prometheus metrics, under their OpenFaaS names so that existing
//! dashboards and alert rules work: `gateway_function_invocation_total{function_name,code}`,
//! `gateway_functions_seconds{function_name,code}` (histogram),
//! `gateway_function_invocation_started{function_name}` and `gateway_service_count{function_name}`.
//! [`GatewayMetrics::render`] returns the text exposition, so the server can serve it alone or
//! appended to Nimbus's own metrics on one `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Prometheus' default histogram buckets (seconds), as the OpenFaaS gateway uses.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct State {
    total: BTreeMap<(String, u16), u64>,
    seconds: BTreeMap<(String, u16), Histogram>,
    started: BTreeMap<String, u64>,
    services: BTreeMap<String, u64>,
}

#[derive(Default)]
pub struct GatewayMetrics {
    state: Mutex<State>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl GatewayMetrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An invocation of `function` (`name.namespace`) started.
    pub fn started(&self, function: &str) {
        *self.lock().started.entry(function.to_string()).or_default() += 1;
    }

    /// An invocation of `function` ended with HTTP `code` after `seconds`.
    pub fn completed(&self, function: &str, code: u16, seconds: f64) {
        let mut st = self.lock();
        *st.total.entry((function.to_string(), code)).or_default() += 1;
        let h = st.seconds.entry((function.to_string(), code)).or_default();
        h.count += 1;
        h.sum += seconds;
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
    }

    /// Invocations of `function` so far (the `invocationCount` of `/system/functions`).
    pub fn invocations(&self, function: &str) -> u64 {
        self.lock()
            .total
            .iter()
            .filter(|((f, _), _)| f == function)
            .map(|(_, n)| n)
            .sum()
    }

    /// Replaces the deployed functions and their replica counts (`gateway_service_count`).
    pub fn set_services(&self, services: BTreeMap<String, u64>) {
        self.lock().services = services;
    }

    /// The Prometheus text exposition of every gateway metric.
    pub fn render(&self) -> String {
        let st = self.lock();
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP gateway_function_invocation_total Function metrics"
        );
        let _ = writeln!(o, "# TYPE gateway_function_invocation_total counter");
        for ((f, code), n) in &st.total {
            let _ = writeln!(
                o,
                "gateway_function_invocation_total{{code=\"{code}\",function_name=\"{}\"}} {n}",
                escape(f)
            );
        }
        let _ = writeln!(o, "# HELP gateway_functions_seconds Function time taken");
        let _ = writeln!(o, "# TYPE gateway_functions_seconds histogram");
        for ((f, code), h) in &st.seconds {
            let f = escape(f);
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "gateway_functions_seconds_bucket{{code=\"{code}\",function_name=\"{f}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                o,
                "gateway_functions_seconds_bucket{{code=\"{code}\",function_name=\"{f}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                o,
                "gateway_functions_seconds_sum{{code=\"{code}\",function_name=\"{f}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                o,
                "gateway_functions_seconds_count{{code=\"{code}\",function_name=\"{f}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(
            o,
            "# HELP gateway_function_invocation_started The total number of function HTTP requests started."
        );
        let _ = writeln!(o, "# TYPE gateway_function_invocation_started counter");
        for (f, n) in &st.started {
            let _ = writeln!(
                o,
                "gateway_function_invocation_started{{function_name=\"{}\"}} {n}",
                escape(f)
            );
        }
        let _ = writeln!(
            o,
            "# HELP gateway_service_count Current count of replicas for function"
        );
        let _ = writeln!(o, "# TYPE gateway_service_count gauge");
        for (f, n) in &st.services {
            let _ = writeln!(
                o,
                "gateway_service_count{{function_name=\"{}\"}} {n}",
                escape(f)
            );
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_buckets() {
        let m = GatewayMetrics::default();
        m.started("f.openfaas-fn");
        m.completed("f.openfaas-fn", 200, 0.02);
        m.completed("f.openfaas-fn", 500, 3.0);
        let t = m.render();
        assert!(t.contains(
            "gateway_function_invocation_total{code=\"200\",function_name=\"f.openfaas-fn\"} 1"
        ));
        assert!(t.contains("gateway_functions_seconds_bucket{code=\"200\",function_name=\"f.openfaas-fn\",le=\"0.025\"} 1"));
        assert!(t.contains("gateway_functions_seconds_bucket{code=\"200\",function_name=\"f.openfaas-fn\",le=\"0.01\"} 0"));
        assert!(
            t.contains("gateway_function_invocation_started{function_name=\"f.openfaas-fn\"} 1")
        );
        assert_eq!(m.invocations("f.openfaas-fn"), 2);
    }
}
