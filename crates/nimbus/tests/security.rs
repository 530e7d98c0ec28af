//! Multi-tenant trust (issue 13) against real `nimbus serve` processes: who may reach which
//! route, keys at rest and in use, and the HTTP listener's limits.
#![allow(clippy::unwrap_used)]

mod common;

use common::{GUEST, SYSTEM, Server};
use reqwest::Method;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

fn nimbus() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_nimbus"))
}

/// `nimbus admin …` on a data dir; returns stdout (trimmed). Fails the test on a non-zero exit.
fn admin(dir: &Path, args: &[&str]) -> String {
    let out = nimbus()
        .arg("admin")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nimbus admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn auth_file(dir: &Path, ns: &str) -> String {
    std::fs::read_to_string(dir.join("auth").join(ns))
        .unwrap()
        .trim()
        .to_string()
}

/// Polls `GET /namespaces` with `key` until it answers `want`; the credential cache makes a
/// change made by another process visible within seconds.
async fn wait_status(s: &Server, key: &str, want: u16) {
    let t = Instant::now();
    loop {
        let (st, _) = s.req(Method::GET, "../../namespaces", key, None).await;
        if st == want {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "key still answers {st}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn call(
    s: &Server,
    method: Method,
    path: &str,
    auth: Option<(&str, &str)>,
    body: &str,
) -> (u16, String) {
    let mut rb = s
        .client
        .request(method, format!("{}{path}", s.base))
        .body(body.to_string());
    if let Some((u, k)) = auth {
        rb = rb.basic_auth(u, Some(k));
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn split(key: &str) -> (&str, &str) {
    key.split_once(':').unwrap()
}

#[tokio::test]
async fn anonymous_callers_reach_only_functions_their_owner_made_public() {
    let s = Server::start(&["--dev"]).await;
    let alice = admin(&s.dir, &["namespace", "create", "alice"]);
    let code = "function main(p){ return {p: p.p, token: p.token, headers: p.__ow_headers}; }";
    for (path, body) in [
        (
            "actions/secret",
            json!({"exec": {"kind": "nodejs:20", "code": code}, "parameters": [{"key": "p", "value": "alice-private"}]}),
        ),
        (
            "packages/pkg",
            json!({"parameters": [{"key": "token", "value": "package-secret"}]}),
        ),
        (
            "actions/pkg/leak",
            json!({"exec": {"kind": "nodejs:20", "code": code}}),
        ),
        (
            "actions/open",
            json!({"exec": {"kind": "nodejs:20", "code": code}, "annotations": [{"key": "openfaas-public", "value": true}]}),
        ),
    ] {
        let (st, v) = s.req(Method::PUT, path, &alice, Some(body)).await;
        assert_eq!(st, 200, "{path}: {v}");
    }

    // Anonymous: a private action, a packaged action (whose package parameters would leak)
    // and a missing one all read the same: not found.
    let (st_missing, missing) = call(&s, Method::POST, "/function/ghost.alice", None, "{}").await;
    assert_eq!(st_missing, 404);
    for path in [
        "/function/secret.alice",
        "/function/secret.alice/sub/path",
        "/function/pkg%2Fleak.alice",
        "/async-function/secret.alice",
        "/async-function/pkg%2Fleak.alice",
    ] {
        let (st, text) = call(&s, Method::POST, path, None, "{}").await;
        assert_eq!(st, 404, "{path}: {text}");
        assert_eq!(
            text.replace("secret.alice", "ghost.alice")
                .replace("pkg/leak.alice", "ghost.alice"),
            missing,
            "{path}: a refusal reads like a missing function"
        );
        assert!(!text.contains("private") && !text.contains("package-secret"));
    }
    // Another namespace's key is no better than none.
    let (st, _) = call(
        &s,
        Method::POST,
        "/function/secret.alice",
        Some(split(GUEST)),
        "{}",
    )
    .await;
    assert_eq!(st, 404);
    // A wrong Basic credential is refused outright.
    let (st, _) = call(
        &s,
        Method::POST,
        "/function/secret.alice",
        Some(("nobody", "wrong")),
        "{}",
    )
    .await;
    assert_eq!(st, 401);

    // The owner's key reaches it; the credential does not reach the function.
    let (st, text) = call(
        &s,
        Method::POST,
        "/function/secret.alice",
        Some(split(&alice)),
        "{}",
    )
    .await;
    assert_eq!(st, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["p"], "alice-private");
    assert!(v["headers"].get("authorization").is_none(), "{v}");
    // So does the gateway credential (`--dev`: admin:nimbus-dev).
    let (st, _) = call(
        &s,
        Method::POST,
        "/function/secret.alice",
        Some(("admin", "nimbus-dev")),
        "{}",
    )
    .await;
    assert_eq!(st, 200);
    // An action its owner opened is public, also asynchronously.
    let (st, text) = call(&s, Method::POST, "/function/open.alice", None, "{}").await;
    assert_eq!(st, 200, "{text}");
    let (st, _) = call(&s, Method::POST, "/async-function/open.alice", None, "{}").await;
    assert_eq!(st, 202);
    // The owner can still reach packaged actions through the OpenWhisk API only.
    let (st, v) = s
        .req(
            Method::POST,
            "actions/pkg/leak?blocking=true&result=true",
            &alice,
            Some(json!({})),
        )
        .await;
    assert_eq!((st, &v["token"]), (200, &json!("package-secret")));
}

/// Fills the route template with placeholder values.
fn concrete(route: &str) -> String {
    route
        .replace("{ns}", "guest")
        .replace("{*path}", "x")
        .replace("{*rest}", "default/x")
        .replace("{name}", "x")
        .replace("{id}", "x")
        .replace("{file}", "app.js")
}

#[tokio::test]
async fn every_route_has_an_access_rule_and_refuses_anonymous_callers() {
    use nimbus_api::access::{ROUTES, Rule};
    let s = Server::start(&["--dev"]).await;
    for (route, rule) in ROUTES {
        let path = concrete(route);
        let mut seen = Vec::new();
        for m in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
            let (st, text) = call(&s, m.clone(), &path, None, "{}").await;
            assert_ne!(st, 500, "{m} {path}: {text}");
            seen.push((m, st));
        }
        let ok = |st: u16| (200..300).contains(&st);
        let check = match rule {
            Rule::Public | Rule::MetricsToken => seen.iter().any(|(_, st)| ok(*st)),
            Rule::NamespaceKey | Rule::GatewayAdmin | Rule::BuildSignature => {
                seen.iter().all(|(_, st)| !ok(*st)) && seen.iter().any(|(_, st)| *st == 401)
            }
            // Nothing named `x` is public, exported or registered: not found.
            Rule::FunctionCall | Rule::WebAction | Rule::WebhookSecret => {
                seen.iter().all(|(_, st)| !ok(*st)) && seen.iter().any(|(_, st)| *st == 404)
            }
        };
        assert!(check, "{route} ({rule:?}): anonymous answers {seen:?}");
    }
    // docs/security.md publishes the same table.
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/security.md"),
    )
    .unwrap();
    for (route, rule) in ROUTES {
        let row = format!("| `{route}` | {} |", rule.describe());
        assert!(doc.contains(&row), "docs/security.md lacks the row {row}");
    }
}

#[tokio::test]
async fn development_keys_work_only_with_dev() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut s = Server::start_in(&dir, &["--dev"], None).await;
    let (st, _) = s
        .put(
            "actions/hello",
            json!({"exec": {"kind": "nodejs:20", "code": "function main(){return {v: 1}}"}}),
        )
        .await;
    assert_eq!(st, 200);
    s.sigterm();

    let s = Server::start_in(&dir, &[], None).await;
    // Neither public key opens anything any more: not guest, not whisk.system, whose catalog
    // every tenant invokes.
    for key in [GUEST, SYSTEM] {
        let (st, _) = s.req(Method::GET, "actions", key, None).await;
        assert_eq!(st, 401, "{key}");
    }
    let (st, _) = s
        .client
        .put(format!(
            "{}/api/v1/namespaces/whisk.system/actions/utils/echo?overwrite=true",
            s.base
        ))
        .basic_auth(split(SYSTEM).0, Some(split(SYSTEM).1))
        .json(&json!({"exec": {"kind": "nodejs:20", "code": "function main(){return {pwned: true}}"}}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(st, 401);
    // The generated keys in the 0600 files work, and nothing was lost.
    let guest = auth_file(&dir, "guest");
    assert_ne!(guest, GUEST);
    let (st, v) = s.req(Method::GET, "actions/hello", &guest, None).await;
    assert_eq!(st, 200, "{v}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("auth").join("guest"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn keys_are_stored_as_digests_and_never_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut s = Server::start_in(&dir, &[], None).await;
    let mut stdout = s.child.as_mut().unwrap().stdout.take().unwrap();
    let guest = auth_file(&dir, "guest");
    let system = auth_file(&dir, "whisk.system");
    let (st, _) = s.req(Method::GET, "actions", &guest, None).await;
    assert_eq!(st, 200);
    s.sigterm();
    let mut printed = String::new();
    stdout.read_to_string(&mut printed).unwrap();
    for key in [&guest, &system] {
        let secret = split(key).1;
        assert!(
            !printed.contains(secret),
            "a key was printed to a non-terminal stdout"
        );
        for f in ["nimbus.db", "nimbus.db-wal"] {
            if let Ok(bytes) = std::fs::read(dir.join(f)) {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "the secret is readable in {f}"
                );
            }
        }
    }
}

#[tokio::test]
async fn keys_rotate_with_grace_and_revoke() {
    let s = Server::start(&[]).await;
    let first = auth_file(&s.dir, "guest");
    wait_status(&s, &first, 200).await;

    // Rotation with a grace period: both secrets work, same uuid; the file holds the new key.
    let second = admin(&s.dir, &["key", "rotate", "guest", "--grace", "3600"]);
    assert_eq!(split(&second).0, split(&first).0);
    assert_ne!(second, first);
    assert_eq!(auth_file(&s.dir, "guest"), second);
    wait_status(&s, &second, 200).await;
    wait_status(&s, &first, 200).await;

    // Rotation without grace: the previous secrets stop working.
    let third = admin(&s.dir, &["key", "rotate", "guest"]);
    wait_status(&s, &third, 200).await;
    wait_status(&s, &second, 401).await;
    wait_status(&s, &first, 401).await;

    // A second key, then revoking everything.
    let extra = admin(&s.dir, &["key", "add", "guest"]);
    wait_status(&s, &extra, 200).await;
    let listed = admin(&s.dir, &["key", "list", "guest"]);
    assert!(listed.contains(split(&extra).0) && listed.contains(split(&third).0));
    assert!(
        !listed.contains(split(&extra).1),
        "secrets are never listed"
    );
    admin(&s.dir, &["key", "revoke", "guest", "--all"]);
    wait_status(&s, &extra, 401).await;
    wait_status(&s, &third, 401).await;
    assert!(!s.dir.join("auth").join("guest").exists());
}

#[tokio::test]
async fn functions_get_short_lived_keys_not_the_namespace_key() {
    let s = Server::start(&[]).await;
    let guest = auth_file(&s.dir, "guest");
    let code = "function main(){ return {key: process.env.__OW_API_KEY}; }";
    let (st, v) = s
        .req(
            Method::PUT,
            "actions/k",
            &guest,
            Some(json!({"exec": {"kind": "nodejs:20", "code": code},
                "annotations": [{"key": "provide-api-key", "value": true}]})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = s
        .req(
            Method::POST,
            "actions/k?blocking=true&result=true",
            &guest,
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let key = v["key"].as_str().unwrap().to_string();
    assert_ne!(key, guest);
    assert_eq!(
        split(&key).0,
        split(&guest).0,
        "bound to the caller's credential"
    );
    // It acts for the namespace through the API...
    let (st, _) = s.req(Method::GET, "actions", &key, None).await;
    assert_eq!(st, 200);
    // ...its expiry is signed...
    let (u, secret) = split(&key);
    let mut parts: Vec<&str> = secret.splitn(3, '.').collect();
    let later = (parts[1].parse::<i64>().unwrap() + 3_600_000).to_string();
    parts[1] = &later;
    let forged = format!("{u}:{}", parts.join("."));
    let (st, _) = s.req(Method::GET, "actions", &forged, None).await;
    assert_eq!(st, 401);
    // ...and it dies with its credential.
    admin(&s.dir, &["key", "revoke", "guest", "--all"]);
    wait_status(&s, &key, 401).await;
}

/// Reads until the server closes the connection (or `within` passes); returns what came.
fn read_until_closed(stream: &mut std::net::TcpStream, within: Duration) -> (bool, String) {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while t.elapsed() < within {
        match stream.read(&mut buf) {
            Ok(0) => return (true, String::from_utf8_lossy(&got).into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (true, String::from_utf8_lossy(&got).into()),
        }
    }
    (false, String::from_utf8_lossy(&got).into())
}

#[tokio::test]
async fn slow_and_idle_connections_are_cut_and_capped() {
    let s = Server::start(&[
        "--dev",
        "--header-read-timeout",
        "1",
        "--max-connections-per-ip",
        "8",
    ])
    .await;
    let addr = format!("127.0.0.1:{}", s.port);
    // Slowloris: half a request head, then silence. The server hangs up.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /api/v1 HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let (closed, _) = read_until_closed(&mut slow, Duration::from_secs(20));
    assert!(closed, "a slow request head must not hold its connection");

    // Many idle connections: beyond the per-client cap they are answered 503 and closed.
    let idle: Vec<_> = (0..8)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut over = std::net::TcpStream::connect(&addr).unwrap();
    over.write_all(b"GET /api/v1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (closed, text) = read_until_closed(&mut over, Duration::from_secs(10));
    assert!(closed && text.starts_with("HTTP/1.1 503"), "{text}");
    // The idle ones are closed by the header-read timeout, which frees the slots.
    for mut c in idle {
        let (closed, _) = read_until_closed(&mut c, Duration::from_secs(20));
        assert!(closed, "an idle connection must not be kept forever");
    }
    // Slots are given back as connections end: a new client is served again.
    let t = Instant::now();
    loop {
        let fresh = reqwest::Client::new();
        match fresh.get(format!("{}/api/v1", s.base)).send().await {
            Ok(r) if r.status() == 200 => break,
            other => assert!(
                t.elapsed() < Duration::from_secs(20),
                "not served again: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sigterm_answers_503_while_in_flight_work_finishes() {
    let mut s = Server::start(&["--dev", "--shutdown-grace", "20"]).await;
    let code =
        "function main(){ return new Promise(r => setTimeout(() => r({done: true}), 3000)); }";
    let (st, _) = s
        .put(
            "actions/slow",
            json!({"exec": {"kind": "nodejs:20", "code": code}}),
        )
        .await;
    assert_eq!(st, 200);
    let url = s.url("actions/slow?blocking=true&result=true");
    let client = reqwest::Client::new();
    let (u, k) = split(GUEST);
    let inflight = tokio::spawn(
        client
            .post(url)
            .basic_auth(u, Some(k))
            .json(&json!({}))
            .send(),
    );
    // Wait until the activation runs (its instance is listed), then SIGTERM.
    let t = Instant::now();
    loop {
        let (_, v) = s.get("instances").await;
        if v.to_string().contains("slow") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "never started: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = s.child.as_ref().unwrap().id();
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    // A new request on a new connection: 503 with a reason, not a refused connection.
    let t = Instant::now();
    let status = loop {
        let fresh = reqwest::Client::new();
        match fresh.get(format!("{}/api/v1", s.base)).send().await {
            Ok(r) if r.status() == 503 => break r.status(),
            Ok(_) => {}
            Err(e) => panic!("refused instead of 503: {e}"),
        }
        assert!(t.elapsed() < Duration::from_secs(10), "never got 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 503);
    let r = inflight.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["done"], true);
    let status = s.child.as_mut().unwrap().wait().unwrap();
    s.child = None;
    assert!(status.success(), "{status:?}");
}
