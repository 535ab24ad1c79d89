//! The CNI protocol: environment, verbs, supported versions, error codes and the error JSON.
//! `plugin` holds what each verb does, `policy` how a pod's policy is found.

pub mod args;
pub mod config;
pub mod identity;
pub mod json;
pub mod plugin;
pub mod policy;

use std::fmt;

pub use args::{parse_cni_args, PodIdentity};
pub use config::NetConf;

/// The cniVersions the plugin accepts and reports in VERSION; the installer warns about a
/// conflist with any other.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// CNI error codes (spec) and egress-guard's own (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const CONTAINER_UNKNOWN: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// A pod annotation (or the policy it yields) is invalid.
    pub const INVALID_POLICY: u32 = 100;
    /// The kernel refused the ruleset.
    pub const KERNEL_REJECTED: u32 = 101;
    /// The pod's interface or its host-side peer could not be found.
    pub const INTERFACE: u32 = 102;
    /// CHECK found the installed ruleset differs from the policy.
    pub const DRIFT: u32 = 103;
    /// The pod could not be read from the API server.
    pub const API_LOOKUP: u32 = 104;
}

/// A verb failure: CNI code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
        }
    }
    /// The error as CNI error JSON.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        serde_json::json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg })
    }
}

impl From<crate::guard::GuardError> for CniError {
    /// A node that could not be changed: the code says whether to retry, fix the pod's
    /// interface, or fix the node.
    fn from(e: crate::guard::GuardError) -> Self {
        use crate::guard::GuardError as G;
        use crate::kernel::KernelError;
        let code = match &e {
            G::Kernel { source, .. } if source.netns_missing() => code::CONTAINER_UNKNOWN,
            G::Kernel { source, .. } if source.is_transient() => code::TRY_AGAIN_LATER,
            G::Kernel { source, .. } if matches!(**source, KernelError::Peer(_)) => code::INTERFACE,
            G::Kernel { .. } | G::Unsupported { .. } => code::KERNEL_REJECTED,
            G::Interface { .. } => code::INTERFACE,
            G::State { .. } => code::IO_FAILURE,
        };
        CniError::new(code, e.to_string())
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Verb {
    pub fn parse(s: &str) -> Option<Verb> {
        Some(match s {
            "ADD" => Verb::Add,
            "DEL" => Verb::Del,
            "CHECK" => Verb::Check,
            "GC" => Verb::Gc,
            "STATUS" => Verb::Status,
            "VERSION" => Verb::Version,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Add => "ADD",
            Verb::Del => "DEL",
            Verb::Check => "CHECK",
            Verb::Gc => "GC",
            Verb::Status => "STATUS",
            Verb::Version => "VERSION",
        }
    }
}

/// The CNI environment of one invocation.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: String,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
}

impl Env {
    pub fn from_process() -> Env {
        let get = |k: &str| std::env::var(k).ok();
        Env {
            command: get("CNI_COMMAND").unwrap_or_default(),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
        }
    }
}

/// Orders dotted versions numerically ("0.10.0" > "0.4.0").
pub fn version_at_least(v: &str, min: &str) -> bool {
    let parse = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(v) >= parse(min)
}

/// Validates a container id: CNI allows letters, digits, '_', '.', '-'. It names our tables.
pub fn valid_container_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && id.as_bytes()[0].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("1.1.0", "1.0.0"));
        assert!(version_at_least("0.4.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
    }

    #[test]
    fn container_ids() {
        assert!(valid_container_id("4f1c0a_b.c-d"));
        assert!(!valid_container_id(""));
        assert!(!valid_container_id("-x"));
        assert!(!valid_container_id("a/b"));
        assert!(!valid_container_id(&"a".repeat(201)));
    }

    #[test]
    fn error_json_has_code_and_msg() {
        let e = CniError::new(7, "bad");
        let j = e.to_json("1.0.0");
        assert_eq!(j["code"], 7);
        assert_eq!(j["msg"], "bad");
        assert!(j.get("details").is_none());
    }

    #[test]
    fn guard_failures_map_to_codes_and_keep_their_message() {
        use crate::guard::GuardError;
        use crate::kernel::{KernelError, Where};
        use crate::netlink::NetlinkError;
        let kernel = |errno| GuardError::Kernel {
            subject: "pod a/b (container c1)".into(),
            action: "installing the egress policy".into(),
            source: Box::new(KernelError::netlink(
                "creating table",
                Where::Host,
                NetlinkError::kernel("batch", errno, None),
            )),
        };
        let e = CniError::from(kernel(libc::ENOBUFS));
        assert_eq!(e.code, code::TRY_AGAIN_LATER);
        assert!(
            e.msg
                .starts_with("pod a/b (container c1): installing the egress policy: "),
            "{}",
            e.msg
        );
        assert_eq!(
            CniError::from(kernel(libc::EINVAL)).code,
            code::KERNEL_REJECTED
        );
        let interface = GuardError::Interface {
            subject: "pod a/b (container c1)".into(),
            reason: "host interface veth1 went away during ADD".into(),
        };
        assert_eq!(CniError::from(interface).code, code::INTERFACE);
        let state = GuardError::State {
            subject: "s".into(),
            reason: "r".into(),
        };
        assert_eq!(CniError::from(state).code, code::IO_FAILURE);
    }
}
