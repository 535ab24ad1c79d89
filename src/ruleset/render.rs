//! Table -> nft text, in the form `nft list table` prints it (nftables 1.0.x), so a person can
//! review a policy before it is used and tests can compare it with what the kernel holds.

use std::fmt::Write;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::{
    Base, Chain, CmpOp, Dev, Element, Family, Field, Load, Rule, Selector, Set, Span, Stmt, Table,
    L3,
};

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "ipv6-icmp".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

fn icmp_name(v6: bool) -> &'static str {
    if v6 {
        "icmpv6"
    } else {
        "icmp"
    }
}

fn icmp_type_name(v6: bool, t: u8) -> String {
    let name = if v6 {
        match t {
            1 => "destination-unreachable",
            2 => "packet-too-big",
            3 => "time-exceeded",
            4 => "parameter-problem",
            128 => "echo-request",
            129 => "echo-reply",
            133 => "nd-router-solicit",
            134 => "nd-router-advert",
            135 => "nd-neighbor-solicit",
            136 => "nd-neighbor-advert",
            _ => "",
        }
    } else {
        match t {
            0 => "echo-reply",
            3 => "destination-unreachable",
            8 => "echo-request",
            11 => "time-exceeded",
            12 => "parameter-problem",
            _ => "",
        }
    };
    if name.is_empty() {
        t.to_string()
    } else {
        name.to_string()
    }
}

fn addr_text(field: Field, v: u128) -> String {
    match field {
        Field::Ipv4Addr => Ipv4Addr::from(v as u32).to_string(),
        _ => Ipv6Addr::from(v).to_string(),
    }
}

/// Prefix length if the span is exactly one CIDR block.
fn prefix_len(field: Field, s: Span) -> Option<u32> {
    let bits = (field.width() * 8) as u32;
    let size = s.hi.wrapping_sub(s.lo).wrapping_add(1);
    let host = if size == 0 {
        128
    } else {
        size.trailing_zeros()
    };
    let full = if host >= 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    };
    let is_pow2 = size == 0 || size.is_power_of_two();
    (is_pow2 && s.lo & full == 0 && host <= bits).then_some(bits - host)
}

fn span_text(field: Field, s: Span) -> String {
    match field {
        Field::Ipv4Addr | Field::Ipv6Addr => {
            let bits = (field.width() * 8) as u32;
            match prefix_len(field, s) {
                Some(l) if l == bits => addr_text(field, s.lo),
                Some(l) => format!("{}/{}", addr_text(field, s.lo), l),
                None => format!("{}-{}", addr_text(field, s.lo), addr_text(field, s.hi)),
            }
        }
        Field::EtherAddr => {
            let mac = |v: u128| {
                let b = v.to_be_bytes();
                super::Mac([b[10], b[11], b[12], b[13], b[14], b[15]]).to_string()
            };
            if s.lo == s.hi {
                mac(s.lo)
            } else {
                format!("{}-{}", mac(s.lo), mac(s.hi))
            }
        }
        Field::InetProto if s.lo == s.hi => proto_name(s.lo as u8),
        _ if s.lo == s.hi => s.lo.to_string(),
        _ => format!("{}-{}", s.lo, s.hi),
    }
}

fn element_text(set: &Set, e: &Element) -> String {
    set.fields
        .iter()
        .zip(&e.spans)
        .map(|(f, s)| span_text(*f, *s))
        .collect::<Vec<_>>()
        .join(" . ")
}

