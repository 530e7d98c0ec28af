//! WebAssembly functions (`wasm:wasi`, `wasm:http`) through a real `nimbus serve`: deploy
//! through the actions API, invoke blocking and async, limits, isolation, deploy-time
//! validation, web-action pass-through and capabilities. Preview 1 modules are built from WAT;
//! the `wasi:http` components are the fixtures in `tests/wasm-fixtures` (built with cargo for
//! `wasm32-wasip2`, see `scripts/test.sh`).
#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use common::{GUEST, Server};
use serde_json::{Value, json};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Echoes stdin to stdout and logs `echo: starting` on stderr; spins forever when the input's
/// byte 8 is `t` (as in `{"loop":true}`).
const ECHO_WAT: &str = include_str!("../../nimbus-wasm/tests/fixtures/echo.wat");

/// Grows memory 1 MiB at a time until refused, then traps.
const BOMB_WAT: &str = include_str!("../../nimbus-wasm/tests/fixtures/bomb.wat");

/// Increments a global and a byte of memory and prints both: `{"g":1,"m":1}` on a fresh instance.
const COUNTER_WAT: &str = include_str!("../../nimbus-wasm/tests/fixtures/counter.wat");

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn wat(src: &str) -> Vec<u8> {
    wat::parse_str(src).unwrap()
}

/// Builds a fixture component of `tests/wasm-fixtures` (once per test process; cargo serialises
/// concurrent builds) and returns its bytes.
fn fixture(name: &str) -> Vec<u8> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/wasm-fixtures");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("../../../../target"))
        .join("tmp/nimbus-wasm-fixtures");
    let file = match name {
        "noop" => "nimbus_wasm_noop.wasm",
        "probe" => "nimbus-wasm-probe.wasm",
        other => panic!("no fixture {other}"),
    };
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "--target", "wasm32-wasip2"])
        .arg("--manifest-path")
        .arg(dir.join(name).join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "building the {name} fixture failed (rustup target add wasm32-wasip2?)"
    );
    std::fs::read(target.join("wasm32-wasip2/release").join(file)).unwrap()
}

async fn start() -> Server {
    start_with(&[]).await
}

async fn start_with(extra: &[&str]) -> Server {
    let mut args = vec![
        "--dev",
        "--concurrent-invocations",
        "5000",
        "--invocations-per-minute",
        "100000",
    ];
    args.extend_from_slice(extra);
    Server::start(&args).await
}

async fn deploy(s: &Server, name: &str, kind: &str, bytes: &[u8], extra: Value) -> Value {
    let mut body = json!({"exec": {"kind": kind, "code": b64(bytes)}});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            body[k] = v;
        }
    }
    let (st, a) = s.put(&format!("actions/{name}?overwrite=true"), body).await;
    assert_eq!(st, 200, "{a}");
    a
}

async fn invoke(s: &Server, name: &str, params: Value) -> Value {
    let (st, v) = s
        .post(&format!("actions/{name}?blocking=true"), params)
        .await;
    assert!(st == 200 || st == 502 || st == 400, "{st} {v}");
    v
}

fn annotation<'a>(a: &'a Value, key: &str) -> Option<&'a Value> {
    a["annotations"]
        .as_array()?
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| &kv["value"])
}

