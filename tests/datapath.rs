//! Real packets through real reference CNI chains (bridge and ptp, dual-stack) on a node built
//! from network namespaces. Every "blocked" expectation is paired with an unguarded control pod
//! that reaches the same target in the same run, so a broken network cannot pass as blocked.
#![allow(clippy::unwrap_used)]

use egress_guard::kernel::Transaction;
use egress_guard_testkit::common;

use common::chain::{Attachment, Chain};
use common::node::*;
use common::probe::{self, Server};
use common::{can_run_root_tests, exec_in, normalise_listing, plugin_bin, run, Netns};
use serde_json::{json, Value};

/// Collects expectations and reports all failures at once.
#[derive(Default)]
struct Report {
    failures: Vec<String>,
}

impl Report {
    fn expect(&mut self, what: &str, want: bool, got: bool) {
        if want != got {
            self.failures.push(format!(
                "{what}: expected {}, got {}",
                pass(want),
                pass(got)
            ));
        }
    }
    /// `what` must pass from `control` and fail from `guarded`.
    fn blocked(&mut self, what: &str, control: bool, guarded: bool) {
        self.expect(&format!("{what} (unguarded control)"), true, control);
        self.expect(&format!("{what} (guarded pod)"), false, guarded);
    }
    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} failure(s):\n  {}",
            self.failures.len(),
            self.failures.join("\n  ")
        );
    }
}

fn pass(b: bool) -> &'static str {
    if b {
        "pass"
    } else {
        "blocked"
    }
}

fn annotations(mode: &str, allow: &str) -> Value {
    json!({"egress-guard.io/mode": mode, "egress-guard.io/allow": allow, "kubernetes.io/config.source": "api"})
}

