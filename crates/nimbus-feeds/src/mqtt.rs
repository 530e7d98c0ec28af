//! `/whisk.system/mqtt/subscribe`: each message on a topic filter fires the trigger.
//!
//! Parameters: `url` (`mqtt://host[:port]`, default port 1883), `topic` (a filter, `+` and `#`
//! allowed), `qos` (0 or 1, default 1), optional `username`/`password`, `clientId`,
//! `payloadFormat` (`auto`: JSON if it parses, else UTF-8 text; `json`; `text`; `base64`) and
//! `concurrency` (fires in flight at once, default 1 = strictly in arrival order).
//!
//! At QoS 1 the session is persistent (`clean_session = false`) and acknowledgements are manual:
//! a message is acknowledged only after its fire was durably accepted (or it was durably
//! dead-lettered), so a crash or a lost connection makes the broker deliver it again
//! (at-least-once). The connection is re-established with exponential backoff; failures are
//! logged, never fatal. Connections go through the egress policy (see [`Relay`]).

use crate::error::{FeedResult, invalid};
use crate::event::{CloudEvent, parse_body};
use crate::fire::{Backoff, Fired, Firer};
use base64::Engine;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use nimbus_egress::EgressPolicy;
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, Publish, QoS, Transport};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// QoS 0 messages are dropped (logged) when this many wait for their fire: QoS 0 is
/// at-most-once anyway, and memory must stay bounded. (QoS 1 is bounded by the broker's
/// in-flight window, since unacknowledged messages hold it.)
const QOS0_BACKLOG: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Auto,
    Json,
    Text,
    Base64,
}

#[derive(Debug, Clone)]
struct Config {
    host: String,
    port: u16,
    /// `mqtts://`: TLS with these settings (see `crate::tls`).
    tls: bool,
    tls_settings: crate::tls::TlsSettings,
    topic: String,
    qos: QoS,
    username: Option<String>,
    password: Option<String>,
    client_id: Option<String>,
    format: Format,
    concurrency: usize,
}

/// Parses `mqtt://host[:port]` (also `tcp://` or a bare `host[:port]`; port 1883) or
/// `mqtts://host[:port]` (also `ssl://`; TLS, port 8883). Returns host, port and whether TLS.
pub(crate) fn parse_url(url: &str) -> FeedResult<(String, u16, bool)> {
    let (rest, tls) = if let Some(r) = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
    {
        (r, false)
    } else if let Some(r) = url
        .strip_prefix("mqtts://")
        .or_else(|| url.strip_prefix("ssl://"))
    {
        (r, true)
    } else if url.contains("://") {
        return Err(invalid(format!(
            "'url' must be mqtt://host[:port] or mqtts://host[:port], not '{url}'."
        )));
    } else {
        (url, false)
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| invalid(format!("'url' has an invalid port: '{url}'.")))?,
        ),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() || host.contains('/') || host.contains('@') {
        return Err(invalid(format!(
            "'url' must be mqtt://host[:port] or mqtts://host[:port], not '{url}'."
        )));
    }
    Ok((host.to_string(), port, tls))
}

fn validate_filter(f: &str) -> FeedResult<()> {
    let bad = || invalid(format!("'topic' is not a valid MQTT topic filter: '{f}'."));
    if f.is_empty() || f.len() > 65_535 || f.contains('\0') {
        return Err(bad());
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i != levels.len() - 1) {
            return Err(bad());
        }
        if l.contains('+') && *l != "+" {
            return Err(bad());
        }
    }
    Ok(())
}

fn str_param(p: &Map<String, Value>, k: &str) -> FeedResult<Option<String>> {
    match p.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(format!("'{k}' must be a string."))),
    }
}

fn parse(p: &Map<String, Value>) -> FeedResult<Config> {
    let url = str_param(p, "url")?
        .ok_or_else(|| invalid("The MQTT feed needs 'url', e.g. mqtt://127.0.0.1:1883."))?;
    let (host, port, tls) = parse_url(&url)?;
    let tls_settings = crate::tls::parse_settings(p, tls, "mqtts://")?;
    let topic = str_param(p, "topic")?.ok_or_else(|| {
        invalid("The MQTT feed needs 'topic', a topic filter such as sensors/+/temp.")
    })?;
    validate_filter(&topic)?;
    let qos = match p.get("qos") {
        None | Some(Value::Null) => QoS::AtLeastOnce,
        Some(v) => match v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        {
            Some(0) => QoS::AtMostOnce,
            Some(1) => QoS::AtLeastOnce,
            _ => return Err(invalid("'qos' must be 0 or 1.")),
        },
    };
    let format = match str_param(p, "payloadFormat")?.as_deref() {
        None | Some("auto") => Format::Auto,
        Some("json") => Format::Json,
        Some("text") => Format::Text,
        Some("base64") => Format::Base64,
        Some(o) => {
            return Err(invalid(format!(
                "'payloadFormat' must be auto, json, text or base64, not '{o}'."
            )));
        }
    };
    let concurrency = match p.get("concurrency") {
        None | Some(Value::Null) => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=256).contains(n))
            .ok_or_else(|| invalid("'concurrency' must be a whole number from 1 to 256."))?
            as usize,
    };
    let username = str_param(p, "username")?;
    let password = str_param(p, "password")?;
    if password.is_some() && username.is_none() {
        return Err(invalid("'password' needs a 'username'."));
    }
    Ok(Config {
        host,
        port,
        tls,
        tls_settings,
        topic,
        qos,
        username,
        password,
        client_id: str_param(p, "clientId")?,
        format,
        concurrency,
    })
}

