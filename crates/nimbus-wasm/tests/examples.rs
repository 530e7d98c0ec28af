//! The examples under `examples/wasm` (Rust, Python and JavaScript, both kinds), built by
//! `scripts/build-wasm-examples.sh`, prepared and invoked through [`WasmRuntime`].
//!
//! The examples are read from `$NIMBUS_WASM_EXAMPLES` when it is set (used as is), else from
//! `<target dir>/wasm-examples`, which the first test brings up to date by running the build
//! script (a no-op when the sources are unchanged; a cold build installs componentize-py and
//! componentize-js and takes a few minutes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/examples.rs"]
mod support;

use base64::Engine as _;
use nimbus_egress::{AllowEntry, EgressConfig, EgressPolicy};
use nimbus_model::ActionLimits;
use nimbus_runtime::{InstanceSpec, RunRequest, RunResult, Runtime};
use nimbus_wasm::{Capabilities, HostPattern, WasmConfig, WasmRuntime};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::example;

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
        ro_binds: Vec::new(),
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
    let bytes = example("rust-wasi.wasm");
    assert_eq!(nimbus_wasm::detect_component(&bytes), Some(true));
    let dir = tempfile::tempdir().unwrap();
    check_wasi(&runtime(dir.path()), bytes).await;
}

#[tokio::test]
async fn rust_wasip1_command_module() {
    let bytes = example("rust-wasi-p1.wasm");
    assert_eq!(nimbus_wasm::detect_component(&bytes), Some(false));
    let dir = tempfile::tempdir().unwrap();
    check_wasi(&runtime(dir.path()), bytes).await;
}

#[tokio::test]
async fn rust_wasi_http_component() {
    let bytes = example("rust-http.wasm");
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
    let module = example("rust-wasi-p1.wasm");
    assert!(rt.validate("wasm:http", module).await.is_err());
}

#[tokio::test]
async fn http_component_timeout_and_memory_limit() {
    let bytes = example("rust-http.wasm");
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

/// Every example: (built file, kind).
const ALL: [(&str, &str); 7] = [
    ("rust-wasi-p1.wasm", "wasm:wasi"),
    ("rust-wasi.wasm", "wasm:wasi"),
    ("rust-http.wasm", "wasm:http"),
    ("python-wasi.wasm", "wasm:wasi"),
    ("python-http.wasm", "wasm:http"),
    ("js-wasi.wasm", "wasm:wasi"),
    ("js-http.wasm", "wasm:http"),
];

/// Not a timed test: prints, for every example, its size, the first compile (Cranelift, at
/// deploy), the load of the cached artifact after a restart, and the in-process latency of a
/// fresh instance per run. Build with `--release` for meaningful numbers:
/// `cargo test --release -p nimbus-wasm --test examples latency -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn latency_report() {
    for (file, kind) in ALL {
        let bytes = example(file);
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(kind, &bytes);
        let (compile, start, times) = {
            let rt = runtime(dir.path());
            let t0 = std::time::Instant::now();
            rt.prepare(bytes.clone()).await.unwrap();
            let compile = t0.elapsed();
            let t = std::time::Instant::now();
            let mut inst = rt.start(&spec, Duration::from_secs(10)).await.unwrap();
            let start = t.elapsed();
            let runs = if file.starts_with("rust") { 2000 } else { 200 };
            let mut times = Vec::new();
            for _ in 0..runs {
                let t = std::time::Instant::now();
                let out = inst.run(req(json!({"name": "Ada"}))).await;
                times.push(t.elapsed());
                assert!(matches!(out.result, RunResult::Ok(_)), "{:?}", out.result);
            }
            times.sort();
            (compile, start, times)
        };
        // A restart: a new runtime on the same cache loads the .cwasm instead of compiling.
        let rt = runtime(dir.path());
        let t = std::time::Instant::now();
        let mut inst = rt.start(&spec, Duration::from_secs(10)).await.unwrap();
        let restart = t.elapsed();
        let out = inst.run(req(json!({"name": "Ada"}))).await;
        let restart_run = t.elapsed();
        assert!(matches!(out.result, RunResult::Ok(_)));
        assert_eq!(rt.stats().compilations, 0, "a restart must not recompile");
        eprintln!(
            "{file:18} {kind:9} {:>6} KB: compile {compile:>10.1?}, start after deploy {start:>8.1?}, \
             after restart: start {restart:>8.1?}, start + first run {restart_run:>8.1?}; \
             run p50 {:>8.1?} p99 {:>8.1?} (pooling: {})",
            bytes.len() / 1024,
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
    for target in ["rust-wasi.wasm", "rust-wasi-p1.wasm"] {
        let bytes = example(target);
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
                // Read the whole request head before answering, and drain what follows before
                // closing: closing with unread input sends a reset, which the guest would see
                // as "connection reset" instead of the response.
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                    )
                    .await;
                let _ = conn.shutdown().await;
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                    while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
                })
                .await;
            });
        }
    });
    (port, count)
}

