//! `Snapshot`: a comparable view of one table, built from a `Table` (what should be in the
//! kernel) or from dumps (what is), and the differences between two of them.

use std::collections::BTreeSet;

use super::consts::*;
use super::{lower_rule, Expr};
use crate::ruleset::{Set, Table};

/// Comparable view of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSnapshot {
    pub name: String,
    pub flags: u32,
    pub key_type: u32,
    pub key_len: u32,
    pub timeout_ms: Option<u64>,
    /// (key, key_end); not compared for dynamic sets.
    pub elements: BTreeSet<(Vec<u8>, Vec<u8>)>,
}

/// Comparable view of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSnapshot {
    pub name: String,
    pub hook: Option<u32>,
    pub priority: Option<i32>,
    pub devices: Vec<String>,
    pub policy: Option<u32>,
    pub rules: Vec<Vec<Expr>>,
    /// Each rule in nft text, for an expected chain (empty for one read from the kernel).
    pub texts: Vec<String>,
}

/// Comparable view of one table: what the kernel holds, or what a `Table` should be there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub name: String,
    pub comment: String,
    pub sets: Vec<SetSnapshot>,
    pub chains: Vec<ChainSnapshot>,
}

impl Snapshot {
    /// Human-readable differences between what should be (`self`) and what is (`actual`).
    pub fn diff(&self, actual: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        if self.comment != actual.comment {
            out.push(format!(
                "table comment is \"{}\", expected \"{}\"",
                actual.comment, self.comment
            ));
        }
        for s in &self.sets {
            match actual.sets.iter().find(|a| a.name == s.name) {
                None => out.push(format!("set {} is missing", s.name)),
                Some(a) => {
                    if (a.flags & SETF_MASK, a.key_type, a.key_len, a.timeout_ms)
                        != (s.flags, s.key_type, s.key_len, s.timeout_ms)
                    {
                        out.push(format!("set {} has a different definition", s.name));
                    }
                    if s.flags & SETF_EVAL == 0 && a.elements != s.elements {
                        let missing = s.elements.difference(&a.elements).count();
                        let extra = a.elements.difference(&s.elements).count();
                        out.push(format!(
                            "set {}: {missing} element(s) missing, {extra} unexpected",
                            s.name
                        ));
                    }
                }
            }
        }
        for a in &actual.sets {
            if !self.sets.iter().any(|s| s.name == a.name) {
                out.push(format!("unexpected set {}", a.name));
            }
        }
        for c in &self.chains {
            match actual.chains.iter().find(|a| a.name == c.name) {
                None => out.push(format!("chain {} is missing", c.name)),
                Some(a) => {
                    if (a.hook, a.priority, a.policy) != (c.hook, c.priority, c.policy) {
                        out.push(format!(
                            "chain {} has a different hook, priority or policy",
                            c.name
                        ));
                    }
                    if a.devices != c.devices {
                        out.push(format!(
                            "chain {} is bound to [{}], expected [{}]",
                            c.name,
                            a.devices.join(","),
                            c.devices.join(",")
                        ));
                    }
                    out.extend(rule_diff(c, a));
                }
            }
        }
        for a in &actual.chains {
            if !self.chains.iter().any(|c| c.name == a.name) {
                out.push(format!("unexpected chain {}", a.name));
            }
        }
        out
    }
}

/// The rules of `actual` that `expected` lacks ("unexpected rule", as the kernel's
/// expressions) and those of `expected` that `actual` lacks ("missing rule", in nft text);
/// when both hold the same rules, whether their order differs.
fn rule_diff(expected: &ChainSnapshot, actual: &ChainSnapshot) -> Vec<String> {
    let mut unmatched: Vec<Option<&Vec<Expr>>> = actual.rules.iter().map(Some).collect();
    let mut out = Vec::new();
    for (i, rule) in expected.rules.iter().enumerate() {
        match unmatched.iter_mut().find(|a| a.is_some_and(|a| a == rule)) {
            Some(slot) => *slot = None,
            None => out.push(format!(
                "chain {}: missing rule: {}",
                expected.name,
                expected
                    .texts
                    .get(i)
                    .map(|t| t.trim().to_string())
                    .unwrap_or_else(|| describe(rule))
            )),
        }
    }
    for rule in unmatched.into_iter().flatten() {
        out.push(format!(
            "chain {}: unexpected rule: {}",
            expected.name,
            describe(rule)
        ));
    }
    if out.is_empty() && expected.rules != actual.rules {
        out.push(format!(
            "chain {}: the rules are in a different order",
            expected.name
        ));
    }
    out
}