#[tokio::test]
async fn wasi_module_deploys_with_inferred_kind_and_runs_blocking_and_async() {
    let s = start().await;
    let a = deploy(&s, "echo", "wasm", &wat(ECHO_WAT), json!({})).await;
    assert_eq!(a["exec"]["kind"], "wasm:wasi");
    assert_eq!(annotation(&a, "exec"), Some(&json!("wasm:wasi")));

    let v = invoke(&s, "echo", json!({"name": "Ada"})).await;
    assert_eq!(v["response"]["status"], "success", "{v}");
    assert_eq!(v["response"]["result"], json!({"name": "Ada"}));
    assert!(
        v["logs"].as_array().unwrap()[0]
            .as_str()
            .unwrap()
            .ends_with("stderr: echo: starting"),
        "{v}"
    );

    let (st, v) = s.post("actions/echo", json!({"n": 1})).await;
    assert_eq!(st, 202, "{v}");
    let rec = s
        .wait_activation(v["activationId"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(rec["response"]["result"], json!({"n": 1}));
}

#[tokio::test]
async fn infinite_loop_stops_within_its_timeout_and_the_next_invoke_works() {
    let s = start().await;
    deploy(
        &s,
        "spin",
        "wasm:wasi",
        &wat(ECHO_WAT),
        json!({"limits": {"timeout": 500}}),
    )
    .await;
    let v = invoke(&s, "spin", json!({"loop": true})).await;
    assert_eq!(v["response"]["status"], "action developer error", "{v}");
    assert!(
        v["response"]["result"]["error"]
            .as_str()
            .unwrap()
            .contains("time limit"),
        "{v}"
    );
    // The bound: stopped within the timeout plus 100 ms (as the record measures it).
    let duration = v["duration"].as_i64().unwrap();
    assert!(duration <= 600, "ran {duration} ms");
    let v = invoke(&s, "spin", json!({"after": 1})).await;
    assert_eq!(v["response"]["result"], json!({"after": 1}), "{v}");
}

#[tokio::test]
async fn memory_bomb_gets_memory_limit_exceeded() {
    let s = start().await;
    deploy(
        &s,
        "bomb",
        "wasm:wasi",
        &wat(BOMB_WAT),
        json!({"limits": {"memory": 128}}),
    )
    .await;
    let v = invoke(&s, "bomb", json!({})).await;
    assert_eq!(v["response"]["status"], "action developer error", "{v}");
    assert!(
        v["response"]["result"]["error"]
            .as_str()
            .unwrap()
            .contains("memory limit exceeded"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_concurrent_invocations_all_complete() {
    let s = Arc::new(start().await);
    deploy(&s, "echo", "wasm", &wat(ECHO_WAT), json!({})).await;
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let (st, v) = s.post("actions/echo?blocking=true", json!({"i": i})).await;
            (i, st, v)
        }));
    }
    for t in tasks {
        let (i, st, v) = t.await.unwrap();
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["response"]["result"], json!({"i": i}));
    }
}

#[tokio::test]
async fn invocations_never_see_each_others_memory() {
    let s = start().await;
    deploy(&s, "counter", "wasm", &wat(COUNTER_WAT), json!({})).await;
    for _ in 0..20 {
        let v = invoke(&s, "counter", json!({})).await;
        assert_eq!(v["response"]["result"], json!({"g": 1, "m": 1}), "{v}");
    }
}

#[tokio::test]
async fn functions_cannot_read_host_files_or_environment() {
    let s = start().await;
    deploy(&s, "probe", "wasm", &fixture("probe"), json!({})).await;
    let v = invoke(&s, "probe", json!({"envCount": true})).await;
    assert_eq!(v["response"]["result"], json!({"count": 0}), "{v}");
    // The server's own environment (PATH is always set) does not leak.
    let v = invoke(&s, "probe", json!({"env": "PATH"})).await;
    assert_eq!(v["response"]["result"], json!({"value": null}), "{v}");
    let db = s.dir.join("nimbus.db");
    for path in ["/etc/passwd", db.to_str().unwrap()] {
        let v = invoke(&s, "probe", json!({"readFile": path})).await;
        assert!(
            v["response"]["result"]["readError"].is_string(),
            "{path}: {v}"
        );
    }
}

