//! Periodic reconciliation: every guarded pod's table must be present, bound to the right
//! device and identical to what its recorded policy compiles to. Drift is reported (and the
//! table reinstalled with `--repair`); tables and state files of pods that are gone are
//! removed. This module decides and reports; the changes go through `crate::guard::repair`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::metrics::Shared;
use crate::guard::inspect::{inspect, Inspection};
use crate::guard::record::{self as state, PodRecord};
use crate::guard::repair::Reinstalled;
use crate::guard::{pod_as_record_keys, Guard, GuardError, PodIdentity};
use crate::kernel::Kernel;
use crate::ruleset::{comment_container, legacy_container};

/// Schema of the event lines the agent writes next to flow records.
pub const EVENT_SCHEMA: &str = "egress-guard.event/v1";

/// One reconciliation event, written as a JSON line on stdout.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EventRecord {
    pub schema: &'static str,
    pub time: String,
    pub node: String,
    /// `drift`, `repaired`, `repair-failed`, `collected`, `add-failed`, `unguarded`,
    /// `evicted`, `evict-failed` or `error`.
    pub event: &'static str,
    #[serde(flatten, serialize_with = "pod_as_record_keys")]
    pub pod: PodIdentity,
    pub container_id: Option<String>,
    pub placement: Option<String>,
    pub table: Option<String>,
    pub detail: Vec<String>,
}

/// Reconciliation settings and the memory kept between passes.
pub struct Reconciler {
    pub state_dir: PathBuf,
    pub repair: bool,
    pub node: String,
    /// Orphan tables seen in the previous pass (removed when seen twice, so a table whose ADD
    /// has not written its state file yet is left alone).
    orphans: BTreeSet<String>,
    /// Drift last reported per container id: the same drift is reported (and counted) once,
    /// not on every pass.
    reported: BTreeMap<String, Vec<String>>,
}

impl Reconciler {
    pub fn new(state_dir: PathBuf, repair: bool, node: String) -> Reconciler {
        Reconciler {
            state_dir,
            repair,
            node,
            orphans: BTreeSet::new(),
            reported: BTreeMap::new(),
        }
    }

    /// Counts an error of `stage` in the metrics and makes the event record saying it.
    fn failure(
        &self,
        shared: &Shared,
        stage: &'static str,
        event: &'static str,
        s: Option<&PodRecord>,
        e: &dyn std::fmt::Display,
    ) -> EventRecord {
        shared.error(stage);
        self.event(event, s, vec![e.to_string()])
    }

    /// The plugin's failed ADDs since the last pass: an `add-failed` record each, counted by
    /// error code.
    fn failed_adds(&self, shared: &Shared) -> Vec<EventRecord> {
        let (records, unreadable) = crate::guard::failures::take(&self.state_dir);
        for _ in 0..unreadable {
            shared.error("state");
        }
        records
            .into_iter()
            .map(|r| {
                let code = r.error_code.unwrap_or(0);
                shared.with(|e| *e.plugin_failures.entry(code).or_default() += 1);
                EventRecord {
                    schema: EVENT_SCHEMA,
                    time: r.time.clone(),
                    node: self.node.clone(),
                    event: "add-failed",
                    pod: r.pod.clone(),
                    container_id: Some(r.container_id.clone()).filter(|c| !c.is_empty()),
                    placement: r.placement.clone(),
                    table: r.table.clone(),
                    detail: vec![format!(
                        "code {code}: {}",
                        r.error.as_deref().unwrap_or("(no message)")
                    )],
                }
            })
            .collect()
    }

    fn event(
        &self,
        event: &'static str,
        s: Option<&PodRecord>,
        detail: Vec<String>,
    ) -> EventRecord {
        EventRecord {
            schema: EVENT_SCHEMA,
            time: crate::logging::rfc3339(std::time::SystemTime::now()),
            node: self.node.clone(),
            event,
            pod: s.map(|s| s.pod.clone()).unwrap_or_default(),
            container_id: s.map(|s| s.container_id.clone()),
            placement: s.map(|s| s.placement.clone()),
            table: s.map(|s| s.table.clone()),
            detail,
        }
    }

