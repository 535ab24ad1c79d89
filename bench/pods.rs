//! The namespace-built node of testkit/src/common with a /16 pod subnet (500 pods do not fit the
//! tests' /24), pods attached by the real `bridge` + `host-local` plugins, and egress-guard
//! (or `nft`) run the way a runtime runs it: exec'd directly in the node's netns, timed from
//! spawn to exit. Everything lives in namespaces that are deleted when dropped.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use serde_json::{json, Value};

use crate::common::chain::{Attachment, Chain};
use crate::common::node::Node;
use crate::common::{plugin_bin, Netns, TempDir};
use crate::cri::net::in_netns;

/// Where the measured plugin keeps its state. ADD writes the pod's record and its device index
/// entry there; the default `stateDir`, /run/egress-guard, is on a tmpfs on a systemd node (and
/// in the DaemonSet's hostPath), but this VM's /run and /tmp are on its virtual disk, where
/// creating the record file alone takes 0.2-0.5 ms. /dev/shm is the tmpfs every node has.
pub const STATE_BASE: &str = "/dev/shm";
/// The name every state directory of the bench starts with (for the cleanup).
pub const STATE_TAG: &str = "egbenchstate";

pub const POD_SUBNET: &str = "10.80.0.0/16";
pub const BRIDGE: &str = "egbr0";
pub const NET_NAME: &str = "egbench";
/// The policy every measured and background pod gets: 5 entries, IPv4 and IPv6, ports and a
/// range, plus the operator-defined `@orchestrator` (2 entries).
pub const ALLOW: &str = "@orchestrator, 10.96.0.10 udp 53, 10.96.0.10 tcp 53, \
                         198.51.100.0/24 tcp 443, fd00:5::/64 tcp 443-445";

/// A pod: its netns, the bridge plugin's result (egress-guard's prevResult), host veth.
pub struct Pod {
    pub ns: Netns,
    pub cid: String,
    pub prev: Value,
    pub veth: String,
    pub annotations: Value,
}

impl Pod {
    pub fn netns_path(&self) -> String {
        self.ns.path()
    }
}

pub struct BenchNode {
    pub n: Node,
    bridge_chain: Chain,
    count: usize,
    /// The plugin's state directory (a tmpfs where there is one).
    state: TempDir,
}

