//! nf_tables over netlink: lowers the ruleset IR to kernel expressions, encodes one atomic batch,
//! and decodes dumps back into a `Snapshot` that can be compared with what a table should hold.

mod batch;
mod codec;
mod consts;
mod dump;
mod expr;
mod snapshot;

pub use batch::{encode_batch, run_batch, Batch, Op};
pub use dump::{get_table, list_tables, read_table, rule_counters, CountedRule, Counts, TableInfo};
pub use expr::{lower_rule, lower_stmt, Expr};
pub use snapshot::{expected_snapshot, ChainSnapshot, SetSnapshot, Snapshot};

use crate::netlink::attr::AttrBuf;
use consts::NFNL_SUBSYS_NFTABLES;

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
