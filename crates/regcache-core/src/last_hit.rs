//! Each thread's last hit: a thread asking again for a buffer it just got skips the index.
//!
//! A thread remembers one entry, of any cache, with the index version it was found in. It
//! serves a request only while that cache's index still has that version (so the entry was not
//! evicted, invalidated through a drain, or merged away since), and the cache checks the
//! entry's watch on every such hit as on any other.
//!
//! The last hit holds a [`Weak`]: it keeps neither the registration nor the cache's bookkeeping
//! alive (eviction, which looks for entries only the index holds, does not see it), only the
//! memory block of one entry per thread once that entry is gone.

use std::cell::Cell;
use std::mem::ManuallyDrop;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};

use crate::sync::{atomic_static, const_thread_local, AtomicU64};

atomic_static! {
    /// Source of index versions, shared by all caches, so that a version names one cache's
    /// index (and so one entry type) and a last hit never matches a cache its entry does not
    /// belong to.
    static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);
}

/// A version no cache has had yet.
pub(crate) fn next_version() -> u64 {
    NEXT_VERSION.fetch_add(1, Relaxed)
}

/// A `Weak<E>` with its type erased: a thread-local cannot be generic over the cache's types.
/// Upgrading it back through a `dyn Any` would cost a virtual call and a type comparison on
/// every hit; the version the last hit was filled under already tells the type.
#[derive(Clone, Copy)]
struct ErasedWeak {
    /// From `Weak::<E>::into_raw`; owns that weak reference.
    raw: *const (),
    /// `release::<E>`, for the same `E`.
    release: unsafe fn(*const ()),
}

/// # Safety
/// `raw` comes from `Weak::<E>::into_raw` and still owns its weak reference, which this
/// consumes.
unsafe fn release<E>(raw: *const ()) {
    // SAFETY: by the caller's contract `raw` is an owned `Weak<E>` turned into a pointer.
    drop(unsafe { Weak::from_raw(raw.cast::<E>()) });
}

impl ErasedWeak {
    fn new<E: Send + Sync>(entry: &Arc<E>) -> Self {
        Self {
            raw: Weak::into_raw(Arc::downgrade(entry)).cast(),
            release: release::<E>,
        }
    }

    /// Gives the weak reference back.
    fn release(self) {
        // SAFETY: `raw` and `release` were made together by `new` for one `E`, and every
        // `ErasedWeak` is released once: the last hit holds it until it replaces or drops it.
        unsafe { (self.release)(self.raw) }
    }
}

struct LastHit {
    /// Version of the index the entry was found in; 0 (never a version) when empty.
    version: Cell<u64>,
    start: Cell<usize>,
    end: Cell<usize>,
    entry: Cell<Option<ErasedWeak>>,
    /// Address of the entry of this thread's previous index hit, compared and never
    /// dereferenced: only a second hit in a row on one entry fills the last hit, so that requests
    /// spread over many buffers do not pay for refilling it on every hit.
    candidate: Cell<usize>,
}

impl Drop for LastHit {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            entry.release();
        }
    }
}

const_thread_local! {
    static LAST_HIT: LastHit = LastHit {
        version: Cell::new(0),
        start: Cell::new(0),
        end: Cell::new(0),
        entry: Cell::new(None),
        candidate: Cell::new(0),
    };
}

/// The entry this thread last hit if it covers `[start, end)` and was found in index
/// `version`. `None` as well when the entry is gone or the thread is exiting.
///
/// # Safety
/// Every [`record`] under `version` was called with this `E`. (A cache passes versions from
/// [`next_version`] that only it publishes, and one entry type.)
pub(crate) unsafe fn covering<E: Send + Sync>(
    version: u64,
    start: usize,
    end: usize,
) -> Option<Arc<E>> {
    LAST_HIT
        .try_with(|last| {
            if last.version.get() != version || start < last.start.get() || end > last.end.get() {
                return None;
            }
            let entry = last.entry.get()?;
            // SAFETY: the last hit's version is `version`, so `record::<E>` filled it (caller's
            // contract) with `Weak::<E>::into_raw`, still owned by the last. `ManuallyDrop`
            // leaves that reference to the last hit; `upgrade` only adds a strong one when the
            // entry is alive.
            let weak = ManuallyDrop::new(unsafe { Weak::from_raw(entry.raw.cast::<E>()) });
            weak.upgrade()
        })
        .ok()
        .flatten()
}

