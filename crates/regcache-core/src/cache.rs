//! The cache: a lock-free lookup over an immutable index, and a locked path that changes it.

mod miss;

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release, SeqCst},
};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::access::Access;
use crate::entry::{Backend, DeferReleases, Entry, Registration};
use crate::error::{Error, Result};
use crate::hazard::{self, Retired};
use crate::index::{Index, Span};
use crate::last_hit;
use crate::policy::{Limits, Policy};
use crate::stats::{Counters, Stats};
use crate::sync::AtomicPtr;
use crate::traits::{InvalidationSource, Registrar};

/// The page size registrations are aligned to: every page holding a requested byte is mapped,
/// so widening to whole pages never fails, and neighbouring small buffers share a registration.
pub const PAGE: usize = 4096;

/// Registrations tried before a range whose pages keep changing is reported as
/// [`Error::Unstable`].
const REGISTER_ATTEMPTS: u32 = 4;

type Snapshot<R, I> = Index<Entry<R, I>>;

/// What only the locked path touches.
struct State<R: Registrar, I: InvalidationSource> {
    /// The published index, which `Cache::index` points to.
    current: Arc<Snapshot<R, I>>,
    /// Replaced index versions; each is dropped once no reader announces it (see the
    /// documentation of `Cache`).
    retired: Retired<Snapshot<R, I>>,
    /// The invalidation source's generation before the last complete drain.
    last_generation: u64,
}

/// The state lock, held. Entries whose last reference drops meanwhile (with the index
/// versions the holder lets go of) are deregistered and unwatched once it is released.
struct Locked<'a, R: Registrar, I: InvalidationSource> {
    guard: MutexGuard<'a, State<R, I>>,
    /// Declared after `guard`, so dropped after it: runs the deferred releases unlocked.
    _deferred: DeferReleases<'a, R, I>,
}

impl<R: Registrar, I: InvalidationSource> Deref for Locked<'_, R, I> {
    type Target = State<R, I>;

    fn deref(&self) -> &State<R, I> {
        &self.guard
    }
}

impl<R: Registrar, I: InvalidationSource> DerefMut for Locked<'_, R, I> {
    fn deref_mut(&mut self) -> &mut State<R, I> {
        &mut self.guard
    }
}

