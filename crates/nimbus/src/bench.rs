//! `nimbus bench`: warm blocking-invoke latency of no-op Node.js and Python actions through the
//! HTTP API, beside the same request to a minimal HTTP server started by the same run, plus the
//! cold start (first invoke after create). Prints a Markdown report.

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct BenchArgs {
    /// Warm invocations per language (and baseline requests).
    #[arg(long, default_value_t = 2000)]
    warm: usize,
    /// Cold starts per language (each on a freshly created action).
    #[arg(long, default_value_t = 30)]
    cold: usize,
    /// Write the Markdown report to this file as well as stdout.
    #[arg(long)]
    output: Option<PathBuf>,
}

const DEV_GUEST: &str = "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP";

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

async fn free_port() -> anyhow::Result<u16> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?.port())
}

/// The baseline: the smallest useful HTTP server, answering a JSON body like an invoke does.
async fn start_baseline() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/invoke",
        axum::routing::post(|| async { axum::Json(json!({"ok": true})) }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}/invoke"))
}

async fn time_post(
    client: &reqwest::Client,
    url: &str,
    auth: Option<&str>,
    n: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut rb = client.post(url).json(&json!({}));
        if let Some(a) = auth {
            let (u, k) = a.split_once(':').unwrap_or((a, ""));
            rb = rb.basic_auth(u, Some(k));
        }
        let t = Instant::now();
        let r = rb.send().await?;
        let status = r.status();
        let _ = r.bytes().await?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        if !status.is_success() {
            bail!("{url} answered {status}");
        }
    }
    Ok(out)
}

async fn put_action(
    client: &reqwest::Client,
    api: &str,
    name: &str,
    kind: &str,
    code: &str,
) -> anyhow::Result<()> {
    let (u, k) = DEV_GUEST.split_once(':').unwrap_or_default();
    let r = client
        .put(format!(
            "{api}/api/v1/namespaces/_/actions/{name}?overwrite=true"
        ))
        .basic_auth(u, Some(k))
        .json(&json!({"exec": {"kind": kind, "code": code}}))
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

pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the nimbus binary")?;
    let data = std::env::temp_dir().join(format!("nimbus-bench-{}", std::process::id()));
    let port = free_port().await?;
    let api = format!("http://127.0.0.1:{port}");
    let mut server = tokio::process::Command::new(&exe)
        .args([
            "serve",
            "--dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&data)
        .args([
            "--invocations-per-minute",
            "10000000",
            "--concurrent-invocations",
            "10000",
        ])
        .env("NIMBUS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting nimbus serve")?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4)
        .build()?;
    let ready = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{api}/api/v1")).send().await
            && r.status().is_success()
        {
            break;
        }
        if ready.elapsed() > Duration::from_secs(30) {
            bail!("the server did not become ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let baseline_url = start_baseline().await?;

    // A no-op with 5 MB of code shows that warm invocations do not pay for the code's size.
    let big = format!(
        "function main(params) {{ return {{}}; }}\n//{}\n",
        "x".repeat(5 * 1024 * 1024)
    );
    let cases = [
        (
            "nodejs:20",
            "nodejs:20",
            "function main(params) { return {}; }",
            true,
        ),
        (
            "python:3.11",
            "python:3.11",
            "def main(args):\n    return {}\n",
            true,
        ),
        ("nodejs:20, 5 MB of code", "nodejs:20", big.as_str(), false),
    ];
    let mut rows = Vec::new();
    for (n, (label, kind, code, measure_cold)) in cases.into_iter().enumerate() {
        let short = format!("{}{n}", kind.split(':').next().unwrap_or(kind));
        // Cold: a new action (new version) each time, so the first invoke starts an instance.
        let mut cold = Vec::new();
        for i in 0..if measure_cold { a.cold } else { 0 } {
            let name = format!("cold-{short}-{i}");
            put_action(&client, &api, &name, kind, code).await?;
            let url = format!("{api}/api/v1/namespaces/_/actions/{name}?blocking=true&result=true");
            cold.extend(time_post(&client, &url, Some(DEV_GUEST), 1).await?);
        }
        let name = format!("warm-{short}");
        put_action(&client, &api, &name, kind, code).await?;
        let url = format!("{api}/api/v1/namespaces/_/actions/{name}?blocking=true&result=true");
        time_post(&client, &url, Some(DEV_GUEST), 50).await?; // warm up
        // Interleave baseline and platform batches so both see the same machine load.
        let mut warm = Vec::new();
        let mut base = Vec::new();
        let batch = 100.min(a.warm.max(1));
        while warm.len() < a.warm {
            base.extend(time_post(&client, &baseline_url, None, batch).await?);
            warm.extend(time_post(&client, &url, Some(DEV_GUEST), batch).await?);
        }
        let (w, b, c) = (stats(warm), stats(base), stats(cold));
        rows.push((label, w, b, c));
    }
    let _ = server.start_kill();
    let _ = server.wait().await;
    let _ = std::fs::remove_dir_all(&data);

    let mut md = String::new();
    md.push_str("| kind | warm p50 (ms) | warm p99 (ms) | baseline p50 (ms) | baseline p99 (ms) | overhead p50 (ms) | ratio p50 | cold p50 (ms) | cold p99 (ms) |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for (kind, w, b, c) in &rows {
        md.push_str(&format!(
            "| {kind} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1}× | {} | {} |\n",
            w.p50,
            w.p99,
            b.p50,
            b.p99,
            w.p50 - b.p50,
            w.p50 / b.p50,
            ms_or_dash(c.p50),
            ms_or_dash(c.p99)
        ));
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    md.push_str(&format!(
        "\nwarm n = {} per kind, cold n = {} per kind; load average at the end: {}",
        a.warm,
        a.cold,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    ));
    println!("{md}");
    if let Some(path) = a.output {
        std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
