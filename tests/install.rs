//! Installer tests on temporary conf dirs holding the conflists of real primary CNIs
//! (tests/fixtures/conflists/): chaining, idempotency, atomicity, watching a primary that
//! rewrites or replaces its file, bad input and a read-only directory.
#![allow(clippy::unwrap_used)]

use egress_guard_testkit::common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egress_guard::install::{
    ChainChange, InstallError, Installer, Options, ANNOTATIONS_CAPABILITY,
};
use serde_json::{json, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/conflists");

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "eg-install-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("net.d")).unwrap();
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("egress-guard.bin"), b"\x7fELF fake binary v1").unwrap();
        TempDir(dir)
    }
    fn conf(&self) -> PathBuf {
        self.0.join("net.d")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn plugin_config() -> Value {
    json!({
        "defaultMode": "off",
        "enforceNamespaces": ["model-serving"],
        "networks": {"dns": ["10.96.0.10 udp 53", "10.96.0.10 tcp 53"]},
        "placement": "auto",
        "logLevel": "info"
    })
}

fn options(t: &TempDir, config: &Value) -> Options {
    let cfg = t.0.join("plugin.json");
    std::fs::write(&cfg, serde_json::to_vec(config).unwrap()).unwrap();
    Options {
        cni_conf_dir: t.conf(),
        cni_bin_dir: t.0.join("bin"),
        plugin_config: cfg,
        plugin_config_required: true,
        binary: t.0.join("egress-guard.bin"),
        host_root: t.0.join("host"),
        node_name: None,
        kubeconfig: None,
        api_server: None,
        service_account_dir: t.0.join("sa"),
        debounce: Duration::from_millis(100),
        max_delay: Duration::from_millis(500),
        ..Options::default()
    }
}

/// A projected ServiceAccount directory (token `token-1`, a CA) under `t`.
fn service_account(t: &TempDir) -> PathBuf {
    let sa = t.0.join("sa");
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::write(sa.join("token"), "token-1\n").unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["kubernetes".to_string()]).unwrap();
    std::fs::write(sa.join("ca.crt"), ca.cert.pem()).unwrap();
    sa
}

/// Copies the fixture conflist `name` to `to`.
fn copy_fixture(name: &str, to: &Path) {
    std::fs::copy(Path::new(FIXTURES).join(name), to).unwrap();
}

fn installer(t: &TempDir) -> Installer {
    Installer::new(options(t, &plugin_config())).unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(FIXTURES)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".conf") || n.ends_with(".conflist"))
        .collect();
    names.sort();
    names
}

/// Whether `path` is a conflist whose last plugin is our full entry.
fn chained_in(path: &Path, entry: &serde_json::Map<String, Value>) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
        return false;
    };
    v["plugins"].as_array().and_then(|p| p.last()) == Some(&Value::Object(entry.clone()))
}