fn host_veth(result: &Value) -> String {
    result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| {
            i.get("sandbox").is_none() && i["name"].as_str().unwrap_or("").starts_with("veth")
        })
        .map(|i| i["name"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no host veth in {result}"))
}

fn node_tables(node: &str) -> String {
    exec_in(node, &["nft", "list", "tables"])
}

struct Servers {
    _all: Vec<Server>,
}

/// Echo servers on every target: internet, orchestrator, node (incl. metadata address), pods.
fn start_servers(n: &Node, pods: &[&Netns]) -> Servers {
    let mut all = vec![
        Server::tcp(&n.inet.name, 80),
        Server::udp(&n.inet.name, 53),
        Server::tcp(&n.orch.name, 8443),
        Server::tcp(&n.orch.name, 8444),
        Server::tcp(&n.node.name, 9000),
        Server::udp(&n.node.name, 9000),
    ];
    for p in pods {
        all.push(Server::tcp(&p.name, 8080));
        all.push(Server::udp(&p.name, 5353));
    }
    Servers { _all: all }
}

fn add(chain: &Chain, a: &Attachment) -> Value {
    chain
        .add(a)
        .unwrap_or_else(|e| panic!("ADD {} failed: {e:?}", a.pod))
}

/// The escape list of the design, from a guarded pod and an unguarded control.
fn check_escapes(r: &mut Report, guarded: &str, control: &str, other_pod4: &str, other_pod6: &str) {
    let both = |r: &mut Report, what: &str, f: &dyn Fn(&str) -> bool| {
        let c = f(control);
        let g = f(guarded);
        r.blocked(what, c, g);
    };
    both(r, "TCP to internet 198.51.100.10:80", &|p| {
        probe::tcp(p, INET4, 80, "x")
    });
    both(r, "TCP to internet [2001:db8:100::10]:80", &|p| {
        probe::tcp(p, INET6, 80, "x")
    });
    both(r, "UDP to internet 198.51.100.10:53", &|p| {
        probe::udp(p, INET4, 53, "q")
    });
    both(r, "UDP to internet [2001:db8:100::10]:53", &|p| {
        probe::udp(p, INET6, 53, "q")
    });
    both(r, "ICMP echo to internet", &|p| probe::ping(p, INET4));
    both(r, "ICMPv6 echo to internet", &|p| probe::ping(p, INET6));
    both(r, "TCP to node 10.22.0.1:9000", &|p| {
        probe::tcp(p, POD_GW4, 9000, "k")
    });
    both(r, "UDP to node 10.22.0.1:9000", &|p| {
        probe::udp(p, POD_GW4, 9000, "k")
    });
    both(r, "TCP to node's other address 198.51.100.1:9000", &|p| {
        probe::tcp(p, NODE_INET4, 9000, "k")
    });
    both(r, "ICMP echo to node", &|p| probe::ping(p, POD_GW4));
    both(r, "TCP to metadata 169.254.169.254:9000", &|p| {
        probe::tcp(p, METADATA, 9000, "m")
    });
    both(r, "TCP to another pod", &|p| {
        probe::tcp(p, other_pod4, 8080, "p")
    });
    both(r, "TCP to another pod over IPv6", &|p| {
        probe::tcp(p, other_pod6, 8080, "p")
    });
    both(r, "UDP to another pod", &|p| {
        probe::udp(p, other_pod4, 5353, "p")
    });
    both(r, "TCP to orchestrator's non-allowlisted port 8444", &|p| {
        probe::tcp(p, ORCH4, 8444, "o")
    });
}

/// Raw crafted SYNs: seen by a sniffer in the internet namespace from the control, not the pod.
fn check_raw(r: &mut Report, n: &Node, guarded: &str, control: &str) {
    let sniff = Server::raw_tcp_sniffer(&n.inet.name);
    let g4 = pod_addr(guarded, false);
    let c4 = pod_addr(control, false);
    probe::raw_tcp_syn(control, &c4, INET4, 40001, 7777);
    probe::raw_tcp_syn(guarded, &g4, INET4, 40002, 7777);
    // SCTP and an arbitrary IP protocol (GRE) sent raw: the default deny is not TCP/UDP-only.
    for (proto, name) in [(132, "SCTP"), (47, "GRE")] {
        let seen = Server::raw_ip_sniffer(&n.inet.name, proto);
        probe::raw_ip_send(control, INET4, proto, &format!("control-{name}"));
        probe::raw_ip_send(guarded, INET4, proto, &format!("guarded-{name}"));
        let got = |m: &str| seen.seen.lock().unwrap().iter().any(|s| s.contains(m));
        r.blocked(
            &format!("raw IP protocol {proto} ({name}) to internet"),
            got(&format!("control-{name}")),
            got(&format!("guarded-{name}")),
        );
    }
    r.blocked(
        "raw crafted TCP SYN to internet",
        sniff.saw("tcp 40001>7777"),
        sniff.saw("tcp 40002>7777"),
    );
}

/// What the reply tracking lets the pod send to a peer that sent to it, and what it does not.
/// Runs after `check_allowed_and_inbound`, so the orchestrator has pinged the pod and sent it
/// TCP and UDP: it is a recorded peer with tracked flows.
fn check_peer_replies(r: &mut Report, n: &Node, guarded: &str, control: &str) {
    let g4 = pod_addr(guarded, false);
    let g6 = pod_addr(guarded, true);
    // ICMP errors go back to a peer: a datagram to a closed port of the pod is refused.
    r.expect(
        "orchestrator -> pod UDP to a closed port gets ICMP port unreachable",
        true,
        probe::udp_refused(&n.orch.name, &g4, 5999),
    );
    r.expect(
        "orchestrator -> pod UDP to a closed port gets ICMPv6 port unreachable",
        true,
        probe::udp_refused(&n.orch.name, &g6, 5999),
    );
    // Only answers: an echo *request* (type 8, between the answer types 0 and 11) to the
    // peer is new traffic.
    r.blocked(
        "ICMP echo request to a peer that pinged the pod",
        probe::ping(control, ORCH4),
        probe::ping(guarded, ORCH4),
    );
    r.blocked(
        "ICMPv6 echo request to a peer that pinged the pod",
        probe::ping(control, ORCH6),
        probe::ping(guarded, ORCH6),
    );
    // A protocol without ports sent to the pod opens no flow of that protocol back: GRE
    // whose first four bytes mirror the peer's (as ports would, were it TCP) stays blocked.
    let seen = Server::raw_ip_sniffer(&n.orch.name, 47);
    probe::raw_ip_send(&n.orch.name, &g4, 47, "ABCD-to-pod");
    probe::raw_ip_send(control, ORCH4, 47, "CDAB-control");
    probe::raw_ip_send(guarded, ORCH4, 47, "CDAB-guarded");
    r.blocked(
        "raw GRE back to a peer that sent GRE to the pod",
        seen.saw("CDAB-control"),
        seen.saw("CDAB-guarded"),
    );
}

/// The pod's neighbour discovery reaches the node; router advertisements from it do not.
fn check_neighbour_discovery(r: &mut Report, n: &Node, guarded: &str, control: &str) {
    let sniff = Server::icmp6_sniffer(&n.node.name);
    for (pod, who) in [(control, "control"), (guarded, "guarded")] {
        probe::icmp6_multicast(pod, "eth0", "ff02::1", 135, &format!("ns-{who}"));
        probe::icmp6_multicast(pod, "eth0", "ff02::1", 134, &format!("ra-{who}"));
    }
    // The pod's own neighbour discovery works (its gateway answers over IPv6: see the
    // allowlist checks); a solicitation carrying data, with hop limit 64, does not leave it.
    r.blocked(
        "ICMPv6 neighbour solicitation with a payload from the pod to the node",
        sniff.saw("135 ns-control"),
        sniff.saw("135 ns-guarded"),
    );
    r.blocked(
        "ICMPv6 router advertisement from the pod to the node",
        sniff.saw("134 ra-control"),
        sniff.saw("134 ra-guarded"),
    );
}

fn check_allowed_and_inbound(r: &mut Report, n: &Node, guarded: &str) {
    let g4 = pod_addr(guarded, false);
    let g6 = pod_addr(guarded, true);
    r.expect(
        "TCP to allowlisted orchestrator 10.0.5.10:8443",
        true,
        probe::tcp(guarded, ORCH4, 8443, "ok"),
    );
    r.expect(
        "TCP to allowlisted orchestrator [fd00:5::10]:8443",
        true,
        probe::tcp(guarded, ORCH6, 8443, "ok"),
    );
    r.expect(
        "orchestrator -> pod TCP request/response",
        true,
        probe::tcp(&n.orch.name, &g4, 8080, "req"),
    );
    r.expect(
        "orchestrator -> pod TCP request/response over IPv6",
        true,
        probe::tcp(&n.orch.name, &g6, 8080, "req6"),
    );
    r.expect(
        "orchestrator -> pod UDP request/response",
        true,
        probe::udp(&n.orch.name, &g4, 5353, "dns"),
    );
    r.expect(
        "orchestrator -> pod ping",
        true,
        probe::ping(&n.orch.name, &g4),
    );
    r.expect(
        "orchestrator -> pod ping over IPv6",
        true,
        probe::ping(&n.orch.name, &g6),
    );
    r.expect(
        "node (kubelet probe) -> pod TCP",
        true,
        probe::tcp(&n.node.name, &g4, 8080, "healthz"),
    );
}

fn render_for(
    n: &Node,
    entry: &Value,
    ann: &Value,
    namespace: &str,
    cid: &str,
    device: &str,
) -> String {
    let cfg = n.tmp.join("entry.json");
    let anns = n.tmp.join("ann.json");
    let pod = n.tmp.join("pod-net.json");
    std::fs::write(&cfg, entry.to_string()).unwrap();
    std::fs::write(&anns, ann.to_string()).unwrap();
    std::fs::write(&pod, pod_net_of(n, cid).to_string()).unwrap();
    run(&[
        &plugin_bin(),
        "render",
        "--config",
        &cfg,
        "--annotations",
        &anns,
        "--namespace",
        namespace,
        "--container-id",
        cid,
        "--device",
        device,
        "--pod-net",
        &pod,
    ])
}

/// The identity the plugin pinned container `cid` to, from its state file.
fn pod_net_of(n: &Node, cid: &str) -> Value {
    let dir = n.tmp.join("state");
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let Ok(bytes) = std::fs::read(e.path()) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        if v["container_id"] == cid {
            return v["pod_net"].clone();
        }
    }
    panic!("no state file for {cid} in {dir}");
}

