//! The OpenFaaS gateway against a real `nimbus serve` (sandboxed functions, real Python/Node),
//! with the requests faas-cli 0.18.12 sends (see ../shared/reference/openfaas-api.md §1.8).
#![allow(clippy::unwrap_used)]

mod common;

use common::{GUEST, Server};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

const ADMIN: (&str, &str) = ("admin", "nimbus-dev");

fn nimbus() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_nimbus"))
}

async fn sys(s: &Server, m: Method, path: &str, body: Option<Value>) -> (u16, String) {
    let mut rb = s
        .client
        .request(m, format!("{}{path}", s.base))
        .basic_auth(ADMIN.0, Some(ADMIN.1));
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A bundle directory for `lang` with `files` under function/.
fn bundle(dir: &Path, lang: &str, files: &[(&str, &str)]) -> String {
    std::fs::create_dir_all(dir.join("function")).unwrap();
    std::fs::write(dir.join("nimbus.json"), json!({"lang": lang}).to_string()).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join("function").join(name), text).unwrap();
    }
    format!("file://{}", dir.display())
}

const ECHO_HTTP: &str = r#"
import os
def handle(event, context):
    secret = None
    try:
        with open("/var/openfaas/secrets/api-key") as f:
            secret = f.read()
    except OSError:
        pass
    print("handled " + event.method + " " + event.path)
    return {
        "statusCode": 201,
        "headers": {"X-Echo": event.headers.get("x-test", "")},
        "body": {
            "method": event.method,
            "path": event.path,
            "query": event.query,
            "body": event.body.decode(),
            "env": os.environ.get("GREETING"),
            "secretOk": secret == "s3cr3t-value",
        },
    }
"#;

async fn deploy_echo(s: &Server, tmp: &Path, secrets: Value) -> (u16, String) {
    let image = bundle(
        &tmp.join("echo"),
        "python3-http",
        &[("handler.py", ECHO_HTTP)],
    );
    let body = json!({
        "service": "echo", "image": image, "envVars": {"GREETING": "hi"},
        "labels": {"com.openfaas.scale.min": "1"}, "annotations": {"a": "b"}, "secrets": secrets,
    });
    // faas-cli deploy: PUT first, POST on 404.
    let (st, text) = sys(s, Method::PUT, "/system/functions", Some(body.clone())).await;
    if st != 404 {
        return (st, text);
    }
    sys(s, Method::POST, "/system/functions", Some(body)).await
}

