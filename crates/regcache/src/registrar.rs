//! [`VerbsRegistrar`]: the cache's registrar over libibverbs.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use verbs::{AccessFlags, Prefetch, ProtectionDomain};

use regcache_core::{Access, MemoryRegion, Registrar};

/// A libibverbs registration as the cache holds it (a newtype: the core's [`MemoryRegion`]
/// trait and [`verbs::MemoryRegion`] live in two other crates).
#[derive(Debug)]
pub struct VerbsRegion(verbs::MemoryRegion);

impl MemoryRegion for VerbsRegion {
    fn lkey(&self) -> u32 {
        self.0.lkey()
    }

    fn rkey(&self) -> u32 {
        self.0.rkey()
    }
}

/// Registers memory with `ibv_reg_mr` in one protection domain. ODP registrations are
/// prefetched with `ibv_advise_mr` (synchronously), so their first use does not fault; a
/// provider without advice (`EOPNOTSUPP`) is asked once and then left alone.
#[derive(Debug)]
pub struct VerbsRegistrar {
    pd: Arc<ProtectionDomain>,
    /// Cleared when the provider answers `EOPNOTSUPP` to a prefetch.
    advice_supported: AtomicBool,
}

impl VerbsRegistrar {
    /// A registrar for `pd`.
    ///
    /// # Safety
    ///
    /// Every range this registrar is asked to register (through [`Registrar::register`], e.g.
    /// by a [`Cache`](regcache_core::Cache) that owns it) must satisfy the contract of
    /// [`verbs::MemoryRegion::register`] for as long as the registration lives: no Rust
    /// reference that assumes the bytes unchanged or exclusively owned may cover a part the
    /// device can write while it can write it.
    #[must_use]
    pub unsafe fn new(pd: Arc<ProtectionDomain>) -> Self {
        Self {
            pd,
            advice_supported: AtomicBool::new(true),
        }
    }

    /// The protection domain registrations belong to.
    #[must_use]
    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.pd
    }

    /// Asks the device to map an ODP region now. Advisory: a failure only means the pages
    /// are faulted in on first access instead.
    fn prefetch(&self, region: &verbs::MemoryRegion, access: Access) {
        if !self.advice_supported.load(Relaxed) {
            return;
        }
        let advice = if access.device_writes() {
            Prefetch::Write
        } else {
            Prefetch::Read
        };
        match region.prefetch(0, region.len(), advice, true) {
            Ok(true) => {}
            Ok(false) => {
                self.advice_supported.store(false, Relaxed);
                tracing::debug!(
                    device = self.pd.context().name(),
                    "regcache: ibv_advise_mr is not supported; ODP pages fault in on first use"
                );
            }
            Err(err) => tracing::debug!(
                len = region.len(),
                %err,
                "regcache: ODP prefetch failed; pages fault in on first use"
            ),
        }
    }
}

impl Registrar for VerbsRegistrar {
    type Region = VerbsRegion;

    fn register(&self, addr: usize, len: usize, access: Access) -> io::Result<VerbsRegion> {
        let flags = access_flags(access)?;
        // SAFETY: the range's contract is the one `VerbsRegistrar::new`'s caller took on for
        // every range this registrar is asked to register; the PD is alive (we hold an `Arc`).
        let region = unsafe {
            verbs::MemoryRegion::register(
                &self.pd,
                std::ptr::with_exposed_provenance_mut(addr),
                len,
                flags,
            )
        }
        .map_err(io_error)?;
        if access.contains(Access::ON_DEMAND) {
            self.prefetch(&region, access);
        }
        Ok(VerbsRegion(region))
    }

    /// Drops the region: `ibv_dereg_mr` runs in its `Drop`, which logs a failure and counts it
    /// in [`verbs::drop_failures`], so this never reports one.
    fn deregister(&self, region: VerbsRegion) -> io::Result<()> {
        drop(region);
        Ok(())
    }
}

/// The verbs flags of `access`: the same `IBV_ACCESS_*` bits; `EINVAL` for rights the verbs
/// layer does not offer (atomics).
fn access_flags(access: Access) -> io::Result<AccessFlags> {
    AccessFlags::try_from(access.bits()).map_err(|err| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("access {access:?}: {err}"),
        )
    })
}

/// A verbs error as the `io::Error` the [`Registrar`] trait speaks, keeping the errno (the cache
/// adds the address and length).
pub(crate) fn io_error(err: verbs::Error) -> io::Error {
    match err.os_error() {
        Some(errno) => io::Error::from_raw_os_error(errno),
        None => io::Error::other(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_maps_bit_for_bit() {
        let all =
            Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ | Access::ON_DEMAND;
        let flags = access_flags(all).unwrap();
        assert_eq!(flags.bits(), all.bits());
        assert_eq!(
            flags,
            AccessFlags::LOCAL_WRITE
                | AccessFlags::REMOTE_WRITE
                | AccessFlags::REMOTE_READ
                | AccessFlags::ON_DEMAND
        );
        assert_eq!(
            access_flags(Access::LOCAL_READ_ONLY).unwrap(),
            AccessFlags::LOCAL_READ
        );
    }

    #[test]
    fn atomics_are_refused() {
        let err = access_flags(Access::REMOTE_ATOMIC | Access::LOCAL_WRITE).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn verbs_errors_keep_their_errno() {
        let err = verbs::Error::RegisterMr {
            len: 4096,
            source: io::Error::from_raw_os_error(libc::EFAULT),
        };
        assert_eq!(io_error(err).raw_os_error(), Some(libc::EFAULT));
        let timeout = verbs::Error::CompletionTimeout {
            after: std::time::Duration::from_secs(1),
        };
        assert_eq!(io_error(timeout).raw_os_error(), None);
    }
}
