//! The wasm suite (issue 3): a no-op `wasm:http` component on a web action and a no-op
//! `wasm:wasi` module through the invoke API, measured end to end (cold start after deploy,
//! warm p50/p99 at one connection, requests/s at 32 connections) beside same-run baselines: a
//! minimal hyper server and `wasmtime serve -S cli` with its pooling allocator serving the same
//! component. Also the in-process instantiate + run of both no-ops (no HTTP), for the issue's
//! "≤ 100 µs" target. `scripts/bench-wasm.sh` builds the component and installs wasmtime-cli.

use super::{Server, free_port, guest, load_average, stats};
use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A `wasm:wasi` command that ignores its input and prints `{}`.
const NOOP_WASI_WAT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "{}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 2))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
)
"#;

pub(super) struct Opts {
    /// The no-op `wasi:http/proxy` component (`tests/wasm-fixtures/noop`).
    pub component: PathBuf,
    /// `wasmtime` 48 CLI for the `wasmtime serve` baseline (skipped when absent).
    pub wasmtime: Option<PathBuf>,
    pub warm: usize,
    pub cold: usize,
    pub seconds: u64,
    pub connections: usize,
}

/// One measured target.
#[derive(Default)]
struct Row {
    label: String,
    cold_p50_ms: Option<f64>,
    cold_p99_ms: Option<f64>,
    p50_us: f64,
    p99_us: f64,
    rps: f64,
}

/// A minimal hyper HTTP/1 server answering `ok`, on its own thread and runtime (one worker
/// thread per core, as the servers measured beside it get), so that it does not share the load
/// generator's executor.
fn start_hyper() -> anyhow::Result<String> {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    std::thread::Builder::new()
        .name("bench-hyper".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                    return;
                };
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(async move {
                        let svc = service_fn(|_req| async {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                            ))
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        })?;
    Ok(format!("http://{addr}/"))
}