#[test]
fn every_fixture_is_chained_last_and_idempotently() {
    let names = fixture_names();
    assert!(names.len() >= 6, "{names:?}");
    for name in names {
        let t = TempDir::new("fixture");
        let src = Path::new(FIXTURES).join(&name);
        std::fs::copy(&src, t.conf().join(&name)).unwrap();
        // A later file must never be touched: libcni uses the first one only.
        let later = t.conf().join("99-loopback.conf");
        std::fs::write(
            &later,
            r#"{"cniVersion":"1.0.0","name":"lo","type":"loopback"}"#,
        )
        .unwrap();
        let inst = installer(&t);
        assert!(inst.install_binary().unwrap());

        let outcome = inst.reconcile().unwrap();
        let path = match &outcome {
            ChainChange::Chained(p) => p.clone(),
            ChainChange::Converted { from, to } => {
                assert!(name.ends_with(".conf"), "{name}");
                assert!(!from.exists(), "{name}: the .conf must be gone");
                to.clone()
            }
            ChainChange::Unchanged(_) => panic!("{name}: nothing was written"),
        };
        let original = read_json(&src);
        let chained = read_json(&path);
        let plugins = chained["plugins"].as_array().unwrap();
        let last = plugins.last().unwrap();
        assert_eq!(last["type"], "egress-guard", "{name}");
        assert_eq!(last["capabilities"][ANNOTATIONS_CAPABILITY], true, "{name}");
        assert_eq!(
            last["enforceNamespaces"],
            json!(["model-serving"]),
            "{name}"
        );
        assert_eq!(last["networks"], plugin_config()["networks"], "{name}");
        // Every other field is kept.
        if name.ends_with(".conflist") {
            let mut expected = original.clone();
            expected["plugins"]
                .as_array_mut()
                .unwrap()
                .push(last.clone());
            assert_eq!(chained, expected, "{name}");
        } else {
            assert_eq!(plugins.len(), 2, "{name}");
            assert_eq!(plugins[0], original, "{name}");
            assert_eq!(chained["name"], original["name"], "{name}");
            assert_eq!(chained["cniVersion"], original["cniVersion"], "{name}");
        }
        assert!(inst.check().unwrap(), "{name}");

        // Re-running changes nothing: same bytes, same inode, no write.
        let before = (
            std::fs::read(&path).unwrap(),
            std::fs::metadata(&path).unwrap().ino(),
        );
        assert_eq!(
            inst.reconcile().unwrap(),
            ChainChange::Unchanged(path.clone()),
            "{name}"
        );
        assert!(!inst.install_binary().unwrap());
        let fresh = installer(&t);
        assert_eq!(
            fresh.reconcile().unwrap(),
            ChainChange::Unchanged(path.clone()),
            "{name}"
        );
        let after = (
            std::fs::read(&path).unwrap(),
            std::fs::metadata(&path).unwrap().ino(),
        );
        assert_eq!(before, after, "{name}");
        assert_eq!(
            std::fs::read_to_string(&later).unwrap(),
            r#"{"cniVersion":"1.0.0","name":"lo","type":"loopback"}"#
        );
        // No temporary file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(t.conf())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

#[test]
fn changed_config_updates_the_entry_in_place_and_moves_it_last() {
    let t = TempDir::new("update");
    let path = t.conf().join("10-flannel.conflist");
    let mut conf = read_json(&Path::new(FIXTURES).join("10-flannel.conflist"));
    // An old entry in the middle (e.g. the primary appended after us).
    conf["plugins"]
        .as_array_mut()
        .unwrap()
        .insert(1, json!({"type": "egress-guard", "defaultMode": "audit"}));
    std::fs::write(&path, serde_json::to_vec(&conf).unwrap()).unwrap();
    let inst = installer(&t);
    assert!(!inst.check().unwrap());
    assert_eq!(
        inst.reconcile().unwrap(),
        ChainChange::Chained(path.clone())
    );
    let v = read_json(&path);
    let types: Vec<&str> = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["flannel", "portmap", "egress-guard"]);
    assert_eq!(v["plugins"][2]["defaultMode"], "off");
}

#[test]
fn binary_is_replaced_only_when_it_differs() {
    let t = TempDir::new("binary");
    let inst = installer(&t);
    let dest = t.0.join("bin/egress-guard");
    assert!(inst.install_binary().unwrap());
    let ino = std::fs::metadata(&dest).unwrap().ino();
    assert_eq!(std::fs::metadata(&dest).unwrap().mode() & 0o777, 0o755);
    assert!(!inst.install_binary().unwrap());
    assert_eq!(std::fs::metadata(&dest).unwrap().ino(), ino);
    std::fs::write(t.0.join("egress-guard.bin"), b"\x7fELF fake binary v2").unwrap();
    assert!(inst.install_binary().unwrap());
    assert_eq!(std::fs::read(&dest).unwrap(), b"\x7fELF fake binary v2");
    assert_ne!(std::fs::metadata(&dest).unwrap().ino(), ino);
}

#[test]
fn a_reader_never_sees_a_partial_file() {
    let t = TempDir::new("atomic");
    let path = t.conf().join("10-calico.conflist");
    // A big conflist so a non-atomic write would be observable.
    let mut conf = read_json(&Path::new(FIXTURES).join("10-calico.conflist"));
    conf["padding"] = json!("x".repeat(256 * 1024));
    std::fs::write(&path, serde_json::to_vec(&conf).unwrap()).unwrap();
    let a = Installer::new(options(&t, &json!({"defaultMode": "audit"}))).unwrap();
    let b = Installer::new(options(&t, &json!({"defaultMode": "enforce"}))).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, reads, path) = (stop.clone(), reads.clone(), path.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let bytes = std::fs::read(&path).expect("the file always exists");
                let v: Value = serde_json::from_slice(&bytes).expect("always whole json");
                assert!(v["plugins"].as_array().unwrap().len() >= 3);
                reads.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    for i in 0..100 {
        let inst = if i % 2 == 0 { &a } else { &b };
        assert!(inst.reconcile().unwrap().wrote());
    }
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    assert!(reads.load(Ordering::SeqCst) > 0);
}

/// Runs the installer's watch loop in a thread until the returned guard is dropped.
struct Watcher {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Result<(), InstallError>>>,
}

impl Watcher {
    fn start(mut inst: Installer) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || inst.watch(&s));
        Watcher {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().unwrap().unwrap();
        }
    }
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn watch_rechains_within_a_second_after_an_atomic_replace() {
    let t = TempDir::new("replace");
    let path = t.conf().join("10-kindnet.conflist");
    let original = std::fs::read(Path::new(FIXTURES).join("10-kindnet.conflist")).unwrap();
    std::fs::write(&path, &original).unwrap();
    let inst = installer(&t);
    let entry = inst.entry().clone();
    let _w = Watcher::start(inst);
    assert!(wait_until(Duration::from_secs(5), || chained_in(&path, &entry)).is_some());
    for _ in 0..3 {
        // The primary replaces its file the way kindnet does: write beside, rename.
        let tmp = t.conf().join(".kindnet.tmp");
        std::fs::write(&tmp, &original).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let took = wait_until(Duration::from_secs(5), || chained_in(&path, &entry));
        assert!(took.is_some_and(|d| d < Duration::from_secs(1)), "{took:?}");
    }
}

