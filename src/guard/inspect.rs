//! Drift: whether the table in the kernel is the one a pod's policy compiles to. The one
//! comparison behind CHECK, the agent's reconciliation and `status`. Reads only.

use std::path::Path;

use super::{Attachment, Guard, GuardError, Plan};
use crate::kernel::{Kernel, KernelError, TableRef, Where};
use crate::netlink::nft::expected_snapshot;
use crate::ruleset::{in_legacy_form, legacy_table_name, table_name, Attach, Family, Table};

/// What the kernel holds compared with the expected table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspection {
    Matches,
    Missing,
    /// The differences, each a sentence naming the chain, set or rule.
    Drift(Vec<String>),
}

impl Inspection {
    /// The problems as sentences; empty when the table matches.
    pub fn problems(&self, table: &Table) -> Vec<String> {
        match self {
            Inspection::Matches => Vec::new(),
            Inspection::Missing => vec![format!(
                "table {} {} is missing",
                table.family.name(),
                table.name
            )],
            Inspection::Drift(p) => p.clone(),
        }
    }
}

/// Reads `table`'s namesake at `at` and compares it with `table`.
pub fn inspect<K: Kernel>(
    kernel: &mut K,
    at: Where<'_>,
    table: &Table,
) -> Result<Inspection, KernelError> {
    Ok(
        match kernel.read(TableRef::new(at, table.family, &table.name))? {
            None => Inspection::Missing,
            Some(actual) => {
                let problems = expected_snapshot(table).diff(&actual);
                if problems.is_empty() {
                    Inspection::Matches
                } else {
                    Inspection::Drift(problems)
                }
            }
        },
    )
}

impl<K: Kernel> Guard<'_, K> {
    /// How the attachment's installed table differs from `plan` (CHECK): empty when it
    /// matches. A table named after the container ID is compared under that name.
    pub fn drift(
        &mut self,
        att: &Attachment,
        netns: &str,
        plan: &Plan,
    ) -> Result<Vec<String>, GuardError> {
        let at = match &plan.placed.attach {
            Attach::Host { .. } => Where::Host,
            Attach::PodLink { .. } | Attach::Pod => Where::Netns(Path::new(netns)),
        };
        let mut table = plan.table.clone();
        let mut found = inspect(self.kernel, at, &table)
            .map_err(|e| self.kernel_err("reading the installed table", e))?;
        if found == Inspection::Missing {
            let legacy = legacy_table_name(&att.container_id, &att.ifname);
            let recorded = in_legacy_form(table.clone(), &legacy);
            let legacy_found = inspect(self.kernel, at, &recorded)
                .map_err(|e| self.kernel_err("reading the installed table", e))?;
            if legacy_found != Inspection::Missing {
                (table, found) = (recorded, legacy_found);
            }
        }
        Ok(found.problems(&table))
    }

    /// The host table of the attachment that is installed although its pod gets none, if any.
    pub fn installed_unasked(&mut self, att: &Attachment) -> Result<Option<String>, GuardError> {
        let names = [
            table_name(&att.container_id, &att.ifname),
            legacy_table_name(&att.container_id, &att.ifname),
        ];
        for name in names {
            let present = self
                .kernel
                .read(TableRef::new(Where::Host, Family::Netdev, &name))
                .map_err(|e| self.kernel_err("reading the host table", e))?;
            if present.is_some() {
                return Ok(Some(name));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::RecordingKernel;
    use crate::kernel::Transaction;
    use crate::ruleset::{compile, Attach, PodNet, Target};

    fn table() -> Table {
        let policy = crate::guard::record::tests::sample("enforce", &["10.0.5.0/24 tcp 8443"])
            .policy()
            .unwrap();
        let target = Target {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            attach: Attach::Host {
                device: "veth1".into(),
                pod: PodNet::example(),
            },
            log: crate::ruleset::DenyLog::new(100),
        };
        compile(&policy, &target).unwrap()
    }

    #[test]
    fn missing_matching_and_drifted() {
        let mut k = RecordingKernel::default();
        let t = table();
        assert_eq!(
            inspect(&mut k, Where::Host, &t).unwrap(),
            Inspection::Missing
        );
        assert_eq!(
            Inspection::Missing.problems(&t),
            [format!("table netdev {} is missing", t.name)]
        );
        k.install(Transaction::create(Where::Host, &t)).unwrap();
        assert_eq!(
            inspect(&mut k, Where::Host, &t).unwrap(),
            Inspection::Matches
        );
        let mut other = t.clone();
        other.chains[0].rules.pop();
        match inspect(&mut k, Where::Host, &other).unwrap() {
            Inspection::Drift(p) => assert!(!p.is_empty()),
            i => panic!("{i:?}"),
        }
    }
}