/// A registration cache; the crate documentation lists the rules it keeps.
///
/// # Why the hit path takes no lock and allocates nothing
///
/// A hit ([`Cache::cached_reg`] finding a valid covering registration) first reads the index
/// version (an acquire load) and then takes one of two ways.
///
/// The thread's last hit (`last_hit.rs`), when it was found in this version of the index and
/// covers the request:
/// 1. a const-initialised thread-local; its destructor is registered on the thread's first use
///    of any cache (glibc may allocate once then), never on later hits;
/// 2. `Weak::upgrade` of the remembered entry: an atomic increment of its strong count, or
///    `None` when the entry is gone (then the index is searched);
/// 3. steps 4 and 5 below. An entry that does not serve the request or whose pages changed
///    makes the request a miss, as the index, still of the same version, would answer with the
///    same entry. The upgraded `Arc` is then dropped on the miss path, where, if a writer
///    released the entry meanwhile, it deregisters as a dropped handle would.
///
/// Otherwise the index:
/// 1. `hazard::protect` of the current index (`hazard.rs`): a load of the pointer, a
///    sequentially consistent store of it into this thread's hazard record and a load
///    confirming it is still current. The record is claimed on the thread's first read of any
///    cache, from those of exited threads or else allocated (once in the thread's life, never
///    freed); never on later hits. A thread that is exiting, or is already reading an index,
///    gets no guard and takes the locked path, which reads the index under the lock.
/// 2. `Index::covering`: a walk down the index's page map (`page_map.rs`, one slot read per
///    level, 3 levels for regions spread over up to 1 GiB) to the slot of the request's first
///    page, which holds the end of the registration covering it (the range check) and a
///    pointer to its entry; then `Arc`'s increment of the entry's strong count (an atomic
///    increment), for the entry the index holds. The entry found is recorded as the thread's
///    last hit when the previous index hit was on it too: that stores a `Weak` (an atomic
///    increment) and releases the one it replaces, which frees the memory block of an entry
///    that was deregistered already if it was the last reference: a free, never an allocation
///    nor a deregistration.
/// 3. A release store of null into the record, which ends the guard. Nothing between announcing and withdrawing runs code of the
///    registrar or the invalidation source, so no read of theirs can nest in it. The writer
///    publishes a new index with a sequentially consistent store and keeps the one it replaced
///    in a list of retired versions, dropping it only when no record announces it; in the
///    single total order of those operations either the reader's confirming load
///    sees the replacement (and it announces that instead) or the writer's scan sees the
///    announcement. So no index, chunk or entry is freed (nor deregistered) under a reader, and
///    the hit path itself frees none.
/// 4. [`InvalidationSource::is_valid`]: one acquire load by the trait's contract.
/// 5. A relaxed store of the LRU stamp and a striped hit counter (a const thread-local and an
///    atomic add on a per-thread cache line). An entry that does not serve the request or whose
///    pages changed makes the request a miss, and its clone is dropped on the miss path, as
///    for the last hit.
///
/// `tests/hit_path_alloc.rs` counts allocations over 10,000 hits and fails on any.
///
/// # Why a hit is never stale
///
/// An entry is watched before it is registered and checked after, and once more under the
/// lock after the last drain before it is indexed (`register_missing`, which registers without
/// the lock, argues why that leaves no window), so its watch turns invalid after any change of
/// its pages since before the registration started. A hit checks the watch
/// after loading the entry, with acquire ordering (trait contract), so a change that
/// happened-before the `cached_reg` call is seen and the request goes to the locked path. The
/// entry is cloned while the index holding it is protected, or upgraded from the thread's last
/// hit, so the check reads a live watch; the `Arc` keeps it registered from then on. A hit may
/// return an entry a writer removed from the index a moment before (evicted, or merged into a
/// larger one): it is still registered and its watch
/// still checked, so it is still a correct registration, only deregistered later, when its last
/// handle drops.
///
/// Deregistration runs without the lock: an entry is deregistered (and unwatched) when the
/// last reference to it drops, and when that happens under the lock (the cache drops an
/// index version that held it: evicted, invalidated, merged away), the deregistration is
/// deferred to the lock's release (`Locked`). The entry is then in no index any reader can
/// reach and its reference count is zero, so nothing can hand it out any more
/// (`Weak::upgrade` fails from then on); only its region stays registered a little longer.
/// A new registration of the same pages may be made and indexed before the old one is
/// deregistered: each has its own watch, and a drained report names a start whose indexed
/// entry is removed only if its own watch turned invalid, so the old watch's reports never
/// remove the new entry, and the new watch reports every change since before the new
/// registration.
///
/// The last hit adds no longer window than that. Its version is read before the index it was
/// found in is loaded, and a writer stores a new version (from a counter shared by all caches,
/// so a version names one cache's index) right after each publish, so the last hit is trusted only
/// while no publish since its index is visible: an entry evicted, drained or merged away is not
/// returned from the last hit once its removal is. The last hit holds a `Weak`, which counts for
/// neither eviction (it looks for entries only the index holds strongly) nor deregistration: it
/// keeps at most the memory block of one dead entry per thread.
pub struct Cache<R: Registrar, I: InvalidationSource> {
    backend: Arc<Backend<R, I>>,
    /// `Arc::as_ptr(&state.current)`, read by hits under a hazard pointer.
    index: AtomicPtr<Snapshot<R, I>>,
    /// Names the published index among those of every cache: changed after each publish, so a
    /// thread's last hit is trusted only while the index it was found in is current.
    version: AtomicU64,
    state: Mutex<State<R, I>>,
    policy: Policy,
    limits: Limits,
    /// LRU clock: advanced by each registration, stamped on entries by each hit.
    clock: AtomicU64,
}

