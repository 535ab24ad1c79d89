//! rtnetlink queries: links by name or index (with their peer ifindex, peer netns id, kind, MAC
//! and master), addresses, and the netns id a namespace has as seen from the current one.
//! Read-only. Messages are encoded and decoded by `netlink-packet-route`; `Socket` carries them.
//! Link replies are read attribute by attribute (the crate's header, attribute iterator and
//! link-kind parser, for the six attributes used): parsing whole `LinkMessage`s would link in
//! the crate's parsers and emitters for every kind of link's details, a sixth of the binary.

use std::os::fd::RawFd;

use netlink_packet_core::{
    parse_i32, parse_string, parse_u32, DefaultNla, Emitable, NlaBuffer, NlasIterator, Parseable,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkHeader};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::AddressFamily;

use super::socket::{Message, Socket};
use super::NetlinkError;

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

/// A request's payload (what follows the netlink header).
fn encode(msg: &impl Emitable) -> Vec<u8> {
    let mut payload = vec![0; msg.buffer_len()];
    msg.emit(&mut payload);
    payload
}

/// A reply of message type `kind`, parsed; `None` for another type or one that does not parse.
/// Each message type is parsed by its own type (not `RouteNetlinkMessage`), so only the link,
/// address and netns id parsers are linked in.
fn decode<M: Parseable<[u8]>>(m: &Message, kind: u16) -> Option<M> {
    if m.kind != kind {
        return None;
    }
    match M::parse(m.payload.as_slice()) {
        Ok(msg) => Some(msg),
        Err(e) => {
            log::debug!("rtnetlink: ignoring reply of type {kind}: {e}");
            None
        }
    }
}

/// Size of `struct ifinfomsg`, the link header.
const LINK_HEADER_LEN: usize = 16;

/// A link request: `index` 0 and no name ask for every link.
fn get_link(index: u32, name: Option<&str>) -> (u16, Vec<u8>) {
    let header = LinkHeader {
        interface_family: AddressFamily::Unspec,
        index,
        ..Default::default()
    };
    let mut payload = encode(&header);
    if let Some(name) = name {
        let mut value = name.as_bytes().to_vec();
        value.push(0);
        payload.extend(encode(&DefaultNla::new(libc::IFLA_IFNAME, value)));
    }
    (libc::RTM_GETLINK, payload)
}

/// An address request: `index` 0 asks for every interface's addresses.
fn get_addr(index: u32) -> (u16, Vec<u8>) {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Unspec;
    msg.header.index = index;
    (libc::RTM_GETADDR, encode(&msg))
}

fn parse_link(m: &Message) -> Option<LinkInfo> {
    if m.kind != libc::RTM_NEWLINK {
        return None;
    }
    let payload = m.payload.as_slice();
    let header = match LinkHeader::parse(payload) {
        Ok(h) => h,
        Err(e) => {
            log::debug!("rtnetlink: ignoring a link reply: {e}");
            return None;
        }
    };
    let mut info = LinkInfo {
        index: header.index,
        name: String::new(),
        kind: None,
        link: None,
        link_netnsid: None,
        mac: None,
        master: None,
    };
    for nla in NlasIterator::new(payload.get(LINK_HEADER_LEN..)?) {
        let nla = match nla {
            Ok(nla) => nla,
            Err(e) => {
                log::debug!("rtnetlink: ignoring a link reply: {e}");
                return None;
            }
        };
        let value = nla.value();
        match nla.kind() {
            libc::IFLA_IFNAME => info.name = parse_string(value).ok()?,
            libc::IFLA_LINK => info.link = parse_u32(value).ok(),
            libc::IFLA_LINK_NETNSID => info.link_netnsid = parse_i32(value).ok(),
            libc::IFLA_ADDRESS => info.mac = <[u8; 6]>::try_from(value).ok(),
            libc::IFLA_MASTER => info.master = parse_u32(value).ok(),
            libc::IFLA_LINKINFO => info.kind = link_kind(value),
            _ => {}
        }
    }
    Some(info)
}

/// IFLA_INFO_KIND inside IFLA_LINKINFO.
fn link_kind(linkinfo: &[u8]) -> Option<String> {
    NlasIterator::new(linkinfo)
        .filter_map(Result::ok)
        .find(|nla: &NlaBuffer<&[u8]>| nla.kind() == libc::IFLA_INFO_KIND)
        .and_then(|nla| InfoKind::parse(&nla).ok())
        .map(|kind| kind.to_string())
}

