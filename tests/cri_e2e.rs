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

/// The Dockerfile's value of `instruction` (its first such line, without the keyword).
#[allow(clippy::unwrap_used)]
fn dockerfile(instruction: &str) -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/install/Dockerfile"))
        .expect("install/Dockerfile");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("no {instruction} in install/Dockerfile"))
        .trim()
        .to_string()
}

#[test]
#[allow(clippy::unwrap_used)]
fn the_daemonsets_image_is_built_here_with_the_dockerfiles_layout() {
    let Some((suite, _serial)) = cri::suite("the_daemonsets_image_is_built_here", plugin()) else {
        return;
    };
    let work = suite.node.base.join("egress-guard-image");
    let tarball = cri::image::build_egress_guard(&work, plugin()).expect("pack the image");
    let oci = work.join("oci");
    let blob = |digest: &str| {
        oci.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let json = |path: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
    };
    let index = json(oci.join("index.json"));
    let manifest = json(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let config = json(blob(manifest["config"]["digest"].as_str().unwrap()));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer: {manifest}");
    assert_eq!(
        index["manifests"][0]["annotations"]["io.containerd.image.name"],
        cri::image::EGRESS_GUARD_IMAGE
    );

    // The Dockerfile's entrypoint, command, user and the one file it copies.
    let as_json = |v: String| -> serde_json::Value { serde_json::from_str(&v).unwrap() };
    assert_eq!(
        config["config"]["Entrypoint"],
        as_json(dockerfile("ENTRYPOINT"))
    );
    assert_eq!(config["config"]["Cmd"], as_json(dockerfile("CMD")));
    assert_eq!(config["config"]["User"], dockerfile("USER").as_str());
    let copy = dockerfile("COPY --from=build");
    let dest = copy.split_whitespace().last().unwrap();
    let listing = run(
        "tar",
        &[
            "-tvf",
            &blob(layers[0]["digest"].as_str().unwrap()).to_string_lossy(),
        ],
    )
    .unwrap();
    let files: Vec<&str> = listing.lines().filter(|l| !l.starts_with('d')).collect();
    assert_eq!(files.len(), 1, "one file in the layer: {listing}");
    let cols: Vec<&str> = files[0].split_whitespace().collect();
    assert_eq!(cols[0], "-rwxr-xr-x", "{listing}");
    assert_eq!(cols[1], "0/0", "{listing}");
    assert_eq!(
        cols.last().unwrap().trim_start_matches('.'),
        dest,
        "{listing}"
    );

    // containerd takes it under the name the DaemonSet's `egress-guard:dev` resolves to.
    cri::image::import(&suite.node.sock, &tarball).expect("import into containerd");
    let images = run(
        "ctr",
        &[
            "-a",
            &suite.node.sock.to_string_lossy(),
            "-n",
            "k8s.io",
            "images",
            "ls",
            "-q",
        ],
    )
    .unwrap();
    assert!(
        images.lines().any(|l| l == cri::image::EGRESS_GUARD_IMAGE),
        "{images}"
    );
}

/// The statically linked release binary the image holds (built here into target/static, a
/// target dir of its own; `EGRESS_GUARD_STATIC_BIN` names a prebuilt one).
fn static_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("EGRESS_GUARD_STATIC_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(["build", "--release", "--quiet", "--bin", "egress-guard"])
        .args(["--target", "x86_64-unknown-linux-gnu", "--target-dir"])
        .arg(root.join("target/static"))
        .output()
        .expect("cargo build of the static binary");
    assert!(
        out.status.success(),
        "static build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    root.join("target/static/x86_64-unknown-linux-gnu/release/egress-guard")
}

/// The DaemonSet's pod and containers through CRI; removed when dropped.
struct DsPod<'a> {
    node: &'a Node,
    sandbox: String,
    /// The config it was run with (CreateContainer wants it again).
    config: k8s_cri::v1::PodSandboxConfig,
    containers: Vec<String>,
}

impl<'a> DsPod<'a> {
    /// Runs the DaemonSet's pod (uid `uid`), its container logs under `host`'s `logs/`.
    fn run(node: &'a Node, ds: &cri::daemonset::DaemonSet, host: &DsHost, uid: &str) -> Self {
        let config = ds.sandbox_config("egress-guard-ds", uid, &host.root.join("logs"));
        let sandbox = node
            .cri
            .run_config(config.clone())
            .expect("RunPodSandbox of the DaemonSet pod");
        DsPod {
            node,
            sandbox,
            config,
            containers: Vec::new(),
        }
    }
}

/// `deploy/daemonset.yaml`, and its image (of the static binary) imported into containerd.
#[allow(clippy::unwrap_used)]
fn daemonset_and_image(node: &Node) -> cri::daemonset::DaemonSet {
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/daemonset.yaml"
    ))
    .unwrap();
    let ds = cri::daemonset::DaemonSet::parse(&manifest).unwrap();
    let tarball =
        cri::image::build_egress_guard(&node.base.join("ds-image"), &static_binary()).unwrap();
    cri::image::import(&node.sock, &tarball).unwrap();
    ds
}

