//! `nimbus action ...`

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::{Ctx, NameArg, Paging};
use crate::client::Reply;
use crate::code::{infer_kind, read_code};
use crate::error::{CliError, CliResult};
use crate::exit::Exit;
use crate::names::qualify;
use crate::output;
use crate::params::{AnnotationArgs, KeyValues, ParamArgs};

#[derive(Debug, Subcommand)]
pub enum ActionCommand {
    /// Create an action from a code file, or a sequence with --sequence
    Create(ActionPutArgs),
    /// Update an action (FILE optional: only the given fields change)
    Update(ActionPutArgs),
    /// Show an action (summary; --code adds the code; --json prints the full JSON)
    Get(GetArgs),
    /// List actions, or the actions of PACKAGE
    List(ListArgs),
    /// Delete an action
    Delete(NameArg),
    /// Invoke an action
    Invoke(InvokeArgs),
}

/// `--web` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WebMode {
    #[value(alias = "yes")]
    True,
    #[value(alias = "no")]
    False,
    Raw,
}

#[derive(Debug, Clone, Args)]
pub struct ActionPutArgs {
    /// Action name: NAME, PACKAGE/NAME or /NAMESPACE/[PACKAGE/]NAME
    pub name: String,
    /// Code file (.js, .py, .wasm, .zip with --kind, or an executable/script for the exec kind)
    pub file: Option<PathBuf>,
    /// Runtime kind, e.g. nodejs:default, python:default, exec, wasm:wasi, wasm:http (inferred from FILE if not given)
    #[arg(long)]
    pub kind: Option<String>,
    /// Name of the entry function
    #[arg(long)]
    pub main: Option<String>,
    #[command(flatten)]
    pub params: ParamArgs,
    #[command(flatten)]
    pub annotations: AnnotationArgs,
    /// Time limit in milliseconds
    #[arg(short = 't', long, value_name = "MS")]
    pub timeout: Option<u64>,
    /// Memory limit in MB
    #[arg(short = 'm', long, value_name = "MB")]
    pub memory: Option<u64>,
    /// Log size limit in MB
    #[arg(short = 'l', long, value_name = "MB")]
    pub logsize: Option<u64>,
    /// Activations one container may run at once
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u64>,
    /// Instances kept warm even when idle
    #[arg(long, value_name = "N")]
    pub min_instances: Option<u64>,
    /// Most instances of this action at once (further invocations wait)
    #[arg(long, value_name = "N")]
    pub max_instances: Option<u64>,
    /// Make it a web action (true), a raw web action (raw), or not (false)
    #[arg(long, value_enum, value_name = "true|false|raw")]
    pub web: Option<WebMode>,
    /// Make a sequence of these comma-separated actions (no FILE)
    #[arg(long, value_name = "A,B,C", conflicts_with_all = ["file", "kind", "main"])]
    pub sequence: Option<String>,
    /// Docker image actions (not supported by Nimbus)
    #[arg(long, value_name = "IMAGE", hide = true)]
    pub docker: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// Action name
    pub name: String,
    /// Include the code
    #[arg(long)]
    pub code: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// List the actions of this package
    pub package: Option<String>,
    #[command(flatten)]
    pub paging: Paging,
}

#[derive(Debug, Clone, Args)]
pub struct InvokeArgs {
    /// Action name
    pub name: String,
    #[command(flatten)]
    pub params: ParamArgs,
    /// Wait for the result
    #[arg(short = 'b', long)]
    pub blocking: bool,
    /// Print only the result (implies --blocking)
    #[arg(short = 'r', long)]
    pub result: bool,
    /// How long a blocking call waits, in milliseconds (server maximum 60000)
    #[arg(long, value_name = "MS")]
    pub timeout: Option<u64>,
}

