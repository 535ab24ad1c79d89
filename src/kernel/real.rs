//! The real `Kernel`: nf_tables and rtnetlink over netlink sockets. Sockets for a pod namespace
//! are opened inside it (a netlink socket stays bound to the namespace it was created in).

use super::Transaction;
use std::path::Path;

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
}

impl NetlinkKernel {
    pub fn new() -> Self {
        Self::default()
    }

    fn host_rtnl(&mut self) -> Result<&mut Socket, KernelError> {
        Ok(match &mut self.host_rtnl {
            Some(s) => s,
            slot @ None => slot.insert(
                Socket::open(NETLINK_ROUTE)
                    .map_err(|e| KernelError::netlink("opening rtnetlink", Where::Host, e))?,
            ),
        })
    }

    fn with_nft<T>(
        &mut self,
        at: Where<'_>,
        what: &str,
        f: impl FnOnce(&mut Socket) -> Result<T, NetlinkError>,
    ) -> Result<T, KernelError> {
        let err = |e| KernelError::netlink(what, at, e);
        match at {
            Where::Host => {
                let sock = match &mut self.host_nft {
                    Some(s) => s,
                    slot @ None => slot.insert(Socket::open(NETLINK_NETFILTER).map_err(err)?),
                };
                f(sock).map_err(err)
            }
            Where::Netns(path) => {
                let mut sock = {
                    let _inside = NetnsGuard::enter(path)?;
                    Socket::open(NETLINK_NETFILTER).map_err(err)?
                };
                f(&mut sock).map_err(err)
            }
        }
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
        let result = self.with_nft(at, &what, |s| {
            nft::run_batch(
                s,
                &[Op::DeleteTable {
                    family,
                    name: name.to_string(),
                }],
            )
        });
        match result {
            Ok(_) => Ok(true),
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
        let sock = self.host_rtnl()?;
        Ok(find_host_peer(sock, netns, ifname, hints)?)
    }

    fn pod_interface(&mut self, netns: &Path, ifname: &str) -> Result<PodInterface, KernelError> {
        Ok(read_pod_interface(netns, ifname)?)
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