// This test once failed now and then with "connection reset" (a GET's unsent body closed under
// the guest; see `detach_unsent_body` in src/caps.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_http_only_to_allowed_hosts() {
    let (port, connections) = hello_server().await;
    let url = format!("http://127.0.0.1:{port}/");
    let bytes = example("rust-http.wasm");
    let dir = tempfile::tempdir().unwrap();
    // The listener is on loopback: the server's egress policy must open it too.
    let mut cfg = WasmConfig::new(dir.path());
    cfg.max_concurrent_instances = 16;
    cfg.pool_instances = 16;
    cfg.egress = EgressPolicy::new(EgressConfig {
        allow: vec![AllowEntry::parse(&format!("127.0.0.1:{port}")).unwrap()],
        ..EgressConfig::default()
    });
    let rt = WasmRuntime::new(cfg).unwrap();

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

    // The default egress policy refuses loopback although the function may call the host:
    // no connection, and the activation's logs carry the policy's reason.
    let rt = runtime(dir.path());
    let caps = Capabilities {
        allowed_outbound_hosts: vec![HostPattern::parse(&format!("127.0.0.1:{port}")).unwrap()],
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
    assert!(v["fetchError"].is_string(), "{v}");
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    assert!(
        out.logs
            .iter()
            .any(|l| l.contains("refused by the egress policy")),
        "{:?}",
        out.logs
    );
}

// --- Python and JavaScript (componentize-py, componentize-js) ---------------------------------

/// A runtime for the large interpreter components: componentize-py/componentize-js embed
/// CPython/SpiderMonkey (12–19 MB components with more core instances, memories and tables
/// than the Rust ones), so the pool's per-component caps are raised here.
fn big_runtime(dir: &Path) -> WasmRuntime {
    let mut cfg = WasmConfig::new(dir);
    cfg.max_concurrent_instances = 8;
    cfg.pool_instances = 8;
    cfg.max_core_instance_size = 64 << 20;
    cfg.max_component_instance_size = 64 << 20;
    WasmRuntime::new(cfg).unwrap()
}

/// A compile cache shared by the tests and kept between runs (artifacts are keyed by engine
/// and content hash): compiling the Python and JavaScript components takes tens of seconds in a
/// debug build, so each is compiled once rather than once per test.
fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("nimbus-wasm-examples-cache")
}

fn big_spec(kind: &str, bytes: &[u8]) -> InstanceSpec {
    let mut spec = spec(kind, bytes);
    spec.limits.memory = 256;
    spec
}

