//! The network configuration on stdin: CNI fields, egress-guard's own conflist fields (per the
//! interface contract), prevResult and the runtime-provided pod annotations. Each bad field gives
//! an error naming the field and its value.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use super::json::{parse_strict, type_name};
use crate::policy::{parse_network_entry, Ceiling, CeilingEntry, Entry, Mode, Settings};
use crate::ruleset::{DenyLog, Rate};

pub const ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";
pub const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";
pub const DEFAULT_STATE_DIR: &str = "/run/egress-guard";
pub const DEFAULT_NFLOG_GROUP: u16 = 100;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("network configuration is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("network configuration is not valid UTF-8 (byte {offset})")]
    Utf8 { offset: usize },
    #[error("network configuration must be a JSON object, got {0}")]
    NotObject(&'static str),
    #[error("conflist field \"{field}\" {problem}")]
    Field { field: String, problem: String },
}

fn field_err(field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.to_string(),
        problem: problem.into(),
    }
}

pub use crate::guard::{Attachment, PlacementPref};

/// Fields of egress-guard's own, in the interface contract.
pub const OWN_FIELDS: &[&str] = &[
    "defaultMode",
    "enforceNamespaces",
    "networks",
    "enforcedAllow",
    "placement",
    "logFile",
    "logLevel",
    "kubeconfig",
    "nflogGroup",
    "denyLogRate",
    "denyLogInterval",
    "stateDir",
];

/// Fields the CNI specification reserves in a plugin's configuration or the runtime adds to it.
/// `ipMasq`, `ipam` and `dns` mean nothing to a chained policy plugin and are ignored.
pub const CNI_FIELDS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "capabilities",
    "args",
    "ipMasq",
    "ipam",
    "dns",
    "runtimeConfig",
    "prevResult",
    VALID_ATTACHMENTS,
];

/// An error for the first field that is neither egress-guard's nor the CNI specification's,
/// naming the closest known field when one is close.
fn reject_unknown_fields(obj: &serde_json::Map<String, Value>) -> Result<(), ConfigError> {
    let known = || OWN_FIELDS.iter().chain(CNI_FIELDS).copied();
    let Some(field) = unknown_fields(obj).into_iter().next() else {
        return Ok(());
    };
    let problem = match crate::spelling::closest(&field, known()) {
        Some(near) => format!("is not a known field (did you mean \"{near}\"?)"),
        None => format!(
            "is not a known field (egress-guard's fields: {})",
            OWN_FIELDS.join(", ")
        ),
    };
    Err(field_err(&field, problem))
}

/// The fields of `obj` that are neither egress-guard's nor the CNI specification's.
fn unknown_fields(obj: &serde_json::Map<String, Value>) -> Vec<String> {
    obj.keys()
        .filter(|k| !OWN_FIELDS.iter().chain(CNI_FIELDS).any(|f| f == k))
        .cloned()
        .collect()
}

/// How [`NetConf::parse_as`] treats fields it does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// An error (ADD, CHECK, STATUS, `render`, the installer, the agent).
    Reject,
    /// Listed in [`NetConf::ignored_fields`]: DEL and GC only remove what ADD installed, and a
    /// pod must be deletable even under an entry a later release reads more strictly.
    Ignore,
}

/// An optional field of one JSON type: `None` when absent or null, `pick`'s value when it is
/// of that type, else an error saying it must be `what`.
fn opt_typed<'a, T>(
    field: &str,
    v: Option<&'a Value>,
    pick: fn(&'a Value) -> Option<T>,
    what: &str,
) -> Result<Option<T>, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => pick(v)
            .map(Some)
            .ok_or_else(|| field_err(field, format!("must be {what}, got {}", type_name(v)))),
    }
}

/// An optional object field.
fn opt_object<'a>(
    field: &str,
    v: Option<&'a Value>,
) -> Result<Option<&'a serde_json::Map<String, Value>>, ConfigError> {
    opt_typed(field, v, Value::as_object, "an object")
}

/// An optional array-of-strings field (items checked by callers).
fn opt_array<'a>(field: &str, v: Option<&'a Value>) -> Result<Option<&'a Vec<Value>>, ConfigError> {
    opt_typed(field, v, Value::as_array, "an array of strings")
}

