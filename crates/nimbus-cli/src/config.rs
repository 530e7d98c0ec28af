//! The client config file and the resolution of apihost, auth key and namespace.
//!
//! Order for each setting: command-line flag > environment variable > config file > default.
//! The config file is `--config PATH`, else `$NIMBUS_CONFIG`, else `$HOME/.nimbus/config.json`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CliError, CliResult};
use crate::global::GlobalOpts;

pub const DEFAULT_APIHOST: &str = "http://127.0.0.1:3233";
pub const DEFAULT_NAMESPACE: &str = "_";
pub const ENV_APIHOST: &str = "NIMBUS_APIHOST";
pub const ENV_AUTH: &str = "NIMBUS_AUTH";
pub const ENV_NAMESPACE: &str = "NIMBUS_NAMESPACE";
pub const ENV_CONFIG: &str = "NIMBUS_CONFIG";

/// What the config file holds (`{"apihost": ..., "auth": ..., "namespace": ...}`; every key optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apihost: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl ConfigFile {
    /// Reads the file; a missing file is an empty config.
    pub fn load(path: &Path) -> CliResult<ConfigFile> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
            Err(e) => {
                return Err(CliError::usage(format!(
                    "cannot read the config file {}: {e}",
                    path.display()
                )));
            }
        };
        if text.trim().is_empty() {
            return Ok(ConfigFile::default());
        }
        serde_json::from_str(&text).map_err(|e| {
            CliError::usage(format!(
                "the config file {} is not valid: {e} (fix it, or remove it and run `nimbus property set`)",
                path.display()
            ))
        })
    }

    /// Writes the file with mode 0600, creating its directory if needed. The write goes through a
    /// temporary file in the same directory, so a crash never leaves a half-written config.
    pub fn save(&self, path: &Path) -> CliResult<()> {
        let fail = |what: &str, e: std::io::Error| {
            CliError::usage(format!("cannot {what} {}: {e}", path.display()))
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        create_private_dir(&dir).map_err(|e| fail("create the directory of", e))?;
        let mut text = serde_json::to_string_pretty(self)
            .map_err(|e| CliError::usage(format!("cannot encode the config: {e}")))?;
        text.push('\n');
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config.json".to_string());
        let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
        let written =
            write_private(&tmp, text.as_bytes()).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail("write the config file", e));
        }
        Ok(())
    }

    /// True when no key is set.
    pub fn is_empty(&self) -> bool {
        self.apihost.is_none() && self.auth.is_none() && self.namespace.is_none()
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

/// The config file to use: `--config` > `$NIMBUS_CONFIG` > `$HOME/.nimbus/config.json`.
pub fn config_path(
    flag: Option<&Path>,
    env_value: Option<&str>,
    home: Option<&Path>,
) -> CliResult<PathBuf> {
    if let Some(path) = flag {
        return Ok(path.to_path_buf());
    }
    if let Some(path) = env_value.filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    match home.filter(|h| !h.as_os_str().is_empty()) {
        Some(home) => Ok(home.join(".nimbus").join("config.json")),
        None => Err(CliError::usage(format!(
            "cannot locate the config file: HOME is not set; pass --config PATH or set {ENV_CONFIG}"
        ))),
    }
}

/// Where a setting came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    ConfigFile,
    Default,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Flag => "flag",
            Source::Env => "environment",
            Source::ConfigFile => "config file",
            Source::Default => "default",
        }
    }
}

/// A resolved setting and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub value: String,
    pub source: Source,
}

/// Picks the first non-empty value in the order flag > environment > config file.
pub fn pick(flag: Option<&str>, env_value: Option<&str>, file: Option<&str>) -> Option<Setting> {
    let candidates = [
        (flag, Source::Flag),
        (env_value, Source::Env),
        (file, Source::ConfigFile),
    ];
    candidates.into_iter().find_map(|(value, source)| {
        value
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| Setting {
                value: v.to_string(),
                source,
            })
    })
}

/// Endpoint, key and namespace after resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub config_path: PathBuf,
    pub apihost: Setting,
    pub auth: Option<Setting>,
    pub namespace: Setting,
}

impl Settings {
    /// The auth key, or the error that tells the user how to configure one.
    pub fn require_auth(&self) -> CliResult<&str> {
        match &self.auth {
            Some(auth) => Ok(&auth.value),
            None => Err(CliError::usage(format!(
                "no auth key configured. Pass --auth UUID:KEY, set {ENV_AUTH}, or run \
                 `nimbus property set --auth UUID:KEY` (saved in {}). The server stores the keys it \
                 created under <data-dir>/auth/ (the guest key is in <data-dir>/auth/guest).",
                self.config_path.display()
            ))),
        }
    }
}

/// Resolves the settings with an explicit environment lookup (tests pass their own).
pub fn resolve_settings_with(
    global: &GlobalOpts,
    env: &dyn Fn(&str) -> Option<String>,
) -> CliResult<Settings> {
    let home = env("HOME").map(PathBuf::from);
    let path = config_path(
        global.config.as_deref(),
        env(ENV_CONFIG).as_deref(),
        home.as_deref(),
    )?;
    let file = ConfigFile::load(&path)?;
    let apihost = pick(
        global.apihost.as_deref(),
        env(ENV_APIHOST).as_deref(),
        file.apihost.as_deref(),
    )
    .unwrap_or_else(|| Setting {
        value: DEFAULT_APIHOST.to_string(),
        source: Source::Default,
    });
    let auth = pick(
        global.auth.as_deref(),
        env(ENV_AUTH).as_deref(),
        file.auth.as_deref(),
    );
    let namespace = pick(
        global.namespace.as_deref(),
        env(ENV_NAMESPACE).as_deref(),
        file.namespace.as_deref(),
    )
    .map(|mut s| {
        s.value = s.value.trim_matches('/').to_string();
        s
    })
    .filter(|s| !s.value.is_empty())
    .unwrap_or_else(|| Setting {
        value: DEFAULT_NAMESPACE.to_string(),
        source: Source::Default,
    });
    Ok(Settings {
        config_path: path,
        apihost,
        auth,
        namespace,
    })
}

