//! Issue 7: egress-guard under hostile input, interruption and load.
//!
//! - bounded, deterministic fuzz loops (stable toolchain) over the annotation parser, stdin
//!   netconf + prevResult (through every verb), `CNI_ARGS` and the policy compiler checked
//!   against a reference evaluator; the same targets run unbounded with cargo-fuzz in `fuzz/`;
//! - every class of bad input: its CNI code and a message naming the value, nothing installed;
//! - (root) SIGKILL at random points of ADD and DEL: the table is complete or absent;
//! - (root) 64 concurrent ADD/CHECK/DEL loops: no error, no lost or foreign table, no leaked
//!   netlink socket or descriptor, exactly the live pods' tables at the end;
//! - (root) the veth vanishing during ADD, a hook the kernel refuses, `ENOBUFS` before and after
//!   the commit: a clean failure and no residue.
//!
//! `EGRESS_GUARD_SOAK_SECS=N` turns every loop into an N-second soak (per target / test);
//! `EGRESS_GUARD_FUZZ_SEED` changes the mutation seed. See docs/robustness.md.
#![allow(clippy::unwrap_used)]

use egress_guard_testkit::common;
#[path = "hostile/faulty.rs"]
mod faulty;
#[path = "hostile/mutate.rs"]
mod mutate;
#[path = "hostile/targets.rs"]
mod targets;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::node::Node;
use common::{can_run_root_tests, exec_in, plugin_bin, Netns};
use egress_guard::cni::plugin::{run, Invocation};
use egress_guard::cni::{CniError, Env};
use egress_guard::kernel::fake::RecordingKernel;
use egress_guard::kernel::netns::NetnsGuard;
use egress_guard::kernel::{HostPeer, Kernel, NetlinkKernel};
use serde_json::{json, Value};

use faulty::{Faults, Faulty};
use mutate::Rng;

/// Tests here count descriptors and sockets and load the machine: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn iterations(ci: usize) -> usize {
    std::env::var("EGRESS_GUARD_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ci)
}

// ============================================================================================
// Fuzz loops (no root)

#[test]
fn fuzz_annotation_parser() {
    let _s = serial();
    let dict: &[&[u8]] = &[
        b"egress-guard.io/allow=",
        b"egress-guard.io/mode=",
        b"Egress-Guard.io/mode=",
        b"egress-guard.io/",
        b"\n",
        b",",
        b" ",
        b"/",
        b"-",
        b"@",
        b"::",
        b"tcp",
        b"udp",
        b"sctp",
        b"icmp",
        b"icmpv6",
        b"any",
        b"enforce",
        b"\x00",
        b"\t",
        b"\xff",
        b"\xe2\x80\x8b",
    ];
    let n = mutate::fuzz(
        "annotations",
        targets::annotations,
        iterations(100_000),
        dict,
    );
    eprintln!("annotations: {n} inputs");
}

#[test]
fn fuzz_netconf_prev_result_and_verbs() {
    let _s = serial();
    let dict: &[&[u8]] = &[
        b"\"prevResult\":",
        b"\"runtimeConfig\":",
        b"\"io.kubernetes.cri.pod-annotations\":",
        b"\"egress-guard.io/allow\":",
        b"\"egress-guard.io/mode\":\"enforce\",",
        b"\"cni.dev/valid-attachments\":[{\"containerID\":\"fuzzcid0\",\"ifname\":\"eth0\"}]",
        b"\"networks\":",
        b"\"placement\":\"pod\",",
        b"\"kubeconfig\":\"/x\",",
        b"\"cniVersion\":\"1.1.0\",",
        b"\"cniVersion\":\"0.3.1\",",
        b"\"interfaces\":[{\"name\":\"vfuzz0\"}]",
        b"null",
        b"[]",
        b"{}",
        b"1e999",
        b"-0",
        b"\"\\u0000\"",
        b"\"\\ud800\"",
        b"\xff",
        b",",
        b":",
        b"\"",
    ];
    let n = mutate::fuzz("netconf", targets::netconf, iterations(40_000), dict);
    eprintln!("netconf: {n} inputs");
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("egress-guard-fuzz-state-{}", std::process::id())),
    );
}

#[test]
fn fuzz_cni_args() {
    let _s = serial();
    let dict: &[&[u8]] = &[
        b"K8S_POD_NAMESPACE=",
        b"K8S_POD_NAME=",
        b"K8S_POD_UID=",
        b"IgnoreUnknown=1",
        b";",
        b"=",
        b"\x00",
        b" ",
        b"/",
        b"..",
    ];
    let n = mutate::fuzz("cni_args", targets::cni_args, iterations(15_000), dict);
    eprintln!("cni_args: {n} inputs");
}

