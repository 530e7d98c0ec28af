//! `nimbus instances [ACTION]`

use clap::Args;

use super::Ctx;
use crate::error::CliResult;
use crate::output;

#[derive(Debug, Clone, Args)]
pub struct InstancesArgs {
    /// Only this action (`name` or `package/name`)
    pub action: Option<String>,
}

pub async fn run(ctx: &Ctx, args: &InstancesArgs) -> CliResult<()> {
    let query: Vec<(&str, String)> = args.action.iter().map(|a| ("name", a.clone())).collect();
    let reply = ctx
        .client
        .get(&["namespaces", ctx.namespace.as_str(), "instances"], &query)
        .await?;
    if ctx.json {
        output::json(&reply);
        return Ok(());
    }
    let rows = reply["instances"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|i| {
                    vec![
                        output::text(i, "action"),
                        output::text(i, "version"),
                        output::text(i, "state"),
                        format!("{} MB", output::text(i, "memory")),
                        i["since"]
                            .as_i64()
                            .map(output::format_time)
                            .unwrap_or_default(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    output::line(&output::table(
        &["ACTION", "VERSION", "STATE", "MEMORY", "SINCE (UTC)"],
        rows,
    ));
    let p = &reply["pool"];
    output::line(&format!(
        "node pool: {} starting, {} idle, {} busy, {} waiting; memory {}/{} MB; stem cells {}",
        p["starting"],
        p["idle"],
        p["busy"],
        p["waiting"],
        p["memoryUsedMB"],
        p["memoryBudgetMB"],
        p["stemCells"]
    ));
    Ok(())
}
