//! Failed ADDs, handed from the plugin to the agent: the plugin writes its verb record into
//! `<stateDir>/failures/` when an ADD fails, the agent reads each once (a metric by error code
//! and an event record) and removes it. Bounded: at most [`MAX_PENDING`] wait for the agent.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::logging::VerbRecord;

/// Subdirectory of the state dir.
pub const DIR: &str = "failures";
/// Records left unread beyond this are not written (no agent runs, or it is far behind).
pub const MAX_PENDING: usize = 256;

fn dir_of(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR)
}

/// Records a failed ADD. Only into a state dir that exists (a node where the plugin has run):
/// a plugin invoked with a broken configuration elsewhere leaves nothing behind. Errors are
/// ignored: the ADD has failed already and its error is what the runtime reports.
pub fn record(state_dir: &Path, rec: &VerbRecord) {
    if !state_dir.is_dir() {
        return;
    }
    let dir = dir_of(state_dir);
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let pending = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    if pending >= MAX_PENDING {
        return;
    }
    let Ok(text) = serde_json::to_vec(rec) else {
        return;
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let name = format!("{nanos}-{}.json", std::process::id());
    // Written beside, then renamed: the agent never reads half a record.
    let tmp = dir.join(format!(".{name}.tmp"));
    if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, dir.join(&name)).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Takes every pending record (oldest first), removing its file. Files that do not parse are
/// removed too and counted in the second value.
pub fn take(state_dir: &Path) -> (Vec<VerbRecord>, usize) {
    let dir = dir_of(state_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return (Vec::new(), 0);
    };
    let mut names: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    names.sort();
    let mut out = Vec::new();
    let mut bad = 0;
    for path in names {
        match std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<VerbRecord>(&b).ok())
        {
            Some(r) => out.push(r),
            None => bad += 1,
        }
        let _ = std::fs::remove_file(&path);
    }
    (out, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_handed_over_once_and_bounded() {
        let dir = std::env::temp_dir().join(format!("eg-failures-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rec = VerbRecord {
            verb: "ADD".into(),
            error_code: Some(7),
            error: Some("conflist field \"x\" is not a known field".into()),
            ..Default::default()
        };
        record(&dir, &rec);
        assert!(!dir.exists(), "no state dir is created for a failure");
        std::fs::create_dir_all(&dir).unwrap();
        record(&dir, &rec);
        std::fs::write(dir.join(DIR).join("0-garbage.json"), b"{").unwrap();
        let (got, bad) = take(&dir);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].error_code, Some(7));
        assert_eq!(bad, 1);
        assert_eq!(take(&dir).0.len(), 0, "taken once");
        for _ in 0..MAX_PENDING + 10 {
            record(&dir, &rec);
        }
        assert_eq!(take(&dir).0.len(), MAX_PENDING);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
