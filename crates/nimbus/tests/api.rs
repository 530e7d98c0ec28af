//! API integration tests against a real `nimbus serve` process and real Node.js / Python.
#![allow(clippy::unwrap_used)]

mod common;

use common::{GUEST, SYSTEM, Server};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn info_and_auth() {
    let s = Server::start(&["--dev"]).await;
    let r = s
        .client
        .get(format!("{}/api/v1", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["api_version"], "1.0.0");
    // No credentials, wrong key, unknown uuid: 401 with the OpenWhisk body and challenge.
    let r = s.client.get(s.url("actions")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("Basic")
    );
    let bad = GUEST.replace("123z", "999z");
    let (status, body) = s.req(Method::GET, "actions", &bad, None).await;
    assert_eq!(status, 401);
    assert!(body["error"].is_string() && body["code"].is_string());
    let (status, body) = s.get("../../namespaces").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!(["guest"]));
}

#[tokio::test]
async fn generated_keys_are_written_with_mode_0600_and_dev_keys_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = Server::start(&[]).await;
    let f = s.dir.join("auth/guest");
    let meta = std::fs::metadata(&f).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let key = std::fs::read_to_string(&f).unwrap().trim().to_string();
    assert_ne!(key, GUEST);
    let (status, _) = s.req(Method::GET, "actions", GUEST, None).await;
    assert_eq!(status, 401, "dev key must not work without --dev");
    let (status, _) = s.req(Method::GET, "actions", &key, None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn node_python_exec_actions_run_and_are_recorded() {
    let s = Server::start(&["--dev"]).await;
    let (st, a) = s
        .put("actions/hello", json!({"exec": {"kind": "nodejs:default", "code": "function main(p) { console.log('hi ' + p.name); return {greeting: 'Hello ' + p.name}; }"}}))
        .await;
    assert_eq!(st, 200, "{a}");
    assert_eq!(a["exec"]["kind"], "nodejs:20");
    assert_eq!(a["version"], "0.0.1");
    let (st, act) = s
        .post("actions/hello?blocking=true", json!({"name": "Ada"}))
        .await;
    assert_eq!(st, 200, "{act}");
    assert_eq!(act["response"]["result"], json!({"greeting": "Hello Ada"}));
    assert_eq!(act["response"]["status"], "success");
    assert_eq!(act["activationId"].as_str().unwrap().len(), 32);
    let logs = act["logs"].as_array().unwrap();
    assert!(
        logs[0].as_str().unwrap().ends_with(" stdout: hi Ada"),
        "{logs:?}"
    );
    let ann = act["annotations"].as_array().unwrap();
    assert!(
        ann.iter().any(|a| a["key"] == "initTime"),
        "cold start records initTime"
    );
    let (_, warm) = s
        .post("actions/hello?blocking=true", json!({"name": "Bo"}))
        .await;
    let ann = warm["annotations"].as_array().unwrap();
    assert!(
        !ann.iter().any(|a| a["key"] == "initTime"),
        "warm start has no initTime"
    );

    let (st, _) = s.put("actions/py", json!({"exec": {"kind": "python:default", "code": "import json\ndef main(args):\n    return {'n': args.get('n', 0) + 1}\n"}})).await;
    assert_eq!(st, 200);
    let (st, r) = s
        .post("actions/py?blocking=true&result=true", json!({"n": 41}))
        .await;
    assert_eq!((st, r), (200, json!({"n": 42})));

    let script = "#!/bin/sh\necho '{\"ok\":true}' >&3\nwhile read line; do echo \"got a request\"; echo '{\"shell\":\"yes\"}' >&3; done\n";
    let (st, e) = s
        .put(
            "actions/sh",
            json!({"exec": {"kind": "exec", "code": script}}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let (st, r) = s
        .post("actions/sh?blocking=true&result=true", json!({}))
        .await;
    assert_eq!((st, r), (200, json!({"shell": "yes"})));

    // Application and developer errors are 502 with the right status.
    s.put("actions/apperr", json!({"exec": {"kind": "nodejs:20", "code": "function main() { return {error: 'nope'}; }"}})).await;
    let (st, r) = s.post("actions/apperr?blocking=true", json!({})).await;
    assert_eq!(st, 502);
    assert_eq!(r["response"]["status"], "application error");
    s.put("actions/crash", json!({"exec": {"kind": "python:3.11", "code": "def main(a):\n    import os\n    os._exit(3)\n"}})).await;
    let (st, r) = s.post("actions/crash?blocking=true", json!({})).await;
    assert_eq!(st, 502);
    assert_eq!(r["response"]["status"], "action developer error");
}

#[tokio::test]
async fn functions_get_a_clean_environment() {
    let s = Server::start(&["--dev"]).await;
    s.put("actions/env", json!({"exec": {"kind": "nodejs:20", "code": "function main() { return {env: process.env}; }"}})).await;
    let (st, r) = s
        .post("actions/env?blocking=true&result=true", json!({}))
        .await;
    assert_eq!(st, 200);
    let env = r["env"].as_object().unwrap();
    assert!(
        !env.contains_key("NIMBUS_LOG"),
        "server variables must not leak: {env:?}"
    );
    assert!(!env.contains_key("CARGO_PKG_NAME"));
    assert_eq!(env["__OW_ACTION_NAME"], "/guest/env");
    assert!(
        env.get("__OW_API_KEY").is_none(),
        "provide-api-key is false by default"
    );
}

#[tokio::test]
async fn timeouts_kill_and_replace_the_instance() {
    let s = Server::start(&["--dev"]).await;
    s.put(
        "actions/slow",
        json!({"exec": {"kind": "nodejs:20", "code": "function main(p) { if (p.sleep) { return new Promise(r => setTimeout(() => r({}), 5000)); } return {fast: true}; }"}, "limits": {"timeout": 500}}),
    )
    .await;
    let (st, r) = s
        .post("actions/slow?blocking=true", json!({"sleep": true}))
        .await;
    assert_eq!(st, 502);
    assert_eq!(
        r["response"]["result"]["error"],
        "The action exceeded its time limits of 500 milliseconds."
    );
    assert!(
        r["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["key"] == "timeout" && a["value"] == true)
    );
    let (st, r) = s
        .post("actions/slow?blocking=true&result=true", json!({}))
        .await;
    assert_eq!((st, r), (200, json!({"fast": true})));
}

#[tokio::test]
async fn bad_input_gets_clear_4xx_and_stores_nothing() {
    let s = Server::start(&["--dev"]).await;
    let r = s
        .client
        .put(s.url("actions/x"))
        .basic_auth("23bc46b1-71f6-4ed5-8c54-816aa4f8c502", Some(&GUEST[37..]))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (st, b) = s
        .put("actions/x", json!({"exec": {"kind": "cobol", "code": "x"}}))
        .await;
    assert_eq!(st, 400);
    assert!(
        b["error"].as_str().unwrap().contains("not supported"),
        "{b}"
    );
    let (st, b) = s.put("actions/x", json!({})).await;
    assert_eq!((st, b["error"].clone()), (400, json!("exec undefined")));
    let (st, _) = s
        .put(
            "actions/bad$name",
            json!({"exec": {"kind": "nodejs:20", "code": "x"}}),
        )
        .await;
    assert_eq!(st, 400);
    let (st, _) = s
        .put(
            "actions/x",
            json!({"exec": {"kind": "nodejs:20", "code": "x"}, "limits": {"timeout": 10}}),
        )
        .await;
    assert_eq!(st, 400);
    let big = "a".repeat(1024 * 1024 + 10);
    let (st, _) = s.put("actions/x", json!({"exec": {"kind": "nodejs:20", "code": "x"}, "parameters": [{"key": "k", "value": big}]})).await;
    assert_eq!(st, 413);
    let (st, _) = s
        .put(
            "actions/seq",
            json!({"exec": {"kind": "sequence", "components": ["/_/missing"]}}),
        )
        .await;
    assert_eq!(st, 400);
    let (st, _) = s
        .put(
            "actions/seq",
            json!({"exec": {"kind": "sequence", "components": ["/guest/seq"]}}),
        )
        .await;
    assert_eq!(st, 400);
    let (st, list) = s.get("actions").await;
    assert_eq!(st, 200);
    assert_eq!(list, json!([]), "nothing stored");
    s.put(
        "actions/ok",
        json!({"exec": {"kind": "nodejs:20", "code": "function main(p){return p}"}}),
    )
    .await;
    let (st, _) = s.post("actions/ok?blocking=true", json!({"k": big})).await;
    assert_eq!(st, 413);
    let (st, _) = s
        .post("actions/ok?blocking=true&timeout=70000", json!({}))
        .await;
    assert_eq!(st, 400);
    let (st, _) = s
        .put(
            "actions/ok",
            json!({"exec": {"kind": "nodejs:20", "code": "x"}}),
        )
        .await;
    assert_eq!(st, 409);
}

#[tokio::test]
async fn namespaces_are_isolated_and_published_packages_shared() {
    let s = Server::start(&["--dev"]).await;
    let (st, _) = s
        .req(Method::PUT, "packages/private", SYSTEM, Some(json!({})))
        .await;
    assert_eq!(st, 200);
    s.req(
        Method::PUT,
        "actions/private/secret",
        SYSTEM,
        Some(json!({"exec": {"kind": "nodejs:20", "code": "function main(){return {s:1}}"}})),
    )
    .await;
    s.req(
        Method::PUT,
        "actions/top",
        SYSTEM,
        Some(json!({"exec": {"kind": "nodejs:20", "code": "function main(){return {s:1}}"}})),
    )
    .await;
    let ws = |p: &str| format!("{}/api/v1/namespaces/whisk.system/{p}", s.base);
    let (u, k) = GUEST.split_once(':').unwrap();
    for path in ["actions/private/secret", "actions/top", "packages/private"] {
        let r = s
            .client
            .get(ws(path))
            .basic_auth(u, Some(k))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }
    let r = s
        .client
        .post(ws("actions/top?blocking=true"))
        .basic_auth(u, Some(k))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The published catalog is readable and invocable.
    let r = s
        .client
        .post(ws("actions/utils/echo?blocking=true&result=true"))
        .basic_auth(u, Some(k))
        .json(&json!({"x": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"x": 1}));
    // Activations of one namespace are invisible to another.
    let (_, a) = s
        .req(
            Method::POST,
            "actions/top?blocking=true",
            SYSTEM,
            Some(json!({})),
        )
        .await;
    let id = a["activationId"].as_str().unwrap();
    let (st, _) = s.get(&format!("activations/{id}")).await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn packages_bindings_sequences_triggers_rules() {
    let s = Server::start(&["--dev"]).await;
    s.put(
        "packages/p",
        json!({"parameters": [{"key": "a", "value": 1}, {"key": "b", "value": 1}]}),
    )
    .await;
    s.put("actions/p/show", json!({"exec": {"kind": "nodejs:20", "code": "function main(p){return p}"}, "parameters": [{"key": "c", "value": 3}]})).await;
    s.put("packages/bound", json!({"binding": {"namespace": "guest", "name": "p"}, "parameters": [{"key": "b", "value": 2}]})).await;
    let (st, r) = s
        .post("actions/bound/show?blocking=true", json!({"d": 4}))
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        r["response"]["result"],
        json!({"a": 1, "b": 2, "c": 3, "d": 4})
    );
    assert!(
        r["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["key"] == "binding" && a["value"] == "guest/bound")
    );
    let (st, _) = s.req(Method::DELETE, "packages/p", GUEST, None).await;
    assert_eq!(st, 409);

    s.put("actions/inc", json!({"exec": {"kind": "python:3.11", "code": "def main(a):\n    return {'n': a.get('n', 0) + 1}\n"}})).await;
    s.put(
        "actions/twice",
        json!({"exec": {"kind": "sequence", "components": ["/_/inc", "/guest/inc"]}}),
    )
    .await;
    let (st, r) = s.post("actions/twice?blocking=true", json!({"n": 1})).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["response"]["result"], json!({"n": 3}));
    let comps = r["logs"].as_array().unwrap();
    assert_eq!(comps.len(), 2);
    let (_, c0) = s
        .get(&format!("activations/{}", comps[0].as_str().unwrap()))
        .await;
    assert_eq!(c0["cause"], r["activationId"]);

    s.put(
        "triggers/t",
        json!({"parameters": [{"key": "from", "value": "trigger"}]}),
    )
    .await;
    let (st, _) = s.post("triggers/t", json!({})).await;
    assert_eq!(st, 204, "no rules yet");
    let (st, rule) = s
        .put("rules/r", json!({"trigger": "/_/t", "action": "/_/p/show"}))
        .await;
    assert_eq!(st, 200, "{rule}");
    assert_eq!(rule["status"], "active");
    let (_, t) = s.get("triggers/t").await;
    assert_eq!(t["rules"]["guest/r"]["status"], "active");
    let (st, fired) = s.post("triggers/t", json!({"x": 1})).await;
    assert_eq!(st, 202);
    let tid = fired["activationId"].as_str().unwrap().to_string();
    let trig = s.wait_activation(&tid, Duration::from_secs(10)).await;
    let log: Value = serde_json::from_str(trig["logs"][0].as_str().unwrap()).unwrap();
    assert_eq!(log["rule"], "guest/r");
    let child = s
        .wait_activation(
            log["activationId"].as_str().unwrap(),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(child["cause"], json!(tid));
    assert_eq!(child["response"]["result"]["from"], "trigger");
    assert_eq!(child["response"]["result"]["x"], 1);
    let (st, _) = s.post("rules/r", json!({"status": "inactive"})).await;
    assert_eq!(st, 200);
    let (st, _) = s.post("triggers/t", json!({})).await;
    assert_eq!(st, 204);
}

#[tokio::test]
async fn web_actions() {
    let s = Server::start(&["--dev"]).await;
    s.put(
        "actions/web",
        json!({"exec": {"kind": "nodejs:20", "code": "function main(p){return {statusCode: 201, headers: {'x-m': p.__ow_method}, body: 'path=' + p.__ow_path + ' q=' + p.q}}"},
               "annotations": [{"key": "web-export", "value": true}]}),
    )
    .await;
    let r = s
        .client
        .get(format!(
            "{}/api/v1/web/guest/default/web.http/a/b?q=1",
            s.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-m"], "get");
    assert_eq!(r.text().await.unwrap(), "path=/a/b q=1");
    s.put(
        "actions/hidden",
        json!({"exec": {"kind": "nodejs:20", "code": "function main(p){return {}}"}}),
    )
    .await;
    let r = s
        .client
        .get(format!("{}/api/v1/web/guest/default/hidden.json", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // require-whisk-auth: true opens only to the owning namespace's keys.
    s.put(
        "actions/guarded",
        json!({"exec": {"kind": "nodejs:20", "code": "function main(p){return {user: p.__ow_user}}"},
               "annotations": [{"key": "web-export", "value": true}, {"key": "require-whisk-auth", "value": true}]}),
    )
    .await;
    let url = format!("{}/api/v1/web/guest/default/guarded.json", s.base);
    assert_eq!(s.client.get(&url).send().await.unwrap().status(), 401);
    let (u, k) = SYSTEM.split_once(':').unwrap();
    let r = s
        .client
        .get(&url)
        .basic_auth(u, Some(k))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "another namespace's key");
    let (u, k) = GUEST.split_once(':').unwrap();
    let r = s
        .client
        .get(&url)
        .basic_auth(u, Some(k))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"user": "guest"}));
    let r = s
        .client
        .request(
            Method::OPTIONS,
            format!("{}/api/v1/web/guest/default/web.http", s.base),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn accepted_async_invocation_survives_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut s = Server::start_in(&dir, &["--dev"], None).await;
    // Each run takes 3 s, so none can finish before the kill 300 ms after acceptance; after the
    // restart they run again and complete.
    let code = "import time\ndef main(a):\n    time.sleep(3)\n    return {'done': a['n']}\n";
    let (st, _) = s
        .put(
            "actions/wait",
            json!({"exec": {"kind": "python:3.11", "code": code}}),
        )
        .await;
    assert_eq!(st, 200);
    let mut ids = Vec::new();
    for n in 0..3 {
        let (st, r) = s.post("actions/wait", json!({"n": n})).await;
        assert_eq!(st, 202);
        ids.push(r["activationId"].as_str().unwrap().to_string());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.kill9();
    let s2 = Server::start_in(&dir, &["--dev"], None).await;
    for (n, id) in ids.iter().enumerate() {
        let a = s2.wait_activation(id, Duration::from_secs(30)).await;
        assert_eq!(a["response"]["result"], json!({"done": n}), "{a}");
    }
}

#[tokio::test]
async fn sigterm_lets_in_flight_activations_finish() {
    let mut s = Server::start(&["--dev"]).await;
    s.put("actions/nap", json!({"exec": {"kind": "nodejs:20", "code": "function main(){return new Promise(r => setTimeout(() => r({slept: true}), 800))}"}})).await;
    let url = s.url("actions/nap?blocking=true&result=true");
    let client = s.client.clone();
    let (u, k) = GUEST.split_once(':').unwrap();
    let (u, k) = (u.to_string(), k.to_string());
    let call = tokio::spawn(async move {
        client
            .post(url)
            .basic_auth(u, Some(k))
            .json(&json!({}))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = s.sigterm();
    assert!(status.success(), "clean exit: {status:?}");
    let r = call.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"slept": true}));
}

#[tokio::test]
async fn activation_queries() {
    let s = Server::start(&["--dev"]).await;
    s.put("actions/a", json!({"exec": {"kind": "nodejs:20", "code": "function main(p){console.error('err line'); return p}"}})).await;
    s.put(
        "actions/b",
        json!({"exec": {"kind": "nodejs:20", "code": "function main(p){return p}"}}),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (_, r) = s.post("actions/a?blocking=true", json!({"i": i})).await;
        ids.push(r["activationId"].as_str().unwrap().to_string());
    }
    s.post("actions/b?blocking=true", json!({})).await;
    let (_, list) = s.get("activations?name=a").await;
    let got: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["activationId"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        ids.iter().rev().map(String::as_str).collect::<Vec<_>>(),
        "newest first"
    );
    let (_, c) = s.get("activations?count=true").await;
    assert_eq!(c, json!({"activations": 4}));
    let (_, l) = s.get("activations?limit=1&skip=1&name=a").await;
    assert_eq!(l[0]["activationId"], json!(ids[1]));
    let (st, _) = s.get("activations?limit=201").await;
    assert_eq!(st, 400);
    let (_, logs) = s.get(&format!("activations/{}/logs", ids[0])).await;
    assert!(
        logs["logs"][0]
            .as_str()
            .unwrap()
            .contains(" stderr: err line")
    );
    let (_, res) = s.get(&format!("activations/{}/result", ids[0])).await;
    assert_eq!(res["result"], json!({"i": 0}));
    assert_eq!(res["success"], true);
}

/// The default `--data-dir .nimbus` is relative; functions must still start (regression).
#[tokio::test]
async fn a_relative_data_dir_works() {
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_nimbus"))
        .current_dir(tmp.path())
        .args([
            "serve",
            "--dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            "rel",
        ])
        .env("NIMBUS_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let (u, k) = GUEST.split_once(':').unwrap();
    let mut ready = false;
    for _ in 0..600 {
        if client
            .get(format!("{base}/api/v1"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready);
    let url = format!("{base}/api/v1/namespaces/_/actions/rel");
    let r = client.put(&url).basic_auth(u, Some(k)).json(&json!({"exec": {"kind": "python:3.11", "code": "def main(a):\n    return {'ok': 1}\n"}})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("{url}?blocking=true&result=true"))
        .basic_auth(u, Some(k))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!((status.as_u16(), body), (200, json!({"ok": 1})));
    assert!(tmp.path().join("rel/auth/guest").exists());
}

#[tokio::test]
async fn instances_scale_out_and_to_zero_and_activations_say_cold_or_warm() {
    let s = Server::start(&["--dev", "--idle-timeout", "1", "--stem-cells", "0"]).await;
    s.put(
        "actions/inst",
        json!({"exec": {"kind": "nodejs:20", "code": "function main(){return {}}"}}),
    )
    .await;
    let start_of = |a: &Value| {
        a["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|kv| kv["key"] == "start")
            .map(|kv| kv["value"].clone())
    };
    let (_, a) = s.post("actions/inst?blocking=true", json!({})).await;
    assert_eq!(start_of(&a), Some(json!("cold")));
    let (_, a) = s.post("actions/inst?blocking=true", json!({})).await;
    assert_eq!(start_of(&a), Some(json!("warm")));
    let (st, v) = s.get("instances?name=inst").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["instances"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["instances"][0]["state"], "idle");
    assert_eq!(v["instances"][0]["action"], "/guest/inst");
    assert_eq!(v["pool"]["memoryBudgetMB"], 4096);
    // Idle for longer than --idle-timeout: scaled to zero.
    let mut zero = false;
    for _ in 0..100 {
        let (_, v) = s.get("instances?name=inst").await;
        if v["instances"].as_array().unwrap().is_empty() {
            zero = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(zero, "the idle instance was stopped");

    // minInstances keeps one warm without any invocation, past the idle timeout.
    let (st, a) = s
        .put(
            "actions/kept",
            json!({"exec": {"kind": "python:3.11", "code": "def main(a):\n    return {}\n"}, "limits": {"minInstances": 1}}),
        )
        .await;
    assert_eq!(st, 200, "{a}");
    assert_eq!(a["limits"]["minInstances"], 1);
    let mut warm = false;
    for _ in 0..100 {
        let (_, v) = s.get("instances?name=kept").await;
        if v["instances"].as_array().unwrap().len() == 1 {
            warm = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(warm, "a minimum instance was started");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (_, v) = s.get("instances?name=kept").await;
    assert_eq!(
        v["instances"].as_array().unwrap().len(),
        1,
        "kept past the idle timeout"
    );
    let (_, a) = s.post("actions/kept?blocking=true", json!({})).await;
    assert_eq!(start_of(&a), Some(json!("warm")));
}

#[tokio::test]
async fn concurrent_invocations_run_in_parallel_instances() {
    let s = Server::start(&["--dev"]).await;
    s.put(
        "actions/sleepy",
        json!({"exec": {"kind": "nodejs:20", "code": "function main(){return new Promise(r => setTimeout(() => r({ok: true}), 1000))}"}}),
    )
    .await;
    let t = std::time::Instant::now();
    let mut calls = Vec::new();
    for _ in 0..20 {
        let (client, url) = (s.client.clone(), s.url("actions/sleepy?blocking=true"));
        let (u, k) = GUEST.split_once(':').unwrap();
        let (u, k) = (u.to_string(), k.to_string());
        calls.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .basic_auth(u, Some(k))
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }));
    }
    let mut cold = 0;
    for c in calls {
        let a = c.await.unwrap();
        assert_eq!(a["response"]["result"], json!({"ok": true}));
        cold += a["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|kv| kv["key"] == "start" && kv["value"] == "cold")
            .count();
    }
    // One instance would take 20 s; the issue asks for well under that. The bound is loose on
    // purpose (2 shared cores); the cold-start count shows the instances really were parallel.
    assert!(cold >= 10, "only {cold} instances were started");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
}

/// The issue's probe: a function that tries to break out, checked from the inside.
#[tokio::test]
async fn functions_run_sandboxed() {
    let s = Server::start(&["--dev"]).await;
    let (_, info) = s.get("../../../v1").await;
    let warnings = info["warnings"].as_array().cloned().unwrap_or_default();
    assert!(
        warnings.is_empty(),
        "every layer should be available here: {warnings:?}"
    );
    for layer in [
        "sandbox",
        "namespaces",
        "readOnlyRoot",
        "unprivilegedUser",
        "seccomp",
        "networkIsolated",
        "cgroupMemory",
        "cgroupPids",
    ] {
        assert_eq!(info["isolation"][layer], true, "{layer}: {info}");
    }
    let secret = s.dir.join("nimbus.db");
    let probe = format!(
        r#"import os, socket, errno
def can_connect(port):
    s = socket.socket()
    s.settimeout(1)
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()
def can_write(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return True
    except OSError:
        return False
def can_read(path):
    try:
        with open(path, "rb") as f:
            f.read(1)
        return True
    except OSError:
        return False
def main(args):
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    try:
        os.unshare(os.CLONE_NEWNS)
        unshare = True
    except (OSError, AttributeError):
        unshare = False
    return {{
        "pids": len(pids),
        "uid": os.getuid(),
        "shadow": can_read("/etc/shadow"),
        "data_dir": can_read({secret:?}),
        "write_usr": can_write("/usr/nimbus-probe"),
        "write_code": can_write(os.path.join(os.getcwd(), "probe")),
        "write_tmp": can_write("/tmp/probe"),
        "postgres": can_connect(5432),
        "nimbus": can_connect({port}),
        "unshare": unshare,
    }}
"#,
        secret = secret.display().to_string(),
        port = s.port,
    );
    let (st, _) = s
        .put(
            "actions/probe",
            json!({"exec": {"kind": "python:3.11", "code": probe}}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, r) = s
        .post("actions/probe?blocking=true&result=true", json!({}))
        .await;
    assert_eq!(st, 200, "{r}");
    assert!(
        r["pids"].as_u64().unwrap() <= 5,
        "host processes visible: {r}"
    );
    assert_ne!(r["uid"], 0, "runs as root: {r}");
    for denied in [
        "shadow",
        "data_dir",
        "write_usr",
        "write_code",
        "postgres",
        "nimbus",
        "unshare",
    ] {
        assert_eq!(r[denied], false, "{denied} should be denied: {r}");
    }
    assert_eq!(r["write_tmp"], true, "{r}");
    // With outbound network the host's loopback services stay out of reach.
    let (st, _) = s
        .put(
            "actions/probe-out",
            json!({"exec": {"kind": "python:3.11", "code": probe},
                   "annotations": [{"key": "network", "value": "outbound"}]}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, r) = s
        .post("actions/probe-out?blocking=true&result=true", json!({}))
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (r["postgres"].clone(), r["nimbus"].clone()),
        (json!(false), json!(false)),
        "{r}"
    );

    // A fork bomb and a memory hog are contained, and the platform stays responsive.
    let bomb = "import os\ndef main(a):\n    n = 0\n    try:\n        for _ in range(10000):\n            if os.fork() == 0:\n                import time\n                time.sleep(30)\n                os._exit(0)\n            n += 1\n    except OSError as e:\n        return {'forked': n, 'stopped': str(e)}\n    return {'forked': n}\n";
    s.put(
        "actions/bomb",
        json!({"exec": {"kind": "python:3.11", "code": bomb}, "limits": {"timeout": 10000}}),
    )
    .await;
    let (st, r) = s
        .post("actions/bomb?blocking=true&result=true", json!({}))
        .await;
    assert_eq!(st, 200, "{r}");
    assert!(
        r["forked"].as_u64().unwrap() < 100,
        "the pids limit stopped it: {r}"
    );
    let hog = "def main(a):\n    x = bytearray(600 * 1024 * 1024)\n    return {'len': len(x)}\n";
    s.put(
        "actions/hog",
        json!({"exec": {"kind": "python:3.11", "code": hog}, "limits": {"memory": 128}}),
    )
    .await;
    let (st, r) = s.post("actions/hog?blocking=true", json!({})).await;
    assert_eq!(st, 502, "{r}");
    assert!(
        r["response"]["result"]["error"]
            .as_str()
            .unwrap()
            .contains("memory limit exceeded"),
        "{r}"
    );
    let (st, _) = s
        .post("actions/probe?blocking=true&result=true", json!({}))
        .await;
    assert_eq!(st, 200, "still serving");
}

#[tokio::test]
async fn nodejs_instances_serve_concurrent_activations() {
    let s = Server::start(&["--dev"]).await;
    let code = "function main(p){ console.log('hello ' + p.n); return new Promise(r => setTimeout(() => r({n: p.n}), 1000)) }";
    let (st, a) = s
        .put(
            "actions/shared",
            json!({"exec": {"kind": "nodejs:20", "code": code}, "limits": {"concurrency": 5}}),
        )
        .await;
    assert_eq!(st, 200, "{a}");
    let mut calls = Vec::new();
    for n in 0..5 {
        let (client, url) = (s.client.clone(), s.url("actions/shared?blocking=true"));
        let (u, k) = GUEST.split_once(':').unwrap();
        let (u, k) = (u.to_string(), k.to_string());
        calls.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .basic_auth(u, Some(k))
                .json(&json!({"n": n}))
                .send()
                .await
                .unwrap();
            (n, r.json::<Value>().await.unwrap())
        }));
    }
    let mut cold = 0;
    for c in calls {
        let (n, a) = c.await.unwrap();
        assert_eq!(a["response"]["result"], json!({"n": n}), "{a}");
        let logs: Vec<&str> = a["logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert_eq!(logs.len(), 1, "only its own log line: {logs:?}");
        assert!(logs[0].ends_with(&format!("stdout: hello {n}")), "{logs:?}");
        cold += a["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|kv| kv["key"] == "start" && kv["value"] == "cold")
            .count();
    }
    assert_eq!(cold, 1, "five concurrent activations shared one instance");
    let (_, v) = s.get("instances?name=shared").await;
    assert_eq!(v["instances"].as_array().unwrap().len(), 1, "{v}");

    let (st, b) = s
        .put("actions/pyshared", json!({"exec": {"kind": "python:3.11", "code": "def main(a):\n    return a\n"}, "limits": {"concurrency": 2}}))
        .await;
    assert_eq!(st, 400, "{b}");
}

#[tokio::test]
async fn cold_starts_take_stem_cells_which_are_replaced() {
    let s = Server::start(&["--dev"]).await;
    let stems = |v: &Value| v["pool"]["stemCells"]["python:3.11"].as_u64().unwrap_or(0);
    let wait_for_stem = || async {
        for _ in 0..150 {
            let (_, v) = s.get("instances").await;
            if stems(&v) >= 1 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(wait_for_stem().await, "a python stem cell is pre-started");
    s.put("actions/stemmed", json!({"exec": {"kind": "python:3.11", "code": "def main(a):\n    print('loaded')\n    return {'ok': True}\n"}}))
        .await;
    let (st, a) = s.post("actions/stemmed?blocking=true", json!({})).await;
    assert_eq!(st, 200, "{a}");
    let ann = a["annotations"].as_array().unwrap();
    assert!(
        ann.iter()
            .any(|kv| kv["key"] == "stemCell" && kv["value"] == true),
        "{a}"
    );
    assert!(
        ann.iter()
            .any(|kv| kv["key"] == "start" && kv["value"] == "cold"),
        "{a}"
    );
    assert!(
        a["logs"][0].as_str().unwrap().ends_with("stdout: loaded"),
        "{a}"
    );
    assert!(wait_for_stem().await, "the used stem cell is replaced");
}

/// Python starts without `site` (`-S`); the interpreter's installed packages must still import.
#[tokio::test]
async fn python_functions_import_installed_packages() {
    let s = Server::start(&["--dev"]).await;
    let code = "import pip\ndef main(a):\n    return {'pip': bool(pip.__version__)}\n";
    s.put(
        "actions/pkgs",
        json!({"exec": {"kind": "python:3.11", "code": code}}),
    )
    .await;
    let (st, r) = s
        .post("actions/pkgs?blocking=true&result=true", json!({}))
        .await;
    assert_eq!((st, r.clone()), (200, json!({"pip": true})), "{r}");
}
