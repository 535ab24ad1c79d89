//! `egress-guard agent`, `status` and `report`: the agent runs as a process in a namespace-built
//! node (real reference CNI chain, real packets from inside pod namespaces) and is observed only
//! from outside: its stdout, its /metrics endpoint and the node's nf_tables. `report` runs
//! against a small HTTPS fake API server.
#![allow(clippy::unwrap_used)]

use egress_guard_testkit::common;
use egress_guard_testkit::fakeapi::{self, fake_api, fake_api_in, FakeApi, Request};

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::agent::{metric, on_node, state_dir, Agent};
use common::chain::{Attachment, Chain};
use common::node::*;
use common::probe::{self, Server};
use common::{can_run_root_tests, exec_in, plugin_bin, TempDir};
use serde_json::{json, Value};

fn annotations(mode: &str, allow: &str) -> Value {
    json!({"egress-guard.io/mode": mode, "egress-guard.io/allow": allow})
}

/// A container id whose first 16 characters (the part in the log prefix) are unique.
fn cid(n: &Node, tag: &str) -> String {
    let mut h = DefaultHasher::new();
    (&n.prefix, tag).hash(&mut h);
    format!("{:016x}{tag}", h.finish())
}

/// A pod of namespace `ml` named `pod` in `pod_ns`, in enforce mode with `@orchestrator`.
fn enforced(n: &Node, pod_ns: &common::Netns, tag: &str, pod: &str) -> Attachment {
    Attachment::new(
        &cid(n, tag),
        &pod_ns.path(),
        "ml",
        pod,
        annotations("enforce", "@orchestrator"),
    )
}

/// Waits (at most 10 s) until the pod's denied-packets series has not moved for 2 s.
fn settle(agent: &Agent, pod: &[(&str, &str)]) {
    let read = || metric(&agent.metrics(), "egress_guard_denied_packets_total", pod);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = read();
    let mut since = std::time::Instant::now();
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(250));
        let now = read();
        if now != last {
            (last, since) = (now, std::time::Instant::now());
        } else if since.elapsed() >= std::time::Duration::from_secs(2) {
            return;
        }
    }
}

fn add(chain: &Chain, a: &Attachment) -> Value {
    chain
        .add(a)
        .unwrap_or_else(|e| panic!("ADD {} failed: {e:?}", a.pod))
}

fn node_tables(n: &Node) -> String {
    exec_in(&n.node.name, &["nft", "list", "tables"])
}

#[test]
fn denied_and_audited_packets_become_one_json_line_each() {
    if !can_run_root_tests("denied_and_audited_packets_become_one_json_line_each") {
        return;
    }
    let n = Node::new("agl");
    let (deny_ns, audit_ns, control_ns) = (n.pod_netns("d"), n.pod_netns("a"), n.pod_netns("c"));
    let chain = Chain::new(&n.node.name, n.bridge_conflist(n.guard_entry(json!({}))));
    let deny = Attachment::new(
        &cid(&n, "deny"),
        &deny_ns.path(),
        "ml",
        "deny-pod",
        annotations("enforce", ""),
    );
    let audit = Attachment::new(
        &cid(&n, "audit"),
        &audit_ns.path(),
        "ml",
        "audit-pod",
        annotations("audit", ""),
    );
    let control = Attachment::new(
        &cid(&n, "ctl"),
        &control_ns.path(),
        "ml",
        "control-pod",
        json!({}),
    );
    for a in [&deny, &audit, &control] {
        add(&chain, a);
    }
    let _tcp = Server::tcp(&n.inet.name, 80);
    let udp = Server::udp(&n.inet.name, 53);
    let agent = Agent::start(&n, &[]);

    assert!(
        probe::tcp(&control_ns.name, INET4, 80, "c"),
        "unguarded control must reach the internet"
    );
    // One TCP SYN (the probe gives up before the first retransmission).
    assert!(
        !probe::tcp(&deny_ns.name, INET4, 80, "d"),
        "enforce must drop"
    );
    assert!(
        probe::udp(&audit_ns.name, INET4, 53, "audited-q"),
        "audit must let traffic pass"
    );
    assert!(udp.saw("audited-q"));

    let to_inet = |v: &Value, pod: &str| v["pod"] == pod && v["dst"] == INET4;
    agent
        .wait_for("egress-guard.flow/v1", Duration::from_secs(5), |v| {
            to_inet(v, "deny-pod")
        })
        .expect("no flow line for the denied packet");
    agent
        .wait_for("egress-guard.flow/v1", Duration::from_secs(5), |v| {
            to_inet(v, "audit-pod")
        })
        .expect("no flow line for the audited packet");
    // Two more flush intervals: a duplicate line would show up here.
    std::thread::sleep(Duration::from_millis(2500));
    let flows = agent.flows();

    let denied: Vec<&Value> = flows.iter().filter(|v| to_inet(v, "deny-pod")).collect();
    assert_eq!(
        denied.len(),
        1,
        "exactly one line for the denied packet: {denied:#?}"
    );
    let d = denied[0];
    assert_eq!(d["verdict"], "denied");
    assert_eq!(d["namespace"], "ml");
    assert_eq!(d["pod_uid"], "uid-deny-pod");
    assert_eq!(d["container_id"], deny.container_id.as_str());
    assert_eq!(d["node"], "test-node");
    assert_eq!(d["family"], "ipv4");
    assert_eq!(d["protocol"], "tcp");
    assert_eq!(d["src"], pod_addr(&deny_ns.name, false).as_str());
    assert_eq!(d["dport"], 80);
    assert_eq!(d["count"], 1);
    assert!(d["sport"].as_u64().unwrap_or(0) > 0, "{d}");
    assert!(d["bytes"].as_u64().unwrap_or(0) >= 40, "{d}");

    let audited: Vec<&Value> = flows.iter().filter(|v| to_inet(v, "audit-pod")).collect();
    assert_eq!(
        audited.len(),
        1,
        "exactly one line for the audited packet: {audited:#?}"
    );
    let a = audited[0];
    assert_eq!(a["verdict"], "audited");
    assert_eq!(a["protocol"], "udp");
    assert_eq!(a["dport"], 53);
    assert_eq!(a["container_id"], audit.container_id.as_str());
    assert_eq!(a["src"], pod_addr(&audit_ns.name, false).as_str());

    assert!(
        !flows.iter().any(|v| v["pod"] == "control-pod"),
        "an unguarded pod is never logged"
    );
    assert!(
        flows.iter().all(|v| v["pod"].is_string()),
        "every line names its pod: {flows:#?}"
    );
}

