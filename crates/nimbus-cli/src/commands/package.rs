//! `nimbus package ...`

use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::{Ctx, NameArg, Paging};
use crate::error::CliResult;
use crate::output;
use crate::params::{AnnotationArgs, KeyValues, ParamArgs};

#[derive(Debug, Subcommand)]
pub enum PackageCommand {
    /// Create a package
    Create(PackagePutArgs),
    /// Update a package
    Update(PackagePutArgs),
    /// Bind PACKAGE (/NAMESPACE/PACKAGE, e.g. /whisk.system/utils) under the name NAME
    Bind(BindArgs),
    /// Show a package and its actions
    Get(NameArg),
    /// List the packages of a namespace
    List(ListArgs),
    /// Delete a package (--force also deletes its actions)
    Delete(DeleteArgs),
}

/// `--shared` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shared {
    #[value(alias = "true")]
    Yes,
    #[value(alias = "false")]
    No,
}

#[derive(Debug, Clone, Args)]
pub struct PackagePutArgs {
    /// Package name
    pub name: String,
    #[command(flatten)]
    pub params: ParamArgs,
    #[command(flatten)]
    pub annotations: AnnotationArgs,
    /// Share the package with every namespace (publish)
    #[arg(long, value_enum, value_name = "yes|no")]
    pub shared: Option<Shared>,
}

#[derive(Debug, Clone, Args)]
pub struct BindArgs {
    /// The package to bind: /NAMESPACE/PACKAGE (or PACKAGE in the current namespace)
    pub package: String,
    /// Name of the new binding
    pub name: String,
    #[command(flatten)]
    pub params: ParamArgs,
    #[command(flatten)]
    pub annotations: AnnotationArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Namespace to list (default: the current one)
    pub namespace: Option<String>,
    #[command(flatten)]
    pub paging: Paging,
}

#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    /// Package name
    pub name: String,
    /// Delete the package's actions too
    #[arg(long)]
    pub force: bool,
}

pub async fn run(ctx: &Ctx, cmd: PackageCommand) -> CliResult<()> {
    match cmd {
        PackageCommand::Create(args) => put(ctx, &args, false).await,
        PackageCommand::Update(args) => put(ctx, &args, true).await,
        PackageCommand::Bind(args) => bind(ctx, &args).await,
        PackageCommand::Get(args) => get(ctx, &args.name).await,
        PackageCommand::List(args) => list(ctx, &args).await,
        PackageCommand::Delete(args) => delete(ctx, &args).await,
    }
}

/// The package PUT body.
pub fn build_package_body(
    params: Option<&KeyValues>,
    annotations: &KeyValues,
    shared: Option<Shared>,
    binding: Option<(&str, &str)>,
) -> Value {
    let mut body = Map::new();
    if let Some(params) = params {
        body.insert("parameters".into(), params.to_key_value_array());
    }
    if !annotations.is_empty() {
        body.insert("annotations".into(), annotations.to_key_value_array());
    }
    if let Some(shared) = shared {
        body.insert("publish".into(), json!(shared == Shared::Yes));
    }
    if let Some((namespace, name)) = binding {
        body.insert(
            "binding".into(),
            json!({"namespace": namespace, "name": name}),
        );
    }
    Value::Object(body)
}

async fn put(ctx: &Ctx, args: &PackagePutArgs, overwrite: bool) -> CliResult<()> {
    let name = ctx.entity_name(&args.name, "package")?;
    let params = if args.params.is_given() {
        Some(args.params.collect()?)
    } else {
        None
    };
    let body = build_package_body(
        params.as_ref(),
        &args.annotations.collect()?,
        args.shared,
        None,
    );
    let reply = ctx
        .put_entity("package", "packages", &name, &body, overwrite)
        .await?;
    let verb = if overwrite { "updated" } else { "created" };
    ctx.done(&reply, &format!("ok: {verb} package {}", name.qualified()));
    Ok(())
}

async fn bind(ctx: &Ctx, args: &BindArgs) -> CliResult<()> {
    let name = ctx.entity_name(&args.name, "binding")?;
    let bound = ctx.entity_name(&args.package, "package")?;
    let bound_namespace = if bound.namespace == "_" {
        ctx.own_namespace().await
    } else {
        bound.namespace.clone()
    };
    let params = if args.params.is_given() {
        Some(args.params.collect()?)
    } else {
        None
    };
    let body = build_package_body(
        params.as_ref(),
        &args.annotations.collect()?,
        None,
        Some((&bound_namespace, &bound.name)),
    );
    let reply = ctx
        .put_entity("package", "packages", &name, &body, false)
        .await?;
    ctx.done(
        &reply,
        &format!(
            "ok: created binding {} to /{bound_namespace}/{}",
            name.qualified(),
            bound.name
        ),
    );
    Ok(())
}

