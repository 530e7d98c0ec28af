//! `nimbus serve`: wires store, runtimes, invoker, controller and API together and runs them
//! until SIGTERM/SIGINT.

use crate::admin::write_auth_file;
use anyhow::Context;
use clap::Args;
use nimbus_controller::{Controller, ControllerConfig};
use nimbus_invoker::{Invoker, PoolConfig};
use nimbus_model::SystemLimits;
use nimbus_runtime::{ProcessRuntime, ProcessRuntimeConfig, Runtime};
use nimbus_sandbox::{RealHost, Sandbox};
use nimbus_store::SqliteStore;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Address to listen on. Defaults to loopback only.
    #[arg(long, env = "NIMBUS_LISTEN", default_value = "127.0.0.1:3233")]
    pub listen: SocketAddr,
    /// Where the embedded store, keys and function code live.
    #[arg(long, env = "NIMBUS_DATA_DIR", default_value = ".nimbus")]
    pub data_dir: PathBuf,
    /// Development mode: use the well-known OpenWhisk keys for guest and whisk.system.
    #[arg(long)]
    pub dev: bool,
    /// URL that functions use to reach this API (`__OW_API_HOST`); defaults to http://LISTEN.
    #[arg(long, env = "NIMBUS_API_HOST")]
    pub api_host: Option<String>,
    /// Seconds an idle warm instance is kept before it is stopped.
    #[arg(long, default_value_t = 600)]
    pub idle_timeout: u64,
    /// Live function instances on this node.
    #[arg(long, default_value_t = 64)]
    pub max_instances: usize,
    /// Memory (MB) all function instances of this node may reserve together; over it, new work
    /// queues (fairly across namespaces) instead of failing.
    #[arg(long, default_value_t = 4096)]
    pub memory_budget: u64,
    /// Most pre-started runtime processes ("stem cells") kept per kind (0: none).
    #[arg(long, default_value_t = 4)]
    pub stem_cells: usize,
    /// Namespace throttle: invocations per minute.
    #[arg(long, default_value_t = SystemLimits::default().invocations_per_minute)]
    pub invocations_per_minute: u64,
    /// Namespace throttle: concurrent activations.
    #[arg(long, default_value_t = SystemLimits::default().concurrent_invocations)]
    pub concurrent_invocations: u64,
    /// Namespace throttle: trigger fires per minute.
    #[arg(long, default_value_t = SystemLimits::default().fires_per_minute)]
    pub fires_per_minute: u64,
    /// Seconds in-flight activations get to finish on shutdown.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace: u64,
    /// Log format of the server's own logs.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    pub log_format: String,
    /// Do not put function processes into memory cgroups even where possible.
    #[arg(long)]
    pub no_cgroups: bool,
    /// Run functions WITHOUT the Linux sandbox (namespaces, read-only root, seccomp,
    /// unprivileged uid). Only for debugging on a trusted machine.
    #[arg(long)]
    pub no_sandbox: bool,
    #[command(flatten)]
    pub build: crate::faas::BuildArgs,
    /// Bearer token for `/metrics`. Without it, `/metrics` is open only while the server
    /// listens on loopback (see docs/metrics.md).
    #[arg(long, env = "NIMBUS_METRICS_TOKEN")]
    pub metrics_token: Option<String>,
    /// Seconds a client may take to send a request head; also how long an idle keep-alive
    /// connection is kept open.
    #[arg(long, default_value_t = 15)]
    pub header_read_timeout: u64,
    /// Open HTTP connections at most.
    #[arg(long, default_value_t = 8192)]
    pub max_connections: usize,
    /// Open HTTP connections per client address at most (0: no per-client cap).
    #[arg(long, default_value_t = 1024)]
    pub max_connections_per_ip: usize,
    #[command(flatten)]
    pub wasm: crate::wasm::WasmArgs,
    #[command(flatten)]
    pub egress: crate::egress::EgressArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// Storage quotas, retention and the disk reserve (docs/security.md, "Quotas and retention").
#[derive(Args, Clone)]
pub struct StorageArgs {
    /// Bytes each namespace may store: activation records (logs and results included),
    /// actions and other entities (code included), queued payloads and dead letters. New work
    /// of a namespace at its quota gets 403. Per namespace: `nimbus admin namespace limits`.
    #[arg(long, default_value = "1GiB", value_parser = crate::datadir::parse_size)]
    pub namespace_quota: u64,
    /// Activation records older than this are deleted (e.g. 7d, 12h, 30m).
    #[arg(long, default_value = "7d", value_parser = crate::datadir::parse_duration)]
    pub activation_max_age: Duration,
    /// Only the newest this many activation records of each namespace are kept.
    #[arg(long, default_value_t = 10_000)]
    pub activation_max_count: u64,
    /// Free disk space kept for work already accepted: below it, new work gets 507 while
    /// queued invocations still complete.
    #[arg(long, default_value = "64MiB", value_parser = crate::datadir::parse_size)]
    pub store_reserve: u64,
    /// How often retention runs.
    #[arg(long, default_value = "60s", value_parser = crate::datadir::parse_duration)]
    pub retention_interval: Duration,
}

