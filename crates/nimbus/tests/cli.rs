//! Drives a real `nimbus serve` process through the client commands (`nimbus_cli::run`).
//! The tests at the end need no server.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use clap::Parser;
use nimbus_cli::{ClientCommand, Exit, GlobalOpts, run};

#[derive(Parser)]
#[command(name = "nimbus")]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    cmd: ClientCommand,
}

/// Parses `args` as `nimbus ARGS...` and runs the command.
async fn nimbus(args: &[&str]) -> i32 {
    let mut argv = vec!["nimbus"];
    argv.extend_from_slice(args);
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => panic!("cannot parse {argv:?}: {e}"),
    };
    run(cli.global, cli.cmd).await
}

struct Server {
    apihost: String,
    auth: String,
    dir: tempfile::TempDir,
    suffix: String,
    _srv: common::Server,
}

impl Server {
    /// Starts a fresh server (dev keys) for one test.
    async fn start() -> Server {
        let srv = common::Server::start(&["--dev"]).await;
        Server {
            apihost: srv.base.clone(),
            auth: common::GUEST.to_string(),
            dir: tempfile::tempdir().unwrap(),
            suffix: "t".to_string(),
            _srv: srv,
        }
    }

    /// A unique entity name.
    fn name(&self, base: &str) -> String {
        format!("{base}_{}", self.suffix)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }

    fn config(&self) -> String {
        self.dir
            .path()
            .join("config.json")
            .to_string_lossy()
            .into_owned()
    }

    /// Runs a command with this server's apihost, key and a private config file.
    async fn run(&self, args: &[&str]) -> i32 {
        let config = self.config();
        let mut full: Vec<&str> = args.to_vec();
        full.extend_from_slice(&[
            "--apihost",
            &self.apihost,
            "--auth",
            &self.auth,
            "--config",
            &config,
        ]);
        nimbus(&full).await
    }

    async fn expect(&self, args: &[&str], exit: Exit) {
        let code = self.run(args).await;
        assert_eq!(code, exit.code(), "nimbus {}", args.join(" "));
    }
}

