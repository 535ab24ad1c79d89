//! Policy -> Table. Deterministic and free of I/O: the same policy and target always give the
//! same table, which is what CHECK compares the kernel against.

use super::intervals::{disjoint_boxes, Box2};
use super::{
    Chain, Element, Family, Field, Hook, Rule, Selector, Set, Span, Stmt, Table, Verdict, L3,
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
    /// inet table inside the pod's netns (removable by CAP_NET_ADMIN in the pod).
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
    /// Host netns, chains bound to this host-side interface.
    Host { device: String },
    /// Inside the pod netns.
    Pod,
}

impl Attach {
    pub fn placement(&self) -> Placement {
        match self {
            Attach::Host { .. } => Placement::Host,
            Attach::Pod => Placement::Pod,
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
/// ICMP replies and errors the pod may send to a peer that sent to it.
const ICMP4_REPLY_TYPES: [u8; 4] = [0, 3, 11, 12];
const ICMP6_REPLY_TYPES: [u8; 5] = [1, 2, 3, 4, 129];

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
/// `icmp type 0-12 icmp type != 1-2 icmp type != 4-10`. One rule where a rule per run of
/// values used to be: every rule is a message of ADD's transaction, and on a node full of
/// guarded pods each message costs the kernel a walk over every table (docs/benchmarks.md).
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

fn dynamic_set(name: &str, fields: Vec<Field>) -> Set {
    Set {
        name: name.to_string(),
        fields,
        interval: false,
        dynamic: true,
        timeout_secs: Some(REPLY_TIMEOUT_SECS),
        size: Some(REPLY_SET_SIZE),
        elements: Vec::new(),
    }
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
    let (word, verdict) = match mode {
        Mode::Audit => ("audit", Verdict::Accept),
        _ => ("deny", Verdict::Drop),
    };
    let short: String = container_id.chars().take(16).collect();
    let closing = rule(vec![
        Stmt::Counter,
        Stmt::Limit {
            per_second: LOG_RATE_PER_SECOND,
            burst: LOG_BURST,
        },
        Stmt::Log {
            prefix: format!("eg:{word}:{short} "),
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
        Attach::Host { device: dev } => format!(
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

fn host_table(policy: &Policy, target: &Target, device: &str) -> Table {
    let (a4l4, a4p) = allow_sets(&policy.entries, true);
    let (a6l4, a6p) = allow_sets(&policy.entries, false);
    let mut sets = vec![a4l4, a4p, a6l4, a6p];
    sets.push(dynamic_set(
        "replies4",
        vec![
            Field::Ipv4Addr,
            Field::Ipv4Addr,
            Field::InetProto,
            Field::InetService,
            Field::InetService,
        ],
    ));
    sets.push(dynamic_set(
        "replies6",
        vec![
            Field::Ipv6Addr,
            Field::Ipv6Addr,
            Field::InetProto,
            Field::InetService,
            Field::InetService,
        ],
    ));
    sets.push(dynamic_set(
        "peers4",
        vec![Field::Ipv4Addr, Field::Ipv4Addr],
    ));
    sets.push(dynamic_set(
        "peers6",
        vec![Field::Ipv6Addr, Field::Ipv6Addr],
    ));

    let mut from_pod = vec![rule(vec![
        Stmt::L3(L3::Arp),
        Stmt::Verdict(Verdict::Accept),
    ])];
    from_pod.push(nd_rule());
    for (l3, saddr, daddr, icmp, types, replies, peers) in [
        (
            L3::Ipv4,
            Selector::Ip4Saddr,
            Selector::Ip4Daddr,
            ICMP,
            &ICMP4_REPLY_TYPES[..],
            "replies4",
            "peers4",
        ),
        (
            L3::Ipv6,
            Selector::Ip6Saddr,
            Selector::Ip6Daddr,
            ICMPV6,
            &ICMP6_REPLY_TYPES[..],
            "replies6",
            "peers6",
        ),
    ] {
        from_pod.push(rule(vec![
            Stmt::L3(l3),
            Stmt::Lookup {
                set: replies.into(),
                key: vec![
                    saddr,
                    daddr,
                    Selector::L4Proto,
                    Selector::ThSport,
                    Selector::ThDport,
                ],
            },
            Stmt::Verdict(Verdict::Accept),
        ]));
        let mut icmp_reply = vec![Stmt::L3(l3), Stmt::L4Proto(icmp)];
        icmp_reply.extend(one_of(Byte::IcmpType, types));
        icmp_reply.push(Stmt::Lookup {
            set: peers.into(),
            key: vec![saddr, daddr],
        });
        icmp_reply.push(Stmt::Verdict(Verdict::Accept));
        from_pod.push(rule(icmp_reply));
    }
    from_pod.extend(allow_rules(&sets, true));
    from_pod.extend(allow_rules(&sets, false));
    let (closing, policy_verdict) =
        closing_rule(policy.mode, &target.container_id, target.log_group);
    from_pod.push(closing);

    let mut to_pod = Vec::new();
    for (l3, saddr, daddr, replies, peers) in [
        (
            L3::Ipv4,
            Selector::Ip4Saddr,
            Selector::Ip4Daddr,
            "replies4",
            "peers4",
        ),
        (
            L3::Ipv6,
            Selector::Ip6Saddr,
            Selector::Ip6Daddr,
            "replies6",
            "peers6",
        ),
    ] {
        // One rule per family: every packet to the pod records its sender as a peer (for
        // ICMP replies and errors); TCP, UDP and SCTP also record the reverse of their flow.
        let mut track = vec![
            Stmt::L3(l3),
            Stmt::Update {
                set: peers.into(),
                key: vec![daddr, saddr],
            },
        ];
        track.extend(one_of(Byte::L4Proto, &PORT_PROTOCOLS));
        track.push(Stmt::Update {
            set: replies.into(),
            key: vec![
                daddr,
                saddr,
                Selector::L4Proto,
                Selector::ThDport,
                Selector::ThSport,
            ],
        });
        to_pod.push(rule(track));
    }
    sets.retain(|s| s.dynamic || !s.elements.is_empty());
    Table {
        family: Family::Netdev,
        name: table_name(&target.container_id, &target.ifname),
        comment: comment(policy, target),
        sets,
        chains: vec![
            Chain {
                name: "from_pod".into(),
                hook: Hook::Ingress,
                device: Some(device.to_string()),
                priority: 0,
                policy: policy_verdict,
                rules: from_pod,
            },
            Chain {
                name: "to_pod".into(),
                hook: Hook::Egress,
                device: Some(device.to_string()),
                priority: 0,
                policy: Verdict::Accept,
                rules: to_pod,
            },
        ],
    }
}

fn pod_table(policy: &Policy, target: &Target) -> Table {
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
        Attach::Host { device } => Some(host_table(policy, target, device)),
        Attach::Pod => Some(pod_table(policy, target)),
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
            &ICMP4_REPLY_TYPES,
            &ICMP6_REPLY_TYPES,
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
        // 9 rules from the pod (ARP, ND, per family replies and ICMP answers, the allowlist of
        // each family, the closing rule), 2 to it (one per family): each rule is a message of
        // ADD's transaction.
        let mut p = enforce();
        p.entries = ["10.0.5.0/24 tcp 8443", "fd00::/64 tcp 443"]
            .into_iter()
            .map(|e| crate::policy::parse_network_entry(e).expect("entry"))
            .collect();
        let t = compile(&p, &target("c1", "eth0")).expect("table");
        let counts: Vec<usize> = t.chains.iter().map(|c| c.rules.len()).collect();
        assert_eq!(counts, [9, 2]);
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
