//! One activation: a fresh store and instance from the function's `InstancePre`, the epoch
//! deadline, the memory limiter, stdio capture, and the classification of how it ended.

use crate::caps::{Capabilities, OutboundHooks};
use crate::io::{Capture, LogPipe, Logs, ResultPipe};
use crate::limits::MemoryLimiter;
use crate::{CompState, Inner, P1State, Pre, error_chain};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use nimbus_runtime::{RunOutcome, RunRequest, RunResult};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

/// Extra time the host-side watchdog allows past the epoch deadline (the epoch stops wasm code;
/// the watchdog covers a guest blocked in a host call, e.g. a long sleep).
const WATCHDOG_GRACE: Duration = Duration::from_millis(50);

/// Enforces `timeout` on wasm code with the engine epoch: at every tick the guest yields to the
/// executor (so CPU-bound guests share the worker threads) and, once past the deadline, traps
/// with [`Trap::Interrupt`] even in a tight loop.
fn arm_deadline<T: 'static>(store: &mut Store<T>, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if std::time::Instant::now() >= deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
}

pub(crate) struct Runner {
    pub(crate) inner: Arc<Inner>,
    pub(crate) pre: Pre,
    /// Bytes of linear memory one instance may have in total.
    pub(crate) memory_limit: usize,
    pub(crate) action_name: String,
    pub(crate) caps: Arc<Capabilities>,
}

/// What the first event of a `wasm:http` run was.
enum First<T> {
    /// The response head (or `None`: the outparam was dropped unset).
    Head(Option<T>),
    GuestEnded(wasmtime::Result<()>),
}

/// How a `wasm:http` run ended (before the deadline).
enum HttpEnd {
    /// No response was set; how the guest ended.
    NoResponse(wasmtime::Result<()>),
    /// The guest set an error code instead of a response.
    ErrorCode(String, wasmtime::Result<()>),
    Response {
        status: http::StatusCode,
        headers: http::HeaderMap,
        body: Result<Bytes, String>,
        guest: wasmtime::Result<()>,
    },
}

/// How the guest's code ended, before its output is looked at.
enum Ending {
    /// Finished normally (exit code 0).
    Done,
    /// Ended abnormally with this outcome.
    Failed(RunResult),
}

fn developer_error(msg: impl Into<String>) -> RunResult {
    RunResult::DeveloperError(msg.into())
}

/// The sandbox of an activation could not be set up (e.g. the bundled directory vanished).
fn setup_error(e: &wasmtime::Error) -> RunResult {
    tracing::warn!(error = %error_chain(e), "cannot set up a wasm activation");
    developer_error(format!(
        "The function's sandbox could not be set up: {}",
        error_chain(e)
    ))
}

/// Classifies an error out of instantiation or the guest's entry point.
fn classify_error(e: &wasmtime::Error, memory_exceeded: bool) -> Ending {
    if let Some(exit) = e.downcast_ref::<I32Exit>() {
        if exit.0 == 0 {
            return Ending::Done;
        }
        if memory_exceeded {
            return Ending::Failed(RunResult::MemoryExceeded);
        }
        return Ending::Failed(developer_error(format!(
            "The function exited with code {}.",
            exit.0
        )));
    }
    if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return Ending::Failed(RunResult::Timeout);
    }
    if memory_exceeded {
        return Ending::Failed(RunResult::MemoryExceeded);
    }
    Ending::Failed(developer_error(format!(
        "The function failed: {}",
        error_chain(e)
    )))
}

/// The JSON result of `wasm:wasi` from its stdout.
fn parse_result(stdout: &[u8], overflowed: bool, cap: usize) -> RunResult {
    if overflowed {
        return developer_error(format!(
            "The function's output exceeds the limit of {cap} bytes."
        ));
    }
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return developer_error(
            "The function wrote nothing to stdout; it must write its result as one JSON object.",
        );
    }
    match serde_json::from_slice::<Value>(stdout) {
        Ok(v @ (Value::Object(_) | Value::Array(_))) => RunResult::Ok(v),
        Ok(_) => developer_error(
            "The function's stdout must be a JSON object or array, not a JSON scalar.",
        ),
        Err(e) => developer_error(format!(
            "The function's stdout is not valid JSON ({e}); it starts with {:?}.",
            String::from_utf8_lossy(&stdout[..stdout.len().min(80)])
        )),
    }
}

