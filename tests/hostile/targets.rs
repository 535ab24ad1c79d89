//! Fuzz targets: each takes arbitrary bytes, must never panic, and checks the invariants the
//! plugin promises (panicking when one is broken). Shared by the stable, bounded loop in
//! `tests/hostile.rs` and the cargo-fuzz targets in `fuzz/` (included there with `#[path]`).
//! Nothing here touches the real kernel: verbs run against `RecordingKernel`.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use egress_guard::cni::plugin::{run, Invocation};
use egress_guard::cni::{parse_cni_args, Env, NetConf};
use egress_guard::kernel::fake::RecordingKernel;
use egress_guard::kernel::HostPeer;
use egress_guard::netlink::nft::{encode_batch, expected_snapshot, Op};
use egress_guard::policy::{
    parse_annotations, parse_entry, parse_network_entry, Entry, EntryRef, Mode, Policy, Settings,
    ALLOW_KEY, MAX_ANNOTATION_BYTES, MAX_ENTRIES, MODE_KEY, PREFIX,
};
use egress_guard::ruleset::{
    compile, render, table_name, Attach, Base, CmpOp, Family, Field, Hook, Load, Mac, PodNet,
    Selector, Stmt, Table, Target, Verdict,
};

/// Every CNI error code README.md documents.
pub const KNOWN_CODES: [u32; 12] = [1, 3, 4, 5, 6, 7, 11, 100, 101, 102, 103, 104];

// ---------------------------------------------------------------------------------------------
// annotations: `key=value` lines; lines without '=' are joined with ',' into the allow value.

pub fn annotation_pairs(data: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(data);
    let mut pairs = Vec::new();
    let mut loose = Vec::new();
    for line in text.split('\n') {
        match line.split_once('=') {
            Some((k, v)) => pairs.push((k.to_string(), v.to_string())),
            None => loose.push(line),
        }
    }
    if !loose.is_empty() {
        pairs.push((ALLOW_KEY.to_string(), loose.join(",")));
    }
    pairs
}

fn networks() -> Settings {
    let mut networks = BTreeMap::new();
    networks.insert(
        "orchestrator".to_string(),
        vec![
            parse_network_entry("10.0.5.0/24 tcp 8443").unwrap(),
            parse_network_entry("fd00:5::/64 tcp 8443").unwrap(),
        ],
    );
    networks.insert(
        "dns".to_string(),
        vec![parse_network_entry("10.96.0.10 udp 53").unwrap()],
    );
    Settings {
        default_mode: Mode::Off,
        enforce_namespaces: vec!["model-serving".to_string()],
        networks,
        ..Settings::default()
    }
}

