//! Fork detection for the status area.
//!
//! The module maps the status area "do not copy on fork" (`VM_DONTCOPY`), so
//! a fork child's copy of a [`Monitor`](crate::Monitor) points at an address
//! the child does not have mapped, where the child may later map something
//! else. (The module makes the area `VM_IO`, so `MADV_DOFORK` fails with
//! `EINVAL` on every kernel and the area never reaches a child; modules
//! before that accepted it on 6.12.) Loading from it,
//! or unmapping it on drop, would be unsound. A `pthread_atfork()` child
//! handler counts forks; a status area remembers the count it was mapped at
//! and, once the count moved, neither loads from nor unmaps its address.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Forks this process went through since the handler was registered; only
/// ever incremented in a child.
///
/// Relaxed is enough: it is written by the forking thread before fork()
/// returns in the child, when that is the child's only thread, and read by
/// that thread or threads the child creates later (thread creation orders
/// it before them).
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_fork_in_child() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// The current fork count, to be given to [`forked_since`] later.
///
/// Registers the fork handler on first use, so every status area is mapped
/// after it exists.
///
/// # Errors
///
/// `pthread_atfork()`'s error (`ENOMEM`).
pub(crate) fn epoch() -> io::Result<u64> {
    static REGISTERED: OnceLock<i32> = OnceLock::new();
    let ret = *REGISTERED.get_or_init(|| {
        // SAFETY: registers a handler that only does an atomic increment,
        // which is async-signal-safe as a fork child handler must be.
        unsafe { libc::pthread_atfork(None, None, Some(count_fork_in_child)) }
    });
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(FORKS.load(Ordering::Relaxed))
}

/// Whether this process is a fork child of the one that saw `epoch`.
///
/// Forks by raw `clone()` system calls run no handlers and are not seen.
#[inline]
pub(crate) fn forked_since(epoch: u64) -> bool {
    FORKS.load(Ordering::Relaxed) != epoch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fork_child_sees_the_count_move_and_the_parent_does_not() {
        let epoch = epoch().expect("pthread_atfork");
        assert!(!forked_since(epoch));
        // SAFETY: the child only does atomic loads and leaves with _exit().
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            let code = i32::from(!forked_since(epoch));
            // SAFETY: ends the child without running the test harness's code.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child did not see the fork: wait status {status:#x}"
        );
        assert!(!forked_since(epoch));
    }
}
