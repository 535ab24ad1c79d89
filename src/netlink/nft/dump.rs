//! Reading tables back from the kernel: listing, looking up and dumping one table into a
//! `Snapshot`.

use std::collections::BTreeSet;

use super::codec::{counter_values, decode_expr, nested_value};
use super::consts::*;
use super::snapshot::{is_tree, parse_comment_udata, tree_ranges};
use super::{msg_type, nfgen, with_header, ChainSnapshot, Expr, SetSnapshot, Snapshot};
use crate::netlink::attr::{AttrBuf, Attrs};
use crate::netlink::socket::{Message, Socket};
use crate::netlink::NetlinkError;
use crate::ruleset::Family;

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
        let flags = a.get(SET_FLAGS).and_then(|x| x.be32()).unwrap_or(0);
        let tree_set = is_tree(flags);
        let mut elements = BTreeSet::new();
        let mut tree = Vec::new();
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
                if tree_set {
                    let eflags = el.get(ELEM_FLAGS).and_then(|x| x.be32()).unwrap_or(0);
                    tree.push((key, eflags & ELEM_F_INTERVAL_END != 0));
                    continue;
                }
                let end = el
                    .get(ELEM_KEY_END)
                    .map(|x| nested_value(Some(x)))
                    .unwrap_or_else(|| key.clone());
                elements.insert((key, end));
            }
        }
        if tree_set {
            elements = tree_ranges(tree);
        }
        snap.sets.push(SetSnapshot {
            name: set_name,
            flags,
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
            texts: Vec::new(),
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
        let exprs = rule_exprs(&a);
        if let Some(c) = snap.chains.iter_mut().find(|c| c.name == chain) {
            c.rules.push(exprs);
        }
    }
    Ok(Some(snap))
}

/// A rule's expressions, decoded for comparison.
fn rule_exprs(rule: &Attrs<'_>) -> Vec<Expr> {
    rule.get(RULE_EXPRESSIONS)
        .map(|l| l.nested().map(|e| decode_expr(e.nested())).collect())
        .unwrap_or_default()
}

/// Packets and bytes, as a counter expression holds them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
}

/// One rule as dumped, with the values of its counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountedRule {
    pub chain: String,
    /// Decoded as `read_table` decodes them (a counter's values are not part of `Expr`).
    pub exprs: Vec<Expr>,
    /// The values of the rule's first counter expression; `None` when it has none.
    pub counter: Option<Counts>,
}

/// The rules of table `name`, in dump order, with their counter values (one dump of the
/// table's rules). `None` when the kernel has no such table.
pub fn rule_counters(
    sock: &mut Socket,
    family: Family,
    name: &str,
) -> Result<Option<Vec<CountedRule>>, NetlinkError> {
    let mut req = AttrBuf::new();
    req.put_str(RULE_TABLE, name);
    let msgs = match sock.dump(
        "list rules",
        msg_type(MSG_GETRULE),
        &with_header(family.nfproto(), req),
    ) {
        Ok(m) => m,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let rules = msgs
        .iter()
        .filter(|m| m.kind == msg_type(MSG_NEWRULE))
        .filter_map(|m| {
            let a = attrs_of(m);
            if a.get(RULE_TABLE).map(|x| x.string()).as_deref() != Some(name) {
                return None;
            }
            let counter = a
                .get(RULE_EXPRESSIONS)
                .and_then(|l| l.nested().find_map(|e| counter_values(e.nested())));
            Some(CountedRule {
                chain: a.get(RULE_CHAIN).map(|x| x.string()).unwrap_or_default(),
                exprs: rule_exprs(&a),
                counter,
            })
        })
        .collect();
    Ok(Some(rules))
}
