//! The IoT example (examples/iot) end to end: a real Mosquitto broker (127.0.0.1:1883), the
//! MQTT feed, rule filters, functions that convert and drop readings, PostgreSQL
//! (127.0.0.1:5432, database `test`) for storage, processing after storage and alerts.
#![allow(clippy::unwrap_used)]

mod common;

use common::{GUEST, Server};
use reqwest::Method;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const PG: &str = "host=127.0.0.1 dbname=test";

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/iot")
}

fn psql(sql: &str) -> String {
    let out = Command::new("psql")
        .args([PG, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn count(sql: &str) -> i64 {
    psql(sql).parse().unwrap_or(-1)
}

struct DropSchema(String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                PG,
                "-qc",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0),
            ])
            .output();
    }
}

fn mosquitto_pub(topic: &str, msg: &str) {
    let st = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "1883",
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            msg,
        ])
        .status()
        .unwrap();
    assert!(st.success());
}

#[tokio::test]
async fn iot_pipeline_end_to_end() {
    assert!(
        std::net::TcpStream::connect("127.0.0.1:1883").is_ok(),
        "Mosquitto must listen on 127.0.0.1:1883"
    );
    // The functions reach PostgreSQL and the API on the host's loopback, which a sandboxed
    // function cannot (its own network namespace): see examples/iot/README.md. The MQTT feed
    // connects to the broker on loopback, which the operator must open.
    let s = Server::start(&["--dev", "--no-sandbox", "--allow-egress", "127.0.0.1:1883"]).await;
    let tag = format!(
        "{:x}",
        std::process::id() ^ (Instant::now().elapsed().as_nanos() as u32)
    );
    let schema = format!("iot_test_{tag}");
    let prefix = format!("nimbus-iot-{tag}");
    let _cleanup = DropSchema(schema.clone());

    let out = Command::new(example_dir().join("deploy.sh"))
        .env("NIMBUS", env!("CARGO_BIN_EXE_nimbus"))
        .env("NIMBUS_APIHOST", &s.base)
        .env("NIMBUS_AUTH", GUEST)
        .env("NIMBUS_NAMESPACE", "_")
        .env("PG", PG)
        .env("SCHEMA", &schema)
        .env("TOPIC_PREFIX", &prefix)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deploy.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Wait until the feed is subscribed: probes (dropped by normalize) until one fires.
    let t = Instant::now();
    loop {
        mosquitto_pub(&format!("{prefix}/probe/reading"), r#"{"probe": true}"#);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, v) = s.get("activations?name=readings&limit=1").await;
        if v.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the MQTT feed never fired"
        );
    }

    let out = Command::new("python3")
        .arg(example_dir().join("simulate.py"))
        .args(["--topic-prefix", &prefix, "--readings", "20"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stored = summary["stored"].as_i64().unwrap();
    let alerts = summary["alerts"].as_i64().unwrap();
    let malformed = summary["malformed"].as_i64().unwrap();
    assert!(stored > 0 && alerts > 0 && malformed > 0, "{summary}");

    // Everything valid is stored once, stats follow storage, alerts only above the threshold.
    let t = Instant::now();
    loop {
        let got = (
            count(&format!("SELECT count(*) FROM {schema}.readings")),
            count(&format!("SELECT count(*) FROM {schema}.alerts")),
            count(&format!(
                "SELECT coalesce(sum(readings), 0) FROM {schema}.stats"
            )),
        );
        if got == (stored, alerts, stored) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "(readings, alerts, stats) = {got:?}, expected ({stored}, {alerts}, {stored}); {summary}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (dev, n) in summary["perDevice"].as_object().unwrap() {
        assert_eq!(
            count(&format!(
                "SELECT readings FROM {schema}.stats WHERE device = '{dev}'"
            )),
            n.as_i64().unwrap(),
            "{dev}"
        );
    }
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM {schema}.alerts WHERE temp_c <= 50"
        )),
        0
    );
    // Fahrenheit readings were converted (all stored values are plausible Celsius).
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM {schema}.readings WHERE temp_c < 5 OR temp_c > 95"
        )),
        0
    );

    // Messages that are not JSON became dead letters of the namespace, not crashes.
    let (st, dls) = s
        .req(Method::GET, "deadletters?limit=200", GUEST, None)
        .await;
    assert_eq!(st, 200);
    let from_feed = dls
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| {
            d["event"].to_string().contains(&prefix) || d["source"].to_string().contains("mqtt")
        })
        .count() as i64;
    assert_eq!(from_feed, malformed, "{dls}");
    // No rule activation ended in a dead letter.
    assert!(
        dls.as_array()
            .unwrap()
            .iter()
            .all(|d| !d["source"].as_str().unwrap_or("").starts_with("rule:")),
        "{dls}"
    );
}
