//! `nimbus rule ...`

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::{Ctx, NameArg, Paging};
use crate::error::CliResult;
use crate::exit::Exit;
use crate::names::{EntityName, qualify};
use crate::output;

#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Create a rule linking TRIGGER to ACTION (active at once)
    Create(RulePutArgs),
    /// Change a rule's trigger or action
    Update(RulePutArgs),
    /// Activate a rule
    Enable(NameArg),
    /// Deactivate a rule
    Disable(NameArg),
    /// Show a rule
    Get(NameArg),
    /// List rules
    List(ListArgs),
    /// Delete a rule (disabling it first)
    Delete(NameArg),
}

#[derive(Debug, Clone, Args)]
pub struct RulePutArgs {
    /// Rule name
    pub name: String,
    /// Trigger name (NAME or /NAMESPACE/NAME)
    pub trigger: String,
    /// Action name (NAME, PACKAGE/NAME or /NAMESPACE/[PACKAGE/]NAME)
    pub action: String,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub paging: Paging,
}

pub async fn run(ctx: &Ctx, cmd: RuleCommand) -> CliResult<()> {
    match cmd {
        RuleCommand::Create(args) => put(ctx, &args, false).await,
        RuleCommand::Update(args) => put(ctx, &args, true).await,
        RuleCommand::Enable(args) => set_status(ctx, &args.name, true).await,
        RuleCommand::Disable(args) => set_status(ctx, &args.name, false).await,
        RuleCommand::Get(args) => get(ctx, &args.name).await,
        RuleCommand::List(args) => list(ctx, &args).await,
        RuleCommand::Delete(args) => delete(ctx, &args.name).await,
    }
}

/// The rule PUT body with fully qualified trigger and action names.
pub fn build_rule_body(trigger: &str, action: &str, namespace: &str) -> CliResult<Value> {
    let trigger = EntityName::parse_unpackaged(trigger, namespace, "trigger")?.qualified();
    let action = qualify(action, namespace)?;
    Ok(json!({"trigger": trigger, "action": action}))
}

async fn put(ctx: &Ctx, args: &RulePutArgs, overwrite: bool) -> CliResult<()> {
    let name = ctx.entity_name(&args.name, "rule")?;
    let body = build_rule_body(&args.trigger, &args.action, &ctx.namespace)?;
    let reply = ctx
        .put_entity("rule", "rules", &name, &body, overwrite)
        .await?;
    let verb = if overwrite { "updated" } else { "created" };
    ctx.done(&reply, &format!("ok: {verb} rule {}", name.qualified()));
    Ok(())
}

async fn post_status(ctx: &Ctx, name: &EntityName, active: bool) -> CliResult<Value> {
    let status = if active { "active" } else { "inactive" };
    let reply = ctx
        .client
        .call(
            Method::POST,
            &name.segments("rules"),
            &[],
            Some(&json!({"status": status})),
        )
        .await
        .map_err(|e| e.context(&format!("rule {}", name.qualified())))?;
    Ok(reply.body)
}

async fn set_status(ctx: &Ctx, raw: &str, active: bool) -> CliResult<()> {
    let name = ctx.entity_name(raw, "rule")?;
    let body = post_status(ctx, &name, active).await?;
    let verb = if active { "enabled" } else { "disabled" };
    ctx.done(&body, &format!("ok: {verb} rule {}", name.qualified()));
    Ok(())
}

/// `/path/name` of a rule's `{path, name}` reference.
fn reference(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(v) => format!("/{}/{}", output::text(v, "path"), output::text(v, "name")),
        None => String::new(),
    }
}

async fn get(ctx: &Ctx, raw: &str) -> CliResult<()> {
    let name = ctx.entity_name(raw, "rule")?;
    let rule = ctx
        .client
        .get(&name.segments("rules"), &[])
        .await
        .map_err(|e| e.context(&format!("rule {}", name.qualified())))?;
    if ctx.json {
        output::json(&rule);
        return Ok(());
    }
    output::line(&format!("ok: got rule {}", name.qualified()));
    output::line(&output::fields(vec![
        ("name", output::entity_path(&rule)),
        ("status", output::text(&rule, "status")),
        ("trigger", reference(rule.get("trigger"))),
        ("action", reference(rule.get("action"))),
        ("version", output::text(&rule, "version")),
        (
            "annotations",
            output::key_values_text(rule.get("annotations")),
        ),
    ]));
    Ok(())
}

async fn list(ctx: &Ctx, args: &ListArgs) -> CliResult<()> {
    let segments = ["namespaces", ctx.namespace.as_str(), "rules"];
    let rules = ctx.client.get(&segments, &args.paging.query()).await?;
    if ctx.json {
        output::json(&rules);
        return Ok(());
    }
    let rows = rules
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|r| {
                    vec![
                        output::entity_path(r),
                        output::text(r, "status"),
                        reference(r.get("trigger")),
                        reference(r.get("action")),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    output::line(&output::table(
        &["RULE", "STATUS", "TRIGGER", "ACTION"],
        rows,
    ));
    Ok(())
}

async fn delete(ctx: &Ctx, raw: &str) -> CliResult<()> {
    let name = ctx.entity_name(raw, "rule")?;
    // Like wsk: disable first. A rule whose trigger is gone cannot be disabled (404); the delete
    // below still works then, and reports a missing rule itself.
    if let Err(e) = post_status(ctx, &name, false).await
        && e.exit == Exit::ServerError
    {
        return Err(e);
    }
    let reply = ctx
        .client
        .call(Method::DELETE, &name.segments("rules"), &[], None)
        .await
        .map_err(|e| e.context(&format!("rule {}", name.qualified())))?;
    ctx.done(
        &reply.body,
        &format!("ok: deleted rule {}", name.qualified()),
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rule_body_is_qualified() {
        assert_eq!(
            build_rule_body("t", "a", "_").unwrap(),
            json!({"trigger": "/_/t", "action": "/_/a"})
        );
        assert_eq!(
            build_rule_body("/ns/t", "/whisk.system/utils/echo", "_").unwrap(),
            json!({"trigger": "/ns/t", "action": "/whisk.system/utils/echo"})
        );
        assert!(build_rule_body("p/t", "a", "_").is_err());
    }

    #[test]
    fn references() {
        assert_eq!(
            reference(Some(&json!({"path": "guest", "name": "t"}))),
            "/guest/t"
        );
        assert_eq!(reference(Some(&json!("/guest/t"))), "/guest/t");
        assert_eq!(reference(None), "");
    }
}
