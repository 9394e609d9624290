//! UCX's registration cache, through the C shim `ucx_shim.c` (no-op registration callbacks,
//! no memory hooks: see the shim's header comment).

use std::ffi::{c_ulong, c_void};
use std::marker::PhantomData;
use std::ptr::NonNull;

/// `struct shim_cache` of the shim.
#[repr(C)]
struct RawCache {
    _opaque: [u8; 0],
    // Not Send, not Sync, not Unpin: the C side owns it.
    _marker: PhantomData<(*mut u8, std::marker::PhantomPinned)>,
}

/// `ucs_rcache_region_t`.
#[repr(C)]
struct RawRegion {
    _opaque: [u8; 0],
    _marker: PhantomData<(*mut u8, std::marker::PhantomPinned)>,
}

extern "C" {
    fn shim_create(max_regions: c_ulong) -> *mut RawCache;
    fn shim_get(cache: *mut RawCache, address: *mut c_void, length: usize) -> *mut RawRegion;
    fn shim_put(cache: *mut RawCache, region: *mut RawRegion);
    fn shim_registrations(cache: *const RawCache) -> c_ulong;
    fn shim_destroy(cache: *mut RawCache);
}

/// A `ucs_rcache_t` whose registration callback does nothing but count.
#[derive(Debug)]
pub struct UcxCache {
    raw: NonNull<RawCache>,
}

impl UcxCache {
    /// A cache that evicts unused regions above `max_regions`; `None` when UCX refuses to
    /// create one (its error is logged by UCX).
    pub fn new(max_regions: usize) -> Option<Self> {
        let max_regions = c_ulong::try_from(max_regions).unwrap_or(c_ulong::MAX);
        // SAFETY: `shim_create` takes a plain integer and returns an owned cache or NULL.
        let raw = unsafe { shim_create(max_regions) };
        NonNull::new(raw).map(|raw| Self { raw })
    }

    /// A region covering `[ptr, ptr + len)`, read-write, released when the guard drops; `None`
    /// when UCX fails.
    pub fn get(&self, ptr: *const u8, len: usize) -> Option<UcxRegion<'_>> {
        // SAFETY: `self.raw` is a live cache (destroyed only in `Drop`). UCX treats the address
        // as a number: with no page-frame check and a no-op registration callback it never
        // dereferences it, so any `ptr` is sound.
        let region = unsafe { shim_get(self.raw.as_ptr(), ptr.cast_mut().cast(), len) };
        NonNull::new(region).map(|raw| UcxRegion { cache: self, raw })
    }

    /// Calls of the registration callback so far (misses that registered).
    pub fn registrations(&self) -> u64 {
        // SAFETY: `self.raw` is a live cache; the shim reads one counter that only the cache's
        // callbacks, running inside `get` on this thread (the type is not `Sync`), write.
        let registrations = unsafe { shim_registrations(self.raw.as_ptr()) };
        // `c_ulong` is at most 64 bits wide on every Linux target.
        registrations as u64
    }
}

impl Drop for UcxCache {
    fn drop(&mut self) {
        // SAFETY: `self.raw` came from `shim_create` and is destroyed once, here. Every
        // `UcxRegion` borrows the cache, so none is outstanding.
        unsafe { shim_destroy(self.raw.as_ptr()) }
    }
}

/// One reference to a UCX region, released on drop.
#[derive(Debug)]
pub struct UcxRegion<'a> {
    cache: &'a UcxCache,
    raw: NonNull<RawRegion>,
}

impl Drop for UcxRegion<'_> {
    fn drop(&mut self) {
        // SAFETY: `self.raw` holds the reference `shim_get` returned on this cache, which the
        // borrow keeps alive; it is released once, here.
        unsafe { shim_put(self.cache.raw.as_ptr(), self.raw.as_ptr()) }
    }
}