/// The human summary of a package.
pub fn describe_package(package: &Value) -> String {
    let binding = match package.get("binding") {
        Some(b) if b.get("name").is_some() => {
            format!(
                "/{}/{}",
                output::text(b, "namespace"),
                output::text(b, "name")
            )
        }
        _ => String::new(),
    };
    let names = |key: &str| {
        package
            .get(key)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .map(|a| output::text(a, "name"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let mut rows = vec![
        ("name", output::entity_path(package)),
        ("version", output::text(package, "version")),
        ("shared", output::text(package, "publish")),
    ];
    if !binding.is_empty() {
        rows.push(("binding", binding));
    }
    rows.push((
        "parameters",
        output::key_values_text(package.get("parameters")),
    ));
    rows.push((
        "annotations",
        output::key_values_text(package.get("annotations")),
    ));
    rows.push(("actions", names("actions")));
    rows.push(("feeds", names("feeds")));
    output::fields(rows)
}

async fn get(ctx: &Ctx, raw: &str) -> CliResult<()> {
    let name = ctx.entity_name(raw, "package")?;
    let package = ctx
        .client
        .get(&name.segments("packages"), &[])
        .await
        .map_err(|e| e.context(&format!("package {}", name.qualified())))?;
    if ctx.json {
        output::json(&package);
    } else {
        output::line(&format!("ok: got package {}", name.qualified()));
        output::line(&describe_package(&package));
    }
    Ok(())
}

async fn list(ctx: &Ctx, args: &ListArgs) -> CliResult<()> {
    let namespace = args
        .namespace
        .as_deref()
        .map(|n| n.trim_matches('/'))
        .filter(|n| !n.is_empty())
        .unwrap_or(&ctx.namespace)
        .to_string();
    let segments = ["namespaces", namespace.as_str(), "packages"];
    let packages = ctx.client.get(&segments, &args.paging.query()).await?;
    if ctx.json {
        output::json(&packages);
        return Ok(());
    }
    output::line(&package_table(&packages));
    Ok(())
}

/// The package list table.
pub fn package_table(packages: &Value) -> String {
    let rows = packages
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|p| {
                    let binding = match p.get("binding") {
                        Some(b) if b.get("name").is_some() => format!(
                            "/{}/{}",
                            output::text(b, "namespace"),
                            output::text(b, "name")
                        ),
                        _ => String::new(),
                    };
                    let shared = match p.get("publish") {
                        Some(Value::Bool(true)) => "shared",
                        _ => "private",
                    };
                    vec![
                        output::entity_path(p),
                        shared.to_string(),
                        binding,
                        output::text(p, "version"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    output::table(&["PACKAGE", "SHARING", "BINDING", "VERSION"], rows)
}

async fn delete(ctx: &Ctx, args: &DeleteArgs) -> CliResult<()> {
    let name = ctx.entity_name(&args.name, "package")?;
    let query = if args.force {
        vec![("force", "true".to_string())]
    } else {
        Vec::new()
    };
    let reply = ctx
        .client
        .call(Method::DELETE, &name.segments("packages"), &query, None)
        .await
        .map_err(|e| e.context(&format!("package {}", name.qualified())))?;
    ctx.done(
        &reply.body,
        &format!("ok: deleted package {}", name.qualified()),
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::params::pairs;

    #[test]
    fn package_bodies() {
        let params = pairs(&["x".to_string(), "1".to_string()], "parameter").unwrap();
        assert_eq!(
            build_package_body(Some(&params), &KeyValues::new(), Some(Shared::Yes), None),
            json!({"parameters": [{"key": "x", "value": 1}], "publish": true})
        );
        assert_eq!(
            build_package_body(
                None,
                &KeyValues::new(),
                None,
                Some(("whisk.system", "utils"))
            ),
            json!({"binding": {"namespace": "whisk.system", "name": "utils"}})
        );
    }

    #[test]
    fn package_table_and_summary() {
        let list = json!([
            {"namespace": "guest", "name": "p", "publish": true, "binding": false, "version": "0.0.1"},
            {"namespace": "guest", "name": "b", "publish": false,
             "binding": {"namespace": "whisk.system", "name": "utils"}, "version": "0.0.1"}
        ]);
        let t = package_table(&list);
        assert!(t.contains("/guest/p"));
        assert!(t.contains("shared"));
        assert!(t.contains("/whisk.system/utils"));
        let s = describe_package(&json!({"namespace": "guest", "name": "p", "publish": false,
            "binding": {}, "actions": [{"name": "a"}, {"name": "b"}]}));
        assert!(s.contains("a, b"));
        assert!(!s.contains("binding"));
    }
}
