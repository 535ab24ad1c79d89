//! The real `Kernel`: nf_tables and rtnetlink over netlink sockets. Sockets for a pod namespace
//! are opened inside it (a netlink socket stays bound to the namespace it was created in).

use super::Transaction;
use std::path::{Path, PathBuf};

use super::netns::NetnsGuard;
use std::net::IpAddr;

use super::identity::{find_gateway_mac, read_pod_interface};
use super::peer::find_host_peer;
use super::{HostPeer, Kernel, KernelError, PodInterface, TableRef, Where};
use crate::netlink::nft::{self, CountedRule, Op, Snapshot, TableInfo};
use crate::netlink::socket::{Socket, NETLINK_NETFILTER, NETLINK_ROUTE};
use crate::netlink::NetlinkError;
use crate::ruleset::{Family, Mac};

#[derive(Default)]
pub struct NetlinkKernel {
    host_nft: Option<Socket>,
    host_rtnl: Option<Socket>,
    /// Sockets bound in the last pod namespace used. Kept between requests only by
    /// [`NetlinkKernel::for_invocation`] (entering a namespace and opening a socket for every
    /// request cost a CNI verb more than its requests); a long-lived agent must not hold them,
    /// or a deleted pod's namespace would stay alive until the next pod is looked at.
    pod: Option<PodSockets>,
    keep_pod_sockets: bool,
}

/// Sockets opened inside the pod namespace at `path`.
struct PodSockets {
    path: PathBuf,
    nft: Option<Socket>,
    rtnl: Option<Socket>,
}

/// The cached sockets of the pod namespace at `path` (emptied when another one is asked).
fn pod_sockets<'s>(slot: &'s mut Option<PodSockets>, path: &Path) -> &'s mut PodSockets {
    if slot.as_ref().is_some_and(|p| p.path != path) {
        *slot = None;
    }
    slot.get_or_insert_with(|| PodSockets {
        path: path.to_path_buf(),
        nft: None,
        rtnl: None,
    })
}

/// The socket in `slot`, opened once: a socket of `protocol`, created inside the namespace
/// `at` names (a netlink socket stays bound to the namespace it was created in).
fn opened<'s>(
    slot: &'s mut Option<Socket>,
    at: Where<'_>,
    protocol: i32,
    what: &str,
) -> Result<&'s mut Socket, KernelError> {
    Ok(match slot {
        Some(s) => s,
        slot @ None => {
            let _inside = match at {
                Where::Host => None,
                Where::Netns(path) => Some(NetnsGuard::enter(path)?),
            };
            slot.insert(Socket::open(protocol).map_err(|e| KernelError::netlink(what, at, e))?)
        }
    })
}

const OPEN_RTNL: &str = "opening rtnetlink";

/// A route socket bound in the pod namespace at `path`, from `pod`'s sockets.
fn pod_rtnl<'s>(
    pod: &'s mut Option<PodSockets>,
    path: &Path,
) -> Result<&'s mut Socket, KernelError> {
    let slot = &mut pod_sockets(pod, path).rtnl;
    opened(slot, Where::Netns(path), NETLINK_ROUTE, OPEN_RTNL)
}

impl NetlinkKernel {
    pub fn new() -> Self {
        Self::default()
    }

    /// For one short-lived CNI invocation: sockets opened in the pod's namespace are reused
    /// until the process exits.
    pub fn for_invocation() -> Self {
        NetlinkKernel {
            keep_pod_sockets: true,
            ..Self::default()
        }
    }

    /// Closes the pod namespace's sockets unless this kernel keeps them.
    fn done_with_pod(&mut self) {
        if !self.keep_pod_sockets {
            self.pod = None;
        }
    }

    fn host_rtnl(&mut self) -> Result<&mut Socket, KernelError> {
        opened(&mut self.host_rtnl, Where::Host, NETLINK_ROUTE, OPEN_RTNL)
    }

