//! The rules that pin who may send on a link table's device: the pod's Ethernet source, untagged
//! IPv4/IPv6/ARP only, its IP sources, ARP and neighbour discovery of exact shape, and the
//! gateway's MAC for everything off-link.

use super::builders::{
    absent, cmp, el, link, lookup, merged, meta_len, net, raw, rule, set_of, single, th, ETH_DADDR,
    ETH_HLEN, ETH_SADDR, ETH_TYPE, ICMPV6,
};
use super::podnet::{IfAddr, PodNet};
use super::{Base, CmpOp, Dev, Field, Hook, Rule, Selector, Set, Span, Stmt, Verdict, L3};

/// Which interface a link table's chains are bound to, which decides the hooks and what the
/// from-pod rules see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// The pod's host-side veth: frames from the pod come in (ingress), frames to it go out.
    HostPeer,
    /// The pod's own interface in its netns: frames from the pod go out (egress, which packet
    /// sockets pass too), frames to it come in.
    PodOwn,
}

impl Side {
    /// The device of a from-pod frame as the from-pod chain sees it.
    pub(super) fn pod_frames(self) -> Dev {
        match self {
            Side::HostPeer => Dev::In,
            Side::PodOwn => Dev::Out,
        }
    }
    /// Hooks of the from-pod and to-pod chains.
    pub(super) fn hooks(self) -> (Hook, Hook) {
        match self {
            Side::HostPeer => (Hook::Ingress, Hook::Egress),
            Side::PodOwn => (Hook::Egress, Hook::Ingress),
        }
    }
    /// `meta length` of a from-pod frame is counted from the network header at ingress and
    /// from the Ethernet header at egress.
    pub(super) fn len(self, op: CmpOp, from_network_header: u32) -> Stmt {
        let l2 = match self {
            Side::HostPeer => 0,
            Side::PodOwn => ETH_HLEN,
        };
        meta_len(op, from_network_header + l2)
    }
}

const V6_LINK_LOCAL: (u128, u128) = (
    0xfe80_0000_0000_0000_0000_0000_0000_0000,
    0xfebf_ffff_ffff_ffff_ffff_ffff_ffff_ffff,
);
/// Solicited-node multicast groups, ff02::1:ff00:0/104: the first 13 bytes.
const SOLICITED_PREFIX: [u8; 13] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff];
/// The single-field interval sets of the pod's on-link subnets.
const ONLINK4: &str = "onlink4";
const ONLINK6: &str = "onlink6";
/// The pod's own IPv4 addresses, when it has more than one.
const OWN4: &str = "own4";
/// Network header offsets of the IPv4 source and destination, and of ARP's sender and
/// target IPv4 addresses.
const IP4_SADDR: u32 = 12;
pub(super) const IP4_DADDR: u32 = 16;
const ARP_SPA: u32 = 14;
const ARP_TPA: u32 = 24;
const V6_ALL_NODES: u128 = 0xff02_0000_0000_0000_0000_0000_0000_0001;
const V6_ALL_ROUTERS: u128 = 0xff02_0000_0000_0000_0000_0000_0000_0002;
const ND_HEADER: [u8; 2] = [ICMPV6, 255];
const ICMP6_RS: u8 = 133;
const ICMP6_NS: u8 = 135;
const ICMP6_NA: u8 = 136;
const ICMP6_REDIRECT: u8 = 137;
const OPT_SOURCE_LL: u16 = 0x0101;
const OPT_TARGET_LL: u16 = 0x0201;
/// The nonce option of enhanced duplicate address detection (RFC 7527).
const OPT_NONCE: u8 = 14;

/// The IPv4 address at network header `offset` as a set key: `ip saddr`/`ip daddr` by name,
/// ARP's addresses as raw loads.
fn ip4_at(offset: u32) -> Selector {
    match offset {
        IP4_SADDR => Selector::Ip4Saddr,
        IP4_DADDR => Selector::Ip4Daddr,
        _ => raw(Base::Network, offset, Field::Ipv4Addr),
    }
}

/// The pod's IPv4 address when it has exactly one: then [`own4`] compares and the set
/// `own4` is not made.
fn one_own4(pod: &PodNet) -> Option<&IfAddr> {
    let mut v4 = pod.v4();
    match (v4.next(), v4.next()) {
        (Some(a), None) => Some(a),
        _ => None,
    }
}

