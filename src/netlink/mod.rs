//! Netlink plumbing: attribute encoding, a blocking socket, nf_tables batches and dumps, and the
//! rtnetlink queries used to find a pod's host-side interface. Knows nothing of pods or policy.

pub mod attr;
pub mod nft;
pub mod rtnl;
pub mod socket;

use std::io;

/// A netlink failure: either the socket itself or an error the kernel returned.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("netlink {op}: kernel returned {}{}", io::Error::from_raw_os_error(*errno), message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kernel {
        op: &'static str,
        errno: i32,
        message: Option<String>,
    },
}

impl NetlinkError {
    pub fn io(op: &'static str, source: io::Error) -> Self {
        NetlinkError::Io { op, source }
    }
    pub fn kernel(op: &'static str, errno: i32, message: Option<String>) -> Self {
        NetlinkError::Kernel { op, errno, message }
    }
    /// The errno behind the failure, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Io { source, .. } => source.raw_os_error(),
            NetlinkError::Kernel { errno, .. } => Some(*errno),
        }
    }
    /// Worth retrying later (buffer exhaustion, busy).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENOBUFS) | Some(libc::EBUSY) | Some(libc::EAGAIN) | Some(libc::EINTR)
        )
    }
}