fn duration_text(secs: u32) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (v, unit) in [(d, "d"), (h, "h"), (m, "m"), (s, "s")] {
        if v > 0 {
            let _ = write!(out, "{v}{unit}");
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

fn render_set(out: &mut String, set: &Set) {
    let _ = writeln!(out, "\tset {} {{", set.name);
    let types: Vec<&str> = set.fields.iter().map(|f| f.name()).collect();
    let _ = writeln!(out, "\t\ttype {}", types.join(" . "));
    if let Some(size) = set.size {
        let _ = writeln!(out, "\t\tsize {size}");
    }
    let mut flags = Vec::new();
    if set.interval {
        flags.push("interval");
    }
    if set.dynamic {
        flags.push("dynamic");
    }
    if set.timeout_secs.is_some() {
        flags.push("timeout");
    }
    if !flags.is_empty() {
        let _ = writeln!(out, "\t\tflags {}", flags.join(","));
    }
    if let Some(t) = set.timeout_secs {
        let _ = writeln!(out, "\t\ttimeout {}", duration_text(t));
    }
    if !set.elements.is_empty() {
        let items: Vec<String> = set.elements.iter().map(|e| element_text(set, e)).collect();
        // nft puts two IPv4 addresses on a line, one of anything wider or concatenated.
        let per_line = if set.fields == [Field::Ipv4Addr] {
            2
        } else {
            1
        };
        let lines: Vec<String> = items.chunks(per_line).map(|l| l.join(", ")).collect();
        let _ = writeln!(out, "\t\telements = {{ {} }}", lines.join(",\n\t\t\t     "));
    }
    out.push_str("\t}\n");
}

fn selector_text(sel: Selector, l3: Option<L3>, l4: Option<u8>, ether: bool) -> String {
    let th = match l4 {
        Some(6) => "tcp",
        Some(17) => "udp",
        Some(132) => "sctp",
        _ => "th",
    };
    match sel {
        Selector::Ip4Saddr => "ip saddr".into(),
        Selector::Ip4Daddr => "ip daddr".into(),
        Selector::Ip6Saddr => "ip6 saddr".into(),
        Selector::Ip6Daddr => "ip6 daddr".into(),
        Selector::L4Proto => "meta l4proto".into(),
        Selector::ThSport => format!("{th} sport"),
        Selector::ThDport => format!("{th} dport"),
        Selector::EtherSaddr if ether => "ether saddr".into(),
        Selector::EtherDaddr if ether => "ether daddr".into(),
        Selector::EtherSaddr => raw_text(Base::Link, 6, 6),
        Selector::EtherDaddr => raw_text(Base::Link, 0, 6),
        Selector::Raw {
            base,
            offset,
            field,
        } => match (base, offset, l4) {
            (Base::Transport, 4, Some(1)) => "icmp id".into(),
            (Base::Transport, 4, Some(58)) => "icmpv6 id".into(),
            (Base::Network, 14, None) if l3 == Some(L3::Arp) => "arp saddr ip".into(),
            (Base::Network, 24, None) if l3 == Some(L3::Arp) => "arp daddr ip".into(),
            (Base::Transport, 0, _) if field.width() == 2 => "th sport".into(),
            (Base::Transport, 2, _) if field.width() == 2 => "th dport".into(),
            _ => raw_text(base, offset, field.width() as u32),
        },
    }
}

fn raw_text(base: Base, offset: u32, len: u32) -> String {
    let b = match base {
        Base::Link => "ll",
        Base::Network => "nh",
        Base::Transport => "th",
    };
    format!("@{b},{},{}", offset * 8, len * 8)
}

fn hex(value: &[u8]) -> String {
    let v = value.iter().fold(0u128, |acc, b| (acc << 8) | *b as u128);
    format!("0x{v:x}")
}

fn ethertype_name(v: &[u8]) -> String {
    match v {
        [0x08, 0x00] => "ip".into(),
        [0x86, 0xdd] => "ip6".into(),
        [0x08, 0x06] => "arp".into(),
        [0x81, 0x00] => "8021q".into(),
        _ => hex(v),
    }
}

fn op_text(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Eq => "",
        CmpOp::Neq => "!= ",
        CmpOp::Lte => "<= ",
        CmpOp::Gte => ">= ",
    }
}

fn be_number(value: &[u8]) -> u128 {
    value.iter().fold(0u128, |acc, b| (acc << 8) | *b as u128)
}

/// The IPv6 address field at a network header offset (8 or 24).
fn v6_field(offset: u32) -> &'static str {
    if offset == 8 {
        "saddr"
    } else {
        "daddr"
    }
}

/// The IPv4 address field at a network header offset (12 or 16).
fn v4_field(offset: u32) -> &'static str {
    if offset == 12 {
        "saddr"
    } else {
        "daddr"
    }
}

/// `value`'s first bytes in an array of `N`, zeros after them (a prefix load lists as the whole
/// address).
fn padded<const N: usize>(value: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    let n = value.len().min(N);
    a[..n].copy_from_slice(&value[..n]);
    a
}