impl Drop for DsPod<'_> {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = self.node.cri.stop_container(c, Duration::from_secs(5));
            let _ = self.node.cri.remove_container(c);
        }
        let _ = self.node.cri.stop(&self.sandbox);
        let _ = self.node.cri.remove(&self.sandbox);
    }
}

/// The host side of the DaemonSet's volumes: under the suite's base, except the host paths
/// given in `overrides` (such as the conf dir containerd itself reads).
struct DsHost {
    root: PathBuf,
    config_map: PathBuf,
    overrides: Vec<(&'static str, PathBuf)>,
    /// What the kubelet adds to every container beyond the manifest: the API server's
    /// address and the projected ServiceAccount token (a directory on the host).
    kubelet: Option<(u16, PathBuf)>,
}

impl Drop for DsHost {
    fn drop(&mut self) {
        // The shared bind mount made in `new` (the suite's teardown would detach it too).
        let _ = run(
            "umount",
            &["-l", &self.root.join("var/run/netns").to_string_lossy()],
        );
    }
}

/// The deployed ConfigMap's plugin.json.
fn deployed_plugin_json() -> serde_json::Value {
    let cm: serde_json::Value = serde_norway::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/configmap.yaml"
        ))
        .expect("configmap.yaml"),
    )
    .expect("configmap yaml");
    serde_json::from_str(cm["data"]["plugin.json"].as_str().expect("plugin.json key"))
        .expect("plugin.json is JSON")
}

impl DsHost {
    fn new(base: &Path, overrides: Vec<(&'static str, PathBuf)>) -> DsHost {
        let root = base.join("ds-host");
        let _ = std::fs::remove_dir_all(&root);
        for d in [
            "etc/cni/net.d",
            "opt/cni/bin",
            "run/egress-guard",
            "var/run/netns",
            "logs",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap_or_else(|e| panic!("{d}: {e}"));
        }
        // The agent's netns mount is HostToContainer, which needs a shared source mount (as
        // /var/run/netns is on a systemd node); teardown unmounts everything under base.
        let netns = root.join("var/run/netns").to_string_lossy().into_owned();
        run("mount", &["--bind", &netns, &netns]).expect("bind netns dir");
        run("mount", &["--make-shared", &netns]).expect("make it shared");
        // A primary CNI's conflist for the installer to chain into.
        std::fs::write(
            root.join("etc/cni/net.d/10-kindnet.conflist"),
            std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/conflists/10-kindnet.conflist"
            ))
            .expect("fixture"),
        )
        .expect("conflist");
        let host = DsHost {
            config_map: root.join("configmap"),
            root,
            overrides,
            kubelet: None,
        };
        host.publish(1, &deployed_plugin_json());
        host
    }

    /// Publishes `plugin` as the kubelet updates a ConfigMap volume: a new timestamped
    /// directory, then the `..data` symlink swapped to it by a rename.
    fn publish(&self, generation: u32, plugin: &serde_json::Value) {
        let cm = &self.config_map;
        let stamp = format!("..2026_12_04_00_00_00.{generation:09}");
        std::fs::create_dir_all(cm.join(&stamp)).expect("configmap dir");
        std::fs::write(cm.join(&stamp).join("plugin.json"), plugin.to_string()).expect("write");
        let tmp = cm.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&stamp, &tmp).expect("..data_tmp");
        std::fs::rename(&tmp, cm.join("..data")).expect("swap ..data");
        if std::fs::symlink_metadata(cm.join("plugin.json")).is_err() {
            std::os::unix::fs::symlink("..data/plugin.json", cm.join("plugin.json"))
                .expect("plugin.json link");
        }
    }

    fn path(&self, host_path: &str) -> PathBuf {
        match self.overrides.iter().find(|(p, _)| *p == host_path) {
            Some((_, to)) => to.clone(),
            None => self.root.join(host_path.trim_start_matches('/')),
        }
    }

    fn conflist_at(&self, name: &str) -> serde_json::Value {
        let p = self.path("/etc/cni/net.d").join(name);
        serde_json::from_slice(&std::fs::read(p).unwrap_or_default()).unwrap_or_default()
    }
}

