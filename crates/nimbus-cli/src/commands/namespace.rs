//! `nimbus namespace ...`

use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use super::{Ctx, action, package};
use crate::error::CliResult;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum NamespaceCommand {
    /// List the namespaces the key may use
    List,
    /// List the actions, packages, triggers and rules of a namespace
    Get(GetArgs),
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// Namespace (default: the current one)
    pub namespace: Option<String>,
}

pub async fn run(ctx: &Ctx, cmd: NamespaceCommand) -> CliResult<()> {
    match cmd {
        NamespaceCommand::List => list(ctx).await,
        NamespaceCommand::Get(args) => get(ctx, &args).await,
    }
}

async fn list(ctx: &Ctx) -> CliResult<()> {
    let namespaces = ctx.client.get(&["namespaces"], &[]).await?;
    if ctx.json {
        output::json(&namespaces);
        return Ok(());
    }
    let rows = namespaces
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|n| vec![n.as_str().map_or_else(|| n.to_string(), str::to_string)])
                .collect()
        })
        .unwrap_or_default();
    output::line(&output::table(&["NAMESPACE"], rows));
    Ok(())
}

const COLLECTIONS: [&str; 4] = ["actions", "packages", "triggers", "rules"];

async fn get(ctx: &Ctx, args: &GetArgs) -> CliResult<()> {
    let namespace = args
        .namespace
        .as_deref()
        .map(|n| n.trim_matches('/'))
        .filter(|n| !n.is_empty())
        .unwrap_or(&ctx.namespace)
        .to_string();
    let query = vec![("limit", "0".to_string())];
    let paths = COLLECTIONS.map(|c| ["namespaces", namespace.as_str(), c]);
    let (actions, packages, triggers, rules) = tokio::try_join!(
        ctx.client.get(&paths[0], &query),
        ctx.client.get(&paths[1], &query),
        ctx.client.get(&paths[2], &query),
        ctx.client.get(&paths[3], &query),
    )?;
    if ctx.json {
        let mut all = Map::new();
        for (key, value) in COLLECTIONS.iter().zip([actions, packages, triggers, rules]) {
            all.insert((*key).to_string(), value);
        }
        output::json(&Value::Object(all));
        return Ok(());
    }
    output::line(&format!("Entities in namespace: {namespace}"));
    output::line(&format!("\n{}", package::package_table(&packages)));
    output::line(&format!("\n{}", action::action_table(&actions)));
    output::line(&format!("\n{}", names_table("TRIGGER", &triggers)));
    output::line(&format!("\n{}", names_table("RULE", &rules)));
    Ok(())
}

fn names_table(header: &str, list: &Value) -> String {
    let rows = list
        .as_array()
        .map(|items| items.iter().map(|e| vec![output::entity_path(e)]).collect())
        .unwrap_or_default();
    output::table(&[header], rows)
}
