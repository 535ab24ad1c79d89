//! A recording `Kernel` for unit tests: keeps installed tables in memory, records every call,
//! and can be told to fail. Behaves like the kernel where the plugin relies on it (a failed
//! transaction changes nothing; creating an existing table fails).

use super::Transaction;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{HostPeer, Kernel, KernelError, PodInterface, TableRef, Where};
use crate::netlink::nft::{expected_snapshot, CountedRule, Counts, Expr, Snapshot, TableInfo};
use crate::netlink::NetlinkError;
use crate::ruleset::{render, Family, Mac};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    at: String,
    family: &'static str,
    name: String,
}

#[derive(Default)]
pub struct RecordingKernel {
    tables: BTreeMap<Key, (Snapshot, String)>,
    /// Every call, in order, as text.
    pub calls: Vec<String>,
    /// Peer answers by netns path; missing means the interface does not exist.
    pub peers: BTreeMap<PathBuf, HostPeer>,
    pub netdev_egress: bool,
    /// Pod interfaces by netns path; missing means MAC `0a:58:00:00:00:02` and no address.
    pub interfaces: BTreeMap<PathBuf, PodInterface>,
    /// The gateway MAC `gateway_mac` answers.
    pub gateway: Option<Mac>,
    /// Host interfaces `host_link_exists` finds, besides the veths in `peers`.
    pub host_links: std::collections::BTreeSet<String>,
    /// When set, the next install fails with this errno.
    pub fail_install: Option<i32>,
    /// Counter values by table and chain: every counter of that chain reads them.
    counters: BTreeMap<(Key, String), Counts>,
}

fn key(at: Where<'_>, family: Family, name: &str) -> Key {
    Key {
        at: at.describe(),
        family: family.name(),
        name: name.to_string(),
    }
}

impl RecordingKernel {
    pub fn new() -> Self {
        RecordingKernel {
            netdev_egress: true,
            ..Default::default()
        }
    }
    /// The rendered text of an installed table.
    pub fn rendered(&self, at: Where<'_>, family: Family, name: &str) -> Option<&str> {
        self.tables
            .get(&key(at, family, name))
            .map(|(_, r)| r.as_str())
    }
    pub fn table_names(&self) -> Vec<String> {
        self.tables
            .keys()
            .map(|k| format!("{} {} {}", k.at, k.family, k.name))
            .collect()
    }
    /// Sets what the counters in chain `chain` of a table read (zero until set).
    pub fn set_counters(
        &mut self,
        at: Where<'_>,
        family: Family,
        table: &str,
        chain: &str,
        counts: Counts,
    ) {
        self.counters
            .insert((key(at, family, table), chain.to_string()), counts);
    }
    /// Mutates an installed table's snapshot (to simulate drift).
    pub fn tamper(
        &mut self,
        at: Where<'_>,
        family: Family,
        name: &str,
        f: impl FnOnce(&mut Snapshot),
    ) {
        if let Some((s, _)) = self.tables.get_mut(&key(at, family, name)) {
            f(s);
        }
    }
}

impl Kernel for RecordingKernel {
    fn install(&mut self, tx: Transaction<'_>) -> Result<usize, KernelError> {
        let (at, family, replace, table) = (tx.at, tx.family, tx.replace, tx.table);
        self.calls.push(format!(
            "install {} {} replace=[{}] table={}",
            at.describe(),
            family.name(),
            replace.join(","),
            table.map(|t| t.name.as_str()).unwrap_or("-")
        ));
        if let Some(errno) = self.fail_install.take() {
            return Err(KernelError::netlink(
                "install",
                at,
                NetlinkError::kernel("fake", errno, None),
            ));
        }
        let mut next = self.tables.clone();
        for name in replace {
            if next.remove(&key(at, family, name)).is_none() {
                return Err(KernelError::netlink(
                    "install",
                    at,
                    NetlinkError::kernel("fake", libc::ENOENT, None),
                ));
            }
        }
        if let Some(t) = table {
            let k = key(at, family, &t.name);
            if next.contains_key(&k) {
                return Err(KernelError::netlink(
                    "install",
                    at,
                    NetlinkError::kernel("fake", libc::EEXIST, None),
                ));
            }
            next.insert(k, (expected_snapshot(t), render(t)));
        }
        self.tables = next;
        Ok(replace.len() + table.map(|_| 1).unwrap_or(0))
    }