impl<R: Registrar, I: InvalidationSource> Cache<R, I> {
    /// A cache registering through `registrar`, learning of changes from `source` (unused unless
    /// `policy` watches), running `policy` within `limits`.
    pub fn new(registrar: R, source: I, policy: Policy, limits: Limits) -> Self {
        let last_generation = source.generation();
        let current = Arc::new(Index::new(PAGE));
        Self {
            backend: Arc::new(Backend::new(registrar, source)),
            index: AtomicPtr::new(Arc::as_ptr(&current).cast_mut()),
            version: AtomicU64::new(last_hit::next_version()),
            state: Mutex::new(State {
                current,
                retired: Retired::new(),
                last_generation,
            }),
            policy,
            limits,
            clock: AtomicU64::new(0),
        }
    }

    /// The policy the cache runs.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// A registration covering `[ptr, ptr + len)` with at least `access` (the cache decides
    /// about [`Access::ON_DEMAND`]). A hit takes no lock and allocates nothing.
    ///
    /// # Errors
    /// - [`Error::InvalidRange`]: `len` is 0 or the range wraps around the address space;
    /// - [`Error::Watch`], [`Error::Register`]: the invalidation source or the registrar failed
    ///   (`Register` with `EFAULT` when part of the range is not mapped);
    /// - [`Error::Unstable`]: the pages changed during every registration attempt;
    /// - [`Error::Drain`]: pending invalidations could not be read.
    pub fn cached_reg(
        &self,
        ptr: *const u8,
        len: usize,
        access: Access,
    ) -> Result<Registration<R, I>> {
        let start = ptr.addr();
        // Not `ok_or`: that builds (and drops) the error on every hit.
        let Some(end) = start.checked_add(len).filter(|_| len > 0) else {
            return Err(Error::InvalidRange { addr: start, len });
        };
        let access = access.without(Access::ON_DEMAND);
        if self.policy.caches() {
            let version = self.version.load(Acquire);
            // SAFETY: `version` is this cache's, and this cache records only `Entry<R, I>`.
            let last = unsafe { last_hit::covering::<Entry<R, I>>(version, start, end) };
            // Found in the current index, so the index would answer with it too: when it does
            // not serve, the request is a miss either way.
            let candidate = last.or_else(|| {
                // SAFETY: `index` always points to the live `state.current`, and `publish`
                // stores its replacement (SeqCst) before `Retired::purge` frees the replaced one
                // only when `is_protected` is false for it.
                let index = unsafe { hazard::protect(&self.index) }?;
                self.lookup(&index, version, start, end)
            });
            if let Some(hit) = candidate.and_then(|entry| self.usable(entry, access)) {
                self.backend.counters.hits.increment();
                return Ok(hit);
            }
        }
        self.miss(start, end, access)
    }

    /// The counters. Takes the lock and walks the index (to count idle registrations).
    pub fn stats(&self) -> Stats {
        let mut state = self.lock();
        state.retired.purge();
        let idle = Self::idle_spans(&state.current).len();
        self.backend.counters.snapshot(idle as u64)
    }

    /// Reads pending invalidations now and drops the registrations they name (a miss does this
    /// anyway; call it to release pinned memory sooner).
    ///
    /// # Errors
    /// [`Error::Drain`] when the invalidation source fails.
    pub fn flush_invalidations(&self) -> Result<()> {
        let mut state = self.lock();
        self.process_invalidations(&mut state)
    }

    /// Deregisters every cached registration no handle holds; returns how many.
    pub fn evict_idle(&self) -> usize {
        let mut state = self.lock();
        state.retired.purge();
        let victims: Vec<usize> = Self::idle_spans(&state.current)
            .iter()
            .map(|&(start, ..)| start)
            .collect();
        self.remove(&mut state, &victims);
        Counters::add(&self.backend.counters.evictions, victims.len() as u64);
        victims.len()
    }