/// A comparison as nft lists it: known header fields by name, anything else as a raw load.
fn cmp_text(l3: Option<L3>, ether: bool, load: Load, op: CmpOp, value: &[u8]) -> String {
    let o = op_text(op);
    let Load::Payload { base, offset, len } = load else {
        return format!("meta length {o}{}", be_number(value));
    };
    let mac = || super::Mac(padded(value)).to_string();
    let v4 = || std::net::Ipv4Addr::from(padded::<4>(value)).to_string();
    let v6 = || Ipv6Addr::from(padded::<16>(value)).to_string();
    match (base, offset, len, l3) {
        (Base::Link, ..) if !ether => format!("{} {o}{}", raw_text(base, offset, len), hex(value)),
        (Base::Link, 0, 6, _) => format!("ether daddr {o}{}", mac()),
        (Base::Link, 6, 6, _) => format!("ether saddr {o}{}", mac()),
        (Base::Link, 12, 2, _) => format!("ether type {o}{}", ethertype_name(value)),
        (Base::Network, 0, 6, Some(L3::Arp)) if value == [0, 1, 8, 0, 6, 4] && op == CmpOp::Eq => {
            "arp htype 1 arp ptype ip arp hlen 6 arp plen 4".into()
        }
        (Base::Network, 6, 2, Some(L3::Arp)) => format!("arp operation {o}{}", be_number(value)),
        (Base::Network, 8, 6, Some(L3::Arp)) => format!("arp saddr ether {o}{}", mac()),
        (Base::Network, 6, 2, Some(L3::Ipv6)) if value.len() == 2 => format!(
            "ip6 nexthdr {o}{} ip6 hoplimit {o}{}",
            proto_name(value[0]),
            value[1]
        ),
        (Base::Network, 14, 4, Some(L3::Arp)) if value.len() == 4 => {
            format!("arp saddr ip {o}{}", v4())
        }
        (Base::Network, 24, 4, Some(L3::Arp)) => format!("arp daddr ip {o}{}", v4()),
        (Base::Network, 24, 1..=3, Some(L3::Arp)) => {
            format!("arp daddr ip {o}{}/{}", v4(), len * 8)
        }
        (Base::Network, 12 | 16, 4, Some(L3::Ipv4)) => {
            format!("ip {} {o}{}", v4_field(offset), v4())
        }
        // A load of the first bytes of an address is a prefix to nft.
        (Base::Network, 12 | 16, 1..=3, Some(L3::Ipv4)) => {
            format!("ip {} {o}{}/{}", v4_field(offset), v4(), len * 8)
        }
        (Base::Network, 8 | 24, 16, Some(L3::Ipv6)) => {
            format!("ip6 {} {o}{}", v6_field(offset), v6())
        }
        // A load of the first bytes of an address is a prefix to nft.
        (Base::Network, 8 | 24, 1..=15, Some(L3::Ipv6)) => {
            format!("ip6 {} {o}{}/{}", v6_field(offset), v6(), len * 8)
        }
        // After `ip6 nexthdr ipv6-icmp`, nft reads type and code (code 0 by the name it has
        // for destination unreachable).
        (Base::Transport, 0, 2, Some(L3::Ipv6)) if op == CmpOp::Eq && value.len() == 2 => {
            let code = match value[1] {
                0 => "no-route".to_string(),
                c => c.to_string(),
            };
            format!(
                "icmpv6 type {} icmpv6 code {code}",
                icmp_type_name(true, value[0])
            )
        }
        (Base::Transport, 0, 2, _) => format!("th sport {o}{}", be_number(value)),
        _ => format!("{} {o}{}", raw_text(base, offset, len), hex(value)),
    }
}

fn key_text(key: &[Selector], l3: Option<L3>, l4: Option<u8>, ether: bool) -> String {
    key.iter()
        .map(|s| selector_text(*s, l3, l4, ether))
        .collect::<Vec<_>>()
        .join(" . ")
}

fn uses_transport(stmt: Option<&Stmt>) -> bool {
    match stmt {
        Some(Stmt::Lookup { key, .. })
        | Some(Stmt::Update { key, .. })
        | Some(Stmt::Add { key, .. }) => key
            .iter()
            .any(|s| matches!(s, Selector::ThSport | Selector::ThDport)),
        _ => false,
    }
}