pub fn annotations(data: &[u8]) {
    let pairs = annotation_pairs(data);
    let ours = |k: &str| k.to_ascii_lowercase().starts_with(PREFIX);
    match parse_annotations(&pairs) {
        Ok(ann) => {
            assert_eq!(ann.present, pairs.iter().any(|(k, _)| ours(k)));
            assert!(
                ann.allow.len() <= MAX_ENTRIES,
                "{} entries",
                ann.allow.len()
            );
            for (k, v) in pairs.iter().filter(|(k, _)| ours(k)) {
                assert!(k == MODE_KEY || k == ALLOW_KEY, "accepted key {k:?}");
                assert!(
                    v.len() <= MAX_ANNOTATION_BYTES,
                    "accepted {} bytes",
                    v.len()
                );
                assert!(
                    !v.bytes()
                        .any(|b| b.is_ascii_control() && !b" \t\n\r".contains(&b)),
                    "accepted a control character in {v:?}"
                );
            }
            for r in &ann.allow {
                let EntryRef::Literal(e) = r else { continue };
                check_entry(e);
            }
            let policy = Policy::resolve(&networks(), Some("default"), &ann);
            if let Err(e) = &policy {
                let msg = e.to_string();
                assert!(msg.contains("unknown network \"@"), "{msg}");
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
        }
    }
}

/// An accepted entry is canonical, round-trips through its text, and allows what it names.
fn check_entry(e: &Entry) {
    let text = e.to_string();
    assert_eq!(
        parse_entry(&text),
        Ok(EntryRef::Literal(*e)),
        "entry {text:?} does not round-trip"
    );
    let (lo, hi) = e.cidr.range();
    assert!(lo <= hi);
    if let Some((a, b)) = e.ports {
        assert!(1 <= a && a <= b, "ports {a}-{b} in {text}");
        assert!(e.proto.has_ports(), "ports on {text}");
    }
    let proto = e.proto.number().unwrap_or(47);
    let port = e.ports.map(|(a, _)| a);
    assert!(
        e.allows(e.cidr.addr(), proto, port),
        "{text} refuses itself"
    );
}

// ---------------------------------------------------------------------------------------------
// netconf: stdin bytes through NetConf::parse and every verb against the recording kernel.

const FUZZ_CID: &str = "fuzzcid0";
const FUZZ_NETNS: &str = "/var/run/netns/egress-guard-fuzz-does-not-exist";

fn fuzz_env(verb: &str, args: &str) -> Env {
    Env {
        command: verb.to_string(),
        container_id: Some(FUZZ_CID.to_string()),
        netns: Some(FUZZ_NETNS.to_string()),
        ifname: Some("eth0".to_string()),
        args: Some(args.to_string()),
    }
}

fn state_dir() -> PathBuf {
    std::env::temp_dir().join(format!("egress-guard-fuzz-state-{}", std::process::id()))
}

/// The stdin the verbs get: the fuzzed bytes, but with file paths pinned to a scratch
/// directory and logging off, so a fuzzed `logFile` or `stateDir` never writes elsewhere.
fn pinned_stdin(data: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(serde_json::Value::Object(mut obj)) => {
            obj.insert("stateDir".into(), state_dir().display().to_string().into());
            obj.remove("logFile");
            obj.insert("logLevel".into(), "off".into());
            serde_json::to_vec(&obj).unwrap()
        }
        // Not an object: every verb stops at decoding, before any file is touched.
        _ => data.to_vec(),
    }
}

fn fetch_pod(_: &Path, _: &str, name: &str) -> Result<Vec<(String, String)>, String> {
    if name.contains('x') {
        return Err("connection refused".into());
    }
    Ok(vec![
        (MODE_KEY.to_string(), "enforce".to_string()),
        (ALLOW_KEY.to_string(), "10.0.0.1 tcp 80".to_string()),
    ])
}

/// Runs one verb; returns its result (Ok(output) or Err(code, msg)).
pub fn verb(
    kernel: &mut RecordingKernel,
    verb: &str,
    stdin: &[u8],
    args: &str,
) -> Result<Option<serde_json::Value>, (u32, String)> {
    let env = fuzz_env(verb, args);
    let out = run(Invocation {
        kernel,
        env: &env,
        stdin,
        fetch_pod: &fetch_pod,
    });
    match out.result {
        Ok(v) => Ok(v),
        Err(e) => {
            assert!(
                KNOWN_CODES.contains(&e.code),
                "{verb}: undocumented code {}",
                e.code
            );
            assert!(!e.msg.is_empty(), "{verb}: empty message");
            Err((e.code, e.msg))
        }
    }
}

pub fn fuzz_kernel(seed: u8) -> RecordingKernel {
    let mut k = RecordingKernel::new();
    k.netdev_egress = seed & 1 == 0;
    if seed & 2 == 0 {
        k.peers.insert(
            PathBuf::from(FUZZ_NETNS),
            HostPeer::Veth {
                name: "vfuzz0".into(),
                index: 7,
            },
        );
    } else if seed & 4 == 0 {
        k.peers.insert(
            PathBuf::from(FUZZ_NETNS),
            HostPeer::None {
                kind: "macvlan".into(),
            },
        );
    }
    k
}