    fn with_nft<T>(
        &mut self,
        at: Where<'_>,
        what: &str,
        f: impl FnOnce(&mut Socket) -> Result<T, NetlinkError>,
    ) -> Result<T, KernelError> {
        let slot = match at {
            Where::Host => &mut self.host_nft,
            Where::Netns(path) => &mut pod_sockets(&mut self.pod, path).nft,
        };
        let sock = opened(slot, at, NETLINK_NETFILTER, what)?;
        let result = f(sock).map_err(|e| KernelError::netlink(what, at, e));
        self.done_with_pod();
        result
    }
}

impl Kernel for NetlinkKernel {
    fn install(&mut self, tx: Transaction<'_>) -> Result<usize, KernelError> {
        let Transaction {
            at,
            family,
            replace,
            table,
        } = tx;
        let mut ops: Vec<Op<'_>> = replace
            .iter()
            .map(|name| Op::DeleteTable {
                family,
                name: name.clone(),
            })
            .collect();
        if let Some(t) = table {
            ops.push(Op::CreateTable(t));
        }
        if ops.is_empty() {
            return Ok(0);
        }
        let what = match table {
            Some(t) => format!("installing table {} {}", t.family.name(), t.name),
            None => format!("removing {} table(s)", replace.len()),
        };
        self.with_nft(at, &what, |s| nft::run_batch(s, &ops))
    }