/// Records an index hit on `entry`, covering `[start, end)`, found in index `version`; fills
/// the last hit when the thread's previous index hit was on the same entry.
///
/// # Safety
/// Every [`covering`] and [`record`] under `version` uses this `E`.
pub(crate) unsafe fn record<E: Send + Sync>(
    version: u64,
    start: usize,
    end: usize,
    entry: &Arc<E>,
) {
    let address = Arc::as_ptr(entry).addr();
    // A thread exiting has no last hit left to fill; nothing is lost.
    let _ = LAST_HIT.try_with(|last| {
        if last.candidate.replace(address) != address {
            return;
        }
        last.version.set(version);
        last.start.set(start);
        last.end.set(end);
        // The replaced `Weak` may free the block of an entry that is already deregistered:
        // at most one such free per refill, never a deregistration.
        if let Some(replaced) = last.entry.replace(Some(ErasedWeak::new(entry))) {
            replaced.release();
        }
    });
}

/// Model checks (`cargo xtask loom`): a thread filling and using its last hit while another
/// thread removes the entry from a one-entry "index" (a loom mutex, as the cache's lock and
/// hazard pointer order it) and publishes a new version, as a writer of the cache does. Every
/// interleaving of the index, the version and the threads' exits with at most 3 preemptions is
/// explored (the entry's reference counts are std atomics, which loom runs but does not
/// reorder).
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::atomic::{
        AtomicU64,
        Ordering::{Acquire, Release},
    };
    use loom::sync::Mutex;
    use loom::thread;
    use std::sync::atomic::AtomicUsize;

    /// An entry that counts its drops.
    struct Entry {
        drops: Arc<AtomicUsize>,
    }

    impl Drop for Entry {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Relaxed);
        }
    }

    struct Cache {
        version: AtomicU64,
        index: Mutex<Option<Arc<Entry>>>,
    }

    impl Cache {
        /// A lookup as the cache's: the version first, then the last hit, else the index
        /// (recorded as an index hit).
        fn lookup(&self) -> Option<Arc<Entry>> {
            let version = self.version.load(Acquire);
            // SAFETY: this model records only `Entry` under its versions.
            if let Some(hit) = unsafe { covering::<Entry>(version, 0, 1) } {
                return Some(hit);
            }
            let entry = self.index.lock().expect("not poisoned").clone()?;
            // SAFETY: as above.
            unsafe { record(version, 0, 1, &entry) };
            Some(entry)
        }
    }

    /// The reader looks up three times (the second fills its last hit, the third may use it)
    /// while the writer removes the entry from the index and publishes a new version: a hit
    /// is the entry, never once the removal's version was read (the last hit's version check,
    /// which the entry still being alive would not stop), and a miss only once the entry left
    /// the index. When the reader has exited, the last hit holds no weak reference any more
    /// (the thread-local's destructor gave it back) and the entry is dropped exactly once.
    #[test]
    fn loom_last_hit_never_outlives_its_version_nor_leaks() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let drops = Arc::new(AtomicUsize::new(0));
            let entry = Arc::new(Entry {
                drops: Arc::clone(&drops),
            });
            let first = next_version();
            let cache = Arc::new(Cache {
                version: AtomicU64::new(first),
                index: Mutex::new(Some(entry)),
            });
            let reader = {
                let cache = Arc::clone(&cache);
                thread::spawn(move || {
                    for _ in 0..3 {
                        let seen = cache.version.load(Acquire);
                        match cache.lookup() {
                            Some(hit) => {
                                assert_eq!(hit.drops.load(Relaxed), 0);
                                assert_eq!(seen, first, "a hit after the removal was published");
                            }
                            None => assert!(
                                cache.index.lock().expect("not poisoned").is_none(),
                                "a miss while the entry was indexed"
                            ),
                        }
                    }
                })
            };
            let removed = cache.index.lock().expect("not poisoned").take();
            cache.version.store(next_version(), Release);
            reader.join().expect("the reader panicked");
            let removed = removed.expect("the entry was indexed");
            assert_eq!(
                Arc::weak_count(&removed),
                0,
                "the last hit kept a weak reference after its thread exited"
            );
            drop(removed);
            assert_eq!(drops.load(Relaxed), 1, "the entry was dropped once");
        });
    }
}