pub(crate) fn configure(params: Map<String, Value>) -> FeedResult<Value> {
    parse(&params)?;
    Ok(Value::Object(params))
}

/// The broker the configuration connects to (host, port), for the egress check at CREATE.
pub(crate) fn destination(p: &Map<String, Value>) -> FeedResult<(String, u16)> {
    let cfg = parse(p)?;
    Ok((cfg.host, cfg.port))
}

/// The event of one message, or why it is malformed.
fn event(cfg: &Config, p: &Publish) -> Result<Map<String, Value>, String> {
    let payload = match cfg.format {
        Format::Base64 => Value::String(base64::engine::general_purpose::STANDARD.encode(&p.payload)),
        Format::Text => Value::String(
            String::from_utf8(p.payload.to_vec())
                .map_err(|_| "the payload is not UTF-8 text".to_string())?,
        ),
        Format::Json => serde_json::from_slice(&p.payload)
            .map_err(|e| format!("the payload is not JSON: {e}"))?,
        Format::Auto => parse_body(&p.payload)
            .ok_or_else(|| "the payload is neither JSON nor UTF-8 text (use payloadFormat base64 for binary data)".to_string())?,
    };
    let received = chrono::Utc::now();
    let mut m = Map::new();
    m.insert("topic".into(), json!(p.topic));
    m.insert("payload".into(), payload);
    m.insert("qos".into(), json!(p.qos as u8));
    m.insert("retained".into(), json!(p.retain));
    m.insert("receivedAt".into(), json!(received.timestamp_millis()));
    Ok(CloudEvent::new(
        CloudEvent::random_id(),
        format!("mqtt://{}:{}/{}", cfg.host, cfg.port, p.topic),
        "nimbus.mqtt.message",
    )
    .at(received)
    .stamp(m))
}

/// What a malformed message is recorded as.
fn raw(p: &Publish) -> Value {
    json!({
        "topic": p.topic,
        "qos": p.qos as u8,
        "retained": p.retain,
        "payloadBase64": base64::engine::general_purpose::STANDARD.encode(&p.payload),
    })
}

/// Fires (or dead-letters) one message; `false` if the feed must stop.
async fn process(cfg: &Config, firer: &Firer, p: &Publish) -> bool {
    match event(cfg, p) {
        Ok(ev) => !matches!(firer.fire(ev).await, Fired::Gone),
        Err(reason) => {
            let mut d = Duration::from_millis(200);
            while !firer.dead_letter(&reason, raw(p)).await {
                tokio::time::sleep(d).await;
                d = (d * 2).min(Duration::from_secs(10));
            }
            true
        }
    }
}

fn client_id(cfg: &Config, ns: &str, trigger: &str) -> String {
    cfg.client_id.clone().unwrap_or_else(|| {
        let h = Sha256::digest(format!("{ns}/{trigger}").as_bytes());
        format!("nimbus-{}", &hex::encode(h)[..16])
    })
}

