//! Issue 13, item 8, inside the real bubblewrap sandbox (uid 65534): zip entries stored 0600,
//! processes left running by an idle instance (the cgroup freezer), and the size of `/tmp` for
//! stem-cell and direct starts. Skipped (with a message) where bwrap or cgroups do not work.
//! No assertion is about time.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use nimbus_runtime::{ProcessRuntime, ProcessRuntimeConfig, RunResult};
use nimbus_sandbox::{CgroupVersion, RealHost, Sandbox};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

fn sandboxed(freeze: Option<Duration>) -> Option<(TempDir, ProcessRuntime)> {
    let sb = Sandbox::detect(Arc::new(RealHost));
    if sb.layers().bwrap.is_none() || !sb.layers().uid_switch {
        eprintln!(
            "SKIPPED: the sandbox does not work here: {:?}",
            sb.warnings()
        );
        return None;
    }
    let work = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(ProcessRuntimeConfig {
        work_dir: work.path().to_path_buf(),
        sandbox: Some(Arc::new(sb)),
        freeze_idle_after: freeze,
        ..Default::default()
    })
    .unwrap();
    Some((work, rt))
}

/// A zip made by Python's `zipfile.writestr`, which stores its entries with mode 0600.
fn python_writestr_zip(files: &[(&str, &str)]) -> Vec<u8> {
    let spec = serde_json::to_string(&files).unwrap();
    let script = "import io, json, sys, zipfile\n\
        buf = io.BytesIO()\n\
        with zipfile.ZipFile(buf, 'w') as z:\n\
        \x20   for name, text in json.loads(sys.argv[1]):\n\
        \x20       z.writestr(name, text)\n\
        sys.stdout.buffer.write(buf.getvalue())\n";
    let out = std::process::Command::new("python3")
        .args(["-c", script, &spec])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test]
async fn an_action_zipped_by_python_writestr_mode_0600_runs_in_the_sandbox() {
    let Some((_work, rt)) = sandboxed(None) else {
        return;
    };
    let zip = python_writestr_zip(&[
        (
            "__main__.py",
            "from helper import greet\ndef main(args):\n    return {'greeting': greet(args.get('name', 'x'))}\n",
        ),
        ("helper.py", "def greet(n):\n    return 'hello ' + n\n"),
        ("data/words.txt", "one\n"),
    ]);
    // What the archive says: 0600 (the sandbox user, which owns nothing, could not read it).
    let mode = {
        let mut a = zip::ZipArchive::new(std::io::Cursor::new(zip.clone())).unwrap();
        a.by_name("helper.py").unwrap().unix_mode().unwrap()
    };
    assert_eq!(mode & 0o777, 0o600);
    let mut inst = start(&rt, &binary_spec("python:3.11", &zip)).await;
    let out = inst.run(request(json!({"name": "zip"}))).await;
    assert_eq!(
        out.result,
        RunResult::Ok(json!({"greeting": "hello zip"})),
        "{:?}",
        out.logs
    );
    inst.shutdown().await;

    let zip = python_writestr_zip(&[
        (
            "index.js",
            "const fs = require('fs')\nfunction main() { return { text: fs.readFileSync(__dirname + '/data/t.txt', 'utf8') } }\nexports.main = main\n",
        ),
        ("data/t.txt", "read me"),
    ]);
    let mut inst = start(&rt, &binary_spec("nodejs:20", &zip)).await;
    let out = inst.run(request(json!({}))).await;
    assert_eq!(
        out.result,
        RunResult::Ok(json!({"text": "read me"})),
        "{:?}",
        out.logs
    );
    inst.shutdown().await;
}

/// Reports what statvfs says about /tmp inside, in bytes.
const PY_DF: &str = r#"
import os
def main(args):
    st = os.statvfs('/tmp')
    return {"total": st.f_blocks * st.f_frsize}
"#;

