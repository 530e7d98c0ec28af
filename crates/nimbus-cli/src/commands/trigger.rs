//! `nimbus trigger ...`, including the feed lifecycle the client drives.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::{Ctx, NameArg, Paging};
use crate::error::{CliError, CliResult};
use crate::exit::Exit;
use crate::names::EntityName;
use crate::output;
use crate::params::{AnnotationArgs, KeyValues, ParamArgs};

#[derive(Debug, Subcommand)]
pub enum TriggerCommand {
    /// Create a trigger (with --feed: also register it with the feed action)
    Create(TriggerPutArgs),
    /// Update a trigger's parameters and annotations
    Update(TriggerPutArgs),
    /// Show a trigger
    Get(NameArg),
    /// List triggers
    List(ListArgs),
    /// Delete a trigger (unregistering it from its feed first)
    Delete(NameArg),
    /// Fire a trigger
    Fire(FireArgs),
}

#[derive(Debug, Clone, Args)]
pub struct TriggerPutArgs {
    /// Trigger name
    pub name: String,
    #[command(flatten)]
    pub params: ParamArgs,
    #[command(flatten)]
    pub annotations: AnnotationArgs,
    /// Feed action to register the trigger with, e.g. /whisk.system/alarms/alarm (create only);
    /// the parameters go to the feed
    #[arg(short = 'f', long, value_name = "ACTION")]
    pub feed: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub paging: Paging,
}

#[derive(Debug, Clone, Args)]
pub struct FireArgs {
    /// Trigger name
    pub name: String,
    #[command(flatten)]
    pub params: ParamArgs,
}

pub async fn run(ctx: &Ctx, cmd: TriggerCommand) -> CliResult<()> {
    match cmd {
        TriggerCommand::Create(args) => put(ctx, &args, false).await,
        TriggerCommand::Update(args) => put(ctx, &args, true).await,
        TriggerCommand::Get(args) => get(ctx, &args.name).await,
        TriggerCommand::List(args) => list(ctx, &args).await,
        TriggerCommand::Delete(args) => delete(ctx, &args.name).await,
        TriggerCommand::Fire(args) => fire(ctx, &args).await,
    }
}

/// The trigger PUT body: the feed annotation (if any) is added to the given annotations; with a
/// feed the parameters go to the feed action, not into the trigger.
pub fn build_trigger_body(
    params: &KeyValues,
    annotations: &KeyValues,
    feed: Option<&str>,
) -> Value {
    let mut body = Map::new();
    let mut annotations = annotations.clone();
    if let Some(feed) = feed {
        annotations.set("feed", json!(feed));
    } else if !params.is_empty() {
        body.insert("parameters".into(), params.to_key_value_array());
    }
    if !annotations.is_empty() {
        body.insert("annotations".into(), annotations.to_key_value_array());
    }
    Value::Object(body)
}

/// The feed action's payload for a lifecycle event.
pub fn feed_payload(event: &str, trigger: &str, auth: &str, params: &KeyValues) -> Value {
    let mut payload = params.clone();
    payload.set("lifecycleEvent", json!(event));
    payload.set("triggerName", json!(trigger));
    payload.set("authKey", json!(auth));
    payload.to_object()
}

/// Invokes the feed action blocking; anything but a successful activation is an error.
async fn invoke_feed(
    ctx: &Ctx,
    feed: &EntityName,
    event: &str,
    trigger: &str,
    params: &KeyValues,
) -> CliResult<()> {
    let payload = feed_payload(event, trigger, &ctx.auth, params);
    let query = vec![("blocking", "true".to_string())];
    let reply = ctx
        .client
        .request(
            Method::POST,
            &feed.segments("actions"),
            &query,
            Some(&payload),
        )
        .await?;
    let feed_name = feed.qualified();
    match reply.status {
        200..=201 => Ok(()),
        202 => Err(CliError::new(
            Exit::NotFinished,
            format!("feed {feed_name} did not finish the {event} request in time (HTTP 202)"),
        )),
        502 => Err(CliError::new(
            Exit::ActionFailed,
            format!(
                "feed {feed_name} failed the {event} request ({}) (HTTP 502)",
                super::action::failure_summary(&reply.body)
            ),
        )),
        _ => reply.into_result().map(|_| ()).map_err(|e| {
            CliError::new(
                e.exit,
                format!("feed {feed_name}, {event} request: {}", e.message),
            )
        }),
    }
}

