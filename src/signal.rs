//! SIGTERM and SIGINT as a flag: the one signal handling of the long-running subcommands
//! (`install`, `agent`). The handler only sets an atomic; loops poll [`termination_requested`].
//! Installed without SA_RESTART, so a blocking `poll` or `recv` returns early with EINTR.

use std::sync::atomic::{AtomicBool, Ordering};

static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    TERMINATE.store(true, Ordering::SeqCst);
}

/// Routes SIGTERM and SIGINT to the flag read by [`termination_requested`].
pub fn catch_termination() -> std::io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the sigaction struct is zeroed then filled; the handler only stores to an
        // atomic, which is async-signal-safe.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether SIGTERM or SIGINT arrived since [`catch_termination`].
pub fn termination_requested() -> bool {
    TERMINATE.load(Ordering::SeqCst)
}