pub fn netconf(data: &[u8]) {
    let parsed = NetConf::parse(data);
    if let Err(e) = &parsed {
        assert!(!e.to_string().is_empty());
    }
    let stdin = pinned_stdin(data);
    let seed = data.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    let args = "K8S_POD_NAMESPACE=ml;K8S_POD_NAME=llm-0";
    let mut k = fuzz_kernel(seed);
    let add = verb(&mut k, "ADD", &stdin, args);
    let conf = NetConf::parse(&stdin);
    match &add {
        Err((code, msg)) => {
            assert!(
                k.table_names().is_empty(),
                "ADD failed ({code}: {msg}) but left {:?}",
                k.table_names()
            );
            if parsed.is_err() && conf.is_err() {
                assert!(matches!(code, 6 | 7), "undecodable stdin gave code {code}");
            }
        }
        Ok(out) => {
            let conf = conf.expect("ADD succeeded on a configuration that does not parse");
            assert!(
                conf.prev_result.is_some(),
                "ADD succeeded without prevResult"
            );
            assert_eq!(
                out.as_ref(),
                conf.prev_result.as_ref(),
                "prevResult not printed unchanged"
            );
            // An enforced pod never gets an annotation entry outside the operator's ceiling.
            if conf.settings.enforce_namespaces.iter().any(|n| n == "ml") {
                let ann = conf
                    .annotations
                    .as_ref()
                    .and_then(|a| parse_annotations(a).ok());
                for r in ann.iter().flat_map(|a| a.allow.iter()) {
                    assert!(
                        conf.settings
                            .enforced_allow
                            .permits(r, &conf.settings.networks),
                        "ADD accepted {r:?} outside {:?}",
                        conf.settings.enforced_allow
                    );
                }
            }
            let names = k.table_names();
            assert!(names.len() <= 1, "{names:?}");
            for n in &names {
                assert!(
                    n.ends_with(&table_name(FUZZ_CID, "eth0")),
                    "foreign table {n}"
                );
            }
            match verb(&mut k, "CHECK", &stdin, args) {
                Ok(_) | Err((1, _)) => {}
                Err(e) => panic!("CHECK right after ADD reported {e:?}"),
            }
            // GC must never remove the table of an attachment it is told is valid.
            let keep = conf
                .valid_attachments
                .as_ref()
                .map(|v| v.iter().any(|a| a.container_id == FUZZ_CID))
                .unwrap_or(true);
            let gc = verb(&mut k, "GC", &stdin, args);
            if keep || gc.is_err() {
                assert_eq!(
                    k.table_names(),
                    names,
                    "GC removed a valid attachment's table"
                );
            }
            verb(&mut k, "DEL", &stdin, args).expect("DEL after a successful ADD");
            assert!(k.table_names().is_empty(), "DEL left {:?}", k.table_names());
            verb(&mut k, "DEL", &stdin, args).expect("second DEL");
        }
    }
    for v in ["CHECK", "STATUS", "VERSION", "NOPE"] {
        let _ = verb(&mut fuzz_kernel(seed), v, &stdin, args);
    }
}

// ---------------------------------------------------------------------------------------------
// CNI_ARGS

const GOOD_STDIN: &str = r#"{"cniVersion":"1.0.0","name":"k8s","type":"egress-guard",
  "runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"egress-guard.io/mode":"enforce"}},
  "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"vfuzz0"}],"ips":[]}}"#;

