//! Periodic reconciliation: every guarded pod's table must be present, bound to the right
//! device and identical to what its recorded policy compiles to. Drift is reported (and the
//! table reinstalled with `--repair`); tables and state files of pods that are gone are
//! removed. Only tables named `egress_guard_*` are ever touched.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::path::{Path, PathBuf};

use super::metrics::Shared;
use crate::guard::devindex::DeviceIndex;
use crate::guard::inspect::{inspect, Inspection};
use crate::guard::record::{self as state, PodRecord};
use crate::kernel::{Kernel, KernelError, Where};
use crate::ruleset::{comment_container, comment_devices, legacy_container, Family, TABLE_PREFIX};

/// Schema of the event lines the agent writes next to flow records.
pub const EVENT_SCHEMA: &str = "egress-guard.event/v1";

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("listing host tables: {0}")]
    List(#[source] KernelError),
}

/// One reconciliation event, written as a JSON line on stdout.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EventRecord {
    pub schema: &'static str,
    pub time: String,
    pub node: String,
    /// `drift`, `repaired`, `repair-failed`, `collected` or `error`.
    pub event: &'static str,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
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

/// Whether an interface exists in the calling thread's network namespace.
pub fn device_exists(name: &str) -> bool {
    let Ok(c) = CString::new(name) else {
        return false;
    };
    // SAFETY: c is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// Interface index in the calling thread's network namespace (0 when absent).
pub fn ifindex(name: &str) -> u32 {
    let Ok(c) = CString::new(name) else { return 0 };
    // SAFETY: as above.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// The pod's network namespace is known to be gone: its path is missing while the directory
/// holding it is visible (a missing mount proves nothing), or it was a dead process's.
fn netns_gone(netns: &str) -> bool {
    let p = Path::new(netns);
    if netns.is_empty() || p.exists() {
        return false;
    }
    netns.starts_with("/proc/") || p.parent().map(Path::exists).unwrap_or(false)
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
            namespace: s.and_then(|s| s.pod_namespace.clone()),
            pod: s.and_then(|s| s.pod_name.clone()),
            pod_uid: s.and_then(|s| s.pod_uid.clone()),
            container_id: s.map(|s| s.container_id.clone()),
            placement: s.map(|s| s.placement.clone()),
            table: s.map(|s| s.table.clone()),
            detail,
        }
    }

    /// Whether the pod behind a state file is gone (sandbox deleted without DEL).
    pub fn pod_gone(s: &PodRecord, device_exists: &dyn Fn(&str) -> bool) -> bool {
        if netns_gone(&s.netns) {
            return true;
        }
        s.is_host()
            && s.device
                .as_deref()
                .map(|d| !device_exists(d))
                .unwrap_or(false)
    }

    /// One pass. Returns the events to print; counts them in `shared`.
    pub fn pass<K: Kernel>(
        &mut self,
        kernel: &mut K,
        shared: &Shared,
        device_exists: &dyn Fn(&str) -> bool,
    ) -> Vec<EventRecord> {
        let mut out = Vec::new();
        let (states, errors) = state::load_dir(&self.state_dir);
        for e in errors {
            shared.error("state");
            out.push(self.event("error", None, vec![e.to_string()]));
        }
        for s in &states {
            if Self::pod_gone(s, device_exists) {
                self.collect(kernel, shared, s, &mut out);
                continue;
            }
            self.check(kernel, shared, s, &mut out);
        }
        self.reported
            .retain(|cid, _| states.iter().any(|s| &s.container_id == cid));
        let known: BTreeSet<&str> = states
            .iter()
            .filter(|s| s.is_host())
            .map(|s| s.table.as_str())
            .collect();
        match self.orphan_pass(kernel, shared, &known, device_exists) {
            Ok(mut events) => out.append(&mut events),
            Err(e) => {
                shared.error("gc");
                out.push(self.event("error", None, vec![e.to_string()]));
            }
        }
        out
    }

    fn collect<K: Kernel>(
        &self,
        kernel: &mut K,
        shared: &Shared,
        s: &PodRecord,
        out: &mut Vec<EventRecord>,
    ) {
        let mut detail =
            vec!["the pod's network namespace or interface is gone (no DEL was run)".to_string()];
        if s.is_host() {
            match kernel.remove(Where::Host, Family::Netdev, &s.table) {
                Ok(true) => detail.push(format!("removed table netdev {}", s.table)),
                Ok(false) => {}
                Err(e) => {
                    shared.error("gc");
                    out.push(self.event("error", Some(s), vec![e.to_string()]));
                    return;
                }
            }
        }
        if let Err(e) = state::remove(&self.state_dir, s.key()) {
            shared.error("gc");
            out.push(self.event("error", Some(s), vec![e.to_string()]));
            return;
        }
        detail.push("removed state file".to_string());
        shared.with(|e| e.gc_removals += 1);
        out.push(self.event("collected", Some(s), detail));
    }

    fn still_recorded(&self, s: &PodRecord) -> bool {
        matches!(
            state::load_file(&state::state_path(&self.state_dir, s.key())),
            Ok(Some(_))
        )
    }

    fn check<K: Kernel>(
        &mut self,
        kernel: &mut K,
        shared: &Shared,
        s: &PodRecord,
        out: &mut Vec<EventRecord>,
    ) {
        let table = match s.expected_table() {
            Ok(t) => t,
            Err(e) => {
                shared.error("state");
                out.push(self.event("error", Some(s), vec![e.to_string()]));
                return;
            }
        };
        let at = s.place();
        let found = match inspect(kernel, at, &table) {
            Ok(found) => found,
            Err(e) => {
                shared.error("reconcile");
                out.push(self.event("error", Some(s), vec![e.to_string()]));
                return;
            }
        };
        let problems = found.problems(&table);
        if problems.is_empty() {
            self.reported.remove(&s.container_id);
            return;
        }
        // A DEL may have removed the table and be about to remove the state file.
        if !self.still_recorded(s) {
            return;
        }
        if !self.repair && self.reported.get(&s.container_id) == Some(&problems) {
            return;
        }
        self.reported
            .insert(s.container_id.clone(), problems.clone());
        log::warn!(
            "{}: drift in table {} {}: {}",
            s.who(),
            table.family.name(),
            table.name,
            problems.join("; ")
        );
        shared.with(|e| e.drift += 1);
        out.push(self.event("drift", Some(s), problems));
        if !self.repair {
            return;
        }
        let replace: Vec<String> = if found == Inspection::Missing {
            Vec::new()
        } else {
            vec![table.name.clone()]
        };
        log::debug!(
            "{}: reinstalling table {} {} in {} ({} rules)",
            s.who(),
            table.family.name(),
            table.name,
            at.describe(),
            table.rule_count()
        );
        if let (true, Some(dev)) = (s.is_host(), s.device.as_deref()) {
            // As ADD does: recorded before it exists, or the index is no longer trusted.
            match DeviceIndex::new(&self.state_dir).record(dev, &table.name) {
                Ok(None) => {}
                Ok(Some(e)) => log::warn!(
                    "{}: recording {} in the device index: {e}",
                    s.who(),
                    table.name
                ),
                Err((e, e2)) => {
                    log::warn!(
                        "{}: recording {} in the device index: {e}",
                        s.who(),
                        table.name
                    );
                    shared.error("repair");
                    out.push(self.event("repair-failed", Some(s), vec![e2.to_string()]));
                    return;
                }
            }
        }
        match kernel.install(at, table.family, &replace, Some(&table)) {
            Ok(_) => {
                if !self.still_recorded(s) {
                    // DEL ran meanwhile: take back what we installed.
                    let _ = kernel.remove(at, table.family, &table.name);
                    return;
                }
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
            Err(e) => {
                shared.error("repair");
                out.push(self.event("repair-failed", Some(s), vec![e.to_string()]));
            }
        }
    }

    /// Our tables in the host netns with no state file whose device is gone.
    fn orphan_pass<K: Kernel>(
        &mut self,
        kernel: &mut K,
        shared: &Shared,
        known: &BTreeSet<&str>,
        device_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<EventRecord>, ReconcileError> {
        let listed_at = std::time::SystemTime::now();
        let tables = kernel
            .tables(Where::Host, Family::Netdev)
            .map_err(ReconcileError::List)?;
        let mut live: BTreeSet<String> = tables
            .iter()
            .filter(|t| t.name.starts_with(TABLE_PREFIX))
            .map(|t| t.name.clone())
            .collect();
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for t in tables
            .into_iter()
            .filter(|t| t.name.starts_with(TABLE_PREFIX) && !known.contains(t.name.as_str()))
        {
            let device = comment_devices(&t.comment).next().map(str::to_string);
            if device.as_deref().map(device_exists).unwrap_or(false) {
                continue;
            }
            if !self.orphans.contains(&t.name) {
                seen.insert(t.name);
                continue;
            }
            let cid = comment_container(&t.comment)
                .or_else(|| legacy_container(&t.name))
                .map(str::to_string);
            let mut ev = self.event("collected", None, Vec::new());
            ev.container_id = cid;
            ev.placement = Some("host".into());
            ev.table = Some(t.name.clone());
            match kernel.remove(Where::Host, Family::Netdev, &t.name) {
                Ok(_) => {
                    live.remove(&t.name);
                    shared.with(|e| e.gc_removals += 1);
                    ev.detail = vec![format!(
                        "table netdev {} had no state file and its device {} is gone",
                        t.name,
                        device.as_deref().unwrap_or("(unknown)")
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
        if let Err(e) = DeviceIndex::new(&self.state_dir).prune(&live, listed_at) {
            log::warn!("pruning the device index: {e}");
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::RecordingKernel;
    use crate::netlink::nft::Expr;

    fn setup(tag: &str) -> (PathBuf, PodRecord) {
        let dir = std::env::temp_dir().join(format!("eg-reconcile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = crate::guard::record::tests::sample("enforce", &["10.0.5.0/24 tcp 8443"]);
        // A netns path that exists, so only the device decides.
        s.netns = dir.display().to_string();
        let json = serde_json::json!({
            "container_id": s.container_id, "ifname": s.ifname, "netns": s.netns,
            "pod_namespace": s.pod_namespace, "pod_name": s.pod_name, "pod_uid": s.pod_uid,
            "mode": s.mode, "placement": s.placement, "table": s.table, "device": s.device,
            "policy": s.policy, "entries": s.entries, "nflog_group": s.nflog_group, "created": "x",
            "pod_net": s.pod_net
        });
        std::fs::write(state::state_path(&dir, s.key()), json.to_string()).unwrap();
        (dir, s)
    }

    #[test]
    fn drift_is_reported_and_repaired() {
        let (dir, s) = setup("drift");
        let mut k = RecordingKernel::new();
        let table = s.expected_table().unwrap();
        k.install(Where::Host, Family::Netdev, &[], Some(&table))
            .unwrap();
        let shared = Shared::new(dir.clone(), "n".into());
        let mut r = Reconciler::new(dir.clone(), false, "n".into());
        let up = |_: &str| true;
        assert!(
            r.pass(&mut k, &shared, &up).is_empty(),
            "intact table: no events"
        );
        k.tamper(Where::Host, Family::Netdev, &s.table, |snap| {
            snap.chains[0]
                .rules
                .retain(|r| !r.iter().any(|e| matches!(e, Expr::Log { .. })));
        });
        let ev = r.pass(&mut k, &shared, &up);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(
            (ev[0].event, ev[0].pod.as_deref()),
            ("drift", Some("llm-0"))
        );
        assert!(
            r.pass(&mut k, &shared, &up).is_empty(),
            "the same drift is reported once"
        );
        r.repair = true;
        let ev = r.pass(&mut k, &shared, &up);
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
            r.pass(&mut k, &shared, &up).is_empty(),
            "repaired table is intact"
        );
        shared.with(|e| assert_eq!((e.drift, e.repairs), (2, 1)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn gone_pods_and_orphans_are_collected() {
        let (dir, s) = setup("gc");
        let mut k = RecordingKernel::new();
        let table = s.expected_table().unwrap();
        k.install(Where::Host, Family::Netdev, &[], Some(&table))
            .unwrap();
        let mut orphan = table.clone();
        orphan.name = "egress_guard_orphan".into();
        orphan.comment = "egress-guard dev=vethgone mode=enforce policy=x".into();
        k.install(Where::Host, Family::Netdev, &[], Some(&orphan))
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
        let gone = |_: &str| false;
        let ev = r.pass(&mut k, &shared, &gone);
        assert_eq!(ev.len(), 1, "orphan waits one pass: {ev:?}");
        assert_eq!(ev[0].event, "collected");
        assert!(!state::state_path(&dir, s.key()).exists());
        let ev = r.pass(&mut k, &shared, &gone);
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
