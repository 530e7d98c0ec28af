//! The operator's allow list: `--allow-egress SPEC` entries. Entries are addresses or networks
//! with an optional port, never host names: a name would be resolved by whoever asks, so an
//! entry would open whatever the name points to at that moment.

use crate::table::canonical;
use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use thiserror::Error;

/// One destination the operator opened: an address or network, and optionally one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    pub net: IpNet,
    /// `None`: every port.
    pub port: Option<u16>,
}

/// An allow entry that does not parse.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid egress allow entry '{spec}': {why}")]
pub struct SpecError {
    pub spec: String,
    pub why: String,
}

const FORMS: &str = "expected IP, IP:PORT, CIDR, CIDR:PORT, [IPv6]:PORT or [IPv6/LEN]:PORT";

impl AllowEntry {
    /// Parses `IP`, `IP:PORT`, `CIDR`, `CIDR:PORT`, a bare IPv6 address or network, or
    /// `[IPv6]:PORT` / `[IPv6/LEN]:PORT`. Host bits of a CIDR are cleared (`10.1.2.3/8` is
    /// `10.0.0.0/8`).
    pub fn parse(spec: &str) -> Result<AllowEntry, SpecError> {
        let err = |why: String| SpecError {
            spec: spec.to_string(),
            why,
        };
        let s = spec.trim();
        if s.is_empty() {
            return Err(err(FORMS.to_string()));
        }
        let (addr, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest
                .split_once(']')
                .ok_or_else(|| err(format!("missing ']' ({FORMS})")))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| err(format!("unexpected '{p}' after ']'")))?,
                ),
            };
            (inner, port)
        } else if s.matches(':').count() == 1 {
            let (a, p) = s.split_once(':').unwrap_or((s, ""));
            (a, Some(p))
        } else {
            // No colon (IPv4) or several (a bare IPv6 address or network, no port).
            (s, None)
        };
        let port = port
            .map(|p| match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(err(format!("'{p}' is not a port (1-65535)"))),
                Ok(n) => Ok(n),
            })
            .transpose()?;
        let net = if addr.contains('/') {
            addr.parse::<IpNet>()
                .map_err(|_| err(format!("'{addr}' is not a CIDR network ({FORMS})")))?
                .trunc()
        } else {
            let ip = addr.parse::<IpAddr>().map_err(|_| {
                let hint = if addr.chars().any(|c| c.is_ascii_alphabetic()) && !addr.contains("::")
                {
                    "host names are not accepted, give the address (or network) the name resolves to"
                        .to_string()
                } else {
                    format!("'{addr}' is not an IP address ({FORMS})")
                };
                err(hint)
            })?;
            IpNet::from(canonical(ip))
        };
        Ok(AllowEntry { net, port })
    }

    /// Whether this entry opens `addr`.
    pub fn matches(&self, addr: SocketAddr) -> bool {
        self.net.contains(&canonical(addr.ip())) && self.port.is_none_or(|p| p == addr.port())
    }

    /// Whether the entry names exactly one address (and so may open one of the server's own).
    pub fn is_single_address(&self) -> bool {
        self.net.prefix_len() == self.net.max_prefix_len()
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let single = self.is_single_address();
        match (self.net, self.port) {
            (IpNet::V6(_), Some(p)) if single => write!(f, "[{}]:{p}", self.net.addr()),
            (IpNet::V6(n), Some(p)) => write!(f, "[{n}]:{p}"),
            (_, Some(p)) if single => write!(f, "{}:{p}", self.net.addr()),
            (n, Some(p)) => write!(f, "{n}:{p}"),
            (_, None) if single => write!(f, "{}", self.net.addr()),
            (n, None) => write!(f, "{n}"),
        }
    }
}

/// Entries of an egress config file: one per line; `#` starts a comment; blank lines ignored.
/// Errors name the line.
pub fn parse_list(text: &str) -> Result<Vec<AllowEntry>, SpecError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        out.push(AllowEntry::parse(line).map_err(|e| SpecError {
            spec: e.spec,
            why: format!("line {}: {}", i + 1, e.why),
        })?);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn p(s: &str) -> AllowEntry {
        AllowEntry::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forms() {
        assert_eq!(p("127.0.0.1").to_string(), "127.0.0.1");
        assert_eq!(p("127.0.0.1:1883").to_string(), "127.0.0.1:1883");
        assert_eq!(p("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(p("10.1.2.3/8:5432").to_string(), "10.0.0.0/8:5432");
        assert_eq!(p("::1").to_string(), "::1");
        assert_eq!(p("fd00::/8").to_string(), "fd00::/8");
        assert_eq!(p("[::1]:80").to_string(), "[::1]:80");
        assert_eq!(p("[fd00::/8]:443").to_string(), "[fd00::/8]:443");
        assert_eq!(p("[::1]").to_string(), "::1");
        assert_eq!(p(" ::ffff:10.0.0.1 ").to_string(), "10.0.0.1");
    }

    #[test]
    fn bad_entries_say_why() {
        for bad in [
            "",
            "broker.local:1883",
            "localhost",
            "127.0.0.1:0",
            "127.0.0.1:99999",
            "127.0.0.1:",
            "10.0.0.0/33",
            "[::1",
            "[::1]x",
            "1.2.3",
        ] {
            assert!(AllowEntry::parse(bad).is_err(), "{bad}");
        }
        let e = AllowEntry::parse("broker.local:1883").unwrap_err();
        assert!(e.to_string().contains("host names are not accepted"), "{e}");
    }

    #[test]
    fn matching() {
        assert!(p("127.0.0.1:5432").matches(sa("127.0.0.1:5432")));
        assert!(!p("127.0.0.1:5432").matches(sa("127.0.0.1:5433")));
        assert!(p("127.0.0.1").matches(sa("127.0.0.1:1")));
        assert!(p("10.0.0.0/8:443").matches(sa("10.200.0.1:443")));
        assert!(!p("10.0.0.0/8:443").matches(sa("11.0.0.1:443")));
        assert!(p("127.0.0.1:80").matches(sa("[::ffff:127.0.0.1]:80")));
        assert!(p("[::1]:80").matches(sa("[::1]:80")));
        assert!(p("127.0.0.1").is_single_address());
        assert!(!p("127.0.0.0/8").is_single_address());
    }

    #[test]
    fn config_files() {
        let list = parse_list(
            "# brokers of the lab\n127.0.0.1:1883\n\n  10.0.0.0/8:5432   # databases\n[::1]:4222\n",
        )
        .unwrap();
        assert_eq!(list.len(), 3);
        let e = parse_list("127.0.0.1\nnope\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