pub fn cni_args(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    let parsed = parse_cni_args(&raw);
    match &parsed {
        Ok(id) => {
            for (key, v) in [
                ("K8S_POD_NAMESPACE", &id.namespace),
                ("K8S_POD_NAME", &id.name),
                ("K8S_POD_UID", &id.uid),
            ] {
                let Some(v) = v else { continue };
                assert!(!v.is_empty() && v.len() <= 253, "{key}={v:?}");
                assert!(
                    v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)),
                    "{key}={v:?} accepted"
                );
                assert!(
                    raw.contains(&format!("{key}={v}")),
                    "{key}={v} not in input"
                );
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let stdin = pinned_stdin(GOOD_STDIN.as_bytes());
    let mut k = fuzz_kernel(0);
    let add = verb(&mut k, "ADD", &stdin, &raw);
    match (&parsed, &add) {
        (Err(_), Err((4, _))) => assert!(k.table_names().is_empty()),
        (Err(e), other) => panic!("CNI_ARGS error {e} but ADD gave {other:?}"),
        (Ok(_), Err((code, msg))) => {
            assert_ne!(*code, 4, "valid CNI_ARGS refused: {msg}");
            assert!(k.table_names().is_empty());
        }
        (Ok(_), Ok(_)) => {
            verb(&mut k, "DEL", &stdin, &raw).expect("DEL");
            assert!(k.table_names().is_empty());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// compile: a policy built from the bytes, compiled for both placements, checked packet by
// packet against `Entry::allows` with an evaluator of the ruleset IR.

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn u128(&mut self, bytes: usize) -> u128 {
        (0..bytes).fold(0u128, |a, _| (a << 8) | self.u8() as u128)
    }
    fn done(&self) -> bool {
        self.at >= self.data.len()
    }
}

const V4_BASES: [u32; 6] = [
    0x0a00_0500,
    0x0a00_0000,
    0x0000_0000,
    0xffff_ff00,
    0xa9fe_a9fe,
    0x0a60_000a,
];
const V6_BASES: [u128; 4] = [
    0xfd00_0005_0000_0000_0000_0000_0000_0000,
    0,
    u128::MAX - 0xffff,
    0x2001_0db8_0100_0000_0000_0000_0000_0010,
];

/// One allowlist entry in annotation text, drawn from the reader (overlaps are likely).
fn entry_text(r: &mut Reader<'_>) -> String {
    let sel = r.u8();
    if sel % 16 == 15 {
        return ["@orchestrator", "@dns"][(sel / 16 % 2) as usize].to_string();
    }
    let v6 = sel & 0x10 != 0;
    let (addr, prefix) = if v6 {
        let base = V6_BASES[r.u8() as usize % V6_BASES.len()];
        let prefix = [0u8, 1, 64, 96, 120, 127, 128][r.u8() as usize % 7];
        let low = r.u128(2);
        let a = (base ^ low) & mask(128, prefix);
        (IpAddr::V6(a.into()).to_string(), prefix)
    } else {
        let base = V4_BASES[r.u8() as usize % V4_BASES.len()];
        let prefix = [0u8, 1, 8, 16, 24, 28, 31, 32][r.u8() as usize % 8];
        let low = r.u8() as u32;
        let a = (((base ^ low) as u128) & mask(32, prefix)) as u32;
        (IpAddr::V4(a.into()).to_string(), prefix)
    };
    let proto = ["", "any", "tcp", "udp", "sctp", "icmp", "icmpv6", "tcp"][r.u8() as usize % 8];
    let proto = match (proto, v6) {
        ("icmp", true) => "icmpv6",
        ("icmpv6", false) => "icmp",
        (p, _) => p,
    };
    let mut s = format!("{addr}/{prefix}");
    if !proto.is_empty() {
        s.push(' ');
        s.push_str(proto);
    }
    if matches!(proto, "tcp" | "udp" | "sctp") && r.u8() % 3 != 0 {
        let a = [1u16, 53, 80, 443, 8443, 65535, r.u16()][r.u8() as usize % 7].max(1);
        let b = a.saturating_add(r.u8() as u16 % 4 * r.u8() as u16);
        s.push_str(&format!(" {a}"));
        if b != a {
            s.push_str(&format!("-{b}"));
        }
    }
    s
}

fn mask(bits: u32, prefix: u8) -> u128 {
    let host = bits - prefix as u32;
    let all = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    if host >= 128 {
        0
    } else {
        all & !((1u128 << host) - 1)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Packet {
    pub arp: bool,
    pub v6: bool,
    pub dst: u128,
    pub proto: u8,
    /// Destination port, or the bytes at that offset for protocols without ports.
    pub port: u16,
    pub sport: u16,
    /// First byte of the transport header (ICMP type).
    pub icmp_type: u8,
}

impl Packet {
    fn addr(&self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(self.dst.into())
        } else {
            IpAddr::V4((self.dst as u32).into())
        }
    }
    /// What the policy says: only the entries, nothing else.
    pub fn allowed_by(&self, entries: &[Entry]) -> bool {
        if self.arp {
            return false;
        }
        let port = matches!(self.proto, 6 | 17 | 132).then_some(self.port);
        entries
            .iter()
            .any(|e| e.allows(self.addr(), self.proto, port))
    }
    /// Traffic the design allows whatever the policy: the pod's own ARP (the generated ARP is
    /// a well-formed request for its gateway).
    pub fn always_allowed(&self) -> bool {
        self.arp
    }
    /// Traffic dropped whatever the policy and the mode: neighbour discovery and redirects not
    /// of the exact shape the pod needs (the generated ones have hop limit 64).
    pub fn never_allowed(&self) -> bool {
        self.v6 && self.proto == 58 && (133..=137).contains(&self.icmp_type)
    }
}

const POD_SRC4: u128 = 0x0a16_0002;
const POD_SRC6: u128 = 0xfd00_0022_0000_0000_0000_0000_0000_0002;
const POD_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0x16, 0x00, 0x02];
const GATEWAY_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0x16, 0x00, 0x01];
const NEIGHBOUR_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0x16, 0x00, 0x09];

/// The pod the generated packets come from: the addresses above on a bridge whose gateway
/// has `GATEWAY_MAC`.
pub fn fuzz_pod() -> PodNet {
    PodNet {
        mac: Mac(POD_MAC),
        addrs: vec![
            "10.22.0.2/24".parse().unwrap(),
            "fd00:22::2/64".parse().unwrap(),
        ],
        link_local: vec!["fe80::858:aff:fe16:2".parse().unwrap()],
        gateway_mac: Some(Mac(GATEWAY_MAC)),
    }
}

/// The frame the pod sends for a packet, as the three headers a rule can load from: a
/// well-formed ARP request for the gateway, or an IPv4/IPv6 packet from the pod's address,
/// through the gateway's MAC when off-link and to a neighbour's MAC when on-link.
struct Frame {
    link: Vec<u8>,
    net: Vec<u8>,
    transport: Vec<u8>,
}

impl Frame {
    fn of(p: &Packet) -> Frame {
        let on_link = if p.v6 {
            p.dst >> 64 == POD_SRC6 >> 64 || p.dst >> 118 == 0xfe80 >> 6
        } else {
            p.dst >> 8 == POD_SRC4 >> 8
        };
        let (ethertype, net, transport) = if p.arp {
            let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
            a.extend_from_slice(&POD_MAC);
            a.extend_from_slice(&(POD_SRC4 as u32).to_be_bytes());
            a.extend_from_slice(&[0; 6]);
            a.extend_from_slice(&0x0a16_0001u32.to_be_bytes());
            (0x0806u16, a, Vec::new())
        } else {
            let mut t = match p.proto {
                1 | 58 => vec![p.icmp_type, 0],
                _ => p.sport.to_be_bytes().to_vec(),
            };
            t.extend_from_slice(&p.port.to_be_bytes());
            t.resize(32, 0);
            let net = if p.v6 {
                let mut h = vec![0x60, 0, 0, 0];
                h.extend_from_slice(&(t.len() as u16).to_be_bytes());
                h.extend_from_slice(&[p.proto, 64]);
                h.extend_from_slice(&POD_SRC6.to_be_bytes());
                h.extend_from_slice(&p.dst.to_be_bytes());
                h
            } else {
                let mut h = vec![0x45, 0];
                h.extend_from_slice(&(20 + t.len() as u16).to_be_bytes());
                h.extend_from_slice(&[0, 0, 0, 0, 64, p.proto, 0, 0]);
                h.extend_from_slice(&(POD_SRC4 as u32).to_be_bytes());
                h.extend_from_slice(&(p.dst as u32).to_be_bytes());
                h
            };
            (if p.v6 { 0x86dd } else { 0x0800 }, net, t)
        };
        let mut link = if p.arp {
            vec![0xff; 6]
        } else if on_link {
            NEIGHBOUR_MAC.to_vec()
        } else {
            GATEWAY_MAC.to_vec()
        };
        link.extend_from_slice(&POD_MAC);
        link.extend_from_slice(&ethertype.to_be_bytes());
        Frame {
            link,
            net,
            transport,
        }
    }
    fn bytes(&self, base: Base, offset: u32, len: u32) -> Option<&[u8]> {
        let h = match base {
            Base::Link => &self.link,
            Base::Network => &self.net,
            Base::Transport => &self.transport,
        };
        h.get(offset as usize..(offset + len) as usize)
    }
    fn ethertype(&self) -> u16 {
        u16::from_be_bytes([self.link[12], self.link[13]])
    }
}

/// The same frame as `ruleset::eval` takes it: the link header only at netdev hooks.
fn eval_packet(p: &Packet, family: Family) -> egress_guard::ruleset::eval::Packet {
    let f = Frame::of(p);
    let mut network = f.net.clone();
    network.extend_from_slice(&f.transport);
    egress_guard::ruleset::eval::Packet {
        link: (family == Family::Netdev).then(|| f.link[..14].try_into().unwrap()),
        thoff: f.net.len(),
        network,
        l3: if p.v6 {
            egress_guard::ruleset::L3::Ipv6
        } else {
            egress_guard::ruleset::L3::Ipv4
        },
        l4proto: p.proto,
        oifname: "eth0".into(),
        ct_state: egress_guard::ruleset::eval::CT_NEW,
    }
}

fn number(b: &[u8]) -> u128 {
    b.iter().fold(0u128, |acc, x| (acc << 8) | *x as u128)
}

fn selector_value(s: Selector, p: &Packet, f: &Frame) -> Option<u128> {
    let net = |o, l| f.bytes(Base::Network, o, l).map(number);
    Some(match s {
        Selector::Ip4Daddr | Selector::Ip6Daddr => p.dst,
        Selector::Ip4Saddr => net(12, 4)?,
        Selector::Ip6Saddr => net(8, 16)?,
        Selector::L4Proto => p.proto as u128,
        Selector::ThDport => p.port as u128,
        Selector::ThSport => f.bytes(Base::Transport, 0, 2).map(number)?,
        Selector::EtherDaddr => number(f.bytes(Base::Link, 0, 6)?),
        Selector::EtherSaddr => number(f.bytes(Base::Link, 6, 6)?),
        Selector::Raw {
            base,
            offset,
            field,
        } => number(f.bytes(base, offset, field.width() as u32)?),
    })
}

fn compares(op: CmpOp, have: &[u8], want: &[u8]) -> bool {
    match op {
        CmpOp::Eq => have == want,
        CmpOp::Neq => have != want,
        CmpOp::Lte => have <= want,
        CmpOp::Gte => have >= want,
    }
}

/// Evaluates one base chain of the IR for a new packet sent by the pod (no tracked replies,
/// no conntrack state, out through eth0), on the bytes of its frame. Also checks each lookup
/// against its set's key.
pub fn evaluate(table: &Table, chain: &str, p: &Packet) -> Verdict {
    let chain = table
        .chains
        .iter()
        .find(|c| c.name == chain)
        .unwrap_or_else(|| panic!("no chain {chain}"));
    let f = Frame::of(p);
    // `meta length` counts from the network header at ingress, from the link header at egress.
    let l2 = if chain.hook == Hook::Egress {
        f.link.len()
    } else {
        0
    };
    let len = (l2 + f.net.len() + f.transport.len()) as u32;
    let ip = !p.arp;
    'rules: for rule in &chain.rules {
        for stmt in &rule.stmts {
            let matched = match stmt {
                Stmt::L3(l3) | Stmt::EtherType(_, l3) => f.ethertype() == l3.ethertype(),
                // What a packet socket could make differ, the frame here never does.
                Stmt::L3Not(l3) => f.ethertype() != l3.ethertype(),
                Stmt::LinkIsEther(_) => true,
                Stmt::L4Proto(n) => ip && p.proto == *n,
                Stmt::IcmpType(t) => ip && p.icmp_type == *t,
                Stmt::IcmpTypeRange(lo, hi) => ip && (*lo..=*hi).contains(&p.icmp_type),
                Stmt::IcmpTypeNot(lo, hi) => ip && !(*lo..=*hi).contains(&p.icmp_type),
                Stmt::L4ProtoRange(lo, hi) => ip && (*lo..=*hi).contains(&p.proto),
                Stmt::L4ProtoNot(lo, hi) => ip && !(*lo..=*hi).contains(&p.proto),
                Stmt::OifName(_) => false,
                Stmt::CtState(_) => false,
                Stmt::Cmp { load, op, value } => match *load {
                    Load::MetaLen => compares(*op, &len.to_be_bytes(), value),
                    Load::Payload { base, offset, len } => f
                        .bytes(base, offset, len)
                        .is_some_and(|have| compares(*op, have, value)),
                },
                Stmt::Lookup { set, key, negate } => {
                    let s = table
                        .sets
                        .iter()
                        .find(|s| &s.name == set)
                        .unwrap_or_else(|| panic!("rule looks up missing set {set}"));
                    let fields: Vec<Field> = key.iter().map(|k| k.field()).collect();
                    assert_eq!(fields, s.fields, "key of lookup in {set}");
                    let values: Option<Vec<u128>> =
                        key.iter().map(|k| selector_value(*k, p, &f)).collect();
                    match values {
                        // A key that cannot be loaded stops the rule, negated or not.
                        None => false,
                        Some(values) => {
                            let found = !s.dynamic
                                && s.elements.iter().any(|e| {
                                    e.spans
                                        .iter()
                                        .zip(&values)
                                        .all(|(span, v)| span.contains(*v))
                                });
                            found != *negate
                        }
                    }
                }
                Stmt::Update { .. }
                | Stmt::Add { .. }
                | Stmt::Limit { .. }
                | Stmt::Log { .. }
                | Stmt::Counter => true,
                Stmt::Verdict(v) => return *v,
            };
            if !matched {
                continue 'rules;
            }
        }
    }
    chain.policy
}

