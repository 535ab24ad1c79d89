//! Harness of the CRI end-to-end suite (tests/cri_e2e.rs): one containerd node per test binary,
//! shared by the tests and torn down at process exit (also when a test failed), pods that
//! remove themselves when dropped, and the probe helpers that turn traffic into verdicts.
//! It drives egress-guard only through containerd; it never calls the plugin directly.

pub mod client;
pub mod daemonset;
pub mod image;
pub mod net;
pub mod nft;
pub mod node;

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use client::PodSpec;
use net::Probe;
use node::Node;

/// Namespace listed in the conflist's enforceNamespaces.
pub const ENFORCE_NS: &str = "model-serving";
pub const MODE: &str = "egress-guard.io/mode";
pub const ALLOW: &str = "egress-guard.io/allow";

pub struct Suite {
    pub node: Node,
    serial: Mutex<()>,
}

enum Setup {
    Skip(String),
    Broken(String),
}

static SUITE: OnceLock<Result<Suite, Setup>> = OnceLock::new();

extern "C" fn shutdown_at_exit() {
    if let Some(Ok(suite)) = SUITE.get() {
        let t = Instant::now();
        let notes = suite.node.shutdown();
        let _ = writeln!(
            std::io::stderr(),
            "egress-guard-cri: node torn down in {:.1} s{}",
            t.elapsed().as_secs_f64(),
            if notes.is_empty() {
                String::new()
            } else {
                format!(": {}", notes.join("; "))
            }
        );
    }
}

/// Writes past the test harness's output capture, so a skip is always visible.
pub fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// The shared node plus a lock that runs the scenarios one at a time (they restart containerd
/// and compare host-wide state). None, after saying why, when this machine cannot run the
/// suite; a failure instead where skips are forbidden (`common::skip`).
pub fn suite(test: &str, plugin: &Path) -> Option<(&'static Suite, MutexGuard<'static, ()>)> {
    let setup = SUITE.get_or_init(|| {
        if let Some(why) = node::missing_prerequisite(plugin) {
            return Err(Setup::Skip(why));
        }
        // SAFETY: registers a plain extern "C" fn; it only reads the initialised static.
        unsafe { libc::atexit(shutdown_at_exit) };
        let t = Instant::now();
        match Node::start(plugin) {
            Ok(node) => {
                say(&format!(
                    "egress-guard-cri: node up in {:.1} s under {}",
                    t.elapsed().as_secs_f64(),
                    node::BASE
                ));
                Ok(Suite {
                    node,
                    serial: Mutex::new(()),
                })
            }
            Err(e) => {
                let notes = node::teardown(Path::new(node::BASE));
                Err(Setup::Broken(format!(
                    "{e} (cleanup: {})",
                    notes.join("; ")
                )))
            }
        }
    });
    match setup {
        Ok(s) => Some((s, s.serial.lock().unwrap_or_else(PoisonError::into_inner))),
        Err(Setup::Skip(why)) => {
            crate::common::skip(test, why);
            None
        }
        Err(Setup::Broken(why)) => panic!("{test}: CRI node setup failed: {why}"),
    }
}

/// A running sandbox; stopped and removed through CRI when dropped (also on a failed assert).
pub struct Pod<'a> {
    node: &'a Node,
    pub id: String,
    pub spec: PodSpec,
    pub netns: PathBuf,
    pub ip4: IpAddr,
    pub ip6: IpAddr,
    removed: bool,
}

impl Node {
    pub fn run_pod(&self, spec: PodSpec) -> Result<Pod<'_>, tonic::Status> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let uid = format!("{}-{nanos}", spec.name);
        let id = self.cri.run(&spec, &uid)?;
        self.remember(&id);
        let mut pod = Pod {
            node: self,
            id: id.clone(),
            spec,
            netns: PathBuf::new(),
            ip4: IpAddr::from([0, 0, 0, 0]),
            ip6: IpAddr::from([0u16; 8]),
            removed: false,
        };
        let st = self.cri.status(&id)?;
        pod.netns = st
            .netns
            .ok_or_else(|| tonic::Status::internal(format!("sandbox {id} has no netns path")))?;
        let ip4 = st.ips.iter().find(|i| i.is_ipv4()).copied();
        let ip6 = st.ips.iter().find(|i| i.is_ipv6()).copied();
        match (ip4, ip6) {
            (Some(a), Some(b)) => {
                pod.ip4 = a;
                pod.ip6 = b;
            }
            _ => {
                return Err(tonic::Status::internal(format!(
                    "sandbox {id}: want an IPv4 and an IPv6 address, got {:?}",
                    st.ips
                )))
            }
        }
        Ok(pod)
    }
}

