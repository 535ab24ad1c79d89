//! Turns untrusted input (pod annotations, the conflist's policy fields) into a validated
//! `Policy`. This is the only place raw policy text becomes trusted; nothing here does I/O.

mod annotations;
mod grammar;

pub use annotations::{
    parse_annotations, PodAnnotations, ALLOW_KEY, MAX_ANNOTATION_BYTES, MAX_ENTRIES, MODE_KEY,
    PREFIX,
};
pub use grammar::{parse_entry, parse_network_entry, Cidr, Entry, EntryRef, GrammarError, Proto};

use std::collections::BTreeMap;
use std::fmt;

/// What the guard does with traffic that is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// No ruleset is installed.
    Off,
    /// Everything not allowed is logged, nothing is dropped.
    Audit,
    /// Everything not allowed is logged (rate-limited) and dropped.
    Enforce,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "off" => Some(Mode::Off),
            "audit" => Some(Mode::Audit),
            "enforce" => Some(Mode::Enforce),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Audit => "audit",
            Mode::Enforce => "enforce",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Node-operator settings from the conflist entry that shape every pod's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub default_mode: Mode,
    pub enforce_namespaces: Vec<String>,
    /// Named allowlist entries referenced as `@name`.
    pub networks: BTreeMap<String, Vec<Entry>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_mode: Mode::Off,
            enforce_namespaces: Vec::new(),
            networks: BTreeMap::new(),
        }
    }
}

/// Why the mode is what it is (for logs and the verb record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModeSource {
    Annotation,
    Default,
    EnforcedNamespace,
}

/// A validated per-pod policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub mode_source: ModeSource,
    /// Allowed destinations, deduplicated and sorted.
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("annotation \"{key}\" entry {index} \"{text}\": unknown network \"@{name}\" (the conflist's \"networks\" defines {known})")]
    UnknownNetwork {
        key: &'static str,
        index: usize,
        text: String,
        name: String,
        known: String,
    },
}

impl Policy {
    /// Combines the operator's settings, the pod's namespace and its annotations.
    pub fn resolve(
        settings: &Settings,
        namespace: Option<&str>,
        pod: &PodAnnotations,
    ) -> Result<Policy, PolicyError> {
        let enforced_ns = namespace
            .map(|ns| settings.enforce_namespaces.iter().any(|n| n == ns))
            .unwrap_or(false);
        let (mode, mode_source) = if enforced_ns {
            (Mode::Enforce, ModeSource::EnforcedNamespace)
        } else if let Some(m) = pod.mode {
            (m, ModeSource::Annotation)
        } else {
            (settings.default_mode, ModeSource::Default)
        };
        let mut entries = Vec::new();
        for (index, r) in pod.allow.iter().enumerate() {
            match r {
                EntryRef::Literal(e) => entries.push(*e),
                EntryRef::Network(name) => match settings.networks.get(name) {
                    Some(list) => entries.extend(list.iter().copied()),
                    None => {
                        let known = if settings.networks.is_empty() {
                            "no networks".to_string()
                        } else {
                            settings
                                .networks
                                .keys()
                                .map(|k| format!("@{k}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        };
                        return Err(PolicyError::UnknownNetwork {
                            key: ALLOW_KEY,
                            index: index + 1,
                            text: format!("@{name}"),
                            name: name.clone(),
                            known,
                        });
                    }
                },
            }
        }
        entries.sort();
        entries.dedup();
        Ok(Policy {
            mode,
            mode_source,
            entries,
        })
    }

    /// True when the pod asked for a different mode than the one it gets.
    pub fn overrode_annotation(&self, pod: &PodAnnotations) -> bool {
        matches!(pod.mode, Some(m) if m != self.mode)
    }

    /// Canonical text of the policy; stable across runs (used for the digest and CHECK).
    pub fn canonical(&self) -> String {
        let mut s = format!("mode={}", self.mode);
        for e in &self.entries {
            s.push(';');
            s.push_str(&e.to_string());
        }
        s
    }

    /// 64-bit FNV-1a of the canonical text, as 16 hex digits. Identifies a policy, not a secret.
    pub fn digest(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.canonical().bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        let mut networks = BTreeMap::new();
        networks.insert(
            "dns".to_string(),
            vec![parse_network_entry("10.96.0.10 udp 53").unwrap()],
        );
        Settings {
            default_mode: Mode::Off,
            enforce_namespaces: vec!["model-serving".into()],
            networks,
        }
    }

    fn pod(pairs: &[(&str, &str)]) -> PodAnnotations {
        let v: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_annotations(&v).unwrap()
    }

    #[test]
    fn default_mode_applies_without_annotation() {
        let p = Policy::resolve(&settings(), Some("default"), &pod(&[])).unwrap();
        assert_eq!(p.mode, Mode::Off);
        assert_eq!(p.mode_source, ModeSource::Default);
    }

    #[test]
    fn annotation_sets_mode_and_expands_networks() {
        let p = Policy::resolve(
            &settings(),
            Some("default"),
            &pod(&[
                (MODE_KEY, "audit"),
                (ALLOW_KEY, "@dns, 10.0.5.0/24 tcp 8443"),
            ]),
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Audit);
        assert_eq!(p.entries.len(), 2);
        assert!(p.canonical().contains("10.96.0.10/32 udp 53"));
    }

    #[test]
    fn enforced_namespace_cannot_be_turned_off() {
        for m in ["off", "audit"] {
            let a = pod(&[(MODE_KEY, m), (ALLOW_KEY, "10.0.0.1 tcp 80")]);
            let p = Policy::resolve(&settings(), Some("model-serving"), &a).unwrap();
            assert_eq!(p.mode, Mode::Enforce);
            assert_eq!(p.mode_source, ModeSource::EnforcedNamespace);
            assert!(p.overrode_annotation(&a));
            assert_eq!(p.entries.len(), 1, "annotation still adds entries");
        }
    }

    #[test]
    fn unknown_network_names_the_value() {
        let e = Policy::resolve(
            &settings(),
            None,
            &pod(&[(ALLOW_KEY, "@dns, @orchestrator")]),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("@orchestrator"), "{msg}");
        assert!(msg.contains("entry 2"), "{msg}");
        assert!(msg.contains("@dns"), "{msg}");
    }

    #[test]
    fn digest_is_stable_and_order_independent() {
        let a = Policy::resolve(
            &settings(),
            None,
            &pod(&[(MODE_KEY, "enforce"), (ALLOW_KEY, "10.0.0.1, 10.0.0.2")]),
        )
        .unwrap();
        let b = Policy::resolve(
            &settings(),
            None,
            &pod(&[(MODE_KEY, "enforce"), (ALLOW_KEY, "10.0.0.2,10.0.0.1")]),
        )
        .unwrap();
        assert_eq!(a.digest(), b.digest());
        let c = Policy::resolve(
            &settings(),
            None,
            &pod(&[(MODE_KEY, "audit"), (ALLOW_KEY, "10.0.0.2,10.0.0.1")]),
        )
        .unwrap();
        assert_ne!(a.digest(), c.digest());
    }
}
