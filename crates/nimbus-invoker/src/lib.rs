//! The invoker: runs one activation on an instance of the right runtime.
//!
//! It owns the instance pool of this node (see `pool.rs`: warm reuse, the memory budget with fair
//! queuing, per-function minimum and maximum instances, stem cells) and turns a runtime's raw
//! [`RunResult`] into an OpenWhisk [`ActivationResponse`].

mod pool;

use nimbus_model::{ActivationResponse, ResponseStatus};
use nimbus_runtime::{InstanceSpec, RunRequest, RunResult, Runtime, RuntimeError};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use pool::{FunctionRef, InstanceInfo, InstanceState, PoolConfig, PoolStats, Start};

/// What the controller learns from one run.
#[derive(Debug, Clone)]
pub struct InvokeOutcome {
    pub response: ActivationResponse,
    pub logs: Vec<String>,
    /// Milliseconds spent starting and initialising an instance (cold start only).
    pub init_time: Option<u64>,
    /// Whether a warm instance served it, or one was started (from a stem cell or not).
    pub start_kind: Start,
    /// Epoch ms when the function started running (after init).
    pub start: i64,
    pub end: i64,
    pub timed_out: bool,
}

pub struct Invoker {
    pool: pool::Pool,
}

impl Invoker {
    pub fn new(runtimes: Vec<Arc<dyn Runtime>>, cfg: PoolConfig) -> Arc<Invoker> {
        let inv = Arc::new(Invoker {
            pool: pool::Pool::new(runtimes, cfg),
        });
        inv.pool.spawn_maintenance();
        inv
    }

    pub fn supports(&self, kind: &str) -> bool {
        self.pool.supports(kind)
    }

    /// Deploy-time check of `spec` by the runtime of its kind (see [`Runtime::check`]): the kind
    /// to store, or why the code cannot run.
    pub async fn check(&self, spec: &InstanceSpec) -> Result<String, RuntimeError> {
        match self.pool.runtime_for(&spec.kind) {
            Some(rt) => rt.check(spec).await,
            None => Err(RuntimeError::UnsupportedKind(spec.kind.clone())),
        }
    }

    /// Runs `req` on a warm instance of `f`, starting one from `spec` when none is idle.
    pub async fn invoke(
        &self,
        f: &FunctionRef,
        spec: &InstanceSpec,
        req: RunRequest,
    ) -> InvokeOutcome {
        let timeout_ms = spec.limits.timeout;
        let memory_mb = spec.limits.memory;
        let started = Instant::now();
        let (mut lease, start_kind) = match self.pool.checkout(f, spec).await {
            Ok(x) => x,
            Err(e) => {
                let now = nimbus_model::now_millis();
                let (response, logs) = match e {
                    RuntimeError::Init { message, logs } => (
                        ActivationResponse::error(ResponseStatus::DeveloperError, message),
                        logs,
                    ),
                    RuntimeError::UnsupportedKind(k) => (
                        ActivationResponse::error(
                            ResponseStatus::WhiskError,
                            format!("kind '{k}' has no runtime on this node"),
                        ),
                        vec![],
                    ),
                    RuntimeError::Platform(m) => (
                        ActivationResponse::error(ResponseStatus::WhiskError, m),
                        vec![],
                    ),
                };
                let init = started.elapsed().as_millis() as u64;
                return InvokeOutcome {
                    response,
                    logs,
                    init_time: Some(init),
                    start_kind: Start::Cold {
                        init_ms: init,
                        stem: false,
                    },
                    start: now,
                    end: now,
                    timed_out: false,
                };
            }
        };
        let start = nimbus_model::now_millis();
        let out = lease.run(req).await;
        let end = nimbus_model::now_millis();
        let timed_out = out.result == RunResult::Timeout;
        let response = classify(out.result, timeout_ms, memory_mb);
        if out.reusable {
            self.pool.checkin(lease);
        } else {
            self.pool.discard(lease).await;
        }
        let init_time = match start_kind {
            Start::Cold { init_ms, .. } => Some(init_ms),
            Start::Warm => None,
        };
        InvokeOutcome {
            response,
            logs: out.logs,
            init_time,
            start_kind,
            start,
            end,
            timed_out,
        }
    }

