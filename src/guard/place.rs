//! Where a pod's table goes and who the pod is on its interface.
//!
//! Host placement (a netdev table on the pod's host-side veth, out of the pod's reach) when the
//! pod has a veth whose peer is in the host namespace and the kernel has the netdev egress hook;
//! otherwise a netdev table on the pod's own interface inside its namespace, or, without the
//! egress hook, an inet table there. The pod is pinned to the MAC and addresses both the
//! interface plugin's result and the kernel agree on.

use std::net::IpAddr;
use std::path::Path;

use super::{Attachment, Guard, GuardError};
use crate::kernel::{HostPeer, Kernel, PodInterface};
use crate::policy::Policy;
use crate::ruleset::{compile, Attach, IfAddr, Mac, PodNet, Table, Target};

/// The operator's placement preference (`placement` in the conflist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementPref {
    Auto,
    Host,
    Pod,
}

/// What the interface plugin's result says of the container interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrevInterface {
    pub mac: Option<Mac>,
    pub addrs: Vec<IfAddr>,
    pub gateways: Vec<IpAddr>,
}

/// What placement is decided from, besides the kernel.
pub struct PlaceInputs<'r> {
    pub netns: &'r str,
    pub pref: PlacementPref,
    /// Host-side interface names from the interface plugin's result, tried when the veth's peer
    /// index does not lead to the pod's veth.
    pub host_hints: &'r [String],
    pub prev: &'r PrevInterface,
}

/// The pod's host-side interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    pub name: String,
    pub index: u32,
}

/// Where the table goes, and the pod's host-side interface when it has one (host placement is
/// bound to it; with pod placement stale host tables on it are still cleared).
#[derive(Debug, Clone)]
pub struct Placed {
    pub attach: Attach,
    pub host_link: Option<HostLink>,
}

/// A pod's compiled table and where it goes: what ADD installs and CHECK compares.
#[derive(Debug, Clone)]
pub struct Plan {
    pub table: Table,
    pub placed: Placed,
}

impl<K: Kernel> Guard<'_, K> {
    /// Chooses the placement and compiles `policy` for it; `None` when the policy installs
    /// nothing.
    pub fn plan(
        &mut self,
        att: &Attachment,
        inputs: &PlaceInputs<'_>,
        policy: &Policy,
        log: crate::ruleset::DenyLog,
    ) -> Result<Option<Plan>, GuardError> {
        let placed = self.place(&att.ifname, inputs)?;
        let target = Target {
            container_id: att.container_id.clone(),
            ifname: att.ifname.clone(),
            attach: placed.attach.clone(),
            log,
        };
        Ok(compile(policy, &target).map(|table| Plan { table, placed }))
    }

    /// Where the ruleset goes, from the preference, the kernel and the interface type.
    pub fn place(&mut self, ifname: &str, inputs: &PlaceInputs<'_>) -> Result<Placed, GuardError> {
        let netns = Path::new(inputs.netns);
        let peer = match self.kernel.host_peer(netns, ifname, inputs.host_hints) {
            Ok(peer) => peer,
            // Placement pod needs no host-side veth: without one found, nothing is cleared on
            // the node and the gateway's MAC is not pinned.
            Err(e) if inputs.pref == PlacementPref::Pod => {
                log::warn!("{}: placement pod: the host-side interface of {ifname} was not found ({e}); frames to off-link addresses are not pinned to the gateway's MAC", self.subject);
                HostPeer::None {
                    kind: "interface whose host side was not found".into(),
                }
            }
            Err(e) => return Err(self.kernel_err("finding the pod's host-side interface", e)),
        };
        let egress = self.kernel.has_netdev_egress();
        let host_link = match peer {
            HostPeer::Veth { name, index } => Some(HostLink { name, index }),
            HostPeer::None { kind } => {
                if inputs.pref == PlacementPref::Host {
                    return Err(GuardError::Interface {
                        subject: self.subject.clone(),
                        reason: format!("placement \"host\" needs a veth with its peer in the host namespace, but \"{ifname}\" is a {kind}"),
                    });
                }
                None
            }
        };
        let device = host_link.as_ref().map(|h| h.name.clone());
        let attach = match (&device, inputs.pref, egress) {
            (Some(name), PlacementPref::Host | PlacementPref::Auto, true) => Attach::Host {
                device: name.clone(),
                pod: self.pod_identity(inputs, ifname, Some(name))?,
            },
            (Some(name), PlacementPref::Host, false) => {
                return Err(GuardError::Unsupported {
                    subject: self.subject.clone(),
                    reason: format!("placement \"host\" needs the netdev egress hook (kernel 5.16 or later); use placement \"auto\" or \"pod\" (host interface {name})"),
                })
            }
            // Inside the pod: on its own interface where the kernel has the egress hook.
            (_, _, true) => Attach::PodLink {
                device: ifname.to_string(),
                pod: self.pod_identity(inputs, ifname, device.as_deref())?,
            },
            (_, _, false) => Attach::Pod,
        };
        Ok(Placed { attach, host_link })
    }

    /// Who the pod is on `ifname` (the table pins its frames to it): the interface plugin's
    /// view checked against the kernel, and the gateway's MAC when the pod's host-side `device`
    /// (or its bridge) holds the gateway.
    fn pod_identity(
        &mut self,
        inputs: &PlaceInputs<'_>,
        ifname: &str,
        device: Option<&str>,
    ) -> Result<PodNet, GuardError> {
        let prev = inputs.prev;
        let iface = self
            .kernel
            .pod_interface(Path::new(inputs.netns), ifname)
            .map_err(|e| self.kernel_err("reading the pod's interface", e))?;
        let gateway = match device {
            Some(device) => {
                let gateway = self
                    .kernel
                    .gateway_mac(device, &prev.gateways)
                    .map_err(|e| self.kernel_err("finding the pod's gateway", e))?;
                if gateway.is_none() && !prev.gateways.is_empty() {
                    log::warn!("{}: no gateway of {ifname} is on {device} or its bridge: frames to off-link addresses are not pinned to the gateway's MAC", self.subject);
                }
                gateway
            }
            None => {
                if !prev.gateways.is_empty() {
                    log::info!("{}: {ifname} has no host-side veth: frames to off-link addresses are not pinned to the gateway's MAC", self.subject);
                }
                None
            }
        };
        pod_net(&self.subject, ifname, prev, &iface, gateway)
    }
}

