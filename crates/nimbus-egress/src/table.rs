//! The deny table: address ranges no connection made on a tenant's behalf may reach unless the
//! operator opens them. Checked on every resolved address, after IPv4-mapped IPv6 addresses
//! (`::ffff:a.b.c.d`) were turned into IPv4.

use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;
use std::sync::OnceLock;

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    Unspecified,
    Loopback,
    LinkLocal,
    Private,
    /// Carrier-grade NAT, 100.64.0.0/10.
    SharedAddressSpace,
    /// 0.0.0.0/8.
    ThisNetwork,
    /// 192.0.0.0/24.
    IetfProtocol,
    /// 198.18.0.0/15.
    Benchmarking,
    Multicast,
    /// 240.0.0.0/4 (broadcast included), 100::/64.
    Reserved,
    /// NAT64, 6to4, Teredo, IPv4-compatible and IPv4-translated IPv6 forms: they reach an IPv4
    /// address through a translator, so the IPv4 checks would not see it.
    EmbeddedIpv4,
    /// One of this server's own addresses (its interfaces, its listen address).
    OwnAddress,
}

impl DenyReason {
    /// The refused kind of address, as a plural noun phrase.
    pub fn what(self) -> &'static str {
        match self {
            DenyReason::Unspecified => "unspecified addresses",
            DenyReason::Loopback => "loopback addresses",
            DenyReason::LinkLocal => {
                "link-local addresses (169.254.0.0/16 and fe80::/10, cloud metadata included)"
            }
            DenyReason::Private => "private network addresses",
            DenyReason::SharedAddressSpace => "carrier-grade NAT addresses (100.64.0.0/10)",
            DenyReason::ThisNetwork => "'this network' addresses (0.0.0.0/8)",
            DenyReason::IetfProtocol => "IETF protocol assignment addresses (192.0.0.0/24)",
            DenyReason::Benchmarking => "benchmarking addresses (198.18.0.0/15)",
            DenyReason::Multicast => "multicast addresses",
            DenyReason::Reserved => "reserved addresses",
            DenyReason::EmbeddedIpv4 => {
                "IPv6 addresses that embed an IPv4 address (NAT64, 6to4, Teredo)"
            }
            DenyReason::OwnAddress => "this server's own addresses",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what())
    }
}

/// The ranges, most specific first where they overlap (the first match gives the reason).
const TABLE: &[(&str, DenyReason)] = &[
    // IPv4
    ("0.0.0.0/32", DenyReason::Unspecified),
    ("0.0.0.0/8", DenyReason::ThisNetwork),
    ("127.0.0.0/8", DenyReason::Loopback),
    ("10.0.0.0/8", DenyReason::Private),
    ("100.64.0.0/10", DenyReason::SharedAddressSpace),
    ("169.254.0.0/16", DenyReason::LinkLocal),
    ("172.16.0.0/12", DenyReason::Private),
    ("192.0.0.0/24", DenyReason::IetfProtocol),
    ("192.168.0.0/16", DenyReason::Private),
    ("198.18.0.0/15", DenyReason::Benchmarking),
    ("224.0.0.0/4", DenyReason::Multicast),
    ("240.0.0.0/4", DenyReason::Reserved),
    // IPv6
    ("::/128", DenyReason::Unspecified),
    ("::1/128", DenyReason::Loopback),
    ("::/96", DenyReason::EmbeddedIpv4),
    ("::ffff:0:0:0/96", DenyReason::EmbeddedIpv4),
    ("64:ff9b::/96", DenyReason::EmbeddedIpv4),
    ("64:ff9b:1::/48", DenyReason::EmbeddedIpv4),
    ("100::/64", DenyReason::Reserved),
    ("2001::/32", DenyReason::EmbeddedIpv4),
    ("2002::/16", DenyReason::EmbeddedIpv4),
    ("fc00::/7", DenyReason::Private),
    ("fe80::/10", DenyReason::LinkLocal),
    ("fec0::/10", DenyReason::Private),
    ("ff00::/8", DenyReason::Multicast),
];

