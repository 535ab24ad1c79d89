//! `egress-guard report`: from the API server, the pods that ask for a guard (mode annotation,
//! enforced namespace or a non-off default mode) but cannot have one: `hostNetwork: true` pods
//! (no runtime calls a CNI plugin for them) and pods on nodes where the plugin is not chained
//! (no ready egress-guard DaemonSet pod there, or the node still carries the not-ready taint),
//! and pods an agent reported running without a table (Events with reason
//! `EgressGuardUnguarded`). Lists are read in pages (`limit`/`continue`).
//! Exits non-zero when any exist. Read-only against the API server.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::cli::table::text_table;
use crate::cli::{CliError, Parsed};
use crate::install::NOT_READY_TAINT;
use crate::kube::{Client, KubeError};
use crate::policy::{Mode, MODE_KEY};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("connecting to the API server: {0}")]
    Client(#[source] Box<KubeError>),
    #[error("listing {what}: {source}")]
    List {
        what: &'static str,
        #[source]
        source: Box<KubeError>,
    },
}

/// What makes a pod ask for a guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardCriteria {
    pub enforce_namespaces: BTreeSet<String>,
    pub default_mode: Mode,
    pub selector: (String, String),
}

impl Default for GuardCriteria {
    fn default() -> Self {
        GuardCriteria {
            enforce_namespaces: BTreeSet::new(),
            default_mode: Mode::Off,
            selector: ("app.kubernetes.io/name".into(), "egress-guard".into()),
        }
    }
}

/// One pod that asks for a guard but cannot have one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub namespace: String,
    pub pod: String,
    pub node: Option<String>,
    pub mode: &'static str,
    /// `host-network`, `node-not-chained` or `unguarded` (an agent found it running without
    /// a table: it started before the plugin was chained).
    pub reason: &'static str,
    pub detail: String,
}

pub(crate) fn text_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn is_ready(pod: &Value) -> bool {
    text_at(pod, "/status/phase") == Some("Running")
        && pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .map(|c| {
                c.iter().any(|c| {
                    text_at(c, "/type") == Some("Ready") && text_at(c, "/status") == Some("True")
                })
            })
            .unwrap_or(false)
}

/// The mode a pod asks for, `None` when it asks for no guard.
pub(crate) fn requested_mode(pod: &Value, settings: &GuardCriteria) -> Option<Mode> {
    let ns = text_at(pod, "/metadata/namespace").unwrap_or("");
    if settings.enforce_namespaces.contains(ns) {
        return Some(Mode::Enforce);
    }
    let annotated = pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(MODE_KEY))
        .and_then(Value::as_str);
    let mode = match annotated {
        Some(m) => Mode::parse(m.trim()).unwrap_or(Mode::Enforce),
        None => settings.default_mode,
    };
    (mode != Mode::Off).then_some(mode)
}

/// Nodes where the plugin is chained: a ready DaemonSet pod runs there and the node has no
/// not-ready taint.
pub fn chained_nodes(
    pods: &[Value],
    nodes: &[Value],
    settings: &GuardCriteria,
) -> BTreeSet<String> {
    let (key, value) = &settings.selector;
    let with_ready_agent: BTreeSet<&str> = pods
        .iter()
        .filter(|p| {
            p.pointer("/metadata/labels")
                .and_then(|l| l.get(key))
                .and_then(Value::as_str)
                == Some(value)
        })
        .filter(|p| is_ready(p))
        .filter_map(|p| text_at(p, "/spec/nodeName"))
        .collect();
    nodes
        .iter()
        .filter_map(|n| {
            let name = text_at(n, "/metadata/name")?;
            let tainted = n
                .pointer("/spec/taints")
                .and_then(Value::as_array)
                .map(|t| {
                    t.iter()
                        .any(|t| text_at(t, "/key") == Some(NOT_READY_TAINT))
                })
                .unwrap_or(false);
            (with_ready_agent.contains(name) && !tainted).then(|| name.to_string())
        })
        .collect()
}

