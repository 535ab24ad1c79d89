//! The pod guard: the only code that changes a node. It decides where a pod's table goes,
//! installs it (replacing what an earlier or dead pod left bound to the same device), removes
//! it, collects what dead pods left, and keeps the records of all of it on the node. The CNI
//! verbs, the agent and `status` go through here and the [`Kernel`] trait only.
//!
//! - [`place`]: where a pod's table goes and who the pod is on its interface; the plan ADD and
//!   CHECK share.
//! - [`apply`]: ADD's install of a plan, then its record.
//! - [`stale`]: tables left bound to a device name, owner checks on hashed table names, and the
//!   device index kept in step with the kernel.
//! - [`remove`]: DEL and GC.
//! - [`repair`]: the agent's reinstall of drifted tables and collection of gone pods' tables.
//! - [`inspect`]: drift between the kernel and the table a policy compiles to.
//! - [`record`]: one [`record::PodRecord`] per guarded attachment, `<stateDir>/<key>.json`.
//! - [`devindex`]: host device name -> the tables bound to it, so ADD finds a stale table
//!   without listing every table on the node.

pub mod apply;
pub mod devindex;
pub mod error;
pub mod failures;
pub mod inspect;
pub mod place;
pub mod record;
pub mod remove;
pub mod repair;
pub mod stale;

use std::path::Path;

pub use error::GuardError;
pub use place::{HostLink, Placed, PlacementPref, Plan};

use crate::kernel::{Kernel, KernelError};

/// The pod a CNI invocation is for, as the runtime names it (`CNI_ARGS`). In the state file
/// and the verb log its fields are `pod_namespace`, `pod_name` and `pod_uid`; flow and event
/// records spell them `namespace`, `pod` and `pod_uid` ([`pod_as_record_keys`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodIdentity {
    #[serde(rename = "pod_namespace")]
    pub namespace: Option<String>,
    #[serde(rename = "pod_name")]
    pub name: Option<String>,
    #[serde(rename = "pod_uid")]
    pub uid: Option<String>,
}

/// Serializes a pod identity as flow and event records name it (`namespace`, `pod`,
/// `pod_uid`); for `#[serde(flatten, serialize_with = ...)]`.
pub fn pod_as_record_keys<S: serde::Serializer>(p: &PodIdentity, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("PodIdentity", 3)?;
    st.serialize_field("namespace", &p.namespace)?;
    st.serialize_field("pod", &p.name)?;
    st.serialize_field("pod_uid", &p.uid)?;
    st.end()
}

impl PodIdentity {
    /// "namespace/name" or a placeholder when the runtime did not say.
    pub fn display(&self) -> String {
        match (&self.namespace, &self.name) {
            (Some(ns), Some(n)) => format!("{ns}/{n}"),
            (Some(ns), None) => format!("{ns}/?"),
            (None, Some(n)) => format!("?/{n}"),
            (None, None) => "(unknown pod)".to_string(),
        }
    }
}

/// One attachment of a pod to a network: the runtime's container ID and the interface name
/// inside the pod. Table names and state files derive from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

/// How messages name a pod's attachment: "pod ns/name (container 0123456789ab)".
pub fn subject(pod: &PodIdentity, container_id: &str) -> String {
    let short: String = container_id.chars().take(12).collect();
    format!("pod {} (container {short})", pod.display())
}

/// The kernel and the state directory of one node, and the subject its messages name (such as
/// "pod ns/name (container 0123456789ab)").
pub struct Guard<'a, K: Kernel> {
    pub kernel: &'a mut K,
    pub state_dir: &'a Path,
    pub subject: String,
}

impl<'a, K: Kernel> Guard<'a, K> {
    pub fn new(kernel: &'a mut K, state_dir: &'a Path, subject: String) -> Self {
        Guard {
            kernel,
            state_dir,
            subject,
        }
    }

    /// A kernel failure while doing `action` for this subject.
    fn kernel_err(&self, action: impl Into<String>, source: KernelError) -> GuardError {
        GuardError::Kernel {
            subject: self.subject.clone(),
            action: action.into(),
            source: Box::new(source),
        }
    }
}