#[tokio::test]
async fn deploy_invoke_list_scale_remove_with_faas_cli_requests() {
    let s = Server::start(&["--dev"]).await;
    let tmp = tempfile::tempdir().unwrap();

    // Anonymous, wrong password and faas-cli's empty `Bearer ` are all 401 with the realm.
    for auth in [None, Some("Bearer "), Some("Basic YWRtaW46d3Jvbmc=")] {
        let mut rb = s.client.get(format!("{}/system/functions", s.base));
        if let Some(a) = auth {
            rb = rb.header("Authorization", a);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Basic realm=\"Restricted\""
        );
    }
    // An empty Bearer on /function is just anonymous.
    let (st, _) = sys(&s, Method::GET, "/healthz", None).await;
    assert_eq!(st, 200);

    // PUT of an unknown function: 404 (faas-cli then POSTs).
    let image = bundle(
        &tmp.path().join("x"),
        "python3-http",
        &[("handler.py", ECHO_HTTP)],
    );
    let (st, _) = sys(
        &s,
        Method::PUT,
        "/system/functions",
        Some(json!({"service": "nope", "image": image})),
    )
    .await;
    assert_eq!(st, 404);

    // Secret (needed by the deployment), then deploy.
    let (st, _) = sys(
        &s,
        Method::POST,
        "/system/secrets",
        Some(json!({"name": "api-key", "value": "s3cr3t-value"})),
    )
    .await;
    assert_eq!(st, 201);
    let (st, _) = sys(
        &s,
        Method::POST,
        "/system/secrets",
        Some(json!({"name": "api-key", "value": "x"})),
    )
    .await;
    assert_eq!(st, 409);
    let (st, text) = deploy_echo(&s, tmp.path(), json!(["api-key"])).await;
    assert_eq!(st, 202, "{text}");
    // A deployment naming a missing secret is refused.
    let (st, text) = sys(
        &s,
        Method::PUT,
        "/system/functions",
        Some(json!({"service": "echo", "image": image, "secrets": ["missing"]})),
    )
    .await;
    assert_eq!(st, 400, "{text}");

    // Invoke as faas-cli does: name.openfaas-fn, with an empty Bearer header.
    let r = s
        .client
        .post(format!(
            "{}/function/echo.openfaas-fn/some/path?x=1&y=2",
            s.base
        ))
        .header("Authorization", "Bearer ")
        .header("X-Test", "passed")
        .header("Content-Type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-echo"], "passed");
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(r.headers().contains_key("x-call-id"));
    assert!(r.headers().contains_key("x-duration-seconds"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/some/path");
    assert_eq!(v["query"], json!({"x": "1", "y": "2"}));
    assert_eq!(v["body"], "hello");
    assert_eq!(v["env"], "hi");
    assert_eq!(
        v["secretOk"], true,
        "the secret is readable at /var/openfaas/secrets/api-key"
    );
    // Any method; no namespace suffix.
    let r = s
        .client
        .delete(format!("{}/function/echo", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["method"], "DELETE");
    // Unknown function: 404.
    let r = s
        .client
        .get(format!("{}/function/ghost", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // list / get (faas-cli describe sends usage=1).
    let (st, text) = sys(&s, Method::GET, "/system/functions", None).await;
    assert_eq!(st, 200);
    let list: Vec<Value> = serde_json::from_str(&text).unwrap();
    let f = list.iter().find(|f| f["name"] == "echo").unwrap();
    assert_eq!(f["namespace"], "openfaas-fn");
    assert_eq!(f["image"], image_of(&tmp, "echo"));
    assert_eq!(f["envVars"]["GREETING"], "hi");
    assert_eq!(f["labels"]["com.openfaas.scale.min"], "1");
    assert_eq!(f["annotations"]["a"], "b");
    assert_eq!(f["secrets"], json!(["api-key"]));
    assert_eq!(f["invocationCount"], 2.0);
    assert_eq!(f["replicas"], 1);
    assert!(
        !text.contains("s3cr3t"),
        "no secret value in function listings"
    );
    let (st, text) = sys(&s, Method::GET, "/system/function/echo?usage=1", None).await;
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["name"],
        "echo"
    );
    let (st, _) = sys(&s, Method::GET, "/system/function/ghost", None).await;
    assert_eq!(st, 404);

    // One object, two APIs: the OpenWhisk API sees the action (and its warm minimum).
    let (st, a) = s.get("actions/echo").await;
    assert_eq!(st, 200);
    assert_eq!(a["exec"]["kind"], "python:3.11");
    assert_eq!(a["limits"]["minInstances"], 1);
    let (_, with_code) = s.get("actions/echo?code=true").await;
    assert!(
        !with_code.to_string().contains("s3cr3t"),
        "no secret value in the action or its code"
    );
    // ...and a plain OpenWhisk action is callable through /function with its namespace's
    // key (issue 13: private actions are not reachable anonymously; that reads as not found).
    let (st, _) = s
        .put("actions/plain", json!({"exec": {"kind": "nodejs:20", "code": "function main(p){return {m: p.__ow_method}}"}}))
        .await;
    assert_eq!(st, 200);
    let r = s
        .client
        .get(format!("{}/function/plain.openfaas-fn", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (u, k) = common::GUEST.split_once(':').unwrap();
    let r = s
        .client
        .get(format!("{}/function/plain.openfaas-fn", s.base))
        .basic_auth(u, Some(k))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["m"], "GET");

    // Scale: sets warm instances (minInstances); 404 when missing.
    let (st, _) = sys(
        &s,
        Method::POST,
        "/system/scale-function/echo",
        Some(json!({"serviceName": "echo", "replicas": 2})),
    )
    .await;
    assert_eq!(st, 202);
    let (_, a) = s.get("actions/echo").await;
    assert_eq!(a["limits"]["minInstances"], 2);
    let (st, _) = sys(
        &s,
        Method::POST,
        "/system/scale-function/ghost",
        Some(json!({"serviceName": "ghost", "replicas": 1})),
    )
    .await;
    assert_eq!(st, 404);

    // info, namespaces.
    let (st, text) = sys(&s, Method::GET, "/system/info", None).await;
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["provider"]["provider"],
        "nimbus"
    );
    let (st, text) = sys(&s, Method::GET, "/system/namespaces", None).await;
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()[0],
        "openfaas-fn"
    );

    // Secrets: list names only, update (404 when missing), delete answers 200.
    let (st, text) = sys(&s, Method::GET, "/system/secrets", None).await;
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!([{"name": "api-key", "namespace": "openfaas-fn"}])
    );
    let (st, _) = sys(
        &s,
        Method::PUT,
        "/system/secrets",
        Some(json!({"name": "ghost", "value": "x"})),
    )
    .await;
    assert_eq!(st, 404);
    let (st, _) = sys(
        &s,
        Method::PUT,
        "/system/secrets",
        Some(json!({"name": "api-key", "value": "s3cr3t-value"})),
    )
    .await;
    assert_eq!(st, 200);

    // Metrics: OpenFaaS names, counting.
    let m = s
        .client
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(
            "gateway_function_invocation_total{code=\"201\",function_name=\"echo.openfaas-fn\"} 2"
        ),
        "{m}"
    );
    // Calls of functions that do not exist (or that the caller may not reach) are not counted
    // (issue 13): otherwise anonymous requests could add a label per made-up name.
    assert!(!m.contains("ghost.openfaas-fn"), "{m}");
    assert!(
        m.contains(
            "gateway_functions_seconds_count{code=\"201\",function_name=\"echo.openfaas-fn\"} 2"
        ),
        "{m}"
    );
    assert!(
        m.contains("gateway_function_invocation_started{function_name=\"echo.openfaas-fn\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("gateway_service_count{function_name=\"echo.openfaas-fn\"} 2"),
        "{m}"
    );

    // Logs: NDJSON with the function's output; no secret values anywhere.
    let (st, text) = sys(
        &s,
        Method::GET,
        "/system/logs?name=echo&follow=false&tail=-1",
        None,
    )
    .await;
    assert_eq!(st, 200);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.iter().any(|l| l["text"] == "handled POST /some/path"
            && l["name"] == "echo"
            && l["namespace"] == "openfaas-fn"),
        "{text}"
    );
    assert!(!text.contains("s3cr3t"));
    let (st, _) = sys(&s, Method::GET, "/system/logs?follow=false", None).await;
    assert_eq!(st, 422);

    // Delete secret: 200 (faas-cli rejects 204); then 404.
    let (st, _) = sys(
        &s,
        Method::DELETE,
        "/system/secrets",
        Some(json!({"name": "api-key"})),
    )
    .await;
    assert_eq!(st, 200);
    let (st, _) = sys(
        &s,
        Method::DELETE,
        "/system/secrets",
        Some(json!({"name": "api-key"})),
    )
    .await;
    assert_eq!(st, 404);

    // Remove: 200, then 404; the OpenWhisk API no longer has it either.
    let (st, _) = sys(
        &s,
        Method::DELETE,
        "/system/functions",
        Some(json!({"functionName": "echo"})),
    )
    .await;
    assert_eq!(st, 200);
    let (st, _) = sys(
        &s,
        Method::DELETE,
        "/system/functions",
        Some(json!({"functionName": "echo"})),
    )
    .await;
    assert_eq!(st, 404);
    let (st, _) = s.get("actions/echo").await;
    assert_eq!(st, 404);
    let _ = GUEST;
}

