//! nf_tables over netlink: lowers the ruleset IR to kernel expressions, encodes one atomic batch,
//! and decodes dumps back into a `Snapshot` that can be compared with what a table should hold.

use std::collections::BTreeSet;

use super::attr::{AttrBuf, Attrs};
use super::socket::{
    encode_message, Message, Socket, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use super::NetlinkError;
use crate::ruleset::{Base, CmpOp, Dev, Family, Load, Selector, Set, Stmt, Table};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const MSG_NEWTABLE: u16 = 0;
const MSG_GETTABLE: u16 = 1;
const MSG_DELTABLE: u16 = 2;
const MSG_NEWCHAIN: u16 = 3;
const MSG_GETCHAIN: u16 = 4;
const MSG_NEWRULE: u16 = 6;
const MSG_GETRULE: u16 = 7;
const MSG_NEWSET: u16 = 9;
const MSG_GETSET: u16 = 10;
const MSG_NEWSETELEM: u16 = 12;
const MSG_GETSETELEM: u16 = 13;

const TABLE_NAME: u16 = 1;
const TABLE_USERDATA: u16 = 6;
const CHAIN_TABLE: u16 = 1;
const CHAIN_NAME: u16 = 3;
const CHAIN_HOOK: u16 = 4;
const CHAIN_POLICY: u16 = 5;
const CHAIN_TYPE: u16 = 7;
const HOOK_HOOKNUM: u16 = 1;
const HOOK_PRIORITY: u16 = 2;
const HOOK_DEV: u16 = 3;
const HOOK_DEVS: u16 = 4;
const RULE_TABLE: u16 = 1;
const RULE_CHAIN: u16 = 2;
const RULE_EXPRESSIONS: u16 = 4;
const LIST_ELEM: u16 = 1;
const EXPR_NAME: u16 = 1;
const EXPR_DATA: u16 = 2;
const SET_TABLE: u16 = 1;
const SET_NAME: u16 = 2;
const SET_FLAGS: u16 = 3;
const SET_KEY_TYPE: u16 = 4;
const SET_KEY_LEN: u16 = 5;
const SET_DESC: u16 = 9;
const SET_ID: u16 = 10;
const SET_TIMEOUT: u16 = 11;
const SET_DESC_SIZE: u16 = 1;
const SET_DESC_CONCAT: u16 = 2;
const SET_FIELD_LEN: u16 = 1;
const ELEM_LIST_TABLE: u16 = 1;
const ELEM_LIST_SET: u16 = 2;
const ELEM_LIST_ELEMENTS: u16 = 3;
const ELEM_LIST_SET_ID: u16 = 4;
const ELEM_KEY: u16 = 1;
const ELEM_KEY_END: u16 = 10;
const DATA_VALUE: u16 = 1;
const DATA_VERDICT: u16 = 2;
const VERDICT_CODE: u16 = 1;

const SETF_INTERVAL: u32 = 0x4;
const SETF_TIMEOUT: u32 = 0x10;
const SETF_EVAL: u32 = 0x20;
const SETF_CONCAT: u32 = 0x80;
/// Flags we set and compare; the kernel may report others.
const SETF_MASK: u32 = SETF_INTERVAL | SETF_TIMEOUT | SETF_EVAL | SETF_CONCAT;

const REG_VERDICT: u32 = 0;
const REG32_00: u32 = 8;
const META_LEN: u32 = 0;
const META_PROTOCOL: u32 = 1;
const META_IIFTYPE: u32 = 8;
const META_OIFTYPE: u32 = 9;
const ARPHRD_ETHER: u16 = 1;
const META_OIFNAME: u32 = 7;
const META_NFPROTO: u32 = 15;
const META_L4PROTO: u32 = 16;
const CT_STATE: u32 = 0;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const CMP_LTE: u32 = 3;
const CMP_GTE: u32 = 5;
const BASE_LINK: u32 = 0;
const BASE_NETWORK: u32 = 1;
const BASE_TRANSPORT: u32 = 2;
const DYNSET_OP_UPDATE: u32 = 1;
const RANGE_NEQ: u32 = 1;
const LOOKUP_F_INV: u32 = 1;
const BYTEORDER_HTON: u32 = 1;
const NFTNL_UDATA_COMMENT: u8 = 0;

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

fn data_value(value: &[u8]) -> AttrBuf {
    let mut b = AttrBuf::new();
    b.put(DATA_VALUE, value);
    b
}

fn encode_expr(e: &Expr, set_ids: &dyn Fn(&str) -> Option<u32>) -> AttrBuf {
    let mut data = AttrBuf::new();
    let name = match e {
        Expr::Meta { key, dreg } => {
            data.put_be32(2, *key).put_be32(1, *dreg);
            "meta"
        }
        Expr::Cmp { sreg, op, data: d } => {
            data.put_be32(1, *sreg)
                .put_be32(2, *op)
                .put_nested(3, data_value(d));
            "cmp"
        }
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        } => {
            data.put_be32(1, *dreg)
                .put_be32(2, *base)
                .put_be32(3, *offset)
                .put_be32(4, *len);
            "payload"
        }
        Expr::Lookup { set, sreg, invert } => {
            data.put_str(1, set).put_be32(2, *sreg);
            if let Some(id) = set_ids(set) {
                data.put_be32(4, id);
            }
            if *invert {
                data.put_be32(5, LOOKUP_F_INV);
            }
            "lookup"
        }
        Expr::Dynset {
            set,
            op,
            sreg,
            expr,
        } => {
            data.put_str(1, set);
            if let Some(id) = set_ids(set) {
                data.put_be32(2, id);
            }
            data.put_be32(3, *op).put_be32(4, *sreg);
            if let Some(e) = expr {
                data.put_nested(7, encode_expr(e, set_ids));
            }
            "dynset"
        }
        Expr::Byteorder {
            sreg,
            dreg,
            op,
            len,
            size,
        } => {
            data.put_be32(1, *sreg)
                .put_be32(2, *dreg)
                .put_be32(3, *op)
                .put_be32(4, *len)
                .put_be32(5, *size);
            "byteorder"
        }
        Expr::Limit {
            rate,
            unit,
            burst,
            kind,
        } => {
            data.put_be64(1, *rate)
                .put_be64(2, *unit)
                .put_be32(3, *burst)
                .put_be32(4, *kind)
                .put_be32(5, 0);
            "limit"
        }
        Expr::Log { group, prefix } => {
            data.put_be16(1, *group).put_str(2, prefix);
            "log"
        }
        Expr::Counter => {
            data.put_be64(1, 0).put_be64(2, 0);
            "counter"
        }
        Expr::Immediate { verdict } => {
            data.put_be32(1, REG_VERDICT).nest(2, |d| {
                d.nest(DATA_VERDICT, |v| {
                    v.put_be32(VERDICT_CODE, *verdict as u32);
                });
            });
            "immediate"
        }
        Expr::Ct { key, dreg } => {
            data.put_be32(2, *key).put_be32(1, *dreg);
            "ct"
        }
        Expr::Range { sreg, op, from, to } => {
            data.put_be32(1, *sreg)
                .put_be32(2, *op)
                .put_nested(3, data_value(from))
                .put_nested(4, data_value(to));
            "range"
        }
        Expr::Bitwise {
            sreg,
            dreg,
            len,
            mask,
            xor,
        } => {
            data.put_be32(1, *sreg)
                .put_be32(2, *dreg)
                .put_be32(3, *len)
                .put_nested(4, data_value(mask))
                .put_nested(5, data_value(xor));
            "bitwise"
        }
        Expr::Other(n) => n.as_str(),
    };
    let mut elem = AttrBuf::new();
    elem.put_str(EXPR_NAME, name).put_nested(EXPR_DATA, data);
    elem
}

