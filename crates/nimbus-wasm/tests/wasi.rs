//! `wasm:wasi` preview 1 commands built from WAT: results, logs, timeouts, memory limits,
//! isolation, concurrency, corrupt uploads and the on-disk artifact cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use nimbus_model::ActionLimits;
use nimbus_runtime::{InstanceSpec, RunRequest, RunResult, Runtime, RuntimeError};
use nimbus_wasm::{Allocation, WasmConfig, WasmRuntime};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Echoes stdin to stdout and logs one stderr line. When the input's byte 8 is `t` (as in
/// `{"loop":true}`) it spins forever instead.
const ECHO_WAT: &str = include_str!("fixtures/echo.wat");

/// Grows memory 1 MiB at a time until refused, then traps (as a language runtime aborts on OOM).
const BOMB_WAT: &str = include_str!("fixtures/bomb.wat");

/// Increments a global and a byte in memory and prints both: `{"g":1,"m":1}` on a fresh instance.
const COUNTER_WAT: &str = include_str!("fixtures/counter.wat");

/// Exits with status 3 through `proc_exit`.
const EXIT3_WAT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 3)))
)
"#;

fn wasm(wat_src: &str) -> Vec<u8> {
    wat::parse_str(wat_src).unwrap()
}

fn runtime(dir: &std::path::Path, concurrent: usize) -> WasmRuntime {
    let mut cfg = WasmConfig::new(dir);
    cfg.max_concurrent_instances = concurrent;
    cfg.pool_instances = concurrent as u32;
    WasmRuntime::new(cfg).unwrap()
}

fn spec(bytes: &[u8], memory_mb: u64, concurrency: u64) -> InstanceSpec {
    InstanceSpec {
        kind: "wasm:wasi".into(),
        code: base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into(),
        binary: true,
        main: "main".into(),
        action_name: "/guest/test".into(),
        env: BTreeMap::new(),
        limits: ActionLimits {
            memory: memory_mb,
            concurrency,
            ..ActionLimits::default()
        },
        outbound_network: false,
        ro_binds: Vec::new(),
    }
}

fn req(value: Value, timeout: Duration) -> RunRequest {
    RunRequest {
        value: value.as_object().cloned().unwrap_or_default(),
        activation_id: "a".repeat(32),
        namespace: "guest".into(),
        action_name: "/guest/test".into(),
        action_version: "0.0.1".into(),
        transaction_id: "t".into(),
        deadline: 0,
        api_key: None,
        timeout,
        log_limit_bytes: 10 << 20,
    }
}

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn echo_json_in_json_out_with_logs() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), 8);
    let mut inst = rt.start(&spec(&wasm(ECHO_WAT), 64, 1), T).await.unwrap();
    let params = json!({"name": "x", "n": [1, 2, {"deep": "é"}]});
    let out = inst.run(req(params.clone(), T)).await;
    assert_eq!(out.result, RunResult::Ok(params));
    assert_eq!(out.logs.len(), 1, "{:?}", out.logs);
    assert!(
        out.logs[0].ends_with("stderr: echo: starting"),
        "{:?}",
        out.logs
    );
    assert!(out.reusable);
    inst.shutdown().await;
}

#[tokio::test]
async fn log_limit_truncates() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), 8);
    let mut inst = rt.start(&spec(&wasm(ECHO_WAT), 64, 1), T).await.unwrap();
    let mut r = req(json!({"a": 1}), T);
    r.log_limit_bytes = 4;
    let out = inst.run(r).await;
    assert_eq!(out.result, RunResult::Ok(json!({"a": 1})));
    assert_eq!(out.logs.len(), 1);
    assert!(
        out.logs[0].contains("Logs were truncated"),
        "{:?}",
        out.logs
    );
}

#[tokio::test]
async fn infinite_loop_times_out_and_instance_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), 8);
    let mut inst = rt.start(&spec(&wasm(ECHO_WAT), 64, 1), T).await.unwrap();
    let timeout = Duration::from_millis(300);
    let t0 = Instant::now();
    let out = inst.run(req(json!({"loop": true}), timeout)).await;
    let took = t0.elapsed();
    assert_eq!(out.result, RunResult::Timeout);
    assert!(out.reusable);
    assert!(
        took < timeout + Duration::from_millis(100),
        "stopped after {took:?}"
    );
    let out = inst.run(req(json!({"after": "timeout"}), T)).await;
    assert_eq!(out.result, RunResult::Ok(json!({"after": "timeout"})));
}

