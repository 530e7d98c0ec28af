//! Stem cells (pre-started runtimes) against real `node` and `python3`. No test here asserts
//! anything about time: "promptly" is checked by the kind of error, never by a clock.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use nimbus_runtime::{ProcessRuntime, RunResult, Runtime, RuntimeError};
use nimbus_sandbox::CgroupVersion;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

/// The stem cell's cgroup directory, if cgroups are in use (its name is the instance dir's).
fn cgroup_dir(rt: &ProcessRuntime, name: &str) -> Option<PathBuf> {
    rt.cgroup_manager().map(|m| m.base().join(name))
}

fn memory_limit(rt: &ProcessRuntime, dir: &std::path::Path) -> u64 {
    let file = match rt.cgroup_manager().unwrap().version() {
        CgroupVersion::V1 => "memory.limit_in_bytes",
        CgroupVersion::V2 => "memory.max",
    };
    std::fs::read_to_string(dir.join(file))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

const NODE_COUNTER: &str = r#"
console.log("loading at init");
let n = 0;
function main(params) {
    n += 1;
    console.log("call " + n + " " + params.name);
    console.error("to stderr");
    return { n, name: process.env.__OW_ACTION_NAME, api: process.env.__OW_API_HOST };
}
"#;

const PY_COUNTER: &str = r#"
import os, sys
print("loading at init")
n = 0
def main(args):
    global n
    n += 1
    print("call", n, args.get("name"))
    print("to stderr", file=sys.stderr)
    return {"n": n, "name": os.environ.get("__OW_ACTION_NAME"), "api": os.environ.get("__OW_API_HOST")}
"#;

/// Runs three activations and checks warm state, logs and the environment.
async fn check_counter(inst: &mut Box<dyn nimbus_runtime::Instance>, kind: &str) {
    for n in 1..=3 {
        let out = inst.run(request(json!({"name": "ann"}))).await;
        assert_eq!(
            out.result,
            RunResult::Ok(json!({"n": n, "name": "/guest/test", "api": "http://127.0.0.1:3233"})),
            "{kind}: {:?}",
            out.logs
        );
        assert!(out.reusable, "{kind}");
        let logs = texts(&out);
        // Output of the code's load is not part of any activation (as with a normal start).
        assert_eq!(
            stream(&logs, "stdout"),
            [format!("call {n} ann").as_str()],
            "{kind}"
        );
        assert_eq!(stream(&logs, "stderr"), ["to stderr"], "{kind}");
    }
}

// ---------------------------------------------------------------- prestart

#[tokio::test]
async fn prestart_gives_live_stem_cells_for_node_and_python_and_none_for_exec() {
    let (work, rt) = runtime();
    let node = prestart(&rt, "nodejs:20").await;
    assert_eq!(node.kind(), "nodejs:20");
    let py = prestart(&rt, "python:3.11").await;
    assert_eq!(py.kind(), "python:3.11");

    let pids = stem_pids(&work);
    assert_eq!(pids.len(), 2, "two stem launchers are running: {pids:?}");
    assert!(pids.iter().all(|&p| running(p)));
    // Each has its instance directory with an empty code dir.
    let names = instance_names(&work);
    assert_eq!(names.len(), 2);
    for name in &names {
        let code = work.path().join("instances").join(name).join("code");
        assert_eq!(std::fs::read_dir(&code).unwrap().count(), 0, "{name}");
    }

    assert!(rt.prestart("exec").await.unwrap().is_none());
    assert!(matches!(
        rt.prestart("java:8").await,
        Err(RuntimeError::UnsupportedKind(k)) if k == "java:8"
    ));
    assert_eq!(
        instance_names(&work).len(),
        2,
        "exec and unknown kinds leave nothing behind"
    );

    node.shutdown().await;
    py.shutdown().await;
    assert_eq!(instance_dirs(&work), 0);
    assert!(pids.iter().all(|&p| !running(p)), "shutdown kills them");
}

#[tokio::test]
async fn shutdown_of_an_unused_stem_cell_removes_its_dir_and_cgroup() {
    let (work, rt) = runtime();
    let cell = prestart(&rt, "python:3.11").await;
    let names = instance_names(&work);
    assert_eq!(names.len(), 1);
    let cg = cgroup_dir(&rt, &names[0]);
    match &cg {
        Some(dir) => {
            assert!(dir.is_dir(), "the stem cell has a cgroup");
            assert_eq!(
                memory_limit(&rt, dir),
                nimbus_runtime::process::STEM_MEMORY_MB << 20,
                "placeholder limit until specialisation"
            );
        }
        None => eprintln!("NOTE: no cgroup manager on this machine; cgroup checks skipped"),
    }
    let pids = stem_pids(&work);
    assert_eq!(pids.len(), 1);
    cell.shutdown().await;
    assert_eq!(instance_dirs(&work), 0);
    if let Some(dir) = cg {
        assert!(!dir.exists(), "cgroup removed");
    }
    assert!(!running(pids[0]));
}

// ---------------------------------------------------------------- specialize

#[tokio::test]
async fn node_stem_cell_specializes_with_text_code_and_with_a_zip() {
    let (work, rt) = runtime();
    let cell = prestart(&rt, "nodejs:20").await;
    let mut inst = specialize(cell, &spec("nodejs:20", NODE_COUNTER)).await;
    check_counter(&mut inst, "nodejs:20 text").await;
    inst.shutdown().await;

    let pkg = br#"{"name":"x","main":"lib/entry.js"}"#;
    let entry = br#"const helper = require('./helper');
let calls = 0;
exports.run = (p) => { calls += 1; console.log('zip call', calls); return { calls, v: helper(p.x) }; };"#;
    let helper = b"module.exports = (x) => x * 2;";
    let archive = zip(&[
        ("package.json", pkg, 0o644),
        ("lib/entry.js", entry, 0o644),
        ("lib/helper.js", helper, 0o644),
    ]);
    let mut s = binary_spec("nodejs:20", &archive);
    s.main = "run".into();
    let cell = prestart(&rt, "nodejs:20").await;
    let mut inst = specialize(cell, &s).await;
    for calls in 1..=2 {
        let out = inst.run(request(json!({"x": 21}))).await;
        assert_eq!(out.result, RunResult::Ok(json!({"calls": calls, "v": 42})));
        assert_eq!(
            stream(&texts(&out), "stdout"),
            [format!("zip call {calls}").as_str()]
        );
    }
    inst.shutdown().await;
    assert_eq!(instance_dirs(&work), 0);
}

#[tokio::test]
async fn python_stem_cell_specializes_with_text_code_and_with_a_zip() {
    let (work, rt) = runtime();
    let cell = prestart(&rt, "python:3.11").await;
    let mut inst = specialize(cell, &spec("python:3.11", PY_COUNTER)).await;
    check_counter(&mut inst, "python:3.11 text").await;
    inst.shutdown().await;

    let main_py = b"import helper\ncount = 0\ndef main(args):\n    global count\n    count += 1\n    print('zip call', count)\n    return {'count': count, 'v': helper.double(args['x'])}\n";
    let helper_py = b"def double(x):\n    return 2 * x\n";
    let archive = zip(&[
        ("__main__.py", main_py, 0o644),
        ("helper.py", helper_py, 0o644),
    ]);
    let cell = prestart(&rt, "python:3.11").await;
    let mut inst = specialize(cell, &binary_spec("python:3.11", &archive)).await;
    for count in 1..=2 {
        let out = inst.run(request(json!({"x": 21}))).await;
        assert_eq!(out.result, RunResult::Ok(json!({"count": count, "v": 42})));
        assert_eq!(
            stream(&texts(&out), "stdout"),
            [format!("zip call {count}").as_str()]
        );
    }
    inst.shutdown().await;
    assert_eq!(instance_dirs(&work), 0);
}

#[tokio::test]
async fn python_stem_launcher_does_not_import_asyncio_up_front() {
    let (_work, rt) = runtime();
    let code = "import sys\ndef main(a):\n    return {'asyncio': 'asyncio' in sys.modules}\n";
    let cell = prestart(&rt, "python:3.11").await;
    let mut inst = specialize(cell, &spec("python:3.11", code)).await;
    assert_eq!(
        inst.run(request(json!({}))).await.result,
        RunResult::Ok(json!({"asyncio": false}))
    );
    inst.shutdown().await;
}

#[tokio::test]
async fn load_errors_during_specialize_are_init_errors_with_messages_and_logs() {
    let (work, rt) = runtime();

    let cell = prestart(&rt, "nodejs:20").await;
    let code = "console.log('before the error');\nfunction main() {\n  return {a: 1\n}\nfoo bar\n";
    let err = specialize_err(cell, &spec("nodejs:20", code)).await;
    let RuntimeError::Init { message, logs } = err else {
        panic!("expected an init error, got {err}")
    };
    // Same message as a normal start of the same code.
    assert!(
        message.contains("SyntaxError") && message.contains("index.js:5"),
        "{message}"
    );
    let (cold_message, _) = start_err(&rt, &spec("nodejs:20", code)).await;
    assert_eq!(message, cold_message);
    assert!(
        strip(&logs).iter().any(|l| l.starts_with("stderr: ")),
        "the stack is in the init logs: {logs:?}"
    );

    let cell = prestart(&rt, "python:3.11").await;
    let code = "print('loading')\ndef main(a):\n    return {\n\ndef x(:\n";
    let err = specialize_err(cell, &spec("python:3.11", code)).await;
    let RuntimeError::Init { message, logs } = err else {
        panic!("expected an init error, got {err}")
    };
    assert!(
        message.starts_with("SyntaxError") && message.contains("line"),
        "{message}"
    );
    assert!(
        strip(&logs).iter().any(|l| l.starts_with("stderr: ")),
        "{logs:?}"
    );

    // Output printed while loading is captured, as with a normal start.
    let cell = prestart(&rt, "python:3.11").await;
    let code = "print('loading')\nraise ValueError('boom')\n";
    let err = specialize_err(cell, &spec("python:3.11", code)).await;
    let RuntimeError::Init { message, logs } = err else {
        panic!("expected an init error, got {err}")
    };
    assert_eq!(message, "ValueError: boom");
    let logs = strip(&logs);
    assert_eq!(stream(&logs, "stdout"), ["loading"]);
    assert!(
        stream(&logs, "stderr").iter().any(|l| l.contains("boom")),
        "{logs:?}"
    );

    // Missing main and bad zips: the same messages as a normal start.
    let cell = prestart(&rt, "python:3.11").await;
    let mut s = spec("python:3.11", "def handler(a):\n    return {}\n");
    s.main = "xyz".into();
    let err = specialize_err(cell, &s).await;
    assert!(
        matches!(&err, RuntimeError::Init { message, .. } if message == "main function 'xyz' not found"),
        "{err}"
    );
    let cell = prestart(&rt, "nodejs:20").await;
    let archive = zip(&[("other.js", b"x", 0o644)]);
    let err = specialize_err(cell, &binary_spec("nodejs:20", &archive)).await;
    assert!(
        matches!(&err, RuntimeError::Init { message, .. } if message.contains("package.json")),
        "{err}"
    );

    assert_eq!(instance_dirs(&work), 0, "failed specializations clean up");
}

#[tokio::test]
async fn specializing_a_killed_stem_cell_fails_with_a_platform_error() {
    let (work, rt) = runtime();
    // A generous timeout: an error saying "time limit" would mean specialize waited for it.
    let long = Duration::from_secs(120);

    // Killed and reaped by the kernel before specialize.
    for kind in ["nodejs:20", "python:3.11"] {
        let cell = prestart(&rt, kind).await;
        let pids = stem_pids(&work);
        assert_eq!(pids.len(), 1);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pids[0]),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        for _ in 0..1000 {
            if !running(pids[0]) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!running(pids[0]), "SIGKILL took effect");
        let code = if kind == "nodejs:20" {
            NODE_COUNTER
        } else {
            PY_COUNTER
        };
        match cell.specialize(&spec(kind, code), long).await {
            Err(RuntimeError::Platform(m)) => {
                assert!(m.contains("exited") || m.contains("killed"), "{m}");
                assert!(!m.contains("time limit"), "{m}");
            }
            Err(e) => panic!("{kind}: expected a platform error, got {e}"),
            Ok(_) => panic!("{kind}: a dead stem cell specialized"),
        }
        assert_eq!(instance_dirs(&work), 0);
    }

    // Killed right before specialize, with no chance to notice: still an error, not a hang.
    let cell = prestart(&rt, "python:3.11").await;
    let pid = stem_pids(&work)[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    match cell
        .specialize(&spec("python:3.11", PY_COUNTER), long)
        .await
    {
        // Noticed only once the init line goes unanswered: the SIGKILL (not by the memory
        // limit) still makes it the platform's problem.
        Err(RuntimeError::Platform(m)) => {
            assert!(m.contains("killed") || m.contains("exited"), "{m}");
            assert!(!m.contains("time limit"), "{m}");
        }
        Err(e) => panic!("expected a platform error, got {e}"),
        Ok(_) => panic!("a dead stem cell specialized"),
    }
    assert_eq!(instance_dirs(&work), 0);
}

#[tokio::test]
async fn a_stem_cell_of_another_kind_is_refused() {
    let (work, rt) = runtime();
    let cell = prestart(&rt, "nodejs:20").await;
    let err = specialize_err(cell, &spec("python:3.11", PY_COUNTER)).await;
    assert!(matches!(err, RuntimeError::Platform(_)), "{err}");
    assert_eq!(instance_dirs(&work), 0);
}

// ---------------------------------------------------------------- memory

#[tokio::test]
async fn memory_limit_is_applied_at_specialize() {
    let (work, rt) = runtime();
    if rt.cgroup_manager().is_none() {
        eprintln!(
            "SKIPPED memory_limit_is_applied_at_specialize: no cgroup manager on this machine"
        );
        return;
    }
    let cell = prestart(&rt, "python:3.11").await;
    let name = instance_names(&work).pop().unwrap();
    let cg = cgroup_dir(&rt, &name).unwrap();
    let mut s = spec(
        "python:3.11",
        "def main(a):\n    data = b'x' * (a['mb'] * 1024 * 1024)\n    return {'len': len(data)}\n",
    );
    s.limits.memory = 128;
    let mut inst = specialize(cell, &s).await;
    assert_eq!(memory_limit(&rt, &cg), 128 << 20);
    // Within the limit it works, and stays warm.
    let out = inst.run(request(json!({"mb": 32}))).await;
    assert_eq!(out.result, RunResult::Ok(json!({"len": 32 << 20})));
    let out = inst.run(request(json!({"mb": 512}))).await;
    assert_eq!(out.result, RunResult::MemoryExceeded, "{:?}", out.logs);
    assert!(!out.reusable);
    inst.shutdown().await;
    assert!(!cg.exists());

    // A limit above the placeholder is raised (swap limit first on cgroup v1).
    let cell = prestart(&rt, "nodejs:20").await;
    let name = instance_names(&work).pop().unwrap();
    let cg = cgroup_dir(&rt, &name).unwrap();
    let mut s = spec("nodejs:20", NODE_COUNTER);
    s.limits.memory = nimbus_runtime::process::STEM_MEMORY_MB * 2;
    let mut inst = specialize(cell, &s).await;
    assert_eq!(
        memory_limit(&rt, &cg),
        (nimbus_runtime::process::STEM_MEMORY_MB * 2) << 20
    );
    check_counter(&mut inst, "nodejs:20 raised limit").await;
    inst.shutdown().await;
    assert_eq!(instance_dirs(&work), 0);
}

#[tokio::test]
async fn a_new_runtime_removes_instance_directories_of_a_previous_run() {
    let work = tempfile::tempdir().unwrap();
    let stale = work.path().join("instances").join("old-instance");
    std::fs::create_dir_all(stale.join("code")).unwrap();
    std::fs::write(stale.join("code").join("index.js"), "x").unwrap();
    let _rt = nimbus_runtime::ProcessRuntime::new(nimbus_runtime::ProcessRuntimeConfig {
        work_dir: work.path().to_path_buf(),
        cgroups: false,
        ..Default::default()
    })
    .unwrap();
    assert!(!stale.exists(), "the stale instance directory was removed");
    assert!(work.path().join("instances").is_dir());
}
