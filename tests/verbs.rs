//! The plugin run alone against hand-built veths in a node namespace: replacing stale tables
//! left on a device name, GC, CHECK drift, DEL idempotency, error codes, and placement choice.
#![allow(clippy::unwrap_used)]

use egress_guard_testkit::common;

use common::chain::{exec_plugin, Attachment, Chain, PluginError};
use common::node::{Node, INET4};
use common::probe::{self, Server};
use common::{can_run_root_tests, exec_in, ip};
use serde_json::{json, Value};

fn conf(n: &Node, version: &str, annotations: Value, prev: Option<Value>) -> Value {
    let mut c = n.guard_entry(json!({}));
    c["cniVersion"] = json!(version);
    c["name"] = json!("egtest");
    c["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": annotations});
    if let Some(p) = prev {
        c["prevResult"] = p;
    }
    c
}

fn prev_result(host_if: &str) -> Value {
    json!({"cniVersion": "1.0.0", "interfaces": [{"name": host_if}, {"name": "eth0", "sandbox": "x"}], "ips": []})
}

type CniEnv = Vec<(&'static str, String)>;

fn env(cid: &str, netns: &str) -> CniEnv {
    vec![
        ("CNI_CONTAINERID", cid.to_string()),
        ("CNI_NETNS", netns.to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        (
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=ml;K8S_POD_NAME=llm-0".to_string(),
        ),
    ]
}

fn guard(
    n: &Node,
    cmd: &str,
    cid: &str,
    netns: &str,
    c: &Value,
) -> Result<Option<Value>, PluginError> {
    exec_plugin(&n.node.name, "egress-guard", cmd, &env(cid, netns), c)
}

/// Netns deletion is asynchronous: wait until the host end of a dead pod's veth is gone.
fn wait_link_gone(n: &Node, dev: &str) {
    for _ in 0..200 {
        let out = std::process::Command::new("ip")
            .args(["-n", &n.node.name, "link", "show", dev])
            .output()
            .unwrap();
        if !out.status.success() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("{dev} still exists");
}

fn tables(n: &Node) -> String {
    exec_in(&n.node.name, &["nft", "list", "tables"])
}

fn enforce() -> Value {
    json!({"egress-guard.io/mode": "enforce", "egress-guard.io/allow": "10.0.5.0/24 tcp 8443"})
}

#[test]
fn stale_table_on_a_reused_device_name_is_replaced() {
    if !can_run_root_tests("stale_table_on_a_reused_device_name_is_replaced") {
        return;
    }
    let n = Node::new("st");
    let old = n.manual_pod("old", "vstale0", 2);
    let c = conf(&n, "1.0.0", enforce(), Some(prev_result("vstale0")));
    let old_cid = format!("{}old", n.prefix);
    guard(&n, "ADD", &old_cid, &old.path(), &c).unwrap();
    assert!(tables(&n).contains(&egress_guard::ruleset::table_name(&old_cid, "eth0")));
    // The pod dies without DEL: its netns and veth vanish, the table stays behind.
    drop(old);
    wait_link_gone(&n, "vstale0");
    assert!(
        tables(&n).contains(&egress_guard::ruleset::table_name(&old_cid, "eth0")),
        "the kernel keeps device-bound chains"
    );

    // A new pod gets a veth of the same name and asks for nothing: the stale table must go,
    // otherwise the old pod's policy would apply to it.
    let new = n.manual_pod("new", "vstale0", 3);
    let off = conf(&n, "1.0.0", json!({}), Some(prev_result("vstale0")));
    let new_cid = format!("{}new", n.prefix);
    guard(&n, "ADD", &new_cid, &new.path(), &off).unwrap();
    let t = tables(&n);
    assert!(
        !t.contains("egress_guard_"),
        "stale table survived an ADD on its device: {t}"
    );
    guard(&n, "DEL", &new_cid, &new.path(), &off).unwrap();
    drop(new);
    wait_link_gone(&n, "vstale0");

    // Same again, but the new pod is enforced: replaced in the same transaction.
    let old = n.manual_pod("old2", "vstale0", 2);
    guard(&n, "ADD", &old_cid, &old.path(), &c).unwrap();
    drop(old);
    wait_link_gone(&n, "vstale0");
    let new = n.manual_pod("new2", "vstale0", 3);
    guard(&n, "ADD", &new_cid, &new.path(), &c).unwrap();
    let t = tables(&n);
    assert!(
        !t.contains(&egress_guard::ruleset::table_name(&old_cid, "eth0")),
        "{t}"
    );
    assert!(
        t.contains(&egress_guard::ruleset::table_name(&new_cid, "eth0")),
        "{t}"
    );
    guard(&n, "DEL", &new_cid, &new.path(), &c).unwrap();
}

#[test]
fn repeated_add_replaces_its_own_table() {
    if !can_run_root_tests("repeated_add_replaces_its_own_table") {
        return;
    }
    let n = Node::new("ra");
    let pod = n.manual_pod("p", "vra0", 2);
    let cid = format!("{}p", n.prefix);
    let c1 = conf(&n, "1.0.0", enforce(), Some(prev_result("vra0")));
    guard(&n, "ADD", &cid, &pod.path(), &c1).unwrap();
    let c2 = conf(
        &n,
        "1.0.0",
        json!({"egress-guard.io/mode": "enforce", "egress-guard.io/allow": "198.51.100.0/24 tcp 80"}),
        Some(prev_result("vra0")),
    );
    guard(&n, "ADD", &cid, &pod.path(), &c2).unwrap();
    let listing = exec_in(
        &n.node.name,
        &[
            "nft",
            "list",
            "table",
            "netdev",
            &egress_guard::ruleset::table_name(&cid, "eth0"),
        ],
    );
    assert!(listing.contains("198.51.100.0/24 . tcp . 80"), "{listing}");
    assert!(!listing.contains("8443"), "{listing}");
    guard(&n, "CHECK", &cid, &pod.path(), &c2).unwrap();
    guard(&n, "DEL", &cid, &pod.path(), &c2).unwrap();
}

#[test]
fn check_reports_drift_and_gc_collects_orphans() {
    if !can_run_root_tests("check_reports_drift_and_gc_collects_orphans") {
        return;
    }
    let n = Node::new("dr");
    let a = n.manual_pod("a", "vdra", 2);
    let b = n.manual_pod("b", "vdrb", 3);
    let (cid_a, cid_b) = (format!("{}a", n.prefix), format!("{}b", n.prefix));
    let ca = conf(&n, "1.0.0", enforce(), Some(prev_result("vdra")));
    let cb = conf(&n, "1.0.0", enforce(), Some(prev_result("vdrb")));
    guard(&n, "ADD", &cid_a, &a.path(), &ca).unwrap();
    guard(&n, "ADD", &cid_b, &b.path(), &cb).unwrap();
    guard(&n, "CHECK", &cid_a, &a.path(), &ca).expect("intact ruleset passes CHECK");

    let table = egress_guard::ruleset::table_name(&cid_a, "eth0");
    exec_in(
        &n.node.name,
        &[
            "nft",
            "delete",
            "element",
            "netdev",
            &table,
            "allow4_port",
            "{ 10.0.5.0/24 . tcp . 8443 }",
        ],
    );
    let err = guard(&n, "CHECK", &cid_a, &a.path(), &ca).expect_err("removed element is drift");
    assert_eq!(err.code, Some(103), "{err:?}");
    assert!(err.msg.contains("allow4_port"), "{}", err.msg);

    guard(&n, "ADD", &cid_a, &a.path(), &ca).unwrap();
    let handles = exec_in(
        &n.node.name,
        &["nft", "-a", "list", "chain", "netdev", &table, "from_pod"],
    );
    let handle = handles
        .lines()
        .find(|l| l.contains("counter"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .to_string();
    exec_in(
        &n.node.name,
        &[
            "nft", "delete", "rule", "netdev", &table, "from_pod", "handle", &handle,
        ],
    );
    let err = guard(&n, "CHECK", &cid_a, &a.path(), &ca).expect_err("removed rule is drift");
    assert!(err.msg.contains("from_pod"), "{}", err.msg);

    exec_in(&n.node.name, &["nft", "delete", "table", "netdev", &table]);
    let err = guard(&n, "CHECK", &cid_a, &a.path(), &ca).expect_err("removed table is drift");
    assert!(err.msg.contains("missing"), "{}", err.msg);

    // CHECK is a 0.4.0+ verb.
    let old = conf(&n, "0.3.1", enforce(), Some(prev_result("vdrb")));
    assert_eq!(
        guard(&n, "CHECK", &cid_b, &b.path(), &old)
            .unwrap_err()
            .code,
        Some(1)
    );

    // GC keeps the valid attachment, removes the rest.
    guard(&n, "ADD", &cid_a, &a.path(), &ca).unwrap();
    let gc = json!({"cni.dev/valid-attachments": [{"containerID": cid_b, "ifname": "eth0"}]});
    let chain = Chain::new(
        &n.node.name,
        json!({"name": "egtest", "plugins": [ca.clone()]}),
    );
    chain.guard_only("GC", gc, &[]).unwrap();
    let t = tables(&n);
    assert!(
        !t.contains(&format!(
            "{} ",
            egress_guard::ruleset::table_name(&cid_a, "eth0")
        )) && !t.ends_with(&format!(
            "{}\n",
            egress_guard::ruleset::table_name(&cid_a, "eth0")
        )),
        "{t}"
    );
    assert!(
        t.contains(&egress_guard::ruleset::table_name(&cid_b, "eth0")),
        "{t}"
    );
    let err = chain
        .guard_only("GC", json!({}), &[])
        .expect_err("GC without the list must not delete");
    assert_eq!(err.code, Some(7));
    assert!(tables(&n).contains(&egress_guard::ruleset::table_name(&cid_b, "eth0")));
    assert!(chain
        .guard_only("STATUS", json!({}), &[])
        .unwrap()
        .is_none());
    guard(&n, "DEL", &cid_b, &b.path(), &cb).unwrap();
}

#[test]
fn del_is_idempotent() {
    if !can_run_root_tests("del_is_idempotent") {
        return;
    }
    let n = Node::new("dl");
    let pod = n.manual_pod("p", "vdl0", 2);
    let cid = format!("{}p", n.prefix);
    let c = conf(&n, "1.0.0", enforce(), Some(prev_result("vdl0")));
    let bare = conf(&n, "1.0.0", json!({}), None);
    guard(&n, "DEL", &cid, &pod.path(), &bare).expect("DEL without ADD");
    guard(&n, "ADD", &cid, &pod.path(), &c).unwrap();
    guard(&n, "DEL", &cid, &pod.path(), &c).expect("first DEL");
    guard(&n, "DEL", &cid, &pod.path(), &c).expect("second DEL");
    guard(&n, "ADD", &cid, &pod.path(), &c).unwrap();
    guard(&n, "DEL", &cid, "", &bare).expect("DEL with CNI_NETNS=\"\" and no prevResult");
    assert!(!tables(&n).contains("egress_guard_"));
    guard(&n, "ADD", &cid, &pod.path(), &c).unwrap();
    let path = pod.path();
    drop(pod);
    guard(&n, "DEL", &cid, &path, &bare).expect("DEL whose netns is gone");
    assert!(!tables(&n).contains("egress_guard_"));
}

#[test]
fn add_errors_carry_the_right_code_and_leave_nothing() {
    if !can_run_root_tests("add_errors_carry_the_right_code_and_leave_nothing") {
        return;
    }
    let n = Node::new("er");
    let pod = n.manual_pod("p", "ver0", 2);
    let cid = format!("{}p", n.prefix);
    let good = conf(&n, "1.0.0", enforce(), Some(prev_result("ver0")));
    let cases: Vec<(&str, Value, CniEnv, u64, &str)> = vec![
        (
            "missing prevResult",
            conf(&n, "1.0.0", enforce(), None),
            env(&cid, &pod.path()),
            7,
            "prevResult",
        ),
        (
            "netns that does not exist",
            good.clone(),
            env(&cid, "/var/run/netns/does-not-exist"),
            3,
            "does-not-exist",
        ),
        (
            "interface that is not there",
            good.clone(),
            {
                let mut e = env(&cid, &pod.path());
                e[2].1 = "eth9".into();
                e
            },
            102,
            "eth9",
        ),
        (
            "unsupported cniVersion",
            conf(&n, "9.9.9", enforce(), Some(prev_result("ver0"))),
            env(&cid, &pod.path()),
            1,
            "9.9.9",
        ),
        (
            "bad CNI_ARGS",
            good.clone(),
            {
                let mut e = env(&cid, &pod.path());
                e[3].1 = "K8S_POD_NAME".into();
                e
            },
            4,
            "K8S_POD_NAME",
        ),
        (
            "bad container id",
            good.clone(),
            env("bad/id", &pod.path()),
            4,
            "bad/id",
        ),
        (
            "unknown network",
            conf(
                &n,
                "1.0.0",
                json!({"egress-guard.io/mode": "enforce", "egress-guard.io/allow": "@nope"}),
                Some(prev_result("ver0")),
            ),
            env(&cid, &pod.path()),
            100,
            "@nope",
        ),
    ];
    for (what, c, e, code, needle) in cases {
        let err = exec_plugin(&n.node.name, "egress-guard", "ADD", &e, &c).expect_err(what);
        assert_eq!(err.code, Some(code), "{what}: {err:?}");
        assert!(
            err.msg.contains(needle),
            "{what}: {} lacks {needle}",
            err.msg
        );
        assert!(!tables(&n).contains("egress_guard_"), "{what} left a table");
    }
    // Non-UTF-8 stdin is a decode failure, not a crash.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &n.node.name, &common::plugin_bin()])
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", &cid)
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write;
            ch.stdin
                .take()
                .unwrap()
                .write_all(b"{\"cniVersion\":\"1.0.0\",\"name\":\"\xff\"}")?;
            ch.wait_with_output()
        })
        .unwrap();
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], 6, "{v}");
    let v = guard(&n, "VERSION", &cid, "", &json!({"cniVersion": "1.1.0"}))
        .unwrap()
        .unwrap();
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn old_cni_version_chain_works() {
    if !can_run_root_tests("old_cni_version_chain_works") {
        return;
    }
    let n = Node::new("v3");
    let pod = n.pod_netns("p");
    let control = n.pod_netns("c");
    let mut list = n.bridge_conflist(n.guard_entry(json!({})));
    list["cniVersion"] = json!("0.3.1");
    list["plugins"][0]["ipam"]["ranges"] = json!([[{"subnet": "10.22.0.0/24"}]]);
    let chain = Chain::new(&n.node.name, list);
    let a = Attachment::new(
        &format!("{}p", n.prefix),
        &pod.path(),
        "ml",
        "llm",
        enforce(),
    );
    let c = Attachment::new(
        &format!("{}c", n.prefix),
        &control.path(),
        "ml",
        "ctl",
        json!({}),
    );
    let res = chain.add(&a).unwrap();
    let cres = chain.add(&c).unwrap();
    assert_eq!(res["cniVersion"], "0.3.1");
    let _s = Server::tcp(&n.inet.name, 80);
    assert!(probe::tcp(&control.name, INET4, 80, "c"));
    assert!(!probe::tcp(&pod.name, INET4, 80, "g"));
    chain.del(&a, &pod.path(), Some(&res)).unwrap();
    chain.del(&c, &control.path(), Some(&cres)).unwrap();
}

#[test]
fn macvlan_pod_gets_pod_placement_under_auto() {
    if !can_run_root_tests("macvlan_pod_gets_pod_placement_under_auto") {
        return;
    }
    let n = Node::new("iv");
    // The macvlan master: the node's link towards the internet namespace (this kernel has no ipvlan).
    let pod = n.pod_netns("p");
    let list = json!({
        "cniVersion": "1.0.0", "name": "egtest",
        "plugins": [
            {"type": "macvlan", "master": "to-inet", "mode": "bridge",
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "198.51.100.0/24", "rangeStart": "198.51.100.100", "rangeEnd": "198.51.100.120"}]], "dataDir": n.tmp.join("ipam")}},
            n.guard_entry(json!({})),
        ]
    });
    let chain = Chain::new(&n.node.name, list);
    let cid = format!("{}p", n.prefix);
    let a = Attachment::new(&cid, &pod.path(), "ml", "llm", enforce());
    let res = chain.add(&a).unwrap();
    let control = n.pod_netns("c");
    let ctl = Attachment::new(&format!("{cid}c"), &control.path(), "ml", "ctl", json!({}));
    let cres = chain.add(&ctl).unwrap();
    let in_pod = exec_in(&pod.name, &["nft", "list", "tables"]);
    // A netdev table on the macvlan interface (this kernel has the egress hook).
    assert!(
        in_pod.contains(&format!(
            "netdev {}",
            egress_guard::ruleset::table_name(&cid, "eth0")
        )),
        "{in_pod}"
    );
    assert!(!tables(&n).contains("egress_guard_"));
    // Both pods share the internet segment through macvlan; the unguarded one is the control.
    let _s = Server::tcp(&n.inet.name, 80);
    assert!(
        probe::tcp(&control.name, INET4, 80, "ctl"),
        "control: an unguarded macvlan pod reaches the host"
    );
    assert!(
        !probe::tcp(&pod.name, INET4, 80, "pod"),
        "guarded macvlan pod reached the internet host"
    );
    // A packet socket in the pod does not get past the table on its macvlan interface either.
    let mac = |ns: &str, dev: &str| -> Vec<u8> {
        let v: Value =
            serde_json::from_str(&exec_in(ns, &["ip", "-j", "link", "show", dev])).unwrap();
        v[0]["address"]
            .as_str()
            .unwrap()
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    };
    let inet_mac = mac(&n.inet.name, "eth0");
    let inet4: std::net::Ipv4Addr = INET4.parse().unwrap();
    let frame = |ns: &str, marker: &[u8]| {
        let src: std::net::Ipv4Addr = common::node::pod_addr(ns, false).parse().unwrap();
        let mut udp = vec![0x11, 0x5c, 0x00, 0x35, 0, 0, 0, 0];
        udp.extend_from_slice(marker);
        let ulen = udp.len() as u16;
        udp[4..6].copy_from_slice(&ulen.to_be_bytes());
        let mut ip4 = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
        ip4.extend_from_slice(&src.octets());
        ip4.extend_from_slice(&inet4.octets());
        let tlen = (20 + udp.len()) as u16;
        ip4[2..4].copy_from_slice(&tlen.to_be_bytes());
        let mut sum: u32 = ip4
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
            .sum();
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        ip4[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        ip4.extend_from_slice(&udp);
        let mut f = inet_mac.clone();
        f.extend_from_slice(&mac(ns, "eth0"));
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&ip4);
        f
    };
    let at_inet = probe::FrameSniffer::new(&n.inet.name, "eth0");
    probe::send_frame(&control.name, "eth0", frame(&control.name, b"mv-control"));
    probe::send_frame(&pod.name, "eth0", frame(&pod.name, b"mv-guarded"));
    assert!(
        at_inet.saw_bytes(b"mv-control"),
        "control: a packet-socket frame from the unguarded macvlan pod reaches the host"
    );
    assert!(
        !at_inet.saw_bytes(b"mv-guarded"),
        "a packet-socket frame from the guarded macvlan pod reached the internet host"
    );
    // placement "host" cannot be honoured for macvlan: a clear error.
    let strict = Chain::new(
        &n.node.name,
        json!({"cniVersion": "1.0.0", "name": "egtest", "plugins": [n.guard_entry(json!({"placement": "host"}))]}),
    );
    let mut c = strict.conflist["plugins"][0].clone();
    c["cniVersion"] = json!("1.0.0");
    c["name"] = json!("egtest");
    c["prevResult"] = res.clone();
    c["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": enforce()});
    let err = exec_plugin(
        &n.node.name,
        "egress-guard",
        "ADD",
        &env(&format!("{cid}x"), &pod.path()),
        &c,
    )
    .unwrap_err();
    assert_eq!(err.code, Some(102), "{err:?}");
    assert!(err.msg.contains("macvlan"), "{}", err.msg);
    chain.del(&a, &pod.path(), Some(&res)).unwrap();
    chain.del(&ctl, &control.path(), Some(&cres)).unwrap();
    assert!(!exec_in(&pod.name, &["nft", "list", "tables"]).contains("egress_guard_"));
}

