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
    #[command(flatten)]
    pub delivery: DeliveryArgs,
}

/// A rule's delivery settings (see docs/delivery.md); on update, each given one replaces the
/// stored one, and an empty value removes it.
#[derive(Debug, Clone, Default, Args)]
pub struct DeliveryArgs {
    /// Fire only when this CEL expression over the event is true, e.g.
    /// 'payload.temp > 50 && topic.startsWith("sensors/")'
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<String>,
    /// Run events with the same value of this event field (dotted path) one at a time, in order
    #[arg(long, value_name = "PATH")]
    pub ordering_key: Option<String>,
    /// Attempts in all when the action fails, the first included (default 3; 1 = no retry)
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Give up retrying this long after the event (default 3600)
    #[arg(long, value_name = "SECONDS")]
    pub max_age: Option<u64>,
    /// Wait before the first retry, doubled each time (default 1000)
    #[arg(long, value_name = "MS")]
    pub initial_delay: Option<u64>,
    /// Longest wait between retries (default 60000)
    #[arg(long, value_name = "MS")]
    pub max_delay: Option<u64>,
    /// Factor between consecutive waits (default 2)
    #[arg(long, value_name = "FACTOR")]
    pub backoff_rate: Option<f64>,
}

impl DeliveryArgs {
    /// Adds the given settings to a rule PUT body.
    pub fn apply(&self, body: &mut Value) {
        let Some(obj) = body.as_object_mut() else {
            return;
        };
        if let Some(f) = &self.filter {
            obj.insert("filter".into(), json!(f));
        }
        if let Some(k) = &self.ordering_key {
            obj.insert("orderingKey".into(), json!(k));
        }
        let mut retry = serde_json::Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                retry.insert(k.into(), v);
            }
        };
        put("maxAttempts", self.max_attempts.map(|v| json!(v)));
        put("maxAgeSeconds", self.max_age.map(|v| json!(v)));
        put("initialDelayMs", self.initial_delay.map(|v| json!(v)));
        put("maxDelayMs", self.max_delay.map(|v| json!(v)));
        put("backoffRate", self.backoff_rate.map(|v| json!(v)));
        if !retry.is_empty() {
            obj.insert("retry".into(), Value::Object(retry));
        }
    }
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
    let mut body = build_rule_body(&args.trigger, &args.action, &ctx.namespace)?;
    args.delivery.apply(&mut body);
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
