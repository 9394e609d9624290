//! One registration owned by the cache, and the handle callers hold.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};

use crate::access::Access;
use crate::error::{Error, Result};
use crate::policy::Plan;
use crate::stats::Counters;
use crate::traits::{InvalidationSource, MemoryRegion, Registrar};

/// The back end every entry of one cache shares (registrar, invalidation source, counters): it
/// must outlive the cache while handles exist.
pub(crate) struct Backend<R: Registrar, I: InvalidationSource> {
    pub(crate) registrar: R,
    pub(crate) source: I,
    pub(crate) counters: Counters,
    /// Releases of entries dropped while the cache's lock was held (see [`DeferReleases`]).
    deferred: Mutex<Vec<Release<R, I>>>,
    /// Deferred releases holding a watch, counted when deferred and again once unwatched: a
    /// miss that finds no watch room while another thread still gives one back waits for it
    /// ([`Backend::watch_given_back_since`]) instead of failing.
    unwatches_deferred: AtomicU64,
    unwatches_done: AtomicU64,
}

/// What an entry hands back when its last reference drops.
struct Release<R: Registrar, I: InvalidationSource> {
    start: usize,
    len: usize,
    region: Option<R::Region>,
    watch: Option<I::Watch>,
}

thread_local! {
    /// The address of the back end whose cache's lock this thread holds (`DeferReleases`), or
    /// null. Const-initialised and without Drop, like the hit counter's stripe.
    static DEFERRING: Cell<*const ()> = const { Cell::new(std::ptr::null()) };
}

impl<R: Registrar, I: InvalidationSource> Backend<R, I> {
    pub(crate) fn new(registrar: R, source: I) -> Self {
        Self {
            registrar,
            source,
            counters: Counters::default(),
            deferred: Mutex::new(Vec::new()),
            unwatches_deferred: AtomicU64::new(0),
            unwatches_done: AtomicU64::new(0),
        }
    }

    /// How many deferred unwatches have finished: the mark a caller about to watch passes to
    /// [`Backend::watch_given_back_since`] should the watch find no room.
    pub(crate) fn unwatches_done(&self) -> u64 {
        self.unwatches_done.load(SeqCst)
    }

    /// Whether a watch was given back by a deferred release since `mark`
    /// ([`Backend::unwatches_done`]), waiting for one while another thread is still making
    /// such an unwatch; `false` when none finished since and none is under way.
    ///
    /// Both counts only grow, `done` never past `deferred`, each raised after the step it
    /// counts (`SeqCst`). Reading `done` and then `deferred` equal means nothing was under way
    /// at the second read. A deferred unwatch is made by the thread that deferred it right
    /// after unlocking, never waiting on this one, so the wait ends.
    pub(crate) fn watch_given_back_since(&self, mark: u64) -> bool {
        let done = self.unwatches_done.load(SeqCst);
        if done != mark {
            return true;
        }
        if self.unwatches_deferred.load(SeqCst) == done {
            return false;
        }
        while self.unwatches_done.load(SeqCst) == mark {
            std::thread::yield_now();
        }
        true
    }

    /// Until the guard drops, the entries of this back end whose last reference this thread
    /// drops leave their deregistration and unwatch to the guard's drop. The cache holds one
    /// beside its state lock, dropped after it, so that they run without the lock.
    pub(crate) fn defer_releases(&self) -> DeferReleases<'_, R, I> {
        let outer = DEFERRING.with(|deferring| deferring.replace(self.address()));
        DeferReleases {
            backend: self,
            outer,
        }
    }

    fn address(&self) -> *const () {
        std::ptr::from_ref(self).cast()
    }

    fn deregister(&self, release: Release<R, I>) {
        let Release {
            start,
            len,
            region,
            watch,
        } = release;
        if let Some(region) = region {
            if let Err(err) = self.registrar.deregister(region) {
                Counters::add(&self.counters.deregister_failures, 1);
                tracing::warn!(addr = start, len, %err, "regcache: deregistration failed");
            }
        }
        if let Some(watch) = watch {
            self.unwatch(watch, start);
        }
    }

    fn unwatch(&self, watch: I::Watch, start: usize) {
        if let Err(err) = self.source.unwatch(watch) {
            Counters::add(&self.counters.unwatch_failures, 1);
            tracing::warn!(addr = start, %err, "regcache: unwatch failed");
        }
    }
}

/// See [`Backend::defer_releases`].
pub(crate) struct DeferReleases<'a, R: Registrar, I: InvalidationSource> {
    backend: &'a Backend<R, I>,
    /// What `DEFERRING` held before (another cache's back end, when a call under one cache's
    /// lock reaches another cache).
    outer: *const (),
}

impl<R: Registrar, I: InvalidationSource> Drop for DeferReleases<'_, R, I> {
    fn drop(&mut self) {
        DEFERRING.with(|deferring| deferring.set(self.outer));
        let deferred = std::mem::take(
            &mut *self
                .backend
                .deferred
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for release in deferred {
            let watched = release.watch.is_some();
            self.backend.deregister(release);
            if watched {
                self.backend.unwatches_done.fetch_add(1, SeqCst);
            }
        }
    }
}

