//! `mqtt` suite (issue 5): MQTT message → action start latency and sustained messages per
//! second through one MQTT feed trigger, one rule and a (nearly) no-op action — a Node.js function,
//! a `wasm:wasi` module, or both — beside a bare MQTT subscriber receiving the same messages from
//! the same broker in the same run.
//!
//! The publisher paces QoS 1 messages at a fixed rate; each carries its sequence number and send
//! time. Latency to the action's start is the activation record's `start` minus the send time;
//! the baseline is the time the bare subscriber received the message. Throughput is messages
//! divided by the time from the first publish to the last activation's end.

use super::{Server, guest, load_average, ms_or_dash, put_action, stats};
use anyhow::{Context, bail};
use base64::Engine as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(super) struct Opts {
    pub broker: String,
    pub rates: Vec<u64>,
    pub seconds: u64,
    pub concurrency: u64,
    /// `nodejs` and/or `wasm`: the action kinds, one series each.
    pub actions: Vec<String>,
    /// `limits.concurrency` of the Node.js action.
    pub node_concurrency: u64,
}

/// A `wasm:wasi` command that copies stdin (the parameters) to stdout (the result): the no-op of
/// the `wasm` series. 128 KiB of memory holds any bench message.
const ECHO_WASI_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (local $end i32) (local $n i32)
    (local.set $end (i32.const 1024))
    (block $eof
      (loop $more
        (i32.store (i32.const 0) (local.get $end))
        (i32.store (i32.const 4) (i32.sub (i32.const 131072) (local.get $end)))
        (br_if $eof (i32.eqz (i32.load (i32.const 4))))
        (br_if $eof (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (local.set $n (i32.load (i32.const 8)))
        (br_if $eof (i32.eqz (local.get $n)))
        (local.set $end (i32.add (local.get $end) (local.get $n)))
        (br $more)))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.sub (local.get $end) (i32.const 1024)))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or_default()
}

fn broker_addr(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url.trim_start_matches("mqtt://").trim_end_matches('/');
    Ok(match rest.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().context("broker port")?),
        None => (rest.to_string(), 1883),
    })
}

/// A bare subscriber recording, per sequence number, when it received the message.
async fn bare_subscriber(
    host: &str,
    port: u16,
    topic: &str,
) -> anyhow::Result<Arc<Mutex<HashMap<u64, f64>>>> {
    let got = Arc::new(Mutex::new(HashMap::new()));
    let mut o = MqttOptions::new(format!("bench-bare-{}", rand::random::<u32>()), host, port);
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut ev) = AsyncClient::new(o, 1000);
    c.subscribe(topic, QoS::AtLeastOnce).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let sink = got.clone();
    tokio::spawn(async move {
        let _keep = c;
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(t) = tx.take() {
                        let _ = t.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let at = now_ms();
                    if let Ok(v) = serde_json::from_slice::<Value>(&p.payload)
                        && let Some(seq) = v["seq"].as_u64()
                        && let Ok(mut m) = sink.lock()
                    {
                        m.insert(seq, at);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .context("bare subscriber: no SUBACK")??;
    Ok(got)
}

struct Run {
    kind: String,
    rate: u64,
    sent: usize,
    send_secs: f64,
    feed_lat: Vec<f64>,
    bare_lat: Vec<f64>,
    feed_done: usize,
    bare_done: usize,
    feed_rate: f64,
    bare_rate: f64,
}

async fn activations(
    client: &reqwest::Client,
    api: &str,
    name: &str,
    want: usize,
) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut skip = 0;
    loop {
        let r = guest(client.get(format!(
            "{api}/api/v1/namespaces/_/activations?name={name}&docs=true&limit=200&skip={skip}"
        )))
        .send()
        .await?;
        let page: Vec<Value> = r.json().await?;
        let n = page.len();
        out.extend(page);
        skip += n;
        if n < 200 || out.len() >= want {
            return Ok(out);
        }
    }
}

async fn count(client: &reqwest::Client, api: &str, name: &str) -> anyhow::Result<usize> {
    let r = guest(client.get(format!(
        "{api}/api/v1/namespaces/_/activations?name={name}&count=true"
    )))
    .send()
    .await?;
    let v: Value = r.json().await?;
    Ok(v["activations"].as_u64().unwrap_or(0) as usize)
}

/// Creates trigger, rule, action and feed for one rate; returns the action name.
async fn setup(
    client: &reqwest::Client,
    api: &str,
    tag: &str,
    topic: &str,
    kind: &str,
    o: &Opts,
) -> anyhow::Result<String> {
    let action = format!("noop{tag}");
    let (exec_kind, code) = match kind {
        "nodejs" => (
            "nodejs:20",
            "function main(p) { return { seq: p.payload.seq, sentAt: p.payload.sentAt }; }"
                .to_string(),
        ),
        "wasm" => (
            "wasm:wasi",
            base64::engine::general_purpose::STANDARD.encode(wat::parse_str(ECHO_WASI_WAT)?),
        ),
        other => bail!("unknown --mqtt-action {other:?} (nodejs or wasm)"),
    };
    let limits = (kind == "nodejs" && o.node_concurrency > 1)
        .then(|| json!({"concurrency": o.node_concurrency}));
    put_action(client, api, &action, exec_kind, &code, limits).await?;
    let trigger = format!("mq{tag}");
    let rule = format!("r{tag}");
    for (path, body) in [
        (
            format!("triggers/{trigger}"),
            json!({"annotations": [{"key": "feed", "value": "/whisk.system/mqtt/subscribe"}]}),
        ),
        (
            format!("rules/{rule}"),
            json!({"trigger": format!("/_/{trigger}"), "action": format!("/_/{action}")}),
        ),
    ] {
        let r = guest(client.put(format!("{api}/api/v1/namespaces/_/{path}?overwrite=true")))
            .json(&body)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("creating {path}: {}", r.text().await.unwrap_or_default());
        }
    }
    let r = guest(client.post(format!("{api}/api/v1/namespaces/whisk.system/actions/mqtt/subscribe?blocking=true")))
        .json(&json!({
            "lifecycleEvent": "CREATE", "triggerName": format!("/guest/{trigger}"),
            "url": o.broker, "topic": topic, "qos": 1, "payloadFormat": "json", "concurrency": o.concurrency,
        }))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("feed CREATE: {}", r.text().await.unwrap_or_default());
    }
    Ok(action)
}