    fn remove(&mut self, t: TableRef<'_>) -> Result<bool, KernelError> {
        let TableRef { at, family, name } = t;
        let what = format!("removing table {} {name}", family.name());
        // Asked first: a transaction the kernel refuses (ENOENT) is aborted, and the abort
        // waits for an RCU grace period, 10-15 ms here, which DEL paid for every table that
        // was not there (the pod's own tables, under host placement).
        let result = self.with_nft(at, &what, |s| {
            if nft::get_table(s, family, name)?.is_none() {
                return Ok(None);
            }
            nft::run_batch(
                s,
                &[Op::DeleteTable {
                    family,
                    name: name.to_string(),
                }],
            )
            .map(Some)
        });
        match result {
            Ok(None) => Ok(false),
            Ok(Some(_)) => Ok(true),
            Err(KernelError::Netlink { source, .. }) if source.errno() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn tables(&mut self, at: Where<'_>, family: Family) -> Result<Vec<TableInfo>, KernelError> {
        self.with_nft(at, "listing tables", |s| nft::list_tables(s, family))
    }

    fn table(&mut self, t: TableRef<'_>) -> Result<Option<TableInfo>, KernelError> {
        let TableRef { at, family, name } = t;
        let what = format!("looking up table {} {name}", family.name());
        self.with_nft(at, &what, |s| nft::get_table(s, family, name))
    }

    fn read(&mut self, t: TableRef<'_>) -> Result<Option<Snapshot>, KernelError> {
        let TableRef { at, family, name } = t;
        let what = format!("reading table {} {name}", family.name());
        self.with_nft(at, &what, |s| nft::read_table(s, family, name))
    }

    fn counted_rules(&mut self, t: TableRef<'_>) -> Result<Option<Vec<CountedRule>>, KernelError> {
        let TableRef { at, family, name } = t;
        let what = format!("reading the counters of table {name}");
        self.with_nft(at, &what, |s| nft::rule_counters(s, family, name))
    }

    fn host_peer(
        &mut self,
        netns: &Path,
        ifname: &str,
        hints: &[String],
    ) -> Result<HostPeer, KernelError> {
        let host = opened(&mut self.host_rtnl, Where::Host, NETLINK_ROUTE, OPEN_RTNL)?;
        let pod = pod_rtnl(&mut self.pod, netns)?;
        let peer = find_host_peer(host, pod, netns, ifname, hints);
        self.done_with_pod();
        Ok(peer?)
    }

    fn pod_interface(&mut self, netns: &Path, ifname: &str) -> Result<PodInterface, KernelError> {
        let sock = pod_rtnl(&mut self.pod, netns)?;
        let found = read_pod_interface(sock, netns, ifname);
        self.done_with_pod();
        Ok(found?)
    }

    fn gateway_mac(
        &mut self,
        device: &str,
        gateways: &[IpAddr],
    ) -> Result<Option<Mac>, KernelError> {
        let sock = self.host_rtnl()?;
        Ok(find_gateway_mac(sock, device, gateways)?)
    }

    fn host_link_is(
        &mut self,
        _netns: &Path,
        _ifname: &str,
        device: &str,
        index: u32,
    ) -> Result<bool, KernelError> {
        // One request in the host netns: the ifindex still names the same link.
        let sock = self.host_rtnl()?;
        let link = crate::netlink::rtnl::link_by_index(sock, index)
            .map_err(|e| KernelError::netlink("looking up the host interface", Where::Host, e))?;
        Ok(link.is_some_and(|l| l.name == device))
    }

    fn host_link_exists(&mut self, name: &str) -> Result<bool, KernelError> {
        let sock = self.host_rtnl()?;
        let link = crate::netlink::rtnl::link_by_name(sock, name)
            .map_err(|e| KernelError::netlink("looking up a host interface", Where::Host, e))?;
        Ok(link.is_some())
    }

    fn has_netdev_egress(&self) -> bool {
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|r| super::parse_kernel_version(r.trim()))
            .map(|v| v >= (5, 16))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entering a namespace needs CAP_SYS_ADMIN even for our own; these tests use the test
    /// process's namespace as the "pod" namespace and its loopback as the interface.
    fn as_root(test: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("SKIP {test}: needs root (setns)");
        }
        root
    }

    const OWN_NS: &str = "/proc/self/ns/net";

    #[test]
    fn a_long_lived_kernel_keeps_no_socket_in_a_pod_namespace() {
        if !as_root("a_long_lived_kernel_keeps_no_socket_in_a_pod_namespace") {
            return;
        }
        let mut k = NetlinkKernel::new();
        let lo = k.pod_interface(Path::new(OWN_NS), "lo");
        assert!(lo.is_ok(), "{lo:?}");
        assert!(k.pod.is_none(), "the agent's kernel held a pod socket");
        let tables = k.tables(Where::Netns(Path::new(OWN_NS)), Family::Inet);
        assert!(tables.is_ok(), "{tables:?}");
        assert!(k.pod.is_none(), "the agent's kernel held a pod nft socket");
    }

    #[test]
    fn an_invocation_reuses_its_pod_namespace_sockets() {
        if !as_root("an_invocation_reuses_its_pod_namespace_sockets") {
            return;
        }
        let mut k = NetlinkKernel::for_invocation();
        let first = k.pod_interface(Path::new(OWN_NS), "lo");
        assert!(first.is_ok(), "{first:?}");
        let fd = |k: &NetlinkKernel| {
            k.pod.as_ref().and_then(|p| p.rtnl.as_ref()).map(|s| {
                // The socket's inode: sockfs numbers every new socket afresh, so a
                // reopened socket differs even when it gets the same descriptor.
                let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
                // SAFETY: st is valid for writes of a stat; the fd is open.
                let rc = unsafe { libc::fstat(s.raw_fd(), st.as_mut_ptr()) };
                assert_eq!(rc, 0);
                // SAFETY: fstat succeeded, so it filled st.
                unsafe { st.assume_init() }.st_ino
            })
        };
        let opened = fd(&k);
        assert!(opened.is_some());
        let again = k.pod_interface(Path::new(OWN_NS), "lo");
        assert_eq!(first.ok(), again.ok());
        assert_eq!(fd(&k), opened, "a second socket was opened");
        // Another namespace path replaces the cached sockets.
        let other = k.pod_interface(Path::new("/proc/thread-self/ns/net"), "lo");
        assert!(other.is_ok(), "{other:?}");
        assert_eq!(
            k.pod.as_ref().map(|p| p.path.clone()),
            Some(PathBuf::from("/proc/thread-self/ns/net"))
        );
    }
}
