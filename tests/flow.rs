//! The verb flow against the recording fake kernel (no root): placement choice, stale-table
//! replacement, fail-closed errors (nothing installed), API fallback, DEL, CHECK and GC.
#![allow(clippy::unwrap_used)]

use egress_guard::kernel::Transaction;
use std::path::{Path, PathBuf};

use egress_guard::cni::plugin::{run, Invocation, VerbOutcome};
use egress_guard::cni::Env;
use egress_guard::kernel::fake::RecordingKernel;
use egress_guard::kernel::{HostPeer, Kernel, TableRef, Where};
use egress_guard::ruleset::Family;
use serde_json::{json, Value};

const NETNS: &str = "/var/run/netns/pod-a";

/// One state dir per test (each test runs on its own thread) and per run.
/// The table egress-guard names for container `cid`'s `eth0`.
fn tn(cid: &str) -> String {
    egress_guard::ruleset::table_name(cid, "eth0")
}

/// The name of `cid`'s state file without `.json`: its table's name without the prefix.
fn key(cid: &str) -> String {
    tn(cid)["egress_guard_".len()..].to_string()
}

/// What `RecordingKernel::table_names` lists when the host holds the tables of `cids`.
fn host_tables(cids: &[&str]) -> Vec<String> {
    cids.iter()
        .map(|c| format!("host netdev {}", tn(c)))
        .collect()
}

/// Whether a recorded install call deletes `stale`'s table and creates `new`'s.
fn replaces(call: &str, stale: &str, new: &str) -> bool {
    call.contains(&format!("replace=[{}]", tn(stale)))
        && call.contains(&format!("table={}", tn(new)))
}

