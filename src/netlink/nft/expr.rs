//! Kernel expressions (`Expr`) and the lowering of ruleset statements to them, as nft lowers
//! the same statements.

use super::consts::*;
use crate::ruleset::{Base, CmpOp, Dev, Family, Load, Selector, Stmt};

/// One kernel expression, in the form we both send and read back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Expr {
    Meta {
        key: u32,
        dreg: u32,
    },
    Cmp {
        sreg: u32,
        op: u32,
        data: Vec<u8>,
    },
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Lookup {
        set: String,
        sreg: u32,
        /// Matches when the key is absent.
        invert: bool,
    },
    Dynset {
        set: String,
        op: u32,
        sreg: u32,
        /// A stateful expression every element gets (a per-key limit).
        expr: Option<Box<Expr>>,
    },
    /// Host to network byte order of a register (`op` 1 = hton).
    Byteorder {
        sreg: u32,
        dreg: u32,
        op: u32,
        len: u32,
        size: u32,
    },
    Limit {
        rate: u64,
        unit: u64,
        burst: u32,
        kind: u32,
    },
    Log {
        group: u16,
        prefix: String,
    },
    Counter,
    Immediate {
        verdict: i32,
    },
    Ct {
        key: u32,
        dreg: u32,
    },
    /// Register in (`op` 0) or outside (`op` 1) `from..=to`.
    Range {
        sreg: u32,
        op: u32,
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Bitwise {
        sreg: u32,
        dreg: u32,
        len: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// Anything we never generate: always a difference.
    Other(String),
}

fn load_selector(sel: Selector, dreg: u32) -> Expr {
    let payload = |base, offset, len| Expr::Payload {
        base,
        offset,
        len,
        dreg,
    };
    match sel {
        Selector::Ip4Saddr => payload(BASE_NETWORK, 12, 4),
        Selector::Ip4Daddr => payload(BASE_NETWORK, 16, 4),
        Selector::Ip6Saddr => payload(BASE_NETWORK, 8, 16),
        Selector::Ip6Daddr => payload(BASE_NETWORK, 24, 16),
        Selector::L4Proto => Expr::Meta {
            key: META_L4PROTO,
            dreg,
        },
        Selector::ThSport => payload(BASE_TRANSPORT, 0, 2),
        Selector::ThDport => payload(BASE_TRANSPORT, 2, 2),
        Selector::EtherDaddr => payload(BASE_LINK, 0, 6),
        Selector::EtherSaddr => payload(BASE_LINK, 6, 6),
        Selector::Raw {
            base,
            offset,
            field,
        } => payload(base_number(base), offset, field.width() as u32),
    }
}

fn base_number(base: Base) -> u32 {
    match base {
        Base::Link => BASE_LINK,
        Base::Network => BASE_NETWORK,
        Base::Transport => BASE_TRANSPORT,
    }
}

fn cmp_op(op: CmpOp) -> u32 {
    match op {
        CmpOp::Eq => CMP_EQ,
        CmpOp::Neq => CMP_NEQ,
        CmpOp::Lte => CMP_LTE,
        CmpOp::Gte => CMP_GTE,
    }
}

/// A comparison of loaded bytes, as nft lowers it: payload bytes compare as they are; the
/// packet length is a host-order register, compared as is for (in)equality and turned to
/// network order for an ordering comparison.
fn lower_cmp(load: Load, op: CmpOp, value: &[u8], out: &mut Vec<Expr>) {
    let r = REG32_00;
    match load {
        Load::Payload { base, offset, len } => {
            out.push(Expr::Payload {
                base: base_number(base),
                offset,
                len,
                dreg: r,
            });
            out.push(Expr::Cmp {
                sreg: r,
                op: cmp_op(op),
                data: value.to_vec(),
            });
        }
        Load::MetaLen => {
            out.push(meta(META_LEN));
            let mut be = [0u8; 4];
            let n = value.len().min(4);
            be[4 - n..].copy_from_slice(&value[value.len() - n..]);
            let data = match op {
                CmpOp::Eq | CmpOp::Neq => u32::from_be_bytes(be).to_ne_bytes().to_vec(),
                CmpOp::Lte | CmpOp::Gte => {
                    out.push(Expr::Byteorder {
                        sreg: r,
                        dreg: r,
                        op: BYTEORDER_HTON,
                        len: 4,
                        size: 4,
                    });
                    be.to_vec()
                }
            };
            out.push(Expr::Cmp {
                sreg: r,
                op: cmp_op(op),
                data,
            });
        }
    }
}

/// Loads a concatenated key into consecutive 32-bit registers from REG32_00.
fn load_key(key: &[Selector], out: &mut Vec<Expr>) {
    let mut reg = REG32_00;
    for sel in key {
        out.push(load_selector(*sel, reg));
        reg += (sel.field().padded_len() / 4) as u32;
    }
}

/// A load into the first register followed by "equals `data`".
fn load_eq(load: Expr, data: Vec<u8>, out: &mut Vec<Expr>) {
    out.push(load);
    out.push(Expr::Cmp {
        sreg: REG32_00,
        op: CMP_EQ,
        data,
    });
}

/// A load into the first register followed by "lies in `lo..=hi`" (as nft writes a range).
fn load_within(load: Expr, lo: u8, hi: u8, out: &mut Vec<Expr>) {
    out.push(load);
    for (op, v) in [(CMP_GTE, lo), (CMP_LTE, hi)] {
        out.push(Expr::Cmp {
            sreg: REG32_00,
            op,
            data: vec![v],
        });
    }
}

/// A load into the first register followed by "lies outside `lo..=hi`": a `cmp neq` for one
/// value, a `range neq` for more (as nft writes `!= 134` and `!= 7-16`).
fn load_outside(load: Expr, lo: u8, hi: u8, out: &mut Vec<Expr>) {
    out.push(load);
    out.push(if lo == hi {
        Expr::Cmp {
            sreg: REG32_00,
            op: CMP_NEQ,
            data: vec![lo],
        }
    } else {
        Expr::Range {
            sreg: REG32_00,
            op: RANGE_NEQ,
            from: vec![lo],
            to: vec![hi],
        }
    });
}

/// The ICMP/ICMPv6 type: the first byte of the transport header.
fn icmp_type() -> Expr {
    Expr::Payload {
        base: BASE_TRANSPORT,
        offset: 0,
        len: 1,
        dreg: REG32_00,
    }
}

fn meta(key: u32) -> Expr {
    Expr::Meta {
        key,
        dreg: REG32_00,
    }
}

fn link_is_ether(dev: Dev, out: &mut Vec<Expr>) {
    let key = match dev {
        Dev::In => META_IIFTYPE,
        Dev::Out => META_OIFTYPE,
    };
    load_eq(meta(key), ARPHRD_ETHER.to_ne_bytes().to_vec(), out)
}

/// Lowers one statement to kernel expressions.
pub fn lower_stmt(family: Family, stmt: &Stmt, out: &mut Vec<Expr>) {
    let r = REG32_00;
    match stmt {
        Stmt::L3(l3) => match family {
            Family::Netdev => load_eq(
                meta(META_PROTOCOL),
                l3.ethertype().to_be_bytes().to_vec(),
                out,
            ),
            Family::Inet => load_eq(meta(META_NFPROTO), vec![l3.nfproto()], out),
        },
        Stmt::L3Not(l3) => {
            out.push(meta(META_PROTOCOL));
            out.push(Expr::Cmp {
                sreg: r,
                op: CMP_NEQ,
                data: l3.ethertype().to_be_bytes().to_vec(),
            });
        }
        Stmt::L4Proto(p) => load_eq(meta(META_L4PROTO), vec![*p], out),
        Stmt::L4ProtoRange(lo, hi) => load_within(meta(META_L4PROTO), *lo, *hi, out),
        Stmt::L4ProtoNot(lo, hi) => load_outside(meta(META_L4PROTO), *lo, *hi, out),
        Stmt::IcmpType(t) => load_eq(icmp_type(), vec![*t], out),
        Stmt::IcmpTypeRange(lo, hi) => load_within(icmp_type(), *lo, *hi, out),
        Stmt::IcmpTypeNot(lo, hi) => load_outside(icmp_type(), *lo, *hi, out),
        Stmt::OifName(name) => {
            let mut data = name.as_bytes().to_vec();
            data.resize(16, 0);
            load_eq(meta(META_OIFNAME), data, out);
        }
        Stmt::CtState(mask) => {
            out.push(Expr::Ct {
                key: CT_STATE,
                dreg: r,
            });
            out.push(Expr::Bitwise {
                sreg: r,
                dreg: r,
                len: 4,
                mask: mask.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            });
            out.push(Expr::Cmp {
                sreg: r,
                op: CMP_NEQ,
                data: vec![0; 4],
            });
        }
        Stmt::Cmp { load, op, value } => lower_cmp(*load, *op, value, out),
        Stmt::LinkIsEther(dev) => link_is_ether(*dev, out),
        // The Ethernet type as it was on the wire: a VLAN-tagged frame reads 0x8100 here
        // (the kernel puts the tag back for the load), never the type inside the tag.
        Stmt::EtherType(dev, l3) => {
            link_is_ether(*dev, out);
            load_eq(
                Expr::Payload {
                    base: BASE_LINK,
                    offset: 12,
                    len: 2,
                    dreg: r,
                },
                l3.ethertype().to_be_bytes().to_vec(),
                out,
            );
        }
        Stmt::Lookup { set, key, negate } => {
            load_key(key, out);
            out.push(Expr::Lookup {
                set: set.clone(),
                sreg: r,
                invert: *negate,
            });
        }
        Stmt::Update { set, key, limit } => {
            load_key(key, out);
            out.push(Expr::Dynset {
                set: set.clone(),
                op: DYNSET_OP_UPDATE,
                sreg: r,
                expr: limit.map(|l| {
                    Box::new(Expr::Limit {
                        rate: l.per_second,
                        unit: 1,
                        burst: l.burst,
                        kind: 0,
                    })
                }),
            });
        }
        Stmt::Add { set, key } => {
            load_key(key, out);
            out.push(Expr::Dynset {
                set: set.clone(),
                op: DYNSET_OP_ADD,
                sreg: r,
                expr: None,
            });
        }
        Stmt::Limit { per_second, burst } => out.push(Expr::Limit {
            rate: *per_second,
            unit: 1,
            burst: *burst,
            kind: 0,
        }),
        Stmt::Log { prefix, group } => out.push(Expr::Log {
            group: *group,
            prefix: prefix.clone(),
        }),
        Stmt::Counter => out.push(Expr::Counter),
        Stmt::Verdict(v) => out.push(Expr::Immediate {
            verdict: v.code() as i32,
        }),
    }
}

pub fn lower_rule(family: Family, stmts: &[Stmt]) -> Vec<Expr> {
    let mut out = Vec::new();
    for s in stmts {
        lower_stmt(family, s, &mut out);
    }
    out
}
