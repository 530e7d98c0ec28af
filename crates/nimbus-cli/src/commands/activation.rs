//! `nimbus activation ...`

use std::collections::HashSet;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::Value;

use super::{Ctx, Paging};
use crate::error::{CliError, CliResult};
use crate::exit::Exit;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum ActivationCommand {
    /// List activations, newest first
    List(ListArgs),
    /// Show an activation record
    Get(IdArgs),
    /// Print an activation's log lines
    Logs(LogsArgs),
    /// Print an activation's result
    Result(IdArgs),
    /// Watch for new activations and print their logs as they arrive
    Poll(PollArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only activations of this action (NAME or PACKAGE/NAME)
    pub name: Option<String>,
    #[command(flatten)]
    pub paging: Paging,
    /// Only activations started at or after this time (epoch ms or RFC 3339)
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only activations started at or before this time (epoch ms or RFC 3339)
    #[arg(long, value_name = "TIME")]
    pub upto: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct IdArgs {
    /// Activation id (omit with --last)
    pub id: Option<String>,
    /// Use the most recent activation
    #[arg(long, conflicts_with = "id")]
    pub last: bool,
}

#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub id: IdArgs,
    /// Remove the timestamp and stream prefix of each line
    #[arg(long)]
    pub strip: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PollArgs {
    /// Only activations of this action (NAME or PACKAGE/NAME)
    pub name: Option<String>,
    /// Stop after this many seconds (default: run until interrupted)
    #[arg(long, value_name = "SECONDS")]
    pub exit: Option<u64>,
    /// Also show activations that started up to this many seconds before polling began
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub since_seconds: u64,
}

pub async fn run(ctx: &Ctx, cmd: ActivationCommand) -> CliResult<()> {
    match cmd {
        ActivationCommand::List(args) => list(ctx, &args).await,
        ActivationCommand::Get(args) => get(ctx, &args).await,
        ActivationCommand::Logs(args) => logs(ctx, &args).await,
        ActivationCommand::Result(args) => result(ctx, &args).await,
        ActivationCommand::Poll(args) => poll(ctx, &args).await,
    }
}

fn collection(ctx: &Ctx) -> [&str; 3] {
    ["namespaces", ctx.namespace.as_str(), "activations"]
}

/// The `name` filter for an action name argument: `[pkg/]name`.
fn name_filter(ctx: &Ctx, raw: &str) -> CliResult<String> {
    Ok(ctx.action_name(raw)?.relative())
}

fn time_option(raw: &str, flag: &str) -> CliResult<i64> {
    output::parse_time(raw).map_err(|e| CliError::usage(format!("{flag}: {e}")))
}

/// The activation list table.
pub fn activation_table(activations: &Value) -> String {
    let rows = activations
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|a| {
                    let name = output::annotation(a, "path")
                        .and_then(Value::as_str)
                        .map(|p| format!("/{p}"))
                        .unwrap_or_else(|| output::entity_path(a));
                    let kind = output::annotation(a, "kind")
                        .and_then(Value::as_str)
                        .unwrap_or("trigger")
                        .to_string();
                    let status_code = a
                        .get("statusCode")
                        .and_then(Value::as_i64)
                        .or_else(|| a.pointer("/response/statusCode").and_then(Value::as_i64));
                    let status = match status_code {
                        Some(_) => output::status_text(status_code).to_string(),
                        None => output::text(a.get("response").unwrap_or(&Value::Null), "status"),
                    };
                    let duration = a
                        .get("duration")
                        .and_then(Value::as_i64)
                        .map(|d| format!("{d}ms"))
                        .unwrap_or_default();
                    vec![
                        a.get("start")
                            .and_then(Value::as_i64)
                            .map(output::format_time)
                            .unwrap_or_default(),
                        output::text(a, "activationId"),
                        kind,
                        status,
                        name,
                        duration,
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    output::table(
        &[
            "START (UTC)",
            "ACTIVATION ID",
            "KIND",
            "STATUS",
            "NAME",
            "DURATION",
        ],
        rows,
    )
}

async fn list(ctx: &Ctx, args: &ListArgs) -> CliResult<()> {
    let mut query = args.paging.query();
    if let Some(name) = &args.name {
        query.push(("name", name_filter(ctx, name)?));
    }
    if let Some(since) = &args.since {
        query.push(("since", time_option(since, "--since")?.to_string()));
    }
    if let Some(upto) = &args.upto {
        query.push(("upto", time_option(upto, "--upto")?.to_string()));
    }
    let activations = ctx.client.get(&collection(ctx), &query).await?;
    if ctx.json {
        output::json(&activations);
    } else {
        output::line(&activation_table(&activations));
    }
    Ok(())
}

/// The given id, or with `--last` the newest activation's id.
async fn resolve_id(ctx: &Ctx, args: &IdArgs) -> CliResult<String> {
    if let Some(id) = &args.id {
        return Ok(id.trim().to_string());
    }
    if !args.last {
        return Err(CliError::usage("give an activation ID or --last"));
    }
    let query = vec![("limit", "1".to_string())];
    let list = ctx.client.get(&collection(ctx), &query).await?;
    list.as_array()
        .and_then(|items| items.first())
        .and_then(|a| a.get("activationId"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| CliError::new(Exit::NotFound, "there are no activations yet"))
}

async fn get(ctx: &Ctx, args: &IdArgs) -> CliResult<()> {
    let id = resolve_id(ctx, args).await?;
    let [a, b, c] = collection(ctx);
    let activation = ctx
        .client
        .get(&[a, b, c, id.as_str()], &[])
        .await
        .map_err(|e| e.context(&format!("activation {id}")))?;
    if !ctx.json {
        output::line(&format!("ok: got activation {id}"));
    }
    output::json(&activation);
    Ok(())
}

/// The log lines of a `{"logs": [...]}` body, stripped if asked.
pub fn log_lines(body: &Value, strip: bool) -> Vec<String> {
    body.get("logs")
        .and_then(Value::as_array)
        .map(|lines| {
            lines
                .iter()
                .map(|l| {
                    let text = match l {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    if strip {
                        output::strip_log_line(&text).to_string()
                    } else {
                        text
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn logs(ctx: &Ctx, args: &LogsArgs) -> CliResult<()> {
    let id = resolve_id(ctx, &args.id).await?;
    let [a, b, c] = collection(ctx);
    let body = ctx
        .client
        .get(&[a, b, c, id.as_str(), "logs"], &[])
        .await
        .map_err(|e| e.context(&format!("activation {id}")))?;
    if ctx.json {
        output::json(&body);
    } else {
        for line in log_lines(&body, args.strip) {
            output::line(&line);
        }
    }
    Ok(())
}

async fn result(ctx: &Ctx, args: &IdArgs) -> CliResult<()> {
    let id = resolve_id(ctx, args).await?;
    let [a, b, c] = collection(ctx);
    let body = ctx
        .client
        .get(&[a, b, c, id.as_str(), "result"], &[])
        .await
        .map_err(|e| e.context(&format!("activation {id}")))?;
    if ctx.json {
        output::json(&body);
    } else {
        output::json(body.get("result").unwrap_or(&body));
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

async fn poll(ctx: &Ctx, args: &PollArgs) -> CliResult<()> {
    let deadline = args.exit.map(|s| Instant::now() + Duration::from_secs(s));
    let name = match &args.name {
        Some(name) => Some(name_filter(ctx, name)?),
        None => None,
    };
    let since_seconds = i64::try_from(args.since_seconds).unwrap_or(i64::MAX / 2000);
    let mut since = now_ms().saturating_sub(since_seconds.saturating_mul(1000));
    let mut seen: HashSet<String> = HashSet::new();
    if !ctx.json {
        match args.exit {
            Some(s) => output::warn(&format!("Polling for activation logs for {s} seconds.")),
            None => output::warn("Polling for activation logs; press Ctrl-C to stop."),
        }
    }
    loop {
        let mut query = vec![("limit", "200".to_string()), ("since", since.to_string())];
        if let Some(name) = &name {
            query.push(("name", name.clone()));
        }
        let list = ctx.client.get(&collection(ctx), &query).await?;
        let mut fresh: Vec<&Value> = list
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|a| {
                        a.get("activationId")
                            .and_then(Value::as_str)
                            .is_some_and(|id| !seen.contains(id))
                    })
                    .collect()
            })
            .unwrap_or_default();
        fresh.reverse(); // oldest first
        for brief in fresh {
            let Some(id) = brief.get("activationId").and_then(Value::as_str) else {
                continue;
            };
            if let Some(start) = brief.get("start").and_then(Value::as_i64) {
                since = since.max(start);
            }
            seen.insert(id.to_string());
            let [a, b, c] = collection(ctx);
            let activation = ctx.client.get(&[a, b, c, id], &[]).await?;
            if ctx.json {
                output::line(&activation.to_string());
            } else {
                output::line(&format!(
                    "\nActivation: '{}' ({id})",
                    output::text(&activation, "name")
                ));
                let logs = activation.get("logs").cloned().unwrap_or(Value::Null);
                for line in log_lines(&serde_json::json!({"logs": logs}), false) {
                    output::line(&format!("  {line}"));
                }
            }
        }
        let pause = Duration::from_secs(1);
        match deadline {
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    return Ok(());
                }
                tokio::time::sleep(pause.min(deadline - now)).await;
            }
            None => tokio::time::sleep(pause).await,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_of_briefs() {
        let t = activation_table(&json!([{
            "namespace": "guest", "name": "hello", "activationId": "abc123", "start": 0,
            "duration": 12, "statusCode": 1,
            "annotations": [{"key": "path", "value": "guest/pkg/hello"}, {"key": "kind", "value": "nodejs:20"}]
        }]));
        assert!(t.contains("abc123"));
        assert!(t.contains("/guest/pkg/hello"));
        assert!(t.contains("application error"));
        assert!(t.contains("12ms"));
        assert!(t.contains("nodejs:20"));
    }

    #[test]
    fn logs_plain_and_stripped() {
        let body = json!({"logs": ["2024-01-01T00:00:00.000Z stdout: hi", "raw"]});
        assert_eq!(
            log_lines(&body, false),
            vec!["2024-01-01T00:00:00.000Z stdout: hi", "raw"]
        );
        assert_eq!(log_lines(&body, true), vec!["hi", "raw"]);
        assert!(log_lines(&json!({}), true).is_empty());
    }
}