#[test]
fn watch_ends_chained_after_50_rewrites() {
    let t = TempDir::new("rewrites");
    let path = t.conf().join("10-calico.conflist");
    let original = std::fs::read(Path::new(FIXTURES).join("10-calico.conflist")).unwrap();
    std::fs::write(&path, &original).unwrap();
    let inst = installer(&t);
    let entry = inst.entry().clone();
    let _w = Watcher::start(inst);
    assert!(wait_until(Duration::from_secs(5), || chained_in(&path, &entry)).is_some());
    for _ in 0..50 {
        // In place (truncate + write), the least friendly way.
        std::fs::write(&path, &original).unwrap();
        std::thread::sleep(Duration::from_millis(15));
    }
    let took = wait_until(Duration::from_secs(5), || chained_in(&path, &entry));
    assert!(took.is_some_and(|d| d < Duration::from_secs(2)), "{took:?}");
    // And it stays chained: no write loop with ourselves.
    let ino = std::fs::metadata(&path).unwrap().ino();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
    assert!(chained_in(&path, &entry));
}

#[test]
fn watch_handles_delete_and_recreate() {
    let t = TempDir::new("recreate");
    let path = t.conf().join("10-flannel.conflist");
    let original = std::fs::read(Path::new(FIXTURES).join("10-flannel.conflist")).unwrap();
    // Starts with no conflist at all: the primary has not written it yet.
    let inst = installer(&t);
    let entry = inst.entry().clone();
    let _w = Watcher::start(inst);
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&path, &original).unwrap();
    assert!(wait_until(Duration::from_secs(2), || chained_in(&path, &entry)).is_some());
    std::fs::remove_file(&path).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!path.exists(), "the installer must not invent a conflist");
    std::fs::write(&path, &original).unwrap();
    let took = wait_until(Duration::from_secs(5), || chained_in(&path, &entry));
    assert!(took.is_some_and(|d| d < Duration::from_secs(1)), "{took:?}");
}

#[test]
fn watch_converts_a_recreated_conf() {
    let t = TempDir::new("conf");
    let conf = t.conf().join("10-bridge.conf");
    let list = t.conf().join("10-bridge.conflist");
    let original = std::fs::read(Path::new(FIXTURES).join("10-bridge.conf")).unwrap();
    std::fs::write(&conf, &original).unwrap();
    let inst = installer(&t);
    let entry = inst.entry().clone();
    let _w = Watcher::start(inst);
    assert!(wait_until(Duration::from_secs(3), || !conf.exists()
        && chained_in(&list, &entry))
    .is_some());
    std::fs::write(&conf, &original).unwrap();
    assert!(wait_until(Duration::from_secs(3), || !conf.exists()
        && chained_in(&list, &entry))
    .is_some());
}