/// Structural checks the kernel would otherwise enforce at the worst moment (during ADD).
pub fn check_table(table: &Table, cid: &str) {
    assert_eq!(table.name, table_name(cid, "eth0"));
    for s in &table.sets {
        for e in &s.elements {
            assert_eq!(e.spans.len(), s.fields.len(), "element width in {}", s.name);
            for (span, f) in e.spans.iter().zip(&s.fields) {
                assert!(
                    span.lo <= span.hi && span.hi <= f.max(),
                    "{span:?} in {}",
                    s.name
                );
            }
        }
        if s.interval {
            for (i, a) in s.elements.iter().enumerate() {
                for b in &s.elements[i + 1..] {
                    let overlap = a
                        .spans
                        .iter()
                        .zip(&b.spans)
                        .all(|(x, y)| x.lo <= y.hi && y.lo <= x.hi);
                    assert!(!overlap, "overlapping elements in {}: {a:?} {b:?}", s.name);
                }
            }
        }
    }
    let _ = render(table);
    let _ = expected_snapshot(table);
    let batch = encode_batch(&[Op::CreateTable(table)], 1);
    assert!(!batch.seqs.is_empty());
}

fn packets_for(entries: &[Entry], r: &mut Reader<'_>) -> Vec<Packet> {
    let mut out = Vec::new();
    let mut push = |v6: bool, dst: u128, proto: u8, port: u16, icmp_type: u8| {
        out.push(Packet {
            arp: false,
            v6,
            dst,
            proto,
            port,
            sport: 40000,
            icmp_type,
        })
    };
    for e in entries {
        let v6 = !e.cidr.is_v4();
        let top = if v6 { u128::MAX } else { u32::MAX as u128 };
        let (lo, hi) = e.cidr.range();
        let addrs = [lo, hi, lo.saturating_sub(1), hi.saturating_add(1).min(top)];
        let protos = match e.proto.number() {
            Some(n) => vec![n, n ^ 1],
            None => vec![6, 17, 47, if v6 { 58 } else { 1 }],
        };
        let ports = match e.ports {
            Some((a, b)) => vec![a, b, a.wrapping_sub(1), b.wrapping_add(1)],
            None => vec![0, 80, 65535],
        };
        for (i, &dst) in addrs.iter().enumerate() {
            for &proto in &protos {
                let port = ports[(i + proto as usize) % ports.len()];
                push(v6, dst, proto, port, r.u8());
                push(v6, dst, proto, ports[i % ports.len()], 128);
            }
        }
    }
    for _ in 0..24 {
        let v6 = r.u8() & 1 == 1;
        let dst = if v6 {
            V6_BASES[r.u8() as usize % V6_BASES.len()] ^ r.u128(2)
        } else {
            (V4_BASES[r.u8() as usize % V4_BASES.len()] ^ r.u16() as u32) as u128
        };
        let proto = [6, 17, 132, 1, 58, 47, 0, 255][r.u8() as usize % 8];
        push(v6, dst, proto, r.u16(), r.u8());
    }
    for t in [133u8, 135, 136, 134, 128] {
        push(true, 0xff02 << 112 | 1, 58, 0, t);
    }
    out.push(Packet {
        arp: true,
        v6: false,
        dst: 0,
        proto: 0,
        port: 0,
        sport: 0,
        icmp_type: 0,
    });
    out
}

