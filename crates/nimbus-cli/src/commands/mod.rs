//! The client subcommands and what they share.

pub mod action;
pub mod activation;
pub mod deadletter;
pub mod instances;
pub mod namespace;
pub mod package;
pub mod property;
pub mod rule;
pub mod trigger;
pub mod usage;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::client::Client;
use crate::config::{Settings, resolve_settings};
use crate::error::{CliError, CliResult};
use crate::exit::Exit;
use crate::global::GlobalOpts;
use crate::names::EntityName;
use crate::output;
use reqwest::Method;

/// The client commands (flattened into the `nimbus` binary's subcommands).
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create, update, get, list, delete and invoke actions
    #[command(subcommand)]
    Action(action::ActionCommand),
    /// List and inspect activations, their logs and results
    #[command(subcommand)]
    Activation(activation::ActivationCommand),
    /// Create, update, get, list, delete and fire triggers
    #[command(subcommand)]
    Trigger(trigger::TriggerCommand),
    /// Create, update, enable, disable, get, list and delete rules
    #[command(subcommand)]
    Rule(rule::RuleCommand),
    /// Create, update, bind, get, list and delete packages
    #[command(subcommand)]
    Package(package::PackageCommand),
    /// List namespaces and the entities in one
    #[command(subcommand)]
    Namespace(namespace::NamespaceCommand),
    /// Show and save the apihost, auth key and namespace in the config file
    #[command(subcommand)]
    Property(property::PropertyCommand),
    /// List the live instances (starting, idle, busy) of the namespace's actions, and the node's pool
    Instances(instances::InstancesArgs),
    /// List, inspect, redrive and purge the namespace's dead letters (undelivered events)
    #[command(subcommand)]
    Deadletter(deadletter::DeadletterCommand),
    /// Metered usage of the namespace: invocations, errors, duration and GB-seconds per function and day
    Usage(usage::UsageArgs),
}

/// An entity name argument.
#[derive(Debug, Clone, Args)]
pub struct NameArg {
    /// Entity name
    pub name: String,
}

/// `--limit` and `--skip` for lists.
#[derive(Debug, Clone, Default, Args)]
pub struct Paging {
    /// Number of entries to return (server default 30, at most 200; 0 means the maximum)
    #[arg(short = 'l', long, value_name = "N")]
    pub limit: Option<u32>,
    /// Number of entries to skip
    #[arg(short = 's', long, value_name = "N")]
    pub skip: Option<u32>,
}

impl Paging {
    pub fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        if let Some(limit) = self.limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(skip) = self.skip {
            query.push(("skip", skip.to_string()));
        }
        query
    }
}

/// What a command that talks to the server needs.
pub struct Ctx {
    pub client: Client,
    pub settings: Settings,
    pub auth: String,
    /// The namespace from the settings (`_` unless set).
    pub namespace: String,
    pub json: bool,
}

impl Ctx {
    pub fn new(global: &GlobalOpts) -> CliResult<Ctx> {
        let settings = resolve_settings(global)?;
        let auth = settings.require_auth()?.to_string();
        let client = Client::new(&settings.apihost.value, &auth)?;
        Ok(Ctx {
            client,
            namespace: settings.namespace.value.clone(),
            settings,
            auth,
            json: global.json,
        })
    }

    /// An action name (may sit in a package).
    pub fn action_name(&self, raw: &str) -> CliResult<EntityName> {
        EntityName::parse(raw, &self.namespace)
    }

    /// A trigger, rule or package name.
    pub fn entity_name(&self, raw: &str, what: &str) -> CliResult<EntityName> {
        EntityName::parse_unpackaged(raw, &self.namespace, what)
    }

    /// The real name of the namespace: the configured one, or for `_` the first namespace the key
    /// owns (`GET /namespaces`), falling back to `_`.
    pub async fn own_namespace(&self) -> String {
        if self.namespace != "_" {
            return self.namespace.clone();
        }
        match self.client.get(&["namespaces"], &[]).await {
            Ok(Value::Array(items)) => items
                .first()
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| "_".to_string()),
            _ => "_".to_string(),
        }
    }

    /// `PUT /{collection}/{name}[?overwrite=true]`, turning a 409 on create into a hint to use
    /// `update`. `what` is the entity word users see (`action`, `rule`, …).
    pub async fn put_entity(
        &self,
        what: &str,
        collection: &str,
        name: &EntityName,
        body: &Value,
        overwrite: bool,
    ) -> CliResult<Value> {
        let query = if overwrite {
            vec![("overwrite", "true".to_string())]
        } else {
            Vec::new()
        };
        let reply = self
            .client
            .request(Method::PUT, &name.segments(collection), &query, Some(body))
            .await?;
        if reply.status == 409 && !overwrite {
            return Err(CliError::new(
                Exit::Conflict,
                format!(
                    "{what} {} already exists; use `nimbus {what} update` to change it (HTTP 409)",
                    name.qualified()
                ),
            ));
        }
        Ok(reply
            .into_result()
            .map_err(|e| e.context(&format!("{what} {}", name.qualified())))?
            .body)
    }

    /// Prints the server's JSON with `--json`, else the message.
    pub fn done(&self, body: &Value, message: &str) {
        if self.json {
            output::json(body);
        } else {
            output::line(message);
        }
    }
}

/// Runs one client command.
pub async fn dispatch(global: GlobalOpts, command: ClientCommand) -> CliResult<()> {
    if let ClientCommand::Property(cmd) = command {
        return property::run(&global, cmd);
    }
    let ctx = Ctx::new(&global)?;
    match command {
        ClientCommand::Action(cmd) => action::run(&ctx, cmd).await,
        ClientCommand::Activation(cmd) => activation::run(&ctx, cmd).await,
        ClientCommand::Trigger(cmd) => trigger::run(&ctx, cmd).await,
        ClientCommand::Rule(cmd) => rule::run(&ctx, cmd).await,
        ClientCommand::Package(cmd) => package::run(&ctx, cmd).await,
        ClientCommand::Namespace(cmd) => namespace::run(&ctx, cmd).await,
        ClientCommand::Instances(args) => instances::run(&ctx, &args).await,
        ClientCommand::Usage(args) => usage::run(&ctx, &args).await,
        ClientCommand::Property(cmd) => property::run(&global, cmd),
        ClientCommand::Deadletter(cmd) => deadletter::run(&ctx, cmd).await,
    }
}