#[test]
fn fuzz_compile_against_reference_evaluator() {
    let _s = serial();
    let n = mutate::fuzz(
        "compile",
        targets::compile_target,
        iterations(1_500),
        &[b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x0f", b"\x1f"],
    );
    eprintln!("compile: {n} inputs");
}

// ============================================================================================
// Every class of bad input (fake kernel, no root)

struct Case {
    what: &'static str,
    stdin: Vec<u8>,
    args: String,
    ifname: String,
    code: u32,
    needle: String,
}

/// The egress-guard entry as the runtime passes it, with `annotations` and `prev` (host-side
/// interface name in prevResult; `None` for no prevResult).
fn netconf(state_dir: &Path, annotations: Value, prev: Option<&str>) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0", "name": "egtest", "type": "egress-guard",
        "capabilities": {"io.kubernetes.cri.pod-annotations": true},
        "defaultMode": "off",
        "networks": {"orchestrator": ["10.0.5.0/24 tcp 8443", "fd00:5::/64 tcp 8443"]},
        "logLevel": "off",
        "stateDir": state_dir.display().to_string(),
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": annotations},
    });
    if let Some(host_if) = prev {
        c["prevResult"] = json!({"cniVersion": "1.0.0", "interfaces": [{"name": host_if}, {"name": "eth0", "sandbox": "x"}], "ips": []});
    }
    c
}

const ARGS: &str = "K8S_POD_NAMESPACE=ml;K8S_POD_NAME=llm-0";

fn allow(v: &str) -> Value {
    json!({"egress-guard.io/mode": "enforce", "egress-guard.io/allow": v})
}

