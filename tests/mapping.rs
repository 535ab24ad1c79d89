//! Mapping a pod's required egress (issue 20), with real packets on a namespace-built node
//! (bridge + host-local, then egress-guard): the pod's table logs every distinct flow once per
//! interval, the agent turns those into records, `suggest` turns the records into an allow
//! value, and `explain` answers as the packets do.
#![allow(clippy::unwrap_used)]

use egress_guard_testkit::common;

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use common::agent::Agent;
use common::chain::{Attachment, Chain};
use common::node::*;
use common::probe::{self, Server};
use common::{can_run_root_tests, plugin_bin};
use serde_json::{json, Value};

fn annotations(mode: &str, allow: &str) -> Value {
    json!({"egress-guard.io/mode": mode, "egress-guard.io/allow": allow})
}

/// A container id whose first 16 characters (the log prefix) are unique to the node and tag.
fn cid(n: &Node, tag: &str) -> String {
    let mut id = format!("{:0<16}", format!("{}{tag}", n.prefix));
    id.truncate(16);
    format!("{id}{tag}")
}

/// Waits until the node's own IPv6 addresses (node, internet host, orchestrator) are usable.
fn node_ipv6_ready(n: &Node) {
    for ns in [&n.node, &n.inet, &n.orch] {
        wait_ipv6_ready(&ns.name);
    }
}

fn add(chain: &Chain, a: &Attachment) -> Value {
    chain
        .add(a)
        .unwrap_or_else(|e| panic!("ADD {} failed: {e:?}", a.pod))
}

/// One UDP datagram from `ns` to `dst` on each of `ports`, from one socket.
fn udp_to_ports(ns: &str, dst: &str, ports: Vec<u16>) {
    let ip: std::net::IpAddr = dst.parse().unwrap();
    in_ns_send(ns, move || {
        let s = if ip.is_ipv4() {
            UdpSocket::bind("0.0.0.0:0").unwrap()
        } else {
            UdpSocket::bind("[::]:0").unwrap()
        };
        for p in ports {
            let _ = s.send_to(b"flow", (ip, p));
        }
    });
}

fn in_ns_send(ns: &str, f: impl FnOnce() + Send + 'static) {
    probe::in_ns(ns, f);
}

/// The destination ports of `pod`'s flow records to `dst` over `protocol`, and how many
/// records there were.
fn recorded_ports(agent: &Agent, pod: &str, dst: &str, protocol: &str) -> (BTreeSet<u64>, usize) {
    let flows: Vec<Value> = agent
        .flows()
        .into_iter()
        .filter(|v| v["pod"] == pod && v["dst"] == dst && v["protocol"] == protocol)
        .collect();
    let ports = flows.iter().filter_map(|v| v["dport"].as_u64()).collect();
    (ports, flows.len())
}

/// Waits (at most `secs`) until `pod` has `want` records to `dst`, then a little longer for
/// any duplicate.
fn wait_records(agent: &Agent, pod: &str, dst: &str, protocol: &str, want: usize, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while recorded_ports(agent, pod, dst, protocol).1 < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_millis(1500));
}

