//! Node.js instances with `limits.concurrency > 1` (several activations at once in one process),
//! against real `node` and `python3`. Overlap is asserted with the activations' own clocks
//! (every entry before any exit), never with wall-clock thresholds.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use nimbus_runtime::{ConcurrentRunner, InstanceSpec, RunOutcome, RunResult};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const EXITED: &str = "The action did not produce a valid response and exited unexpectedly.";

/// Sleeps `ms` (500 by default) and returns its entry and exit times, its own parameter and
/// the activation id it sees in `process.env` after the sleep.
const SLEEPER: &str = r#"
function main(params) {
    const entered = Date.now();
    console.log("start " + params.n + "\nsecond line of " + params.n);
    return new Promise((resolve) => setTimeout(() => {
        console.error("end", params.n);
        resolve({ n: params.n, entered, left: Date.now(), id: process.env.__OW_ACTIVATION_ID });
    }, params.ms || 500));
}
"#;

fn concurrent_spec(kind: &str, code: &str, n: u64) -> InstanceSpec {
    let mut s = spec(kind, code);
    s.limits.concurrency = n;
    s
}

fn req(id: &str, value: Value, timeout: Duration) -> nimbus_runtime::RunRequest {
    let mut r = request(value);
    r.activation_id = id.into();
    r.timeout = timeout;
    r
}

