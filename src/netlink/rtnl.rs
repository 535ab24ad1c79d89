//! rtnetlink queries: links by name or index (with their peer ifindex, peer netns id, kind, MAC
//! and master), addresses, and the netns id a namespace has as seen from the current one.
//! Read-only.

use std::os::fd::RawFd;

use super::attr::{AttrBuf, Attrs};
use super::socket::{Message, Socket};
use super::NetlinkError;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWNSID: u16 = 88;
const RTM_GETNSID: u16 = 90;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;

/// What we need to know of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// `veth`, `ipvlan`, `macvlan`, ... (`None` for physical devices).
    pub kind: Option<String>,
    /// IFLA_LINK: the peer's (veth) or parent's (ipvlan/macvlan) ifindex.
    pub link: Option<u32>,
    /// IFLA_LINK_NETNSID: where `link` lives, as a netns id of the current namespace.
    pub link_netnsid: Option<i32>,
    /// IFLA_ADDRESS, for Ethernet devices.
    pub mac: Option<[u8; 6]>,
    /// IFLA_MASTER: the bridge (or other master) the link is enslaved to.
    pub master: Option<u32>,
}

/// One address of an interface (RTM_NEWADDR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrInfo {
    pub index: u32,
    pub addr: std::net::IpAddr,
    pub prefix: u8,
    /// RT_SCOPE_*: 0 universe, 253 link, 254 host.
    pub scope: u8,
}

fn ifinfomsg(index: i32) -> Vec<u8> {
    let mut v = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
    v.extend_from_slice(&index.to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes());
    v
}

fn parse_link(m: &Message) -> Option<LinkInfo> {
    if m.kind != RTM_NEWLINK || m.payload.len() < 16 {
        return None;
    }
    let index = i32::from_ne_bytes(m.payload[4..8].try_into().ok()?) as u32;
    let attrs = Attrs::new(&m.payload[16..]);
    Some(LinkInfo {
        index,
        name: attrs
            .get(IFLA_IFNAME)
            .map(|a| a.string())
            .unwrap_or_default(),
        kind: attrs
            .get(IFLA_LINKINFO)
            .and_then(|li| li.nested().get(IFLA_INFO_KIND))
            .map(|k| k.string()),
        link: attrs.get(IFLA_LINK).and_then(|a| a.ne32()),
        link_netnsid: attrs.get(IFLA_LINK_NETNSID).and_then(|a| a.ne_i32()),
        mac: attrs
            .get(IFLA_ADDRESS)
            .and_then(|a| <[u8; 6]>::try_from(a.value).ok()),
        master: attrs.get(IFLA_MASTER).and_then(|a| a.ne32()),
    })
}

fn parse_addr(m: &Message) -> Option<AddrInfo> {
    if m.kind != RTM_NEWADDR || m.payload.len() < 8 {
        return None;
    }
    let (family, prefix, scope) = (m.payload[0], m.payload[1], m.payload[3]);
    let index = u32::from_ne_bytes(m.payload[4..8].try_into().ok()?);
    let attrs = Attrs::new(&m.payload[8..]);
    // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS elsewhere.
    let raw = attrs
        .get(IFA_LOCAL)
        .or_else(|| attrs.get(IFA_ADDRESS))?
        .value;
    let addr = match family as i32 {
        libc::AF_INET => std::net::IpAddr::from(<[u8; 4]>::try_from(raw).ok()?),
        libc::AF_INET6 => std::net::IpAddr::from(<[u8; 16]>::try_from(raw).ok()?),
        _ => return None,
    };
    Some(AddrInfo {
        index,
        addr,
        prefix,
        scope,
    })
}

/// Every IPv4 and IPv6 address in the current namespace (filter by `index` yourself).
pub fn list_addrs(sock: &mut Socket) -> Result<Vec<AddrInfo>, NetlinkError> {
    let ifaddrmsg = [libc::AF_UNSPEC as u8, 0, 0, 0, 0, 0, 0, 0];
    let msgs = sock.dump("list addresses", RTM_GETADDR, &ifaddrmsg)?;
    Ok(msgs.iter().filter_map(parse_addr).collect())
}

/// The IPv4 and IPv6 addresses of interface `index`: the kernel filters the dump where it
/// checks requests strictly, else every address is dumped and filtered here.
pub fn addrs_of(sock: &mut Socket, index: u32) -> Result<Vec<AddrInfo>, NetlinkError> {
    let mut ifaddrmsg = [libc::AF_UNSPEC as u8, 0, 0, 0, 0, 0, 0, 0];
    ifaddrmsg[4..8].copy_from_slice(&index.to_ne_bytes());
    let all = match sock.dump_filtered("list addresses", RTM_GETADDR, &ifaddrmsg)? {
        Some(msgs) => msgs.iter().filter_map(parse_addr).collect(),
        None => list_addrs(sock)?,
    };
    Ok(all.into_iter().filter(|a| a.index == index).collect())
}

fn missing(e: &NetlinkError) -> bool {
    matches!(e.errno(), Some(libc::ENODEV) | Some(libc::ENOENT))
}

pub fn link_by_name(sock: &mut Socket, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
    let mut p = ifinfomsg(0);
    let mut a = AttrBuf::new();
    a.put_str(IFLA_IFNAME, name);
    p.extend_from_slice(a.bytes());
    match sock.request("get link", RTM_GETLINK, 0, &p) {
        Ok(msgs) => Ok(msgs.iter().find_map(parse_link)),
        Err(e) if missing(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn link_by_index(sock: &mut Socket, index: u32) -> Result<Option<LinkInfo>, NetlinkError> {
    match sock.request("get link", RTM_GETLINK, 0, &ifinfomsg(index as i32)) {
        Ok(msgs) => Ok(msgs.iter().find_map(parse_link)),
        Err(e) if missing(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn list_links(sock: &mut Socket) -> Result<Vec<LinkInfo>, NetlinkError> {
    let msgs = sock.dump("list links", RTM_GETLINK, &ifinfomsg(0))?;
    Ok(msgs.iter().filter_map(parse_link).collect())
}

/// The netns id that the namespace behind `fd` has in the current namespace (`None` if the
/// kernel has not assigned one).
pub fn nsid_of(sock: &mut Socket, fd: RawFd) -> Result<Option<i32>, NetlinkError> {
    let mut p = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
    let mut a = AttrBuf::new();
    a.put_u32(NETNSA_FD, fd as u32);
    p.extend_from_slice(a.bytes());
    let msgs = sock.request("get netns id", RTM_GETNSID, 0, &p)?;
    Ok(msgs
        .iter()
        .filter(|m| m.kind == RTM_NEWNSID)
        .filter_map(|m| Attrs::new(m.payload.get(4..)?).get(NETNSA_NSID)?.ne_i32())
        .find(|&id| id >= 0))
}