#[test]
fn each_verb_writes_one_json_record() {
    if !can_run_root_tests("each_verb_writes_one_json_record") {
        return;
    }
    let n = Node::new("lg");
    let pod = n.manual_pod("p", "vlg0", 2);
    let cid = format!("{}p", n.prefix);
    let c = conf(&n, "1.0.0", enforce(), Some(prev_result("vlg0")));
    guard(&n, "ADD", &cid, &pod.path(), &c).unwrap();
    guard(&n, "CHECK", &cid, &pod.path(), &c).unwrap();
    let bad = conf(
        &n,
        "1.0.0",
        json!({"egress-guard.io/mode": "nope"}),
        Some(prev_result("vlg0")),
    );
    guard(&n, "ADD", &cid, &pod.path(), &bad).unwrap_err();
    guard(&n, "DEL", &cid, &pod.path(), &c).unwrap();
    let log = std::fs::read_to_string(n.log_file()).unwrap();
    let records: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .filter(|v| v.get("verb").is_some())
        .collect();
    let verbs: Vec<&str> = records
        .iter()
        .map(|r| r["verb"].as_str().unwrap())
        .collect();
    assert_eq!(verbs, ["ADD", "CHECK", "ADD", "DEL"], "{log}");
    let add = &records[0];
    assert_eq!(add["container_id"], cid);
    assert_eq!(add["pod_namespace"], "ml");
    assert_eq!(add["pod_name"], "llm-0");
    assert_eq!(add["mode"], "enforce");
    assert_eq!(add["placement"], "host");
    assert_eq!(
        add["table"],
        format!("netdev {}", egress_guard::ruleset::table_name(&cid, "eth0"))
    );
    assert_eq!(add["device"], "vlg0");
    assert_eq!(add["entries"], 1);
    assert_eq!(add["outcome"], "ok");
    assert!(add["duration_us"].as_u64().unwrap() > 0);
    assert!(add["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(records[2]["outcome"], "error");
    assert_eq!(records[2]["error_code"], 100);
    assert!(records[2]["error"].as_str().unwrap().contains("\"nope\""));
}

#[test]
fn second_interface_of_a_container_gets_its_own_table() {
    if !can_run_root_tests("second_interface_of_a_container_gets_its_own_table") {
        return;
    }
    // A Multus-style secondary network chained with egress-guard as well: eth0 and net1 of the
    // same container must not replace each other's table.
    let n = Node::new("mi");
    let pod = n.manual_pod("p", "vmi0", 2);
    ip(
        &n.node.name,
        &format!("link add vmi1 type veth peer name net1 netns {}", pod.name),
    );
    let cid = format!("{}p", n.prefix);
    let c0 = conf(&n, "1.0.0", enforce(), Some(prev_result("vmi0")));
    let c1 = conf(&n, "1.0.0", enforce(), Some(prev_result("vmi1")));
    let mut env1 = env(&cid, &pod.path());
    env1[2].1 = "net1".into();
    guard(&n, "ADD", &cid, &pod.path(), &c0).unwrap();
    exec_plugin(&n.node.name, "egress-guard", "ADD", &env1, &c1).unwrap();
    let t = tables(&n);
    assert!(
        t.contains(&format!(
            "netdev {}\n",
            egress_guard::ruleset::table_name(&cid, "eth0")
        )),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "netdev {}\n",
            egress_guard::ruleset::table_name(&cid, "net1")
        )),
        "{t}"
    );
    let net1 = exec_in(
        &n.node.name,
        &[
            "nft",
            "list",
            "chain",
            "netdev",
            &egress_guard::ruleset::table_name(&cid, "net1"),
            "from_pod",
        ],
    );
    assert!(net1.contains("device \"vmi1\""), "{net1}");
    exec_plugin(&n.node.name, "egress-guard", "CHECK", &env1, &c1).unwrap();
    exec_plugin(&n.node.name, "egress-guard", "DEL", &env1, &c1).unwrap();
    let t = tables(&n);
    assert!(
        t.contains(&format!(
            "netdev {}\n",
            egress_guard::ruleset::table_name(&cid, "eth0")
        )),
        "eth0's table must survive net1's DEL: {t}"
    );
    assert!(
        !t.contains(&egress_guard::ruleset::table_name(&cid, "net1")),
        "{t}"
    );
    // GC keys on (containerID, ifname).
    exec_plugin(&n.node.name, "egress-guard", "ADD", &env1, &c1).unwrap();
    let chain = Chain::new(
        &n.node.name,
        json!({"name": "egtest", "plugins": [c0.clone()]}),
    );
    chain
        .guard_only(
            "GC",
            json!({"cni.dev/valid-attachments": [{"containerID": cid, "ifname": "eth0"}]}),
            &[],
        )
        .unwrap();
    let t = tables(&n);
    assert!(
        t.contains(&format!(
            "netdev {}\n",
            egress_guard::ruleset::table_name(&cid, "eth0")
        )) && !t.contains(&egress_guard::ruleset::table_name(&cid, "net1")),
        "{t}"
    );
    guard(&n, "DEL", &cid, &pod.path(), &c0).unwrap();
}

