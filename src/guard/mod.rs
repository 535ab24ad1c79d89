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

/// The pod a CNI invocation is for, as the runtime names it (`CNI_ARGS`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PodIdentity {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
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
