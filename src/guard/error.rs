//! What can go wrong changing a node. Every message names the pod (or verb) it was for and
//! what was being done; the CNI layer maps each kind to an error code.

use crate::kernel::KernelError;

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The kernel refused or failed an operation.
    #[error("{subject}: {action}: {source}")]
    Kernel {
        subject: String,
        action: String,
        #[source]
        source: Box<KernelError>,
    },
    /// The pod's interface, or its host side, is not one the guard can pin the pod to.
    #[error("{subject}: {reason}")]
    Interface { subject: String, reason: String },
    /// The kernel lacks what the configured placement needs.
    #[error("{subject}: {reason}")]
    Unsupported { subject: String, reason: String },
    /// The state directory cannot keep the device index consistent with the kernel.
    #[error("{subject}: {reason}")]
    State { subject: String, reason: String },
}
