//! `/whisk.system/nats/subscribe`: NATS messages fire the trigger.
//!
//! Parameters: `url` (`nats://host[:port]`, or `tls://host[:port]` with optional `caCert`,
//! `clientCert` and `clientKey` PEM, see `crate::tls`), and either `subject` (core
//! NATS, at-most-once) or `stream` (a JetStream stream; optional `subject` narrows it with a
//! filter) with `durable` (the durable pull consumer's name; default derived from the trigger).
//! Optional `username` / `password` or `token`, and `payloadFormat` as for MQTT.
//!
//! JetStream messages are acknowledged only after the fire was durably accepted (or the
//! message durably dead-lettered); an unacknowledged message is redelivered by the server
//! after its ack wait (at-least-once). Connection loss is logged and retried with backoff.

use crate::error::{FeedResult, invalid};
use crate::event::{CloudEvent, parse_body};
use crate::fire::{Backoff, Fired, Firer};
use async_nats::jetstream::consumer::{AckPolicy, pull};
use base64::Engine;
use futures_util::StreamExt;
use nimbus_egress::EgressPolicy;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;

#[derive(Debug, Clone)]
struct Config {
    url: String,
    /// `tls://` URL: TLS with these settings (see `crate::tls`).
    tls: bool,
    tls_settings: crate::tls::TlsSettings,
    subject: Option<String>,
    stream: Option<String>,
    durable: Option<String>,
    username: Option<String>,
    password: Option<String>,
    token: Option<String>,
    format: String,
}

fn s(p: &Map<String, Value>, k: &str) -> FeedResult<Option<String>> {
    match p.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(v)) if !v.is_empty() => Ok(Some(v.clone())),
        Some(_) => Err(invalid(format!("'{k}' must be a non-empty string."))),
    }
}

fn parse(p: &Map<String, Value>) -> FeedResult<Config> {
    let url = s(p, "url")?
        .ok_or_else(|| invalid("The NATS feed needs 'url', e.g. nats://127.0.0.1:4222."))?;
    let tls = url.starts_with("tls://");
    if !url.starts_with("nats://") && !tls && url.contains("://") {
        return Err(invalid(format!(
            "'url' must be nats://host[:port] or tls://host[:port], not '{url}'."
        )));
    }
    let tls_settings = crate::tls::parse_settings(p, tls, "tls://")?;
    let subject = s(p, "subject")?;
    let stream = s(p, "stream")?;
    if subject.is_none() && stream.is_none() {
        return Err(invalid(
            "The NATS feed needs a 'subject' (core NATS) or a 'stream' (JetStream).",
        ));
    }
    if let Some(sub) = &subject
        && (sub.contains(' ') || sub.starts_with('.') || sub.ends_with('.') || sub.contains(".."))
    {
        return Err(invalid(format!(
            "'subject' is not a valid NATS subject: '{sub}'."
        )));
    }
    let durable = s(p, "durable")?;
    if let Some(d) = &durable
        && !d
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(invalid(
            "'durable' may contain only letters, digits, '-' and '_'.",
        ));
    }
    let format = s(p, "payloadFormat")?.unwrap_or_else(|| "auto".into());
    if !["auto", "json", "text", "base64"].contains(&format.as_str()) {
        return Err(invalid(
            "'payloadFormat' must be auto, json, text or base64.",
        ));
    }
    Ok(Config {
        url,
        tls,
        tls_settings,
        subject,
        stream,
        durable,
        username: s(p, "username")?,
        password: s(p, "password")?,
        token: s(p, "token")?,
        format,
    })
}

pub(crate) fn configure(params: Map<String, Value>) -> FeedResult<Value> {
    let cfg = parse(&params)?;
    server_addr(&cfg.url)?;
    Ok(Value::Object(params))
}

fn server_addr(url: &str) -> FeedResult<async_nats::ServerAddr> {
    url.parse::<async_nats::ServerAddr>()
        .map_err(|e| invalid(format!("'url' is not a NATS server URL ({e}): '{url}'.")))
}

