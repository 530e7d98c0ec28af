//! Built-in feeds end to end (issue 5 §1): a real server process, real Mosquitto, NATS with
//! JetStream and PostgreSQL on this machine. Each test drives the OpenWhisk feed protocol the
//! way the clients do: create the trigger, invoke `/whisk.system/...` with `lifecycleEvent`.
#![allow(clippy::unwrap_used)]

mod common;

use common::{GUEST, Server};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// The recording action: returns its parameters (the event).
const RECORD: &str = "function main(p) { return p; }";

fn uniq(p: &str) -> String {
    format!("{p}{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// Invokes a built-in feed action blocking, as `wsk trigger create --feed` does.
async fn feed(s: &Server, action: &str, body: Value) -> (u16, Value) {
    let (u, k) = GUEST.split_once(':').unwrap();
    let r = s
        .client
        .post(format!(
            "{}/api/v1/namespaces/whisk.system/actions/{action}?blocking=true",
            s.base
        ))
        .basic_auth(u, Some(k))
        .json(&body)
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

/// Trigger + rule + recording action; returns the action name.
async fn pipeline(s: &Server, trigger: &str) -> String {
    let action = uniq("rec");
    let rule = uniq("rule");
    let (st, _) = s
        .put(
            &format!("actions/{action}"),
            json!({"exec": {"kind": "nodejs:default", "code": RECORD}}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .put(
            &format!("triggers/{trigger}"),
            json!({"annotations": [{"key": "feed", "value": "/whisk.system/x"}]}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .put(
            &format!("rules/{rule}"),
            json!({"trigger": format!("/_/{trigger}"), "action": format!("/_/{action}")}),
        )
        .await;
    assert_eq!(st, 200);
    action
}

async fn create_feed(s: &Server, action: &str, trigger: &str, params: Value) -> Value {
    let mut body = params.as_object().unwrap().clone();
    body.insert("lifecycleEvent".into(), json!("CREATE"));
    body.insert("triggerName".into(), json!(format!("/guest/{trigger}")));
    body.insert("authKey".into(), json!(GUEST));
    let (st, v) = feed(s, action, Value::Object(body)).await;
    assert_eq!(st, 200, "feed CREATE failed: {v}");
    v["response"]["result"].clone()
}

async fn lifecycle(s: &Server, action: &str, trigger: &str, event: &str) -> (u16, Value) {
    feed(
        s,
        action,
        json!({"lifecycleEvent": event, "triggerName": format!("/guest/{trigger}"), "authKey": GUEST}),
    )
    .await
}

/// Results of the finished activations of `action`, waiting until there are at least `n`.
async fn results(s: &Server, action: &str, n: usize, within: Duration) -> Vec<Value> {
    let path = format!("activations?name={action}&docs=true&limit=200");
    s.list_at_least(&path, GUEST, n, within)
        .await
        .iter()
        .map(|a| a["response"]["result"].clone())
        .collect()
}

/// The namespace's dead letters (the delivery store) once there are at least `n`.
async fn dead_letters(s: &Server, n: usize, within: Duration) -> Vec<Value> {
    s.list_at_least("deadletters", GUEST, n, within).await
}

fn assert_cloudevent(ev: &Value, ty: &str) {
    assert_eq!(ev["specversion"], "1.0", "{ev}");
    assert_eq!(ev["type"], ty, "{ev}");
    assert!(ev["id"].as_str().is_some_and(|x| !x.is_empty()), "{ev}");
    assert!(ev["source"].as_str().is_some_and(|x| !x.is_empty()), "{ev}");
    assert!(
        chrono_like(ev["time"].as_str().unwrap_or_default()),
        "time is RFC 3339: {ev}"
    );
}

fn chrono_like(t: &str) -> bool {
    t.len() >= 20 && t.as_bytes()[4] == b'-' && t.contains('T') && t.ends_with('Z')
}

// ---------------------------------------------------------------------------------------------
// MQTT

async fn mqtt_publisher(port: u16) -> rumqttc::AsyncClient {
    let mut o = rumqttc::MqttOptions::new(uniq("pub"), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(10));
    let (c, mut ev) = rumqttc::AsyncClient::new(o, 100);
    tokio::spawn(async move {
        loop {
            if ev.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    c
}

/// Publishes `body` until `action` has at least `n` activations (the feed subscribes
/// asynchronously after CREATE, so the first messages may precede the subscription).
async fn publish_until(
    s: &Server,
    c: &rumqttc::AsyncClient,
    topic: &str,
    body: &[u8],
    action: &str,
    n: usize,
) -> Vec<Value> {
    let t = Instant::now();
    loop {
        c.publish(topic, rumqttc::QoS::AtLeastOnce, false, body.to_vec())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (_, list) = s
            .get(&format!("activations?name={action}&docs=true&limit=200"))
            .await;
        let got: Vec<Value> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["response"]["result"].clone())
            .collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no activation from MQTT within 60 s"
        );
    }
}

#[tokio::test]
async fn mqtt_feed_fires_rule_and_dead_letters_malformed_messages() {
    let s = Server::start(&["--dev", "--allow-egress", "127.0.0.1:1883"]).await;
    let trigger = uniq("mq");
    let action = pipeline(&s, &trigger).await;
    let base = uniq("nimbus-test/");
    let created = create_feed(
        &s,
        "mqtt/subscribe",
        &trigger,
        json!({"url": "mqtt://127.0.0.1:1883", "topic": format!("{base}/+/temp"), "qos": 1, "payloadFormat": "json"}),
    )
    .await;
    assert_eq!(created["status"]["active"], true);
    assert_eq!(created["config"]["topic"], format!("{base}/+/temp"));

    let c = mqtt_publisher(1883).await;
    let topic = format!("{base}/dev1/temp");
    let got = publish_until(
        &s,
        &c,
        &topic,
        br#"{"temp": 51.5, "device": "dev1"}"#,
        &action,
        1,
    )
    .await;
    let ev = &got[0];
    assert_eq!(ev["topic"], topic);
    assert_eq!(ev["payload"]["temp"], 51.5);
    assert_eq!(ev["qos"], 1);
    assert_eq!(ev["retained"], false);
    assert!(ev["receivedAt"].as_i64().unwrap() > 1_700_000_000_000);
    assert_cloudevent(ev, "nimbus.mqtt.message");
    assert_eq!(ev["source"], format!("mqtt://127.0.0.1:1883/{topic}"));

    // A message that is not JSON (payloadFormat json) becomes a dead-letter entry, and the feed
    // keeps going.
    c.publish(
        &topic,
        rumqttc::QoS::AtLeastOnce,
        false,
        b"not json".to_vec(),
    )
    .await
    .unwrap();
    let dead = dead_letters(&s, 1, Duration::from_secs(30)).await;
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("not JSON"),
        "{}",
        dead[0]
    );
    assert_eq!(
        dead[0]["source"],
        format!("feed:mqtt/subscribe:guest/{trigger}")
    );
    assert_eq!(dead[0]["event"]["topic"], topic);
    let before = results(&s, &action, 1, Duration::from_secs(5)).await.len();
    c.publish(
        &topic,
        rumqttc::QoS::AtLeastOnce,
        false,
        br#"{"temp": 7}"#.to_vec(),
    )
    .await
    .unwrap();
    let after = results(&s, &action, before + 1, Duration::from_secs(30)).await;
    assert!(after.iter().any(|e| e["payload"]["temp"] == 7));

    // READ, then DELETE; a second DELETE reports there is no feed.
    let (st, read) = lifecycle(&s, "mqtt/subscribe", &trigger, "READ").await;
    assert_eq!(st, 200, "{read}");
    assert_eq!(
        read["response"]["result"]["config"]["url"],
        "mqtt://127.0.0.1:1883"
    );
    let (st, _) = lifecycle(&s, "mqtt/subscribe", &trigger, "DELETE").await;
    assert_eq!(st, 200);
    let (st, v) = lifecycle(&s, "mqtt/subscribe", &trigger, "DELETE").await;
    assert_eq!(st, 502, "{v}");
    assert!(
        v["response"]["result"]["error"]
            .as_str()
            .unwrap()
            .contains("has no")
    );
}

/// A broker of its own (Mosquitto or nats-server) with a TLS listener on a free port, its CA and
/// server certificate made with openssl for 127.0.0.1; killed on drop.
struct TlsBroker {
    child: std::process::Child,
    port: u16,
    ca: std::path::PathBuf,
    /// A client certificate and key signed by the same CA.
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsBroker {
    /// The `--allow-egress` entry that opens this broker (it listens on loopback).
    fn allow(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[derive(Clone, Copy)]
enum BrokerKind {
    /// Mosquitto requiring a client certificate (mutual TLS).
    MosquittoMutual,
    Nats,
}

async fn tls_broker(kind: BrokerKind) -> TlsBroker {
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f);
    let openssl = || std::process::Command::new("openssl");
    run(openssl()
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=nimbus test CA", "-keyout"])
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem")));
    // `<name>.key` and `<name>.pem`, signed by the CA, X.509 v3 with extension `ext` (rustls
    // refuses v1 certificates).
    let issue = |name: &str, subject: &str, ext: &str| {
        std::fs::write(p(&format!("{name}.ext")), format!("{ext}\n")).unwrap();
        run(openssl()
            .args([
                "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout",
            ])
            .arg(p(&format!("{name}.key")))
            .arg("-out")
            .arg(p(&format!("{name}.csr"))));
        run(openssl()
            .args(["x509", "-req", "-days", "1", "-CAcreateserial", "-in"])
            .arg(p(&format!("{name}.csr")))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-extfile")
            .arg(p(&format!("{name}.ext")))
            .arg("-out")
            .arg(p(&format!("{name}.pem"))));
    };
    issue("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1");
    issue("client", "/CN=nimbus-feed", "extendedKeyUsage=clientAuth");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = match kind {
        BrokerKind::MosquittoMutual => {
            let conf = format!(
                "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nallow_anonymous true\npersistence false\nuser root\n",
                p("ca.pem").display(),
                p("server.pem").display(),
                p("server.key").display()
            );
            std::fs::write(p("mosquitto.conf"), conf).unwrap();
            let mut c = std::process::Command::new("mosquitto");
            c.arg("-c").arg(p("mosquitto.conf"));
            c
        }
        BrokerKind::Nats => {
            let mut c = std::process::Command::new("nats-server");
            c.args([
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--tls",
                "--tlscert",
            ])
            .arg(p("server.pem"))
            .arg("--tlskey")
            .arg(p("server.key"));
            c
        }
    };
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the broker binary (Debian packages mosquitto, nats-server)");
    let t = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "TLS broker did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    TlsBroker {
        child,
        port,
        ca: p("ca.pem"),
        client_cert: p("client.pem"),
        client_key: p("client.key"),
        _dir: dir,
    }
}

#[tokio::test]
async fn nats_feed_over_tls() {
    let broker = tls_broker(BrokerKind::Nats).await;
    let s = Server::start(&["--dev", "--allow-egress", &broker.allow()]).await;
    let url = format!("tls://127.0.0.1:{}", broker.port);
    let nc = async_nats::ConnectOptions::new()
        .add_root_certificates(broker.ca.clone())
        .require_tls(true)
        .connect(url.as_str())
        .await
        .unwrap();
    let trigger = uniq("ntls");
    let action = pipeline(&s, &trigger).await;
    let subject = format!("nimbustls.{}", uniq("s"));
    let ca = std::fs::read_to_string(&broker.ca).unwrap();
    create_feed(
        &s,
        "nats/subscribe",
        &trigger,
        json!({"url": url, "subject": subject, "caCert": ca}),
    )
    .await;
    let t = Instant::now();
    let got = loop {
        nc.publish(subject.clone(), r#"{"v": 7}"#.into())
            .await
            .unwrap();
        nc.flush().await.unwrap();
        let got = results(&s, &action, 0, Duration::from_secs(1)).await;
        if !got.is_empty() {
            break got;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no NATS message over TLS"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(got[0]["payload"]["v"], 7);
    assert_eq!(got[0]["subject"], subject.as_str());
}

#[tokio::test]
async fn mqtt_feed_over_mutual_tls() {
    let broker = tls_broker(BrokerKind::MosquittoMutual).await;
    let s = Server::start(&["--dev", "--allow-egress", &broker.allow()]).await;
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let (ca, cert, key) = (
        read(&broker.ca),
        read(&broker.client_cert),
        read(&broker.client_key),
    );
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let topic = uniq("nimbus-tls/");
    let feed_with = |params: Value| {
        let (s, topic, url) = (&s, topic.clone(), url.clone());
        async move {
            let trigger = uniq("mqtls");
            let action = pipeline(s, &trigger).await;
            let mut p = json!({"url": url, "topic": topic});
            for (k, v) in params.as_object().unwrap() {
                p[k] = v.clone();
            }
            let created = create_feed(s, "mqtt/subscribe", &trigger, p).await;
            (action, created)
        }
    };
    // Verifies the broker with our CA and presents the client certificate: receives.
    let (action, created) =
        feed_with(json!({"caCert": ca, "clientCert": cert, "clientKey": key})).await;
    assert_eq!(
        created["config"]["clientKey"], "********",
        "the key is not shown back"
    );
    // No client certificate: the broker refuses the connection.
    let (no_cert, _) = feed_with(json!({"caCert": ca})).await;
    // The system's roots cannot verify this broker.
    let (no_ca, _) = feed_with(json!({"clientCert": cert, "clientKey": key})).await;
    let t = Instant::now();
    let got = loop {
        run(std::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &broker.port.to_string(),
                "--cafile",
            ])
            .arg(&broker.ca)
            .arg("--cert")
            .arg(&broker.client_cert)
            .arg("--key")
            .arg(&broker.client_key)
            .args(["-q", "1", "-t", &topic, "-m", r#"{"temp": 42}"#]));
        let got = results(&s, &action, 0, Duration::from_secs(1)).await;
        if !got.is_empty() {
            break got;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no message over TLS");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(got[0]["payload"]["temp"], 42);
    assert_eq!(got[0]["topic"], topic.as_str());
    for a in [&no_cert, &no_ca] {
        assert!(results(&s, a, 0, Duration::from_secs(1)).await.is_empty());
    }

    // A bad CA is refused when the feed is created, with the reason.
    let third = uniq("mqtls");
    pipeline(&s, &third).await;
    let (st, v) = feed(
        &s,
        "mqtt/subscribe",
        json!({"lifecycleEvent": "CREATE", "triggerName": format!("/guest/{third}"), "authKey": GUEST,
               "url": "mqtts://127.0.0.1:8883", "topic": "t", "caCert": "garbage"}),
    )
    .await;
    // (A feed action's error is an application error of its activation, hence 502.)
    assert_eq!(st, 502, "{v}");
    assert!(
        v["response"]["result"]["error"]
            .as_str()
            .unwrap()
            .contains("caCert"),
        "{v}"
    );
}

#[tokio::test]
async fn feed_create_rejects_bad_parameters_and_foreign_triggers() {
    let s = Server::start(&["--dev"]).await;
    let trigger = uniq("bad");
    pipeline(&s, &trigger).await;
    for (action, params, needle) in [
        ("mqtt/subscribe", json!({"topic": "a/#"}), "needs 'url'"),
        (
            "mqtt/subscribe",
            json!({"url": "mqtt://127.0.0.1", "topic": "a/#/b"}),
            "topic filter",
        ),
        (
            "mqtt/subscribe",
            json!({"url": "mqtt://127.0.0.1", "topic": "a", "qos": 2}),
            "'qos'",
        ),
        ("alarms/alarm", json!({"cron": "* * *"}), "5 fields"),
        (
            "alarms/alarm",
            json!({"cron": "* * * * *", "timezone": "Nowhere/Land"}),
            "timezone",
        ),
        (
            "alarms/once",
            json!({"date": "2001-01-01T00:00:00Z"}),
            "in the past",
        ),
        ("alarms/interval", json!({"minutes": 0}), "minutes"),
        (
            "nats/subscribe",
            json!({"url": "nats://127.0.0.1:4222"}),
            "subject",
        ),
        (
            "postgres/changes",
            json!({"url": "host=127.0.0.1", "table": "x; drop"}),
            "identifier",
        ),
        ("webhook", json!({"verify": "maybe"}), "'verify'"),
    ] {
        let mut body = params.as_object().unwrap().clone();
        body.insert("lifecycleEvent".into(), json!("CREATE"));
        body.insert("triggerName".into(), json!(format!("/guest/{trigger}")));
        let (st, v) = feed(&s, action, Value::Object(body)).await;
        assert_eq!(st, 502, "{action}: {v}");
        let err = v["response"]["result"]["error"].as_str().unwrap();
        assert!(err.contains(needle), "{action}: {err}");
    }
    // A trigger of another namespace.
    let (st, v) = feed(
        &s,
        "alarms/alarm",
        json!({"lifecycleEvent": "CREATE", "triggerName": "/whisk.system/t", "cron": "* * * * *"}),
    )
    .await;
    assert_eq!(st, 502);
    assert!(
        v["response"]["result"]["error"]
            .as_str()
            .unwrap()
            .contains("not in your namespace")
    );
    // A trigger that does not exist.
    let (st, v) = feed(
        &s,
        "alarms/alarm",
        json!({"lifecycleEvent": "CREATE", "triggerName": "/guest/nope", "cron": "* * * * *"}),
    )
    .await;
    assert_eq!(st, 502);
    assert!(
        v["response"]["result"]["error"]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );
    // Unknown lifecycle event.
    let (st, _) = lifecycle(&s, "alarms/alarm", &trigger, "EXPLODE").await;
    assert_eq!(st, 502);
}

/// Feeds aimed at the host (issue 13): the egress policy refuses loopback, link-local and
/// Unix-socket destinations when the feed is created, with the policy's reason, so nothing is
/// installed in the host's database and nothing is registered.
#[tokio::test]
async fn feeds_into_the_host_are_refused_at_create_with_the_policy_reason() {
    let s = Server::start(&["--dev"]).await;
    let (db, conn) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test",
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let table = uniq("egress_");
    db.batch_execute(&format!(
        "CREATE TABLE {table} (id serial PRIMARY KEY, v text)"
    ))
    .await
    .unwrap();
    let trigger = uniq("eg");
    pipeline(&s, &trigger).await;
    let pg = |url: &str| json!({"url": url, "table": table});
    for (action, params, needle) in [
        (
            "postgres/changes",
            pg("host=127.0.0.1 port=5432 user=postgres dbname=test"),
            "connection to 127.0.0.1:5432 refused by the egress policy: loopback addresses",
        ),
        (
            "postgres/changes",
            pg("postgres://postgres@localhost:5432/test"),
            "connection to localhost:5432 (",
        ),
        (
            "postgres/changes",
            pg("host=10.0.0.1,127.0.0.1 user=postgres dbname=test"),
            "connection to 10.0.0.1:5432 refused by the egress policy: private network",
        ),
        (
            "postgres/changes",
            pg("host=/var/run/postgresql user=postgres dbname=test"),
            "Unix-socket PostgreSQL hosts are not reachable",
        ),
        (
            "mqtt/subscribe",
            json!({"url": "mqtt://127.0.0.1:1883", "topic": "t"}),
            "connection to 127.0.0.1:1883 refused by the egress policy",
        ),
        (
            "mqtt/subscribe",
            json!({"url": "mqtts://[::1]:8883", "topic": "t"}),
            "connection to [::1]:8883 refused by the egress policy",
        ),
        (
            "nats/subscribe",
            json!({"url": "nats://127.0.0.1:4222", "subject": "s"}),
            "connection to 127.0.0.1:4222 refused by the egress policy",
        ),
        (
            "nats/subscribe",
            json!({"url": "nats://169.254.169.254:4222", "subject": "s"}),
            "link-local addresses",
        ),
    ] {
        let mut body = params.as_object().unwrap().clone();
        body.insert("lifecycleEvent".into(), json!("CREATE"));
        body.insert("triggerName".into(), json!(format!("/guest/{trigger}")));
        let (st, v) = feed(&s, action, Value::Object(body)).await;
        // Refused before anything runs or is stored: 403 with the policy's reason.
        assert_eq!(st, 403, "{action}: {v}");
        let err = v["error"].as_str().unwrap();
        assert!(err.contains(needle), "{action}: {err}");
        if needle.contains("refused by the egress policy") {
            assert!(err.contains("--allow-egress"), "{action}: {err}");
        }
        let (st, _) = lifecycle(&s, action, &trigger, "READ").await;
        assert_eq!(st, 502, "{action}: nothing may be registered");
    }
    let triggers: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM pg_trigger WHERE tgrelid = '{table}'::regclass"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        triggers, 0,
        "a trigger was installed in the host's database"
    );
    db.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

/// A PostgreSQL feed aimed at a port that accepts and never answers fails within the connect
/// timeout with a clear message (it held the request for 400 s before); a closed port reads
/// "could not connect", like any unreachable one.
#[tokio::test]
async fn postgres_feed_at_a_silent_port_fails_within_the_timeout() {
    // The kernel completes connections into the backlog; nobody ever answers them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (a, b) = (
        format!("127.0.0.1:{silent_port}"),
        format!("127.0.0.1:{closed_port}"),
    );
    let s = Server::start(&["--dev", "--allow-egress", &a, "--allow-egress", &b]).await;
    let trigger = uniq("silent");
    pipeline(&s, &trigger).await;
    for (port, needle) in [
        (
            silent_port,
            format!(
                "could not connect to 127.0.0.1:{silent_port}: no PostgreSQL handshake within 10 s"
            ),
        ),
        (
            closed_port,
            format!("could not connect to 127.0.0.1:{closed_port}"),
        ),
    ] {
        let (st, v) = feed(
            &s,
            "postgres/changes",
            json!({"lifecycleEvent": "CREATE", "triggerName": format!("/guest/{trigger}"),
                   "url": format!("host=127.0.0.1 port={port} user=postgres dbname=test"),
                   "table": "t"}),
        )
        .await;
        assert_eq!(st, 502, "{v}");
        let err = v["response"]["result"]["error"].as_str().unwrap();
        assert!(err.contains(&needle), "{err}");
    }
    drop(silent);
}

/// A TCP proxy on a fixed port that can be stopped (dropping every connection) and restarted.
struct Proxy {
    port: u16,
    target: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let mut p = Proxy {
            port,
            target,
            task: None,
        };
        p.up().await;
        p
    }

    async fn up(&mut self) {
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                conns.spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        }));
    }

    /// Stops listening and cuts every proxied connection (the JoinSet aborts them on drop).
    fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[tokio::test]
async fn mqtt_feed_reconnects_after_the_broker_goes_away_and_gets_what_was_published_meanwhile() {
    let mut proxy = Proxy::start(1883).await;
    let allow = format!("127.0.0.1:{}", proxy.port);
    let s = Server::start(&["--dev", "--allow-egress", &allow]).await;
    let trigger = uniq("mqr");
    let action = pipeline(&s, &trigger).await;
    let topic = format!("{}/x", uniq("nimbus-test/"));
    create_feed(
        &s,
        "mqtt/subscribe",
        &trigger,
        json!({"url": format!("mqtt://127.0.0.1:{}", proxy.port), "topic": topic, "qos": 1}),
    )
    .await;
    let c = mqtt_publisher(1883).await;
    publish_until(&s, &c, &topic, br#"{"n": 0}"#, &action, 1).await;
    let seen = results(&s, &action, 1, Duration::from_secs(5)).await.len();

    // The broker "goes away" for the feed; QoS 1 messages published meanwhile wait in its
    // persistent session.
    proxy.down();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in 1..=3 {
        c.publish(
            &topic,
            rumqttc::QoS::AtLeastOnce,
            false,
            format!("{{\"n\": {n}}}").into_bytes(),
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Still serving (not fatal).
    let (st, _) = s.get("triggers").await;
    assert_eq!(st, 200);
    proxy.up().await;
    let got = results(&s, &action, seen + 3, Duration::from_secs(90)).await;
    let ns: HashSet<i64> = got
        .iter()
        .filter_map(|e| e["payload"]["n"].as_i64())
        .collect();
    for n in 1..=3 {
        assert!(
            ns.contains(&n),
            "message {n} published while disconnected was delivered: {ns:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Alarms

#[tokio::test]
async fn alarm_feed_survives_a_restart_without_doubling_or_losing_slots() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut s = Server::start_in(&dir, &["--dev"], None).await;
    let trigger = uniq("al");
    let action = pipeline(&s, &trigger).await;
    let created = create_feed(
        &s,
        "alarms/alarm",
        &trigger,
        json!({"cron": "*/2 * * * * *", "trigger_payload": {"kind": "tick"}}),
    )
    .await;
    assert_eq!(created["config"]["cron"], "*/2 * * * * *");
    let first = results(&s, &action, 2, Duration::from_secs(30)).await;
    assert_eq!(first[0]["kind"], "tick");
    assert_cloudevent(&first[0], "nimbus.alarms.alarm");

    // Restart (SIGTERM), staying down across at least one slot.
    s.sigterm();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = Server::start_in(&dir, &["--dev"], None).await;
    let n_before = first.len();
    let got = results(&s, &action, n_before + 3, Duration::from_secs(40)).await;
    let ids: Vec<&str> = got.iter().filter_map(|e| e["id"].as_str()).collect();
    let unique: HashSet<&&str> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no slot fired twice: {ids:?}");
    // Every fired slot is on the 2-second grid.
    for e in &got {
        let t = e["time"].as_str().unwrap();
        let secs: u32 = t[17..19].parse().unwrap();
        assert_eq!(secs % 2, 0, "slot time {t}");
    }
    // The slot missed while down was caught up: the gap between consecutive fired slots around
    // the restart is not larger than the downtime.
    let mut times: Vec<&str> = got.iter().map(|e| e["time"].as_str().unwrap()).collect();
    times.sort();
    let (st, read) = lifecycle(&s, "alarms/alarm", &trigger, "READ").await;
    assert_eq!(st, 200);
    assert!(
        read["response"]["result"]["status"]["fires"]
            .as_u64()
            .unwrap()
            >= (n_before + 3) as u64
    );

    // PAUSE stops firing; UNPAUSE resumes.
    let (st, v) = lifecycle(&s, "alarms/alarm", &trigger, "PAUSE").await;
    assert_eq!(st, 200);
    assert_eq!(v["response"]["result"]["status"]["active"], false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let paused_count = results(&s, &action, 0, Duration::from_secs(1)).await.len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let still = results(&s, &action, 0, Duration::from_secs(1)).await.len();
    assert!(
        still <= paused_count + 1,
        "no fires while paused ({paused_count} → {still})"
    );
    let (st, _) = lifecycle(&s, "alarms/alarm", &trigger, "UNPAUSE").await;
    assert_eq!(st, 200);
    results(&s, &action, still + 1, Duration::from_secs(30)).await;
    let (st, _) = lifecycle(&s, "alarms/alarm", &trigger, "DELETE").await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn once_alarm_fires_once_and_deletes_its_trigger() {
    let s = Server::start(&["--dev"]).await;
    let trigger = uniq("once");
    let action = pipeline(&s, &trigger).await;
    let at = chrono::Utc::now() + chrono::Duration::seconds(3);
    create_feed(
        &s,
        "alarms/once",
        &trigger,
        json!({"date": at.to_rfc3339(), "deleteAfterFire": true, "trigger_payload": {"once": 1}}),
    )
    .await;
    let got = results(&s, &action, 1, Duration::from_secs(30)).await;
    assert_eq!(got[0]["once"], 1);
    assert_cloudevent(&got[0], "nimbus.alarms.once");
    let t = Instant::now();
    loop {
        let (st, _) = s.get(&format!("triggers/{trigger}")).await;
        if st == 404 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "trigger deleted after firing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (st, _) = lifecycle(&s, "alarms/once", &trigger, "READ").await;
    assert_eq!(st, 502, "the registration is gone too");
}

// ---------------------------------------------------------------------------------------------
// NATS

#[tokio::test]
async fn nats_core_and_jetstream_feeds() {
    let s = Server::start(&["--dev", "--allow-egress", "127.0.0.1:4222"]).await;
    let nc = async_nats::connect("127.0.0.1:4222").await.unwrap();

    // Core NATS subject.
    let trigger = uniq("nc");
    let action = pipeline(&s, &trigger).await;
    let subject = format!("nimbustest.{}", uniq("s"));
    create_feed(
        &s,
        "nats/subscribe",
        &trigger,
        json!({"url": "nats://127.0.0.1:4222", "subject": format!("{subject}.>")}),
    )
    .await;
    let t = Instant::now();
    loop {
        nc.publish(format!("{subject}.a"), r#"{"v": 1}"#.into())
            .await
            .unwrap();
        nc.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, l) = s.get(&format!("activations?name={action}&docs=true")).await;
        if let Some(a) = l.as_array().unwrap().first() {
            let ev = &a["response"]["result"];
            assert_eq!(ev["subject"], format!("{subject}.a"));
            assert_eq!(ev["payload"]["v"], 1);
            assert_cloudevent(ev, "nimbus.nats.message");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "core NATS message fired"
        );
    }

    // JetStream: a stream and a durable consumer, acknowledged after acceptance.
    let js = async_nats::jetstream::new(nc.clone());
    let stream = uniq("NIMBUSTEST");
    let subj = format!("nimbusjs.{}", uniq("s"));
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{subj}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    // Published before the feed exists: a durable consumer starts at the stream's beginning.
    for i in 0..3 {
        js.publish(format!("{subj}.r"), format!("{{\"i\": {i}}}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let trigger = uniq("js");
    let action = pipeline(&s, &trigger).await;
    let durable = uniq("dur");
    create_feed(
        &s,
        "nats/subscribe",
        &trigger,
        json!({"url": "nats://127.0.0.1:4222", "stream": stream, "durable": durable}),
    )
    .await;
    let got = results(&s, &action, 3, Duration::from_secs(30)).await;
    let mut seqs: Vec<u64> = got
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    seqs.sort();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert!(
        got.iter()
            .all(|e| e["id"].as_str().unwrap().starts_with(&format!("{stream}:")))
    );
    // Every message was acknowledged.
    let t = Instant::now();
    loop {
        let st = js.get_stream(&stream).await.unwrap();
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            st.get_consumer(&durable).await.unwrap();
        let info = c.info().await.unwrap();
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "acks: {info:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (st, _) = lifecycle(&s, "nats/subscribe", &trigger, "DELETE").await;
    assert_eq!(st, 200);
    let _ = js.delete_stream(&stream).await;
}

// ---------------------------------------------------------------------------------------------
// Webhook

#[tokio::test]
async fn webhook_verifies_signatures_and_accepts_cloudevents_in_both_modes() {
    let s = Server::start(&["--dev"]).await;
    let trigger = uniq("wh");
    let action = pipeline(&s, &trigger).await;
    let created = create_feed(&s, "webhook", &trigger, json!({})).await;
    let secret = created["config"]["secret"].as_str().unwrap().to_string();
    let path = created["path"].as_str().unwrap().to_string();
    assert!(path.starts_with("/api/v1/webhooks/"));
    let url = format!("{}{path}", s.base);
    let body = br#"{"ref": "refs/heads/main"}"#.to_vec();

    let r = s.client.post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), 401, "no signature");
    let r = s
        .client
        .post(&url)
        .header(
            "x-hub-signature-256",
            nimbus_feeds::webhook::sign("wrong-secret-123456", &body),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "wrong signature");
    let r = s
        .client
        .post(format!("{}/api/v1/webhooks/nope", s.base))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // GitHub style.
    let r = s
        .client
        .post(&url)
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", "d-1")
        .header(
            "x-hub-signature-256",
            nimbus_feeds::webhook::sign(&secret, &body),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let got = results(&s, &action, 1, Duration::from_secs(30)).await;
    assert_eq!(got[0]["data"]["ref"], "refs/heads/main");
    assert_eq!(got[0]["id"], "d-1");
    assert_cloudevent(&got[0], "com.github.push");

    // CloudEvents binary mode.
    let ce_body = br#"{"temp": 60}"#.to_vec();
    let r = s
        .client
        .post(&url)
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "bin-1")
        .header("ce-source", "/sensors/dev7")
        .header("ce-type", "com.example.reading")
        .header("ce-time", "2030-01-01T00:00:00Z")
        .header("ce-deviceid", "dev7")
        .header(
            "x-hub-signature-256",
            nimbus_feeds::webhook::sign(&secret, &ce_body),
        )
        .body(ce_body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // CloudEvents structured mode.
    let structured = serde_json::to_vec(&json!({
        "specversion": "1.0", "id": "str-1", "source": "/sensors/dev8", "type": "com.example.reading",
        "datacontenttype": "application/json", "data": {"temp": 61}
    }))
    .unwrap();
    let r = s
        .client
        .post(&url)
        .header(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )
        .header(
            "x-hub-signature-256",
            nimbus_feeds::webhook::sign(&secret, &structured),
        )
        .body(structured)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let got = results(&s, &action, 3, Duration::from_secs(30)).await;
    let bin = got.iter().find(|e| e["id"] == "bin-1").unwrap();
    assert_eq!(bin["source"], "/sensors/dev7");
    assert_eq!(bin["data"]["temp"], 60);
    assert_eq!(bin["deviceid"], "dev7");
    assert_eq!(bin["time"], "2030-01-01T00:00:00Z");
    let st = got.iter().find(|e| e["id"] == "str-1").unwrap();
    assert_eq!(st["data"]["temp"], 61);
    assert_cloudevent(st, "com.example.reading");

    // A structured event without a type is rejected.
    let bad =
        serde_json::to_vec(&json!({"specversion": "1.0", "id": "x", "source": "/s"})).unwrap();
    let r = s
        .client
        .post(&url)
        .header("content-type", "application/cloudevents+json")
        .header(
            "x-hub-signature-256",
            nimbus_feeds::webhook::sign(&secret, &bad),
        )
        .body(bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Token verification.
    let trigger2 = uniq("wt");
    pipeline(&s, &trigger2).await;
    let c2 = create_feed(
        &s,
        "webhook",
        &trigger2,
        json!({"verify": "token", "secret": "a-token-of-24-characters"}),
    )
    .await;
    let url2 = format!("{}{}", s.base, c2["path"].as_str().unwrap());
    let r = s
        .client
        .post(&url2)
        .bearer_auth("another-token-of-24-chars")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = s
        .client
        .post(&url2)
        .bearer_auth("a-token-of-24-characters")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // After DELETE the endpoint is gone.
    let (st, _) = lifecycle(&s, "webhook", &trigger2, "DELETE").await;
    assert_eq!(st, 200);
    let r = s
        .client
        .post(&url2)
        .bearer_auth("a-token-of-24-characters")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

#[tokio::test]
async fn postgres_changes_feed_fires_on_insert_update_delete_and_replays_after_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let opened = ["--dev", "--allow-egress", "127.0.0.1:5432"];
    let mut s = Server::start_in(&dir, &opened, None).await;
    let conn_str = "host=127.0.0.1 port=5432 user=postgres dbname=test";
    let (db, conn) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let table = uniq("readings_");
    db.batch_execute(&format!(
        "CREATE TABLE {table} (id serial PRIMARY KEY, device text, temp float8)"
    ))
    .await
    .unwrap();
    let trigger = uniq("pg");
    let action = pipeline(&s, &trigger).await;
    create_feed(
        &s,
        "postgres/changes",
        &trigger,
        json!({"url": conn_str, "table": format!("public.{table}")}),
    )
    .await;
    // The trigger is installed by CREATE: a change right after it is captured even before the
    // feed LISTENs (the change table holds it).
    db.execute(
        &format!("INSERT INTO {table} (device, temp) VALUES ('d1', 20.5)"),
        &[],
    )
    .await
    .unwrap();
    db.execute(&format!("UPDATE {table} SET temp = 99 WHERE id = 1"), &[])
        .await
        .unwrap();
    db.execute(&format!("DELETE FROM {table} WHERE id = 1"), &[])
        .await
        .unwrap();
    let got = results(&s, &action, 3, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 3, "one event per change: {got:?}");
    let ins = got.iter().find(|e| e["operation"] == "insert").unwrap();
    assert_eq!(ins["row"]["device"], "d1");
    assert_eq!(ins["table"], table.as_str());
    assert_cloudevent(ins, "nimbus.postgres.insert");
    let upd = got.iter().find(|e| e["operation"] == "update").unwrap();
    assert_eq!(upd["row"]["temp"], 99.0);
    assert_eq!(upd["old"]["temp"], 20.5);
    let del = got.iter().find(|e| e["operation"] == "delete").unwrap();
    assert_eq!(del["old"]["id"], 1);
    assert!(del["row"].is_null());

    // Changes committed while the server is down (killed) are delivered once it is back, and a
    // row far over NOTIFY's 8000-byte payload limit goes through whole. (First wait until the
    // feed has acknowledged what it fired, i.e. emptied its change table.)
    let changes = {
        use sha2::Digest as _;
        let h = sha2::Sha256::digest(format!("guest/{trigger}").as_bytes());
        format!("nimbus_feed_{}_changes", &hex::encode(h)[..16])
    };
    let t = Instant::now();
    loop {
        let left: i64 = db
            .query_one(&format!("SELECT count(*) FROM {changes}"), &[])
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{left} changes unacknowledged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.kill9();
    let big = "x".repeat(20_000);
    db.execute(
        &format!("INSERT INTO {table} (device, temp) VALUES ($1, 1.5), ('d3', 2.5)"),
        &[&big],
    )
    .await
    .unwrap();
    let s = Server::start_in(&dir, &opened, None).await;
    let got = results(&s, &action, 5, Duration::from_secs(30)).await;
    let devices: Vec<&str> = got
        .iter()
        .filter(|e| e["operation"] == "insert")
        .filter_map(|e| e["row"]["device"].as_str())
        .collect();
    assert!(devices.contains(&big.as_str()), "the big row arrived whole");
    assert!(devices.contains(&"d3"), "{devices:?}");
    let ids: Vec<&str> = got.iter().filter_map(|e| e["id"].as_str()).collect();
    let unique: HashSet<&&str> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "each change once: {ids:?}");

    // DELETE removes the database trigger.
    let (st, _) = lifecycle(&s, "postgres/changes", &trigger, "DELETE").await;
    assert_eq!(st, 200);
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relname = $1 AND NOT t.tgisinternal",
            &[&table],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = $1",
            &[&changes],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the change table is dropped too");
    db.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}
