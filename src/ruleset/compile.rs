//! Policy -> Table. Deterministic and free of I/O: the same policy and target always give the
//! same table, which is what CHECK compares the kernel against.

use super::intervals::{disjoint_boxes, Box2};
use super::logprefix::{self, Logged};
use super::podnet::PodNet;
use super::{
    Base, Chain, CmpOp, Dev, Element, Family, Field, Hook, Load, Rate, Rule, Selector, Set, Span,
    Stmt, Table, Verdict, L3,
};
use crate::policy::{Entry, Mode, Policy};

/// Every table egress-guard creates starts with this; nothing else is ever touched.
pub const TABLE_PREFIX: &str = "egress_guard_";
/// Idle timeout of tracked replies (refreshed by every packet sent to the pod).
pub const REPLY_TIMEOUT_SECS: u32 = 300;
/// Maximum tracked flows per pod and family.
pub const REPLY_SET_SIZE: u32 = 65536;
const LOG_RATE_PER_SECOND: u64 = 10;
const LOG_BURST: u32 = 20;

/// Where the ruleset lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// netdev table in the host netns bound to the pod's host-side veth.
    Host,
    /// A table inside the pod's netns (removable by CAP_NET_ADMIN in the pod).
    Pod,
}

impl Placement {
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Host => "host",
            Placement::Pod => "pod",
        }
    }
}

/// What the ruleset is for: the attachment and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub container_id: String,
    /// The pod-side interface (CNI_IFNAME); part of the table name unless it is `eth0`.
    pub ifname: String,
    pub attach: Attach,
    pub log_group: u16,
}

/// Where exactly the ruleset attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attach {
    /// Host netns, chains bound to this host-side interface; `pod` is who may send on it.
    Host { device: String, pod: PodNet },
    /// Pod netns, netdev chains bound to the pod's own interface `device` (its egress hook
    /// sees packet-socket frames too); `pod` is who may send on it.
    PodLink { device: String, pod: PodNet },
    /// Pod netns, inet output and forward chains: kernels without the netdev egress hook.
    Pod,
}

impl Attach {
    pub fn placement(&self) -> Placement {
        match self {
            Attach::Host { .. } => Placement::Host,
            Attach::PodLink { .. } | Attach::Pod => Placement::Pod,
        }
    }
    pub fn family(&self) -> Family {
        match self {
            Attach::Host { .. } | Attach::PodLink { .. } => Family::Netdev,
            Attach::Pod => Family::Inet,
        }
    }
    /// Who may send on the attachment, where the table pins it.
    pub fn pod_net(&self) -> Option<&PodNet> {
        match self {
            Attach::Host { pod, .. } | Attach::PodLink { pod, .. } => Some(pod),
            Attach::Pod => None,
        }
    }
}

impl Target {
    pub fn placement(&self) -> Placement {
        self.attach.placement()
    }
}

/// Longest container ID a table's comment carries in full (the kernel keeps at most 256 bytes
/// of comment; CNI allows IDs of 200 characters).
const COMMENT_ID_MAX: usize = 100;

/// The table of one attachment: `egress_guard_` and 16 hex digits of the SHA-256 of the
/// container ID and interface name (`eth0` when none is given), 29 characters whatever the
/// ID's length. The kernel measures every table's name on every message of every nf_tables
/// batch while it looks a table up, so on a node full of guarded pods short names keep ADD
/// fast (docs/benchmarks.md, section 1b). The container ID and interface are in the table's
/// comment (`id=`, `if=`); another interface of the same container (a Multus secondary
/// network chained with egress-guard too) gets its own table, so neither replaces the other.
pub fn table_name(container_id: &str, ifname: &str) -> String {
    use sha2::{Digest, Sha256};
    let ifname = if ifname.is_empty() { "eth0" } else { ifname };
    let digest = Sha256::new()
        .chain_update(container_id.as_bytes())
        .chain_update([0u8])
        .chain_update(ifname.as_bytes())
        .finalize();
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    format!("{TABLE_PREFIX}{:016x}", u64::from_be_bytes(head))
}

/// The name releases before the hashed names gave the same attachment: `egress_guard_<id>`,
/// or `egress_guard_<id>_<ifname>` for an interface other than `eth0`. DEL, CHECK and GC
/// still find tables of pods added by such a release, so that an upgrade of the node's
/// plugin neither orphans nor unguards running pods.
pub fn legacy_table_name(container_id: &str, ifname: &str) -> String {
    if ifname == "eth0" || ifname.is_empty() {
        format!("{TABLE_PREFIX}{container_id}")
    } else {
        format!("{TABLE_PREFIX}{container_id}_{ifname}")
    }
}

