//! Rule filters, retries with backoff, dead letters (list, get, redrive, purge, isolation),
//! durable retries across a restart, and per-key ordering, against a real `nimbus serve`.
#![allow(clippy::unwrap_used)]

mod common;

use common::{GUEST, SYSTEM, Server};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const ECHO: &str = "function main(p) { return p; }";

async fn action(s: &Server, name: &str, code: &str) {
    let (st, v) = s
        .req(
            Method::PUT,
            &format!("actions/{name}?overwrite=true"),
            GUEST,
            Some(json!({"exec": {"kind": "nodejs:20", "code": code}})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
}

async fn trigger_and_rule(s: &Server, t: &str, r: &str, a: &str, extra: Value) {
    let (st, v) = s.put(&format!("triggers/{t}"), json!({})).await;
    assert_eq!(st, 200, "{v}");
    let mut body = json!({"trigger": format!("/_/{t}"), "action": format!("/_/{a}")});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (st, v) = s.put(&format!("rules/{r}"), body).await;
    assert_eq!(st, 200, "{v}");
}

/// Fires and returns the per-rule log entries of the trigger activation.
async fn fire(s: &Server, t: &str, payload: Value) -> Vec<Value> {
    let (st, v) = s.post(&format!("triggers/{t}"), payload).await;
    assert_eq!(st, 202, "{v}");
    let rec = s
        .wait_activation(v["activationId"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    rec["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l.as_str().unwrap()).unwrap())
        .collect()
}

fn annotation<'a>(rec: &'a Value, key: &str) -> Option<&'a Value> {
    rec["annotations"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

/// Activations of `name`, oldest first, once there are at least `n`.
async fn activations_of(s: &Server, name: &str, n: usize, within: Duration) -> Vec<Value> {
    let path = format!("activations?name={name}&docs=true&limit=200");
    let mut list = s.list_at_least(&path, GUEST, n, within).await;
    list.sort_by_key(|a| a["start"].as_i64().unwrap());
    list
}

/// The dead letters of the caller's namespace once there are at least `n`.
async fn dead_letters(s: &Server, auth: &str, n: usize, within: Duration) -> Vec<Value> {
    s.list_at_least("deadletters", auth, n, within).await
}

#[tokio::test]
async fn rule_filters_match_skip_and_report_errors() {
    let s = Server::start(&["--dev"]).await;
    action(&s, "echo", ECHO).await;
    let filter = r#"payload.temp > 50 && topic.startsWith("sensors/")"#;
    trigger_and_rule(&s, "t", "hot", "echo", json!({"filter": filter})).await;

    let (st, rule) = s.get("rules/hot").await;
    assert_eq!(st, 200);
    assert_eq!(annotation(&rule, "filter"), Some(&json!(filter)));

    // Matches: the action runs with the event.
    let logs = fire(
        &s,
        "t",
        json!({"topic": "sensors/a", "payload": {"temp": 72.5}}),
    )
    .await;
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0]["success"], true, "{}", logs[0]);
    let run = s
        .wait_activation(
            logs[0]["activationId"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(run["response"]["result"]["payload"]["temp"], 72.5);

    // Does not match: recorded as filtered, nothing runs.
    for ev in [
        json!({"topic": "sensors/a", "payload": {"temp": 20}}),
        json!({"topic": "other/a", "payload": {"temp": 90}}),
    ] {
        let logs = fire(&s, "t", ev).await;
        assert_eq!(logs[0]["filtered"], true, "{}", logs[0]);
        assert!(logs[0].get("activationId").is_none());
    }

    // Cannot be evaluated (missing field, wrong type): does not fire, says why.
    for ev in [
        json!({"topic": "sensors/a"}),
        json!({"topic": "sensors/a", "payload": {"temp": "hot"}}),
    ] {
        let logs = fire(&s, "t", ev).await;
        assert_eq!(logs[0]["success"], false, "{}", logs[0]);
        assert_eq!(logs[0]["statusCode"], 4);
        assert!(
            logs[0]["error"].as_str().unwrap().contains("filter"),
            "{}",
            logs[0]
        );
        assert!(logs[0].get("activationId").is_none());
    }
    let runs = activations_of(&s, "echo", 1, Duration::from_secs(5)).await;
    assert_eq!(runs.len(), 1, "only the matching event ran the action");

    // Invalid expressions are refused with the parser's message, on create and on update.
    let (st, v) = s
        .put(
            "rules/bad",
            json!({"trigger": "/_/t", "action": "/_/echo", "filter": "payload.temp > "}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("not valid CEL"),
        "{v}"
    );
    let (st, _) = s.get("rules/bad").await;
    assert_eq!(st, 404, "nothing stored");
    let (st, v) = s
        .put("rules/hot?overwrite=true", json!({"filter": "temp >>> 3"}))
        .await;
    assert_eq!(st, 400, "{v}");
    let (_, rule) = s.get("rules/hot").await;
    assert_eq!(
        annotation(&rule, "filter"),
        Some(&json!(filter)),
        "unchanged"
    );
    // The annotation route works too, and an empty filter removes it.
    let (st, v) = s
        .put(
            "rules/hot?overwrite=true",
            json!({"annotations": [{"key": "filter", "value": "1 +"}]}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    let (st, rule) = s
        .put("rules/hot?overwrite=true", json!({"filter": ""}))
        .await;
    assert_eq!(st, 200, "{rule}");
    assert_eq!(annotation(&rule, "filter"), None);
    let logs = fire(&s, "t", json!({"anything": 1})).await;
    assert!(logs[0]["activationId"].is_string(), "{}", logs[0]);
}

#[tokio::test]
async fn failing_actions_are_retried_with_backoff_dead_lettered_and_redriven() {
    let s = Server::start(&["--dev"]).await;
    action(
        &s,
        "flaky",
        "function main(p) { return {error: 'device ' + p.device + ' not ready'}; }",
    )
    .await;
    trigger_and_rule(
        &s,
        "t",
        "r",
        "flaky",
        json!({"retry": {"maxAttempts": 3, "initialDelayMs": 300, "maxDelayMs": 5000}}),
    )
    .await;
    let (st, v) = s
        .put(
            "rules/r2",
            json!({"trigger": "/_/t", "action": "/_/flaky", "retry": {"maxAttempts": 0}}),
        )
        .await;
    assert_eq!(st, 400, "{v}");

    let logs = fire(&s, "t", json!({"device": "d7", "temp": 3})).await;
    let first = logs[0]["activationId"].as_str().unwrap().to_string();
    let dls = dead_letters(&s, GUEST, 1, Duration::from_secs(60)).await;
    assert_eq!(dls.len(), 1);
    let dl = &dls[0];
    assert_eq!(dl["source"], "rule:guest/r");
    assert_eq!(dl["attempts"], 3);
    assert_eq!(dl["event"]["device"], "d7");
    assert_eq!(dl["event"]["temp"], 3);
    assert!(
        dl["reason"].as_str().unwrap().contains("d7 not ready"),
        "{dl}"
    );
    assert_eq!(dl["details"]["rule"], "guest/r");

    // Three attempts, each its own activation, spaced by at least the (jittered) backoff.
    let runs = activations_of(&s, "flaky", 3, Duration::from_secs(10)).await;
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[0]["activationId"], first);
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(annotation(run, "attempt"), Some(&json!(i + 1)));
        assert_eq!(annotation(run, "rule"), Some(&json!("guest/r")));
        assert_eq!(run["response"]["success"], false);
    }
    let delays: Vec<i64> = runs[..2]
        .iter()
        .map(|r| annotation(r, "retry").unwrap()["delayMs"].as_i64().unwrap())
        .collect();
    assert!((150..=300).contains(&delays[0]), "{delays:?}");
    assert!((300..=600).contains(&delays[1]), "{delays:?}");
    for i in 0..2 {
        let next = annotation(&runs[i], "retry").unwrap()["nextActivationId"].clone();
        assert_eq!(next, runs[i + 1]["activationId"]);
        let gap = runs[i + 1]["start"].as_i64().unwrap() - runs[i]["end"].as_i64().unwrap();
        assert!(
            gap >= delays[i],
            "attempt {} started {gap} ms after the failure",
            i + 2
        );
    }
    assert_eq!(annotation(&runs[2], "deadLetter"), Some(&dl["id"]));
    assert_eq!(dl["details"]["lastActivationId"], runs[2]["activationId"]);

    // Inspect one.
    let id = dl["id"].as_str().unwrap().to_string();
    let (st, got) = s.get(&format!("deadletters/{id}")).await;
    assert_eq!(st, 200);
    assert_eq!(&got, dl);

    // Fix the action, redrive: it runs with the original event and the entry is gone.
    action(&s, "flaky", "function main(p) { return {ok: p.device}; }").await;
    let (st, v) = s
        .post(&format!("deadletters/{id}/redrive"), json!({}))
        .await;
    assert_eq!(st, 202, "{v}");
    let run = s
        .wait_activation(v["activationId"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(run["response"]["success"], true, "{run}");
    assert_eq!(run["response"]["result"]["ok"], "d7");
    let (st, _) = s.get(&format!("deadletters/{id}")).await;
    assert_eq!(st, 404);
    let (st, _) = s
        .post(&format!("deadletters/{id}/redrive"), json!({}))
        .await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn dead_letters_purge_and_namespace_isolation() {
    let s = Server::start(&["--dev"]).await;
    action(
        &s,
        "fail",
        "function main(p) { throw new Error('boom ' + p.n); }",
    )
    .await;
    trigger_and_rule(&s, "t", "r", "fail", json!({"retry": {"maxAttempts": 1}})).await;
    for n in 0..3 {
        fire(&s, "t", json!({"n": n})).await;
    }
    let dls = dead_letters(&s, GUEST, 3, Duration::from_secs(60)).await;
    assert_eq!(dls.len(), 3);
    assert!(dls.iter().all(|d| d["attempts"] == 1));
    let (_, count) = s.get("deadletters?count=true").await;
    assert_eq!(count, json!({"deadletters": 3}));
    let id = dls[0]["id"].as_str().unwrap().to_string();

    // Another namespace sees none of them and can touch none of them.
    let (st, v) = s.req(Method::GET, "deadletters", SYSTEM, None).await;
    assert_eq!((st, v), (200, json!([])));
    for (m, path) in [
        (Method::GET, format!("deadletters/{id}")),
        (Method::DELETE, format!("deadletters/{id}")),
        (Method::POST, format!("deadletters/{id}/redrive")),
    ] {
        let (st, v) = s.req(m, &path, SYSTEM, None).await;
        assert_eq!(st, 404, "{path}: {v}");
    }
    let (st, v) = s.req(Method::DELETE, "deadletters", SYSTEM, None).await;
    assert_eq!((st, v), (200, json!({"purged": 0})));
    let (u, k) = SYSTEM.split_once(':').unwrap();
    let r = s
        .client
        .get(format!("{}/api/v1/namespaces/guest/deadletters", s.base))
        .basic_auth(u, Some(k))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        dead_letters(&s, GUEST, 3, Duration::from_secs(1))
            .await
            .len(),
        3
    );

    // Purge one, then all.
    let (st, v) = s
        .req(Method::DELETE, &format!("deadletters/{id}"), GUEST, None)
        .await;
    assert_eq!((st, v), (200, json!({"purged": 1})));
    let (st, _) = s
        .req(Method::DELETE, &format!("deadletters/{id}"), GUEST, None)
        .await;
    assert_eq!(st, 404);
    let (st, _) = s
        .req(Method::GET, "deadletters/not-an-id", GUEST, None)
        .await;
    assert_eq!(st, 404);
    let (st, v) = s.req(Method::DELETE, "deadletters", GUEST, None).await;
    assert_eq!((st, v), (200, json!({"purged": 2})));
    let (_, count) = s.get("deadletters?count=true").await;
    assert_eq!(count, json!({"deadletters": 0}));
}

#[tokio::test]
async fn scheduled_retries_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut s = Server::start_in(&dir, &["--dev"], None).await;
    action(&s, "fail", "function main(p) { return {error: 'down'}; }").await;
    trigger_and_rule(
        &s,
        "t",
        "r",
        "fail",
        json!({"retry": {"maxAttempts": 2, "initialDelayMs": 4000, "maxDelayMs": 4000}}),
    )
    .await;
    fire(&s, "t", json!({"device": "d1"})).await;
    let runs = activations_of(&s, "fail", 1, Duration::from_secs(30)).await;
    // The retry is due at least 2 s after the first failure; stop the server hard before that.
    s.kill9();
    let killed_at = chrono_now();
    let delay = annotation(&runs[0], "retry").unwrap()["delayMs"]
        .as_i64()
        .unwrap();
    assert!(
        runs[0]["end"].as_i64().unwrap() + delay > killed_at,
        "killed too late to tell"
    );
    let port = s.port;
    drop(s);
    let s = Server::start_in(&dir, &["--dev"], Some(port)).await;
    let dls = dead_letters(&s, GUEST, 1, Duration::from_secs(60)).await;
    assert_eq!(dls[0]["attempts"], 2);
    let runs = activations_of(&s, "fail", 2, Duration::from_secs(5)).await;
    assert_eq!(runs.len(), 2, "neither lost nor doubled");
    assert!(runs[1]["start"].as_i64().unwrap() > killed_at);
    assert_eq!(annotation(&runs[1], "attempt"), Some(&json!(2)));
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn events_with_the_same_ordering_key_run_one_at_a_time_in_order() {
    let s = Server::start(&["--dev"]).await;
    // Each run takes a while, so runs of one key would overlap if they were not serialised.
    action(
        &s,
        "slow",
        "function main(p) { return new Promise(r => setTimeout(() => r({device: p.device, seq: p.seq}), 300)); }",
    )
    .await;
    trigger_and_rule(&s, "t", "r", "slow", json!({"orderingKey": "device"})).await;
    let (_, rule) = s.get("rules/r").await;
    assert_eq!(annotation(&rule, "orderingKey"), Some(&json!("device")));
    for seq in 0..4 {
        fire(&s, "t", json!({"device": "d1", "seq": seq})).await;
        fire(&s, "t", json!({"device": "d2", "seq": seq})).await;
    }
    let runs = activations_of(&s, "slow", 8, Duration::from_secs(90)).await;
    for dev in ["d1", "d2"] {
        let mine: Vec<&Value> = runs
            .iter()
            .filter(|r| r["response"]["result"]["device"] == dev)
            .collect();
        assert_eq!(mine.len(), 4);
        for (i, r) in mine.iter().enumerate() {
            assert_eq!(r["response"]["result"]["seq"], i, "{dev} ran out of order");
        }
        for w in mine.windows(2) {
            assert!(
                w[1]["start"].as_i64().unwrap() >= w[0]["end"].as_i64().unwrap(),
                "{dev}: two runs overlapped"
            );
        }
    }
}