pub async fn run(ctx: &Ctx, cmd: ActionCommand) -> CliResult<()> {
    match cmd {
        ActionCommand::Create(args) => put(ctx, &args, false).await,
        ActionCommand::Update(args) => put(ctx, &args, true).await,
        ActionCommand::Get(args) => get(ctx, &args).await,
        ActionCommand::List(args) => list(ctx, &args).await,
        ActionCommand::Delete(args) => delete(ctx, &args.name).await,
        ActionCommand::Invoke(args) => invoke(ctx, &args).await,
    }
}

/// The `exec` object for the arguments, if any.
fn build_exec(args: &ActionPutArgs, namespace: &str) -> CliResult<Option<Value>> {
    if let Some(sequence) = &args.sequence {
        let components = sequence
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| qualify(c, namespace))
            .collect::<CliResult<Vec<String>>>()?;
        if components.is_empty() {
            return Err(CliError::usage("--sequence needs at least one action name"));
        }
        return Ok(Some(json!({"kind": "sequence", "components": components})));
    }
    let Some(file) = &args.file else {
        if args.kind.is_some() || args.main.is_some() {
            return Err(CliError::usage("--kind and --main need a code FILE"));
        }
        return Ok(None);
    };
    let kind = match &args.kind {
        Some(kind) => kind.clone(),
        None => infer_kind(file)?,
    };
    let code = read_code(file)?;
    let mut exec = Map::new();
    exec.insert("kind".into(), Value::String(kind));
    exec.insert("code".into(), Value::String(code.code));
    if let Some(main) = &args.main {
        exec.insert("main".into(), Value::String(main.clone()));
    }
    Ok(Some(Value::Object(exec)))
}

/// The annotations the flags ask for (`--web` adds `web-export`, `final` and `raw-http`).
fn build_annotations(args: &ActionPutArgs) -> CliResult<KeyValues> {
    let mut annotations = args.annotations.collect()?;
    match args.web {
        Some(WebMode::True) => {
            annotations.set("web-export", json!(true));
            annotations.set("final", json!(true));
            annotations.set("raw-http", json!(false));
        }
        Some(WebMode::Raw) => {
            annotations.set("web-export", json!(true));
            annotations.set("final", json!(true));
            annotations.set("raw-http", json!(true));
        }
        Some(WebMode::False) => {
            annotations.set("web-export", json!(false));
            annotations.set("raw-http", json!(false));
        }
        None => {}
    }
    Ok(annotations)
}

/// The PUT body for create (`overwrite == false`) or update.
pub fn build_action_body(
    args: &ActionPutArgs,
    namespace: &str,
    overwrite: bool,
) -> CliResult<Value> {
    if args.docker.is_some() {
        return Err(CliError::usage(
            "--docker is not supported: Nimbus runs code kinds (nodejs, python, exec), not images",
        ));
    }
    let exec = build_exec(args, namespace)?;
    if exec.is_none() && !overwrite {
        return Err(CliError::usage(
            "action create needs a code FILE (or --sequence A,B,...)",
        ));
    }
    let mut body = Map::new();
    if let Some(exec) = exec {
        body.insert("exec".into(), exec);
    }
    if args.params.is_given() {
        body.insert(
            "parameters".into(),
            args.params.collect()?.to_key_value_array(),
        );
    }
    let annotations = build_annotations(args)?;
    if !annotations.is_empty() {
        body.insert("annotations".into(), annotations.to_key_value_array());
    }
    let mut limits = Map::new();
    for (key, value) in [
        ("timeout", args.timeout),
        ("memory", args.memory),
        ("logs", args.logsize),
        ("concurrency", args.concurrency),
        ("minInstances", args.min_instances),
        ("maxInstances", args.max_instances),
    ] {
        if let Some(value) = value {
            limits.insert(key.into(), json!(value));
        }
    }
    if !limits.is_empty() {
        body.insert("limits".into(), Value::Object(limits));
    }
    Ok(Value::Object(body))
}

