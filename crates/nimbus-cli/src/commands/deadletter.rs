//! `nimbus deadletter ...`: the namespace's undelivered events.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value;

use super::{Ctx, Paging};
use crate::error::CliResult;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum DeadletterCommand {
    /// List dead letters, newest first
    List(ListArgs),
    /// Show one dead letter with its event
    Get(IdArg),
    /// Run a dead letter's rule (or trigger) again with its original event, and remove it
    Redrive(IdArg),
    /// Delete one dead letter, or all with --all
    Purge(PurgeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct IdArg {
    /// Dead-letter id
    pub id: String,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub paging: Paging,
    /// Print only the number of dead letters
    #[arg(long)]
    pub count: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PurgeArgs {
    /// Dead-letter id
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub id: Option<String>,
    /// Delete every dead letter of the namespace
    #[arg(long)]
    pub all: bool,
}

pub async fn run(ctx: &Ctx, cmd: DeadletterCommand) -> CliResult<()> {
    let ns = ctx.namespace.clone();
    let base = ["namespaces", ns.as_str(), "deadletters"];
    match cmd {
        DeadletterCommand::List(args) => {
            let mut query = args.paging.query();
            if args.count {
                query.push(("count", "true".into()));
            }
            let list = ctx.client.get(&base, &query).await?;
            if ctx.json {
                output::json(&list);
                return Ok(());
            }
            if args.count {
                output::line(&output::text(&list, "deadletters"));
                return Ok(());
            }
            let rows = list
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .map(|d| {
                            vec![
                                output::text(d, "id"),
                                output::format_time(
                                    d.get("createdAt").and_then(Value::as_i64).unwrap_or(0),
                                ),
                                output::text(d, "source"),
                                output::text(d, "attempts"),
                                truncate(&output::text(d, "reason"), 60),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            output::line(&output::table(
                &["ID", "CREATED", "SOURCE", "ATTEMPTS", "REASON"],
                rows,
            ));
            Ok(())
        }
        DeadletterCommand::Get(args) => {
            let dl = ctx
                .client
                .get(
                    &["namespaces", ns.as_str(), "deadletters", args.id.as_str()],
                    &[],
                )
                .await
                .map_err(|e| e.context(&format!("dead letter {}", args.id)))?;
            if ctx.json {
                output::json(&dl);
            } else {
                output::line(&format!("ok: got dead letter {}", args.id));
                output::line(&output::pretty(&dl));
            }
            Ok(())
        }
        DeadletterCommand::Redrive(args) => {
            let reply = ctx
                .client
                .call(
                    Method::POST,
                    &[
                        "namespaces",
                        ns.as_str(),
                        "deadletters",
                        args.id.as_str(),
                        "redrive",
                    ],
                    &[],
                    None,
                )
                .await
                .map_err(|e| e.context(&format!("dead letter {}", args.id)))?;
            let id = reply
                .body
                .get("activationId")
                .or_else(|| reply.body.get("triggerActivationId"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            ctx.done(
                &reply.body,
                &format!("ok: redrove dead letter {} as activation {id}", args.id),
            );
            Ok(())
        }
        DeadletterCommand::Purge(args) => {
            let reply = match &args.id {
                Some(id) if !args.all => ctx
                    .client
                    .call(
                        Method::DELETE,
                        &["namespaces", ns.as_str(), "deadletters", id.as_str()],
                        &[],
                        None,
                    )
                    .await
                    .map_err(|e| e.context(&format!("dead letter {id}")))?,
                _ => ctx.client.call(Method::DELETE, &base, &[], None).await?,
            };
            ctx.done(
                &reply.body,
                &format!(
                    "ok: purged {} dead letter(s)",
                    output::text(&reply.body, "purged")
                ),
            );
            Ok(())
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}