fn run_escape_suite(kind: &str) {
    let n = Node::new(kind);
    let guarded = n.pod_netns("g");
    let other = n.pod_netns("x");
    let control = n.pod_netns("c");
    let entry = n.guard_entry(json!({}));
    let conflist = if kind == "ptp" {
        n.ptp_conflist(entry.clone())
    } else {
        n.bridge_conflist(entry.clone())
    };
    let chain = Chain::new(&n.node.name, conflist);
    let ann = annotations("enforce", "@orchestrator");
    let cid = format!("{}guarded", n.prefix);
    let g = Attachment::new(&cid, &guarded.path(), "ml", "llm-0", ann.clone());
    let x = Attachment::new(
        &format!("{}other", n.prefix),
        &other.path(),
        "ml",
        "other",
        json!({}),
    );
    let c = Attachment::new(
        &format!("{}control", n.prefix),
        &control.path(),
        "ml",
        "control",
        json!({}),
    );
    let gres = add(&chain, &g);
    let xres = add(&chain, &x);
    let cres = add(&chain, &c);
    for p in [&guarded, &other, &control] {
        wait_ipv6_ready(&p.name);
    }
    wait_ipv6_ready(&n.node.name);
    let _servers = start_servers(&n, &[&guarded, &other]);
    let other4 = pod_addr(&other.name, false);
    let other6 = pod_addr(&other.name, true);

    let mut r = Report::default();
    // The gateway the table pins off-link frames to is the node's interface holding the
    // gateway address (the bridge, or the host veth under ptp).
    let gw_dev: Value = serde_json::from_str(&exec_in(
        &n.node.name,
        &["ip", "-j", "-4", "addr", "show", "to", POD_GW4],
    ))
    .unwrap();
    let gw_dev = gw_dev[0]["ifname"].as_str().unwrap_or_default().to_string();
    let gw_link: Value = serde_json::from_str(&exec_in(
        &n.node.name,
        &["ip", "-j", "link", "show", &gw_dev],
    ))
    .unwrap();
    let pinned = pod_net_of(&n, &cid)["gateway_mac"].clone();
    r.expect(
        &format!("the pinned gateway MAC {pinned} is that of {gw_dev}"),
        true,
        !gw_dev.is_empty() && pinned == gw_link[0]["address"],
    );
    check_allowed_and_inbound(&mut r, &n, &guarded.name);
    check_peer_replies(&mut r, &n, &guarded.name, &control.name);
    check_escapes(&mut r, &guarded.name, &control.name, &other4, &other6);
    check_raw(&mut r, &n, &guarded.name, &control.name);
    check_neighbour_discovery(&mut r, &n, &guarded.name, &control.name);

    // What the kernel holds is what `render` promised.
    let table = egress_guard::ruleset::table_name(&cid, "eth0");
    let listing = exec_in(&n.node.name, &["nft", "list", "table", "netdev", &table]);
    let rendered = render_for(&n, &entry, &ann, "ml", &cid, &host_veth(&gres));
    r.expect(
        "nft list table matches render",
        true,
        normalise_listing(&listing) == rendered,
    );
    if normalise_listing(&listing) != rendered {
        eprintln!("--- render\n{rendered}--- nft list\n{listing}");
    }
    r.expect(
        "CHECK passes on an intact ruleset",
        true,
        chain.check(&g, &gres).is_ok(),
    );

    // CAP_NET_ADMIN inside the pod cannot open egress under host placement.
    exec_in(&guarded.name, &["nft", "flush", "ruleset"]);
    r.expect(
        "TCP to internet after `nft flush ruleset` in the pod",
        false,
        probe::tcp(&guarded.name, INET4, 80, "x"),
    );

    // DEL in reverse order removes everything of ours; a second DEL (as on RemovePodSandbox:
    // no netns, no prevResult) succeeds.
    for (a, res, ns) in [
        (&g, &gres, &guarded),
        (&x, &xres, &other),
        (&c, &cres, &control),
    ] {
        chain
            .del(a, &ns.path(), Some(res))
            .unwrap_or_else(|e| panic!("DEL {}: {e:?}", a.pod));
        chain
            .del(a, "", None)
            .unwrap_or_else(|e| panic!("second DEL {}: {e:?}", a.pod));
    }
    let left = node_tables(&n.node.name);
    r.expect(
        "no egress_guard table left after DEL",
        false,
        left.contains("egress_guard_"),
    );
    let state = n.tmp.join("state");
    r.expect(
        "no state file left after DEL",
        false,
        std::fs::read_dir(&state)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name() != "devices" && e.file_name() != "devices.complete")
            })
            .unwrap_or(false),
    );
    r.expect(
        "no device index entry left after DEL",
        false,
        std::fs::read_dir(std::path::Path::new(&state).join("devices"))
            .map(|d| d.count() > 0)
            .unwrap_or(false),
    );
    r.finish();
}