impl Runner {
    fn wasi_builder(
        &self,
        req: &RunRequest,
        stdin: Option<Vec<u8>>,
        stdout: Capture,
        stderr: LogPipe,
    ) -> wasmtime::Result<WasiCtxBuilder> {
        let mut b = WasiCtxBuilder::new();
        if let Some(input) = stdin {
            b.stdin(MemoryInputPipe::new(input));
        }
        b.stdout(stdout)
            .stderr(Capture::Log(stderr))
            .args(&[self.action_name.as_str()])
            // Deny sockets (the defaults allow TCP/UDP to no address; make it explicit).
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if !self.caps.env.is_empty() {
            b.envs(&self.caps.env);
        }
        for name in &self.caps.env_params {
            match req.value.get(name) {
                None | Some(Value::Null) => {}
                Some(Value::String(v)) => {
                    b.env(name, v);
                }
                Some(other) => {
                    b.env(name, other.to_string());
                }
            }
        }
        if let Some(dir) = &self.caps.bundled_dir {
            b.preopened_dir(dir, "/", FsPerms::ReadOnly)?;
        }
        Ok(b)
    }

    fn comp_state(&self, b: &mut WasiCtxBuilder, logs: &Logs) -> CompState {
        CompState {
            wasi: b.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: OutboundHooks {
                caps: self.caps.clone(),
                egress: self.inner.config.egress.clone(),
                logs: Some(logs.clone()),
            },
            limiter: MemoryLimiter::new(self.memory_limit),
        }
    }