#[test]
fn ten_thousand_distinct_flows_give_ten_thousand_records() {
    if !can_run_root_tests("ten_thousand_distinct_flows_give_ten_thousand_records") {
        return;
    }
    const N: u16 = 10_000;
    let n = Node::new("mpn");
    let (audit_ns, deny_ns) = (n.pod_netns("a"), n.pod_netns("d"));
    let chain = Chain::new(&n.node.name, n.bridge_conflist(n.guard_entry(json!({}))));
    let audit = Attachment::new(
        &cid(&n, "audit"),
        &audit_ns.path(),
        "ml",
        "audit-pod",
        annotations("audit", ""),
    );
    let deny = Attachment::new(
        &cid(&n, "deny"),
        &deny_ns.path(),
        "ml",
        "deny-pod",
        annotations("enforce", ""),
    );
    add(&chain, &audit);
    add(&chain, &deny);
    wait_ipv6_ready(&deny_ns.name);
    node_ipv6_ready(&n);
    let agent = Agent::start(&n, &[]);

    let ports: Vec<u16> = (20_000..20_000 + N).collect();
    let started = Instant::now();
    udp_to_ports(&audit_ns.name, INET4, ports.clone());
    udp_to_ports(&deny_ns.name, INET6, ports.clone());
    eprintln!("sent {} flows from each pod in {:?}", N, started.elapsed());
    wait_records(&agent, "audit-pod", INET4, "udp", N as usize, 60);
    wait_records(&agent, "deny-pod", INET6, "udp", N as usize, 30);
    let want: BTreeSet<u64> = ports.iter().map(|p| *p as u64).collect();
    for (pod, dst, verdict) in [
        ("audit-pod", INET4, "audited"),
        ("deny-pod", INET6, "denied"),
    ] {
        let (got, records) = recorded_ports(&agent, pod, dst, "udp");
        eprintln!("{pod}: {N} distinct flows in, {records} records out");
        let missing: Vec<&u64> = want.difference(&got).take(10).collect();
        assert_eq!(got, want, "{pod}: missing ports, first ones: {missing:?}");
        assert_eq!(records, N as usize, "{pod}: one record per flow");
        assert!(agent
            .flows()
            .iter()
            .filter(|v| v["pod"] == pod)
            .all(|v| v["verdict"] == verdict));
    }
    // The kernel counted every packet too.
    let m = agent.metrics();
    for (pod, verdict) in [("audit-pod", "audited"), ("deny-pod", "denied")] {
        let counted = common::agent::metric(
            &m,
            &format!("egress_guard_{verdict}_packets_total"),
            &[("pod", pod)],
        );
        assert!(counted >= N as f64, "{pod}: counter {counted}\n{m}");
    }
}

