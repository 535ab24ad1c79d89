//! Drift: whether the table in the kernel is the one a pod's policy compiles to. The one
//! comparison behind CHECK, the agent's reconciliation and `status`. Reads only.

use crate::kernel::{Kernel, KernelError, Where};
use crate::netlink::nft::expected_snapshot;
use crate::ruleset::Table;

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
    Ok(match kernel.read(at, table.family, &table.name)? {
        None => Inspection::Missing,
        Some(actual) => {
            let problems = expected_snapshot(table).diff(&actual);
            if problems.is_empty() {
                Inspection::Matches
            } else {
                Inspection::Drift(problems)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::RecordingKernel;
    use crate::ruleset::{compile, Attach, Family, PodNet, Target};

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
            log_group: 100,
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
        k.install(Where::Host, Family::Netdev, &[], Some(&t))
            .unwrap();
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