#[test]
fn bridge_chain_blocks_every_escape_and_allows_the_allowlist() {
    if !can_run_root_tests("bridge_chain_blocks_every_escape_and_allows_the_allowlist") {
        return;
    }
    run_escape_suite("bridge");
}

#[test]
fn ptp_chain_blocks_every_escape_and_allows_the_allowlist() {
    if !can_run_root_tests("ptp_chain_blocks_every_escape_and_allows_the_allowlist") {
        return;
    }
    run_escape_suite("ptp");
}

#[test]
fn audit_mode_passes_traffic_and_counts_it() {
    if !can_run_root_tests("audit_mode_passes_traffic_and_counts_it") {
        return;
    }
    let n = Node::new("aud");
    let pod = n.pod_netns("a");
    let chain = Chain::new(&n.node.name, n.bridge_conflist(n.guard_entry(json!({}))));
    let cid = format!("{}audit", n.prefix);
    let a = Attachment::new(&cid, &pod.path(), "ml", "learner", annotations("audit", ""));
    let res = add(&chain, &a);
    let _s = Server::tcp(&n.inet.name, 80);
    assert!(
        probe::tcp(&pod.name, INET4, 80, "audited"),
        "audit mode must not drop"
    );
    let listing = exec_in(
        &n.node.name,
        &[
            "nft",
            "list",
            "chain",
            "netdev",
            &egress_guard::ruleset::table_name(&cid, "eth0"),
            "from_pod",
        ],
    );
    assert!(listing.contains("policy accept"), "{listing}");
    let counted = listing
        .lines()
        .find(|l| l.trim_start().starts_with("counter packets"))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "packets").nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(counted > 0, "audited packets were not counted:\n{listing}");
    assert!(listing.contains("log prefix \"eg:audit:"), "{listing}");
    chain.del(&a, &pod.path(), Some(&res)).unwrap();
}