/// Classifies every pod.
pub fn findings(pods: &[Value], nodes: &[Value], settings: &GuardCriteria) -> Vec<Finding> {
    let chained = chained_nodes(pods, nodes, settings);
    let mut out = Vec::new();
    for p in pods {
        if matches!(
            text_at(p, "/status/phase"),
            Some("Succeeded") | Some("Failed")
        ) {
            continue;
        }
        let Some(mode) = requested_mode(p, settings) else {
            continue;
        };
        let namespace = text_at(p, "/metadata/namespace").unwrap_or("").to_string();
        let pod = text_at(p, "/metadata/name").unwrap_or("").to_string();
        let node = text_at(p, "/spec/nodeName").map(str::to_string);
        let (reason, detail) =
            if p.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
                (
                    "host-network",
                    "hostNetwork pods are never passed to a CNI plugin".to_string(),
                )
            } else if let Some(n) = node.as_deref().filter(|n| !chained.contains(*n)) {
                (
                    "node-not-chained",
                    format!("egress-guard is not chained (ready) on node {n}"),
                )
            } else {
                continue;
            };
        out.push(Finding {
            namespace,
            pod,
            node,
            mode: mode.as_str(),
            reason,
            detail,
        });
    }
    out.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
    out
}

pub(crate) struct Args {
    kubeconfig: Option<PathBuf>,
    settings: GuardCriteria,
    pub(crate) json: bool,
}

pub(crate) fn parse(p: &Parsed) -> Result<Args, CliError> {
    let mut a = Args {
        kubeconfig: None,
        settings: GuardCriteria::default(),
        json: p.has("json"),
    };
    if let Some(path) = p.last("plugin-config") {
        let conf = super::plugin_config(path)?;
        a.settings
            .enforce_namespaces
            .extend(conf.settings.enforce_namespaces);
        a.settings.default_mode = conf.settings.default_mode;
    }
    for (flag, v) in p.iter() {
        match flag {
            "kubeconfig" => a.kubeconfig = Some(PathBuf::from(v)),
            "enforce-namespace" => {
                a.settings.enforce_namespaces.insert(v.to_string());
            }
            "default-mode" => {
                a.settings.default_mode = Mode::parse(v).ok_or_else(|| {
                    CliError::usage(format!(
                        "--default-mode \"{v}\" is not off, audit or enforce"
                    ))
                })?
            }
            "selector" => {
                let (k, value) = v.split_once('=').ok_or_else(|| {
                    CliError::usage(format!("--selector \"{v}\" is not KEY=VALUE"))
                })?;
                a.settings.selector = (k.to_string(), value.to_string());
            }
            "plugin-config" | "json" => {}
            other => return Err(CliError::unhandled(other)),
        }
    }
    if a.kubeconfig.is_none() {
        a.kubeconfig = std::env::var_os("KUBECONFIG")
            .filter(|k| !k.is_empty())
            .map(PathBuf::from);
    }
    Ok(a)
}

/// Items per page: large clusters are listed in pages (`limit`/`continue`).
const PAGE: usize = 500;

fn items(
    client: &Client,
    path: &str,
    query: &[(&str, &str)],
    what: &'static str,
) -> Result<Vec<Value>, ReportError> {
    client
        .list(path, query, PAGE)
        .map_err(|source| ReportError::List {
            what,
            source: Box::new(source),
        })
}

/// Pods that agents reported unguarded (a Kubernetes Event on the pod) and that still run:
/// same uid, not finished.
pub fn unguarded_findings(
    pods: &[Value],
    events: &[Value],
    settings: &GuardCriteria,
) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::new();
    for e in events {
        if text_at(e, "/reason") != Some(super::coverage::UNGUARDED_REASON) {
            continue;
        }
        let (Some(ns), Some(name)) = (
            text_at(e, "/involvedObject/namespace"),
            text_at(e, "/involvedObject/name"),
        ) else {
            continue;
        };
        let uid = text_at(e, "/involvedObject/uid");
        let running = pods.iter().find(|p| {
            text_at(p, "/metadata/namespace") == Some(ns)
                && text_at(p, "/metadata/name") == Some(name)
                && (uid.is_none() || text_at(p, "/metadata/uid") == uid)
                && !matches!(
                    text_at(p, "/status/phase"),
                    Some("Succeeded") | Some("Failed")
                )
        });
        let Some(pod) = running else { continue };
        // Asks for no guard any more (annotation removed): nothing to report.
        let Some(mode) = requested_mode(pod, settings) else {
            continue;
        };
        if out.iter().any(|f| f.namespace == ns && f.pod == name) {
            continue;
        }
        out.push(Finding {
            namespace: ns.to_string(),
            pod: name.to_string(),
            node: text_at(pod, "/spec/nodeName").map(str::to_string),
            mode: mode.as_str(),
            reason: "unguarded",
            detail: text_at(e, "/message")
                .unwrap_or("no egress-guard table")
                .to_string(),
        });
    }
    out
}