/// "The IPv4 address at network header `offset` is (or with `negate`, is not) one of the
/// pod's own": a compare for a pod with one IPv4 address, else a lookup in `own4`. A set
/// costs ADD's transaction two messages (the set and its element), and next to many guarded
/// pods every message costs the kernel a walk over the node's tables.
pub(super) fn own4(pod: &PodNet, offset: u32, negate: bool) -> Stmt {
    let one = one_own4(pod).map(|a| (a.value() as u32).to_be_bytes().to_vec());
    ip4_in(offset, negate, one, OWN4)
}

/// "The IPv4 address at network header `offset` is (`negate`: is not) in `set`": when the
/// set's content is one byte-aligned prefix (`leading`, its first bytes), a compare of those
/// bytes, and `set` is not made; else a lookup in `set`.
fn ip4_in(offset: u32, negate: bool, leading: Option<Vec<u8>>, set: &str) -> Stmt {
    match leading {
        Some(bytes) => {
            let op = if negate { CmpOp::Neq } else { CmpOp::Eq };
            cmp(net(offset, bytes.len() as u32), op, bytes)
        }
        None => Stmt::Lookup {
            set: set.into(),
            key: vec![ip4_at(offset)],
            negate,
        },
    }
}

/// The first bytes of an IPv4 subnet whose prefix ends on a byte boundary (/8, /16, /24,
/// /32): matching them is matching the subnet. `None` for any other span.
fn byte_prefix4(s: &Span) -> Option<Vec<u8>> {
    let size = s.hi.checked_sub(s.lo)?.checked_add(1)?;
    let bytes = (1..=4u32).find(|k| size == 1u128 << (8 * (4 - k)))?;
    if s.lo % size != 0 || s.hi > u128::from(u32::MAX) {
        return None;
    }
    Some((s.lo as u32).to_be_bytes()[..bytes as usize].to_vec())
}

/// "The IPv4 address at network header `offset` is (`negate`: is not) on-link": for one
/// subnet of a byte-aligned prefix a compare of its first bytes, else a lookup in `onlink4`.
fn on_link4(spans: &[Span], offset: u32, negate: bool) -> Stmt {
    ip4_in(offset, negate, one_byte_prefix4(spans), ONLINK4)
}

/// The leading bytes of the only on-link subnet, when there is one and it is byte-aligned:
/// then [`on_link4`] compares and the set `onlink4` is not made.
fn one_byte_prefix4(spans: &[Span]) -> Option<Vec<u8>> {
    match spans {
        [one] => byte_prefix4(one),
        _ => None,
    }
}

