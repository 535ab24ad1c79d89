//! egress-guard under a real container runtime: containerd 1.6 (CRI) + runc running the
//! conflist bridge + host-local + portmap + egress-guard, driven over CRI as a kubelet would.
//! Needs root and the packages listed in testkit/src/cri/README.md; run with
//! `cargo test --test cri_e2e`. Scenarios run one at a time on one node.

use egress_guard_testkit::cri;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cri::client::PodSpec;
use cri::net::{self, Probe, Proto};
use cri::node::*;
use cri::{assert_verdicts, check_traffic, nft, say, Verdict, ALLOW, ENFORCE_NS, MODE};

/// The plugin under test: this crate's binary, or EGRESS_GUARD_CRI_PLUGIN (e.g. a release build).
fn plugin() -> &'static Path {
    static PLUGIN: OnceLock<PathBuf> = OnceLock::new();
    PLUGIN.get_or_init(|| {
        std::env::var_os("EGRESS_GUARD_CRI_PLUGIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_egress-guard")))
    })
}

fn p(proto: Proto, dst: impl Into<IpAddr>, port: u16) -> Probe {
    Probe {
        proto,
        dst: dst.into(),
        port,
    }
}

fn tcp_udp_icmp(dst: IpAddr, tcp: u16, udp: u16) -> [Probe; 3] {
    [
        p(Proto::Tcp, dst, tcp),
        p(Proto::Udp, dst, udp),
        p(Proto::Icmp, dst, 0),
    ]
}

/// The allowlist used by the enforce scenarios: the inet host, TCP_PORT and UDP_PORT, both families.
fn inet_allowlist() -> String {
    format!("{INET4} tcp {TCP_PORT}, {INET6} tcp {TCP_PORT}, {INET4} udp {UDP_PORT}, {INET6} udp {UDP_PORT}")
}

fn allowed_probes() -> Vec<Probe> {
    vec![
        p(Proto::Tcp, INET4, TCP_PORT),
        p(Proto::Tcp, INET6, TCP_PORT),
        p(Proto::Udp, INET4, UDP_PORT),
        p(Proto::Udp, INET6, UDP_PORT),
    ]
}

fn assert_guard_table(pod: &cri::Pod<'_>) {
    let veth = pod.host_veth().expect("host-side veth of the pod");
    let t = nft::table(&pod.id)
        .expect("nft -j list ruleset")
        .unwrap_or_else(|| {
            panic!(
                "no table {} for guarded pod {}",
                nft::table_name(&pod.id),
                pod.spec.name
            )
        });
    assert_eq!(t.family, "netdev", "table family of {}", pod.spec.name);
    assert!(
        t.devices.iter().any(|d| d == &veth) && t.devices.iter().all(|d| d == &veth),
        "chains of {} must be bound to its host veth {veth}, found {:?}",
        pod.spec.name,
        t.devices
    );
    assert!(
        t.hooks.iter().any(|h| h == "ingress"),
        "{}: no ingress chain ({:?})",
        pod.spec.name,
        t.hooks
    );
}

fn assert_nothing_of(ids: &[&str], when: &str) {
    let left = nft::ours(ids).expect("nft -j list ruleset");
    let left: Vec<&String> = left
        .iter()
        .filter(|l| ids.iter().any(|id| l.contains(id)))
        .collect();
    assert!(
        left.is_empty(),
        "{when}: left in the host ruleset: {left:?}"
    );
}