    fn remove(&mut self, t: TableRef<'_>) -> Result<bool, KernelError> {
        let TableRef { at, family, name } = t;
        self.calls
            .push(format!("remove {} {} {name}", at.describe(), family.name()));
        Ok(self.tables.remove(&key(at, family, name)).is_some())
    }

    fn tables(&mut self, at: Where<'_>, family: Family) -> Result<Vec<TableInfo>, KernelError> {
        self.calls
            .push(format!("list {} {}", at.describe(), family.name()));
        let a = at.describe();
        Ok(self
            .tables
            .iter()
            .filter(|(k, _)| k.at == a && k.family == family.name())
            .map(|(k, (s, _))| TableInfo {
                name: k.name.clone(),
                comment: s.comment.clone(),
            })
            .collect())
    }

    fn table(&mut self, t: TableRef<'_>) -> Result<Option<TableInfo>, KernelError> {
        let TableRef { at, family, name } = t;
        self.calls
            .push(format!("get {} {} {name}", at.describe(), family.name()));
        Ok(self
            .tables
            .get(&key(at, family, name))
            .map(|(s, _)| TableInfo {
                name: name.to_string(),
                comment: s.comment.clone(),
            }))
    }

    fn read(&mut self, t: TableRef<'_>) -> Result<Option<Snapshot>, KernelError> {
        let TableRef { at, family, name } = t;
        Ok(self
            .tables
            .get(&key(at, family, name))
            .map(|(s, _)| s.clone()))
    }

    fn counted_rules(&mut self, t: TableRef<'_>) -> Result<Option<Vec<CountedRule>>, KernelError> {
        let TableRef { at, family, name } = t;
        self.calls.push(format!(
            "counters {} {} {name}",
            at.describe(),
            family.name()
        ));
        let k = key(at, family, name);
        let Some((snap, _)) = self.tables.get(&k) else {
            return Ok(None);
        };
        let mut rules = Vec::new();
        for chain in &snap.chains {
            let counts = self
                .counters
                .get(&(k.clone(), chain.name.clone()))
                .copied()
                .unwrap_or_default();
            for exprs in &chain.rules {
                rules.push(CountedRule {
                    chain: chain.name.clone(),
                    counter: exprs.contains(&Expr::Counter).then_some(counts),
                    exprs: exprs.clone(),
                });
            }
        }
        Ok(Some(rules))
    }

    fn host_peer(
        &mut self,
        netns: &Path,
        ifname: &str,
        _hints: &[String],
    ) -> Result<HostPeer, KernelError> {
        self.calls
            .push(format!("peer {} {ifname}", netns.display()));
        self.peers.get(netns).cloned().ok_or_else(|| {
            KernelError::Peer(super::PeerError::NoInterface {
                ifname: ifname.to_string(),
                netns: netns.to_path_buf(),
            })
        })
    }

    fn host_link_is(
        &mut self,
        netns: &Path,
        ifname: &str,
        device: &str,
        index: u32,
    ) -> Result<bool, KernelError> {
        Ok(matches!(
            self.host_peer(netns, ifname, &[])?,
            HostPeer::Veth { name, index: i } if name == device && i == index
        ))
    }
    fn host_link_exists(&mut self, name: &str) -> Result<bool, KernelError> {
        self.calls.push(format!("host_link_exists {name}"));
        let veth = self
            .peers
            .values()
            .any(|p| matches!(p, HostPeer::Veth { name: n, .. } if n == name));
        Ok(veth || self.host_links.contains(name))
    }
    fn pod_interface(&mut self, netns: &Path, ifname: &str) -> Result<PodInterface, KernelError> {
        self.calls
            .push(format!("interface {} {ifname}", netns.display()));
        Ok(self
            .interfaces
            .get(netns)
            .cloned()
            .unwrap_or_else(|| PodInterface {
                mac: Mac([0x0a, 0x58, 0, 0, 0, 2]),
                addrs: Vec::new(),
                link_local: Vec::new(),
            }))
    }

    fn gateway_mac(
        &mut self,
        device: &str,
        _gateways: &[std::net::IpAddr],
    ) -> Result<Option<Mac>, KernelError> {
        self.calls.push(format!("gateway {device}"));
        Ok(self.gateway)
    }

    fn has_netdev_egress(&self) -> bool {
        self.netdev_egress
    }
}
