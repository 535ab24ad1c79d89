//! Entering a network namespace on the current thread and always coming back. setns(2) is per
//! thread, so the plugin stays single-threaded and goes through this one guard.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// While alive, the current thread is in another network namespace.
pub struct NetnsGuard {
    original: File,
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace \"{path}\" cannot be opened: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("entering network namespace \"{path}\" failed: {source}")]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl NetnsError {
    /// True when the namespace does not exist (any more).
    pub fn is_missing(&self) -> bool {
        match self {
            NetnsError::Open { source, .. } => source.kind() == io::ErrorKind::NotFound,
            NetnsError::Enter { source, .. } => source.raw_os_error() == Some(libc::EINVAL),
        }
    }
}

/// Path of the calling thread's own network namespace.
pub fn current_path() -> &'static str {
    "/proc/thread-self/ns/net"
}

pub fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })
}

fn setns(file: &File) -> io::Result<()> {
    // SAFETY: the descriptor is valid for the call; CLONE_NEWNET only switches this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl NetnsGuard {
    /// Enters the namespace at `path` (for example `/var/run/netns/x` or `/proc/PID/ns/net`).
    pub fn enter(path: &Path) -> Result<NetnsGuard, NetnsError> {
        let target = open(path)?;
        Self::enter_file(&target, path)
    }

    pub fn enter_file(target: &File, path: &Path) -> Result<NetnsGuard, NetnsError> {
        let original = open(Path::new(current_path()))?;
        setns(target).map_err(|source| NetnsError::Enter {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(NetnsGuard { original })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if setns(&self.original).is_err() {
            // Carrying on in the wrong namespace could put host rules in a pod or the reverse.
            std::process::abort();
        }
    }
}
