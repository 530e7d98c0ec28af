//! The Rust examples under `examples-src/`, built with cargo for `wasm32-wasip1`/`wasm32-wasip2`
//! (needs `rustup target add wasm32-wasip1 wasm32-wasip2`), deployed and invoked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use nimbus_model::ActionLimits;
use nimbus_runtime::{InstanceSpec, RunRequest, RunResult, Runtime};
use nimbus_wasm::{Capabilities, HostPattern, WasmConfig, WasmRuntime};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

static BUILD: Mutex<()> = Mutex::new(());

/// Builds `examples-src/<name>` for `target` and returns the `.wasm`.
fn build_example(name: &str, target: &str) -> Vec<u8> {
    let _guard = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples-src")
        .join(name)
        .join("Cargo.toml");
    let target_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wasm-examples");
    let status = std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "--target",
            target,
            "--manifest-path",
        ])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("RUSTFLAGS")
        .status()
        .expect("run cargo");
    assert!(
        status.success(),
        "building {name} for {target} failed (is the target installed? rustup target add {target})"
    );
    let file = target_dir
        .join(target)
        .join("release")
        .join(format!("{name}.wasm"));
    std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn spec(kind: &str, bytes: &[u8]) -> InstanceSpec {
    InstanceSpec {
        kind: kind.into(),
        code: base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into(),
        binary: true,
        main: "main".into(),
        action_name: "/guest/example".into(),
        env: BTreeMap::from([("__OW_API_HOST".to_string(), "http://x".to_string())]),
        limits: ActionLimits {
            memory: 128,
            ..ActionLimits::default()
        },
        outbound_network: false,
    }
}

fn req(value: Value) -> RunRequest {
    RunRequest {
        value: value.as_object().cloned().unwrap_or_default(),
        activation_id: "b".repeat(32),
        namespace: "guest".into(),
        action_name: "/guest/example".into(),
        action_version: "0.0.1".into(),
        transaction_id: "t".into(),
        deadline: 0,
        api_key: None,
        timeout: Duration::from_secs(10),
        log_limit_bytes: 1 << 20,
    }
}

fn runtime(dir: &Path) -> WasmRuntime {
    let mut cfg = WasmConfig::new(dir);
    cfg.max_concurrent_instances = 16;
    cfg.pool_instances = 16;
    WasmRuntime::new(cfg).unwrap()
}

