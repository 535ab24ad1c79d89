//! What a ruleset is compiled for: the attachment (host veth, the pod's own interface, or the
//! pod netns's inet hooks) and the pod it guards.

use super::podnet::PodNet;
use super::{Family, Rate};

/// Where the ruleset lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// netdev table in the host netns bound to the pod's host-side veth.
    Host,
    /// A table inside the pod's netns (removable by CAP_NET_ADMIN in the pod).
    Pod,
}

impl Placement {
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Host => "host",
            Placement::Pod => "pod",
        }
    }
}

/// What the ruleset is for: the attachment and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub container_id: String,
    /// The pod-side interface (CNI_IFNAME); part of the table name unless it is `eth0`.
    pub ifname: String,
    pub attach: Attach,
    /// Where and how often dropped (or audited) packets are logged.
    pub log: DenyLog,
}

/// How the closing rules log what the policy does not allow (conflist `nflogGroup`,
/// `denyLogRate` and `denyLogInterval`): every distinct flow (destination, protocol, port; ICMP
/// by type and code) once per interval, new flows at most at `rate` per pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenyLog {
    pub group: u16,
    /// New flows logged per second, with a burst (per pod, for each family's ICMP and other
    /// protocols apart).
    pub rate: Rate,
    /// A flow already logged is logged again once this many seconds have passed.
    pub interval_secs: u32,
}

impl DenyLog {
    /// 100 new flows a second with a burst of 10,000, per pod: a backend that opens thousands
    /// of flows at start has every one logged.
    pub const DEFAULT_RATE: Rate = Rate {
        per_second: 100,
        burst: 10_000,
    };
    /// Each flow at least once a minute.
    pub const DEFAULT_INTERVAL_SECS: u32 = 60;

    /// `group` at the default rate and interval.
    pub const fn new(group: u16) -> DenyLog {
        DenyLog {
            group,
            rate: Self::DEFAULT_RATE,
            interval_secs: Self::DEFAULT_INTERVAL_SECS,
        }
    }
}

/// Where exactly the ruleset attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attach {
    /// Host netns, chains bound to this host-side interface; `pod` is who may send on it.
    Host { device: String, pod: PodNet },
    /// Pod netns, netdev chains bound to the pod's own interface `device` (its egress hook
    /// sees packet-socket frames too); `pod` is who may send on it.
    PodLink { device: String, pod: PodNet },
    /// Pod netns, inet output and forward chains: kernels without the netdev egress hook.
    Pod,
}

impl Attach {
    pub fn placement(&self) -> Placement {
        match self {
            Attach::Host { .. } => Placement::Host,
            Attach::PodLink { .. } | Attach::Pod => Placement::Pod,
        }
    }
    pub fn family(&self) -> Family {
        match self {
            Attach::Host { .. } | Attach::PodLink { .. } => Family::Netdev,
            Attach::Pod => Family::Inet,
        }
    }
    /// Who may send on the attachment, where the table pins it.
    pub fn pod_net(&self) -> Option<&PodNet> {
        match self {
            Attach::Host { pod, .. } | Attach::PodLink { pod, .. } => Some(pod),
            Attach::Pod => None,
        }
    }
}

impl Target {
    pub fn placement(&self) -> Placement {
        self.attach.placement()
    }
}