impl Pod<'_> {
    pub fn short(&self) -> &str {
        &self.id[..12]
    }

    pub fn stop(&self) -> Result<(), tonic::Status> {
        self.node.cri.stop(&self.id)
    }

    /// Stop then Remove, the way the kubelet deletes a pod.
    pub fn delete(mut self) -> Result<(), tonic::Status> {
        self.removed = true;
        self.node.cri.stop(&self.id)?;
        self.node.cri.remove(&self.id)
    }

    pub fn host_veth(&self) -> Result<String, String> {
        net::host_veth(&self.netns)
    }

    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 {
            self.ip6
        } else {
            self.ip4
        }
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self.node.cri.stop(&self.id);
            let _ = self.node.cri.remove(&self.id);
        }
    }
}

/// One line of a connectivity table: who sent what, what was expected and what happened.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub what: String,
    pub expect_pass: bool,
    pub passed: bool,
    /// For an expected block: did the positive control pass in the same run?
    pub control: Option<bool>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        if self.expect_pass {
            self.passed
        } else {
            !self.passed && self.control == Some(true)
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = if self.ok() { "ok  " } else { "FAIL" };
        let want = if self.expect_pass { "pass" } else { "drop" };
        let got = if self.passed { "passed" } else { "no answer" };
        let ctl = match self.control {
            None => String::new(),
            Some(true) => ", control passed".into(),
            Some(false) => ", CONTROL FAILED (probe proves nothing)".into(),
        };
        write!(f, "{status} want {want}: {} -> {got}{ctl}", self.what)
    }
}

/// Checks that `blocked` probes from `guarded` get no answer while the same probes from
/// `control` do (run first, with retries), and that `allowed` probes from `guarded` pass.
/// All probes of a phase run in parallel.
pub fn check_traffic(
    guarded: &Pod<'_>,
    control: &Pod<'_>,
    allowed: &[Probe],
    blocked: &[Probe],
) -> Vec<Verdict> {
    let settle = Duration::from_secs(6);
    let controls: Vec<bool> = std::thread::scope(|s| {
        let hs: Vec<_> = blocked
            .iter()
            .map(|p| s.spawn(|| net::probe_until_pass(&control.netns, p, settle)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(false)).collect()
    });
    let results: Vec<Verdict> = std::thread::scope(|s| {
        let a: Vec<_> = allowed
            .iter()
            .map(|p| {
                s.spawn(move || Verdict {
                    what: format!("{} {p}", guarded.spec.name),
                    expect_pass: true,
                    passed: net::probe_until_pass(&guarded.netns, p, settle),
                    control: None,
                })
            })
            .collect();
        let b: Vec<_> = blocked
            .iter()
            .zip(&controls)
            .map(|(p, c)| {
                s.spawn(move || Verdict {
                    what: format!("{} {p} (control: {})", guarded.spec.name, control.spec.name),
                    expect_pass: false,
                    passed: net::probe(&guarded.netns, p, Duration::from_millis(1500)),
                    control: Some(*c),
                })
            })
            .collect();
        a.into_iter()
            .chain(b)
            .filter_map(|h| h.join().ok())
            .collect()
    });
    results
}

/// Fails the test with the whole table when any verdict is wrong.
pub fn assert_verdicts(title: &str, verdicts: &[Verdict]) {
    let table: Vec<String> = verdicts.iter().map(|v| format!("  {v}")).collect();
    say(&format!("{title}:\n{}", table.join("\n")));
    let bad = verdicts.iter().filter(|v| !v.ok()).count();
    assert!(
        bad == 0,
        "{title}: {bad} of {} probes wrong:\n{}",
        verdicts.len(),
        table.join("\n")
    );
}
