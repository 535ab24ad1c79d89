//! Pod annotations under the `egress-guard.io/` prefix: which keys exist, their limits, and
//! parsing them into a mode and a list of entries. Any other key under the prefix is an error,
//! so a typo cannot silently weaken a policy.

use super::grammar::{parse_entry, EntryRef, GrammarError};
use super::Mode;

pub const PREFIX: &str = "egress-guard.io/";
pub const MODE_KEY: &str = "egress-guard.io/mode";
pub const ALLOW_KEY: &str = "egress-guard.io/allow";
/// Largest accepted annotation value.
pub const MAX_ANNOTATION_BYTES: usize = 16 * 1024;
/// Most entries one allow annotation may hold.
pub const MAX_ENTRIES: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnnotationError {
    #[error("unknown annotation \"{0}\" (known: egress-guard.io/mode, egress-guard.io/allow)")]
    UnknownKey(String),
    #[error("annotation \"{0}\" is given more than once")]
    Duplicate(String),
    #[error("annotation \"{key}\" is {len} bytes, over the limit of {MAX_ANNOTATION_BYTES}")]
    TooLong { key: String, len: usize },
    #[error(
        "annotation \"{key}\" contains a control character (byte 0x{byte:02x} at offset {offset})"
    )]
    ControlChar {
        key: String,
        byte: u8,
        offset: usize,
    },
    #[error("annotation \"{MODE_KEY}\" has value \"{0}\" (expected off, audit or enforce)")]
    BadMode(String),
    #[error("annotation \"{ALLOW_KEY}\" has {0} entries, over the limit of {MAX_ENTRIES}")]
    TooManyEntries(usize),
    #[error("annotation \"{ALLOW_KEY}\" entry {index} \"{text}\": {source}")]
    BadEntry {
        index: usize,
        text: String,
        #[source]
        source: GrammarError,
    },
}

/// The egress-guard part of a pod's annotations, syntactically valid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodAnnotations {
    pub mode: Option<Mode>,
    pub allow: Vec<EntryRef>,
    /// Each entry of `allow` as written (trimmed), at the same index (for messages).
    pub allow_text: Vec<String>,
    /// True if any annotation under the prefix was present.
    pub present: bool,
}

fn check_value(key: &str, value: &str) -> Result<(), AnnotationError> {
    if value.len() > MAX_ANNOTATION_BYTES {
        return Err(AnnotationError::TooLong {
            key: key.to_string(),
            len: value.len(),
        });
    }
    if let Some((offset, byte)) = value
        .bytes()
        .enumerate()
        .find(|(_, b)| b.is_ascii_control() && !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return Err(AnnotationError::ControlChar {
            key: key.to_string(),
            byte,
            offset,
        });
    }
    Ok(())
}

/// Parses all annotations of a pod (in the order given; duplicates are an error).
/// Keys outside the prefix are ignored.
pub fn parse_annotations(pairs: &[(String, String)]) -> Result<PodAnnotations, AnnotationError> {
    let mut out = PodAnnotations::default();
    let mut seen_mode = false;
    let mut seen_allow = false;
    for (key, value) in pairs {
        if !key.to_ascii_lowercase().starts_with(PREFIX) {
            continue;
        }
        out.present = true;
        let seen = match key.as_str() {
            MODE_KEY => &mut seen_mode,
            ALLOW_KEY => &mut seen_allow,
            _ => return Err(AnnotationError::UnknownKey(key.clone())),
        };
        if *seen {
            return Err(AnnotationError::Duplicate(key.clone()));
        }
        *seen = true;
        check_value(key, value)?;
        if key == MODE_KEY {
            let v = value.trim();
            out.mode = Some(Mode::parse(v).ok_or_else(|| AnnotationError::BadMode(v.to_string()))?);
            continue;
        }
        if value.trim().is_empty() {
            continue;
        }
        let items: Vec<&str> = value.split(',').collect();
        if items.len() > MAX_ENTRIES {
            return Err(AnnotationError::TooManyEntries(items.len()));
        }
        for (i, item) in items.iter().enumerate() {
            let entry = parse_entry(item).map_err(|source| AnnotationError::BadEntry {
                index: i + 1,
                text: item.trim().to_string(),
                source,
            })?;
            out.allow.push(entry);
            out.allow_text.push(item.trim().to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Result<PodAnnotations, AnnotationError> {
        let v: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_annotations(&v)
    }

    #[test]
    fn ignores_other_annotations() {
        let a = p(&[
            ("kubernetes.io/config.seen", "x"),
            ("io.kubernetes.cri.sandbox-name", "y"),
        ])
        .unwrap();
        assert!(!a.present);
        assert_eq!(a.mode, None);
    }

    #[test]
    fn parses_mode_and_allow() {
        let a = p(&[
            (MODE_KEY, " enforce "),
            (
                ALLOW_KEY,
                "10.0.5.0/24 tcp 8443, 10.96.0.10 udp 53, fd00:5::/64 tcp 443-445, @orchestrator",
            ),
        ])
        .unwrap();
        assert_eq!(a.mode, Some(Mode::Enforce));
        assert_eq!(a.allow.len(), 4);
        assert_eq!(a.allow_text[1], "10.96.0.10 udp 53");
        assert_eq!(a.allow_text[3], "@orchestrator");
        assert!(a.present);
    }

    #[test]
    fn empty_allow_is_no_entries() {
        assert!(p(&[(ALLOW_KEY, "  ")]).unwrap().allow.is_empty());
    }

    #[test]
    fn errors_name_key_and_value() {
        let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
            (
                vec![("egress-guard.io/mdoe", "enforce".into())],
                "egress-guard.io/mdoe",
            ),
            (
                vec![("Egress-Guard.io/mode", "enforce".into())],
                "Egress-Guard.io/mode",
            ),
            (vec![(MODE_KEY, "Enforce".into())], "\"Enforce\""),
            (vec![(MODE_KEY, "on".into())], "\"on\""),
            (
                vec![(MODE_KEY, "off".into()), (MODE_KEY, "enforce".into())],
                "more than once",
            ),
            (vec![(ALLOW_KEY, "10.0.0.1,".into())], "entry 2"),
            (
                vec![(ALLOW_KEY, "10.0.0.1, 10.0.0.0/33".into())],
                "10.0.0.0/33",
            ),
            (vec![(ALLOW_KEY, "10.0.0.1\0".into())], "0x00"),
            (
                vec![(ALLOW_KEY, "x".repeat(MAX_ANNOTATION_BYTES + 1))],
                "16384",
            ),
            (
                vec![(ALLOW_KEY, vec!["10.0.0.1"; 257].join(","))],
                "257 entries",
            ),
            (
                vec![(ALLOW_KEY, vec!["10.0.0.1"; 10_000].join(","))],
                "over the limit",
            ),
        ];
        for (pairs, needle) in cases {
            let v: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            let err = parse_annotations(&v).expect_err(needle).to_string();
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        }
    }

    #[test]
    fn limits_are_inclusive() {
        let v = vec!["10.0.0.1"; MAX_ENTRIES].join(",");
        assert_eq!(p(&[(ALLOW_KEY, &v)]).unwrap().allow.len(), MAX_ENTRIES);
    }
}
