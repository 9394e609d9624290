//! The crate's one error type.

use std::io;

use crate::config::Mode;

/// Everything that can go wrong in `regcache`, one variant per operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request was empty or ran past the end of the address space.
    #[error("invalid range: {len} bytes at {addr:#x}")]
    InvalidRange {
        /// Start of the requested range.
        addr: usize,
        /// Length of the requested range.
        len: usize,
    },
    /// The registrar refused to register the range.
    #[error("registering {len} bytes at {addr:#x} failed")]
    Register {
        /// Start of the range the cache tried to register (page aligned, possibly merged).
        addr: usize,
        /// Length of that range.
        len: usize,
        /// What the registrar reported.
        source: io::Error,
    },
    /// The invalidation source could not watch the range (regwatch: `ENOSPC` when every slot
    /// is taken).
    #[error("watching {len} bytes at {addr:#x} failed")]
    Watch {
        /// Start of the range.
        addr: usize,
        /// Length of the range.
        len: usize,
        /// What the invalidation source reported.
        source: io::Error,
    },
    /// Reading the pending invalidations failed.
    #[error("draining invalidations failed")]
    Drain {
        /// What the invalidation source reported.
        source: io::Error,
    },
    /// The pages behind the range changed during every one of `attempts` registrations.
    #[error(
        "the pages behind {len} bytes at {addr:#x} changed during each of {attempts} registrations"
    )]
    Unstable {
        /// Start of the range.
        addr: usize,
        /// Length of the range.
        len: usize,
        /// How many registrations were tried.
        attempts: u32,
    },
    /// An environment variable held a value the cache cannot use.
    #[error("{var}={value:?}: {reason}")]
    Config {
        /// The variable's name.
        var: &'static str,
        /// The value found (lossily converted when it was not UTF-8).
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// `/dev/regwatch` exists but could not be opened for the pinned mode.
    #[error("opening /dev/regwatch failed")]
    OpenRegwatch {
        /// What regwatch reported.
        source: regwatch::Error,
    },
    /// The requested mode needs a capability the system lacks.
    #[error("mode {mode} is unavailable: {reason}")]
    ModeUnavailable {
        /// The mode that was asked for.
        mode: Mode,
        /// The missing capability.
        reason: &'static str,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
