//! Options every client command accepts (flattened into the `nimbus` binary's top-level parser).

use std::path::PathBuf;

use clap::Args;

/// Global options of the client commands.
///
/// The values here are exactly what was given on the command line; the environment variables and the
/// config file are consulted later (see [`crate::config::resolve_settings`]), so that
/// `nimbus property set --auth ...` can tell a flag from an inherited environment variable.
#[derive(Debug, Clone, Default, Args)]
pub struct GlobalOpts {
    /// API host, e.g. http://127.0.0.1:3233 (a bare host gets http://) [env: NIMBUS_APIHOST]
    #[arg(long, global = true, value_name = "URL")]
    pub apihost: Option<String>,

    /// Authorization key UUID:KEY [env: NIMBUS_AUTH]
    #[arg(long, global = true, value_name = "UUID:KEY")]
    pub auth: Option<String>,

    /// Namespace to work in; `_` (the default) is the key's own namespace [env: NIMBUS_NAMESPACE]
    #[arg(long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// Print the server's JSON (pretty) instead of tables and messages, for scripts
    #[arg(long, global = true)]
    pub json: bool,

    /// Client config file [env: NIMBUS_CONFIG] [default: ~/.nimbus/config.json]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
}
