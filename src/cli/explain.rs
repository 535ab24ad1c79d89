//! `egress-guard explain`: whether a pod may open one flow and why. It compiles the pod's table
//! as `render` (and ADD) does, runs the flow's first packet through the table's from-pod chain
//! ([`crate::ruleset::flow`]) and names what decided: the annotation entries (by number and
//! text, or the `@name` they came from) behind the allowlist rule that accepts it, another
//! rule, or the default deny. Exit status 0 allowed, 1 blocked, 2 bad input.

use std::net::IpAddr;
use std::process::ExitCode;

use super::render::{Args, Rendered};
use super::{CliError, Parsed};
use crate::policy::{EntryRef, Mode, Proto, ALLOW_KEY};
use crate::ruleset::flow::{decide, Flow};
use crate::ruleset::{render_rule, Family, Table, Verdict};

/// The flags `explain` takes beyond `render`'s.
const OWN_FLAGS: &[&str] = &["to", "proto", "port"];

/// What `explain` concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub allowed: bool,
    /// One line naming the flow and the decision, then the reasons.
    pub lines: Vec<String>,
}

fn flow_text(f: &Flow, proto: &str) -> String {
    match (f.port, f.proto) {
        (Some(p), 1 | 58) => format!("{proto} type {p} to {}", f.dst),
        (Some(p), _) => format!("{proto} to {} port {p}", f.dst),
        (None, _) => format!("{proto} to {}", f.dst),
    }
}

/// The flow the flags name: `--to` (required), `--proto` (default tcp; a name or a number),
/// `--port` (required for tcp, udp and sctp; an ICMP type for icmp and icmpv6, echo request
/// when absent; not allowed for other protocols).
pub fn flow_from_flags(p: &Parsed) -> Result<(Flow, String), CliError> {
    let to = p
        .last("to")
        .ok_or_else(|| CliError::usage("--to is required"))?;
    let dst: IpAddr = to
        .parse()
        .map_err(|_| CliError::usage(format!("--to \"{to}\" is not an IP address")))?;
    let proto_text = p.last("proto").unwrap_or("tcp");
    let (proto, name) = match Proto::parse(proto_text) {
        Some(Proto::Any) | None => match proto_text.parse::<u8>() {
            Ok(n) => (n, proto_text.to_string()),
            Err(_) => {
                return Err(CliError::usage(format!(
                    "--proto \"{proto_text}\" is not tcp, udp, sctp, icmp, icmpv6 or a protocol number 0-255"
                )))
            }
        },
        Some(pr) => (pr.number().unwrap_or(0), pr.as_str().to_string()),
    };
    match (proto, dst.is_ipv4()) {
        (1, false) => {
            return Err(CliError::usage(format!(
                "--proto icmp with the IPv6 destination {dst}: use icmpv6"
            )))
        }
        (58, true) => {
            return Err(CliError::usage(format!(
                "--proto icmpv6 with the IPv4 destination {dst}: use icmp"
            )))
        }
        _ => {}
    }
    let port = match p.last("port") {
        None => None,
        Some(v) => {
            let max = if matches!(proto, 1 | 58) { 255 } else { 65535 };
            let n = v.parse::<u32>().ok().filter(|n| *n <= max).ok_or_else(|| {
                CliError::usage(format!("--port \"{v}\" is not a number from 0 to {max}"))
            })?;
            Some(n as u16)
        }
    };
    let has_ports = matches!(proto, 6 | 17 | 132);
    if has_ports && port.is_none() {
        return Err(CliError::usage(format!("--port is required with {name}")));
    }
    if !has_ports && !matches!(proto, 1 | 58) && port.is_some() {
        return Err(CliError::usage(format!(
            "--port is not allowed with {name}: it has no ports"
        )));
    }
    Ok((Flow { dst, proto, port }, name))
}

