//! Policy -> Table. Deterministic and free of I/O: the same policy and target always give the
//! same table, which is what CHECK compares the kernel against.

use super::identity::Side;
use super::tables::{inet_pod_table, link_table};
use super::{Attach, Table, Target};
use crate::policy::{Mode, Policy};

/// Compiles a policy for a target. `None` when the mode is off (nothing is installed).
pub fn compile(policy: &Policy, target: &Target) -> Option<Table> {
    if policy.mode == Mode::Off {
        return None;
    }
    match &target.attach {
        Attach::Host { device, pod } => {
            Some(link_table(policy, target, device, pod, Side::HostPeer))
        }
        Attach::PodLink { device, pod } => {
            Some(link_table(policy, target, device, pod, Side::PodOwn))
        }
        Attach::Pod => Some(inet_pod_table(policy, target)),
    }
}

/// A host target and an empty enforce policy, for the tests of the table builders.
#[cfg(test)]
pub(super) mod fixtures {
    use crate::policy::{Mode, ModeSource, Policy};
    use crate::ruleset::{Attach, PodNet, Target};

    pub(in crate::ruleset) fn target(cid: &str, ifname: &str) -> Target {
        Target {
            container_id: cid.into(),
            ifname: ifname.into(),
            attach: Attach::Host {
                device: "veth1".into(),
                pod: PodNet::example(),
            },
            log: crate::ruleset::DenyLog::new(100),
        }
    }

    pub(in crate::ruleset) fn enforce() -> Policy {
        Policy {
            mode: Mode::Enforce,
            mode_source: ModeSource::Annotation,
            entries: Vec::new(),
        }
    }
}