/// Runs `reqs` at once on `runner`, returning the outcomes in order.
async fn run_all(
    runner: &Arc<dyn ConcurrentRunner>,
    reqs: Vec<nimbus_runtime::RunRequest>,
) -> Vec<RunOutcome> {
    let handles: Vec<_> = reqs
        .into_iter()
        .map(|r| {
            let runner = runner.clone();
            tokio::spawn(async move { runner.run(r).await })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Four 500 ms activations on a concurrency-4 instance: they overlap, every result goes to its
/// own caller, and each one's logs are its own console lines only.
async fn check_four_overlap(runner: &Arc<dyn ConcurrentRunner>) {
    let reqs = (0..4)
        .map(|n| req(&format!("act{n}"), json!({"n": n}), Duration::from_secs(30)))
        .collect();
    let outs = run_all(runner, reqs).await;
    let mut entries = Vec::new();
    let mut exits = Vec::new();
    for (n, out) in outs.iter().enumerate() {
        let RunResult::Ok(v) = &out.result else {
            panic!("activation {n}: {:?}", out.result)
        };
        assert!(out.reusable);
        assert_eq!(v["n"], json!(n), "result went to the wrong caller");
        assert_eq!(v["id"], json!(format!("act{n}")), "per-activation env");
        entries.push(v["entered"].as_i64().unwrap());
        exits.push(v["left"].as_i64().unwrap());
        assert_eq!(
            texts(out),
            [
                format!("stdout: start {n}"),
                format!("stdout: second line of {n}"),
                format!("stderr: end {n}"),
            ],
            "logs of activation {n}"
        );
    }
    assert!(
        entries.iter().max() < exits.iter().min(),
        "activations did not overlap: entries {entries:?}, exits {exits:?}"
    );
}

#[tokio::test]
async fn node_runs_activations_concurrently_with_their_own_results_and_logs() {
    let (work, rt) = runtime();
    let mut inst = start(&rt, &concurrent_spec("nodejs:20", SLEEPER, 4)).await;
    let runner = inst.concurrent().expect("a concurrent runner");
    check_four_overlap(&runner).await;
    // Again on the same warm process, and through `Instance::run` as well.
    check_four_overlap(&runner).await;
    let out = inst
        .run(req(
            "seq",
            json!({"n": 9, "ms": 1}),
            Duration::from_secs(30),
        ))
        .await;
    assert!(matches!(&out.result, RunResult::Ok(v) if v["n"] == 9));
    assert_eq!(texts(&out)[0], "stdout: start 9");
    inst.shutdown().await;
    assert_eq!(instance_dirs(&work), 0);
}

#[tokio::test]
async fn stem_cell_specialized_with_concurrency_runs_concurrently() {
    let (_work, rt) = runtime();
    let cell = prestart(&rt, "nodejs:20").await;
    let mut inst = specialize(cell, &concurrent_spec("nodejs:20", SLEEPER, 4)).await;
    let runner = inst.concurrent().expect("a concurrent runner");
    check_four_overlap(&runner).await;
    let out = inst
        .run(req(
            "one",
            json!({"n": 5, "ms": 1}),
            Duration::from_secs(30),
        ))
        .await;
    assert!(matches!(&out.result, RunResult::Ok(v) if v["n"] == 5 && v["id"] == "one"));
    inst.shutdown().await;
}

#[tokio::test]
async fn timeout_of_one_activation_kills_the_instance_and_fails_the_others() {
    let (work, rt) = runtime();
    let code = r#"
function main(params) {
    console.log("begin " + params.n);
    return new Promise((resolve) => setTimeout(() => resolve({ n: params.n }), params.ms));
}
"#;
    let mut inst = start(&rt, &concurrent_spec("nodejs:20", code, 3)).await;
    let runner = inst.concurrent().unwrap();
    let outs = run_all(
        &runner,
        vec![
            req(
                "slow",
                json!({"n": 0, "ms": 60_000}),
                Duration::from_millis(700),
            ),
            req("b", json!({"n": 1, "ms": 20_000}), Duration::from_secs(60)),
            req("c", json!({"n": 2, "ms": 20_000}), Duration::from_secs(60)),
        ],
    )
    .await;
    assert_eq!(outs[0].result, RunResult::Timeout);
    assert_eq!(texts(&outs[0]), ["stdout: begin 0"]);
    for (n, out) in outs.iter().enumerate().skip(1) {
        assert_eq!(out.result, RunResult::DeveloperError(EXITED.into()));
        assert_eq!(texts(out), [format!("stdout: begin {n}")]);
    }
    assert!(outs.iter().all(|o| !o.reusable));
    // The instance is gone: later runs fail at once.
    let out = runner
        .run(req(
            "late",
            json!({"n": 3, "ms": 1}),
            Duration::from_secs(30),
        ))
        .await;
    assert_eq!(out.result, RunResult::DeveloperError(EXITED.into()));
    assert!(!out.reusable);
    let out = inst.run(request(json!({}))).await;
    assert!(!out.reusable);
    inst.shutdown().await;
    assert_eq!(instance_dirs(&work), 0, "the killed instance was released");
}

#[tokio::test]
async fn results_are_classified_as_in_sequential_mode_and_log_limits_are_per_activation() {
    let (_work, rt) = runtime();
    let code = r#"
function main(params) {
    switch (params.kind) {
        case "throw": throw new TypeError("bad " + params.kind);
        case "reject": return Promise.reject(new Error("nope"));
        case "number": return 42;
        case "array": return [1, 2];
        case "none": return undefined;
        case "chatty":
            for (let i = 0; i < 100; i++) console.log("x".repeat(100));
            return { chatty: true };
        case "raw":
            // Untagged output goes to every activation in flight.
            return new Promise((resolve) => setTimeout(() => {
                process.stdout.write("untagged\n");
                setTimeout(() => resolve({ raw: true }), 200);
            }, 200));
        default:
            return new Promise((resolve) => setTimeout(() => resolve({ waited: true }), 600));
    }
}
"#;
    let inst = start(&rt, &concurrent_spec("nodejs:20", code, 8)).await;
    let runner = inst.concurrent().unwrap();
    let t = Duration::from_secs(30);
    let mut reqs: Vec<_> = [
        "throw", "reject", "number", "array", "none", "chatty", "raw", "wait",
    ]
    .iter()
    .map(|k| req(k, json!({"kind": k}), t))
    .collect();
    reqs[5].log_limit_bytes = 1000;
    let outs = run_all(&runner, reqs).await;
    assert_eq!(
        outs[0].result,
        RunResult::DeveloperError("An error has occurred: TypeError: bad throw".into())
    );
    assert!(texts(&outs[0])[0].starts_with("stderr: TypeError: bad throw"));
    assert_eq!(outs[1].result, RunResult::Ok(json!({"error": "nope"})));
    assert!(
        texts(&outs[1])
            .iter()
            .all(|l| l.starts_with("stderr: ") && !l.contains('\u{1e}'))
    );
    assert_eq!(
        outs[2].result,
        RunResult::DeveloperError("The action did not return a dictionary or array.".into())
    );
    assert_eq!(outs[3].result, RunResult::Ok(json!([1, 2])));
    assert_eq!(outs[4].result, RunResult::Ok(json!({})));
    assert_eq!(outs[5].result, RunResult::Ok(json!({"chatty": true})));
    let chatty = texts(&outs[5]);
    assert_eq!(chatty.len(), 10, "9 lines of 101 bytes, then the marker");
    assert!(chatty[9].contains("Logs were truncated"));
    assert_eq!(outs[6].result, RunResult::Ok(json!({"raw": true})));
    assert_eq!(texts(&outs[6]), ["stdout: untagged"]);
    assert_eq!(outs[7].result, RunResult::Ok(json!({"waited": true})));
    assert_eq!(texts(&outs[7]), ["stdout: untagged"]);
    assert!(outs.iter().all(|o| o.reusable));
    inst.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_runs_in_flight() {
    let (work, rt) = runtime();
    let inst = start(&rt, &concurrent_spec("nodejs:20", SLEEPER, 2)).await;
    let runner = inst.concurrent().unwrap();
    let pending = tokio::spawn({
        let runner = runner.clone();
        async move {
            runner
                .run(req(
                    "x",
                    json!({"n": 1, "ms": 60_000}),
                    Duration::from_secs(120),
                ))
                .await
        }
    });
    // A quick second activation: while it waits for its answer, the spawned run gets to
    // register and send its request, so it is in flight when the instance shuts down.
    let quick = runner
        .run(req("q", json!({"n": 2, "ms": 1}), Duration::from_secs(30)))
        .await;
    assert!(quick.reusable);
    inst.shutdown().await;
    let out = pending.await.unwrap();
    assert_eq!(out.result, RunResult::DeveloperError(EXITED.into()));
    assert!(!out.reusable);
    assert_eq!(instance_dirs(&work), 0);
}

#[tokio::test]
async fn python_and_exec_run_one_activation_at_a_time() {
    let (_work, rt) = runtime();
    let py = "def main(args):\n    return {'n': args.get('n')}\n";
    let sh =
        "#!/bin/sh\necho '{\"ok\":true}' >&3\nwhile read line; do echo '{\"sh\":1}' >&3; done\n";
    for (kind, code) in [("python:3.11", py), ("exec", sh)] {
        let mut inst = start(&rt, &concurrent_spec(kind, code, 4)).await;
        assert!(inst.concurrent().is_none(), "{kind}");
        let out = inst.run(request(json!({"n": 1}))).await;
        assert!(
            matches!(out.result, RunResult::Ok(_)),
            "{kind}: {:?}",
            out.result
        );
        inst.shutdown().await;
    }
    // And a Node.js instance with concurrency 1 is an ordinary sequential one.
    let inst = start(&rt, &concurrent_spec("nodejs:20", SLEEPER, 1)).await;
    assert!(inst.concurrent().is_none());
    inst.shutdown().await;
}

/// The same multiplexing through the bubblewrap sandbox (stdin, fd 3 and the extra launcher
/// argument all pass through it). Skipped where bwrap does not work.
#[tokio::test]
async fn concurrent_instances_work_inside_the_sandbox() {
    let sb = nimbus_sandbox::Sandbox::detect(Arc::new(nimbus_sandbox::RealHost));
    if sb.layers().bwrap.is_none() {
        eprintln!("SKIPPED: bwrap does not work here: {:?}", sb.warnings());
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let rt = nimbus_runtime::ProcessRuntime::new(nimbus_runtime::ProcessRuntimeConfig {
        work_dir: work.path().to_path_buf(),
        sandbox: Some(Arc::new(sb)),
        ..Default::default()
    })
    .unwrap();
    let inst = start(&rt, &concurrent_spec("nodejs:20", SLEEPER, 4)).await;
    check_four_overlap(&inst.concurrent().unwrap()).await;
    inst.shutdown().await;
    let cell = prestart(&rt, "nodejs:20").await;
    let inst = specialize(cell, &concurrent_spec("nodejs:20", SLEEPER, 4)).await;
    check_four_overlap(&inst.concurrent().unwrap()).await;
    inst.shutdown().await;
}
