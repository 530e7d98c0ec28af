//! The policy itself: the decision for one address, name resolution that checks every address,
//! and TCP connects that dial only checked addresses.

use crate::allow::AllowEntry;
use crate::table::{DenyReason, canonical, classify};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpStream;

/// How long a connect (all addresses of a name together) may take by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long name resolution may take by default.
pub const DEFAULT_RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a destination cannot be used. The `Display` text is what a tenant sees: it never tells a
/// closed port from a filtered one; [`EgressError::detail`] has the rest, for the server log.
#[derive(Debug, Error)]
pub enum EgressError {
    #[error(
        "connection to {target} refused by the egress policy: {reason} are not reachable from functions and feeds; an operator can open it with --allow-egress {hint}"
    )]
    Refused {
        /// The destination as the tenant gave it, with the address it resolved to.
        target: String,
        addr: SocketAddr,
        reason: DenyReason,
        hint: String,
    },
    #[error("could not resolve {host}")]
    Resolve { host: String, detail: String },
    #[error("could not connect to {target}")]
    Connect { target: String, detail: String },
    #[error("'{0}' is not a valid host name or address")]
    InvalidHost(String),
}

impl EgressError {
    /// What the server log may add to the message (the OS error, a timeout).
    pub fn detail(&self) -> &str {
        match self {
            EgressError::Resolve { detail, .. } | EgressError::Connect { detail, .. } => detail,
            _ => "",
        }
    }

    /// Whether this is a policy refusal (as opposed to a network failure).
    pub fn is_refusal(&self) -> bool {
        matches!(self, EgressError::Refused { .. })
    }
}

/// What the policy is built from.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// Destinations the operator opened (`--allow-egress`).
    pub allow: Vec<AllowEntry>,
    /// The server's own addresses: its interfaces' and its listen address.
    pub own_addresses: Vec<IpAddr>,
    pub connect_timeout: Duration,
    pub resolve_timeout: Duration,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            allow: Vec::new(),
            own_addresses: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            resolve_timeout: DEFAULT_RESOLVE_TIMEOUT,
        }
    }
}

#[derive(Debug)]
struct Inner {
    allow: Vec<AllowEntry>,
    own: Vec<IpAddr>,
    connect_timeout: Duration,
    resolve_timeout: Duration,
    refused: Mutex<BTreeMap<&'static str, u64>>,
}

/// The egress policy of one server. Cheap to clone; [`EgressPolicy::scoped`] clones it with
/// the label its refusals are counted under.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    inner: Arc<Inner>,
    purpose: &'static str,
}

impl Default for EgressPolicy {
    /// The deny table alone: nothing opened, no own addresses beyond what the table covers.
    fn default() -> Self {
        EgressPolicy::new(EgressConfig::default())
    }
}

/// `host:port` with brackets around an IPv6 host.
pub fn host_port(host: &str, port: u16) -> String {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.contains(':') {
        format!("[{bare}]:{port}")
    } else {
        format!("{bare}:{port}")
    }
}

impl EgressPolicy {
    pub fn new(cfg: EgressConfig) -> EgressPolicy {
        let mut own: Vec<IpAddr> = cfg
            .own_addresses
            .into_iter()
            .map(canonical)
            .filter(|ip| !ip.is_unspecified())
            .collect();
        own.sort();
        own.dedup();
        EgressPolicy {
            inner: Arc::new(Inner {
                allow: cfg.allow,
                own,
                connect_timeout: cfg.connect_timeout,
                resolve_timeout: cfg.resolve_timeout,
                refused: Mutex::new(BTreeMap::new()),
            }),
            purpose: "function",
        }
    }

    /// The same policy, counting its refusals under `purpose` (e.g. `callback`, `feed`).
    pub fn scoped(&self, purpose: &'static str) -> EgressPolicy {
        EgressPolicy {
            inner: self.inner.clone(),
            purpose,
        }
    }

    pub fn allow_entries(&self) -> &[AllowEntry] {
        &self.inner.allow
    }

    pub fn own_addresses(&self) -> &[IpAddr] {
        &self.inner.own
    }

    pub fn connect_timeout(&self) -> Duration {
        self.inner.connect_timeout
    }