/// `capabilities`: an object of booleans; returns whether the pod-annotations one is on.
fn parse_capabilities(v: Option<&Value>) -> Result<bool, ConfigError> {
    let Some(obj) = opt_object("capabilities", v)? else {
        return Ok(false);
    };
    for (k, v) in obj {
        if !v.is_boolean() {
            return Err(field_err(
                &format!("capabilities[\"{k}\"]"),
                format!("must be true or false, got {}", type_name(v)),
            ));
        }
    }
    Ok(obj.get(ANNOTATIONS_CAPABILITY) == Some(&Value::Bool(true)))
}

#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub prev_result: Option<Value>,
    /// Annotations from runtimeConfig; `None` when the runtime passed none.
    pub annotations: Option<Vec<(String, String)>>,
    pub settings: Settings,
    pub placement: PlacementPref,
    pub log_file: Option<PathBuf>,
    pub log_level: log::LevelFilter,
    pub kubeconfig: Option<PathBuf>,
    /// Whether the entry declares the pod-annotations capability.
    pub annotations_capability: bool,
    /// Unknown fields passed over ([`Unknown::Ignore`]); empty when parsed strictly.
    pub ignored_fields: Vec<String>,
    pub nflog_group: u16,
    /// Per-pod rate of new flows in the deny (audit) log, `denyLogRate`.
    pub deny_log_rate: Rate,
    /// Seconds after which a logged flow is logged again, `denyLogInterval`.
    pub deny_log_interval: u32,
    pub state_dir: PathBuf,
    pub valid_attachments: Option<Vec<Attachment>>,
}

fn opt_str<'a>(
    obj: &'a serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(field_err(
            field,
            format!("must be a string, got {}", type_name(v)),
        )),
    }
}

fn parse_networks(v: Option<&Value>) -> Result<BTreeMap<String, Vec<Entry>>, ConfigError> {
    let mut out = BTreeMap::new();
    let Some(v) = v else { return Ok(out) };
    if v.is_null() {
        return Ok(out);
    }
    let obj = v.as_object().ok_or_else(|| {
        field_err(
            "networks",
            format!("must be an object, got {}", type_name(v)),
        )
    })?;
    for (name, list) in obj {
        let field = format!("networks.{name}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(field_err(
                &field,
                "has an invalid name (letters, digits, '-' and '_')",
            ));
        }
        let items: Vec<&Value> = match list {
            Value::Array(a) => a.iter().collect(),
            Value::String(_) => vec![list],
            other => {
                return Err(field_err(
                    &field,
                    format!("must be an array of strings, got {}", type_name(other)),
                ))
            }
        };
        let mut entries = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let s = item.as_str().ok_or_else(|| {
                field_err(
                    &format!("{field}[{i}]"),
                    format!("must be a string, got {}", type_name(item)),
                )
            })?;
            // A string may hold several entries separated by commas, like the annotation.
            for part in s.split(',') {
                let e = parse_network_entry(part).map_err(|e| {
                    field_err(
                        &format!("{field}[{i}]"),
                        format!("has value \"{}\": {e}", part.trim()),
                    )
                })?;
                entries.push(e);
            }
        }
        out.insert(name.clone(), entries);
    }
    Ok(out)
}

/// `denyLogRate`: `{"perSecond": N, "burst": M}`, new flows of a pod's dropped (or audited)
/// traffic logged; absent is 100 a second with a burst of 10,000.
fn parse_deny_log_rate(v: Option<&Value>) -> Result<Rate, ConfigError> {
    const FIELD: &str = "denyLogRate";
    let Some(obj) = opt_object(FIELD, v)? else {
        return Ok(DenyLog::DEFAULT_RATE);
    };
    if let Some(k) = obj.keys().find(|k| *k != "perSecond" && *k != "burst") {
        return Err(field_err(
            &format!("{FIELD}.{k}"),
            "is not a known field (perSecond, burst)",
        ));
    }
    let number = |key: &str, max: u64| -> Result<u64, ConfigError> {
        let field = format!("{FIELD}.{key}");
        match obj.get(key) {
            None => Err(field_err(&field, "is missing")),
            Some(v) => v.as_u64().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
                field_err(
                    &field,
                    format!("has value {v} (expected a number from 1 to {max})"),
                )
            }),
        }
    };
    Ok(Rate {
        per_second: number("perSecond", 100_000)?,
        burst: number("burst", 100_000)? as u32,
    })
}