const OK: Exit = Exit::Success;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_and_activations() {
    let s = Server::start().await;
    let hello = s.name("hello");
    let failing = s.name("failing");
    let seq = s.name("seq");
    let code = s.file(
        "hello.js",
        "function main(p) { console.log('hi ' + (p.name || 'x')); return {greeting: 'Hello ' + (p.name || 'World')}; }\n",
    );
    let bad = s.file("bad.js", "function main() { return {error: 'boom'}; }\n");

    s.expect(&["namespace", "list"], OK).await;
    s.expect(&["action", "create", &hello, &code], OK).await;
    s.expect(&["action", "create", &hello, &code], Exit::Conflict)
        .await;
    s.expect(
        &[
            "action", "update", &hello, "-p", "name", "Nimbus", "--memory", "128",
        ],
        OK,
    )
    .await;
    s.expect(&["action", "get", &hello], OK).await;
    s.expect(&["instances"], OK).await;
    s.expect(&["instances", &hello, "--json"], OK).await;
    s.expect(
        &[
            "action",
            "update",
            &hello,
            "--min-instances",
            "1",
            "--max-instances",
            "2",
        ],
        OK,
    )
    .await;
    s.expect(
        &[
            "action",
            "update",
            &hello,
            "--min-instances",
            "3",
            "--max-instances",
            "2",
        ],
        Exit::Failure,
    )
    .await;
    s.expect(&["action", "get", &hello, "--code", "--json"], OK)
        .await;
    s.expect(&["action", "list", "--limit", "5"], OK).await;
    s.expect(&["action", "invoke", &hello, "-b"], OK).await;
    s.expect(&["action", "invoke", &hello, "-r", "-p", "name", "you"], OK)
        .await;
    s.expect(&["action", "invoke", &hello], OK).await;

    s.expect(&["action", "create", &failing, &bad], OK).await;
    s.expect(&["action", "invoke", &failing, "-b"], Exit::ActionFailed)
        .await;
    s.expect(&["action", "invoke", &failing, "-r"], Exit::ActionFailed)
        .await;

    s.expect(
        &[
            "action",
            "create",
            &seq,
            "--sequence",
            &format!("{hello},{hello}"),
        ],
        OK,
    )
    .await;
    s.expect(&["action", "invoke", &seq, "-r"], OK).await;

    s.expect(&["activation", "list", "--limit", "5"], OK).await;
    s.expect(&["activation", "list", &hello], OK).await;
    s.expect(&["activation", "get", "--last"], OK).await;
    s.expect(&["activation", "logs", "--last", "--strip"], OK)
        .await;
    s.expect(&["activation", "result", "--last"], OK).await;
    s.expect(
        &["activation", "get", "0123456789abcdef0123456789abcdef"],
        Exit::NotFound,
    )
    .await;
    s.expect(
        &[
            "activation",
            "poll",
            &hello,
            "--exit",
            "2",
            "--since-seconds",
            "60",
        ],
        OK,
    )
    .await;

    s.expect(&["action", "delete", &seq], OK).await;
    s.expect(&["action", "delete", &failing], OK).await;
    s.expect(&["action", "delete", &hello], OK).await;
    s.expect(&["action", "get", &hello], Exit::NotFound).await;
    s.expect(&["action", "delete", &hello], Exit::NotFound)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_and_rules() {
    let s = Server::start().await;
    let action = s.name("ruled");
    let trigger = s.name("trig");
    let rule = s.name("rule");
    let code = s.file("echo.js", "function main(p) { return p; }\n");

    s.expect(&["action", "create", &action, &code], OK).await;
    s.expect(
        &["trigger", "create", &trigger, "-p", "from", "trigger"],
        OK,
    )
    .await;
    s.expect(&["trigger", "create", &trigger], Exit::Conflict)
        .await;
    s.expect(
        &["trigger", "update", &trigger, "-a", "description", "test"],
        OK,
    )
    .await;
    // No rule yet: 204, still success.
    s.expect(&["trigger", "fire", &trigger], OK).await;
    s.expect(&["rule", "create", &rule, &trigger, &action], OK)
        .await;
    s.expect(&["rule", "get", &rule], OK).await;
    s.expect(&["rule", "list"], OK).await;
    s.expect(&["trigger", "get", &trigger], OK).await;
    s.expect(&["trigger", "list"], OK).await;
    s.expect(&["trigger", "fire", &trigger, "-p", "x", "1"], OK)
        .await;
    s.expect(&["rule", "disable", &rule], OK).await;
    s.expect(&["trigger", "fire", &trigger], OK).await;
    s.expect(&["rule", "enable", &rule], OK).await;
    s.expect(&["rule", "delete", &rule], OK).await;
    s.expect(&["rule", "get", &rule], Exit::NotFound).await;
    s.expect(&["trigger", "delete", &trigger], OK).await;
    s.expect(&["trigger", "fire", &trigger], Exit::NotFound)
        .await;
    s.expect(&["action", "delete", &action], OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_and_namespace() {
    let s = Server::start().await;
    let package = s.name("pkg");
    let binding = s.name("bound");
    let inner = format!("{package}/inner");
    let code = s.file("inner.js", "function main(p) { return {p: p}; }\n");

    s.expect(
        &[
            "package", "create", &package, "-p", "color", "red", "--shared", "no",
        ],
        OK,
    )
    .await;
    s.expect(&["package", "update", &package, "--shared", "yes"], OK)
        .await;
    s.expect(&["action", "create", &inner, &code], OK).await;
    s.expect(&["action", "list", &package], OK).await;
    s.expect(&["package", "get", &package], OK).await;
    s.expect(
        &["package", "bind", &package, &binding, "-p", "color", "blue"],
        OK,
    )
    .await;
    s.expect(&["action", "invoke", &format!("{binding}/inner"), "-r"], OK)
        .await;
    s.expect(&["package", "list"], OK).await;
    s.expect(&["namespace", "get"], OK).await;
    s.expect(&["package", "delete", &binding], OK).await;
    s.expect(&["package", "delete", &package], Exit::Conflict)
        .await;
    s.expect(&["package", "delete", &package, "--force"], OK)
        .await;
    s.expect(&["package", "get", &package], Exit::NotFound)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_is_an_auth_error() {
    let s = Server::start().await;
    let uuid = s.auth.split(':').next().unwrap_or("x").to_string();
    let wrong = format!("{uuid}:{}", "0".repeat(64));
    let config = s.config();
    let code = nimbus(&[
        "action",
        "list",
        "--apihost",
        &s.apihost,
        "--auth",
        &wrong,
        "--config",
        &config,
    ])
    .await;
    assert_eq!(code, Exit::Unauthorized.code());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nimbus").join("config.json");
    let config_str = config.to_string_lossy().into_owned();
    let code = nimbus(&[
        "property",
        "set",
        "--apihost",
        "127.0.0.1:1",
        "--auth",
        "u:k",
        "--config",
        &config_str,
    ])
    .await;
    assert_eq!(code, 0);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(saved["apihost"], "http://127.0.0.1:1");
    assert_eq!(saved["auth"], "u:k");
    assert_eq!(
        nimbus(&["property", "get", "--config", &config_str]).await,
        0
    );
    assert_eq!(
        nimbus(&["property", "unset", "auth", "--config", &config_str]).await,
        0
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert!(saved.get("auth").is_none());
    assert_eq!(
        nimbus(&["property", "set", "--config", &config_str]).await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir
        .path()
        .join("config.json")
        .to_string_lossy()
        .into_owned();
    // Nothing listens on port 1: connection refused → 8.
    let code = nimbus(&[
        "action",
        "list",
        "--apihost",
        "127.0.0.1:1",
        "--auth",
        "u:k",
        "--config",
        &config,
    ])
    .await;
    assert_eq!(code, Exit::ServerError.code());
    // https is refused by this build → 1.
    let code = nimbus(&[
        "action",
        "list",
        "--apihost",
        "https://127.0.0.1:1",
        "--auth",
        "u:k",
        "--config",
        &config,
    ])
    .await;
    assert_eq!(code, Exit::Failure.code());
    // A zip without --kind → 1 before any request.
    let zip = dir.path().join("a.zip");
    std::fs::write(&zip, b"PK\x03\x04").unwrap();
    let zip = zip.to_string_lossy().into_owned();
    let code = nimbus(&[
        "action",
        "create",
        "a",
        &zip,
        "--apihost",
        "127.0.0.1:1",
        "--auth",
        "u:k",
        "--config",
        &config,
    ])
    .await;
    assert_eq!(code, Exit::Failure.code());
    // No key anywhere → 1 (only checkable when the environment does not provide one).
    if std::env::var_os("NIMBUS_AUTH").is_none() {
        let code = nimbus(&[
            "action",
            "list",
            "--apihost",
            "127.0.0.1:1",
            "--config",
            &config,
        ])
        .await;
        assert_eq!(code, Exit::Failure.code());
    }
    assert!(
        !Path::new(&config).exists(),
        "commands other than property must not write the config"
    );
}