/// The attachment in a table name of a release that named tables after the container ID
/// (`<id>` or `<id>_<ifname>`), the inverse of `legacy_table_name`; `None` for a hashed name
/// (16 hex digits), which names no container, and for names not ours.
pub fn legacy_container(table: &str) -> Option<&str> {
    let rest = table.strip_prefix(TABLE_PREFIX)?;
    let hashed = rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_hexdigit());
    (!hashed && !rest.is_empty()).then_some(rest)
}

/// The container ID a table's comment names (`id=`); `None` for tables of older releases and
/// for IDs too long to keep in a comment.
pub fn comment_container(comment: &str) -> Option<&str> {
    comment
        .split_whitespace()
        .find_map(|w| w.strip_prefix("id="))
}

/// `table` as a release before the hashed names installed it under `recorded`: that name, and
/// a comment without `id=` and `if=`. A table whose name is already `recorded` is unchanged.
pub fn as_recorded(mut table: Table, recorded: &str) -> Table {
    if table.name != recorded {
        table.name = recorded.to_string();
        table.comment = table
            .comment
            .split_whitespace()
            .filter(|w| !w.starts_with("id=") && !w.starts_with("if="))
            .collect::<Vec<_>>()
            .join(" ");
    }
    table
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
/// Neighbour discovery the pod needs to reach its gateway: RS, NS, NA (not RA, 134).
const ND_TYPES: [u8; 3] = [133, 135, 136];

/// Transport protocols whose replies are tracked by ports.
const PORT_PROTOCOLS: [u8; 3] = [TCP, UDP, SCTP];

/// A one-byte field a rule can match against a list of values.
#[derive(Debug, Clone, Copy)]
enum Byte {
    L4Proto,
    IcmpType,
}

impl Byte {
    fn equals(self, v: u8) -> Stmt {
        match self {
            Byte::L4Proto => Stmt::L4Proto(v),
            Byte::IcmpType => Stmt::IcmpType(v),
        }
    }
    fn within(self, lo: u8, hi: u8) -> Stmt {
        match self {
            Byte::L4Proto => Stmt::L4ProtoRange(lo, hi),
            Byte::IcmpType => Stmt::IcmpTypeRange(lo, hi),
        }
    }
    fn outside(self, lo: u8, hi: u8) -> Stmt {
        match self {
            Byte::L4Proto => Stmt::L4ProtoNot(lo, hi),
            Byte::IcmpType => Stmt::IcmpTypeNot(lo, hi),
        }
    }
}

/// "The field is one of `values`" (ascending, distinct) as the matches of a single rule: the
/// span from the smallest to the largest value, then a "not" for every gap inside it, as in
/// `icmp type 0-12 icmp type != 1-2 icmp type != 4-10`. One rule, not one per run of values:
/// every rule is a message of ADD's transaction, and on a node full of guarded pods each
/// message costs the kernel a walk over every table (docs/benchmarks.md).
fn one_of(byte: Byte, values: &[u8]) -> Vec<Stmt> {
    let (Some(&lo), Some(&hi)) = (values.first(), values.last()) else {
        // Nothing to match: a match no packet passes (never reached with the constants here).
        return vec![byte.outside(0, u8::MAX)];
    };
    let mut out = vec![if lo == hi {
        byte.equals(lo)
    } else {
        byte.within(lo, hi)
    }];
    for pair in values.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b > a.saturating_add(1) {
            out.push(byte.outside(a + 1, b - 1));
        }
    }
    out
}

fn rule(stmts: Vec<Stmt>) -> Rule {
    Rule { stmts }
}

fn addr_span(e: &Entry) -> Span {
    let (lo, hi) = e.cidr.range();
    Span::new(lo, hi)
}