/// `denyLogInterval`: seconds (1 to 86400) after which a flow already logged is logged again;
/// absent is 60.
fn parse_deny_log_interval(v: Option<&Value>) -> Result<u32, ConfigError> {
    const FIELD: &str = "denyLogInterval";
    match v {
        None | Some(Value::Null) => Ok(DenyLog::DEFAULT_INTERVAL_SECS),
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=86_400).contains(n))
            .map(|n| n as u32)
            .ok_or_else(|| {
                field_err(
                    FIELD,
                    format!("has value {v} (expected a number of seconds from 1 to 86400)"),
                )
            }),
    }
}

/// `enforcedAllow`: absent (or null) is the default ceiling, only `@name` entries of
/// `networks`. Each string holds entries like the annotation's, separated by commas; a `@name`
/// must be one `networks` defines.
fn parse_enforced_allow(
    v: Option<&Value>,
    networks: &BTreeMap<String, Vec<Entry>>,
) -> Result<Ceiling, ConfigError> {
    const FIELD: &str = "enforcedAllow";
    let Some(items) = opt_array(FIELD, v)? else {
        return Ok(Ceiling::Networks);
    };
    let mut list = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = format!("{FIELD}[{i}]");
        let s = item.as_str().ok_or_else(|| {
            field_err(&field, format!("must be a string, got {}", type_name(item)))
        })?;
        for part in s.split(',') {
            let c = CeilingEntry::parse(part, networks)
                .map_err(|e| field_err(&field, format!("has value \"{}\": {e}", part.trim())))?;
            list.push(c);
        }
    }
    Ok(Ceiling::List(list))
}

fn parse_annotations(
    rc: &serde_json::Map<String, Value>,
) -> Result<Option<Vec<(String, String)>>, ConfigError> {
    let Some(v) = rc.get(ANNOTATIONS_CAPABILITY) else {
        return Ok(None);
    };
    let field = format!("runtimeConfig.{ANNOTATIONS_CAPABILITY}");
    let Some(obj) = opt_object(&field, Some(v))? else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(obj.len());
    for (k, v) in obj {
        match v {
            Value::String(s) => out.push((k.clone(), s.clone())),
            other if k.to_ascii_lowercase().starts_with(crate::policy::PREFIX) => {
                return Err(field_err(
                    &format!("{field}[\"{k}\"]"),
                    format!("must be a string, got {}", type_name(other)),
                ))
            }
            _ => {}
        }
    }
    Ok(Some(out))
}

fn parse_attachments(
    rc: &serde_json::Map<String, Value>,
) -> Result<Option<Vec<Attachment>>, ConfigError> {
    let Some(v) = rc.get(VALID_ATTACHMENTS) else {
        return Ok(None);
    };
    let field = VALID_ATTACHMENTS;
    let arr = v
        .as_array()
        .ok_or_else(|| field_err(field, format!("must be an array, got {}", type_name(v))))?;
    let mut out = Vec::new();
    for (i, item) in arr.iter().enumerate() {
        let get = |k: &str| item.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let (Some(container_id), Some(ifname)) = (get("containerID"), get("ifname")) else {
            return Err(field_err(
                &format!("{field}[{i}]"),
                "must have string fields \"containerID\" and \"ifname\"",
            ));
        };
        out.push(Attachment {
            container_id,
            ifname,
        });
    }
    Ok(Some(out))
}

