//! Reads the packet and byte counters of a pod table's closing rule (`counter limit ... log ...`,
//! the last rule of each chain, before the chain's policy) from the kernel. Read-only: never
//! changes a table.

use std::path::Path;

use crate::kernel::netns::{NetnsError, NetnsGuard};
use crate::kernel::Where;
use crate::netlink::attr::{AttrBuf, Attrs};
use crate::netlink::socket::{Socket, NETLINK_NETFILTER};
use crate::netlink::NetlinkError;
use crate::ruleset::Family;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const MSG_NEWRULE: u16 = 6;
const MSG_GETRULE: u16 = 7;
const RULE_TABLE: u16 = 1;
const RULE_EXPRESSIONS: u16 = 4;
const EXPR_NAME: u16 = 1;
const EXPR_DATA: u16 = 2;
const COUNTER_BYTES: u16 = 1;
const COUNTER_PACKETS: u16 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CountersError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("reading the counters of table {table} in {place}: {source}")]
    Netlink {
        table: String,
        place: String,
        #[source]
        source: NetlinkError,
    },
}

/// Packets and bytes that reached a table's closing (log, count, verdict) rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
}

/// Sums the counters of the closing rule of each chain. `Ok(None)` when the table does not exist.
pub fn read(at: Where<'_>, family: Family, table: &str) -> Result<Option<Counts>, CountersError> {
    let err = |source| CountersError::Netlink {
        table: table.to_string(),
        place: at.describe(),
        source,
    };
    let mut sock = match at {
        Where::Host => Socket::open(NETLINK_NETFILTER).map_err(err)?,
        Where::Netns(path) => open_in(path).map_err(|e| match e {
            OpenError::Netns(n) => CountersError::Netns(n),
            OpenError::Netlink(n) => err(n),
        })?,
    };
    let mut req = vec![family.nfproto(), 0, 0, 0];
    let mut a = AttrBuf::new();
    a.put_str(RULE_TABLE, table);
    req.extend_from_slice(a.bytes());
    let msgs = match sock.dump(
        "list rules",
        (NFNL_SUBSYS_NFTABLES << 8) | MSG_GETRULE,
        &req,
    ) {
        Ok(m) => m,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    let mut total = Counts::default();
    let mut found = false;
    for m in msgs
        .iter()
        .filter(|m| m.kind == (NFNL_SUBSYS_NFTABLES << 8) | MSG_NEWRULE)
    {
        let attrs = Attrs::new(m.payload.get(4..).unwrap_or(&[]));
        if attrs.get(RULE_TABLE).map(|t| t.string()).as_deref() != Some(table) {
            continue;
        }
        found = true;
        if let Some(c) = attrs
            .get(RULE_EXPRESSIONS)
            .and_then(|l| closing_rule_counts(l.nested()))
        {
            total.packets += c.packets;
            total.bytes += c.bytes;
        }
    }
    Ok(found.then_some(total))
}

enum OpenError {
    Netns(NetnsError),
    Netlink(NetlinkError),
}

fn open_in(path: &Path) -> Result<Socket, OpenError> {
    let _inside = NetnsGuard::enter(path).map_err(OpenError::Netns)?;
    Socket::open(NETLINK_NETFILTER).map_err(OpenError::Netlink)
}

/// The counts of a closing rule: a counter, a limit and a log; or, in tables installed by
/// releases that logged in a rule of its own, exactly a counter and an immediate verdict.
fn closing_rule_counts(exprs: Attrs<'_>) -> Option<Counts> {
    let list: Vec<(String, Attrs<'_>)> = exprs
        .map(|e| {
            let e = e.nested();
            let name = e.get(EXPR_NAME).map(|n| n.string()).unwrap_or_default();
            let data = e
                .get(EXPR_DATA)
                .map(|d| d.nested())
                .unwrap_or_else(|| Attrs::new(&[]));
            (name, data)
        })
        .collect();
    match list.as_slice() {
        [(c, data), (l, _), (g, _)] if c == "counter" && l == "limit" && g == "log" => {
            Some(counts(data))
        }
        [(c, data), (i, _)] if c == "counter" && i == "immediate" => Some(counts(data)),
        _ => None,
    }
}

fn counts(data: &Attrs<'_>) -> Counts {
    Counts {
        packets: data
            .get(COUNTER_PACKETS)
            .and_then(|a| a.be64())
            .unwrap_or(0),
        bytes: data.get(COUNTER_BYTES).and_then(|a| a.be64()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(name: &str, data: AttrBuf) -> AttrBuf {
        let mut e = AttrBuf::new();
        e.put_str(EXPR_NAME, name).put_nested(EXPR_DATA, data);
        e
    }

    #[test]
    fn only_the_closing_rules_count() {
        let mut counter = AttrBuf::new();
        counter
            .put_be64(COUNTER_BYTES, 1500)
            .put_be64(COUNTER_PACKETS, 3);
        let mut list = AttrBuf::new();
        list.put_nested(1, expr("counter", counter.clone()))
            .put_nested(1, expr("immediate", AttrBuf::new()));
        assert_eq!(
            closing_rule_counts(Attrs::new(list.bytes())),
            Some(Counts {
                packets: 3,
                bytes: 1500
            })
        );
        let mut closing = AttrBuf::new();
        closing
            .put_nested(1, expr("counter", counter.clone()))
            .put_nested(1, expr("limit", AttrBuf::new()))
            .put_nested(1, expr("log", AttrBuf::new()));
        assert_eq!(
            closing_rule_counts(Attrs::new(closing.bytes())),
            Some(Counts {
                packets: 3,
                bytes: 1500
            })
        );
        let mut other = AttrBuf::new();
        other
            .put_nested(1, expr("limit", AttrBuf::new()))
            .put_nested(1, expr("log", AttrBuf::new()));
        assert_eq!(closing_rule_counts(Attrs::new(other.bytes())), None);
        let mut counted_accept = AttrBuf::new();
        counted_accept
            .put_nested(1, expr("counter", counter))
            .put_nested(1, expr("lookup", AttrBuf::new()))
            .put_nested(1, expr("immediate", AttrBuf::new()));
        assert_eq!(
            closing_rule_counts(Attrs::new(counted_accept.bytes())),
            None
        );
    }
}