/// Builds the two allowlist sets of one family: (addr . proto) and (addr . proto . port).
fn allow_sets(entries: &[Entry], v4: bool) -> (Set, Set) {
    let (addr, tag) = if v4 {
        (Field::Ipv4Addr, "4")
    } else {
        (Field::Ipv6Addr, "6")
    };
    let fam: Vec<&Entry> = entries.iter().filter(|e| e.cidr.is_v4() == v4).collect();
    let l4_boxes: Vec<Box2> = fam
        .iter()
        .filter(|e| e.ports.is_none())
        .map(|e| Box2 {
            a: addr_span(e),
            b: match e.proto.number() {
                Some(n) => Span::single(n as u128),
                None => Span::new(0, 255),
            },
        })
        .collect();
    let l4_elements = disjoint_boxes(&l4_boxes)
        .into_iter()
        .map(|b| Element {
            spans: vec![b.a, b.b],
        })
        .collect();
    let mut port_elements = Vec::new();
    for proto in [TCP, UDP, SCTP] {
        let boxes: Vec<Box2> = fam
            .iter()
            .filter(|e| e.proto.number() == Some(proto))
            .filter_map(|e| {
                e.ports.map(|(lo, hi)| Box2 {
                    a: addr_span(e),
                    b: Span::new(lo as u128, hi as u128),
                })
            })
            .collect();
        port_elements.extend(disjoint_boxes(&boxes).into_iter().map(|b| Element {
            spans: vec![b.a, Span::single(proto as u128), b.b],
        }));
    }
    port_elements.sort();
    let set = |name: String, fields: Vec<Field>, elements: Vec<Element>| Set {
        name,
        fields,
        interval: true,
        dynamic: false,
        timeout_secs: None,
        size: None,
        elements,
    };
    (
        set(
            format!("allow{tag}_l4"),
            vec![addr, Field::InetProto],
            l4_elements,
        ),
        set(
            format!("allow{tag}_port"),
            vec![addr, Field::InetProto, Field::InetService],
            port_elements,
        ),
    )
}

/// Rules accepting allowlisted destinations (only for non-empty sets).
fn allow_rules(sets: &[Set], v4: bool) -> Vec<Rule> {
    let (l3, daddr) = if v4 {
        (L3::Ipv4, Selector::Ip4Daddr)
    } else {
        (L3::Ipv6, Selector::Ip6Daddr)
    };
    sets.iter()
        .filter(|s| !s.dynamic && !s.elements.is_empty() && (s.fields[0] == Field::Ipv4Addr) == v4)
        .map(|s| {
            let mut key = vec![daddr, Selector::L4Proto];
            if s.fields.len() == 3 {
                key.push(Selector::ThDport);
            }
            rule(vec![
                Stmt::L3(l3),
                Stmt::Lookup {
                    set: s.name.clone(),
                    key,
                    negate: false,
                },
                Stmt::Verdict(Verdict::Accept),
            ])
        })
        .collect()
}

/// Neighbour discovery: ICMPv6 RS, NS and NA, in one rule.
fn nd_rule() -> Rule {
    let mut stmts = vec![Stmt::L3(L3::Ipv6), Stmt::L4Proto(ICMPV6)];
    stmts.extend(one_of(Byte::IcmpType, &ND_TYPES));
    stmts.push(Stmt::Verdict(Verdict::Accept));
    rule(stmts)
}

/// The closing rule: count what is not allowed, log it (rate-limited); the chain's policy,
/// returned beside it, is the verdict. One rule: the counter is passed by every packet, the
/// limit stops the rule for packets over the rate, the policy then applies to all of them.
fn closing_rule(mode: Mode, container_id: &str, group: u16) -> (Rule, Verdict) {
    let (logged, verdict) = match mode {
        Mode::Audit => (Logged::Audit, Verdict::Accept),
        _ => (Logged::Deny, Verdict::Drop),
    };
    let closing = rule(vec![
        Stmt::Counter,
        Stmt::Limit {
            per_second: LOG_RATE_PER_SECOND,
            burst: LOG_BURST,
        },
        Stmt::Log {
            prefix: logprefix::format(logged, container_id),
            group,
        },
    ]);
    (closing, verdict)
}

/// The devices a host table's comment (written by `comment`) names as its chains' device, in
/// order; ours name exactly one.
pub fn comment_devices(comment: &str) -> impl Iterator<Item = &str> {
    comment
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("dev="))
}

fn comment(policy: &Policy, target: &Target) -> String {
    let mut c = match &target.attach {
        Attach::Host { device: dev, .. } => format!(
            "egress-guard dev={dev} mode={} policy={}",
            policy.mode,
            policy.digest()
        ),
        _ => format!(
            "egress-guard placement={} mode={} policy={}",
            target.placement().as_str(),
            policy.mode,
            policy.digest()
        ),
    };
    if target.container_id.len() <= COMMENT_ID_MAX {
        let ifname = match target.ifname.as_str() {
            "" => "eth0",
            other => other,
        };
        c.push_str(&format!(" id={} if={ifname}", target.container_id));
    }
    c
}