/// One rule as nft lists it: protocol dependencies implied by later matches are not printed.
pub fn render_rule(family: Family, r: &Rule) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut l3: Option<L3> = None;
    let mut l4: Option<u8> = None;
    // nft names link-layer fields only after `meta iiftype ether`; after `meta oiftype ether`
    // (egress) it lists them as raw loads.
    let mut ether = false;
    let mut range_lo: Option<Vec<u8>> = None;
    for (i, stmt) in r.stmts.iter().enumerate() {
        let next = r.stmts.get(i + 1);
        match stmt {
            Stmt::L3(L3::Arp) => parts.push(match family {
                Family::Netdev => "meta protocol arp".into(),
                Family::Inet => "meta nfproto arp".into(),
            }),
            // A dependency of what follows, unless nothing follows it but the verdict.
            Stmt::L3(p) => {
                l3 = Some(*p);
                if family == Family::Netdev && matches!(next, Some(Stmt::Verdict(_)) | None) {
                    parts.push(format!("meta protocol {}", p.name()));
                }
            }
            Stmt::LinkIsEther(Dev::In) => ether = true,
            Stmt::LinkIsEther(Dev::Out) => parts.push("meta oiftype ether".into()),
            Stmt::EtherType(Dev::In, p) => {
                ether = true;
                l3 = Some(*p);
            }
            // Without `meta protocol`, nft lists what follows an ARP type as raw loads.
            Stmt::EtherType(Dev::Out, p) => {
                l3 = Some(*p).filter(|p| *p != L3::Arp);
                parts.push(format!(
                    "meta oiftype ether {} {}",
                    raw_text(Base::Link, 12, 2),
                    hex(&p.ethertype().to_be_bytes())
                ));
            }
            Stmt::Cmp {
                load,
                op: CmpOp::Gte,
                value,
            } if matches!(next, Some(Stmt::Cmp { load: l, op: CmpOp::Lte, .. }) if l == load) => {
                range_lo = Some(value.clone());
            }
            Stmt::Cmp {
                load,
                op: CmpOp::Lte,
                value,
            } if range_lo.is_some() => {
                let lo = range_lo.take().unwrap_or_default();
                let text = cmp_text(l3, ether, *load, CmpOp::Eq, value);
                // "field HI" -> "field LO-HI"
                let (field, hi) = text.rsplit_once(' ').unwrap_or(("", &text));
                let lo = if hi.starts_with("0x") {
                    hex(&lo)
                } else {
                    be_number(&lo).to_string()
                };
                parts.push(format!("{field} {lo}-{hi}"));
            }
            Stmt::L3Not(p) => parts.push(format!("meta protocol != {}", p.name())),
            Stmt::L4Proto(p) => {
                let implied = matches!(
                    next,
                    Some(Stmt::IcmpType(_) | Stmt::IcmpTypeRange(..) | Stmt::IcmpTypeNot(..))
                ) || (matches!(p, 6 | 17 | 132) && uses_transport(next));
                if implied {
                    l4 = Some(*p);
                } else {
                    parts.push(format!("meta l4proto {}", proto_name(*p)));
                }
            }
            Stmt::L4ProtoRange(lo, hi) => parts.push(format!("meta l4proto {lo}-{hi}")),
            Stmt::L4ProtoNot(lo, hi) if lo == hi => {
                parts.push(format!("meta l4proto != {}", proto_name(*lo)))
            }
            Stmt::L4ProtoNot(lo, hi) => parts.push(format!("meta l4proto != {lo}-{hi}")),
            Stmt::IcmpType(t) => {
                let v6 = l3 == Some(L3::Ipv6);
                parts.push(format!("{} type {}", icmp_name(v6), icmp_type_name(v6, *t)));
            }
            Stmt::IcmpTypeRange(lo, hi) => {
                let v6 = l3 == Some(L3::Ipv6);
                parts.push(format!("{} type {lo}-{hi}", icmp_name(v6)));
            }
            Stmt::IcmpTypeNot(lo, hi) => {
                let v6 = l3 == Some(L3::Ipv6);
                let what = if lo == hi {
                    icmp_type_name(v6, *lo)
                } else {
                    format!("{lo}-{hi}")
                };
                parts.push(format!("{} type != {what}", icmp_name(v6)));
            }
            Stmt::OifName(n) => parts.push(format!("oifname \"{n}\"")),
            Stmt::CtState(mask) => {
                let mut names = Vec::new();
                for (bit, n) in [
                    (1u32, "invalid"),
                    (2, "established"),
                    (4, "related"),
                    (8, "new"),
                    (64, "untracked"),
                ] {
                    if mask & bit != 0 {
                        names.push(n);
                    }
                }
                parts.push(format!("ct state {}", names.join(",")));
            }
            Stmt::Lookup { set, key, negate } => {
                let not = if *negate { "!= " } else { "" };
                parts.push(format!("{} {not}@{set}", key_text(key, l3, l4, ether)));
            }
            Stmt::Update { set, key, limit } => {
                let limit = match limit {
                    Some(r) => format!(
                        " limit rate {}/second burst {} packets",
                        r.per_second, r.burst
                    ),
                    None => String::new(),
                };
                parts.push(format!(
                    "update @{set} {{ {}{limit} }}",
                    key_text(key, l3, l4, ether)
                ));
            }
            Stmt::Add { set, key } => {
                parts.push(format!("add @{set} {{ {} }}", key_text(key, l3, l4, ether)));
            }
            Stmt::Cmp { load, op, value } => parts.push(cmp_text(l3, ether, *load, *op, value)),
            Stmt::Limit { per_second, burst } => {
                parts.push(format!(
                    "limit rate {per_second}/second burst {burst} packets"
                ));
            }
            Stmt::Log { prefix, group } => {
                parts.push(format!("log prefix \"{prefix}\" group {group}"));
            }
            Stmt::Counter => parts.push("counter packets 0 bytes 0".into()),
            Stmt::Verdict(v) => parts.push(v.name().into()),
        }
    }
    parts.join(" ")
}

