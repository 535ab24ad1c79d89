//! The two shapes of table: a netdev link table (host veth or the pod's own interface) with the
//! pod's identity pinned and replies tracked, and the inet fallback inside the pod netns.

use super::builders::{
    cmp, link, lookup, one_of, raw, rule, update, Byte, ETH_DADDR, ICMP, ICMPV6, ND_TYPES,
    PORT_PROTOCOLS, SCTP, TCP, UDP,
};
use super::identity::{identity, own4, Side, IP4_DADDR};
use super::intervals::{disjoint_boxes, AddrPortBox};
use super::logprefix::{self, Logged};
use super::naming::{comment, table_name};
use super::podnet::PodNet;
use super::{
    Base, Chain, CmpOp, DenyLog, Element, Family, Field, Hook, Rate, Rule, Selector, Set, Span,
    Stmt, Table, Target, Verdict, L3,
};
use crate::policy::{Entry, Mode, Policy};

/// Idle timeout of tracked replies (refreshed by every packet sent to the pod).
pub const REPLY_TIMEOUT_SECS: u32 = 300;
/// Maximum tracked flows per pod and family. The kernel also takes a dynamic set's size as the
/// initial size of its hash table, in a 16-bit field: 65536 leaves that hint 0, so the table
/// starts small and grows with the flows actually there, where a size of 16384 would allocate
/// and zero a 256 KiB table for every set of every ADD (docs/benchmarks.md).
pub const REPLY_SET_SIZE: u32 = 65536;
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
pub(super) const ICMP4_ERROR_TYPES: [u8; 3] = [3, 11, 12];
pub(super) const ICMP6_ERROR_TYPES: [u8; 4] = [1, 2, 3, 4];