fn bad_input_cases(state_dir: &Path, host_if: &str) -> Vec<Case> {
    let conf = |ann: Value| netconf(state_dir, ann, Some(host_if));
    let bytes = |v: &Value| v.to_string().into_bytes();
    let replace = |v: &Value, from: &str, to: &[u8]| -> Vec<u8> {
        let s = v.to_string();
        let i = s.find(from).unwrap_or_else(|| panic!("{from} not in {s}"));
        let mut out = s.as_bytes()[..i].to_vec();
        out.extend_from_slice(to);
        out.extend_from_slice(&s.as_bytes()[i + from.len()..]);
        out
    };
    let case = |what, stdin: Vec<u8>, code, needle: &str| Case {
        what,
        stdin,
        args: ARGS.to_string(),
        ifname: "eth0".to_string(),
        code,
        needle: needle.to_string(),
    };
    let many = vec!["10.0.0.1 tcp 80"; 10_000].join(",");
    let huge = format!("10.0.0.1 tcp 80,{}", " ".repeat(1 << 20));
    let with = |field: &str, v: Value| {
        let mut c = conf(allow("10.0.0.1"));
        c[field] = v;
        c
    };
    let mut cases = vec![
        case(
            "invalid CIDR",
            bytes(&conf(allow("10.0.0.0/33"))),
            100,
            "10.0.0.0/33",
        ),
        case(
            "address that is not one",
            bytes(&conf(allow("10.0.0.256 tcp 80"))),
            100,
            "10.0.0.256",
        ),
        case(
            "CIDR with host bits",
            bytes(&conf(allow("10.0.5.1/24"))),
            100,
            "10.0.5.1/24",
        ),
        case(
            "port 0",
            bytes(&conf(allow("10.0.0.1 tcp 0"))),
            100,
            "\"0\"",
        ),
        case(
            "port over 65535",
            bytes(&conf(allow("10.0.0.1 udp 65536"))),
            100,
            "65536",
        ),
        case(
            "reversed range",
            bytes(&conf(allow("10.0.0.1 tcp 445-443"))),
            100,
            "445-443",
        ),
        case(
            "unknown protocol",
            bytes(&conf(allow("10.0.0.1 gre"))),
            100,
            "gre",
        ),
        case(
            "unknown @name",
            bytes(&conf(allow("@orchestrator, @nope"))),
            100,
            "@nope",
        ),
        case(
            "unknown key",
            bytes(&conf(json!({"egress-guard.io/allow-list": "10.0.0.1"}))),
            100,
            "egress-guard.io/allow-list",
        ),
        case(
            "bad mode",
            bytes(&conf(json!({"egress-guard.io/mode": "on"}))),
            100,
            "\"on\"",
        ),
        case(
            "duplicate keys",
            replace(
                &conf(allow("10.0.0.1")),
                "\"egress-guard.io/mode\":\"enforce\"",
                b"\"egress-guard.io/mode\":\"enforce\",\"egress-guard.io/mode\":\"off\"",
            ),
            6,
            "duplicate key \"egress-guard.io/mode\"",
        ),
        case(
            "keys differing in case",
            bytes(&conf(
                json!({"egress-guard.io/mode": "enforce", "Egress-Guard.io/mode": "off"}),
            )),
            100,
            "Egress-Guard.io/mode",
        ),
        case(
            "non-UTF-8",
            replace(
                &conf(allow("PLACEHOLDER")),
                "PLACEHOLDER",
                b"10.0.0.1 \xff\xfe",
            ),
            6,
            "UTF-8",
        ),
        case(
            "NUL byte in an annotation",
            bytes(&conf(allow("10.0.0.1\u{0} tcp 80"))),
            100,
            "0x00",
        ),
        case(
            "NUL byte on stdin",
            replace(&conf(allow("PLACEHOLDER")), "PLACEHOLDER", b"10.0.0.1\x00"),
            6,
            "not valid JSON",
        ),
        case(
            "10,000 entries",
            bytes(&conf(allow(&many))),
            100,
            "over the limit of",
        ),
        case(
            "1 MiB annotation",
            bytes(&conf(allow(&huge))),
            100,
            &format!("{} bytes", huge.len()),
        ),
        case(
            "annotation of the wrong type",
            bytes(&conf(json!({"egress-guard.io/mode": 1}))),
            7,
            "egress-guard.io/mode",
        ),
        case(
            "annotations of the wrong type",
            bytes(&conf(json!(["egress-guard.io/mode"]))),
            7,
            "io.kubernetes.cri.pod-annotations",
        ),
        case(
            "networks of the wrong type",
            bytes(&with("networks", json!("10.0.5.0/24"))),
            7,
            "networks",
        ),
        case(
            "network entry of the wrong type",
            bytes(&with("networks", json!({"dns": [53]}))),
            7,
            "networks.dns[0]",
        ),
        case(
            "annotation outside the ceiling of an enforced namespace",
            bytes(&{
                let mut c = conf(allow("@orchestrator, 0.0.0.0/0"));
                c["enforceNamespaces"] = json!(["ml"]);
                c
            }),
            100,
            "entry \"0.0.0.0/0\" is outside the operator ceiling",
        ),
        case(
            "enforcedAllow naming an unknown network",
            bytes(&with("enforcedAllow", json!(["@orchestrator", "@nowhere"]))),
            7,
            "enforcedAllow[1]",
        ),
        case(
            "enforcedAllow of the wrong type",
            bytes(&with("enforcedAllow", json!("@orchestrator"))),
            7,
            "enforcedAllow",
        ),
        case(
            "enforceNamespaces of the wrong type",
            bytes(&with("enforceNamespaces", json!({"a": 1}))),
            7,
            "enforceNamespaces",
        ),
        case(
            "prevResult of the wrong type",
            bytes(&with("prevResult", json!("veth0"))),
            7,
            "prevResult",
        ),
        case(
            "runtimeConfig of the wrong type",
            bytes(&with("runtimeConfig", json!([]))),
            7,
            "runtimeConfig",
        ),
        case(
            "cniVersion of the wrong type",
            bytes(&with("cniVersion", json!(1.0))),
            7,
            "cniVersion",
        ),
        case(
            "nflogGroup out of range",
            bytes(&with("nflogGroup", json!(-1))),
            7,
            "nflogGroup",
        ),
        case("stdin not an object", b"[\"ADD\"]".to_vec(), 6, "an array"),
        case("empty stdin", Vec::new(), 6, "JSON"),
        case(
            "missing prevResult on a chained ADD",
            bytes(&netconf(state_dir, allow("10.0.0.1"), None)),
            7,
            "prevResult",
        ),
    ];
    // "stdin not an object" is a conflist problem (7), not a decoding one.
    cases
        .iter_mut()
        .filter(|c| c.what == "stdin not an object")
        .for_each(|c| c.code = 7);
    let good = bytes(&conf(allow("10.0.5.0/24 tcp 8443")));
    cases.push(Case {
        args: "K8S_POD_NAMESPACE=ml;K8S_POD_NAME=llm 0".into(),
        ..case("CNI_ARGS value with a space", good.clone(), 4, "\"llm 0\"")
    });
    cases.push(Case {
        args: "K8S_POD_NAMESPACE=ml;K8S_POD_NAME=a\u{0}b".into(),
        ..case("CNI_ARGS with a NUL byte", good.clone(), 4, "K8S_POD_NAME")
    });
    cases.push(Case {
        args: "K8S_POD_NAMESPACE=ml;K8S_POD_NAMESPACE=ml2".into(),
        ..case("CNI_ARGS key twice", good.clone(), 4, "K8S_POD_NAMESPACE")
    });
    cases.push(Case {
        ifname: "eth9".into(),
        ..case("an interface that is not there", good, 102, "eth9")
    });
    cases
}

fn run_in_process<K: Kernel>(
    kernel: &mut K,
    verb: &str,
    cid: &str,
    netns: &str,
    ifname: &str,
    args: &str,
    stdin: &[u8],
) -> Result<Option<Value>, CniError> {
    let env = Env {
        command: verb.to_string(),
        container_id: Some(cid.to_string()),
        netns: Some(netns.to_string()),
        ifname: Some(ifname.to_string()),
        args: Some(args.to_string()),
    };
    let fetch = |_: &Path, _: &str, _: &str| -> Result<Vec<(String, String)>, String> {
        Err("no API server in this test".into())
    };
    run(Invocation {
        kernel,
        env: &env,
        stdin,
        fetch_pod: &fetch,
    })
    .result
}

