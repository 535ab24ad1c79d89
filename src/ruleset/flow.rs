//! The first packet of a flow the pod opens, built as the compiled table's from-pod chain sees
//! it (an Ethernet frame from the pod's MAC and address at a netdev hook, an IP packet leaving
//! by `eth0` at the inet output hook), and the chain's decision on it ([`super::eval`]).

use std::net::IpAddr;

use super::eval::{self, Outcome, Packet, CT_NEW};
use super::{Chain, Family, Table, Target, L3};

/// Source port of the probe packet.
const SOURCE_PORT: u16 = 40000;
/// The Ethernet address a frame to an on-link neighbour carries (the documentation range of
/// RFC 7042), unless the pod's gateway is that neighbour.
const NEIGHBOUR_MAC: [u8; 6] = [0x00, 0x00, 0x5e, 0x00, 0x53, 0x01];

/// What a flow is: where to, which IP protocol, which destination port (TCP, UDP, SCTP) or
/// ICMP type (ICMP, ICMPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub dst: IpAddr,
    pub proto: u8,
    pub port: Option<u16>,
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

fn transport(flow: &Flow) -> Vec<u8> {
    let port = flow.port.unwrap_or(0).to_be_bytes();
    let sport = SOURCE_PORT.to_be_bytes();
    match flow.proto {
        TCP => {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&sport);
            t[2..4].copy_from_slice(&port);
            t[12] = 5 << 4;
            t[13] = 0x02; // SYN
            t[14..16].copy_from_slice(&64240u16.to_be_bytes());
            t
        }
        UDP => {
            let mut t = vec![0u8; 8];
            t[0..2].copy_from_slice(&sport);
            t[2..4].copy_from_slice(&port);
            t[4..6].copy_from_slice(&8u16.to_be_bytes());
            t
        }
        SCTP => {
            let mut t = vec![0u8; 32];
            t[0..2].copy_from_slice(&sport);
            t[2..4].copy_from_slice(&port);
            t[12] = 1; // INIT
            t
        }
        // Echo request unless a type is given; identifier and sequence follow.
        ICMP | ICMPV6 => {
            let echo = if flow.proto == ICMP { 8 } else { 128 };
            let ty = flow.port.map(|t| t as u8).unwrap_or(echo);
            vec![ty, 0, 0, 0, 0x12, 0x34, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
        }
        _ => vec![0u8; 8],
    }
}

/// The pod's source address for a destination of this family (unspecified when it has none).
fn source(target: &Target, v4: bool) -> IpAddr {
    let own = target.attach.pod_net().and_then(|pod| {
        if v4 {
            pod.v4().next().map(|a| a.addr)
        } else {
            pod.v6().next().map(|a| a.addr)
        }
    });
    match (own, v4) {
        (Some(a), _) => a,
        (None, true) => IpAddr::from([0u8; 4]),
        (None, false) => IpAddr::from([0u16; 8]),
    }
}

/// The packet the pod sends first for `flow`.
pub fn first_packet(target: &Target, flow: &Flow) -> Packet {
    let t = transport(flow);
    let v4 = flow.dst.is_ipv4();
    let mut network = Vec::new();
    let (l3, thoff) = match (source(target, v4), flow.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = (20 + t.len()) as u16;
            network.extend_from_slice(&[0x45, 0]);
            network.extend_from_slice(&total.to_be_bytes());
            network.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, flow.proto, 0, 0]);
            network.extend_from_slice(&s.octets());
            network.extend_from_slice(&d.octets());
            (L3::Ipv4, 20)
        }
        (s, d) => {
            let (IpAddr::V6(s), IpAddr::V6(d)) = (s, d) else {
                unreachable!("source() gives the destination's family")
            };
            network.extend_from_slice(&[0x60, 0, 0, 0]);
            network.extend_from_slice(&(t.len() as u16).to_be_bytes());
            network.extend_from_slice(&[flow.proto, 64]);
            network.extend_from_slice(&s.octets());
            network.extend_from_slice(&d.octets());
            (L3::Ipv6, 40)
        }
    };
    network.extend_from_slice(&t);
    let link = target.attach.pod_net().map(|pod| {
        let value = super::podnet::ip_value(flow.dst);
        let on_link = pod.addrs.iter().any(|a| {
            let (lo, hi) = a.subnet();
            a.is_v4() == v4 && (lo..=hi).contains(&value)
        }) || matches!(flow.dst, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80);
        let dmac = match pod.gateway_mac {
            Some(gw) if !on_link => gw.0,
            _ => NEIGHBOUR_MAC,
        };
        let mut h = [0u8; 14];
        h[0..6].copy_from_slice(&dmac);
        h[6..12].copy_from_slice(&pod.mac.0);
        h[12..14].copy_from_slice(&l3.ethertype().to_be_bytes());
        h
    });
    let oifname = if flow.dst.is_loopback() { "lo" } else { "eth0" };
    Packet {
        link,
        network,
        l3,
        l4proto: flow.proto,
        thoff,
        oifname: oifname.to_string(),
        ct_state: CT_NEW,
    }
}

/// The chain that sees what the pod sends: `from_pod` of a netdev table, `output` of the inet
/// one.
pub fn from_pod_chain(table: &Table) -> Option<&Chain> {
    let name = match table.family {
        Family::Netdev => "from_pod",
        Family::Inet => "output",
    };
    table.chains.iter().find(|c| c.name == name)
}

/// What `table` (compiled for `target`) does with the first packet of `flow`.
pub fn decide(table: &Table, target: &Target, flow: &Flow) -> Option<(usize, Outcome)> {
    let chain = from_pod_chain(table)?;
    let index = table.chains.iter().position(|c| c.name == chain.name)?;
    let packet = first_packet(target, flow);
    Some((index, eval::run(table, chain, &packet)))
}
