//! What a ruleset is compiled for: the attachment (host veth, the pod's own interface, or the
//! pod netns's inet hooks) and the pod it guards.

use super::podnet::PodNet;
use super::Family;

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
    pub log_group: u16,
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
