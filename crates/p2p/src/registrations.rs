//! The one place that talks to the registration cache: user buffers of zero-copy eager and
//! rendezvous messages.

use std::sync::Arc;

use regcache::{Access, Config, RdmaCache, RdmaRegistration};
use verbs::{Mtu, ProtectionDomain, Sge};

use crate::error::{Error, Result};

/// A registered user buffer, kept registered while held.
#[derive(Debug)]
pub(crate) struct UserRegistration {
    registration: RdmaRegistration,
}

impl UserRegistration {
    /// Scatter/gather element for `len` bytes at `ptr`, which lie inside the registration.
    pub(crate) fn sge(&self, ptr: *const u8, len: u32) -> Sge {
        Sge {
            addr: ptr.addr() as u64,
            length: len,
            lkey: self.registration.lkey(),
        }
    }

    /// Key for a peer's RDMA READ.
    pub(crate) fn rkey(&self) -> u32 {
        self.registration.rkey()
    }
}

/// The registration cache of user buffers in the communicator's protection domain.
#[derive(Debug)]
pub(crate) struct UserBufferCache {
    cache: RdmaCache,
}

impl UserBufferCache {
    /// A cache configured from `REGCACHE_*` (see [`regcache::Config::from_env`]); unless
    /// `REGCACHE_ODP_PROBE_MTU` says otherwise, the ODP self-test runs at `mtu`, the path MTU
    /// of the communicator's queue pairs.
    pub(crate) fn from_env(pd: Arc<ProtectionDomain>, mtu: Mtu) -> Result<Self> {
        let config = Config::from_env().map_err(|source| Error::Cache { source })?;
        let cache = RdmaCache::new(pd, config, mtu).map_err(|source| Error::Cache { source })?;
        Ok(Self { cache })
    }

    /// A cache that never learns of munmap ([`RdmaCache::trust_without_invalidation`]): the
    /// negative control of the stale-buffer tests.
    #[cfg(feature = "testing")]
    pub(crate) fn trust_without_invalidation(pd: Arc<ProtectionDomain>) -> Self {
        let cache = RdmaCache::trust_without_invalidation(pd, regcache::Limits::default());
        Self { cache }
    }

    /// A registration of a send buffer the peer will RDMA READ.
    ///
    /// # Safety
    /// `[ptr, ptr + len)` must be readable memory; the device only reads it.
    pub(crate) unsafe fn for_remote_read(
        &self,
        ptr: *const u8,
        len: usize,
    ) -> Result<UserRegistration> {
        // SAFETY: with REMOTE_READ only, neither the device nor a peer writes the registered
        // pages, so no Rust reference to them can be invalidated.
        unsafe { self.register(ptr, len, Access::REMOTE_READ) }
    }

    /// A registration of a send buffer this rank SENDs from (zero-copy eager).
    ///
    /// # Safety
    /// `[ptr, ptr + len)` must be readable memory; the device only reads it.
    pub(crate) unsafe fn for_send(&self, ptr: *const u8, len: usize) -> Result<UserRegistration> {
        // SAFETY: with local read access only, the device never writes the registered pages,
        // and the rkey of this registration is never handed to a peer.
        unsafe { self.register(ptr, len, Access::LOCAL_READ_ONLY) }
    }

    /// A registration of a receive buffer this rank RDMA-READs into.
    ///
    /// # Safety
    /// `[ptr, ptr + len)` must be writable memory to which no Rust reference is used until the
    /// READ into it completed; the device writes only the ranges of work requests this crate
    /// posts (the rkey is never handed out, and there is no remote write right).
    pub(crate) unsafe fn for_local_write(
        &self,
        ptr: *mut u8,
        len: usize,
    ) -> Result<UserRegistration> {
        // SAFETY: the caller's contract above is the cache's contract for the pages the device
        // can write: only the posted READ's range, which the caller set aside.
        unsafe { self.register(ptr, len, Access::LOCAL_WRITE) }
    }

    /// # Safety
    /// As [`RdmaCache::cached_reg`].
    unsafe fn register(
        &self,
        ptr: *const u8,
        len: usize,
        access: Access,
    ) -> Result<UserRegistration> {
        // SAFETY: forwarded from the callers.
        let registration = unsafe { self.cache.cached_reg(ptr, len, access) }
            .map_err(|source| Error::Register { len, source })?;
        Ok(UserRegistration { registration })
    }

    /// The cache's policy, for diagnostics.
    pub(crate) fn policy(&self) -> regcache::Policy {
        self.cache.policy()
    }
}
