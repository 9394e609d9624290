//! The crate's one error type: what a hit or a miss can return.

use std::io;

/// Everything that can go wrong in a request to the cache, one variant per operation.
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
    /// is taken or the user reached the module's `max_user_watches`, also after the cache
    /// evicted its idle registrations to free some; `ENOMEM` when the memory cgroup is full).
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
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the invalidation source had no room for another watch (`ENOSPC`, which
    /// [`crate::InvalidationSource::watch`] reports for that), so evicting idle registrations
    /// may help.
    pub(crate) fn is_out_of_watch_room(&self) -> bool {
        matches!(self, Self::Watch { source, .. } if source.kind() == io::ErrorKind::StorageFull)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_enospc_from_the_source_means_out_of_watch_room() {
        let watch_error = |errno| Error::Watch {
            addr: 0,
            len: 4096,
            source: io::Error::from_raw_os_error(errno),
        };
        assert!(watch_error(libc::ENOSPC).is_out_of_watch_room());
        assert!(!watch_error(libc::EINVAL).is_out_of_watch_room());
        assert!(!Error::Register {
            addr: 0,
            len: 4096,
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        }
        .is_out_of_watch_room());
    }
}
