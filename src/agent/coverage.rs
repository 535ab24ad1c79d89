//! Unguarded pods on this node: pods the API server says run here, that ask for a guard (mode
//! annotation, enforced namespace or a non-off default mode) but have no table, because they
//! started before the plugin was chained (a node without the not-ready taint, or after an
//! uninstall). Each found in two passes in a row is reported once, as an `unguarded` event
//! record and a Kubernetes Event on the pod (so `report` finds it cluster-wide), counted in a gauge, and, with
//! `--evict-unguarded`, evicted through the Eviction API so that it restarts guarded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use super::metrics::Shared;
use super::reconcile::{EventRecord, EVENT_SCHEMA};
use super::report::{requested_mode, text_at as text, GuardCriteria};
use crate::guard::record::{self, PodRecord};
use crate::guard::PodIdentity;
use crate::kube::{Client, KubeError};

/// The Kubernetes Event reason `report` looks for.
pub const UNGUARDED_REASON: &str = "EgressGuardUnguarded";
/// Pods per page when listing.
const PAGE: usize = 500;

/// One pod that should be guarded and is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unguarded {
    pub pod: PodIdentity,
    pub mode: &'static str,
}

/// The running, pod-network pods of `pods` that ask for a guard and have no state record (by
/// uid, or by namespace and name for records without one). Pure: the test data in, the pods
/// out.
pub fn unguarded(
    pods: &[Value],
    records: &[PodRecord],
    criteria: &GuardCriteria,
) -> Vec<Unguarded> {
    let uids: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r.pod.uid.as_deref())
        .collect();
    let names: BTreeSet<(&str, &str)> = records
        .iter()
        .filter_map(|r| Some((r.pod.namespace.as_deref()?, r.pod.name.as_deref()?)))
        .collect();
    let mut out = Vec::new();
    for p in pods {
        // A pod whose sandbox is still being set up has no IP yet, and ADD writes the record
        // before it returns: only running pods with an IP can be judged.
        if text(p, "/status/phase") != Some("Running") || text(p, "/status/podIP").is_none() {
            continue;
        }
        if p.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
            continue; // never passed to a CNI plugin; `report` lists these
        }
        let Some(mode) = requested_mode(p, criteria) else {
            continue;
        };
        let (Some(ns), Some(name)) = (text(p, "/metadata/namespace"), text(p, "/metadata/name"))
        else {
            continue;
        };
        let uid = text(p, "/metadata/uid");
        if uid.is_some_and(|u| uids.contains(u)) || names.contains(&(ns, name)) {
            continue;
        }
        out.push(Unguarded {
            pod: PodIdentity {
                namespace: Some(ns.to_string()),
                name: Some(name.to_string()),
                uid: uid.map(str::to_string),
            },
            mode: mode.as_str(),
        });
    }
    out
}

/// The detector's settings and what it reported so far.
pub struct Coverage {
    pub client: Client,
    pub node: String,
    pub state_dir: PathBuf,
    pub criteria: GuardCriteria,
    pub evict: bool,
    /// What each unguarded pod (by uid, else namespace/name) has seen so far.
    seen: BTreeMap<String, Seen>,
}

/// An unguarded pod's progress through the passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Found in one pass: a sandbox being recreated has no state file for a moment, so a pod
    /// is reported only when a second pass in a row finds it unguarded.
    Once,
    Reported,
    Evicted,
}

impl Coverage {
    pub fn new(
        client: Client,
        node: String,
        state_dir: PathBuf,
        criteria: GuardCriteria,
        evict: bool,
    ) -> Coverage {
        Coverage {
            client,
            node,
            state_dir,
            criteria,
            evict,
            seen: BTreeMap::new(),
        }
    }

    fn record(&self, event: &'static str, pod: &PodIdentity, detail: Vec<String>) -> EventRecord {
        EventRecord {
            schema: EVENT_SCHEMA,
            time: crate::logging::rfc3339(std::time::SystemTime::now()),
            node: self.node.clone(),
            event,
            pod: pod.clone(),
            container_id: None,
            placement: None,
            table: None,
            detail,
        }
    }

    /// One pass: list this node's pods, compare with the state dir, report and evict.
    pub fn pass(&mut self, shared: &Shared) -> Vec<EventRecord> {
        let selector = format!("spec.nodeName={}", self.node);
        let pods = match self
            .client
            .list("/api/v1/pods", &[("fieldSelector", &selector)], PAGE)
        {
            Ok(p) => p,
            Err(e) => {
                shared.error("api");
                let detail = vec![format!(
                    "listing the pods of node {}: {}",
                    self.node,
                    crate::install::error_chain(&e)
                )];
                return vec![self.record("error", &PodIdentity::default(), detail)];
            }
        };
        let (records, errors) = record::load_dir(&self.state_dir);
        if !errors.is_empty() {
            // A state file that cannot be read may be a guarded pod's: judge nothing.
            shared.error("state");
            let detail = errors.iter().map(|e| e.to_string()).collect();
            return vec![self.record("error", &PodIdentity::default(), detail)];
        }
        let found = unguarded(&pods, &records, &self.criteria);
        let mut out = Vec::new();
        let mut still = BTreeSet::new();
        for u in &found {
            let key = u.pod.uid.clone().unwrap_or_else(|| {
                format!(
                    "{}/{}",
                    u.pod.namespace.as_deref().unwrap_or(""),
                    u.pod.name.as_deref().unwrap_or("")
                )
            });
            still.insert(key.clone());
            let seen = self.seen.get(&key).copied();
            if seen.is_none() {
                self.seen.insert(key, Seen::Once);
                continue;
            }
            if seen == Some(Seen::Once) {
                let detail = format!(
                    "asks for mode {} but has no egress-guard table on node {}: it started \
                     before the plugin was chained",
                    u.mode, self.node
                );
                if let Err(e) = self.kube_event(u, &detail) {
                    shared.error("api");
                    log::warn!(
                        "cannot create the Kubernetes Event for an unguarded pod: {}",
                        crate::install::error_chain(&e)
                    );
                }
                out.push(self.record("unguarded", &u.pod, vec![detail]));
                self.seen.insert(key.clone(), Seen::Reported);
            }
            if self.evict && self.seen.get(&key) == Some(&Seen::Reported) {
                match self.evict_pod(u) {
                    Ok(()) => {
                        shared.with(|e| e.evictions += 1);
                        self.seen.insert(key, Seen::Evicted);
                        out.push(self.record(
                            "evicted",
                            &u.pod,
                            vec!["evicted so that it restarts guarded".to_string()],
                        ));
                    }
                    Err(e) => {
                        shared.error("evict");
                        // A disruption budget (429) or a conflict: tried again next pass.
                        let why = crate::install::error_chain(&e);
                        out.push(self.record("evict-failed", &u.pod, vec![why]));
                    }
                }
            }
        }
        self.seen.retain(|k, _| still.contains(k));
        let confirmed = self.seen.values().filter(|s| **s != Seen::Once).count();
        shared.with(|e| e.unguarded = confirmed as u64);
        out
    }

