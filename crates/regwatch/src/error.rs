//! The crate's one error type.

use std::io;

/// What went wrong, per operation. Every variant but [`Error::NotLoaded`]
/// carries the `io::Error` the kernel (or the ABI check) produced.
///
/// The errno values each operation can produce are documented in the uapi
/// header `kmod/include/uapi/linux/regwatch.h`. One of them is common to
/// all: `EIO` when the call comes from another address space than the one
/// that opened the device, e.g. a fork child using an inherited [`Monitor`].
///
/// [`Monitor`]: crate::Monitor
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `/dev/regwatch` does not exist (or has no driver behind it): the
    /// regwatch module is not loaded.
    #[error("/dev/regwatch is missing: the regwatch kernel module is not loaded")]
    NotLoaded,
    /// `open("/dev/regwatch")` failed for another reason.
    #[error("cannot open /dev/regwatch")]
    Open(#[source] io::Error),
    /// The `REGWATCH_IOC_API` call (the handshake, or
    /// [`Monitor::user_watches`]) failed, or the module speaks another ABI
    /// (then the source has kind `InvalidData`).
    ///
    /// [`Monitor::user_watches`]: crate::Monitor::user_watches
    #[error("regwatch API handshake failed")]
    Handshake(#[source] io::Error),
    /// `REGWATCH_IOC_SET_CAPACITY` refused `slots`.
    #[error("cannot set the regwatch capacity to {slots} slots")]
    SetCapacity {
        /// The capacity asked for.
        slots: u64,
        /// `EINVAL` (0 or above `max_slots`), `EBUSY`, `ENOMEM`, ...
        source: io::Error,
    },
    /// Mapping the status area failed, or its header does not describe the
    /// capacity that was set (then the source has kind `InvalidData`).
    #[error("cannot map the regwatch status area")]
    Map(#[source] io::Error),
    /// `REGWATCH_IOC_WATCH` refused the range.
    #[error("cannot watch {len} bytes at {start:#x}")]
    Watch {
        /// First byte of the range.
        start: usize,
        /// Length of the range in bytes.
        len: usize,
        /// `EINVAL` (bad range); `ENOSPC`: every slot of the monitor is in
        /// use, or the user reached the module's `max_user_watches` over all
        /// its monitors ([`Monitor::user_watches`] tells which); `ENOMEM`
        /// (the memory cgroup is full); ...
        ///
        /// [`Monitor::user_watches`]: crate::Monitor::user_watches
        source: io::Error,
    },
    /// `REGWATCH_IOC_WATCH` with `REGWATCH_WATCH_UNWATCH` refused to watch
    /// the range in place of the victim; nothing changed.
    #[error("cannot watch {len} bytes at {start:#x} in place of slot {victim}")]
    WatchInsteadOf {
        /// Slot of the watch to unwatch.
        victim: u32,
        /// First byte of the range.
        start: usize,
        /// Length of the range in bytes.
        len: usize,
        /// `EINVAL`: the victim is not a live watch with that cookie, or
        /// the range is bad; ...
        source: io::Error,
    },
    /// `REGWATCH_IOC_UNWATCH` refused the watch.
    #[error("cannot unwatch slot {slot}")]
    Unwatch {
        /// Slot of the watch.
        slot: u32,
        /// `EINVAL`: the slot holds no live watch with that cookie.
        source: io::Error,
    },
    /// `read()` of dirty-watch records failed (or returned a partial record:
    /// kind `InvalidData`).
    #[error("cannot read regwatch records")]
    Read(#[source] io::Error),
}

impl Error {
    /// The underlying `io::Error`, `None` for [`Error::NotLoaded`].
    #[must_use]
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Self::NotLoaded => None,
            Self::Open(source)
            | Self::Handshake(source)
            | Self::Map(source)
            | Self::Read(source)
            | Self::SetCapacity { source, .. }
            | Self::Watch { source, .. }
            | Self::WatchInsteadOf { source, .. }
            | Self::Unwatch { source, .. } => Some(source),
        }
    }

    /// The errno of the underlying `io::Error`, if it came from the kernel.
    #[must_use]
    pub fn raw_os_error(&self) -> Option<i32> {
        self.io_error().and_then(io::Error::raw_os_error)
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