/// Normalises a register number as the kernel reports it (16-byte registers 1-4 alias the
/// 32-bit registers 8-23) to the 32-bit numbering we send.
fn norm_reg(reg: u32) -> u32 {
    if (1..=4).contains(&reg) {
        REG32_00 + (reg - 1) * 4
    } else {
        reg
    }
}

fn nested_value(a: Option<super::attr::Attr<'_>>) -> Vec<u8> {
    a.and_then(|a| a.nested().get(DATA_VALUE))
        .map(|v| v.value.to_vec())
        .unwrap_or_default()
}

fn decode_expr(elem: Attrs<'_>) -> Expr {
    let name = elem.get(EXPR_NAME).map(|a| a.string()).unwrap_or_default();
    let data = elem
        .get(EXPR_DATA)
        .map(|a| a.nested())
        .unwrap_or_else(|| Attrs::new(&[]));
    let u32_of = |k: u16| data.get(k).and_then(|a| a.be32()).unwrap_or(0);
    let reg = |k: u16| norm_reg(u32_of(k));
    match name.as_str() {
        "meta" if data.get(1).is_some() => Expr::Meta {
            key: u32_of(2),
            dreg: reg(1),
        },
        "cmp" => Expr::Cmp {
            sreg: reg(1),
            op: u32_of(2),
            data: nested_value(data.get(3)),
        },
        "payload" if data.get(1).is_some() => Expr::Payload {
            base: u32_of(2),
            offset: u32_of(3),
            len: u32_of(4),
            dreg: reg(1),
        },
        "lookup" if data.get(3).is_none() => Expr::Lookup {
            set: data.get(1).map(|a| a.string()).unwrap_or_default(),
            sreg: reg(2),
            invert: u32_of(5) & LOOKUP_F_INV != 0,
        },
        "dynset" if data.get(10).is_none() => Expr::Dynset {
            set: data.get(1).map(|a| a.string()).unwrap_or_default(),
            op: u32_of(3),
            sreg: reg(4),
            expr: data.get(7).map(|a| Box::new(decode_expr(a.nested()))),
        },
        "byteorder" => Expr::Byteorder {
            sreg: reg(1),
            dreg: reg(2),
            op: u32_of(3),
            len: u32_of(4),
            size: u32_of(5),
        },
        "limit" => Expr::Limit {
            rate: data.get(1).and_then(|a| a.be64()).unwrap_or(0),
            unit: data.get(2).and_then(|a| a.be64()).unwrap_or(0),
            burst: u32_of(3),
            kind: u32_of(4),
        },
        "log" => Expr::Log {
            group: data.get(1).and_then(|a| a.be16()).unwrap_or(0),
            prefix: data.get(2).map(|a| a.string()).unwrap_or_default(),
        },
        "counter" => Expr::Counter,
        "immediate" if u32_of(1) == REG_VERDICT => {
            let code = data
                .get(2)
                .and_then(|d| d.nested().get(DATA_VERDICT))
                .and_then(|v| v.nested().get(VERDICT_CODE))
                .and_then(|c| c.be32())
                .unwrap_or(u32::MAX);
            Expr::Immediate {
                verdict: code as i32,
            }
        }
        "ct" if data.get(1).is_some() => Expr::Ct {
            key: u32_of(2),
            dreg: reg(1),
        },
        "range" => Expr::Range {
            sreg: reg(1),
            op: u32_of(2),
            from: nested_value(data.get(3)),
            to: nested_value(data.get(4)),
        },
        "bitwise" => Expr::Bitwise {
            sreg: reg(1),
            dreg: reg(2),
            len: u32_of(3),
            mask: nested_value(data.get(4)),
            xor: nested_value(data.get(5)),
        },
        other => Expr::Other(other.to_string()),
    }
}

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
                    if a.rules.len() != c.rules.len() {
                        out.push(format!(
                            "chain {} has {} rule(s), expected {}",
                            c.name,
                            a.rules.len(),
                            c.rules.len()
                        ));
                    } else if let Some(i) = c.rules.iter().zip(&a.rules).position(|(x, y)| x != y) {
                        out.push(format!("chain {} rule {} differs", c.name, i + 1));
                    }
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