/// The sets and rules that pin the pod's identity: Ethernet source, untagged IPv4/IPv6/ARP
/// only, IP source, ARP and neighbour discovery of exact shape, and (with a known gateway)
/// the gateway as Ethernet destination of everything off-link. Drops in every mode.
pub(super) fn identity(pod: &PodNet, side: Side, sets: &mut Vec<Set>, rules: &mut Vec<Rule>) {
    let drop = || Stmt::Verdict(Verdict::Drop);
    let dev = side.pod_frames();
    let v4: Vec<_> = pod.v4().collect();
    let v6: Vec<_> = pod.v6().collect();
    let onlink4 = merged(v4.iter().map(|a| a.subnet()).collect());
    let mut l6 = v6.iter().map(|a| a.subnet()).collect::<Vec<_>>();
    l6.push(V6_LINK_LOCAL);
    let onlink6 = merged(l6);
    // The pod's own IPv6 addresses: the global ones and its link-local ones.
    let own6: Vec<u128> = v6
        .iter()
        .map(|a| a.value())
        .chain(pod.link_local.iter().map(|a| u128::from(*a)))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();

    rules.push(rule(vec![
        Stmt::LinkIsEther(dev),
        cmp(link(ETH_SADDR, 6), CmpOp::Neq, pod.mac.0),
        drop(),
    ]));
    // The on-link subnets, one single-field interval set per family: ARP targets, neighbour
    // discovery and the Ethernet destination rules below look them up. Single-field interval
    // sets are red-black trees in the kernel, cheap to create; a concatenated interval set
    // (pipapo) allocates and zeroes lookup tables of 2 KiB per key byte when it is filled,
    // which made ADD slow (docs/benchmarks.md).
    if !v4.is_empty() {
        if one_byte_prefix4(&onlink4).is_none() {
            sets.push(set_of(
                ONLINK4,
                vec![Field::Ipv4Addr],
                true,
                onlink4.iter().map(|s| el(vec![*s])).collect(),
            ));
        }
        // ARP: Ethernet/IPv4, request or reply, exact length, sender = the pod (one of its
        // addresses, or 0.0.0.0 for a probe), target inside the pod's on-link subnets.
        let arp = |sender: Stmt| {
            rule(vec![
                Stmt::EtherType(dev, L3::Arp),
                side.len(CmpOp::Eq, 28),
                cmp(net(0, 6), CmpOp::Eq, [0, 1, 8, 0, 6, 4]),
                cmp(net(6, 2), CmpOp::Gte, [0, 1]),
                cmp(net(6, 2), CmpOp::Lte, [0, 2]),
                cmp(net(8, 6), CmpOp::Eq, pod.mac.0),
                sender,
                on_link4(&onlink4, ARP_TPA, false),
                Stmt::Verdict(Verdict::Accept),
            ])
        };
        rules.push(arp(own4(pod, ARP_SPA, false)));
        rules.push(arp(cmp(net(ARP_SPA, 4), CmpOp::Eq, [0u8; 4])));
    }
    if !v6.is_empty() {
        sets.push(set_of(
            ONLINK6,
            vec![Field::Ipv6Addr],
            true,
            onlink6.iter().map(|s| el(vec![*s])).collect(),
        ));
    }
    // Untagged IPv4 and IPv6 only from here on (ARP was decided above): `meta protocol`, which
    // the rules below match on, is the type inside a VLAN tag.
    rules.push(rule(vec![
        Stmt::LinkIsEther(dev),
        cmp(
            link(ETH_TYPE, 2),
            CmpOp::Neq,
            L3::Ipv4.ethertype().to_be_bytes(),
        ),
        cmp(
            link(ETH_TYPE, 2),
            CmpOp::Neq,
            L3::Ipv6.ethertype().to_be_bytes(),
        ),
        drop(),
    ]));
    if dev == Dev::Out {
        // A packet socket sets `meta protocol` (from which the kernel finds the transport
        // header for the rules below) apart from the frame's type: they must agree. The
        // rules below would drop such a frame too (its transport header is never found, and
        // every accept needs one); this keeps that true of any rule added later.
        for l3 in [L3::Ipv4, L3::Ipv6] {
            rules.push(rule(vec![
                Stmt::EtherType(dev, l3),
                Stmt::L3Not(l3),
                drop(),
            ]));
        }
    }
    if v4.is_empty() {
        rules.push(rule(vec![Stmt::L3(L3::Ipv4), drop()]));
    } else {
        if one_own4(pod).is_none() {
            sets.push(set_of(
                OWN4,
                vec![Field::Ipv4Addr],
                false,
                v4.iter().map(|a| el(single(a.value()))).collect(),
            ));
        }
        rules.push(rule(vec![
            Stmt::L3(L3::Ipv4),
            own4(pod, IP4_SADDR, true),
            drop(),
        ]));
    }
    if v6.is_empty() {
        rules.push(rule(vec![Stmt::L3(L3::Ipv6), drop()]));
    } else {
        // `::` is the source of duplicate address detection.
        let mut sources = vec![el(single(0))];
        sources.extend(own6.iter().map(|a| el(single(*a))));
        sets.push(set_of("own6", vec![Field::Ipv6Addr], false, sources));
        rules.push(rule(vec![
            Stmt::L3(L3::Ipv6),
            absent("own6", vec![Selector::Ip6Saddr]),
            drop(),
        ]));
        nd_rules(pod, side, rules);
    }
    if let Some(gw) = pod.gateway_mac {
        // Off-link destinations only through the gateway's MAC; on-link ones with any MAC
        // (the neighbour's): drop what goes to neither.
        for (l3, off_link, has) in [
            (
                L3::Ipv4,
                on_link4(&onlink4, IP4_DADDR, true),
                !v4.is_empty(),
            ),
            (
                L3::Ipv6,
                absent(ONLINK6, vec![Selector::Ip6Daddr]),
                !v6.is_empty(),
            ),
        ] {
            if has {
                rules.push(rule(vec![
                    Stmt::LinkIsEther(dev),
                    Stmt::L3(l3),
                    cmp(link(ETH_DADDR, 6), CmpOp::Neq, gw.0),
                    off_link,
                    drop(),
                ]));
            }
        }
    }
}