#[test]
fn malformed_annotation_in_enforced_namespace_fails_add_and_installs_nothing() {
    if !can_run_root_tests(
        "malformed_annotation_in_enforced_namespace_fails_add_and_installs_nothing",
    ) {
        return;
    }
    let n = Node::new("bad");
    let pod = n.pod_netns("b");
    let chain = Chain::new(&n.node.name, n.bridge_conflist(n.guard_entry(json!({}))));
    let a = Attachment::new(
        &format!("{}bad", n.prefix),
        &pod.path(),
        "model-serving",
        "llm-1",
        json!({"egress-guard.io/allow": "10.0.5.0/24 tcp 99999"}),
    );
    let err = chain.add(&a).expect_err("ADD must fail");
    assert_eq!(err.plugin, "egress-guard");
    assert_eq!(err.code, Some(100), "{err:?}");
    for needle in ["model-serving/llm-1", "egress-guard.io/allow", "99999"] {
        assert!(
            err.msg.contains(needle),
            "message lacks {needle}: {}",
            err.msg
        );
    }
    assert!(!node_tables(&n.node.name).contains("egress_guard_"));
    // The runtime then cleans up with DEL, which must succeed.
    chain.del(&a, &pod.path(), None).unwrap();

    // A typo in a key fails too, naming the key.
    let typo = Attachment::new(
        &format!("{}typo", n.prefix),
        &pod.path(),
        "ml",
        "llm-2",
        json!({"egress-guard.io/mdoe": "enforce"}),
    );
    let err = chain.add(&typo).expect_err("typo must fail");
    assert!(err.msg.contains("egress-guard.io/mdoe"), "{}", err.msg);
    chain.del(&typo, &pod.path(), None).unwrap();
    assert!(!node_tables(&n.node.name).contains("egress_guard_"));
}

#[test]
fn enforced_namespace_guards_without_annotations() {
    if !can_run_root_tests("enforced_namespace_guards_without_annotations") {
        return;
    }
    let n = Node::new("ens");
    let pod = n.pod_netns("e");
    let control = n.pod_netns("c");
    let chain = Chain::new(&n.node.name, n.bridge_conflist(n.guard_entry(json!({}))));
    let a = Attachment::new(
        &format!("{}ens", n.prefix),
        &pod.path(),
        "model-serving",
        "llm",
        json!({"egress-guard.io/mode": "off"}),
    );
    let c = Attachment::new(
        &format!("{}ctl", n.prefix),
        &control.path(),
        "default",
        "ctl",
        json!({}),
    );
    let res = add(&chain, &a);
    let cres = add(&chain, &c);
    let _s = Server::tcp(&n.inet.name, 80);
    let mut r = Report::default();
    r.blocked(
        "mode off annotation in an enforced namespace",
        probe::tcp(&control.name, INET4, 80, "c"),
        probe::tcp(&pod.name, INET4, 80, "g"),
    );
    r.finish();
    chain.del(&a, &pod.path(), Some(&res)).unwrap();
    chain.del(&c, &control.path(), Some(&cres)).unwrap();
}