#[test]
fn enforce_allows_only_the_allowlist_and_leaves_other_pods_alone() {
    let Some((suite, _serial)) = cri::suite("enforce_allows_only_the_allowlist", plugin()) else {
        return;
    };
    let node = &suite.node;
    let t0 = Instant::now();
    let guarded = node
        .run_pod(
            PodSpec::new("guarded", "team-a")
                .annotate(MODE, "enforce")
                .annotate(ALLOW, &inet_allowlist()),
        )
        .expect("RunPodSandbox guarded");
    let open = node
        .run_pod(PodSpec::new("open", "team-a"))
        .expect("RunPodSandbox open");
    let peer = node
        .run_pod(PodSpec::new("peer", "team-b"))
        .expect("RunPodSandbox peer");
    say(&format!(
        "3 sandboxes up in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    node.ensure_node_servers()
        .expect("servers on the node's addresses");
    let any6: IpAddr = std::net::Ipv6Addr::UNSPECIFIED.into();
    let _peer_tcp =
        net::serve(Some(&peer.netns), (any6, TCP_PORT).into(), Proto::Tcp).expect("server in peer");
    let _peer_udp =
        net::serve(Some(&peer.netns), (any6, UDP_PORT).into(), Proto::Udp).expect("server in peer");
    let _guarded_tcp = net::serve(Some(&guarded.netns), (any6, TCP_PORT).into(), Proto::Tcp)
        .expect("server in guarded");

    assert_guard_table(&guarded);
    for pod in [&open, &peer] {
        assert!(
            nft::table(&pod.id).expect("nft").is_none(),
            "pod {} has no annotation but got {}",
            pod.spec.name,
            nft::table_name(&pod.id)
        );
    }

    // The guarded pod still answers connections: from the node (kubelet probes) and other pods.
    let host_ns = Path::new("/proc/self/ns/net");
    let mut verdicts: Vec<Verdict> = Vec::new();
    for v6 in [false, true] {
        let to_guarded = p(Proto::Tcp, guarded.ip(v6), TCP_PORT);
        for (from, ns) in [("node", host_ns), ("open", open.netns.as_path())] {
            verdicts.push(Verdict {
                what: format!("{from} -> guarded {to_guarded}"),
                expect_pass: true,
                passed: net::probe_until_pass(ns, &to_guarded, Duration::from_secs(6)),
                control: None,
            });
        }
    }

    let mut blocked = Vec::new();
    for v6 in [false, true] {
        let (inet, other, gw, node_addr): (IpAddr, IpAddr, IpAddr, IpAddr) = if v6 {
            (INET6.into(), OTHER6.into(), GW6.into(), NODE6.into())
        } else {
            (INET4.into(), OTHER4.into(), GW4.into(), NODE4.into())
        };
        // The allowlisted host on ports and protocols that are not allowlisted.
        blocked.extend(tcp_udp_icmp(inet, TCP_OTHER_PORT, UDP_OTHER_PORT));
        // Another internet host on the allowlisted ports.
        blocked.extend(tcp_udp_icmp(other, TCP_PORT, UDP_PORT));
        // The node: its bridge gateway address and another of its addresses.
        blocked.extend(tcp_udp_icmp(gw, TCP_PORT, UDP_PORT));
        blocked.extend(tcp_udp_icmp(node_addr, TCP_PORT, UDP_PORT));
        // Another pod on the same node.
        blocked.extend(tcp_udp_icmp(peer.ip(v6), TCP_PORT, UDP_PORT));
    }
    blocked.push(p(Proto::Tcp, METADATA, METADATA_PORT));
    blocked.push(p(Proto::Udp, METADATA, UDP_PORT));
    blocked.push(p(Proto::Icmp, METADATA, 0));

    verdicts.extend(check_traffic(&guarded, &open, &allowed_probes(), &blocked));
    // The pod without annotations is untouched: it reaches the allowlisted targets too (its
    // reaching every blocked target is the control column above).
    for pr in allowed_probes() {
        verdicts.push(Verdict {
            what: format!("open {pr}"),
            expect_pass: true,
            passed: net::probe_until_pass(&open.netns, &pr, Duration::from_secs(6)),
            control: None,
        });
    }
    assert_verdicts("enforce: guarded vs open pod", &verdicts);

    let ids = [guarded.id.clone(), open.id.clone(), peer.id.clone()];
    for pod in [guarded, open, peer] {
        pod.delete().expect("Stop/Remove");
    }
    assert_nothing_of(
        &ids.iter().map(String::as_str).collect::<Vec<_>>(),
        "after deleting the pods",
    );
}

#[test]
fn malformed_annotation_in_enforced_namespace_fails_the_sandbox() {
    let Some((suite, _serial)) = cri::suite("malformed_annotation", plugin()) else {
        return;
    };
    let node = &suite.node;
    let tables_before: BTreeSet<String> = nft::guard_tables().expect("nft").into_iter().collect();
    let veths = || {
        run("ip", &["-o", "link", "show", "master", BRIDGE])
            .unwrap_or_default()
            .lines()
            .count()
    };
    let veths_before = veths();
    let cases = [
        (
            "bad-entry",
            ALLOW,
            format!("{INET4} tcp {TCP_PORT}, 198.51.100.300 tcp 80"),
            "198.51.100.300",
        ),
        ("bad-port", ALLOW, format!("{INET4} tcp 70000"), "70000"),
        (
            "bad-key",
            "egress-guard.io/alow",
            format!("{INET4} tcp {TCP_PORT}"),
            "egress-guard.io/alow",
        ),
        ("bad-mode", MODE, "enforcing".to_string(), "enforcing"),
        (
            "over-ceiling",
            ALLOW,
            "0.0.0.0/0".to_string(),
            "outside the operator ceiling",
        ),
    ];
    let mut failures = Vec::new();
    for (name, key, value, needle) in &cases {
        let spec = PodSpec::new(name, ENFORCE_NS).annotate(key, value);
        match node.run_pod(spec) {
            Ok(pod) => failures.push(format!(
                "{name}: {key}={value:?} started sandbox {}",
                pod.short()
            )),
            Err(status) => {
                let msg = status.message();
                say(&format!("{name}: RunPodSandbox failed as it should: {msg}"));
                for want in [*needle, *name] {
                    if !msg.contains(want) {
                        failures.push(format!(
                            "{name}: CRI error does not mention {want:?}: {msg}"
                        ));
                    }
                }
                if !msg.contains("egress-guard") {
                    failures.push(format!(
                        "{name}: CRI error does not come from egress-guard: {msg}"
                    ));
                }
            }
        }
        let listed = node.cri.list().expect("ListPodSandbox");
        if let Some(s) = listed
            .iter()
            .find(|(_, ready, n)| *ready && n == &format!("{ENFORCE_NS}/{name}"))
        {
            failures.push(format!("{name}: sandbox {} is listed as ready", s.0));
        }
    }
    let tables_after: BTreeSet<String> = nft::guard_tables().expect("nft").into_iter().collect();
    if tables_after != tables_before {
        failures.push(format!(
            "egress_guard tables changed: before {tables_before:?}, after {tables_after:?}"
        ));
    }
    if veths() != veths_before {
        failures.push(format!(
            "veths on {BRIDGE}: {veths_before} before, {} after",
            veths()
        ));
    }
    assert!(
        failures.is_empty(),
        "malformed annotations:\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn stop_then_remove_leaves_nothing_and_a_second_stop_is_harmless() {
    let Some((suite, _serial)) = cri::suite("stop_then_remove", plugin()) else {
        return;
    };
    let node = &suite.node;
    let pod = node
        .run_pod(
            PodSpec::new("short-lived", "team-a")
                .annotate(MODE, "enforce")
                .annotate(ALLOW, &inet_allowlist()),
        )
        .expect("RunPodSandbox");
    let bystander = node
        .run_pod(PodSpec::new("bystander", ENFORCE_NS).annotate(ALLOW, &inet_allowlist()))
        .expect("RunPodSandbox bystander");
    assert_guard_table(&pod);
    // enforceNamespaces: guarded although it sets no mode.
    assert_guard_table(&bystander);
    let id = pod.id.clone();

    pod.stop().expect("first StopPodSandbox");
    assert_nothing_of(&[&id], "after StopPodSandbox");
    pod.stop().expect("second StopPodSandbox");
    assert_nothing_of(&[&id], "after the second StopPodSandbox");
    pod.delete().expect("RemovePodSandbox");
    assert_nothing_of(&[&id], "after RemovePodSandbox");
    assert!(
        node.cri
            .list()
            .expect("list")
            .iter()
            .all(|(i, _, _)| i != &id),
        "sandbox still listed"
    );

    // Another pod's guard is untouched by that DEL.
    assert_guard_table(&bystander);
    let bid = bystander.id.clone();
    bystander.delete().expect("Stop/Remove bystander");
    assert_nothing_of(&[&bid], "after deleting the bystander");
}

#[test]
fn containerd_restart_keeps_the_guard_and_cleanup_still_works() {
    let Some((suite, _serial)) = cri::suite("containerd_restart", plugin()) else {
        return;
    };
    let node = &suite.node;
    let guarded = node
        .run_pod(
            PodSpec::new("survivor", "team-a")
                .annotate(MODE, "enforce")
                .annotate(ALLOW, &inet_allowlist()),
        )
        .expect("RunPodSandbox");
    let open = node
        .run_pod(PodSpec::new("survivor-open", "team-a"))
        .expect("RunPodSandbox open");
    assert_guard_table(&guarded);
    let before = nft::table(&guarded.id)
        .expect("nft")
        .expect("table")
        .fingerprint;
    let blocked: Vec<Probe> = [INET4.into(), INET6.into()]
        .into_iter()
        .flat_map(|a: IpAddr| tcp_udp_icmp(a, TCP_OTHER_PORT, UDP_OTHER_PORT))
        .collect();
    assert_verdicts(
        "before restart",
        &check_traffic(&guarded, &open, &allowed_probes(), &blocked),
    );

    let t = Instant::now();
    node.restart_containerd().expect("restart containerd");
    say(&format!(
        "containerd restarted in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    let st = node
        .cri
        .status(&guarded.id)
        .expect("PodSandboxStatus after restart");
    assert!(st.ready, "sandbox not ready after the restart");
    let after = nft::table(&guarded.id)
        .expect("nft")
        .expect("table gone after the restart")
        .fingerprint;
    assert_eq!(
        before, after,
        "the guard table changed across the containerd restart"
    );
    assert_guard_table(&guarded);
    assert_verdicts(
        "after restart",
        &check_traffic(&guarded, &open, &allowed_probes(), &blocked),
    );

    let id = guarded.id.clone();
    guarded.delete().expect("Stop/Remove after restart");
    assert_nothing_of(&[&id], "Stop/Remove after the restart");
    open.delete().expect("Stop/Remove open");
}

#[test]
fn twenty_parallel_sandboxes_each_get_their_own_policy() {
    let Some((suite, _serial)) = cri::suite("twenty_parallel", plugin()) else {
        return;
    };
    let node = &suite.node;
    let n = PAR_PODS;
    let port = |i: u16| PAR_PORT_BASE + i;
    let t = Instant::now();
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                s.spawn(move || {
                    let allow = format!("{INET4} tcp {p}, {INET6} tcp {p}", p = port(i));
                    node.run_pod(
                        PodSpec::new(&format!("par-{i}"), "team-par")
                            .annotate(MODE, "enforce")
                            .annotate(ALLOW, &allow),
                    )
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("run thread"))
            .collect()
    });
    say(&format!(
        "{n} sandboxes run in parallel in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    let mut pods = Vec::new();
    let mut errors = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(pod) => pods.push(pod),
            Err(e) => errors.push(format!("par-{i}: {}", e.message())),
        }
    }
    assert!(errors.is_empty(), "RunPodSandbox failed: {errors:?}");
    let mut devices = BTreeSet::new();
    for pod in &pods {
        assert_guard_table(pod);
        let veth = pod.host_veth().expect("veth");
        assert!(devices.insert(veth.clone()), "two pods share {veth}");
    }

    // Pod i reaches its own port; pod i cannot reach pod i+1's port (which pod i+1 reaches).
    let own: Vec<Vec<bool>> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                s.spawn(move || {
                    [IpAddr::from(INET4), IpAddr::from(INET6)]
                        .iter()
                        .map(|a| {
                            net::probe_until_pass(
                                &pod.netns,
                                &p(Proto::Tcp, *a, port(i as u16)),
                                Duration::from_secs(6),
                            )
                        })
                        .collect::<Vec<bool>>()
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let foreign: Vec<Vec<bool>> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                s.spawn(move || {
                    let next = port(((i + 1) % n as usize) as u16);
                    [IpAddr::from(INET4), IpAddr::from(INET6)]
                        .iter()
                        .map(|a| {
                            net::probe(
                                &pod.netns,
                                &p(Proto::Tcp, *a, next),
                                Duration::from_millis(1500),
                            )
                        })
                        .collect::<Vec<bool>>()
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut verdicts = Vec::new();
    for i in 0..n as usize {
        let next = (i + 1) % n as usize;
        for (f, fam) in ["v4", "v6"].iter().enumerate() {
            verdicts.push(Verdict {
                what: format!("par-{i} {fam} tcp port {}", port(i as u16)),
                expect_pass: true,
                passed: own[i].get(f).copied().unwrap_or(false),
                control: None,
            });
            verdicts.push(Verdict {
                what: format!(
                    "par-{i} {fam} tcp port {} (par-{next}'s)",
                    port(next as u16)
                ),
                expect_pass: false,
                passed: foreign[i].get(f).copied().unwrap_or(true),
                control: own[next].get(f).copied(),
            });
        }
    }
    assert_verdicts("20 parallel sandboxes", &verdicts);

    let ids: Vec<String> = pods.iter().map(|p| p.id.clone()).collect();
    let t = Instant::now();
    let deleted: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .into_iter()
            .map(|pod| s.spawn(move || pod.delete()))
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("delete thread"))
            .collect()
    });
    say(&format!(
        "{n} sandboxes deleted in parallel in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    assert!(
        deleted.iter().all(Result::is_ok),
        "Stop/Remove failed: {deleted:?}"
    );
    assert_nothing_of(
        &ids.iter().map(String::as_str).collect::<Vec<_>>(),
        "after deleting 20 pods",
    );
}
