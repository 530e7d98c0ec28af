//! Runtimes: how a function's code becomes a running instance.
//!
//! A [`Runtime`] turns an [`InstanceSpec`] (kind, code, limits) into an [`Instance`] that serves
//! activations one [`RunRequest`] at a time. The invoker owns pooling and reuse; a runtime only
//! knows how to start, run and stop one instance. Process runtimes (Node.js, Python, exec) speak
//! the ActionLoop protocol over pipes; a wasm runtime will sit beside them behind the same traits.

pub mod idle;
pub mod openfaas;
pub mod process;

use async_trait::async_trait;
use nimbus_model::ActionLimits;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

pub use process::{ProcessRuntime, ProcessRuntimeConfig};

/// Everything needed to start an instance of one action version.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// Resolved kind, e.g. `nodejs:20`, `python:3.11`, `exec`.
    pub kind: String,
    /// Text code, or base64 (a zip archive, or for `exec` possibly a raw executable) when `binary`.
    pub code: Arc<str>,
    pub binary: bool,
    /// Entry point name (`main` by default).
    pub main: String,
    /// Fully qualified action name `/ns/[pkg/]name`, for `__OW_ACTION_NAME` and diagnostics.
    pub action_name: String,
    /// Extra environment for the process (e.g. `__OW_API_HOST`); never the server's own environment.
    pub env: BTreeMap<String, String>,
    pub limits: ActionLimits,
    /// Outbound network access (the host's loopback stays unreachable); none by default.
    pub outbound_network: bool,
    /// Host directories bound read-only inside the sandbox (host, inside), e.g. an OpenFaaS
    /// function's secrets at `/var/openfaas/secrets`. Ignored without the sandbox.
    pub ro_binds: Vec<(std::path::PathBuf, std::path::PathBuf)>,
}

/// One activation handed to an instance.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The merged parameters: the `value` of the ActionLoop line.
    pub value: Map<String, Value>,
    pub activation_id: String,
    /// Invoking namespace.
    pub namespace: String,
    pub action_name: String,
    pub action_version: String,
    pub transaction_id: String,
    /// Epoch ms by which the activation must end.
    pub deadline: i64,
    /// `uuid:key`, present only when the action may see its caller's key (`provide-api-key`).
    pub api_key: Option<String>,
    pub timeout: Duration,
    /// Log budget in bytes for this activation; output past it is dropped with a marker line.
    pub log_limit_bytes: usize,
}

/// How one activation ended, as the runtime saw it. Classification into OpenWhisk statuses
/// (application error when the result holds `error`) is the invoker's job.
#[derive(Debug, Clone, PartialEq)]
pub enum RunResult {
    /// The function returned this JSON object or array.
    Ok(Value),
    /// The function broke the protocol or crashed (non-JSON output, exit, bad result type).
    DeveloperError(String),
    /// The activation ran past its timeout; the instance was killed.
    Timeout,
    /// The instance was killed by its memory limit.
    MemoryExceeded,
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub result: RunResult,
    /// Log lines already formatted as `TIMESTAMP stream: text`.
    pub logs: Vec<String>,
    /// False when the instance must not be reused (it died, timed out or broke the protocol).
    pub reusable: bool,
}

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("kind '{0}' is not supported by this runtime")]
    UnsupportedKind(String),
    /// Init failed for a reason the function's author can fix (bad code, missing main, crash on load).
    #[error("{message}")]
    Init { message: String, logs: Vec<String> },
    /// The platform could not start the instance (missing interpreter, I/O failure).
    #[error("could not start instance: {0}")]
    Platform(String),
}

/// Starts instances for the kinds it supports.
#[async_trait]
pub trait Runtime: Send + Sync {
    fn supports(&self, kind: &str) -> bool;
    /// Starts and initialises an instance; returns once it is ready to run (or init failed).
    /// `timeout` bounds the init phase.
    async fn start(
        &self,
        spec: &InstanceSpec,
        timeout: Duration,
    ) -> Result<Box<dyn Instance>, RuntimeError>;
    /// Starts a stem cell for `kind`. `Ok(None)` when this runtime cannot pre-start that kind
    /// (e.g. `exec`, whose code is the process itself).
    async fn prestart(&self, kind: &str) -> Result<Option<Box<dyn StemCell>>, RuntimeError> {
        let _ = kind;
        Ok(None)
    }
    /// Deploy-time check of an action's code and settings, before it is stored: a
    /// [`RuntimeError::Init`] is the deployer's mistake (a 400). Returns the kind to store, which
    /// may refine a generic one (the wasm runtime turns `wasm` into `wasm:wasi` or `wasm:http`).
    /// The default accepts everything (process runtimes find problems at init).
    async fn check(&self, spec: &InstanceSpec) -> Result<String, RuntimeError> {
        Ok(spec.kind.clone())
    }
}

/// A pre-started process of one kind that has no function code yet (a "stem cell"): the
/// interpreter and launcher are already running, so a cold start only loads the function.
#[async_trait]
pub trait StemCell: Send {
    /// The kind it can become (e.g. `nodejs:20`).
    fn kind(&self) -> &str;
    /// Loads `spec`'s code into this process (applying `spec.limits`); on success it is an
    /// ordinary instance. `timeout` bounds the load.
    async fn specialize(
        self: Box<Self>,
        spec: &InstanceSpec,
        timeout: Duration,
    ) -> Result<Box<dyn Instance>, RuntimeError>;
    /// Stops the process and releases everything it holds.
    async fn shutdown(self: Box<Self>);
}

/// Runs several activations of one instance at once (an instance whose action allows
/// `limits.concurrency > 1` and whose runtime supports it, e.g. Node.js).
#[async_trait]
pub trait ConcurrentRunner: Send + Sync {
    /// Like [`Instance::run`], callable while other runs are in flight. When one outcome is not
    /// `reusable` (the process died or was killed), every run in flight ends too.
    async fn run(&self, req: RunRequest) -> RunOutcome;
}

/// A live, initialised instance. `run` calls are serialised by the invoker, unless
/// [`Instance::concurrent`] hands out a shared runner.
#[async_trait]
pub trait Instance: Send {
    /// For an instance started with `spec.limits.concurrency > 1` by a runtime that can
    /// multiplex: a runner shared by up to that many activations at once. `None` (the default):
    /// one activation at a time through [`Instance::run`].
    fn concurrent(&self) -> Option<std::sync::Arc<dyn ConcurrentRunner>> {
        None
    }
    async fn run(&mut self, req: RunRequest) -> RunOutcome;
    /// Stops the instance and releases everything it holds.
    async fn shutdown(self: Box<Self>);
}
