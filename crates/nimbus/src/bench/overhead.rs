//! The core suite (issue 2): warm blocking-invoke latency of no-op Node.js and Python actions
//! through the HTTP API, beside the same request to a minimal HTTP server started by the same
//! run, plus the cold start (first invoke after create).

use super::{Server, guest, load_average, ms_or_dash, put_action, stats};
use anyhow::bail;
use serde_json::json;
use std::time::Instant;

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
    auth: bool,
    n: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut rb = client.post(url).json(&json!({}));
        if auth {
            rb = guest(rb);
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

/// Runs the suite and returns its Markdown table and footnote.
pub(super) async fn run(warm_n: usize, cold_n: usize) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4)
        .build()?;
    let server = Server::start(
        &client,
        &[
            "--invocations-per-minute".into(),
            "10000000".into(),
            "--concurrent-invocations".into(),
            "10000".into(),
        ],
    )
    .await?;
    let api = server.api.clone();
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
        for i in 0..if measure_cold { cold_n } else { 0 } {
            let name = format!("cold-{short}-{i}");
            put_action(&client, &api, &name, kind, code, None).await?;
            let url = format!("{api}/api/v1/namespaces/_/actions/{name}?blocking=true&result=true");
            cold.extend(time_post(&client, &url, true, 1).await?);
        }
        let name = format!("warm-{short}");
        put_action(&client, &api, &name, kind, code, None).await?;
        let url = format!("{api}/api/v1/namespaces/_/actions/{name}?blocking=true&result=true");
        time_post(&client, &url, true, 50).await?; // warm up
        // Interleave baseline and platform batches so both see the same machine load.
        let mut warm = Vec::new();
        let mut base = Vec::new();
        let batch = 100.min(warm_n.max(1));
        while warm.len() < warm_n {
            base.extend(time_post(&client, &baseline_url, false, batch).await?);
            warm.extend(time_post(&client, &url, true, batch).await?);
        }
        let (w, b, c) = (stats(warm), stats(base), stats(cold));
        rows.push((label, w, b, c));
    }
    server.stop().await;

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
    md.push_str(&format!(
        "\nwarm n = {warm_n} per kind, cold n = {cold_n} per kind; load average at the end: {}",
        load_average()
    ));
    Ok(md)
}