#[tokio::test]
async fn tmp_reports_the_memory_limit_for_direct_and_stem_cell_starts() {
    let Some((_work, rt)) = sandboxed(None) else {
        return;
    };
    let mut spec = spec("python:3.11", PY_DF);
    spec.limits.memory = 192;
    let want = json!({"total": 192u64 << 20});

    let mut direct = start(&rt, &spec).await;
    let out = direct.run(request(json!({}))).await;
    assert_eq!(out.result, RunResult::Ok(want.clone()), "{:?}", out.logs);
    direct.shutdown().await;

    let cell = prestart(&rt, "python:3.11").await;
    let mut stem = specialize(cell, &spec).await;
    let out = stem.run(request(json!({}))).await;
    assert_eq!(out.result, RunResult::Ok(want), "{:?}", out.logs);
    stem.shutdown().await;

    // Node.js too.
    let mut node = spec.clone();
    node.kind = "nodejs:20".into();
    node.code = "const fs = require('fs')\nfunction main() { const s = fs.statfsSync('/tmp'); return { total: s.blocks * s.bsize } }\nexports.main = main\n".into();
    let want = json!({"total": 192u64 << 20});
    let mut direct = start(&rt, &node).await;
    let out = direct.run(request(json!({}))).await;
    assert_eq!(out.result, RunResult::Ok(want.clone()), "{:?}", out.logs);
    direct.shutdown().await;
    let cell = prestart(&rt, "nodejs:20").await;
    let mut stem = specialize(cell, &node).await;
    let out = stem.run(request(json!({}))).await;
    assert_eq!(out.result, RunResult::Ok(want), "{:?}", out.logs);
    stem.shutdown().await;
}

/// The instance's directory in a cgroup v1 hierarchy of `controller`, or its v2 directory.
fn controller_dir(rt: &ProcessRuntime, controller: &str, name: &str) -> PathBuf {
    let m = rt.cgroup_manager().unwrap();
    match m.version() {
        CgroupVersion::V2 => m.base().join(name),
        CgroupVersion::V1 => {
            let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            let pc = std::fs::read_to_string("/proc/self/cgroup").unwrap();
            nimbus_sandbox::cgroup::v1_dir(&mi, &pc, controller)
                .unwrap()
                .join(nimbus_sandbox::cgroup::PARENT_NAME)
                .join(name)
        }
    }
}

/// CPU time the instance's cgroup has used (cpuacct.usage on v1, cpu.stat on v2).
fn cpu_used(rt: &ProcessRuntime, name: &str) -> Duration {
    match rt.cgroup_manager().unwrap().version() {
        CgroupVersion::V1 => {
            let text =
                std::fs::read_to_string(controller_dir(rt, "cpuacct", name).join("cpuacct.usage"))
                    .unwrap();
            Duration::from_nanos(text.trim().parse().unwrap())
        }
        CgroupVersion::V2 => {
            let text =
                std::fs::read_to_string(controller_dir(rt, "cpu", name).join("cpu.stat")).unwrap();
            let usec = text
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .unwrap();
            Duration::from_micros(usec.trim().parse().unwrap())
        }
    }
}

fn frozen(rt: &ProcessRuntime, name: &str) -> bool {
    match rt.cgroup_manager().unwrap().version() {
        CgroupVersion::V1 => {
            std::fs::read_to_string(controller_dir(rt, "freezer", name).join("freezer.state"))
                .unwrap()
                .trim()
                == "FROZEN"
        }
        CgroupVersion::V2 => {
            std::fs::read_to_string(controller_dir(rt, "cpu", name).join("cgroup.events"))
                .unwrap()
                .contains("frozen 1")
        }
    }
}

/// Starts a busy loop that outlives the activation (a Python thread, and a child process).
const PY_STRAY: &str = r#"
import subprocess, sys, threading
started = []
def spin():
    while True:
        pass
def main(args):
    if not started:
        threading.Thread(target=spin, daemon=True).start()
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        started.append(1)
    return {"calls": args.get("n")}
