//! Table -> nftables JSON (libnftables-json), as `add` commands for `nft -j -f -`, built from
//! the `nftables` crate's schema types. Every statement becomes the expressions nft compiles to
//! the same kernel bytecode as `netlink::nft` sends: header fields nft would guard with a
//! protocol dependency of its own are given as raw loads, except where an earlier match of the
//! rule already sets that protocol.
//!
//! Two things the crate's schema has no field for are added to the serialised document: the
//! token bucket of an `update` with a per-element limit (`"stmt"` of the set statement) and the
//! table's comment. Set flags are sorted so that the same table always prints the same text.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadBase, PayloadField, PayloadRaw,
    Prefix, Range, CT,
};
use nftables::schema::{
    self, NfCmd, NfListObject, NfObject, Nftables, SetFlag, SetType, SetTypeValue,
};
use nftables::stmt::{self as nst, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde_json::{json, Value};

use super::{
    Base, CmpOp, Dev, Element, Family, Field, Hook, Load, Mac, Rate, Rule, Selector, Set, Span,
    Stmt, Table, Verdict, L3,
};

/// A per-element limit of an `update`, found at `objects[object].rule.expr[stmt]`.
struct ElementLimit {
    object: usize,
    stmt: usize,
    rate: Rate,
}

/// The table as an nftables JSON document of `add` commands (table, sets, chains, rules).
pub fn render_json(table: &Table) -> Value {
    let family = nf_family(table.family);
    let name: Cow<'static, str> = table.name.clone().into();
    let mut objects = vec![NfListObject::Table(schema::Table {
        family,
        name: name.clone(),
        handle: None,
    })];
    for set in &table.sets {
        objects.push(NfListObject::Set(Box::new(json_set(family, &name, set))));
    }
    for chain in &table.chains {
        objects.push(NfListObject::Chain(schema::Chain {
            family,
            table: name.clone(),
            name: chain.name.clone().into(),
            _type: Some(NfChainType::Filter),
            hook: Some(nf_hook(chain.hook)),
            prio: Some(chain.priority),
            dev: chain.device.clone().map(Cow::Owned),
            policy: Some(nf_policy(chain.policy)),
            ..Default::default()
        }));
    }
    let mut limits = Vec::new();
    for chain in &table.chains {
        for rule in &chain.rules {
            let object = objects.len();
            let expr = json_rule(table.family, rule, |stmt, rate| {
                limits.push(ElementLimit { object, stmt, rate })
            });
            objects.push(NfListObject::Rule(schema::Rule {
                family,
                table: name.clone(),
                chain: chain.name.clone().into(),
                expr: expr.into(),
                ..Default::default()
            }));
        }
    }
    let doc = Nftables {
        objects: objects
            .into_iter()
            .map(|o| NfObject::CmdObject(NfCmd::Add(o)))
            .collect::<Vec<_>>()
            .into(),
    };
    let mut v = serde_json::to_value(&doc).unwrap_or(Value::Null);
    finish(&mut v, table, &limits);
    v
}

/// [`render_json`] as pretty-printed text with a final newline.
pub fn render_json_text(table: &Table) -> String {
    let mut s = serde_json::to_string_pretty(&render_json(table)).unwrap_or_default();
    s.push('\n');
    s
}

/// Adds what the crate's schema cannot hold (see the module comment) and sorts set flags.
fn finish(v: &mut Value, table: &Table, limits: &[ElementLimit]) {
    let Some(objects) = v.get_mut("nftables").and_then(Value::as_array_mut) else {
        return;
    };
    for l in limits {
        let set_stmt = objects
            .get_mut(l.object)
            .and_then(|o| o.pointer_mut(&format!("/add/rule/expr/{}/set", l.stmt)))
            .and_then(Value::as_object_mut);
        if let Some(s) = set_stmt {
            s.insert(
                "stmt".into(),
                json!([{ "limit": limit_value(l.rate.per_second, l.rate.burst) }]),
            );
        }
    }
    if let Some(t) = objects
        .first_mut()
        .and_then(|o| o.pointer_mut("/add/table"))
        .and_then(Value::as_object_mut)
    {
        t.insert("comment".into(), Value::String(table.comment.clone()));
    }
    for o in objects.iter_mut() {
        if let Some(flags) = o
            .pointer_mut("/add/set/flags")
            .and_then(Value::as_array_mut)
        {
            flags.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        }
    }
}

fn nf_family(f: Family) -> NfFamily {
    match f {
        Family::Netdev => NfFamily::NetDev,
        Family::Inet => NfFamily::INet,
    }
}

fn nf_hook(h: Hook) -> NfHook {
    match h {
        Hook::Ingress => NfHook::Ingress,
        Hook::Egress => NfHook::Egress,
        Hook::Output => NfHook::Output,
        Hook::Forward => NfHook::Forward,
    }
}

fn nf_policy(v: Verdict) -> NfChainPolicy {
    match v {
        Verdict::Accept => NfChainPolicy::Accept,
        Verdict::Drop => NfChainPolicy::Drop,
    }
}

fn set_type(f: Field) -> SetType {
    match f {
        Field::Ipv4Addr => SetType::Ipv4Addr,
        Field::Ipv6Addr => SetType::Ipv6Addr,
        Field::InetProto => SetType::InetProto,
        Field::InetService => SetType::InetService,
        Field::EtherAddr => SetType::EtherAddr,
    }
}

fn json_set(family: NfFamily, table: &str, set: &Set) -> schema::Set<'static> {
    let set_type = match set.fields.as_slice() {
        [one] => SetTypeValue::Single(set_type(*one)),
        many => SetTypeValue::Concatenated(many.iter().map(|f| set_type(*f)).collect()),
    };
    let mut flags = HashSet::new();
    if set.interval {
        flags.insert(SetFlag::Interval);
    }
    // `dynamic` is not a flag nft's JSON parser takes: nft sets it on a set an `update` uses.
    if set.timeout_secs.is_some() {
        flags.insert(SetFlag::Timeout);
    }
    let elem: Vec<Expression<'static>> = set.elements.iter().map(|e| element(set, e)).collect();
    schema::Set {
        family,
        table: table.to_string().into(),
        name: set.name.clone().into(),
        set_type,
        flags: (!flags.is_empty()).then_some(flags),
        elem: (!elem.is_empty()).then(|| elem.into()),
        timeout: set.timeout_secs,
        size: set.size,
        ..Default::default()
    }
}

