//! Fakes of the two seams, sharing one simulated address space, for tests and benchmarks.
//!
//! [`FakeMemory`] holds page mappings, each with a version that changes whenever the page is
//! mapped anew. [`FakeRegistrar`] fails on unmapped pages (like `ibv_reg_mr`'s `EFAULT`) and
//! records the versions each region pinned, so a test can tell whether a registration is stale.
//! [`FakeInvalidation`] behaves like regwatch: slots with sequence words, a generation bumped
//! after a watch turns dirty, each dirty watch drained once, `ENOSPC` when slots run out.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::access::Access;
use crate::cache::Cache;
use crate::policy::{Limits, Policy};
use crate::traits::{InvalidationSource, MemoryRegion, Registrar};

/// Page size of the simulated address space: the cache's.
pub use crate::PAGE;

/// Word of a free slot.
const FREE: u64 = 0;
/// Word of a dirty slot.
const DIRTY: u64 = u64::MAX;

type RegisterHook = Box<dyn FnMut(usize, usize) + Send>;

struct WatchRecord {
    start: usize,
    end: usize,
    cookie: u64,
    seq: u64,
    dirty: bool,
    reported: bool,
}

struct RegionRecord {
    addr: usize,
    len: usize,
    access: Access,
    /// Version of each page when it was registered.
    versions: Vec<u64>,
}

#[derive(Default)]
struct World {
    /// Page number to version.
    pages: BTreeMap<usize, u64>,
    next_version: u64,
    watches: Vec<Option<WatchRecord>>,
    /// Free slots, lowest last, so slots are reused like a kernel bitmap would.
    free_slots: Vec<usize>,
    next_seq: u64,
    regions: HashMap<u32, RegionRecord>,
    next_lkey: u32,
    registrations: u64,
    deregistrations: u64,
    drains: u64,
    /// Watches refused for want of a free slot (`ENOSPC`).
    refused_watches: u64,
    double_deregistrations: u64,
    fail_deregistrations: bool,
    max_registration_bytes: Option<usize>,
}

struct Inner {
    world: Mutex<World>,
    /// Sequence word per slot, read without the lock as regwatch's status page would be.
    words: Box<[AtomicU64]>,
    generation: AtomicU64,
    /// Runs inside `register`, after the pages were pinned and without the lock held.
    on_register: Mutex<Option<RegisterHook>>,
    /// How long each registration sleeps, in nanoseconds, after pinning and without a lock.
    registration_delay: AtomicU64,
}

/// A simulated address space; clones share it.
#[derive(Clone)]
pub struct FakeMemory {
    inner: Arc<Inner>,
}

impl fmt::Debug for FakeMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let world = self.world();
        f.debug_struct("FakeMemory")
            .field("mapped_pages", &world.pages.len())
            .field("regions", &world.regions.len())
            .field("watches", &world.watches.iter().flatten().count())
            .finish()
    }
}

fn pages(addr: usize, len: usize) -> std::ops::Range<usize> {
    addr / PAGE..(addr + len).div_ceil(PAGE)
}