fn render_chain(out: &mut String, family: Family, chain: &Chain) {
    let _ = writeln!(out, "\tchain {} {{", chain.name);
    let device = match &chain.device {
        Some(d) => format!(" device \"{d}\""),
        None => String::new(),
    };
    let prio = if chain.priority == 0 {
        "filter".to_string()
    } else {
        chain.priority.to_string()
    };
    let _ = writeln!(
        out,
        "\t\ttype filter hook {}{device} priority {prio}; policy {};",
        chain.hook.name(),
        chain.policy.name()
    );
    for r in &chain.rules {
        let _ = writeln!(out, "\t\t{}", render_rule(family, r));
    }
    out.push_str("\t}\n");
}

/// The table as nft text.
pub fn render(table: &Table) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "table {} {} {{", table.family.name(), table.name);
    let _ = writeln!(out, "\tcomment \"{}\"", table.comment);
    let mut first = true;
    for set in &table.sets {
        if !first {
            out.push('\n');
        }
        first = false;
        render_set(&mut out, set);
    }
    for chain in &table.chains {
        if !first {
            out.push('\n');
        }
        first = false;
        render_chain(&mut out, table.family, chain);
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_print_as_nft_does() {
        assert_eq!(
            span_text(Field::Ipv4Addr, Span::new(0x0a000500, 0x0a0005ff)),
            "10.0.5.0/24"
        );
        assert_eq!(
            span_text(Field::Ipv4Addr, Span::single(0x0a000001)),
            "10.0.0.1"
        );
        assert_eq!(
            span_text(Field::Ipv4Addr, Span::new(0, u32::MAX as u128)),
            "0.0.0.0/0"
        );
        assert_eq!(
            span_text(Field::Ipv4Addr, Span::new(0x0a010001, 0x0a010007)),
            "10.1.0.1-10.1.0.7"
        );
        assert_eq!(span_text(Field::Ipv6Addr, Span::new(0, u128::MAX)), "::/0");
        assert_eq!(span_text(Field::InetProto, Span::new(0, 255)), "0-255");
        assert_eq!(span_text(Field::InetProto, Span::single(58)), "ipv6-icmp");
        assert_eq!(
            span_text(Field::InetService, Span::new(443, 445)),
            "443-445"
        );
        assert_eq!(duration_text(300), "5m");
        assert_eq!(duration_text(3690), "1h1m30s");
    }
}
