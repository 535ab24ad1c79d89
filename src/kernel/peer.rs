//! Finds the host-side end of a pod's interface. The pod-side link names its peer by ifindex and
//! netns id; both are checked from the host side too, because two pods can both have `eth0` at
//! ifindex 2 and an index alone proves nothing.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::netns::{self, NetnsError};
use crate::netlink::rtnl::{self, LinkInfo};
use crate::netlink::socket::Socket;
use crate::netlink::NetlinkError;

/// Result of a successful lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPeer {
    /// A veth whose peer is the pod interface: host placement is possible.
    Veth { name: String, index: u32 },
    /// The pod interface is not a veth with its peer in the host netns (ipvlan, macvlan, a
    /// veth whose peer lives elsewhere...): only pod placement is possible.
    None { kind: String },
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("interface \"{ifname}\" does not exist in network namespace \"{netns}\"")]
    NoInterface { ifname: String, netns: PathBuf },
    #[error("host-side peer of \"{ifname}\" (ifindex {peer_index}) in \"{netns}\" was not found in the host network namespace")]
    PeerNotFound {
        ifname: String,
        peer_index: u32,
        netns: PathBuf,
    },
    #[error("interface \"{ifname}\" has no Ethernet address")]
    NoMac { ifname: String },
    #[error("looking up interface \"{ifname}\": {source}")]
    Netlink {
        ifname: String,
        #[source]
        source: NetlinkError,
    },
}

/// Maps a netlink error to a `PeerError` naming `ifname`.
pub(super) fn netlink_error_for(ifname: &str) -> impl Fn(NetlinkError) -> PeerError + '_ {
    move |source| PeerError::Netlink {
        ifname: ifname.to_string(),
        source,
    }
}

/// Finds `ifname` over `sock`, a route socket bound in the pod's namespace at `netns`.
pub(super) fn pod_link(
    sock: &mut Socket,
    netns: &Path,
    ifname: &str,
) -> Result<LinkInfo, PeerError> {
    rtnl::link_by_name(sock, ifname)
        .map_err(netlink_error_for(ifname))?
        .ok_or_else(|| PeerError::NoInterface {
            ifname: ifname.to_string(),
            netns: netns.to_path_buf(),
        })
}

fn is_peer(h: &LinkInfo, pod_link: &LinkInfo, pod_nsid: Option<i32>) -> bool {
    h.kind.as_deref() == Some("veth")
        && h.link == Some(pod_link.index)
        && pod_nsid.is_some()
        && h.link_netnsid == pod_nsid
}

/// Looks up the host-side peer of `ifname` in the pod namespace `netns_path`. Must be called
/// from the host namespace; `pod_sock` is a route socket bound in the pod's namespace.
/// `hints` are names from prevResult, tried when the index does not lead to the peer.
pub fn find_host_peer(
    host_sock: &mut Socket,
    pod_sock: &mut Socket,
    netns_path: &Path,
    ifname: &str,
    hints: &[String],
) -> Result<HostPeer, PeerError> {
    let pod_ns: File = netns::open(netns_path)?;
    let host_ns: File = netns::open(Path::new(netns::current_path()))?;

    let pod_link = pod_link(pod_sock, netns_path, ifname)?;
    let host_id_in_pod =
        rtnl::nsid_of(pod_sock, host_ns.as_raw_fd()).map_err(netlink_error_for(ifname))?;
    let kind = pod_link.kind.clone().unwrap_or_else(|| "device".into());
    if kind != "veth" {
        return Ok(HostPeer::None { kind });
    }
    let (Some(peer_index), Some(peer_nsid)) = (pod_link.link, pod_link.link_netnsid) else {
        return Ok(HostPeer::None {
            kind: "veth with its peer in the same namespace".into(),
        });
    };
    if host_id_in_pod != Some(peer_nsid) {
        return Ok(HostPeer::None {
            kind: "veth whose peer is in another namespace".into(),
        });
    }
    let candidate =
        rtnl::link_by_index(host_sock, peer_index).map_err(netlink_error_for(ifname))?;
    let pod_id_in_host =
        rtnl::nsid_of(host_sock, pod_ns.as_raw_fd()).map_err(netlink_error_for(ifname))?;
    if let Some(h) = candidate.filter(|h| is_peer(h, &pod_link, pod_id_in_host)) {
        return Ok(HostPeer::Veth {
            name: h.name,
            index: h.index,
        });
    }
    for name in hints {
        if let Some(h) = rtnl::link_by_name(host_sock, name).map_err(netlink_error_for(ifname))? {
            if is_peer(&h, &pod_link, pod_id_in_host) {
                return Ok(HostPeer::Veth {
                    name: h.name,
                    index: h.index,
                });
            }
        }
    }
    for h in rtnl::list_links(host_sock).map_err(netlink_error_for(ifname))? {
        if is_peer(&h, &pod_link, pod_id_in_host) {
            return Ok(HostPeer::Veth {
                name: h.name,
                index: h.index,
            });
        }
    }
    Err(PeerError::PeerNotFound {
        ifname: ifname.to_string(),
        peer_index,
        netns: netns_path.to_path_buf(),
    })
}
