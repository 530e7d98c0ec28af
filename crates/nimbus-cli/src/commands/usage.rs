//! `nimbus usage [--since TIME] [--upto TIME]`: the namespace's metered usage.

use clap::Args;

use super::Ctx;
use crate::error::{CliError, CliResult};
use crate::output;

#[derive(Debug, Clone, Args)]
pub struct UsageArgs {
    /// Only activations started at or after this time (epoch ms or RFC 3339)
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only activations started at or before this time (epoch ms or RFC 3339)
    #[arg(long, value_name = "TIME")]
    pub upto: Option<String>,
}

fn time(raw: &str, flag: &str) -> CliResult<String> {
    output::parse_time(raw)
        .map(|t| t.to_string())
        .map_err(|e| CliError::usage(format!("{flag}: {e}")))
}

pub async fn run(ctx: &Ctx, args: &UsageArgs) -> CliResult<()> {
    let mut query = Vec::new();
    if let Some(s) = &args.since {
        query.push(("since", time(s, "--since")?));
    }
    if let Some(u) = &args.upto {
        query.push(("upto", time(u, "--upto")?));
    }
    let reply = ctx
        .client
        .get(&["namespaces", ctx.namespace.as_str(), "usage"], &query)
        .await?;
    if ctx.json {
        output::json(&reply);
        return Ok(());
    }
    let gb = |v: &serde_json::Value| format!("{:.3}", v.as_f64().unwrap_or(0.0));
    let rows = reply["functions"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|f| {
                    vec![
                        output::text(f, "name"),
                        output::text(f, "kind"),
                        f["invocations"].to_string(),
                        f["errors"].to_string(),
                        format!("{} ms", f["durationMs"]),
                        gb(&f["gbSeconds"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    output::line(&output::table(
        &[
            "FUNCTION",
            "KIND",
            "INVOCATIONS",
            "ERRORS",
            "DURATION",
            "GB-S",
        ],
        rows,
    ));
    let days = reply["days"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|d| {
                    vec![
                        output::text(d, "day"),
                        d["invocations"].to_string(),
                        d["errors"].to_string(),
                        gb(&d["gbSeconds"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    output::line(&output::table(
        &["DAY (UTC)", "INVOCATIONS", "ERRORS", "GB-S"],
        days,
    ));
    let t = &reply["total"];
    output::line(&format!(
        "total: {} invocations, {} errors, {} GB-s ({} MB·ms)",
        t["invocations"],
        t["errors"],
        gb(&t["gbSeconds"]),
        t["mbMs"]
    ));
    Ok(())
}
