//! The process runtime against real `node` and `python3`.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use nimbus_runtime::{RunResult, Runtime, RuntimeError};
use serde_json::json;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- results and logs

#[tokio::test]
async fn node_text_action_returns_result_and_ordered_logs() {
    let (work, rt) = runtime();
    let code = r#"
function main(params) {
    console.log("out1 " + params.name);
    console.error("err1");
    console.log("out2");
    process.stdout.write("no newline at the end");
    return { greeting: "hello " + params.name };
}
"#;
    let mut inst = start(&rt, &spec("nodejs:20", code)).await;
    let out = inst.run(request(json!({"name": "ann"}))).await;
    assert_eq!(out.result, RunResult::Ok(json!({"greeting": "hello ann"})));
    assert!(out.reusable);
    let logs = texts(&out);
    assert_eq!(
        stream(&logs, "stdout"),
        ["out1 ann", "out2", "no newline at the end"]
    );
    assert_eq!(stream(&logs, "stderr"), ["err1"]);

    // Nothing from the first activation leaks into the second.
    let out = inst.run(request(json!({"name": "bob"}))).await;
    assert_eq!(out.result, RunResult::Ok(json!({"greeting": "hello bob"})));
    let logs = texts(&out);
    assert_eq!(
        stream(&logs, "stdout"),
        ["out1 bob", "out2", "no newline at the end"]
    );
    assert_eq!(stream(&logs, "stderr"), ["err1"]);
    inst.shutdown().await;
    assert_eq!(
        instance_dirs(&work),
        0,
        "shutdown removes the instance directory"
    );
}

#[tokio::test]
async fn python_text_action_returns_result_and_ordered_logs() {
    let (_work, rt) = runtime();
    let code = r#"
import sys
def main(args):
    print("out1", args.get("name"))
    print("err1", file=sys.stderr)
    print("out2")
    sys.stdout.write("partial")
    return {"greeting": "hello " + args["name"]}
"#;
    let mut inst = start(&rt, &spec("python:3.11", code)).await;
    for name in ["ann", "bob"] {
        let out = inst.run(request(json!({ "name": name }))).await;
        assert_eq!(
            out.result,
            RunResult::Ok(json!({ "greeting": format!("hello {name}") }))
        );
        let logs = texts(&out);
        assert_eq!(
            stream(&logs, "stdout"),
            [format!("out1 {name}").as_str(), "out2", "partial"]
        );
        assert_eq!(stream(&logs, "stderr"), ["err1"]);
    }
    inst.shutdown().await;
}

#[tokio::test]
async fn stdout_and_stderr_interleave_in_time_order() {
    let (_work, rt) = runtime();
    let code = r#"
import sys, time
def main(args):
    print("a")
    time.sleep(0.3)
    print("b", file=sys.stderr)
    time.sleep(0.3)
    print("c")
    return {}
"#;
    let mut inst = start(&rt, &spec("python:3.11", code)).await;
    let out = inst.run(request(json!({}))).await;
    assert_eq!(texts(&out), ["stdout: a", "stderr: b", "stdout: c"]);
    inst.shutdown().await;
}

#[tokio::test]
async fn warm_instances_keep_module_state() {
    let (_work, rt) = runtime();
    let mut node = start(
        &rt,
        &spec(
            "nodejs:20",
            "let n = 0;\nexports.main = () => ({ n: ++n });",
        ),
    )
    .await;
    let mut py = start(
        &rt,
        &spec(
            "python:3.11",
            "n = 0\ndef main(a):\n    global n\n    n += 1\n    return {'n': n}\n",
        ),
    )
    .await;
    for expected in 1..=3 {
        assert_eq!(
            node.run(request(json!({}))).await.result,
            RunResult::Ok(json!({ "n": expected }))
        );
        assert_eq!(
            py.run(request(json!({}))).await.result,
            RunResult::Ok(json!({ "n": expected }))
        );
    }
    node.shutdown().await;
    py.shutdown().await;
}