#[test]
fn every_bad_input_class_has_its_code_and_names_the_value() {
    let _s = serial();
    let tmp = common::TempDir::new("hbad");
    let netns = "/var/run/netns/pod-under-test";
    let mut k = RecordingKernel::new();
    k.peers.insert(
        PathBuf::from(netns),
        HostPeer::Veth {
            name: "vbad0".into(),
            index: 9,
        },
    );
    // Another pod's table must survive every failure untouched.
    let good = netconf(&tmp.path, allow("10.0.5.0/24 tcp 8443"), Some("vother"));
    let mut other = RecordingKernel::new();
    other.peers.insert(
        PathBuf::from("/other"),
        HostPeer::Veth {
            name: "vother".into(),
            index: 3,
        },
    );
    run_in_process(
        &mut k,
        "ADD",
        "otherpod",
        netns,
        "eth0",
        ARGS,
        good.to_string().as_bytes(),
    )
    .unwrap();
    let before = k.table_names();
    assert_eq!(before.len(), 1);
    // The recording kernel answers per netns, not per interface: the binary test covers that.
    for c in bad_input_cases(&tmp.path, "vbad0")
        .into_iter()
        .filter(|c| c.ifname == "eth0")
    {
        let err = run_in_process(
            &mut k,
            "ADD",
            "podundertest",
            netns,
            &c.ifname,
            &c.args,
            &c.stdin,
        )
        .expect_err(c.what);
        assert_eq!(err.code, c.code, "{}: {err}", c.what);
        assert!(
            err.msg.contains(&c.needle),
            "{}: {:?} lacks {:?}",
            c.what,
            err.msg,
            c.needle
        );
        if err.code == 100 {
            assert!(
                err.msg.contains("ml/llm-0"),
                "{}: does not name the pod: {}",
                c.what,
                err.msg
            );
        }
        assert!(
            err.msg.len() < 64 << 10,
            "{}: message of {} bytes",
            c.what,
            err.msg.len()
        );
        assert_eq!(k.table_names(), before, "{} changed the tables", c.what);
        // The verb record carries the same error.
    }
    // Duplicates also come from the API-server fallback (no runtime annotations).
    let mut c = netconf(&tmp.path, json!(null), Some("vbad0"));
    c["kubeconfig"] = json!("/etc/cni/net.d/egress-guard.kubeconfig");
    let env = Env {
        command: "ADD".into(),
        container_id: Some("podundertest".into()),
        netns: Some(netns.into()),
        ifname: Some("eth0".into()),
        args: Some(ARGS.into()),
    };
    let dup = |_: &Path, _: &str, _: &str| -> Result<Vec<(String, String)>, String> {
        Ok(vec![
            ("egress-guard.io/allow".into(), "10.0.0.1".into()),
            ("egress-guard.io/allow".into(), "0.0.0.0/0".into()),
        ])
    };
    let err = run(Invocation {
        kernel: &mut k,
        env: &env,
        stdin: c.to_string().as_bytes(),
        fetch_pod: &dup,
    })
    .result
    .unwrap_err();
    assert_eq!(err.code, 100, "{err}");
    assert!(err.msg.contains("more than once"), "{err}");
    assert_eq!(k.table_names(), before);
}

#[test]
fn enobufs_is_transient_installs_nothing_and_the_retry_works() {
    let _s = serial();
    let tmp = common::TempDir::new("henb");
    let netns = "/var/run/netns/pod-under-test";
    let mut k = RecordingKernel::new();
    k.peers.insert(
        PathBuf::from(netns),
        HostPeer::Veth {
            name: "venb0".into(),
            index: 9,
        },
    );
    let c = netconf(&tmp.path, allow("10.0.5.0/24 tcp 8443"), Some("venb0")).to_string();
    k.fail_install = Some(libc::ENOBUFS);
    let err = run_in_process(&mut k, "ADD", "p1", netns, "eth0", ARGS, c.as_bytes()).unwrap_err();
    assert_eq!(err.code, 11, "{err}");
    assert!(k.table_names().is_empty(), "{:?}", k.table_names());
    run_in_process(&mut k, "ADD", "p1", netns, "eth0", ARGS, c.as_bytes()).expect("retry");
    run_in_process(&mut k, "CHECK", "p1", netns, "eth0", ARGS, c.as_bytes()).expect("CHECK");
    // A transient failure may come after the kernel committed: nothing of the pod's stays.
    k.fail_install = Some(libc::ENOBUFS);
    let c2 = netconf(&tmp.path, allow("10.9.0.0/16"), Some("venb0")).to_string();
    assert_eq!(
        run_in_process(&mut k, "ADD", "p1", netns, "eth0", ARGS, c2.as_bytes())
            .unwrap_err()
            .code,
        11
    );
    assert!(k.table_names().is_empty(), "{:?}", k.table_names());
    run_in_process(&mut k, "ADD", "p1", netns, "eth0", ARGS, c2.as_bytes()).expect("retry");
    run_in_process(&mut k, "DEL", "p1", netns, "eth0", ARGS, c.as_bytes()).unwrap();
    assert!(k.table_names().is_empty());
}

// ============================================================================================
// Root: the real binary and the real kernel

/// Runs the plugin binary in `ns` with raw stdin; (exit ok, stdout JSON or Null).
fn exec_raw(ns: &str, verb: &str, env: &[(&str, &str)], stdin: &[u8]) -> (bool, Value) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, &plugin_bin()])
        .env("CNI_COMMAND", verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    // The plugin may stop reading early on a huge input; a broken pipe is fine.
    let _ = pipe.write_all(stdin);
    drop(pipe);
    let out = child.wait_with_output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), v)
}

