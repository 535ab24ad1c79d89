//! Runs one chain of a compiled table over one packet, as the kernel does for the first packet
//! of a new flow: static sets hold their elements, dynamic sets are still empty (nothing has
//! been recorded for the flow), limits pass, logs are noted. Pure data in, data out: `explain`
//! decides from this, over the same table ADD installs.

use super::{Base, Chain, CmpOp, Hook, Load, Selector, Set, Stmt, Table, Verdict, L3};

/// Length of an Ethernet header.
const ETH_HLEN: usize = 14;

/// One packet as a chain sees it.
#[derive(Debug, Clone)]
pub struct Packet {
    /// The Ethernet header (netdev chains); `None` at inet hooks, which have none.
    pub link: Option<[u8; ETH_HLEN]>,
    /// The IP packet: header, then the transport header at `thoff`.
    pub network: Vec<u8>,
    pub l3: L3,
    pub l4proto: u8,
    pub thoff: usize,
    /// The output interface's name (inet output).
    pub oifname: String,
    /// Conntrack state bits (inet); a new flow is `NEW` only.
    pub ct_state: u32,
}

/// Conntrack's `new` bit, as `ct state` matches it.
pub const CT_NEW: u32 = 1 << 3;

/// How a chain ended for the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The rule (index in the chain) whose verdict it was; `None` for the chain's policy.
    pub rule: Option<usize>,
    /// Whether a log statement ran on the way (the flow is logged).
    pub logged: bool,
}

impl Packet {
    fn transport(&self) -> &[u8] {
        self.network.get(self.thoff..).unwrap_or(&[])
    }

    fn bytes(&self, base: Base, offset: u32, len: u32) -> Option<&[u8]> {
        let (o, l) = (offset as usize, len as usize);
        let from: &[u8] = match base {
            Base::Link => self.link.as_ref()?.as_slice(),
            Base::Network => &self.network,
            Base::Transport => self.transport(),
        };
        from.get(o..o.checked_add(l)?)
    }

    /// `meta length`: from the network header, except at a netdev egress hook, where the
    /// Ethernet header is already on the packet.
    fn meta_len(&self, hook: Hook) -> u32 {
        let l2 = match (hook, self.link) {
            (Hook::Egress, Some(_)) => ETH_HLEN,
            _ => 0,
        };
        (self.network.len() + l2) as u32
    }

    fn selector(&self, s: Selector) -> Option<u128> {
        let (base, offset, width) = match s {
            Selector::Ip4Saddr => (Base::Network, 12, 4),
            Selector::Ip4Daddr => (Base::Network, 16, 4),
            Selector::Ip6Saddr => (Base::Network, 8, 16),
            Selector::Ip6Daddr => (Base::Network, 24, 16),
            Selector::L4Proto => return Some(self.l4proto as u128),
            Selector::ThSport => (Base::Transport, 0, 2),
            Selector::ThDport => (Base::Transport, 2, 2),
            Selector::EtherSaddr => (Base::Link, 6, 6),
            Selector::EtherDaddr => (Base::Link, 0, 6),
            Selector::Raw {
                base,
                offset,
                field,
            } => (base, offset, field.width() as u32),
        };
        let b = self.bytes(base, offset, width)?;
        Some(b.iter().fold(0u128, |acc, x| (acc << 8) | *x as u128))
    }
}

fn in_set(set: &Set, values: &[u128]) -> bool {
    // Dynamic sets are filled from the packet path: empty for a new flow.
    !set.dynamic
        && set.elements.iter().any(|e| {
            e.spans.len() == values.len() && e.spans.iter().zip(values).all(|(s, v)| s.contains(*v))
        })
}

fn compare(got: &[u8], op: CmpOp, want: &[u8]) -> bool {
    match op {
        CmpOp::Eq => got == want,
        CmpOp::Neq => got != want,
        CmpOp::Lte => got <= want,
        CmpOp::Gte => got >= want,
    }
}

/// Whether a statement lets the rule go on (`Some(verdict)` ends the chain).
enum Step {
    Next,
    Break,
    Verdict(Verdict),
}

fn step(table: &Table, hook: Hook, p: &Packet, s: &Stmt, logged: &mut bool) -> Step {
    let b = |ok: bool| if ok { Step::Next } else { Step::Break };
    let l4 = p.l4proto;
    let icmp_type = || p.transport().first().copied();
    match s {
        Stmt::L3(l3) => b(p.l3 == *l3),
        Stmt::L3Not(l3) => b(p.l3 != *l3),
        Stmt::L4Proto(n) => b(l4 == *n),
        Stmt::L4ProtoRange(lo, hi) => b((*lo..=*hi).contains(&l4)),
        Stmt::L4ProtoNot(lo, hi) => b(!(*lo..=*hi).contains(&l4)),
        Stmt::IcmpType(t) => b(icmp_type() == Some(*t)),
        Stmt::IcmpTypeRange(lo, hi) => b(icmp_type().is_some_and(|t| (*lo..=*hi).contains(&t))),
        Stmt::IcmpTypeNot(lo, hi) => b(icmp_type().is_some_and(|t| !(*lo..=*hi).contains(&t))),
        Stmt::OifName(name) => b(p.oifname == *name),
        Stmt::CtState(mask) => b(p.ct_state & mask != 0),
        Stmt::LinkIsEther(_) => b(p.link.is_some()),
        Stmt::EtherType(_, l3) => b(p
            .bytes(Base::Link, 12, 2)
            .is_some_and(|t| t == l3.ethertype().to_be_bytes())),
        Stmt::Cmp { load, op, value } => match load {
            Load::Payload { base, offset, len } => match p.bytes(*base, *offset, *len) {
                Some(got) => b(compare(got, *op, value)),
                None => Step::Break,
            },
            Load::MetaLen => {
                let mut be = [0u8; 4];
                let n = value.len().min(4);
                be[4 - n..].copy_from_slice(&value[value.len() - n..]);
                let len = p.meta_len(hook).to_be_bytes();
                b(compare(&len, *op, &be))
            }
        },
        Stmt::Lookup { set, key, negate } => {
            let Some(values) = key
                .iter()
                .map(|k| p.selector(*k))
                .collect::<Option<Vec<_>>>()
            else {
                return Step::Break;
            };
            let found = table
                .sets
                .iter()
                .find(|s| s.name == *set)
                .is_some_and(|s| in_set(s, &values));
            b(found != *negate)
        }
        Stmt::Update { key, .. } | Stmt::Add { key, .. } => {
            // The key must load; the element is recorded, which a first packet does not see.
            b(key.iter().all(|k| p.selector(*k).is_some()))
        }
        Stmt::Limit { .. } | Stmt::Counter => Step::Next,
        Stmt::Log { .. } => {
            *logged = true;
            Step::Next
        }
        Stmt::Verdict(v) => Step::Verdict(*v),
    }
}

