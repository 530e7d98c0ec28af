//! Helpers shared by the process runtime tests (real node and python3 from PATH).
#![allow(clippy::unwrap_used, dead_code)]

use base64::Engine;
use nimbus_model::ActionLimits;
use nimbus_runtime::{
    Instance, InstanceSpec, ProcessRuntime, ProcessRuntimeConfig, RunOutcome, RunRequest, Runtime,
    RuntimeError, StemCell,
};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;
use tempfile::TempDir;

pub const INIT_TIMEOUT: Duration = Duration::from_secs(30);

pub fn runtime() -> (TempDir, ProcessRuntime) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ProcessRuntimeConfig {
        work_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    (dir, ProcessRuntime::new(cfg).unwrap())
}

pub fn spec(kind: &str, code: &str) -> InstanceSpec {
    InstanceSpec {
        kind: kind.into(),
        code: code.into(),
        binary: false,
        main: "main".into(),
        action_name: "/guest/test".into(),
        ro_binds: Vec::new(),
        env: BTreeMap::from([
            ("__OW_ACTION_NAME".to_string(), "/guest/test".to_string()),
            ("__OW_NAMESPACE".to_string(), "guest".to_string()),
            (
                "__OW_API_HOST".to_string(),
                "http://127.0.0.1:3233".to_string(),
            ),
            ("__OW_ACTION_VERSION".to_string(), "0.0.1".to_string()),
        ]),
        limits: ActionLimits::default(),
        outbound_network: false,
    }
}

pub fn binary_spec(kind: &str, bytes: &[u8]) -> InstanceSpec {
    InstanceSpec {
        code: base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into(),
        binary: true,
        ..spec(kind, "")
    }
}

pub fn request(value: Value) -> RunRequest {
    let value: Map<String, Value> = match value {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    RunRequest {
        value,
        activation_id: "0123456789abcdef0123456789abcdef".into(),
        namespace: "guest".into(),
        action_name: "/guest/test".into(),
        action_version: "0.0.1".into(),
        transaction_id: "tid-1".into(),
        deadline: nimbus_model::now_millis() + 60_000,
        api_key: None,
        timeout: Duration::from_secs(30),
        log_limit_bytes: 10 << 20,
    }
}

/// A zip archive built in memory: (name, contents, unix mode).
pub fn zip(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data, mode) in files {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(*mode);
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

pub async fn start(rt: &ProcessRuntime, spec: &InstanceSpec) -> Box<dyn Instance> {
    match rt.start(spec, INIT_TIMEOUT).await {
        Ok(i) => i,
        Err(RuntimeError::Init { message, logs }) => {
            panic!("init failed: {message}\n{}", logs.join("\n"))
        }
        Err(e) => panic!("start failed: {e}"),
    }
}

pub async fn start_err(rt: &ProcessRuntime, spec: &InstanceSpec) -> (String, Vec<String>) {
    match rt.start(spec, INIT_TIMEOUT).await {
        Ok(i) => {
            i.shutdown().await;
            panic!("init unexpectedly succeeded")
        }
        Err(RuntimeError::Init { message, logs }) => (message, logs),
        Err(e) => panic!("expected an init error, got {e}"),
    }
}

/// Log lines without their timestamp: `stdout: text`.
pub fn texts(out: &RunOutcome) -> Vec<String> {
    strip(&out.logs)
}

pub fn strip(logs: &[String]) -> Vec<String> {
    logs.iter()
        .map(|l| {
            let (ts, rest) = l.split_once(' ').unwrap();
            assert!(
                ts.ends_with('Z') && ts.len() == 24,
                "bad timestamp in {l:?}"
            );
            rest.to_string()
        })
        .collect()
}

pub fn stream<'a>(lines: &'a [String], name: &str) -> Vec<&'a str> {
    let prefix = format!("{name}: ");
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix))
        .collect()
}

pub fn instance_dirs(work: &TempDir) -> usize {
    std::fs::read_dir(work.path().join("instances"))
        .unwrap()
        .count()
}

pub async fn prestart(rt: &ProcessRuntime, kind: &str) -> Box<dyn StemCell> {
    match rt.prestart(kind).await {
        Ok(Some(cell)) => cell,
        Ok(None) => panic!("no stem cell for {kind}"),
        Err(e) => panic!("prestart {kind} failed: {e}"),
    }
}

pub async fn specialize(cell: Box<dyn StemCell>, spec: &InstanceSpec) -> Box<dyn Instance> {
    match cell.specialize(spec, INIT_TIMEOUT).await {
        Ok(i) => i,
        Err(RuntimeError::Init { message, logs }) => {
            panic!("specialize failed: {message}\n{}", logs.join("\n"))
        }
        Err(e) => panic!("specialize failed: {e}"),
    }
}

pub async fn specialize_err(cell: Box<dyn StemCell>, spec: &InstanceSpec) -> RuntimeError {
    match cell.specialize(spec, INIT_TIMEOUT).await {
        Ok(i) => {
            i.shutdown().await;
            panic!("specialize unexpectedly succeeded")
        }
        Err(e) => e,
    }
}

/// Names of the instance directories (which are also the cgroup names).
pub fn instance_names(work: &TempDir) -> Vec<String> {
    std::fs::read_dir(work.path().join("instances"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// Pids of the stem-mode launchers started under `work`, found in /proc.
pub fn stem_pids(work: &TempDir) -> Vec<i32> {
    let needle = work.path().to_str().unwrap().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "--stem") && args.iter().any(|a| a.starts_with(&needle)) {
            pids.push(pid);
        }
    }
    pids
}

/// True while `pid` exists and is not a zombie.
pub fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}