fn pod_env<'a>(
    cid: &'a str,
    netns: &'a str,
    ifname: &'a str,
    args: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_CONTAINERID", cid),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_ARGS", args),
        ("CNI_PATH", "/usr/lib/cni"),
    ]
}

fn guard_tables(ns: &str) -> BTreeSet<String> {
    exec_in(ns, &["nft", "list", "tables"])
        .lines()
        .filter_map(|l| l.strip_prefix("table "))
        .filter(|l| l.contains("egress_guard_"))
        .map(str::to_string)
        .collect()
}

fn netlink_sockets(ns: &str) -> usize {
    exec_in(ns, &["cat", "/proc/thread-self/net/netlink"])
        .lines()
        .count()
        - 1
}

/// Waits (bounded) for a condition the kernel reaches asynchronously; returns whether it held.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn bad_input_through_the_plugin_binary_leaves_nothing() {
    let _s = serial();
    if !can_run_root_tests("bad_input_through_the_plugin_binary_leaves_nothing") {
        return;
    }
    let n = Node::new("hb");
    let pod = n.manual_pod("p", "vhb0", 1);
    let other = n.manual_pod("q", "vhb1", 2);
    let state = n.tmp.path.join("state");
    let path = pod.path();
    let opath = other.path();
    let good = netconf(&state, allow("10.0.5.0/24 tcp 8443"), Some("vhb1")).to_string();
    let ocid = format!("{}o", n.prefix);
    let (ok, v) = exec_raw(
        &n.node.name,
        "ADD",
        &pod_env(&ocid, &opath, "eth0", ARGS),
        good.as_bytes(),
    );
    assert!(ok, "{v}");
    let before = guard_tables(&n.node.name);
    let cid = format!("{}p", n.prefix);
    for c in bad_input_cases(&state, "vhb0") {
        if c.args.contains('\0') {
            continue; // an environment variable cannot hold a NUL byte
        }
        let (ok, v) = exec_raw(
            &n.node.name,
            "ADD",
            &pod_env(&cid, &path, &c.ifname, &c.args),
            &c.stdin,
        );
        assert!(!ok, "{}: succeeded", c.what);
        assert_eq!(v["code"], json!(c.code), "{}: {v}", c.what);
        let msg = v["msg"].as_str().unwrap_or("");
        assert!(
            msg.contains(&c.needle),
            "{}: {msg:?} lacks {:?}",
            c.what,
            c.needle
        );
        assert_eq!(
            guard_tables(&n.node.name),
            before,
            "{} changed the tables",
            c.what
        );
        assert!(exec_in(&pod.name, &["nft", "list", "tables"])
            .trim()
            .is_empty());
    }
    let good_p = netconf(&state, allow("10.0.5.0/24 tcp 8443"), Some("vhb0")).to_string();
    let e = pod_env(&cid, &path, "eth0", ARGS);
    assert!(
        exec_raw(&n.node.name, "ADD", &e, good_p.as_bytes()).0,
        "ADD after bad input"
    );
    assert!(exec_raw(&n.node.name, "DEL", &e, good_p.as_bytes()).0);
    let oe = pod_env(&ocid, &opath, "eth0", ARGS);
    assert!(exec_raw(&n.node.name, "DEL", &oe, good.as_bytes()).0);
    assert!(guard_tables(&n.node.name).is_empty());
}

/// 256 entries over both families and overlapping ranges: a large transaction.
fn big_policy(shift: u16) -> Value {
    let mut items = Vec::new();
    for i in 0..128u16 {
        items.push(format!(
            "10.{}.0.0/16 tcp {}-{}",
            i,
            1000 + shift + i,
            1100 + i + shift
        ));
        items.push(format!("fd00:{:x}::/32 udp {}", i, 53 + shift + i));
    }
    allow(&items.join(", "))
}