#[test]
fn unparsable_conflist_is_a_clear_error_and_left_alone() {
    let t = TempDir::new("bad");
    let bad = t.conf().join("00-broken.conflist");
    let garbage = b"{\"cniVersion\": \"1.0.0\", \"plugins\": [ {\"type\": \"bridge\"";
    std::fs::write(&bad, garbage).unwrap();
    std::fs::copy(
        Path::new(FIXTURES).join("10-flannel.conflist"),
        t.conf().join("10-flannel.conflist"),
    )
    .unwrap();
    let inst = installer(&t);
    let err = inst.reconcile().unwrap_err();
    assert!(matches!(err, InstallError::ParseConflist { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("00-broken.conflist") && text.contains("left unchanged"),
        "{text}"
    );
    assert_eq!(std::fs::read(&bad).unwrap(), garbage);

    // Valid JSON that the runtime would reject is refused the same way.
    std::fs::write(&bad, br#"{"name": "x", "plugins": []}"#).unwrap();
    let err = inst.reconcile().unwrap_err();
    assert!(err.to_string().contains("plugins is empty"), "{err}");
    std::fs::write(&bad, br#"{"name": "x"}"#).unwrap();
    let err = inst.reconcile().unwrap_err();
    assert!(
        matches!(err, InstallError::InvalidConflist { .. }),
        "{err:?}"
    );
    // The later, valid file was not touched either.
    assert_eq!(
        std::fs::read(t.conf().join("10-flannel.conflist")).unwrap(),
        std::fs::read(Path::new(FIXTURES).join("10-flannel.conflist")).unwrap()
    );
}

#[test]
fn empty_conf_dir_and_bad_plugin_config_are_errors() {
    let t = TempDir::new("empty");
    let err = installer(&t).reconcile().unwrap_err();
    assert!(matches!(err, InstallError::NoConflist { .. }), "{err:?}");
    let err = Installer::new(options(&t, &json!({"type": "bridge"})))
        .err()
        .unwrap();
    assert!(err.to_string().contains("plugin.json"), "{err}");
    std::fs::write(t.0.join("broken.json"), "{").unwrap();
    let mut o = options(&t, &json!({}));
    o.plugin_config = t.0.join("broken.json");
    assert!(matches!(
        Installer::new(o),
        Err(InstallError::ParsePluginConfig { .. })
    ));
}

#[test]
fn uninstall_removes_entry_and_binary() {
    let t = TempDir::new("uninstall");
    let path = t.conf().join("10-containerd-net.conflist");
    std::fs::copy(
        Path::new(FIXTURES).join("10-containerd-net.conflist"),
        &path,
    )
    .unwrap();
    let inst = installer(&t);
    inst.install_binary().unwrap();
    inst.reconcile().unwrap();
    inst.uninstall().unwrap();
    assert_eq!(
        read_json(&path),
        read_json(&Path::new(FIXTURES).join("10-containerd-net.conflist"))
    );
    assert!(!t.0.join("bin/egress-guard").exists());
    assert!(!inst.check().unwrap());
    inst.uninstall().unwrap();
}

#[test]
fn kubeconfig_is_written_and_follows_token_rotation() {
    let t = TempDir::new("kubeconfig");
    let sa = service_account(&t);
    let mut cfg = plugin_config();
    cfg["kubeconfig"] = json!("/etc/cni/net.d/egress-guard.kubeconfig");
    let mut o = options(&t, &cfg);
    o.api_server = Some("https://10.96.0.1:443".to_string());
    let inst = Installer::new(o).unwrap();
    let dest = t.0.join("host/etc/cni/net.d/egress-guard.kubeconfig");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    assert!(inst.sync_kubeconfig().unwrap());
    assert_eq!(std::fs::metadata(&dest).unwrap().mode() & 0o777, 0o600);
    let kc = read_json(&dest);
    assert_eq!(kc["users"][0]["user"]["token"], "token-1");
    assert_eq!(
        kc["clusters"][0]["cluster"]["server"],
        "https://10.96.0.1:443"
    );
    assert!(
        !inst.sync_kubeconfig().unwrap(),
        "unchanged token: no write"
    );
    std::fs::write(sa.join("token"), "token-2").unwrap();
    assert!(inst.sync_kubeconfig().unwrap());
    assert_eq!(read_json(&dest)["users"][0]["user"]["token"], "token-2");
    // The file is a kubeconfig our own client can load.
    let client =
        egress_guard::kube::Client::from_kubeconfig(&dest, Duration::from_secs(1)).unwrap();
    assert_eq!(client.server(), "https://10.96.0.1:443");
    // Uninstalling removes it with the entry and the binary: its token would be revoked.
    std::fs::copy(
        Path::new(FIXTURES).join("10-kindnet.conflist"),
        t.conf().join("10-kindnet.conflist"),
    )
    .unwrap();
    inst.install_binary().unwrap();
    inst.reconcile().unwrap();
    inst.uninstall().unwrap();
    assert!(!dest.exists(), "kubeconfig left behind");
    assert!(!t.0.join("bin/egress-guard").exists());
    assert_eq!(
        read_json(&t.conf().join("10-kindnet.conflist")),
        read_json(&Path::new(FIXTURES).join("10-kindnet.conflist"))
    );
}

#[test]
fn flags_parse() {
    let args: Vec<String> = [
        "--cni-conf-dir=/a",
        "--cni-bin-dir",
        "/b",
        "--uninstall-on-exit",
        "--node-name",
        "n1",
        "--check",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let o = Options::parse(&args).unwrap();
    assert_eq!(o.cni_conf_dir, Path::new("/a"));
    assert_eq!(o.cni_bin_dir, Path::new("/b"));
    assert!(o.uninstall_on_exit);
    assert_eq!(o.node_name.as_deref(), Some("n1"));
    assert!(Options::parse(&["--bogus".to_string()]).is_err());
    assert!(Options::parse(&["--cni-bin-dir".to_string()]).is_err());
}

/// Mounts a tmpfs, fills it, remounts it read-only; unmounts on drop.
struct RoMount(PathBuf);

impl RoMount {
    fn new(dir: &Path, fixture: &str) -> Result<RoMount, String> {
        let run = |args: &[&str]| -> Result<(), String> {
            let out = std::process::Command::new("mount")
                .args(args)
                .output()
                .map_err(|e| format!("mount: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
            }
        };
        let d = dir.to_str().unwrap();
        run(&["-t", "tmpfs", "-o", "size=1m", "eg-test", d])?;
        let m = RoMount(dir.to_path_buf());
        std::fs::copy(Path::new(FIXTURES).join(fixture), dir.join(fixture))
            .map_err(|e| e.to_string())?;
        run(&["-o", "remount,ro", d])?;
        Ok(m)
    }
}

impl Drop for RoMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn read_only_conf_dir_is_a_clear_error() {
    let t = TempDir::new("ro");
    let _m = match RoMount::new(&t.conf(), "10-kindnet.conflist") {
        Ok(m) => m,
        Err(reason) => {
            common::skip_optional(
                "read_only_conf_dir_is_a_clear_error",
                &format!("cannot mount a read-only tmpfs: {reason}"),
            );
            return;
        }
    };
    let path = t.conf().join("10-kindnet.conflist");
    let before = std::fs::read(&path).unwrap();
    let err = installer(&t).reconcile().unwrap_err();
    assert!(matches!(err, InstallError::Write { .. }), "{err:?}");
    let chain = egress_guard::install::error_chain(&err);
    assert!(
        chain.contains("10-kindnet.conflist") && chain.contains("Read-only"),
        "{chain}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

/// Publishes `config` as the kubelet publishes a ConfigMap volume: the file is a symlink through
/// `..data`, and an update is a new timestamped directory swapped in by renaming a symlink.
fn publish_configmap(dir: &Path, generation: usize, config: &Value) {
    let stamp = format!("..2026_12_04_00_00_{generation:02}.000000000");
    std::fs::create_dir_all(dir.join(&stamp)).unwrap();
    std::fs::write(
        dir.join(&stamp).join("plugin.json"),
        serde_json::to_vec(config).unwrap(),
    )
    .unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("plugin.json");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/plugin.json", &link).unwrap();
    }
}

/// `egress-guard install --check` on `t`'s dirs, as the readiness probe runs it: exit code
/// and stdout.
fn install_check(t: &TempDir) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_egress-guard"))
        .args(["install", "--check", "--cni-conf-dir"])
        .arg(t.conf())
        .arg("--cni-bin-dir")
        .arg(t.0.join("bin"))
        .arg("--plugin-config")
        .arg(t.0.join("plugin.json"))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn an_invalid_plugin_config_is_never_chained_and_readiness_says_why() {
    let cases: &[(Value, &str)] = &[
        (
            json!({"defaultMode": "enforced"}),
            "\"defaultMode\" has value \"enforced\"",
        ),
        (
            json!({"enforceNamespace": ["model-serving"], "defaultmode": "enforce"}),
            "did you mean \"",
        ),
        (
            json!({"networks": {"dns": ["10.96.0.10 udp 0"]}}),
            "networks.dns[0]",
        ),
    ];
    for (config, needle) in cases {
        let t = TempDir::new("invalid");
        let path = t.conf().join("10-kindnet.conflist");
        copy_fixture("10-kindnet.conflist", &path);
        let before = std::fs::read(&path).unwrap();
        let err = Installer::new(options(&t, config)).err().expect("refused");
        let text = egress_guard::install::error_chain(&err);
        assert!(
            text.contains(needle) && text.contains("plugin.json") && text.contains("not chained"),
            "{config}: {text}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before, "{config}");
        // `install --check` prints the reason and fails.
        let (code, stdout) = install_check(&t);
        assert_eq!(code, Some(1), "{stdout}");
        assert!(stdout.contains(needle), "{config}: {stdout}");
    }
}

#[test]
fn check_names_what_is_not_ready() {
    let t = TempDir::new("check");
    let inst = installer(&t);
    let reason = inst.not_ready_reason().unwrap().unwrap();
    assert!(reason.contains("no network configuration"), "{reason}");
    let path = t.conf().join("10-kindnet.conflist");
    copy_fixture("10-kindnet.conflist", &path);
    let reason = inst.not_ready_reason().unwrap().unwrap();
    assert!(reason.contains("has no egress-guard entry"), "{reason}");
    inst.reconcile().unwrap();
    let reason = inst.not_ready_reason().unwrap().unwrap();
    assert!(reason.contains("missing or not executable"), "{reason}");
    inst.install_binary().unwrap();
    assert_eq!(inst.not_ready_reason().unwrap(), None);
    // A changed plugin config that is not chained yet is named.
    let changed = Installer::new(options(&t, &json!({"defaultMode": "audit"}))).unwrap();
    let reason = changed.not_ready_reason().unwrap().unwrap();
    assert!(
        reason.contains("differs from the plugin config"),
        "{reason}"
    );
    let (code, stdout) = install_check(&t);
    assert_eq!(code, Some(1));
    assert!(
        stdout.starts_with("not ready: ") && stdout.contains("differs"),
        "{stdout}"
    );
}

#[test]
fn watch_follows_a_configmap_update_and_keeps_the_last_valid_entry() {
    let t = TempDir::new("configmap");
    let path = t.conf().join("10-kindnet.conflist");
    copy_fixture("10-kindnet.conflist", &path);
    let cm = t.0.join("configmap");
    std::fs::create_dir_all(&cm).unwrap();
    publish_configmap(&cm, 1, &plugin_config());
    let mut o = options(&t, &plugin_config());
    o.plugin_config = cm.join("plugin.json");
    let inst = Installer::new(o.clone()).unwrap();
    let first = inst.entry().clone();
    let _w = Watcher::start(inst);
    assert!(wait_until(Duration::from_secs(5), || chained_in(&path, &first)).is_some());

    // A valid update: the chained entry follows.
    let mut audit = plugin_config();
    audit["defaultMode"] = json!("audit");
    publish_configmap(&cm, 2, &audit);
    let second = Installer::new(o.clone()).unwrap().entry().clone();
    assert_eq!(second["defaultMode"], "audit");
    let took = wait_until(Duration::from_secs(5), || chained_in(&path, &second));
    assert!(took.is_some_and(|d| d < Duration::from_secs(2)), "{took:?}");

    // An invalid update: the entry chained before stays, and readiness fails naming the field.
    publish_configmap(&cm, 3, &json!({"defaultMode": "enforced"}));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(chained_in(&path, &second));
    let err = Installer::new(o.clone()).err().expect("invalid");
    assert!(err.to_string().contains("defaultMode"), "{err}");

    // Fixed again: chained again.
    let mut enforce = plugin_config();
    enforce["defaultMode"] = json!("enforce");
    publish_configmap(&cm, 4, &enforce);
    let fourth = Installer::new(o).unwrap().entry().clone();
    assert!(wait_until(Duration::from_secs(5), || chained_in(&path, &fourth)).is_some());
}

/// Multus's configuration as its thin plugin generates it: the cluster network copied inline.
fn multus_inline(delegate: &Value) -> Value {
    json!({
        "cniVersion": "0.3.1",
        "name": "multus-cni-network",
        "type": "multus",
        "capabilities": {"portMappings": true},
        "kubeconfig": "/etc/cni/net.d/multus.d/multus.kubeconfig",
        "delegates": [delegate]
    })
}

/// A conf dir with kindnet and calico beside a Multus file `multus` (written as 00-multus.conf).
fn multus_dir(tag: &str, multus: &Value) -> TempDir {
    let t = TempDir::new(tag);
    for f in ["10-kindnet.conflist", "10-calico.conflist"] {
        let to = if f == "10-calico.conflist" {
            "20-calico.conflist"
        } else {
            f
        };
        std::fs::copy(Path::new(FIXTURES).join(f), t.conf().join(to)).unwrap();
    }
    std::fs::write(
        t.conf().join("00-multus.conf"),
        serde_json::to_vec_pretty(multus).unwrap(),
    )
    .unwrap();
    t
}

#[test]
fn with_multus_the_entry_goes_into_the_cluster_network() {
    let kindnet = read_json(&Path::new(FIXTURES).join("10-kindnet.conflist"));
    let calico_name = read_json(&Path::new(FIXTURES).join("10-calico.conflist"))["name"].clone();
    let thick = |extra: Value| {
        let mut m = json!({"cniVersion": "0.3.1", "name": "multus-cni-network",
            "type": "multus-shim", "socketDir": "/host/run/multus/"});
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        m
    };
    let cases: &[(&str, Value, &str)] = &[
        (
            "path",
            thick(json!({"clusterNetwork": "/host/etc/cni/net.d/20-calico.conflist"})),
            "20-calico.conflist",
        ),
        (
            "name",
            thick(json!({"clusterNetwork": calico_name})),
            "20-calico.conflist",
        ),
        ("next", thick(json!({})), "10-kindnet.conflist"),
        ("inline", multus_inline(&kindnet), "10-kindnet.conflist"),
    ];
    for (tag, multus, want) in cases {
        let t = multus_dir(tag, multus);
        let inst = installer(&t);
        inst.install_binary().unwrap();
        let multus_before = std::fs::read(t.conf().join("00-multus.conf")).unwrap();
        let change = inst.reconcile().unwrap();
        assert_eq!(change, ChainChange::Chained(t.conf().join(want)), "{tag}");
        assert!(chained_in(&t.conf().join(want), inst.entry()), "{tag}");
        assert_eq!(
            std::fs::read(t.conf().join("00-multus.conf")).unwrap(),
            multus_before,
            "{tag}: Multus's own file is never written"
        );
        for other in ["10-kindnet.conflist", "20-calico.conflist"] {
            if other != *want {
                assert!(!chained_in(&t.conf().join(other), inst.entry()), "{tag}");
            }
        }
        if *tag == "inline" {
            // Ready only once Multus has copied the chained delegate into its own file.
            let reason = inst.not_ready_reason().unwrap().unwrap();
            assert!(
                reason.contains("inline") && reason.contains("auto"),
                "{reason}"
            );
            let regenerated = multus_inline(&read_json(&t.conf().join(want)));
            std::fs::write(
                t.conf().join("00-multus.conf"),
                serde_json::to_vec(&regenerated).unwrap(),
            )
            .unwrap();
        }
        assert_eq!(inst.not_ready_reason().unwrap(), None, "{tag}");
        assert_eq!(
            inst.reconcile().unwrap(),
            ChainChange::Unchanged(t.conf().join(want))
        );
    }
}

#[test]
fn with_multus_an_unknown_cluster_network_is_refused_with_how_to_fix() {
    let mut orphan = read_json(&Path::new(FIXTURES).join("10-kindnet.conflist"));
    orphan["name"] = json!("not-in-this-dir");
    let cases: &[(Value, &str)] = &[
        (multus_inline(&orphan), "let Multus generate its config"),
        (
            json!({"cniVersion": "0.3.1", "name": "m", "type": "multus-shim",
                   "clusterNetwork": "/host/etc/cni/net.d/30-missing.conflist"}),
            "clusterNetwork \"/host/etc/cni/net.d/30-missing.conflist\" is no network configuration",
        ),
    ];
    for (multus, needle) in cases {
        let t = multus_dir("multus-bad", multus);
        let before: Vec<Vec<u8>> = [
            "00-multus.conf",
            "10-kindnet.conflist",
            "20-calico.conflist",
        ]
        .iter()
        .map(|f| std::fs::read(t.conf().join(f)).unwrap())
        .collect();
        let inst = installer(&t);
        let err = inst.reconcile().unwrap_err().to_string();
        assert!(
            err.contains("00-multus.conf is Multus's configuration") && err.contains(needle),
            "{err}"
        );
        let reason = inst.not_ready_reason().unwrap().unwrap();
        assert!(reason.contains(needle), "{reason}");
        let after: Vec<Vec<u8>> = [
            "00-multus.conf",
            "10-kindnet.conflist",
            "20-calico.conflist",
        ]
        .iter()
        .map(|f| std::fs::read(t.conf().join(f)).unwrap())
        .collect();
        assert_eq!(before, after, "nothing is written");
    }
}

#[test]
fn an_entry_left_in_a_conflist_no_longer_chained_is_removed() {
    let t = TempDir::new("stale");
    let kindnet = t.conf().join("10-kindnet.conflist");
    copy_fixture("10-kindnet.conflist", &kindnet);
    let inst = installer(&t);
    inst.install_binary().unwrap();
    inst.reconcile().unwrap();
    assert!(chained_in(&kindnet, inst.entry()));
    // Another CNI takes over with a file that sorts first.
    let cilium = t.conf().join("05-cilium.conflist");
    std::fs::copy(Path::new(FIXTURES).join("05-cilium.conflist"), &cilium).unwrap();
    let reason = inst.not_ready_reason().unwrap().unwrap();
    assert!(
        reason.contains("05-cilium.conflist has no egress-guard entry"),
        "{reason}"
    );
    assert_eq!(
        inst.reconcile().unwrap(),
        ChainChange::Chained(cilium.clone())
    );
    assert!(chained_in(&cilium, inst.entry()));
    let left = read_json(&kindnet);
    assert_eq!(
        left,
        read_json(&Path::new(FIXTURES).join("10-kindnet.conflist"))
    );
    assert_eq!(inst.not_ready_reason().unwrap(), None);
    // A stale entry put back by hand is reported, then removed.
    let mut hand = left.clone();
    hand["plugins"]
        .as_array_mut()
        .unwrap()
        .push(Value::Object(inst.entry().clone()));
    std::fs::write(&kindnet, serde_json::to_vec(&hand).unwrap()).unwrap();
    let reason = inst.not_ready_reason().unwrap().unwrap();
    assert!(
        reason.contains("10-kindnet.conflist still holds a stale"),
        "{reason}"
    );
    assert_eq!(inst.reconcile().unwrap(), ChainChange::Unchanged(cilium));
    assert_eq!(read_json(&kindnet), left);
}

#[test]
fn uninstall_on_exit_removes_the_entry_kubeconfig_and_binary_at_sigterm() {
    let t = TempDir::new("on-exit");
    let path = t.conf().join("10-kindnet.conflist");
    copy_fixture("10-kindnet.conflist", &path);
    let sa = service_account(&t);
    let mut cfg = plugin_config();
    cfg["kubeconfig"] = json!("/etc/cni/net.d/egress-guard.kubeconfig");
    let o = options(&t, &cfg);
    let kubeconfig = t.0.join("host/etc/cni/net.d/egress-guard.kubeconfig");
    std::fs::create_dir_all(kubeconfig.parent().unwrap()).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_egress-guard"))
        .arg("install")
        .arg("--uninstall-on-exit")
        .arg(format!("--cni-conf-dir={}", t.conf().display()))
        .arg(format!("--cni-bin-dir={}", t.0.join("bin").display()))
        .arg(format!("--plugin-config={}", o.plugin_config.display()))
        .arg(format!("--binary={}", o.binary.display()))
        .arg(format!("--host-root={}", o.host_root.display()))
        .arg(format!("--service-account-dir={}", sa.display()))
        .arg("--api-server=https://10.96.0.1:443")
        .env_remove("NODE_NAME")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let entry = Installer::new(o).unwrap().entry().clone();
    let chained = wait_until(Duration::from_secs(10), || {
        chained_in(&path, &entry) && kubeconfig.exists() && t.0.join("bin/egress-guard").exists()
    });
    if chained.is_none() {
        let _ = child.kill();
        panic!("the installer did not chain within 10 s");
    }
    // SAFETY: kill(2) on the PID of a child this test spawned and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(
        read_json(&path),
        read_json(&Path::new(FIXTURES).join("10-kindnet.conflist"))
    );
    assert!(!kubeconfig.exists(), "kubeconfig left behind");
    assert!(!t.0.join("bin/egress-guard").exists(), "binary left behind");
}

#[test]
fn the_deployed_plugin_config_passes_the_plugin_parser() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/configmap.yaml"
    ))
    .unwrap();
    let cm: Value = serde_norway::from_str(&text).unwrap();
    let plugin = cm["data"]["plugin.json"].as_str().expect("plugin.json");
    let t = TempDir::new("deployed");
    let config: Value = serde_json::from_str(plugin).unwrap();
    let inst = Installer::new(options(&t, &config))
        .unwrap_or_else(|e| panic!("{}", egress_guard::install::error_chain(&e)));
    let entry = serde_json::to_vec(inst.entry()).unwrap();
    let conf = egress_guard::cni::NetConf::parse(&entry).unwrap();
    conf.check_annotation_source().unwrap();
}

#[test]
fn the_readmes_uninstall_patch_turns_on_uninstall_on_exit_for_the_installer() {
    use serde::Deserialize;
    let root = env!("CARGO_MANIFEST_DIR");
    let read = |p: &str| std::fs::read_to_string(format!("{root}/{p}")).unwrap();
    // The JSON patch of the README's uninstall steps, applied as the API server would.
    let readme = read("README.md");
    let patch = readme
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("-p '")
                .and_then(|p| p.strip_suffix('\''))
        })
        .expect("the uninstall patch in README.md");
    let ops: Value = serde_json::from_str(patch).unwrap();
    let op = &ops[0];
    assert_eq!(
        (ops.as_array().unwrap().len(), &op["op"]),
        (1, &json!("add"))
    );
    let path = op["path"].as_str().unwrap();
    let container: usize = path
        .strip_prefix("/spec/template/spec/containers/")
        .and_then(|p| p.strip_suffix("/args/-"))
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("unexpected path {path}"));
    let text = read("deploy/daemonset.yaml");
    let ds = serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .find(|v| v["kind"] == "DaemonSet")
        .unwrap();
    let c = &ds["spec"]["template"]["spec"]["containers"][container];
    assert_eq!(c["command"], json!(["/egress-guard", "install"]), "{c}");
    let mut args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(
        !args.iter().any(|a| a == "--uninstall-on-exit"),
        "off by default"
    );
    args.push(op["value"].as_str().unwrap().to_string());
    assert!(Options::parse(&args).unwrap().uninstall_on_exit);
}