/// Starts the manifest's container `name` (with `edit` applied to its declaration) in `pod`.
fn start_ds_container(
    node: &Node,
    pod: &mut DsPod<'_>,
    ds: &cri::daemonset::DaemonSet,
    host: &DsHost,
    name: &str,
    edit: impl FnOnce(&mut cri::daemonset::DsContainer),
) -> String {
    let mut c = ds
        .container(name)
        .unwrap_or_else(|| panic!("no container {name}"))
        .clone();
    edit(&mut c);
    let maps = std::collections::HashMap::from([(
        "egress-guard-config".to_string(),
        host.config_map.clone(),
    )]);
    let fields =
        std::collections::HashMap::from([("spec.nodeName".to_string(), "cri-node".to_string())]);
    let mut config = ds
        .container_config(&c, &c.image, &|p| host.path(p), &maps, &fields)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    if let Some((port, sa)) = &host.kubelet {
        use k8s_cri::v1::{KeyValue, Mount};
        for (key, value) in [
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1".to_string()),
            ("KUBERNETES_SERVICE_PORT", port.to_string()),
        ] {
            config.envs.push(KeyValue {
                key: key.into(),
                value,
            });
        }
        config.mounts.push(Mount {
            container_path: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
            host_path: sa.to_string_lossy().into_owned(),
            readonly: true,
            ..Default::default()
        });
    }
    let id = node
        .cri
        .start_container(&pod.sandbox, config, pod.config.clone())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    pod.containers.push(id.clone());
    id
}

