//! Which caches and handles are live. C hands back pointers that may be NULL, stale, of another
//! cache or garbage; every one is looked up here before use, so such a pointer gets `-EINVAL`
//! instead of being dereferenced. Like a file descriptor, a pointer whose object was destroyed
//! may come back for a new object at the same address: using it then reaches the new one.
//!
//! # Locks
//!
//! [`CACHES`] (a read-write lock) maps live cache pointers to their state; calls take it for
//! reading only long enough to clone the state's `Arc`, so a slow registration never blocks
//! another cache's creation or destruction. Each cache's `handles` mutex protects its set of
//! live handles and its `destroyed` flag; it is held for set operations only, never across
//! a registration or deregistration.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use crate::abi::{Cache, Region};
use crate::backend::{Backend, Held};
use crate::failure::Failure;

/// Every live cache, by the address C knows it by (its state's).
static CACHES: RwLock<BTreeMap<usize, Arc<CacheState>>> = RwLock::new(BTreeMap::new());

/// A handle as allocated: the public part first (`repr(C)`), so a pointer to the handle is a
/// pointer to its [`Region`], which is all C sees.
#[repr(C)]
struct Handle {
    region: Region,
    /// Keeps the registration alive until the handle is released.
    _held: Held,
}

#[derive(Default)]
struct Handles {
    /// Addresses of the `Box<Handle>`s given out and not yet released.
    live: HashSet<usize>,
    /// Set by `regcache_destroy`: no handle is given out any more.
    destroyed: bool,
}

/// One cache as the C API keeps it.
pub(crate) struct CacheState {
    pub(crate) backend: Backend,
    handles: Mutex<Handles>,
}

impl CacheState {
    fn handles(&self) -> MutexGuard<'_, Handles> {
        // Poisoning cannot leave the set inconsistent: it only holds addresses.
        self.handles.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new handle holding `held`, or `-EINVAL` when the cache was destroyed meanwhile.
    pub(crate) fn hand_out(&self, held: Held, region: Region) -> Result<*const Region, Failure> {
        let handle = Box::into_raw(Box::new(Handle {
            region,
            _held: held,
        }));
        let mut handles = self.handles();
        if handles.destroyed {
            drop(handles);
            // SAFETY: allocated just above and never given out.
            drop(unsafe { Box::from_raw(handle) });
            return Err(Failure::invalid("the cache was destroyed during the call"));
        }
        handles.live.insert(handle as usize);
        Ok(handle.cast_const().cast())
    }

    /// Releases a handle of this cache, deregistering what only it held (in mode off, or an
    /// invalidated registration).
    pub(crate) fn take_back(&self, region: *const Region) -> Result<(), Failure> {
        if !self.handles().live.remove(&(region as usize)) {
            return Err(Failure::invalid(
                "not a live handle of this cache (released already, or of another cache)",
            ));
        }
        // SAFETY: the address was in the live set, so it came from `Box::into_raw` in
        // `hand_out` of this cache and leaves the set exactly once, here.
        drop(unsafe { Box::from_raw(region.cast_mut().cast::<Handle>()) });
        Ok(())
    }

    /// Handles given out and not yet released.
    pub(crate) fn handle_count(&self) -> usize {
        self.handles().live.len()
    }
}

/// Makes `backend` a live cache and returns the pointer C knows it by.
pub(crate) fn add(backend: Backend) -> *mut Cache {
    let state = Arc::new(CacheState {
        backend,
        handles: Mutex::default(),
    });
    let key = Arc::as_ptr(&state) as usize;
    CACHES
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key, state);
    key as *mut Cache
}

/// The live cache C calls `cache`, or `-EINVAL`.
pub(crate) fn find(cache: *const Cache) -> Result<Arc<CacheState>, Failure> {
    if cache.is_null() {
        return Err(Failure::invalid("cache is NULL"));
    }
    CACHES
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&(cache as usize))
        .cloned()
        .ok_or_else(|| Failure::invalid("not a live cache (destroyed already, or never created)"))
}

/// Destroys `cache` unless handles are live (`-EBUSY`). Its registrations are deregistered once
/// calls still running on it (a caller's bug the header warns about) have returned.
pub(crate) fn destroy(cache: *const Cache) -> Result<(), Failure> {
    let state = find(cache)?;
    {
        let mut handles = state.handles();
        if handles.destroyed {
            return Err(Failure::invalid(
                "the cache is being destroyed by another call",
            ));
        }
        if !handles.live.is_empty() {
            return Err(Failure::new(
                libc::EBUSY,
                format!("{} handles were not released", handles.live.len()),
            ));
        }
        handles.destroyed = true;
    }
    CACHES
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&(cache as usize));
    Ok(())
}
