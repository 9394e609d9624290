//! Errors as C sees them: a negative errno per failed call, `regcache_strerror` for the code, and
//! a per-thread description of the last failure; and the guard that keeps Rust panics inside.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::abi::REGCACHE_EPANIC;

/// Why a call failed: the errno it returns (negated) and the sentence `regcache_last_error` gives.
#[derive(Debug)]
pub(crate) struct Failure {
    errno: c_int,
    message: String,
}

impl Failure {
    pub(crate) fn new(errno: c_int, message: impl Into<String>) -> Self {
        Self {
            errno,
            message: message.into(),
        }
    }

    /// `-EINVAL`: a NULL pointer, or a value no call accepts.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(libc::EINVAL, message)
    }

    /// The errno of an error chain: the first OS error in it, else `fallback`.
    pub(crate) fn from_chain(err: &(dyn std::error::Error + 'static), fallback: c_int) -> Self {
        let mut errno = None;
        let mut message = String::new();
        let mut next = Some(err);
        while let Some(link) = next {
            if errno.is_none() {
                errno = link
                    .downcast_ref::<std::io::Error>()
                    .and_then(std::io::Error::raw_os_error);
            }
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&link.to_string());
            next = link.source();
        }
        Self::new(errno.unwrap_or(fallback), message)
    }
}

thread_local! {
    // What `regcache_last_error` returns: the calling thread's last failure.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn remember(function: &str, message: &str) {
    let text = format!("{function}: {message}").replace('\0', " ");
    let text = CString::new(text).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = text);
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Runs the body of the C function `function`: its `Ok` value is returned as is, a failure as
/// its negative errno (remembered for `regcache_last_error`), and a panic as `-REGCACHE_EPANIC`,
/// so no unwinding ever reaches C.
pub(crate) fn guard(function: &str, body: impl FnOnce() -> Result<c_int, Failure>) -> c_int {
    // AssertUnwindSafe: after a panic the only state looked at again is what the body shares
    // with other calls (the registry and the cache), whose locks recover from poisoning and
    // whose invariants hold between statements.
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => value,
        Ok(Err(failure)) => {
            remember(function, &failure.message);
            -failure.errno
        }
        Err(payload) => {
            let message = format!("internal error (a bug): {}", panic_message(&*payload));
            remember(function, &message);
            -REGCACHE_EPANIC
        }
    }
}

/// [`guard`] for functions that return a static string, NULL on failure.
pub(crate) fn guard_str(
    function: &str,
    body: impl FnOnce() -> Result<&'static CStr, Failure>,
) -> *const c_char {
    let mut text = std::ptr::null();
    guard(function, || {
        text = body()?.as_ptr();
        Ok(0)
    });
    text
}

/// The calling thread's last failure; empty before any.
pub(crate) fn last_error() -> *const c_char {
    // The pointer stays valid after the borrow ends: the string is only replaced by the next
    // failing call on this thread, which the header documents.
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

/// The text of `regcache_strerror`: what the code means coming from regcache.
pub(crate) fn describe(code: c_int) -> &'static CStr {
    if code > 0 {
        return c"unknown error code (regcache returns negative codes)";
    }
    match code.checked_neg().unwrap_or(0) {
        0 if code == 0 => c"success",
        libc::EINVAL => {
            c"invalid argument: a NULL pointer, a zero length, an unknown access bit \
            or configuration value, or a cache or handle that is not live"
        }
        libc::EOPNOTSUPP => c"the requested mode is not available on this system",
        libc::EBUSY => c"the cache still has handles that were not released",
        libc::EFAULT => c"part of the range is not mapped",
        libc::ENOMEM => c"out of memory",
        libc::EPERM | libc::EACCES => {
            c"permission denied (is the locked-memory limit, ulimit -l, too low?)"
        }
        libc::ENOSPC => {
            c"regwatch has no room to watch more ranges, even after evicting idle \
            registrations"
        }
        libc::EAGAIN => c"the pages changed during every attempt to register them",
        libc::ENODEV | libc::ENOENT => c"device or /dev/regwatch not found",
        libc::EIO => c"input/output error",
        REGCACHE_EPANIC => c"internal error in regcache (a bug); see regcache_last_error()",
        _ => c"unknown error code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last() -> String {
        // SAFETY: `last_error` returns a NUL-terminated string owned by this thread.
        unsafe { CStr::from_ptr(last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_an_error_code_and_a_message() {
        let code = guard("regcache_test", || panic!("boom"));
        assert_eq!(code, -REGCACHE_EPANIC);
        assert_eq!(last(), "regcache_test: internal error (a bug): boom");
    }

    #[test]
    fn a_failure_is_a_negative_errno_and_is_remembered() {
        assert_eq!(guard("f", || Err(Failure::invalid("no"))), -libc::EINVAL);
        assert_eq!(last(), "f: no");
        assert_eq!(guard("g", || Ok(7)), 7);
        assert_eq!(last(), "f: no", "a success leaves the last failure alone");
    }

    #[test]
    fn the_first_os_error_of_a_chain_is_the_errno() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("registering failed")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let failure = Failure::from_chain(
            &Outer(std::io::Error::from_raw_os_error(libc::EFAULT)),
            libc::EIO,
        );
        assert_eq!(failure.errno, libc::EFAULT);
        assert!(failure.message.starts_with("registering failed: "));
        assert_eq!(
            Failure::from_chain(&Outer(std::io::Error::other("x")), libc::EIO).errno,
            libc::EIO
        );
    }

    #[test]
    fn every_code_has_a_text() {
        assert_eq!(describe(0), c"success");
        assert_eq!(describe(-libc::EBUSY), describe(-libc::EBUSY));
        assert!(describe(libc::EINVAL)
            .to_bytes()
            .starts_with(b"unknown error code"));
        assert_eq!(describe(c_int::MIN), c"unknown error code");
        assert_eq!(describe(-12345), c"unknown error code");
    }
}