/// An interpreter `wasm:wasi` command: JSON in on stdin, JSON out on stdout, stderr as logs, a
/// failed run as a developer error, no environment, and not a `wasm:http` function.
async fn check_interpreted_wasi(file: &str, language: &str) {
    let bytes = example(file);
    assert_eq!(nimbus_wasm::detect_component(&bytes), Some(true));
    let rt = big_runtime(&shared_cache());
    let prepared = rt.validate("wasm:wasi", bytes.clone()).await.unwrap();
    assert_eq!(rt.infer_kind(&prepared), "wasm:wasi");
    let err = rt.validate("wasm:http", bytes.clone()).await.unwrap_err();
    assert!(err.to_string().contains("incoming-handler"), "{err}");
    let mut inst = rt
        .start(&big_spec("wasm:wasi", &bytes), Duration::from_secs(30))
        .await
        .unwrap();
    for name in ["Ada", "Grace"] {
        let out = inst.run(req(json!({"name": name}))).await;
        let RunResult::Ok(v) = &out.result else {
            panic!("{:?} {:?}", out.result, out.logs)
        };
        assert_eq!(v["greeting"], json!(format!("Hello, {name}!")), "{v}");
        assert_eq!(v["language"], json!(language), "{v}");
        // The default sandbox: no environment at all (not even the action's __OW_* variables).
        assert_eq!(v["envVars"], json!(0), "{v}");
        let expected = format!("stderr: greeting {name}");
        assert!(
            out.logs.iter().any(|l| l.ends_with(&expected)),
            "{:?}",
            out.logs
        );
    }
    let out = inst.run(req(json!({"name": "Bo", "fail": true}))).await;
    match &out.result {
        RunResult::DeveloperError(m) => assert!(m.contains("exited"), "{m}"),
        other => panic!("{other:?} {:?}", out.logs),
    }
    assert!(
        out.logs
            .iter()
            .any(|l| l.ends_with("stderr: failing on request")),
        "{:?}",
        out.logs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_wasi_command_component() {
    check_interpreted_wasi("python-wasi.wasm", "python").await;
    // Nothing of the host's filesystem is visible.
    let bytes = example("python-wasi.wasm");
    let rt = big_runtime(&shared_cache());
    let mut inst = rt
        .start(&big_spec("wasm:wasi", &bytes), Duration::from_secs(30))
        .await
        .unwrap();
    let out = inst.run(req(json!({"name": "Ada"}))).await;
    let RunResult::Ok(v) = &out.result else {
        panic!("{:?}", out.result)
    };
    assert_eq!(v["canReadHostFiles"], json!(false), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_wasi_command_component() {
    check_interpreted_wasi("js-wasi.wasm", "javascript").await;
    let bytes = example("js-wasi.wasm");
    let rt = big_runtime(&shared_cache());
    let mut inst = rt
        .start(&big_spec("wasm:wasi", &bytes), Duration::from_secs(30))
        .await
        .unwrap();
    let out = inst.run(req(json!({"name": "Ada"}))).await;
    let RunResult::Ok(v) = &out.result else {
        panic!("{:?}", out.result)
    };
    assert_eq!(v["preopenedDirs"], json!(0), "{v}");
}

/// Granted capabilities reach interpreted functions too: an environment variable, and (Python)
/// a file of the bundled read-only directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_js_commands_see_granted_capabilities() {
    let bundle = tempfile::tempdir().unwrap();
    std::fs::write(bundle.path().join("data.txt"), "hello bundle").unwrap();
    let rt = big_runtime(&shared_cache());
    for file in ["python-wasi.wasm", "js-wasi.wasm"] {
        let bytes = example(file);
        let caps = Capabilities {
            bundled_dir: Some(bundle.path().to_path_buf()),
            env: vec![("GREETING".into(), "hi".into())],
            ..Capabilities::default()
        };
        let mut inst = rt
            .start_with_capabilities(&big_spec("wasm:wasi", &bytes), caps)
            .await
            .unwrap();
        let out = inst
            .run(req(
                json!({"name": "Ada", "readFile": "/data.txt", "env": "GREETING"}),
            ))
            .await;
        let RunResult::Ok(v) = &out.result else {
            panic!("{file}: {:?} {:?}", out.result, out.logs)
        };
        assert_eq!(v["envVars"], json!(1), "{file}: {v}");
        assert_eq!(v["envValue"], json!("hi"), "{file}: {v}");
        if file.starts_with("python") {
            assert_eq!(v["file"], json!("hello bundle"), "{file}: {v}");
        } else {
            assert_eq!(v["preopenedDirs"], json!(1), "{file}: {v}");
        }
    }
}

/// An interpreter `wasm:http` component invoked with parameters: a POST of the JSON to `/`,
/// the JSON response body as the result, a 404 as an application error, stderr as logs, and
/// a fresh instance every run.
async fn check_interpreted_http(file: &str, language: &str) {
    let bytes = example(file);
    let rt = big_runtime(&shared_cache());
    let prepared = rt.validate("wasm:http", bytes.clone()).await.unwrap();
    assert_eq!(rt.infer_kind(&prepared), "wasm:http");
    let err = rt.validate("wasm:wasi", bytes.clone()).await.unwrap_err();
    assert!(err.to_string().contains("run"), "{err}");
    let mut inst = rt
        .start(&big_spec("wasm:http", &bytes), Duration::from_secs(30))
        .await
        .unwrap();
    for name in ["Ada", "Grace", "Ada"] {
        let params = json!({"name": name});
        let out = inst.run(req(params.clone())).await;
        let body_len = serde_json::to_vec(&params).unwrap().len();
        assert_eq!(
            out.result,
            RunResult::Ok(json!({
                "greeting": format!("Hello, {name}!"),
                "language": language,
                "method": "POST",
                "path": "/",
                "query": {},
                "bodyBytes": body_len,
                "userAgent": null,
            })),
            "{:?}",
            out.logs
        );
        let expected = format!("stderr: POST / for {name}");
        assert!(
            out.logs.iter().any(|l| l.ends_with(&expected)),
            "{:?}",
            out.logs
        );
    }
    let out = inst.run(req(json!({"notFound": true}))).await;
    assert_eq!(
        out.result,
        RunResult::Ok(json!({"error": "no such thing", "statusCode": 404}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_http_component() {
    check_interpreted_http("python-http.wasm", "python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_http_component() {
    check_interpreted_http("js-http.wasm", "javascript").await;
}

/// A restart (a new runtime on the same cache directory) loads the compiled Python component
/// instead of compiling it again, and it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interpreted_components_are_compiled_once_and_cached() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["python-http.wasm", "js-wasi.wasm"] {
        let kind = if file.ends_with("http.wasm") {
            "wasm:http"
        } else {
            "wasm:wasi"
        };
        let bytes = example(file);
        {
            let rt = big_runtime(dir.path());
            rt.validate(kind, bytes.clone()).await.unwrap();
            assert_eq!(rt.stats().compilations, 1);
        }
        let rt = big_runtime(dir.path());
        let mut inst = rt
            .start(&big_spec(kind, &bytes), Duration::from_secs(30))
            .await
            .unwrap();
        let out = inst.run(req(json!({"name": "Ada"}))).await;
        let RunResult::Ok(v) = &out.result else {
            panic!("{file}: {:?}", out.result)
        };
        assert_eq!(v["greeting"], json!("Hello, Ada!"));
        assert_eq!(rt.stats().compilations, 0, "{file}");
        assert_eq!(rt.stats().cache_loads, 1, "{file}");
    }
}

/// An interpreter's busy loop stops at the deadline and a large allocation hits the memory
/// limit with the clear outcome; the function keeps working after both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_js_timeout_and_memory_limit() {
    let rt = big_runtime(&shared_cache());
    for file in ["python-wasi.wasm", "js-wasi.wasm"] {
        let bytes = example(file);
        let mut inst = rt
            .start(&big_spec("wasm:wasi", &bytes), Duration::from_secs(30))
            .await
            .unwrap();
        let mut r = req(json!({"spin": true}));
        r.timeout = Duration::from_millis(500);
        let t0 = std::time::Instant::now();
        let out = inst.run(r).await;
        let took = t0.elapsed();
        assert_eq!(out.result, RunResult::Timeout, "{file}");
        assert!(
            took < Duration::from_millis(600),
            "{file}: stopped after {took:?}"
        );
        // Within the 256 MB limit, then over it.
        let out = inst.run(req(json!({"allocMb": 32}))).await;
        assert_eq!(
            out.result,
            RunResult::Ok(json!({"allocated": 32 << 20})),
            "{file}"
        );
        let out = inst.run(req(json!({"allocMb": 400}))).await;
        assert_eq!(
            out.result,
            RunResult::MemoryExceeded,
            "{file}: {:?}",
            out.logs
        );
        let out = inst.run(req(json!({"name": "Bo"}))).await;
        let RunResult::Ok(v) = &out.result else {
            panic!("{file}: {:?}", out.result)
        };
        assert_eq!(v["greeting"], json!("Hello, Bo!"), "{file}");
    }
}