fn state_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "flow-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn conf(annotations: Option<Value>, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0", "name": "k8s", "type": "egress-guard",
        "enforceNamespaces": ["model-serving"],
        "networks": {"orchestrator": ["10.0.5.0/24 tcp 8443"]},
        "stateDir": state_dir(),
        "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "vethA"}, {"name": "eth0", "sandbox": NETNS}]}
    });
    if let Some(a) = annotations {
        c["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": a});
    }
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn env(cmd: &str, ns: &str) -> Env {
    Env {
        command: cmd.into(),
        container_id: Some("cid-a".into()),
        netns: Some(NETNS.into()),
        ifname: Some("eth0".into()),
        args: Some(format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME=llm-0")),
    }
}

fn no_api(_: &Path, _: &str, _: &str) -> Result<Vec<(String, String)>, String> {
    panic!("the API server must not be consulted")
}

fn invoke(k: &mut RecordingKernel, cmd: &str, ns: &str, c: &Value) -> VerbOutcome {
    let stdin = c.to_string().into_bytes();
    let e = env(cmd, ns);
    run(Invocation {
        kernel: k,
        env: &e,
        stdin: &stdin,
        fetch_pod: &no_api,
    })
}

/// ADD of the pod in `c` as another container.
fn add_as(k: &mut RecordingKernel, cid: &str, c: &Value) {
    let mut e = env("ADD", "ml");
    e.container_id = Some(cid.into());
    let stdin = c.to_string().into_bytes();
    run(Invocation {
        kernel: k,
        env: &e,
        stdin: &stdin,
        fetch_pod: &no_api,
    })
    .result
    .unwrap();
}

/// GC with `cid`/eth0 as the only valid attachment.
fn gc_keeping(k: &mut RecordingKernel, dir: &Path, cid: &str) {
    let gc = json!({"cniVersion": "1.1.0", "name": "k8s", "stateDir": dir, "cni.dev/valid-attachments": [{"containerID": cid, "ifname": "eth0"}]});
    let stdin = gc.to_string().into_bytes();
    let e = Env {
        command: "GC".into(),
        ..Default::default()
    };
    run(Invocation {
        kernel: k,
        env: &e,
        stdin: &stdin,
        fetch_pod: &no_api,
    })
    .result
    .unwrap();
}

fn kernel() -> RecordingKernel {
    let mut k = RecordingKernel::new();
    k.peers.insert(
        PathBuf::from(NETNS),
        HostPeer::Veth {
            name: "vethA".into(),
            index: 7,
        },
    );
    k
}

fn enforce() -> Value {
    json!({"egress-guard.io/mode": "enforce", "egress-guard.io/allow": "@orchestrator"})
}

#[test]
fn add_installs_host_table_and_prints_prev_result() {
    let mut k = kernel();
    let c = conf(Some(enforce()), json!({}));
    let out = invoke(&mut k, "ADD", "ml", &c);
    assert_eq!(out.result.unwrap().unwrap(), c["prevResult"]);
    assert_eq!(k.table_names(), host_tables(&["cid-a"]));
    let text = k
        .rendered(Where::Host, Family::Netdev, &tn("cid-a"))
        .unwrap();
    assert!(text.contains("device \"vethA\""), "{text}");
    assert_eq!(out.record.outcome, "ok");
    assert_eq!(out.record.placement.as_deref(), Some("host"));
    assert_eq!(out.record.entries, Some(1));
    assert!(state_dir().join(format!("{}.json", key("cid-a"))).exists());
}

#[test]
fn add_replaces_stale_table_on_same_device_in_one_transaction() {
    let mut k = kernel();
    // A table left by another container on the same device name.
    let mut other = kernel();
    let c = conf(Some(enforce()), json!({}));
    add_as(&mut other, "cid-dead", &c);
    let stale = other
        .read(TableRef::new(Where::Host, Family::Netdev, &tn("cid-dead")))
        .unwrap()
        .unwrap();
    assert!(stale.comment.contains("dev=vethA"));
    let table = egress_guard::ruleset::Table {
        family: Family::Netdev,
        name: tn("cid-dead"),
        comment: stale.comment.clone(),
        sets: vec![],
        chains: vec![],
    };
    k.install(Transaction::create(Where::Host, &table)).unwrap();
    k.calls.clear();
    invoke(&mut k, "ADD", "ml", &c).result.unwrap();
    assert_eq!(
        k.calls.iter().filter(|c| c.starts_with("install")).count(),
        1,
        "{:?}",
        k.calls
    );
    assert!(
        k.calls.iter().any(|c| replaces(c, "cid-dead", "cid-a")),
        "{:?}",
        k.calls
    );
    assert_eq!(k.table_names(), host_tables(&["cid-a"]));
}

#[test]
fn mode_off_installs_nothing_but_clears_stale_tables() {
    let mut k = kernel();
    let c = conf(Some(enforce()), json!({}));
    add_as(&mut k, "cid-dead", &c);
    let off = conf(Some(json!({})), json!({}));
    let out = invoke(&mut k, "ADD", "ml", &off);
    assert!(out.result.is_ok());
    assert!(k.table_names().is_empty(), "{:?}", k.table_names());
}

#[test]
fn kernel_failures_fail_closed_with_the_right_code() {
    for (errno, code) in [
        (libc::ENOBUFS, 11),
        (libc::EOPNOTSUPP, 101),
        (libc::EINVAL, 101),
    ] {
        let mut k = kernel();
        k.fail_install = Some(errno);
        let out = invoke(&mut k, "ADD", "ml", &conf(Some(enforce()), json!({})));
        let err = out.result.unwrap_err();
        assert_eq!(err.code, code, "errno {errno}: {err:?}");
        assert!(err.msg.contains("ml/llm-0"), "{}", err.msg);
        assert!(k.table_names().is_empty());
        assert_eq!(out.record.outcome, "error");
        assert_eq!(out.record.error_code, Some(code));
    }
}

#[test]
fn placement_follows_interface_kind_and_kernel() {
    // No host-side veth (macvlan): pod placement under auto, a netdev table on the pod's own
    // interface.
    let mut k = kernel();
    k.peers.insert(
        PathBuf::from(NETNS),
        HostPeer::None {
            kind: "macvlan".into(),
        },
    );
    invoke(&mut k, "ADD", "ml", &conf(Some(enforce()), json!({})))
        .result
        .unwrap();
    assert_eq!(
        k.table_names(),
        vec![format!("{NETNS} netdev {}", tn("cid-a"))]
    );
    // ...and an error when host placement is demanded.
    let mut k = kernel();
    k.peers.insert(
        PathBuf::from(NETNS),
        HostPeer::None {
            kind: "macvlan".into(),
        },
    );
    let err = invoke(
        &mut k,
        "ADD",
        "ml",
        &conf(Some(enforce()), json!({"placement": "host"})),
    )
    .result
    .unwrap_err();
    assert_eq!(err.code, 102);
    assert!(err.msg.contains("macvlan"));
    // A kernel without the netdev egress hook: pod placement (inet) under auto, error under
    // host.
    let mut k = kernel();
    k.netdev_egress = false;
    invoke(&mut k, "ADD", "ml", &conf(Some(enforce()), json!({})))
        .result
        .unwrap();
    assert!(k.table_names()[0].contains("inet"));
    let mut k = kernel();
    k.netdev_egress = false;
    assert_eq!(
        invoke(
            &mut k,
            "ADD",
            "ml",
            &conf(Some(enforce()), json!({"placement": "host"}))
        )
        .result
        .unwrap_err()
        .code,
        101
    );
    // placement pod with a veth: in the pod netns, on the pod's interface; the host-side
    // veth is still looked up (stale host tables on it are removed, its bridge's gateway MAC
    // pinned).
    let mut k = kernel();
    invoke(
        &mut k,
        "ADD",
        "ml",
        &conf(Some(enforce()), json!({"placement": "pod"})),
    )
    .result
    .unwrap();
    assert_eq!(
        k.table_names(),
        vec![format!("{NETNS} netdev {}", tn("cid-a"))]
    );
    assert!(
        k.calls.iter().any(|c| c.starts_with("peer")),
        "{:?}",
        k.calls
    );
    // ...and a host side that cannot be found does not stop placement pod (it needs none).
    let mut k = kernel();
    k.peers.clear();
    invoke(
        &mut k,
        "ADD",
        "ml",
        &conf(Some(enforce()), json!({"placement": "pod"})),
    )
    .result
    .unwrap();
    assert_eq!(
        k.table_names(),
        vec![format!("{NETNS} netdev {}", tn("cid-a"))]
    );
}

#[test]
fn missing_interface_fails_closed() {
    let mut k = RecordingKernel::new();
    let err = invoke(&mut k, "ADD", "ml", &conf(Some(enforce()), json!({})))
        .result
        .unwrap_err();
    assert_eq!(err.code, 102, "{err:?}");
    assert!(err.msg.contains("eth0"));
    assert!(k.table_names().is_empty());
}

#[test]
fn api_fallback_is_used_only_without_runtime_annotations_and_fails_closed() {
    let stdin = conf(None, json!({"kubeconfig": "/etc/kc"}))
        .to_string()
        .into_bytes();
    let ok = |_: &Path, ns: &str, name: &str| -> Result<Vec<(String, String)>, String> {
        assert_eq!((ns, name), ("ml", "llm-0"));
        Ok(vec![("egress-guard.io/mode".into(), "enforce".into())])
    };
    let mut k = kernel();
    let e = env("ADD", "ml");
    run(Invocation {
        kernel: &mut k,
        env: &e,
        stdin: &stdin,
        fetch_pod: &ok,
    })
    .result
    .unwrap();
    assert_eq!(
        k.table_names().len(),
        1,
        "annotations from the API server are enforced"
    );

    let down = |_: &Path, _: &str, _: &str| -> Result<Vec<(String, String)>, String> {
        Err("connection refused".into())
    };
    let mut k = kernel();
    let e = env("ADD", "model-serving");
    let err = run(Invocation {
        kernel: &mut k,
        env: &e,
        stdin: &stdin,
        fetch_pod: &down,
    })
    .result
    .unwrap_err();
    assert_eq!(err.code, 104);
    assert!(err.msg.contains("connection refused"));
    assert!(k.table_names().is_empty());
    // An unenforced namespace with defaultMode off proceeds unguarded (and logs a warning).
    let mut k = kernel();
    let e = env("ADD", "ml");
    assert!(run(Invocation {
        kernel: &mut k,
        env: &e,
        stdin: &stdin,
        fetch_pod: &down
    })
    .result
    .is_ok());
    // ...but not when the default is to guard.
    let strict = conf(
        None,
        json!({"kubeconfig": "/etc/kc", "defaultMode": "audit"}),
    )
    .to_string()
    .into_bytes();
    let mut k = kernel();
    assert_eq!(
        run(Invocation {
            kernel: &mut k,
            env: &e,
            stdin: &strict,
            fetch_pod: &down
        })
        .result
        .unwrap_err()
        .code,
        104
    );
}

#[test]
fn check_reports_tampering_and_del_cleans_up() {
    let mut k = kernel();
    let c = conf(Some(enforce()), json!({}));
    invoke(&mut k, "ADD", "ml", &c).result.unwrap();
    assert!(invoke(&mut k, "CHECK", "ml", &c).result.is_ok());
    k.tamper(Where::Host, Family::Netdev, &tn("cid-a"), |s| {
        s.chains[0].rules.pop();
    });
    let err = invoke(&mut k, "CHECK", "ml", &c).result.unwrap_err();
    assert_eq!(err.code, 103);
    assert!(err.msg.contains("from_pod"), "{}", err.msg);
    // A policy change is drift too.
    invoke(&mut k, "ADD", "ml", &c).result.unwrap();
    let wider = conf(
        Some(json!({"egress-guard.io/mode": "enforce", "egress-guard.io/allow": "0.0.0.0/0"})),
        json!({}),
    );
    assert_eq!(
        invoke(&mut k, "CHECK", "ml", &wider)
            .result
            .unwrap_err()
            .code,
        103
    );
    assert!(invoke(&mut k, "DEL", "ml", &c).result.is_ok());
    assert!(k.table_names().is_empty());
    assert!(!state_dir().join(format!("{}.json", key("cid-a"))).exists());
    assert!(invoke(&mut k, "DEL", "ml", &c).result.is_ok(), "second DEL");
}

#[test]
fn gc_removes_only_invalid_attachments() {
    let mut k = kernel();
    let c = conf(Some(enforce()), json!({}));
    invoke(&mut k, "ADD", "ml", &c).result.unwrap();
    add_as(&mut k, "cid-b", &c);
    gc_keeping(&mut k, &state_dir(), "cid-b");
    assert_eq!(k.table_names(), host_tables(&["cid-b"]));
}

#[test]
fn version_and_unknown_command() {
    let mut k = kernel();
    let e = Env {
        command: "VERSION".into(),
        ..Default::default()
    };
    let out = run(Invocation {
        kernel: &mut k,
        env: &e,
        stdin: b"{\"cniVersion\":\"1.0.0\"}",
        fetch_pod: &no_api,
    });
    assert_eq!(out.result.unwrap().unwrap()["cniVersion"], "1.0.0");
    let e = Env {
        command: "FROB".into(),
        ..Default::default()
    };
    let out = run(Invocation {
        kernel: &mut k,
        env: &e,
        stdin: b"{}",
        fetch_pod: &no_api,
    });
    let err = out.result.unwrap_err();
    assert_eq!(err.code, 4);
    assert!(err.msg.contains("FROB"));
}

fn listed_tables(k: &RecordingKernel) -> bool {
    k.calls.iter().any(|c| c.starts_with("list host"))
}

#[test]
fn stale_table_is_found_through_the_device_index_without_listing_tables() {
    let mut k = kernel();
    let c = conf(Some(enforce()), json!({}));
    let dir = state_dir();
    // The first ADD on a node has no index yet: it lists the tables and builds the index.
    add_as(&mut k, "cid-dead", &c);
    assert!(listed_tables(&k), "{:?}", k.calls);
    assert!(dir.join("devices.complete").exists());
    assert!(dir
        .join(format!("devices/vethA/{}", tn("cid-dead")))
        .exists());

    // That pod dies without DEL; a new pod gets a veth of the same name.
    k.calls.clear();
    invoke(&mut k, "ADD", "ml", &c).result.unwrap();
    assert!(!listed_tables(&k), "listed every table: {:?}", k.calls);
    assert!(
        k.calls.iter().any(|c| replaces(c, "cid-dead", "cid-a")),
        "{:?}",
        k.calls
    );
    assert_eq!(k.table_names(), host_tables(&["cid-a"]));
    let entries: Vec<String> = std::fs::read_dir(dir.join("devices/vethA"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, vec![tn("cid-a")]);

    // DEL forgets the entry with the table.
    invoke(&mut k, "DEL", "ml", &c).result.unwrap();
    assert!(k.table_names().is_empty());
    assert!(!dir.join("devices/vethA").exists());
}

#[test]
fn add_with_a_complete_index_and_nothing_recorded_looks_nothing_up() {
    let mut k = kernel();
    let c = conf(Some(enforce()), json!({}));
    state_dir();
    invoke(&mut k, "ADD", "ml", &c).result.unwrap();
    invoke(&mut k, "DEL", "ml", &c).result.unwrap();
    // Every lookup by name costs the kernel a walk over all the node's tables.
    k.calls.clear();
    invoke(&mut k, "ADD", "ml", &c).result.unwrap();
    assert!(
        !listed_tables(&k) && !k.calls.iter().any(|c| c.starts_with("get host")),
        "{:?}",
        k.calls
    );
    assert_eq!(k.table_names(), host_tables(&["cid-a"]));
}

#[test]
fn repeated_add_replaces_its_own_table_the_index_recorded_elsewhere() {
    let mut k = kernel();
    let c = conf(Some(enforce()), json!({}));
    let dir = state_dir();
    invoke(&mut k, "ADD", "ml", &c).result.unwrap();
    // The index holds this pod's table under another device (as after a rename).
    let other = dir.join("devices/vethOther");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::rename(
        dir.join(format!("devices/vethA/{}", tn("cid-a"))),
        other.join(tn("cid-a")),
    )
    .unwrap();
    k.calls.clear();
    invoke(&mut k, "ADD", "ml", &c).result.unwrap();
    let installs: Vec<&String> = k
        .calls
        .iter()
        .filter(|c| c.starts_with("install"))
        .collect();
    assert_eq!(installs.len(), 2, "{:?}", k.calls);
    assert!(installs[0].contains("replace=[]"), "{:?}", k.calls);
    assert!(replaces(installs[1], "cid-a", "cid-a"), "{:?}", k.calls);
    assert_eq!(k.table_names(), host_tables(&["cid-a"]));
    assert!(dir.join(format!("devices/vethA/{}", tn("cid-a"))).exists());
}

#[test]
fn device_index_that_cannot_be_written_is_not_trusted() {
    let mut k = kernel();
    let c = conf(Some(enforce()), json!({}));
    let dir = state_dir();
    // A marker says "complete" but the index cannot be read or written.
    std::fs::write(dir.join("devices.complete"), b"").unwrap();
    std::fs::write(dir.join("devices"), b"not a directory").unwrap();
    // A stale table the index knows nothing about.
    let stale = egress_guard::ruleset::Table {
        family: Family::Netdev,
        name: tn("cid-dead"),
        comment: "egress-guard dev=vethA mode=enforce policy=0".into(),
        sets: vec![],
        chains: vec![],
    };
    k.install(Transaction::create(Where::Host, &stale)).unwrap();
    k.calls.clear();
    invoke(&mut k, "ADD", "ml", &c).result.unwrap();
    assert!(listed_tables(&k), "{:?}", k.calls);
    assert_eq!(k.table_names(), host_tables(&["cid-a"]));
    assert!(
        !dir.join("devices.complete").exists(),
        "an index that failed to record a table must not be marked complete"
    );
    // And the next ADD lists again.
    k.calls.clear();
    add_as(&mut k, "cid-b", &c);
    assert!(listed_tables(&k), "{:?}", k.calls);
}

#[test]
fn gc_prunes_index_entries_of_gone_tables_but_not_fresh_ones() {
    let mut k = kernel();
    let dir = state_dir();
    let c = conf(Some(enforce()), json!({}));
    invoke(&mut k, "ADD", "ml", &c).result.unwrap();
    let old = dir.join("devices/vethOld");
    std::fs::create_dir_all(&old).unwrap();
    let gone = old.join("egress_guard_gone");
    let f = std::fs::File::create(&gone).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
    drop(f);
    // Recorded a moment ago by an ADD that has not installed its table yet.
    let fresh = dir.join("devices/vethNew/egress_guard_pending");
    std::fs::create_dir_all(fresh.parent().unwrap()).unwrap();
    std::fs::write(&fresh, b"").unwrap();

    gc_keeping(&mut k, &dir, "cid-a");
    assert!(!gone.exists(), "entry of a gone table survived GC");
    assert!(!old.exists());
    assert!(fresh.exists(), "a fresh entry was pruned");
    assert!(dir.join(format!("devices/vethA/{}", tn("cid-a"))).exists());
}

#[test]
fn add_fails_closed_when_the_device_index_can_neither_record_nor_be_distrusted() {
    let mut k = kernel();
    let c = conf(Some(enforce()), json!({}));
    let dir = state_dir();
    std::fs::write(dir.join("devices"), b"not a directory").unwrap();
    std::fs::create_dir_all(dir.join("devices.complete/x")).unwrap();
    let out = invoke(&mut k, "ADD", "ml", &c);
    let err = out.result.unwrap_err();
    assert_eq!(err.code, 5, "{}", err.msg);
    assert!(err.msg.contains("device index"), "{}", err.msg);
    assert!(k.table_names().is_empty(), "{:?}", k.table_names());
}

#[test]
fn add_never_replaces_a_table_of_another_container_under_the_same_name() {
    let mut k = kernel();
    let c = conf(Some(enforce()), json!({}));
    let dir = state_dir();
    // A table of this pod's name that belongs to another container (a hash collision), with
    // that container's state file, recorded under another device, so that the first ADD only
    // learns of it from EEXIST.
    let theirs = egress_guard::ruleset::Table {
        family: Family::Netdev,
        name: tn("cid-a"),
        comment: "egress-guard dev=vethOther mode=enforce policy=0 id=cid-z if=eth0".into(),
        sets: vec![],
        chains: vec![],
    };
    k.install(Transaction::create(Where::Host, &theirs))
        .unwrap();
    let state = dir.join(format!("{}.json", key("cid-a")));
    let their_state = json!({"container_id": "cid-z", "device": "vethOther"}).to_string();
    std::fs::write(&state, &their_state).unwrap();
    std::fs::create_dir_all(dir.join("devices/vethOther")).unwrap();
    std::fs::write(dir.join(format!("devices/vethOther/{}", tn("cid-a"))), b"").unwrap();
    std::fs::write(dir.join("devices.complete"), b"").unwrap();
    let intact = |k: &mut RecordingKernel| {
        let t = k
            .read(TableRef::new(Where::Host, Family::Netdev, &tn("cid-a")))
            .unwrap()
            .expect("the other container's table is gone");
        assert!(t.comment.contains("id=cid-z"), "{}", t.comment);
        assert_eq!(std::fs::read_to_string(&state).unwrap(), their_state);
        assert!(dir
            .join(format!("devices/vethOther/{}", tn("cid-a")))
            .exists());
    };
    let refused = |k: &mut RecordingKernel, what: &str| {
        let err = invoke(k, "ADD", "ml", &c).result.unwrap_err();
        assert!(
            err.msg.contains("cid-z") && err.msg.contains(&tn("cid-a")),
            "{what}: {}",
            err.msg
        );
    };
    refused(&mut k, "first ADD");
    intact(&mut k);
    // The retry finds the name in the index under this pod's device now; and without a
    // complete index ADD lists every table: neither takes the table either.
    refused(&mut k, "retried ADD");
    intact(&mut k);
    std::fs::remove_file(dir.join("devices.complete")).unwrap();
    refused(&mut k, "ADD listing tables");
    intact(&mut k);
    // The runtime's DEL after the failed ADD, and a pod asking for nothing, leave it alone.
    invoke(&mut k, "DEL", "ml", &c).result.unwrap();
    intact(&mut k);
    let off = conf(Some(json!({})), json!({}));
    invoke(&mut k, "ADD", "ml", &off).result.unwrap();
    intact(&mut k);
}

/// Turns the pod ADDed as `cid-a` into what a release that named tables after the container
/// ID left: the table and the state file under the old name.
fn make_legacy(k: &mut RecordingKernel, dir: &Path) -> String {
    let legacy = egress_guard::ruleset::legacy_table_name("cid-a", "eth0");
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{}.json", key("cid-a")))).unwrap())
            .unwrap();
    let policy = egress_guard::policy::Policy {
        mode: egress_guard::policy::Mode::Enforce,
        mode_source: egress_guard::policy::ModeSource::Annotation,
        entries: state["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| egress_guard::policy::parse_network_entry(e.as_str().unwrap()).unwrap())
            .collect(),
    };
    let target = egress_guard::ruleset::Target {
        container_id: "cid-a".into(),
        ifname: "eth0".into(),
        attach: egress_guard::ruleset::Attach::Host {
            device: "vethA".into(),
            pod: serde_json::from_value(state["pod_net"].clone()).unwrap(),
        },
        log: egress_guard::ruleset::DenyLog::new(100),
    };
    let table = egress_guard::ruleset::in_legacy_form(
        egress_guard::ruleset::compile(&policy, &target).unwrap(),
        &legacy,
    );
    k.install(Transaction::new(
        Where::Host,
        Family::Netdev,
        &[tn("cid-a")],
        Some(&table),
    ))
    .unwrap();
    let mut state = state;
    state["table"] = json!(legacy);
    std::fs::remove_file(dir.join(format!("{}.json", key("cid-a")))).unwrap();
    std::fs::write(dir.join("cid-a.json"), state.to_string()).unwrap();
    legacy
}

#[test]
fn del_check_and_gc_find_a_pod_added_under_the_legacy_table_name() {
    let mut k = kernel();
    let c = conf(Some(enforce()), json!({}));
    let dir = state_dir();
    invoke(&mut k, "ADD", "ml", &c).result.unwrap();
    let legacy = make_legacy(&mut k, &dir);
    assert_eq!(k.table_names(), vec![format!("host netdev {legacy}")]);

    // CHECK compares the old table as it was installed; tampering with it is still drift.
    invoke(&mut k, "CHECK", "ml", &c).result.unwrap();
    // GC keeps it for a valid attachment.
    gc_keeping(&mut k, &dir, "cid-a");
    assert_eq!(k.table_names(), vec![format!("host netdev {legacy}")]);
    assert!(dir.join("cid-a.json").exists());
    k.tamper(Where::Host, Family::Netdev, &legacy, |s| {
        s.chains[0].rules.pop();
    });
    assert_eq!(
        invoke(&mut k, "CHECK", "ml", &c).result.unwrap_err().code,
        103
    );

    // DEL removes it and its state file.
    invoke(&mut k, "DEL", "ml", &c).result.unwrap();
    assert!(k.table_names().is_empty(), "{:?}", k.table_names());
    assert!(!dir.join("cid-a.json").exists());
}

#[test]
fn gc_removes_legacy_tables_of_attachments_that_are_gone() {
    let mut k = kernel();
    let c = conf(Some(enforce()), json!({}));
    let dir = state_dir();
    invoke(&mut k, "ADD", "ml", &c).result.unwrap();
    make_legacy(&mut k, &dir);
    gc_keeping(&mut k, &dir, "cid-z");
    assert!(k.table_names().is_empty(), "{:?}", k.table_names());
    assert!(!dir.join("cid-a.json").exists());
}

#[test]
fn add_in_an_enforced_namespace_outside_the_ceiling_fails_closed_with_code_100() {
    for (allow, ceiling) in [
        ("0.0.0.0/0", json!({})),
        ("@orchestrator, ::/0", json!({})),
        ("169.254.169.254", json!({})),
        (
            "10.0.5.0/24 tcp 8443-8444",
            json!({"enforcedAllow": ["10.0.0.0/8 tcp 8443"]}),
        ),
        ("@orchestrator", json!({"enforcedAllow": []})),
    ] {
        let mut k = kernel();
        let c = conf(
            Some(json!({"egress-guard.io/mode": "off", "egress-guard.io/allow": allow})),
            ceiling.clone(),
        );
        let out = invoke(&mut k, "ADD", "model-serving", &c);
        let err = out.result.unwrap_err();
        assert_eq!(err.code, 100, "{allow} under {ceiling}: {err:?}");
        let entry = allow.rsplit(", ").next().unwrap();
        for needle in [
            "pod model-serving/llm-0",
            &format!("egress-guard.io/allow entry \"{entry}\""),
            "outside the operator ceiling for enforced namespace \"model-serving\"",
            "enforcedAllow",
        ] {
            assert!(err.msg.contains(needle), "lacks {needle:?}: {}", err.msg);
        }
        assert!(k.table_names().is_empty(), "{:?}", k.table_names());
        assert!(k.calls.is_empty(), "touched the kernel: {:?}", k.calls);
        assert_eq!(out.record.error_code, Some(100));
        // CHECK resolves the same policy and fails the same way.
        let check = invoke(&mut k, "CHECK", "model-serving", &c);
        assert_eq!(check.result.unwrap_err().code, 100);
        assert!(invoke(&mut k, "DEL", "model-serving", &c).result.is_ok());
    }
    let c = conf(
        Some(json!({"egress-guard.io/allow": "0.0.0.0/0"})),
        json!({}),
    );
    let err = invoke(&mut kernel(), "ADD", "model-serving", &c)
        .result
        .unwrap_err();
    assert_eq!(
        err.msg,
        "pod model-serving/llm-0 (container cid-a): egress-guard.io/allow entry \"0.0.0.0/0\" is \
         outside the operator ceiling for enforced namespace \"model-serving\" (enforcedAllow is \
         not set, so only @names from networks: @orchestrator); ask the node operator to add it \
         to enforcedAllow or to networks"
    );
}

#[test]
fn add_in_an_enforced_namespace_within_the_ceiling_succeeds() {
    for (allow, ceiling) in [
        ("@orchestrator", json!({})),
        ("@orchestrator", json!({"enforcedAllow": ["@orchestrator"]})),
        (
            "@orchestrator",
            json!({"enforcedAllow": ["10.0.0.0/8 tcp"]}),
        ),
        (
            "10.0.5.7 tcp 8443, @orchestrator",
            json!({"enforcedAllow": ["@orchestrator", "10.0.5.0/24 tcp 8000-8999"]}),
        ),
    ] {
        let mut k = kernel();
        let c = conf(
            Some(json!({"egress-guard.io/allow": allow})),
            ceiling.clone(),
        );
        let out = invoke(&mut k, "ADD", "model-serving", &c);
        assert_eq!(
            out.result.unwrap().unwrap(),
            c["prevResult"],
            "{allow} under {ceiling}"
        );
        assert_eq!(k.table_names(), host_tables(&["cid-a"]));
        assert_eq!(out.record.mode.as_deref(), Some("enforce"));
        assert!(invoke(&mut k, "CHECK", "model-serving", &c).result.is_ok());
        assert!(invoke(&mut k, "DEL", "model-serving", &c).result.is_ok());
    }
}

#[test]
fn the_ceiling_does_not_limit_pods_outside_enforced_namespaces() {
    for ceiling in [json!({}), json!({"enforcedAllow": []})] {
        let mut k = kernel();
        let c = conf(
            Some(
                json!({"egress-guard.io/mode": "enforce", "egress-guard.io/allow": "0.0.0.0/0, ::/0"}),
            ),
            ceiling,
        );
        invoke(&mut k, "ADD", "ml", &c).result.unwrap();
        assert_eq!(k.table_names(), host_tables(&["cid-a"]));
    }
}

#[test]
fn bad_enforced_allow_is_a_config_error_naming_the_field_and_value() {
    for (value, needle) in [
        (
            json!(["@orchestrator", "@nowhere"]),
            "\"enforcedAllow[1]\" has value \"@nowhere\"",
        ),
        (
            json!(["10.0.0.0/33"]),
            "\"enforcedAllow[0]\" has value \"10.0.0.0/33\"",
        ),
        (json!("@orchestrator"), "\"enforcedAllow\" must be an array"),
    ] {
        let mut k = kernel();
        let c = conf(Some(enforce()), json!({ "enforcedAllow": value }));
        let err = invoke(&mut k, "ADD", "model-serving", &c)
            .result
            .unwrap_err();
        assert_eq!(err.code, 7, "{err:?}");
        assert!(err.msg.contains(needle), "lacks {needle:?}: {}", err.msg);
        assert!(k.calls.is_empty(), "{:?}", k.calls);
    }
}

#[test]
fn conflist_typos_and_an_entry_blind_to_annotations_fail_add_with_code_7() {
    let cases: &[(Value, &str)] = &[
        (
            conf(Some(enforce()), json!({"enforceNamespace": ["model-serving"]})),
            "conflist field \"enforceNamespace\" is not a known field (did you mean \"enforceNamespaces\"?)",
        ),
        (
            conf(Some(enforce()), json!({"defaultmode": "enforce"})),
            "did you mean \"defaultMode\"?",
        ),
        // No capability, no kubeconfig, and the runtime passed nothing: mode enforce unseen.
        (
            conf(None, json!({})),
            "does not declare \"io.kubernetes.cri.pod-annotations\": true and no \"kubeconfig\"",
        ),
    ];
    for verb in ["ADD", "CHECK"] {
        for (c, needle) in cases {
            let mut k = kernel();
            let out = invoke(&mut k, verb, "ml", c);
            let err = out.result.expect_err(needle);
            assert_eq!(err.code, 7, "{verb} {c}: {}", err.msg);
            assert!(err.msg.contains(needle), "{verb}: {}", err.msg);
            assert!(
                k.calls.is_empty(),
                "the kernel is not touched: {:?}",
                k.calls
            );
        }
    }
    // The same entry with the capability declared is fine (an unannotated pod, mode off).
    let mut seeing = conf(None, json!({}));
    seeing["capabilities"] = json!({"io.kubernetes.cri.pod-annotations": true});
    let mut k = kernel();
    invoke(&mut k, "ADD", "ml", &seeing).result.unwrap();
}

#[test]
fn del_and_gc_clean_up_under_an_entry_with_an_unknown_field() {
    // A pod guarded under a valid entry; the entry then holds a field this release does not
    // know (chained by an older installer, or edited by hand). ADD refuses it, DEL still
    // removes what ADD installed, so the pod can be deleted.
    let mut k = kernel();
    let c = conf(Some(enforce()), json!({}));
    invoke(&mut k, "ADD", "ml", &c).result.unwrap();
    let mut odd = c.clone();
    odd["enforceNamespace"] = json!(["model-serving"]);
    assert_eq!(
        invoke(&mut k, "ADD", "ml", &odd).result.unwrap_err().code,
        7
    );
    assert!(!k.table_names().is_empty());
    invoke(&mut k, "DEL", "ml", &odd).result.unwrap();
    assert!(k.table_names().is_empty(), "DEL removed the table");
    assert!(!state_dir().join(format!("{}.json", key("cid-a"))).exists());
    // GC likewise.
    invoke(&mut k, "ADD", "ml", &c).result.unwrap();
    let gc = json!({"cniVersion": "1.1.0", "name": "k8s", "stateDir": state_dir(),
                    "enforceNamespace": [], "cni.dev/valid-attachments": []});
    let stdin = gc.to_string().into_bytes();
    let e = Env {
        command: "GC".into(),
        ..Default::default()
    };
    run(Invocation {
        kernel: &mut k,
        env: &e,
        stdin: &stdin,
        fetch_pod: &no_api,
    })
    .result
    .unwrap();
    assert!(k.table_names().is_empty(), "GC removed the table");
}