fn element(set: &Set, e: &Element) -> Expression<'static> {
    let mut parts: Vec<Expression<'static>> = set
        .fields
        .iter()
        .zip(&e.spans)
        .map(|(f, s)| span(*f, *s))
        .collect();
    if parts.len() == 1 {
        parts.remove(0)
    } else {
        Expression::Named(NamedExpression::Concat(parts))
    }
}

/// One field's value in a set element: a value, a prefix or a range.
fn span(field: Field, s: Span) -> Expression<'static> {
    if s.lo == s.hi {
        return value(field, s.lo);
    }
    if let Some(len) = prefix_len(field, s) {
        return Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(value(field, s.lo)),
            len,
        }));
    }
    Expression::Range(Box::new(Range {
        range: [value(field, s.lo), value(field, s.hi)],
    }))
}

fn value(field: Field, v: u128) -> Expression<'static> {
    match field {
        Field::Ipv4Addr => Expression::String(Ipv4Addr::from(v as u32).to_string().into()),
        Field::Ipv6Addr => Expression::String(Ipv6Addr::from(v).to_string().into()),
        Field::EtherAddr => {
            let b = v.to_be_bytes();
            let mut m = [0u8; 6];
            m.copy_from_slice(&b[10..]);
            Expression::String(Mac(m).to_string().into())
        }
        Field::InetProto | Field::InetService => Expression::Number(v as u32),
    }
}

/// Prefix length of an address span that is exactly one CIDR block (not a single address).
fn prefix_len(field: Field, s: Span) -> Option<u32> {
    if !matches!(field, Field::Ipv4Addr | Field::Ipv6Addr) {
        return None;
    }
    let bits = (field.width() * 8) as u32;
    let host = s.lo ^ s.hi;
    let ones = 128 - host.leading_zeros();
    let full = host.count_ones() == ones && s.lo & host == 0 && ones <= bits;
    full.then_some(bits - ones)
}

fn number(bytes: &[u8]) -> u128 {
    bytes.iter().fold(0u128, |acc, b| (acc << 8) | *b as u128)
}