    pub fn stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Live instances, optionally of one namespace and/or one action (`/ns/[pkg/]name`).
    pub fn instances(&self, namespace: Option<&str>, action: Option<&str>) -> Vec<InstanceInfo> {
        self.pool.instances(namespace, action)
    }

    /// Keeps `f.min_instances` instances of this action version warm (0 stops doing so).
    pub fn ensure_min(&self, f: FunctionRef, spec: InstanceSpec) {
        self.pool.ensure_min(f, spec);
    }

    /// Stops every idle instance (busy ones are stopped when their run returns).
    pub async fn shutdown(&self) {
        self.pool.shutdown().await;
    }

    /// Idle timeout currently in force.
    pub fn idle_timeout(&self) -> Duration {
        self.pool.idle_timeout()
    }
}

/// OpenWhisk's reading of a run: a result holding `error` is an application error; protocol
/// breaches, timeouts and out-of-memory kills are developer errors.
pub fn classify(result: RunResult, timeout_ms: u64, memory_mb: u64) -> ActivationResponse {
    match result {
        RunResult::Ok(v) => {
            let is_app_error = v.as_object().is_some_and(|o| o.contains_key("error"));
            let mut r = if is_app_error {
                ActivationResponse::new(ResponseStatus::ApplicationError, v)
            } else {
                ActivationResponse::success(v)
            };
            r.size = serde_json::to_vec(&r.result).ok().map(|b| b.len());
            r
        }
        RunResult::DeveloperError(m) => {
            ActivationResponse::error(ResponseStatus::DeveloperError, m)
        }
        RunResult::Timeout => ActivationResponse::error(
            ResponseStatus::DeveloperError,
            format!("The action exceeded its time limits of {timeout_ms} milliseconds."),
        ),
        RunResult::MemoryExceeded => ActivationResponse::error(
            ResponseStatus::DeveloperError,
            format!(
                "memory limit exceeded: the action used more than its limit of {memory_mb} MB and was killed."
            ),
        ),
    }
}

/// A result over `max_bytes` is replaced by a developer error (OpenWhisk: 1 MB).
pub fn enforce_result_size(resp: &mut ActivationResponse, max_bytes: usize) {
    let size = resp.size.unwrap_or_else(|| {
        serde_json::to_vec(&resp.result)
            .map(|b| b.len())
            .unwrap_or(0)
    });
    if size > max_bytes {
        *resp = ActivationResponse::error(
            ResponseStatus::DeveloperError,
            format!(
                "The action produced a response that exceeded the allowed length: {size} > {max_bytes} bytes."
            ),
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classification_follows_openwhisk() {
        let r = classify(RunResult::Ok(json!({"a": 1})), 100, 256);
        assert_eq!(r.status(), ResponseStatus::Success);
        let r = classify(RunResult::Ok(json!({"error": "no"})), 100, 256);
        assert_eq!(r.status(), ResponseStatus::ApplicationError);
        assert!(!r.success);
        let r = classify(RunResult::Ok(json!([1, 2])), 100, 256);
        assert!(r.success);
        let r = classify(RunResult::Timeout, 1500, 256);
        assert_eq!(r.status(), ResponseStatus::DeveloperError);
        assert_eq!(
            r.result["error"],
            "The action exceeded its time limits of 1500 milliseconds."
        );
        let r = classify(RunResult::MemoryExceeded, 100, 128);
        assert!(
            r.result["error"]
                .as_str()
                .unwrap()
                .contains("memory limit exceeded")
        );
    }

    #[test]
    fn oversize_results_become_developer_errors() {
        let mut r = classify(RunResult::Ok(json!({"x": "y".repeat(100)})), 100, 256);
        enforce_result_size(&mut r, 50);
        assert_eq!(r.status(), ResponseStatus::DeveloperError);
    }
}
