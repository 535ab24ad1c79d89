//! DEL (one attachment's tables, index entries and record) and GC (every table and record of
//! ours whose attachment the runtime no longer holds).

use std::collections::BTreeSet;
use std::path::Path;

use super::devindex::DeviceIndex;
use super::record;
use super::stale::other_owner;
use super::{Attachment, Guard, GuardError};
use crate::kernel::{Kernel, TableRef, Where};
use crate::ruleset::{legacy_table_name, table_name, Family, TABLE_PREFIX};

/// What DEL removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub host_table: bool,
    pub pod_table: bool,
}

impl<K: Kernel> Guard<'_, K> {
    /// Removes the attachment's tables (host and, while its namespace exists, pod), its device
    /// index entries and its record. Tables, records and index entries another container's
    /// record or comment claims (a collision of hashed names, as after an ADD refused for it)
    /// are that container's: removing them would unguard its pod.
    pub fn remove(&mut self, att: &Attachment, netns: Option<&str>) -> Result<Removed, GuardError> {
        let cid = att.container_id.as_str();
        let mut names = vec![table_name(cid, &att.ifname)];
        // A pod whose table is named after its container ID has its record under that name.
        let legacy = legacy_table_name(cid, &att.ifname);
        if record::state_path(self.state_dir, record::key_of_table(&legacy)).exists() {
            names.push(legacy);
        }
        let mut removed = Removed::default();
        for name in &names {
            let (owner, device) = match record::find(self.state_dir, record::key_of_table(name)) {
                Some(r) => (Some(r.container_id), r.device),
                None => (None, None),
            };
            let host = self
                .kernel
                .table(TableRef::new(Where::Host, Family::Netdev, name))
                .map_err(|e| self.kernel_err("looking up the host table", e))?;
            let claimed = owner.filter(|o| o != cid).or_else(|| {
                host.as_ref()
                    .and_then(|t| other_owner(&t.comment, cid).map(str::to_string))
            });
            if let Some(other) = claimed {
                log::warn!("{}: table {name} belongs to container {other} (a collision of hashed table names); left alone", self.subject);
                continue;
            }
            if host.is_some() {
                removed.host_table |= self
                    .kernel
                    .remove(TableRef::new(Where::Host, Family::Netdev, name))
                    .map_err(|e| self.kernel_err("removing the host table", e))?;
            }
            if let Some(netns) = netns.filter(|n| !n.is_empty()) {
                for family in [Family::Netdev, Family::Inet] {
                    match self.kernel.remove(TableRef::new(
                        Where::Netns(Path::new(netns)),
                        family,
                        name,
                    )) {
                        Ok(r) => removed.pod_table |= r,
                        Err(e) if e.netns_missing() => break,
                        Err(e) => return Err(self.kernel_err("removing the pod table", e)),
                    }
                }
            }
            if let Some(device) = device {
                self.forget_in_index(&device, std::slice::from_ref(name));
            }
            self.remove_record(record::key_of_table(name));
        }
        Ok(removed)
    }

    /// Removes every host table and record of ours that belongs to none of `live` (under
    /// either name: pods keep the name their table got at ADD). Returns the removed tables.
    pub fn collect_garbage(&mut self, live: &[Attachment]) -> Result<Vec<String>, GuardError> {
        let keep: BTreeSet<String> = live
            .iter()
            .flat_map(|a| {
                [
                    table_name(&a.container_id, &a.ifname),
                    legacy_table_name(&a.container_id, &a.ifname),
                ]
            })
            .collect();
        let listed_at = std::time::SystemTime::now();
        let tables = self
            .kernel
            .tables(Where::Host, Family::Netdev)
            .map_err(|e| self.kernel_err("listing tables", e))?;
        let mut removed = Vec::new();
        let mut kept = BTreeSet::new();
        for t in tables
            .into_iter()
            .filter(|t| t.name.starts_with(TABLE_PREFIX))
        {
            if keep.contains(&t.name) {
                kept.insert(t.name);
                continue;
            }
            self.kernel
                .remove(TableRef::new(Where::Host, Family::Netdev, &t.name))
                .map_err(|e| self.kernel_err(format!("removing table {}", t.name), e))?;
            removed.push(t.name);
        }
        // Entries of tables that are gone (never fresh ones: a concurrent ADD records its
        // table just before installing it, after this listing).
        if let Err(e) = DeviceIndex::new(self.state_dir).prune(&kept, listed_at) {
            log::warn!("{}: pruning the device index: {e}", self.subject);
        }
        for key in record::keys(self.state_dir) {
            if !keep.contains(&format!("{TABLE_PREFIX}{key}")) {
                self.remove_record(&key);
            }
        }
        Ok(removed)
    }

    /// Removes a record; a failure is logged (the table is already gone).
    fn remove_record(&self, key: &str) {
        if let Err(e) = record::remove(self.state_dir, key) {
            log::warn!("{e}");
        }
    }
}
