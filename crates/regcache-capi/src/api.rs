//! The exported functions. Each body runs inside [`guard`], so an error is a negative errno and
//! a Rust panic is `-REGCACHE_EPANIC`, never an unwind into C.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::ptr::NonNull;

use rdma_sys::ibv_pd;

use crate::abi::{Cache, Config, Region, Stats};
use crate::backend::{self, Backend};
use crate::failure::{self, guard, guard_str, Failure};
use crate::registry;

/// Writes `value` through `out`, or fails with `-EINVAL` naming `what` when `out` is NULL.
///
/// # Safety
///
/// `out` is NULL or valid for a write of `T`.
unsafe fn store<T>(out: *mut T, value: T, what: &str) -> Result<(), Failure> {
    let out = NonNull::new(out).ok_or_else(|| Failure::invalid(format!("{what} is NULL")))?;
    // SAFETY: non-NULL, and valid for a write by the caller's contract.
    unsafe { out.as_ptr().write(value) };
    Ok(())
}

/// Fills `*config` with the defaults (mode auto, 16384 regions, 1 GiB, merges up to 64 MiB, ODP
/// self-test at path MTU 1024). The environment is not read: pass NULL to `regcache_create` for
/// that.
///
/// Returns 0, or `-EINVAL` when `config` is NULL. Any thread.
///
/// # Safety
///
/// `config` is NULL or points to writable memory for a `struct regcache_config`.
#[no_mangle]
pub unsafe extern "C" fn regcache_config_init(config: *mut Config) -> c_int {
    guard("regcache_config_init", || {
        // SAFETY: the caller's contract.
        unsafe { store(config, backend::default_config(), "config") }?;
        Ok(0)
    })
}

/// Creates a registration cache for memory registered in `pd`, and stores it in `*cache`.
///
/// `config` NULL: configured by the environment, as the Rust API (`REGCACHE_MODE` =
/// `auto|odp|pinned|off`, `REGCACHE_MAX_REGIONS`, `REGCACHE_MAX_BYTES`,
/// `REGCACHE_MAX_MERGE_BYTES`, `REGCACHE_ODP_PROBE_MTU`). Modes auto and odp run the ODP
/// self-test first (once per device and MTU in the process; about a second under emulation).
///
/// Ownership: the caller keeps `pd`, which must stay allocated (and its context open) until
/// `regcache_destroy` returned 0; the cache never deallocates it. `config` is only read
/// during the call.
///
/// Threads: any thread; caches are independent of each other.
///
/// Returns 0; `-EINVAL` for a NULL `pd` or `cache`, an invalid configuration field or
/// environment variable (`regcache_last_error` says which); `-EOPNOTSUPP` when an explicit mode
/// needs what the system lacks (odp without a device whose ODP passes the self-test, pinned
/// without the regwatch module); another negative errno when `/dev/regwatch` cannot be used.
/// On failure `*cache` is set to NULL.
///
/// # Safety
///
/// `pd` is NULL or a PD from `ibv_alloc_pd`, `config` is NULL or points to a `struct
/// regcache_config`, `cache` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn regcache_create(
    pd: *mut ibv_pd,
    config: *const Config,
    cache: *mut *mut Cache,
) -> c_int {
    guard("regcache_create", || {
        if cache.is_null() {
            return Err(Failure::invalid("cache is NULL"));
        }
        // SAFETY: non-NULL and writable by the caller's contract; NULL until success.
        unsafe { cache.write(std::ptr::null_mut()) };
        let pd = NonNull::new(pd).ok_or_else(|| Failure::invalid("pd is NULL"))?;
        // SAFETY: NULL or a readable config, by the caller's contract; copied out here.
        let config = unsafe { config.as_ref() };
        // SAFETY: the caller keeps the PD allocated until `regcache_destroy`, which refuses
        // while handles (and so registrations outside the cache) are live.
        let backend = unsafe { Backend::new(pd, config) }?;
        // SAFETY: as above.
        unsafe { cache.write(registry::add(backend)) };
        Ok(0)
    })
}

/// Finds or makes a registration covering `[addr, addr + length)` with at least the
/// `IBV_ACCESS_*` rights in `access` (`IBV_ACCESS_ON_DEMAND` is ignored: the cache's mode
/// decides), and stores a handle to it in `*region`: `addr`, `length`, `lkey`, `rkey` and
/// `access` of the registered memory region, which covers whole pages and may cover more than
/// asked (merged with neighbouring requests).
///
/// A hit takes no lock in the cache and makes no system call. The registration is never stale:
/// when the pages behind a cached range change (munmap, mremap, madvise(DONTNEED), fork
/// copy-on-write), the cache registers the new pages (pinned mode: regwatch told it; ODP: the
/// device follows the page tables).
///
/// Ownership: the handle belongs to the caller until `regcache_release`; its fields stay valid
/// and the region stays registered until then, even if the cache invalidates it meanwhile (a
/// later `regcache_register` of the range then gets a new registration). The memory itself
/// stays the caller's: it may be unmapped while registered.
///
/// Threads: any number of threads may register and release on one cache at once.
///
/// Returns 0; `-EINVAL` for a NULL `cache`, `addr` or `region`, a zero length, a range past the
/// end of the address space, an `access` bit other than LOCAL_WRITE, REMOTE_WRITE, REMOTE_READ,
/// REMOTE_ATOMIC and ON_DEMAND, or a cache that is not live; `-EFAULT` when part of the range is
/// not mapped; `-ENOSPC` when regwatch has no room left; `-EAGAIN` when the pages kept changing
/// during registration; other negative errnos from `ibv_reg_mr` (`-ENOMEM`, `-EPERM`: see
/// `ulimit -l`). On failure `*region` is set to NULL.
///
/// # Safety
///
/// `region` is NULL or writable. `addr` and `length` are only handed to `ibv_reg_mr` (never
/// dereferenced by the cache).
#[no_mangle]
pub unsafe extern "C" fn regcache_register(
    cache: *mut Cache,
    addr: *const c_void,
    length: usize,
    access: c_uint,
    region: *mut *const Region,
) -> c_int {
    guard("regcache_register", || {
        if region.is_null() {
            return Err(Failure::invalid("region is NULL"));
        }
        // SAFETY: non-NULL and writable by the caller's contract; NULL until success.
        unsafe { region.write(std::ptr::null()) };
        let state = registry::find(cache)?;
        if addr.is_null() {
            return Err(Failure::invalid("addr is NULL"));
        }
        let (held, public) = state.backend.register(addr as usize, length, access)?;
        let handle = state.hand_out(held, public)?;
        // SAFETY: as above.
        unsafe { region.write(handle) };
        Ok(0)
    })
}