fn image_of(tmp: &tempfile::TempDir, name: &str) -> String {
    format!("file://{}", tmp.path().join(name).display())
}

#[tokio::test]
async fn async_call_posts_the_result_to_the_callback_url() {
    // A real HTTP server on loopback receives the callback: the egress policy refuses
    // loopback unless the operator opens it, as this server does for exactly that port.
    let (port, mut rx) = callback_server().await;
    let allow = format!("127.0.0.1:{port}");
    let s = Server::start(&["--dev", "--allow-egress", &allow]).await;
    let tmp = tempfile::tempdir().unwrap();
    let image = bundle(
        &tmp.path().join("up"),
        "python3",
        &[("handler.py", "def handle(req):\n    return req.upper()\n")],
    );
    let (st, text) = sys(
        &s,
        Method::POST,
        "/system/functions",
        Some(json!({"service": "upper", "image": image})),
    )
    .await;
    assert_eq!(st, 202, "{text}");

    let r = s
        .client
        .post(format!("{}/async-function/upper.openfaas-fn", s.base))
        .header("X-Callback-Url", format!("http://127.0.0.1:{port}/cb"))
        .body("quiet words")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let call_id = r.headers()["x-call-id"].to_str().unwrap().to_string();
    assert!(!call_id.is_empty());
    let (h, body) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, "QUIET WORDS");
    assert_eq!(h["x-function-status"], "200");
    assert_eq!(h["x-call-id"], call_id.as_str());
    assert_eq!(h["x-function-name"], "upper.openfaas-fn");
    assert!(
        h["x-duration-seconds"]
            .to_str()
            .unwrap()
            .parse::<f64>()
            .is_ok()
    );

    // A bad callback URL is a 400; an unknown function a 404.
    let r = s
        .client
        .post(format!("{}/async-function/upper", s.base))
        .header("X-Callback-Url", "not a url")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .client
        .post(format!("{}/async-function/ghost", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn log_stream_follows_new_invocations() {
    let s = Server::start(&["--dev"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let image = bundle(
        &tmp.path().join("n"),
        "node20",
        &[(
            "handler.js",
            "module.exports = async (event, context) => { console.log('got ' + event.body.n); return context.status(200).succeed({n: event.body.n}) }\n",
        )],
    );
    let (st, text) = sys(
        &s,
        Method::POST,
        "/system/functions",
        Some(json!({"service": "nodefn", "image": image})),
    )
    .await;
    assert_eq!(st, 202, "{text}");
    let mut stream = s
        .client
        .get(format!(
            "{}/system/logs?name=nodefn&follow=true&tail=-1",
            s.base
        ))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "application/x-ndjson");
    for n in 1..=2 {
        let r = s
            .client
            .post(format!("{}/function/nodefn", s.base))
            .json(&json!({"n": n}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["n"], n);
    }
    let mut got = String::new();
    let t = Instant::now();
    while !(got.contains("got 1") && got.contains("got 2")) {
        assert!(t.elapsed() < Duration::from_secs(30), "log stream: {got}");
        let c = tokio::time::timeout(Duration::from_secs(30), stream.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push_str(std::str::from_utf8(&c).unwrap());
    }
    for l in got.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["name"], "nodefn");
    }
}

#[tokio::test]
async fn nimbus_new_and_up_deploy_a_stack_end_to_end() {
    let s = Server::start(&["--dev"]).await;
    let tmp = tempfile::tempdir().unwrap();
    for (name, lang) in [
        ("hello-py", "python3-http"),
        ("hello-node", "node20"),
        ("hello-sh", "exec"),
    ] {
        let out = nimbus()
            .current_dir(tmp.path())
            .args(["new", name, "--lang", lang])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = nimbus()
        .current_dir(tmp.path())
        .args(["new", "wasm-fn", "--lang", "rust-wasm", "-f", "wasm.yml"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(tmp.path().join("wasm-fn/src/main.rs").is_file());
    let stack = std::fs::read_to_string(tmp.path().join("stack.yml")).unwrap();
    assert!(
        stack.contains("lang: python3-http") && stack.contains("com.openfaas.scale.min"),
        "{stack}"
    );
    // A dependency, installed into the bundle by pip? Only when a requirement is named; the
    // template's empty requirements.txt is skipped.
    let out = nimbus()
        .current_dir(tmp.path())
        .args([
            "up",
            "-f",
            "stack.yml",
            "--gateway",
            &s.base,
            "--password",
            ADMIN.1,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let r = s
        .client
        .get(format!("{}/function/hello-py.openfaas-fn/x", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"message": "Hello from Nimbus", "path": "/x"})
    );
    let r = s
        .client
        .post(format!("{}/function/hello-node", s.base))
        .json(&json!({"a": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["body"], "{\"a\":1}");
    // CLI invoke reads stdin.
    let mut child = nimbus()
        .args(["invoke", "hello-sh", "--gateway", &s.base])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"round trip")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "round trip");
    // list, logs, remove.
    let out = nimbus()
        .args(["list", "--gateway", &s.base, "--password", ADMIN.1])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("hello-py") && text.contains("hello-node") && text.contains("hello-sh"),
        "{text}"
    );
    let out = nimbus()
        .args([
            "remove",
            "hello-sh",
            "--gateway",
            &s.base,
            "--password",
            ADMIN.1,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let r = s
        .client
        .get(format!("{}/function/hello-sh", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn generated_admin_credential_and_remote_builder_contract() {
    use hmac::{Hmac, Mac};
    let s = Server::start(&[]).await;
    // The generated credential is in the data dir, mode 0600; the dev one does not work.
    let pass_file = s.dir.join("openfaas/basic-auth-password");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&pass_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let pass = std::fs::read_to_string(&pass_file).unwrap();
    let (st, _) = sys(&s, Method::GET, "/system/functions", None).await;
    assert_eq!(st, 401);
    let r = s
        .client
        .get(format!("{}/system/functions", s.base))
        .basic_auth("admin", Some(pass.trim()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // faas-cli --remote-builder: a tar of context/ + com.openfaas.docker.config, HMAC-signed.
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, path, data).unwrap();
    };
    add(
        "com.openfaas.docker.config",
        br#"{"image":"ttl.sh/built-fn:latest"}"#,
    );
    add(
        "context/template.yml",
        b"language: python3-http\nfprocess: python index.py\n",
    );
    add(
        "context/index.py",
        b"# the template's server; unused by Nimbus\n",
    );
    add(
        "context/function/handler.py",
        b"def handle(event, context):\n    return {'statusCode': 200, 'body': 'built remotely'}\n",
    );
    let body = tar.into_inner().unwrap();
    let secret = std::fs::read_to_string(s.dir.join("openfaas/payload-secret")).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.trim().as_bytes()).unwrap();
    mac.update(&body);
    let sig = hex::encode(mac.finalize().into_bytes());
    let r = s
        .client
        .post(format!("{}/build", s.base))
        .header("X-Build-Signature", "sha256=deadbeef")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = s
        .client
        .post(format!("{}/build", s.base))
        .header("X-Build-Signature", format!("sha256={sig}"))
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let line: Value = serde_json::from_str(r.text().await.unwrap().trim()).unwrap();
    assert_eq!(line["status"], "success", "{line}");
    // Then faas-cli deploys that image name.
    let r = s
        .client
        .put(format!("{}/system/functions", s.base))
        .basic_auth("admin", Some(pass.trim()))
        .json(&json!({"service": "built", "image": "ttl.sh/built-fn:latest"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = s
        .client
        .post(format!("{}/system/functions", s.base))
        .basic_auth("admin", Some(pass.trim()))
        .json(&json!({"service": "built", "image": "ttl.sh/built-fn:latest"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let r = s
        .client
        .get(format!("{}/function/built", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "built remotely");
    // A container image that was never built is refused with a clear message.
    let r = s
        .client
        .post(format!("{}/system/functions", s.base))
        .basic_auth("admin", Some(pass.trim()))
        .json(&json!({"service": "other", "image": "docker.io/library/nginx"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("not a Nimbus function bundle")
    );
}

#[tokio::test]
async fn queued_call_and_its_callback_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (port, mut rx) = callback_server().await;
    let allow = format!("127.0.0.1:{port}");
    let mut s = Server::start_in(&dir, &["--dev", "--allow-egress", &allow], None).await;
    let image = bundle(
        &tmp.path().join("slow"),
        "python3",
        &[(
            "handler.py",
            "import time\ndef handle(req):\n    time.sleep(1.5)\n    return 'done ' + req\n",
        )],
    );
    let (st, text) = sys(
        &s,
        Method::POST,
        "/system/functions",
        Some(json!({"service": "slow", "image": image})),
    )
    .await;
    assert_eq!(st, 202, "{text}");
    let r = s
        .client
        .post(format!("{}/async-function/slow", s.base))
        .header("X-Callback-Url", format!("http://127.0.0.1:{port}/cb"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let call_id = r.headers()["x-call-id"].to_str().unwrap().to_string();
    // Killed while the call runs: the queued call and the pending callback are on disk.
    s.kill9();
    let s2 = Server::start_in(&dir, &["--dev", "--allow-egress", &allow], Some(s.port)).await;
    let (h, body) = tokio::time::timeout(Duration::from_secs(90), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, "done x");
    assert_eq!(h["x-call-id"], call_id.as_str());
    assert_eq!(h["x-function-status"], "200");
    drop(s2);
}

/// `nimbus up` installs a Python function's `requirements.txt` (pip) and a Node function's
/// `package.json` dependencies (npm) into the bundle, and the functions import them at run time.
/// Uses the real PyPI and npm registries (`six`, `is-number`).
#[tokio::test(flavor = "multi_thread")]
async fn nimbus_up_installs_pip_and_npm_dependencies_into_the_bundle() {
    let s = Server::start(&["--dev"]).await;
    let tmp = tempfile::tempdir().unwrap();
    for (name, lang) in [("deps-py", "python3-http"), ("deps-node", "node20")] {
        let out = nimbus()
            .current_dir(tmp.path())
            .args(["new", name, "--lang", lang])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(tmp.path().join("deps-py/requirements.txt"), "six==1.16.0\n").unwrap();
    std::fs::write(
        tmp.path().join("deps-py/handler.py"),
        "import six\n\ndef handle(event, context):\n    return {\"statusCode\": 200, \"body\": {\"six\": six.__version__}}\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("deps-node/package.json"),
        r#"{"name": "deps-node", "version": "1.0.0", "main": "handler.js", "dependencies": {"is-number": "7.0.0"}}"#,
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("deps-node/handler.js"),
        "'use strict'\nconst isNumber = require('is-number')\nmodule.exports = async (event, context) => context.status(200).succeed({ isNumber: isNumber(event.query.n) })\n",
    )
    .unwrap();
    let out = nimbus()
        .current_dir(tmp.path())
        .args([
            "up",
            "-f",
            "stack.yml",
            "--gateway",
            &s.base,
            "--password",
            ADMIN.1,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let r = s
        .client
        .get(format!("{}/function/deps-py", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"six": "1.16.0"}));
    let r = s
        .client
        .get(format!("{}/function/deps-node?n=42", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"isNumber": true}));
}

/// Callbacks into the host (issue 13): a loopback callback URL is refused at accept time with
/// the policy's reason and nothing is ever sent; a host name that resolves to loopback is
/// accepted (names are checked once resolved) but refused when the callback would be sent,
/// which is logged and counted, never sent.
#[tokio::test]
async fn callbacks_into_the_host_are_refused_by_the_egress_policy() {
    let (port, mut rx) = callback_server().await;
    let s = Server::start(&["--dev"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let image = bundle(
        &tmp.path().join("up"),
        "python3",
        &[("handler.py", "def handle(req):\n    return req.upper()\n")],
    );
    let (st, text) = sys(
        &s,
        Method::POST,
        "/system/functions",
        Some(json!({"service": "upper", "image": image})),
    )
    .await;
    assert_eq!(st, 202, "{text}");

    for url in [
        format!("http://127.0.0.1:{port}/cb"),
        format!("http://[::1]:{port}/cb"),
        format!("http://[::ffff:127.0.0.1]:{port}/cb"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        format!("http://127.0.0.1:{}/system/functions", s.port),
    ] {
        let r = s
            .client
            .post(format!("{}/async-function/upper", s.base))
            .header("X-Callback-Url", &url)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{url}");
        let text = r.text().await.unwrap();
        assert!(
            text.contains("refused by the egress policy"),
            "{url}: {text}"
        );
        assert!(text.contains("--allow-egress"), "{url}: {text}");
    }

    // A name is checked when the callback is sent: refused, counted, not sent.
    let r = s
        .client
        .post(format!("{}/async-function/upper", s.base))
        .header("X-Callback-Url", format!("http://localhost:{port}/cb"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let t = std::time::Instant::now();
    loop {
        let m = s
            .client
            .get(format!("{}/metrics", s.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if m.contains("nimbus_egress_refused_total{purpose=\"callback\"} 6") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no refusal counted: {m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(rx.try_recv().is_err(), "a refused callback was delivered");
}

/// A signed `POST /build` of a Node.js context whose `package.json` has `scripts`.
async fn remote_build(s: &Server, image: &str, scripts: Value) -> (u16, Value) {
    use hmac::{Hmac, Mac};
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_cksum();
        tar.append_data(&mut h, path, data).unwrap();
    };
    add(
        "com.openfaas.docker.config",
        json!({ "image": image }).to_string().as_bytes(),
    );
    add("context/template.yml", b"language: node20\n");
    add(
        "context/function/handler.js",
        b"module.exports = async (event, context) => context.status(200).succeed(require('fs').readFileSync(__dirname + '/seen.txt', 'utf8').trim())\n",
    );
    add(
        "context/function/package.json",
        json!({"name": "scripted", "version": "1.0.0", "main": "handler.js", "scripts": scripts})
            .to_string()
            .as_bytes(),
    );
    let body = tar.into_inner().unwrap();
    let secret = std::fs::read_to_string(s.dir.join("openfaas/payload-secret")).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.trim().as_bytes()).unwrap();
    mac.update(&body);
    let r = s
        .client
        .post(format!("{}/build", s.base))
        .header(
            "X-Build-Signature",
            format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_str(r.text().await.unwrap().trim()).unwrap(),
    )
}

/// Issue 13, item 6: `POST /build` runs npm lifecycle scripts in the function sandbox. A
/// `postinstall` records `id -u` and tries to write outside the build directory: it ran as the
/// unprivileged sandbox user (65534) and nothing appeared outside. A failing script's output
/// comes back in the error.
#[tokio::test(flavor = "multi_thread")]
async fn remote_builds_run_install_scripts_in_the_sandbox() {
    let s = Server::start(&["--dev"]).await;
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("pwned");
    let home_target = format!("/root/nimbus-pwned-{}", std::process::id());
    let script = format!(
        "id -u > seen.txt; echo pwned > {}; echo pwned > {home_target}; echo pwned > ../../escaped; true",
        target.display()
    );
    let (st, line) = remote_build(&s, "ttl.sh/scripted:1", json!({ "postinstall": script })).await;
    assert_eq!(st, 200, "{line}");
    assert_eq!(line["status"], "success", "{line}");
    assert!(
        !target.exists(),
        "the install script wrote outside the build"
    );
    assert!(!Path::new(&home_target).exists());
    let bundle = s.dir.join("openfaas/bundles/ttl.sh_scripted_1");
    assert!(!bundle.parent().unwrap().join("escaped").exists());
    assert_eq!(
        std::fs::read_to_string(bundle.join("function/seen.txt"))
            .unwrap()
            .trim(),
        "65534"
    );
    // Nothing in the data dir stays owned by the sandbox user.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(bundle.join("function/seen.txt"))
            .unwrap()
            .uid(),
        0
    );
    // The built function runs and reports what its build saw.
    let (st, text) = sys(
        &s,
        Method::POST,
        "/system/functions",
        Some(json!({"service": "scripted", "image": "ttl.sh/scripted:1"})),
    )
    .await;
    assert_eq!(st, 202, "{text}");
    let r = s
        .client
        .get(format!("{}/function/scripted", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "65534");

    // A failing install script: 400 with the end of npm's output in the error.
    let (st, line) = remote_build(
        &s,
        "ttl.sh/failing:1",
        json!({ "postinstall": "echo boom-marker-from-the-script >&2; exit 7" }),
    )
    .await;
    assert_eq!(st, 400, "{line}");
    assert_eq!(line["status"], "failed");
    let error = line["error"].as_str().unwrap();
    assert!(error.contains("npm install failed"), "{error}");
    assert!(error.contains("boom-marker-from-the-script"), "{error}");
}

/// A real HTTP server on loopback receiving async-call callbacks at `/cb`: its port and the
/// received (headers, body) pairs.
async fn callback_server() -> (
    u16,
    tokio::sync::mpsc::Receiver<(axum::http::HeaderMap, String)>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::channel::<(axum::http::HeaderMap, String)>(4);
    let app = axum::Router::new().route(
        "/cb",
        axum::routing::post(move |h: axum::http::HeaderMap, body: String| {
            let tx = tx.clone();
            async move {
                tx.send((h, body)).await.unwrap();
                "ok"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, rx)
}
