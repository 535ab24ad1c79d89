//! From observed flows to an allowlist: the smallest `egress-guard.io/allow` value that would
//! have allowed every flow a pod opened (one entry per destination and protocol, contiguous
//! ports merged into ranges, an operator's `@name` where a network holds the flow), with the
//! destinations a reviewer should look at called out. Pure: flows in, suggestions out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{Entry, Proto};

/// The suggestion for one pod.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Suggestion {
    pub namespace: String,
    pub pod: String,
    /// The annotation value.
    pub allow: String,
    /// Distinct flows it covers.
    pub flows: usize,
    pub warnings: Vec<String>,
}

/// Cloud metadata endpoints (IPv4 and the IPv6 one some clouds use).
fn is_metadata(ip: IpAddr) -> bool {
    ip == IpAddr::from([169, 254, 169, 254])
        || ip == IpAddr::from(std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254))
}

/// Addresses that are neither private, shared, link-local, loopback nor documentation: the
/// public internet.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 2)
                || (o[0] == 198 && o[1] == 51 && o[2] == 100)
                || (o[0] == 203 && o[1] == 0 && o[2] == 113))
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

fn proto_of(n: u8) -> Option<Proto> {
    [
        Proto::Tcp,
        Proto::Udp,
        Proto::Sctp,
        Proto::Icmp,
        Proto::Icmpv6,
    ]
    .into_iter()
    .find(|p| p.number() == Some(n))
}

/// Contiguous runs of `ports`, as inclusive ranges.
fn runs(ports: &BTreeSet<u16>) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    for &p in ports {
        match out.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(p) => *hi = p,
            _ => out.push((p, p)),
        }
    }
    out
}

/// The suggestion for one pod's flows. `networks` are the operator's named networks
/// (`--config`); `nodes` the node addresses a reviewer must be warned about.
pub fn suggest_for(
    namespace: &str,
    pod: &str,
    flows: &BTreeSet<(IpAddr, u8, Option<u16>)>,
    networks: &BTreeMap<String, Vec<Entry>>,
    nodes: &[IpAddr],
) -> Suggestion {
    let mut names: BTreeSet<&str> = BTreeSet::new();
    // (destination, protocol) -> ports; protocol 0 = any (no port-bearing protocol we name).
    let mut literal: BTreeMap<(IpAddr, u8), BTreeSet<u16>> = BTreeMap::new();
    let mut warnings: BTreeSet<String> = BTreeSet::new();
    for &(dst, proto, port) in flows {
        if is_metadata(dst) {
            warnings.insert(format!("{dst}: the cloud metadata endpoint (credentials)"));
        } else if nodes.contains(&dst) {
            warnings.insert(format!("{dst}: an address of the node"));
        } else if is_public(dst) {
            warnings.insert(format!("{dst}: a public internet address"));
        }
        if port == Some(53) && matches!(proto, 6 | 17) {
            warnings.insert(format!("{dst}: DNS (names resolved there are not checked)"));
        }
        let named = networks
            .iter()
            .find(|(_, entries)| entries.iter().any(|e| e.allows(dst, proto, port)));
        if let Some((name, _)) = named {
            names.insert(name.as_str());
            continue;
        }
        let key = match proto_of(proto) {
            Some(_) => proto,
            None => {
                warnings.insert(format!(
                    "{dst}: IP protocol {proto} has no name in the grammar: allowed as \"any\""
                ));
                0
            }
        };
        let ports = literal.entry((dst, key)).or_default();
        if let Some(p) = port.filter(|_| proto_of(key).is_some_and(Proto::has_ports)) {
            ports.insert(p);
        }
    }
    let mut entries: Vec<String> = Vec::new();
    for ((dst, proto), ports) in &literal {
        let name = proto_of(*proto).map(Proto::as_str).unwrap_or("any");
        if ports.is_empty() {
            entries.push(format!("{dst} {name}"));
        }
        for (lo, hi) in runs(ports) {
            if lo == hi {
                entries.push(format!("{dst} {name} {lo}"));
            } else {
                entries.push(format!("{dst} {name} {lo}-{hi}"));
            }
        }
    }
    entries.extend(names.iter().map(|n| format!("@{n}")));
    Suggestion {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
        allow: entries.join(", "),
        flows: flows.len(),
        warnings: warnings.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_network_entry;

    fn flows(list: &[(&str, u8, Option<u16>)]) -> BTreeSet<(IpAddr, u8, Option<u16>)> {
        list.iter()
            .map(|(a, p, port)| (a.parse().unwrap(), *p, *port))
            .collect()
    }

    #[test]
    fn merges_ports_names_networks_and_warns() {
        let mut networks = BTreeMap::new();
        networks.insert(
            "dns".to_string(),
            vec![parse_network_entry("10.96.0.10 udp 53").unwrap()],
        );
        let f = flows(&[
            ("10.0.5.1", 6, Some(8443)),
            ("10.0.5.1", 6, Some(8444)),
            ("10.0.5.1", 6, Some(8445)),
            ("10.0.5.1", 6, Some(9000)),
            ("10.0.5.1", 17, Some(8443)),
            ("10.96.0.10", 17, Some(53)),
            ("fd00:5::1", 6, Some(443)),
            ("198.51.100.7", 1, None),
            ("2001:db8::9", 58, None),
            ("169.254.169.254", 6, Some(80)),
            ("8.8.8.8", 47, None),
            ("10.22.0.1", 6, Some(10250)),
        ]);
        let node: IpAddr = "10.22.0.1".parse().unwrap();
        let s = suggest_for("ml", "llm-0", &f, &networks, &[node]);
        assert_eq!(
            s.allow,
            "8.8.8.8 any, 10.0.5.1 tcp 8443-8445, 10.0.5.1 tcp 9000, 10.0.5.1 udp 8443, \
             10.22.0.1 tcp 10250, 169.254.169.254 tcp 80, 198.51.100.7 icmp, \
             2001:db8::9 icmpv6, fd00:5::1 tcp 443, @dns"
        );
        assert_eq!(s.flows, 12);
        let w = s.warnings.join("\n");
        for needle in [
            "169.254.169.254: the cloud metadata endpoint",
            "10.22.0.1: an address of the node",
            "8.8.8.8: a public internet address",
            "8.8.8.8: IP protocol 47",
            "10.96.0.10: DNS",
        ] {
            assert!(w.contains(needle), "{needle}: {w}");
        }
        assert!(
            !w.contains("198.51.100.7"),
            "documentation range is not public: {w}"
        );
        // Every suggested entry parses back and allows every flow.
        let entries: Vec<Entry> = s
            .allow
            .split(", ")
            .filter(|e| !e.starts_with('@'))
            .map(|e| parse_network_entry(e).unwrap())
            .chain(networks["dns"].iter().cloned())
            .collect();
        for (dst, proto, port) in &f {
            assert!(
                entries.iter().any(|e| e.allows(*dst, *proto, *port)),
                "{dst} {proto} {port:?}"
            );
        }
    }
}