/// The server the configuration connects to (host, port), for the egress check at CREATE.
pub(crate) fn destination(p: &Map<String, Value>) -> FeedResult<(String, u16)> {
    let a = server_addr(&parse(p)?.url)?;
    Ok((a.host().to_string(), a.port()))
}

fn payload(format: &str, bytes: &[u8]) -> Result<Value, String> {
    match format {
        "base64" => Ok(Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))),
        "text" => String::from_utf8(bytes.to_vec())
            .map(Value::String)
            .map_err(|_| "the payload is not UTF-8 text".to_string()),
        "json" => serde_json::from_slice(bytes).map_err(|e| format!("the payload is not JSON: {e}")),
        _ => parse_body(bytes).ok_or_else(|| {
            "the payload is neither JSON nor UTF-8 text (use payloadFormat base64 for binary data)".to_string()
        }),
    }
}

fn raw(subject: &str, bytes: &[u8]) -> Value {
    json!({"subject": subject, "payloadBase64": base64::engine::general_purpose::STANDARD.encode(bytes)})
}

/// Fires or dead-letters one message; `false` when the feed must stop.
async fn process(
    cfg: &Config,
    firer: &Firer,
    subject: &str,
    bytes: &[u8],
    mut extra: Map<String, Value>,
    id: String,
) -> bool {
    match payload(&cfg.format, bytes) {
        Ok(p) => {
            let now = chrono::Utc::now();
            extra.insert("subject".into(), json!(subject));
            extra.insert("payload".into(), p);
            extra.insert("receivedAt".into(), json!(now.timestamp_millis()));
            let host = cfg
                .url
                .trim_start_matches("nats://")
                .trim_start_matches("tls://")
                .trim_end_matches('/');
            let ev = CloudEvent::new(
                id,
                format!("nats://{host}/{subject}"),
                "nimbus.nats.message",
            )
            .at(now)
            .stamp(extra);
            !matches!(firer.fire(ev).await, Fired::Gone)
        }
        Err(reason) => {
            let mut d = Duration::from_millis(200);
            while !firer.dead_letter(&reason, raw(subject, bytes)).await {
                tokio::time::sleep(d).await;
                d = (d * 2).min(Duration::from_secs(10));
            }
            true
        }
    }
}

/// Reconnects async-nats makes on its own before the feed resolves the name again.
const MAX_RECONNECTS: usize = 10;

/// Connects through the egress policy: the server's name is resolved and checked here and
/// async-nats gets the checked addresses only, so its own reconnects dial those (after
/// [`MAX_RECONNECTS`] the subscription ends and the feed resolves again). Servers the NATS
/// server advertises (cluster `connect_urls`) are ignored: they were never checked. Over TLS
/// the certificate is verified for the configured host name.
async fn connect(
    egress: &EgressPolicy,
    cfg: &Config,
    feed: String,
) -> Result<async_nats::Client, String> {
    let server = server_addr(&cfg.url).map_err(|e| e.to_string())?;
    let host = server.host().to_string();
    let checked = egress
        .resolve(&host, server.port())
        .await
        .map_err(|e| e.to_string())?;
    let mut servers = Vec::new();
    for a in &checked {
        let mut u = server.clone().into_inner();
        u.set_ip_host(a.ip())
            .map_err(|()| format!("cannot address {a} as a NATS server"))?;
        servers.push(async_nats::ServerAddr::from_url(u).map_err(|e| e.to_string())?);
    }
    let mut opts = async_nats::ConnectOptions::new()
        .ignore_discovered_servers()
        .retain_servers_order()
        .connection_timeout(egress.connect_timeout())
        .max_reconnects(MAX_RECONNECTS)
        .event_callback(move |ev| {
            let feed = feed.clone();
            async move {
                match ev {
                    async_nats::Event::Connected => {
                        tracing::info!(feed = %feed, "NATS feed (re)connected")
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!(feed = %feed, "NATS connection lost; reconnecting")
                    }
                    other => tracing::debug!(feed = %feed, event = %other, "NATS event"),
                }
            }
        });
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &cfg.token {
        opts = opts.token(t.clone());
    }
    if cfg.tls {
        opts = opts
            .require_tls(true)
            .tls_client_config(crate::tls::client_config_for(
                &cfg.tls_settings,
                Some(&host),
            )?);
    }
    opts.connect(servers).await.map_err(|e| {
        format!(
            "could not connect to {}: {e}",
            nimbus_egress::host_port(&host, server.port())
        )
    })
}

