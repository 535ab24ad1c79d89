//! Which of our host tables may be bound to a device name, kept in the state dir so that ADD
//! can find a stale table on a reused veth name with a few lookups instead of listing every
//! table on the node (a listing costs time in proportion to the number of guarded pods).
//!
//! Layout: `<stateDir>/devices/<device>/<table>`, one empty file per (device, table). Adding and
//! removing an entry is one atomic syscall, so concurrent plugin runs cannot lose each other's
//! entries. The index is a superset of the truth: ADD records its table *before* installing it,
//! so every table in the kernel has an entry; entries whose table is gone are harmless (each
//! candidate is looked up in the kernel) and are pruned by DEL, GC and the agent.
//!
//! The marker `<stateDir>/devices.complete` says the index covers every table in the kernel.
//! Without it (a new or wiped state dir, an upgrade from a version without the index) ADD lists
//! the tables the slow way, rebuilds the index from them and writes the marker. A failure to
//! record an entry removes the marker, so the index is never trusted while incomplete.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Entries younger than this are never pruned: an ADD records its table a moment before the
/// kernel holds it, and a pruner that listed the tables just before must not drop the entry.
pub const PRUNE_GRACE: Duration = Duration::from_secs(600);

/// The device index under one state dir.
#[derive(Debug, Clone)]
pub struct DeviceIndex {
    root: PathBuf,
    marker: PathBuf,
}

fn not_found_ok(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// A device or table name usable as one path component.
fn component(name: &str) -> io::Result<&str> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || name.len() > 255
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("\"{name}\" cannot name a device index entry"),
        ));
    }
    Ok(name)
}

impl DeviceIndex {
    pub fn new(state_dir: &Path) -> Self {
        DeviceIndex {
            root: state_dir.join("devices"),
            marker: state_dir.join("devices.complete"),
        }
    }

    /// Whether the index covers every table in the kernel.
    pub fn is_complete(&self) -> bool {
        self.marker.is_file()
    }

    pub fn mark_complete(&self) -> io::Result<()> {
        std::fs::create_dir_all(&self.root)?;
        std::fs::write(&self.marker, b"")
    }

    /// Stops trusting the index until the next rebuild.
    pub fn invalidate(&self) -> io::Result<()> {
        not_found_ok(std::fs::remove_file(&self.marker))
    }

    fn dir(&self, device: &str) -> io::Result<PathBuf> {
        Ok(self.root.join(component(device)?))
    }

