//! Against the real kernel: only meaningful as root on a machine with a memory controller;
//! otherwise the test prints why it is skipped.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn create_add_kill_remove_on_the_real_hierarchy() {
    let Some(m) = nimbus_sandbox::detect() else {
        eprintln!("SKIPPED: no writable cgroup memory controller here");
        return;
    };
    let name = format!("sandbox-test-{}", std::process::id());
    let cg = m.create(&name, 64 << 20).unwrap();
    let limit_file = match m.version() {
        nimbus_sandbox::CgroupVersion::V1 => "memory.limit_in_bytes",
        nimbus_sandbox::CgroupVersion::V2 => "memory.max",
    };
    let limit = std::fs::read_to_string(cg.path().join(limit_file)).unwrap();
    assert_eq!(limit.trim(), (64u64 << 20).to_string());

    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    m.add_pid(&cg, child.id()).unwrap();
    let procs = std::fs::read_to_string(cg.procs_path()).unwrap();
    assert!(
        procs.lines().any(|l| l.trim() == child.id().to_string()),
        "{procs}"
    );
    assert!(!m.memory_exceeded(&cg).unwrap());

    m.kill_all(&cg).unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    m.remove(&cg).unwrap();
    assert!(!cg.path().exists());
}
