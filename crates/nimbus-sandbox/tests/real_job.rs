//! Jobs (build steps), `/tmp` resizing and the cgroup freezer against the real kernel. Needs
//! root, bubblewrap and a cgroup hierarchy; otherwise each test says why it is skipped.
#![allow(clippy::unwrap_used)]

use nimbus_sandbox::{Job, JobEnd, RealHost, Sandbox, SandboxSpec, run_job};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn sandbox() -> Option<Arc<Sandbox>> {
    let sb = Sandbox::detect(Arc::new(RealHost));
    if sb.layers().bwrap.is_none() || !sb.layers().uid_switch {
        eprintln!(
            "SKIPPED: the sandbox does not work here: {:?}",
            sb.warnings()
        );
        return None;
    }
    Some(Arc::new(sb))
}

fn job(dir: &Path, script: &str, timeout: Duration) -> Job {
    let mut spec = SandboxSpec::new(dir);
    spec.code_writable = true;
    spec.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
    Job {
        spec,
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        name: format!("job-test-{}-{}", std::process::id(), rand_suffix()),
        memory_bytes: 256 << 20,
        cpu_millicores: Some(500),
        timeout,
        output_tail: 4096,
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test]
async fn a_job_writes_only_its_directory_as_the_sandbox_user() {
    let Some(sb) = sandbox() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("build");
    std::fs::create_dir(&dir).unwrap();
    let outside = tmp.path().join("outside");
    let script = format!(
        "id -u > /code/uid; echo pwned > {out} 2>/dev/null; echo pwned > /code/../escape 2>/dev/null; \
         (sleep 300 &) ; echo 'line one'; echo 'line two' >&2; exit 3",
        out = outside.display()
    );
    let j = job(&dir, &script, Duration::from_secs(60));
    sb.lend_dir(&dir, &j.spec).unwrap();
    let out = run_job(Some(&sb), &j).await.unwrap();
    sb.reclaim_dir(&dir).unwrap();
    assert!(
        matches!(out.end, JobEnd::Exited(s) if s.code() == Some(3)),
        "{out:?}"
    );
    assert_eq!(out.last_lines(2), ["line one", "line two"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("uid")).unwrap().trim(),
        "65534"
    );
    assert!(!outside.exists());
    // The directory is the server's again.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(dir.join("uid")).unwrap().uid(), 0);
    // The background `sleep` died with the job.
    let left = Command::new("pgrep")
        .args(["-f", "^sleep 300$"])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_job_is_killed_at_its_timeout() {
    let Some(sb) = sandbox() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let j = job(
        tmp.path(),
        "echo started; sleep 600",
        Duration::from_secs(1),
    );
    let out = run_job(Some(&sb), &j).await.unwrap();
    assert_eq!(out.end, JobEnd::TimedOut);
    assert_eq!(out.last_lines(1), ["started"]);
}

#[tokio::test]
async fn unsandboxed_jobs_get_only_the_given_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let mut j = job(tmp.path(), "env | sort; pwd", Duration::from_secs(30));
    j.spec.env.push(("ONLY".into(), "this".into()));
    let out = run_job(None, &j).await.unwrap();
    assert!(out.success(), "{out:?}");
    let lines = out.last_lines(10);
    assert!(lines.contains(&"ONLY=this".to_string()), "{lines:?}");
    assert!(!lines.iter().any(|l| l.starts_with("HOME=")), "{lines:?}");
    assert_eq!(
        lines.last().unwrap(),
        &tmp.path().display().to_string(),
        "{lines:?}"
    );
}

/// `resize_tmp` on a running sandbox: what statfs says inside changes.
#[test]
fn the_tmp_of_a_running_sandbox_is_resized() {
    let Some(sb) = sandbox() else { return };
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut spec = SandboxSpec::new(tmp.path());
    spec.tmp_mb = 2048;
    let script = "stat -f -c '%b %S' /tmp; read x; stat -f -c '%b %S' /tmp";
    let w = sb
        .wrap(
            &spec,
            Path::new("/bin/sh"),
            &["-c".into(), script.into()],
            None,
        )
        .unwrap();
    let setup = w.setup.clone();
    let mut cmd = Command::new(&w.program);
    cmd.args(&w.args)
        .env_clear()
        .envs(w.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&w.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // SAFETY: apply_in_child is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || setup.apply_in_child());
    }
    let mut child = cmd.spawn().unwrap();
    drop(w.fds);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let size = |line: &str| -> u64 {
        let mut it = line.split_whitespace().map(|x| x.parse::<u64>().unwrap());
        it.next().unwrap() * it.next().unwrap()
    };
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(size(&line), 2048 << 20);
    let t = Instant::now();
    sb.resize_tmp(child.id(), 96).unwrap();
    eprintln!("resize_tmp took {} us", t.elapsed().as_micros());
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(size(&line), 96 << 20);
    assert!(child.wait().unwrap().success());
}

/// The freezer on the real hierarchy: a busy process stops using CPU while frozen and runs
/// again once thawed; a frozen cgroup can still be killed and removed.
#[test]
fn a_frozen_cgroup_uses_no_cpu() {
    let Some(m) = nimbus_sandbox::detect() else {
        eprintln!("SKIPPED: no writable cgroup hierarchy here");
        return;
    };
    if !m.controllers().freezer {
        eprintln!("SKIPPED: no cgroup freezer here");
        return;
    }
    let limits = nimbus_sandbox::CgroupLimits {
        memory_bytes: 64 << 20,
        pids_max: Some(8),
        cpu_from_memory: true,
    };
    let cg = m
        .create_limited(&format!("freeze-test-{}", std::process::id()), &limits)
        .unwrap();
    let mut child = Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .unwrap();
    m.add_pid(&cg, child.id()).unwrap();
    let Some(start) = m.cpu_usage(&cg).unwrap() else {
        eprintln!("SKIPPED: no CPU accounting here");
        m.kill_all(&cg).unwrap();
        let _ = child.wait();
        m.remove(&cg).unwrap();
        return;
    };
    assert!(m.freeze(&cg, true).unwrap());
    let until = Instant::now() + Duration::from_secs(20);
    while m.is_frozen(&cg).unwrap() != Some(true) {
        assert!(Instant::now() < until, "never frozen");
        std::thread::sleep(Duration::from_millis(10));
    }
    let a = m.cpu_usage(&cg).unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let b = m.cpu_usage(&cg).unwrap().unwrap();
    assert_eq!(a, b, "frozen but used CPU");
    assert!(a >= start);
    let t = Instant::now();
    m.freeze(&cg, false).unwrap();
    eprintln!("thaw (write) took {} us", t.elapsed().as_micros());
    let until = Instant::now() + Duration::from_secs(20);
    while m.cpu_usage(&cg).unwrap().unwrap() == b {
        assert!(Instant::now() < until, "never ran again after the thaw");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Frozen again, then killed and removed.
    m.freeze(&cg, true).unwrap();
    m.kill_all(&cg).unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    m.remove(&cg).unwrap();
    assert!(!cg.path().exists());
}