/// How long a flow the pod has not answered yet may wait for its first answer.
pub const PENDING_TIMEOUT_SECS: u32 = 10;
/// New inbound flows one source may open per second (and burst) before further new flows
/// from it are not recorded: one peer cannot fill the pod's table of flows to answer.
const NEW_FLOWS_PER_SOURCE: Rate = Rate {
    per_second: 1000,
    burst: 1000,
};
/// ICMP errors the pod may send (to peers that sent it traffic), per second and burst.
const ICMP_ERROR_RATE: Rate = Rate {
    per_second: 20,
    burst: 20,
};
/// Largest ICMP error the pod may send, from the network header on (RFC 1812 / RFC 4443).
const ICMP4_ERROR_MAX: u32 = 576;
const ICMP6_ERROR_MAX: u32 = 1280;
const ICMP4_ERROR_TYPES: [u8; 3] = [3, 11, 12];
const ICMP6_ERROR_TYPES: [u8; 4] = [1, 2, 3, 4];

/// Which interface a link table's chains are bound to, which decides the hooks and what the
/// from-pod rules see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The pod's host-side veth: frames from the pod come in (ingress), frames to it go out.
    HostPeer,
    /// The pod's own interface in its netns: frames from the pod go out (egress, which packet
    /// sockets pass too), frames to it come in.
    PodOwn,
}

impl Side {
    /// The device of a from-pod frame as the from-pod chain sees it.
    fn pod_frames(self) -> Dev {
        match self {
            Side::HostPeer => Dev::In,
            Side::PodOwn => Dev::Out,
        }
    }
    /// Hooks of the from-pod and to-pod chains.
    fn hooks(self) -> (Hook, Hook) {
        match self {
            Side::HostPeer => (Hook::Ingress, Hook::Egress),
            Side::PodOwn => (Hook::Egress, Hook::Ingress),
        }
    }
    /// `meta length` of a from-pod frame is counted from the network header at ingress and
    /// from the Ethernet header at egress.
    fn len(self, op: CmpOp, from_network_header: u32) -> Stmt {
        let l2 = match self {
            Side::HostPeer => 0,
            Side::PodOwn => ETH_HLEN,
        };
        meta_len(op, from_network_header + l2)
    }
}

const ETH_HLEN: u32 = 14;
const ETH_DADDR: u32 = 0;
const ETH_SADDR: u32 = 6;
const ETH_TYPE: u32 = 12;

fn link(offset: u32, len: u32) -> Load {
    Load::Payload {
        base: Base::Link,
        offset,
        len,
    }
}

fn net(offset: u32, len: u32) -> Load {
    Load::Payload {
        base: Base::Network,
        offset,
        len,
    }
}

fn th(offset: u32, len: u32) -> Load {
    Load::Payload {
        base: Base::Transport,
        offset,
        len,
    }
}

fn cmp(load: Load, op: CmpOp, value: impl Into<Vec<u8>>) -> Stmt {
    Stmt::Cmp {
        load,
        op,
        value: value.into(),
    }
}

fn meta_len(op: CmpOp, n: u32) -> Stmt {
    cmp(Load::MetaLen, op, n.to_be_bytes())
}

fn raw(base: Base, offset: u32, field: Field) -> Selector {
    Selector::Raw {
        base,
        offset,
        field,
    }
}

fn lookup(set: &str, key: Vec<Selector>) -> Stmt {
    Stmt::Lookup {
        set: set.into(),
        key,
        negate: false,
    }
}

fn absent(set: &str, key: Vec<Selector>) -> Stmt {
    Stmt::Lookup {
        set: set.into(),
        key,
        negate: true,
    }
}

fn update(set: &str, key: Vec<Selector>) -> Stmt {
    Stmt::Update {
        set: set.into(),
        key,
        limit: None,
    }
}

fn set_of(name: &str, fields: Vec<Field>, interval: bool, elements: Vec<Element>) -> Set {
    Set {
        name: name.into(),
        fields,
        interval,
        dynamic: false,
        timeout_secs: None,
        size: None,
        elements,
    }
}

