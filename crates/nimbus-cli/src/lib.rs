//! The Nimbus client CLI, embedded by the `nimbus` binary.
//!
//! The binary flattens [`GlobalOpts`] and [`ClientCommand`] into its own parser and calls [`run`],
//! which returns the process exit code (see [`Exit`] and `docs/cli.md`).

pub mod client;
pub mod code;
pub mod commands;
pub mod config;
pub mod error;
pub mod exit;
pub mod global;
pub mod names;
pub mod output;
pub mod params;

pub use commands::ClientCommand;
pub use config::{Settings, resolve_settings};
pub use error::CliError;
pub use exit::Exit;
pub use global::GlobalOpts;

/// Runs one client command and returns the process exit code. Errors are printed to stderr as
/// `error: ...`; a panic inside the command is caught and reported as exit 1.
pub async fn run(global: GlobalOpts, cmd: ClientCommand) -> i32 {
    let outcome = tokio::spawn(commands::dispatch(global, cmd)).await;
    match outcome {
        Ok(Ok(())) => Exit::Success.code(),
        Ok(Err(err)) => {
            output::warn(&format!("error: {err}"));
            err.exit.code()
        }
        Err(join_error) => {
            output::warn(&format!("error: internal failure: {join_error}"));
            Exit::Failure.code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    #[command(name = "nimbus")]
    struct Cli {
        #[command(flatten)]
        global: GlobalOpts,
        #[command(subcommand)]
        cmd: ClientCommand,
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "nimbus",
            "action",
            "invoke",
            "hello",
            "-p",
            "n",
            "-5",
            "--apihost",
            "h:1",
            "--json",
            "-r",
        ]);
        let Ok(cli) = cli else {
            panic!("parse failed");
        };
        assert_eq!(cli.global.apihost.as_deref(), Some("h:1"));
        assert!(cli.global.json);
        match cli.cmd {
            ClientCommand::Action(commands::action::ActionCommand::Invoke(args)) => {
                assert_eq!(args.params.param, ["n", "-5"]);
                assert!(args.result);
            }
            _ => panic!("wrong command"),
        }
    }
}
