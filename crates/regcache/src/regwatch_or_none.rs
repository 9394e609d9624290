//! [`RegwatchOrNone`]: the cache's invalidation source over regwatch, or none.

use std::io;

use regcache_core::InvalidationSource;

/// A regwatch watch and the cookie it was created with (unwatching needs both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegwatchWatch {
    watch: regwatch::Watch,
    cookie: u64,
}

/// Where a cache learns that pages changed: regwatch for policies that watch, nothing for the
/// others. One type for both, so that every mode runs the same concrete cache type.
#[derive(Debug)]
pub enum RegwatchOrNone {
    /// No invalidation source: [`InvalidationSource::watch`] fails with `Unsupported` (the
    /// policy never asks for one).
    None,
    /// An open `/dev/regwatch`.
    Regwatch(regwatch::Monitor),
}

impl RegwatchOrNone {
    fn monitor(&self) -> io::Result<&regwatch::Monitor> {
        match self {
            Self::Regwatch(monitor) => Ok(monitor),
            Self::None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no invalidation source: this policy must not watch",
            )),
        }
    }
}

impl InvalidationSource for RegwatchOrNone {
    type Watch = RegwatchWatch;

    fn watch(&self, addr: usize, len: usize, cookie: u64) -> io::Result<RegwatchWatch> {
        let watch = self.monitor()?.watch(addr, len, cookie).map_err(io_error)?;
        Ok(RegwatchWatch { watch, cookie })
    }

    /// One match on the variant and regwatch's one acquire load of the slot word: no lock, no
    /// allocation, no system call.
    #[inline]
    fn is_valid(&self, watch: &RegwatchWatch) -> bool {
        match self {
            Self::Regwatch(monitor) => monitor.is_valid(&watch.watch),
            // Unreachable (no watch exists without a monitor); "changed" is the safe answer.
            Self::None => false,
        }
    }

    fn unwatch(&self, watch: RegwatchWatch) -> io::Result<()> {
        self.monitor()?
            .unwatch(watch.watch, watch.cookie)
            .map_err(io_error)
    }

    fn generation(&self) -> u64 {
        match self {
            Self::Regwatch(monitor) => monitor.generation(),
            Self::None => 0,
        }
    }

    fn drain(&self, on_invalidated: &mut dyn FnMut(u64)) -> io::Result<()> {
        match self {
            Self::Regwatch(monitor) => monitor
                .drain(|record| on_invalidated(record.cookie))
                .map(drop)
                .map_err(io_error),
            Self::None => Ok(()),
        }
    }
}

/// A regwatch error as the `io::Error` the trait speaks, keeping the errno (`ENOSPC` matters:
/// the cache evicts and retries on it).
fn io_error(err: regwatch::Error) -> io::Error {
    match err.raw_os_error() {
        Some(errno) => io::Error::from_raw_os_error(errno),
        None => io::Error::other(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_monitor_nothing_is_watched_or_drained() {
        let none = RegwatchOrNone::None;
        let err = none.watch(0x1000, 4096, 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        assert_eq!(none.generation(), 0);
        let mut reported = 0;
        none.drain(&mut |_| reported += 1).unwrap();
        assert_eq!(reported, 0);
    }

    #[test]
    fn regwatch_errors_keep_their_errno() {
        let full = regwatch::Error::Watch {
            start: 0,
            len: 4096,
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(io_error(full).raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(io_error(regwatch::Error::NotLoaded).raw_os_error(), None);
    }
}