/// A big-endian value as a JSON immediate: a number when it fits 32 bits, else hex text, which
/// nft reads as an integer of the loaded field's width.
fn immediate(bytes: &[u8]) -> Expression<'static> {
    let n = number(bytes);
    match u32::try_from(n) {
        Ok(small) => Expression::Number(small),
        Err(_) => Expression::String(format!("0x{n:0width$x}", width = bytes.len() * 2).into()),
    }
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn field(protocol: &'static str, name: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: name.into(),
        },
    )))
}

fn raw(base: Base, offset: u32, len: u32) -> Expression<'static> {
    let base = match base {
        Base::Link => PayloadBase::LL,
        Base::Network => PayloadBase::NH,
        Base::Transport => PayloadBase::TH,
    };
    Expression::Named(NamedExpression::Payload(Payload::PayloadRaw(PayloadRaw {
        base,
        offset: offset * 8,
        len: len * 8,
    })))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matches(left, Operator::EQ, right)
}

fn text(s: &'static str) -> Expression<'static> {
    Expression::String(s.into())
}

fn range(lo: u8, hi: u8) -> Expression<'static> {
    Expression::Range(Box::new(Range {
        range: [Expression::Number(lo as u32), Expression::Number(hi as u32)],
    }))
}

fn limit_value(per_second: u64, burst: u32) -> Value {
    json!({ "rate": per_second, "per": "second", "burst": burst, "burst_unit": "packets" })
}

/// What earlier matches of a rule tell nft about the packet's headers.
#[derive(Default, Clone, Copy)]
struct Context {
    /// `meta iiftype ether` was matched: nft takes Ethernet fields by name without a dependency.
    ether: bool,
    /// The network protocol nft knows from an earlier match.
    l3: Option<L3>,
    /// The transport protocol nft knows from an earlier `meta l4proto` match.
    l4: Option<u8>,
}

fn selector(sel: Selector, cx: Context) -> Expression<'static> {
    match sel {
        Selector::Ip4Saddr => field("ip", "saddr"),
        Selector::Ip4Daddr => field("ip", "daddr"),
        Selector::Ip6Saddr => field("ip6", "saddr"),
        Selector::Ip6Daddr => field("ip6", "daddr"),
        Selector::L4Proto => meta(MetaKey::L4proto),
        Selector::ThSport => field("th", "sport"),
        Selector::ThDport => field("th", "dport"),
        Selector::EtherSaddr if cx.ether => field("ether", "saddr"),
        Selector::EtherDaddr if cx.ether => field("ether", "daddr"),
        Selector::EtherSaddr => raw(Base::Link, 6, 6),
        Selector::EtherDaddr => raw(Base::Link, 0, 6),
        Selector::Raw {
            base,
            offset,
            field: f,
        } => match (base, offset, cx.l3) {
            (Base::Network, 14, Some(L3::Arp)) => field("arp", "saddr ip"),
            (Base::Network, 24, Some(L3::Arp)) => field("arp", "daddr ip"),
            (Base::Transport, 4, _) if cx.l4 == Some(1) => field("icmp", "id"),
            (Base::Transport, 4, _) if cx.l4 == Some(58) => field("icmpv6", "id"),
            (Base::Transport, 0, _) if f == Field::InetService => field("th", "sport"),
            (Base::Transport, 2, _) if f == Field::InetService => field("th", "dport"),
            _ => raw(base, offset, f.width() as u32),
        },
    }
}

fn key(sels: &[Selector], cx: Context) -> Expression<'static> {
    let mut parts: Vec<Expression<'static>> = sels.iter().map(|s| selector(*s, cx)).collect();
    if parts.len() == 1 {
        parts.remove(0)
    } else {
        Expression::Named(NamedExpression::Concat(parts))
    }
}

fn set_ref(name: &str) -> Expression<'static> {
    Expression::String(format!("@{name}").into())
}

fn operator(op: CmpOp) -> Operator {
    match op {
        CmpOp::Eq => Operator::EQ,
        CmpOp::Neq => Operator::NEQ,
        CmpOp::Lte => Operator::LEQ,
        CmpOp::Gte => Operator::GEQ,
    }
}

