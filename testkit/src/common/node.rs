//! A Kubernetes-like node built from network namespaces:
//!
//! ```text
//!   pods --(reference CNI: bridge or ptp)-- node --veth-- inet  198.51.100.10 / 2001:db8:100::10
//!                                            |  \--veth-- orch  10.0.5.10 / fd00:5::10
//!                                            \ lo: 169.254.169.254 (metadata)
//! ```
//! The node forwards between them. Pods get 10.22.0.0/24 and fd00:22::/64 from host-local.

use super::{exec_in, ip, unique, Netns, TempDir};

pub const INET4: &str = "198.51.100.10";
pub const INET6: &str = "2001:db8:100::10";
pub const ORCH4: &str = "10.0.5.10";
pub const ORCH6: &str = "fd00:5::10";
pub const NODE_INET4: &str = "198.51.100.1";
pub const METADATA: &str = "169.254.169.254";
pub const POD_GW4: &str = "10.22.0.1";
pub const POD_SUBNET4: &str = "10.22.0.0/24";
pub const POD_SUBNET6: &str = "fd00:22::/64";

pub struct Node {
    pub prefix: String,
    pub node: Netns,
    pub inet: Netns,
    pub orch: Netns,
    pub tmp: TempDir,
}

fn link_pair(
    node: &Netns,
    other: &Netns,
    dev: &str,
    node4: &str,
    node6: &str,
    peer4: &str,
    peer6: &str,
) {
    ip(
        &node.name,
        &format!(
            "link add {dev} type veth peer name eth0 netns {}",
            other.name
        ),
    );
    ip(&node.name, &format!("addr add {node4} dev {dev}"));
    ip(&node.name, &format!("addr add {node6} dev {dev} nodad"));
    ip(&node.name, &format!("link set {dev} up"));
    ip(&other.name, &format!("addr add {peer4} dev eth0"));
    ip(&other.name, &format!("addr add {peer6} dev eth0 nodad"));
    ip(&other.name, "link set eth0 up");
    let gw4 = node4.split('/').next().unwrap();
    let gw6 = node6.split('/').next().unwrap();
    ip(&other.name, &format!("route add default via {gw4}"));
    ip(&other.name, &format!("-6 route add default via {gw6}"));
}

impl Node {
    pub fn new(tag: &str) -> Node {
        let prefix = unique(tag);
        let node = Netns::new(&format!("{prefix}n"));
        let inet = Netns::new(&format!("{prefix}i"));
        let orch = Netns::new(&format!("{prefix}o"));
        let tmp = TempDir::new(&format!("{tag}t"));
        exec_in(&node.name, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        exec_in(
            &node.name,
            &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
        );
        link_pair(
            &node,
            &inet,
            "to-inet",
            "198.51.100.1/24",
            "2001:db8:100::1/64",
            "198.51.100.10/24",
            "2001:db8:100::10/64",
        );
        link_pair(
            &node,
            &orch,
            "to-orch",
            "10.0.5.1/24",
            "fd00:5::1/64",
            "10.0.5.10/24",
            "fd00:5::10/64",
        );
        ip(&node.name, &format!("addr add {METADATA}/32 dev lo"));
        Node {
            prefix,
            node,
            inet,
            orch,
            tmp,
        }
    }

    /// A pod network namespace (the chain gives it an interface).
    pub fn pod_netns(&self, name: &str) -> Netns {
        // Netns::new replaces a namespace of the same name: never the node's own three.
        assert!(
            !["n", "i", "o"].contains(&name),
            "pod netns name \"{name}\" is the node's, the inet host's or the orchestrator's"
        );
        Netns::new(&format!("{}{name}", self.prefix))
    }

    pub fn log_file(&self) -> String {
        self.tmp.join("cni.log")
    }

    /// A pod netns wired to the node by hand (no CNI plugin): see `add_veth`.
    pub fn manual_pod(&self, tag: &str, host_if: &str, n: u8) -> Netns {
        let pod = self.pod_netns(tag);
        self.add_veth(&pod, host_if, n);
        pod
    }

    /// A veth from the node (`host_if`) to the pod's `eth0`, which gets 10.33.x.y/32 from `n`.
    pub fn add_veth(&self, pod: &Netns, host_if: &str, n: u8) {
        ip(
            &self.node.name,
            &format!(
                "link add {host_if} type veth peer name eth0 netns {}",
                pod.name
            ),
        );
        ip(&self.node.name, &format!("link set {host_if} up"));
        ip(
            &pod.name,
            &format!("addr add 10.33.{}.{}/32 dev eth0", n / 200, n % 200 + 2),
        );
        ip(&pod.name, "link set eth0 up");
    }

    /// egress-guard's conflist entry with test paths.
    pub fn guard_entry(&self, extra: serde_json::Value) -> serde_json::Value {
        let mut v = serde_json::json!({
            "type": "egress-guard",
            "capabilities": {"io.kubernetes.cri.pod-annotations": true},
            "defaultMode": "off",
            "enforceNamespaces": ["model-serving"],
            "networks": {"orchestrator": ["10.0.5.0/24 tcp 8443", "fd00:5::/64 tcp 8443"]},
            "logFile": self.log_file(),
            "logLevel": "debug",
            "stateDir": self.tmp.join("state"),
        });
        if let (Some(obj), Some(more)) = (v.as_object_mut(), extra.as_object()) {
            for (k, val) in more {
                obj.insert(k.clone(), val.clone());
            }
        }
        v
    }

    fn ipam(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "host-local",
            "ranges": [[{"subnet": POD_SUBNET4}], [{"subnet": POD_SUBNET6}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
            "dataDir": self.tmp.join("ipam"),
        })
    }

    /// bridge + host-local, then egress-guard.
    pub fn bridge_conflist(&self, guard: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "egtest",
            "plugins": [
                {"type": "bridge", "bridge": "egbr0", "isGateway": true, "ipMasq": false, "ipam": self.ipam()},
                guard,
            ]
        })
    }

    /// ptp + host-local, then egress-guard.
    pub fn ptp_conflist(&self, guard: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "egtest",
            "plugins": [
                {"type": "ptp", "ipMasq": false, "ipam": self.ipam()},
                guard,
            ]
        })
    }
}

/// The first global address of a family on a pod's eth0.
pub fn pod_addr(ns: &str, v6: bool) -> String {
    let fam = if v6 { "-6" } else { "-4" };
    let out = ip(ns, &format!("{fam} -o addr show dev eth0 scope global"));
    let word = out
        .split_whitespace()
        .skip_while(|w| *w != "inet" && *w != "inet6")
        .nth(1)
        .unwrap_or_else(|| panic!("no address in {ns}: {out}"));
    word.split('/').next().unwrap().to_string()
}

/// Waits until IPv6 duplicate address detection has finished in a namespace.
pub fn wait_ipv6_ready(ns: &str) {
    for _ in 0..100 {
        let out = ip(ns, "-6 addr show tentative");
        if out.trim().is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("IPv6 addresses in {ns} stayed tentative");
}