    pub(crate) async fn run(&self, req: RunRequest) -> RunOutcome {
        let permit = match self.inner.slots.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => {
                return RunOutcome {
                    result: developer_error("The wasm runtime is shutting down."),
                    logs: Vec::new(),
                    reusable: false,
                };
            }
        };
        let logs = Logs::new(req.log_limit_bytes);
        let result = match &self.pre {
            Pre::Module(pre) => self.run_p1(pre, &req, &logs).await,
            Pre::Command(pre) => self.run_command(pre, &req, &logs).await,
            Pre::Http(pre) => self.run_http(pre, &req, &logs).await,
        };
        drop(permit);
        RunOutcome {
            result,
            logs: logs.take(),
            // Every run has its own store: a trap or timeout leaves nothing behind.
            reusable: true,
        }
    }

    fn params_json(req: &RunRequest) -> Vec<u8> {
        serde_json::to_vec(&req.value).unwrap_or_else(|_| b"{}".to_vec())
    }

    async fn run_p1(
        &self,
        pre: &wasmtime::InstancePre<P1State>,
        req: &RunRequest,
        logs: &Logs,
    ) -> RunResult {
        let cap = self.inner.config.max_result_bytes;
        let out = ResultPipe::new(cap);
        let err = logs.pipe("stderr");
        let wasi = match self.wasi_builder(
            req,
            Some(Self::params_json(req)),
            Capture::Result(out.clone()),
            err.clone(),
        ) {
            Ok(mut b) => b.build_p1(),
            Err(e) => return setup_error(&e),
        };
        let mut store = Store::new(
            &self.inner.engine,
            P1State {
                wasi,
                limiter: MemoryLimiter::new(self.memory_limit),
            },
        );
        store.limiter(|s| &mut s.limiter);
        arm_deadline(&mut store, req.timeout);

        let fut = async {
            let instance = pre.instantiate_async(&mut store).await?;
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call_async(&mut store, ()).await
        };
        let ended = tokio::time::timeout(req.timeout + WATCHDOG_GRACE, fut).await;
        err.finish();
        let mem = store.data().limiter.exceeded();
        let ending = match ended {
            Err(_) => Ending::Failed(RunResult::Timeout),
            Ok(Ok(())) => Ending::Done,
            Ok(Err(e)) => classify_error(&e, mem),
        };
        match ending {
            Ending::Failed(r) => r,
            Ending::Done => {
                let (bytes, overflowed) = out.take();
                parse_result(&bytes, overflowed, cap)
            }
        }
    }

    async fn run_command(
        &self,
        pre: &wasmtime_wasi::p2::bindings::CommandPre<CompState>,
        req: &RunRequest,
        logs: &Logs,
    ) -> RunResult {
        let cap = self.inner.config.max_result_bytes;
        let out = ResultPipe::new(cap);
        let err = logs.pipe("stderr");
        let mut b = match self.wasi_builder(
            req,
            Some(Self::params_json(req)),
            Capture::Result(out.clone()),
            err.clone(),
        ) {
            Ok(b) => b,
            Err(e) => return setup_error(&e),
        };
        let mut store = Store::new(&self.inner.engine, self.comp_state(&mut b, logs));
        store.limiter(|s| &mut s.limiter);
        arm_deadline(&mut store, req.timeout);

        let fut = async {
            let command = pre.instantiate_async(&mut store).await?;
            command.wasi_cli_run().call_run(&mut store).await
        };
        let ended = tokio::time::timeout(req.timeout + WATCHDOG_GRACE, fut).await;
        err.finish();
        let mem = store.data().limiter.exceeded();
        let ending = match ended {
            Err(_) => Ending::Failed(RunResult::Timeout),
            Ok(Ok(Ok(()))) => Ending::Done,
            Ok(Ok(Err(()))) if mem => Ending::Failed(RunResult::MemoryExceeded),
            Ok(Ok(Err(()))) => {
                Ending::Failed(developer_error("The function exited with an error status."))
            }
            Ok(Err(e)) => classify_error(&e, mem),
        };
        match ending {
            Ending::Failed(r) => r,
            Ending::Done => {
                let (bytes, overflowed) = out.take();
                parse_result(&bytes, overflowed, cap)
            }
        }
    }

    async fn run_http(
        &self,
        pre: &wasmtime_wasi_http::p2::bindings::ProxyPre<CompState>,
        req: &RunRequest,
        logs: &Logs,
    ) -> RunResult {
        let cap = self.inner.config.max_result_bytes;
        let out = logs.pipe("stdout");
        let err = logs.pipe("stderr");
        let mut b = match self.wasi_builder(req, None, Capture::Log(out.clone()), err.clone()) {
            Ok(b) => b,
            Err(e) => return setup_error(&e),
        };
        let mut store = Store::new(&self.inner.engine, self.comp_state(&mut b, logs));
        store.limiter(|s| &mut s.limiter);
        arm_deadline(&mut store, req.timeout);

        // A web action hands over the HTTP request itself (see `web.rs`); any other invocation
        // becomes a POST of the JSON parameters.
        let web = crate::web::WebRequest::from_params(&req.value);
        let request = match &web {
            Some(Ok(w)) => w.to_http(),
            Some(Err(e)) => return developer_error(e.clone()),
            None => http::Request::builder()
                .method(http::Method::POST)
                .uri("http://localhost/")
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(Self::params_json(req))))
                .map_err(|e| e.to_string()),
        };
        let request = match request {
            Ok(r) => r,
            Err(e) => return developer_error(format!("The request cannot be passed on: {e}")),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let handles = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .and_then(|r| Ok((r, store.data_mut().http().new_response_outparam(tx)?)));
        let (request, outparam) = match handles {
            Ok(h) => h,
            Err(e) => {
                return developer_error(format!(
                    "internal error creating the request: {}",
                    error_chain(&e)
                ));
            }
        };

        let deadline = Instant::now() + req.timeout + WATCHDOG_GRACE;
        // The guest and the reader of its response are polled together in this task (no task
        // per activation): the guest streams the body while it is read. Dropping the future at
        // the deadline cancels the guest.
        let ended = tokio::time::timeout_at(deadline, async {
            let guest = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, request, outparam)
                    .await
            };
            tokio::pin!(guest);
            let mut rx = rx;
            let first = tokio::select! {
                biased;
                r = &mut rx => First::Head(r.ok()),
                g = &mut guest => First::GuestEnded(g),
            };
            let (head, ended) = match first {
                First::Head(h) => (h, None),
                First::GuestEnded(g) => (rx.try_recv().ok(), Some(g)),
            };
            let response = match head {
                None => {
                    let g = match ended {
                        Some(g) => g,
                        None => guest.await,
                    };
                    return HttpEnd::NoResponse(g);
                }
                Some(Err(code)) => {
                    let g = match ended {
                        Some(g) => g,
                        None => guest.await,
                    };
                    return HttpEnd::ErrorCode(format!("{code:?}"), g);
                }
                Some(Ok(r)) => r,
            };
            let status = response.status();
            let headers = response.headers().clone();
            let collect = Limited::new(response.into_body(), cap).collect();
            let (body, g) = match ended {
                Some(g) => (collect.await, g),
                None => tokio::join!(collect, &mut guest),
            };
            HttpEnd::Response {
                status,
                headers,
                body: body.map(|c| c.to_bytes()).map_err(|e| e.to_string()),
                guest: g,
            }
        })
        .await;
        let mem = store.data().limiter.exceeded();
        let ending = |g: &wasmtime::Result<()>| match g {
            Ok(()) => Ending::Done,
            Err(e) => classify_error(e, mem),
        };
        let result = match ended {
            Err(_) => RunResult::Timeout,
            Ok(HttpEnd::NoResponse(g)) => match ending(&g) {
                Ending::Failed(r) => r,
                Ending::Done => developer_error(
                    "The function returned without setting a response (response-outparam::set).",
                ),
            },
            Ok(HttpEnd::ErrorCode(code, g)) => match ending(&g) {
                Ending::Failed(r) => r,
                Ending::Done => {
                    developer_error(format!("The function responded with an error: {code}"))
                }
            },
            Ok(HttpEnd::Response {
                status,
                headers,
                body,
                guest,
            }) => match (body, ending(&guest)) {
                (_, Ending::Failed(r)) => r,
                (Err(e), Ending::Done) => developer_error(format!(
                    "The function's response body could not be read (limit {cap} bytes): {e}"
                )),
                (Ok(body), Ending::Done) if web.is_some() => {
                    crate::web::response_result(status, &headers, &body)
                }
                (Ok(body), Ending::Done) => http_result(status, &body),
            },
        };
        out.finish();
        err.finish();
        result
    }
}