    /// Refusals so far, per purpose.
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        self.inner
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// The decision for one address, in this order: the server's own addresses are refused
    /// unless an entry names that very address; then any matching allow entry opens the
    /// address; then the deny table refuses; everything else is allowed.
    pub fn decide(&self, addr: SocketAddr) -> Result<(), DenyReason> {
        let ip = canonical(addr.ip());
        let addr = SocketAddr::new(ip, addr.port());
        if self.inner.own.contains(&ip) {
            let opened = self
                .inner
                .allow
                .iter()
                .any(|e| e.is_single_address() && e.matches(addr));
            // The table's reason says more ("loopback") where there is one.
            return if opened {
                Ok(())
            } else {
                Err(classify(ip).unwrap_or(DenyReason::OwnAddress))
            };
        }
        if self.inner.allow.iter().any(|e| e.matches(addr)) {
            return Ok(());
        }
        match classify(ip) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// Checks one address `host` resolved to (`host` only names it in the error).
    pub fn check(&self, host: &str, addr: SocketAddr) -> Result<(), EgressError> {
        self.decide(addr).map_err(|reason| {
            let ip = canonical(addr.ip());
            let literal = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok();
            let target = if literal {
                host_port(&ip.to_string(), addr.port())
            } else {
                format!("{} ({ip})", host_port(host, addr.port()))
            };
            self.count_refusal();
            tracing::info!(purpose = self.purpose, %target, %reason, "egress refused");
            EgressError::Refused {
                target,
                addr,
                reason,
                hint: host_port(&ip.to_string(), addr.port()),
            }
        })
    }

    fn count_refusal(&self) {
        *self
            .inner
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(self.purpose)
            .or_default() += 1;
    }

    /// When `host` is an IP literal (brackets allowed): its check. `None` for a name, which
    /// can only be checked once resolved.
    pub fn check_literal(&self, host: &str, port: u16) -> Option<Result<(), EgressError>> {
        let ip = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()?;
        Some(self.check(host, SocketAddr::new(ip, port)))
    }

    /// Resolves `host` (A and AAAA) and checks every address: one refused address refuses the
    /// name, so a name cannot smuggle a private address in among public ones.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
        if let Some(r) = self.check_literal(host, port) {
            r?;
            let ip = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .map_err(|_| EgressError::InvalidHost(host.to_string()))?;
            return Ok(vec![SocketAddr::new(canonical(ip), port)]);
        }
        if host.is_empty()
            || host.len() > 253
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        {
            return Err(EgressError::InvalidHost(host.to_string()));
        }
        let resolve_err = |detail: String| EgressError::Resolve {
            host: host.to_string(),
            detail,
        };
        let found = tokio::time::timeout(
            self.inner.resolve_timeout,
            tokio::net::lookup_host((host, port)),
        )
        .await
        .map_err(|_| resolve_err(format!("no answer within {:?}", self.inner.resolve_timeout)))?
        .map_err(|e| resolve_err(e.to_string()))?;
        let mut addrs: Vec<SocketAddr> = found
            .map(|a| SocketAddr::new(canonical(a.ip()), a.port()))
            .collect();
        addrs.dedup();
        if addrs.is_empty() {
            return Err(resolve_err("no addresses".into()));
        }
        for a in &addrs {
            self.check(host, *a)?;
        }
        Ok(addrs)
    }

    /// Resolves and checks `host`, then connects to the checked addresses in turn (never
    /// resolving again, so a DNS answer that changes after the check cannot redirect the
    /// connection), within the connect timeout for all of them together.
    pub async fn connect_tcp(&self, host: &str, port: u16) -> Result<TcpStream, EgressError> {
        let addrs = self.resolve(host, port).await?;
        self.connect_checked(host, port, &addrs).await
    }

    /// Connects to addresses [`EgressPolicy::resolve`] returned for `host`.
    pub async fn connect_checked(
        &self,
        host: &str,
        port: u16,
        addrs: &[SocketAddr],
    ) -> Result<TcpStream, EgressError> {
        let target = host_port(host, port);
        let mut details = Vec::new();
        let attempt = async {
            for a in addrs {
                // Checked again: the addresses may come from elsewhere than `resolve`.
                self.check(host, *a)?;
                match TcpStream::connect(a).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        return Ok(Some(s));
                    }
                    Err(e) => details.push(format!("{a}: {e}")),
                }
            }
            Ok::<_, EgressError>(None)
        };
        let outcome = tokio::time::timeout(self.inner.connect_timeout, attempt).await;
        let detail = match outcome {
            Ok(Ok(Some(s))) => return Ok(s),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(None)) => details.join("; "),
            Err(_) => format!("timed out after {:?}", self.inner.connect_timeout),
        };
        tracing::info!(purpose = self.purpose, %target, %detail, "egress connect failed");
        Err(EgressError::Connect { target, detail })
    }
}

