//! The addresses a rest-hook may never reach, as one table: every block of the IANA IPv4
//! Special-Purpose Address Registry and the IANA IPv6 Special-Purpose Address Registry
//! (RFC 6890 and its updates), with the multicast spaces, the deprecated site-local and
//! IPv4-compatible blocks and the rest of IETF-reserved `::/8`, and the cloud metadata
//! addresses inside them named for what they are.
//!
//! An address is decided by the most specific block that holds it. A block that carries an
//! IPv4 address (IPv4-mapped, NAT64 well-known prefix) is decided by that address against the
//! IPv4 blocks; one that carries an IPv4 address but is never a destination for a webhook
//! (IPv4-compatible, IPv4-translated, 6to4) is refused, naming the embedded address's block
//! when it has one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use super::ssrf::Network;

/// Where an IPv6 block carries an IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embed {
    /// The last 32 bits (`::ffff:a.b.c.d`, `64:ff9b::a.b.c.d`, `::a.b.c.d`).
    Last32,
    /// Bits 16 to 48 (6to4: `2002:AABB:CCDD::/48`).
    SixToFour,
}

impl Embed {
    fn extract(self, ip: Ipv6Addr) -> Ipv4Addr {
        let bits = u128::from(ip);
        Ipv4Addr::from(match self {
            Embed::Last32 => (bits & 0xffff_ffff) as u32,
            Embed::SixToFour => ((bits >> 80) & 0xffff_ffff) as u32,
        })
    }
}

/// What a block means for an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Never reached.
    Refuse,
    /// The embedded IPv4 address decides.
    Embedded(Embed),
    /// Never reached; the embedded IPv4 address's block names why, when it has one.
    RefuseEmbedded(Embed),
}

/// One special-purpose block.
#[derive(Debug, Clone, Copy)]
pub struct Special {
    pub block: &'static str,
    pub name: &'static str,
    pub rule: Rule,
}

const fn refuse(block: &'static str, name: &'static str) -> Special {
    Special {
        block,
        name,
        rule: Rule::Refuse,
    }
}

/// The table (registry name in the comment where the label shortens it).
pub const SPECIAL: &[Special] = &[
    // IANA IPv4 Special-Purpose Address Registry
    refuse("0.0.0.0/8", "unspecified (\"this network\")"),
    refuse("0.0.0.0/32", "unspecified (\"this host on this network\")"),
    refuse("10.0.0.0/8", "private"),
    refuse("100.64.0.0/10", "carrier-grade NAT (shared address space)"),
    refuse("127.0.0.0/8", "loopback"),
    refuse("169.254.0.0/16", "link-local"),
    refuse("172.16.0.0/12", "private"),
    refuse("192.0.0.0/24", "IETF protocol assignment"),
    refuse("192.0.0.0/29", "IPv4 service continuity prefix"),
    refuse("192.0.0.8/32", "IPv4 dummy address"),
    refuse("192.0.0.9/32", "port control protocol anycast"),
    refuse("192.0.0.10/32", "traversal using relays around NAT anycast"),
    refuse("192.0.0.170/32", "NAT64/DNS64 discovery"),
    refuse("192.0.0.171/32", "NAT64/DNS64 discovery"),
    refuse("192.0.2.0/24", "documentation"),
    refuse("192.31.196.0/24", "AS112"),
    refuse("192.52.193.0/24", "automatic multicast tunneling"),
    refuse("192.88.99.0/24", "6to4 relay anycast (deprecated)"),
    refuse("192.168.0.0/16", "private"),
    refuse("192.175.48.0/24", "AS112 direct delegation"),
    refuse("198.18.0.0/15", "benchmarking"),
    refuse("198.51.100.0/24", "documentation"),
    refuse("203.0.113.0/24", "documentation"),
    refuse("240.0.0.0/4", "reserved"),
    refuse("255.255.255.255/32", "limited broadcast"),
    // IANA IPv4 Multicast Address Space Registry
    refuse("224.0.0.0/4", "multicast"),
    // cloud instance metadata services, inside the blocks above
    refuse("169.254.169.254/32", "cloud metadata"),
    refuse("100.100.100.200/32", "cloud metadata"),
    // IANA IPv6 Special-Purpose Address Registry
    refuse("::1/128", "loopback"),
    refuse("::/128", "unspecified"),
    Special {
        block: "::ffff:0:0/96",
        name: "IPv4-mapped",
        rule: Rule::Embedded(Embed::Last32),
    },
    Special {
        block: "64:ff9b::/96",
        name: "NAT64",
        rule: Rule::Embedded(Embed::Last32),
    },
    refuse("64:ff9b:1::/48", "NAT64 local-use"),
    refuse("100::/64", "discard-only"),
    refuse("100:0:0:1::/64", "dummy IPv6 prefix"),
    refuse("2001::/23", "IETF protocol assignment"),
    refuse("2001::/32", "Teredo"),
    refuse("2001:1::1/128", "port control protocol anycast"),
    refuse("2001:1::2/128", "traversal using relays around NAT anycast"),
    refuse(
        "2001:1::3/128",
        "DNS-SD service registration protocol anycast",
    ),
    refuse("2001:2::/48", "benchmarking"),
    refuse("2001:3::/32", "automatic multicast tunneling"),
    refuse("2001:4:112::/48", "AS112"),
    refuse("2001:10::/28", "ORCHID (deprecated)"),
    refuse("2001:20::/28", "ORCHIDv2"),
    refuse("2001:30::/28", "drone remote ID entity tags"),
    refuse("2001:db8::/32", "documentation"),
    Special {
        block: "2002::/16",
        name: "6to4",
        rule: Rule::RefuseEmbedded(Embed::SixToFour),
    },
    refuse("2620:4f:8000::/48", "AS112 direct delegation"),
    refuse("3fff::/20", "documentation"),
    refuse("5f00::/16", "segment routing (SRv6) SIDs"),
    refuse("fc00::/7", "unique local (private)"),
    refuse("fe80::/10", "link-local"),
    // IANA IPv6 Address Space and Multicast registries, and deprecated blocks
    refuse("ff00::/8", "multicast"),
    refuse("fec0::/10", "site-local (deprecated)"),
    refuse("::/8", "reserved by IETF"),
    Special {
        block: "::/96",
        name: "IPv4-compatible IPv6 (deprecated)",
        rule: Rule::RefuseEmbedded(Embed::Last32),
    },
    Special {
        block: "::ffff:0:0:0/96",
        name: "IPv4-translated IPv6",
        rule: Rule::RefuseEmbedded(Embed::Last32),
    },
    refuse("fd00:ec2::254/128", "cloud metadata"),
];

