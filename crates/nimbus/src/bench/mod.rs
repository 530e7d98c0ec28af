//! `nimbus bench`: two suites, printed as one Markdown report.
//!
//! - `core` (issue 2): warm blocking-invoke latency of no-op Node.js and Python actions through
//!   the HTTP API, beside the same request to a minimal HTTP server started by the same run, plus
//!   the cold start (first invoke after create).
//! - `pool` (issue 4): cold starts with and without a stem cell, bursts of concurrent one-second
//!   invocations, idle memory per instance, and process-start baselines.
//! - `wasm` (issue 3, not part of `all`): no-op WebAssembly functions (a `wasm:http` web action,
//!   a `wasm:wasi` invoke) against a hyper server and `wasmtime serve`; see
//!   `scripts/bench-wasm.sh`.

mod mqtt;
mod openfaas;
mod overhead;
mod pool;
mod wasm;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct BenchArgs {
    /// Which measurements to run.
    #[arg(long, value_enum, default_value_t = Suite::All)]
    suite: Suite,
    /// Warm invocations per language (and baseline requests) [core].
    #[arg(long, default_value_t = 2000)]
    warm: usize,
    /// Cold starts per language (each on a freshly created action) [core].
    #[arg(long, default_value_t = 30)]
    cold: usize,
    /// Cold starts per language and per stem-cell setting [pool].
    #[arg(long, default_value_t = 25)]
    pool_cold: usize,
    /// Burst sizes: concurrent one-second Python invocations [pool].
    #[arg(long, value_delimiter = ',', default_values_t = [10, 50])]
    burst: Vec<usize>,
    /// Process starts per interpreter for the baselines [pool].
    #[arg(long, default_value_t = 30)]
    baseline: usize,
    /// `--stem-cells` of the server measured "with a stem cell" [pool].
    #[arg(long, default_value_t = 4)]
    stem_cells: usize,
    /// MQTT broker for the `mqtt` suite.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    mqtt_broker: String,
    /// Offered message rates (msg/s), one paced run each [mqtt].
    #[arg(long, value_delimiter = ',', default_values_t = [500, 2000])]
    mqtt_rate: Vec<u64>,
    /// Seconds of publishing per rate [mqtt].
    #[arg(long, default_value_t = 10)]
    mqtt_seconds: u64,
    /// The feed's `concurrency` parameter (fires in flight) [mqtt].
    #[arg(long, default_value_t = 1)]
    mqtt_concurrency: u64,
    /// Kinds of the no-op action, one series each: `nodejs` (a Node.js function) and/or `wasm`
    /// (a `wasm:wasi` module that echoes its parameters) [mqtt].
    #[arg(long, value_delimiter = ',', default_values_t = [String::from("wasm"), String::from("nodejs")])]
    mqtt_action: Vec<String>,
    /// `limits.concurrency` of the Node.js action: activations one instance runs at once [mqtt].
    #[arg(long, default_value_t = 1)]
    mqtt_node_concurrency: u64,
    /// The no-op `wasi:http` component (`crates/nimbus/tests/wasm-fixtures/noop`, built by
    /// `scripts/bench-wasm.sh`) [wasm].
    #[arg(
        long,
        default_value = "target/tmp/nimbus-wasm-fixtures/wasm32-wasip2/release/nimbus_wasm_noop.wasm"
    )]
    wasm_component: PathBuf,
    /// wasmtime-cli 48 for the `wasmtime serve` baseline (skipped when not given) [wasm].
    #[arg(long)]
    wasmtime: Option<PathBuf>,
    /// Seconds of each throughput run [wasm].
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Connections of each throughput run [wasm].
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Write the Markdown report to this file as well as stdout.
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Suite {
    /// Warm invoke overhead and cold start (issue 2).
    Core,
    /// Instance pool and sandbox: stem cells, bursts, idle memory, baselines (issue 4).
    Pool,
    /// Both.
    All,
    /// OpenFaaS gateway: /function/NAME warm latency and throughput vs a proxied bare Python server (issue 6).
    Openfaas,
    /// MQTT feed → rule → action latency and throughput vs a bare subscriber (issue 5).
    Mqtt,
    /// WebAssembly functions against hyper and `wasmtime serve` (issue 3).
    Wasm,
}