fn run(a: &Args) -> Result<Vec<Finding>, ReportError> {
    let timeout = Duration::from_secs(30);
    let client = match &a.kubeconfig {
        Some(k) => Client::from_kubeconfig(k, timeout),
        None => Client::in_cluster(timeout),
    }
    .map_err(|e| ReportError::Client(Box::new(e)))?;
    let pods = items(&client, "/api/v1/pods", &[], "pods")?;
    let nodes = items(&client, "/api/v1/nodes", &[], "nodes")?;
    let selector = format!("reason={}", super::coverage::UNGUARDED_REASON);
    let events = items(
        &client,
        "/api/v1/events",
        &[("fieldSelector", &selector)],
        "events",
    )?;
    let mut found = findings(&pods, &nodes, &a.settings);
    for f in unguarded_findings(&pods, &events, &a.settings) {
        if !found
            .iter()
            .any(|g| g.namespace == f.namespace && g.pod == f.pod)
        {
            found.push(f);
        }
    }
    found.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
    Ok(found)
}

/// Entry point of the `report` subcommand.
pub fn report(p: &Parsed) -> Result<ExitCode, CliError> {
    let args = parse(p)?;
    let json = args.json;
    let found = match run(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("egress-guard report: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if json {
        match serde_json::to_string_pretty(&found) {
            Ok(t) => println!("{t}"),
            Err(e) => {
                eprintln!("egress-guard report: {e}");
                return Ok(ExitCode::from(2));
            }
        }
    } else if !found.is_empty() {
        let cells: Vec<Vec<String>> = found
            .iter()
            .map(|f| {
                vec![
                    f.namespace.clone(),
                    f.pod.clone(),
                    f.node.clone().unwrap_or_else(|| "-".into()),
                    f.mode.to_string(),
                    format!("{}: {}", f.reason, f.detail),
                ]
            })
            .collect();
        print!(
            "{}",
            text_table(&["NAMESPACE", "POD", "NODE", "MODE", "REASON"], &cells)
        );
    }
    if found.is_empty() {
        eprintln!("egress-guard report: every pod that asks for an egress guard can have one");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "egress-guard report: {} pod(s) ask for an egress guard but cannot have one",
            found.len()
        );
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, node: &str, ann: Value, host_network: bool) -> Value {
        json!({"metadata": {"namespace": ns, "name": name, "annotations": ann},
               "spec": {"nodeName": node, "hostNetwork": host_network}, "status": {"phase": "Running"}})
    }

    fn agent_pod(node: &str, ready: bool) -> Value {
        json!({"metadata": {"namespace": "egress-guard", "name": format!("eg-{node}"), "labels": {"app.kubernetes.io/name": "egress-guard"}},
               "spec": {"nodeName": node, "hostNetwork": true},
               "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
    }

    #[test]
    fn classifies_host_network_and_unchained_nodes() {
        let nodes = vec![
            json!({"metadata": {"name": "n1"}}),
            json!({"metadata": {"name": "n2"}}),
            json!({"metadata": {"name": "n3"}, "spec": {"taints": [{"key": NOT_READY_TAINT, "effect": "NoSchedule"}]}}),
        ];
        let mut settings = GuardCriteria::default();
        settings.enforce_namespaces.insert("model-serving".into());
        let pods = vec![
            agent_pod("n1", true),
            agent_pod("n2", false),
            agent_pod("n3", true),
            pod(
                "ml",
                "guarded-ok",
                "n1",
                json!({MODE_KEY: "enforce"}),
                false,
            ),
            pod("ml", "hostnet", "n1", json!({MODE_KEY: "audit"}), true),
            pod("model-serving", "unchained", "n2", json!({}), false),
            pod(
                "model-serving",
                "tainted",
                "n3",
                json!({MODE_KEY: "off"}),
                false,
            ),
            pod("ml", "unguarded-hostnet", "n1", json!({}), true),
            pod("ml", "off", "n2", json!({MODE_KEY: "off"}), false),
        ];
        let f = findings(&pods, &nodes, &settings);
        let got: Vec<(&str, &str, &str)> = f
            .iter()
            .map(|f| (f.pod.as_str(), f.reason, f.mode))
            .collect();
        assert_eq!(
            got,
            [
                ("hostnet", "host-network", "audit"),
                ("tainted", "node-not-chained", "enforce"),
                ("unchained", "node-not-chained", "enforce")
            ]
        );
        settings.default_mode = Mode::Audit;
        let f = findings(&pods, &nodes, &settings);
        assert!(
            f.iter().any(|f| f.pod == "unguarded-hostnet"),
            "default mode audit makes every pod ask: {f:?}"
        );
        assert!(!f.iter().any(|f| f.pod == "off"));
    }
}
