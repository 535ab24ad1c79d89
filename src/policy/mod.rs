//! Turns untrusted input (pod annotations, the conflist's policy fields) into a validated
//! `Policy`. This is the only place raw policy text becomes trusted; nothing here does I/O.

mod annotations;
mod ceiling;
mod grammar;
pub mod suggest;

pub use annotations::{
    parse_annotations, AnnotationError, PodAnnotations, ALLOW_KEY, MAX_ANNOTATION_BYTES,
    MAX_ENTRIES, MODE_KEY, PREFIX,
};
pub use ceiling::{Ceiling, CeilingEntry, CeilingError};
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
    /// What annotations of pods in `enforce_namespaces` may add (`enforcedAllow`).
    pub enforced_allow: Ceiling,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_mode: Mode::Off,
            enforce_namespaces: Vec::new(),
            networks: BTreeMap::new(),
            enforced_allow: Ceiling::Networks,
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
    #[error("{key} entry \"{text}\" is outside the operator ceiling for enforced namespace \"{namespace}\" ({ceiling}); ask the node operator to add it to enforcedAllow or to networks")]
    OutsideCeiling {
        key: &'static str,
        text: String,
        namespace: String,
        ceiling: String,
    },
}

impl Policy {
    /// Combines the operator's settings, the pod's namespace and its annotations.
    pub fn resolve(
        settings: &Settings,
        namespace: Option<&str>,
        pod: &PodAnnotations,
    ) -> Result<Policy, PolicyError> {
        let enforced_ns =
            namespace.filter(|ns| settings.enforce_namespaces.iter().any(|n| n == ns));
        let (mode, mode_source) = if enforced_ns.is_some() {
            (Mode::Enforce, ModeSource::EnforcedNamespace)
        } else if let Some(m) = pod.mode {
            (m, ModeSource::Annotation)
        } else {
            (settings.default_mode, ModeSource::Default)
        };
        let mut entries = Vec::new();
        for (index, r) in pod.allow.iter().enumerate() {
            let text = || match r {
                EntryRef::Network(name) => format!("@{name}"),
                EntryRef::Literal(e) => pod
                    .allow_text
                    .get(index)
                    .cloned()
                    .unwrap_or_else(|| e.to_string()),
            };
            let expanded: &[Entry] = match r {
                EntryRef::Literal(e) => std::slice::from_ref(e),
                EntryRef::Network(name) => match settings.networks.get(name) {
                    Some(list) => list,
                    None => {
                        return Err(PolicyError::UnknownNetwork {
                            key: ALLOW_KEY,
                            index: index + 1,
                            text: text(),
                            name: name.clone(),
                            known: ceiling::known_networks(&settings.networks),
                        });
                    }
                },
            };
            if let Some(ns) = enforced_ns {
                if !settings.enforced_allow.permits(r, &settings.networks) {
                    return Err(PolicyError::OutsideCeiling {
                        key: ALLOW_KEY,
                        text: text(),
                        namespace: ns.to_string(),
                        ceiling: settings.enforced_allow.describe(&settings.networks),
                    });
                }
            }
            entries.extend(expanded.iter().copied());
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
            enforced_allow: Ceiling::Networks,
        }
    }