/// A rule's expressions in the form `nft --debug=netlink` prints them.
pub fn describe(rule: &[Expr]) -> String {
    let hex = |d: &[u8]| {
        let mut s = String::from("0x");
        for b in d {
            s.push_str(&format!("{b:02x}"));
        }
        s
    };
    let base = |b: u32| match b {
        BASE_LINK => "link",
        BASE_NETWORK => "network",
        BASE_TRANSPORT => "transport",
        _ => "?",
    };
    let parts: Vec<String> = rule
        .iter()
        .map(|e| match e {
            Expr::Meta { key, dreg } => format!("meta load {key} => reg {dreg}"),
            Expr::Cmp { sreg, op, data } => format!("cmp op {op} reg {sreg} {}", hex(data)),
            Expr::Payload {
                base: b,
                offset,
                len,
                dreg,
            } => format!(
                "payload load {len}b @ {} header + {offset} => reg {dreg}",
                base(*b)
            ),
            Expr::Lookup { set, sreg, invert } => format!(
                "lookup reg {sreg} set {set}{}",
                if *invert { " 0x1" } else { "" }
            ),
            Expr::Dynset { set, op, sreg, .. } => {
                format!("dynset op {op} reg_key {sreg} set {set}")
            }
            Expr::Byteorder { sreg, dreg, op, .. } => {
                format!("byteorder reg {dreg} = op {op}(reg {sreg})")
            }
            Expr::Limit { rate, burst, .. } => format!("limit rate {rate} burst {burst}"),
            Expr::Log { group, prefix } => format!("log prefix {prefix} group {group}"),
            Expr::Counter => "counter".to_string(),
            Expr::Immediate { verdict } => format!("immediate verdict {verdict}"),
            Expr::Ct { key, dreg } => format!("ct load {key} => reg {dreg}"),
            Expr::Range { sreg, op, from, to } => {
                format!("range op {op} reg {sreg} {} {}", hex(from), hex(to))
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
                ..
            } => format!(
                "bitwise reg {dreg} = ( reg {sreg} & {} ) ^ {}",
                hex(mask),
                hex(xor)
            ),
            Expr::Other(name) => name.clone(),
        })
        .collect();
    format!("[ {} ]", parts.join(" ] [ "))
}

pub(super) fn set_flags(set: &Set) -> u32 {
    let mut f = 0;
    if set.interval {
        f |= SETF_INTERVAL;
        if set.fields.len() > 1 {
            f |= SETF_CONCAT;
        }
    }
    if set.dynamic {
        f |= SETF_EVAL;
    }
    if set.timeout_secs.is_some() {
        f |= SETF_TIMEOUT;
    }
    f
}

/// One set element as it goes to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct WireElement {
    pub key: Vec<u8>,
    /// The last key of the range, in a concatenated interval set.
    pub key_end: Option<Vec<u8>>,
    /// The element ends an interval (`NFT_SET_ELEM_INTERVAL_END`), in a single-field one.
    pub interval_end: bool,
}

/// Whether the kernel keeps the set as a red-black tree of interval boundaries (a single-field
/// interval set), not as ranges with a start and an end key (a concatenated one).
pub(super) fn is_tree(set_flags: u32) -> bool {
    set_flags & SETF_INTERVAL != 0 && set_flags & SETF_CONCAT == 0
}

/// The elements that make up `set` in the kernel. A single-field interval set holds each
/// range as its first key and, unless the range runs to the top of the key space, an
/// end-of-interval element at the key after its last.
pub(super) fn wire_elements(set: &Set) -> Vec<WireElement> {
    let tree = is_tree(set_flags(set));
    let mut out = Vec::new();
    for e in &set.elements {
        let (lo, hi) = element_keys(set, e);
        if !tree {
            out.push(WireElement {
                key: lo,
                key_end: set.interval.then_some(hi),
                interval_end: false,
            });
            continue;
        }
        let after = successor(&hi);
        out.push(WireElement {
            key: lo,
            key_end: None,
            interval_end: false,
        });
        if let Some(after) = after {
            out.push(WireElement {
                key: after,
                key_end: None,
                interval_end: true,
            });
        }
    }
    out
}