#[tokio::test]
async fn node_promises_undefined_arrays_and_custom_main() {
    let (_work, rt) = runtime();
    let code = r#"
async function main(p) { await new Promise(r => setTimeout(r, 20)); return { waited: true, x: p.x }; }
function nothing() {}
const list = () => [1, 2, 3];
"#;
    let mut inst = start(&rt, &spec("nodejs:20", code)).await;
    assert_eq!(
        inst.run(request(json!({"x": 5}))).await.result,
        RunResult::Ok(json!({"waited": true, "x": 5}))
    );
    inst.shutdown().await;

    let mut s = spec("nodejs:20", code);
    s.main = "nothing".into();
    let mut inst = start(&rt, &s).await;
    assert_eq!(
        inst.run(request(json!({}))).await.result,
        RunResult::Ok(json!({}))
    );
    inst.shutdown().await;

    s.main = "list".into();
    let mut inst = start(&rt, &s).await;
    assert_eq!(
        inst.run(request(json!({}))).await.result,
        RunResult::Ok(json!([1, 2, 3]))
    );
    inst.shutdown().await;
}

#[tokio::test]
async fn activation_context_reaches_the_function() {
    let (_work, rt) = runtime();
    let code = r#"
exports.main = () => ({
  id: process.env.__OW_ACTIVATION_ID,
  deadline: process.env.__OW_DEADLINE,
  key: process.env.__OW_API_KEY || null,
});
"#;
    let mut inst = start(&rt, &spec("nodejs:20", code)).await;
    let mut req = request(json!({}));
    req.deadline = 1234;
    req.api_key = Some("uuid:key".into());
    let out = inst.run(req).await;
    assert_eq!(
        out.result,
        RunResult::Ok(
            json!({"id": "0123456789abcdef0123456789abcdef", "deadline": "1234", "key": "uuid:key"})
        )
    );
    // A later request without a key must not see the previous caller's key.
    let out = inst.run(request(json!({}))).await;
    let RunResult::Ok(v) = out.result else {
        panic!("{:?}", out.result)
    };
    assert_eq!(v["key"], json!(null));
    inst.shutdown().await;
}

// ---------------------------------------------------------------- zips and exec

#[tokio::test]
async fn node_zip_with_package_json_main() {
    let (_work, rt) = runtime();
    let archive = zip(&[
        (
            "package.json",
            br#"{"name":"z","main":"lib/entry.js"}"#,
            0o644,
        ),
        (
            "lib/entry.js",
            b"const h = require('./helper');\nexports.main = (p) => ({ r: h.twice(p.v) });\n",
            0o644,
        ),
        ("lib/helper.js", b"exports.twice = (v) => v * 2;\n", 0o644),
    ]);
    let mut inst = start(&rt, &binary_spec("nodejs:20", &archive)).await;
    assert_eq!(
        inst.run(request(json!({"v": 21}))).await.result,
        RunResult::Ok(json!({"r": 42}))
    );
    inst.shutdown().await;
}

#[tokio::test]
async fn python_zip_with_helper_module() {
    let (_work, rt) = runtime();
    let archive = zip(&[
        (
            "__main__.py",
            b"import helper\ndef main(args):\n    return {'r': helper.twice(args['v'])}\n",
            0o644,
        ),
        ("helper.py", b"def twice(v):\n    return v * 2\n", 0o644),
    ]);
    let mut inst = start(&rt, &binary_spec("python:3.11", &archive)).await;
    assert_eq!(
        inst.run(request(json!({"v": 21}))).await.result,
        RunResult::Ok(json!({"r": 42}))
    );
    inst.shutdown().await;
}

#[tokio::test]
async fn python_zip_with_bundled_virtualenv_and_node_zip_with_plain_index() {
    let (_work, rt) = runtime();
    let archive = zip(&[
        (
            "__main__.py",
            b"import venvmod\ndef main(args):\n    return {'v': venvmod.VALUE}\n",
            0o644,
        ),
        (
            "virtualenv/lib/python3.11/site-packages/venvmod.py",
            b"VALUE = 'from the virtualenv'\n",
            0o644,
        ),
    ]);
    let mut inst = start(&rt, &binary_spec("python:3.11", &archive)).await;
    assert_eq!(
        inst.run(request(json!({}))).await.result,
        RunResult::Ok(json!({"v": "from the virtualenv"}))
    );
    inst.shutdown().await;

    let archive = zip(&[(
        "index.js",
        b"function main() { return { plain: true }; }\n",
        0o644,
    )]);
    let mut inst = start(&rt, &binary_spec("nodejs:20", &archive)).await;
    assert_eq!(
        inst.run(request(json!({}))).await.result,
        RunResult::Ok(json!({"plain": true}))
    );
    inst.shutdown().await;
}