/// A live registration: its region, the watch guarding it, and its LRU stamp. Dropping the last
/// reference deregisters and unwatches, so a region can never be released under a handle.
pub(crate) struct Entry<R: Registrar, I: InvalidationSource> {
    pub(crate) start: usize,
    pub(crate) len: usize,
    /// As registered, including [`Access::ON_DEMAND`] for ODP registrations.
    pub(crate) access: Access,
    lkey: u32,
    rkey: u32,
    last_used: AtomicU64,
    watch: Option<I::Watch>,
    /// `Some` until `Drop` hands it back to the registrar.
    region: Option<R::Region>,
    backend: Arc<Backend<R, I>>,
}

impl<R: Registrar, I: InvalidationSource> Entry<R, I> {
    /// Watches (when the plan says so) and then registers `[start, start + len)`. The watch comes
    /// first so that a change during registration shows in [`Entry::is_valid`] afterwards.
    ///
    /// The cookie is `start`: the index holds at most one entry per start, and an event whose
    /// entry already left the index is recognised by the indexed entry still being valid.
    pub(crate) fn register(
        backend: &Arc<Backend<R, I>>,
        start: usize,
        len: usize,
        plan: Plan,
        last_used: u64,
    ) -> Result<Self> {
        let watch = plan
            .watched
            .then(|| backend.source.watch(start, len, start as u64))
            .transpose()
            .map_err(|source| Error::Watch {
                addr: start,
                len,
                source,
            })?;
        let region = match backend.registrar.register(start, len, plan.access) {
            Ok(region) => region,
            Err(source) => {
                if let Some(watch) = watch {
                    backend.unwatch(watch, start);
                }
                return Err(Error::Register {
                    addr: start,
                    len,
                    source,
                });
            }
        };
        backend.counters.region_added(len);
        Ok(Self {
            start,
            len,
            access: plan.access,
            lkey: region.lkey(),
            rkey: region.rkey(),
            last_used: AtomicU64::new(last_used),
            watch,
            region: Some(region),
            backend: Arc::clone(backend),
        })
    }

    pub(crate) fn end(&self) -> usize {
        self.start + self.len
    }

    /// Whether the pages are still those that were registered (always, for unwatched entries).
    pub(crate) fn is_valid(&self) -> bool {
        self.watch
            .as_ref()
            .is_none_or(|watch| self.backend.source.is_valid(watch))
    }

    /// Whether a request for `access` may use this registration.
    pub(crate) fn serves(&self, access: Access) -> bool {
        self.access
            .without(Access::ON_DEMAND)
            .contains(access.without(Access::ON_DEMAND))
    }

    pub(crate) fn touch(&self, now: u64) {
        self.last_used.store(now, Relaxed);
    }

    pub(crate) fn last_used(&self) -> u64 {
        self.last_used.load(Relaxed)
    }
}

impl<R: Registrar, I: InvalidationSource> Drop for Entry<R, I> {
    fn drop(&mut self) {
        if self.region.is_some() {
            // Counted at once, so that the limits the locked path checks next see it gone.
            self.backend.counters.region_removed(self.len);
        }
        let release = Release {
            start: self.start,
            len: self.len,
            region: self.region.take(),
            watch: self.watch.take(),
        };
        // An exiting thread holds no lock of a cache.
        let deferring = DEFERRING
            .try_with(|deferring| deferring.get() == self.backend.address())
            .unwrap_or(false);
        if deferring {
            let mut deferred = self
                .backend
                .deferred
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if release.watch.is_some() {
                self.backend.unwatches_deferred.fetch_add(1, SeqCst);
            }
            deferred.push(release);
        } else {
            self.backend.deregister(release);
        }
    }
}

/// A registration covering the requested range: cheap to clone, keeps its region registered
/// while held, and releases it on drop.
pub struct Registration<R: Registrar, I: InvalidationSource> {
    entry: Arc<Entry<R, I>>,
}

impl<R: Registrar, I: InvalidationSource> Registration<R, I> {
    pub(crate) fn new(entry: Arc<Entry<R, I>>) -> Self {
        Self { entry }
    }

    /// Local key for work requests on any part of `[addr, addr + length)`.
    pub fn lkey(&self) -> u32 {
        self.entry.lkey
    }

    /// Remote key for peers.
    pub fn rkey(&self) -> u32 {
        self.entry.rkey
    }

    /// Start of the registered region (at or below the requested pointer).
    pub fn addr(&self) -> usize {
        self.entry.start
    }

    /// Length of the registered region (covers the requested range).
    pub fn length(&self) -> usize {
        self.entry.len
    }

    /// Rights of the registered region (a superset of the requested ones; holds
    /// [`Access::ON_DEMAND`] for ODP registrations).
    pub fn access(&self) -> Access {
        self.entry.access
    }
}

impl<R: Registrar, I: InvalidationSource> Clone for Registration<R, I> {
    fn clone(&self) -> Self {
        Self::new(Arc::clone(&self.entry))
    }
}

impl<R: Registrar, I: InvalidationSource> fmt::Debug for Registration<R, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("length", &self.length())
            .field("access", &self.access())
            .field("lkey", &self.lkey())
            .field("rkey", &self.rkey())
            .finish()
    }
}