impl FakeMemory {
    /// An empty address space whose invalidation source has `watch_slots` slots.
    pub fn new(watch_slots: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                world: Mutex::new(World {
                    watches: (0..watch_slots).map(|_| None).collect(),
                    free_slots: (0..watch_slots).rev().collect(),
                    next_seq: 1,
                    next_lkey: 1,
                    ..World::default()
                }),
                words: (0..watch_slots).map(|_| AtomicU64::new(FREE)).collect(),
                generation: AtomicU64::new(0),
                on_register: Mutex::new(None),
                registration_delay: AtomicU64::new(0),
            }),
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.inner
            .world
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The registrar over this memory.
    pub fn registrar(&self) -> FakeRegistrar {
        FakeRegistrar {
            memory: self.clone(),
        }
    }

    /// The invalidation source over this memory.
    pub fn invalidation(&self) -> FakeInvalidation {
        FakeInvalidation {
            memory: self.clone(),
        }
    }

    /// A cache over this memory.
    pub fn cache(&self, policy: Policy, limits: Limits) -> Cache<FakeRegistrar, FakeInvalidation> {
        Cache::new(self.registrar(), self.invalidation(), policy, limits)
    }

    /// Maps fresh pages over `[addr, addr + len)`, replacing what was there (`MAP_FIXED`).
    pub fn map(&self, addr: usize, len: usize) {
        let mut world = self.world();
        for page in pages(addr, len) {
            world.next_version += 1;
            let version = world.next_version;
            world.pages.insert(page, version);
        }
        self.changed(&mut world, addr, len);
    }

    /// Unmaps `[addr, addr + len)`.
    pub fn unmap(&self, addr: usize, len: usize) {
        let mut world = self.world();
        for page in pages(addr, len) {
            world.pages.remove(&page);
        }
        self.changed(&mut world, addr, len);
    }

    fn changed(&self, world: &mut World, addr: usize, len: usize) {
        let range = pages(addr, len);
        let mut dirtied = false;
        for (slot, watch) in world.watches.iter_mut().enumerate() {
            let Some(watch) = watch else { continue };
            let watched = pages(watch.start, watch.end - watch.start);
            if watch.dirty || watched.end <= range.start || range.end <= watched.start {
                continue;
            }
            watch.dirty = true;
            self.inner.words[slot].store(DIRTY, Ordering::Release);
            dirtied = true;
        }
        if dirtied {
            self.inner.generation.fetch_add(1, Ordering::Release);
        }
    }

    /// Current version of every page of `[addr, addr + len)`, or `None` if one is unmapped.
    pub fn versions(&self, addr: usize, len: usize) -> Option<Vec<u64>> {
        let world = self.world();
        pages(addr, len)
            .map(|page| world.pages.get(&page).copied())
            .collect()
    }

    /// Versions the live region `lkey` pinned for the pages of `[addr, addr + len)`, or `None`
    /// when the region is not live or does not cover the range.
    pub fn registered_versions(&self, lkey: u32, addr: usize, len: usize) -> Option<Vec<u64>> {
        let world = self.world();
        let region = world.regions.get(&lkey)?;
        if addr < region.addr || addr + len > region.addr + region.len {
            return None;
        }
        let first = region.addr / PAGE;
        Some(
            pages(addr, len)
                .map(|page| region.versions[page - first])
                .collect(),
        )
    }

    /// Whether region `lkey` covers `[addr, addr + len)` with the pages mapped there now.
    pub fn is_current(&self, lkey: u32, addr: usize, len: usize) -> bool {
        let registered = self.registered_versions(lkey, addr, len);
        registered.is_some() && registered == self.versions(addr, len)
    }

    /// Whether region `lkey` is registered.
    pub fn is_live(&self, lkey: u32) -> bool {
        self.world().regions.contains_key(&lkey)
    }

    /// The access region `lkey` was registered with.
    pub fn region_access(&self, lkey: u32) -> Option<Access> {
        self.world().regions.get(&lkey).map(|region| region.access)
    }

    /// Live regions and their total bytes.
    pub fn live(&self) -> (usize, usize) {
        let world = self.world();
        let bytes = world.regions.values().map(|region| region.len).sum();
        (world.regions.len(), bytes)
    }

    /// The lkeys of live regions.
    pub fn live_lkeys(&self) -> Vec<u32> {
        self.world().regions.keys().copied().collect()
    }

    /// Registrations made so far.
    pub fn registrations(&self) -> u64 {
        self.world().registrations
    }

    /// Calls of [`InvalidationSource::drain`] so far.
    pub fn drains(&self) -> u64 {
        self.world().drains
    }

    /// Deregistrations so far, of live regions or not.
    pub fn deregistrations(&self) -> u64 {
        self.world().deregistrations
    }

    /// Deregistrations of regions that were not live (must stay 0).
    pub fn double_deregistrations(&self) -> u64 {
        self.world().double_deregistrations
    }

    /// Watches refused so far because every slot was taken.
    pub fn refused_watches(&self) -> u64 {
        self.world().refused_watches
    }

    /// Watches not yet unwatched.
    pub fn active_watches(&self) -> usize {
        self.world().watches.iter().flatten().count()
    }

    /// Makes every later deregistration report an error (the region is released anyway).
    pub fn fail_deregistrations(&self, fail: bool) {
        self.world().fail_deregistrations = fail;
    }

    /// Makes later registrations longer than `max` fail with `ENOMEM`, as `RLIMIT_MEMLOCK` would.
    pub fn limit_registration_bytes(&self, max: Option<usize>) {
        self.world().max_registration_bytes = max;
    }

    /// Makes each later registration sleep for `delay` after pinning its pages, holding no
    /// lock: the time `ibv_reg_mr` spends in the kernel and the device, off the caller's CPU, so
    /// that concurrent registrations overlap.
    pub fn delay_registrations(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.inner
            .registration_delay
            .store(nanos, Ordering::Relaxed);
    }

    /// Runs `hook(addr, len)` inside each later registration, after its pages were pinned:
    /// a hook that maps over the range simulates a change racing with `ibv_reg_mr`.
    pub fn on_register(&self, hook: impl FnMut(usize, usize) + Send + 'static) {
        *self
            .inner
            .on_register
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Box::new(hook));
    }
}