    /// The state lock: it serialises every change of the index (misses, invalidations,
    /// evictions, [`Cache::stats`]); hits never take it, and registrations and watches are
    /// made without it (`register_missing`), as are the deregistrations and unwatches of the
    /// entries an edit of the index lets go of (deferred to the release of the lock:
    /// `Locked`). Held across the invalidation source's `generation` and `drain`; never across
    /// a call back into this cache.
    fn lock(&self) -> Locked<'_, R, I> {
        // Every update of `State` is a single push or assignment, so a panic elsewhere under the
        // lock (in a registrar, say) cannot leave it half-changed.
        let guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Locked {
            guard,
            _deferred: self.backend.defer_releases(),
        }
    }

    /// The entry of `index` covering `[start, end)`. `version` must be this cache's, read before
    /// `index` was, so that a last hit recorded under it is never trusted beyond the index it
    /// was found in. Runs no code of the registrar or the invalidation source, so that no hit
    /// of theirs can happen while a hit is reading `index` (see [`hazard::protect`]).
    fn lookup(
        &self,
        index: &Snapshot<R, I>,
        version: u64,
        start: usize,
        end: usize,
    ) -> Option<Arc<Entry<R, I>>> {
        let entry = index.covering(start, end)?;
        // SAFETY: `version` is this cache's (the caller's contract), recorded with its entry type.
        unsafe { last_hit::record(version, entry.start, entry.end(), &entry) };
        Some(entry)
    }

    /// `entry` as a hit, when it serves `access` and its pages did not change.
    fn usable(&self, entry: Arc<Entry<R, I>>, access: Access) -> Option<Registration<R, I>> {
        if !entry.serves(access) || !entry.is_valid() {
            return None;
        }
        entry.touch(self.clock.load(Relaxed));
        Some(Registration::new(entry))
    }

    /// A miss; when the invalidation source has no room for another watch, evicts the idle
    /// registrations (giving their watches back), or waits for a watch another thread is
    /// giving back, and tries again, as long as either frees a watch.
    fn miss(&self, start: usize, end: usize, access: Access) -> Result<Registration<R, I>> {
        let _span =
            tracing::debug_span!("regcache.miss", addr = start, len = end - start).entered();
        Counters::add(&self.backend.counters.misses, 1);
        loop {
            let unwatched = self.backend.unwatches_done();
            match self.register_missing(start, end, access) {
                Err(err)
                    if err.is_out_of_watch_room()
                        && (self.evict_idle() > 0
                            || self.backend.watch_given_back_since(unwatched)) =>
                {
                    tracing::debug!("regcache: no room for another watch; a watch was freed");
                }
                result => return result,
            }
        }
    }

    /// Publishes `current` plus `entry`, minus `stale` and whatever `entry` overlaps (merged
    /// neighbours, or registrations with other rights that it replaces), so the index stays
    /// disjoint.
    fn insert(
        &self,
        state: &mut State<R, I>,
        current: Arc<Snapshot<R, I>>,
        mut remove: Vec<usize>,
        entry: &Arc<Entry<R, I>>,
    ) {
        remove.extend(
            current
                .touching(entry.start, entry.end())
                .filter(|span| span.start < entry.end() && span.end > entry.start)
                .map(|span| span.start),
        );
        let next = current.edit(
            &remove,
            Some(Span {
                start: entry.start,
                end: entry.end(),
                item: Arc::clone(entry),
            }),
        );
        // Readers must not be left holding the only other reference to `current` (see `publish`).
        drop(current);
        self.publish(state, next);
    }

    /// Registers `[start, end)`, retrying while the pages change during registration.
    fn register(&self, start: usize, end: usize, access: Access) -> Result<Entry<R, I>> {
        let len = end - start;
        let plan = self.policy.plan(access);
        for _ in 0..REGISTER_ATTEMPTS {
            // Each new entry takes the current tick and moves the clock on, so that hits after
            // it stamp a later tick than its creation.
            let stamp = self.clock.fetch_add(1, Relaxed);
            let entry = Entry::register(&self.backend, start, len, plan, stamp)?;
            if entry.is_valid() {
                return Ok(entry);
            }
            Counters::add(&self.backend.counters.registration_retries, 1);
            tracing::debug!(
                addr = start,
                len,
                "regcache: pages changed during registration, retrying"
            );
        }
        Err(Error::Unstable {
            addr: start,
            len,
            attempts: REGISTER_ATTEMPTS,
        })
    }

    fn process_invalidations(&self, state: &mut State<R, I>) -> Result<()> {
        if !self.policy.watches() {
            return Ok(());
        }
        let generation = self.backend.source.generation();
        if generation == state.last_generation {
            return Ok(());
        }
        let _span = tracing::debug_span!("regcache.invalidations", generation).entered();
        let current = Arc::clone(&state.current);
        let mut stale = Vec::new();
        self.backend
            .source
            .drain(&mut |cookie| {
                let start = cookie as usize;
                if current.get(start).is_some_and(|entry| !entry.is_valid()) {
                    stale.push(start);
                }
            })
            .map_err(|source| Error::Drain { source })?;
        state.last_generation = generation;
        drop(current);
        tracing::debug!(
            count = stale.len(),
            "regcache: dropping invalidated registrations"
        );
        Counters::add(&self.backend.counters.invalidated, stale.len() as u64);
        self.remove(state, &stale);
        Ok(())
    }

    /// Evicts idle registrations, least recently used first, down to 15/16 of the limits (the
    /// slack spreads the O(n) scan over many misses).
    fn evict_over_limits(&self, state: &mut State<R, I>) {
        let (regions, bytes) = self.backend.counters.live();
        let (max_regions, max_bytes) =
            (self.limits.max_regions as u64, self.limits.max_bytes as u64);
        if regions <= max_regions && bytes <= max_bytes {
            return;
        }
        let (low_regions, low_bytes) = (max_regions - max_regions / 16, max_bytes - max_bytes / 16);
        let mut idle = Self::idle_spans(&state.current);
        idle.sort_unstable_by_key(|&(start, _, last_used)| (last_used, start));
        let (mut regions, mut bytes) = (regions, bytes);
        let mut victims = Vec::new();
        for (start, len, _) in idle {
            if regions <= low_regions && bytes <= low_bytes {
                break;
            }
            victims.push(start);
            regions -= 1;
            bytes -= len as u64;
        }
        tracing::debug!(
            count = victims.len(),
            regions,
            bytes,
            "regcache: evicting idle registrations"
        );
        Counters::add(&self.backend.counters.evictions, victims.len() as u64);
        self.remove(state, &victims);
    }

    /// `(start, len, last_used)` of indexed entries nothing but the index holds. Conservative:
    /// a reader between its lookup and its `Arc::clone` may still take one, which only delays
    /// that region's deregistration until its handle drops.
    fn idle_spans(index: &Snapshot<R, I>) -> Vec<(usize, usize, u64)> {
        index
            .iter()
            .filter(|span| Arc::strong_count(&span.item) == 1)
            .map(|span| (span.start, span.item.len, span.item.last_used()))
            .collect()
    }

    fn remove(&self, state: &mut State<R, I>, starts: &[usize]) {
        if starts.is_empty() {
            return;
        }
        let next = state.current.edit(starts, None);
        self.publish(state, next);
    }

    fn publish(&self, state: &mut State<R, I>, next: Snapshot<R, I>) {
        let next = Arc::new(next);
        // SeqCst: before `Retired::purge`'s scan of the announcements in the single total order
        // (the condition of `hazard::protect`).
        self.index.store(Arc::as_ptr(&next).cast_mut(), SeqCst);
        let replaced = std::mem::replace(&mut state.current, next);
        self.version.store(last_hit::next_version(), Release);
        state.retired.push(replaced);
    }
}

impl<R: Registrar, I: InvalidationSource> std::fmt::Debug for Cache<R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not under the lock, so that code running under it (the invalidation source's
        // `generation` and `drain`) may print the cache.
        // SAFETY: as in `cached_reg`.
        let cached = unsafe { hazard::protect(&self.index) }.map(|index| index.len());
        f.debug_struct("Cache")
            .field("policy", &self.policy)
            .field("limits", &self.limits)
            .field("cached", &cached)
            .finish_non_exhaustive()
    }
}
