//! Shared support for root integration tests: network namespaces that clean themselves up, a
//! node built from namespaces (node, "internet", orchestrator, metadata address), a CNI chain
//! executor that behaves like libcni, and traffic probes that run inside a namespace.

pub mod agent;
pub mod chain;
pub mod node;
pub mod probe;

use std::process::Command;

/// A JSON object of pod annotations as the (key, value) pairs the policy parser takes.
pub fn annotation_pairs(ann: &serde_json::Value) -> Vec<(String, String)> {
    ann.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether skipping is a failure here: `tests/run.sh` as root (and so CI) sets
/// `EGRESS_GUARD_ROOT_REQUIRED` and `EGRESS_GUARD_CRI_REQUIRED`.
pub fn skips_forbidden() -> bool {
    ["EGRESS_GUARD_ROOT_REQUIRED", "EGRESS_GUARD_CRI_REQUIRED"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

/// Where skipped tests are recorded; `tests/run.sh` prints it at the end.
pub fn skip_log() -> std::path::PathBuf {
    // The project's target directory (this crate lives one level below the project).
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-skips.log")
}

fn record_skip(test: &str, why: &str) {
    use std::io::Write;
    let line = format!("SKIP {test}: {why}");
    // Past the harness's output capture: a skip is visible without --nocapture.
    let _ = writeln!(std::io::stderr(), "{line}");
    let log = skip_log();
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// The one way a test skips: says why (visibly, and in [`skip_log`]) and returns, or fails
/// with the reason where skips are forbidden ([`skips_forbidden`]).
pub fn skip(test: &str, why: &str) {
    assert!(!skips_forbidden(), "{test}: cannot run here: {why}");
    record_skip(test, why);
}

/// A skip for a part that depends on the machine rather than on root (a read-only mount, say):
/// visible and recorded, never a failure.
pub fn skip_optional(test: &str, why: &str) {
    record_skip(test, why);
}

/// Whether root tests can run here; when not, [`skip`] says why (or fails where skips are
/// forbidden).
pub fn can_run_root_tests(test: &str) -> bool {
    match missing_for_root_tests() {
        None => true,
        Some(why) => {
            skip(test, &why);
            false
        }
    }
}

fn missing_for_root_tests() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, nf_tables)".into());
    }
    for tool in ["ip", "nft"] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Some(format!(
                "`{tool}` is not installed (apt-get install iproute2 nftables)"
            ));
        }
    }
    if !std::path::Path::new("/usr/lib/cni/bridge").exists() {
        return Some(
            "reference CNI plugins missing (apt-get install containernetworking-plugins)".into(),
        );
    }
    None
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short prefix unique to this process and call, for namespace names.
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("eg{}{}{}", tag, std::process::id() % 100_000, n)
}

/// Runs a command, panicking with its output if it fails.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ip ...` inside a namespace.
pub fn ip(ns: &str, args: &str) -> String {
    let mut v = vec!["ip", "-n", ns];
    v.extend(args.split_whitespace());
    run(&v)
}

/// Runs a command inside a namespace.
pub fn exec_in(ns: &str, args: &[&str]) -> String {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    run(&v)
}

/// A network namespace made by the test; deleted on drop (links inside go with it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(&["ip", "netns", "add", name]);
        ip(name, "link set lo up");
        Netns {
            name: name.to_string(),
        }
    }
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A temporary directory removed on drop.
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir::new_in(&std::env::temp_dir(), tag)
    }
    /// A temporary directory under `base`.
    pub fn new_in(base: &std::path::Path, tag: &str) -> TempDir {
        let path = base.join(unique(tag));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }
    pub fn join(&self, p: &str) -> String {
        self.path.join(p).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The plugin binary under test: `EGRESS_GUARD_BIN` when set (the demo example and the bench
/// set it), else the one cargo built next to the running test or bench
/// (`target/<profile>/deps/<test>` runs, `target/<profile>/egress-guard` is the binary).
pub fn plugin_bin() -> String {
    if let Ok(p) = std::env::var("EGRESS_GUARD_BIN") {
        return p;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("egress-guard")))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "target/release/egress-guard".to_string())
}

/// `nft list table` output made comparable with `render`: dynamic set contents and counter
/// values depend on traffic, so they are normalised.
pub fn normalise_listing(text: &str) -> String {
    let mut out = Vec::new();
    let mut skipping = false;
    for line in text.lines() {
        let t = line.trim_start();
        if skipping {
            if t.contains('}') {
                skipping = false;
            }
            continue;
        }
        if t.starts_with("elements = {") && line.contains("expires") {
            skipping = !t.contains('}');
            continue;
        }
        let mut l = line.to_string();
        if let Some(i) = l.find("counter packets ") {
            let rest = &l[i..];
            let end = rest.find(" bytes ").map(|j| {
                let after = &rest[j + 7..];
                j + 7 + after.find(' ').unwrap_or(after.len())
            });
            if let Some(end) = end {
                l = format!("{}counter packets 0 bytes 0{}", &l[..i], &rest[end..]);
            }
        }
        out.push(l);
    }
    out.join("\n") + "\n"
}