pub const CT_ESTABLISHED: u32 = 1 << 1;
pub const CT_RELATED: u32 = 1 << 2;

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
    let l4_boxes: Vec<AddrPortBox> = fam
        .iter()
        .filter(|e| e.ports.is_none())
        .map(|e| AddrPortBox {
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
        let boxes: Vec<AddrPortBox> = fam
            .iter()
            .filter(|e| e.proto.number() == Some(proto))
            .filter_map(|e| {
                e.ports.map(|(lo, hi)| AddrPortBox {
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

/// Most flows a pod's table remembers as logged, per family (65536 for the reason given at
/// [`REPLY_SET_SIZE`]).
pub const LOGGED_SET_SIZE: u32 = 65536;

/// The closing rules, and the chain policy that is their verdict. Per family, two rules log
/// a flow the policy does not allow when it is not in the family's `logged` set yet and adds it
/// there (ICMP keyed by type and code, other protocols by the transport header's port field);
/// the set's timeout is the log interval, and an element is added once, never refreshed, so a
/// flow is logged again each interval. Repeats inside the interval are not logged: the budget
/// (`log.rate`, which a flow over it does not spend, so its next packet tries again) goes to
/// new flows. The last rule counts every packet that gets here; the policy then applies.
fn closing_rules(
    mode: Mode,
    container_id: &str,
    log: DenyLog,
    families: &[&Family4or6],
) -> (Vec<Set>, Vec<Rule>, Verdict) {
    let (logged, verdict) = match mode {
        Mode::Audit => (Logged::Audit, Verdict::Accept),
        _ => (Logged::Deny, Verdict::Drop),
    };
    let prefix = logprefix::format(logged, container_id);
    let mut sets = Vec::new();
    let mut rules = Vec::new();
    for f in families {
        let name = format!("logged{}", f.tag);
        let mut set = dynamic(
            name.clone(),
            vec![f.addr, Field::InetProto, Field::InetService],
            log.interval_secs,
        );
        set.size = Some(LOGGED_SET_SIZE);
        sets.push(set);
        let icmp_kind = raw(Base::Transport, 0, Field::InetService);
        for (proto, third) in [
            (Stmt::L4Proto(f.icmp), icmp_kind),
            (Stmt::L4ProtoNot(f.icmp, f.icmp), Selector::ThDport),
        ] {
            let key = vec![f.daddr, Selector::L4Proto, third];
            // The protocol match after the lookup: before it, nft would list an `icmp` match
            // as the lookup's dependency and hide it (netlink) or not (JSON).
            rules.push(rule(vec![
                Stmt::L3(f.l3),
                Stmt::Lookup {
                    set: name.clone(),
                    key: key.clone(),
                    negate: true,
                },
                proto,
                Stmt::Limit {
                    per_second: log.rate.per_second,
                    burst: log.rate.burst,
                },
                Stmt::Log {
                    prefix: prefix.clone(),
                    group: log.group,
                },
                Stmt::Add {
                    set: name.clone(),
                    key,
                },
            ]));
        }
    }
    rules.push(rule(vec![Stmt::Counter]));
    (sets, rules, verdict)
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
pub(super) fn link_table(
    policy: &Policy,
    target: &Target,
    device: &str,
    pod: &PodNet,
    side: Side,
) -> Table {
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
        // Sent to one of the pod's own addresses (`own6`, or `own4` unless it is one).
        let to_own = || match f.l3 {
            L3::Ipv4 => own4(pod, IP4_DADDR, false),
            _ => lookup(&own, vec![f.daddr]),
        };
        let mut new_flow = vec![to_me(), Stmt::L3(f.l3), to_own()];
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
            to_own(),
            update(&echo, vec![f.daddr, f.saddr, id_icmp]),
        ]));
    }
    let (a4l4, a4p) = allow_sets(&policy.entries, true);
    let (a6l4, a6p) = allow_sets(&policy.entries, false);
    let allow = vec![a4l4, a4p, a6l4, a6p];
    from_pod.extend(allow_rules(&allow, true));
    from_pod.extend(allow_rules(&allow, false));
    sets.extend(allow.into_iter().filter(|s| !s.elements.is_empty()));
    let present: Vec<&Family4or6> = FAMILIES
        .iter()
        .filter(|f| match f.l3 {
            L3::Ipv4 => pod.v4().next().is_some(),
            _ => pod.v6().next().is_some(),
        })
        .collect();
    let (log_sets, closing, policy_verdict) =
        closing_rules(policy.mode, &target.container_id, target.log, &present);
    sets.extend(log_sets);
    from_pod.extend(closing);
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
pub(super) fn inet_pod_table(policy: &Policy, target: &Target) -> Table {
    let (a4l4, a4p) = allow_sets(&policy.entries, true);
    let (a6l4, a6p) = allow_sets(&policy.entries, false);
    let mut sets = vec![a4l4, a4p, a6l4, a6p];
    sets.retain(|s| !s.elements.is_empty());
    let both: Vec<&Family4or6> = FAMILIES.iter().collect();
    let (log_sets, closing, policy_verdict) =
        closing_rules(policy.mode, &target.container_id, target.log, &both);
    sets.extend(log_sets);
    let mut common = vec![rule(vec![
        Stmt::CtState(CT_ESTABLISHED | CT_RELATED),
        Stmt::Verdict(Verdict::Accept),
    ])];
    common.push(nd_rule());
    common.extend(allow_rules(&sets, true));
    common.extend(allow_rules(&sets, false));
    common.extend(closing);
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

#[cfg(test)]
mod tests {
    use crate::ruleset::compile::fixtures::{enforce, target};
    use crate::ruleset::{compile, Stmt};

    #[test]
    fn a_host_table_is_one_rule_per_job() {
        // From the pod: 6 identity rules (MAC, ARP from an own address and from 0.0.0.0,
        // untagged IP only, IPv4 and IPv6 source), 10 neighbour discovery (DAD without and
        // with a nonce, NS to a solicited-node group and on-link, NA without and with the
        // option to all-nodes and on-link, RS, the drop), 2 gateway pins, 4 per family for
        // what it may answer, the allowlist of each family, 2 per family logging flows not
        // logged yet (ICMP and the rest), the closing counter. To it: 3 per family. Each rule
        // is a message of ADD's transaction.
        let mut p = enforce();
        p.entries = ["10.0.5.0/24 tcp 8443", "fd00::/64 tcp 443"]
            .into_iter()
            .map(|e| crate::policy::parse_network_entry(e).expect("entry"))
            .collect();
        let t = compile(&p, &target("c1", "eth0")).expect("table");
        let counts: Vec<usize> = t.chains.iter().map(|c| c.rules.len()).collect();
        assert_eq!(counts, [33, 6]);
        let last = t.chains[0].rules.last().expect("closing rule");
        assert_eq!(last.stmts, [Stmt::Counter]);
        // A pod with one family logs flows of that family only.
        let mut v4 = target("c1", "eth0");
        if let crate::ruleset::Attach::Host { pod, .. } = &mut v4.attach {
            pod.addrs.retain(|a| a.addr.is_ipv4());
        }
        let t = compile(&p, &v4).expect("table");
        let logged: Vec<&str> = t
            .sets
            .iter()
            .filter(|s| s.name.starts_with("logged"))
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(logged, ["logged4"]);
    }

    #[test]
    fn a_flow_is_logged_once_per_interval_and_repeats_spend_no_budget() {
        use crate::ruleset::{DenyLog, Rate, Selector};
        let mut t = target("c1", "eth0");
        t.log = DenyLog {
            group: 7,
            rate: Rate {
                per_second: 3,
                burst: 9,
            },
            interval_secs: 120,
        };
        let table = compile(&enforce(), &t).expect("table");
        let logged = table
            .sets
            .iter()
            .find(|s| s.name == "logged4")
            .expect("logged4");
        assert!(logged.dynamic && !logged.interval);
        assert_eq!(logged.timeout_secs, Some(120));
        let rules = &table.chains[0].rules;
        let log_rules: Vec<&Vec<Stmt>> = rules
            .iter()
            .map(|r| &r.stmts)
            .filter(|s| s.iter().any(|x| matches!(x, Stmt::Log { .. })))
            .collect();
        assert_eq!(log_rules.len(), 4, "ICMP and the rest, per family");
        for stmts in &log_rules {
            // Not logged yet -> within the budget -> log -> remember; in that order, so a flow
            // over the budget is not remembered and its next packet is logged.
            let pos = |f: &dyn Fn(&Stmt) -> bool| stmts.iter().position(f).expect("statement");
            let lookup = pos(&|s| matches!(s, Stmt::Lookup { negate: true, .. }));
            let limit = pos(&|s| {
                matches!(
                    s,
                    Stmt::Limit {
                        per_second: 3,
                        burst: 9
                    }
                )
            });
            let log = pos(&|s| matches!(s, Stmt::Log { group: 7, .. }));
            let add = pos(&|s| matches!(s, Stmt::Add { .. }));
            assert!(lookup < limit && limit < log && log < add, "{stmts:?}");
            let (Stmt::Lookup { set, key, .. }, Stmt::Add { set: s2, key: k2 }) =
                (&stmts[lookup], &stmts[add])
            else {
                unreachable!()
            };
            assert_eq!((set, key), (s2, k2), "the key looked up is the key added");
            assert!(!stmts.iter().any(|s| matches!(s, Stmt::Verdict(_))));
            // ICMP flows by type and code, the rest by destination port.
            let third = key[2];
            if stmts
                .iter()
                .any(|s| matches!(s, Stmt::L4Proto(1) | Stmt::L4Proto(58)))
            {
                assert!(matches!(third, Selector::Raw { offset: 0, .. }));
            } else {
                assert_eq!(third, Selector::ThDport);
            }
        }
        // Every packet the allowlist does not accept reaches the counter after them.
        let last = rules.last().expect("closing");
        assert_eq!(last.stmts, [Stmt::Counter]);
    }
}
