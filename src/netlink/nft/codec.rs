//! The wire format of one expression: encoding for a batch, decoding from a dump.

use super::consts::*;
use super::{Counts, Expr};
use crate::netlink::attr::{Attr, AttrBuf, Attrs};

pub(super) fn data_value(value: &[u8]) -> AttrBuf {
    let mut b = AttrBuf::new();
    b.put(DATA_VALUE, value);
    b
}

pub(super) fn encode_expr(e: &Expr, set_ids: &dyn Fn(&str) -> Option<u32>) -> AttrBuf {
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
            data.put_be64(COUNTER_BYTES, 0).put_be64(COUNTER_PACKETS, 0);
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

pub(super) fn nested_value(a: Option<Attr<'_>>) -> Vec<u8> {
    a.and_then(|a| a.nested().get(DATA_VALUE))
        .map(|v| v.value.to_vec())
        .unwrap_or_default()
}

pub(super) fn decode_expr(elem: Attrs<'_>) -> Expr {
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

/// The packets and bytes a `counter` expression holds; `None` for any other expression.
pub(super) fn counter_values(elem: Attrs<'_>) -> Option<Counts> {
    if elem.get(EXPR_NAME)?.string() != "counter" {
        return None;
    }
    let data = elem
        .get(EXPR_DATA)
        .map(|a| a.nested())
        .unwrap_or_else(|| Attrs::new(&[]));
    let be64 = |k: u16| data.get(k).and_then(|a| a.be64()).unwrap_or(0);
    Some(Counts {
        packets: be64(COUNTER_PACKETS),
        bytes: be64(COUNTER_BYTES),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::nft::lower_rule;
    use crate::ruleset::{Dev, Family, Selector, Stmt, Verdict, L3};

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
    fn counter_values_come_from_counter_expressions_only() {
        let mut values = AttrBuf::new();
        values
            .put_be64(COUNTER_BYTES, 1500)
            .put_be64(COUNTER_PACKETS, 3);
        let mut counter = AttrBuf::new();
        counter
            .put_str(EXPR_NAME, "counter")
            .put_nested(EXPR_DATA, values);
        assert_eq!(
            counter_values(Attrs::new(counter.bytes())),
            Some(Counts {
                packets: 3,
                bytes: 1500
            })
        );
        let sent = encode_expr(&Expr::Counter, &|_| None);
        assert_eq!(
            counter_values(Attrs::new(sent.bytes())),
            Some(Counts::default())
        );
        let limit = encode_expr(
            &Expr::Limit {
                rate: 1,
                unit: 1,
                burst: 1,
                kind: 0,
            },
            &|_| None,
        );
        assert_eq!(counter_values(Attrs::new(limit.bytes())), None);
    }

    #[test]
    fn kernel_register_numbers_are_normalised() {
        assert_eq!(norm_reg(1), 8);
        assert_eq!(norm_reg(2), 12);
        assert_eq!(norm_reg(9), 9);
    }
}