fn link_is_ether(dev: Dev) -> Statement<'static> {
    let key = match dev {
        Dev::In => MetaKey::Iiftype,
        Dev::Out => MetaKey::Oiftype,
    };
    eq(meta(key), text("ether"))
}

/// The statements of one rule; `element_limit` is told the index of every `update` that
/// carries a per-element limit.
fn json_rule(
    family: Family,
    rule: &Rule,
    mut element_limit: impl FnMut(usize, Rate),
) -> Vec<Statement<'static>> {
    let mut out = Vec::new();
    let mut cx = Context::default();
    for stmt in &rule.stmts {
        match stmt {
            Stmt::L3(l3) => {
                cx.l3 = Some(*l3);
                out.push(match family {
                    Family::Netdev => eq(meta(MetaKey::Protocol), text(l3.name())),
                    Family::Inet => eq(
                        meta(MetaKey::Nfproto),
                        text(match l3 {
                            L3::Ipv4 => "ipv4",
                            L3::Ipv6 => "ipv6",
                            L3::Arp => "arp",
                        }),
                    ),
                });
            }
            Stmt::L3Not(l3) => out.push(matches(
                meta(MetaKey::Protocol),
                Operator::NEQ,
                text(l3.name()),
            )),
            Stmt::L4Proto(p) => {
                cx.l4 = Some(*p);
                out.push(eq(meta(MetaKey::L4proto), Expression::Number(*p as u32)));
            }
            Stmt::L4ProtoRange(lo, hi) => out.push(eq(meta(MetaKey::L4proto), range(*lo, *hi))),
            Stmt::L4ProtoNot(lo, hi) => out.push(matches(
                meta(MetaKey::L4proto),
                Operator::NEQ,
                if lo == hi {
                    Expression::Number(*lo as u32)
                } else {
                    range(*lo, *hi)
                },
            )),
            Stmt::IcmpType(t) => out.push(eq(
                raw(Base::Transport, 0, 1),
                Expression::Number(*t as u32),
            )),
            Stmt::IcmpTypeRange(lo, hi) => {
                out.push(eq(raw(Base::Transport, 0, 1), range(*lo, *hi)))
            }
            Stmt::IcmpTypeNot(lo, hi) => out.push(matches(
                raw(Base::Transport, 0, 1),
                Operator::NEQ,
                if lo == hi {
                    Expression::Number(*lo as u32)
                } else {
                    range(*lo, *hi)
                },
            )),
            Stmt::OifName(name) => out.push(eq(
                meta(MetaKey::Oifname),
                Expression::String(name.clone().into()),
            )),
            Stmt::CtState(mask) => {
                let names: Vec<Expression<'static>> = [
                    (1u32, "invalid"),
                    (2, "established"),
                    (4, "related"),
                    (8, "new"),
                    (64, "untracked"),
                ]
                .into_iter()
                .filter(|(bit, _)| mask & bit != 0)
                .map(|(_, n)| text(n))
                .collect();
                out.push(matches(
                    Expression::Named(NamedExpression::CT(CT {
                        key: "state".into(),
                        family: None,
                        dir: None,
                    })),
                    Operator::IN,
                    Expression::List(names),
                ));
            }
            Stmt::LinkIsEther(dev) => {
                cx.ether |= *dev == Dev::In;
                out.push(link_is_ether(*dev));
            }
            Stmt::EtherType(dev, l3) => {
                out.push(link_is_ether(*dev));
                let ethertype = Expression::Number(l3.ethertype() as u32);
                if *dev == Dev::In {
                    // After `meta iiftype ether` nft takes the type by name, which tells it the
                    // network protocol of what follows.
                    cx.ether = true;
                    cx.l3 = Some(*l3);
                    out.push(eq(field("ether", "type"), ethertype));
                } else {
                    out.push(eq(raw(Base::Link, 12, 2), ethertype));
                }
            }
            Stmt::Cmp { load, op, value } => {
                let left = match load {
                    Load::Payload { base, offset, len } => raw(*base, *offset, *len),
                    Load::MetaLen => meta(MetaKey::Length),
                };
                out.push(matches(left, operator(*op), immediate(value)));
            }
            Stmt::Lookup {
                set,
                key: k,
                negate,
            } => out.push(matches(
                key(k, cx),
                if *negate { Operator::NEQ } else { Operator::EQ },
                set_ref(set),
            )),
            Stmt::Update { set, key: k, limit } => {
                if let Some(rate) = limit {
                    element_limit(out.len(), *rate);
                }
                out.push(Statement::Set(nst::Set {
                    op: nst::SetOp::Update,
                    elem: key(k, cx),
                    set: format!("@{set}").into(),
                }));
            }
            Stmt::Add { set, key: k } => out.push(Statement::Set(nst::Set {
                op: nst::SetOp::Add,
                elem: key(k, cx),
                set: format!("@{set}").into(),
            })),
            Stmt::Limit { per_second, burst } => out.push(Statement::Limit(nst::Limit {
                rate: u32::try_from(*per_second).unwrap_or(u32::MAX),
                rate_unit: None,
                per: Some("second".into()),
                burst: Some(*burst),
                burst_unit: Some("packets".into()),
                inv: None,
            })),
            Stmt::Log { prefix, group } => {
                let mut log = nst::Log::new(Some(*group as u32));
                log.prefix = Some(prefix.clone().into());
                out.push(Statement::Log(Some(log)));
            }
            Stmt::Counter => out.push(Statement::Counter(nst::Counter::Anonymous(Some(
                nst::AnonymousCounter {
                    packets: Some(0),
                    bytes: Some(0),
                },
            )))),
            Stmt::Verdict(Verdict::Accept) => out.push(Statement::Accept(None)),
            Stmt::Verdict(Verdict::Drop) => out.push(Statement::Drop(None)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_network_entry;
    use crate::ruleset::compile;
    use crate::ruleset::compile::fixtures::{enforce, target};

    /// Every statement of every rule of the document.
    fn statements(v: &Value) -> Vec<Value> {
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|o| {
                o["add"]["rule"]["expr"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    }

    fn host_table() -> Table {
        let mut p = enforce();
        p.entries = [
            "10.0.5.0/24 tcp 8443",
            "fd00::/64 tcp 443-445",
            "0.0.0.0/0 icmp",
        ]
        .into_iter()
        .map(|e| parse_network_entry(e).expect("entry"))
        .collect();
        compile(&p, &target("c1", "eth0")).expect("table")
    }

    #[test]
    fn the_document_adds_the_table_then_its_sets_chains_and_rules() {
        let t = host_table();
        let v = render_json(&t);
        let objects = v["nftables"].as_array().expect("command list");
        assert_eq!(
            objects.len(),
            1 + t.sets.len() + t.chains.len() + t.rule_count()
        );
        assert_eq!(objects[0]["add"]["table"]["family"], "netdev");
        assert_eq!(objects[0]["add"]["table"]["name"], t.name.as_str());
        assert_eq!(objects[0]["add"]["table"]["comment"], t.comment.as_str());
        let kinds: Vec<&str> = objects
            .iter()
            .map(|o| {
                o["add"]
                    .as_object()
                    .and_then(|a| a.keys().next())
                    .map_or("", |k| k)
            })
            .collect();
        let n = t.sets.len();
        assert!(kinds[1..=n].iter().all(|k| *k == "set"), "{kinds:?}");
        assert_eq!(kinds[n + 1..n + 3], ["chain", "chain"]);
        assert!(kinds[n + 3..].iter().all(|k| *k == "rule"));
        let from_pod = &objects[n + 1]["add"]["chain"];
        assert_eq!(from_pod["hook"], "ingress");
        assert_eq!(from_pod["dev"], "veth1");
        assert_eq!(from_pod["policy"], "drop");
        assert_eq!(from_pod["prio"], 0);
    }

    #[test]
    fn sets_and_statements_take_the_forms_nft_reads() {
        let v = render_json(&host_table());
        let objects = v["nftables"].as_array().expect("command list");
        let set = |name: &str| {
            objects
                .iter()
                .map(|o| &o["add"]["set"])
                .find(|s| s["name"] == name)
                .unwrap_or_else(|| panic!("set {name}"))
                .clone()
        };
        let port = set("allow4_port");
        assert_eq!(
            port["type"],
            json!(["ipv4_addr", "inet_proto", "inet_service"])
        );
        assert_eq!(port["flags"], json!(["interval"]));
        assert_eq!(
            port["elem"][0],
            json!({"concat": [{"prefix": {"addr": "10.0.5.0", "len": 24}}, 6, 8443]})
        );
        assert_eq!(
            set("allow6_port")["elem"][0]["concat"][2],
            json!({"range": [443, 445]})
        );
        let replies = set("replies4");
        assert_eq!(replies["flags"], json!(["timeout"]));
        assert_eq!(
            replies["timeout"],
            crate::ruleset::tables::REPLY_TIMEOUT_SECS
        );
        assert_eq!(replies["size"], 65536);
        assert!(replies.get("elem").is_none());

        let rules: Vec<&Value> = objects.iter().map(|o| &o["add"]["rule"]).collect();
        let stmts = statements(&v);
        // The per-source limit of new flows rides on its `update`.
        let limited = rules
            .iter()
            .flat_map(|r| r["expr"].as_array().into_iter().flatten())
            .find(|s| s["set"]["set"] == "@new_flows4")
            .expect("update @new_flows4");
        assert_eq!(
            limited["set"]["stmt"],
            json!([{"limit": {"rate": 1000, "per": "second", "burst": 1000, "burst_unit": "packets"}}])
        );
        // The closing rules: a flow not logged yet is logged (within the budget) and added to
        // the set of logged flows; then a counter, and the chain's policy drops.
        let from_pod: Vec<&&Value> = rules.iter().filter(|r| r["chain"] == "from_pod").collect();
        let closing = from_pod.last().expect("closing rule");
        assert_eq!(
            closing["expr"],
            json!([{"counter": {"packets": 0, "bytes": 0}}])
        );
        let logs = from_pod[from_pod.len() - 2]["expr"]
            .as_array()
            .expect("statements");
        let n = logs.len();
        let unlogged = logs
            .iter()
            .find(|s| s["match"]["right"] == "@logged6")
            .expect("lookup in @logged6");
        assert_eq!(unlogged["match"]["op"], "!=");
        assert_eq!(logs[n - 3]["limit"]["rate"], 100);
        assert_eq!(logs[n - 3]["limit"]["burst"], 10_000);
        assert_eq!(logs[n - 2]["log"]["group"], 100);
        assert_eq!(logs[n - 1]["set"]["op"], "add");
        assert_eq!(logs[n - 1]["set"]["set"], "@logged6");
        let logged = objects
            .iter()
            .find(|o| o["add"]["set"]["name"] == "logged4")
            .map(|o| &o["add"]["set"])
            .expect("set logged4");
        assert_eq!(
            logged["type"],
            json!(["ipv4_addr", "inet_proto", "inet_service"])
        );
        assert_eq!(logged["timeout"], 60);
        assert_eq!(logged["size"], 65536);
        // Matches nft guards with a dependency of its own are raw loads; long values are hex.
        let iiftype =
            json!({"match": {"left": {"meta": {"key": "iiftype"}}, "right": "ether", "op": "=="}});
        assert!(stmts.contains(&iiftype));
        assert!(stmts.contains(&json!({"match": {
            "left": {"payload": {"base": "ll", "offset": 48, "len": 48}},
            "right": "0x0a580a160005",
            "op": "!="
        }})));
        assert!(stmts.contains(&json!({"accept": null})));
    }

    #[test]
    fn the_inet_table_matches_families_by_nfproto_and_conntrack_by_state() {
        let mut t = target("c1", "eth0");
        t.attach = crate::ruleset::Attach::Pod;
        let table = compile(&enforce(), &t).expect("table");
        let v = render_json(&table);
        let stmts = statements(&v);
        let text = serde_json::to_string(&v).expect("text");
        let ct = json!({"match": {
            "left": {"ct": {"key": "state"}},
            "right": ["established", "related"],
            "op": "in"
        }});
        assert!(stmts.contains(&ct), "{text}");
        let lo =
            json!({"match": {"left": {"meta": {"key": "oifname"}}, "right": "lo", "op": "=="}});
        assert!(stmts.contains(&lo), "{text}");
        assert!(text.contains(r#""hook":"output""#) && text.contains(r#""hook":"forward""#));
        assert!(render_json_text(&table).ends_with("}\n"));
    }
}
