//! The rules that pin who may send on a link table's device: the pod's Ethernet source, untagged
//! IPv4/IPv6/ARP only, its IP sources, ARP and neighbour discovery of exact shape, and the
//! gateway's MAC for everything off-link.

use super::builders::{
    absent, cmp, complement, el, link, lookup, merged, meta_len, net, product, raw, rule, set_of,
    single, th, ETH_HLEN, ETH_SADDR, ETH_TYPE, ICMPV6,
};
use super::podnet::PodNet;
use super::{Base, CmpOp, Dev, Element, Field, Hook, Rule, Selector, Set, Span, Stmt, Verdict, L3};

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
/// Solicited-node multicast groups, ff02::1:ff00:0/104.
const V6_SOLICITED: (u128, u128) = (
    0xff02_0000_0000_0000_0000_0001_ff00_0000,
    0xff02_0000_0000_0000_0000_0001_ffff_ffff,
);
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
    if !v4.is_empty() {
        // ARP: Ethernet/IPv4, request or reply, exact length, sender = the pod (or 0.0.0.0
        // for a probe), target inside the pod's on-link subnets.
        let senders = merged(
            std::iter::once((0, 0))
                .chain(v4.iter().map(|a| (a.value(), a.value())))
                .collect(),
        );
        sets.push(set_of(
            "arp4",
            vec![Field::Ipv4Addr, Field::Ipv4Addr],
            true,
            product(&[senders, onlink4.clone()]),
        ));
        rules.push(rule(vec![
            Stmt::EtherType(dev, L3::Arp),
            side.len(CmpOp::Eq, 28),
            cmp(net(0, 6), CmpOp::Eq, [0, 1, 8, 0, 6, 4]),
            cmp(net(6, 2), CmpOp::Gte, [0, 1]),
            cmp(net(6, 2), CmpOp::Lte, [0, 2]),
            cmp(net(8, 6), CmpOp::Eq, pod.mac.0),
            lookup(
                "arp4",
                vec![
                    raw(Base::Network, 14, Field::Ipv4Addr),
                    raw(Base::Network, 24, Field::Ipv4Addr),
                ],
            ),
            Stmt::Verdict(Verdict::Accept),
        ]));
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
        sets.push(set_of(
            "own4",
            vec![Field::Ipv4Addr],
            false,
            v4.iter().map(|a| el(single(a.value()))).collect(),
        ));
        rules.push(rule(vec![
            Stmt::L3(L3::Ipv4),
            absent("own4", vec![Selector::Ip4Saddr]),
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
        nd_rules(pod, side, &own6, &onlink6, sets, rules);
    }
    if let Some(gw) = pod.gateway_mac {
        // (destination . Ethernet destination): on-link destinations with any MAC (the
        // neighbour's), everything else only through the gateway's MAC.
        for (l3, daddr, set, spans, has) in [
            (
                L3::Ipv4,
                Selector::Ip4Daddr,
                "l2dst4",
                &onlink4,
                !v4.is_empty(),
            ),
            (
                L3::Ipv6,
                Selector::Ip6Daddr,
                "l2dst6",
                &onlink6,
                !v6.is_empty(),
            ),
        ] {
            if !has {
                continue;
            }
            let addr = daddr.field();
            let any_mac = Span::new(0, Field::EtherAddr.max());
            let mut elements: Vec<Element> = spans.iter().map(|s| el(vec![*s, any_mac])).collect();
            elements.extend(
                complement(spans, addr.max())
                    .into_iter()
                    .map(|s| el(vec![s, Span::single(gw.as_u128())])),
            );
            elements.sort();
            sets.push(set_of(set, vec![addr, Field::EtherAddr], true, elements));
            rules.push(rule(vec![
                Stmt::LinkIsEther(dev),
                Stmt::L3(l3),
                absent(set, vec![daddr, Selector::EtherDaddr]),
                drop(),
            ]));
        }
    }
}

/// Neighbour discovery of exact shape, hop limit 255 and no extension header: NS (for
/// duplicate address detection from `::`, else with the pod's MAC as source link-layer
/// option) to a solicited-node group or an on-link/link-local address, for an on-link
/// target; NA only for the pod's own addresses, to all-nodes or on-link/link-local, without
/// or with the pod's MAC as target link-layer option; RS to all-routers with the pod's MAC.
/// Every other RS, RA, NS, NA and redirect is dropped.
fn nd_rules(
    pod: &PodNet,
    side: Side,
    own6: &[u128],
    onlink6: &[Span],
    sets: &mut Vec<Set>,
    rules: &mut Vec<Rule>,
) {
    let type_code = |t: u8| single((t as u128) << 8);
    let own: Vec<Span> = own6.iter().map(|a| Span::single(*a)).collect();
    let mut na_dst = vec![Span::single(V6_ALL_NODES)];
    na_dst.extend(onlink6.iter().copied());
    let mut ns_dst = vec![Span::new(V6_SOLICITED.0, V6_SOLICITED.1)];
    ns_dst.extend(onlink6.iter().copied());
    let any = vec![Span::new(0, u128::MAX)];
    let mac = single(pod.mac.as_u128());

    // 24 bytes of ICMPv6: NS from `::` (DAD for an own address), NA without option.
    let mut short = product(&[
        type_code(ICMP6_NS),
        single(0),
        vec![Span::new(V6_SOLICITED.0, V6_SOLICITED.1)],
        own.clone(),
    ]);
    short.extend(product(&[
        type_code(ICMP6_NA),
        any.clone(),
        na_dst.clone(),
        own.clone(),
    ]));
    short.sort();
    sets.push(set_of(
        "nd6_short",
        vec![
            Field::InetService,
            Field::Ipv6Addr,
            Field::Ipv6Addr,
            Field::Ipv6Addr,
        ],
        true,
        short,
    ));
    // 32 bytes: NS / NA with the link-layer address option.
    let mut long = product(&[
        type_code(ICMP6_NS),
        ns_dst,
        onlink6.to_vec(),
        single(OPT_SOURCE_LL as u128),
        mac.clone(),
    ]);
    long.extend(product(&[
        type_code(ICMP6_NA),
        na_dst,
        own,
        single(OPT_TARGET_LL as u128),
        mac,
    ]));
    long.sort();
    sets.push(set_of(
        "nd6_long",
        vec![
            Field::InetService,
            Field::Ipv6Addr,
            Field::Ipv6Addr,
            Field::InetService,
            Field::EtherAddr,
        ],
        true,
        long,
    ));
    let header = || cmp(net(6, 2), CmpOp::Eq, ND_HEADER);
    // Type and code, source, destination and target address, in `nd6_short`.
    let nd6_short = || {
        lookup(
            "nd6_short",
            vec![
                raw(Base::Transport, 0, Field::InetService),
                Selector::Ip6Saddr,
                Selector::Ip6Daddr,
                raw(Base::Transport, 8, Field::Ipv6Addr),
            ],
        )
    };
    rules.push(rule(vec![
        Stmt::L3(L3::Ipv6),
        side.len(CmpOp::Eq, 40 + 24),
        header(),
        nd6_short(),
        Stmt::Verdict(Verdict::Accept),
    ]));
    rules.push(rule(vec![
        Stmt::L3(L3::Ipv6),
        side.len(CmpOp::Eq, 40 + 32),
        header(),
        lookup(
            "nd6_long",
            vec![
                raw(Base::Transport, 0, Field::InetService),
                Selector::Ip6Daddr,
                raw(Base::Transport, 8, Field::Ipv6Addr),
                raw(Base::Transport, 24, Field::InetService),
                raw(Base::Transport, 26, Field::EtherAddr),
            ],
        ),
        Stmt::Verdict(Verdict::Accept),
    ]));
    // Duplicate address detection as Linux sends it (`enhanced_dad`, RFC 7527): the NS from
    // `::` with a nonce option (type 14, 8 bytes), for an own address.
    rules.push(rule(vec![
        Stmt::L3(L3::Ipv6),
        side.len(CmpOp::Eq, 40 + 32),
        header(),
        cmp(th(0, 2), CmpOp::Eq, [ICMP6_NS, 0]),
        cmp(th(24, 2), CmpOp::Eq, [OPT_NONCE, 1]),
        nd6_short(),
        Stmt::Verdict(Verdict::Accept),
    ]));
    let mut rs_option = OPT_SOURCE_LL.to_be_bytes().to_vec();
    rs_option.extend_from_slice(&pod.mac.0);
    rules.push(rule(vec![
        Stmt::L3(L3::Ipv6),
        side.len(CmpOp::Eq, 40 + 16),
        header(),
        cmp(net(24, 16), CmpOp::Eq, V6_ALL_ROUTERS.to_be_bytes()),
        cmp(th(0, 2), CmpOp::Eq, [ICMP6_RS, 0]),
        cmp(th(4, 4), CmpOp::Eq, [0u8; 4]),
        cmp(th(8, 8), CmpOp::Eq, rs_option),
        Stmt::Verdict(Verdict::Accept),
    ]));
    rules.push(rule(vec![
        Stmt::L3(L3::Ipv6),
        Stmt::L4Proto(ICMPV6),
        Stmt::IcmpTypeRange(ICMP6_RS, ICMP6_REDIRECT),
        Stmt::Verdict(Verdict::Drop),
    ]));
}