#[test]
fn pod_placement_guards_inside_the_pod() {
    if !can_run_root_tests("pod_placement_guards_inside_the_pod") {
        return;
    }
    let n = Node::new("pp");
    let pod = n.pod_netns("p");
    let control = n.pod_netns("c");
    let chain = Chain::new(
        &n.node.name,
        n.bridge_conflist(n.guard_entry(json!({"placement": "pod"}))),
    );
    let cid = format!("{}pod", n.prefix);
    let a = Attachment::new(
        &cid,
        &pod.path(),
        "ml",
        "llm",
        annotations("enforce", "@orchestrator"),
    );
    let c = Attachment::new(
        &format!("{}ctl", n.prefix),
        &control.path(),
        "ml",
        "ctl",
        json!({}),
    );
    let res = add(&chain, &a);
    let cres = add(&chain, &c);
    for ns in [&pod.name, &control.name, &n.node.name] {
        wait_ipv6_ready(ns);
    }
    let _servers = start_servers(&n, &[&pod]);
    let mut r = Report::default();
    let in_pod = exec_in(&pod.name, &["nft", "list", "tables"]);
    r.expect(
        "table lives in the pod netns, a netdev table on the pod's eth0",
        true,
        in_pod.contains(&format!(
            "netdev {}",
            egress_guard::ruleset::table_name(&cid, "eth0")
        )),
    );
    r.expect(
        "no table in the host netns",
        false,
        node_tables(&n.node.name).contains("egress_guard_"),
    );
    r.blocked(
        "TCP to internet",
        probe::tcp(&control.name, INET4, 80, "c"),
        probe::tcp(&pod.name, INET4, 80, "g"),
    );
    r.blocked(
        "TCP to internet over IPv6",
        probe::tcp(&control.name, INET6, 80, "c"),
        probe::tcp(&pod.name, INET6, 80, "g"),
    );
    r.blocked(
        "TCP to node",
        probe::tcp(&control.name, POD_GW4, 9000, "c"),
        probe::tcp(&pod.name, POD_GW4, 9000, "g"),
    );
    check_allowed_and_inbound(&mut r, &n, &pod.name);
    r.expect("CHECK passes", true, chain.check(&a, &res).is_ok());
    // The documented weakness of pod placement: CAP_NET_ADMIN in the pod can remove it.
    exec_in(&pod.name, &["nft", "flush", "ruleset"]);
    r.expect(
        "CHECK reports the removed table",
        true,
        chain.check(&a, &res).is_err(),
    );
    r.finish();
    chain.del(&a, &pod.path(), Some(&res)).unwrap();
    chain.del(&c, &control.path(), Some(&cres)).unwrap();
}

/// Table names are a hash of the attachment. A table of a new pod's name that another
/// container's comment claims (what a collision looks like) keeps guarding that container's
/// pod: the new pod's ADD fails naming the owner, and neither the runtime's DEL after it nor a
/// retried ADD takes the table away.
#[test]
fn a_colliding_pod_never_takes_over_another_pods_table() {
    if !can_run_root_tests("a_colliding_pod_never_takes_over_another_pods_table") {
        return;
    }
    let n = Node::new("col");
    let victim = n.pod_netns("vic");
    let newcomer = n.pod_netns("new");
    let control = n.pod_netns("ctl");
    let entry = n.guard_entry(json!({}));
    let chain = Chain::new(&n.node.name, n.bridge_conflist(entry.clone()));
    let ann = annotations("enforce", "@orchestrator");
    let v = Attachment::new(
        &format!("{}v", n.prefix),
        &victim.path(),
        "ml",
        "victim",
        ann.clone(),
    );
    let x = Attachment::new(
        &format!("{}x", n.prefix),
        &newcomer.path(),
        "ml",
        "newcomer",
        ann.clone(),
    );
    let c = Attachment::new(
        &format!("{}c", n.prefix),
        &control.path(),
        "ml",
        "control",
        json!({}),
    );
    let vres = add(&chain, &v);
    let cres = add(&chain, &c);

    // The victim's table, as the plugin renders it for the victim, moved to the newcomer's name.
    let own = egress_guard::ruleset::table_name(&v.container_id, "eth0");
    let taken = egress_guard::ruleset::table_name(&x.container_id, "eth0");
    let mut full = entry.clone();
    full["cniVersion"] = json!("1.0.0");
    full["name"] = json!("k8s");
    let conf = egress_guard::cni::NetConf::parse(full.to_string().as_bytes()).unwrap();
    let pairs = common::annotation_pairs(&ann);
    let policy = egress_guard::policy::Policy::resolve(
        &conf.settings,
        Some("ml"),
        &egress_guard::policy::parse_annotations(&pairs).unwrap(),
    )
    .unwrap();
    let target = egress_guard::ruleset::Target {
        container_id: v.container_id.clone(),
        ifname: "eth0".into(),
        attach: egress_guard::ruleset::Attach::Host {
            device: host_veth(&vres),
            pod: serde_json::from_value(pod_net_of(&n, &v.container_id)).unwrap(),
        },
        log: conf.deny_log(),
    };
    let mut moved = egress_guard::ruleset::compile(&policy, &target).unwrap();
    assert_eq!(moved.name, own);
    moved.name = taken.clone();
    {
        use egress_guard::kernel::{Kernel, NetlinkKernel, Where};
        let _inside =
            egress_guard::kernel::netns::NetnsGuard::enter(std::path::Path::new(&n.node.path()))
                .unwrap();
        NetlinkKernel::new()
            .install(Transaction::create(Where::Host, &moved))
            .unwrap();
    }
    exec_in(&n.node.name, &["nft", "delete", "table", "netdev", &own]);

    let _inet = Server::tcp(&n.inet.name, 80);
    let _orch = Server::tcp(&n.orch.name, 8443);
    let mut r = Report::default();
    let guarded = |r: &mut Report, when: &str| {
        r.blocked(
            &format!("TCP to internet {when}"),
            probe::tcp(&control.name, INET4, 80, "c"),
            probe::tcp(&victim.name, INET4, 80, "v"),
        );
        r.expect(
            &format!("the victim's allowlist {when}"),
            true,
            probe::tcp(&victim.name, ORCH4, 8443, "o"),
        );
    };
    guarded(&mut r, "with its table under the newcomer's name");
    for attempt in ["ADD", "retried ADD"] {
        match chain.add(&x) {
            Ok(_) => r.expect(&format!("the newcomer's {attempt} fails"), false, true),
            Err(e) => r.expect(
                &format!("the newcomer's {attempt} fails naming the owner: {}", e.msg),
                true,
                e.plugin == "egress-guard" && e.msg.contains(&v.container_id),
            ),
        }
        guarded(&mut r, &format!("after the newcomer's {attempt}"));
        chain
            .del(&x, &newcomer.path(), None)
            .unwrap_or_else(|e| panic!("DEL after the failed {attempt}: {e:?}"));
        guarded(
            &mut r,
            &format!("after the DEL that followed the {attempt}"),
        );
    }
    r.finish();
    exec_in(&n.node.name, &["nft", "delete", "table", "netdev", &taken]);
    chain.del(&v, &victim.path(), Some(&vres)).unwrap();
    chain.del(&c, &control.path(), Some(&cres)).unwrap();
}