/// The identity the pod is pinned to: the kernel's MAC (which the interface plugin, when it
/// names one, must agree with) and the plugin's addresses (each of which the kernel must have
/// on the interface with the same prefix).
pub fn pod_net(
    subject: &str,
    ifname: &str,
    prev: &PrevInterface,
    kernel: &PodInterface,
    gateway_mac: Option<Mac>,
) -> Result<PodNet, GuardError> {
    let refuse = |reason: String| GuardError::Interface {
        subject: subject.to_string(),
        reason,
    };
    if let Some(m) = prev.mac {
        if m != kernel.mac {
            return Err(refuse(format!(
                "prevResult gives {ifname} the MAC {m}, but the kernel has {}",
                kernel.mac
            )));
        }
    }
    if !kernel.mac.is_unicast() {
        return Err(refuse(format!(
            "{ifname} has the MAC {}, which is not a unicast address",
            kernel.mac
        )));
    }
    for a in &prev.addrs {
        if !kernel.addrs.contains(a) {
            let have: Vec<String> = kernel.addrs.iter().map(|a| a.to_string()).collect();
            return Err(refuse(format!(
                "prevResult gives {ifname} the address {a}, which the kernel does not have on it (it has [{}])",
                have.join(", ")
            )));
        }
    }
    if prev.addrs.is_empty() {
        log::warn!("{subject}: prevResult names no address for {ifname}: all IP traffic from the pod is dropped");
    }
    Ok(PodNet {
        mac: kernel.mac,
        addrs: prev.addrs.clone(),
        link_local: kernel.link_local.clone(),
        gateway_mac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> PodInterface {
        PodInterface {
            mac: "0a:58:0a:16:00:05".parse().expect("mac"),
            addrs: vec![
                "10.22.0.5/24".parse().expect("a"),
                "fd00:22::5/64".parse().expect("a"),
            ],
            link_local: vec!["fe80::858:aff:fe16:5".parse().expect("ll")],
        }
    }

    fn prev() -> PrevInterface {
        PrevInterface {
            mac: Some("0a:58:0a:16:00:05".parse().expect("mac")),
            addrs: kernel().addrs,
            gateways: vec!["10.22.0.1".parse().expect("gw")],
        }
    }

    #[test]
    fn the_pod_is_pinned_to_what_both_agree_on() {
        let net = pod_net("pod x", "eth0", &prev(), &kernel(), None).expect("net");
        assert_eq!(net.addrs, prev().addrs);
        assert_eq!(net.link_local, kernel().link_local);
        assert_eq!(net.mac, kernel().mac);
    }

    #[test]
    fn disagreement_with_the_kernel_fails() {
        let mut k = kernel();
        k.addrs.remove(0);
        let e = pod_net("pod x", "eth0", &prev(), &k, None).expect_err("missing address");
        assert!(matches!(e, GuardError::Interface { .. }), "{e:?}");
        assert!(e.to_string().contains("10.22.0.5/24"), "{e}");
        let mut k = kernel();
        k.mac = "0a:58:0a:16:00:06".parse().expect("mac");
        let e = pod_net("pod x", "eth0", &prev(), &k, None).expect_err("other mac");
        assert!(e.to_string().contains("0a:58:0a:16:00:06"), "{e}");
        let mut k = kernel();
        k.mac = "01:00:5e:00:00:01".parse().expect("mac");
        let mut p = prev();
        p.mac = None;
        let e = pod_net("pod x", "eth0", &p, &k, None).expect_err("multicast mac");
        assert!(e.to_string().contains("not a unicast address"), "{e}");
    }
}
