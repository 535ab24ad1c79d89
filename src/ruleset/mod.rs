//! The ruleset as plain data: tables, sets, chains and rules built from a small statement IR.
//! `compile` turns a `Policy` into one; `render` prints it as `nft list` would. No I/O here.

mod builders;
mod compile;
pub mod eval;
pub mod flow;
mod identity;
mod intervals;
mod json;
pub mod logprefix;
mod naming;
pub mod podnet;
mod render;
mod tables;
mod target;

pub use compile::compile;
pub use intervals::{disjoint_boxes, AddrPortBox};
pub use json::{render_json, render_json_text};
pub use naming::{
    comment_container, comment_devices, in_legacy_form, legacy_container, legacy_table_name,
    table_name, TABLE_PREFIX,
};
pub use podnet::{IfAddr, Mac, PodNet};
pub use render::{render, render_rule};
pub use tables::{CT_ESTABLISHED, CT_RELATED};
pub use target::{Attach, DenyLog, Placement, Target};

/// nf_tables address family of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Device-bound chains in the host netns (host placement).
    Netdev,
    /// IPv4+IPv6 chains inside the pod netns (pod placement).
    Inet,
}

impl Family {
    pub fn nfproto(self) -> u8 {
        match self {
            Family::Netdev => 5,
            Family::Inet => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Family::Netdev => "netdev",
            Family::Inet => "inet",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// netdev ingress: frames the pod sends (seen on the host-side veth).
    Ingress,
    /// netdev egress: frames sent to the pod.
    Egress,
    Output,
    Forward,
}

impl Hook {
    pub fn number(self) -> u32 {
        match self {
            Hook::Ingress => 0,
            Hook::Egress => 1,
            Hook::Forward => 2,
            Hook::Output => 3,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
            Hook::Output => "output",
            Hook::Forward => "forward",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
}

impl Verdict {
    pub fn code(self) -> u32 {
        match self {
            Verdict::Accept => 1,
            Verdict::Drop => 0,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Drop => "drop",
        }
    }
}

/// Layer-3 protocol selector for `meta protocol` (netdev) / `meta nfproto` (inet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    Ipv4,
    Ipv6,
    Arp,
}

impl L3 {
    pub fn ethertype(self) -> u16 {
        match self {
            L3::Ipv4 => 0x0800,
            L3::Ipv6 => 0x86dd,
            L3::Arp => 0x0806,
        }
    }
    pub fn nfproto(self) -> u8 {
        match self {
            L3::Ipv4 => 2,
            L3::Ipv6 => 10,
            L3::Arp => 3,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            L3::Ipv4 => "ip",
            L3::Ipv6 => "ip6",
            L3::Arp => "arp",
        }
    }
}

/// One field of a set key, in nft's datatype terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Ipv4Addr,
    Ipv6Addr,
    InetProto,
    InetService,
    EtherAddr,
}

impl Field {
    /// Length of the field's value in bytes (before 4-byte register padding).
    pub fn width(self) -> usize {
        match self {
            Field::Ipv4Addr => 4,
            Field::Ipv6Addr => 16,
            Field::InetProto => 1,
            Field::InetService => 2,
            Field::EtherAddr => 6,
        }
    }
    /// nft userspace datatype id (used to compose concatenated key types).
    pub fn type_id(self) -> u32 {
        match self {
            Field::Ipv4Addr => 7,
            Field::Ipv6Addr => 8,
            Field::InetProto => 12,
            Field::InetService => 13,
            Field::EtherAddr => 9,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Field::Ipv4Addr => "ipv4_addr",
            Field::Ipv6Addr => "ipv6_addr",
            Field::InetProto => "inet_proto",
            Field::InetService => "inet_service",
            Field::EtherAddr => "ether_addr",
        }
    }
    pub fn max(self) -> u128 {
        match self {
            Field::Ipv4Addr => u32::MAX as u128,
            Field::Ipv6Addr => u128::MAX,
            Field::InetProto => 255,
            Field::InetService => 65535,
            Field::EtherAddr => (1u128 << 48) - 1,
        }
    }
    /// Register space the field takes in a concatenation.
    pub fn padded_len(self) -> usize {
        self.width().div_ceil(4) * 4
    }
    /// Big-endian bytes of `v`, padded to the register size.
    pub fn encode(self, v: u128) -> Vec<u8> {
        let full = v.to_be_bytes();
        let mut out = full[16 - self.width()..].to_vec();
        out.resize(self.padded_len(), 0);
        out
    }
}

/// Inclusive value range of one key field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span {
    pub lo: u128,
    pub hi: u128,
}

impl Span {
    pub fn single(v: u128) -> Self {
        Span { lo: v, hi: v }
    }
    pub fn new(lo: u128, hi: u128) -> Self {
        Span { lo, hi }
    }
    pub fn contains(&self, v: u128) -> bool {
        self.lo <= v && v <= self.hi
    }
}

/// A set element: one span per key field.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Element {
    pub spans: Vec<Span>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    pub fields: Vec<Field>,
    /// Interval set (ranges and prefixes); otherwise exact-match hash.
    pub interval: bool,
    /// Updated from the packet path, entries expire after `timeout_secs`.
    pub dynamic: bool,
    pub timeout_secs: Option<u32>,
    pub size: Option<u32>,
    pub elements: Vec<Element>,
}