impl StorageArgs {
    pub fn limits(&self) -> nimbus_store::StorageLimits {
        nimbus_store::StorageLimits {
            quota_bytes: self.namespace_quota,
            max_age: self.activation_max_age,
            max_count: self.activation_max_count,
        }
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NIMBUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

pub async fn run(a: ServeArgs) -> anyhow::Result<()> {
    init_tracing(&a.log_format);
    create_private_dir(&a.data_dir)?;
    // Function processes run with their own working directory, so every path handed to the
    // runtime must be absolute.
    let mut a = a;
    a.data_dir = std::fs::canonicalize(&a.data_dir)
        .with_context(|| format!("resolving {}", a.data_dir.display()))?;
    // One server per data directory (a restore waits for it too).
    let _lock = crate::datadir::lock(&a.data_dir, "nimbus serve")?;
    let db = a.data_dir.join("nimbus.db");
    let store = SqliteStore::open_with(
        &db,
        &nimbus_store::OpenOptions {
            expect: crate::datadir::expect(&a.data_dir),
            quick_check: true,
            limits: a.storage.limits(),
            reserve_bytes: a.storage.store_reserve,
            ..Default::default()
        },
    )
    .with_context(|| format!("opening the store {}", db.display()))?;
    store.start_housekeeping(a.storage.retention_interval);
    // The feed providers keep their registrations in the same database (cheap clone).
    let feed_store = store.clone();
    let egress = crate::egress::policy(&a.egress, a.listen)?;
    tracing::info!(policy = %egress, "egress policy");
    let shutdown_store = store.clone();
    let mut warnings = Vec::new();
    let sandbox = if a.no_sandbox {
        warnings.push("functions run WITHOUT the Linux sandbox (--no-sandbox): they can read this machine's files and reach its services".to_string());
        None
    } else {
        let mut sb = Sandbox::detect(Arc::new(RealHost));
        sb.set_egress(egress.scoped("sandbox"));
        warnings.extend(sb.warnings());
        Some(Arc::new(sb))
    };
    let isolation = match &sandbox {
        None => serde_json::json!({"sandbox": false}),
        Some(sb) => {
            let l = sb.layers();
            serde_json::json!({
                "sandbox": l.bwrap.is_some(),
                "namespaces": l.namespaces,
                "readOnlyRoot": l.filesystem,
                "unprivilegedUser": l.uid_switch,
                "noCapabilities": l.no_capabilities,
                "noNewPrivileges": l.no_new_privs,
                "seccomp": l.seccomp,
                "rlimits": l.rlimits,
                "networkIsolated": l.network_isolated,
                "outboundNetwork": l.outbound,
                "cgroupMemory": l.cgroup_memory,
                "cgroupPids": l.cgroup_pids,
                "cgroupCpu": l.cgroup_cpu,
                "cgroupFreezer": l.cgroup_freezer,
            })
        }
    };
    tracing::info!(layers = %isolation, "function isolation");
    // POST /build runs pip/npm in the same sandbox as functions (--no-sandbox: unsandboxed).
    let builder = a.build.builder(sandbox.clone());
    let runtime = ProcessRuntime::new(ProcessRuntimeConfig {
        work_dir: a.data_dir.join("instances"),
        cgroups: !a.no_cgroups,
        sandbox,
        ..ProcessRuntimeConfig::default()
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if runtime.cgroup_manager().is_none() {
        warnings.push(
            "memory limits are NOT enforced: no writable cgroup hierarchy was found (run as root on Linux, or see --no-cgroups)"
                .to_string(),
        );
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let mut runtimes: Vec<Arc<dyn Runtime>> = vec![Arc::new(runtime)];
    if let Some(wasm) = crate::wasm::runtime(&a.wasm, &a.data_dir, egress.scoped("wasm"))? {
        runtimes.push(Arc::new(wasm));
    }
    let invoker = Invoker::new(
        runtimes,
        PoolConfig {
            idle_timeout: Duration::from_secs(a.idle_timeout),
            max_instances: a.max_instances,
            memory_budget_mb: a.memory_budget,
            stem_cells_per_kind: a.stem_cells,
            ..PoolConfig::default()
        },
    );
    let limits = SystemLimits {
        invocations_per_minute: a.invocations_per_minute,
        concurrent_invocations: a.concurrent_invocations,
        fires_per_minute: a.fires_per_minute,
        ..SystemLimits::default()
    };
    let api_host = a
        .api_host
        .clone()
        .unwrap_or_else(|| format!("http://{}", a.listen));
    let controller = Controller::new(
        Arc::new(store),
        invoker,
        ControllerConfig {
            limits,
            api_host,
            shutdown_grace: Duration::from_secs(a.shutdown_grace),
            function_mounts: Some(a.data_dir.join("openfaas").join("mounts")),
            dev: a.dev,
            ..Default::default()
        },
    );

    let keys = controller
        .bootstrap_namespaces()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut system = None;
    // New keys go to their 0600 files always, and to the terminal only when it is one: never
    // into a log that a collector keeps.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    for k in &keys {
        if let Some(new) = &k.created {
            let path = write_auth_file(&a.data_dir, &new.namespace, &new.uuid, &new.secret)?;
            if tty {
                println!(
                    "namespace {} key: {} (stored in {})",
                    new.namespace,
                    new.api_key(),
                    path.display()
                );
            } else {
                tracing::info!(namespace = %new.namespace, file = %path.display(), "generated a key; it is stored in the file (mode 0600)");
            }
        }
        if k.namespace == "whisk.system" {
            system = Some(nimbus_controller::Identity {
                namespace: k.namespace.clone(),
                uuid: k.uuid.clone(),
            });
        }
    }
    if let Some(sys) = &system
        && controller
            .install_catalog(sys)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        tracing::info!("published /whisk.system/utils");
    }
    let warm = controller
        .restore_min_instances()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if warm > 0 {
        tracing::info!(actions = warm, "keeping minimum instances warm");
    }
    let dispatcher = controller
        .start_dispatcher()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let feeds = crate::feeds::start(&controller, feed_store, egress.scoped("feed")).await?;

    // --- OpenFaaS gateway (issue 6): same listener, same controller; see docs/openfaas.md ---
    let gateway = nimbus_openfaas::Gateway::new(
        controller.clone(),
        nimbus_openfaas::GatewayConfig {
            dir: a.data_dir.join("openfaas"),
            mounts: a.data_dir.join("openfaas").join("mounts"),
            default_namespace: "guest".into(),
            dev: a.dev,
            egress: egress.scoped("callback"),
            builder,
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if !a.dev {
        let (user, pass) = gateway.credential_files();
        tracing::info!(user = %user.display(), password = %pass.display(), "OpenFaaS gateway admin credential");
    }
    tokio::spawn(gateway.clone().run_callbacks());

    let app = nimbus_api::router_with(
        controller.clone(),
        nimbus_api::ServerInfo {
            build: env!("CARGO_PKG_VERSION").to_string(),
            warnings,
            isolation,
        },
        nimbus_api::ConsoleOptions {
            // The OpenFaaS gateway_* metrics are served on the same /metrics.
            metrics_sources: vec![
                Arc::new(GatewayMetricsSource(gateway.clone())),
                Arc::new(crate::egress::EgressMetricsSource(egress.clone())),
            ],
            metrics_token: a.metrics_token.clone().filter(|t| !t.is_empty()),
            metrics_open: a.listen.ip().is_loopback(),
        },
    )
    .merge(nimbus_openfaas::http::router(gateway))
    .layer(axum::Extension(feeds.clone()))
    // After the merge, so it covers both faces: a route without an access rule is refused.
    .layer(axum::middleware::from_fn(nimbus_api::access::require_rule));
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    if a.dev {
        tracing::warn!("development mode: the well-known OpenWhisk keys are accepted");
    }
    tracing::info!(listen = %a.listen, data_dir = %a.data_dir.display(), "nimbus is ready");
    eprintln!("nimbus listening on http://{}", a.listen);

    let (phase_tx, phase_rx) = tokio::sync::watch::channel(nimbus_api::server::Phase::Serving);
    let limits = nimbus_api::server::ServerLimits {
        header_read_timeout: Duration::from_secs(a.header_read_timeout.max(1)),
        max_connections: a.max_connections.max(1),
        max_connections_per_ip: a.max_connections_per_ip,
    };
    let server = tokio::spawn(nimbus_api::server::serve(
        listener,
        app,
        limits,
        phase_rx,
        Duration::from_secs(2),
    ));
    shutdown_signal().await;
    tracing::info!("shutting down: new requests get 503; finishing in-flight activations");
    let _ = phase_tx.send(nimbus_api::server::Phase::Draining);
    feeds.stop_all();
    controller.shutdown().await;
    // A stopped server leaves everything in the database file and an empty WAL.
    if let Err(e) = shutdown_store.checkpoint().await {
        tracing::warn!(error = %e, "could not checkpoint the store");
    }
    dispatcher.abort();
    let _ = phase_tx.send(nimbus_api::server::Phase::Stopped);
    // Open HTTP exchanges get a moment to deliver their answers, then the process stops.
    let _ = tokio::time::timeout(Duration::from_secs(3), server).await;
    tracing::info!("stopped");
    Ok(())
}

pub(crate) fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The OpenFaaS gateway's metrics as one more `/metrics` text source.
struct GatewayMetricsSource(Arc<nimbus_openfaas::Gateway>);

impl nimbus_metrics::MetricsSource for GatewayMetricsSource {
    fn render(&self, out: &mut String) {
        // `gateway_service_count` is computed from the store on scrape; rendering is
        // synchronous, so wait for that query here (the server runs a multi-thread runtime).
        let gw = self.0.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(gw.refresh_service_count())
        });
        out.push_str(&self.0.metrics.render());
    }
}