#[test]
fn host_link_check_notices_a_vanished_or_renamed_veth() {
    if !can_run_root_tests("host_link_check_notices_a_vanished_or_renamed_veth") {
        return;
    }
    use egress_guard::kernel::netns::NetnsGuard;
    use egress_guard::kernel::{HostPeer, Kernel, NetlinkKernel};
    let n = Node::new("hl");
    let pod = n.manual_pod("p", "vhl0", 2);
    let path = pod.path();
    let check = |dev: &str, index: u32| {
        let _inside = NetnsGuard::enter(std::path::Path::new(&format!(
            "/var/run/netns/{}",
            n.node.name
        )))
        .unwrap();
        NetlinkKernel::new()
            .host_link_is(std::path::Path::new(&path), "eth0", dev, index)
            .unwrap()
    };
    let index = {
        let _inside = NetnsGuard::enter(std::path::Path::new(&format!(
            "/var/run/netns/{}",
            n.node.name
        )))
        .unwrap();
        match NetlinkKernel::new()
            .host_peer(std::path::Path::new(&path), "eth0", &[])
            .unwrap()
        {
            HostPeer::Veth { name, index } => {
                assert_eq!(name, "vhl0");
                index
            }
            other => panic!("{other:?}"),
        }
    };
    assert!(check("vhl0", index));
    assert!(
        !check("vhl0", index + 1000),
        "another ifindex is not the same link"
    );
    ip(&n.node.name, "link set vhl0 name vhl0x");
    assert!(!check("vhl0", index), "renamed");
    ip(&n.node.name, "link del vhl0x");
    assert!(!check("vhl0", index), "deleted");
}