/// A pod with two IPv4 and two IPv6 addresses (ptp + host-local with two ranges per family;
/// the bridge plugin refuses a second gateway address per family on its bridge): the table
/// pins all four as sources, and traffic from each to an allowlisted service, and to
/// each from the orchestrator, works.
#[test]
fn a_pod_with_two_addresses_per_family_uses_all_of_them() {
    if !can_run_root_tests("a_pod_with_two_addresses_per_family_uses_all_of_them") {
        return;
    }
    let n = Node::new("two");
    let pod = n.pod_netns("p");
    let mut conflist = n.ptp_conflist(n.guard_entry(json!({})));
    conflist["plugins"][0]["ipam"]["ranges"] = json!([
        [{"subnet": POD_SUBNET4}],
        [{"subnet": "10.24.0.0/24"}],
        [{"subnet": POD_SUBNET6}],
        [{"subnet": "fd00:24::/64"}],
    ]);
    let chain = Chain::new(&n.node.name, conflist);
    let a = Attachment::new(
        &format!("{}pod", n.prefix),
        &pod.path(),
        "ml",
        "two",
        annotations(
            "enforce",
            "@orchestrator, 10.0.5.10 udp 9999, fd00:5::10 udp 9999",
        ),
    );
    let res = add(&chain, &a);
    wait_ipv6_ready(&pod.name);
    wait_ipv6_ready(&n.node.name);
    let _in_pod = Server::tcp(&pod.name, 8080);
    let _at_orch = Server::udp(&n.orch.name, 9999);
    let addrs: Vec<String> = res["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            i["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut r = Report::default();
    r.expect(
        "prevResult gives the pod four addresses",
        true,
        addrs.len() == 4,
    );
    for src in &addrs {
        let orch = if src.contains(':') { ORCH6 } else { ORCH4 };
        r.expect(
            &format!("UDP from {src} to the allowlisted {orch}:9999 and its answer"),
            true,
            probe::udp_from(&pod.name, Some(src), orch, 9999, "two"),
        );
        r.expect(
            &format!("orchestrator -> {src}:8080 request/response"),
            true,
            probe::tcp(&n.orch.name, src, 8080, "req"),
        );
    }
    r.finish();
    chain.del(&a, &pod.path(), Some(&res)).unwrap();
}

/// Duplicate address detection works through the guard: a neighbour already holds the pod's
/// IPv6 address; the pod probes for it again (Linux sends the NS from `::` with the RFC 7527
/// nonce option) and the neighbour's answer marks the address `dadfailed`, as it does for the
/// unguarded control. Without the rule for the nonce form the guard dropped the probe and the
/// duplicate went unseen. (The bridge plugin turns DAD off in the pod unless `enabledad`.)
#[test]
fn duplicate_address_detection_works_through_the_guard() {
    if !can_run_root_tests("duplicate_address_detection_works_through_the_guard") {
        return;
    }
    let n = Node::new("dad");
    let guarded = n.pod_netns("g");
    let control = n.pod_netns("c");
    let other = n.pod_netns("x");
    let mut conflist = n.bridge_conflist(n.guard_entry(json!({})));
    conflist["plugins"][0]["enabledad"] = json!(true);
    let chain = Chain::new(&n.node.name, conflist);
    let attach = |ns: &Netns, name: &str, ann: Value| {
        Attachment::new(&format!("{}{name}", n.prefix), &ns.path(), "ml", name, ann)
    };
    let g = attach(&guarded, "g", annotations("enforce", "@orchestrator"));
    let c = attach(&control, "c", json!({}));
    let x = attach(&other, "x", json!({}));
    let gres = add(&chain, &g);
    let cres = add(&chain, &c);
    let xres = add(&chain, &x);
    for ns in [&guarded.name, &control.name, &other.name] {
        wait_ipv6_ready(ns);
    }
    let dad_fails = |pod: &Netns| {
        let a = pod_addr(&pod.name, true);
        common::ip(&other.name, &format!("-6 addr add {a}/64 dev eth0 nodad"));
        common::ip(&pod.name, &format!("-6 addr del {a}/64 dev eth0"));
        common::ip(&pod.name, &format!("-6 addr add {a}/64 dev eth0"));
        for _ in 0..50 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            if common::ip(&pod.name, "-6 addr show dev eth0 dadfailed").contains(&a) {
                return true;
            }
        }
        false
    };
    let mut r = Report::default();
    r.expect(
        "control: the unguarded pod's DAD finds the duplicate (the check can fail)",
        true,
        dad_fails(&control),
    );
    r.expect(
        "the guarded pod's DAD probe reaches the neighbour and its answer comes back",
        true,
        dad_fails(&guarded),
    );
    r.finish();
    for (a, res, ns) in [
        (&g, &gres, &guarded),
        (&c, &cres, &control),
        (&x, &xres, &other),
    ] {
        chain.del(a, &ns.path(), Some(res)).unwrap();
    }
}