async fn put(ctx: &Ctx, args: &ActionPutArgs, overwrite: bool) -> CliResult<()> {
    let name = ctx.action_name(&args.name)?;
    let body = build_action_body(args, &ctx.namespace, overwrite)?;
    let reply = ctx
        .put_entity("action", "actions", &name, &body, overwrite)
        .await?;
    let verb = if overwrite { "updated" } else { "created" };
    ctx.done(&reply, &format!("ok: {verb} action {}", name.qualified()));
    Ok(())
}

/// The human summary of an action.
pub fn describe_action(action: &Value, with_code: bool) -> String {
    let exec = action.get("exec").cloned().unwrap_or(Value::Null);
    let kind = output::text(&exec, "kind");
    let mut rows = vec![
        ("name", output::entity_path(action)),
        ("version", output::text(action, "version")),
        ("kind", kind.clone()),
    ];
    if kind == "sequence" {
        let components = exec
            .get("components")
            .and_then(Value::as_array)
            .map(|c| {
                c.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        rows.push(("components", components));
    }
    if exec.get("main").is_some() {
        rows.push(("main", output::text(&exec, "main")));
    }
    if exec.get("binary").is_some() {
        rows.push(("binary", output::text(&exec, "binary")));
    }
    if let Some(limits) = action.get("limits").and_then(Value::as_object) {
        let text = limits
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ");
        rows.push(("limits", text));
    }
    rows.push((
        "parameters",
        output::key_values_text(action.get("parameters")),
    ));
    rows.push((
        "annotations",
        output::key_values_text(action.get("annotations")),
    ));
    if let Some(updated) = action.get("updated").and_then(Value::as_i64) {
        rows.push(("updated", format!("{} UTC", output::format_time(updated))));
    }
    let mut text = output::fields(rows);
    if with_code && let Some(code) = exec.get("code").and_then(Value::as_str) {
        if exec.get("binary").and_then(Value::as_bool) == Some(true) {
            text.push_str(&format!(
                "\ncode: <binary, {} base64 characters>",
                code.len()
            ));
        } else {
            text.push_str("\ncode:\n");
            text.push_str(code);
        }
    }
    text
}

async fn get(ctx: &Ctx, args: &GetArgs) -> CliResult<()> {
    let name = ctx.action_name(&args.name)?;
    let with_code = args.code || ctx.json;
    let query = vec![("code", with_code.to_string())];
    let action = ctx
        .client
        .get(&name.segments("actions"), &query)
        .await
        .map_err(|e| e.context(&format!("action {}", name.qualified())))?;
    if ctx.json {
        output::json(&action);
    } else {
        output::line(&format!("ok: got action {}", name.qualified()));
        output::line(&describe_action(&action, args.code));
    }
    Ok(())
}

/// The list table of actions.
pub fn action_table(actions: &Value) -> String {
    let rows = actions
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|a| {
                    let kind = output::annotation(a, "exec")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .or_else(|| {
                            a.pointer("/exec/kind")
                                .and_then(Value::as_str)
                                .map(str::to_string)
                        })
                        .unwrap_or_default();
                    let web = match output::annotation(a, "web-export") {
                        Some(Value::Bool(true)) => "web",
                        _ => "",
                    };
                    vec![
                        output::entity_path(a),
                        kind,
                        output::text(a, "version"),
                        web.to_string(),
                        a.get("updated")
                            .and_then(Value::as_i64)
                            .map(output::format_time)
                            .unwrap_or_default(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    output::table(&["ACTION", "KIND", "VERSION", "WEB", "UPDATED (UTC)"], rows)
}

async fn list(ctx: &Ctx, args: &ListArgs) -> CliResult<()> {
    let actions = match &args.package {
        Some(package) => {
            let package = ctx.entity_name(package, "package")?;
            let segments = [
                "namespaces",
                package.namespace.as_str(),
                "actions",
                package.name.as_str(),
                "",
            ];
            ctx.client.get(&segments, &args.paging.query()).await?
        }
        None => {
            let segments = ["namespaces", ctx.namespace.as_str(), "actions"];
            ctx.client.get(&segments, &args.paging.query()).await?
        }
    };
    if ctx.json {
        output::json(&actions);
    } else {
        output::line(&action_table(&actions));
    }
    Ok(())
}

async fn delete(ctx: &Ctx, raw: &str) -> CliResult<()> {
    let name = ctx.action_name(raw)?;
    let reply = ctx
        .client
        .call(Method::DELETE, &name.segments("actions"), &[], None)
        .await
        .map_err(|e| e.context(&format!("action {}", name.qualified())))?;
    ctx.done(
        &reply.body,
        &format!("ok: deleted action {}", name.qualified()),
    );
    Ok(())
}

/// `"<status>: <error>"` for a failed activation (a full activation or a bare result).
pub fn failure_summary(body: &Value) -> String {
    let response = body.get("response");
    let status = response
        .and_then(|r| r.get("status"))
        .and_then(Value::as_str);
    let error = response
        .and_then(|r| r.pointer("/result/error"))
        .or_else(|| body.get("error"))
        .map(|e| match e {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
    match (status, error) {
        (Some(status), Some(error)) => format!("{status}: {error}"),
        (Some(status), None) => status.to_string(),
        (None, Some(error)) => error,
        (None, None) => "no details".to_string(),
    }
}

async fn invoke(ctx: &Ctx, args: &InvokeArgs) -> CliResult<()> {
    let name = ctx.action_name(&args.name)?;
    let blocking = args.blocking || args.result;
    let mut query = Vec::new();
    if blocking {
        query.push(("blocking", "true".to_string()));
    }
    if args.result {
        query.push(("result", "true".to_string()));
    }
    if let Some(timeout) = args.timeout {
        query.push(("timeout", timeout.to_string()));
    }
    let payload = args.params.collect()?.to_object();
    let reply = ctx
        .client
        .request(
            Method::POST,
            &name.segments("actions"),
            &query,
            Some(&payload),
        )
        .await?;
    print_invoke_reply(ctx, &name.qualified(), blocking, args.result, reply)
}

fn print_invoke_reply(
    ctx: &Ctx,
    qualified: &str,
    blocking: bool,
    result_only: bool,
    reply: Reply,
) -> CliResult<()> {
    let id = reply.activation_id().unwrap_or_default();
    let invoked = format!("ok: invoked {qualified} with id {id}");
    match reply.status {
        202 => {
            ctx.done(&reply.body, &invoked);
            if blocking {
                return Err(CliError::new(
                    Exit::NotFinished,
                    format!(
                        "activation {id} has not finished within the blocking wait; \
                         see it later with `nimbus activation get {id}` (HTTP 202)"
                    ),
                ));
            }
            Ok(())
        }
        200..=299 => {
            print_activation_body(ctx, &invoked, result_only, &reply.body);
            Ok(())
        }
        // 502: the action ran and failed (application or developer error); 500 with an
        // activation: a whisk internal error. Either way the activation (or result) is printed.
        502 | 500 if reply.status == 502 || reply.body.get("response").is_some() => {
            print_activation_body(ctx, &invoked, result_only, &reply.body);
            Err(CliError::new(
                Exit::from_http_status(reply.status),
                format!(
                    "action {qualified} failed ({}); activation id {id} (HTTP {})",
                    failure_summary(&reply.body),
                    reply.status
                ),
            ))
        }
        _ => reply
            .into_result()
            .map(|_| ())
            .map_err(|e| e.context(&format!("action {qualified}"))),
    }
}

fn print_activation_body(ctx: &Ctx, invoked: &str, result_only: bool, body: &Value) {
    if !ctx.json && !result_only {
        output::line(invoked);
    }
    output::json(body);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: ActionCommand,
    }

    fn put_args(argv: &[&str]) -> ActionPutArgs {
        let mut full = vec!["t"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().cmd {
            ActionCommand::Create(a) | ActionCommand::Update(a) => a,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn create_body_from_file_with_params_limits_and_web() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hello.js");
        std::fs::write(&file, "function main(p){return p}").unwrap();
        let file = file.to_string_lossy().into_owned();
        let args = put_args(&[
            "create",
            "hello",
            &file,
            "-p",
            "n",
            "5",
            "-p",
            "s",
            "hi",
            "--timeout",
            "3000",
            "--memory",
            "128",
            "--web",
            "raw",
            "-a",
            "description",
            "greets",
        ]);
        let body = build_action_body(&args, "_", false).unwrap();
        assert_eq!(body["exec"]["kind"], "nodejs:default");
        assert_eq!(body["exec"]["code"], "function main(p){return p}");
        assert_eq!(
            body["parameters"],
            json!([{"key": "n", "value": 5}, {"key": "s", "value": "hi"}])
        );
        assert_eq!(body["limits"], json!({"timeout": 3000, "memory": 128}));
        let annotations = &body["annotations"];
        assert_eq!(
            output::key_value(annotations, "web-export"),
            Some(&json!(true))
        );
        assert_eq!(output::key_value(annotations, "final"), Some(&json!(true)));
        assert_eq!(
            output::key_value(annotations, "raw-http"),
            Some(&json!(true))
        );
        assert_eq!(
            output::key_value(annotations, "description"),
            Some(&json!("greets"))
        );
    }

    #[test]
    fn sequence_body_qualifies_components() {
        let args = put_args(&["create", "seq", "--sequence", "a, pkg/b,/other/c"]);
        let body = build_action_body(&args, "_", false).unwrap();
        assert_eq!(
            body["exec"],
            json!({"kind": "sequence", "components": ["/_/a", "/_/pkg/b", "/other/c"]})
        );
    }

    #[test]
    fn create_needs_code_and_update_does_not() {
        let args = put_args(&["create", "a"]);
        assert!(build_action_body(&args, "_", false).is_err());
        let args = put_args(&["update", "a", "-p", "x", "1"]);
        let body = build_action_body(&args, "_", true).unwrap();
        assert!(body.get("exec").is_none());
        assert!(body.get("annotations").is_none());
        let args = put_args(&["update", "a", "--kind", "python:default"]);
        assert!(build_action_body(&args, "_", true).is_err());
        let args = put_args(&["create", "a", "--docker", "img"]);
        assert!(build_action_body(&args, "_", false).is_err());
    }

    #[test]
    fn zip_needs_kind() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.zip");
        std::fs::write(&file, b"PK\x03\x04").unwrap();
        let file = file.to_string_lossy().into_owned();
        assert!(build_action_body(&put_args(&["create", "a", &file]), "_", false).is_err());
        let body = build_action_body(
            &put_args(&["create", "a", &file, "--kind", "nodejs:20"]),
            "_",
            false,
        )
        .unwrap();
        assert_eq!(body["exec"]["code"], "UEsDBA==");
    }

    #[test]
    fn failure_summaries() {
        let activation = json!({"response": {"status": "application error", "success": false,
            "result": {"error": "boom"}}});
        assert_eq!(failure_summary(&activation), "application error: boom");
        assert_eq!(
            failure_summary(&json!({"error": {"code": 1}})),
            "{\"code\":1}"
        );
    }

    #[test]
    fn list_table_shows_kind_from_annotation() {
        let table = action_table(
            &json!([{"namespace": "guest", "name": "a", "version": "0.0.2",
            "annotations": [{"key": "exec", "value": "nodejs:20"}], "updated": 0}]),
        );
        assert!(table.contains("/guest/a"));
        assert!(table.contains("nodejs:20"));
        assert!(table.contains("0.0.2"));
    }
}
