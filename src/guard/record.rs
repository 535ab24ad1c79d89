//! The per-attachment record the plugin writes at ADD (`<stateDir>/<key>.json`, the key being
//! the table name without its prefix) and removes at DEL and GC: the one type for writing it,
//! reading it back and rebuilding the table its recorded policy compiles to. Files only; never
//! touches the kernel.

use std::path::{Path, PathBuf};

use crate::kernel::Where;
use crate::policy::{parse_network_entry, GrammarError, Mode, ModeSource, Policy};
use crate::ruleset::{compile, in_legacy_form, legacy_table_name, Attach, Family, Table, Target};

/// One guarded attachment as ADD recorded it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodRecord {
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
    pub netns: String,
    #[serde(flatten)]
    pub pod: super::PodIdentity,
    pub mode: String,
    pub placement: String,
    pub table: String,
    pub device: Option<String>,
    /// Who the pod is on its interface (host placement, and pod placement on a netdev table),
    /// to rebuild the table from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_net: Option<crate::ruleset::PodNet>,
    pub policy: String,
    #[serde(default)]
    pub entries: Vec<String>,
    pub nflog_group: u16,
    /// The deny-log rate the table was built with; absent in records of releases that had
    /// the fixed default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_log_rate: Option<crate::ruleset::Rate>,
    /// The log interval the table was built with; absent in records of releases before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_log_interval: Option<u32>,
    #[serde(default)]
    pub created: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("state of container {container_id} has host placement but no podNet (written by a release before identity pinning): its table cannot be rebuilt here; a new sandbox of the pod gets one")]
    NoPodNet { container_id: String },
    #[error("cannot list state directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("state of {container_id}: mode \"{value}\" is not audit or enforce")]
    Mode { container_id: String, value: String },
    #[error("state of {container_id}: placement \"{value}\" is not host or pod")]
    Placement { container_id: String, value: String },
    #[error("state of {container_id}: host placement without a device")]
    NoDevice { container_id: String },
    #[error("state of {container_id}: entry \"{entry}\" is not valid: {source}")]
    Entry {
        container_id: String,
        entry: String,
        #[source]
        source: GrammarError,
    },
    #[error(
        "state of {container_id}: policy digest {recorded} does not match its entries ({computed})"
    )]
    Digest {
        container_id: String,
        recorded: String,
        computed: String,
    },
    #[error("cannot write state file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove state file {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl PodRecord {
    /// Name of the state file without `.json`: the table name without its prefix (16 hex
    /// digits; `<id>` or `<id>_<ifname>` for a release that named tables after the container
    /// ID), as the plugin writes it.
    pub fn key(&self) -> &str {
        key_of_table(&self.table)
    }

    /// `namespace/name`, or the container id when the runtime gave no pod identity.
    pub fn subject(&self) -> String {
        match (&self.pod.namespace, &self.pod.name) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            _ => self.container_id.clone(),
        }
    }

    pub fn is_host(&self) -> bool {
        self.placement == "host"
    }

    /// A host table and a pod table whose state pins the pod (on its own interface) are
    /// netdev tables; a pod table without (a kernel without the netdev egress hook) is inet.
    pub fn family(&self) -> Family {
        if self.is_host() || self.pod_net.is_some() {
            Family::Netdev
        } else {
            Family::Inet
        }
    }

    /// The namespace the pod's table lives in.
    pub fn place(&self) -> Where<'_> {
        if self.is_host() {
            Where::Host
        } else {
            Where::Netns(Path::new(&self.netns))
        }
    }

    /// The policy recorded at ADD, rebuilt and checked against the recorded digest.
    pub fn policy(&self) -> Result<Policy, RecordError> {
        let mode = match Mode::parse(&self.mode) {
            Some(m @ (Mode::Audit | Mode::Enforce)) => m,
            _ => {
                return Err(RecordError::Mode {
                    container_id: self.container_id.clone(),
                    value: self.mode.clone(),
                })
            }
        };
        let mut entries = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            entries.push(parse_network_entry(e).map_err(|source| RecordError::Entry {
                container_id: self.container_id.clone(),
                entry: e.clone(),
                source,
            })?);
        }
        entries.sort();
        entries.dedup();
        let policy = Policy {
            mode,
            mode_source: ModeSource::Annotation,
            entries,
        };
        let computed = policy.digest();
        if computed != self.policy {
            return Err(RecordError::Digest {
                container_id: self.container_id.clone(),
                recorded: self.policy.clone(),
                computed,
            });
        }
        Ok(policy)
    }

    /// The table this pod's policy compiles to: what the kernel must hold.
    pub fn expected_table(&self) -> Result<Table, RecordError> {
        let policy = self.policy()?;
        let attach = match self.placement.as_str() {
            "host" => Attach::Host {
                device: self.device.clone().ok_or_else(|| RecordError::NoDevice {
                    container_id: self.container_id.clone(),
                })?,
                pod: self.pod_net.clone().ok_or_else(|| RecordError::NoPodNet {
                    container_id: self.container_id.clone(),
                })?,
            },
            "pod" => match &self.pod_net {
                Some(pod) => Attach::PodLink {
                    device: self.ifname.clone(),
                    pod: pod.clone(),
                },
                None => Attach::Pod,
            },
            other => {
                return Err(RecordError::Placement {
                    container_id: self.container_id.clone(),
                    value: other.to_string(),
                })
            }
        };
        let target = Target {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
            attach,
            log: crate::ruleset::DenyLog {
                group: self.nflog_group,
                rate: self
                    .deny_log_rate
                    .unwrap_or(crate::ruleset::DenyLog::DEFAULT_RATE),
                interval_secs: self
                    .deny_log_interval
                    .unwrap_or(crate::ruleset::DenyLog::DEFAULT_INTERVAL_SECS),
            },
        };
        // Mode was checked to be audit or enforce, for which compile always yields a table.
        let table = compile(&policy, &target).ok_or_else(|| RecordError::Mode {
            container_id: self.container_id.clone(),
            value: self.mode.clone(),
        })?;
        // A pod added by a release that named tables after the container ID keeps that name.
        if self.table == legacy_table_name(&self.container_id, &self.ifname) {
            return Ok(in_legacy_form(table, &self.table));
        }
        Ok(table)
    }
}

