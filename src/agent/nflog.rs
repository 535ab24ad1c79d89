//! nfnetlink_log: binds one NFLOG group on a netfilter netlink socket (copy mode packet) and
//! decodes NFULNL_MSG_PACKET messages and the IP headers they carry. Knows nothing of pods.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::netlink::attr::{AttrBuf, Attrs};
use crate::netlink::socket::{Socket, NETLINK_NETFILTER};
use crate::netlink::NetlinkError;
use crate::ruleset::logprefix::{self, Logged};

const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_QTHRESH: u16 = 4;
const NFULA_CFG_TIMEOUT: u16 = 5;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PACKET_HDR: u16 = 1;
const NFULA_IFINDEX_INDEV: u16 = 4;
const NFULA_IFINDEX_OUTDEV: u16 = 5;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
/// Bytes of each packet copied to us: enough for IPv6 with extension headers and ports.
const COPY_RANGE: u32 = 256;
/// Receive buffer of the subscription.
const RECV_BUFFER: i32 = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NflogError {
    #[error("cannot open a netfilter netlink socket: {0}")]
    Open(#[source] NetlinkError),
    #[error(
        "NFLOG group {group} is held by another process in this network namespace (another \
         egress-guard agent?): {errno}; stop it, or give this agent another group (the \
         conflist's nflogGroup)"
    )]
    Busy { group: u16, errno: &'static str },
    #[error("binding NFLOG group {group} (the agent needs CAP_NET_ADMIN): {source}")]
    Bind {
        group: u16,
        #[source]
        source: NetlinkError,
    },
    #[error("receiving from NFLOG group {group}: {source}")]
    Recv {
        group: u16,
        #[source]
        source: NetlinkError,
    },
}

impl NflogError {
    /// Messages were lost (socket buffer overrun); the subscription itself still works.
    pub fn is_overrun(&self) -> bool {
        matches!(self, NflogError::Recv { source, .. } if source.errno() == Some(libc::ENOBUFS))
    }
}

/// One packet as NFLOG delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedPacket {
    pub prefix: String,
    pub hw_protocol: u16,
    pub indev: Option<u32>,
    pub outdev: Option<u32>,
    /// From the network header on (truncated to the copy range).
    pub payload: Vec<u8>,
}

/// Whether this process holds CAP_NET_ADMIN (bit 12 of `CapEff` in /proc/self/status).
fn has_net_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << 12) != 0)
}

/// A bound NFLOG group. Closing the socket unbinds it.
pub struct Subscription {
    sock: Socket,
    group: u16,
}

fn config_header(group: u16) -> Vec<u8> {
    // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, resource id = group (big-endian).
    let mut v = vec![0u8, 0u8];
    v.extend_from_slice(&group.to_be_bytes());
    v
}

fn msg_type(op: u16) -> u16 {
    (NFNL_SUBSYS_ULOG << 8) | op
}