const EXEC_SCRIPT: &str = r#"#!/bin/sh
echo '{"ok":true}' >&3
while read -r line; do
  echo "got a request"
  echo "on stderr" >&2
  echo '{"echo":"yes"}' >&3
done
"#;

#[tokio::test]
async fn exec_script_as_text_binary_and_zip() {
    let (_work, rt) = runtime();
    let specs = [
        spec("exec", EXEC_SCRIPT),
        binary_spec("exec", EXEC_SCRIPT.as_bytes()),
        binary_spec("exec", &zip(&[("exec", EXEC_SCRIPT.as_bytes(), 0o644)])),
    ];
    for s in &specs {
        let mut inst = start(&rt, s).await;
        for _ in 0..2 {
            let out = inst.run(request(json!({"a": 1}))).await;
            assert_eq!(out.result, RunResult::Ok(json!({"echo": "yes"})));
            assert_eq!(texts(&out), ["stdout: got a request", "stderr: on stderr"]);
            assert!(out.reusable);
        }
        inst.shutdown().await;
    }
}

#[tokio::test]
async fn zip_problems_are_init_errors() {
    let (work, rt) = runtime();
    let (msg, _) = start_err(
        &rt,
        &binary_spec("exec", &zip(&[("run.sh", b"#!/bin/sh\n", 0o755)])),
    )
    .await;
    assert!(msg.contains("'exec'"), "{msg}");
    let (msg, _) = start_err(
        &rt,
        &binary_spec("python:3.11", &zip(&[("main.py", b"", 0o644)])),
    )
    .await;
    assert!(msg.contains("__main__.py"), "{msg}");
    let (msg, _) = start_err(
        &rt,
        &binary_spec("nodejs:20", &zip(&[("lib/x.js", b"", 0o644)])),
    )
    .await;
    assert!(msg.contains("package.json"), "{msg}");
    let (msg, _) = start_err(
        &rt,
        &binary_spec("nodejs:20", &zip(&[("../evil.js", b"x", 0o644)])),
    )
    .await;
    assert!(msg.contains("unsafe path"), "{msg}");
    let (msg, _) = start_err(&rt, &binary_spec("nodejs:20", b"not a zip")).await;
    assert!(msg.contains("zip"), "{msg}");
    let (msg, _) = start_err(&rt, &spec("nodejs:20", "  ")).await;
    assert!(msg.contains("no code"), "{msg}");
    assert!(!work.path().join("evil.js").exists());
    assert!(!work.path().join("instances").join("evil.js").exists());
    assert_eq!(
        instance_dirs(&work),
        0,
        "failed starts leave nothing behind"
    );
}

#[tokio::test]
async fn unsupported_kinds_are_refused() {
    let (_work, rt) = runtime();
    assert!(rt.supports("nodejs:20") && rt.supports("python:3.11") && rt.supports("exec"));
    assert!(!rt.supports("java:8"));
    match rt.start(&spec("java:8", "x"), INIT_TIMEOUT).await {
        Err(RuntimeError::UnsupportedKind(k)) => assert_eq!(k, "java:8"),
        other => panic!("{:?}", other.err()),
    }
}

// ---------------------------------------------------------------- errors

#[tokio::test]
async fn application_errors_pass_through() {
    let (_work, rt) = runtime();
    let mut node = start(
        &rt,
        &spec(
            "nodejs:20",
            "exports.main = () => ({ error: 'bad input' });",
        ),
    )
    .await;
    let out = node.run(request(json!({}))).await;
    assert_eq!(out.result, RunResult::Ok(json!({"error": "bad input"})));
    assert!(out.reusable);
    node.shutdown().await;

    let mut py = start(
        &rt,
        &spec(
            "python:3.11",
            "def main(a):\n    return {'error': {'code': 7}}\n",
        ),
    )
    .await;
    assert_eq!(
        py.run(request(json!({}))).await.result,
        RunResult::Ok(json!({"error": {"code": 7}}))
    );
    py.shutdown().await;
}