/// The key of table `table`'s record: its name without the prefix (`<hash>`; `<id>` or
/// `<id>_<ifname>` for a release that named tables after the container ID).
pub fn key_of_table(table: &str) -> &str {
    table
        .strip_prefix(crate::ruleset::TABLE_PREFIX)
        .unwrap_or(table)
}

/// Path of a state file by its key (see `PodRecord::key`).
pub fn state_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.json"))
}

impl PodRecord {
    /// Writes the record atomically (a temporary file renamed over the old one), creating the
    /// directory.
    pub fn write(&self, dir: &Path) -> Result<(), RecordError> {
        let path = state_path(dir, self.key());
        let tmp = dir.join(format!(".{}.json.tmp", self.key()));
        std::fs::create_dir_all(dir)
            .and_then(|_| serde_json::to_vec(self).map_err(std::io::Error::other))
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|source| RecordError::Write { path, source })
    }
}

/// The record under `key`, if there is one that can be read (a missing or unreadable one is
/// `None`: callers use it to learn who claims a name, and a broken record claims nothing).
pub fn find(dir: &Path, key: &str) -> Option<PodRecord> {
    load_file(&state_path(dir, key)).ok().flatten()
}

/// The keys of every record file in `dir` (none for a missing directory); temporary files
/// (dot files) are not records.
pub fn keys(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let key = name.strip_suffix(".json")?;
            (!name.starts_with('.') && !key.is_empty()).then(|| key.to_string())
        })
        .collect();
    out.sort();
    out
}

/// Reads one state file; `Ok(None)` if it vanished (a concurrent DEL).
pub fn load_file(path: &Path) -> Result<Option<PodRecord>, RecordError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RecordError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| RecordError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