impl Subscription {
    /// Binds `group` in the current network namespace with packet copy mode.
    pub fn bind(group: u16) -> Result<Subscription, NflogError> {
        let mut sock = Socket::open(NETLINK_NETFILTER).map_err(NflogError::Open)?;
        let mut bind = AttrBuf::new();
        bind.put(NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
        let mut payload = config_header(group);
        payload.extend_from_slice(bind.bytes());
        match sock.request("nflog bind", msg_type(NFULNL_MSG_CONFIG), 0, &payload) {
            Ok(_) => {}
            // The kernel answers EPERM both without CAP_NET_ADMIN and when another socket owns
            // the group (EBUSY/EEXIST on some versions).
            Err(e) if e.errno() == Some(libc::EPERM) && !has_net_admin() => {
                return Err(NflogError::Bind { group, source: e })
            }
            Err(e) if matches!(e.errno(), Some(libc::EPERM | libc::EBUSY | libc::EEXIST)) => {
                let errno = match e.errno() {
                    Some(libc::EPERM) => "EPERM",
                    Some(libc::EBUSY) => "EBUSY",
                    _ => "EEXIST",
                };
                return Err(NflogError::Busy { group, errno });
            }
            Err(source) => return Err(NflogError::Bind { group, source }),
        }
        let mut mode = Vec::with_capacity(6);
        mode.extend_from_slice(&COPY_RANGE.to_be_bytes());
        mode.push(NFULNL_COPY_PACKET);
        mode.push(0);
        let mut cfg = AttrBuf::new();
        // Deliver every packet at once instead of batching up to 100 or one second.
        cfg.put(NFULA_CFG_MODE, &mode)
            .put_be32(NFULA_CFG_QTHRESH, 1)
            .put_be32(NFULA_CFG_TIMEOUT, 1);
        let mut payload = config_header(group);
        payload.extend_from_slice(cfg.bytes());
        sock.request("nflog config", msg_type(NFULNL_MSG_CONFIG), 0, &payload)
            .map_err(|source| NflogError::Bind { group, source })?;
        // A pod opening thousands of new flows at once logs each one (the ruleset's budget,
        // 10,000 by default): room for such a burst, about 400 bytes a packet.
        sock.grow_recv_buffer(RECV_BUFFER);
        Ok(Subscription { sock, group })
    }

    /// Waits for the next datagram (at most the socket's receive timeout) and returns the
    /// packets in it; empty on timeout.
    pub fn next_batch(&mut self) -> Result<Vec<LoggedPacket>, NflogError> {
        match self.sock.recv(false) {
            Ok(Some(msgs)) => Ok(msgs
                .iter()
                .filter(|m| m.kind == msg_type(NFULNL_MSG_PACKET))
                .filter_map(|m| parse_packet(&m.payload))
                .collect()),
            Ok(None) => Ok(Vec::new()),
            Err(e) if matches!(e.errno(), Some(libc::EAGAIN) | Some(libc::EINTR)) => Ok(Vec::new()),
            Err(source) => Err(NflogError::Recv {
                group: self.group,
                source,
            }),
        }
    }
}

/// Decodes an NFULNL_MSG_PACKET payload (nfgenmsg and attributes).
pub fn parse_packet(payload: &[u8]) -> Option<LoggedPacket> {
    let attrs = Attrs::new(payload.get(4..)?);
    let hw_protocol = attrs
        .get(NFULA_PACKET_HDR)
        .and_then(|a| a.be16())
        .unwrap_or(0);
    Some(LoggedPacket {
        prefix: attrs
            .get(NFULA_PREFIX)
            .map(|a| a.string())
            .unwrap_or_default(),
        hw_protocol,
        indev: attrs.get(NFULA_IFINDEX_INDEV).and_then(|a| a.be32()),
        outdev: attrs.get(NFULA_IFINDEX_OUTDEV).and_then(|a| a.be32()),
        payload: attrs.get(NFULA_PAYLOAD)?.value.to_vec(),
    })
}

/// Splits `eg:deny:<16 chars of container id> ` / `eg:audit:...`; `None` for other prefixes.
pub fn parse_prefix(prefix: &str) -> Option<(Logged, String)> {
    let (logged, cid) = logprefix::parse(prefix)?;
    Some((logged, cid.to_string()))
}

/// The addressing of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowKey {
    pub protocol: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// ICMP / ICMPv6 type and code.
    pub icmp: Option<(u8, u8)>,
}

/// A parsed IP packet: its flow key and its length on the wire (from the IP header, not the
/// truncated copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPacket {
    pub key: FlowKey,
    pub bytes: u64,
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

fn l4(protocol: u8, l4: Option<&[u8]>) -> (Option<u16>, Option<u16>, Option<(u8, u8)>) {
    let Some(h) = l4 else {
        return (None, None, None);
    };
    match protocol {
        TCP | UDP | SCTP if h.len() >= 4 => (
            Some(u16::from_be_bytes([h[0], h[1]])),
            Some(u16::from_be_bytes([h[2], h[3]])),
            None,
        ),
        ICMP | ICMPV6 if h.len() >= 2 => (None, None, Some((h[0], h[1]))),
        _ => (None, None, None),
    }
}

/// Parses an IPv4 or IPv6 header (and IPv6 extension headers) from the network header on.
pub fn parse_ip(p: &[u8]) -> Option<IpPacket> {
    match p.first()? >> 4 {
        4 => {
            if p.len() < 20 {
                return None;
            }
            let ihl = ((p[0] & 0x0f) as usize) * 4;
            let total = u16::from_be_bytes([p[2], p[3]]) as u64;
            let frag_offset = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
            let protocol = p[9];
            let src = IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19]));
            let header = if frag_offset == 0 && ihl >= 20 {
                p.get(ihl..)
            } else {
                None
            };
            let (sport, dport, icmp) = l4(protocol, header);
            Some(IpPacket {
                key: FlowKey {
                    protocol,
                    src,
                    dst,
                    sport,
                    dport,
                    icmp,
                },
                bytes: total,
            })
        }
        6 => {
            if p.len() < 40 {
                return None;
            }
            let bytes = u16::from_be_bytes([p[4], p[5]]) as u64 + 40;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&p[8..24]);
            let src = IpAddr::V6(Ipv6Addr::from(octets));
            octets.copy_from_slice(&p[24..40]);
            let dst = IpAddr::V6(Ipv6Addr::from(octets));
            let mut next = p[6];
            let mut off = 40usize;
            let mut first_fragment = true;
            // Hop-by-hop, routing, fragment and destination options headers.
            for _ in 0..8 {
                match next {
                    0 | 43 | 60 => {
                        let h = p.get(off..off + 2)?;
                        next = h[0];
                        off += (h[1] as usize + 1) * 8;
                    }
                    44 => {
                        let h = p.get(off..off + 4)?;
                        next = h[0];
                        first_fragment = u16::from_be_bytes([h[2], h[3]]) & 0xfff8 == 0;
                        off += 8;
                    }
                    _ => break,
                }
            }
            let header = if first_fragment { p.get(off..) } else { None };
            let (sport, dport, icmp) = l4(next, header);
            Some(IpPacket {
                key: FlowKey {
                    protocol: next,
                    src,
                    dst,
                    sport,
                    dport,
                    icmp,
                },
                bytes,
            })
        }
        _ => None,
    }
}