/// The annotation entries (1-based number, text, and the network's entry for a `@name`) that
/// allow `flow`.
fn allowing_entries(r: &Rendered, f: &Flow) -> Vec<String> {
    let mut out = Vec::new();
    for (i, e) in r.annotations.allow.iter().enumerate() {
        let text = r.annotations.allow_text.get(i).cloned().unwrap_or_default();
        match e {
            EntryRef::Literal(entry) if entry.allows(f.dst, f.proto, f.port) => {
                out.push(format!("{ALLOW_KEY} entry {} \"{text}\"", i + 1));
            }
            EntryRef::Network(name) => {
                let held = r.settings.networks.get(name).into_iter().flatten();
                for entry in held.filter(|n| n.allows(f.dst, f.proto, f.port)) {
                    out.push(format!(
                        "{ALLOW_KEY} entry {} \"@{name}\" (the operator's network \"{name}\": {entry})",
                        i + 1
                    ));
                }
            }
            EntryRef::Literal(_) => {}
        }
    }
    out
}

fn rule_text(table: &Table, chain: usize, rule: usize) -> String {
    let c = &table.chains[chain];
    format!(
        "{} rule {}: {}",
        c.name,
        rule + 1,
        render_rule(table.family, &c.rules[rule]).trim()
    )
}

/// Decides `flow` for the pod `r` was compiled for.
pub fn explain(r: &Rendered, f: &Flow, proto: &str) -> Explanation {
    let what = flow_text(f, proto);
    let Some(table) = &r.table else {
        return Explanation {
            allowed: true,
            lines: vec![
                format!("allowed: {what}"),
                format!(
                    "mode {}: nothing is installed for this pod, every flow passes",
                    r.policy.mode
                ),
            ],
        };
    };
    let Some((chain, outcome)) = decide(table, &r.target, f) else {
        return Explanation {
            allowed: false,
            lines: vec![
                format!("blocked: {what}"),
                "the table has no chain for what the pod sends".to_string(),
            ],
        };
    };
    let entries = allowing_entries(r, f);
    let by_allowlist = outcome.rule.is_some_and(|i| {
        table.chains[chain].rules[i].stmts.iter().any(|s| {
            matches!(s, crate::ruleset::Stmt::Lookup { set, negate: false, .. } if set.starts_with("allow"))
        })
    });
    let mut lines = Vec::new();
    let allowed = outcome.verdict == Verdict::Accept && outcome.rule.is_some();
    match (outcome.verdict, outcome.rule) {
        (Verdict::Accept, Some(i)) => {
            lines.push(format!("allowed: {what}"));
            if by_allowlist {
                lines.extend(entries.iter().map(|e| format!("by {e}")));
            }
            lines.push(format!("accepted by {}", rule_text(table, chain, i)));
        }
        (Verdict::Drop, Some(i)) => {
            lines.push(format!("blocked: {what}"));
            lines.push(format!("dropped by {}", rule_text(table, chain, i)));
            if !entries.is_empty() {
                lines.push(format!(
                    "although {} allows it: the rule above comes first (it pins who the pod is and where its frames go)",
                    entries.join(", ")
                ));
            }
        }
        (_, None) => {
            lines.push(format!("blocked: {what}"));
            let given: Vec<&str> = r
                .annotations
                .allow_text
                .iter()
                .map(String::as_str)
                .collect();
            let listed = if given.is_empty() {
                format!("the pod has no {ALLOW_KEY} entries")
            } else {
                format!(
                    "no entry of {ALLOW_KEY} (\"{}\") allows it",
                    given.join(", ")
                )
            };
            lines.push(format!("{listed}: the default deny"));
            let family = match table.family {
                Family::Netdev => "netdev",
                Family::Inet => "inet",
            };
            lines.push(match r.policy.mode {
                Mode::Audit => format!(
                    "audit mode: the packet passes and is logged as audited; enforce mode drops it (chain {family} {} policy {})",
                    table.chains[chain].name,
                    table.chains[chain].policy.name()
                ),
                _ => format!(
                    "the packet is {}dropped by the chain's policy ({family} {} policy drop)",
                    if outcome.logged { "logged and " } else { "" },
                    table.chains[chain].name
                ),
            });
        }
    }
    Explanation { allowed, lines }
}