const DEV_GUEST: &str = "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP";

pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    let md = match a.suite {
        Suite::Core => overhead::run(a.warm, a.cold).await?,
        Suite::Pool => pool::run(&pool_opts(&a)).await?,
        Suite::Openfaas => openfaas::run(a.warm).await?,
        Suite::Mqtt => {
            mqtt::run(&mqtt::Opts {
                broker: a.mqtt_broker.clone(),
                rates: a.mqtt_rate.clone(),
                seconds: a.mqtt_seconds,
                concurrency: a.mqtt_concurrency,
                actions: a.mqtt_action.clone(),
                node_concurrency: a.mqtt_node_concurrency,
            })
            .await?
        }
        Suite::Wasm => {
            wasm::run(&wasm::Opts {
                component: a.wasm_component.clone(),
                wasmtime: a.wasmtime.clone(),
                warm: a.warm,
                cold: a.cold,
                seconds: a.seconds,
                connections: a.connections,
            })
            .await?
        }
        Suite::All => {
            let c = overhead::run(a.warm, a.cold).await?;
            let p = pool::run(&pool_opts(&a)).await?;
            format!(
                "### Warm invoke overhead and cold start (core)\n\n{c}\n\n\
                 ### Instance pool and sandbox (pool)\n\n{p}"
            )
        }
    };
    println!("{md}");
    if let Some(path) = a.output {
        std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn pool_opts(a: &BenchArgs) -> pool::Opts {
    pool::Opts {
        cold: a.pool_cold,
        bursts: a.burst.clone(),
        baseline: a.baseline,
        stem_cells: a.stem_cells,
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

struct Stats {
    p50: f64,
    p99: f64,
}

/// `12.3`, or `–` for a figure that was not measured.
fn ms_or_dash(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.1}")
    }
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(|a, b| a.total_cmp(b));
    Stats {
        p50: pct(&v, 50.0),
        p99: pct(&v, 99.0),
    }
}

/// The first three fields of `/proc/loadavg`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Basic auth with the development guest key.
fn guest(rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let (u, k) = DEV_GUEST.split_once(':').unwrap_or_default();
    rb.basic_auth(u, Some(k))
}

async fn free_port() -> anyhow::Result<u16> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?.port())
}

/// `nimbus serve --dev` started by the bench on a free loopback port with a fresh data dir.
struct Server {
    child: tokio::process::Child,
    api: String,
    data: PathBuf,
}

impl Server {
    /// Starts the server with `extra` arguments and waits until it answers.
    async fn start(client: &reqwest::Client, extra: &[String]) -> anyhow::Result<Server> {
        let exe = std::env::current_exe().context("locating the nimbus binary")?;
        let data = std::env::temp_dir().join(format!(
            "nimbus-bench-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let port = free_port().await?;
        let api = format!("http://127.0.0.1:{port}");
        let child = tokio::process::Command::new(&exe)
            .args([
                "serve",
                "--dev",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(&data)
            .args(extra)
            .env("NIMBUS_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting nimbus serve")?;
        let server = Server { child, api, data };
        let ready = Instant::now();
        loop {
            if let Ok(r) = client.get(format!("{}/api/v1", server.api)).send().await
                && r.status().is_success()
            {
                break;
            }
            if ready.elapsed() > Duration::from_secs(30) {
                bail!("the server did not become ready within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(server)
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Creates (or replaces) an action; `limits` is an optional limits object.
async fn put_action(
    client: &reqwest::Client,
    api: &str,
    name: &str,
    kind: &str,
    code: &str,
    limits: Option<Value>,
) -> anyhow::Result<()> {
    let mut body = json!({"exec": {"kind": kind, "code": code}});
    if let (Some(l), Some(obj)) = (limits, body.as_object_mut()) {
        obj.insert("limits".into(), l);
    }
    let r = guest(client.put(format!(
        "{api}/api/v1/namespaces/_/actions/{name}?overwrite=true"
    )))
    .json(&body)
    .send()
    .await?;
    if !r.status().is_success() {
        bail!(
            "creating {name} failed: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    Ok(())
}
