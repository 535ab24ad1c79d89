//! `egress-guard suggest`: reads `egress-guard.flow/v1` records (the agent's output, from files
//! or stdin) and prints per pod the smallest `egress-guard.io/allow` value that would have
//! allowed every recorded flow, with warnings for destinations a reviewer must look at.
//! Lines that are not flow records are skipped and counted.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::net::IpAddr;
use std::process::ExitCode;

use serde_json::Value;

use super::{CliError, Parsed};
use crate::cni::NetConf;
use crate::policy::suggest::{suggest_for, Suggestion};
use crate::policy::{Entry, Proto};

/// (destination, IP protocol, destination port) per (namespace, pod).
pub type Observed = BTreeMap<(String, String), BTreeSet<(IpAddr, u8, Option<u16>)>>;

/// What reading the records found.
#[derive(Debug, Default)]
pub struct Read {
    pub flows: Observed,
    /// Lines that are not flow records (or not of a known pod).
    pub skipped: usize,
}

fn protocol_number(text: &str) -> Option<u8> {
    Proto::parse(text)
        .and_then(Proto::number)
        .or_else(|| text.parse().ok())
}

/// Adds the flow records of `lines`, keeping those of `namespace`/`pod` when given.
pub fn read_records(
    lines: impl Iterator<Item = String>,
    namespace: Option<&str>,
    pod: Option<&str>,
    into: &mut Read,
) {
    for line in lines {
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            into.skipped += 1;
            continue;
        };
        let field = |k: &str| v.get(k).and_then(Value::as_str);
        let parsed = (|| {
            if field("schema")? != "egress-guard.flow/v1" {
                return None;
            }
            let ns = field("namespace")?;
            let name = field("pod")?;
            let dst: IpAddr = field("dst")?.parse().ok()?;
            let proto = protocol_number(field("protocol")?)?;
            let dport = v.get("dport").and_then(Value::as_u64).map(|p| p as u16);
            Some((ns.to_string(), name.to_string(), dst, proto, dport))
        })();
        let Some((ns, name, dst, proto, dport)) = parsed else {
            into.skipped += 1;
            continue;
        };
        if namespace.is_some_and(|n| n != ns) || pod.is_some_and(|p| p != name) {
            continue;
        }
        into.flows
            .entry((ns, name))
            .or_default()
            .insert((dst, proto, dport));
    }
}

/// The suggestions, one per pod, in namespace/pod order.
pub fn suggestions(
    read: &Read,
    networks: &BTreeMap<String, Vec<Entry>>,
    nodes: &[IpAddr],
) -> Vec<Suggestion> {
    read.flows
        .iter()
        .map(|((ns, pod), flows)| suggest_for(ns, pod, flows, networks, nodes))
        .collect()
}

/// `kubectl annotate` for a suggestion (single quotes around the value, which has none).
pub fn kubectl(s: &Suggestion) -> String {
    format!(
        "kubectl -n {} annotate pod {} --overwrite 'egress-guard.io/allow={}'",
        s.namespace, s.pod, s.allow
    )
}

/// Entry point of the `suggest` subcommand.
pub fn run(p: &Parsed) -> Result<ExitCode, CliError> {
    let mut networks = BTreeMap::new();
    let mut nodes = Vec::new();
    for (flag, v) in p.iter() {
        match flag {
            "config" => {
                let bytes =
                    std::fs::read(v).map_err(|e| CliError::usage(format!("--config {v}: {e}")))?;
                let conf = NetConf::parse(&bytes)
                    .map_err(|e| CliError::usage(format!("--config {v}: {e}")))?;
                networks = conf.settings.networks;
            }
            "node-address" => nodes.push(v.parse::<IpAddr>().map_err(|_| {
                CliError::usage(format!("--node-address \"{v}\" is not an IP address"))
            })?),
            "json" | "kubectl" | "namespace" | "pod" => {}
            other => return Err(CliError::unhandled(other)),
        }
    }
    let (namespace, pod) = (p.last("namespace"), p.last("pod"));
    let mut read = Read::default();
    if p.positional.is_empty() {
        let stdin = std::io::stdin();
        read_records(
            stdin.lock().lines().map_while(Result::ok),
            namespace,
            pod,
            &mut read,
        );
    }
    for path in &p.positional {
        let file = std::fs::File::open(path)
            .map_err(|e| CliError::usage(format!("cannot read {path}: {e}")))?;
        read_records(
            std::io::BufReader::new(file).lines().map_while(Result::ok),
            namespace,
            pod,
            &mut read,
        );
    }
    let found = suggestions(&read, &networks, &nodes);
    if read.skipped > 0 {
        eprintln!(
            "egress-guard suggest: skipped {} line(s) that are not flow records of a known pod",
            read.skipped
        );
    }
    if p.has("json") {
        let doc = serde_json::json!({ "pods": found });
        println!("{doc}");
        return Ok(ExitCode::SUCCESS);
    }
    for s in &found {
        for w in &s.warnings {
            eprintln!(
                "egress-guard suggest: {}/{}: review {w}",
                s.namespace, s.pod
            );
        }
        if p.has("kubectl") {
            println!("{}", kubectl(s));
        } else {
            println!("{}/{}: {}", s.namespace, s.pod, s.allow);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_records_skips_garbage_and_filters() {
        let lines = [
            r#"{"schema":"egress-guard.flow/v1","namespace":"ml","pod":"a","dst":"10.0.5.1","protocol":"tcp","dport":443}"#,
            r#"{"schema":"egress-guard.flow/v1","namespace":"ml","pod":"a","dst":"10.0.5.1","protocol":"tcp","dport":444}"#,
            r#"{"schema":"egress-guard.flow/v1","namespace":"ml","pod":"b","dst":"fd00::1","protocol":"icmpv6","dport":null}"#,
            r#"{"schema":"egress-guard.flow/v1","namespace":"ml","pod":"a","dst":"10.0.5.9","protocol":"47","dport":null}"#,
            r#"{"schema":"egress-guard.event/v1","event":"drift"}"#,
            r#"{"schema":"egress-guard.flow/v1","namespace":null,"pod":null,"dst":"10.0.0.1","protocol":"udp","dport":53}"#,
            "not json",
            r#"{"schema":"egress-guard.flow/v1","namespace":"other","pod":"c","dst":"10.0.5.1","protocol":"udp","dport":53}"#,
        ];
        let mut read = Read::default();
        read_records(
            lines.iter().map(|s| s.to_string()),
            Some("ml"),
            None,
            &mut read,
        );
        assert_eq!(read.skipped, 3);
        let found = suggestions(&read, &BTreeMap::new(), &[]);
        let text: Vec<String> = found
            .iter()
            .map(|s| format!("{}/{}: {}", s.namespace, s.pod, s.allow))
            .collect();
        assert_eq!(
            text,
            [
                "ml/a: 10.0.5.1 tcp 443-444, 10.0.5.9 any",
                "ml/b: fd00::1 icmpv6",
            ]
        );
        assert_eq!(
            kubectl(&found[1]),
            "kubectl -n ml annotate pod b --overwrite 'egress-guard.io/allow=fd00::1 icmpv6'"
        );
    }
}
