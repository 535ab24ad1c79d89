//! The test node: a containerd 1.6 + runc started by the suite with its own config and state
//! under BASE, a CNI conflist (bridge + host-local + portmap + egress-guard), an "internet"
//! netns, and the teardown that undoes every host change, also after a crashed earlier run.
//! Only processes it started (by PID) are stopped; only state named after the suite is removed.
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::client::Cri;
use super::image;
use super::net::{self, Proto, Server};

pub const BASE: &str = "/tmp/egress-guard-cri";
pub const NET_NAME: &str = "egcri";
pub const BRIDGE: &str = "egcri0";
pub const POD_SUBNET4: &str = "10.88.0.0/16";
pub const POD_SUBNET6: &str = "fd00:88::/64";
pub const INET_NS: &str = "egcri-inet";
/// Host side of the link to the "internet" netns.
pub const INET_LINK: &str = "egcri-inet0";
/// Policy-routing table and rule priority that send pod traffic for METADATA to the inet netns
/// (only traffic from the pod subnet: the node's own metadata route is left alone).
const METADATA_TABLE: &str = "18810";

pub const GW4: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
pub const GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x88, 0, 0, 0, 0, 0, 1);
pub const NODE4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const NODE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
/// The allowlisted "internet" host.
pub const INET4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const INET6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);
/// Another "internet" host, never allowlisted.
pub const OTHER4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
pub const OTHER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x20);
pub const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

pub const TCP_PORT: u16 = 18080;
pub const TCP_OTHER_PORT: u16 = 18081;
pub const UDP_PORT: u16 = 15353;
pub const UDP_OTHER_PORT: u16 = 15354;
pub const METADATA_PORT: u16 = 80;
/// First of 20 TCP ports served by the inet host for the parallel scenario.
pub const PAR_PORT_BASE: u16 = 18100;
pub const PAR_PODS: u16 = 20;

const REFERENCE_PLUGINS: [&str; 4] = ["bridge", "host-local", "portmap", "loopback"];
const TOOLS: [&str; 12] = [
    "containerd",
    "runc",
    "ctr",
    "ip",
    "nft",
    "iptables",
    "ip6tables",
    "gcc",
    "tar",
    "sha256sum",
    "nsenter",
    "sysctl",
];
const SYSCTLS: [&str; 3] = [
    "net.ipv4.ip_forward",
    "net.ipv6.conf.all.forwarding",
    "net.ipv6.conf.default.forwarding",
];

/// Runs a program, returns its stdout; the error carries the command line and stderr.
pub fn run(prog: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{prog} {}: {} {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn which(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .any(|d| d.join(prog).is_file())
        })
        .unwrap_or(false)
}

/// Why the suite cannot run here, if it cannot.
pub fn missing_prerequisite(plugin: &Path) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, nf_tables, containerd)".into());
    }
    if let Some(t) = TOOLS.iter().find(|t| !which(t)) {
        return Some(format!(
            "`{t}` not found (see testkit/src/cri/README.md for the packages)"
        ));
    }
    if let Some(p) = REFERENCE_PLUGINS
        .iter()
        .find(|p| !Path::new("/usr/lib/cni").join(p).is_file())
    {
        return Some(format!(
            "/usr/lib/cni/{p} not found (package containernetworking-plugins)"
        ));
    }
    if !plugin.is_file() {
        return Some(format!("plugin binary {} not built", plugin.display()));
    }
    None
}

/// Host state the runtime and the reference plugins change, recorded before the suite starts.
#[derive(Serialize, Deserialize, Default)]
struct HostState {
    sysctls: Vec<(String, String)>,
    /// "iptables nat CNI-..." chains that existed before.
    chains: Vec<String>,
    /// "ip nat" nf_tables tables that existed before.
    nft_tables: Vec<String>,
    /// Directories outside BASE that existed before.
    dirs: Vec<String>,
}