#[tokio::test]
async fn memory_bomb_gets_memory_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), 8);
    let mut inst = rt.start(&spec(&wasm(BOMB_WAT), 32, 1), T).await.unwrap();
    let out = inst.run(req(json!({}), T)).await;
    assert_eq!(out.result, RunResult::MemoryExceeded);
    assert!(out.reusable);
    // An initial memory larger than the limit fails the same way.
    let big = wasm(r#"(module (memory 1024) (func (export "_start")))"#); // 64 MiB
    let mut inst = rt.start(&spec(&big, 32, 1), T).await.unwrap();
    let out = inst.run(req(json!({}), T)).await;
    assert_eq!(out.result, RunResult::MemoryExceeded);
}

#[tokio::test]
async fn runs_never_share_state() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), 8);
    let mut inst = rt.start(&spec(&wasm(COUNTER_WAT), 64, 1), T).await.unwrap();
    for _ in 0..5 {
        let out = inst.run(req(json!({}), T)).await;
        assert_eq!(out.result, RunResult::Ok(json!({"g": 1, "m": 1})));
    }
    // A second instance of the same function too.
    let mut other = rt.start(&spec(&wasm(COUNTER_WAT), 64, 1), T).await.unwrap();
    let out = other.run(req(json!({}), T)).await;
    assert_eq!(out.result, RunResult::Ok(json!({"g": 1, "m": 1})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_runs_complete() {
    let dir = tempfile::tempdir().unwrap();
    // Fewer slots than runs: the rest queue.
    let rt = runtime(dir.path(), 64);
    let inst = rt
        .start(&spec(&wasm(COUNTER_WAT), 64, 1000), T)
        .await
        .unwrap();
    let runner = inst.concurrent().expect("a concurrent runner");
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let runner = Arc::clone(&runner);
        set.spawn(async move { runner.run(req(json!({}), T)).await });
    }
    let mut n = 0;
    while let Some(out) = set.join_next().await {
        assert_eq!(out.unwrap().result, RunResult::Ok(json!({"g": 1, "m": 1})));
        n += 1;
    }
    assert_eq!(n, 1000);
}

#[tokio::test]
async fn non_zero_exit_and_bad_output_are_developer_errors() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), 8);
    let mut inst = rt.start(&spec(&wasm(EXIT3_WAT), 64, 1), T).await.unwrap();
    let out = inst.run(req(json!({}), T)).await;
    assert_eq!(
        out.result,
        RunResult::DeveloperError("The function exited with code 3.".into())
    );
    // The echo module with a non-object document: a JSON scalar is refused... and an empty
    // parameter object is echoed as `{}`.
    let mut inst = rt.start(&spec(&wasm(ECHO_WAT), 64, 1), T).await.unwrap();
    let out = inst.run(req(json!({}), T)).await;
    assert_eq!(out.result, RunResult::Ok(json!({})));
    // A module that writes nothing.
    let silent = wasm(r#"(module (memory (export "memory") 1) (func (export "_start")))"#);
    let mut inst = rt.start(&spec(&silent, 64, 1), T).await.unwrap();
    match inst.run(req(json!({}), T)).await.result {
        RunResult::DeveloperError(m) => assert!(m.contains("wrote nothing"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn corrupt_or_wrong_uploads_are_clear_prepare_errors() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), 8);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"print('hello')".to_vec(), "not a WebAssembly binary"),
        (
            b"\0asm\x01\0\0\0\x01\xff\xff".to_vec(),
            "invalid WebAssembly module",
        ),
        (
            b"\0asm\x09\0\0\0".to_vec(),
            "unsupported WebAssembly binary version",
        ),
    ];
    for (bytes, want) in cases {
        match rt.prepare(bytes).await {
            Err(RuntimeError::Init { message, .. }) => {
                assert!(message.contains(want), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
    // Valid wasm that is not a command, and a module for wasm:http.
    let reactor = wasm(r#"(module (func (export "f")))"#);
    match rt.validate("wasm:wasi", reactor.clone()).await {
        Err(RuntimeError::Init { message, .. }) => assert!(message.contains("_start"), "{message}"),
        other => panic!("{other:?}"),
    }
    match rt.validate("wasm:http", wasm(ECHO_WAT)).await {
        Err(RuntimeError::Init { message, .. }) => {
            assert!(message.contains("component"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // Unknown imports are refused at deploy, not at invoke.
    let net = wasm(
        r#"(module (import "env" "socket" (func)) (memory (export "memory") 1) (func (export "_start")))"#,
    );
    match rt.validate("wasm:wasi", net).await {
        Err(RuntimeError::Init { message, .. }) => assert!(message.contains("link"), "{message}"),
        other => panic!("{other:?}"),
    }
    // Not base64 through start().
    let mut s = spec(b"", 64, 1);
    s.code = "%%%".into();
    assert!(matches!(
        rt.start(&s, T).await,
        Err(RuntimeError::Init { .. })
    ));
    assert!(!rt.supports("nodejs:20"));
    assert!(rt.supports("wasm:wasi") && rt.supports("wasm:http"));
}

#[tokio::test]
async fn compiled_artifact_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = wasm(ECHO_WAT);
    {
        let rt = runtime(dir.path(), 8);
        rt.prepare(bytes.clone()).await.unwrap();
        rt.prepare(bytes.clone()).await.unwrap();
        let s = rt.stats();
        assert_eq!((s.compilations, s.cache_loads), (1, 0));
    }
    // "Restart": a new runtime on the same cache directory loads instead of compiling.
    let rt = runtime(dir.path(), 8);
    let mut inst = rt.start(&spec(&bytes, 64, 1), T).await.unwrap();
    let out = inst.run(req(json!({"x": 1}), T)).await;
    assert_eq!(out.result, RunResult::Ok(json!({"x": 1})));
    let s = rt.stats();
    assert_eq!((s.compilations, s.cache_loads), (0, 1));
}

#[tokio::test]
async fn on_demand_allocation_works_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = WasmConfig::new(dir.path());
    cfg.allocation = Allocation::OnDemand;
    let rt = WasmRuntime::new(cfg).unwrap();
    assert!(!rt.stats().pooling);
    let mut inst = rt.start(&spec(&wasm(ECHO_WAT), 64, 1), T).await.unwrap();
    let out = inst.run(req(json!({"y": [true]}), T)).await;
    assert_eq!(out.result, RunResult::Ok(json!({"y": [true]})));
}

#[tokio::test]
async fn host_files_env_and_sockets_are_unreachable() {
    // A p1 command that tries to open "/etc/passwd" relative to preopen fd 3 and reads its
    // environment size: there is no preopen (errno badf) and no variable.
    let probe = wasm(
        r#"
(module
  (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 200) "etc/passwd")
  (data (i32.const 300) "{\"open\":0,\"envs\":0}")
  (func (export "_start")
    (local $e i32)
    (local.set $e (call $open (i32.const 3) (i32.const 0) (i32.const 200) (i32.const 10) (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 400)))
    ;; errno 8 (badf): no preopened directory at fd 3
    (i32.store8 (i32.const 308) (i32.add (i32.const 48) (i32.eq (local.get $e) (i32.const 8))))
    (drop (call $env (i32.const 500) (i32.const 504)))
    (i32.store8 (i32.const 317) (i32.add (i32.const 48) (i32.load (i32.const 500))))
    (i32.store (i32.const 0) (i32.const 300))
    (i32.store (i32.const 4) (i32.const 19))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
)
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), 8);
    let mut s = spec(&probe, 64, 1);
    s.env.insert("SECRET".into(), "x".into());
    let mut inst = rt.start(&s, T).await.unwrap();
    let out = inst.run(req(json!({}), T)).await;
    assert_eq!(out.result, RunResult::Ok(json!({"open": 1, "envs": 0})));
}

/// On a single-threaded executor a spinning guest yields at every epoch tick, so another
/// activation completes long before the spinner's deadline.
#[tokio::test(flavor = "current_thread")]
async fn spinning_guest_does_not_starve_others() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), 8);
    let inst = rt.start(&spec(&wasm(ECHO_WAT), 64, 4), T).await.unwrap();
    let runner = inst.concurrent().expect("a concurrent runner");
    let spinner = {
        let runner = Arc::clone(&runner);
        tokio::spawn(async move {
            runner
                .run(req(json!({"loop": true}), Duration::from_millis(1500)))
                .await
        })
    };
    tokio::task::yield_now().await;
    let t0 = Instant::now();
    let out = runner.run(req(json!({"quick": 1}), T)).await;
    assert_eq!(out.result, RunResult::Ok(json!({"quick": 1})));
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(spinner.await.unwrap().result, RunResult::Timeout);
}