/// `wasmtime serve -S cli` with the pooling allocator, serving `component`.
async fn start_wasmtime(
    client: &reqwest::Client,
    exe: &Path,
    component: &Path,
) -> anyhow::Result<(tokio::process::Child, String)> {
    let port = free_port().await?;
    let child = tokio::process::Command::new(exe)
        .args(["serve", "-S", "cli", "-O", "pooling-allocator=y", "--addr"])
        .arg(format!("127.0.0.1:{port}"))
        .arg(component)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let url = format!("http://127.0.0.1:{port}/");
    let t = Instant::now();
    loop {
        if let Ok(r) = client.get(&url).send().await
            && r.status().is_success()
        {
            return Ok((child, url));
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("wasmtime serve did not answer within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How to send one request of a target.
#[derive(Clone)]
enum Call {
    Get(String),
    /// Authenticated POST of `{}` (the invoke API).
    Invoke(String),
}

impl Call {
    async fn send(&self, client: &reqwest::Client) -> anyhow::Result<()> {
        let rb = match self {
            Call::Get(u) => client.get(u),
            Call::Invoke(u) => guest(client.post(u)).json(&json!({})),
        };
        let r = rb.send().await?;
        let status = r.status();
        let _ = r.bytes().await?;
        if !status.is_success() {
            bail!("answered {status}");
        }
        Ok(())
    }
}

/// Latencies (µs) of `n` sequential requests on one connection.
async fn sequential(client: &reqwest::Client, call: &Call, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        call.send(client).await?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

/// Requests/s with `connections` clients looping for `secs` seconds (each its own connection).
async fn throughput(call: &Call, connections: usize, secs: u64) -> anyhow::Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .build()?;
        let (call, stop, done, errors) = (call.clone(), stop.clone(), done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match call.send(&client).await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    // Warm every connection before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start_count = done.load(Ordering::Relaxed);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let n = done.load(Ordering::Relaxed) - start_count;
    let elapsed = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let e = errors.load(Ordering::Relaxed);
    if e > 0 {
        bail!("{e} requests failed during the throughput run");
    }
    Ok(n as f64 / elapsed)
}

async fn measure(
    client: &reqwest::Client,
    label: &str,
    call: Call,
    o: &Opts,
) -> anyhow::Result<Row> {
    sequential(client, &call, 200).await?; // warm up
    let s = stats(sequential(client, &call, o.warm).await?);
    let rps = throughput(&call, o.connections, o.seconds).await?;
    Ok(Row {
        label: label.to_string(),
        p50_us: s.p50,
        p99_us: s.p99,
        rps,
        ..Row::default()
    })
}

/// In-process: a fresh instance and run per activation, straight on the runtime (no HTTP).
async fn in_process(component: &[u8], module: &[u8], n: usize) -> anyhow::Result<Vec<String>> {
    use nimbus_runtime::{InstanceSpec, RunRequest, RunResult, Runtime};
    let dir = std::env::temp_dir().join(format!("nimbus-bench-wasm-{}", std::process::id()));
    let rt = nimbus_wasm::WasmRuntime::new(nimbus_wasm::WasmConfig::new(&dir))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut lines = Vec::new();
    for (label, kind, bytes) in [
        ("no-op wasm:http component", "wasm:http", component),
        ("no-op wasm:wasi module", "wasm:wasi", module),
    ] {
        let spec = InstanceSpec {
            kind: kind.into(),
            code: Arc::from(base64::engine::general_purpose::STANDARD.encode(bytes)),
            binary: true,
            main: "main".into(),
            action_name: "/bench/noop".into(),
            env: Default::default(),
            limits: nimbus_model::ActionLimits::default(),
            outbound_network: false,
            ro_binds: Vec::new(),
        };
        rt.check(&spec).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut inst = rt
            .start(&spec, Duration::from_secs(10))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // The component is run as a web action runs it (the request passed through).
        let value = match kind {
            "wasm:http" => json!({"__ow_method": "get", "__ow_path": "", "__ow_headers": {}}),
            _ => json!({}),
        };
        let value = value.as_object().cloned().unwrap_or_default();
        let mut times = Vec::with_capacity(n);
        for i in 0..n + 200 {
            let req = RunRequest {
                value: value.clone(),
                activation_id: format!("a{i}"),
                namespace: "bench".into(),
                action_name: "/bench/noop".into(),
                action_version: "0.0.1".into(),
                transaction_id: format!("t{i}"),
                deadline: 0,
                api_key: None,
                timeout: Duration::from_secs(10),
                log_limit_bytes: 10 << 20,
            };
            let t = Instant::now();
            let out = inst.run(req).await;
            let us = t.elapsed().as_secs_f64() * 1e6;
            if !matches!(out.result, RunResult::Ok(_)) {
                bail!("{label}: {:?}", out.result);
            }
            if i >= 200 {
                times.push(us);
            }
        }
        let s = stats(times);
        lines.push(format!("| {label} | {:.0} | {:.0} |", s.p50, s.p99));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(lines)
}

pub(super) async fn run(o: &Opts) -> anyhow::Result<String> {
    let component = std::fs::read(&o.component).with_context(|| {
        format!(
            "reading the no-op component {} (scripts/bench-wasm.sh builds it)",
            o.component.display()
        )
    })?;
    let module = wat::parse_str(NOOP_WASI_WAT)?;
    let inproc = in_process(&component, &module, o.warm).await?;

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .build()?;
    let server = Server::start(
        &client,
        &[
            "--invocations-per-minute".into(),
            "1000000000".into(),
            "--concurrent-invocations".into(),
            "100000".into(),
        ],
    )
    .await?;
    let api = server.api.clone();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let web_ann = json!([{"key": "web-export", "value": true}]);

    let put = |name: String, kind: &'static str, code: String, ann: Option<Value>| {
        let client = client.clone();
        let api = api.clone();
        async move {
            let mut body = json!({"exec": {"kind": kind, "code": code}});
            if let Some(a) = ann {
                body["annotations"] = a;
            }
            let r = guest(client.put(format!(
                "{api}/api/v1/namespaces/_/actions/{name}?overwrite=true"
            )))
            .json(&body)
            .send()
            .await?;
            if !r.status().is_success() {
                bail!(
                    "creating {name}: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                );
            }
            Ok::<(), anyhow::Error>(())
        }
    };

    let mut rows = Vec::new();
    let cases: [(&str, &'static str, &[u8]); 2] = [
        (
            "nimbus: wasm:http no-op, web action",
            "wasm:http",
            &component,
        ),
        ("nimbus: wasm:wasi no-op, invoke API", "wasm:wasi", &module),
    ];
    for (i, (label, kind, bytes)) in cases.into_iter().enumerate() {
        let url = |name: &str| match kind {
            "wasm:http" => Call::Get(format!("{api}/api/v1/web/guest/default/{name}")),
            _ => Call::Invoke(format!(
                "{api}/api/v1/namespaces/_/actions/{name}?blocking=true&result=true"
            )),
        };
        let ann = (kind == "wasm:http").then(|| web_ann.clone());
        // Cold: the first invoke of a freshly deployed action (deploy compiled it).
        let mut cold = Vec::new();
        for c in 0..o.cold {
            let name = format!("cold{i}x{c}");
            put(name.clone(), kind, b64(bytes), ann.clone()).await?;
            cold.extend(sequential(&client, &url(&name), 1).await?);
        }
        let name = format!("warm{i}");
        put(name.clone(), kind, b64(bytes), ann.clone()).await?;
        let mut row = measure(&client, label, url(&name), o).await?;
        let c = stats(cold);
        row.cold_p50_ms = Some(c.p50 / 1000.0);
        row.cold_p99_ms = Some(c.p99 / 1000.0);
        rows.push(row);
    }
    server.stop().await;

    let hyper_url = start_hyper()?;
    rows.push(
        measure(
            &client,
            "hyper hello server (baseline)",
            Call::Get(hyper_url),
            o,
        )
        .await?,
    );
    let mut notes = Vec::new();
    match &o.wasmtime {
        Some(exe) if exe.is_file() => {
            let (mut child, url) = start_wasmtime(&client, exe, &o.component).await?;
            let row = measure(
                &client,
                "wasmtime serve -S cli, pooling (baseline)",
                Call::Get(url),
                o,
            )
            .await;
            let _ = child.start_kill();
            let _ = child.wait().await;
            rows.push(row?);
        }
        Some(exe) => notes.push(format!(
            "wasmtime serve baseline skipped: {} not found",
            exe.display()
        )),
        None => notes.push("wasmtime serve baseline skipped: no --wasmtime given".into()),
    }

    let base = |label: &str| rows.iter().find(|r| r.label.starts_with(label));
    let hyper = base("hyper").map(|r| (r.p50_us, r.rps));
    let wt = base("wasmtime").map(|r| (r.p50_us, r.rps));
    let ratio = |num: f64, den: Option<f64>| match den {
        Some(d) if d > 0.0 => format!("{:.2}", num / d),
        _ => "–".into(),
    };
    let mut md = String::new();
    md.push_str("| target | cold p50 (ms) | cold p99 (ms) | warm p50 (µs) | warm p99 (µs) | req/s at 32 conn | p50 ÷ wasmtime | req/s ÷ wasmtime | p50 ÷ hyper | req/s ÷ hyper |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |\n",
            r.label,
            r.cold_p50_ms.map_or("–".into(), |v| format!("{v:.2}")),
            r.cold_p99_ms.map_or("–".into(), |v| format!("{v:.2}")),
            r.p50_us,
            r.p99_us,
            r.rps,
            ratio(r.p50_us, wt.map(|w| w.0)),
            ratio(r.rps, wt.map(|w| w.1)),
            ratio(r.p50_us, hyper.map(|h| h.0)),
            ratio(r.rps, hyper.map(|h| h.1)),
        ));
    }
    md.push_str("\nIn process (fresh store and instance per run from the cached `InstancePre`, no HTTP):\n\n");
    md.push_str("| function | run p50 (µs) | run p99 (µs) |\n|---|---|---|\n");
    for l in inproc {
        md.push_str(&l);
        md.push('\n');
    }
    md.push_str(&format!(
        "\nwarm n = {}, cold n = {}, throughput {} s at {} connections; client and servers share this machine; load average at the end: {}",
        o.warm,
        o.cold,
        o.seconds,
        o.connections,
        load_average()
    ));
    for n in notes {
        md.push_str(&format!("\n\n{n}"));
    }
    Ok(md)
}
