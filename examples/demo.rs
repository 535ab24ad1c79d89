//! The egress-guard demo: one guarded model backend on a node built from network namespaces,
//! chained after the real `bridge` + `host-local` reference plugins, probed with real packets.
//! Run through `examples/demo.sh` (root).
#![allow(clippy::unwrap_used)]

use egress_guard_testkit::common;

use common::chain::{Attachment, Chain};
use common::node::*;
use common::probe::{self, Server};
use common::{exec_in, plugin_bin, run};
use serde_json::json;

struct Row {
    from: &'static str,
    what: String,
    expect_allowed: bool,
    allowed: bool,
}

fn main() {
    if !common::can_run_root_tests("demo") {
        std::process::exit(1);
    }
    println!("egress-guard demo: plugin {}", plugin_bin());
    let n = Node::new("demo");
    let backend = n.pod_netns("llm");
    let neighbour = n.pod_netns("nbr");
    let entry = n.guard_entry(json!({}));
    let chain = Chain::new(&n.node.name, n.bridge_conflist(entry));
    let annotations = json!({
        "egress-guard.io/mode": "enforce",
        "egress-guard.io/allow": "@orchestrator"
    });
    println!("\nconflist: bridge + host-local, then egress-guard (networks.orchestrator = 10.0.5.0/24 tcp 8443, fd00:5::/64 tcp 8443)");
    println!("model backend annotations: {annotations}");
    let cid = format!("{}backend", n.prefix);
    let b = Attachment::new(
        &cid,
        &backend.path(),
        "model-serving",
        "llm-backend-0",
        annotations,
    );
    let nb = Attachment::new(
        &format!("{}nbr", n.prefix),
        &neighbour.path(),
        "default",
        "neighbour",
        json!({}),
    );
    let bres = chain
        .add(&b)
        .unwrap_or_else(|e| panic!("ADD failed: {e:?}"));
    let nres = chain
        .add(&nb)
        .unwrap_or_else(|e| panic!("ADD failed: {e:?}"));
    for ns in [&backend.name, &neighbour.name, &n.node.name] {
        wait_ipv6_ready(ns);
    }
    let _servers = [
        Server::tcp(&n.inet.name, 80),
        Server::udp(&n.inet.name, 53),
        Server::tcp(&n.orch.name, 8443),
        Server::tcp(&n.orch.name, 8444),
        Server::tcp(&n.node.name, 9000),
        Server::tcp(&neighbour.name, 8080),
        Server::tcp(&backend.name, 8080),
    ];
    let b4 = pod_addr(&backend.name, false);
    let nb4 = pod_addr(&neighbour.name, false);
    println!("model backend {b4}, neighbour pod {nb4}, node {POD_GW4}, internet {INET4}, orchestrator {ORCH4}\n");

    let mut rows = Vec::new();
    let mut probe_row =
        |from: &'static str, ns: &str, what: &str, expect: bool, f: &dyn Fn(&str) -> bool| {
            rows.push(Row {
                from,
                what: what.to_string(),
                expect_allowed: expect,
                allowed: f(ns),
            });
        };
    for (from, ns, guarded) in [
        ("model backend", backend.name.as_str(), true),
        ("neighbour pod", neighbour.name.as_str(), false),
    ] {
        probe_row(
            from,
            ns,
            "orchestrator 10.0.5.10 tcp/8443 (allowlisted)",
            true,
            &|p| probe::tcp(p, ORCH4, 8443, "a"),
        );
        probe_row(
            from,
            ns,
            "orchestrator [fd00:5::10] tcp/8443 (allowlisted)",
            true,
            &|p| probe::tcp(p, ORCH6, 8443, "a"),
        );
        probe_row(
            from,
            ns,
            "orchestrator 10.0.5.10 tcp/8444",
            !guarded,
            &|p| probe::tcp(p, ORCH4, 8444, "a"),
        );
        probe_row(from, ns, "internet 198.51.100.10 tcp/80", !guarded, &|p| {
            probe::tcp(p, INET4, 80, "a")
        });
        probe_row(
            from,
            ns,
            "internet [2001:db8:100::10] tcp/80",
            !guarded,
            &|p| probe::tcp(p, INET6, 80, "a"),
        );
        probe_row(
            from,
            ns,
            "internet 198.51.100.10 udp/53 (DNS)",
            !guarded,
            &|p| probe::udp(p, INET4, 53, "a"),
        );
        probe_row(
            from,
            ns,
            "internet 198.51.100.10 icmp echo",
            !guarded,
            &|p| probe::ping(p, INET4),
        );
        probe_row(
            from,
            ns,
            "node 10.22.0.1 tcp/9000 (kubelet-like)",
            !guarded,
            &|p| probe::tcp(p, POD_GW4, 9000, "a"),
        );
        probe_row(
            from,
            ns,
            "cloud metadata 169.254.169.254 tcp/9000",
            !guarded,
            &|p| probe::tcp(p, METADATA, 9000, "a"),
        );
    }
    probe_row(
        "neighbour pod",
        &neighbour.name,
        "model backend tcp/8080 (inbound)",
        true,
        &|p| probe::tcp(p, &b4, 8080, "a"),
    );
    probe_row(
        "model backend",
        &backend.name,
        "neighbour pod tcp/8080",
        false,
        &|p| probe::tcp(p, &nb4, 8080, "a"),
    );
    probe_row(
        "orchestrator",
        &n.orch.name,
        "model backend tcp/8080 (request/response)",
        true,
        &|p| probe::tcp(p, &b4, 8080, "a"),
    );
    probe_row(
        "node",
        &n.node.name,
        "model backend tcp/8080 (kubelet probe)",
        true,
        &|p| probe::tcp(p, &b4, 8080, "a"),
    );

    println!("{:<15} {:<50} RESULT", "FROM", "TO");
    let mut bad = 0;
    for r in &rows {
        let ok = r.allowed == r.expect_allowed;
        if !ok {
            bad += 1;
        }
        println!(
            "{:<15} {:<50} {:<9} {}",
            r.from,
            r.what,
            if r.allowed { "allowed" } else { "BLOCKED" },
            if ok { "as expected" } else { "UNEXPECTED" }
        );
    }

    let table = egress_guard::ruleset::table_name(&cid, "eth0");
    let listing = exec_in(
        &n.node.name,
        &["nft", "list", "chain", "netdev", &table, "from_pod"],
    );
    let policy = listing
        .lines()
        .find(|l| l.contains("policy "))
        .and_then(|l| l.split("policy ").nth(1))
        .unwrap_or("")
        .trim_end_matches(';')
        .trim()
        .to_string();
    let closing = listing
        .lines()
        .find(|l| l.trim_start().starts_with("counter packets"))
        .unwrap_or("")
        .trim()
        .to_string();
    let logging = listing.lines().filter(|l| l.contains("log prefix")).count();
    println!(
        "\nper-pod table in the node's netns: netdev {table}, chain policy {policy}; \
         {logging} rules log each distinct flow the policy drops once a minute, and the \
         closing rule counts every such packet: {closing}"
    );
    let cfg = n.tmp.join("entry.json");
    std::fs::write(&cfg, n.guard_entry(json!({})).to_string()).unwrap();
    let rendered = run(&[
        &plugin_bin(),
        "render",
        "--config",
        &cfg,
        "--annotation",
        "egress-guard.io/mode=enforce",
        "--annotation",
        "egress-guard.io/allow=@orchestrator",
    ]);
    println!(
        "(`egress-guard render` prints the full ruleset for review: {} lines)",
        rendered.lines().count()
    );
    if let Ok(log) = std::fs::read_to_string(n.log_file()) {
        if let Some(rec) = log
            .lines()
            .find(|l| l.contains("\"verb\":\"ADD\"") && l.contains("llm-backend-0"))
        {
            println!("plugin log record: {rec}");
        }
    }

    chain.del(&b, &backend.path(), Some(&bres)).unwrap();
    chain.del(&nb, &neighbour.path(), Some(&nres)).unwrap();
    let left = exec_in(&n.node.name, &["nft", "list", "tables"]);
    println!(
        "after DEL, egress-guard tables left on the node: {}",
        left.matches("egress_guard_").count()
    );
    if bad > 0 {
        println!("\n{bad} result(s) differ from the policy");
        std::process::exit(1);
    }
    println!("\nall {} results match the policy", rows.len());
}