fn parse_addr(m: &Message) -> Option<AddrInfo> {
    let msg: AddressMessage = decode(m, libc::RTM_NEWADDR)?;
    let (mut local, mut address) = (None, None);
    for attr in msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(ip),
            AddressAttribute::Address(ip) => address = Some(ip),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS elsewhere.
    let addr = local.or(address)?;
    let family_matches = match msg.header.family {
        AddressFamily::Inet => addr.is_ipv4(),
        AddressFamily::Inet6 => addr.is_ipv6(),
        _ => false,
    };
    family_matches.then(|| AddrInfo {
        index: msg.header.index,
        addr,
        prefix: msg.header.prefix_len,
        scope: msg.header.scope.into(),
    })
}

/// Every IPv4 and IPv6 address in the current namespace (filter by `index` yourself).
pub fn list_addrs(sock: &mut Socket) -> Result<Vec<AddrInfo>, NetlinkError> {
    let (kind, payload) = get_addr(0);
    let msgs = sock.dump("list addresses", kind, &payload)?;
    Ok(msgs.iter().filter_map(parse_addr).collect())
}

/// The IPv4 and IPv6 addresses of interface `index`: the kernel filters the dump where it
/// checks requests strictly, else every address is dumped and filtered here.
pub fn addrs_of(sock: &mut Socket, index: u32) -> Result<Vec<AddrInfo>, NetlinkError> {
    let (kind, payload) = get_addr(index);
    let all = match sock.dump_filtered("list addresses", kind, &payload)? {
        Some(msgs) => msgs.iter().filter_map(parse_addr).collect(),
        None => list_addrs(sock)?,
    };
    Ok(all.into_iter().filter(|a| a.index == index).collect())
}

fn missing(e: &NetlinkError) -> bool {
    matches!(e.errno(), Some(libc::ENODEV) | Some(libc::ENOENT))
}

