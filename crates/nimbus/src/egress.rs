//! The egress policy of `nimbus serve` (see `nimbus-egress` and docs/security.md): the deny
//! table, the server's own addresses, and what the operator opens with `--allow-egress`,
//! `NIMBUS_ALLOW_EGRESS` or `--egress-config`.

use anyhow::Context;
use clap::Args;
use nimbus_egress::{AllowEntry, EgressConfig, EgressPolicy};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Args, Clone, Debug)]
pub struct EgressArgs {
    /// Opens a destination that functions, callbacks and feeds may not reach by default
    /// (loopback, private, link-local, this host's addresses, ...): IP, IP:PORT, CIDR,
    /// CIDR:PORT or [IPv6]:PORT. Repeatable; the variable takes a comma-separated list.
    #[arg(
        long = "allow-egress",
        value_name = "SPEC",
        env = "NIMBUS_ALLOW_EGRESS",
        value_delimiter = ','
    )]
    pub allow_egress: Vec<String>,
    /// A file of --allow-egress entries, one per line (`#` comments).
    #[arg(long, value_name = "FILE", env = "NIMBUS_EGRESS_CONFIG")]
    pub egress_config: Option<PathBuf>,
}

/// The policy for a server listening on `listen`.
pub fn policy(a: &EgressArgs, listen: SocketAddr) -> anyhow::Result<EgressPolicy> {
    let mut allow = Vec::new();
    for spec in a.allow_egress.iter().filter(|s| !s.trim().is_empty()) {
        allow.push(AllowEntry::parse(spec).context("--allow-egress")?);
    }
    if let Some(file) = &a.egress_config {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the egress config {}", file.display()))?;
        allow.extend(
            nimbus_egress::parse_list(&text)
                .with_context(|| format!("in the egress config {}", file.display()))?,
        );
    }
    let mut own = nimbus_egress::host_addresses();
    own.push(listen.ip());
    Ok(EgressPolicy::new(EgressConfig {
        allow,
        own_addresses: own,
        ..EgressConfig::default()
    }))
}

/// `nimbus_egress_refused_total{purpose}` on `/metrics`.
pub struct EgressMetricsSource(pub EgressPolicy);

impl nimbus_metrics::MetricsSource for EgressMetricsSource {
    fn render(&self, out: &mut String) {
        use std::fmt::Write;
        out.push_str(
            "# HELP nimbus_egress_refused_total Connections refused by the egress policy.\n\
             # TYPE nimbus_egress_refused_total counter\n",
        );
        for (purpose, n) in self.0.refusals() {
            let _ = writeln!(
                out,
                "nimbus_egress_refused_total{{purpose=\"{purpose}\"}} {n}"
            );
        }
    }
}