pub fn compile_target(data: &[u8]) {
    let mut r = Reader { data, at: 0 };
    let mode = match r.u8() % 5 {
        0 => "audit",
        1 => "off",
        _ => "enforce",
    };
    let count = r.u8() as usize % 48;
    let mut items = Vec::new();
    for _ in 0..count {
        if r.done() {
            break;
        }
        items.push(entry_text(&mut r));
    }
    let pairs = vec![
        (MODE_KEY.to_string(), mode.to_string()),
        (ALLOW_KEY.to_string(), items.join(", ")),
    ];
    let ann = parse_annotations(&pairs).unwrap_or_else(|e| panic!("generated {pairs:?}: {e}"));
    let policy = Policy::resolve(&networks(), Some("default"), &ann).unwrap();
    let cid = "fuzz0";
    let packets = packets_for(&policy.entries, &mut r);
    for attach in [
        Attach::Host {
            device: "vfuzz0".into(),
            pod: fuzz_pod(),
        },
        Attach::PodLink {
            device: "eth0".into(),
            pod: fuzz_pod(),
        },
        Attach::Pod,
    ] {
        let target = Target {
            container_id: cid.to_string(),
            ifname: "eth0".to_string(),
            attach: attach.clone(),
            log: egress_guard::ruleset::DenyLog::new(100),
        };
        let Some(table) = compile(&policy, &target) else {
            assert_eq!(
                policy.mode,
                Mode::Off,
                "compile gave nothing for {policy:?}"
            );
            continue;
        };
        assert_ne!(policy.mode, Mode::Off, "mode off compiled a table");
        assert_eq!(
            compile(&policy, &target).as_ref(),
            Some(&table),
            "not deterministic"
        );
        check_table(&table, cid);
        let (family, chains): (Family, &[&str]) = match attach {
            Attach::Host { .. } | Attach::PodLink { .. } => (Family::Netdev, &["from_pod"]),
            Attach::Pod => (Family::Inet, &["output", "forward"]),
        };
        assert_eq!(table.family, family);
        for p in &packets {
            if p.arp && family == Family::Inet {
                continue;
            }
            for chain in chains {
                let accepted = evaluate(&table, chain, p) == Verdict::Accept;
                // `explain`'s evaluator decides as this reference does.
                if !p.arp {
                    let c = table.chains.iter().find(|c| c.name == *chain).unwrap();
                    let ours = egress_guard::ruleset::eval::run(&table, c, &eval_packet(p, family));
                    assert_eq!(
                        ours.verdict == Verdict::Accept,
                        accepted,
                        "ruleset::eval and the reference differ on {p:?} in {chain}"
                    );
                }
                let host = family == Family::Netdev;
                // The inet pod table still accepts RS, NS and NA of any shape (README).
                let pod_nd = !host && p.never_allowed() && [133, 135, 136].contains(&p.icmp_type);
                let allowed = !(host && p.never_allowed())
                    && (p.allowed_by(&policy.entries) || p.always_allowed() || pod_nd);
                if policy.mode == Mode::Audit {
                    assert_eq!(
                        accepted,
                        !(host && p.never_allowed()),
                        "audit on {p:?} in {chain}"
                    );
                    continue;
                }
                assert!(
                    !accepted || allowed,
                    "{chain} accepts {p:?}, which the policy {} does not allow",
                    policy.canonical()
                );
                assert!(
                    accepted || !allowed,
                    "{chain} drops {p:?}, which the policy {} allows",
                    policy.canonical()
                );
            }
        }
    }
}