#[tokio::test]
async fn bad_uploads_are_rejected_at_deploy() {
    let s = start().await;
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "not wasm",
            json!({"kind": "wasm", "code": b64(b"hello, this is not wasm")}),
            "not a WebAssembly binary",
        ),
        (
            "corrupt",
            json!({"kind": "wasm:wasi", "code": b64(b"\0asm\x01\0\0\0\x01\xff\xff\xff")}),
            "invalid WebAssembly",
        ),
        (
            "core module as wasm:http",
            json!({"kind": "wasm:http", "code": b64(&wat(ECHO_WAT))}),
            "wasm:http",
        ),
        (
            "text code",
            json!({"kind": "wasm:wasi", "code": "function main() {}"}),
            "base64",
        ),
    ];
    for (what, exec, message) in cases {
        let (st, v) = s.put("actions/bad", json!({"exec": exec})).await;
        assert_eq!(st, 400, "{what}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains(message),
            "{what}: {v}"
        );
    }
    // Capability annotations are checked too.
    let bad_annotations = [
        json!([{"key": "wasm-dir", "value": "static"}]),
        json!([{"key": "wasm-allowed-hosts", "value": ["*"]}]),
        json!([{"key": "wasm-env", "value": 3}]),
    ];
    for ann in bad_annotations {
        let (st, v) = s
            .put(
                "actions/bad",
                json!({"exec": {"kind": "wasm", "code": b64(&wat(ECHO_WAT))}, "annotations": ann}),
            )
            .await;
        assert_eq!(st, 400, "{ann}: {v}");
    }
    let (st, _) = s.get("actions/bad").await;
    assert_eq!(st, 404, "nothing was stored");
}

#[tokio::test]
async fn wasm_http_component_invoked_with_parameters() {
    let s = start().await;
    let a = deploy(&s, "probe", "wasm", &fixture("probe"), json!({})).await;
    assert_eq!(a["exec"]["kind"], "wasm:http");
    let v = invoke(&s, "probe", json!({"name": "Ada"})).await;
    assert_eq!(
        v["response"]["result"],
        json!({"greeting": "Hello, Ada!"}),
        "{v}"
    );
}

#[tokio::test]
async fn wasm_http_web_action_passes_the_request_through() {
    let s = start().await;
    deploy(
        &s,
        "web",
        "wasm:http",
        &fixture("probe"),
        json!({"annotations": [{"key": "web-export", "value": true}]}),
    )
    .await;
    let url = format!(
        "{}/api/v1/web/guest/default/web/extra/path?x=1&y=two",
        s.base
    );
    let (u, k) = GUEST.split_once(':').unwrap();
    let r = s
        .client
        .put(&url)
        .header("x-status", "201")
        .header("x-custom", "hello")
        .header("content-type", "text/plain")
        .basic_auth(u, Some(k))
        .body("the body")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-probe"], "1");
    let multi: Vec<_> = r.headers().get_all("x-multi").iter().collect();
    assert_eq!(multi, ["a", "b"]);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/extra/path");
    assert_eq!(v["query"], "x=1&y=two");
    assert_eq!(v["body"], "the body");
    assert_eq!(v["headers"]["x-custom"], "hello");
    assert!(
        v["headers"].get("authorization").is_none(),
        "credentials are not passed on: {v}"
    );

    // Binary bodies go through byte for byte.
    let bytes: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let r = s
        .client
        .post(format!("{}/api/v1/web/guest/default/web/raw", s.base))
        .header("content-type", "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes);

    // A GET with no body; the method and the empty body arrive as they are.
    let r = s
        .client
        .get(format!("{}/api/v1/web/guest/default/web", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/");
    assert_eq!(v["body"], "");
}

/// A loopback HTTP server answering `hello` and counting connections.
async fn counting_server() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
                    )
                    .await;
            });
        }
    });
    (port, count)
}

fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in files {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_are_granted_only_as_declared() {
    // The listener is on loopback, which the egress policy refuses unless the operator opens
    // it: this server opens exactly its port.
    let (port, connections) = counting_server().await;
    let s = start_with(&["--allow-egress", &format!("127.0.0.1:{port}")]).await;
    let probe = fixture("probe");
    let archive = zip_of(&[
        ("main.wasm", &probe),
        ("static/hello.txt", b"hello bundle"),
        ("private/secret.txt", b"not for the guest"),
    ]);
    let a = deploy(
        &s,
        "caps",
        "wasm",
        &archive,
        json!({
            "annotations": [
                {"key": "wasm-dir", "value": "static"},
                {"key": "wasm-env", "value": ["TOKEN"]},
                {"key": "wasm-allowed-hosts", "value": [format!("127.0.0.1:{port}")]},
            ],
            "parameters": [{"key": "TOKEN", "value": "abc"}, {"key": "OTHER", "value": "x"}],
        }),
    )
    .await;
    assert_eq!(a["exec"]["kind"], "wasm:http");

    let v = invoke(&s, "caps", json!({"readFile": "/static/hello.txt"})).await;
    assert_eq!(
        v["response"]["result"],
        json!({"text": "hello bundle"}),
        "{v}"
    );
    let v = invoke(&s, "caps", json!({"readFile": "/private/secret.txt"})).await;
    assert!(v["response"]["result"]["readError"].is_string(), "{v}");
    let v = invoke(&s, "caps", json!({"env": "TOKEN"})).await;
    assert_eq!(v["response"]["result"], json!({"value": "abc"}), "{v}");
    let v = invoke(&s, "caps", json!({"env": "OTHER"})).await;
    assert_eq!(v["response"]["result"], json!({"value": null}), "{v}");

    // Another port of the allowed host: refused before any connection is made.
    let denied = format!("http://127.0.0.1:{}/", port.wrapping_add(1));
    let v = invoke(&s, "caps", json!({"fetch": denied})).await;
    assert!(v["response"]["result"]["fetchError"].is_string(), "{v}");
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    let v = invoke(
        &s,
        "caps",
        json!({"fetch": format!("http://127.0.0.1:{port}/")}),
    )
    .await;
    assert_eq!(
        v["response"]["result"],
        json!({"status": 200, "body": "hello"}),
        "{v}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 1);

    // Without the annotations the same archive gets nothing.
    deploy(&s, "nocaps", "wasm", &archive, json!({})).await;
    let v = invoke(&s, "nocaps", json!({"readFile": "/static/hello.txt"})).await;
    assert!(v["response"]["result"]["readError"].is_string(), "{v}");
    let v = invoke(
        &s,
        "nocaps",
        json!({"fetch": format!("http://127.0.0.1:{port}/")}),
    )
    .await;
    assert!(v["response"]["result"]["fetchError"].is_string(), "{v}");
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

/// The egress policy applies on top of a function's allowed hosts (issue 13): listing a
/// loopback listener, or the server itself, in `wasm-allowed-hosts` does not reach it unless
/// the operator opened it; no connection is made and the activation's logs say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_hosts_cannot_reach_the_host_without_the_operator() {
    let (port, connections) = counting_server().await;
    let s = start().await;
    let probe = fixture("probe");
    deploy(
        &s,
        "into-host",
        "wasm:http",
        &probe,
        json!({"annotations": [{"key": "wasm-allowed-hosts", "value": [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("127.0.0.1:{}", s.port),
        ]}]}),
    )
    .await;
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://127.0.0.1:{}/metrics", s.port),
    ] {
        let v = invoke(&s, "into-host", json!({"fetch": url})).await;
        assert!(
            v["response"]["result"]["fetchError"].is_string(),
            "{url}: {v}"
        );
        let logs = v["logs"].to_string();
        assert!(
            logs.contains("refused by the egress policy"),
            "{url}: {logs}"
        );
        assert!(logs.contains("loopback addresses"), "{url}: {logs}");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 0);

    // Opened by the operator: the same function reaches exactly that port.
    let s2 = start_with(&["--allow-egress", &format!("127.0.0.1:{port}")]).await;
    deploy(
        &s2,
        "into-host",
        "wasm:http",
        &probe,
        json!({"annotations": [{"key": "wasm-allowed-hosts", "value": [
            format!("127.0.0.1:{port}"),
            format!("127.0.0.1:{}", s2.port),
        ]}]}),
    )
    .await;
    let v = invoke(
        &s2,
        "into-host",
        json!({"fetch": format!("http://127.0.0.1:{port}/")}),
    )
    .await;
    assert_eq!(
        v["response"]["result"],
        json!({"status": 200, "body": "hello"}),
        "{v}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    let v = invoke(
        &s2,
        "into-host",
        json!({"fetch": format!("http://127.0.0.1:{}/metrics", s2.port)}),
    )
    .await;
    assert!(v["response"]["result"]["fetchError"].is_string(), "{v}");
}

#[tokio::test]
async fn cli_creates_an_action_from_a_wasm_file() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("echo.wasm");
    std::fs::write(&file, wat(ECHO_WAT)).unwrap();
    let http = dir.path().join("probe.wasm");
    std::fs::write(&http, fixture("probe")).unwrap();
    let config = dir.path().join("config.json");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nimbus"))
            .args(args)
            .args(["--apihost", &s.base, "--auth", GUEST, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nimbus {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    cli(&["action", "create", "clifn", file.to_str().unwrap()]);
    cli(&[
        "action",
        "create",
        "clihttp",
        http.to_str().unwrap(),
        "--kind",
        "wasm:http",
    ]);
    let (_, a) = s.get("actions/clifn").await;
    assert_eq!(a["exec"]["kind"], "wasm:wasi");
    let (_, a) = s.get("actions/clihttp").await;
    assert_eq!(a["exec"]["kind"], "wasm:http");
    let v = invoke(&s, "clifn", json!({"via": "cli"})).await;
    assert_eq!(v["response"]["result"], json!({"via": "cli"}), "{v}");
}

#[path = "../../nimbus-wasm/tests/support/examples.rs"]
mod examples_support;
use examples_support::example;

/// Every example of `examples/wasm`, deployed through the actions API as a user would (kind
/// inferred from the binary) and run: commands through the invoke API, HTTP components as web
/// actions and with parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_deploy_through_the_api_and_run() {
    let s = start().await;
    let limits = json!({"limits": {"memory": 256, "timeout": 30000}});
    for (file, language) in [
        ("rust-wasi-p1.wasm", None),
        ("rust-wasi.wasm", None),
        ("python-wasi.wasm", Some("python")),
        ("js-wasi.wasm", Some("javascript")),
    ] {
        let name = file.trim_end_matches(".wasm");
        let a = deploy(&s, name, "wasm", &example(file), limits.clone()).await;
        assert_eq!(a["exec"]["kind"], "wasm:wasi", "{file}");
        let v = invoke(&s, name, json!({"name": "Ada"})).await;
        let r = &v["response"]["result"];
        assert_eq!(r["greeting"], "Hello, Ada!", "{file}: {v}");
        if let Some(l) = language {
            assert_eq!(r["language"], l, "{file}: {v}");
        }
        assert!(
            v["logs"].as_array().is_some_and(|l| l
                .iter()
                .any(|x| x.as_str().is_some_and(|x| x.ends_with("greeting Ada")))),
            "{file}: stderr becomes the logs: {v}"
        );
        let v = invoke(&s, name, json!({"name": "Bo", "fail": true})).await;
        assert_eq!(
            v["response"]["status"], "action developer error",
            "{file}: {v}"
        );
    }
    for (file, language) in [
        ("rust-http.wasm", None),
        ("python-http.wasm", Some("python")),
        ("js-http.wasm", Some("javascript")),
    ] {
        let name = file.trim_end_matches(".wasm");
        let mut extra = limits.clone();
        extra["annotations"] = json!([{"key": "web-export", "value": true}]);
        let a = deploy(&s, name, "wasm", &example(file), extra).await;
        assert_eq!(a["exec"]["kind"], "wasm:http", "{file}");
        let v = invoke(&s, name, json!({"name": "Ada"})).await;
        assert_eq!(
            v["response"]["result"]["greeting"], "Hello, Ada!",
            "{file}: {v}"
        );
        let r = s
            .client
            .post(format!("{}/api/v1/web/guest/default/{name}/hello", s.base))
            .json(&json!({"name": "Grace"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{file}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["greeting"], "Hello, Grace!", "{file}: {v}");
        assert_eq!(v["method"], "POST", "{file}: {v}");
        assert_eq!(v["path"], "/hello", "{file}: {v}");
        if let Some(l) = language {
            assert_eq!(v["language"], l, "{file}: {v}");
        }
        let r = s
            .client
            .get(format!(
                "{}/api/v1/web/guest/default/{name}/missing",
                s.base
            ))
            .send()
            .await
            .unwrap();
        if language.is_some() {
            assert_eq!(
                r.status(),
                404,
                "{file}: the component's own status goes through"
            );
        }
    }
}