#[test]
fn repeats_spend_no_budget_and_a_flow_is_logged_again_each_interval() {
    if !can_run_root_tests("repeats_spend_no_budget_and_a_flow_is_logged_again_each_interval") {
        return;
    }
    let n = Node::new("mpr");
    let pod_ns = n.pod_netns("r");
    let entry = n.guard_entry(json!({
        "denyLogRate": {"perSecond": 5, "burst": 20},
        "denyLogInterval": 3,
    }));
    let chain = Chain::new(&n.node.name, n.bridge_conflist(entry));
    let a = Attachment::new(
        &cid(&n, "rep"),
        &pod_ns.path(),
        "ml",
        "rep-pod",
        annotations("enforce", ""),
    );
    add(&chain, &a);
    let agent = Agent::start(&n, &[]);

    // 3,000 packets of one flow, from one socket (one source port): one is logged.
    let ns = pod_ns.name.clone();
    in_ns_send(&ns, || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..3000 {
            let _ = s.send_to(b"again", (INET4, 7000));
        }
    });
    // Then 15 new flows: the budget (burst 20) is still there for them.
    udp_to_ports(&pod_ns.name, INET4, (8000..8015).collect());
    wait_records(&agent, "rep-pod", INET4, "udp", 16, 10);
    let (ports, records) = recorded_ports(&agent, "rep-pod", INET4, "udp");
    let want: BTreeSet<u64> = std::iter::once(7000).chain(8000..8015).collect();
    assert_eq!(ports, want, "the repeated flow and every new one");
    assert_eq!(records, 16);
    let repeated: Vec<Value> = agent
        .flows()
        .into_iter()
        .filter(|v| v["dport"] == 7000)
        .collect();
    assert_eq!(repeated[0]["count"], 1, "{repeated:?}");

    // 40 new flows at once: the budget logs some, and each of the others is logged by a later
    // packet of its own once the budget has refilled (it was not remembered as logged). Only
    // the flows not recorded yet are sent again: a flow logged before is logged again once
    // its interval (3 s here) is over, and would spend the budget first.
    let fresh: Vec<u16> = (9000..9040).collect();
    udp_to_ports(&pod_ns.name, INET4, fresh.clone());
    std::thread::sleep(Duration::from_millis(1500));
    let first_round = recorded_ports(&agent, "rep-pod", INET4, "udp").0;
    let logged_at_once = fresh
        .iter()
        .filter(|p| first_round.contains(&(**p as u64)))
        .count();
    assert!(
        logged_at_once < fresh.len(),
        "the budget held some back: {logged_at_once} of {}",
        fresh.len()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = recorded_ports(&agent, "rep-pod", INET4, "udp").0;
        if fresh.iter().all(|p| got.contains(&(*p as u64))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "flows over the budget never logged: {:?}",
            fresh
                .iter()
                .filter(|p| !got.contains(&(**p as u64)))
                .collect::<Vec<_>>()
        );
        let missing: Vec<u16> = fresh
            .iter()
            .copied()
            .filter(|p| !got.contains(&(*p as u64)))
            .collect();
        udp_to_ports(&pod_ns.name, INET4, missing);
        std::thread::sleep(Duration::from_millis(1000));
    }

    // After the interval (3 s) the same flow is logged again.
    let before = agent.flows().iter().filter(|v| v["dport"] == 7000).count();
    std::thread::sleep(Duration::from_secs(4));
    udp_to_ports(&pod_ns.name, INET4, vec![7000]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.flows().iter().filter(|v| v["dport"] == 7000).count() == before {
        assert!(
            Instant::now() < deadline,
            "the flow was not logged again after the interval"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn icmp_flows_are_one_per_type_and_code() {
    if !can_run_root_tests("icmp_flows_are_one_per_type_and_code") {
        return;
    }
    let n = Node::new("mpi");
    let pod_ns = n.pod_netns("p");
    let chain = Chain::new(&n.node.name, n.bridge_conflist(n.guard_entry(json!({}))));
    let a = Attachment::new(
        &cid(&n, "icmp"),
        &pod_ns.path(),
        "ml",
        "icmp-pod",
        annotations("enforce", ""),
    );
    add(&chain, &a);
    let agent = Agent::start(&n, &[]);
    // Echo requests with ever new identifiers and checksums, across several flush intervals:
    // one flow. A timestamp request (type 13) is another.
    for i in 0..4 {
        assert!(
            !probe::ping(&pod_ns.name, INET4),
            "ping {i} must be dropped"
        );
        std::thread::sleep(Duration::from_millis(600));
    }
    probe::raw_ip_send(
        &pod_ns.name,
        INET4,
        libc::IPPROTO_ICMP,
        "\x0d\x00\x00\x00ts",
    );
    std::thread::sleep(Duration::from_millis(2500));
    let icmp: Vec<Value> = agent
        .flows()
        .into_iter()
        .filter(|v| v["pod"] == "icmp-pod" && v["protocol"] == "icmp")
        .collect();
    let types: Vec<u64> = icmp
        .iter()
        .filter_map(|v| v["icmp_type"].as_u64())
        .collect();
    assert_eq!(types.iter().filter(|t| **t == 8).count(), 1, "{icmp:#?}");
    assert_eq!(types.iter().filter(|t| **t == 13).count(), 1, "{icmp:#?}");
    assert_eq!(icmp.len(), 2, "{icmp:#?}");
}

/// `egress-guard explain` for the pod: (exit code, stdout).
fn explain(entry: &str, ann: &str, to: &str, proto: &str, port: Option<u16>) -> (i32, String) {
    let mut c = Command::new(plugin_bin());
    c.args(["explain", "--config", entry, "--annotations", ann])
        .args(["--namespace", "ml", "--to", to, "--proto", proto])
        .env_remove("CNI_COMMAND");
    if let Some(p) = port {
        c.args(["--port", &p.to_string()]);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

fn write_json(n: &Node, name: &str, v: &Value) -> String {
    let path = n.tmp.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
    path
}

#[test]
fn explain_answers_as_the_packets_do() {
    if !can_run_root_tests("explain_answers_as_the_packets_do") {
        return;
    }
    let n = Node::new("mpe");
    let (pod_ns, control_ns) = (n.pod_netns("p"), n.pod_netns("c"));
    let entry = n.guard_entry(json!({}));
    let chain = Chain::new(&n.node.name, n.bridge_conflist(entry.clone()));
    let allow = "@orchestrator, 198.51.100.10 udp 5000-5009, 198.51.100.0/24 tcp 443, \
                 2001:db8:100::/64 udp 5005, 10.0.5.10 icmp";
    let ann = annotations("enforce", allow);
    let a = Attachment::new(
        &cid(&n, "exp"),
        &pod_ns.path(),
        "ml",
        "exp-pod",
        ann.clone(),
    );
    let control = Attachment::new(&cid(&n, "ctl"), &control_ns.path(), "ml", "ctl", json!({}));
    add(&chain, &a);
    add(&chain, &control);
    wait_ipv6_ready(&pod_ns.name);
    wait_ipv6_ready(&control_ns.name);
    node_ipv6_ready(&n);
    let entry_file = write_json(&n, "entry.json", &entry);
    let ann_file = write_json(&n, "ann.json", &ann);
    let _inet_udp = Server::udp_ports(&n.inet.name, (4998..5012).collect());
    let _inet_tcp = Server::tcp_ports(&n.inet.name, vec![80, 443, 8443]);
    let _orch_tcp = Server::tcp_ports(&n.orch.name, vec![443, 8443, 8444]);
    let _orch_udp = Server::udp_ports(&n.orch.name, vec![5005]);

    // (destination, protocol, port): a sample across the entries' edges.
    let mut sample: Vec<(&str, &str, Option<u16>)> = vec![
        (ORCH4, "tcp", Some(8443)),
        (ORCH4, "tcp", Some(8444)),
        (ORCH4, "tcp", Some(443)),
        (ORCH6, "tcp", Some(8443)),
        (ORCH4, "udp", Some(5005)),
        (ORCH4, "icmp", None),
        (INET4, "tcp", Some(443)),
        (INET4, "tcp", Some(80)),
        (INET4, "tcp", Some(8443)),
        (INET6, "udp", Some(5005)),
        (INET6, "udp", Some(5006)),
        (INET6, "icmpv6", None),
        (INET4, "icmp", None),
    ];
    for p in [4998, 4999, 5000, 5004, 5009, 5010, 5011] {
        sample.push((INET4, "udp", Some(p)));
    }
    let mut allowed = 0;
    for (dst, proto, port) in sample {
        let (code, text) = explain(&entry_file, &ann_file, dst, proto, port);
        assert!(
            code == 0 || code == 1,
            "{dst} {proto} {port:?}: exit {code}\n{text}"
        );
        let marker = format!("m-{dst}-{proto}-{}", port.unwrap_or(0));
        let reach = |ns: &str| match (proto, port) {
            ("tcp", Some(p)) => probe::tcp(ns, dst, p, &marker),
            ("udp", Some(p)) => probe::udp(ns, dst, p, &marker),
            _ => probe::ping(ns, dst),
        };
        assert!(
            reach(&control_ns.name),
            "control must reach {dst} {proto} {port:?}"
        );
        let passed = reach(&pod_ns.name);
        assert_eq!(
            passed,
            code == 0,
            "{dst} {proto} {port:?}: explain said (exit {code}):\n{text}but the packet {}",
            if passed { "got through" } else { "did not" }
        );
        allowed += passed as usize;
    }
    assert!(
        (5..15).contains(&allowed),
        "a mixed sample: {allowed} allowed"
    );
}

#[test]
fn audit_flows_suggest_an_allow_value_that_enforces_exactly_them() {
    if !can_run_root_tests("audit_flows_suggest_an_allow_value_that_enforces_exactly_them") {
        return;
    }
    let n = Node::new("mps");
    let (audit_ns, control_ns) = (n.pod_netns("a"), n.pod_netns("c"));
    let entry = n.guard_entry(json!({}));
    let chain = Chain::new(&n.node.name, n.bridge_conflist(entry.clone()));
    let audit = Attachment::new(
        &cid(&n, "map1"),
        &audit_ns.path(),
        "ml",
        "mapper",
        annotations("audit", ""),
    );
    let control = Attachment::new(&cid(&n, "ctl"), &control_ns.path(), "ml", "ctl", json!({}));
    add(&chain, &audit);
    add(&chain, &control);
    wait_ipv6_ready(&audit_ns.name);
    wait_ipv6_ready(&control_ns.name);
    node_ipv6_ready(&n);
    // Servers on what the pod uses and on neighbours it does not.
    let _u4 = Server::udp_ports(
        &n.inet.name,
        (30_000..30_201)
            .chain([40_001, 40_002, 40_003, 40_005])
            .collect(),
    );
    let _u6 = Server::udp_ports(&n.orch.name, (31_000..31_031).collect());
    let _t4 = Server::tcp_ports(&n.orch.name, (9000..9051).chain([8443]).collect());
    let _t4i = Server::tcp_ports(&n.inet.name, vec![80]);

    let agent = Agent::start(&n, &[]);
    // The backend at work, in audit mode: every flow passes.
    let mut observed = 0;
    for p in 30_000..30_200 {
        assert!(
            probe::udp(&audit_ns.name, INET4, p, "u4"),
            "audit must pass udp {p}"
        );
        observed += 1;
    }
    for p in [40_001, 40_003, 40_005] {
        assert!(probe::udp(&audit_ns.name, INET4, p, "u4s"));
        observed += 1;
    }
    for p in 31_000..31_030 {
        assert!(
            probe::udp(&audit_ns.name, ORCH6, p, "u6"),
            "audit must pass udp6 {p}"
        );
        observed += 1;
    }
    for p in (9000..9050).chain([8443]) {
        assert!(
            probe::tcp(&audit_ns.name, ORCH4, p, "t4"),
            "audit must pass tcp {p}"
        );
        observed += 1;
    }
    assert!(probe::ping(&audit_ns.name, INET4));
    observed += 1;
    eprintln!("{observed} distinct flows in audit mode");
    wait_records(&agent, "mapper", INET4, "udp", 203, 30);
    let records = n.tmp.join("flows.jsonl");
    let lines: Vec<String> = agent
        .flows()
        .iter()
        .map(|v| serde_json::to_string(v).unwrap())
        .collect();
    std::fs::write(&records, lines.join("\n") + "\n").unwrap();

    let entry_file = write_json(&n, "entry.json", &entry);
    let out = Command::new(plugin_bin())
        .args([
            "suggest",
            "--config",
            &entry_file,
            "--pod",
            "mapper",
            &records,
        ])
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("ml/mapper: "))
        .unwrap_or_else(|| panic!("no suggestion for ml/mapper: {text}"))
        .to_string();
    eprintln!("suggested: {value}");
    assert!(
        value.contains("@orchestrator"),
        "8443 falls in the operator's network: {value}"
    );
    assert!(
        value.contains("udp 30000-30199"),
        "contiguous ports merged: {value}"
    );

    // The pod restarted in enforce mode with the suggested value.
    chain.del(&audit, &audit_ns.path(), None).unwrap();
    let enforce_ns = n.pod_netns("e");
    let enforced = Attachment::new(
        &cid(&n, "map2"),
        &enforce_ns.path(),
        "ml",
        "mapper",
        annotations("enforce", &value),
    );
    add(&chain, &enforced);
    wait_ipv6_ready(&enforce_ns.name);
    let ns = enforce_ns.name.as_str();
    for p in 30_000..30_200 {
        assert!(probe::udp(ns, INET4, p, "e4"), "observed udp {p} must work");
    }
    for p in [40_001, 40_003, 40_005] {
        assert!(
            probe::udp(ns, INET4, p, "e4s"),
            "observed udp {p} must work"
        );
    }
    for p in 31_000..31_030 {
        assert!(
            probe::udp(ns, ORCH6, p, "e6"),
            "observed udp6 {p} must work"
        );
    }
    for p in (9000..9050).chain([8443]) {
        assert!(probe::tcp(ns, ORCH4, p, "et"), "observed tcp {p} must work");
    }
    assert!(probe::ping(ns, INET4), "observed ping must work");
    // Flows not observed: blocked, though each answers the unguarded control.
    let unobserved: [(&str, &str, u16); 6] = [
        (INET4, "udp", 30_200),
        (INET4, "udp", 40_002),
        (ORCH6, "udp", 31_030),
        (ORCH4, "tcp", 9050),
        (INET4, "tcp", 80),
        (INET6, "ping", 0),
    ];
    for (dst, proto, p) in unobserved {
        let reach = |ns: &str| match proto {
            "udp" => probe::udp(ns, dst, p, "x"),
            "tcp" => probe::tcp(ns, dst, p, "x"),
            _ => probe::ping(ns, dst),
        };
        assert!(
            reach(&control_ns.name),
            "control must reach {dst} {proto} {p}"
        );
        assert!(!reach(ns), "unobserved {dst} {proto} {p} must be blocked");
    }
}