fn el(spans: Vec<Span>) -> Element {
    Element { spans }
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

/// Disjoint, sorted spans (an interval set must not hold overlapping elements).
fn merged(mut spans: Vec<(u128, u128)>) -> Vec<Span> {
    spans.sort();
    let mut out: Vec<Span> = Vec::new();
    for (lo, hi) in spans {
        match out.last_mut() {
            Some(last) if lo <= last.hi.saturating_add(1) => last.hi = last.hi.max(hi),
            _ => out.push(Span::new(lo, hi)),
        }
    }
    out
}

/// The values up to `max` that none of `spans` (disjoint, sorted) covers.
fn complement(spans: &[Span], max: u128) -> Vec<Span> {
    let mut out = Vec::new();
    let mut next = Some(0u128);
    for s in spans {
        if let Some(n) = next {
            if s.lo > n {
                out.push(Span::new(n, s.lo - 1));
            }
        }
        next = s.hi.checked_add(1).filter(|v| *v <= max);
    }
    if let Some(n) = next {
        out.push(Span::new(n, max));
    }
    out
}

/// Every combination of one span per field.
fn product(fields: &[Vec<Span>]) -> Vec<Element> {
    let mut out = vec![Vec::new()];
    for spans in fields {
        let mut next = Vec::new();
        for prefix in &out {
            for s in spans {
                let mut p: Vec<Span> = prefix.clone();
                p.push(*s);
                next.push(p);
            }
        }
        out = next;
    }
    out.into_iter().map(el).collect()
}

fn single(v: u128) -> Vec<Span> {
    vec![Span::single(v)]
}

/// The sets and rules that pin the pod's identity: Ethernet source, untagged IPv4/IPv6/ARP
/// only, IP source, ARP and neighbour discovery of exact shape, and (with a known gateway)
/// the gateway as Ethernet destination of everything off-link. Drops in every mode.
fn identity(pod: &PodNet, side: Side, sets: &mut Vec<Set>, rules: &mut Vec<Rule>) {
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
    rules.push(rule(vec![
        Stmt::L3(L3::Ipv6),
        side.len(CmpOp::Eq, 40 + 24),
        header(),
        lookup(
            "nd6_short",
            vec![
                raw(Base::Transport, 0, Field::InetService),
                Selector::Ip6Saddr,
                Selector::Ip6Daddr,
                raw(Base::Transport, 8, Field::Ipv6Addr),
            ],
        ),
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
        lookup(
            "nd6_short",
            vec![
                raw(Base::Transport, 0, Field::InetService),
                Selector::Ip6Saddr,
                Selector::Ip6Daddr,
                raw(Base::Transport, 8, Field::Ipv6Addr),
            ],
        ),
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

/// Per family: what the pod may send back. A flow sent to the pod waits in `pending` until the
/// pod answers it, which moves it to `replies` (refreshed by the pod's traffic); echo replies
/// only for a recorded echo request; ICMP errors only to a recorded peer, bounded in size and
/// rate. Only unicast sent to the pod's MAC and one of its addresses is recorded (`to_pod`).
struct Family4or6 {
    l3: L3,
    saddr: Selector,
    daddr: Selector,
    addr: Field,
    icmp: u8,
    echo_request: u8,
    echo_reply: u8,
    errors: &'static [u8],
    error_max: u32,
    tag: &'static str,
}

const FAMILIES: [Family4or6; 2] = [
    Family4or6 {
        l3: L3::Ipv4,
        saddr: Selector::Ip4Saddr,
        daddr: Selector::Ip4Daddr,
        addr: Field::Ipv4Addr,
        icmp: ICMP,
        echo_request: 8,
        echo_reply: 0,
        errors: &ICMP4_ERROR_TYPES,
        error_max: ICMP4_ERROR_MAX,
        tag: "4",
    },
    Family4or6 {
        l3: L3::Ipv6,
        saddr: Selector::Ip6Saddr,
        daddr: Selector::Ip6Daddr,
        addr: Field::Ipv6Addr,
        icmp: ICMPV6,
        echo_request: 128,
        echo_reply: 129,
        errors: &ICMP6_ERROR_TYPES,
        error_max: ICMP6_ERROR_MAX,
        tag: "6",
    },
];

fn dynamic(name: String, fields: Vec<Field>, timeout: u32) -> Set {
    Set {
        name,
        fields,
        interval: false,
        dynamic: true,
        timeout_secs: Some(timeout),
        size: Some(REPLY_SET_SIZE),
        elements: Vec::new(),
    }
}

/// A netdev table whose chains are bound to one of the pod's two interfaces (`side`): the
/// pod's identity pinned, replies tracked in sets, the allowlist, then the closing rule.
fn link_table(policy: &Policy, target: &Target, device: &str, pod: &PodNet, side: Side) -> Table {
    let mut sets = Vec::new();
    let mut from_pod = Vec::new();
    let mut to_pod = Vec::new();
    identity(pod, side, &mut sets, &mut from_pod);
    let id_icmp = raw(Base::Transport, 4, Field::InetService);
    for f in &FAMILIES {
        let present = match f.l3 {
            L3::Ipv4 => pod.v4().next().is_some(),
            _ => pod.v6().next().is_some(),
        };
        if !present {
            continue;
        }
        let (replies, pending, echo, peers, rate, own) = (
            format!("replies{}", f.tag),
            format!("pending{}", f.tag),
            format!("echo{}", f.tag),
            format!("peers{}", f.tag),
            format!("new_flows{}", f.tag),
            format!("own{}", f.tag),
        );
        let flow = |fields: bool| -> Vec<Selector> {
            if fields {
                vec![
                    f.saddr,
                    f.daddr,
                    Selector::L4Proto,
                    Selector::ThSport,
                    Selector::ThDport,
                ]
            } else {
                vec![
                    f.daddr,
                    f.saddr,
                    Selector::L4Proto,
                    Selector::ThDport,
                    Selector::ThSport,
                ]
            }
        };
        let flow_fields = vec![
            f.addr,
            f.addr,
            Field::InetProto,
            Field::InetService,
            Field::InetService,
        ];
        sets.push(dynamic(
            replies.clone(),
            flow_fields.clone(),
            REPLY_TIMEOUT_SECS,
        ));
        sets.push(dynamic(pending.clone(), flow_fields, PENDING_TIMEOUT_SECS));
        sets.push(dynamic(
            echo.clone(),
            vec![f.addr, f.addr, Field::InetService],
            PENDING_TIMEOUT_SECS,
        ));
        sets.push(dynamic(
            peers.clone(),
            vec![f.addr, f.addr],
            REPLY_TIMEOUT_SECS,
        ));
        sets.push(dynamic(rate.clone(), vec![f.addr], PENDING_TIMEOUT_SECS));
        // From the pod (key as the pod sends: pod address first).
        from_pod.push(rule(vec![
            Stmt::L3(f.l3),
            lookup(&replies, flow(true)),
            update(&replies, flow(true)),
            Stmt::Verdict(Verdict::Accept),
        ]));
        from_pod.push(rule(vec![
            Stmt::L3(f.l3),
            lookup(&pending, flow(true)),
            update(&replies, flow(true)),
            Stmt::Verdict(Verdict::Accept),
        ]));
        from_pod.push(rule(vec![
            Stmt::L3(f.l3),
            Stmt::L4Proto(f.icmp),
            Stmt::IcmpType(f.echo_reply),
            lookup(&echo, vec![f.saddr, f.daddr, id_icmp]),
            Stmt::Verdict(Verdict::Accept),
        ]));
        let mut errors = vec![
            Stmt::L3(f.l3),
            side.len(CmpOp::Lte, f.error_max),
            Stmt::L4Proto(f.icmp),
        ];
        errors.extend(one_of(Byte::IcmpType, f.errors));
        errors.push(lookup(&peers, vec![f.saddr, f.daddr]));
        errors.push(Stmt::Limit {
            per_second: ICMP_ERROR_RATE.per_second,
            burst: ICMP_ERROR_RATE.burst,
        });
        errors.push(Stmt::Verdict(Verdict::Accept));
        from_pod.push(rule(errors));
        // To the pod: only unicast to its MAC and one of its addresses is recorded.
        let to_me = || cmp(link(ETH_DADDR, 6), CmpOp::Eq, pod.mac.0);
        to_pod.push(rule(vec![
            to_me(),
            Stmt::L3(f.l3),
            lookup(&replies, flow(false)),
            Stmt::Verdict(Verdict::Accept),
        ]));
        let mut new_flow = vec![to_me(), Stmt::L3(f.l3), lookup(&own, vec![f.daddr])];
        new_flow.extend(one_of(Byte::L4Proto, &PORT_PROTOCOLS));
        new_flow.push(Stmt::Update {
            set: rate,
            key: vec![f.saddr],
            limit: Some(NEW_FLOWS_PER_SOURCE),
        });
        new_flow.push(update(&peers, vec![f.daddr, f.saddr]));
        new_flow.push(update(&pending, flow(false)));
        to_pod.push(rule(new_flow));
        to_pod.push(rule(vec![
            to_me(),
            Stmt::L3(f.l3),
            Stmt::L4Proto(f.icmp),
            Stmt::IcmpType(f.echo_request),
            lookup(&own, vec![f.daddr]),
            update(&echo, vec![f.daddr, f.saddr, id_icmp]),
        ]));
    }
    let (a4l4, a4p) = allow_sets(&policy.entries, true);
    let (a6l4, a6p) = allow_sets(&policy.entries, false);
    let allow = vec![a4l4, a4p, a6l4, a6p];
    from_pod.extend(allow_rules(&allow, true));
    from_pod.extend(allow_rules(&allow, false));
    sets.extend(allow.into_iter().filter(|s| !s.elements.is_empty()));
    let (closing, policy_verdict) =
        closing_rule(policy.mode, &target.container_id, target.log_group);
    from_pod.push(closing);
    let (from_hook, to_hook) = side.hooks();
    Table {
        family: Family::Netdev,
        name: table_name(&target.container_id, &target.ifname),
        comment: comment(policy, target),
        sets,
        chains: vec![
            Chain {
                name: "from_pod".into(),
                hook: from_hook,
                device: Some(device.to_string()),
                priority: 0,
                policy: policy_verdict,
                rules: from_pod,
            },
            Chain {
                name: "to_pod".into(),
                hook: to_hook,
                device: Some(device.to_string()),
                priority: 0,
                policy: Verdict::Accept,
                rules: to_pod,
            },
        ],
    }
}

/// The fallback for kernels without the netdev egress hook: inet output and forward chains
/// with conntrack in the pod netns, which packet sockets bypass.
fn inet_pod_table(policy: &Policy, target: &Target) -> Table {
    let (a4l4, a4p) = allow_sets(&policy.entries, true);
    let (a6l4, a6p) = allow_sets(&policy.entries, false);
    let mut sets = vec![a4l4, a4p, a6l4, a6p];
    sets.retain(|s| !s.elements.is_empty());
    let (closing, policy_verdict) =
        closing_rule(policy.mode, &target.container_id, target.log_group);
    let mut common = vec![rule(vec![
        Stmt::CtState(CT_ESTABLISHED | CT_RELATED),
        Stmt::Verdict(Verdict::Accept),
    ])];
    common.push(nd_rule());
    common.extend(allow_rules(&sets, true));
    common.extend(allow_rules(&sets, false));
    common.push(closing);
    let mut output = vec![rule(vec![
        Stmt::OifName("lo".into()),
        Stmt::Verdict(Verdict::Accept),
    ])];
    output.extend(common.iter().cloned());
    let chain = |name: &str, hook: Hook, rules: Vec<Rule>| Chain {
        name: name.into(),
        hook,
        device: None,
        priority: 0,
        policy: policy_verdict,
        rules,
    };
    Table {
        family: Family::Inet,
        name: table_name(&target.container_id, &target.ifname),
        comment: comment(policy, target),
        sets,
        chains: vec![
            chain("output", Hook::Output, output),
            chain("forward", Hook::Forward, common),
        ],
    }
}

pub const CT_ESTABLISHED: u32 = 1 << 1;
pub const CT_RELATED: u32 = 1 << 2;

/// Compiles a policy for a target. `None` when the mode is off (nothing is installed).
pub fn compile(policy: &Policy, target: &Target) -> Option<Table> {
    if policy.mode == Mode::Off {
        return None;
    }
    match &target.attach {
        Attach::Host { device, pod } => {
            Some(link_table(policy, target, device, pod, Side::HostPeer))
        }
        Attach::PodLink { device, pod } => {
            Some(link_table(policy, target, device, pod, Side::PodOwn))
        }
        Attach::Pod => Some(inet_pod_table(policy, target)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_a_fixed_length_hash_of_the_attachment() {
        // sha256("c0ffee0001\0eth0"), first 8 bytes: stable across releases, which is what
        // DEL, CHECK and GC of a pod added by an earlier run rely on.
        assert_eq!(
            table_name("c0ffee0001", "eth0"),
            "egress_guard_1026a4e8be8d6b89"
        );
        assert_eq!(
            table_name("c0ffee0001", ""),
            table_name("c0ffee0001", "eth0")
        );
        assert_eq!(
            table_name("c0ffee0001", "net1"),
            "egress_guard_c654734bf38efc9f"
        );
        let long = "f".repeat(200);
        assert_eq!(table_name(&long, "eth0").len(), 29);
        assert_ne!(table_name("a", "eth0"), table_name("b", "eth0"));
        // The separator keeps (id, ifname) pairs apart that concatenate alike.
        assert_ne!(table_name("ab", "c"), table_name("a", "bc"));
    }

    #[test]
    fn legacy_names_are_the_container_id() {
        assert_eq!(legacy_table_name("c1", "eth0"), "egress_guard_c1");
        assert_eq!(legacy_table_name("c1", ""), "egress_guard_c1");
        assert_eq!(legacy_table_name("c1", "net1"), "egress_guard_c1_net1");
        assert_eq!(legacy_container("egress_guard_abc"), Some("abc"));
        assert_eq!(legacy_container("egress_guard_abc_net1"), Some("abc_net1"));
        assert_eq!(legacy_container(&table_name("abc", "eth0")), None);
        assert_eq!(legacy_container("egress_guard_"), None);
        assert_eq!(legacy_container("other"), None);
    }

    /// What the matches `one_of` built let through, value by value.
    fn passes(stmts: &[Stmt], v: u8) -> bool {
        stmts.iter().all(|s| match *s {
            Stmt::L4Proto(x) | Stmt::IcmpType(x) => v == x,
            Stmt::L4ProtoRange(lo, hi) | Stmt::IcmpTypeRange(lo, hi) => (lo..=hi).contains(&v),
            Stmt::L4ProtoNot(lo, hi) | Stmt::IcmpTypeNot(lo, hi) => !(lo..=hi).contains(&v),
            ref other => panic!("unexpected {other:?}"),
        })
    }

    #[test]
    fn one_of_lets_exactly_the_listed_values_through() {
        let lists: [&[u8]; 9] = [
            &ND_TYPES,
            &ICMP4_ERROR_TYPES,
            &ICMP6_ERROR_TYPES,
            &PORT_PROTOCOLS,
            &[7],
            &[0, 255],
            &[10, 11, 12],
            &[0, 2, 4, 6, 8, 254],
            &[],
        ];
        for values in lists {
            for byte in [Byte::L4Proto, Byte::IcmpType] {
                let stmts = one_of(byte, values);
                for v in 0..=u8::MAX {
                    assert_eq!(
                        passes(&stmts, v),
                        values.contains(&v),
                        "{v} against {values:?}: {stmts:?}"
                    );
                }
            }
        }
        // One match per gap, none for a run: RS, NS, NA is 133-136 without 134.
        assert_eq!(
            one_of(Byte::IcmpType, &ND_TYPES),
            [Stmt::IcmpTypeRange(133, 136), Stmt::IcmpTypeNot(134, 134)]
        );
        assert_eq!(
            one_of(Byte::L4Proto, &PORT_PROTOCOLS),
            [
                Stmt::L4ProtoRange(6, 132),
                Stmt::L4ProtoNot(7, 16),
                Stmt::L4ProtoNot(18, 131)
            ]
        );
    }

    #[test]
    fn a_host_table_is_one_rule_per_job() {
        // From the pod: 5 identity rules (MAC, ARP, untagged IP only, IPv4 and IPv6 source),
        // 5 neighbour discovery (short, long, DAD with a nonce, RS, the drop), 2 gateway pins, 4 per family for what it may answer, the
        // allowlist of each family, the closing rule. To it: 3 per family. Each rule is a
        // message of ADD's transaction.
        let mut p = enforce();
        p.entries = ["10.0.5.0/24 tcp 8443", "fd00::/64 tcp 443"]
            .into_iter()
            .map(|e| crate::policy::parse_network_entry(e).expect("entry"))
            .collect();
        let t = compile(&p, &target("c1", "eth0")).expect("table");
        let counts: Vec<usize> = t.chains.iter().map(|c| c.rules.len()).collect();
        assert_eq!(counts, [23, 6]);
        let last = t.chains[0].rules.last().expect("closing rule");
        assert!(matches!(
            last.stmts.as_slice(),
            [Stmt::Counter, Stmt::Limit { .. }, Stmt::Log { .. }]
        ));
    }

    fn target(cid: &str, ifname: &str) -> Target {
        Target {
            container_id: cid.into(),
            ifname: ifname.into(),
            attach: Attach::Host {
                device: "veth1".into(),
                pod: PodNet::example(),
            },
            log_group: 100,
        }
    }

    fn enforce() -> Policy {
        Policy {
            mode: Mode::Enforce,
            mode_source: crate::policy::ModeSource::Annotation,
            entries: Vec::new(),
        }
    }

    #[test]
    fn the_comment_names_the_container_and_interface_when_they_fit() {
        let t = compile(&enforce(), &target("c1", "")).expect("table");
        assert_eq!(comment_container(&t.comment), Some("c1"));
        assert!(t.comment.ends_with(" id=c1 if=eth0"), "{}", t.comment);
        assert_eq!(comment_devices(&t.comment).collect::<Vec<_>>(), ["veth1"]);
        let long = "a".repeat(COMMENT_ID_MAX + 1);
        let t = compile(&enforce(), &target(&long, "eth0")).expect("table");
        assert_eq!(comment_container(&t.comment), None);
        assert!(t.comment.len() < 256);
    }

    #[test]
    fn as_recorded_gives_the_legacy_form_and_leaves_current_tables_alone() {
        let t = compile(&enforce(), &target("c1", "eth0")).expect("table");
        let same = as_recorded(t.clone(), &t.name);
        assert_eq!(same.comment, t.comment);
        let old = as_recorded(t.clone(), "egress_guard_c1");
        assert_eq!(old.name, "egress_guard_c1");
        assert_eq!(comment_container(&old.comment), None);
        assert!(!old.comment.contains("if="), "{}", old.comment);
        assert!(old
            .comment
            .starts_with("egress-guard dev=veth1 mode=enforce policy="));
    }
}
