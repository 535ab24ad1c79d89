//! A `Kernel` wrapper that injects the failures a real node produces at the worst moment:
//! `ENOBUFS` before the transaction reaches the kernel or after it committed (the ack lost),
//! the host-side veth vanishing between the peer lookup and the install, and a device the kernel
//! refuses to hook. Every other method is the inner kernel's.
#![allow(dead_code, clippy::unwrap_used)]

use egress_guard::kernel::Transaction;
use std::path::Path;

use egress_guard::kernel::{HostPeer, Kernel, KernelError, TableRef, Where};
use egress_guard::netlink::nft::{CountedRule, Snapshot, TableInfo};
use egress_guard::netlink::NetlinkError;
use egress_guard::ruleset::Family;

/// Called with the host-side device name after a successful peer lookup.
pub type PeerHook = Box<dyn FnMut(&str)>;

#[derive(Default)]
pub struct Faults {
    /// The next install fails with this errno without reaching the kernel.
    pub fail_before: Option<i32>,
    /// The next install reaches the kernel and commits, then reports this errno.
    pub fail_after: Option<i32>,
    /// Replace the peer the lookup finds with this device name.
    pub peer_override: Option<String>,
    /// Run after a successful peer lookup (for example: delete the veth).
    pub after_peer: Option<PeerHook>,
}

pub struct Faulty<K: Kernel> {
    pub inner: K,
    pub faults: Faults,
}

fn enobufs(at: Where<'_>, errno: i32) -> KernelError {
    KernelError::netlink(
        "injected",
        at,
        NetlinkError::io("recv", std::io::Error::from_raw_os_error(errno)),
    )
}

impl<K: Kernel> Kernel for Faulty<K> {
    fn install(&mut self, tx: Transaction<'_>) -> Result<usize, KernelError> {
        if let Some(errno) = self.faults.fail_before.take() {
            return Err(enobufs(tx.at, errno));
        }
        let n = self.inner.install(tx)?;
        if let Some(errno) = self.faults.fail_after.take() {
            return Err(enobufs(tx.at, errno));
        }
        Ok(n)
    }
    fn remove(&mut self, t: TableRef<'_>) -> Result<bool, KernelError> {
        self.inner.remove(t)
    }
    fn tables(&mut self, at: Where<'_>, family: Family) -> Result<Vec<TableInfo>, KernelError> {
        self.inner.tables(at, family)
    }
    fn table(&mut self, t: TableRef<'_>) -> Result<Option<TableInfo>, KernelError> {
        self.inner.table(t)
    }
    fn read(&mut self, t: TableRef<'_>) -> Result<Option<Snapshot>, KernelError> {
        self.inner.read(t)
    }
    fn host_link_exists(&mut self, name: &str) -> Result<bool, KernelError> {
        self.inner.host_link_exists(name)
    }
    fn counted_rules(&mut self, t: TableRef<'_>) -> Result<Option<Vec<CountedRule>>, KernelError> {
        self.inner.counted_rules(t)
    }
    fn pod_interface(
        &mut self,
        netns: &Path,
        ifname: &str,
    ) -> Result<egress_guard::kernel::PodInterface, KernelError> {
        self.inner.pod_interface(netns, ifname)
    }

    fn gateway_mac(
        &mut self,
        device: &str,
        gateways: &[std::net::IpAddr],
    ) -> Result<Option<egress_guard::ruleset::Mac>, KernelError> {
        self.inner.gateway_mac(device, gateways)
    }

    fn host_peer(
        &mut self,
        netns: &Path,
        ifname: &str,
        hints: &[String],
    ) -> Result<HostPeer, KernelError> {
        let mut peer = self.inner.host_peer(netns, ifname, hints)?;
        if let (Some(name), HostPeer::Veth { index, .. }) = (&self.faults.peer_override, &peer) {
            peer = HostPeer::Veth {
                name: name.clone(),
                index: *index,
            };
        }
        if let (Some(hook), HostPeer::Veth { name, .. }) = (&mut self.faults.after_peer, &peer) {
            hook(name);
        }
        Ok(peer)
    }
    /// The inner kernel's check, except for the overridden peer name, which the inner kernel
    /// does not know: that one is compared by the ifindex of the inner kernel's peer.
    fn host_link_is(
        &mut self,
        netns: &Path,
        ifname: &str,
        device: &str,
        index: u32,
    ) -> Result<bool, KernelError> {
        if self.faults.peer_override.as_deref() == Some(device) {
            return Ok(matches!(
                self.inner.host_peer(netns, ifname, &[])?,
                HostPeer::Veth { index: i, .. } if i == index
            ));
        }
        self.inner.host_link_is(netns, ifname, device, index)
    }
    fn has_netdev_egress(&self) -> bool {
        self.inner.has_netdev_egress()
    }
}