fn set_flags(set: &Set) -> u32 {
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

fn element_keys(set: &Set, e: &crate::ruleset::Element) -> (Vec<u8>, Vec<u8>) {
    let mut lo = Vec::new();
    let mut hi = Vec::new();
    for (f, s) in set.fields.iter().zip(&e.spans) {
        lo.extend(f.encode(s.lo));
        hi.extend(f.encode(s.hi));
    }
    (lo, hi)
}

/// nftnl user data TLV holding a comment (so `nft list` shows it).
fn comment_udata(comment: &str) -> Vec<u8> {
    let mut bytes: Vec<u8> = comment.bytes().take(254).collect();
    bytes.push(0);
    let mut out = vec![NFTNL_UDATA_COMMENT, bytes.len() as u8];
    out.extend(bytes);
    out
}

fn parse_comment_udata(data: &[u8]) -> String {
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
            })
            .collect(),
    }
}

fn nfgen(family: u8, res_id: u16) -> Vec<u8> {
    let mut v = vec![family, 0];
    v.extend_from_slice(&res_id.to_be_bytes());
    v
}

fn with_header(family: u8, attrs: AttrBuf) -> Vec<u8> {
    let mut p = nfgen(family, 0);
    p.extend_from_slice(attrs.bytes());
    p
}