/// The result of a `wasm:http` function invoked with parameters.
fn http_result(status: http::StatusCode, body: &[u8]) -> RunResult {
    let parsed = serde_json::from_slice::<Value>(body);
    if status.is_client_error() || status.is_server_error() {
        let detail = match parsed {
            Ok(v) => v,
            Err(_) => Value::String(String::from_utf8_lossy(body).into_owned()),
        };
        return RunResult::Ok(json!({ "error": detail, "statusCode": status.as_u16() }));
    }
    match parsed {
        Ok(v @ (Value::Object(_) | Value::Array(_))) => RunResult::Ok(v),
        Ok(_) => developer_error(format!(
            "The function's response (status {status}) must be a JSON object or array."
        )),
        Err(e) => developer_error(format!(
            "The function's response (status {status}) is not valid JSON ({e}); it starts with {:?}.",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_results() {
        assert_eq!(
            parse_result(b"{\"a\":1}\n", false, 100),
            RunResult::Ok(json!({"a": 1}))
        );
        assert!(matches!(
            parse_result(b"", false, 100),
            RunResult::DeveloperError(_)
        ));
        assert!(matches!(
            parse_result(b"hello", false, 100),
            RunResult::DeveloperError(_)
        ));
        assert!(matches!(
            parse_result(b"42", false, 100),
            RunResult::DeveloperError(_)
        ));
        assert!(matches!(
            parse_result(b"{}", true, 100),
            RunResult::DeveloperError(_)
        ));
    }

    #[test]
    fn http_errors_become_application_errors() {
        assert_eq!(
            http_result(http::StatusCode::NOT_FOUND, b"nope"),
            RunResult::Ok(json!({"error": "nope", "statusCode": 404}))
        );
        assert_eq!(
            http_result(http::StatusCode::OK, b"[1]"),
            RunResult::Ok(json!([1]))
        );
    }
}