pub(crate) async fn run(firer: Firer) {
    let reg = firer.registration().clone();
    let cfg = match reg.config.as_object().map(parse) {
        Some(Ok(c)) => Arc::new(c),
        Some(Err(e)) => {
            tracing::error!(trigger = %reg.trigger, error = %e, "stored MQTT configuration is invalid; feed not started");
            return;
        }
        None => return,
    };
    let feed = format!("{}/{}", reg.namespace, reg.trigger);
    let tls = if cfg.tls {
        match crate::tls::client_config(&cfg.tls_settings) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                tracing::error!(trigger = %reg.trigger, error = %e, "MQTT TLS configuration is unusable; feed not started");
                return;
            }
        }
    } else {
        None
    };
    let egress = firer.inner().egress.clone();
    let relay = match Relay::start(
        egress.clone(),
        cfg.host.clone(),
        cfg.port,
        tls,
        feed.clone(),
    ) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(feed = %feed, error = %e, "cannot set up the MQTT connection relay; feed not started");
            return;
        }
    };
    let mut opts = MqttOptions::new(
        client_id(&cfg, &reg.namespace, &reg.trigger),
        relay.path.to_string_lossy(),
        0,
    );
    opts.set_transport(Transport::Unix);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(cfg.qos == QoS::AtMostOnce);
    opts.set_manual_acks(true);
    opts.set_max_packet_size(2 * 1024 * 1024, 64 * 1024);
    if let Some(u) = &cfg.username {
        opts.set_credentials(u.clone(), cfg.password.clone().unwrap_or_default());
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    // Covers the relay's connect and TLS handshake (each within the policy's timeout) and the
    // broker's CONNACK.
    let mut network = NetworkOptions::new();
    network.set_connection_timeout(2 * egress.connect_timeout().as_secs() + 5);
    eventloop.set_network_options(network);
    let (tx, mut rx) = mpsc::unbounded_channel::<Publish>();
    let backlog = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    // The worker fires messages (up to `concurrency` at once, acknowledged in arrival order).
    let worker = {
        let client = client.clone();
        let cfg = cfg.clone();
        let backlog = backlog.clone();
        tokio::spawn(async move {
            let firer = Arc::new(firer);
            let mut inflight = FuturesOrdered::new();
            loop {
                tokio::select! {
                    biased;
                    Some((p, keep)) = inflight.next(), if !inflight.is_empty() => {
                        let (p, keep): (Publish, bool) = (p, keep);
                        backlog.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        if !keep {
                            firer.inner().retire(firer.registration()).await;
                            return;
                        }
                        if p.qos != QoS::AtMostOnce && let Err(e) = client.ack(&p).await {
                            tracing::warn!(error = %e, "could not acknowledge an MQTT message (the broker will deliver it again)");
                        }
                    }
                    m = rx.recv(), if inflight.len() < cfg.concurrency => {
                        let Some(p) = m else { return };
                        let (cfg, firer) = (cfg.clone(), firer.clone());
                        inflight.push_back(async move {
                            let keep = process(&cfg, &firer, &p).await;
                            (p, keep)
                        });
                    }
                }
            }
        })
    };

    let mut backoff = Backoff::default();
    let mut connected = false;
    // Aborting this task drops the guard, which stops the worker too; the worker ending (its
    // trigger is gone) ends this task.
    let mut worker = AbortOnDrop(worker);
    loop {
        let polled = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = &mut worker.0 => return,
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(feed = %feed, broker = %format!("{}:{}", cfg.host, cfg.port), session_present = ack.session_present, "MQTT feed connected");
                connected = true;
                backoff.reset();
                if let Err(e) = client.subscribe(cfg.topic.clone(), cfg.qos).await {
                    tracing::warn!(feed = %feed, error = %e, "MQTT subscribe request failed");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let n = backlog.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if p.qos == QoS::AtMostOnce && n >= QOS0_BACKLOG {
                    backlog.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(feed = %feed, "QoS 0 message dropped: the trigger cannot keep up");
                    continue;
                }
                if tx.send(p).is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(s))) => {
                tracing::debug!(feed = %feed, codes = ?s.return_codes, "MQTT subscription acknowledged");
            }
            Ok(_) => {}
            Err(e) => {
                let delay = backoff.next_delay();
                if connected {
                    tracing::warn!(feed = %feed, error = %e, retry_in_ms = delay.as_millis() as u64, "MQTT connection lost; reconnecting");
                } else {
                    tracing::warn!(feed = %feed, error = %e, retry_in_ms = delay.as_millis() as u64, "MQTT broker unreachable; retrying");
                }
                connected = false;
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The feed's connection to its broker. rumqttc 0.25 only dials by itself (it would resolve
/// the name again and connect wherever it points), so its client connects to a private Unix
/// socket (in a fresh 0700 directory) instead, and for each of those connections the relay
/// connects to the broker through the egress policy (resolve, check every address, dial the
/// checked one, within the policy's timeout), does TLS itself (SNI and verification for the
/// configured host name) and copies bytes both ways. Dropping the relay closes the socket and
/// every relayed connection.
struct Relay {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _task: AbortOnDrop,
}

impl Relay {
    fn start(
        egress: EgressPolicy,
        host: String,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
        feed: String,
    ) -> std::io::Result<Relay> {
        let dir = tempfile::Builder::new().prefix("nimbus-mqtt-").tempdir()?;
        let path = dir.path().join("broker.sock");
        let listener = tokio::net::UnixListener::bind(&path)?;
        let task = tokio::spawn(async move {
            // Relayed connections live in the set, so they end with the relay.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((local, _)) = accepted else { return };
                        let (egress, host, tls, feed) =
                            (egress.clone(), host.clone(), tls.clone(), feed.clone());
                        conns.spawn(async move {
                            if let Err(e) = relay_one(local, &egress, &host, port, tls).await {
                                tracing::warn!(feed = %feed, error = %e, "MQTT broker connection failed");
                            }
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(Relay {
            path,
            _dir: dir,
            _task: AbortOnDrop(task),
        })
    }
}

async fn relay_one(
    local: tokio::net::UnixStream,
    egress: &EgressPolicy,
    host: &str,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(), String> {
    let remote = egress
        .connect_tcp(host, port)
        .await
        .map_err(|e| match e.detail() {
            "" => e.to_string(),
            d => format!("{e} ({d})"),
        })?;
    match tls {
        None => splice(local, remote).await,
        Some(config) => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(bare.to_string())
                .map_err(|e| format!("'{host}' is not a valid TLS server name: {e}"))?;
            let handshake = rumqttc::tokio_rustls::TlsConnector::from(config).connect(name, remote);
            let secure = tokio::time::timeout(egress.connect_timeout(), handshake)
                .await
                .map_err(|_| {
                    format!(
                        "no TLS handshake with {} within {} s",
                        nimbus_egress::host_port(host, port),
                        egress.connect_timeout().as_secs()
                    )
                })?
                .map_err(|e| format!("TLS with {}: {e}", nimbus_egress::host_port(host, port)))?;
            splice(local, secure).await
        }
    }
}

/// Copies both ways until either side ends, then drops both: when rumqttc gives up a
/// connection (keep-alive timeout) a broker that stopped answering is not waited for.
async fn splice<A, B>(a: A, b: B) -> Result<(), String>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let r = tokio::select! {
        r = tokio::io::copy(&mut ar, &mut bw) => r,
        r = tokio::io::copy(&mut br, &mut aw) => r,
    };
    r.map(|_| ()).map_err(|e| e.to_string())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ca_certificates_are_checked_when_the_feed_is_created() {
        let mut p = Map::new();
        p.insert("url".into(), json!("mqtts://127.0.0.1"));
        p.insert("topic".into(), json!("t"));
        p.insert("caCert".into(), json!("not a certificate"));
        let e = parse(&p).unwrap_err().to_string();
        assert!(e.contains("caCert"), "{e}");
        p.insert("url".into(), json!("mqtt://127.0.0.1"));
        p.insert(
            "caCert".into(),
            json!("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        );
        let e = parse(&p).unwrap_err().to_string();
        assert!(e.contains("mqtts://"), "{e}");
        p.remove("caCert");
        p.insert("url".into(), json!("mqtts://127.0.0.1"));
        let cfg = parse(&p).unwrap();
        assert!(cfg.tls && cfg.port == 8883);
        // Without caCert: the system's roots.
        assert!(crate::tls::client_config(&cfg.tls_settings).is_ok());
        p.insert("clientCert".into(), json!("garbage"));
        let e = parse(&p).unwrap_err().to_string();
        assert!(e.contains("clientKey"), "{e}");
    }

    #[test]
    fn urls_and_filters() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1883").unwrap(),
            ("127.0.0.1".into(), 1883, false)
        );
        assert_eq!(
            parse_url("broker.local").unwrap(),
            ("broker.local".into(), 1883, false)
        );
        assert_eq!(parse_url("mqtts://h").unwrap(), ("h".into(), 8883, true));
        assert_eq!(parse_url("ssl://h:9883").unwrap(), ("h".into(), 9883, true));
        assert!(parse_url("ws://h:8883").is_err());
        assert!(parse_url("mqtt://h:notaport").is_err());
        assert!(validate_filter("sensors/+/temp").is_ok());
        assert!(validate_filter("sensors/#").is_ok());
        assert!(validate_filter("sensors/#/x").is_err());
        assert!(validate_filter("sensors/a+").is_err());
        assert!(validate_filter("").is_err());
    }

    #[test]
    fn payload_formats() {
        let p: Map<String, Value> =
            json!({"url": "mqtt://h", "topic": "t", "payloadFormat": "json"})
                .as_object()
                .unwrap()
                .clone();
        let cfg = parse(&p).unwrap();
        let msg = Publish::new("t", QoS::AtLeastOnce, b"{\"temp\": 51}".to_vec());
        let ev = event(&cfg, &msg).unwrap();
        assert_eq!(ev["payload"]["temp"], 51);
        assert_eq!(ev["specversion"], "1.0");
        assert_eq!(ev["qos"], 1);
        assert!(event(&cfg, &Publish::new("t", QoS::AtLeastOnce, b"hot".to_vec())).is_err());
        let mut auto = cfg.clone();
        auto.format = Format::Auto;
        assert_eq!(
            event(&auto, &Publish::new("t", QoS::AtMostOnce, b"hot".to_vec())).unwrap()["payload"],
            "hot"
        );
        assert!(event(&auto, &Publish::new("t", QoS::AtMostOnce, vec![0xff, 0xfe])).is_err());
    }
}