#[test]
fn sigkill_at_random_points_leaves_the_table_complete_or_absent() {
    let _s = serial();
    if !can_run_root_tests("sigkill_at_random_points_leaves_the_table_complete_or_absent") {
        return;
    }
    let n = Node::new("hk");
    let pod = n.manual_pod("p", "vhk0", 1);
    let path = pod.path();
    let cid = format!("{}p", n.prefix);
    let state = n.tmp.path.join("state");
    let confs: Vec<String> = [big_policy(0), big_policy(7)]
        .into_iter()
        .map(|a| netconf(&state, a, Some("vhk0")).to_string())
        .collect();
    let env = pod_env(&cid, &path, "eth0", ARGS);
    let table = format!("netdev {}", egress_guard::ruleset::table_name(&cid, "eth0"));
    // How long one ADD takes here, to spread the kills over its whole life (not asserted).
    let mut spans = Vec::new();
    for c in &confs {
        let t = Instant::now();
        assert!(exec_raw(&n.node.name, "ADD", &env, c.as_bytes()).0);
        spans.push(t.elapsed());
    }
    assert!(exec_raw(&n.node.name, "DEL", &env, confs[0].as_bytes()).0);
    let span = spans.iter().max().unwrap().as_micros() as u64 * 13 / 10;
    let mut rng = Rng::new(mutate::seed_from_env());
    let deadline = mutate::soak_secs().map(|s| Instant::now() + Duration::from_secs(s));
    let rounds = iterations(40);
    let (mut absent, mut complete) = (0, 0);
    let mut i = 0;
    while deadline.map(|d| Instant::now() < d).unwrap_or(i < rounds) {
        i += 1;
        let which = rng.below(2);
        let verb = if rng.below(4) == 0 { "DEL" } else { "ADD" };
        let delay = Duration::from_micros(rng.next() % span.max(1));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &n.node.name, &plugin_bin()])
            .env("CNI_COMMAND", verb)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut pipe = child.stdin.take().unwrap();
        let _ = pipe.write_all(confs[which].as_bytes());
        drop(pipe);
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();

        // All or nothing: absent, or complete for one of the two policies.
        if guard_tables(&n.node.name).contains(&table) {
            let passes = confs
                .iter()
                .any(|c| exec_raw(&n.node.name, "CHECK", &env, c.as_bytes()).0);
            assert!(
                passes,
                "round {i}: {verb} killed after {delay:?} left a partial table"
            );
            complete += 1;
        } else {
            absent += 1;
        }
        assert!(
            guard_tables(&n.node.name).iter().all(|t| *t == table),
            "round {i}: foreign table"
        );
        // The next verb succeeds whatever state the kill left.
        let c = &confs[rng.below(2)];
        if rng.below(2) == 0 {
            let (ok, v) = exec_raw(&n.node.name, "ADD", &env, c.as_bytes());
            assert!(ok, "round {i}: ADD after a killed {verb}: {v}");
            let (ok, v) = exec_raw(&n.node.name, "CHECK", &env, c.as_bytes());
            assert!(ok, "round {i}: CHECK after ADD: {v}");
        } else {
            let (ok, v) = exec_raw(&n.node.name, "DEL", &env, c.as_bytes());
            assert!(ok, "round {i}: DEL after a killed {verb}: {v}");
            assert!(guard_tables(&n.node.name).is_empty());
        }
    }
    eprintln!("sigkill: {i} rounds, table absent after {absent}, complete after {complete}");
    assert!(exec_raw(&n.node.name, "DEL", &env, confs[0].as_bytes()).0);
    assert!(guard_tables(&n.node.name).is_empty());
}