fn msg_type(op: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | op
}

/// One step of a transaction.
#[derive(Debug, Clone)]
pub enum Op<'a> {
    DeleteTable { family: Family, name: String },
    CreateTable(&'a Table),
}

/// A prepared nf_tables batch: bytes and the sequence numbers that must be acknowledged.
pub struct Batch {
    pub bytes: Vec<u8>,
    pub seqs: Vec<u32>,
    pub messages: usize,
}

/// Encodes a list of operations as one atomic batch.
pub fn encode_batch(ops: &[Op<'_>], first_seq: u32) -> Batch {
    // Inner messages first; they are numbered and framed by BEGIN/END below.
    let mut inner: Vec<(u16, u16, Vec<u8>)> = Vec::new();
    let mut push = |kind: u16, flags: u16, payload: Vec<u8>| inner.push((kind, flags, payload));
    for op in ops {
        match op {
            Op::DeleteTable { family, name } => {
                let mut a = AttrBuf::new();
                a.put_str(TABLE_NAME, name);
                push(msg_type(MSG_DELTABLE), 0, with_header(family.nfproto(), a));
            }
            Op::CreateTable(t) => {
                let fam = t.family.nfproto();
                let mut a = AttrBuf::new();
                a.put_str(TABLE_NAME, &t.name)
                    .put_be32(2, 0)
                    .put(TABLE_USERDATA, &comment_udata(&t.comment));
                push(
                    msg_type(MSG_NEWTABLE),
                    NLM_F_CREATE | NLM_F_EXCL,
                    with_header(fam, a),
                );
                let set_id = |name: &str| {
                    t.sets
                        .iter()
                        .position(|s| s.name == name)
                        .map(|i| i as u32 + 1)
                };
                for (i, s) in t.sets.iter().enumerate() {
                    let id = i as u32 + 1;
                    let mut a = AttrBuf::new();
                    a.put_str(SET_TABLE, &t.name)
                        .put_str(SET_NAME, &s.name)
                        .put_be32(SET_FLAGS, set_flags(s))
                        .put_be32(SET_KEY_TYPE, s.key_type())
                        .put_be32(SET_KEY_LEN, s.key_len() as u32)
                        .put_be32(SET_ID, id);
                    if let Some(t) = s.timeout_secs {
                        a.put_be64(SET_TIMEOUT, t as u64 * 1000);
                    }
                    let concat = s.interval && s.fields.len() > 1;
                    if concat || s.size.is_some() {
                        a.nest(SET_DESC, |d| {
                            if let Some(size) = s.size {
                                d.put_be32(SET_DESC_SIZE, size);
                            }
                            if concat {
                                d.nest(SET_DESC_CONCAT, |c| {
                                    for f in &s.fields {
                                        c.nest(LIST_ELEM, |e| {
                                            e.put_be32(SET_FIELD_LEN, f.width() as u32);
                                        });
                                    }
                                });
                            }
                        });
                    }
                    push(
                        msg_type(MSG_NEWSET),
                        NLM_F_CREATE | NLM_F_EXCL,
                        with_header(fam, a),
                    );
                    // Elements in chunks so no single message grows past netlink's limits.
                    for chunk in s.elements.chunks(256) {
                        let mut a = AttrBuf::new();
                        a.put_str(ELEM_LIST_TABLE, &t.name)
                            .put_str(ELEM_LIST_SET, &s.name)
                            .put_be32(ELEM_LIST_SET_ID, id);
                        a.nest(ELEM_LIST_ELEMENTS, |list| {
                            for e in chunk {
                                let (lo, hi) = element_keys(s, e);
                                list.nest(LIST_ELEM, |el| {
                                    el.put_nested(ELEM_KEY, data_value(&lo));
                                    if s.interval {
                                        el.put_nested(ELEM_KEY_END, data_value(&hi));
                                    }
                                });
                            }
                        });
                        push(
                            msg_type(MSG_NEWSETELEM),
                            NLM_F_CREATE | NLM_F_EXCL,
                            with_header(fam, a),
                        );
                    }
                }
                for c in &t.chains {
                    let mut a = AttrBuf::new();
                    a.put_str(CHAIN_TABLE, &t.name).put_str(CHAIN_NAME, &c.name);
                    a.nest(CHAIN_HOOK, |h| {
                        h.put_be32(HOOK_HOOKNUM, c.hook.number())
                            .put_be32(HOOK_PRIORITY, c.priority as u32);
                        if let Some(dev) = &c.device {
                            h.put_str(HOOK_DEV, dev);
                        }
                    });
                    a.put_be32(CHAIN_POLICY, c.policy.code())
                        .put_str(CHAIN_TYPE, "filter");
                    push(
                        msg_type(MSG_NEWCHAIN),
                        NLM_F_CREATE | NLM_F_EXCL,
                        with_header(fam, a),
                    );
                    for r in &c.rules {
                        let mut a = AttrBuf::new();
                        a.put_str(RULE_TABLE, &t.name).put_str(RULE_CHAIN, &c.name);
                        a.nest(RULE_EXPRESSIONS, |list| {
                            for e in lower_rule(t.family, &r.stmts) {
                                list.put_nested(LIST_ELEM, encode_expr(&e, &set_id));
                            }
                        });
                        push(
                            msg_type(MSG_NEWRULE),
                            NLM_F_CREATE | NLM_F_APPEND,
                            with_header(fam, a),
                        );
                    }
                }
            }
        }
    }
    // Only the last message asks for an ack: the kernel reports every failing message whether
    // or not it asked, and one ack instead of one per message saves a receive per message.
    let mut seq = first_seq;
    let mut bytes = Vec::new();
    let mut frame = |bytes: &mut Vec<u8>, kind: u16, flags: u16, payload: &[u8]| {
        seq = seq.wrapping_add(1);
        bytes.extend(encode_message(kind, NLM_F_REQUEST | flags, seq, payload));
        seq
    };
    let batch_header = nfgen(0, NFNL_SUBSYS_NFTABLES);
    frame(&mut bytes, NFNL_MSG_BATCH_BEGIN, 0, &batch_header);
    let mut seqs = Vec::new();
    for (i, (kind, flags, payload)) in inner.iter().enumerate() {
        if i + 1 == inner.len() {
            seqs.push(frame(&mut bytes, *kind, flags | NLM_F_ACK, payload));
        } else {
            frame(&mut bytes, *kind, *flags, payload);
        }
    }
    frame(&mut bytes, NFNL_MSG_BATCH_END, 0, &batch_header);
    Batch {
        bytes,
        seqs,
        messages: inner.len(),
    }
}

/// A table as listed by the kernel: name and our comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub name: String,
    pub comment: String,
}

