//! The openfaas suite (issue 6): `/function/NAME` warm latency and throughput of a
//! `python3-http` no-op through the OpenFaaS gateway, beside a same-run baseline: a bare Python
//! HTTP server (keep-alive, no-op handler) reached through a minimal reverse proxy (what an
//! OpenFaaS gateway + of-watchdog in http mode put in front of a function, minus the watchdog).

use super::{Server, load_average, stats};
use anyhow::{Context, bail};
use serde_json::json;
use std::time::{Duration, Instant};

const BARE_SERVER: &str = r#"
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    do_GET = do_POST = _answer
    def log_message(self, *a):
        pass
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// A minimal reverse proxy: forwards method, path and body with a pooled client.
async fn start_proxy(upstream: String) -> anyhow::Result<String> {
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(
        move |method: axum::http::Method, uri: axum::http::Uri, body: axum::body::Bytes| {
            let client = client.clone();
            let url = format!("{upstream}{}", uri.path());
            async move {
                let Ok(r) = client.request(method, url).body(body).send().await else {
                    return axum::http::StatusCode::BAD_GATEWAY.into_response();
                };
                let status = axum::http::StatusCode::from_u16(r.status().as_u16())
                    .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
                let b = r.bytes().await.unwrap_or_default();
                (status, b).into_response()
            }
        },
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

async fn time_posts(client: &reqwest::Client, url: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = client.post(url).body("{}").send().await?;
        let status = r.status();
        let _ = r.bytes().await?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        if !status.is_success() {
            bail!("{url} answered {status}");
        }
    }
    Ok(out)
}

/// Requests per second with `workers` concurrent clients for `dur`.
async fn throughput(
    client: &reqwest::Client,
    url: &str,
    workers: usize,
    dur: Duration,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (c, u) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < dur {
                let r = c.post(&u).body("{}").send().await?;
                if !r.status().is_success() {
                    anyhow::bail!("{u} answered {}", r.status());
                }
                let _ = r.bytes().await?;
                n += 1;
            }
            Ok::<u64, anyhow::Error>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

pub(super) async fn run(warm_n: usize) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .build()?;
    let server = Server::start(
        &client,
        &[
            "--invocations-per-minute".into(),
            "100000000".into(),
            "--concurrent-invocations".into(),
            "10000".into(),
        ],
    )
    .await?;
    let api = server.api.clone();
    // The no-op function, deployed as faas-cli would.
    let bundle = server.data.with_extension("bundle");
    std::fs::create_dir_all(bundle.join("function"))?;
    std::fs::write(bundle.join("nimbus.json"), r#"{"lang":"python3-http"}"#)?;
    std::fs::write(
        bundle.join("function/handler.py"),
        "def handle(event, context):\n    return {\"statusCode\": 200, \"body\": \"\"}\n",
    )?;
    let r = client
        .post(format!("{api}/system/functions"))
        .basic_auth("admin", Some("nimbus-dev"))
        .json(
            &json!({"service": "noop", "image": format!("file://{}", bundle.display()),
                      "labels": {"com.openfaas.scale.min": "4"}}),
        )
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "deploy failed: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    let fn_url = format!("{api}/function/noop");

    // The baseline: bare Python server behind the minimal proxy.
    let mut py = tokio::process::Command::new("python3")
        .args(["-c", BARE_SERVER])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the baseline python server")?;
    let mut line = String::new();
    {
        use tokio::io::AsyncBufReadExt;
        let out = py.stdout.take().context("baseline stdout")?;
        tokio::io::BufReader::new(out).read_line(&mut line).await?;
    }
    let port: u16 = line.trim().parse().context("baseline port")?;
    let proxy = start_proxy(format!("http://127.0.0.1:{port}")).await?;
    let base_url = format!("{proxy}/");

    time_posts(&client, &fn_url, 100).await?;
    time_posts(&client, &base_url, 100).await?;
    let mut warm = Vec::new();
    let mut base = Vec::new();
    let batch = 100.min(warm_n.max(1));
    while warm.len() < warm_n {
        base.extend(time_posts(&client, &base_url, batch).await?);
        warm.extend(time_posts(&client, &fn_url, batch).await?);
    }
    let dur = Duration::from_secs(3);
    let rps_fn = throughput(&client, &fn_url, 8, dur).await?;
    let rps_base = throughput(&client, &base_url, 8, dur).await?;
    let (w, b) = (stats(warm), stats(base));
    server.stop().await;
    let _ = std::fs::remove_dir_all(&bundle);
    let _ = py.kill().await;

    let mut md = String::new();
    md.push_str(
        "| path | p50 (ms) | p99 (ms) | throughput, 8 clients (req/s) |\n|---|---|---|---|\n",
    );
    md.push_str(&format!(
        "| `/function/noop` (python3-http, 4 warm instances) | {:.3} | {:.3} | {:.0} |\n",
        w.p50, w.p99, rps_fn
    ));
    md.push_str(&format!(
        "| baseline: bare Python HTTP server via minimal proxy | {:.3} | {:.3} | {:.0} |\n",
        b.p50, b.p99, rps_base
    ));
    md.push_str(&format!(
        "\noverhead p50 = {:.3} ms (target ≤ 0.5 ms), ratio p50 {:.2}×; warm n = {warm_n}, throughput over 3 s each; load average at the end: {}\n",
        w.p50 - b.p50,
        w.p50 / b.p50,
        load_average()
    ));
    Ok(md)
}