/// Resolves the settings from the flags, the process environment and the config file.
/// Useful to other subcommands of the `nimbus` binary that need the same endpoint and key.
pub fn resolve_settings(global: &GlobalOpts) -> CliResult<Settings> {
    resolve_settings_with(global, &|name| std::env::var(name).ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn config_path_order() {
        let home = Path::new("/home/u");
        assert_eq!(
            config_path(Some(Path::new("/x/c.json")), Some("/y/c.json"), Some(home)).unwrap(),
            PathBuf::from("/x/c.json")
        );
        assert_eq!(
            config_path(None, Some("/y/c.json"), Some(home)).unwrap(),
            PathBuf::from("/y/c.json")
        );
        assert_eq!(
            config_path(None, Some(""), Some(home)).unwrap(),
            PathBuf::from("/home/u/.nimbus/config.json")
        );
        assert!(config_path(None, None, None).is_err());
    }

    #[test]
    fn pick_order_and_empty_values() {
        let s = pick(Some("a"), Some("b"), Some("c")).unwrap();
        assert_eq!((s.value.as_str(), s.source), ("a", Source::Flag));
        let s = pick(None, Some("b"), Some("c")).unwrap();
        assert_eq!((s.value.as_str(), s.source), ("b", Source::Env));
        let s = pick(Some(""), Some(" "), Some("c")).unwrap();
        assert_eq!((s.value.as_str(), s.source), ("c", Source::ConfigFile));
        assert!(pick(None, None, None).is_none());
    }

    #[test]
    fn round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep").join("nimbus").join("config.json");
        let config = ConfigFile {
            apihost: Some("http://127.0.0.1:9999".into()),
            auth: Some("u:k".into()),
            namespace: None,
        };
        config.save(&path).unwrap();
        assert_eq!(ConfigFile::load(&path).unwrap(), config);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("namespace"));
    }

    #[test]
    fn missing_file_is_empty_and_bad_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.json");
        assert!(ConfigFile::load(&path).unwrap().is_empty());
        std::fs::write(&path, "{not json").unwrap();
        let err = ConfigFile::load(&path).unwrap_err();
        assert!(err.message.contains("not valid"));
    }

    #[test]
    fn resolution_flag_env_file_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        ConfigFile {
            apihost: Some("filehost:1".into()),
            auth: Some("file:key".into()),
            namespace: Some("filens".into()),
        }
        .save(&path)
        .unwrap();
        let path_str = path.to_string_lossy().into_owned();

        // Config chosen through the environment; file values used.
        let env = env_of(&[(ENV_CONFIG, &path_str)]);
        let s = resolve_settings_with(&GlobalOpts::default(), &env).unwrap();
        assert_eq!(s.config_path, path);
        assert_eq!(s.apihost.value, "filehost:1");
        assert_eq!(s.apihost.source, Source::ConfigFile);
        assert_eq!(s.auth.as_ref().unwrap().value, "file:key");
        assert_eq!(s.namespace.value, "filens");

        // Environment beats the file.
        let env = env_of(&[
            (ENV_CONFIG, &path_str),
            (ENV_APIHOST, "envhost:2"),
            (ENV_AUTH, "env:key"),
        ]);
        let s = resolve_settings_with(&GlobalOpts::default(), &env).unwrap();
        assert_eq!(s.apihost.value, "envhost:2");
        assert_eq!(s.apihost.source, Source::Env);
        assert_eq!(s.auth.as_ref().unwrap().source, Source::Env);

        // Flags beat the environment.
        let global = GlobalOpts {
            apihost: Some("flaghost:3".into()),
            auth: Some("flag:key".into()),
            namespace: Some("/flagns/".into()),
            ..GlobalOpts::default()
        };
        let s = resolve_settings_with(&global, &env).unwrap();
        assert_eq!(s.apihost.value, "flaghost:3");
        assert_eq!(s.auth.as_ref().unwrap().value, "flag:key");
        assert_eq!(s.namespace.value, "flagns");
        assert_eq!(s.namespace.source, Source::Flag);

        // Nothing anywhere: default apihost, no key, namespace `_`.
        let home = dir.path().join("home");
        let home_str = home.to_string_lossy().into_owned();
        let env = env_of(&[("HOME", &home_str)]);
        let s = resolve_settings_with(&GlobalOpts::default(), &env).unwrap();
        assert_eq!(s.config_path, home.join(".nimbus/config.json"));
        assert_eq!(s.apihost.value, DEFAULT_APIHOST);
        assert_eq!(s.apihost.source, Source::Default);
        assert!(s.auth.is_none());
        assert_eq!(s.namespace.value, "_");
        let err = s.require_auth().unwrap_err();
        assert!(err.message.contains("nimbus property set --auth"));
        assert!(err.message.contains("auth/guest"));
    }
}