/// Protocol name for the flow schema: known names, else the decimal number.
pub fn protocol_name(p: u8) -> String {
    match p {
        TCP => "tcp".into(),
        UDP => "udp".into(),
        SCTP => "sctp".into(),
        ICMP => "icmp".into(),
        ICMPV6 => "icmpv6".into(),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_tcp() -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 22, 0, 2, 198, 51, 100, 10,
        ];
        p.extend_from_slice(&[0x9c, 0x40, 0, 80, 0, 0, 0, 1]);
        p
    }

    #[test]
    fn decodes_an_nflog_packet_message() {
        let mut a = AttrBuf::new();
        a.put(NFULA_PACKET_HDR, &[0x08, 0x00, 0, 0])
            .put_be32(NFULA_IFINDEX_INDEV, 7)
            .put(NFULA_PAYLOAD, &ipv4_tcp())
            .put_str(NFULA_PREFIX, "eg:deny:0123456789abcdef ");
        let mut payload = vec![5u8, 0, 0, 100];
        payload.extend_from_slice(a.bytes());
        let p = parse_packet(&payload).unwrap();
        assert_eq!(p.hw_protocol, 0x0800);
        assert_eq!(p.indev, Some(7));
        assert_eq!(p.outdev, None);
        assert_eq!(
            parse_prefix(&p.prefix),
            Some((Logged::Deny, "0123456789abcdef".into()))
        );
        let ip = parse_ip(&p.payload).unwrap();
        assert_eq!(ip.key.src, "10.22.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(ip.key.dst, "198.51.100.10".parse::<IpAddr>().unwrap());
        assert_eq!((ip.key.sport, ip.key.dport), (Some(40000), Some(80)));
        assert_eq!(ip.bytes, 60);
        assert!(
            parse_packet(&[5, 0, 0, 100]).is_none(),
            "no payload attribute"
        );
    }

    #[test]
    fn prefixes() {
        assert_eq!(
            parse_prefix("eg:audit:abc "),
            Some((Logged::Audit, "abc".into()))
        );
        assert_eq!(parse_prefix("eg:deny: "), None);
        assert_eq!(parse_prefix("other:deny:abc"), None);
        assert_eq!(parse_prefix("eg:allow:abc"), None);
    }

    #[test]
    fn ipv6_with_extension_header_and_fragments() {
        let mut p = vec![0x60, 0, 0, 0, 0, 16, 0, 64];
        p.extend_from_slice(&"fd00:22::2".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"2001:db8:100::10".parse::<Ipv6Addr>().unwrap().octets());
        // Hop-by-hop header (8 bytes) then UDP.
        p.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(&[0x30, 0x39, 0, 53, 0, 8, 0, 0]);
        let ip = parse_ip(&p).unwrap();
        assert_eq!(ip.key.protocol, 17);
        assert_eq!((ip.key.sport, ip.key.dport), (Some(12345), Some(53)));
        assert_eq!(ip.bytes, 56);
        // A non-first fragment has no ports.
        p[6] = 44;
        p[40..48].copy_from_slice(&[17, 0, 0, 8, 0, 0, 0, 1]);
        let ip = parse_ip(&p).unwrap();
        assert_eq!((ip.key.protocol, ip.key.sport), (17, None));
    }

    #[test]
    fn icmp_and_garbage() {
        let mut p = ipv4_tcp();
        p[9] = 1;
        p[20] = 8;
        p[21] = 0;
        let ip = parse_ip(&p).unwrap();
        assert_eq!(ip.key.icmp, Some((8, 0)));
        assert_eq!(protocol_name(ip.key.protocol), "icmp");
        assert_eq!(protocol_name(47), "47");
        assert!(parse_ip(&[0x45, 0]).is_none());
        assert!(parse_ip(&[0x00; 40]).is_none());
    }
}