    /// `settings()` with `enforcedAllow` set to `items`.
    fn ceiling(items: &[&str]) -> Settings {
        let mut s = settings();
        let list = items
            .iter()
            .map(|t| CeilingEntry::parse(t, &s.networks).unwrap())
            .collect();
        s.enforced_allow = Ceiling::List(list);
        s
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
            let p =
                Policy::resolve(&ceiling(&["10.0.0.0/8 tcp"]), Some("model-serving"), &a).unwrap();
            assert_eq!(p.mode, Mode::Enforce);
            assert_eq!(p.mode_source, ModeSource::EnforcedNamespace);
            assert!(p.overrode_annotation(&a));
            assert_eq!(p.entries.len(), 1, "annotation still adds entries");
        }
    }

    #[test]
    fn enforced_namespace_annotation_outside_the_ceiling_fails() {
        let a = pod(&[(ALLOW_KEY, "@dns, 0.0.0.0/0")]);
        let e = Policy::resolve(&ceiling(&["@dns"]), Some("model-serving"), &a).unwrap_err();
        assert_eq!(
            e.to_string(),
            "egress-guard.io/allow entry \"0.0.0.0/0\" is outside the operator ceiling for \
             enforced namespace \"model-serving\" (enforcedAllow: @dns); ask the node operator \
             to add it to enforcedAllow or to networks"
        );
        // Without the field: names only, and the message says so.
        for raw in ["0.0.0.0/0", "::/0", "169.254.169.254", "10.96.0.10 udp 53"] {
            let a = pod(&[(ALLOW_KEY, raw)]);
            let msg = Policy::resolve(&settings(), Some("model-serving"), &a)
                .unwrap_err()
                .to_string();
            assert!(msg.contains(&format!("entry \"{raw}\"")), "{msg}");
            assert!(
                msg.contains("enforcedAllow is not set, so only @names from networks: @dns"),
                "{msg}"
            );
        }
        let ok = Policy::resolve(
            &settings(),
            Some("model-serving"),
            &pod(&[(ALLOW_KEY, "@dns")]),
        )
        .unwrap();
        assert_eq!(ok.entries.len(), 1);
        // Empty: nothing, not even a name.
        let msg = Policy::resolve(
            &ceiling(&[]),
            Some("model-serving"),
            &pod(&[(ALLOW_KEY, "@dns")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("\"@dns\"") && msg.contains("enforcedAllow is empty"),
            "{msg}"
        );
        // No annotation entries: always fine.
        assert!(Policy::resolve(&ceiling(&[]), Some("model-serving"), &pod(&[])).is_ok());
    }

    #[test]
    fn enforced_namespace_annotation_within_the_ceiling_is_kept() {
        let s = ceiling(&["10.0.0.0/8 tcp 8000-8999", "fd00::/8"]);
        let p = Policy::resolve(
            &s,
            Some("model-serving"),
            &pod(&[(ALLOW_KEY, "10.0.5.0/24 tcp 8443, fd00:5::/64 tcp 443")]),
        )
        .unwrap();
        assert_eq!(p.entries.len(), 2);
        // @dns is not listed and its entry is not inside a ceiling entry.
        let e = Policy::resolve(&s, Some("model-serving"), &pod(&[(ALLOW_KEY, "@dns")]));
        assert!(
            matches!(e, Err(PolicyError::OutsideCeiling { .. })),
            "{e:?}"
        );
        assert!(Policy::resolve(
            &ceiling(&["10.96.0.0/12 udp 53"]),
            Some("model-serving"),
            &pod(&[(ALLOW_KEY, "@dns")])
        )
        .is_ok());
    }

    #[test]
    fn pods_outside_enforced_namespaces_are_not_limited_by_the_ceiling() {
        let a = pod(&[(ALLOW_KEY, "0.0.0.0/0, ::/0, 169.254.169.254")]);
        for s in [settings(), ceiling(&[]), ceiling(&["@dns"])] {
            for ns in [Some("default"), Some("model-serving-2"), None] {
                let p = Policy::resolve(&s, ns, &a).unwrap();
                assert_eq!(p.entries.len(), 3, "{ns:?}");
            }
        }
    }

    #[test]
    fn unknown_network_is_reported_before_the_ceiling() {
        let e = Policy::resolve(
            &ceiling(&["@dns"]),
            Some("model-serving"),
            &pod(&[(ALLOW_KEY, "@nowhere")]),
        )
        .unwrap_err();
        assert!(matches!(e, PolicyError::UnknownNetwork { .. }), "{e:?}");
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
        let digest = |mode, allow| {
            Policy::resolve(
                &settings(),
                None,
                &pod(&[(MODE_KEY, mode), (ALLOW_KEY, allow)]),
            )
            .unwrap()
            .digest()
        };
        let a = digest("enforce", "10.0.0.1, 10.0.0.2");
        assert_eq!(a, digest("enforce", "10.0.0.2,10.0.0.1"));
        assert_ne!(a, digest("audit", "10.0.0.2,10.0.0.1"));
    }
}
