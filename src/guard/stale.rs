//! Tables that must go before a pod's table is installed: one of the same name (a repeated
//! ADD) and any left bound to the same host device name by a pod that died without DEL
//! (netdev chains re-attach to a new device of the same name). Table names are a hash of the
//! attachment; a table whose comment names another container (a collision) is never replaced
//! or removed, which would leave that container's pod unguarded.

use crate::kernel::Transaction;
use std::path::Path;

use super::devindex::DeviceIndex;
use super::{Attachment, Guard, GuardError};
use crate::kernel::{HostPeer, Kernel, KernelError, TableRef, Where};
use crate::netlink::nft::TableInfo;
use crate::ruleset::{comment_container, comment_devices, table_name, Family, Table, TABLE_PREFIX};

/// Whether our table's comment names `device` as the one its chains are bound to.
pub fn bound_to(comment: &str, device: &str) -> bool {
    comment_devices(comment).any(|d| d == device)
}

/// The other container a table of container `cid`'s name belongs to, by its comment. A table
/// whose comment names no container (an ID too long for the comment, or a table named after
/// the container ID) is taken to be this attachment's.
pub fn other_owner<'a>(comment: &'a str, cid: &str) -> Option<&'a str> {
    comment_container(comment).filter(|owner| *owner != cid)
}