impl NetConf {
    /// Parses the entry strictly: an unknown field is an error.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, ConfigError> {
        Self::parse_as(bytes, Unknown::Reject)
    }

    /// Parses the entry; `unknown` says what an unknown field is.
    pub fn parse_as(bytes: &[u8], unknown: Unknown) -> Result<NetConf, ConfigError> {
        if let Err(e) = std::str::from_utf8(bytes) {
            return Err(ConfigError::Utf8 {
                offset: e.valid_up_to(),
            });
        }
        let v = parse_strict(bytes).map_err(ConfigError::Json)?;
        let obj = v
            .as_object()
            .ok_or_else(|| ConfigError::NotObject(type_name(&v)))?;

        let ignored_fields = match unknown {
            Unknown::Reject => {
                reject_unknown_fields(obj)?;
                Vec::new()
            }
            Unknown::Ignore => unknown_fields(obj),
        };
        let annotations_capability = parse_capabilities(obj.get("capabilities"))?;
        opt_object("args", obj.get("args"))?;
        let cni_version = opt_str(obj, "cniVersion")?.unwrap_or("0.4.0").to_string();
        let name = opt_str(obj, "name")?.unwrap_or("").to_string();
        if let Some(t) = opt_str(obj, "type")? {
            if t != "egress-guard" {
                log::debug!("invoked with type \"{t}\"");
            }
        }
        let default_mode = match opt_str(obj, "defaultMode")? {
            None => Mode::Off,
            Some(s) => Mode::parse(s).ok_or_else(|| {
                field_err(
                    "defaultMode",
                    format!("has value \"{s}\" (expected off, audit or enforce)"),
                )
            })?,
        };
        let enforce_namespaces = opt_array("enforceNamespaces", obj.get("enforceNamespaces"))?
            .map(|a| {
                a.iter()
                    .enumerate()
                    .map(|(i, x)| {
                        x.as_str().map(str::to_string).ok_or_else(|| {
                            field_err(
                                &format!("enforceNamespaces[{i}]"),
                                format!("must be a string, got {}", type_name(x)),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        let networks = parse_networks(obj.get("networks"))?;
        let enforced_allow = parse_enforced_allow(obj.get("enforcedAllow"), &networks)?;
        let placement = match opt_str(obj, "placement")? {
            None | Some("auto") => PlacementPref::Auto,
            Some("host") => PlacementPref::Host,
            Some("pod") => PlacementPref::Pod,
            Some(s) => {
                return Err(field_err(
                    "placement",
                    format!("has value \"{s}\" (expected auto, host or pod)"),
                ))
            }
        };
        let log_level = match opt_str(obj, "logLevel")? {
            None => log::LevelFilter::Info,
            Some(s) => match s {
                "off" => log::LevelFilter::Off,
                "error" => log::LevelFilter::Error,
                "warn" | "warning" => log::LevelFilter::Warn,
                "info" => log::LevelFilter::Info,
                "debug" => log::LevelFilter::Debug,
                "trace" => log::LevelFilter::Trace,
                _ => {
                    return Err(field_err(
                        "logLevel",
                        format!("has value \"{s}\" (expected error, warn, info, debug or trace)"),
                    ))
                }
            },
        };
        let nflog_group = match obj.get("nflogGroup") {
            None | Some(Value::Null) => DEFAULT_NFLOG_GROUP,
            Some(v) => v
                .as_u64()
                .filter(|n| *n <= u16::MAX as u64)
                .map(|n| n as u16)
                .ok_or_else(|| {
                    field_err(
                        "nflogGroup",
                        format!("has value {v} (expected a number from 0 to 65535)"),
                    )
                })?,
        };
        let path = |f: &str| -> Result<Option<PathBuf>, ConfigError> {
            match opt_str(obj, f)? {
                None | Some("") => Ok(None),
                Some(s) if !s.starts_with('/') => Err(field_err(
                    f,
                    format!("has value \"{s}\" (expected an absolute path)"),
                )),
                Some(s) => Ok(Some(PathBuf::from(s))),
            }
        };
        let deny_log_rate = parse_deny_log_rate(obj.get("denyLogRate"))?;
        let deny_log_interval = parse_deny_log_interval(obj.get("denyLogInterval"))?;
        let log_file = path("logFile")?;
        let kubeconfig = path("kubeconfig")?;
        let state_dir = path("stateDir")?.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let prev_result =
            opt_object("prevResult", obj.get("prevResult"))?.map(|o| Value::Object(o.clone()));
        let (annotations, valid_attachments) =
            match opt_object("runtimeConfig", obj.get("runtimeConfig"))? {
                None => (None, None),
                Some(rc) => (parse_annotations(rc)?, parse_attachments(rc)?),
            };
        // GC receives the list at the top level in CNI 1.1.
        let valid_attachments = match valid_attachments {
            Some(v) => Some(v),
            None => parse_attachments(obj)?,
        };
        Ok(NetConf {
            cni_version,
            name,
            prev_result,
            annotations,
            settings: Settings {
                default_mode,
                enforce_namespaces,
                networks,
                enforced_allow,
            },
            placement,
            log_file,
            log_level,
            kubeconfig,
            annotations_capability,
            ignored_fields,
            nflog_group,
            deny_log_rate,
            deny_log_interval,
            state_dir,
            valid_attachments,
        })
    }

    /// Logs the unknown fields a cleanup verb passed over, if any.
    pub fn warn_ignored_fields(&self, verb: &str) {
        if !self.ignored_fields.is_empty() {
            log::warn!(
                "{verb}: unknown conflist field(s) {} ignored for cleanup; ADD refuses this entry",
                self.ignored_fields.join(", ")
            );
        }
    }

    /// Where and how often the closing rule logs.
    pub fn deny_log(&self) -> DenyLog {
        DenyLog {
            group: self.nflog_group,
            rate: self.deny_log_rate,
            interval_secs: self.deny_log_interval,
        }
    }

    /// An entry must have a way to see a pod's annotations, or a pod's `mode: enforce` would be
    /// ignored without a word: the runtime passing them (the capability, or annotations already
    /// in `runtimeConfig`) or a `kubeconfig` to read the pod from the API server.
    pub fn check_annotation_source(&self) -> Result<(), ConfigError> {
        if self.annotations_capability || self.annotations.is_some() || self.kubeconfig.is_some() {
            return Ok(());
        }
        Err(field_err(
            "capabilities",
            format!(
                "does not declare \"{ANNOTATIONS_CAPABILITY}\": true and no \"kubeconfig\" is \
                 set, so pod annotations cannot be seen; add \"capabilities\": \
                 {{\"{ANNOTATIONS_CAPABILITY}\": true}} (containerd >= 1.5, CRI-O >= 1.29) or \
                 a \"kubeconfig\" to read pods from the API server"
            ),
        ))
    }

    /// Names of host-side interfaces in prevResult (interfaces without "sandbox"), to try when
    /// the peer index does not lead to the pod's veth. A bridge appears here too, so these are
    /// only hints: every candidate is verified against the kernel.
    pub fn host_interface_hints(&self) -> Vec<String> {
        let Some(list) = self
            .prev_result
            .as_ref()
            .and_then(|p| p.get("interfaces"))
            .and_then(|i| i.as_array())
        else {
            return Vec::new();
        };
        list.iter()
            .filter(|i| {
                i.get("sandbox")
                    .and_then(|s| s.as_str())
                    .map(str::is_empty)
                    .unwrap_or(true)
            })
            .filter_map(|i| i.get("name")?.as_str().map(str::to_string))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_example() {
        let c = NetConf::parse(br#"{
          "cniVersion": "1.0.0", "name": "k8s", "type": "egress-guard",
          "capabilities": { "io.kubernetes.cri.pod-annotations": true },
          "defaultMode": "off", "enforceNamespaces": ["model-serving"],
          "networks": { "orchestrator": ["10.0.5.0/24 tcp 8443"], "dns": ["10.96.0.10 udp 53", "10.96.0.10 tcp 53"] },
          "placement": "auto", "logFile": "/var/log/egress-guard/cni.log", "logLevel": "info",
          "kubeconfig": "/etc/cni/net.d/egress-guard.kubeconfig",
          "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"egress-guard.io/mode": "enforce", "other": "x"}},
          "prevResult": {"cniVersion":"1.0.0","interfaces":[{"name":"veth1"},{"name":"eth0","sandbox":"/var/run/netns/x"}]}
        }"#).unwrap();
        assert_eq!(c.settings.networks["dns"].len(), 2);
        assert_eq!(
            c.settings.enforce_namespaces,
            vec!["model-serving".to_string()]
        );
        assert_eq!(c.annotations.as_ref().unwrap().len(), 2);
        assert_eq!(c.host_interface_hints(), vec!["veth1".to_string()]);
        assert_eq!(c.placement, PlacementPref::Auto);
        assert_eq!(c.settings.enforced_allow, Ceiling::Networks);
        assert_eq!(c.deny_log(), DenyLog::new(100));
        let fast = NetConf::parse(br#"{"denyLogRate":{"perSecond":500,"burst":1000}}"#).unwrap();
        assert_eq!(
            fast.deny_log_rate,
            Rate {
                per_second: 500,
                burst: 1000
            }
        );
    }

    #[test]
    fn cni_reserved_fields_are_accepted() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"k8s","type":"egress-guard",
            "capabilities":{"portMappings":true},"args":{"cni":{}},"ipMasq":false,"ipam":{},
            "dns":{},"runtimeConfig":{},"prevResult":{},"cni.dev/valid-attachments":[]}"#,
        )
        .unwrap();
        assert!(!c.annotations_capability);
    }

    #[test]
    fn an_entry_must_see_annotations() {
        let blind = NetConf::parse(br#"{"defaultMode":"off"}"#).unwrap();
        let err = blind.check_annotation_source().unwrap_err().to_string();
        assert!(
            err.contains("\"capabilities\" does not declare")
                && err.contains("add \"capabilities\"")
                && err.contains("\"kubeconfig\""),
            "{err}"
        );
        let off =
            NetConf::parse(br#"{"capabilities":{"io.kubernetes.cri.pod-annotations":false}}"#)
                .unwrap();
        assert!(off.check_annotation_source().is_err());
        for seeing in [
            r#"{"capabilities":{"io.kubernetes.cri.pod-annotations":true}}"#,
            r#"{"kubeconfig":"/etc/cni/net.d/egress-guard.kubeconfig"}"#,
            r#"{"runtimeConfig":{"io.kubernetes.cri.pod-annotations":{}}}"#,
        ] {
            let c = NetConf::parse(seeing.as_bytes()).unwrap();
            assert!(c.check_annotation_source().is_ok(), "{seeing}");
        }
    }

    #[test]
    fn parses_enforced_allow() {
        let c = NetConf::parse(
            br#"{"networks": {"dns": ["10.96.0.10 udp 53"]},
                 "enforcedAllow": ["@dns", "10.0.5.0/24 tcp 8443, fd00:5::/64 tcp 443-445"]}"#,
        )
        .unwrap();
        let Ceiling::List(list) = &c.settings.enforced_allow else {
            panic!("{:?}", c.settings.enforced_allow)
        };
        let texts: Vec<&str> = list.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(
            texts,
            ["@dns", "10.0.5.0/24 tcp 8443", "fd00:5::/64 tcp 443-445"]
        );
        let empty = NetConf::parse(br#"{"enforcedAllow": []}"#).unwrap();
        assert_eq!(empty.settings.enforced_allow, Ceiling::List(vec![]));
        let null = NetConf::parse(br#"{"enforcedAllow": null}"#).unwrap();
        assert_eq!(null.settings.enforced_allow, Ceiling::Networks);
    }

    #[test]
    fn field_errors_name_field_and_value() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"defaultMode":"enforced"}"#,
                "\"defaultMode\" has value \"enforced\"",
            ),
            (
                r#"{"defaultMode":5}"#,
                "\"defaultMode\" must be a string, got a number",
            ),
            (
                r#"{"enforceNamespaces":"a"}"#,
                "\"enforceNamespaces\" must be an array",
            ),
            (r#"{"enforceNamespaces":[1]}"#, "enforceNamespaces[0]"),
            (
                r#"{"networks":{"dns":["10.96.0.10 udp 0"]}}"#,
                "networks.dns[0]",
            ),
            (r#"{"networks":{"dns":["@x"]}}"#, "\"@x\""),
            (r#"{"networks":[]}"#, "\"networks\" must be an object"),
            (
                r#"{"networks":{"dns":["10.96.0.10 udp 53"]},"enforcedAllow":["@dns","@orchestrator"]}"#,
                "\"enforcedAllow[1]\" has value \"@orchestrator\": unknown network \"@orchestrator\" (\"networks\" defines @dns)",
            ),
            (
                r#"{"enforcedAllow":["@dns"]}"#,
                "\"enforcedAllow[0]\" has value \"@dns\": unknown network \"@dns\" (\"networks\" defines no networks)",
            ),
            (
                r#"{"enforcedAllow":["10.0.0.0/8, 10.0.0.0/33"]}"#,
                "\"enforcedAllow[0]\" has value \"10.0.0.0/33\"",
            ),
            (
                r#"{"enforcedAllow":["10.0.5.1/24 tcp 80"]}"#,
                "\"enforcedAllow[0]\" has value \"10.0.5.1/24 tcp 80\"",
            ),
            (r#"{"enforcedAllow":[""]}"#, "\"enforcedAllow[0]\" has value \"\": empty entry"),
            (
                r#"{"enforcedAllow":"@dns"}"#,
                "\"enforcedAllow\" must be an array of strings, got a string",
            ),
            (
                r#"{"enforcedAllow":[5]}"#,
                "\"enforcedAllow[0]\" must be a string, got a number",
            ),
            (
                r#"{"placement":"node"}"#,
                "\"placement\" has value \"node\"",
            ),
            (r#"{"logLevel":"loud"}"#, "\"logLevel\" has value \"loud\""),
            (
                r#"{"logFile":"relative.log"}"#,
                "\"logFile\" has value \"relative.log\"",
            ),
            (r#"{"nflogGroup":70000}"#, "\"nflogGroup\" has value 70000"),
            (
                r#"{"denyLogRate":10}"#,
                "\"denyLogRate\" must be an object, got a number",
            ),
            (
                r#"{"denyLogRate":{"perSecond":0,"burst":5}}"#,
                "\"denyLogRate.perSecond\" has value 0 (expected a number from 1 to 100000)",
            ),
            (
                r#"{"denyLogInterval":0}"#,
                "\"denyLogInterval\" has value 0 (expected a number of seconds from 1 to 86400)",
            ),
            (
                r#"{"denyLogInterval":"60s"}"#,
                "\"denyLogInterval\" has value \"60s\" (expected a number of seconds from 1 to 86400)",
            ),
            (
                r#"{"denyLogRate":{"perSecond":5}}"#,
                "\"denyLogRate.burst\" is missing",
            ),
            (
                r#"{"denyLogRate":{"persecond":5,"burst":5}}"#,
                "\"denyLogRate.persecond\" is not a known field",
            ),
            (r#"{"prevResult":[]}"#, "\"prevResult\" must be an object"),
            (
                r#"{"runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"egress-guard.io/mode":1}}}"#,
                "egress-guard.io/mode",
            ),
            (
                r#"{"runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"egress-guard.io/allow":"a","egress-guard.io/allow":"b"}}}"#,
                "duplicate key \"egress-guard.io/allow\"",
            ),
            (
                r#"{"enforceNamespace":["model-serving"]}"#,
                "conflist field \"enforceNamespace\" is not a known field (did you mean \"enforceNamespaces\"?)",
            ),
            (
                r#"{"defaultmode":"enforce"}"#,
                "\"defaultmode\" is not a known field (did you mean \"defaultMode\"?)",
            ),
            (
                r#"{"allowEverything":true}"#,
                "\"allowEverything\" is not a known field (egress-guard's fields: defaultMode,",
            ),
            (r#"{"capabilities":[]}"#, "\"capabilities\" must be an object"),
            (
                r#"{"capabilities":{"io.kubernetes.cri.pod-annotations":"yes"}}"#,
                "\"capabilities[\"io.kubernetes.cri.pod-annotations\"]\" must be true or false",
            ),
            (r#"{"args":"x"}"#, "\"args\" must be an object"),
            (r#"[1]"#, "must be a JSON object"),
            (r#"{"#, "not valid JSON"),
        ];
        for (input, needle) in cases {
            let err = NetConf::parse(input.as_bytes())
                .expect_err(input)
                .to_string();
            assert!(err.contains(needle), "{input}: {err:?} lacks {needle:?}");
        }
        let err = NetConf::parse(b"{\"name\":\"\xff\"}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("UTF-8"), "{err}");
    }
}
