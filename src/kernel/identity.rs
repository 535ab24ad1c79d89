//! Reads what a pod is on its interface (MAC, addresses) inside its netns, and which MAC its
//! gateway has on the node. Read-only; the plugin checks prevResult against it.

use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

use super::peer::{netlink_error_for, pod_link, PeerError};
use crate::netlink::rtnl;
use crate::netlink::socket::Socket;
use crate::ruleset::{IfAddr, Mac};

const SCOPE_LINK: u8 = 253;

/// The pod's interface as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    pub mac: Mac,
    /// Addresses of global scope, with their prefix lengths.
    pub addrs: Vec<IfAddr>,
    /// IPv6 link-local addresses.
    pub link_local: Vec<Ipv6Addr>,
}

/// Reads `ifname` in the pod namespace at `netns` over `sock`, a route socket bound there.
pub fn read_pod_interface(
    sock: &mut Socket,
    netns: &Path,
    ifname: &str,
) -> Result<PodInterface, PeerError> {
    let link = pod_link(sock, netns, ifname)?;
    let mac = link.mac.map(Mac).ok_or_else(|| PeerError::NoMac {
        ifname: ifname.to_string(),
    })?;
    let mut addrs = Vec::new();
    let mut link_local = Vec::new();
    for a in rtnl::addrs_of(sock, link.index).map_err(netlink_error_for(ifname))? {
        match a.addr {
            IpAddr::V6(v6) if a.scope == SCOPE_LINK => link_local.push(v6),
            addr if a.scope == 0 => addrs.push(IfAddr {
                addr,
                prefix: a.prefix,
            }),
            _ => {}
        }
    }
    Ok(PodInterface {
        mac,
        addrs,
        link_local,
    })
}

/// The MAC of the host interface holding one of `gateways`, when that interface is `device`
/// itself (a routed veth: ptp) or the bridge `device` is enslaved to. `None` otherwise: the
/// gateway is not on this node.
pub fn find_gateway_mac(
    host: &mut Socket,
    device: &str,
    gateways: &[IpAddr],
) -> Result<Option<Mac>, PeerError> {
    if gateways.is_empty() {
        return Ok(None);
    }
    let Some(veth) = rtnl::link_by_name(host, device).map_err(netlink_error_for(device))? else {
        return Ok(None);
    };
    let mut holder = None;
    for index in std::iter::once(veth.index).chain(veth.master) {
        let addrs = rtnl::addrs_of(host, index).map_err(netlink_error_for(device))?;
        if addrs.iter().any(|a| gateways.contains(&a.addr)) {
            holder = Some(index);
            break;
        }
    }
    let Some(holder) = holder else {
        return Ok(None);
    };
    let link = if holder == veth.index {
        Some(veth)
    } else {
        rtnl::link_by_index(host, holder).map_err(netlink_error_for(device))?
    };
    Ok(link.and_then(|l| l.mac).map(Mac))
}
