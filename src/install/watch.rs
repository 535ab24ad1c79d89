//! Directory watching with inotify (through libc) for the installer's loop. Owns the raw file
//! descriptors and the only `unsafe` code of the installer.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::InstallError;

/// An inotify instance watching one directory for entries being written, renamed in or out,
/// created or deleted, and for the directory itself going away.
pub struct DirWatch {
    fd: OwnedFd,
    dir: PathBuf,
    watching: bool,
}

const MASK: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

impl DirWatch {
    /// Creates the inotify instance; the watch is added by [`DirWatch::ensure`].
    pub fn new(dir: &Path) -> Result<DirWatch, InstallError> {
        // SAFETY: plain syscall; the returned fd is checked and then owned.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(InstallError::Os {
                what: "inotify_init1",
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(DirWatch {
            fd,
            dir: dir.to_path_buf(),
            watching: false,
        })
    }

    /// Adds the watch if it is not in place (the directory may appear later or be replaced).
    /// Returns whether a new watch was added.
    pub fn ensure(&mut self) -> Result<bool, InstallError> {
        if self.watching {
            return Ok(false);
        }
        let path = CString::new(self.dir.as_os_str().as_bytes()).map_err(|_| InstallError::Os {
            what: "inotify_add_watch: path holds a nul byte",
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        // SAFETY: valid fd and nul-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), MASK | libc::IN_ONLYDIR)
        };
        if wd < 0 {
            return Err(InstallError::Watch {
                path: self.dir.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        self.watching = true;
        Ok(true)
    }

    /// Waits up to `timeout` for events; returns whether any relevant event arrived. Drains
    /// everything queued. A deleted or moved directory drops the watch (re-added by `ensure`).
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, InstallError> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(InstallError::Os {
                what: "poll",
                source: e,
            });
        }
        if rc == 0 {
            return Ok(false);
        }
        self.drain()
    }

    fn drain(&mut self) -> Result<bool, InstallError> {
        let mut relevant = false;
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: buf is valid for buf.len() bytes.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast::<libc::c_void>(),
                    buf.len(),
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                return match e.kind() {
                    std::io::ErrorKind::WouldBlock => Ok(relevant),
                    std::io::ErrorKind::Interrupted => continue,
                    _ => Err(InstallError::Os {
                        what: "read inotify",
                        source: e,
                    }),
                };
            }
            let n = usize::try_from(n).unwrap_or(0);
            if n == 0 {
                return Ok(relevant);
            }
            let header = std::mem::size_of::<libc::inotify_event>();
            let mut off = 0;
            while off + header <= n {
                // SAFETY: the kernel wrote a whole event header at `off`; read_unaligned copes
                // with the byte buffer's alignment.
                let ev: libc::inotify_event = unsafe {
                    std::ptr::read_unaligned(buf.as_ptr().add(off).cast::<libc::inotify_event>())
                };
                let name = &buf[off + header..(off + header + ev.len as usize).min(n)];
                let name = name.split(|b| *b == 0).next().unwrap_or_default();
                if ev.mask & (libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0 {
                    self.watching = false;
                    relevant = true;
                } else if ev.mask & libc::IN_Q_OVERFLOW != 0 || !is_own_temp(name) {
                    relevant = true;
                }
                off += header + ev.len as usize;
            }
        }
    }
}

/// Our own temporary files (see `fsutil::temp_path`) are not news.
fn is_own_temp(name: &[u8]) -> bool {
    name.starts_with(b".") && name.ends_with(b".egress-guard.tmp")
}