async fn put(ctx: &Ctx, args: &TriggerPutArgs, overwrite: bool) -> CliResult<()> {
    let name = ctx.entity_name(&args.name, "trigger")?;
    let feed = match &args.feed {
        Some(_) if overwrite => {
            return Err(CliError::usage(
                "--feed can only be given to `trigger create`; delete and re-create the trigger to change its feed",
            ));
        }
        Some(feed) => Some(ctx.action_name(feed)?),
        None => None,
    };
    let params = args.params.collect()?;
    let annotations = args.annotations.collect()?;
    let feed_text = feed.as_ref().map(EntityName::qualified);
    let body = build_trigger_body(&params, &annotations, feed_text.as_deref());
    let segments = name.segments("triggers");
    let reply = ctx
        .put_entity("trigger", "triggers", &name, &body, overwrite)
        .await?;
    if let Some(feed) = &feed {
        let own = ctx.own_namespace().await;
        let trigger = name.clone().with_namespace_resolved(&own).qualified();
        if let Err(err) = invoke_feed(ctx, feed, "CREATE", &trigger, &params).await {
            let cleanup = ctx.client.call(Method::DELETE, &segments, &[], None).await;
            let note = match cleanup {
                Ok(_) => format!("trigger {} was deleted again", name.qualified()),
                Err(e) => format!(
                    "deleting trigger {} again failed too: {}",
                    name.qualified(),
                    e.message
                ),
            };
            return Err(CliError::new(err.exit, format!("{}; {note}", err.message)));
        }
    }
    let verb = if overwrite { "updated" } else { "created" };
    ctx.done(&reply, &format!("ok: {verb} trigger {}", name.qualified()));
    Ok(())
}

/// The human summary of a trigger.
pub fn describe_trigger(trigger: &Value) -> String {
    let mut rows = vec![
        ("name", output::entity_path(trigger)),
        ("version", output::text(trigger, "version")),
        (
            "parameters",
            output::key_values_text(trigger.get("parameters")),
        ),
        (
            "annotations",
            output::key_values_text(trigger.get("annotations")),
        ),
    ];
    if let Some(rules) = trigger.get("rules").and_then(Value::as_object) {
        let text = rules
            .iter()
            .map(|(rule, info)| {
                let action = info
                    .get("action")
                    .map(|a| format!("/{}/{}", output::text(a, "path"), output::text(a, "name")))
                    .unwrap_or_default();
                format!("{rule} -> {action} ({})", output::text(info, "status"))
            })
            .collect::<Vec<_>>()
            .join(", ");
        rows.push(("rules", text));
    }
    output::fields(rows)
}

async fn get(ctx: &Ctx, raw: &str) -> CliResult<()> {
    let name = ctx.entity_name(raw, "trigger")?;
    let trigger = ctx
        .client
        .get(&name.segments("triggers"), &[])
        .await
        .map_err(|e| e.context(&format!("trigger {}", name.qualified())))?;
    if ctx.json {
        output::json(&trigger);
    } else {
        output::line(&format!("ok: got trigger {}", name.qualified()));
        output::line(&describe_trigger(&trigger));
    }
    Ok(())
}