fn one_link(
    sock: &mut Socket,
    (kind, payload): (u16, Vec<u8>),
) -> Result<Option<LinkInfo>, NetlinkError> {
    match sock.request("get link", kind, 0, &payload) {
        Ok(msgs) => Ok(msgs.iter().find_map(parse_link)),
        Err(e) if missing(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn link_by_name(sock: &mut Socket, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
    one_link(sock, get_link(0, Some(name)))
}

pub fn link_by_index(sock: &mut Socket, index: u32) -> Result<Option<LinkInfo>, NetlinkError> {
    one_link(sock, get_link(index, None))
}

pub fn list_links(sock: &mut Socket) -> Result<Vec<LinkInfo>, NetlinkError> {
    let (kind, payload) = get_link(0, None);
    let msgs = sock.dump("list links", kind, &payload)?;
    Ok(msgs.iter().filter_map(parse_link).collect())
}

/// The netns id that the namespace behind `fd` has in the current namespace (`None` if the
/// kernel has not assigned one).
pub fn nsid_of(sock: &mut Socket, fd: RawFd) -> Result<Option<i32>, NetlinkError> {
    let mut msg = NsidMessage::default();
    msg.header.family = AddressFamily::Unspec;
    msg.attributes = vec![NsidAttribute::Fd(fd as u32)];
    let msgs = sock.request("get netns id", libc::RTM_GETNSID, 0, &encode(&msg))?;
    Ok(msgs
        .iter()
        .filter_map(|m| decode::<NsidMessage>(m, libc::RTM_NEWNSID))
        .flat_map(|m| m.attributes)
        .find_map(|a| match a {
            NsidAttribute::Id(id) if id >= 0 => Some(id),
            _ => None,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::attr::{AttrBuf, Attrs};

    // Attribute numbers of <linux/if_link.h>, <linux/if_addr.h> and <linux/net_namespace.h>,
    // for building replies as the kernel sends them.
    const IFLA_ADDRESS: u16 = 1;
    const IFLA_IFNAME: u16 = 3;
    const IFLA_LINK: u16 = 5;
    const IFLA_MASTER: u16 = 10;
    const IFLA_LINKINFO: u16 = 18;
    const IFLA_INFO_KIND: u16 = 1;
    const IFLA_LINK_NETNSID: u16 = 37;
    const IFA_ADDRESS: u16 = 1;
    const IFA_LOCAL: u16 = 2;
    const NETNSA_NSID: u16 = 1;
    const NETNSA_FD: u16 = 3;

    fn reply(kind: u16, header: &[u8], attrs: &AttrBuf) -> Message {
        let mut payload = header.to_vec();
        payload.extend_from_slice(attrs.bytes());
        Message {
            kind,
            flags: 0,
            seq: 1,
            payload,
        }
    }

    fn ifinfomsg(index: u32) -> Vec<u8> {
        let mut h = vec![libc::AF_UNSPEC as u8, 0, 1, 0];
        h.extend_from_slice(&index.to_ne_bytes());
        h.extend_from_slice(&[0; 8]);
        h
    }

    #[test]
    fn link_requests_are_an_ifinfomsg_and_attributes() {
        let (kind, payload) = get_link(7, Some("eth0"));
        assert_eq!(kind, libc::RTM_GETLINK);
        assert_eq!(payload.len(), 16 + 12);
        assert_eq!(payload[0], libc::AF_UNSPEC as u8);
        assert_eq!(payload[4..8], 7u32.to_ne_bytes());
        let name = Attrs::new(&payload[16..]).find(|a| a.kind == IFLA_IFNAME);
        assert_eq!(name.map(|a| a.string()).as_deref(), Some("eth0"));

        let (kind, payload) = get_addr(3);
        assert_eq!(kind, libc::RTM_GETADDR);
        assert_eq!(payload.len(), 8);
        assert_eq!(payload[4..8], 3u32.to_ne_bytes());
    }

    #[test]
    fn links_are_read_from_newlink_replies() {
        let mut a = AttrBuf::new();
        a.put_str(IFLA_IFNAME, "veth1234")
            .put(IFLA_ADDRESS, &[0x0a, 0x58, 0, 0, 0, 1])
            .put_u32(IFLA_LINK, 2)
            .put_i32(IFLA_LINK_NETNSID, 4)
            .put_u32(IFLA_MASTER, 9)
            .nest(IFLA_LINKINFO, |li| {
                li.put_str(IFLA_INFO_KIND, "veth");
            });
        let link = parse_link(&reply(libc::RTM_NEWLINK, &ifinfomsg(12), &a));
        assert_eq!(
            link,
            Some(LinkInfo {
                index: 12,
                name: "veth1234".into(),
                kind: Some("veth".into()),
                link: Some(2),
                link_netnsid: Some(4),
                mac: Some([0x0a, 0x58, 0, 0, 0, 1]),
                master: Some(9),
            })
        );
        let mut plain = AttrBuf::new();
        plain.put_str(IFLA_IFNAME, "lo");
        let lo = parse_link(&reply(libc::RTM_NEWLINK, &ifinfomsg(1), &plain));
        assert_eq!(
            lo.map(|l| (l.name, l.kind, l.mac)),
            Some(("lo".into(), None, None))
        );
        assert_eq!(
            parse_link(&reply(libc::RTM_NEWADDR, &ifinfomsg(1), &plain)),
            None
        );
        assert_eq!(parse_link(&reply(libc::RTM_NEWLINK, &[0; 3], &plain)), None);
    }

    #[test]
    fn addresses_prefer_the_local_address() {
        let header = |family: i32, index: u32| {
            let mut h = vec![family as u8, 24, 0, 253];
            h.extend_from_slice(&index.to_ne_bytes());
            h
        };
        let mut a = AttrBuf::new();
        a.put(IFA_ADDRESS, &[10, 0, 0, 1])
            .put(IFA_LOCAL, &[10, 0, 0, 2]);
        let addr = parse_addr(&reply(libc::RTM_NEWADDR, &header(libc::AF_INET, 5), &a));
        assert_eq!(
            addr,
            Some(AddrInfo {
                index: 5,
                addr: "10.0.0.2".parse().expect("address"),
                prefix: 24,
                scope: 253,
            })
        );
        let mut v6 = AttrBuf::new();
        v6.put(
            IFA_ADDRESS,
            &"fe80::1"
                .parse::<std::net::Ipv6Addr>()
                .expect("v6")
                .octets(),
        );
        let addr = parse_addr(&reply(libc::RTM_NEWADDR, &header(libc::AF_INET6, 5), &v6));
        assert_eq!(addr.map(|a| a.addr.to_string()).as_deref(), Some("fe80::1"));
        // An IPv4 address in an IPv6 message is not taken.
        assert_eq!(
            parse_addr(&reply(libc::RTM_NEWADDR, &header(libc::AF_INET6, 5), &a)),
            None
        );
    }

    #[test]
    fn nsid_requests_carry_the_fd_and_replies_the_id() {
        let mut msg = NsidMessage::default();
        msg.attributes = vec![NsidAttribute::Fd(5)];
        let payload = encode(&msg);
        let fd = Attrs::new(&payload[4..]).find(|a| a.kind == NETNSA_FD);
        assert_eq!(
            fd.map(|a| a.value.to_vec()),
            Some(5u32.to_ne_bytes().to_vec())
        );

        let mut a = AttrBuf::new();
        a.put_i32(NETNSA_NSID, 3);
        let parsed: Option<NsidMessage> =
            decode(&reply(libc::RTM_NEWNSID, &[0; 4], &a), libc::RTM_NEWNSID);
        assert_eq!(
            parsed.map(|m| m.attributes),
            Some(vec![NsidAttribute::Id(3)])
        );
    }
}