impl fmt::Display for EgressPolicy {
    /// The allow list, for the startup log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.inner.allow.is_empty() {
            return f.write_str("deny table only");
        }
        let list: Vec<String> = self.inner.allow.iter().map(ToString::to_string).collect();
        write!(f, "deny table, opened: {}", list.join(", "))
    }
}

/// This host's interface addresses (every family, every interface, up or not).
pub fn host_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in addrs {
        let Some(sa) = a.address else { continue };
        if let Some(v4) = sa.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            out.push(IpAddr::V6(v6.ip()));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], own: &[&str]) -> EgressPolicy {
        EgressPolicy::new(EgressConfig {
            allow: allow
                .iter()
                .map(|s| AllowEntry::parse(s).unwrap())
                .collect(),
            own_addresses: own.iter().map(|s| s.parse().unwrap()).collect(),
            ..EgressConfig::default()
        })
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn order_of_checks() {
        let p = policy(
            &["127.0.0.1:5432", "10.0.0.0/8", "192.0.2.2:8080"],
            &["127.0.0.1", "10.1.1.1", "192.0.2.2"],
        );
        assert_eq!(p.decide(sa("127.0.0.1:5432")), Ok(()));
        assert_eq!(
            p.decide(sa("127.0.0.1:5433")),
            Err(DenyReason::Loopback),
            "only the opened port"
        );
        assert_eq!(p.decide(sa("127.0.0.2:5432")), Err(DenyReason::Loopback));
        assert_eq!(p.decide(sa("10.9.9.9:1")), Ok(()));
        // A network entry does not open the server's own address inside it.
        assert_eq!(p.decide(sa("10.1.1.1:1")), Err(DenyReason::Private));
        // A public own address is refused too, except the opened port.
        assert_eq!(p.decide(sa("192.0.2.2:3233")), Err(DenyReason::OwnAddress));
        assert_eq!(p.decide(sa("192.0.2.2:8080")), Ok(()));
        assert_eq!(p.decide(sa("8.8.8.8:53")), Ok(()));
        assert_eq!(
            p.decide(sa("[::ffff:169.254.169.254]:80")),
            Err(DenyReason::LinkLocal)
        );
        assert_eq!(p.decide(sa("[::ffff:127.0.0.1]:5432")), Ok(()));
    }

    #[test]
    fn refusal_messages_say_what_and_how_to_open() {
        let p = policy(&[], &[]).scoped("feed");
        let e = p.check("127.0.0.1", sa("127.0.0.1:5432")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "connection to 127.0.0.1:5432 refused by the egress policy: loopback addresses are \
             not reachable from functions and feeds; an operator can open it with \
             --allow-egress 127.0.0.1:5432"
        );
        let e = p.check("db.internal", sa("10.1.2.3:5432")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("connection to db.internal:5432 (10.1.2.3) refused"),
            "{e}"
        );
        let e = p.check("::1", sa("[::1]:80")).unwrap_err();
        assert!(e.to_string().contains("--allow-egress [::1]:80"), "{e}");
        assert_eq!(p.refusals(), vec![("feed", 3)]);
    }

    #[tokio::test]
    async fn names_are_resolved_and_every_address_checked() {
        let p = policy(&[], &[]);
        let e = p.resolve("localhost", 80).await.unwrap_err();
        assert!(e.is_refusal(), "{e}");
        assert!(
            e.to_string().contains("localhost:80 (127.0.0.1)")
                || e.to_string().contains("localhost:80 (::1)"),
            "{e}"
        );
        assert!(matches!(
            p.resolve("bad name", 80).await,
            Err(EgressError::InvalidHost(_))
        ));
        assert!(p.resolve("[::1]", 80).await.unwrap_err().is_refusal());
        let open = policy(&["127.0.0.1:80", "::1"], &[]);
        let addrs = open.resolve("127.0.0.1", 80).await.unwrap();
        assert_eq!(addrs, vec![sa("127.0.0.1:80")]);
    }

    #[tokio::test]
    async fn connect_dials_only_checked_addresses_and_hides_the_port_state() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let closed = {
            let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            t.local_addr().unwrap().port()
        };
        let refused = policy(&[], &[]).connect_tcp("127.0.0.1", port).await;
        assert!(refused.unwrap_err().is_refusal());
        let p = policy(
            &[&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{closed}")],
            &[],
        );
        let s = p.connect_tcp("127.0.0.1", port).await.unwrap();
        assert_eq!(s.peer_addr().unwrap().port(), port);
        let e = p.connect_tcp("127.0.0.1", closed).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("could not connect to 127.0.0.1:{closed}")
        );
        assert!(!e.detail().is_empty());
    }
}