/// The table parsed (every entry parses: a unit test goes over each).
static TABLE: LazyLock<Vec<(Network, Special)>> = LazyLock::new(|| {
    SPECIAL
        .iter()
        .filter_map(|s| Some((Network::parse(s.block).ok()?, *s)))
        .collect()
});

/// The most specific block that holds `ip`.
pub fn block_of(ip: IpAddr) -> Option<(Network, Special)> {
    TABLE
        .iter()
        .filter(|(n, _)| n.contains(ip))
        .max_by_key(|(n, _)| n.prefix())
        .copied()
}

/// Why `ip` may not be contacted, if it may not.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    let (_, special) = block_of(ip)?;
    let embedded = |e: Embed| match ip {
        IpAddr::V6(v6) => forbidden(IpAddr::V4(e.extract(v6))),
        IpAddr::V4(_) => None,
    };
    match special.rule {
        Rule::Refuse => Some(special.name),
        Rule::Embedded(e) => embedded(e),
        Rule::RefuseEmbedded(e) => embedded(e).or(Some(special.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first, a middle and the last address of a network.
    fn samples(n: &Network) -> [IpAddr; 3] {
        match n.addr() {
            IpAddr::V4(a) => {
                let host = u32::MAX.checked_shr(u32::from(n.prefix())).unwrap_or(0);
                let first = u32::from(a) & !host;
                [first, first | (host / 2), first | host].map(|x| IpAddr::V4(Ipv4Addr::from(x)))
            }
            IpAddr::V6(a) => {
                let host = u128::MAX.checked_shr(u32::from(n.prefix())).unwrap_or(0);
                let first = u128::from(a) & !host;
                [first, first | (host / 2), first | host].map(|x| IpAddr::V6(Ipv6Addr::from(x)))
            }
        }
    }

    #[test]
    fn every_entry_parses_and_its_addresses_are_refused() {
        assert_eq!(TABLE.len(), SPECIAL.len(), "an entry does not parse");
        for (net, s) in TABLE.iter() {
            for ip in samples(net) {
                match s.rule {
                    Rule::Embedded(_) => {}
                    _ => assert!(forbidden(ip).is_some(), "{ip} in {} ({})", s.block, s.name),
                }
            }
        }
    }

    #[test]
    fn embedded_ipv4_addresses_are_checked_against_the_ipv4_table() {
        let f = |s: &str| forbidden(s.parse().unwrap());
        // the IPv4 address decides: public passes, special is refused by its own block
        assert_eq!(f("::ffff:8.8.8.8"), None);
        assert_eq!(f("::ffff:127.0.0.1"), Some("loopback"));
        assert_eq!(f("64:ff9b::8.8.8.8"), None);
        assert_eq!(f("64:ff9b::169.254.169.254"), Some("cloud metadata"));
        assert_eq!(f("64:ff9b::10.1.2.3"), Some("private"));
        // never a webhook's destination, whatever they carry
        assert_eq!(f("64:ff9b:1::8.8.8.8"), Some("NAT64 local-use"));
        assert_eq!(f("2002:0808:0808::1"), Some("6to4"));
        assert_eq!(f("2002:7f00:0001::1"), Some("loopback"));
        assert_eq!(f("::8.8.8.8"), Some("IPv4-compatible IPv6 (deprecated)"));
        assert_eq!(f("::10.0.0.1"), Some("private"));
        // IPv4-translated (SIIT), the family the old check missed
        assert_eq!(f("::ffff:0:7f00:1"), Some("loopback"));
        assert_eq!(f("::ffff:0:808:808"), Some("IPv4-translated IPv6"));
        assert_eq!(f("2001:0:4136:e378:8000:63bf:3fff:fdd2"), Some("Teredo"));
        assert_eq!(f("5f00::1"), Some("segment routing (SRv6) SIDs"));
        // public addresses pass
        for ok in [
            "8.8.8.8",
            "93.184.216.34",
            "2606:4700::1111",
            "2a00:1450::1",
        ] {
            assert_eq!(f(ok), None, "{ok}");
        }
    }
}