/// Runs `prog` inside the netns at `ns_path` (a fresh thread that entered it), feeding `stdin`;
/// returns the wall time from spawn to exit in milliseconds and the output.
pub fn exec_timed(
    ns_path: &str,
    prog: &str,
    args: &[&str],
    env: &[(&str, String)],
    stdin: &[u8],
) -> Result<(f64, Output), String> {
    in_netns(Some(Path::new(ns_path)), || {
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let t = Instant::now();
        let mut child = cmd.spawn().map_err(|e| format!("spawn {prog}: {e}"))?;
        if let Some(mut si) = child.stdin.take() {
            si.write_all(stdin)
                .map_err(|e| format!("stdin of {prog}: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("wait {prog}: {e}"))?;
        Ok((t.elapsed().as_secs_f64() * 1e3, out))
    })?
}

/// Like `exec_timed`, but a non-zero exit is an error carrying the output.
pub fn exec_ok(
    ns_path: &str,
    prog: &str,
    args: &[&str],
    env: &[(&str, String)],
    stdin: &[u8],
) -> Result<(f64, Output), String> {
    let (ms, out) = exec_timed(ns_path, prog, args, env, stdin)?;
    if !out.status.success() {
        return Err(format!(
            "{prog} {args:?} ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok((ms, out))
}

impl BenchNode {
    pub fn new() -> BenchNode {
        let n = Node::new("bench");
        let bridge = json!({
            "type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": n.tmp.join("ipam")}
        });
        let bridge_chain = Chain::new(
            &n.node.name,
            json!({"cniVersion": "1.0.0", "name": NET_NAME, "plugins": [bridge]}),
        );
        let base = Path::new(STATE_BASE);
        let state = if base.is_dir() {
            TempDir::new_in(base, STATE_TAG)
        } else {
            TempDir::new(STATE_TAG)
        };
        BenchNode {
            n,
            bridge_chain,
            count: 0,
            state,
        }
    }

    pub fn node_path(&self) -> String {
        self.n.node.path()
    }

    /// egress-guard's conflist entry (info log level, the node's own log file, the state dir
    /// on a tmpfs: see `STATE_BASE`).
    pub fn entry(&self, placement: &str) -> Value {
        self.n.guard_entry(json!({
            "logLevel": "info",
            "placement": placement,
            "stateDir": self.state.join("state"),
        }))
    }

    /// A new pod attached by bridge + host-local only (egress-guard not run yet).
    pub fn attach(&mut self, tag: &str, annotations: Value) -> Result<Pod, String> {
        self.count += 1;
        let ns = self.n.pod_netns(&format!("{tag}{}", self.count));
        let cid = format!("{}{tag}{}", self.n.prefix, self.count);
        let att = Attachment::new(&cid, &ns.path(), "team-a", &cid, annotations.clone());
        let prev = self
            .bridge_chain
            .add(&att)
            .map_err(|e| format!("bridge ADD {cid}: {e:?}"))?;
        let veth = prev["interfaces"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|i| i.get("sandbox").is_none() && i["name"].as_str() != Some(BRIDGE))
            })
            .and_then(|i| i["name"].as_str())
            .ok_or_else(|| format!("no host veth in bridge result {prev}"))?
            .to_string();
        Ok(Pod {
            ns,
            cid,
            prev,
            veth,
            annotations,
        })
    }

    /// The stdin a libcni-like runtime gives egress-guard for `pod`.
    pub fn netconf(&self, entry: &Value, pod: &Pod) -> Vec<u8> {
        let mut c = entry.clone();
        c["cniVersion"] = json!("1.0.0");
        c["name"] = json!(NET_NAME);
        c["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": pod.annotations});
        c["prevResult"] = pod.prev.clone();
        c.to_string().into_bytes()
    }

    pub fn cni_env(verb: &str, pod: &Pod) -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", verb.to_string()),
            ("CNI_CONTAINERID", pod.cid.clone()),
            ("CNI_NETNS", pod.netns_path()),
            ("CNI_IFNAME", "eth0".to_string()),
            (
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME={0};K8S_POD_INFRA_CONTAINER_ID={0};K8S_POD_UID=uid-{0}",
                    pod.cid
                ),
            ),
            ("CNI_PATH", "/usr/lib/cni".to_string()),
        ]
    }

    /// One egress-guard verb for `pod`, timed; a failure is an error.
    pub fn guard(&self, verb: &str, entry: &Value, pod: &Pod) -> Result<f64, String> {
        let bin = plugin_bin();
        exec_ok(
            &self.node_path(),
            &bin,
            &[],
            &Self::cni_env(verb, pod),
            &self.netconf(entry, pod),
        )
        .map(|(ms, _)| ms)
        .map_err(|e| format!("egress-guard {verb} {}: {e}", pod.cid))
    }

    /// A background pod: attached and guarded (host placement), left in place.
    pub fn guarded_pod(&mut self, tag: &str) -> Result<Pod, String> {
        let pod = self.attach(
            tag,
            json!({"egress-guard.io/mode": "enforce", "egress-guard.io/allow": ALLOW}),
        )?;
        self.guard("ADD", &self.entry("host"), &pod)?;
        Ok(pod)
    }

    /// `egress-guard render` of what `pod` gets under `placement`, as a file for `nft -f`.
    pub fn render(&self, pod: &Pod, placement: &str) -> Result<String, String> {
        let dir = &self.n.tmp;
        let cfg = dir.join(&format!("render-{}.json", pod.cid));
        let ann = dir.join(&format!("ann-{}.json", pod.cid));
        std::fs::write(&cfg, self.entry(placement).to_string()).map_err(|e| e.to_string())?;
        std::fs::write(&ann, pod.annotations.to_string()).map_err(|e| e.to_string())?;
        let mut args = vec![
            "render",
            "--config",
            &cfg,
            "--annotations",
            &ann,
            "--namespace",
            "team-a",
            "--container-id",
            &pod.cid,
        ];
        if placement == "pod" {
            // The file is for `nft -f` in the pod netns, as an init container would load it:
            // the inet form (the netdev form's sets are keyed on raw loads nft cannot read).
            args.extend(["--placement", "pod-inet"]);
        } else {
            args.extend(["--device", &pod.veth]);
        }
        let out = Command::new(plugin_bin())
            .args(&args)
            .output()
            .map_err(|e| format!("render: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "render: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let file = dir.join(&format!("rules-{placement}-{}.nft", pod.cid));
        std::fs::write(&file, &out.stdout).map_err(|e| e.to_string())?;
        Ok(file)
    }

    /// Whether `cid`'s table (`family egress_guard_<hash>`) exists in the netns at `ns_path`.
    pub fn has_table(ns_path: &str, family: &str, cid: &str) -> Result<bool, String> {
        let t = egress_guard::ruleset::table_name(cid, "eth0");
        let (_, out) = exec_timed(ns_path, "nft", &["list", "table", family, &t], &[], b"")?;
        Ok(out.status.success())
    }

    /// How many nf_tables tables the netns at `ns_path` holds.
    pub fn count_tables(ns_path: &str) -> Result<usize, String> {
        let (_, out) = exec_ok(ns_path, "nft", &["list", "tables"], &[], b"")?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().count())
    }

    /// The text of `cid`'s table (`netdev egress_guard_<hash>`) in the node netns.
    pub fn table_text(&self, cid: &str) -> Result<String, String> {
        let t = egress_guard::ruleset::table_name(cid, "eth0");
        let (_, out) = exec_ok(
            &self.node_path(),
            "nft",
            &["list", "table", "netdev", &t],
            &[],
            b"",
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