#[tokio::test]
async fn node_throws_are_developer_errors_and_rejections_application_errors() {
    let (_work, rt) = runtime();
    let code = r#"
function main(p) {
  if (p.mode === 'throw') throw new Error('boom');
  if (p.mode === 'reject') return Promise.reject({ code: 42 });
  return { fine: true };
}
"#;
    let mut inst = start(&rt, &spec("nodejs:20", code)).await;
    let out = inst.run(request(json!({"mode": "throw"}))).await;
    assert_eq!(
        out.result,
        RunResult::DeveloperError("An error has occurred: Error: boom".into())
    );
    assert!(
        stream(&texts(&out), "stderr")
            .iter()
            .any(|l| l.contains("Error: boom")),
        "{:?}",
        out.logs
    );
    assert!(out.reusable);
    let out = inst.run(request(json!({"mode": "reject"}))).await;
    assert_eq!(out.result, RunResult::Ok(json!({"error": {"code": 42}})));
    let out = inst.run(request(json!({}))).await;
    assert_eq!(out.result, RunResult::Ok(json!({"fine": true})));
    inst.shutdown().await;
}

#[tokio::test]
async fn python_exceptions_become_error_results() {
    let (_work, rt) = runtime();
    let mut inst = start(
        &rt,
        &spec(
            "python:3.11",
            "def main(a):\n    raise ValueError('boom')\n",
        ),
    )
    .await;
    let out = inst.run(request(json!({}))).await;
    assert_eq!(out.result, RunResult::Ok(json!({"error": "boom"})));
    let stderr = texts(&out).join("\n");
    assert!(
        stderr.contains("Traceback") && stderr.contains("ValueError: boom"),
        "{stderr}"
    );
    assert!(out.reusable);
    inst.shutdown().await;
}

#[tokio::test]
async fn load_failures_are_init_errors_with_actionable_messages() {
    let (work, rt) = runtime();
    let (msg, logs) = start_err(
        &rt,
        &spec(
            "nodejs:20",
            "function main() {\n  return {a: 1\n}\nfoo bar\n",
        ),
    )
    .await;
    assert!(
        msg.contains("SyntaxError") && msg.contains("index.js:4"),
        "{msg}"
    );
    assert!(!logs.is_empty(), "the stack is in the init logs");

    let (msg, _) = start_err(
        &rt,
        &spec(
            "nodejs:20",
            "const x = require('left-pad-xyz');\nexports.main = () => ({});",
        ),
    )
    .await;
    assert!(msg.contains("Cannot find module 'left-pad-xyz'"), "{msg}");

    let (msg, _) = start_err(&rt, &spec("nodejs:20", "exports.handler = () => ({});")).await;
    assert_eq!(msg, "main function 'main' not found");

    let (msg, logs) = start_err(
        &rt,
        &spec("python:3.11", "def main(a):\n    return {\n\ndef x(:\n"),
    )
    .await;
    assert!(
        msg.starts_with("SyntaxError") && msg.contains("line"),
        "{msg}"
    );
    assert!(
        strip(&logs).iter().any(|l| l.starts_with("stderr: ")),
        "{logs:?}"
    );

    let mut s = spec("python:3.11", "def handler(a):\n    return {}\n");
    s.main = "xyz".into();
    let (msg, _) = start_err(&rt, &s).await;
    assert_eq!(msg, "main function 'xyz' not found");

    let (msg, _) = start_err(&rt, &spec("python:3.11", "import not_a_module_xyz\n")).await;
    assert!(msg.contains("No module named 'not_a_module_xyz'"), "{msg}");

    // An executable that never acknowledges and exits.
    let (msg, _) = start_err(&rt, &spec("exec", "#!/bin/sh\necho starting\nexit 3\n")).await;
    assert!(msg.contains("did not initialize"), "{msg}");
    assert_eq!(instance_dirs(&work), 0);
}