pub(crate) async fn run(firer: Firer) {
    let reg = firer.registration().clone();
    let cfg = match reg.config.as_object().map(parse) {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            tracing::error!(trigger = %reg.trigger, error = %e, "stored NATS configuration is invalid; feed not started");
            return;
        }
        None => return,
    };
    let feed = format!("{}/{}", reg.namespace, reg.trigger);
    let mut backoff = Backoff::default();
    loop {
        let client = match connect(&firer.inner().egress, &cfg, feed.clone()).await {
            Ok(c) => c,
            Err(e) => {
                let d = backoff.next_delay();
                tracing::warn!(feed = %feed, error = %e, retry_in_ms = d.as_millis() as u64, "NATS server unreachable; retrying");
                tokio::time::sleep(d).await;
                continue;
            }
        };
        let outcome = match &cfg.stream {
            None => core(&cfg, &firer, &client, &mut backoff).await,
            Some(stream) => jetstream(&cfg, &firer, client.clone(), stream, &mut backoff).await,
        };
        match outcome {
            Ok(()) => return firer.inner().retire(firer.registration()).await,
            Err(e) => {
                let d = backoff.next_delay();
                tracing::warn!(feed = %feed, error = %e, retry_in_ms = d.as_millis() as u64, "NATS subscription failed; retrying");
                tokio::time::sleep(d).await;
            }
        }
    }
}

/// Core NATS. `Ok` means the feed must stop (trigger gone); `Err` a connection problem.
async fn core(
    cfg: &Config,
    firer: &Firer,
    client: &async_nats::Client,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let subject = cfg.subject.clone().unwrap_or_default();
    let mut sub = client.subscribe(subject).await.map_err(|e| e.to_string())?;
    backoff.reset();
    while let Some(m) = sub.next().await {
        if !process(
            cfg,
            firer,
            m.subject.as_str(),
            &m.payload,
            Map::new(),
            CloudEvent::random_id(),
        )
        .await
        {
            return Ok(());
        }
    }
    Err("the subscription ended".into())
}

async fn jetstream(
    cfg: &Config,
    firer: &Firer,
    client: async_nats::Client,
    stream: &str,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let reg = firer.registration();
    let durable = cfg.durable.clone().unwrap_or_else(|| {
        let h = Sha256::digest(format!("{}/{}", reg.namespace, reg.trigger).as_bytes());
        format!("nimbus-{}", &hex::encode(h)[..16])
    });
    let js = async_nats::jetstream::new(client);
    let st = js
        .get_stream(stream)
        .await
        .map_err(|e| format!("stream '{stream}': {e}"))?;
    let consumer: async_nats::jetstream::consumer::PullConsumer = st
        .get_or_create_consumer(
            &durable,
            pull::Config {
                durable_name: Some(durable.clone()),
                ack_policy: AckPolicy::Explicit,
                filter_subject: cfg.subject.clone().unwrap_or_default(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("consumer '{durable}': {e}"))?;
    let mut msgs = consumer.messages().await.map_err(|e| e.to_string())?;
    backoff.reset();
    while let Some(m) = msgs.next().await {
        let m = m.map_err(|e| e.to_string())?;
        let (id, extra) = match m.info() {
            Ok(i) => (
                format!("{}:{}", i.stream, i.stream_sequence),
                Map::from_iter([
                    ("stream".to_string(), json!(i.stream)),
                    ("sequence".to_string(), json!(i.stream_sequence)),
                    ("delivered".to_string(), json!(i.delivered)),
                ]),
            ),
            Err(_) => (CloudEvent::random_id(), Map::new()),
        };
        if !process(cfg, firer, m.subject.as_str(), &m.payload, extra, id).await {
            return Ok(());
        }
        if let Err(e) = m.ack().await {
            tracing::warn!(error = %e, "could not acknowledge a JetStream message (it will be redelivered)");
        }
    }
    Err("the JetStream consumer ended".into())
}