    /// One pass. Returns the events to print; counts them in `shared`.
    pub fn pass<K: Kernel>(&mut self, kernel: &mut K, shared: &Shared) -> Vec<EventRecord> {
        let mut out = self.failed_adds(shared);
        let state_dir = self.state_dir.clone();
        let (states, errors) = state::load_dir(&state_dir);
        for e in errors {
            out.push(self.failure(shared, "state", "error", None, &e));
        }
        for s in &states {
            let mut guard = Guard::new(kernel, &state_dir, s.subject());
            if guard.pod_gone(s) {
                self.collect(&mut guard, shared, s, &mut out);
                continue;
            }
            self.check(&mut guard, shared, s, &mut out);
        }
        self.reported
            .retain(|cid, _| states.iter().any(|s| &s.container_id == cid));
        let known: BTreeSet<&str> = states
            .iter()
            .filter(|s| s.is_host())
            .map(|s| s.table.as_str())
            .collect();
        let mut guard = Guard::new(kernel, &state_dir, "agent".to_string());
        match self.orphan_pass(&mut guard, shared, &known) {
            Ok(mut events) => out.append(&mut events),
            Err(e) => out.push(self.failure(shared, "gc", "error", None, &e)),
        }
        out
    }

    fn collect<K: Kernel>(
        &self,
        guard: &mut Guard<'_, K>,
        shared: &Shared,
        s: &PodRecord,
        out: &mut Vec<EventRecord>,
    ) {
        match guard.collect_gone(s) {
            Ok(removed) => {
                let mut detail = vec![
                    "the pod's network namespace or interface is gone (no DEL was run)".to_string(),
                ];
                detail.extend(removed);
                shared.with(|e| e.gc_removals += 1);
                out.push(self.event("collected", Some(s), detail));
            }
            Err(e) => out.push(self.failure(shared, "gc", "error", Some(s), &e)),
        }
    }

    fn check<K: Kernel>(
        &mut self,
        guard: &mut Guard<'_, K>,
        shared: &Shared,
        s: &PodRecord,
        out: &mut Vec<EventRecord>,
    ) {
        let table = match s.expected_table() {
            Ok(t) => t,
            Err(e) => {
                out.push(self.failure(shared, "state", "error", Some(s), &e));
                return;
            }
        };
        let found = match inspect(guard.kernel, s.place(), &table) {
            Ok(found) => found,
            Err(e) => {
                out.push(self.failure(shared, "reconcile", "error", Some(s), &e));
                return;
            }
        };
        let problems = found.problems(&table);
        if problems.is_empty() {
            self.reported.remove(&s.container_id);
            return;
        }
        // A DEL may have removed the table and be about to remove the state file.
        if !guard.still_recorded(s) {
            return;
        }
        if !self.repair && self.reported.get(&s.container_id) == Some(&problems) {
            return;
        }
        self.reported
            .insert(s.container_id.clone(), problems.clone());
        log::warn!(
            "{}: drift in table {} {}: {}",
            s.subject(),
            table.family.name(),
            table.name,
            problems.join("; ")
        );
        shared.with(|e| e.drift += 1);
        out.push(self.event("drift", Some(s), problems));
        if !self.repair {
            return;
        }
        match guard.reinstall(s, &table, found != Inspection::Missing) {
            Ok(Reinstalled::Done) => {
                shared.with(|e| e.repairs += 1);
                out.push(self.event(
                    "repaired",
                    Some(s),
                    vec![format!(
                        "reinstalled table {} {}",
                        table.family.name(),
                        table.name
                    )],
                ));
            }
            Ok(Reinstalled::Withdrawn) => {}
            Err(e) => out.push(self.failure(shared, "repair", "repair-failed", Some(s), &e)),
        }
    }