/// A region of [`FakeRegistrar`].
#[derive(Debug)]
pub struct FakeRegion {
    lkey: u32,
}

impl MemoryRegion for FakeRegion {
    fn lkey(&self) -> u32 {
        self.lkey
    }

    fn rkey(&self) -> u32 {
        !self.lkey
    }
}

/// The registrar of a [`FakeMemory`].
#[derive(Clone, Debug)]
pub struct FakeRegistrar {
    memory: FakeMemory,
}

impl Registrar for FakeRegistrar {
    type Region = FakeRegion;

    fn register(&self, addr: usize, len: usize, access: Access) -> io::Result<FakeRegion> {
        let lkey = {
            let mut world = self.memory.world();
            if world.max_registration_bytes.is_some_and(|max| len > max) {
                return Err(io::Error::from_raw_os_error(12));
            }
            let versions: Option<Vec<u64>> = pages(addr, len)
                .map(|page| world.pages.get(&page).copied())
                .collect();
            let versions = versions.ok_or_else(|| io::Error::from_raw_os_error(14))?;
            let lkey = world.next_lkey;
            world.next_lkey += 1;
            world.registrations += 1;
            world.regions.insert(
                lkey,
                RegionRecord {
                    addr,
                    len,
                    access,
                    versions,
                },
            );
            lkey
        };
        let delay = self.memory.inner.registration_delay.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(Duration::from_nanos(delay));
        }
        let mut hook = self
            .memory
            .inner
            .on_register
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(hook) = hook.as_mut() {
            hook(addr, len);
        }
        Ok(FakeRegion { lkey })
    }

    fn deregister(&self, region: FakeRegion) -> io::Result<()> {
        let mut world = self.memory.world();
        world.deregistrations += 1;
        if world.regions.remove(&region.lkey).is_none() {
            world.double_deregistrations += 1;
        }
        if world.fail_deregistrations {
            return Err(io::Error::from_raw_os_error(16));
        }
        Ok(())
    }
}

/// A watch of [`FakeInvalidation`].
#[derive(Debug)]
pub struct FakeWatch {
    slot: usize,
    seq: u64,
    cookie: u64,
}

/// The invalidation source of a [`FakeMemory`].
#[derive(Clone, Debug)]
pub struct FakeInvalidation {
    memory: FakeMemory,
}

impl InvalidationSource for FakeInvalidation {
    type Watch = FakeWatch;

    fn watch(&self, addr: usize, len: usize, cookie: u64) -> io::Result<FakeWatch> {
        let mut world = self.memory.world();
        let Some(slot) = world.free_slots.pop() else {
            world.refused_watches += 1;
            return Err(io::Error::from_raw_os_error(28));
        };
        let seq = world.next_seq;
        world.next_seq += 1;
        world.watches[slot] = Some(WatchRecord {
            start: addr,
            end: addr + len,
            cookie,
            seq,
            dirty: false,
            reported: false,
        });
        self.memory.inner.words[slot].store(seq, Ordering::Release);
        Ok(FakeWatch { slot, seq, cookie })
    }

