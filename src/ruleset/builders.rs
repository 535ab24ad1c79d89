//! Small constructors of statements, rules and sets shared by the table builders, and the span
//! merging that interval set elements are made with.

use super::{Base, CmpOp, Element, Field, Load, Rule, Selector, Set, Span, Stmt};

pub(super) const TCP: u8 = 6;
pub(super) const UDP: u8 = 17;
pub(super) const SCTP: u8 = 132;
pub(super) const ICMP: u8 = 1;
pub(super) const ICMPV6: u8 = 58;
/// Neighbour discovery the pod needs to reach its gateway: RS, NS, NA (not RA, 134).
pub(super) const ND_TYPES: [u8; 3] = [133, 135, 136];

/// Transport protocols whose replies are tracked by ports.
pub(super) const PORT_PROTOCOLS: [u8; 3] = [TCP, UDP, SCTP];

pub(super) const ETH_HLEN: u32 = 14;
pub(super) const ETH_DADDR: u32 = 0;
pub(super) const ETH_SADDR: u32 = 6;
pub(super) const ETH_TYPE: u32 = 12;

/// A one-byte field a rule can match against a list of values.
#[derive(Debug, Clone, Copy)]
pub(super) enum Byte {
    L4Proto,
    IcmpType,
}

impl Byte {
    pub(super) fn equals(self, v: u8) -> Stmt {
        match self {
            Byte::L4Proto => Stmt::L4Proto(v),
            Byte::IcmpType => Stmt::IcmpType(v),
        }
    }
    pub(super) fn within(self, lo: u8, hi: u8) -> Stmt {
        match self {
            Byte::L4Proto => Stmt::L4ProtoRange(lo, hi),
            Byte::IcmpType => Stmt::IcmpTypeRange(lo, hi),
        }
    }
    pub(super) fn outside(self, lo: u8, hi: u8) -> Stmt {
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
pub(super) fn one_of(byte: Byte, values: &[u8]) -> Vec<Stmt> {
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

pub(super) fn rule(stmts: Vec<Stmt>) -> Rule {
    Rule { stmts }
}

pub(super) fn link(offset: u32, len: u32) -> Load {
    Load::Payload {
        base: Base::Link,
        offset,
        len,
    }
}

pub(super) fn net(offset: u32, len: u32) -> Load {
    Load::Payload {
        base: Base::Network,
        offset,
        len,
    }
}

pub(super) fn th(offset: u32, len: u32) -> Load {
    Load::Payload {
        base: Base::Transport,
        offset,
        len,
    }
}

pub(super) fn cmp(load: Load, op: CmpOp, value: impl Into<Vec<u8>>) -> Stmt {
    Stmt::Cmp {
        load,
        op,
        value: value.into(),
    }
}

pub(super) fn meta_len(op: CmpOp, n: u32) -> Stmt {
    cmp(Load::MetaLen, op, n.to_be_bytes())
}

pub(super) fn raw(base: Base, offset: u32, field: Field) -> Selector {
    Selector::Raw {
        base,
        offset,
        field,
    }
}

pub(super) fn lookup(set: &str, key: Vec<Selector>) -> Stmt {
    Stmt::Lookup {
        set: set.into(),
        key,
        negate: false,
    }
}

pub(super) fn absent(set: &str, key: Vec<Selector>) -> Stmt {
    Stmt::Lookup {
        set: set.into(),
        key,
        negate: true,
    }
}

pub(super) fn update(set: &str, key: Vec<Selector>) -> Stmt {
    Stmt::Update {
        set: set.into(),
        key,
        limit: None,
    }
}

pub(super) fn set_of(
    name: &str,
    fields: Vec<Field>,
    interval: bool,
    elements: Vec<Element>,
) -> Set {
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

pub(super) fn el(spans: Vec<Span>) -> Element {
    Element { spans }
}

/// Disjoint, sorted spans (an interval set must not hold overlapping elements).
pub(super) fn merged(mut spans: Vec<(u128, u128)>) -> Vec<Span> {
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

pub(super) fn single(v: u128) -> Vec<Span> {
    vec![Span::single(v)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::tables::{ICMP4_ERROR_TYPES, ICMP6_ERROR_TYPES};

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
}