    /// Our tables in the host netns with no state file whose device is gone, removed when
    /// seen in two passes in a row.
    fn orphan_pass<K: Kernel>(
        &mut self,
        guard: &mut Guard<'_, K>,
        shared: &Shared,
        known: &BTreeSet<&str>,
    ) -> Result<Vec<EventRecord>, GuardError> {
        let listing = guard.list_orphans(known)?;
        let mut live = listing.ours.clone();
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for orphan in &listing.orphans {
            let name = &orphan.table.name;
            if !self.orphans.contains(name) {
                seen.insert(name.clone());
                continue;
            }
            let cid = comment_container(&orphan.table.comment)
                .or_else(|| legacy_container(name))
                .map(str::to_string);
            let mut ev = self.event("collected", None, Vec::new());
            ev.container_id = cid;
            ev.placement = Some("host".into());
            ev.table = Some(name.clone());
            match guard.remove_orphan(orphan) {
                Ok(()) => {
                    live.remove(name);
                    shared.with(|e| e.gc_removals += 1);
                    ev.detail = vec![format!(
                        "table netdev {name} had no state file and its device {} is gone",
                        orphan.device.as_deref().unwrap_or("(unknown)")
                    )];
                    out.push(ev);
                }
                Err(e) => {
                    shared.error("gc");
                    ev.event = "error";
                    ev.detail = vec![e.to_string()];
                    out.push(ev);
                }
            }
        }
        self.orphans = seen;
        // Collected pods' tables are not in `live` either: the listing came after `collect`.
        guard.prune_index(&live, listing.listed_at);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::devindex::DeviceIndex;
    use crate::kernel::fake::RecordingKernel;
    use crate::kernel::Transaction;
    use crate::kernel::{Kernel, Where};
    use crate::netlink::nft::Expr;
    use crate::ruleset::Family;

    fn setup(tag: &str) -> (PathBuf, PodRecord) {
        let dir = std::env::temp_dir().join(format!("eg-reconcile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = crate::guard::record::tests::sample("enforce", &["10.0.5.0/24 tcp 8443"]);
        // A netns path that exists, so only the device decides.
        s.netns = dir.display().to_string();
        let json = serde_json::json!({
            "container_id": s.container_id, "ifname": s.ifname, "netns": s.netns,
            "pod_namespace": s.pod.namespace, "pod_name": s.pod.name, "pod_uid": s.pod.uid,
            "mode": s.mode, "placement": s.placement, "table": s.table, "device": s.device,
            "policy": s.policy, "entries": s.entries, "nflog_group": s.nflog_group, "created": "x",
            "pod_net": s.pod_net
        });
        std::fs::write(state::state_path(&dir, s.key()), json.to_string()).unwrap();
        (dir, s)
    }

    /// A pod's record and, on the recording kernel, the table it compiles to.
    fn installed(tag: &str) -> (PathBuf, PodRecord, RecordingKernel, crate::ruleset::Table) {
        let (dir, s) = setup(tag);
        let mut k = RecordingKernel::new();
        let table = s.expected_table().unwrap();
        k.install(Transaction::create(Where::Host, &table)).unwrap();
        (dir, s, k, table)
    }

    #[test]
    fn drift_is_reported_and_repaired() {
        let (dir, s, mut k, table) = installed("drift");
        let shared = Shared::new(dir.clone(), "n".into());
        let mut r = Reconciler::new(dir.clone(), false, "n".into());
        // The pod's host device is there, and so is the device of a table no record claims
        // (an ADD that has not written its record yet): that table is never collected.
        k.host_links.insert(s.device.clone().unwrap());
        let mut unrecorded = table.clone();
        unrecorded.name = "egress_guard_unrecorded".into();
        unrecorded.comment = "egress-guard dev=vethnew mode=enforce policy=x".into();
        k.install(Transaction::create(Where::Host, &unrecorded))
            .unwrap();
        k.host_links.insert("vethnew".into());
        assert!(
            r.pass(&mut k, &shared).is_empty(),
            "intact table: no events"
        );
        k.tamper(Where::Host, Family::Netdev, &s.table, |snap| {
            snap.chains[0]
                .rules
                .retain(|r| !r.iter().any(|e| matches!(e, Expr::Log { .. })));
        });
        let ev = r.pass(&mut k, &shared);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(
            (ev[0].event, ev[0].pod.name.as_deref()),
            ("drift", Some("llm-0"))
        );
        assert!(
            r.pass(&mut k, &shared).is_empty(),
            "the same drift is reported once"
        );
        r.repair = true;
        let ev = r.pass(&mut k, &shared);
        assert_eq!(
            ev.iter().map(|e| e.event).collect::<Vec<_>>(),
            ["drift", "repaired"]
        );
        let device = s.device.clone().unwrap();
        assert_eq!(
            DeviceIndex::new(&dir).tables(&device).unwrap(),
            vec![s.table.clone()],
            "a reinstalled table is recorded in the device index"
        );
        assert!(
            r.pass(&mut k, &shared).is_empty(),
            "repaired table is intact"
        );
        shared.with(|e| assert_eq!((e.drift, e.repairs, e.gc_removals), (2, 1, 0)));
        assert!(
            k.rendered(Where::Host, Family::Netdev, "egress_guard_unrecorded")
                .is_some(),
            "a table whose device is present stays"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_host_placed_pod_whose_netns_path_is_not_visible_here_keeps_its_table() {
        // The agent's container may not see the runtime's netns path (another mount or PID
        // namespace): with the pod's veth still on the host, the pod is not gone.
        let (dir, mut s, mut k, _) = installed("invisible-netns");
        s.netns = "/proc/4242424/ns/net".into();
        let json = std::fs::read_to_string(state::state_path(&dir, s.key())).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["netns"] = serde_json::json!(s.netns);
        std::fs::write(state::state_path(&dir, s.key()), v.to_string()).unwrap();
        k.host_links.insert(s.device.clone().unwrap());
        let shared = Shared::new(dir.clone(), "n".into());
        let mut r = Reconciler::new(dir.clone(), false, "n".into());
        let ev = r.pass(&mut k, &shared);
        assert!(ev.iter().all(|e| e.event != "collected"), "{ev:?}");
        assert!(state::state_path(&dir, s.key()).exists());
        assert_eq!(k.table_names(), vec![format!("host netdev {}", s.table)]);
        // Its veth gone: collected.
        k.host_links.clear();
        let ev = r.pass(&mut k, &shared);
        assert!(ev.iter().any(|e| e.event == "collected"), "{ev:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn gone_pods_and_orphans_are_collected() {
        let (dir, s, mut k, table) = installed("gc");
        let mut orphan = table.clone();
        orphan.name = "egress_guard_orphan".into();
        orphan.comment = "egress-guard dev=vethgone mode=enforce policy=x".into();
        k.install(Transaction::create(Where::Host, &orphan))
            .unwrap();
        // Index entries of both, old enough to be pruned once their tables are gone.
        let index = DeviceIndex::new(&dir);
        for (dev, t) in [
            (s.device.clone().unwrap(), s.table.clone()),
            ("vethgone".into(), orphan.name.clone()),
        ] {
            index.add(&dev, &t).unwrap();
            let path = dir.join("devices").join(&dev).join(&t);
            let f = std::fs::File::options().write(true).open(path).unwrap();
            f.set_modified(std::time::SystemTime::now() - 2 * crate::guard::devindex::PRUNE_GRACE)
                .unwrap();
        }
        let shared = Shared::new(dir.clone(), "n".into());
        let mut r = Reconciler::new(dir.clone(), true, "n".into());
        // Neither the pod's device nor the orphan's is there.
        let ev = r.pass(&mut k, &shared);
        assert_eq!(ev.len(), 1, "orphan waits one pass: {ev:?}");
        assert_eq!(ev[0].event, "collected");
        assert!(!state::state_path(&dir, s.key()).exists());
        let ev = r.pass(&mut k, &shared);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].table.as_deref(), Some("egress_guard_orphan"));
        assert_eq!(ev[0].container_id.as_deref(), Some("orphan"));
        assert!(k.table_names().is_empty(), "{:?}", k.table_names());
        assert!(
            !dir.join("devices/vethgone").exists()
                && index
                    .tables(s.device.as_deref().unwrap())
                    .unwrap()
                    .is_empty(),
            "index entries of collected tables are pruned"
        );
        shared.with(|e| assert_eq!(e.gc_removals, 2));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
