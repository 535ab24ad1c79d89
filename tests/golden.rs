//! Golden tests: each `tests/golden/<case>/` holds a conflist entry, pod annotations and a target;
//! the compiled ruleset rendered as nft text must equal `expected.nft` (`BLESS=1` rewrites it).
//! As root, each case is also installed for real in a scratch network namespace and `nft list
//! table` must print exactly the same text.
#![allow(clippy::unwrap_used)]

use egress_guard::kernel::Transaction;
use egress_guard_testkit::common;

use std::path::{Path, PathBuf};

use egress_guard::cli::render::render_pod;
use egress_guard::cni::NetConf;
use egress_guard::kernel::netns::NetnsGuard;
use egress_guard::kernel::{Kernel, NetlinkKernel, TableRef, Where};
use egress_guard::ruleset::{Attach, Family, Table};
use serde_json::{json, Value};

struct Case {
    name: String,
    dir: PathBuf,
    table: Option<Table>,
    text: String,
}

fn load(dir: &Path) -> Case {
    let read = |f: &str| {
        std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{}/{f}: {e}", dir.display()))
    };
    let conf: Value = serde_json::from_slice(&read("netconf.json")).unwrap();
    let ann: Value = serde_json::from_slice(&read("annotations.json")).unwrap();
    let pairs = common::annotation_pairs(&ann);
    let target: Value = serde_json::from_slice(&read("target.json")).unwrap();
    let pod = || match target.get("podNet") {
        Some(v) => serde_json::from_value(v.clone()).unwrap(),
        None => egress_guard::ruleset::PodNet::example(),
    };
    let device = || target["device"].as_str().unwrap().to_string();
    let attach = match target["placement"].as_str().unwrap_or("host") {
        "host" => Attach::Host {
            device: device(),
            pod: pod(),
        },
        "pod" => Attach::PodLink {
            device: device(),
            pod: pod(),
        },
        "pod-inet" => Attach::Pod,
        other => panic!("{}: placement {other}", dir.display()),
    };
    let rendered = render_pod(
        &conf,
        &pairs,
        target["namespace"].as_str(),
        target["containerId"].as_str().unwrap(),
        attach,
    )
    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let text = rendered.text();
    let table = rendered.table;
    Case {
        name: dir.file_name().unwrap().to_string_lossy().into_owned(),
        dir: dir.to_path_buf(),
        table,
        text,
    }
}

fn cases() -> Vec<Case> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 5,
        "golden cases missing in {}",
        root.display()
    );
    dirs.iter().map(|d| load(d)).collect()
}