async fn one_rate(
    client: &reqwest::Client,
    api: &str,
    o: &Opts,
    kind: &str,
    rate: u64,
) -> anyhow::Result<Run> {
    let (host, port) = broker_addr(&o.broker)?;
    let tag = format!("{kind}{rate}x{}", rand::random::<u16>());
    let topic = format!("nimbus-bench/{tag}/reading");
    let action = setup(client, api, &tag, &topic, kind, o).await?;
    let bare = bare_subscriber(&host, port, &topic).await?;

    let mut po = MqttOptions::new(format!("bench-pub-{tag}"), host.clone(), port);
    po.set_keep_alive(Duration::from_secs(30));
    po.set_inflight(1000);
    let (publisher, mut pev) = AsyncClient::new(po, 10_000);
    tokio::spawn(async move {
        loop {
            if pev.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    // Warm-up: until the feed's subscription is live and the action instance is warm.
    let warm = Instant::now();
    loop {
        publisher
            .publish(
                &topic,
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&json!({"seq": u64::MAX, "sentAt": now_ms()}))?,
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if count(client, api, &action).await? > 0 {
            break;
        }
        if warm.elapsed() > Duration::from_secs(60) {
            bail!("the feed did not deliver a warm-up message within 60 s");
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base_count = count(client, api, &action).await?;

    let n = (rate * o.seconds) as usize;
    eprintln!("[mqtt] {rate} msg/s: warm; publishing {n} messages");
    let sends = Arc::new(Mutex::new(HashMap::with_capacity(n)));
    let start = Instant::now();
    let first_send = now_ms();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    for seq in 0..n as u64 {
        let due = start + interval * seq as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let at = now_ms();
        publisher
            .publish(
                &topic,
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&json!({"seq": seq, "sentAt": at}))?,
            )
            .await?;
        if let Ok(mut m) = sends.lock() {
            m.insert(seq, at);
        }
    }
    let send_secs = start.elapsed().as_secs_f64();
    // Wait for every activation (or give up after a generous drain time).
    let drain = Instant::now();
    let mut shown = Instant::now();
    loop {
        let c = count(client, api, &action)
            .await?
            .saturating_sub(base_count);
        if c >= n || drain.elapsed() > Duration::from_secs(120 + o.seconds * 2) {
            eprintln!(
                "[mqtt] {rate} msg/s: {c} of {n} activations after {:.1} s of draining",
                drain.elapsed().as_secs_f64()
            );
            break;
        }
        if shown.elapsed() > Duration::from_secs(5) {
            eprintln!("[mqtt] {rate} msg/s: {c} of {n} activations so far");
            shown = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let acts = activations(client, api, &action, n + base_count).await?;
    let sends = sends.lock().map(|m| m.clone()).unwrap_or_default();
    let mut feed_lat = Vec::new();
    let mut last_end = 0.0f64;
    for a in &acts {
        let r = &a["response"]["result"];
        // The Node.js action returns `seq`; the wasm echo returns the whole event.
        let Some(seq) = r["seq"].as_u64().or_else(|| r["payload"]["seq"].as_u64()) else {
            continue;
        };
        if seq == u64::MAX {
            continue;
        }
        let (Some(sent), Some(st)) = (sends.get(&seq), a["start"].as_f64()) else {
            continue;
        };
        feed_lat.push((st - sent).max(0.0));
        last_end = last_end.max(a["end"].as_f64().unwrap_or(st));
    }
    let bare_map = bare.lock().map(|m| m.clone()).unwrap_or_default();
    let mut bare_lat = Vec::new();
    let mut bare_last = 0.0f64;
    for (seq, sent) in &sends {
        if let Some(got) = bare_map.get(seq) {
            bare_lat.push((got - sent).max(0.0));
            bare_last = bare_last.max(*got);
        }
    }
    let feed_done = feed_lat.len();
    let bare_done = bare_lat.len();
    Ok(Run {
        kind: kind.to_string(),
        rate,
        sent: n,
        send_secs,
        feed_rate: feed_done as f64 / ((last_end - first_send) / 1000.0).max(1e-9),
        bare_rate: bare_done as f64 / ((bare_last - first_send) / 1000.0).max(1e-9),
        feed_lat,
        bare_lat,
        feed_done,
        bare_done,
    })
}

pub(super) async fn run(o: &Opts) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4)
        .build()?;
    let big = "100000000".to_string();
    // The feed connects to the broker through the egress policy: open exactly the broker.
    let (host, port) = broker_addr(&o.broker)?;
    let server = Server::start(
        &client,
        &[
            "--invocations-per-minute".into(),
            big.clone(),
            "--fires-per-minute".into(),
            big,
            "--concurrent-invocations".into(),
            "10000".into(),
            "--allow-egress".into(),
            nimbus_egress::host_port(&host, port),
        ],
    )
    .await?;
    let api = server.api.clone();
    let mut runs = Vec::new();
    for kind in &o.actions {
        for &rate in &o.rates {
            match one_rate(&client, &api, o, kind, rate).await {
                Ok(r) => runs.push(r),
                Err(e) => {
                    server.stop().await;
                    return Err(e);
                }
            }
        }
    }
    let load = load_average();
    server.stop().await;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mut md = format!(
        "MQTT (QoS 1) message → action start, through one feed trigger, one rule and a no-op action: \
         `nodejs`, a Node.js function returning two fields of the message (`limits.concurrency` {}); `wasm`, a `wasm:wasi` module echoing its parameters. \
         The bare subscriber is a plain MQTT client on the same broker receiving the same messages. \
         {cpus} CPUs, broker {}, {} s per rate, feed `concurrency` {}, load average after the run {load}.\n\n\
         | action | offered rate (msg/s) | messages | feed → action: delivered | p50 ms | p99 ms | sustained msg/s | bare subscriber: received | p50 ms | p99 ms | msg/s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        o.node_concurrency, o.broker, o.seconds, o.concurrency
    );
    for r in runs {
        let f = stats(r.feed_lat.clone());
        let b = stats(r.bare_lat.clone());
        md.push_str(&format!(
            "| {} | {} (sent in {:.1} s) | {} | {} | {} | {} | {:.0} | {} | {} | {} | {:.0} |\n",
            r.kind,
            r.rate,
            r.send_secs,
            r.sent,
            r.feed_done,
            ms_or_dash(f.p50),
            ms_or_dash(f.p99),
            r.feed_rate,
            r.bare_done,
            ms_or_dash(b.p50),
            ms_or_dash(b.p99),
            r.bare_rate,
        ));
    }
    Ok(md)
}
