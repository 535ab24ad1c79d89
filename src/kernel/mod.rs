//! Everything the plugin and the agent ask of the kernel, behind the `Kernel` trait: install,
//! remove, list and read back nf_tables tables and their rule counters (in the host netns or a
//! pod's), and find a pod's host-side veth.
//! `NetlinkKernel` is the real one; `fake::RecordingKernel` records calls for unit tests.

pub mod fake;
mod identity;
pub mod netns;
mod peer;
mod real;

pub use identity::PodInterface;
pub use peer::{HostPeer, PeerError};
pub use real::NetlinkKernel;

use std::path::Path;

use crate::netlink::nft::{CountedRule, Snapshot, TableInfo};
use crate::netlink::NetlinkError;
use crate::ruleset::{Family, Table};

/// Which network namespace an operation runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where<'a> {
    /// The namespace the plugin runs in (the node's).
    Host,
    /// A pod's namespace, by path.
    Netns(&'a Path),
}

/// A table's address: the namespace it is in, its family and its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableRef<'a> {
    pub at: Where<'a>,
    pub family: Family,
    pub name: &'a str,
}

impl<'a> TableRef<'a> {
    pub fn new(at: Where<'a>, family: Family, name: &'a str) -> Self {
        TableRef { at, family, name }
    }
}

impl Where<'_> {
    pub fn describe(&self) -> String {
        match self {
            Where::Host => "host".to_string(),
            Where::Netns(p) => p.display().to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error("{what} in {place}: {source}")]
    Netlink {
        what: String,
        place: String,
        #[source]
        source: NetlinkError,
    },
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("table {table} already exists and belongs to container {owner} (a collision of hashed table names); nothing was replaced")]
    NameTaken { table: String, owner: String },
}

impl KernelError {
    pub fn netlink(what: impl Into<String>, at: Where<'_>, source: NetlinkError) -> Self {
        KernelError::Netlink {
            what: what.into(),
            place: at.describe(),
            source,
        }
    }
    pub fn is_transient(&self) -> bool {
        matches!(self, KernelError::Netlink { source, .. } if source.is_transient())
    }
    /// The kernel refused to create something because it already exists (EEXIST).
    pub fn already_exists(&self) -> bool {
        matches!(self, KernelError::Netlink { source, .. } if source.errno() == Some(libc::EEXIST))
    }
    pub fn netns_missing(&self) -> bool {
        match self {
            KernelError::Netns(e) => e.is_missing(),
            KernelError::Peer(PeerError::Netns(e)) => e.is_missing(),
            _ => false,
        }
    }
}

/// One nf_tables transaction of [`Kernel::install`]: at `at`, delete each table of `family`
/// named in `replace`, then create `table` if given.
#[derive(Debug, Clone, Copy)]
pub struct Transaction<'a> {
    pub at: Where<'a>,
    pub family: Family,
    pub replace: &'a [String],
    pub table: Option<&'a Table>,
}

impl<'a> Transaction<'a> {
    pub fn new(
        at: Where<'a>,
        family: Family,
        replace: &'a [String],
        table: Option<&'a Table>,
    ) -> Transaction<'a> {
        Transaction {
            at,
            family,
            replace,
            table,
        }
    }

    /// Creates `table` at `at`, replacing nothing.
    pub fn create(at: Where<'a>, table: &'a Table) -> Transaction<'a> {
        Transaction::new(at, table.family, &[], Some(table))
    }
}

/// The kernel operations the plugin needs.
pub trait Kernel {
    /// In one transaction: delete each table named in `replace` (same family), then create
    /// `table` if given. Returns the number of messages in the batch.
    fn install(&mut self, tx: Transaction<'_>) -> Result<usize, KernelError>;
    /// Deletes a table; `Ok(false)` if it did not exist.
    fn remove(&mut self, t: TableRef<'_>) -> Result<bool, KernelError>;
    fn tables(&mut self, at: Where<'_>, family: Family) -> Result<Vec<TableInfo>, KernelError>;
    /// One table's name and comment, by a lookup (not a listing). `None` if it does not exist.
    fn table(&mut self, t: TableRef<'_>) -> Result<Option<TableInfo>, KernelError>;
    fn read(&mut self, t: TableRef<'_>) -> Result<Option<Snapshot>, KernelError>;
    /// The rules of table `name` with the values of their counters. `None` if the table does
    /// not exist.
    fn counted_rules(&mut self, t: TableRef<'_>) -> Result<Option<Vec<CountedRule>>, KernelError>;
    /// The host-side peer of `ifname` in the pod netns at `netns`. `hints` are host interface
    /// names from prevResult, tried (and verified) when the peer index does not lead to it.
    fn host_peer(
        &mut self,
        netns: &Path,
        ifname: &str,
        hints: &[String],
    ) -> Result<HostPeer, KernelError>;
    /// Whether the host-side interface found by `host_peer` (name and ifindex) is still there.
    fn host_link_is(
        &mut self,
        netns: &Path,
        ifname: &str,
        device: &str,
        index: u32,
    ) -> Result<bool, KernelError>;
    /// Whether an interface named `name` exists in the host namespace.
    fn host_link_exists(&mut self, name: &str) -> Result<bool, KernelError>;
    /// The pod's interface `ifname` in the pod netns at `netns`: MAC and addresses.
    fn pod_interface(&mut self, netns: &Path, ifname: &str) -> Result<PodInterface, KernelError>;
    /// The MAC of the pod's gateway: the host interface holding one of `gateways`, if it is
    /// the host-side veth `device` or its bridge.
    fn gateway_mac(
        &mut self,
        device: &str,
        gateways: &[std::net::IpAddr],
    ) -> Result<Option<crate::ruleset::Mac>, KernelError>;
    /// Whether netdev egress hooks are available (kernel >= 5.16).
    fn has_netdev_egress(&self) -> bool;
}

/// Parses "6.18.44-foo" into (6, 18).
/// The index of the interface `name` in the calling thread's network namespace (0 when
/// absent), for matching a logged packet's input interface to a pod's host device.
pub fn host_ifindex(name: &str) -> u32 {
    let Ok(c) = std::ffi::CString::new(name) else {
        return 0;
    };
    // SAFETY: c is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.4.0"), Some((5, 4)));
        assert_eq!(parse_kernel_version("garbage"), None);
    }
}