/// Every state file in `dir` (a missing directory holds none), sorted by pod, plus the files
/// that could not be read.
pub fn load_dir(dir: &Path) -> (Vec<PodRecord>, Vec<RecordError>) {
    let mut states = Vec::new();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (states, errors),
        Err(source) => {
            errors.push(RecordError::ReadDir {
                path: dir.to_path_buf(),
                source,
            });
            return (states, errors);
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        match load_file(&entry.path()) {
            Ok(Some(s)) => states.push(s),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    states.sort_by(|a, b| (a.subject(), &a.container_id).cmp(&(b.subject(), &b.container_id)));
    (states, errors)
}

/// Removes a pod's state file by its key; a missing file is fine.
pub fn remove(dir: &Path, key: &str) -> Result<(), RecordError> {
    let path = state_path(dir, key);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RecordError::Remove { path, source }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(mode: &str, entries: &[&str]) -> PodRecord {
        let mut s = PodRecord {
            container_id: "abcdef0123456789ffff".into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/x".into(),
            pod: crate::guard::PodIdentity {
                namespace: Some("ml".into()),
                name: Some("llm-0".into()),
                uid: Some("uid-1".into()),
            },
            mode: mode.into(),
            placement: "host".into(),
            table: crate::ruleset::table_name("abcdef0123456789ffff", "eth0"),
            device: Some("veth1234".into()),
            pod_net: Some(crate::ruleset::PodNet::example()),
            policy: String::new(),
            entries: entries.iter().map(|e| e.to_string()).collect(),
            nflog_group: 100,
            deny_log_rate: None,
            deny_log_interval: None,
            created: String::new(),
        };
        let mut parsed: Vec<_> = entries
            .iter()
            .map(|e| parse_network_entry(e).unwrap())
            .collect();
        parsed.sort();
        parsed.dedup();
        s.policy = Policy {
            mode: Mode::parse(mode).unwrap(),
            mode_source: ModeSource::Default,
            entries: parsed,
        }
        .digest();
        s
    }

    #[test]
    fn a_pod_of_an_earlier_build_keeps_its_table_name_and_comment() {
        let mut s = sample("enforce", &["10.0.5.0/24 tcp 8443"]);
        let current = s.expected_table().unwrap();
        assert_eq!(current.name, s.table);
        assert!(current.comment.contains(" id=abcdef0123456789ffff if=eth0"));
        s.table = "egress_guard_abcdef0123456789ffff".into();
        let legacy = s.expected_table().unwrap();
        assert_eq!(legacy.name, "egress_guard_abcdef0123456789ffff");
        assert!(!legacy.comment.contains("id="), "{}", legacy.comment);
        assert_eq!(legacy.chains, current.chains);
        assert_eq!(s.key(), "abcdef0123456789ffff");
        // Any other recorded name gets the table the attachment compiles to.
        s.table = "egress_guard_somethingelse".into();
        assert_eq!(s.expected_table().unwrap().name, current.name);
    }

    #[test]
    fn rebuilds_the_recorded_policy_and_its_table() {
        let s = sample(
            "enforce",
            &[
                "10.0.5.0/24 tcp 8443",
                "fd00::/64 tcp 443-445",
                "10.0.0.1/32 any",
            ],
        );
        let t = s.expected_table().unwrap();
        assert_eq!(t.name, s.table);
        assert_eq!(t.family, Family::Netdev);
        assert!(t.comment.contains(&s.policy), "{}", t.comment);
        assert!(t.comment.contains("dev=veth1234"), "{}", t.comment);
    }

    #[test]
    fn a_changed_entry_breaks_the_digest() {
        let mut s = sample("audit", &["10.0.5.0/24 tcp 8443"]);
        s.entries = vec!["10.0.5.0/24 tcp 8444".into()];
        assert!(matches!(s.policy(), Err(RecordError::Digest { .. })));
        let mut off = sample("audit", &[]);
        off.mode = "off".into();
        assert!(matches!(
            off.expected_table(),
            Err(RecordError::Mode { .. })
        ));
    }

    #[test]
    fn parses_the_plugin_state_format() {
        let text = r#"{"container_id":"c1","ifname":"eth0","netns":"/proc/1/ns/net","pod_namespace":"ml",
            "pod_name":"p","pod_uid":"u","mode":"enforce","placement":"pod","table":"egress_guard_c1",
            "device":null,"policy":"0000000000000000","entries":[],"nflog_group":100,"created":"x"}"#;
        let s: PodRecord = serde_json::from_str(text).unwrap();
        assert_eq!(s.family(), Family::Inet);
        assert_eq!(s.subject(), "ml/p");
        assert!(matches!(s.place(), Where::Netns(_)));
    }
}