#[test]
fn concurrent_add_del_on_64_pods() {
    let _s = serial();
    if !can_run_root_tests("concurrent_add_del_on_64_pods") {
        return;
    }
    const PODS: usize = 64;
    let n = Node::new("hc");
    let state = n.tmp.path.join("state");
    let pods: Vec<Netns> = (0..PODS)
        .map(|i| n.manual_pod(&format!("p{i}"), &format!("vhc{i}"), i as u8))
        .collect();
    let sockets_before = netlink_sockets(&n.node.name);
    let secs = mutate::soak_secs().unwrap_or(20);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let verbs = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for (i, pod) in pods.iter().enumerate() {
            let (n, state, errors, verbs) = (&n, &state, &errors, &verbs);
            s.spawn(move || {
                let cid = format!("{}p{i}", n.prefix);
                let path = pod.path();
                let env = pod_env(&cid, &path, "eth0", ARGS);
                let ann = allow(&format!(
                    "10.0.5.0/24 tcp {}, fd00:5::/64 tcp 443",
                    8000 + i
                ));
                let c = netconf(state, ann, Some(&format!("vhc{i}"))).to_string();
                let step = |verb: &str| {
                    let (ok, v) = exec_raw(&n.node.name, verb, &env, c.as_bytes());
                    verbs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if ok {
                        return true;
                    }
                    // Any failure counts, a false "table is missing" from CHECK included: dumps
                    // interrupted by concurrent changes are retried (NLM_F_DUMP_INTR).
                    errors.lock().unwrap().push(format!("pod {i} {verb}: {v}"));
                    false
                };
                loop {
                    // CHECK after ADD proves the table is ours and complete (none lost).
                    if !(step("ADD") && step("CHECK")) {
                        return;
                    }
                    let done = Instant::now() >= deadline;
                    if done && i % 2 == 0 {
                        return; // even pods stay alive
                    }
                    if !step("DEL") || done {
                        return;
                    }
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap();
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let live: BTreeSet<String> = (0..PODS)
        .filter(|i| i % 2 == 0)
        .map(|i| {
            format!(
                "netdev {}",
                egress_guard::ruleset::table_name(&format!("{}p{i}", n.prefix), "eth0")
            )
        })
        .collect();
    assert_eq!(
        guard_tables(&n.node.name),
        live,
        "the node must hold exactly the live pods' tables"
    );
    assert!(
        eventually(|| netlink_sockets(&n.node.name) <= sockets_before),
        "netlink sockets: {} before, {} after",
        sockets_before,
        netlink_sockets(&n.node.name)
    );
    eprintln!(
        "concurrent: {} verbs by {PODS} pods in {secs}s",
        verbs.into_inner()
    );
    for (i, pod) in pods.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let cid = format!("{}p{i}", n.prefix);
        let path = pod.path();
        let c = netconf(&state, json!({}), None).to_string();
        assert!(
            exec_raw(
                &n.node.name,
                "DEL",
                &pod_env(&cid, &path, "eth0", ARGS),
                c.as_bytes()
            )
            .0
        );
    }
    assert!(guard_tables(&n.node.name).is_empty());
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Runs `f` on a thread that sits in the node namespace (setns is per thread).
fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    let path = PathBuf::from(ns.path());
    std::thread::scope(|s| {
        s.spawn(move || {
            let _inside = NetnsGuard::enter(&path).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

#[test]
fn library_verbs_leak_no_descriptors_or_sockets() {
    let _s = serial();
    if !can_run_root_tests("library_verbs_leak_no_descriptors_or_sockets") {
        return;
    }
    let n = Node::new("hl");
    let pod = n.manual_pod("p", "vhl0", 1);
    let state = n.tmp.path.join("state");
    let path = pod.path();
    let cid = format!("{}p", n.prefix);
    let c = netconf(&state, allow("10.0.5.0/24 tcp 8443"), Some("vhl0")).to_string();
    let cycle = || {
        let mut k = NetlinkKernel::new();
        let r = |k: &mut NetlinkKernel, verb: &str, netns: &str, ifname: &str| {
            run_in_process(k, verb, &cid, netns, ifname, ARGS, c.as_bytes())
        };
        r(&mut k, "ADD", &path, "eth0").unwrap();
        r(&mut k, "CHECK", &path, "eth0").unwrap();
        r(&mut k, "DEL", &path, "eth0").unwrap();
        assert_eq!(
            r(&mut k, "ADD", "/var/run/netns/egress-guard-none", "eth0")
                .unwrap_err()
                .code,
            3
        );
        assert_eq!(r(&mut k, "ADD", &path, "eth9").unwrap_err().code, 102);
        let mut f = Faulty {
            inner: NetlinkKernel::new(),
            faults: Faults {
                fail_before: Some(libc::ENOBUFS),
                ..Default::default()
            },
        };
        let e = run_in_process(&mut f, "ADD", &cid, &path, "eth0", ARGS, c.as_bytes());
        assert_eq!(e.unwrap_err().code, 11);
        r(&mut NetlinkKernel::new(), "DEL", &path, "eth0").unwrap();
    };
    let (before, after, sock_before, sock_after) = in_netns(&n.node, || {
        cycle(); // warm-up: lazily opened process-wide descriptors
        let sockets = || {
            std::fs::read_to_string("/proc/thread-self/net/netlink")
                .unwrap()
                .lines()
                .count()
        };
        let (fds, socks) = (fd_count(), sockets());
        for _ in 0..iterations(40) {
            cycle();
        }
        (fds, fd_count(), socks, sockets())
    });
    assert_eq!(before, after, "descriptors leaked by the verbs");
    assert!(
        sock_after <= sock_before,
        "netlink sockets: {sock_before} -> {sock_after}"
    );
    assert!(guard_tables(&n.node.name).is_empty());
}

#[test]
fn vanishing_veth_refused_hook_and_enobufs_fail_clean() {
    let _s = serial();
    if !can_run_root_tests("vanishing_veth_refused_hook_and_enobufs_fail_clean") {
        return;
    }
    let n = Node::new("hv");
    let pod = n.manual_pod("p", "vhv0", 1);
    let bystander = n.manual_pod("b", "vhv1", 2);
    let state = n.tmp.path.join("state");
    let path = pod.path();
    let bpath = bystander.path();
    let cid = format!("{}p", n.prefix);
    let bcid = format!("{}b", n.prefix);
    let table = format!("netdev {}", egress_guard::ruleset::table_name(&cid, "eth0"));
    let c = netconf(&state, allow("10.0.5.0/24 tcp 8443"), Some("vhv0")).to_string();
    let c2 = netconf(&state, allow("198.51.100.0/24"), Some("vhv0")).to_string();
    let bc = netconf(&state, allow("10.0.5.0/24 tcp 8443"), Some("vhv1")).to_string();
    let node = n.node.name.clone();
    let results = in_netns(&n.node, || {
        let mut out = Vec::new();
        let with = |faults: Faults, conf: &str| {
            let mut f = Faulty {
                inner: NetlinkKernel::new(),
                faults,
            };
            run_in_process(&mut f, "ADD", &cid, &path, "eth0", ARGS, conf.as_bytes())
        };
        let plain = |verb: &str, conf: &str| {
            run_in_process(
                &mut NetlinkKernel::new(),
                verb,
                &cid,
                &path,
                "eth0",
                ARGS,
                conf.as_bytes(),
            )
        };
        run_in_process(
            &mut NetlinkKernel::new(),
            "ADD",
            &bcid,
            &bpath,
            "eth0",
            ARGS,
            bc.as_bytes(),
        )
        .unwrap();
        let bystander_table = guard_tables(&node);

        // ENOBUFS before the transaction reached the kernel.
        let e = with(
            Faults {
                fail_before: Some(libc::ENOBUFS),
                ..Default::default()
            },
            &c,
        );
        out.push((
            "ENOBUFS before commit",
            e.err().map(|e| e.code),
            guard_tables(&node),
        ));
        // ENOBUFS after the kernel committed (the ack was lost).
        let e = with(
            Faults {
                fail_after: Some(libc::ENOBUFS),
                ..Default::default()
            },
            &c,
        );
        out.push((
            "ENOBUFS after commit",
            e.err().map(|e| e.code),
            guard_tables(&node),
        ));
        plain("DEL", &c).unwrap();
        // A hook the kernel refuses (this kernel hooks any device type, even absent names;
        // it refuses a name longer than IFNAMSIZ with ERANGE).
        let refused = Faults {
            peer_override: Some("vhv0-not-a-valid-ifname".into()),
            ..Default::default()
        };
        let e = with(refused, &c);
        out.push(("refused hook", e.err().map(|e| e.code), guard_tables(&node)));
        // ... and when it replaces an existing table, the old one stays complete.
        plain("ADD", &c2).unwrap();
        let refused = Faults {
            peer_override: Some("vhv0-not-a-valid-ifname".into()),
            ..Default::default()
        };
        let e = with(refused, &c);
        let old_intact = plain("CHECK", &c2).is_ok();
        out.push((
            "refused hook over an old table",
            e.err().map(|e| e.code),
            guard_tables(&node),
        ));
        plain("DEL", &c).unwrap();
        // The host-side veth vanishes between the lookup and the install.
        let node2 = node.clone();
        let vanish = Faults {
            after_peer: Some(Box::new(move |dev: &str| {
                let _ = Command::new("ip")
                    .args(["-n", &node2, "link", "del", dev])
                    .output();
            })),
            ..Default::default()
        };
        let e = with(vanish, &c);
        out.push((
            "veth vanished during ADD",
            e.err().map(|e| e.code),
            guard_tables(&node),
        ));
        let del = plain("DEL", &c).map(|_| ());
        (out, old_intact, bystander_table, del)
    });
    let (out, old_intact, bystander_table, del) = results;
    let mut problems = Vec::new();
    for (what, code, tables) in &out {
        let residue = tables.contains(&table);
        eprintln!("{what}: code {code:?}, residue {residue}");
        if !bystander_table.is_subset(tables) {
            problems.push(format!("{what}: the bystander's table went missing"));
        }
        let want: &[u32] = match *what {
            "ENOBUFS before commit" | "ENOBUFS after commit" => &[11],
            "refused hook" | "refused hook over an old table" => &[101],
            _ => &[102, 101, 11],
        };
        if !code.map(|c| want.contains(&c)).unwrap_or(false) {
            problems.push(format!("{what}: code {code:?}, want one of {want:?}"));
        }
        let old_table_expected = *what == "refused hook over an old table";
        if residue != old_table_expected {
            problems.push(format!("{what}: table present: {residue}"));
        }
    }
    if !old_intact {
        problems.push("a refused replacement damaged the old table".into());
    }
    if let Err(e) = del {
        problems.push(format!("DEL after the veth vanished: {e}"));
    }
    // The racy version with the real binary: the veth is deleted at a random moment.
    n.add_veth(&pod, "vhv0", 1);
    let env = pod_env(&cid, &path, "eth0", ARGS);
    let mut rng = Rng::new(mutate::seed_from_env());
    for round in 0..iterations(12) {
        let delay = Duration::from_micros(rng.next() % 30_000);
        let node = n.node.name.clone();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = Command::new("ip")
                .args(["-n", &node, "link", "del", "vhv0"])
                .output();
        });
        let (ok, v) = exec_raw(&n.node.name, "ADD", &env, c.as_bytes());
        killer.join().unwrap();
        let present = guard_tables(&n.node.name).contains(&table);
        if !ok {
            let code = v["code"].as_u64().unwrap_or(0);
            if ![3, 11, 101, 102].contains(&code) {
                problems.push(format!("racy round {round}: code {code}: {v}"));
            }
            if present {
                problems.push(format!(
                    "racy round {round}: failed ADD ({v}) left its table"
                ));
            }
        }
        let (ok, v) = exec_raw(&n.node.name, "DEL", &env, c.as_bytes());
        if !ok {
            problems.push(format!("racy round {round}: DEL: {v}"));
        }
        assert!(
            !guard_tables(&n.node.name).contains(&table),
            "DEL left the table"
        );
        wait_gone(&n, "vhv0");
        n.add_veth(&pod, "vhv0", 1);
    }
    let be = pod_env(&bcid, &bpath, "eth0", ARGS);
    assert!(exec_raw(&n.node.name, "DEL", &be, bc.as_bytes()).0);
    assert!(guard_tables(&n.node.name).is_empty());
    assert!(problems.is_empty(), "{problems:#?}");
}

fn wait_gone(n: &Node, dev: &str) {
    assert!(eventually(|| !Command::new("ip")
        .args(["-n", &n.node.name, "link", "show", dev])
        .output()
        .unwrap()
        .status
        .success()));
}