/// Neighbour unreachability detection works through the guard: the pod's entry for its IPv6
/// router, put into PROBE, is confirmed by unicast NS/NA and returns to REACHABLE, as the
/// unguarded control's does.
#[test]
fn neighbour_unreachability_detection_works_through_the_guard() {
    if !can_run_root_tests("neighbour_unreachability_detection_works_through_the_guard") {
        return;
    }
    let n = Node::new("nud");
    let guarded = n.pod_netns("g");
    let control = n.pod_netns("c");
    let chain = Chain::new(&n.node.name, n.bridge_conflist(n.guard_entry(json!({}))));
    let attach = |ns: &Netns, name: &str, ann: Value| {
        Attachment::new(&format!("{}{name}", n.prefix), &ns.path(), "ml", name, ann)
    };
    let g = attach(&guarded, "g", annotations("enforce", "@orchestrator"));
    let c = attach(&control, "c", json!({}));
    let gres = add(&chain, &g);
    let cres = add(&chain, &c);
    for ns in [&guarded.name, &control.name, &n.node.name] {
        wait_ipv6_ready(ns);
    }
    let _orch = Server::tcp(&n.orch.name, 8443);
    let confirmed = |pod: &Netns| {
        // Traffic through the router gives the pod a neighbour entry for it.
        probe::tcp(&pod.name, ORCH6, 8443, "nud");
        let neigh: Value =
            serde_json::from_str(&common::ip(&pod.name, "-j -6 neigh show dev eth0")).unwrap();
        let Some(entry) = neigh
            .as_array()
            .and_then(|a| a.iter().find(|e| e["lladdr"].is_string()))
        else {
            return false;
        };
        let (dst, mac) = (
            entry["dst"].as_str().unwrap().to_string(),
            entry["lladdr"].as_str().unwrap().to_string(),
        );
        common::ip(
            &pod.name,
            &format!("-6 neigh replace {dst} dev eth0 lladdr {mac} nud probe"),
        );
        for _ in 0..30 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let now = common::ip(&pod.name, &format!("-6 neigh show {dst} dev eth0"));
            if now.contains("REACHABLE") {
                return true;
            }
        }
        false
    };
    let mut r = Report::default();
    r.expect(
        "control: the unguarded pod's probed router entry returns to REACHABLE (the check can fail)",
        true,
        confirmed(&control),
    );
    r.expect(
        "the guarded pod's probed router entry returns to REACHABLE",
        true,
        confirmed(&guarded),
    );
    r.finish();
    for (a, res, ns) in [(&g, &gres, &guarded), (&c, &cres, &control)] {
        chain.del(a, &ns.path(), Some(res)).unwrap();
    }
}
