//! One atomic nf_tables transaction: the operations, their encoding as a framed batch, and
//! running it on a socket.

use super::codec::{data_value, encode_expr};
use super::consts::*;
use super::snapshot::{comment_udata, set_flags, wire_elements};
use super::{lower_rule, msg_type, nfgen, with_header};
use crate::netlink::attr::AttrBuf;
use crate::netlink::socket::{
    encode_message, Socket, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use crate::netlink::NetlinkError;
use crate::ruleset::{Family, Table};

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
                    for chunk in wire_elements(s).chunks(256) {
                        let mut a = AttrBuf::new();
                        a.put_str(ELEM_LIST_TABLE, &t.name)
                            .put_str(ELEM_LIST_SET, &s.name)
                            .put_be32(ELEM_LIST_SET_ID, id);
                        a.nest(ELEM_LIST_ELEMENTS, |list| {
                            for e in chunk {
                                list.nest(LIST_ELEM, |el| {
                                    el.put_nested(ELEM_KEY, data_value(&e.key));
                                    if let Some(end) = &e.key_end {
                                        el.put_nested(ELEM_KEY_END, data_value(end));
                                    }
                                    if e.interval_end {
                                        el.put_be32(ELEM_FLAGS, ELEM_F_INTERVAL_END);
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
}