fn outside_dirs() -> Vec<String> {
    let mut dirs: Vec<String> = [
        "/var/lib/cni",
        "/var/lib/cni/results",
        "/run/containerd",
        "/run/containerd/s",
        "/sys/fs/cgroup/k8s.io",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
        dirs.extend(
            rd.flatten()
                .map(|e| e.path().join("k8s.io").to_string_lossy().into_owned()),
        );
    }
    dirs
}

impl HostState {
    fn record() -> Self {
        let sysctls = SYSCTLS
            .iter()
            .filter_map(|k| {
                run("sysctl", &["-n", k])
                    .ok()
                    .map(|v| (k.to_string(), v.trim().to_string()))
            })
            .collect();
        let mut chains = Vec::new();
        for ipt in ["iptables", "ip6tables"] {
            for t in ["nat", "filter", "mangle"] {
                for l in run(ipt, &["-t", t, "-S"]).unwrap_or_default().lines() {
                    if let Some(c) = l.strip_prefix("-N ") {
                        chains.push(format!("{ipt} {t} {c}"));
                    }
                }
            }
        }
        let nft_tables = run("nft", &["list", "tables"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("table ").map(str::to_string))
            .collect();
        let dirs = outside_dirs()
            .into_iter()
            .filter(|d| Path::new(d).exists())
            .collect();
        HostState {
            sysctls,
            chains,
            nft_tables,
            dirs,
        }
    }
}

pub struct Node {
    pub base: PathBuf,
    pub sock: PathBuf,
    pub plugin_log: PathBuf,
    pub containerd_log: PathBuf,
    config: PathBuf,
    child: Mutex<Option<Child>>,
    pub cri: Cri,
    servers: Mutex<Vec<Server>>,
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl Node {
    /// Cleans what an earlier run left, records host state, and brings the node up.
    pub fn start(plugin: &Path) -> Result<Node, String> {
        let base = PathBuf::from(BASE);
        if base.exists() {
            let notes = teardown(&base);
            if !notes.is_empty() {
                super::say(&format!(
                    "egress-guard-cri: cleaned an earlier run: {}",
                    notes.join("; ")
                ));
            }
        }
        fs::create_dir_all(&base).map_err(|e| format!("mkdir {BASE}: {e}"))?;
        let state = HostState::record();
        fs::write(
            base.join("host-state.json"),
            serde_json::to_string(&state).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let sock = base.join("containerd.sock");
        let node = Node {
            plugin_log: base.join("egress-guard.log"),
            containerd_log: base.join("containerd.log"),
            config: base.join("containerd.toml"),
            child: Mutex::new(None),
            cri: Cri::new(&sock)?,
            servers: Mutex::new(Vec::new()),
            sock,
            base,
        };
        node.setup_inet()?;
        let tarball = image::build(&node.base.join("image"))?;
        node.write_cni(plugin)?;
        node.write_config()?;
        node.spawn_containerd()?;
        image::import(&node.sock, &tarball)?;
        Ok(node)
    }

    fn setup_inet(&self) -> Result<(), String> {
        let ns = ["-n", INET_NS];
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), INET_NS.into()],
            vec![
                "link".into(),
                "add".into(),
                INET_LINK.into(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                "eth0".into(),
                "netns".into(),
                INET_NS.into(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{NODE4}/24"),
                "dev".into(),
                INET_LINK.into(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{NODE6}/64"),
                "dev".into(),
                INET_LINK.into(),
                "nodad".into(),
            ],
            vec!["link".into(), "set".into(), INET_LINK.into(), "up".into()],
        ];
        for st in steps {
            run("ip", &st.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        let inner: Vec<Vec<String>> = vec![
            vec!["link".into(), "set".into(), "lo".into(), "up".into()],
            vec![
                "addr".into(),
                "add".into(),
                format!("{INET4}/24"),
                "dev".into(),
                "eth0".into(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{OTHER4}/24"),
                "dev".into(),
                "eth0".into(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{METADATA}/32"),
                "dev".into(),
                "eth0".into(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{INET6}/64"),
                "dev".into(),
                "eth0".into(),
                "nodad".into(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{OTHER6}/64"),
                "dev".into(),
                "eth0".into(),
                "nodad".into(),
            ],
            vec!["link".into(), "set".into(), "eth0".into(), "up".into()],
            vec![
                "route".into(),
                "add".into(),
                "default".into(),
                "via".into(),
                NODE4.to_string(),
            ],
            vec![
                "-6".into(),
                "route".into(),
                "add".into(),
                "default".into(),
                "via".into(),
                NODE6.to_string(),
            ],
        ];
        for st in inner {
            let args: Vec<&str> = ns
                .iter()
                .copied()
                .chain(st.iter().map(String::as_str))
                .collect();
            run("ip", &args)?;
        }
        run(
            "ip",
            &[
                "route",
                "add",
                &format!("{METADATA}/32"),
                "via",
                &INET4.to_string(),
                "dev",
                INET_LINK,
                "table",
                METADATA_TABLE,
            ],
        )?;
        run(
            "ip",
            &[
                "rule",
                "add",
                "pref",
                METADATA_TABLE,
                "from",
                POD_SUBNET4,
                "to",
                &format!("{METADATA}/32"),
                "lookup",
                METADATA_TABLE,
            ],
        )?;
        for k in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            run("sysctl", &["-qw", k])?;
        }
        let inet = PathBuf::from("/run/netns").join(INET_NS);
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        for port in [TCP_PORT, TCP_OTHER_PORT, METADATA_PORT]
            .into_iter()
            .chain(PAR_PORT_BASE..PAR_PORT_BASE + PAR_PODS)
        {
            servers.push(net::serve(
                Some(&inet),
                SocketAddr::new(any6, port),
                Proto::Tcp,
            )?);
        }
        // UDP servers per address: a reply must leave from the address the request went to.
        let inet_addrs: [IpAddr; 5] = [
            INET4.into(),
            INET6.into(),
            OTHER4.into(),
            OTHER6.into(),
            METADATA.into(),
        ];
        for ip in inet_addrs {
            for port in [UDP_PORT, UDP_OTHER_PORT] {
                servers.push(net::serve(
                    Some(&inet),
                    SocketAddr::new(ip, port),
                    Proto::Udp,
                )?);
            }
        }
        Ok(())
    }

    /// Echo servers on the node's own addresses (host netns). The bridge gateway addresses
    /// exist only once a pod was added, so call this after the first RunPodSandbox.
    pub fn ensure_node_servers(&self) -> Result<(), String> {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        let have = |a: IpAddr| servers.iter().any(|s| s.addr.ip() == a);
        let mut new = Vec::new();
        for ip in [
            IpAddr::V4(GW4),
            IpAddr::V6(GW6),
            IpAddr::V4(NODE4),
            IpAddr::V6(NODE6),
        ] {
            if have(ip) {
                continue;
            }
            new.push(net::serve(None, SocketAddr::new(ip, TCP_PORT), Proto::Tcp)?);
            new.push(net::serve(None, SocketAddr::new(ip, UDP_PORT), Proto::Udp)?);
        }
        servers.extend(new);
        Ok(())
    }

    fn write_cni(&self, plugin: &Path) -> Result<(), String> {
        let bin = self.base.join("cni-bin");
        fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
        for p in REFERENCE_PLUGINS {
            std::os::unix::fs::symlink(Path::new("/usr/lib/cni").join(p), bin.join(p))
                .map_err(|e| e.to_string())?;
        }
        std::os::unix::fs::symlink(plugin, bin.join("egress-guard")).map_err(|e| e.to_string())?;
        let confdir = self.base.join("net.d");
        fs::create_dir_all(&confdir).map_err(|e| e.to_string())?;
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": NET_NAME,
            "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": true, "hairpinMode": true,
                 "ipam": {"type": "host-local",
                          "ranges": [[{"subnet": POD_SUBNET4}], [{"subnet": POD_SUBNET6}]],
                          "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                          "dataDir": s(&self.base.join("ipam"))}},
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
                {"type": "egress-guard",
                 "capabilities": {"io.kubernetes.cri.pod-annotations": true},
                 "defaultMode": "off",
                 "enforceNamespaces": [super::ENFORCE_NS],
                 // What the enforced-namespace pods of the suite may add (the "internet" host).
                 "enforcedAllow": [
                     format!("{INET4} tcp {TCP_PORT}"), format!("{INET6} tcp {TCP_PORT}"),
                     format!("{INET4} udp {UDP_PORT}"), format!("{INET6} udp {UDP_PORT}"),
                 ],
                 "logFile": s(&self.plugin_log),
                 // Under the suite's base, which teardown removes (not the node's /run).
                 "stateDir": s(&self.base.join("egress-guard-state")),
                 "logLevel": "debug"}
            ]
        });
        fs::write(
            confdir.join("10-egcri.conflist"),
            serde_json::to_string_pretty(&conflist).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())
    }

    fn write_config(&self) -> Result<(), String> {
        let b = s(&self.base);
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        let toml = format!(
            r#"version = 2
root = "{b}/root"
state = "{b}/state"

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{b}/opt"

[{cri}]
  sandbox_image = "{image}"
  disable_apparmor = true
  # No CAP_SYS_RESOURCE for the sandbox here: the default oom_score_adj of -998 is refused.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true

[{cri}.containerd]
  snapshotter = "native"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{b}/runc"

[{cri}.cni]
  bin_dir = "{b}/cni-bin"
  conf_dir = "{b}/net.d"
  max_conf_num = 1
"#,
            sock = s(&self.sock),
            image = image::IMAGE,
        );
        fs::write(&self.config, toml).map_err(|e| e.to_string())
    }

    fn spawn_containerd(&self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.containerd_log)
            .map_err(|e| e.to_string())?;
        let child = Command::new("containerd")
            .args(["--config", &s(&self.config), "--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("spawn containerd: {e}"))?;
        fs::write(self.base.join("containerd.pid"), child.id().to_string())
            .map_err(|e| e.to_string())?;
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        self.cri.reconnect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.sock.exists() && matches!(self.cri.ready(), Ok(true)) {
                return Ok(());
            }
            if let Some(c) = self
                .child
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
            {
                if let Ok(Some(st)) = c.try_wait() {
                    return Err(format!("containerd exited ({st}): {}", self.log_tail(20)));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "containerd not ready after 60 s: {}",
                    self.log_tail(20)
                ));
            }
            self.cri.reconnect();
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the containerd this node started (SIGTERM, then SIGKILL after 15 s) and reaps it.
    pub fn stop_containerd(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut c) = guard.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                // SAFETY: signalling our own child by its PID.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        let _ = fs::remove_file(self.base.join("containerd.pid"));
        self.cri.reconnect();
    }

    /// Stops containerd and starts it again with the same config and state (pods keep running
    /// in their shims, as on a node whose containerd is upgraded or crashes).
    pub fn restart_containerd(&self) -> Result<(), String> {
        self.stop_containerd();
        self.spawn_containerd()
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.containerd_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Records a sandbox ID so a later teardown can remove what it left.
    pub fn remember(&self, id: &str) {
        if let Ok(mut f) = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.base.join("sandbox-ids"))
        {
            let _ = writeln!(f, "{id}");
        }
    }

    /// Removes every sandbox through CRI (so CNI DEL runs), stops containerd, undoes host changes.
    pub fn shutdown(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Ok(list) = self.cri.list() {
            for (id, _, name) in list {
                let r = self.cri.stop(&id).and_then(|_| self.cri.remove(&id));
                notes.push(format!(
                    "removed leftover sandbox {name} {}: {r:?}",
                    &id[..12.min(id.len())]
                ));
            }
        }
        self.servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.stop_containerd();
        notes.extend(teardown(&self.base));
        notes
    }
}

/// Undoes everything a run under `base` may have changed on the host; returns what it did.
/// Safe to run twice and after a run that was killed.
pub fn teardown(base: &Path) -> Vec<String> {
    let mut notes = Vec::new();
    let state: HostState = fs::read_to_string(base.join("host-state.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let sock = s(&base.join("containerd.sock"));
    let config = s(&base.join("containerd.toml"));

    // 1. A containerd of an earlier run, only if its command line names our config.
    if let Some(pid) = fs::read_to_string(base.join("containerd.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&config) {
            // SAFETY: signalling the containerd this suite started, identified by PID and cmdline.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            notes.push(format!("stopped containerd {pid}"));
        }
    }
    // 2. Sandbox processes (runc state under base) and their shims (their address is our socket).
    let runc_root = base.join("runc/k8s.io");
    if let Ok(rd) = fs::read_dir(&runc_root) {
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let r = run("runc", &["--root", &s(&runc_root), "delete", "-f", &id]);
            notes.push(format!(
                "runc delete {}: {}",
                &id[..12.min(id.len())],
                r.is_ok()
            ));
        }
    }
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd =
                String::from_utf8_lossy(&fs::read(e.path().join("cmdline")).unwrap_or_default())
                    .replace('\0', " ");
            if cmd.contains("containerd-shim") && cmd.contains(&sock) {
                // SAFETY: a shim whose command line names this suite's containerd socket.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                notes.push(format!("killed shim {pid}"));
            }
        }
    }
    // 3. Mounts under base (netns bind mounts, rootfs, shm), deepest first.
    let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&format!("{}/", s(base))))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        if let Ok(c) = std::ffi::CString::new(m.clone()) {
            // SAFETY: unmounting a path under the suite's own directory.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            notes.push(format!("umount {m}"));
        }
    }
    // 4. nf_tables tables of our sandboxes that a failed DEL left behind.
    for id in fs::read_to_string(base.join("sandbox-ids"))
        .unwrap_or_default()
        .lines()
    {
        for fam in ["netdev", "inet", "bridge"] {
            let t = super::nft::table_name(id);
            if run("nft", &["list", "table", fam, &t]).is_ok()
                && run("nft", &["delete", "table", fam, &t]).is_ok()
            {
                notes.push(format!("deleted leftover nft table {fam} {t}"));
            }
        }
    }
    // 5. Links and the inet netns, the metadata policy route.
    if let Ok(out) = run("ip", &["-o", "link", "show", "master", BRIDGE]) {
        for l in out.lines() {
            if let Some(name) = l.split(": ").nth(1).and_then(|n| n.split('@').next()) {
                let _ = run("ip", &["link", "del", name]);
                notes.push(format!("deleted veth {name}"));
            }
        }
    }
    for link in [BRIDGE, INET_LINK] {
        if run("ip", &["link", "del", link]).is_ok() {
            notes.push(format!("deleted {link}"));
        }
    }
    if run("ip", &["netns", "del", INET_NS]).is_ok() {
        notes.push(format!("deleted netns {INET_NS}"));
    }
    while run("ip", &["rule", "del", "pref", METADATA_TABLE]).is_ok() {}
    let _ = run("ip", &["route", "flush", "table", METADATA_TABLE]);
    // 6. iptables rules and chains of the bridge (ipMasq) and portmap plugins for our network.
    notes.extend(iptables_cleanup(&state));
    // 7. sysctls, the libcni cache, directories and cgroups the runtime created.
    for (k, v) in &state.sysctls {
        let _ = run("sysctl", &["-qw", &format!("{k}={v}")]);
    }
    // Files a killed shim or containerd leaves for our sandboxes: the loopback result in the
    // libcni cache and the shim socket, named sha256("<containerd socket>/k8s.io/<id>").
    for id in fs::read_to_string(base.join("sandbox-ids"))
        .unwrap_or_default()
        .lines()
    {
        let _ = fs::remove_file(format!("/var/lib/cni/results/cni-loopback-{id}-lo"));
        if let Ok(hash) = sha256_hex(format!("{sock}/k8s.io/{id}").as_bytes()) {
            let _ = fs::remove_file(format!("/run/containerd/s/{hash}"));
        }
    }
    if let Ok(rd) = fs::read_dir("/var/lib/cni/results") {
        for e in rd.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{NET_NAME}-"))
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let mut dirs = outside_dirs();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
    for d in dirs
        .iter()
        .filter(|d| !state.dirs.contains(d) && !state.sysctls.is_empty())
    {
        let p = Path::new(d);
        if d.starts_with("/sys/fs/cgroup") {
            if let Ok(rd) = fs::read_dir(p) {
                for e in rd.flatten().filter(|e| e.path().is_dir()) {
                    let _ = fs::remove_dir(e.path());
                }
            }
        }
        if fs::remove_dir(p).is_ok() {
            notes.push(format!("rmdir {d}"));
        }
    }
    if std::env::var_os("EGRESS_GUARD_CRI_KEEP").is_none() {
        let _ = fs::remove_dir_all(base);
    }
    notes
}

fn sha256_hex(data: &[u8]) -> Result<String, String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(data)
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| "sha256sum printed nothing".into())
}

fn iptables_cleanup(state: &HostState) -> Vec<String> {
    let mut notes = Vec::new();
    for (ipt, fam) in [("iptables", "ip"), ("ip6tables", "ip6")] {
        for t in ["nat", "filter", "mangle"] {
            let Ok(rules) = run(ipt, &["-t", t, "-S"]) else {
                continue;
            };
            let new_chains: Vec<String> = rules
                .lines()
                .filter_map(|l| l.strip_prefix("-N "))
                .filter(|c| {
                    c.starts_with("CNI-") && !state.chains.contains(&format!("{ipt} {t} {c}"))
                })
                .map(str::to_string)
                .collect();
            let ours = |l: &str| {
                l.contains(NET_NAME)
                    || l.contains(POD_SUBNET4)
                    || l.contains(POD_SUBNET6)
                    || new_chains
                        .iter()
                        .any(|c| l.ends_with(&format!("-j {c}")) || l.contains(&format!("-j {c} ")))
            };
            // Delete matching rules by position, last first, chain by chain.
            let mut pos: std::collections::BTreeMap<String, usize> = Default::default();
            let mut doomed: Vec<(String, usize)> = Vec::new();
            for l in rules.lines() {
                let Some(rest) = l.strip_prefix("-A ") else {
                    continue;
                };
                let chain = rest.split(' ').next().unwrap_or("").to_string();
                let n = pos.entry(chain.clone()).or_insert(0);
                *n += 1;
                if ours(l) {
                    doomed.push((chain, *n));
                }
            }
            for (chain, n) in doomed.iter().rev() {
                if run(ipt, &["-t", t, "-D", chain, &n.to_string()]).is_ok() {
                    notes.push(format!("{ipt} -t {t} -D {chain} {n}"));
                }
            }
            for c in &new_chains {
                let _ = run(ipt, &["-t", t, "-F", c]);
            }
            for c in &new_chains {
                if run(ipt, &["-t", t, "-X", c]).is_ok() {
                    notes.push(format!("{ipt} -t {t} -X {c}"));
                }
            }
            // A table iptables-nft created for the plugins, now empty.
            let name = format!("{fam} {t}");
            if !state.sysctls.is_empty() && !state.nft_tables.contains(&name) {
                let left = run(ipt, &["-t", t, "-S"]).unwrap_or_default();
                if left.lines().all(|l| l.starts_with("-P "))
                    && run("nft", &["delete", "table", fam, t]).is_ok()
                {
                    notes.push(format!("nft delete table {name}"));
                }
            }
        }
    }
    notes
}
