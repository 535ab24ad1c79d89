//! What the node agent changes between CNI calls: a drifted table reinstalled from its record,
//! the table and record of a pod that went away without DEL collected, and host tables no
//! record claims whose device is gone (orphans) removed. Only tables named `egress_guard_*`
//! are ever touched.

use crate::kernel::Transaction;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::SystemTime;

use super::devindex::DeviceIndex;
use super::record::{self, PodRecord};
use super::{Guard, GuardError};
use crate::kernel::{Kernel, TableRef, Where};
use crate::netlink::nft::TableInfo;
use crate::ruleset::{comment_devices, Family, Table, TABLE_PREFIX};

/// The pod's network namespace is known to be gone: its path is missing while the directory
/// holding it is visible (a missing mount proves nothing), or it was a dead process's.
fn netns_gone(netns: &str) -> bool {
    let p = Path::new(netns);
    if netns.is_empty() || p.exists() {
        return false;
    }
    netns.starts_with("/proc/") || p.parent().map(Path::exists).unwrap_or(false)
}

/// How a reinstall ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reinstalled {
    /// The table is back.
    Done,
    /// DEL removed the record meanwhile: what was installed was taken back.
    Withdrawn,
}

/// A host table of ours that no record claims and whose device is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub table: TableInfo,
    pub device: Option<String>,
}

/// The host tables of ours at one listing, and which of them are orphans.
#[derive(Debug, Clone)]
pub struct HostListing {
    pub orphans: Vec<Orphan>,
    /// Every table of ours listed, orphan or not.
    pub ours: BTreeSet<String>,
    pub listed_at: SystemTime,
}

impl<K: Kernel> Guard<'_, K> {
    /// Whether the pod behind `rec` is gone (sandbox deleted without DEL). Under host
    /// placement its host-side device decides (a failed lookup counts as present): the veth
    /// goes with the pod's namespace, and the namespace's path may simply not be visible here
    /// (an agent in a container without the runtime's netns directory, a `/proc/PID/ns/net`
    /// path of another PID namespace), which must not cost a live pod its table. Otherwise the
    /// namespace's path decides.
    pub fn pod_gone(&mut self, rec: &PodRecord) -> bool {
        match (rec.is_host(), rec.device.as_deref()) {
            (true, Some(device)) => matches!(self.kernel.host_link_exists(device), Ok(false)),
            _ => netns_gone(&rec.netns),
        }
    }

    /// Whether `rec`'s state file is still there (DEL removes it after the table).
    pub fn still_recorded(&self, rec: &PodRecord) -> bool {
        matches!(
            record::load_file(&record::state_path(self.state_dir, rec.key())),
            Ok(Some(_))
        )
    }

    /// Removes a gone pod's host table and its record; returns what was removed.
    pub fn collect_gone(&mut self, rec: &PodRecord) -> Result<Vec<String>, GuardError> {
        let mut removed = Vec::new();
        if rec.is_host() {
            let gone = self
                .kernel
                .remove(TableRef::new(Where::Host, Family::Netdev, &rec.table))
                .map_err(|e| self.kernel_err(format!("removing table {}", rec.table), e))?;
            if gone {
                removed.push(format!("removed table netdev {}", rec.table));
            }
        }
        record::remove(self.state_dir, rec.key()).map_err(|e| GuardError::State {
            subject: self.subject.clone(),
            reason: e.to_string(),
        })?;
        removed.push("removed state file".to_string());
        Ok(removed)
    }

    /// Installs `table` (`rec`'s policy compiled again) in place of what is there, recording a
    /// host table in the device index first as ADD does. If DEL ran meanwhile the table is
    /// taken back.
    pub fn reinstall(
        &mut self,
        rec: &PodRecord,
        table: &Table,
        present: bool,
    ) -> Result<Reinstalled, GuardError> {
        let at = rec.place();
        let replace: Vec<String> = if present {
            vec![table.name.clone()]
        } else {
            Vec::new()
        };
        log::debug!(
            "{}: reinstalling table {} {} in {} ({} rules)",
            self.subject,
            table.family.name(),
            table.name,
            at.describe(),
            table.rule_count()
        );
        if let (true, Some(dev)) = (rec.is_host(), rec.device.as_deref()) {
            self.record_in_index(dev, &table.name)?;
        }
        self.kernel
            .install(Transaction::new(at, table.family, &replace, Some(table)))
            .map_err(|e| self.kernel_err("reinstalling the egress policy", e))?;
        if self.still_recorded(rec) {
            return Ok(Reinstalled::Done);
        }
        if let Err(e) = self
            .kernel
            .remove(TableRef::new(at, table.family, &table.name))
        {
            log::warn!(
                "{}: taking back table {} after DEL: {e}",
                self.subject,
                table.name
            );
        }
        Ok(Reinstalled::Withdrawn)
    }

    /// Lists our host tables and picks those that are not in `recorded` and whose device is
    /// gone.
    pub fn list_orphans(&mut self, recorded: &BTreeSet<&str>) -> Result<HostListing, GuardError> {
        let listed_at = SystemTime::now();
        let tables = self
            .kernel
            .tables(Where::Host, Family::Netdev)
            .map_err(|e| self.kernel_err("listing host tables", e))?;
        let mut listing = HostListing {
            orphans: Vec::new(),
            ours: BTreeSet::new(),
            listed_at,
        };
        for t in tables
            .into_iter()
            .filter(|t| t.name.starts_with(TABLE_PREFIX))
        {
            listing.ours.insert(t.name.clone());
            if recorded.contains(t.name.as_str()) {
                continue;
            }
            let device = comment_devices(&t.comment).next().map(str::to_string);
            let present = match device.as_deref() {
                // A failed lookup counts as present: the table is left alone.
                Some(d) => !matches!(self.kernel.host_link_exists(d), Ok(false)),
                None => false,
            };
            if !present {
                listing.orphans.push(Orphan { table: t, device });
            }
        }
        Ok(listing)
    }

    /// Removes an orphan's table.
    pub fn remove_orphan(&mut self, orphan: &Orphan) -> Result<(), GuardError> {
        let name = &orphan.table.name;
        self.kernel
            .remove(TableRef::new(Where::Host, Family::Netdev, name))
            .map_err(|e| self.kernel_err(format!("removing table {name}"), e))?;
        Ok(())
    }

    /// Prunes device index entries of tables not in `live` and older than the listing.
    pub fn prune_index(&self, live: &BTreeSet<String>, listed_at: SystemTime) {
        if let Err(e) = DeviceIndex::new(self.state_dir).prune(live, listed_at) {
            log::warn!("{}: pruning the device index: {e}", self.subject);
        }
    }
}