#[test]
fn rendered_rulesets_match_the_golden_files() {
    let bless = std::env::var_os("BLESS").is_some();
    let mut mismatches = Vec::new();
    for c in cases() {
        let path = c.dir.join("expected.nft");
        if bless {
            std::fs::write(&path, &c.text).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{} has no expected.nft (run with BLESS=1)", c.name));
        if expected != c.text {
            mismatches.push(format!(
                "{}:\n--- expected\n{expected}--- got\n{}",
                c.name, c.text
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn golden_cases_cover_the_interesting_shapes() {
    let all = cases();
    let by = |n: &str| {
        all.iter()
            .find(|c| c.name == n)
            .unwrap_or_else(|| panic!("case {n}"))
    };
    assert!(by("mode-off").table.is_none());
    assert!(by("enforced-namespace-override")
        .text
        .contains("policy drop"));
    assert!(by("audit-host-empty").text.contains("policy accept"));
    assert_eq!(
        by("enforce-pod-inet").table.as_ref().unwrap().family,
        Family::Inet
    );
    // Pod placement on the pod's own interface: from_pod on its egress hook.
    let pod = by("enforce-pod-placement").table.as_ref().unwrap();
    assert_eq!(pod.family, Family::Netdev);
    assert_eq!(pod.chains[0].hook, egress_guard::ruleset::Hook::Egress);
    assert!(by("enforce-pod-placement")
        .text
        .contains("meta oiftype ether"));
    // Overlapping entries were cut into disjoint boxes (the kernel rejects overlaps).
    assert!(by("overlapping-entries")
        .text
        .contains("10.0.0.0/8 . 0-255"));
    // A pod's one IPv4 address and its one byte-aligned subnet are compares, not sets; two
    // addresses (overlapping-entries) or a subnet that ends inside a byte (icmp-sctp-ranges,
    // a /20) keep the sets.
    let has_set = |case: &str, set: &str| {
        by(case)
            .table
            .as_ref()
            .unwrap()
            .sets
            .iter()
            .any(|s| s.name == set)
    };
    assert!(!has_set("enforce-host-orchestrator", "own4"));
    assert!(!has_set("enforce-host-orchestrator", "onlink4"));
    assert!(by("enforce-host-orchestrator")
        .text
        .contains("ip saddr != 10.22.0.5 drop"));
    assert!(has_set("overlapping-entries", "own4"));
    assert!(has_set("overlapping-entries", "onlink4"));
    assert!(!has_set("icmp-sctp-ranges", "own4"));
    assert!(has_set("icmp-sctp-ranges", "onlink4"));
}

#[test]
fn kernel_listing_matches_render_for_every_case() {
    if !common::can_run_root_tests("kernel_listing_matches_render_for_every_case") {
        return;
    }
    let ns = common::Netns::new(&common::unique("gold"));
    let mut failures = Vec::new();
    for c in cases() {
        let Some(table) = &c.table else { continue };
        if table.family != Family::Netdev {
            // The inet pod table: install in the namespace itself.
            let mut k = NetlinkKernel::new();
            let path = ns.path();
            let at = Where::Netns(Path::new(&path));
            k.install(Transaction::create(at, table)).unwrap();
            let listing = common::exec_in(&ns.name, &["nft", "list", "table", "inet", &table.name]);
            if common::normalise_listing(&listing) != c.text {
                failures.push(format!(
                    "{}:\n--- render\n{}--- nft\n{listing}",
                    c.name, c.text
                ));
            }
            k.remove(TableRef::new(at, Family::Inet, &table.name))
                .unwrap();
            continue;
        }
        let dev = table.chains[0].device.clone().unwrap();
        common::ip(
            &ns.name,
            &format!("link add {dev} type veth peer name {dev}p"),
        );
        {
            // A netdev table (host, or pod on its own interface): the scratch namespace holds
            // the device.
            let _inside = NetnsGuard::enter(Path::new(&ns.path())).unwrap();
            NetlinkKernel::new()
                .install(Transaction::create(Where::Host, table))
                .unwrap();
        }
        let listing = common::exec_in(&ns.name, &["nft", "list", "table", "netdev", &table.name]);
        if common::normalise_listing(&listing) != c.text {
            failures.push(format!(
                "{}:\n--- render\n{}--- nft\n{listing}",
                c.name, c.text
            ));
        }
        {
            let _inside = NetnsGuard::enter(Path::new(&ns.path())).unwrap();
            let mut fresh = NetlinkKernel::new();
            let snap = fresh
                .read(TableRef::new(Where::Host, Family::Netdev, &table.name))
                .unwrap()
                .unwrap();
            let diff = egress_guard::netlink::nft::expected_snapshot(table).diff(&snap);
            if !diff.is_empty() {
                failures.push(format!("{}: read back differs: {diff:?}", c.name));
            }
            assert!(fresh
                .remove(TableRef::new(Where::Host, Family::Netdev, &table.name))
                .unwrap());
        }
        common::ip(&ns.name, &format!("link del {dev}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn json_render_loads_with_nft_and_lists_as_the_text_render() {
    let test = "json_render_loads_with_nft_and_lists_as_the_text_render";
    if !common::can_run_root_tests(test) {
        return;
    }
    // Enforce mode, IPv4 and IPv6 entries with ports, ranges and ICMP, in the pod-inet table
    // (the host and pod tables look sets up by raw header fields, which nft's JSON parser
    // does not type).
    let conf = json!({"cniVersion": "1.0.0", "name": "k8s", "type": "egress-guard"});
    let allow = "10.0.5.0/24 tcp 8443, fd00:5::/64 tcp 443-445, 10.96.0.10 udp 53, \
                 198.51.100.0/24 icmp, 2001:db8::/32 icmpv6, ::/0 udp 123";
    let ann = [
        ("egress-guard.io/mode".to_string(), "enforce".to_string()),
        ("egress-guard.io/allow".to_string(), allow.to_string()),
    ];
    let rendered = render_pod(&conf, &ann, Some("ml"), "c0ffee0010", Attach::Pod).unwrap();
    let table = rendered.table.clone().unwrap();
    let tmp = common::TempDir::new("json");
    let file = tmp.join("ruleset.json");
    std::fs::write(&file, rendered.json()).unwrap();
    let ns = common::Netns::new(&common::unique("json"));
    common::exec_in(&ns.name, &["nft", "-j", "-f", &file]);
    let listing =
        common::normalise_listing(&common::exec_in(&ns.name, &["nft", "list", "ruleset"]));
    // nft's JSON parser takes no table comment: the text render without its comment line.
    let expected: String = rendered
        .text()
        .lines()
        .filter(|l| !l.trim_start().starts_with("comment \""))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(listing, expected);
    let rules = listing
        .lines()
        .filter(|l| l.starts_with("\t\t") && !l.contains("type filter hook"))
        .filter(|l| {
            l.ends_with("accept")
                || l.ends_with("drop")
                || l.contains(" log ")
                || l.trim_start().starts_with("counter ")
        })
        .count();
    assert_eq!(rules, table.rule_count(), "{listing}");
    for key in [
        "ip daddr . meta l4proto . th dport @allow4_port accept",
        "ip6 daddr . meta l4proto . th dport @allow6_port accept",
        "ip daddr . meta l4proto @allow4_l4 accept",
        "ct state established,related accept",
        "icmpv6 type 133-136 icmpv6 type != nd-router-advert accept",
        "policy drop;",
    ] {
        assert!(listing.contains(key), "{key} missing:\n{listing}");
    }
}

#[test]
fn example_conflists_chain_egress_guard_last_with_a_valid_entry() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("conflist") {
            continue;
        }
        seen += 1;
        let list: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let plugins = list["plugins"].as_array().unwrap();
        let last = plugins.last().unwrap();
        assert_eq!(last["type"], "egress-guard", "{}", path.display());
        assert_eq!(
            last["capabilities"]["io.kubernetes.cri.pod-annotations"],
            true,
            "{}",
            path.display()
        );
        let mut conf = last.clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        NetConf::parse(conf.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let v = list["cniVersion"].as_str().unwrap();
        assert!(
            egress_guard::cni::SUPPORTED_VERSIONS.contains(&v),
            "{}: {v}",
            path.display()
        );
    }
    assert!(
        seen >= 5,
        "expected the example conflists in {}",
        dir.display()
    );
}

/// Runs the built `egress-guard render` with `args`.
fn render_bin(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_egress-guard"))
        .arg("render")
        .args(args)
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap()
}

#[test]
fn render_refuses_an_annotation_outside_the_enforced_namespace_ceiling() {
    let case =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/enforced-namespace-override");
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("render-ceiling-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let netconf = case.join("netconf.json");
    let netconf = netconf.to_str().unwrap();
    let target = ["--container-id", "c0ffee0005", "--device", "veth00000005"];

    // The case's own annotations are within its ceiling: render prints its expected.nft.
    let ok = case.join("annotations.json");
    let mut args = vec!["--config", netconf, "--annotations", ok.to_str().unwrap()];
    args.extend(["--namespace", "model-serving"]);
    args.extend(target);
    let out = render_bin(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(case.join("expected.nft")).unwrap()
    );

    // 0.0.0.0/0 is not: the same error as ADD gives, on stderr, and a non-zero exit.
    let wide = tmp.join("wide.json");
    std::fs::write(
        &wide,
        r#"{"egress-guard.io/mode": "off", "egress-guard.io/allow": "10.96.0.10 udp 53, 0.0.0.0/0"}"#,
    )
    .unwrap();
    let wide = wide.to_str().unwrap();
    let out = render_bin(&[
        "--config",
        netconf,
        "--annotations",
        wide,
        "--namespace",
        "model-serving",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        stderr.trim_end(),
        "egress-guard render: egress-guard.io/allow entry \"0.0.0.0/0\" is outside the operator \
         ceiling for enforced namespace \"model-serving\" (enforcedAllow: @orchestrator, @dns, \
         10.96.0.0/12 udp 53); ask the node operator to add it to enforcedAllow or to networks"
    );

    // Outside an enforced namespace (or with none given) the pod's author decides.
    for ns in [&["--namespace", "ml"][..], &[]] {
        let mut args = vec!["--config", netconf, "--annotations", wide];
        args.extend(ns);
        let out = render_bin(&args);
        assert!(
            out.status.success(),
            "{ns:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A bad ceiling is a config error naming the field and the value.
    let bad = tmp.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"type": "egress-guard", "networks": {"dns": ["10.96.0.10 udp 53"]}, "enforcedAllow": ["@dns", "@nowhere"]}"#,
    )
    .unwrap();
    let out = render_bin(&[
        "--config",
        bad.to_str().unwrap(),
        "--namespace",
        "model-serving",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("conflist field \"enforcedAllow[1]\" has value \"@nowhere\""),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