/// The big-endian number after `key`; `None` past the top.
fn successor(key: &[u8]) -> Option<Vec<u8>> {
    let mut k = key.to_vec();
    for b in k.iter_mut().rev() {
        if *b == u8::MAX {
            *b = 0;
        } else {
            *b += 1;
            return Some(k);
        }
    }
    None
}

/// The big-endian number before `key` (`key` is not zero).
fn predecessor(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    for b in k.iter_mut().rev() {
        if *b == 0 {
            *b = u8::MAX;
        } else {
            *b -= 1;
            break;
        }
    }
    k
}

/// The (first, last) keys of the ranges a tree set's dumped elements (key, interval end)
/// describe: each start runs to the key before the end element that follows it, or to the top
/// of the key space. An end element with no start before it bounds nothing.
pub(super) fn tree_ranges(mut elements: Vec<(Vec<u8>, bool)>) -> BTreeSet<(Vec<u8>, Vec<u8>)> {
    elements.sort();
    let mut out = BTreeSet::new();
    let mut open: Option<Vec<u8>> = None;
    for (key, end) in elements {
        match (end, open.take()) {
            (true, Some(start)) => {
                if key > start {
                    out.insert((start, predecessor(&key)));
                }
            }
            (true, None) => {}
            (false, Some(start)) => {
                // A start inside a range that has not ended: the kernel rejects overlaps, so
                // this is not seen; keep both visible to a diff.
                let last = predecessor(&key);
                out.insert((start, last));
                open = Some(key);
            }
            (false, None) => open = Some(key),
        }
    }
    if let Some(start) = open {
        let top = vec![u8::MAX; start.len()];
        out.insert((start, top));
    }
    out
}

pub(super) fn element_keys(set: &Set, e: &crate::ruleset::Element) -> (Vec<u8>, Vec<u8>) {
    let mut lo = Vec::new();
    let mut hi = Vec::new();
    for (f, s) in set.fields.iter().zip(&e.spans) {
        lo.extend(f.encode(s.lo));
        hi.extend(f.encode(s.hi));
    }
    (lo, hi)
}

/// nftnl user data TLV holding a comment (so `nft list` shows it).
pub(super) fn comment_udata(comment: &str) -> Vec<u8> {
    let mut bytes: Vec<u8> = comment.bytes().take(254).collect();
    bytes.push(0);
    let mut out = vec![NFTNL_UDATA_COMMENT, bytes.len() as u8];
    out.extend(bytes);
    out
}

pub(super) fn parse_comment_udata(data: &[u8]) -> String {
    let mut rest = data;
    while rest.len() >= 2 {
        let (kind, len) = (rest[0], rest[1] as usize);
        let Some(value) = rest.get(2..2 + len) else {
            break;
        };
        if kind == NFTNL_UDATA_COMMENT {
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            return String::from_utf8_lossy(&value[..end]).into_owned();
        }
        rest = &rest[2 + len..];
    }
    String::new()
}

/// What a table should look like in the kernel.
pub fn expected_snapshot(table: &Table) -> Snapshot {
    Snapshot {
        name: table.name.clone(),
        comment: table.comment.clone(),
        sets: table
            .sets
            .iter()
            .map(|s| SetSnapshot {
                name: s.name.clone(),
                flags: set_flags(s),
                key_type: s.key_type(),
                key_len: s.key_len() as u32,
                timeout_ms: s.timeout_secs.map(|t| t as u64 * 1000),
                elements: s.elements.iter().map(|e| element_keys(s, e)).collect(),
            })
            .collect(),
        chains: table
            .chains
            .iter()
            .map(|c| ChainSnapshot {
                name: c.name.clone(),
                hook: Some(c.hook.number()),
                priority: Some(c.priority),
                devices: c.device.iter().cloned().collect(),
                policy: Some(c.policy.code()),
                rules: c
                    .rules
                    .iter()
                    .map(|r| lower_rule(table.family, &r.stmts))
                    .collect(),
                texts: c
                    .rules
                    .iter()
                    .map(|r| crate::ruleset::render_rule(table.family, r))
                    .collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_udata_round_trips() {
        assert_eq!(
            parse_comment_udata(&comment_udata("egress-guard dev=x")),
            "egress-guard dev=x"
        );
        assert_eq!(parse_comment_udata(&[0, 200, 1]), "");
    }
}