async fn list(ctx: &Ctx, args: &ListArgs) -> CliResult<()> {
    let segments = ["namespaces", ctx.namespace.as_str(), "triggers"];
    let triggers = ctx.client.get(&segments, &args.paging.query()).await?;
    if ctx.json {
        output::json(&triggers);
        return Ok(());
    }
    let rows = triggers
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|t| {
                    vec![
                        output::entity_path(t),
                        output::text(t, "version"),
                        output::annotation(t, "feed")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                        t.get("updated")
                            .and_then(Value::as_i64)
                            .map(output::format_time)
                            .unwrap_or_default(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    output::line(&output::table(
        &["TRIGGER", "VERSION", "FEED", "UPDATED (UTC)"],
        rows,
    ));
    Ok(())
}

async fn delete(ctx: &Ctx, raw: &str) -> CliResult<()> {
    let name = ctx.entity_name(raw, "trigger")?;
    let segments = name.segments("triggers");
    let trigger = ctx
        .client
        .get(&segments, &[])
        .await
        .map_err(|e| e.context(&format!("trigger {}", name.qualified())))?;
    if let Some(feed) = output::annotation(&trigger, "feed").and_then(Value::as_str) {
        let own = ctx.own_namespace().await;
        let qualified = name.clone().with_namespace_resolved(&own).qualified();
        let feed_result = match ctx.action_name(feed) {
            Ok(feed) => invoke_feed(ctx, &feed, "DELETE", &qualified, &KeyValues::new()).await,
            Err(e) => Err(e),
        };
        if let Err(e) = feed_result {
            output::warn(&format!(
                "warning: could not unregister the trigger from its feed: {}",
                e.message
            ));
        }
    }
    let reply = ctx
        .client
        .call(Method::DELETE, &segments, &[], None)
        .await
        .map_err(|e| e.context(&format!("trigger {}", name.qualified())))?;
    ctx.done(
        &reply.body,
        &format!("ok: deleted trigger {}", name.qualified()),
    );
    Ok(())
}

async fn fire(ctx: &Ctx, args: &FireArgs) -> CliResult<()> {
    let name = ctx.entity_name(&args.name, "trigger")?;
    let payload = args.params.collect()?.to_object();
    let reply = ctx
        .client
        .call(
            Method::POST,
            &name.segments("triggers"),
            &[],
            Some(&payload),
        )
        .await
        .map_err(|e| e.context(&format!("trigger {}", name.qualified())))?;
    if reply.status == 204 {
        if ctx.json {
            output::json(&json!({}));
        } else {
            output::line(&format!(
                "ok: fired trigger {}, but no active rule matched it; nothing ran",
                name.qualified()
            ));
        }
        return Ok(());
    }
    let id = reply.activation_id().unwrap_or_default();
    ctx.done(
        &reply.body,
        &format!("ok: fired trigger {} with id {id}", name.qualified()),
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::params::pairs;

    fn kv(items: &[&str]) -> KeyValues {
        pairs(
            &items.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "parameter",
        )
        .unwrap()
    }

    #[test]
    fn plain_trigger_body() {
        let body = build_trigger_body(&kv(&["a", "1"]), &kv(&["d", "x"]), None);
        assert_eq!(
            body,
            json!({"parameters": [{"key": "a", "value": 1}],
                   "annotations": [{"key": "d", "value": "x"}]})
        );
        assert_eq!(build_trigger_body(&kv(&[]), &kv(&[]), None), json!({}));
    }

    #[test]
    fn feed_trigger_body_and_payload() {
        let body = build_trigger_body(
            &kv(&["cron", "* * * * *"]),
            &kv(&[]),
            Some("/whisk.system/alarms/alarm"),
        );
        assert_eq!(
            body,
            json!({"annotations": [{"key": "feed", "value": "/whisk.system/alarms/alarm"}]})
        );
        let payload = feed_payload("CREATE", "/guest/t", "u:k", &kv(&["cron", "* * * * *"]));
        assert_eq!(
            payload,
            json!({"cron": "* * * * *", "lifecycleEvent": "CREATE", "triggerName": "/guest/t", "authKey": "u:k"})
        );
    }

    #[test]
    fn trigger_summary_lists_rules() {
        let text = describe_trigger(
            &json!({"namespace": "guest", "name": "t", "version": "0.0.1",
            "rules": {"guest/r": {"action": {"path": "guest", "name": "a"}, "status": "active"}}}),
        );
        assert!(text.contains("guest/r -> /guest/a (active)"));
    }
}
