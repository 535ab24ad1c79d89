//! ADD's install of a plan: in one transaction the pod's table goes in and what it replaces
//! goes out, then the attachment is recorded. On any failure nothing of this attachment's new
//! table stays installed.

use crate::kernel::Transaction;
use std::path::Path;

use super::record::PodRecord;
use super::{Attachment, Guard, GuardError, Plan, PodIdentity};
use crate::kernel::{Kernel, TableRef, Where};
use crate::logging::rfc3339;
use crate::policy::Policy;
use crate::ruleset::{legacy_table_name, table_name, Attach, Family};

impl<K: Kernel> Guard<'_, K> {
    /// Installs `plan` for the attachment in `netns`, then writes its record (a failed write
    /// only warns: the table guards the pod; the agent and GC then find it by its comment).
    pub fn apply(
        &mut self,
        att: &Attachment,
        netns: &str,
        plan: &Plan,
        policy: &Policy,
        pod: &PodIdentity,
        log: crate::ruleset::DenyLog,
    ) -> Result<(), GuardError> {
        match &plan.placed.attach {
            Attach::Host { device, .. } => self.install_on_host(att, netns, plan, device)?,
            Attach::PodLink { .. } | Attach::Pod => self.install_in_pod(att, netns, plan)?,
        }
        let record = PodRecord {
            container_id: att.container_id.clone(),
            ifname: att.ifname.clone(),
            netns: netns.to_string(),
            pod: pod.clone(),
            mode: policy.mode.to_string(),
            placement: plan.placed.attach.placement().as_str().to_string(),
            table: plan.table.name.clone(),
            device: plan.placed.host_link.as_ref().map(|h| h.name.clone()),
            pod_net: plan.placed.attach.pod_net().cloned(),
            policy: policy.digest(),
            entries: policy.entries.iter().map(|e| e.to_string()).collect(),
            nflog_group: log.group,
            deny_log_rate: Some(log.rate),
            deny_log_interval: Some(log.interval_secs),
            created: rfc3339(std::time::SystemTime::now()),
        };
        if let Err(e) = record.write(self.state_dir) {
            log::warn!("{}: {e}", self.subject);
        }
        Ok(())
    }

    /// A netdev table on the host-side `device`, replacing our tables left bound to it. The
    /// table is recorded in the device index before it exists, and removed again if the veth
    /// went away meanwhile (the kernel hooks chains to absent device names).
    fn install_on_host(
        &mut self,
        att: &Attachment,
        netns: &str,
        plan: &Plan,
        device: &str,
    ) -> Result<(), GuardError> {
        let table = &plan.table;
        let name = table.name.as_str();
        let cid = att.container_id.as_str();
        let mut stale = self.stale_host_tables(cid, name, device)?;
        log::debug!(
            "{}: installing table netdev {name} on {device} in host netns: {} rules, {} set elements, replacing [{}]",
            self.subject,
            table.rule_count(),
            table.element_count(),
            stale.join(",")
        );
        self.record_in_index(device, name)?;
        if let Err(e) = self.install_host(cid, &mut stale, table) {
            self.undo_uncertain(Where::Host, Family::Netdev, name, &e);
            return Err(self.kernel_err("installing the egress policy", e));
        }
        let gone: Vec<String> = stale.into_iter().filter(|t| t != name).collect();
        self.forget_in_index(device, &gone);
        let index = plan.placed.host_link.as_ref().map(|h| h.index).unwrap_or(0);
        match self
            .kernel
            .host_link_is(Path::new(netns), &att.ifname, device, index)
        {
            Ok(true) => Ok(()),
            other => {
                if let Err(e) = self
                    .kernel
                    .remove(TableRef::new(Where::Host, Family::Netdev, name))
                {
                    log::error!(
                        "{}: removing table {name} after its device went away: {e}",
                        self.subject
                    );
                }
                let why = match other {
                    Err(e) => e.to_string(),
                    Ok(_) => format!("ifindex {index} is gone or renamed"),
                };
                Err(GuardError::Interface {
                    subject: self.subject.clone(),
                    reason: format!("host interface {device} went away during ADD: {why}"),
                })
            }
        }
    }

    /// A table inside the pod's namespace. This attachment's table from an earlier ADD, under
    /// either name, in the family installed now is replaced in the same transaction; in the
    /// other family it is removed once the new table is in (until then both guard the pod).
    fn install_in_pod(
        &mut self,
        att: &Attachment,
        netns: &str,
        plan: &Plan,
    ) -> Result<(), GuardError> {
        let cid = att.container_id.as_str();
        if let Some(host) = &plan.placed.host_link {
            let name = table_name(cid, &att.ifname);
            self.clear_stale_host_tables(cid, &name, &host.name)?;
        }
        let table = &plan.table;
        let at = Where::Netns(Path::new(netns));
        let family = plan.placed.attach.family();
        let (mut replace, mut other) = (Vec::new(), Vec::new());
        for n in [table.name.clone(), legacy_table_name(cid, &att.ifname)] {
            for f in [Family::Netdev, Family::Inet] {
                let found = self
                    .kernel
                    .table(TableRef::new(at, f, &n))
                    .map_err(|e| self.kernel_err("looking up the pod's table", e))?;
                if let Some(t) = found {
                    if f == family {
                        replace.push(t.name);
                    } else {
                        other.push((f, t.name));
                    }
                }
            }
        }
        log::debug!(
            "{}: installing table {} {} in pod netns {netns}: {} rules, {} set elements",
            self.subject,
            family.name(),
            table.name,
            table.rule_count(),
            table.element_count()
        );
        if let Err(e) = self
            .kernel
            .install(Transaction::new(at, family, &replace, Some(table)))
        {
            self.undo_uncertain(at, family, &table.name, &e);
            return Err(self.kernel_err("installing the egress policy", e));
        }
        for (f, n) in other {
            self.kernel
                .remove(TableRef::new(at, f, &n))
                .map_err(|e| self.kernel_err("removing the pod's earlier table", e))?;
        }
        Ok(())
    }
}