async fn check_wasi(rt: &WasmRuntime, bytes: Vec<u8>) {
    let prepared = rt.validate("wasm:wasi", bytes.clone()).await.unwrap();
    assert_eq!(rt.infer_kind(&prepared), "wasm:wasi");
    let mut inst = rt
        .start(&spec("wasm:wasi", &bytes), Duration::from_secs(10))
        .await
        .unwrap();
    let out = inst.run(req(json!({"name": "Ada"}))).await;
    assert_eq!(
        out.result,
        RunResult::Ok(json!({"greeting": "Hello, Ada!", "envVars": 0, "canReadHostFiles": false}))
    );
    assert!(
        out.logs.iter().any(|l| l.ends_with("stderr: greeting Ada")),
        "{:?}",
        out.logs
    );
    let out = inst.run(req(json!({"fail": true}))).await;
    match out.result {
        RunResult::DeveloperError(m) => assert!(m.contains("exited"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn rust_wasip2_command_component() {
    let bytes = build_example("hello-wasi", "wasm32-wasip2");
    assert_eq!(nimbus_wasm::detect_component(&bytes), Some(true));
    let dir = tempfile::tempdir().unwrap();
    check_wasi(&runtime(dir.path()), bytes).await;
}

#[tokio::test]
async fn rust_wasip1_command_module() {
    let bytes = build_example("hello-wasi", "wasm32-wasip1");
    assert_eq!(nimbus_wasm::detect_component(&bytes), Some(false));
    let dir = tempfile::tempdir().unwrap();
    check_wasi(&runtime(dir.path()), bytes).await;
}

#[tokio::test]
async fn rust_wasi_http_component() {
    let bytes = build_example("hello-http", "wasm32-wasip2");
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    let prepared = rt.validate("wasm:http", bytes.clone()).await.unwrap();
    assert_eq!(rt.infer_kind(&prepared), "wasm:http");
    let mut inst = rt
        .start(&spec("wasm:http", &bytes), Duration::from_secs(10))
        .await
        .unwrap();
    for _ in 0..3 {
        let out = inst.run(req(json!({"name": "Ada"}))).await;
        assert_eq!(
            out.result,
            RunResult::Ok(json!({"greeting": "Hello, Ada!", "method": "POST", "path": "/"}))
        );
        assert!(
            out.logs
                .iter()
                .any(|l| l.ends_with("stderr: POST / for Ada")),
            "{:?}",
            out.logs
        );
    }
    let out = inst.run(req(json!({"notFound": true}))).await;
    assert_eq!(
        out.result,
        RunResult::Ok(json!({"error": "no such thing", "statusCode": 404}))
    );
    // A core module is not a wasm:http function. (This component, a Rust binary, also exports
    // wasi:cli/run, so it would link as wasm:wasi too.)
    let module = build_example("hello-wasi", "wasm32-wasip1");
    assert!(rt.validate("wasm:http", module).await.is_err());
}

#[tokio::test]
async fn http_component_timeout_and_memory_limit() {
    let bytes = build_example("hello-http", "wasm32-wasip2");
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    let mut inst = rt
        .start(&spec("wasm:http", &bytes), Duration::from_secs(10))
        .await
        .unwrap();
    let mut r = req(json!({"spin": true}));
    r.timeout = Duration::from_millis(300);
    let t0 = std::time::Instant::now();
    let out = inst.run(r).await;
    let took = t0.elapsed();
    assert_eq!(out.result, RunResult::Timeout);
    assert!(took < Duration::from_millis(400), "stopped after {took:?}");
    // Within the 128 MB limit, then over it.
    let out = inst.run(req(json!({"allocMb": 16}))).await;
    assert_eq!(out.result, RunResult::Ok(json!({"allocated": 16 << 20})));
    let out = inst.run(req(json!({"allocMb": 200}))).await;
    assert_eq!(out.result, RunResult::MemoryExceeded, "{:?}", out.logs);
    let out = inst.run(req(json!({"name": "Bo"}))).await;
    assert_eq!(
        out.result,
        RunResult::Ok(json!({"greeting": "Hello, Bo!", "method": "POST", "path": "/"}))
    );
}

/// Not a timed test: prints in-process latency of a fresh instance per run (build with
/// `--release` for meaningful numbers): `cargo test --release --test examples latency -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn latency_report() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    for (kind, name, target) in [
        ("wasm:wasi", "hello-wasi", "wasm32-wasip1"),
        ("wasm:wasi", "hello-wasi", "wasm32-wasip2"),
        ("wasm:http", "hello-http", "wasm32-wasip2"),
    ] {
        let bytes = build_example(name, target);
        let spec = spec(kind, &bytes);
        let t0 = std::time::Instant::now();
        let mut inst = rt.start(&spec, Duration::from_secs(10)).await.unwrap();
        let start = t0.elapsed();
        let mut times = Vec::new();
        for _ in 0..2000 {
            let t = std::time::Instant::now();
            let out = inst.run(req(json!({"name": "Ada"}))).await;
            times.push(t.elapsed());
            assert!(matches!(out.result, RunResult::Ok(_)));
        }
        times.sort();
        // A start after deploy (artifact and InstancePre cached) plus its first run.
        let t = std::time::Instant::now();
        let mut again = rt.start(&spec, Duration::from_secs(10)).await.unwrap();
        let restart = t.elapsed();
        let out = again.run(req(json!({"name": "Ada"}))).await;
        let first_run = t.elapsed();
        assert!(matches!(out.result, RunResult::Ok(_)));
        eprintln!(
            "{kind} {name} ({target}): start {start:?} (compiling), start after deploy {restart:?}, \
             start + first run {first_run:?}, run p50 {:?} p99 {:?} (pooling: {})",
            times[times.len() / 2],
            times[times.len() * 99 / 100],
            rt.stats().pooling
        );
    }
}

#[tokio::test]
async fn granted_bundled_dir_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = tempfile::tempdir().unwrap();
    std::fs::write(bundle.path().join("data.txt"), "hello bundle").unwrap();
    let rt = runtime(dir.path());
    for target in ["wasm32-wasip2", "wasm32-wasip1"] {
        let bytes = build_example("hello-wasi", target);
        let caps = Capabilities {
            bundled_dir: Some(bundle.path().to_path_buf()),
            env: vec![("GREETING".into(), "hi".into())],
            ..Capabilities::default()
        };
        let mut inst = rt
            .start_with_capabilities(&spec("wasm:wasi", &bytes), caps)
            .await
            .unwrap();
        let out = inst
            .run(req(
                json!({"name": "Ada", "readFile": "/data.txt", "env": "GREETING"}),
            ))
            .await;
        assert_eq!(
            out.result,
            RunResult::Ok(json!({
                "greeting": "Hello, Ada!",
                "envVars": 1,
                "canReadHostFiles": false,
                "file": "hello bundle",
                "canWrite": false,
                "envValue": "hi",
            })),
            "{target}"
        );
        assert_eq!(
            std::fs::read_to_string(bundle.path().join("data.txt")).unwrap(),
            "hello bundle"
        );
    }
}

/// An HTTP server on loopback answering `hello`, counting its connections.
async fn hello_server() -> (u16, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                    )
                    .await;
            });
        }
    });
    (port, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_http_only_to_allowed_hosts() {
    let (port, connections) = hello_server().await;
    let url = format!("http://127.0.0.1:{port}/");
    let bytes = build_example("hello-http", "wasm32-wasip2");
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());

    // Denied by default.
    let mut inst = rt
        .start(&spec("wasm:http", &bytes), Duration::from_secs(10))
        .await
        .unwrap();
    let out = inst.run(req(json!({"fetch": url}))).await;
    match &out.result {
        // The guest sees a failed request (wstd reports the aborted body stream).
        RunResult::Ok(v) => assert!(v["fetchError"].is_string(), "{v}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(connections.load(Ordering::SeqCst), 0);

    // Allowed host, other port: still denied; then the right port.
    for (pattern, ok) in [
        (format!("127.0.0.1:{}", port.wrapping_add(1)), false),
        (format!("127.0.0.1:{port}"), true),
    ] {
        let caps = Capabilities {
            allowed_outbound_hosts: vec![HostPattern::parse(&pattern).unwrap()],
            ..Capabilities::default()
        };
        let mut inst = rt
            .start_with_capabilities(&spec("wasm:http", &bytes), caps)
            .await
            .unwrap();
        let out = inst.run(req(json!({"fetch": url}))).await;
        let RunResult::Ok(v) = out.result else {
            panic!("{:?}", out.result)
        };
        if ok {
            assert_eq!(v, json!({"status": 200, "body": "hello"}));
            assert_eq!(connections.load(Ordering::SeqCst), 1);
        } else {
            assert!(v["fetchError"].is_string(), "{v}");
            assert_eq!(connections.load(Ordering::SeqCst), 0);
        }
    }
}
