//! Console, metrics, usage metering, live log tail and request ids (issue 7), against a real
//! `nimbus serve` process.
#![allow(clippy::unwrap_used)]

mod common;

use common::{GUEST, Server};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn ann<'a>(a: &'a Value, key: &str) -> Option<&'a Value> {
    a["annotations"]
        .as_array()?
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| &kv["value"])
}

async fn raw_get(s: &Server, path: &str) -> reqwest::Response {
    let (u, k) = GUEST.split_once(':').unwrap();
    s.client
        .get(format!("{}{path}", s.base))
        .basic_auth(u, Some(k))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn usage_figures_are_exact_mb_ms_of_known_activations() {
    let s = Server::start(&["--dev"]).await;
    let code = "function main(p) { const t = Date.now(); while (Date.now() - t < (p.ms || 0)) {} if (p.fail) return {error: 'no'}; return {ok: true}; }";
    let (st, _) = s
        .put(
            "actions/small",
            json!({"exec": {"kind": "nodejs:20", "code": code}, "limits": {"memory": 128}}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .put(
            "actions/big",
            json!({"exec": {"kind": "nodejs:20", "code": code}, "limits": {"memory": 512}}),
        )
        .await;
    assert_eq!(st, 200);
    let before = nimbus_model_now();
    for (name, body) in [
        ("small", json!({"ms": 30})),
        ("small", json!({"ms": 5, "fail": true})),
        ("big", json!({"ms": 60})),
        ("big", json!({})),
        ("big", json!({"ms": 15})),
    ] {
        s.post(&format!("actions/{name}?blocking=true"), body).await;
    }
    // The records as stored are the "known activations" the report must add up exactly.
    let (_, list) = s.get("activations?docs=true&limit=0").await;
    let list = list.as_array().unwrap().clone();
    assert_eq!(list.len(), 5);
    let mut expect: std::collections::BTreeMap<String, (u64, u64, u64, u64)> = Default::default();
    for a in &list {
        let d = a["duration"].as_u64().unwrap();
        let mem = ann(a, "limits").unwrap()["memory"].as_u64().unwrap();
        let e = expect
            .entry(a["name"].as_str().unwrap().into())
            .or_default();
        e.0 += 1;
        e.1 += u64::from(a["response"]["statusCode"] != 0);
        e.2 += d;
        e.3 += d * mem;
    }
    let (st, u) = s.get(&format!("usage?since={before}")).await;
    assert_eq!(st, 200, "{u}");
    let fns = u["functions"].as_array().unwrap();
    assert_eq!(fns.len(), 2);
    let mut total_mb_ms = 0;
    for f in fns {
        let (inv, err, dur, mb_ms) = expect[f["name"].as_str().unwrap()];
        assert_eq!(f["invocations"], inv, "{f}");
        assert_eq!(f["errors"], err, "{f}");
        assert_eq!(f["durationMs"], dur, "{f}");
        assert_eq!(f["mbMs"], mb_ms, "{f}");
        // GB-s = MB/1024 × ms/1000, at 1 ms resolution.
        let gbs = f["gbSeconds"].as_f64().unwrap();
        assert!((gbs - mb_ms as f64 / 1024.0 / 1000.0).abs() < 1e-12, "{f}");
        total_mb_ms += mb_ms;
    }
    assert_eq!(expect["small"].1, 1);
    assert!(expect["big"].2 >= 75, "busy loops ran: {:?}", expect["big"]);
    assert_eq!(u["total"]["mbMs"], total_mb_ms);
    assert_eq!(u["total"]["invocations"], 5);
    let days = u["days"].as_array().unwrap();
    let day_inv: u64 = days
        .iter()
        .map(|d| d["invocations"].as_u64().unwrap())
        .sum();
    assert_eq!(day_inv, 5);
    assert!(days[0]["day"].as_str().unwrap().len() == 10);

    // A window before everything is empty; bad values are a 400.
    let (_, empty) = s.get("usage?upto=1000").await;
    assert_eq!(empty["functions"], json!([]));
    assert_eq!(empty["total"]["mbMs"], 0);
    let (st, err) = s.get("usage?since=yesterday").await;
    assert_eq!(st, 400);
    assert!(err["error"].as_str().unwrap().contains("since"));
    let (st, _) = s.get("usage?since=10&upto=5").await;
    assert_eq!(st, 400);
    // Another namespace's usage is not readable.
    let r = raw_get(&s, "/api/v1/namespaces/whisk.system/usage").await;
    assert_eq!(r.status(), 403);

    // The figures come from the store, so they survive a restart.
    let mut s = s;
    let dir = s.dir.clone();
    let port = s.port;
    s.kill9();
    let s2 = Server::start_in(&dir, &["--dev"], Some(port)).await;
    let (_, again) = s2.get(&format!("usage?since={before}")).await;
    assert_eq!(again["total"]["mbMs"], total_mb_ms);
    drop(s);
}

fn nimbus_model_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 1000
}

fn metric(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_count_activations_cold_starts_and_throttles() {
    let s = Server::start(&["--dev", "--invocations-per-minute", "3"]).await;
    s.put(
        "actions/m",
        json!({"exec": {"kind": "nodejs:20", "code": "function main(p) { if (p.fail) throw new Error('x'); return {}; }"}}),
    )
    .await;
    let (st, _) = s.post("actions/m?blocking=true", json!({})).await;
    assert_eq!(st, 200);
    let (st, _) = s.post("actions/m?blocking=true", json!({})).await;
    assert_eq!(st, 200);
    let (st, _) = s
        .post("actions/m?blocking=true", json!({"fail": true}))
        .await;
    assert_eq!(st, 502);
    let (st, _) = s.post("actions/m?blocking=true", json!({})).await;
    assert_eq!(st, 429);

    // Loopback bind and no token: open, no credentials needed.
    let r = s
        .client
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text().await.unwrap();
    let ok = "nimbus_activations_total{namespace=\"guest\",action=\"m\",status=\"success\"}";
    assert_eq!(metric(&text, ok), Some(2.0), "{text}");
    let bad =
        "nimbus_activations_total{namespace=\"guest\",action=\"m\",status=\"developer_error\"}";
    assert_eq!(metric(&text, bad), Some(1.0), "{text}");
    assert_eq!(
        metric(
            &text,
            "nimbus_cold_starts_total{namespace=\"guest\",action=\"m\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "nimbus_activation_duration_seconds_count{namespace=\"guest\",action=\"m\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &text,
            "nimbus_activation_init_seconds_count{namespace=\"guest\",action=\"m\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "nimbus_throttled_total{namespace=\"guest\",reason=\"invocations\"}"
        ),
        Some(1.0)
    );
    assert_eq!(metric(&text, "nimbus_queue_depth "), Some(0.0));
    assert!(metric(&text, "nimbus_pool_instances{state=\"idle\"}").is_some());
    assert!(text.contains("# TYPE nimbus_activation_duration_seconds histogram"));

    // The console's series see the same activations.
    let (_, series) = s.get("series?name=m").await;
    let f = &series["functions"][0];
    assert_eq!(f["invocations"], 3);
    assert_eq!(f["errors"], 1);
    assert_eq!(f["coldStarts"], 1);
    let pts = &f["points"];
    let sum: u64 = pts["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(sum, 3);
    assert_eq!(pts["rate"].as_array().unwrap().len(), 360);
}

#[tokio::test]
async fn metrics_token_is_required_when_configured() {
    let s = Server::start(&["--dev", "--metrics-token", "s3cret"]).await;
    let url = format!("{}/metrics", s.base);
    let r = s.client.get(&url).send().await.unwrap();
    // The token, once set, is honoured; without it the loopback default still applies.
    assert_eq!(r.status(), 200);
    let r = s
        .client
        .get(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = s
        .client
        .get(&url)
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn live_log_tail_streams_logs_of_new_activations() {
    let s = Server::start(&["--dev"]).await;
    for name in ["tailme", "other"] {
        s.put(
            &format!("actions/{name}"),
            json!({"exec": {"kind": "nodejs:20", "code": format!("function main(p) {{ console.log('line from {name} ' + p.n); return {{}}; }}")}}),
        )
        .await;
    }
    let mut r = raw_get(&s, "/api/v1/namespaces/_/logs/stream?name=tailme").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut buf = String::new();
    let t = Instant::now();
    while !buf.contains("event: ready") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), r.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        assert!(t.elapsed() < Duration::from_secs(10));
    }
    s.post("actions/other?blocking=true", json!({"n": 1})).await;
    s.post("actions/tailme?blocking=true", json!({"n": 42}))
        .await;
    while !buf.contains("line from tailme 42") {
        let chunk = tokio::time::timeout(Duration::from_secs(20), r.chunk())
            .await
            .expect("the tail delivered the activation")
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(buf.contains("event: activation"));
    assert!(!buf.contains("line from other"), "filtered by name: {buf}");

    // Another namespace's tail is refused; no credentials is a 401.
    let r = raw_get(&s, "/api/v1/namespaces/whisk.system/logs/stream").await;
    assert_eq!(r.status(), 403);
    let r = s
        .client
        .get(format!("{}/api/v1/namespaces/_/logs/stream", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn request_id_round_trips_and_annotates_activations() {
    let s = Server::start(&["--dev"]).await;
    s.put(
        "actions/rid",
        json!({"exec": {"kind": "nodejs:20", "code": "function main() { return {}; }"}}),
    )
    .await;
    let (u, k) = GUEST.split_once(':').unwrap();
    let invoke = |rid: Option<&str>, blocking: bool| {
        let mut rb = s
            .client
            .post(format!(
                "{}/api/v1/namespaces/_/actions/rid?blocking={blocking}",
                s.base
            ))
            .basic_auth(u, Some(k))
            .json(&json!({}));
        if let Some(r) = rid {
            rb = rb.header("X-Request-Id", r);
        }
        rb.send()
    };
    // Given: echoed and recorded (blocking).
    let r = invoke(Some("req-abc.123"), true).await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-abc.123");
    let a: Value = r.json().await.unwrap();
    assert_eq!(ann(&a, "requestId"), Some(&json!("req-abc.123")));
    // Non-blocking: the id travels through the durable queue.
    let r = invoke(Some("req-async-7"), false).await.unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["activationId"]
        .as_str()
        .unwrap()
        .to_string();
    let a = s.wait_activation(&id, Duration::from_secs(30)).await;
    assert_eq!(ann(&a, "requestId"), Some(&json!("req-async-7")));
    // Missing or unusable: a fresh one is generated and returned.
    for bad in [None, Some("has spaces in it")] {
        let r = invoke(bad, true).await.unwrap();
        let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(rid.len(), 32);
        let a: Value = r.json().await.unwrap();
        assert_eq!(ann(&a, "requestId"), Some(&json!(rid)));
    }
    // Error bodies carry it as their code.
    let r = s
        .client
        .get(format!("{}/api/v1/namespaces/_/actions/nope", s.base))
        .basic_auth(u, Some(k))
        .header("X-Request-Id", "req-404")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "req-404");
}

#[tokio::test]
async fn console_is_served_at_root_for_browsers_only() {
    let s = Server::start(&["--dev"]).await;
    let r = s
        .client
        .get(format!("{}/", s.base))
        .header("Accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'self'"));
    let html = r.text().await.unwrap();
    assert!(html.contains("/console/app.js"));
    assert!(!html.contains("http://") && !html.contains("https://"));
    // API clients still get the OpenWhisk description.
    let (_, v) = (
        0,
        s.client
            .get(format!("{}/", s.base))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap(),
    );
    assert!(v["api_paths"].is_array());
    for (file, ty) in [
        ("app.js", "text/javascript"),
        ("charts.js", "text/javascript"),
        ("style.css", "text/css"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let r = s
            .client
            .get(format!("{}/console/{file}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{file}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(ty)
        );
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("https://"),
            "{file} makes no external request"
        );
    }
    let r = s
        .client
        .get(format!("{}/console/nope.js", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The console's own marker drops WWW-Authenticate so the browser shows no password dialog.
    let r = s
        .client
        .get(format!("{}/api/v1/namespaces", s.base))
        .basic_auth("x", Some("y"))
        .header("x-nimbus-console", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("www-authenticate").is_none());
}