#[test]
fn metrics_change_as_traffic_is_sent_and_denied() {
    if !can_run_root_tests("metrics_change_as_traffic_is_sent_and_denied") {
        return;
    }
    let n = Node::new("agm");
    let pod_ns = n.pod_netns("m");
    let chain = Chain::new(&n.node.name, n.bridge_conflist(n.guard_entry(json!({}))));
    let a = enforced(&n, &pod_ns, "metrics", "metrics-pod");
    add(&chain, &a);
    let _orch = Server::tcp(&n.orch.name, 8443);
    let agent = Agent::start(&n, &[]);
    let pod = [("pod", "metrics-pod"), ("namespace", "ml")];
    // A new interface sends IPv6 multicast listener reports (and repeats them about a second
    // later), which the policy denies: let them pass before counting.
    settle(&agent, &pod);

    let before = agent.metrics();
    assert_eq!(
        metric(
            &before,
            "egress_guard_guarded_pods",
            &[("mode", "enforce"), ("placement", "host")]
        ),
        1.0,
        "{before}"
    );
    assert!(
        before.contains("egress_guard_denied_packets_total{"),
        "per-pod series exists before traffic:\n{before}"
    );
    let p0 = metric(&before, "egress_guard_denied_packets_total", &pod);
    let b0 = metric(&before, "egress_guard_denied_bytes_total", &pod);
    let l0 = metric(
        &before,
        "egress_guard_logged_packets_total",
        &[("verdict", "denied")],
    );

    // Allowed traffic does not count as denied.
    assert!(probe::tcp(&pod_ns.name, ORCH4, 8443, "ok"));
    let allowed = agent.metrics();
    assert_eq!(
        metric(&allowed, "egress_guard_denied_packets_total", &pod),
        p0,
        "allowed traffic counted as denied"
    );

    // Two UDP probes, two datagrams each, all dropped and counted; each flow logged once.
    for port in [9001, 9002] {
        assert!(!probe::udp(&pod_ns.name, INET4, port, "x"));
    }
    let after = agent.metrics();
    let p1 = metric(&after, "egress_guard_denied_packets_total", &pod);
    let b1 = metric(&after, "egress_guard_denied_bytes_total", &pod);
    assert!(p1 >= p0 + 4.0, "denied packets {p0} -> {p1}\n{after}");
    assert!(b1 >= b0 + 4.0 * 29.0, "denied bytes {b0} -> {b1}");
    let l1 = metric(
        &after,
        "egress_guard_logged_packets_total",
        &[("verdict", "denied")],
    );
    assert!(l1 >= l0 + 2.0, "logged packets {l0} -> {l1}");
    assert_eq!(
        metric(&after, "egress_guard_agent_errors_total", &[]),
        0.0,
        "{after}"
    );

    // `status` shows the pod with its counters.
    let out = exec_in(
        &n.node.name,
        &[
            plugin_bin().as_str(),
            "status",
            "--state-dir",
            state_dir(&n).as_str(),
        ],
    );
    let row = out
        .lines()
        .find(|l| l.contains("metrics-pod"))
        .unwrap_or_else(|| panic!("no row for the pod:\n{out}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[3..5], ["enforce", "host"], "{out}");
    assert_eq!(
        cols[6], "2",
        "allowlist size (@orchestrator is two entries): {out}"
    );
    assert!(cols[7].parse::<u64>().unwrap() >= p1 as u64, "{out}");
    assert_eq!(cols[9], "ok", "{out}");
}

/// Handle of the rule of `chain` that logs, in the node's table.
/// Handles of the rules of `table`'s from_pod chain that log.
fn log_rule_handles(n: &Node, table: &str) -> Vec<String> {
    let listing = exec_in(
        &n.node.name,
        &["nft", "-a", "list", "chain", "netdev", table, "from_pod"],
    );
    listing
        .lines()
        .filter(|l| l.contains("log prefix"))
        .filter_map(|l| l.rsplit(' ').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn a_second_agent_says_another_holds_the_nflog_group() {
    if !can_run_root_tests("a_second_agent_says_another_holds_the_nflog_group") {
        return;
    }
    let n = Node::new("ag2");
    let _first = Agent::start(&n, &[]);
    let out = on_node(&n)
        .arg("agent")
        .args([
            "--state-dir",
            state_dir(&n).as_str(),
            "--node-name",
            "test-node",
        ])
        .args(["--metrics-address", "127.0.0.1:9618", "--interval", "1"])
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("NFLOG group 100 is held by another process") && all.contains("EPERM"),
        "{all}"
    );
}

#[test]
fn hand_deleted_rule_is_drift_and_repair_restores_it() {
    if !can_run_root_tests("hand_deleted_rule_is_drift_and_repair_restores_it") {
        return;
    }
    let n = Node::new("agd");
    let pod_ns = n.pod_netns("p");
    let chain = Chain::new(&n.node.name, n.bridge_conflist(n.guard_entry(json!({}))));
    let a = enforced(&n, &pod_ns, "drift", "drift-pod");
    let res = add(&chain, &a);
    let table = egress_guard::ruleset::table_name(&a.container_id, "eth0");

    let watcher = Agent::start(&n, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        watcher.events().is_empty(),
        "an intact table is no drift: {:#?}",
        watcher.events()
    );
    let logging = log_rule_handles(&n, &table);
    let handle = logging.first().expect("log rule").clone();
    exec_in(
        &n.node.name,
        &[
            "nft", "delete", "rule", "netdev", &table, "from_pod", "handle", &handle,
        ],
    );
    let drift = watcher
        .wait_for("egress-guard.event/v1", Duration::from_millis(2500), |v| {
            v["event"] == "drift"
        })
        .expect("drift not reported within one interval");
    assert_eq!(drift["pod"], "drift-pod");
    assert_eq!(drift["container_id"], a.container_id.as_str());
    assert!(!drift["detail"].as_array().unwrap().is_empty(), "{drift}");
    std::thread::sleep(Duration::from_millis(2000));
    assert!(
        !log_rule_handles(&n, &table).contains(&handle),
        "without --repair the table is left alone"
    );
    assert!(!watcher.events().iter().any(|v| v["event"] == "repaired"));
    let m = watcher.metrics();
    assert!(
        metric(&m, "egress_guard_drift_events_total", &[]) >= 1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "egress_guard_repairs_total", &[]), 0.0);
    drop(watcher);

    // `status` fails on drift and names the missing rule in nft text.
    let out = on_node(&n)
        .arg("status")
        .args(["--state-dir", state_dir(&n).as_str()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let missing = stdout
        .lines()
        .find(|l| l.contains("chain from_pod: missing rule:"))
        .unwrap_or_else(|| panic!("no missing rule named:\n{stdout}"));
    assert!(missing.contains("log prefix \"eg:deny:"), "{stdout}");
    assert!(stdout.contains("drift-pod"), "{stdout}");

    let repairer = Agent::start(&n, &["--repair"]);
    let fixed = repairer
        .wait_for("egress-guard.event/v1", Duration::from_millis(2500), |v| {
            v["event"] == "repaired"
        })
        .expect("no repair within one interval");
    assert_eq!(fixed["pod"], "drift-pod");
    assert!(
        log_rule_handles(&n, &table).len() == logging.len(),
        "the log rule is back"
    );
    chain
        .check(&a, &res)
        .unwrap_or_else(|e| panic!("CHECK after repair: {e:?}"));
    assert!(metric(&repairer.metrics(), "egress_guard_repairs_total", &[]) >= 1.0);
    // Once repaired, no more drift.
    std::thread::sleep(Duration::from_millis(1500));
    let drifts = repairer
        .events()
        .iter()
        .filter(|v| v["event"] == "drift")
        .count();
    assert_eq!(drifts, 1, "{:#?}", repairer.events());
}

#[test]
fn tables_of_pods_deleted_without_del_are_collected() {
    if !can_run_root_tests("tables_of_pods_deleted_without_del_are_collected") {
        return;
    }
    let n = Node::new("agg");
    let (gone_ns, keep_ns, orphan_ns) = (n.pod_netns("g"), n.pod_netns("k"), n.pod_netns("x"));
    let chain = Chain::new(&n.node.name, n.bridge_conflist(n.guard_entry(json!({}))));
    let gone = Attachment::new(
        &cid(&n, "gone"),
        &gone_ns.path(),
        "ml",
        "gone-pod",
        annotations("enforce", ""),
    );
    let keep = Attachment::new(
        &cid(&n, "keep"),
        &keep_ns.path(),
        "ml",
        "keep-pod",
        annotations("enforce", ""),
    );
    let orphan = Attachment::new(
        &cid(&n, "orphan"),
        &orphan_ns.path(),
        "ml",
        "orphan-pod",
        annotations("audit", ""),
    );
    for a in [&gone, &keep, &orphan] {
        add(&chain, a);
    }
    let tables = node_tables(&n);
    for a in [&gone, &keep, &orphan] {
        assert!(
            tables.contains(&egress_guard::ruleset::table_name(&a.container_id, "eth0")),
            "{tables}"
        );
    }
    // Sandboxes destroyed without DEL; for one the state file is lost as well.
    let state_of = |a: &Attachment| {
        std::path::Path::new(&state_dir(&n)).join(format!(
            "{}.json",
            &egress_guard::ruleset::table_name(&a.container_id, "eth0")["egress_guard_".len()..]
        ))
    };
    std::fs::remove_file(state_of(&orphan)).unwrap();
    drop(gone_ns);
    drop(orphan_ns);

    let agent = Agent::start(&n, &[]);
    agent
        .wait_for("egress-guard.event/v1", Duration::from_secs(5), |v| {
            v["event"] == "collected" && v["pod"] == "gone-pod"
        })
        .expect("table of the deleted pod not collected");
    let orphan_table = egress_guard::ruleset::table_name(&orphan.container_id, "eth0");
    agent
        .wait_for("egress-guard.event/v1", Duration::from_secs(6), |v| {
            v["event"] == "collected" && v["table"] == orphan_table.as_str()
        })
        .expect("orphan table without state file not collected");
    let tables = node_tables(&n);
    assert!(
        !tables.contains(&egress_guard::ruleset::table_name(
            &gone.container_id,
            "eth0"
        )),
        "{tables}"
    );
    assert!(!tables.contains(&orphan_table), "{tables}");
    assert!(
        tables.contains(&egress_guard::ruleset::table_name(
            &keep.container_id,
            "eth0"
        )),
        "a live pod's table stays: {tables}"
    );
    assert!(
        !state_of(&gone).exists(),
        "state file of the deleted pod removed"
    );
    assert!(state_of(&keep).exists(), "state file of the live pod kept");
    assert!(
        !agent.events().iter().any(|v| v["pod"] == "keep-pod"),
        "{:#?}",
        agent.events()
    );
    assert!(metric(&agent.metrics(), "egress_guard_gc_removals_total", &[]) >= 2.0);
}

// ---- report against a fake API server ----

/// A kubeconfig (token `secret-token`) for the fake API server, written into `tmp`.
fn fake_kubeconfig(tmp: &TempDir, api: &FakeApi, ca_pem: &str) -> String {
    fakeapi::kubeconfig(&tmp.path, api, ca_pem)
        .display()
        .to_string()
}

fn k8s_pod(ns: &str, name: &str, node: &str, annotations: Value, host_network: bool) -> Value {
    json!({"metadata": {"namespace": ns, "name": name, "annotations": annotations},
           "spec": {"nodeName": node, "hostNetwork": host_network}, "status": {"phase": "Running"}})
}

fn daemon_pod(node: &str) -> Value {
    json!({"metadata": {"namespace": "egress-guard", "name": format!("egress-guard-{node}"), "labels": {"app.kubernetes.io/name": "egress-guard"}},
           "spec": {"nodeName": node, "hostNetwork": true},
           "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
}

#[test]
fn report_flags_host_network_pods_against_a_fake_api_server() {
    let base_pods = vec![
        daemon_pod("node-a"),
        daemon_pod("node-b"),
        k8s_pod(
            "ml",
            "guarded-ok",
            "node-a",
            json!({"egress-guard.io/mode": "enforce"}),
            false,
        ),
        k8s_pod("kube-system", "kube-proxy-x", "node-a", json!({}), true),
        k8s_pod("model-serving", "served", "node-b", json!({}), false),
    ];
    let nodes = json!([{"metadata": {"name": "node-a"}}, {"metadata": {"name": "node-b"}}]);
    let mut with_problem = base_pods.clone();
    with_problem.push(k8s_pod(
        "ml",
        "hostnet-llm",
        "node-a",
        json!({"egress-guard.io/mode": "enforce"}),
        true,
    ));
    let body = Arc::new(Mutex::new(json!({"pods": with_problem, "nodes": nodes})));
    let (api, ca_pem) = fake_api(body.clone());
    let tmp = TempDir::new("rep");
    let kubeconfig = fake_kubeconfig(&tmp, &api, &ca_pem);
    let report = || {
        let out = Command::new(plugin_bin())
            .args([
                "report",
                "--kubeconfig",
                kubeconfig.as_str(),
                "--enforce-namespace",
                "model-serving",
            ])
            .env_remove("CNI_COMMAND")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, stdout, stderr) = report();
    assert_eq!(
        code,
        Some(1),
        "a hostNetwork pod asking for a guard fails the gate\n{stdout}{stderr}"
    );
    let flagged: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(flagged.len(), 1, "{stdout}");
    assert!(
        flagged[0].contains("hostnet-llm") && flagged[0].contains("host-network"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("kube-proxy-x"),
        "a hostNetwork pod that asks for no guard is fine"
    );
    let seen = api.requests();
    assert!(
        seen.iter()
            .any(|r| r.path == "/api/v1/pods" && r.auth.as_deref() == Some("Bearer secret-token")),
        "{seen:?}"
    );

    // Without it the gate passes; a pod on a node with no ready egress-guard pod fails it again.
    body.lock().unwrap()["pods"] = json!(base_pods);
    let (code, stdout, stderr) = report();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let mut unchained = base_pods.clone();
    unchained.remove(1);
    body.lock().unwrap()["pods"] = json!(unchained);
    let (code, stdout, _) = report();
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("served") && stdout.contains("node-not-chained"),
        "{stdout}"
    );
}

/// A running pod-network pod with a uid and an IP, as the API server lists it.
fn running_pod(ns: &str, name: &str, node: &str, annotations: Value) -> Value {
    let mut p = k8s_pod(ns, name, node, annotations, false);
    p["metadata"]["uid"] = json!(format!("uid-{name}"));
    p["status"]["podIP"] = json!("10.244.1.9");
    p
}

#[test]
fn report_pages_through_5000_pods() {
    let mut pods = vec![daemon_pod("node-a")];
    for i in 0..4998 {
        pods.push(k8s_pod(
            "ml",
            &format!("p{i:04}"),
            "node-a",
            json!({}),
            false,
        ));
    }
    pods.push(k8s_pod(
        "ml",
        "last-hostnet",
        "node-a",
        json!({"egress-guard.io/mode": "audit"}),
        true,
    ));
    assert_eq!(pods.len(), 5000);
    let nodes = json!([{"metadata": {"name": "node-a"}}]);
    let body = Arc::new(Mutex::new(json!({"pods": pods, "nodes": nodes})));
    let (api, ca_pem) = fake_api(body);
    let tmp = TempDir::new("page");
    let kubeconfig = fake_kubeconfig(&tmp, &api, &ca_pem);
    let out = Command::new(plugin_bin())
        .args(["report", "--json", "--kubeconfig", kubeconfig.as_str()])
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    assert_eq!(
        found[0]["pod"], "last-hostnet",
        "the last pod of the last page"
    );
    let pages: Vec<Request> = api
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v1/pods")
        .collect();
    assert_eq!(pages.len(), 10, "{pages:?}");
    assert!(
        pages.iter().all(|r| r.param("limit") == Some("500")),
        "{pages:?}"
    );
    assert_eq!(pages[0].param("continue"), None);
    assert_eq!(pages[9].param("continue"), Some("4500"));
}

#[test]
fn agent_reports_and_evicts_pods_that_started_unguarded() {
    if !can_run_root_tests("agent_reports_and_evicts_pods_that_started_unguarded") {
        return;
    }
    let n = Node::new("agu");
    let pod_ns = n.pod_netns("g");
    let chain = Chain::new(&n.node.name, n.bridge_conflist(n.guard_entry(json!({}))));
    let a = enforced(&n, &pod_ns, "guarded", "guarded-pod");
    add(&chain, &a);
    let enforce = json!({"egress-guard.io/mode": "enforce"});
    let pods = vec![
        running_pod("ml", "guarded-pod", "test-node", enforce.clone()),
        running_pod("ml", "early-pod", "test-node", enforce.clone()),
        running_pod("ml", "plain-pod", "test-node", json!({})),
        running_pod("ml", "elsewhere-pod", "other-node", enforce.clone()),
        running_pod("ml", "budget-pod", "test-node", enforce),
        daemon_pod("test-node"),
        daemon_pod("other-node"),
    ];
    let nodes = json!([{"metadata": {"name": "test-node"}}, {"metadata": {"name": "other-node"}}]);
    let body = Arc::new(Mutex::new(
        json!({"pods": pods, "nodes": nodes, "pdb": ["budget-pod"]}),
    ));
    let (api, ca_pem) = fake_api_in(Some(&n.node.name), body.clone());
    let tmp = TempDir::new("unguarded");
    let kubeconfig = fake_kubeconfig(&tmp, &api, &ca_pem);

    // Without --evict-unguarded: reported once, counted, nothing evicted.
    let agent = Agent::start(
        &n,
        &[
            "--kubeconfig",
            kubeconfig.as_str(),
            "--unguarded-interval",
            "1",
        ],
    );
    let found = agent.wait_for("egress-guard.event/v1", Duration::from_secs(5), |v| {
        v["event"] == "unguarded" && v["pod"] == "budget-pod"
    });
    assert!(found.is_some(), "{:#?}", agent.events());
    std::thread::sleep(Duration::from_millis(2500));
    let unguarded: Vec<String> = agent
        .events()
        .iter()
        .filter(|v| v["event"] == "unguarded")
        .map(|v| v["pod"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        unguarded,
        ["early-pod", "budget-pod"],
        "once each, only those"
    );
    let early = agent
        .events()
        .into_iter()
        .find(|v| v["pod"] == "early-pod")
        .unwrap();
    assert_eq!(early["namespace"], "ml");
    assert_eq!(early["pod_uid"], "uid-early-pod");
    assert!(
        early["detail"][0]
            .as_str()
            .unwrap()
            .contains("mode enforce"),
        "{early}"
    );
    assert_eq!(
        metric(&agent.metrics(), "egress_guard_unguarded_pods", &[]),
        2.0
    );
    let requests = api.requests();
    assert!(
        requests.iter().any(|r| r.path == "/api/v1/pods"
            && r.param("fieldSelector") == Some("spec.nodeName=test-node")),
        "{requests:?}"
    );
    assert!(
        !requests.iter().any(|r| r.path.ends_with("/eviction")),
        "{requests:?}"
    );
    let events = body.lock().unwrap()["events"].clone();
    let on: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["involvedObject"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        on,
        ["early-pod", "budget-pod"],
        "one Kubernetes Event per pod"
    );
    assert_eq!(events[0]["reason"], "EgressGuardUnguarded");
    assert_eq!(events[0]["involvedObject"]["uid"], "uid-early-pod");
    drop(agent);

    // `report` finds them cluster-wide from those Events.
    let out = on_node(&n)
        .args(["report", "--json", "--kubeconfig", kubeconfig.as_str()])
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let unguarded_listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["reason"] == "unguarded")
        .map(|f| f["pod"].as_str().unwrap())
        .collect();
    assert_eq!(unguarded_listed, ["budget-pod", "early-pod"], "{listed}");

    // With --evict-unguarded: evicted through the Eviction API; a disruption budget refusal
    // is reported and tried again.
    let agent = Agent::start(
        &n,
        &[
            "--kubeconfig",
            kubeconfig.as_str(),
            "--unguarded-interval",
            "1",
            "--evict-unguarded",
        ],
    );
    let evicted = agent.wait_for("egress-guard.event/v1", Duration::from_secs(5), |v| {
        v["event"] == "evicted"
    });
    assert_eq!(evicted.expect("no eviction")["pod"], "early-pod");
    std::thread::sleep(Duration::from_millis(2500));
    let failed = agent
        .events()
        .iter()
        .filter(|v| v["event"] == "evict-failed" && v["pod"] == "budget-pod")
        .count();
    assert!(failed >= 2, "retried every pass: {:#?}", agent.events());
    let evictions: Vec<Request> = api
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/eviction"))
        .collect();
    assert!(evictions.iter().any(
        |r| r.path == "/api/v1/namespaces/ml/pods/early-pod/eviction"
            && r.method == "POST"
            && r.body.contains("\"kind\":\"Eviction\"")
    ));
    assert!(!evictions.iter().any(|r| r.path.contains("guarded-pod")
        || r.path.contains("plain-pod")
        || r.path.contains("elsewhere-pod")));
    let m = agent.metrics();
    assert_eq!(metric(&m, "egress_guard_evictions_total", &[]), 1.0, "{m}");
    // The evicted pod is gone from the API; the budget-protected one is still unguarded.
    assert_eq!(metric(&m, "egress_guard_unguarded_pods", &[]), 1.0, "{m}");
}

/// (resource, verb) pairs a ClusterRole in `deploy/` grants.
fn granted(file: &str, role: &str) -> std::collections::BTreeSet<(String, String)> {
    use serde::Deserialize;
    let path = format!("{}/deploy/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = std::collections::BTreeSet::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).unwrap();
        if v["kind"] != "ClusterRole" || v["metadata"]["name"] != role {
            continue;
        }
        for rule in v["rules"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    out.insert((r.as_str().unwrap().into(), verb.as_str().unwrap().into()));
                }
            }
        }
    }
    out
}

/// The (resource, verb) each request the fake API server saw needs.
fn needed(requests: &[Request]) -> std::collections::BTreeSet<(String, String)> {
    requests
        .iter()
        .map(|r| {
            let seg: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
            let pair = match (r.method.as_str(), seg.as_slice()) {
                ("GET", ["api", "v1", res]) => (res.to_string(), "list"),
                ("GET", ["api", "v1", "namespaces", _, res, _]) => (res.to_string(), "get"),
                ("POST", ["api", "v1", "namespaces", _, res]) => (res.to_string(), "create"),
                ("POST", ["api", "v1", "namespaces", _, res, _, sub]) => {
                    (format!("{res}/{sub}"), "create")
                }
                other => panic!("unexpected request {other:?}"),
            };
            (pair.0, pair.1.to_string())
        })
        .collect()
}

#[test]
fn rbac_grants_exactly_what_the_agent_and_report_use() {
    if !can_run_root_tests("rbac_grants_exactly_what_the_agent_and_report_use") {
        return;
    }
    let n = Node::new("agr");
    let pods = vec![
        running_pod(
            "ml",
            "early-pod",
            "test-node",
            json!({"egress-guard.io/mode": "enforce"}),
        ),
        daemon_pod("test-node"),
    ];
    let nodes = json!([{"metadata": {"name": "test-node"}}]);
    let body = Arc::new(Mutex::new(json!({"pods": pods, "nodes": nodes})));
    let (api, ca_pem) = fake_api_in(Some(&n.node.name), body);
    let tmp = TempDir::new("rbac");
    let kubeconfig = fake_kubeconfig(&tmp, &api, &ca_pem);
    let agent = Agent::start(
        &n,
        &[
            "--kubeconfig",
            kubeconfig.as_str(),
            "--unguarded-interval",
            "1",
            "--evict-unguarded",
        ],
    );
    agent
        .wait_for("egress-guard.event/v1", Duration::from_secs(5), |v| {
            v["event"] == "evicted"
        })
        .expect("no eviction");
    drop(agent);
    let by_agent = needed(&api.requests());
    api.seen.lock().unwrap().clear();
    let out = on_node(&n)
        .args(["report", "--kubeconfig", kubeconfig.as_str()])
        .output()
        .unwrap();
    assert!(out.status.code().is_some_and(|c| c < 2), "{out:?}");
    let by_report = needed(&api.requests());

    let pair = |r: &str, v: &str| (r.to_string(), v.to_string());
    let evict = [pair("pods/eviction", "create")];
    let mut agent_needs = by_agent.clone();
    for e in &evict {
        agent_needs.remove(e);
    }
    // The plugin's API fallback gets a pod; the installer gets and patches its node.
    let mut main_role = agent_needs.clone();
    main_role.extend([
        pair("pods", "get"),
        pair("nodes", "get"),
        pair("nodes", "patch"),
    ]);
    assert_eq!(
        granted("rbac.yaml", "egress-guard"),
        main_role,
        "agent used {by_agent:?}"
    );
    assert_eq!(
        granted("rbac-evict.yaml", "egress-guard-evict"),
        evict.clone().into()
    );
    assert!(by_agent.contains(&evict[0]), "{by_agent:?}");
    assert_eq!(granted("rbac.yaml", "egress-guard-report"), by_report);
}

#[test]
fn failed_adds_reach_a_metric_and_an_event_record() {
    if !can_run_root_tests("failed_adds_reach_a_metric_and_an_event_record") {
        return;
    }
    let n = Node::new("agf");
    let pod_ns = n.pod_netns("f");
    let chain = Chain::new(&n.node.name, n.bridge_conflist(n.guard_entry(json!({}))));
    let agent = Agent::start(&n, &[]);
    let bad = Attachment::new(
        &cid(&n, "typo"),
        &pod_ns.path(),
        "ml",
        "typo-pod",
        json!({"egress-guard.io/mode": "enforce", "egress-guard.io/alow": "10.0.0.1"}),
    );
    let err = chain
        .add(&bad)
        .expect_err("a misspelt annotation fails ADD");
    assert_eq!(err.plugin, "egress-guard", "{err:?}");
    let code = err.code.expect("error code");
    let event = agent
        .wait_for("egress-guard.event/v1", Duration::from_secs(5), |v| {
            v["event"] == "add-failed"
        })
        .expect("no add-failed record within an interval");
    assert_eq!(event["pod"], "typo-pod");
    assert_eq!(event["namespace"], "ml");
    assert_eq!(event["container_id"], bad.container_id.as_str());
    let detail = event["detail"][0].as_str().unwrap();
    assert!(
        detail.starts_with(&format!("code {code}: ")) && detail.contains("egress-guard.io/alow"),
        "{event}"
    );
    let m = agent.metrics();
    assert_eq!(
        metric(
            &m,
            "egress_guard_plugin_add_failures_total",
            &[("code", &code.to_string())]
        ),
        1.0,
        "{m}"
    );
    // Handed over once: the next pass reports nothing new.
    std::thread::sleep(Duration::from_millis(1500));
    let n_failed = agent
        .events()
        .iter()
        .filter(|v| v["event"] == "add-failed")
        .count();
    assert_eq!(n_failed, 1);
}

#[test]
fn the_deny_log_rate_is_a_conflist_field_and_no_drift() {
    if !can_run_root_tests("the_deny_log_rate_is_a_conflist_field_and_no_drift") {
        return;
    }
    let n = Node::new("agl");
    let pod_ns = n.pod_netns("l");
    let entry = n.guard_entry(json!({"denyLogRate": {"perSecond": 500, "burst": 1000}}));
    let chain = Chain::new(&n.node.name, n.bridge_conflist(entry));
    let a = enforced(&n, &pod_ns, "rate", "rate-pod");
    let res = add(&chain, &a);
    let table = egress_guard::ruleset::table_name(&a.container_id, "eth0");
    let listing = exec_in(&n.node.name, &["nft", "list", "table", "netdev", &table]);
    assert!(
        listing.contains("limit rate 500/second burst 1000 packets log prefix"),
        "{listing}"
    );
    chain
        .check(&a, &res)
        .unwrap_or_else(|e| panic!("CHECK: {e:?}"));
    // The agent rebuilds the expected table from the state file, rate included.
    let agent = Agent::start(&n, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !agent.events().iter().any(|v| v["event"] == "drift"),
        "{:#?}",
        agent.events()
    );
}

#[test]
fn log_level_applies_without_a_log_file() {
    if !can_run_root_tests("log_level_applies_without_a_log_file") {
        return;
    }
    let n = Node::new("agv");
    let stderr_at = |level: &str| -> String {
        let mut child = on_node(&n)
            .arg("agent")
            .args([
                "--state-dir",
                state_dir(&n).as_str(),
                "--metrics-address",
                "off",
            ])
            .args(["--log-level", level])
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(800));
        // SAFETY: kill(2) on the PID of a child this test spawned and has not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        child.wait().unwrap();
        err
    };
    let info = stderr_at("info");
    assert!(info.contains("\"level\":\"info\""), "{info}");
    let warn = stderr_at("warn");
    assert!(!warn.contains("\"level\":\"info\""), "{warn}");
    let debug = stderr_at("debug");
    assert!(debug.contains("\"level\":\"info\""), "{debug}");
}

#[test]
fn a_pod_whose_netns_path_the_agent_cannot_see_stays_guarded() {
    if !can_run_root_tests("a_pod_whose_netns_path_the_agent_cannot_see_stays_guarded") {
        return;
    }
    let n = Node::new("agn");
    let pod_ns = n.pod_netns("p");
    let control_ns = n.pod_netns("c");
    let chain = Chain::new(&n.node.name, n.bridge_conflist(n.guard_entry(json!({}))));
    let a = enforced(&n, &pod_ns, "netns", "netns-pod");
    add(&chain, &a);
    add(
        &chain,
        &Attachment::new(
            &cid(&n, "control"),
            &control_ns.path(),
            "ml",
            "control-pod",
            json!({}),
        ),
    );
    let table = egress_guard::ruleset::table_name(&a.container_id, "eth0");
    // The state file names a netns path the agent does not see (as from a container without
    // the runtime's netns directory, or `/proc/PID/ns/net` of another PID namespace).
    let state = std::path::Path::new(&state_dir(&n))
        .join(format!("{}.json", &table["egress_guard_".len()..]));
    let mut record: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    record["netns"] = json!("/proc/999999999/ns/net");
    std::fs::write(&state, record.to_string()).unwrap();

    let _tcp = Server::tcp(&n.inet.name, 80);
    let agent = Agent::start(&n, &[]);
    // Three passes at --interval 1: an orphan or gone pod would have been collected by now.
    std::thread::sleep(Duration::from_millis(3000));
    assert!(
        !agent.events().iter().any(|v| v["event"] == "collected"),
        "{:#?}",
        agent.events()
    );
    assert!(state.exists(), "the state file stays");
    assert!(node_tables(&n).contains(&table), "{}", node_tables(&n));
    // Real packets: the pod is still denied what the control reaches.
    assert!(probe::tcp(&control_ns.name, INET4, 80, "control"));
    assert!(!probe::tcp(&pod_ns.name, INET4, 80, "guarded"));
}