#[test]
#[allow(clippy::unwrap_used)]
fn the_daemonsets_containers_run_under_containerd_as_the_manifest_says() {
    let Some((suite, _serial)) = cri::suite("the_daemonsets_containers_run", plugin()) else {
        return;
    };
    let node = &suite.node;
    let ds = daemonset_and_image(node);
    assert!(
        ds.host_network,
        "the DaemonSet runs in the node's network namespace"
    );
    let host = DsHost::new(&node.base, Vec::new());
    let mut pod = DsPod::run(node, &ds, &host, "uid-ds");

    // 1. The installer chains egress-guard into the conf dir, and its readiness command passes.
    let install = start_ds_container(node, &mut pod, &ds, &host, "install", |_| {});
    let chained = wait_chained(
        &host,
        "10-kindnet.conflist",
        Duration::from_secs(20),
        |_| true,
    );
    assert!(host.path("/opt/cni/bin/egress-guard").is_file());
    assert_eq!(
        chained["enforceNamespaces"],
        serde_json::json!(["model-serving"])
    );
    let probe = ds
        .container("install")
        .unwrap()
        .readiness_exec
        .clone()
        .unwrap();
    let (code, out, err) = node
        .cri
        .exec_sync(&install, &probe, Duration::from_secs(10))
        .unwrap();
    assert_eq!(code, 0, "readiness: {out}{err}");

    // 6. Without a capability the manifest gives it, the agent fails naming it (before the
    //    real agent below, which holds the metrics port).
    let crippled = start_ds_container(node, &mut pod, &ds, &host, "agent", |c| {
        c.caps_add.retain(|cap| cap != "NET_ADMIN");
        c.name = "agent-without-net-admin".into();
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let (false, Some(code)) = node.cri.container_state(&crippled).unwrap() {
            break code;
        }
        assert!(
            Instant::now() < deadline,
            "the agent without NET_ADMIN still runs"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(host.root.join("logs/agent-without-net-admin.log"))
        .unwrap_or_default();
    assert_ne!(exit, 0, "{log}");
    assert!(
        log.contains("CAP_NET_ADMIN"),
        "the message names the capability: {log}"
    );

    // 3 (in part). The agent serves /metrics on the node's network.
    let _agent = start_ds_container(node, &mut pod, &ds, &host, "agent", |_| {});
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let got = (|| {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect_timeout(
                &"127.0.0.1:9617".parse().ok()?,
                Duration::from_secs(1),
            )
            .ok()?;
            c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(
                c,
                "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut body = String::new();
            c.read_to_string(&mut body).ok()?;
            Some(body)
        })();
        if let Some(body) = got.filter(|b| b.starts_with("HTTP/1.1 200")) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no /metrics on the node network within 20 s: {}",
            std::fs::read_to_string(host.root.join("logs/agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(metrics.contains("egress_guard_agent_info{"), "{metrics}");
}

/// Puts the suite's conflist and plugin link back when dropped (also on a failed assert).
struct RestoreNode {
    conflist: PathBuf,
    original: Vec<u8>,
    bin: PathBuf,
    link: PathBuf,
    state_existed: bool,
}

impl Drop for RestoreNode {
    fn drop(&mut self) {
        let tmp = self.conflist.with_extension("restore");
        if std::fs::write(&tmp, &self.original).is_ok() {
            let _ = std::fs::rename(&tmp, &self.conflist);
        }
        if let Some(dir) = self.conflist.parent() {
            let _ = std::fs::remove_file(dir.join("egress-guard.kubeconfig"));
        }
        let _ = std::fs::remove_file(&self.bin);
        let _ = std::os::unix::fs::symlink(&self.link, &self.bin);
        if !self.state_existed {
            let _ = std::fs::remove_dir_all("/run/egress-guard");
        }
        // Let containerd load the suite's conflist again before the next scenario.
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Waits up to `limit` for the last plugin of `host`'s conflist `name` to satisfy `ok`.
fn wait_chained(
    host: &DsHost,
    name: &str,
    limit: Duration,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let last = host.conflist_at(name)["plugins"]
            .as_array()
            .and_then(|p| p.last().cloned())
            .unwrap_or_default();
        if last["type"] == "egress-guard" && ok(&last) {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "the chained entry did not follow within {limit:?}: {}\n{}",
            host.conflist_at(name),
            std::fs::read_to_string(host.root.join("logs/install.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[allow(clippy::unwrap_used)]
fn pods_started_after_the_daemonset_chained_the_plugin_are_guarded() {
    let Some((suite, _serial)) = cri::suite("pods_after_the_daemonset_chained", plugin()) else {
        return;
    };
    let node = &suite.node;
    let ds = daemonset_and_image(node);

    // The node as before the DaemonSet: the primary CNI's conflist only, no egress-guard.
    let conf_dir = node.base.join("net.d");
    let conflist = conf_dir.join("10-egcri.conflist");
    let original = std::fs::read(&conflist).unwrap();
    let bin = node.base.join("cni-bin/egress-guard");
    let _restore = RestoreNode {
        conflist: conflist.clone(),
        original: original.clone(),
        link: std::fs::read_link(&bin).unwrap(),
        bin: bin.clone(),
        state_existed: Path::new("/run/egress-guard").exists(),
    };
    let mut primary: serde_json::Value = serde_json::from_slice(&original).unwrap();
    primary["plugins"]
        .as_array_mut()
        .unwrap()
        .retain(|p| p["type"] != "egress-guard");
    std::fs::write(&conflist, serde_json::to_vec_pretty(&primary).unwrap()).unwrap();
    std::fs::remove_file(&bin).unwrap();

    // The CNI dirs are the ones containerd uses; /run/egress-guard is the node's own, as the
    // plugin (on the host) and the agent (in its container) must see the same state dir.
    let mut host = DsHost::new(
        &node.base,
        vec![
            ("/etc/cni/net.d", conf_dir.clone()),
            ("/opt/cni/bin", node.base.join("cni-bin")),
            ("/run/egress-guard", PathBuf::from("/run/egress-guard")),
        ],
    );
    // The kubelet's part: an API server (fake, on the node network) with this node tainted,
    // and a projected ServiceAccount token.
    let taint = serde_json::json!({"key": "egress-guard.io/not-ready", "value": "true", "effect": "NoSchedule"});
    let api_state = std::sync::Arc::new(std::sync::Mutex::new(serde_json::json!({
        "nodes": [{"metadata": {"name": "cri-node"}, "spec": {"taints": [taint]}}],
        "pods": []
    })));
    let (api, ca_pem) = egress_guard_testkit::fakeapi::fake_api(api_state.clone());
    let sa = host.root.join("serviceaccount");
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::write(sa.join("token"), "sa-token").unwrap();
    std::fs::write(sa.join("ca.crt"), &ca_pem).unwrap();
    std::fs::write(sa.join("namespace"), "egress-guard").unwrap();
    host.kubelet = Some((api.port, sa));
    std::fs::create_dir_all("/run/egress-guard").unwrap();
    // The deployed ConfigMap plus a network for this node's "internet" host and a log file
    // under the suite's base.
    let mut plugin_json = deployed_plugin_json();
    plugin_json["networks"]["inet"] = serde_json::json!([
        format!("{INET4} tcp {TCP_PORT}"),
        format!("{INET6} tcp {TCP_PORT}")
    ]);
    plugin_json["logFile"] = serde_json::json!(node.base.join("ds-cni.log"));
    host.publish(2, &plugin_json);

    let mut pod = DsPod::run(node, &ds, &host, "uid-ds2");
    let install = start_ds_container(node, &mut pod, &ds, &host, "install", |_| {});
    wait_chained(&host, "10-egcri.conflist", Duration::from_secs(20), |e| {
        e["networks"]["inet"].is_array()
    });
    assert!(
        bin.is_file() && std::fs::read_link(&bin).is_err(),
        "the installer's binary"
    );
    // The installer removes the not-ready taint through the API with the projected token,
    // and writes the plugin's kubeconfig beside the conflist.
    let deadline = Instant::now() + Duration::from_secs(20);
    while api_state.lock().unwrap()["nodes"][0]["spec"]["taints"] != serde_json::json!([]) {
        assert!(
            Instant::now() < deadline,
            "taint not removed: {:?}\n{}",
            api.requests(),
            std::fs::read_to_string(host.root.join("logs/install.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        api.requests().iter().any(|r| r.method == "PATCH"
            && r.path == "/api/v1/nodes/cri-node"
            && r.auth.as_deref() == Some("Bearer sa-token")),
        "{:?}",
        api.requests()
    );
    let kubeconfig: serde_json::Value = serde_json::from_slice(
        &std::fs::read(conf_dir.join("egress-guard.kubeconfig")).expect("plugin kubeconfig"),
    )
    .unwrap();
    assert_eq!(
        kubeconfig["clusters"][0]["cluster"]["server"],
        format!("https://127.0.0.1:{}", api.port)
    );
    assert_eq!(kubeconfig["users"][0]["user"]["token"], "sa-token");
    let _agent = start_ds_container(node, &mut pod, &ds, &host, "agent", |_| {});
    // containerd reloads the conf dir on change.
    std::thread::sleep(Duration::from_secs(2));

    // 2. A sandbox started now with enforce annotations is guarded; an unguarded control.
    let guarded = node
        .run_pod(PodSpec::new("ds-guarded", ENFORCE_NS).annotate(ALLOW, "@inet"))
        .expect("RunPodSandbox guarded");
    let control = node
        .run_pod(PodSpec::new("ds-control", "team-a"))
        .expect("RunPodSandbox control");
    assert_guard_table(&guarded);
    let allowed = [
        p(Proto::Tcp, INET4, TCP_PORT),
        p(Proto::Tcp, INET6, TCP_PORT),
    ];
    let blocked = [
        p(Proto::Tcp, OTHER4, TCP_PORT),
        p(Proto::Tcp, INET4, TCP_OTHER_PORT),
        p(Proto::Tcp, OTHER6, TCP_PORT),
        p(Proto::Tcp, METADATA, METADATA_PORT),
    ];
    assert_verdicts(
        "pod started after the DaemonSet chained the plugin",
        &check_traffic(&guarded, &control, &allowed, &blocked),
    );

    // 3. The agent's flow record names the pod for a denied packet.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(host.root.join("logs/agent.log")).unwrap_or_default();
        let named = log.lines().any(|l| {
            l.contains("\"schema\":\"egress-guard.flow/v1\"")
                && l.contains("\"pod\":\"ds-guarded\"")
                && l.contains("\"verdict\":\"denied\"")
        });
        if named {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no flow record for ds-guarded:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // 4. The ConfigMap is updated the way the kubelet does it: the chained entry follows.
    let mut audit = plugin_json.clone();
    audit["defaultMode"] = serde_json::json!("audit");
    host.publish(3, &audit);
    wait_chained(&host, "10-egcri.conflist", Duration::from_secs(10), |e| {
        e["defaultMode"] == "audit"
    });

    // 5. The installer stops: running pods stay guarded, new pods still get the plugin.
    node.cri
        .stop_container(&install, Duration::from_secs(10))
        .unwrap();
    assert!(
        !node.cri.container_state(&install).unwrap().0,
        "the installer stopped"
    );
    let later = node
        .run_pod(PodSpec::new("ds-later", ENFORCE_NS).annotate(ALLOW, "@inet"))
        .expect("RunPodSandbox after the installer stopped");
    let mut verdicts = check_traffic(&guarded, &control, &allowed, &blocked);
    verdicts.extend(check_traffic(&later, &control, &allowed, &blocked));
    assert_verdicts("after the installer stopped", &verdicts);
    for pod in [guarded, control, later] {
        pod.delete().expect("Stop/Remove");
    }
}