    /// The tables recorded for `device` (sorted).
    pub fn tables(&self, device: &str) -> io::Result<Vec<String>> {
        let entries = match std::fs::read_dir(self.dir(device)?) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries {
            let name = entry?.file_name();
            if let Some(name) = name.to_str() {
                out.push(name.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Records that `table` may be bound to `device`.
    pub fn add(&self, device: &str, table: &str) -> io::Result<()> {
        let dir = self.dir(device)?;
        let path = dir.join(component(table)?);
        match std::fs::write(&path, b"") {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir)?;
                std::fs::write(&path, b"")
            }
            other => other,
        }
    }

    /// Records `table` for `device` before the table is installed. If the entry cannot be
    /// written the index stops being trusted (`Ok(Some(why))`); `Err((add, invalidate))` when
    /// even that failed, and the caller must not install the table.
    pub fn record(
        &self,
        device: &str,
        table: &str,
    ) -> Result<Option<io::Error>, (io::Error, io::Error)> {
        let Err(e) = self.add(device, table) else {
            return Ok(None);
        };
        match self.invalidate() {
            Ok(()) => Ok(Some(e)),
            Err(e2) => Err((e, e2)),
        }
    }

    /// Forgets one entry (and the device's directory once it is empty).
    pub fn remove(&self, device: &str, table: &str) -> io::Result<()> {
        let dir = self.dir(device)?;
        not_found_ok(std::fs::remove_file(dir.join(component(table)?)))?;
        // Fails while other entries remain, or when another run just added one: both fine.
        let _ = std::fs::remove_dir(&dir);
        Ok(())
    }

    /// Whether the entry exists and was written before `cutoff`.
    fn older_than(&self, device: &str, table: &str, cutoff: SystemTime) -> io::Result<bool> {
        let path = self.dir(device)?.join(component(table)?);
        match std::fs::metadata(path) {
            Ok(m) => Ok(m.modified()? < cutoff),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Forgets an entry whose table was found missing, unless it is younger than
    /// `PRUNE_GRACE` (its ADD may be about to install it).
    pub fn forget_missing(&self, device: &str, table: &str) -> io::Result<bool> {
        let cutoff = SystemTime::now()
            .checked_sub(PRUNE_GRACE)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        if !self.older_than(device, table, cutoff)? {
            return Ok(false);
        }
        self.remove(device, table)?;
        Ok(true)
    }

    /// Removes every entry whose table is not in `live` (a listing taken at `listed_at`) and
    /// that was written more than `PRUNE_GRACE` before it. Returns how many went.
    pub fn prune(&self, live: &BTreeSet<String>, listed_at: SystemTime) -> io::Result<usize> {
        let cutoff = listed_at
            .checked_sub(PRUNE_GRACE)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let devices = match std::fs::read_dir(&self.root) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut pruned = 0;
        for dev in devices {
            let dev = dev?;
            if !dev.file_type()?.is_dir() {
                continue;
            }
            let Some(device) = dev.file_name().to_str().map(str::to_string) else {
                continue;
            };
            for table in self.tables(&device)? {
                if !live.contains(&table) && self.older_than(&device, &table, cutoff)? {
                    self.remove(&device, &table)?;
                    pruned += 1;
                }
            }
            let _ = std::fs::remove_dir(dev.path());
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh state dir, removed when dropped.
    struct Scratch(PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn index_named(tag: &str) -> (Scratch, DeviceIndex) {
        let dir = std::env::temp_dir().join(format!("eg-devindex-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let idx = DeviceIndex::new(&dir);
        (Scratch(dir), idx)
    }

    #[test]
    fn add_list_remove() {
        let (_d, idx) = index_named("add_list");
        assert_eq!(
            idx.tables("veth1").unwrap_or_default(),
            Vec::<String>::new()
        );
        idx.add("veth1", "egress_guard_b").expect("add");
        idx.add("veth1", "egress_guard_a").expect("add");
        idx.add("veth1", "egress_guard_a").expect("add twice");
        idx.add("veth2", "egress_guard_c").expect("add");
        assert_eq!(
            idx.tables("veth1").expect("list"),
            vec!["egress_guard_a", "egress_guard_b"]
        );
        idx.remove("veth1", "egress_guard_a").expect("remove");
        idx.remove("veth1", "egress_guard_a").expect("remove twice");
        assert_eq!(idx.tables("veth1").expect("list"), vec!["egress_guard_b"]);
        idx.remove("veth1", "egress_guard_b").expect("remove");
        assert!(!idx.root.join("veth1").exists(), "empty device dirs go");
        assert_eq!(idx.tables("veth2").expect("list"), vec!["egress_guard_c"]);
    }

    #[test]
    fn marker_round_trip() {
        let (_d, idx) = index_named("marker_r");
        assert!(!idx.is_complete());
        idx.invalidate().expect("invalidate without marker");
        idx.mark_complete().expect("mark");
        assert!(idx.is_complete());
        idx.invalidate().expect("invalidate");
        assert!(!idx.is_complete());
    }

    #[test]
    fn prune_keeps_live_tables_only() {
        let (_d, idx) = index_named("prune_ke");
        idx.add("veth1", "egress_guard_a").expect("add");
        idx.add("veth1", "egress_guard_b").expect("add");
        idx.add("veth2", "egress_guard_c").expect("add");
        std::fs::write(idx.root.join("stray-file"), b"").expect("stray file");
        let live: BTreeSet<String> = ["egress_guard_b".to_string()].into();
        // Fresh entries survive: their ADD may not have installed its table yet.
        assert_eq!(idx.prune(&live, SystemTime::now()).expect("prune"), 0);
        assert!(!idx
            .forget_missing("veth2", "egress_guard_c")
            .expect("forget"));
        assert_eq!(idx.tables("veth2").expect("list"), vec!["egress_guard_c"]);
        let later = SystemTime::now() + PRUNE_GRACE + Duration::from_secs(1);
        assert_eq!(idx.prune(&live, later).expect("prune"), 2);
        assert_eq!(idx.tables("veth1").expect("list"), vec!["egress_guard_b"]);
        assert!(idx.tables("veth2").expect("list").is_empty());
        assert!(!idx.root.join("veth2").exists());
    }

    #[test]
    fn names_that_are_not_path_components_are_refused() {
        let (_d, idx) = index_named("names_th");
        for bad in ["", ".", "..", "a/b"] {
            assert!(idx.add(bad, "t").is_err(), "device {bad:?}");
            assert!(idx.add("veth1", bad).is_err(), "table {bad:?}");
            assert!(idx.tables(bad).is_err(), "list {bad:?}");
        }
    }
}