    fn is_valid(&self, watch: &FakeWatch) -> bool {
        self.memory.inner.words[watch.slot].load(Ordering::Acquire) == watch.seq
    }

    fn unwatch(&self, watch: FakeWatch) -> io::Result<()> {
        let mut world = self.memory.world();
        let record = &mut world.watches[watch.slot];
        match record {
            Some(r) if r.seq == watch.seq && r.cookie == watch.cookie => {
                *record = None;
                world.free_slots.push(watch.slot);
                self.memory.inner.words[watch.slot].store(FREE, Ordering::Release);
                Ok(())
            }
            _ => Err(io::Error::from_raw_os_error(22)),
        }
    }

    fn generation(&self) -> u64 {
        self.memory.inner.generation.load(Ordering::Acquire)
    }

    fn drain(&self, on_invalidated: &mut dyn FnMut(u64)) -> io::Result<()> {
        let cookies: Vec<u64> = {
            let mut world = self.memory.world();
            world.drains += 1;
            world
                .watches
                .iter_mut()
                .flatten()
                .filter(|watch| watch.dirty && !watch.reported)
                .map(|watch| {
                    watch.reported = true;
                    watch.cookie
                })
                .collect()
        };
        cookies.into_iter().for_each(on_invalidated);
        Ok(())
    }
}

/// xorshift64: a reproducible random stream with no dependency, for tests and benchmarks.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A stream from `seed`; a zero seed is replaced (xorshift would stay at zero).
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..bound` (slightly biased towards small numbers, which tests don't mind).
    ///
    /// # Panics
    /// When `bound` is 0.
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_needs_mapped_pages_and_records_versions() {
        let memory = FakeMemory::new(4);
        let registrar = memory.registrar();
        assert_eq!(
            registrar
                .register(0, PAGE, Access::LOCAL_WRITE)
                .unwrap_err()
                .raw_os_error(),
            Some(14)
        );
        memory.map(0, 2 * PAGE);
        let region = registrar
            .register(0, 2 * PAGE, Access::LOCAL_WRITE)
            .unwrap();
        assert!(memory.is_current(region.lkey(), 100, PAGE));
        memory.map(PAGE, PAGE);
        assert!(memory.is_current(region.lkey(), 0, PAGE));
        assert!(!memory.is_current(region.lkey(), 0, 2 * PAGE));
        registrar.deregister(region).unwrap();
        assert_eq!(memory.live(), (0, 0));
    }

    #[test]
    fn watches_turn_dirty_once_and_drain_once() {
        let memory = FakeMemory::new(2);
        let source = memory.invalidation();
        memory.map(0, 4 * PAGE);
        let near = source.watch(0, PAGE, 7).unwrap();
        let far = source.watch(2 * PAGE, PAGE, 8).unwrap();
        assert!(source.watch(0, 1, 9).is_err(), "slots exhausted");
        let before = source.generation();
        memory.unmap(PAGE, PAGE);
        assert_eq!(
            source.generation(),
            before,
            "a neighbouring page changes nothing"
        );
        memory.map(0, 1);
        memory.map(0, 1);
        assert!(!source.is_valid(&near) && source.is_valid(&far));
        assert_ne!(source.generation(), before);
        let mut drained = Vec::new();
        source.drain(&mut |cookie| drained.push(cookie)).unwrap();
        source.drain(&mut |cookie| drained.push(cookie)).unwrap();
        assert_eq!(drained, [7]);
        let stale = FakeWatch {
            slot: near.slot,
            seq: near.seq,
            cookie: 99,
        };
        assert!(source.unwatch(stale).is_err());
        source.unwatch(near).unwrap();
        let reused = source.watch(0, PAGE, 10).unwrap();
        assert!(source.is_valid(&reused));
        source.unwatch(reused).unwrap();
        source.unwatch(far).unwrap();
        assert_eq!(memory.active_watches(), 0);
    }
}
