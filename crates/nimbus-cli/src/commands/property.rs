//! `nimbus property ...`: the config file.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::client::{normalize_apihost, split_auth};
use crate::config::{ConfigFile, Settings, resolve_settings};
use crate::error::{CliError, CliResult};
use crate::global::GlobalOpts;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum PropertyCommand {
    /// Save settings given as global flags: `nimbus property set --apihost URL --auth UUID:KEY [--namespace NS]`
    Set,
    /// Show the settings in effect and where each comes from
    Get(GetArgs),
    /// Remove settings from the config file
    Unset(UnsetArgs),
}

/// A setting of the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Key {
    Apihost,
    Auth,
    Namespace,
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// Print only this setting's value
    pub key: Option<Key>,
}

#[derive(Debug, Clone, Args)]
pub struct UnsetArgs {
    /// Settings to remove
    #[arg(value_enum, required_unless_present = "all")]
    pub keys: Vec<Key>,
    /// Remove every setting
    #[arg(long, conflicts_with = "keys")]
    pub all: bool,
}

pub fn run(global: &GlobalOpts, cmd: PropertyCommand) -> CliResult<()> {
    match cmd {
        PropertyCommand::Set => set(global),
        PropertyCommand::Get(args) => get(global, &args),
        PropertyCommand::Unset(args) => unset(global, &args),
    }
}

/// Applies the flags of `property set` to a config; returns the names of the keys set.
pub fn apply_set(config: &mut ConfigFile, global: &GlobalOpts) -> CliResult<Vec<&'static str>> {
    let mut changed = Vec::new();
    if let Some(apihost) = &global.apihost {
        config.apihost = Some(normalize_apihost(apihost)?);
        changed.push("apihost");
    }
    if let Some(auth) = &global.auth {
        split_auth(auth)?;
        config.auth = Some(auth.trim().to_string());
        changed.push("auth");
    }
    if let Some(namespace) = &global.namespace {
        let namespace = namespace.trim().trim_matches('/');
        if namespace.is_empty() {
            return Err(CliError::usage("the namespace is empty"));
        }
        config.namespace = Some(namespace.to_string());
        changed.push("namespace");
    }
    if changed.is_empty() {
        return Err(CliError::usage(
            "nothing to set: give --apihost URL, --auth UUID:KEY and/or --namespace NS",
        ));
    }
    Ok(changed)
}

fn set(global: &GlobalOpts) -> CliResult<()> {
    let path = resolve_settings(global)?.config_path;
    let mut config = ConfigFile::load(&path)?;
    let changed = apply_set(&mut config, global)?;
    config.save(&path)?;
    if global.json {
        output::json(&serde_json::to_value(&config).unwrap_or_default());
    } else {
        output::line(&format!(
            "ok: saved {} in {}",
            changed.join(", "),
            path.display()
        ));
    }
    Ok(())
}

fn value_of(settings: &Settings, key: Key) -> (String, &'static str) {
    match key {
        Key::Apihost => (
            settings.apihost.value.clone(),
            settings.apihost.source.label(),
        ),
        Key::Auth => match &settings.auth {
            Some(auth) => (auth.value.clone(), auth.source.label()),
            None => (String::new(), "not set"),
        },
        Key::Namespace => (
            settings.namespace.value.clone(),
            settings.namespace.source.label(),
        ),
    }
}

fn get(global: &GlobalOpts, args: &GetArgs) -> CliResult<()> {
    let settings = resolve_settings(global)?;
    if let Some(key) = args.key {
        let (value, _) = value_of(&settings, key);
        if value.is_empty() {
            return Err(CliError::usage(format!(
                "{key:?} is not set (see `nimbus property set`)"
            )));
        }
        output::line(&value);
        return Ok(());
    }
    let apihost = value_of(&settings, Key::Apihost);
    let auth = value_of(&settings, Key::Auth);
    let namespace = value_of(&settings, Key::Namespace);
    let config = settings.config_path.display().to_string();
    if global.json {
        output::json(&json!({
            "apihost": apihost.0,
            "auth": if auth.0.is_empty() { serde_json::Value::Null } else { json!(auth.0) },
            "namespace": namespace.0,
            "config": config,
        }));
        return Ok(());
    }
    let rows = vec![
        vec!["apihost".to_string(), apihost.0, apihost.1.to_string()],
        vec!["auth".to_string(), auth.0, auth.1.to_string()],
        vec![
            "namespace".to_string(),
            namespace.0,
            namespace.1.to_string(),
        ],
        vec!["config file".to_string(), config, String::new()],
    ];
    output::line(&output::table(&["PROPERTY", "VALUE", "SOURCE"], rows));
    Ok(())
}

/// Removes keys from a config (all of them with `all`).
pub fn apply_unset(config: &mut ConfigFile, keys: &[Key], all: bool) {
    if all {
        *config = ConfigFile::default();
        return;
    }
    for key in keys {
        match key {
            Key::Apihost => config.apihost = None,
            Key::Auth => config.auth = None,
            Key::Namespace => config.namespace = None,
        }
    }
}

fn unset(global: &GlobalOpts, args: &UnsetArgs) -> CliResult<()> {
    let path = resolve_settings(global)?.config_path;
    let mut config = ConfigFile::load(&path)?;
    apply_unset(&mut config, &args.keys, args.all);
    config.save(&path)?;
    if global.json {
        output::json(&serde_json::to_value(&config).unwrap_or_default());
    } else {
        output::line(&format!("ok: updated {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn set_validates_and_normalizes() {
        let mut config = ConfigFile::default();
        let global = GlobalOpts {
            apihost: Some("127.0.0.1:3233".into()),
            auth: Some("u:k".into()),
            ..GlobalOpts::default()
        };
        assert_eq!(
            apply_set(&mut config, &global).unwrap(),
            ["apihost", "auth"]
        );
        assert_eq!(config.apihost.as_deref(), Some("http://127.0.0.1:3233"));
        assert_eq!(config.auth.as_deref(), Some("u:k"));

        let bad = GlobalOpts {
            auth: Some("nocolon".into()),
            ..GlobalOpts::default()
        };
        assert!(apply_set(&mut config, &bad).is_err());
        let tls = GlobalOpts {
            apihost: Some("https://x".into()),
            ..GlobalOpts::default()
        };
        assert!(apply_set(&mut config, &tls).is_err());
        assert!(apply_set(&mut config, &GlobalOpts::default()).is_err());
    }

    #[test]
    fn unset_keys_and_all() {
        let mut config = ConfigFile {
            apihost: Some("a".into()),
            auth: Some("b".into()),
            namespace: Some("c".into()),
        };
        apply_unset(&mut config, &[Key::Auth], false);
        assert_eq!(config.auth, None);
        assert!(config.apihost.is_some());
        apply_unset(&mut config, &[], true);
        assert!(config.is_empty());
    }
}
