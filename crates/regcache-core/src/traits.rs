//! The seams between the cache and the system: who registers memory and who says it changed.

use std::convert::Infallible;
use std::io;

use crate::access::Access;

/// A registered memory region as the cache sees it.
pub trait MemoryRegion: Send + Sync {
    /// Local key, for work requests posted by this process.
    fn lkey(&self) -> u32;
    /// Remote key, for peers' RDMA READ/WRITE.
    fn rkey(&self) -> u32;
}

/// Registers and deregisters memory (libibverbs `ibv_reg_mr`/`ibv_dereg_mr` in production).
pub trait Registrar: Send + Sync {
    /// One registration.
    type Region: MemoryRegion;

    /// Registers `[addr, addr + len)` with `access` (which may hold [`Access::ON_DEMAND`]).
    ///
    /// # Errors
    /// Whatever the system reports, e.g. `EFAULT` when part of the range is not mapped.
    fn register(&self, addr: usize, len: usize, access: Access) -> io::Result<Self::Region>;

    /// Releases `region`. The cache calls this exactly once per region, when the region has
    /// left the cache's index and no [`Registration`](crate::Registration) holds it.
    ///
    /// # Errors
    /// Whatever the system reports; the cache logs it and counts it in
    /// [`Stats::deregister_failures`](crate::Stats::deregister_failures).
    fn deregister(&self, region: Self::Region) -> io::Result<()>;
}

/// Tells the cache when the pages behind a watched range change (regwatch in production).
///
/// Contract: once the pages behind a watched range change (munmap, mremap, ...), every later
/// [`InvalidationSource::is_valid`] of that watch returns false, [`InvalidationSource::generation`]
/// differs from every value it returned before the change, and a later
/// [`InvalidationSource::drain`] reports the watch's cookie (exactly once, unless unwatched first).
pub trait InvalidationSource: Send + Sync {
    /// A watch token.
    type Watch: Send + Sync;

    /// Starts watching `[addr, addr + len)`; [`InvalidationSource::drain`] reports `cookie`.
    ///
    /// # Errors
    /// Whatever the source reports; `ENOSPC` ([`io::ErrorKind::StorageFull`]) means it has no
    /// room for another watch (regwatch: every slot is taken), on which the cache evicts its
    /// idle registrations and tries once more.
    fn watch(&self, addr: usize, len: usize, cookie: u64) -> io::Result<Self::Watch>;

    /// Whether nothing changed behind `watch` since it was created. Called on the cache's hit
    /// path, so it must take no lock, allocate nothing, and order like an acquire load: a
    /// `true` must not be read before the change it would miss was made visible.
    fn is_valid(&self, watch: &Self::Watch) -> bool;

    /// Stops watching; no later [`InvalidationSource::drain`] reports the watch.
    ///
    /// # Errors
    /// Whatever the source reports; the cache logs it and counts it in
    /// [`Stats::unwatch_failures`](crate::Stats::unwatch_failures).
    fn unwatch(&self, watch: Self::Watch) -> io::Result<()>;

    /// A counter that moves whenever a watch turns invalid: when it equals the value seen before
    /// the last [`InvalidationSource::drain`], there is nothing to drain.
    fn generation(&self) -> u64;

    /// Calls `on_invalidated(cookie)` for every watch that turned invalid and was not yet reported.
    /// Never blocks.
    ///
    /// # Errors
    /// Whatever the source reports.
    fn drain(&self, on_invalidated: &mut dyn FnMut(u64)) -> io::Result<()>;
}

/// The invalidation source of a system that needs none: for [`Policy::Odp`](crate::Policy::Odp),
/// [`Policy::Off`](crate::Policy::Off) and the trust negative control.
#[derive(Debug, Default, Clone, Copy)]
pub struct NeverWatches;

impl InvalidationSource for NeverWatches {
    type Watch = Infallible;

    fn watch(&self, _addr: usize, _len: usize, _cookie: u64) -> io::Result<Infallible> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no invalidation source: this policy must not watch",
        ))
    }

    fn is_valid(&self, watch: &Infallible) -> bool {
        match *watch {}
    }

    fn unwatch(&self, watch: Infallible) -> io::Result<()> {
        match watch {}
    }

    fn generation(&self) -> u64 {
        0
    }

    fn drain(&self, _on_invalidated: &mut dyn FnMut(u64)) -> io::Result<()> {
        Ok(())
    }
}
