//! `nimbus`: the server (`serve`), the administration commands (`admin`), the benchmark
//! (`bench`) and the client CLI, in one binary.

mod admin;
mod bench;
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
    /// Administer a data directory (namespaces and keys).
    Admin(admin::AdminArgs),
    /// Benchmarks: warm/cold invocation latency against a baseline HTTP server (core), and cold
    /// starts with/without stem cells, bursts and idle memory (pool).
    Bench(bench::BenchArgs),
    #[command(flatten)]
    Client(nimbus_cli::ClientCommand),
}

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