    fn kube_event(&self, u: &Unguarded, message: &str) -> Result<(), KubeError> {
        let ns = u.pod.namespace.as_deref().unwrap_or("default");
        let now = crate::logging::rfc3339(std::time::SystemTime::now());
        let body = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": "egress-guard-unguarded-", "namespace": ns},
            "involvedObject": {
                "apiVersion": "v1", "kind": "Pod", "namespace": ns,
                "name": u.pod.name, "uid": u.pod.uid
            },
            "reason": UNGUARDED_REASON,
            "message": message,
            "type": "Warning",
            "source": {"component": "egress-guard-agent", "host": self.node},
            "reportingComponent": "egress-guard.io/agent",
            "reportingInstance": self.node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1
        });
        self.client
            .post_json(&format!("/api/v1/namespaces/{ns}/events"), &body)
            .map(|_| ())
    }

    fn evict_pod(&self, u: &Unguarded) -> Result<(), KubeError> {
        let ns = u.pod.namespace.as_deref().unwrap_or("default");
        let name = u.pod.name.as_deref().unwrap_or("");
        let body = json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": ns}
        });
        self.client
            .post_json(
                &format!("/api/v1/namespaces/{ns}/pods/{name}/eviction"),
                &body,
            )
            .map(|_| ())
    }
}

/// How long a pass may take before the next one starts.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Mode;

    fn pod(ns: &str, name: &str, annotations: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name, "uid": format!("uid-{name}"),
                            "annotations": annotations},
               "spec": {"nodeName": "n1"},
               "status": {"phase": "Running", "podIP": "10.244.0.5"}})
    }

    fn guarded(ns: &str, name: &str, uid: Option<&str>) -> PodRecord {
        let mut r: PodRecord = serde_json::from_value(json!({
            "container_id": format!("cid-{name}"), "ifname": "eth0", "netns": "/proc/1/ns/net",
            "table": "t", "mode": "enforce", "placement": "host", "device": null,
            "policy": "", "nflog_group": 100
        }))
        .unwrap();
        r.pod = PodIdentity {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            uid: uid.map(str::to_string),
        };
        r
    }

    #[test]
    fn finds_pods_that_ask_for_a_guard_and_have_no_table() {
        let enforce = json!({"egress-guard.io/mode": "enforce"});
        let mut pending = pod("ml", "starting", enforce.clone());
        pending["status"] = json!({"phase": "Pending"});
        let mut no_ip = pod("ml", "no-ip", enforce.clone());
        no_ip["status"]["podIP"] = Value::Null;
        let mut host = pod("ml", "host", enforce.clone());
        host["spec"]["hostNetwork"] = json!(true);
        let pods = vec![
            pod("ml", "guarded", enforce.clone()),
            pod("ml", "guarded-by-name", enforce.clone()),
            pod("ml", "unguarded", enforce.clone()),
            pod(
                "ml",
                "audit-unguarded",
                json!({"egress-guard.io/mode": "audit"}),
            ),
            pod("ml", "typo", json!({"egress-guard.io/mode": "enforced"})),
            pod("ml", "plain", json!({})),
            pod("ml", "off", json!({"egress-guard.io/mode": "off"})),
            pod("model-serving", "served", json!({})),
            pending,
            no_ip,
            host,
        ];
        let records = vec![
            guarded("ml", "guarded", Some("uid-guarded")),
            guarded("ml", "guarded-by-name", None),
        ];
        let mut criteria = GuardCriteria::default();
        criteria.enforce_namespaces.insert("model-serving".into());
        let found: Vec<(String, &str)> = unguarded(&pods, &records, &criteria)
            .into_iter()
            .map(|u| (u.pod.name.unwrap(), u.mode))
            .collect();
        let want: Vec<(String, &str)> = [
            ("unguarded", "enforce"),
            ("audit-unguarded", "audit"),
            ("typo", "enforce"),
            ("served", "enforce"),
        ]
        .iter()
        .map(|(n, m)| (n.to_string(), *m))
        .collect();
        assert_eq!(found, want);
        // With a non-off default mode, the plain pod asks for a guard too.
        criteria.default_mode = Mode::Audit;
        let names: Vec<String> = unguarded(&pods, &records, &criteria)
            .into_iter()
            .filter_map(|u| u.pod.name)
            .collect();
        assert!(names.contains(&"plain".to_string()), "{names:?}");
        assert!(!names.contains(&"off".to_string()), "{names:?}");
    }
}