"#;

#[tokio::test]
async fn an_idle_instance_is_frozen_and_its_strays_stop_burning_cpu() {
    let Some((work, rt)) = sandboxed(Some(Duration::from_millis(50))) else {
        return;
    };
    if !rt.cgroup_manager().is_some_and(|m| m.controllers().freezer) {
        eprintln!("SKIPPED: no cgroup freezer here");
        return;
    }
    let mut inst = start(&rt, &spec("python:3.11", PY_STRAY)).await;
    let name = instance_names(&work).pop().unwrap();
    if rt.cgroup_manager().unwrap().version() == CgroupVersion::V1
        && !controller_dir(&rt, "cpuacct", &name)
            .join("cpuacct.usage")
            .exists()
    {
        eprintln!("SKIPPED: no cgroup v1 cpuacct hierarchy here");
        inst.shutdown().await;
        return;
    }
    let out = inst.run(request(json!({"n": 1}))).await;
    assert_eq!(out.result, RunResult::Ok(json!({"calls": 1})));

    // Idle now: frozen after the grace. (Polled with a generous bound; not a timing claim.)
    let until = Instant::now() + Duration::from_secs(20);
    while !frozen(&rt, &name) {
        assert!(Instant::now() < until, "the idle instance was never frozen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = cpu_used(&rt, &name);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = cpu_used(&rt, &name);
    assert_eq!(
        before, after,
        "a frozen instance used CPU: {before:?} -> {after:?}"
    );

    // The next activation thaws it and works; the strays run again while it is busy.
    let out = inst.run(request(json!({"n": 2}))).await;
    assert_eq!(out.result, RunResult::Ok(json!({"calls": 2})));
    assert!(cpu_used(&rt, &name) >= after);
    let until = Instant::now() + Duration::from_secs(20);
    while !frozen(&rt, &name) {
        assert!(
            Instant::now() < until,
            "the idle instance was never frozen again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    inst.shutdown().await;
    // A frozen instance can still be stopped: its cgroup and directory are gone.
    assert_eq!(instance_dirs(&work), 0);
    assert!(!rt.cgroup_manager().unwrap().base().join(&name).exists());
}

/// What freezing costs a warm activation: the thaw before it. Prints the numbers (for
/// docs/pool.md); asserts nothing about them.
#[tokio::test]
async fn thaw_cost_on_a_warm_invoke_is_measured() {
    let Some((_w1, frozen_rt)) = sandboxed(Some(Duration::from_millis(50))) else {
        return;
    };
    let Some((_w2, plain_rt)) = sandboxed(None) else {
        return;
    };
    if !frozen_rt
        .cgroup_manager()
        .is_some_and(|m| m.controllers().freezer)
    {
        eprintln!("SKIPPED: no cgroup freezer here");
        return;
    }
    let code = "def main(args):\n    return {'ok': True}\n";
    let mut results: Vec<(&str, Vec<u128>)> = Vec::new();
    for (label, rt, pause) in [
        ("thawed each time", &frozen_rt, Duration::from_millis(300)),
        ("never frozen", &plain_rt, Duration::from_millis(300)),
    ] {
        let mut inst = start(rt, &spec("python:3.11", code)).await;
        let mut samples = Vec::new();
        for _ in 0..15 {
            tokio::time::sleep(pause).await;
            let t = Instant::now();
            let out = inst.run(request(json!({}))).await;
            samples.push(t.elapsed().as_micros());
            assert_eq!(out.result, RunResult::Ok(json!({"ok": true})));
        }
        inst.shutdown().await;
        samples.sort_unstable();
        results.push((label, samples));
    }
    for (label, s) in &results {
        eprintln!(
            "warm invoke, {label}: median {} us, min {} us, max {} us",
            s[s.len() / 2],
            s[0],
            s[s.len() - 1]
        );
    }
}