fn attrs_of(m: &Message) -> Attrs<'_> {
    Attrs::new(m.payload.get(4..).unwrap_or(&[]))
}

/// Lists the tables of a family.
pub fn list_tables(sock: &mut Socket, family: Family) -> Result<Vec<TableInfo>, NetlinkError> {
    let msgs = sock.dump(
        "list tables",
        msg_type(MSG_GETTABLE),
        &nfgen(family.nfproto(), 0),
    )?;
    Ok(msgs
        .iter()
        .filter(|m| m.kind == msg_type(MSG_NEWTABLE))
        .map(table_info)
        .collect())
}

fn table_info(m: &Message) -> TableInfo {
    let a = attrs_of(m);
    TableInfo {
        name: a.get(TABLE_NAME).map(|x| x.string()).unwrap_or_default(),
        comment: a
            .get(TABLE_USERDATA)
            .map(|x| parse_comment_udata(x.value))
            .unwrap_or_default(),
    }
}

/// One table by name (a lookup, not a dump of every table). `None` if it does not exist.
pub fn get_table(
    sock: &mut Socket,
    family: Family,
    name: &str,
) -> Result<Option<TableInfo>, NetlinkError> {
    let mut req = AttrBuf::new();
    req.put_str(TABLE_NAME, name);
    match sock.request(
        "get table",
        msg_type(MSG_GETTABLE),
        0,
        &with_header(family.nfproto(), req),
    ) {
        Ok(msgs) => Ok(msgs
            .iter()
            .filter(|m| m.kind == msg_type(MSG_NEWTABLE))
            .map(table_info)
            .find(|t| t.name == name)),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads one table back. `None` if it does not exist.
pub fn read_table(
    sock: &mut Socket,
    family: Family,
    name: &str,
) -> Result<Option<Snapshot>, NetlinkError> {
    let fam = family.nfproto();
    let Some(info) = get_table(sock, family, name)? else {
        return Ok(None);
    };
    let mut snap = Snapshot {
        name: name.to_string(),
        comment: info.comment,
        sets: Vec::new(),
        chains: Vec::new(),
    };

    let mut req = AttrBuf::new();
    req.put_str(SET_TABLE, name);
    for m in sock.dump("list sets", msg_type(MSG_GETSET), &with_header(fam, req))? {
        let a = attrs_of(&m);
        if a.get(SET_TABLE).map(|x| x.string()).as_deref() != Some(name) {
            continue;
        }
        let set_name = a.get(SET_NAME).map(|x| x.string()).unwrap_or_default();
        let mut ereq = AttrBuf::new();
        ereq.put_str(ELEM_LIST_TABLE, name)
            .put_str(ELEM_LIST_SET, &set_name);
        let mut elements = BTreeSet::new();
        for em in sock.dump(
            "list set elements",
            msg_type(MSG_GETSETELEM),
            &with_header(fam, ereq),
        )? {
            let Some(list) = attrs_of(&em).get(ELEM_LIST_ELEMENTS) else {
                continue;
            };
            for el in list.nested() {
                let el = el.nested();
                let key = nested_value(el.get(ELEM_KEY));
                let end = el
                    .get(ELEM_KEY_END)
                    .map(|x| nested_value(Some(x)))
                    .unwrap_or_else(|| key.clone());
                elements.insert((key, end));
            }
        }
        snap.sets.push(SetSnapshot {
            name: set_name,
            flags: a.get(SET_FLAGS).and_then(|x| x.be32()).unwrap_or(0),
            key_type: a.get(SET_KEY_TYPE).and_then(|x| x.be32()).unwrap_or(0),
            key_len: a.get(SET_KEY_LEN).and_then(|x| x.be32()).unwrap_or(0),
            timeout_ms: a.get(SET_TIMEOUT).and_then(|x| x.be64()),
            elements,
        });
    }

    for m in sock.dump("list chains", msg_type(MSG_GETCHAIN), &nfgen(fam, 0))? {
        let a = attrs_of(&m);
        if a.get(CHAIN_TABLE).map(|x| x.string()).as_deref() != Some(name) {
            continue;
        }
        let hook = a.get(CHAIN_HOOK).map(|h| h.nested());
        let mut devices = Vec::new();
        if let Some(h) = &hook {
            if let Some(devs) = h.get(HOOK_DEVS) {
                devices.extend(devs.nested().map(|d| d.string()));
            }
            if devices.is_empty() {
                devices.extend(h.get(HOOK_DEV).map(|d| d.string()));
            }
        }
        snap.chains.push(ChainSnapshot {
            name: a.get(CHAIN_NAME).map(|x| x.string()).unwrap_or_default(),
            hook: hook
                .as_ref()
                .and_then(|h| h.get(HOOK_HOOKNUM))
                .and_then(|x| x.be32()),
            priority: hook
                .as_ref()
                .and_then(|h| h.get(HOOK_PRIORITY))
                .and_then(|x| x.be32())
                .map(|p| p as i32),
            devices,
            policy: a.get(CHAIN_POLICY).and_then(|x| x.be32()),
            rules: Vec::new(),
        });
    }

    let mut req = AttrBuf::new();
    req.put_str(RULE_TABLE, name);
    for m in sock.dump("list rules", msg_type(MSG_GETRULE), &with_header(fam, req))? {
        let a = attrs_of(&m);
        if a.get(RULE_TABLE).map(|x| x.string()).as_deref() != Some(name) {
            continue;
        }
        let chain = a.get(RULE_CHAIN).map(|x| x.string()).unwrap_or_default();
        let exprs: Vec<Expr> = a
            .get(RULE_EXPRESSIONS)
            .map(|l| l.nested().map(|e| decode_expr(e.nested())).collect())
            .unwrap_or_default();
        if let Some(c) = snap.chains.iter_mut().find(|c| c.name == chain) {
            c.rules.push(exprs);
        }
    }
    Ok(Some(snap))
}

/// Runs a batch and waits for every acknowledgement.
pub fn run_batch(sock: &mut Socket, ops: &[Op<'_>]) -> Result<usize, NetlinkError> {
    let first = sock.next_seq();
    let batch = encode_batch(ops, first);
    // The batch used begin + messages + end sequence numbers after `first`.
    for _ in 0..batch.messages + 2 {
        sock.next_seq();
    }
    sock.transact("nf_tables transaction", &batch.bytes, &batch.seqs)?;
    Ok(batch.messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{Verdict, L3};

    #[test]
    fn expressions_round_trip_through_the_wire_format() {
        let stmts = vec![
            Stmt::L3(L3::Ipv4),
            Stmt::L4Proto(6),
            Stmt::IcmpType(3),
            Stmt::IcmpTypeRange(11, 12),
            Stmt::OifName("lo".into()),
            Stmt::CtState(6),
            Stmt::Lookup {
                set: "s".into(),
                key: vec![Selector::Ip6Daddr, Selector::L4Proto, Selector::ThDport],
                negate: true,
            },
            Stmt::Update {
                set: "d".into(),
                key: vec![Selector::Ip4Daddr, Selector::Ip4Saddr],
                limit: Some(crate::ruleset::Rate {
                    per_second: 5,
                    burst: 7,
                }),
            },
            Stmt::Update {
                set: "d".into(),
                key: vec![Selector::EtherSaddr],
                limit: None,
            },
            Stmt::LinkIsEther(Dev::In),
            Stmt::LinkIsEther(Dev::Out),
            Stmt::EtherType(Dev::In, L3::Arp),
            Stmt::Cmp {
                load: crate::ruleset::Load::MetaLen,
                op: crate::ruleset::CmpOp::Lte,
                value: 576u32.to_be_bytes().to_vec(),
            },
            Stmt::Cmp {
                load: crate::ruleset::Load::Payload {
                    base: crate::ruleset::Base::Link,
                    offset: 6,
                    len: 6,
                },
                op: crate::ruleset::CmpOp::Neq,
                value: vec![2, 0, 0, 0, 0, 1],
            },
            Stmt::Limit {
                per_second: 10,
                burst: 20,
            },
            Stmt::Log {
                prefix: "eg:deny:x ".into(),
                group: 100,
            },
            Stmt::Counter,
            Stmt::Verdict(Verdict::Drop),
        ];
        for family in [Family::Netdev, Family::Inet] {
            let exprs = lower_rule(family, &stmts);
            let ids = |_: &str| Some(1u32);
            let mut list = AttrBuf::new();
            for e in &exprs {
                list.put_nested(LIST_ELEM, encode_expr(e, &ids));
            }
            let decoded: Vec<Expr> = Attrs::new(list.bytes())
                .map(|e| decode_expr(e.nested()))
                .collect();
            assert_eq!(decoded, exprs);
        }
    }

    #[test]
    fn batch_is_framed_and_only_its_last_message_asks_for_an_ack() {
        let table = Table {
            family: Family::Netdev,
            name: "egress_guard_x".into(),
            comment: "c".into(),
            sets: vec![],
            chains: vec![],
        };
        let ops = [
            Op::DeleteTable {
                family: Family::Netdev,
                name: "egress_guard_old".into(),
            },
            Op::CreateTable(&table),
        ];
        let batch = encode_batch(&ops, 100);
        let msgs = crate::netlink::socket::decode_messages(&batch.bytes);
        assert_eq!(msgs.len(), batch.messages + 2);
        assert_eq!(msgs[0].kind, NFNL_MSG_BATCH_BEGIN);
        assert_eq!(msgs[msgs.len() - 1].kind, NFNL_MSG_BATCH_END);
        let acked: Vec<u32> = msgs
            .iter()
            .filter(|m| m.flags & NLM_F_ACK != 0)
            .map(|m| m.seq)
            .collect();
        assert_eq!(acked, vec![msgs[msgs.len() - 2].seq]);
        assert_eq!(batch.seqs, acked);
        let seqs: Vec<u32> = msgs.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (101..101 + msgs.len() as u32).collect::<Vec<_>>());
    }

    #[test]
    fn kernel_register_numbers_are_normalised() {
        assert_eq!(norm_reg(1), 8);
        assert_eq!(norm_reg(2), 12);
        assert_eq!(norm_reg(9), 9);
    }

    #[test]
    fn comment_udata_round_trips() {
        assert_eq!(
            parse_comment_udata(&comment_udata("egress-guard dev=x")),
            "egress-guard dev=x"
        );
        assert_eq!(parse_comment_udata(&[0, 200, 1]), "");
    }
}