/// Neighbour discovery of exact shape, hop limit 255 and no extension header: NS (for
/// duplicate address detection from `::`, else with the pod's MAC as source link-layer
/// option) to a solicited-node group or an on-link/link-local address, for an on-link
/// target; NA only for the pod's own addresses, to all-nodes or on-link/link-local, without
/// or with the pod's MAC as target link-layer option; RS to all-routers with the pod's MAC.
/// Every other RS, RA, NS, NA and redirect is dropped. One rule per message shape and kind
/// of destination, over the `own6` and `onlink6` sets: no concatenated interval set.
fn nd_rules(pod: &PodNet, side: Side, rules: &mut Vec<Rule>) {
    // Every accepted message: IPv6 of exact length, next header ICMPv6, hop limit 255.
    let nd = |icmp_len: u32, type_: u8, mut stmts: Vec<Stmt>| {
        let mut all = vec![
            Stmt::L3(L3::Ipv6),
            side.len(CmpOp::Eq, 40 + icmp_len),
            cmp(net(6, 2), CmpOp::Eq, ND_HEADER),
            cmp(th(0, 2), CmpOp::Eq, [type_, 0]),
        ];
        all.append(&mut stmts);
        all.push(Stmt::Verdict(Verdict::Accept));
        rule(all)
    };
    let solicited = || {
        cmp(
            net(24, SOLICITED_PREFIX.len() as u32),
            CmpOp::Eq,
            SOLICITED_PREFIX,
        )
    };
    let all_nodes = || cmp(net(24, 16), CmpOp::Eq, V6_ALL_NODES.to_be_bytes());
    let onlink_dst = || lookup(ONLINK6, vec![Selector::Ip6Daddr]);
    let target = || raw(Base::Transport, 8, Field::Ipv6Addr);
    // The target is one of the pod's own addresses (`own6` holds `::` too, the source of
    // duplicate address detection, which is no target).
    let own_target = || {
        [
            cmp(th(8, 16), CmpOp::Neq, [0u8; 16]),
            lookup("own6", vec![target()]),
        ]
    };
    // A link-layer address option (type and length, then the pod's MAC).
    let option_bytes = |kind: u16| {
        let mut v = kind.to_be_bytes().to_vec();
        v.extend_from_slice(&pod.mac.0);
        v
    };
    // NS and NA carry it after the 24-byte message.
    let option = |kind: u16| cmp(th(24, 8), CmpOp::Eq, option_bytes(kind));
    let dad = |mut extra: Vec<Stmt>| {
        let mut v = vec![cmp(net(8, 16), CmpOp::Eq, [0u8; 16]), solicited()];
        v.extend(own_target());
        v.append(&mut extra);
        v
    };
    // 24 bytes of ICMPv6: NS from `::` (duplicate address detection for an own address) to
    // its solicited-node group; as Linux sends it (`enhanced_dad`, RFC 7527), with a nonce
    // option (type 14, 8 bytes).
    rules.push(nd(24, ICMP6_NS, dad(vec![])));
    rules.push(nd(
        32,
        ICMP6_NS,
        dad(vec![cmp(th(24, 2), CmpOp::Eq, [OPT_NONCE, 1])]),
    ));
    // NS with the pod's MAC as source link-layer option, for an on-link target, to its
    // solicited-node group or to an on-link/link-local address (unicast NUD).
    for dst in [solicited(), onlink_dst()] {
        rules.push(nd(
            32,
            ICMP6_NS,
            vec![option(OPT_SOURCE_LL), dst, lookup(ONLINK6, vec![target()])],
        ));
    }
    // NA for an own address, to all-nodes or to an on-link/link-local address, without or
    // with the pod's MAC as target link-layer option.
    for dst in [all_nodes(), onlink_dst()] {
        let mut short = vec![dst.clone()];
        short.extend(own_target());
        rules.push(nd(24, ICMP6_NA, short));
        let mut long = vec![option(OPT_TARGET_LL), dst];
        long.extend(own_target());
        rules.push(nd(32, ICMP6_NA, long));
    }
    // RS to all-routers with the pod's MAC as source link-layer option.
    rules.push(nd(
        16,
        ICMP6_RS,
        vec![
            cmp(net(24, 16), CmpOp::Eq, V6_ALL_ROUTERS.to_be_bytes()),
            cmp(th(4, 4), CmpOp::Eq, [0u8; 4]),
            cmp(th(8, 8), CmpOp::Eq, option_bytes(OPT_SOURCE_LL)),
        ],
    ));
    rules.push(rule(vec![
        Stmt::L3(L3::Ipv6),
        Stmt::L4Proto(ICMPV6),
        Stmt::IcmpTypeRange(ICMP6_RS, ICMP6_REDIRECT),
        Stmt::Verdict(Verdict::Drop),
    ]));
}