/// Releases a handle from `regcache_register` on the same cache. The registration stays cached
/// for later hits unless the mode is off, the pages changed, or the limits say it must go;
/// otherwise it is deregistered before this returns, once no other handle holds it.
///
/// Ownership: `region` must not be used after this returned 0.
///
/// Threads: any thread, not only the one that registered.
///
/// Returns 0, or `-EINVAL` for a NULL or dead `cache` or a `region` that is not a live handle
/// of this cache (NULL, released already, or another cache's).
///
/// # Safety
///
/// None beyond passing values from this library: both pointers are looked up before use.
#[no_mangle]
pub unsafe extern "C" fn regcache_release(cache: *mut Cache, region: *const Region) -> c_int {
    guard("regcache_release", || {
        let state = registry::find(cache)?;
        if region.is_null() {
            return Err(Failure::invalid("region is NULL"));
        }
        state.take_back(region)?;
        Ok(0)
    })
}

/// Takes the pending invalidations, then deregisters every cached registration no handle
/// holds (as `ofi_mr_cache_flush`). Handles stay valid.
///
/// Threads: any thread, concurrently with registrations.
///
/// Returns how many registrations were deregistered (0 or more), `-EINVAL` for a NULL or dead
/// `cache`, or the negative errno of reading regwatch.
///
/// # Safety
///
/// None: `cache` is looked up before use.
#[no_mangle]
pub unsafe extern "C" fn regcache_flush(cache: *mut Cache) -> c_int {
    guard("regcache_flush", || {
        let flushed = registry::find(cache)?.backend.flush()?;
        Ok(c_int::try_from(flushed).unwrap_or(c_int::MAX))
    })
}

/// Copies the cache's counters into `*stats`.
///
/// Threads: any thread, concurrently with registrations (each counter is read on its own).
///
/// Returns 0, or `-EINVAL` for a NULL or dead `cache` or a NULL `stats`.
///
/// # Safety
///
/// `stats` is NULL or writable for a `struct regcache_stats`.
#[no_mangle]
pub unsafe extern "C" fn regcache_stats(cache: *mut Cache, stats: *mut Stats) -> c_int {
    guard("regcache_stats", || {
        let state = registry::find(cache)?;
        let counters = Stats {
            handles: state.handle_count() as u64,
            ..state.backend.stats()
        };
        // SAFETY: the caller's contract.
        unsafe { store(stats, counters, "stats") }?;
        Ok(0)
    })
}

/// The mode the cache was asked for: "auto", "odp", "pinned" or "off"; NULL for a NULL or dead
/// `cache`. The string is static: never freed, valid after `regcache_destroy`. Any thread.
///
/// # Safety
///
/// None: `cache` is looked up before use.
#[no_mangle]
pub unsafe extern "C" fn regcache_mode(cache: *mut Cache) -> *const c_char {
    guard_str("regcache_mode", || {
        Ok(registry::find(cache)?.backend.mode())
    })
}

/// What the cache runs: "odp", "odp-for-device-reads" (ODP for registrations the device only
/// reads, pinned with regwatch for the rest), "pinned" or "off"; NULL for a NULL or dead
/// `cache`. The string is static. Any thread.
///
/// # Safety
///
/// None: `cache` is looked up before use.
#[no_mangle]
pub unsafe extern "C" fn regcache_policy(cache: *mut Cache) -> *const c_char {
    guard_str("regcache_policy", || {
        Ok(registry::find(cache)?.backend.policy())
    })
}

/// Destroys the cache: deregisters every cached registration and closes its regwatch
/// descriptor. After 0 the PD may be deallocated and `cache` must not be used (another call
/// with it gets `-EINVAL`, unless a new cache took its address).
///
/// Threads: no other call on this cache may run or start during or after this one.
///
/// Returns 0; `-EBUSY` while handles are not released (the cache stays usable); `-EINVAL` for
/// a NULL or dead `cache`.
///
/// # Safety
///
/// None: `cache` is looked up before use.
#[no_mangle]
pub unsafe extern "C" fn regcache_destroy(cache: *mut Cache) -> c_int {
    guard("regcache_destroy", || {
        registry::destroy(cache)?;
        Ok(0)
    })
}

/// A static sentence for a code returned by this library (0 or negative). Any thread.
#[no_mangle]
pub extern "C" fn regcache_strerror(error: c_int) -> *const c_char {
    failure::describe(error).as_ptr()
}

/// The calling thread's last failure in this library, naming the function and the cause (e.g.
/// "regcache_create: REGCACHE_MODE=\"fast\": expected one of auto, odp, pinned, off"); "" before
/// any. Valid until the thread's next failing call; owned by the library.
#[no_mangle]
pub extern "C" fn regcache_last_error() -> *const c_char {
    failure::last_error()
}
