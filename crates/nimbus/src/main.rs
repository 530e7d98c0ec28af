//! `nimbus`: the server (`serve`), the administration commands (`admin`), the benchmark
//! (`bench`) and the client CLI, in one binary.

mod admin;
mod bench;
mod datadir;
mod egress;
mod faas;
mod feeds;
mod serve;
mod wasm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "nimbus",
    version,
    about = "Nimbus: a serverless platform in one binary (OpenWhisk-compatible API)"
)]
struct Cli {
    #[command(flatten)]
    global: nimbus_cli::GlobalOpts,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the platform: API server, invoker and embedded store.
    Serve(serve::ServeArgs),
    /// Administer a data directory (namespaces, keys, storage limits, check, backup, restore).
    Admin(admin::AdminArgs),
    /// Benchmarks: warm/cold invocation latency against a baseline HTTP server (core), and cold
    /// starts with/without stem cells, bursts and idle memory (pool).
    Bench(bench::BenchArgs),
    /// Create a function from an OpenFaaS-style template and add it to a stack file.
    New(faas::NewArgs),
    /// Build every function of an OpenFaaS stack file into a bundle and deploy it.
    Up(faas::UpArgs),
    /// List the functions of the OpenFaaS gateway.
    List(faas::ListArgs),
    /// Call a function through the OpenFaaS gateway (body from stdin).
    Invoke(faas::InvokeArgs),
    /// Show (or --follow) a function's logs through the OpenFaaS gateway.
    Logs(faas::LogsArgs),
    /// Remove a function through the OpenFaaS gateway.
    Remove(faas::RemoveArgs),
    #[command(flatten)]
    Client(nimbus_cli::ClientCommand),
}

/// mimalloc: per-thread free lists instead of glibc's arena locks and chunk consolidation, which
/// showed up on every request path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(a) => report(serve::run(a).await),
            Cmd::Admin(a) => report(admin::run(a).await),
            Cmd::Bench(a) => report(bench::run(a).await),
            Cmd::New(a) => report(faas::new(a)),
            Cmd::Up(a) => report(faas::up(a).await),
            Cmd::List(a) => report(faas::list(a).await),
            Cmd::Invoke(a) => report(faas::invoke(a).await),
            Cmd::Logs(a) => report(faas::logs(a).await),
            Cmd::Remove(a) => report(faas::remove(a).await),
            Cmd::Client(c) => nimbus_cli::run(cli.global, c).await,
        }
    });
    std::process::exit(code);
}

fn report(r: anyhow::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