#[cfg(test)]
mod tests {
    //! Frames of every shape the identity rules decide, run through the compiled from-pod
    //! chain of the example pod (10.22.0.5/24, fd00:22::5/64, fe80::858:aff:fe16:5, MAC
    //! 0a:58:0a:16:00:05, gateway 0a:58:0a:16:00:01). tests/containment.rs sends the attacks
    //! among them (off-link ND of exact shape, forged ARP, off-link frames to a neighbour's
    //! MAC) through the kernel from a guarded pod.
    use std::net::Ipv6Addr;

    use crate::ruleset::compile::fixtures::{enforce, target};
    use crate::ruleset::eval::{run, Packet, CT_NEW};
    use crate::ruleset::{compile, Table, Verdict, L3};

    const POD_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0x16, 0x00, 0x05];
    const GW_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0x16, 0x00, 0x01];
    const NEIGHBOUR_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0x16, 0x00, 0x07];
    const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];

    fn table() -> Table {
        let mut p = enforce();
        p.entries = ["10.0.5.0/24 tcp 8443", "fd00:5::/64 tcp 8443"]
            .into_iter()
            .map(|e| crate::policy::parse_network_entry(e).expect("entry"))
            .collect();
        compile(&p, &target("c1", "eth0")).expect("table")
    }

    fn frame(
        dst: [u8; 6],
        ethertype: u16,
        network: Vec<u8>,
        l3: L3,
        l4: u8,
        thoff: usize,
    ) -> Packet {
        let mut link = [0u8; 14];
        link[..6].copy_from_slice(&dst);
        link[6..12].copy_from_slice(&POD_MAC);
        link[12..].copy_from_slice(&ethertype.to_be_bytes());
        Packet {
            link: Some(link),
            network,
            l3,
            l4proto: l4,
            thoff,
            oifname: String::new(),
            ct_state: CT_NEW,
        }
    }

    fn a6(s: &str) -> [u8; 16] {
        s.parse::<Ipv6Addr>().expect("address").octets()
    }

    fn v6(src: &str, dst: &str, next: u8, hops: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.extend_from_slice(&[next, hops]);
        h.extend_from_slice(&a6(src));
        h.extend_from_slice(&a6(dst));
        h.extend_from_slice(payload);
        h
    }

    /// An NS or NA (`kind`), for `target`, with an optional 8-byte option.
    fn nd(kind: u8, flags: u8, target: &str, option: Option<[u8; 8]>) -> Vec<u8> {
        let mut m = vec![kind, 0, 0xab, 0xcd, flags, 0, 0, 0];
        m.extend_from_slice(&a6(target));
        if let Some(o) = option {
            m.extend_from_slice(&o);
        }
        m
    }

    fn lladdr(kind: u8, mac: [u8; 6]) -> Option<[u8; 8]> {
        let mut o = [kind, 1, 0, 0, 0, 0, 0, 0];
        o[2..].copy_from_slice(&mac);
        Some(o)
    }

    fn icmp6(src: &str, dst: &str, hops: u8, icmp: Vec<u8>) -> Packet {
        frame(
            [0x33, 0x33, 0, 0, 0, 1],
            0x86dd,
            v6(src, dst, 58, hops, &icmp),
            L3::Ipv6,
            58,
            40,
        )
    }

    fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4], extra: usize) -> Packet {
        let mut a = vec![0, 1, 8, 0, 6, 4];
        a.extend_from_slice(&op.to_be_bytes());
        a.extend_from_slice(&sha);
        a.extend_from_slice(&spa);
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&tpa);
        a.resize(28 + extra, 0);
        frame([0xff; 6], 0x0806, a, L3::Arp, 0, 28)
    }

    fn tcp4(dst_mac: [u8; 6], dst: [u8; 4], dport: u16) -> Packet {
        let mut n = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 22, 0, 5];
        n.extend_from_slice(&dst);
        n.extend_from_slice(&40000u16.to_be_bytes());
        n.extend_from_slice(&dport.to_be_bytes());
        n.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        frame(dst_mac, 0x0800, n, L3::Ipv4, 6, 20)
    }

    fn tcp6(dst_mac: [u8; 6], dst: &str, dport: u16) -> Packet {
        let mut t = 40000u16.to_be_bytes().to_vec();
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        frame(
            dst_mac,
            0x86dd,
            v6("fd00:22::5", dst, 6, 64, &t),
            L3::Ipv6,
            6,
            40,
        )
    }

    fn verdict(t: &Table, p: &Packet) -> Verdict {
        run(t, &t.chains[0], p).verdict
    }

    #[test]
    fn neighbour_discovery_of_exact_shape_passes_and_nothing_else() {
        let t = table();
        let own = "fd00:22::5";
        let ll = "fe80::858:aff:fe16:5";
        let nonce = Some([14, 1, 1, 2, 3, 4, 5, 6]);
        let pass = [
            (
                "DAD",
                icmp6("::", "ff02::1:ff00:5", 255, nd(135, 0, own, None)),
            ),
            (
                "DAD with a nonce",
                icmp6("::", "ff02::1:ff00:5", 255, nd(135, 0, own, nonce)),
            ),
            (
                "DAD of the link-local address",
                icmp6("::", "ff02::1:ff16:5", 255, nd(135, 0, ll, None)),
            ),
            (
                "NS for the gateway",
                icmp6(
                    own,
                    "ff02::1:ff00:1",
                    255,
                    nd(135, 0, "fd00:22::1", lladdr(1, POD_MAC)),
                ),
            ),
            (
                "unicast NUD",
                icmp6(
                    ll,
                    "fe80::1",
                    255,
                    nd(135, 0, "fe80::1", lladdr(1, POD_MAC)),
                ),
            ),
            (
                "unsolicited NA",
                icmp6(own, "ff02::1", 255, nd(136, 0x20, own, None)),
            ),
            (
                "unsolicited NA with the option",
                icmp6(own, "ff02::1", 255, nd(136, 0x20, own, lladdr(2, POD_MAC))),
            ),
            (
                "solicited NA to the gateway",
                icmp6(ll, "fe80::1", 255, nd(136, 0x60, ll, lladdr(2, POD_MAC))),
            ),
            (
                "NA to an on-link neighbour",
                icmp6(own, "fd00:22::7", 255, nd(136, 0x40, own, None)),
            ),
            ("RS", {
                let mut rs = vec![133, 0, 0, 0, 0, 0, 0, 0];
                rs.extend_from_slice(&lladdr(1, POD_MAC).expect("option"));
                icmp6(ll, "ff02::2", 255, rs)
            }),
        ];
        for (what, p) in pass {
            assert_eq!(verdict(&t, &p), Verdict::Accept, "{what}");
        }
        let blocked = [
            (
                "NA for a neighbour's address",
                icmp6(
                    own,
                    "ff02::1",
                    255,
                    nd(136, 0x20, "fd00:22::7", lladdr(2, POD_MAC)),
                ),
            ),
            (
                "NA for ::",
                icmp6(own, "ff02::1", 255, nd(136, 0x20, "::", None)),
            ),
            (
                "NA to an internet address",
                icmp6(
                    own,
                    "2001:db8::1",
                    255,
                    nd(136, 0x20, own, lladdr(2, POD_MAC)),
                ),
            ),
            (
                "NA to a solicited-node group",
                icmp6(own, "ff02::1:ff00:1", 255, nd(136, 0x20, own, None)),
            ),
            (
                "NA with another MAC",
                icmp6(
                    own,
                    "ff02::1",
                    255,
                    nd(136, 0x20, own, lladdr(2, OTHER_MAC)),
                ),
            ),
            (
                "NA with hop limit 64",
                icmp6(own, "ff02::1", 64, nd(136, 0x20, own, None)),
            ),
            (
                "NS for an off-link target",
                icmp6(
                    own,
                    "ff02::1:ff00:1",
                    255,
                    nd(135, 0, "2001:db8::1", lladdr(1, POD_MAC)),
                ),
            ),
            (
                "NS to an internet address",
                icmp6(
                    own,
                    "2001:db8::1",
                    255,
                    nd(135, 0, "fd00:22::1", lladdr(1, POD_MAC)),
                ),
            ),
            (
                "NS to all-nodes",
                icmp6(
                    own,
                    "ff02::1",
                    255,
                    nd(135, 0, "fd00:22::1", lladdr(1, POD_MAC)),
                ),
            ),
            (
                "NS with another MAC",
                icmp6(
                    own,
                    "ff02::1:ff00:1",
                    255,
                    nd(135, 0, "fd00:22::1", lladdr(1, OTHER_MAC)),
                ),
            ),
            (
                "NS without the option from an address",
                icmp6(own, "ff02::1:ff00:1", 255, nd(135, 0, "fd00:22::1", None)),
            ),
            (
                "DAD to a unicast address",
                icmp6("::", "fd00:22::7", 255, nd(135, 0, own, None)),
            ),
            (
                "DAD for a neighbour's address",
                icmp6("::", "ff02::1:ff00:7", 255, nd(135, 0, "fd00:22::7", None)),
            ),
            (
                "DAD with hop limit 64",
                icmp6("::", "ff02::1:ff00:5", 64, nd(135, 0, own, None)),
            ),
            ("NS with trailing data", {
                let mut m = nd(135, 0, "fd00:22::1", lladdr(1, POD_MAC));
                m.extend_from_slice(&[0; 8]);
                icmp6(own, "ff02::1:ff00:1", 255, m)
            }),
            ("RS to all-nodes", {
                let mut rs = vec![133, 0, 0, 0, 0, 0, 0, 0];
                rs.extend_from_slice(&lladdr(1, POD_MAC).expect("option"));
                icmp6(ll, "ff02::1", 255, rs)
            }),
            (
                "RA",
                icmp6(
                    ll,
                    "ff02::1",
                    255,
                    vec![134, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ),
            ),
            (
                "redirect",
                icmp6(ll, "fe80::7", 255, nd(137, 0, "fd00:22::7", None)),
            ),
        ];
        for (what, p) in blocked {
            assert_eq!(verdict(&t, &p), Verdict::Drop, "{what}");
        }
    }

    #[test]
    fn arp_of_exact_shape_from_the_pod_passes_and_nothing_else() {
        let t = table();
        let (own, gw) = ([10, 22, 0, 5], [10, 22, 0, 1]);
        for (what, p) in [
            ("request for the gateway", arp(1, POD_MAC, own, gw, 0)),
            ("reply", arp(2, POD_MAC, own, [10, 22, 0, 7], 0)),
            ("probe", arp(1, POD_MAC, [0; 4], own, 0)),
        ] {
            assert_eq!(verdict(&t, &p), Verdict::Accept, "{what}");
        }
        for (what, p) in [
            (
                "a neighbour's address as sender",
                arp(2, POD_MAC, [10, 22, 0, 7], gw, 0),
            ),
            ("another MAC as sender", arp(2, OTHER_MAC, own, gw, 0)),
            (
                "an off-link target",
                arp(1, POD_MAC, own, [10, 99, 0, 1], 0),
            ),
            ("trailing data", arp(1, POD_MAC, own, gw, 18)),
            ("operation 3", arp(3, POD_MAC, own, gw, 0)),
        ] {
            assert_eq!(verdict(&t, &p), Verdict::Drop, "{what}");
        }
    }

    /// A TCP SYN to the orchestrator from `src`, through the gateway's MAC.
    fn tcp4_from(src: [u8; 4]) -> Packet {
        let mut p = tcp4(GW_MAC, [10, 0, 5, 9], 8443);
        p.network[12..16].copy_from_slice(&src);
        p
    }

    /// The example pod's one IPv4 address and its /24 are compares; with a second address on
    /// a /20 the pod gets the sets `own4` and `onlink4`. Both forms decide alike.
    #[test]
    fn own_and_on_link_ipv4_decide_alike_as_compares_and_as_sets() {
        let compared = table();
        let has = |t: &Table, n: &str| t.sets.iter().any(|s| s.name == n);
        assert!(!has(&compared, "own4") && !has(&compared, "onlink4"));
        let mut p = enforce();
        p.entries =
            vec![crate::policy::parse_network_entry("10.0.5.0/24 tcp 8443").expect("entry")];
        let mut two = target("c1", "eth0");
        if let crate::ruleset::Attach::Host { pod, .. } = &mut two.attach {
            pod.addrs.push("10.30.16.9/20".parse().expect("address"));
        }
        let sets = compile(&p, &two).expect("table");
        assert!(has(&sets, "own4") && has(&sets, "onlink4"));
        let (own, gw) = ([10, 22, 0, 5], [10, 22, 0, 1]);
        for (what, pkt, v) in [
            (
                "ARP for the gateway",
                arp(1, POD_MAC, own, gw, 0),
                Verdict::Accept,
            ),
            (
                "ARP probe",
                arp(1, POD_MAC, [0; 4], own, 0),
                Verdict::Accept,
            ),
            (
                "ARP from a neighbour's address",
                arp(2, POD_MAC, [10, 22, 0, 7], gw, 0),
                Verdict::Drop,
            ),
            (
                "ARP for an off-link target",
                arp(1, POD_MAC, own, [10, 99, 0, 1], 0),
                Verdict::Drop,
            ),
            ("TCP from the pod", tcp4_from(own), Verdict::Accept),
            (
                "TCP from a neighbour's address",
                tcp4_from([10, 22, 0, 7]),
                Verdict::Drop,
            ),
            (
                "TCP on-link to a neighbour's MAC",
                tcp4(NEIGHBOUR_MAC, [10, 22, 0, 7], 8443),
                Verdict::Drop,
            ),
            (
                "TCP off-link to a neighbour's MAC",
                tcp4(NEIGHBOUR_MAC, [10, 0, 5, 9], 8443),
                Verdict::Drop,
            ),
        ] {
            assert_eq!(verdict(&compared, &pkt), v, "{what}, compares");
            assert_eq!(verdict(&sets, &pkt), v, "{what}, sets");
        }
        // The second address and its subnet are the second pod's only.
        let second = [10, 30, 16, 9];
        let arp2 = arp(1, POD_MAC, second, [10, 30, 31, 254], 0);
        assert_eq!(verdict(&sets, &arp2), Verdict::Accept);
        assert_eq!(verdict(&compared, &arp2), Verdict::Drop);
        assert_eq!(verdict(&sets, &tcp4_from(second)), Verdict::Accept);
        assert_eq!(verdict(&compared, &tcp4_from(second)), Verdict::Drop);
    }

    #[test]
    fn byte_aligned_subnets_are_prefixes_and_others_are_not() {
        let span = |s: &str| {
            let a: crate::ruleset::IfAddr = s.parse().expect("address");
            let (lo, hi) = a.subnet();
            super::Span::new(lo, hi)
        };
        assert_eq!(
            super::byte_prefix4(&span("10.22.0.5/24")),
            Some(vec![10, 22, 0])
        );
        assert_eq!(
            super::byte_prefix4(&span("10.22.0.5/16")),
            Some(vec![10, 22])
        );
        assert_eq!(super::byte_prefix4(&span("10.22.0.5/8")), Some(vec![10]));
        assert_eq!(
            super::byte_prefix4(&span("10.22.0.5/32")),
            Some(vec![10, 22, 0, 5])
        );
        for other in [
            "10.22.0.5/20",
            "10.22.0.5/31",
            "10.22.0.5/0",
            "10.22.0.5/25",
        ] {
            assert_eq!(super::byte_prefix4(&span(other)), None, "{other}");
        }
        // Two spans, even byte-aligned ones, need the set.
        assert_eq!(
            super::one_byte_prefix4(&[span("10.22.0.5/24"), span("10.23.0.5/24")]),
            None
        );
    }

    #[test]
    fn off_link_traffic_goes_only_through_the_gateways_mac() {
        let t = table();
        let orch4 = [10, 0, 5, 9];
        assert_eq!(verdict(&t, &tcp4(GW_MAC, orch4, 8443)), Verdict::Accept);
        assert_eq!(
            verdict(&t, &tcp4(NEIGHBOUR_MAC, orch4, 8443)),
            Verdict::Drop
        );
        assert_eq!(
            verdict(&t, &tcp6(GW_MAC, "fd00:5::9", 8443)),
            Verdict::Accept
        );
        assert_eq!(
            verdict(&t, &tcp6(NEIGHBOUR_MAC, "fd00:5::9", 8443)),
            Verdict::Drop
        );
        // On-link, any MAC gets past the pin (the allowlist then decides: nothing on-link is
        // allowlisted here, so the rule that dropped it is the policy, not the pin).
        let outcome = run(&t, &t.chains[0], &tcp4(NEIGHBOUR_MAC, [10, 22, 0, 7], 8443));
        assert_eq!(outcome.verdict, Verdict::Drop);
        assert_eq!(outcome.rule, None);
        let pinned = run(&t, &t.chains[0], &tcp4(NEIGHBOUR_MAC, orch4, 8443));
        assert!(pinned.rule.is_some());
    }
}