/// Runs `chain` of `table` over `p`: the first rule whose statements all match and that ends
/// in a verdict decides; otherwise the chain's policy.
pub fn run(table: &Table, chain: &Chain, p: &Packet) -> Outcome {
    let mut logged = false;
    for (i, r) in chain.rules.iter().enumerate() {
        let mut rule_logged = false;
        let mut verdict = None;
        let mut broke = false;
        for s in &r.stmts {
            match step(table, chain.hook, p, s, &mut rule_logged) {
                Step::Next => {}
                Step::Break => {
                    broke = true;
                    break;
                }
                Step::Verdict(v) => {
                    verdict = Some(v);
                    break;
                }
            }
        }
        // A log before a break still ran (`limit ... log ... add` stops after logging only
        // if the add fails, which it does not here).
        logged |= rule_logged;
        if broke {
            continue;
        }
        if let Some(v) = verdict {
            return Outcome {
                verdict: v,
                rule: Some(i),
                logged,
            };
        }
    }
    Outcome {
        verdict: chain.policy,
        rule: None,
        logged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{Element, Family, Field, Rule, Span};

    fn table(rules: Vec<Rule>, sets: Vec<Set>) -> Table {
        Table {
            family: Family::Inet,
            name: "t".into(),
            comment: String::new(),
            sets,
            chains: vec![Chain {
                name: "output".into(),
                hook: Hook::Output,
                device: None,
                priority: 0,
                policy: Verdict::Drop,
                rules,
            }],
        }
    }

    fn udp4(dst: [u8; 4], dport: u16) -> Packet {
        let mut network = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 5];
        network.extend_from_slice(&dst);
        network.extend_from_slice(&40000u16.to_be_bytes());
        network.extend_from_slice(&dport.to_be_bytes());
        network.extend_from_slice(&[0, 8, 0, 0]);
        Packet {
            link: None,
            network,
            l3: L3::Ipv4,
            l4proto: 17,
            thoff: 20,
            oifname: "eth0".into(),
            ct_state: CT_NEW,
        }
    }

    #[test]
    fn a_lookup_in_an_interval_set_decides_and_a_dynamic_set_is_empty() {
        let allow = Set {
            name: "allow".into(),
            fields: vec![Field::Ipv4Addr, Field::InetProto, Field::InetService],
            interval: true,
            dynamic: false,
            timeout_secs: None,
            size: None,
            elements: vec![Element {
                spans: vec![
                    Span::new(0x0a00_0500, 0x0a00_05ff),
                    Span::single(17),
                    Span::new(50, 60),
                ],
            }],
        };
        let mut seen = allow.clone();
        seen.name = "seen".into();
        seen.dynamic = true;
        let key = vec![Selector::Ip4Daddr, Selector::L4Proto, Selector::ThDport];
        let lookup = |set: &str, negate| Stmt::Lookup {
            set: set.into(),
            key: key.clone(),
            negate,
        };
        let t = table(
            vec![
                Rule {
                    stmts: vec![lookup("seen", false), Stmt::Verdict(Verdict::Accept)],
                },
                Rule {
                    stmts: vec![
                        Stmt::L3(L3::Ipv4),
                        lookup("allow", false),
                        Stmt::Verdict(Verdict::Accept),
                    ],
                },
                Rule {
                    stmts: vec![
                        lookup("seen", true),
                        Stmt::Log {
                            prefix: "x".into(),
                            group: 1,
                        },
                    ],
                },
            ],
            vec![allow, seen],
        );
        let c = &t.chains[0];
        assert_eq!(
            run(&t, c, &udp4([10, 0, 5, 9], 53)),
            Outcome {
                verdict: Verdict::Accept,
                rule: Some(1),
                logged: false
            }
        );
        assert_eq!(
            run(&t, c, &udp4([10, 0, 5, 9], 61)),
            Outcome {
                verdict: Verdict::Drop,
                rule: None,
                logged: true
            }
        );
        assert_eq!(run(&t, c, &udp4([10, 0, 6, 9], 53)).rule, None);
    }

    #[test]
    fn a_payload_past_the_packet_breaks_the_rule() {
        let t = table(
            vec![Rule {
                stmts: vec![
                    Stmt::Cmp {
                        load: Load::Payload {
                            base: Base::Transport,
                            offset: 20,
                            len: 2,
                        },
                        op: CmpOp::Neq,
                        value: vec![0, 0],
                    },
                    Stmt::Verdict(Verdict::Accept),
                ],
            }],
            vec![],
        );
        assert_eq!(
            run(&t, &t.chains[0], &udp4([1, 2, 3, 4], 1)).verdict,
            Verdict::Drop
        );
    }
}