impl<K: Kernel> Guard<'_, K> {
    fn index(&self) -> DeviceIndex {
        DeviceIndex::new(self.state_dir)
    }

    /// Our host tables to replace when container `cid`'s table `name` is installed on
    /// `device`.
    ///
    /// With a complete device index that is one lookup per recorded candidate, whatever the
    /// number of pods on the node; a table of this name recorded under another device is not
    /// looked for here: its creation fails with EEXIST and [`Guard::install_host`] replaces it
    /// then (every lookup costs the kernel a walk over all the node's tables). Otherwise every
    /// netdev table is listed, and the index is rebuilt from the listing for the next ADD.
    pub fn stale_host_tables(
        &mut self,
        cid: &str,
        name: &str,
        device: &str,
    ) -> Result<Vec<String>, GuardError> {
        let own = |t: &str, comment: &str| t == name && other_owner(comment, cid).is_none();
        let index = self.index();
        if index.is_complete() {
            match index.tables(device) {
                Ok(candidates) => {
                    let mut stale = Vec::new();
                    for t in candidates
                        .into_iter()
                        .filter(|t| t.starts_with(TABLE_PREFIX))
                    {
                        let info = self
                            .kernel
                            .table(TableRef::new(Where::Host, Family::Netdev, &t))
                            .map_err(|e| self.kernel_err(format!("looking up table {t}"), e))?;
                        match info {
                            Some(info)
                                if own(&t, &info.comment) || bound_to(&info.comment, device) =>
                            {
                                stale.push(t)
                            }
                            // Re-created on another device since; recorded there as well.
                            Some(_) => {}
                            None if t != name => {
                                if let Err(e) = index.forget_missing(device, &t) {
                                    log::warn!("{}: pruning the device index: {e}", self.subject);
                                }
                            }
                            None => {}
                        }
                    }
                    return Ok(stale);
                }
                Err(e) => log::warn!(
                    "{}: reading the device index for {device}: {e}; listing tables instead",
                    self.subject
                ),
            }
        }
        let tables = self
            .kernel
            .tables(Where::Host, Family::Netdev)
            .map_err(|e| self.kernel_err("listing tables", e))?;
        rebuild_index(&index, &tables, &self.subject);
        Ok(tables
            .into_iter()
            .filter(|t| t.name.starts_with(TABLE_PREFIX))
            .filter(|t| own(&t.name, &t.comment) || bound_to(&t.comment, device))
            .map(|t| t.name)
            .collect())
    }

    /// Installs `table` in the host netns replacing `stale`. If a table of the same name
    /// exists that `stale` does not hold (a repeated ADD the device index recorded under
    /// another device), it is looked up and the transaction retried once replacing it too.
    pub fn install_host(
        &mut self,
        cid: &str,
        stale: &mut Vec<String>,
        table: &Table,
    ) -> Result<usize, KernelError> {
        let first = self.kernel.install(Transaction::new(
            Where::Host,
            Family::Netdev,
            stale,
            Some(table),
        ));
        match first {
            Err(e) if e.already_exists() && !stale.contains(&table.name) => {
                let Some(existing) =
                    self.kernel
                        .table(TableRef::new(Where::Host, Family::Netdev, &table.name))?
                else {
                    return Err(e);
                };
                if let Some(owner) = other_owner(&existing.comment, cid) {
                    return Err(KernelError::NameTaken {
                        table: table.name.clone(),
                        owner: owner.to_string(),
                    });
                }
                log::info!(
                    "{}: table {} already existed outside the device index; replacing it",
                    self.subject,
                    table.name
                );
                stale.push(table.name.clone());
                self.kernel.install(Transaction::new(
                    Where::Host,
                    Family::Netdev,
                    stale,
                    Some(table),
                ))
            }
            other => other,
        }
    }

    /// Notes in the device index that `name` may be bound to `device`, before it is installed.
    /// If that fails the index stops being trusted; if even that fails, this fails rather than
    /// leave an index that could hide the table from a later pod on the same device name.
    pub fn record_in_index(&self, device: &str, name: &str) -> Result<(), GuardError> {
        match self.index().record(device, name) {
            Ok(None) => Ok(()),
            Ok(Some(e)) => {
                log::warn!("{}: cannot record table {name} for {device} in the device index under {}: {e}; ADD will list tables until it is rebuilt", self.subject, self.state_dir.display());
                Ok(())
            }
            Err((e, e2)) => Err(GuardError::State {
                subject: self.subject.clone(),
                reason: format!(
                    "cannot record table {name} for {device} in the device index under {} ({e}) nor mark the index stale ({e2})",
                    self.state_dir.display()
                ),
            }),
        }
    }

    /// Forgets tables that are gone from the device index (best effort: leftovers are
    /// harmless, they are looked up and pruned).
    pub fn forget_in_index(&self, device: &str, tables: &[String]) {
        let index = self.index();
        for t in tables {
            if let Err(e) = index.remove(device, t) {
                log::warn!("device index: forgetting {t} on {device}: {e}");
            }
        }
    }

    /// Removes, on their own, our host tables left bound to `device` (and this attachment's
    /// own table), for when no new host table is created in the same transaction.
    pub fn clear_stale_host_tables(
        &mut self,
        cid: &str,
        name: &str,
        device: &str,
    ) -> Result<(), GuardError> {
        let mut stale = self.stale_host_tables(cid, name, device)?;
        // This attachment's own host table, wherever the index recorded it: nothing is created
        // here whose EEXIST would reveal it.
        if !stale.iter().any(|t| t == name) {
            let own = self
                .kernel
                .table(TableRef::new(Where::Host, Family::Netdev, name))
                .map_err(|e| self.kernel_err(format!("looking up table {name}"), e))?;
            if let Some(own) = own {
                match other_owner(&own.comment, cid) {
                    Some(owner) => log::warn!(
                        "{}: table {name} belongs to container {owner} (a collision of hashed table names); left alone",
                        self.subject
                    ),
                    None => stale.push(name.to_string()),
                }
            }
        }
        if stale.is_empty() {
            return Ok(());
        }
        log::info!(
            "{}: removing stale table(s) {} bound to {device}",
            self.subject,
            stale.join(", ")
        );
        self.kernel
            .install(Transaction::new(Where::Host, Family::Netdev, &stale, None))
            .map_err(|e| self.kernel_err("removing stale tables", e))?;
        self.forget_in_index(device, &stale);
        Ok(())
    }

    /// For a pod that gets no table: a stale table bound to its host device name must not
    /// guard (or break) a pod that asked for nothing. A failed lookup of the host side only
    /// warns: there is nothing of this pod's to protect.
    pub fn clear_for_unguarded(
        &mut self,
        att: &Attachment,
        netns: &str,
        host_hints: &[String],
    ) -> Result<(), GuardError> {
        let name = table_name(&att.container_id, &att.ifname);
        match self
            .kernel
            .host_peer(Path::new(netns), &att.ifname, host_hints)
        {
            Ok(HostPeer::Veth { name: dev, .. }) => {
                self.clear_stale_host_tables(&att.container_id, &name, &dev)
            }
            Ok(HostPeer::None { .. }) => Ok(()),
            Err(e) => {
                log::warn!(
                    "{}: mode off; host interface lookup failed: {e}",
                    self.subject
                );
                Ok(())
            }
        }
    }

    /// After a failed install whose outcome is unknown (a transient error such as ENOBUFS can
    /// come after the kernel committed the batch), makes sure no table of ours stays installed.
    pub fn undo_uncertain(&mut self, at: Where<'_>, family: Family, name: &str, e: &KernelError) {
        if !e.is_transient() {
            return;
        }
        if let Err(re) = self.kernel.remove(TableRef::new(at, family, name)) {
            log::error!(
                "{}: removing table {name} after a failed install: {re}",
                self.subject
            );
        }
    }
}

/// Records every host table of ours found in a full listing, then marks the index complete.
/// Tables created meanwhile by other plugin runs recorded themselves before they were created.
fn rebuild_index(index: &DeviceIndex, tables: &[TableInfo], subject: &str) {
    let recorded = tables
        .iter()
        .filter(|t| t.name.starts_with(TABLE_PREFIX))
        .filter_map(|t| {
            let dev = comment_devices(&t.comment).next()?;
            Some((dev, t.name.as_str()))
        })
        .try_for_each(|(dev, t)| index.add(dev, t));
    if let Err(e) = recorded.and_then(|_| index.mark_complete()) {
        log::warn!(
            "{subject}: cannot build the device index (tables will be listed on each ADD): {e}"
        );
        if let Err(e) = index.invalidate() {
            log::warn!("{subject}: cannot remove the device index marker: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_and_devices_come_from_the_comment() {
        let comment = "egress-guard dev=veth1 mode=enforce policy=0123 id=c1 if=eth0";
        assert!(bound_to(comment, "veth1"));
        assert!(!bound_to(comment, "veth2"));
        assert_eq!(other_owner(comment, "c1"), None);
        assert_eq!(other_owner(comment, "c2"), Some("c1"));
    }
}
