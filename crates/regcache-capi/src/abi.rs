//! The types and constants C sees: `#[repr(C)]`, fixed-width fields, reserved space that must be
//! zero, so later versions can add fields without breaking binaries built against this one.

use std::ffi::c_int;
use std::marker::{PhantomData, PhantomPinned};

/// A registration cache (`struct regcache`), opaque to C: only ever handled by pointer.
#[allow(missing_debug_implementations)]
pub struct Cache {
    _opaque: [u8; 0],
    _not_send_sync_unpin: PhantomData<(*mut u8, PhantomPinned)>,
}

/// Returned (negated) when a Rust panic was caught inside the library: a bug in regcache, never
/// the caller's fault; `regcache_last_error` has the panic's message. Linux's `ENOTRECOVERABLE`
/// (a literal, so cbindgen can write it into the header).
pub const REGCACHE_EPANIC: c_int = 131;

/// The cache chooses: ODP where the device passes its self-test, else pinned registrations
/// invalidated through regwatch, else no cache.
pub const REGCACHE_MODE_AUTO: u32 = 0;
/// On-demand paging only (or ODP for device reads with regwatch for the rest); creating the
/// cache fails with `-EOPNOTSUPP` when the device's ODP does not pass the self-test.
pub const REGCACHE_MODE_ODP: u32 = 1;
/// Pinned registrations invalidated through regwatch; `-EOPNOTSUPP` without the module.
pub const REGCACHE_MODE_PINNED: u32 = 2;
/// No cache: every `regcache_register` registers, every `regcache_release` deregisters.
pub const REGCACHE_MODE_OFF: u32 = 3;

/// `regcache_stats.odp_self_test`: no self-test ran (a mode that does not use ODP).
pub const REGCACHE_ODP_NOT_RUN: u32 = 0;
/// The self-test ran and ODP is not trusted (or the device has no ODP for RC).
pub const REGCACHE_ODP_NONE: u32 = 1;
/// ODP is trusted only for memory the device reads.
pub const REGCACHE_ODP_DEVICE_READS_ONLY: u32 = 2;
/// ODP is trusted for reads and writes.
pub const REGCACHE_ODP_FULL: u32 = 3;

/// How to build a cache. Fill it with `regcache_config_init` (the defaults, not the environment),
/// then change fields.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// One of `REGCACHE_MODE_*` (`REGCACHE_MODE`).
    pub mode: u32,
    /// Path MTU in bytes at which the ODP self-test runs: the smallest path MTU of the QPs that
    /// will use the registrations; 256, 512, 1024, 2048 or 4096 (`REGCACHE_ODP_PROBE_MTU`), or 0
    /// (the default) for the active MTU of the device's first port.
    pub odp_probe_mtu: u32,
    /// Live registrations above which idle ones are deregistered (`REGCACHE_MAX_REGIONS`).
    pub max_regions: u64,
    /// Registered bytes above which idle registrations are deregistered (`REGCACHE_MAX_BYTES`).
    pub max_bytes: u64,
    /// Largest registration a merge of neighbouring requests may make
    /// (`REGCACHE_MAX_MERGE_BYTES`).
    pub max_merge_bytes: u64,
    /// Must be zero.
    pub reserved: [u64; 4],
}

/// A registration handed out by `regcache_register` (`struct regcache_region`). The fields are
/// read-only to the caller; the handle stays valid until `regcache_release`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Region {
    /// Start of the registered memory region: at or below the requested address.
    pub addr: u64,
    /// Length of the registered region: it covers the whole requested range.
    pub length: u64,
    /// Local key, for work requests on any part of `[addr, addr + length)`.
    pub lkey: u32,
    /// Remote key, for peers.
    pub rkey: u32,
    /// `IBV_ACCESS_*` rights of the region: those requested or more; holds
    /// `IBV_ACCESS_ON_DEMAND` for an ODP registration.
    pub access: u32,
    /// Zero.
    pub reserved: u32,
}

/// Counters of a cache (`struct regcache_stats`). Each is read on its own, so a copy taken while
/// other threads work may mix moments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Requests served from the lock-free lookup.
    pub hits: u64,
    /// Requests that took the locked path (most of them register).
    pub misses: u64,
    /// Registrations that absorbed overlapping or adjacent cached registrations.
    pub merges: u64,
    /// Idle registrations deregistered to respect the limits or by `regcache_flush`.
    pub evictions: u64,
    /// Cached registrations dropped because their pages changed (munmap, mremap, ...).
    pub invalidations: u64,
    /// Registrations thrown away because the pages changed while they were being registered.
    pub registration_retries: u64,
    /// Registrations thrown away because another thread, registering outside the lock at the
    /// same time, published one that serves the same request.
    pub duplicate_registrations: u64,
    /// Deregistrations libibverbs reported as failed.
    pub deregister_failures: u64,
    /// Unwatches regwatch reported as failed.
    pub unwatch_failures: u64,
    /// Live registrations, cached or not.
    pub regions: u64,
    /// Live registrations held by at least one handle.
    pub regions_in_use: u64,
    /// Bytes covered by the live registrations.
    pub bytes_registered: u64,
    /// Handles given out by `regcache_register` and not yet released.
    pub handles: u64,
    /// One of `REGCACHE_ODP_*`: the ODP self-test the cache was created after.
    pub odp_self_test: u32,
    /// Zero.
    pub reserved: u32,
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_panic_code_is_enotrecoverable() {
        assert_eq!(super::REGCACHE_EPANIC, libc::ENOTRECOVERABLE);
    }
}