impl Set {
    pub fn key_len(&self) -> usize {
        self.fields.iter().map(|f| f.padded_len()).sum()
    }
    /// nft's composed datatype id for a concatenation (first field most significant).
    pub fn key_type(&self) -> u32 {
        self.fields
            .iter()
            .fold(0u32, |acc, f| (acc << 6) | f.type_id())
    }
}

/// What a key component is loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    Ip4Saddr,
    Ip4Daddr,
    Ip6Saddr,
    Ip6Daddr,
    L4Proto,
    ThSport,
    ThDport,
    EtherSaddr,
    EtherDaddr,
    /// Bytes of a header at a byte offset, as wide as the field.
    Raw {
        base: Base,
        offset: u32,
        field: Field,
    },
}

impl Selector {
    pub fn field(self) -> Field {
        match self {
            Selector::Ip4Saddr | Selector::Ip4Daddr => Field::Ipv4Addr,
            Selector::Ip6Saddr | Selector::Ip6Daddr => Field::Ipv6Addr,
            Selector::L4Proto => Field::InetProto,
            Selector::ThSport | Selector::ThDport => Field::InetService,
            Selector::EtherSaddr | Selector::EtherDaddr => Field::EtherAddr,
            Selector::Raw { field, .. } => field,
        }
    }
}

/// Which header a payload offset counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// The Ethernet header (netdev only), VLAN tags as they were on the wire.
    Link,
    Network,
    Transport,
}

/// What a comparison reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// `len` bytes of a header at a byte offset.
    Payload { base: Base, offset: u32, len: u32 },
    /// The packet's length from the network header on (`meta length`).
    MetaLen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Neq,
    Lte,
    Gte,
}

/// A rate limit on packets, as a token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rate {
    pub per_second: u64,
    pub burst: u32,
}

/// The statement IR. Each variant maps to a fixed sequence of nf_tables expressions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stmt {
    /// `meta protocol` (netdev) or `meta nfproto` (inet) equals.
    L3(L3),
    /// `meta protocol` differs (netdev).
    L3Not(L3),
    /// `meta l4proto` equals.
    L4Proto(u8),
    /// `meta l4proto` lies in `lo..=hi`.
    L4ProtoRange(u8, u8),
    /// `meta l4proto` lies outside `lo..=hi` (a gap in a set of protocols matched in one rule).
    L4ProtoNot(u8, u8),
    /// First byte of the transport header (ICMP/ICMPv6 type) equals.
    IcmpType(u8),
    /// First byte of the transport header lies in `lo..=hi` (one rule for consecutive types).
    IcmpTypeRange(u8, u8),
    /// First byte of the transport header lies outside `lo..=hi` (a gap in a set of types).
    IcmpTypeNot(u8, u8),
    /// `oifname` equals.
    OifName(String),
    /// `ct state` has any of the bits in the mask.
    CtState(u32),
    /// The device is Ethernet (`meta iiftype ether` at ingress, `meta oiftype ether` at
    /// egress, where there is no input device and an `iiftype` match never matches).
    LinkIsEther(Dev),
    /// The Ethernet type field of the frame as sent (not `meta protocol`, which a VLAN tag
    /// hides, and which a packet socket sets apart from the frame): the device is Ethernet
    /// and the type equals.
    EtherType(Dev, L3),
    /// Loaded bytes compared with a value (big-endian; a `MetaLen` value is a plain number).
    Cmp {
        load: Load,
        op: CmpOp,
        value: Vec<u8>,
    },
    /// Concatenated key looked up in a named set (`negate`: matches when it is absent).
    Lookup {
        set: String,
        key: Vec<Selector>,
        negate: bool,
    },
    /// Concatenated key added to / refreshed in a dynamic set. With `limit`, every element
    /// carries its own token bucket and the rule stops here for a key over its rate.
    Update {
        set: String,
        key: Vec<Selector>,
        limit: Option<Rate>,
    },
    /// Concatenated key added to a dynamic set when absent; an element already there keeps
    /// its expiry (not refreshed), so it lapses `timeout_secs` after it was first added.
    Add {
        set: String,
        key: Vec<Selector>,
    },
    /// Packets per second with a burst; over the limit the rule stops here.
    Limit {
        per_second: u64,
        burst: u32,
    },
    /// NFLOG to a group with a prefix.
    Log {
        prefix: String,
        group: u16,
    },
    Counter,
    Verdict(Verdict),
}

/// The device a chain sees a frame on: the one it came in by (ingress hook) or the one it
/// leaves by (egress hook).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dev {
    In,
    Out,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub stmts: Vec<Stmt>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub hook: Hook,
    /// Device for netdev chains.
    pub device: Option<String>,
    pub priority: i32,
    pub policy: Verdict,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    pub comment: String,
    pub sets: Vec<Set>,
    pub chains: Vec<Chain>,
}

impl Table {
    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|c| c.rules.len()).sum()
    }
    pub fn element_count(&self) -> usize {
        self.sets.iter().map(|s| s.elements.len()).sum()
    }
}