/// Entry point of the `explain` subcommand.
pub fn run(p: &Parsed) -> Result<ExitCode, CliError> {
    let args = Args::from_flags_and(p, OWN_FLAGS)?;
    let (flow, proto) = flow_from_flags(p)?;
    let rendered = match args.load() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("egress-guard explain: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let e = explain(&rendered, &flow, &proto);
    for l in &e.lines {
        println!("{l}");
    }
    Ok(if e.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::render::render_pod;
    use crate::ruleset::{Attach, PodNet};
    use serde_json::json;

    fn conf() -> serde_json::Value {
        json!({
            "type": "egress-guard", "cniVersion": "1.0.0", "name": "t",
            "capabilities": {"io.kubernetes.cri.pod-annotations": true},
            "enforceNamespaces": ["locked"],
            "networks": {
                "orchestrator": ["10.0.5.0/24 tcp 8443"],
                "dns": ["10.96.0.10 udp 53", "10.96.0.10 tcp 53"]
            }
        })
    }

    const ALLOW: &str = "@orchestrator, @dns, 198.51.100.0/24 udp 30000-30100, \
                         203.0.113.7 tcp 443, 192.0.2.0/28 icmp, 192.0.2.128/25, \
                         2001:db8::/32 icmpv6, 2001:db8:1::/48 tcp 80, 10.22.0.9 tcp 9000";

    fn rendered(mode: &str, allow: &str, attach: Attach) -> Rendered {
        let ann = vec![
            ("egress-guard.io/mode".to_string(), mode.to_string()),
            ("egress-guard.io/allow".to_string(), allow.to_string()),
        ];
        render_pod(&conf(), &ann, Some("ml"), "c0ffee", attach).expect("render")
    }

    fn host() -> Attach {
        Attach::Host {
            device: "veth0".into(),
            pod: PodNet::example(),
        }
    }

    fn flow(dst: &str, proto: u8, port: Option<u16>) -> Flow {
        Flow {
            dst: dst.parse().expect("address"),
            proto,
            port,
        }
    }

    #[test]
    fn every_entry_kind_names_the_entry_that_allows_the_flow() {
        let r = rendered("enforce", ALLOW, host());
        let cases: [(Flow, &str); 9] = [
            (
                flow("10.0.5.10", 6, Some(8443)),
                "entry 1 \"@orchestrator\" (the operator's network \"orchestrator\": 10.0.5.0/24 tcp 8443)",
            ),
            (
                flow("10.96.0.10", 17, Some(53)),
                "entry 2 \"@dns\" (the operator's network \"dns\": 10.96.0.10/32 udp 53)",
            ),
            (
                flow("198.51.100.99", 17, Some(30100)),
                "entry 3 \"198.51.100.0/24 udp 30000-30100\"",
            ),
            (flow("203.0.113.7", 6, Some(443)), "entry 4 \"203.0.113.7 tcp 443\""),
            (flow("192.0.2.3", 1, None), "entry 5 \"192.0.2.0/28 icmp\""),
            (flow("192.0.2.200", 132, Some(9)), "entry 6 \"192.0.2.128/25\""),
            (flow("2001:db8:ff::1", 58, None), "entry 7 \"2001:db8::/32 icmpv6\""),
            (flow("2001:db8:1::5", 6, Some(80)), "entry 8 \"2001:db8:1::/48 tcp 80\""),
            // An on-link pod, allowlisted: reached through its own MAC.
            (flow("10.22.0.9", 6, Some(9000)), "entry 9 \"10.22.0.9 tcp 9000\""),
        ];
        for (f, entry) in cases {
            let e = explain(&r, &f, "p");
            assert!(e.allowed, "{f:?}: {:#?}", e.lines);
            assert!(
                e.lines.iter().any(|l| l.contains(entry)),
                "{f:?} wants {entry}: {:#?}",
                e.lines
            );
            assert!(
                e.lines.iter().any(|l| l.contains("@allow")),
                "{:#?}",
                e.lines
            );
        }
    }

    #[test]
    fn what_no_entry_allows_is_the_default_deny() {
        let r = rendered("enforce", ALLOW, host());
        for f in [
            flow("10.0.5.10", 6, Some(8444)),
            flow("10.0.5.10", 17, Some(8443)),
            flow("10.96.0.11", 17, Some(53)),
            flow("198.51.100.99", 17, Some(30101)),
            flow("198.51.100.99", 6, Some(30050)),
            flow("203.0.113.8", 6, Some(443)),
            flow("192.0.2.3", 6, Some(80)),
            flow("192.0.2.16", 1, None),
            flow("169.254.169.254", 6, Some(80)),
            flow("2001:db9::1", 58, None),
            flow("2001:db8:2::5", 6, Some(80)),
            flow("10.22.0.10", 6, Some(9000)),
        ] {
            let e = explain(&r, &f, "p");
            assert!(!e.allowed, "{f:?}: {:#?}", e.lines);
            assert!(
                e.lines.iter().any(|l| l.contains("the default deny")),
                "{f:?}: {:#?}",
                e.lines
            );
            assert!(e.lines.iter().any(|l| l.contains("policy drop")));
        }
        let none = rendered("enforce", "", host());
        let e = explain(&none, &flow("10.0.5.10", 6, Some(8443)), "tcp");
        assert!(!e.allowed);
        assert!(e.lines[1].starts_with("the pod has no egress-guard.io/allow entries"));
    }

    #[test]
    fn audit_passes_but_is_not_allowed_and_off_installs_nothing() {
        let r = rendered("audit", "@dns", host());
        let e = explain(&r, &flow("198.51.100.1", 6, Some(443)), "tcp");
        assert!(!e.allowed);
        assert!(e
            .lines
            .iter()
            .any(|l| l.starts_with("audit mode: the packet passes")));
        assert!(explain(&r, &flow("10.96.0.10", 6, Some(53)), "tcp").allowed);
        let off = rendered("off", "", host());
        let e = explain(&off, &flow("198.51.100.1", 6, Some(443)), "tcp");
        assert!(e.allowed);
        assert!(e.lines[1].starts_with("mode off"));
    }

    #[test]
    fn a_rule_before_the_allowlist_is_named_when_it_drops() {
        // A pod without IPv6: an IPv6 flow is dropped by the identity rules, whatever allows it.
        let mut pod = PodNet::example();
        pod.addrs.retain(|a| a.is_v4());
        pod.link_local.clear();
        let r = rendered(
            "enforce",
            ALLOW,
            Attach::Host {
                device: "veth0".into(),
                pod,
            },
        );
        let e = explain(&r, &flow("2001:db8:1::5", 6, Some(80)), "tcp");
        assert!(!e.allowed);
        assert!(
            e.lines[1].starts_with("dropped by from_pod rule"),
            "{:#?}",
            e.lines
        );
        assert!(e.lines[2].contains("entry 8"), "{:#?}", e.lines);
    }

    #[test]
    fn every_placement_decides_as_the_entries_say() {
        // The reference: some entry's `allows`. Each placement's table must agree, flow by flow.
        let placements = [
            host(),
            Attach::PodLink {
                device: "eth0".into(),
                pod: PodNet::example(),
            },
            Attach::Pod,
        ];
        let tables: Vec<Rendered> = placements
            .into_iter()
            .map(|a| rendered("enforce", ALLOW, a))
            .collect();
        let dsts = [
            "10.0.5.0",
            "10.0.5.255",
            "10.0.6.0",
            "10.96.0.10",
            "198.51.100.0",
            "198.51.100.255",
            "203.0.113.7",
            "192.0.2.15",
            "192.0.2.16",
            "192.0.2.128",
            "192.0.2.255",
            "169.254.169.254",
            "2001:db8::",
            "2001:db8:1::1",
            "2001:db8:1:ffff::1",
            "2001:db9::",
        ];
        let mut checked = 0;
        for dst in dsts {
            for (proto, ports) in [
                (
                    6u8,
                    vec![Some(53), Some(80), Some(443), Some(8443), Some(30000)],
                ),
                (
                    17,
                    vec![Some(53), Some(29999), Some(30000), Some(30100), Some(30101)],
                ),
                (132, vec![Some(80)]),
                (1, vec![None]),
                (58, vec![None]),
                (47, vec![None]),
            ] {
                let v4 = dst.contains('.');
                if (proto == 1 && !v4) || (proto == 58 && v4) {
                    continue;
                }
                for port in ports {
                    let f = flow(dst, proto, port);
                    let want = tables[0]
                        .policy
                        .entries
                        .iter()
                        .any(|e| e.allows(f.dst, f.proto, f.port));
                    for t in &tables {
                        let got = explain(t, &f, "p");
                        assert_eq!(
                            got.allowed, want,
                            "{f:?} in {:?}: {:#?}",
                            t.target.attach, got.lines
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 500, "{checked}");
    }
}