/// The deny table as networks.
pub fn deny_table() -> &'static [(IpNet, DenyReason)] {
    static PARSED: OnceLock<Vec<(IpNet, DenyReason)>> = OnceLock::new();
    PARSED.get_or_init(|| {
        TABLE
            .iter()
            .filter_map(|(net, why)| net.parse::<IpNet>().ok().map(|n| (n, *why)))
            .collect()
    })
}

/// `::ffff:a.b.c.d` as `a.b.c.d`; every other address unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why `ip` is in the deny table, if it is.
pub fn classify(ip: IpAddr) -> Option<DenyReason> {
    let ip = canonical(ip);
    deny_table()
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|(_, why)| *why)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn why(s: &str) -> Option<DenyReason> {
        classify(s.parse().unwrap())
    }

    #[test]
    fn the_table_parses_completely() {
        assert_eq!(deny_table().len(), TABLE.len());
    }

    #[test]
    fn ipv4_ranges() {
        use DenyReason::*;
        assert_eq!(why("0.0.0.0"), Some(Unspecified));
        assert_eq!(why("0.1.2.3"), Some(ThisNetwork));
        assert_eq!(why("127.0.0.1"), Some(Loopback));
        assert_eq!(why("127.255.255.254"), Some(Loopback));
        assert_eq!(why("10.0.2.2"), Some(Private));
        assert_eq!(why("172.16.0.1"), Some(Private));
        assert_eq!(why("172.31.255.255"), Some(Private));
        assert_eq!(why("172.32.0.1"), None);
        assert_eq!(why("192.168.1.1"), Some(Private));
        assert_eq!(why("100.64.0.1"), Some(SharedAddressSpace));
        assert_eq!(why("100.128.0.1"), None);
        assert_eq!(why("169.254.169.254"), Some(LinkLocal));
        assert_eq!(why("192.0.0.8"), Some(IetfProtocol));
        assert_eq!(why("198.18.0.1"), Some(Benchmarking));
        assert_eq!(why("198.19.255.255"), Some(Benchmarking));
        assert_eq!(why("224.0.0.1"), Some(Multicast));
        assert_eq!(why("239.255.255.250"), Some(Multicast));
        assert_eq!(why("240.0.0.1"), Some(Reserved));
        assert_eq!(why("255.255.255.255"), Some(Reserved));
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "203.0.113.80",
            "192.0.2.2",
        ] {
            assert_eq!(why(public), None, "{public}");
        }
    }

    #[test]
    fn ipv6_ranges_and_embedded_ipv4() {
        use DenyReason::*;
        assert_eq!(why("::"), Some(Unspecified));
        assert_eq!(why("::1"), Some(Loopback));
        // IPv4-mapped addresses are checked as the IPv4 address they carry.
        assert_eq!(why("::ffff:127.0.0.1"), Some(Loopback));
        assert_eq!(why("::ffff:169.254.169.254"), Some(LinkLocal));
        assert_eq!(why("::ffff:10.1.2.3"), Some(Private));
        assert_eq!(why("::ffff:8.8.8.8"), None);
        assert_eq!(why("::127.0.0.1"), Some(EmbeddedIpv4));
        assert_eq!(why("64:ff9b::7f00:1"), Some(EmbeddedIpv4));
        assert_eq!(why("64:ff9b:1::a00:1"), Some(EmbeddedIpv4));
        assert_eq!(why("2002:7f00:1::1"), Some(EmbeddedIpv4));
        assert_eq!(why("2001:0:4136:e378::1"), Some(EmbeddedIpv4));
        assert_eq!(why("fd00::2"), Some(Private));
        assert_eq!(why("fc00::1"), Some(Private));
        assert_eq!(why("fe80::1"), Some(LinkLocal));
        assert_eq!(why("fec0::1"), Some(Private));
        assert_eq!(why("ff02::1"), Some(Multicast));
        assert_eq!(why("100::1"), Some(Reserved));
        assert_eq!(why("2606:4700:4700::1111"), None);
        assert_eq!(why("2001:db8::1"), None, "only 2001::/32 is Teredo");
    }
}