#[tokio::test]
async fn init_that_hangs_times_out() {
    let (_work, rt) = runtime();
    let s = spec(
        "python:3.11",
        "import time\ntime.sleep(60)\ndef main(a):\n    return {}\n",
    );
    let t = Instant::now();
    match rt.start(&s, Duration::from_millis(1500)).await {
        Err(RuntimeError::Init { message, .. }) => {
            assert!(message.contains("time limit"), "{message}")
        }
        other => panic!("{:?}", other.err()),
    }
    assert!(t.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn non_json_result_is_a_developer_error() {
    let (_work, rt) = runtime();
    let script =
        "#!/bin/sh\necho '{\"ok\":true}' >&3\nwhile read -r line; do echo 'not json' >&3; done\n";
    let mut inst = start(&rt, &spec("exec", script)).await;
    let out = inst.run(request(json!({}))).await;
    assert!(
        matches!(out.result, RunResult::DeveloperError(_)),
        "{:?}",
        out.result
    );
    assert!(!out.reusable);
    inst.shutdown().await;

    // Valid JSON that is not an object or array: developer error, process still healthy.
    let mut py = start(&rt, &spec("python:3.11", "def main(a):\n    return 42\n")).await;
    let out = py.run(request(json!({}))).await;
    assert_eq!(
        out.result,
        RunResult::DeveloperError("The action did not return a dictionary or array.".into())
    );
    py.shutdown().await;
}

#[tokio::test]
async fn exiting_mid_run_is_a_developer_error_and_not_reusable() {
    let (_work, rt) = runtime();
    let code =
        "import os, sys\ndef main(a):\n    print('bye')\n    sys.stdout.flush()\n    os._exit(3)\n";
    let mut inst = start(&rt, &spec("python:3.11", code)).await;
    let out = inst.run(request(json!({}))).await;
    assert_eq!(
        out.result,
        RunResult::DeveloperError(
            "The action did not produce a valid response and exited unexpectedly.".into()
        )
    );
    assert!(!out.reusable);
    assert_eq!(stream(&texts(&out), "stdout"), ["bye"]);
    let again = inst.run(request(json!({}))).await;
    assert!(matches!(again.result, RunResult::DeveloperError(_)) && !again.reusable);
    inst.shutdown().await;
}

#[tokio::test]
async fn timeouts_kill_the_instance() {
    let (_work, rt) = runtime();
    for (kind, code) in [
        (
            "python:3.11",
            "import time\ndef main(a):\n    print('before')\n    time.sleep(60)\n    return {}\n",
        ),
        (
            "nodejs:20",
            "function main() { console.log('before'); while (true) {} }",
        ),
    ] {
        let mut inst = start(&rt, &spec(kind, code)).await;
        let mut req = request(json!({}));
        req.timeout = Duration::from_millis(700);
        let t = Instant::now();
        let out = inst.run(req).await;
        assert_eq!(out.result, RunResult::Timeout, "{kind}");
        assert!(!out.reusable);
        assert_eq!(stream(&texts(&out), "stdout"), ["before"], "{kind}");
        // Generous: proves the sleeping/looping process was not waited for.
        assert!(t.elapsed() < Duration::from_secs(20), "{kind}");
        inst.shutdown().await;
    }
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let (work, rt) = runtime();
    // The shell starts a background child that would outlive it; both are in the group.
    let script = "#!/bin/sh\necho '{\"ok\":true}' >&3\nread -r line\nsleep 300 &\necho $! > \"$HOME/bg.pid\"\nwait\n";
    let mut inst = start(&rt, &spec("exec", script)).await;
    let mut req = request(json!({}));
    req.timeout = Duration::from_millis(700);
    assert_eq!(inst.run(req).await.result, RunResult::Timeout);
    let inst_dir = std::fs::read_dir(work.path().join("instances"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let pid: i32 = std::fs::read_to_string(inst_dir.join("bg.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Reaped by init eventually; a zombie or nothing at all means it was killed.
    let mut gone = false;
    for _ in 0..100 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z ") {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "background process {pid} survived the timeout");
    inst.shutdown().await;
}

// ---------------------------------------------------------------- log limits and volume

#[tokio::test]
async fn logs_are_truncated_at_the_limit() {
    let (_work, rt) = runtime();
    let mut inst = start(&rt, &spec("nodejs:20", "function main() { for (let i = 0; i < 50; i++) console.log('line ' + i + ' of output'); return {}; }")).await;
    let mut req = request(json!({}));
    req.log_limit_bytes = 100;
    let out = inst.run(req).await;
    assert_eq!(out.result, RunResult::Ok(json!({})));
    let logs = texts(&out);
    assert!(logs.len() < 10, "{logs:?}");
    assert_eq!(logs.first().unwrap(), "stdout: line 0 of output");
    assert_eq!(
        logs.last().unwrap(),
        "stderr: Logs were truncated because the total bytes size exceeds the limit of 100 bytes."
    );
    assert_eq!(logs.iter().filter(|l| l.contains("truncated")).count(), 1);
    // The next activation starts with a fresh budget and sees none of the rest.
    let out = inst.run(request(json!({}))).await;
    assert_eq!(texts(&out).len(), 50);
    inst.shutdown().await;
}

#[tokio::test]
async fn megabytes_of_output_do_not_deadlock_and_arrive_complete() {
    let (_work, rt) = runtime();
    let node = r#"function main() {
  const chunk = 'x'.repeat(999);
  for (let i = 0; i < 2048; i++) console.log(chunk);
  console.error('stderr tail');
  console.log('END');
  return { done: true };
}"#;
    let py = "import sys\ndef main(a):\n    chunk = 'y' * 999\n    for i in range(2048):\n        print(chunk)\n    print('stderr tail', file=sys.stderr)\n    print('END')\n    return {'done': True}\n";
    for (kind, code) in [("nodejs:20", node), ("python:3.11", py)] {
        let mut inst = start(&rt, &spec(kind, code)).await;
        for _ in 0..2 {
            let out = tokio::time::timeout(Duration::from_secs(60), inst.run(request(json!({}))))
                .await
                .unwrap();
            assert_eq!(out.result, RunResult::Ok(json!({"done": true})), "{kind}");
            let logs = texts(&out);
            let stdout = stream(&logs, "stdout");
            assert_eq!(stdout.len(), 2049, "{kind}");
            assert!(stdout[..2048].iter().all(|l| l.len() == 999));
            assert_eq!(
                *stdout.last().unwrap(),
                "END",
                "{kind}: output written before the result must all be there"
            );
            assert_eq!(stream(&logs, "stderr"), ["stderr tail"], "{kind}");
        }
        inst.shutdown().await;
    }
}

// ---------------------------------------------------------------- memory

#[tokio::test]
async fn memory_limit_kills_with_memory_exceeded() {
    let (_work, rt) = runtime();
    if rt.cgroup_manager().is_none() {
        eprintln!(
            "SKIPPED memory_limit_kills_with_memory_exceeded: no cgroup manager on this machine"
        );
        return;
    }
    let mut s = spec(
        "python:3.11",
        "def main(a):\n    data = b'x' * (512 * 1024 * 1024)\n    return {'len': len(data)}\n",
    );
    s.limits.memory = 128;
    let mut inst = start(&rt, &s).await;
    let out = inst.run(request(json!({}))).await;
    assert_eq!(out.result, RunResult::MemoryExceeded, "{:?}", out.logs);
    assert!(!out.reusable);
    inst.shutdown().await;

    // Within the limit, the same kind of allocation works.
    let mut s = spec(
        "python:3.11",
        "def main(a):\n    data = b'x' * (32 * 1024 * 1024)\n    return {'len': len(data)}\n",
    );
    s.limits.memory = 128;
    let mut inst = start(&rt, &s).await;
    assert_eq!(
        inst.run(request(json!({}))).await.result,
        RunResult::Ok(json!({"len": 32 * 1024 * 1024}))
    );
    inst.shutdown().await;
}

#[tokio::test]
async fn python_async_main_is_awaited() {
    let (_work, rt) = runtime();
    let code = "import asyncio\nasync def main(a):\n    await asyncio.sleep(0)\n    return {'awaited': a.get('x')}\n";
    let mut inst = start(&rt, &spec("python:3.11", code)).await;
    let out = inst.run(request(json!({"x": 5}))).await;
    assert_eq!(out.result, RunResult::Ok(json!({"awaited": 5})));
    inst.shutdown().await;
}
