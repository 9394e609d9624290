//! Misses register outside the cache's lock: concurrent misses on the same or overlapping
//! ranges keep one registration, leak none, and a change that lands between a registration and
//! its re-check under the lock is never indexed nor handed out. Evicted and invalidated
//! registrations are deregistered outside the lock too, and a miss short of a watch slot waits
//! for one that another thread is giving back.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::time::{Duration, Instant};

use regcache_core::testing::{
    FakeInvalidation, FakeMemory, FakeRegion, FakeRegistrar, FakeWatch, PAGE,
};
use regcache_core::{Access, Cache, InvalidationSource, Limits, Policy, Registrar};

const BASE: usize = 0x40_0000;
const RW: Access = Access::LOCAL_WRITE;
/// Requests of one round lie within this many pages; rounds are a page apart, so they never
/// merge with each other.
const ROUND_PAGES: usize = 5;

fn ptr(addr: usize) -> *const u8 {
    std::ptr::without_provenance(addr)
}

/// The two requests `(first page, pages)` of round `round`: the same range, overlapping
/// ranges, or one covering the other.
fn requests(round: usize) -> [(usize, usize); 2] {
    match round % 3 {
        0 => [(1, 2), (1, 2)],
        1 => [(0, 2), (1, 2)],
        _ => [(0, 4), (1, 1)],
    }
}

/// Two threads miss at once (a barrier, then registrations that sleep, so both are inside the
/// registrar together) on the ranges of `requests`, round after round. Each gets a current
/// registration covering its request; once their handles drop, exactly one registration per
/// round is left (the duplicate or the replaced one was deregistered); when the cache is
/// dropped, every registration made was deregistered exactly once and every watch removed.
#[test]
fn racing_misses_keep_one_registration_and_leak_none() {
    const ROUNDS: usize = 30;
    let memory = FakeMemory::new(256);
    memory.map(BASE, ROUNDS * (ROUND_PAGES + 1) * PAGE);
    memory.delay_registrations(Duration::from_millis(2));
    let cache = memory.cache(Policy::Pinned, Limits::default());
    let barrier = Barrier::new(2);
    for round in 0..ROUNDS {
        let round_base = BASE + round * (ROUND_PAGES + 1) * PAGE;
        std::thread::scope(|scope| {
            for (first, pages) in requests(round) {
                let (memory, cache, barrier) = (&memory, &cache, &barrier);
                scope.spawn(move || {
                    let (addr, len) = (round_base + first * PAGE, pages * PAGE);
                    barrier.wait();
                    let registration = cache.cached_reg(ptr(addr), len, RW).unwrap();
                    assert!(registration.addr() <= addr);
                    assert!(registration.addr() + registration.length() >= addr + len);
                    assert!(memory.is_current(registration.lkey(), addr, len));
                });
            }
        });
        assert_eq!(
            memory.live().0,
            round + 1,
            "round {round}: one registration kept per round"
        );
    }
    let stats = cache.stats();
    assert_eq!(stats.regions, ROUNDS as u64);
    assert!(
        stats.duplicate_registrations > 0,
        "no two misses raced: the test exercised nothing ({stats:?})"
    );
    drop(cache);
    assert_eq!(memory.live(), (0, 0), "leaked registrations");
    assert_eq!(memory.double_deregistrations(), 0);
    assert_eq!(memory.deregistrations(), memory.registrations());
    assert_eq!(memory.active_watches(), 0);
}

/// The fake invalidation source, which runs `after_check` once, right after the next
/// [`InvalidationSource::is_valid`] has read the watch.
struct ChangesAfterCheck {
    source: FakeInvalidation,
    after_check: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl InvalidationSource for ChangesAfterCheck {
    type Watch = FakeWatch;

    fn watch(&self, addr: usize, len: usize, cookie: u64) -> io::Result<FakeWatch> {
        self.source.watch(addr, len, cookie)
    }

    fn is_valid(&self, watch: &FakeWatch) -> bool {
        let valid = self.source.is_valid(watch);
        let after_check = self
            .after_check
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(after_check) = after_check {
            after_check();
        }
        valid
    }

    fn unwatch(&self, watch: FakeWatch) -> io::Result<()> {
        self.source.unwatch(watch)
    }

    fn generation(&self) -> u64 {
        self.source.generation()
    }

    fn drain(&self, on_invalidated: &mut dyn FnMut(u64)) -> io::Result<()> {
        self.source.drain(on_invalidated)
    }
}

/// The pages change after the registration's own check (made without the lock) and before
/// it is indexed; the re-check under the lock, after the drain that consumes the change's
/// report (which finds nothing indexed to remove), throws it away and registers again.
/// Without that re-check the stale registration would be returned and stay indexed with its
/// report already drained.
#[test]
fn a_change_before_the_registration_is_indexed_is_retried() {
    let memory = FakeMemory::new(16);
    memory.map(BASE, 4 * PAGE);
    let changer = memory.clone();
    let source = ChangesAfterCheck {
        source: memory.invalidation(),
        after_check: Mutex::new(Some(Box::new(move || changer.map(BASE, PAGE)))),
    };
    let cache = Cache::new(
        memory.registrar(),
        source,
        Policy::Pinned,
        Limits::default(),
    );
    let registration = cache.cached_reg(ptr(BASE), PAGE, RW).unwrap();
    assert!(memory.is_current(registration.lkey(), BASE, PAGE));
    assert_eq!(cache.stats().registration_retries, 1);
    assert_eq!(memory.registrations(), 2);
    assert_eq!(memory.live().0, 1, "the stale registration was released");
    let again = cache.cached_reg(ptr(BASE), PAGE, RW).unwrap();
    assert_eq!(
        again.lkey(),
        registration.lkey(),
        "the fresh one was indexed"
    );
}

/// The fake registrar, whose first deregistration once its gate is armed tells `entered` and
/// then waits for `release` (at most `BLOCK_LIMIT`, so that a deregistration made under the
/// cache's lock fails the test instead of hanging it).
struct BlocksADeregistration {
    registrar: FakeRegistrar,
    gate: Arc<Gate>,
}

#[derive(Default)]
struct Gate {
    /// `(entered, release)`.
    armed: Mutex<Option<(Sender<()>, Receiver<()>)>>,
    /// Whether the blocked deregistration gave up waiting for `release`.
    timed_out: AtomicBool,
}

const BLOCK_LIMIT: Duration = Duration::from_secs(20);

impl Registrar for BlocksADeregistration {
    type Region = FakeRegion;

    fn register(&self, addr: usize, len: usize, access: Access) -> io::Result<FakeRegion> {
        self.registrar.register(addr, len, access)
    }

    fn deregister(&self, region: FakeRegion) -> io::Result<()> {
        let armed = self
            .gate
            .armed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((entered, release)) = armed {
            entered
                .send(())
                .expect("the test waits for the deregistration");
            if let Err(RecvTimeoutError::Timeout) = release.recv_timeout(BLOCK_LIMIT) {
                self.gate.timed_out.store(true, Relaxed);
            }
        }
        self.registrar.deregister(region)
    }
}

/// A cache over `memory` holding an idle registration of `BASE`'s page, whose next
/// deregistration blocks: it says so on `entered` and waits for `release`. `BASE`'s two pages
/// and the page at `far` are mapped.
struct Blocked {
    cache: Cache<BlocksADeregistration, FakeInvalidation>,
    gate: Arc<Gate>,
    entered: Receiver<()>,
    release: Sender<()>,
}

fn blocked_deregistration_ahead(memory: &FakeMemory, far: usize) -> Blocked {
    memory.map(BASE, 2 * PAGE);
    memory.map(far, PAGE);
    let gate = Arc::new(Gate::default());
    let registrar = BlocksADeregistration {
        registrar: memory.registrar(),
        gate: Arc::clone(&gate),
    };
    let cache = Cache::new(
        registrar,
        memory.invalidation(),
        Policy::Pinned,
        Limits::default(),
    );
    drop(cache.cached_reg(ptr(BASE), PAGE, RW).unwrap());
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    *gate.armed.lock().unwrap_or_else(PoisonError::into_inner) = Some((entered_tx, release_rx));
    Blocked {
        cache,
        gate,
        entered,
        release,
    }
}

/// A thread runs `drop_one` on a cache holding an idle registration of `BASE`'s page and no
/// other, which must deregister that registration; while its
/// deregistration is blocked, this thread misses (registering a page far away, which takes the
/// lock twice) and reads the stats (the lock again). Under the lock, the deregistration would
/// hold the lock until `BLOCK_LIMIT`.
fn misses_go_on_during_a_deregistration(
    memory: &FakeMemory,
    drop_one: impl FnOnce(&Cache<BlocksADeregistration, FakeInvalidation>) + Send,
) {
    let far = BASE + 64 * PAGE;
    let Blocked {
        cache,
        gate,
        entered,
        release,
    } = blocked_deregistration_ahead(memory, far);
    std::thread::scope(|scope| {
        let dropper = scope.spawn(|| drop_one(&cache));
        entered
            .recv_timeout(BLOCK_LIMIT)
            .expect("the registration of BASE was not deregistered");
        let registration = cache.cached_reg(ptr(far), PAGE, RW).unwrap();
        assert!(memory.is_current(registration.lkey(), far, PAGE));
        drop(registration);
        let stats = cache.stats();
        // Fails only when the deregistration gave up waiting, which the assertion reports.
        let _ = release.send(());
        dropper.join().unwrap();
        assert!(
            !gate.timed_out.load(Relaxed),
            "the miss waited for the deregistration ({stats:?})"
        );
    });
    drop(cache);
    assert_eq!(memory.live(), (0, 0), "leaked registrations");
    assert_eq!(memory.deregistrations(), memory.registrations());
    assert_eq!(memory.double_deregistrations(), 0);
    assert_eq!(memory.active_watches(), 0);
}

#[test]
fn an_evicted_registration_is_deregistered_without_the_lock() {
    let memory = FakeMemory::new(16);
    misses_go_on_during_a_deregistration(&memory, |cache| {
        assert_eq!(cache.evict_idle(), 1);
    });
}

#[test]
fn an_invalidated_registration_is_deregistered_without_the_lock() {
    let memory = FakeMemory::new(16);
    let changer = memory.clone();
    misses_go_on_during_a_deregistration(&memory, move |cache| {
        changer.map(BASE, PAGE);
        cache.flush_invalidations().unwrap();
    });
}

/// With one watch slot, taken by an idle registration that another thread is evicting and whose
/// unwatch that thread has not made yet (its deregistration blocked, after the lock), a miss
/// finds no watch room and nothing idle to evict: it waits for the watch being given back
/// instead of failing with `ENOSPC`.
#[test]
fn a_miss_waits_for_a_watch_another_thread_gives_back() {
    let memory = FakeMemory::new(1);
    let far = BASE + 64 * PAGE;
    let Blocked {
        cache,
        gate,
        entered,
        release,
    } = blocked_deregistration_ahead(&memory, far);
    std::thread::scope(|scope| {
        let evictor = scope.spawn(|| assert_eq!(cache.evict_idle(), 1));
        entered
            .recv_timeout(BLOCK_LIMIT)
            .expect("the registration of BASE was not deregistered");
        let misser = scope.spawn(|| {
            cache
                .cached_reg(ptr(far), PAGE, RW)
                .map(|registration| registration.lkey())
        });
        let refused_by = Instant::now() + BLOCK_LIMIT;
        while memory.refused_watches() == 0 && Instant::now() < refused_by {
            std::thread::yield_now();
        }
        assert_eq!(
            memory.refused_watches(),
            1,
            "the miss never lacked a watch slot"
        );
        release
            .send(())
            .expect("the deregistration waits for its release");
        evictor.join().unwrap();
        let lkey = misser
            .join()
            .unwrap()
            .expect("the miss failed instead of waiting for the watch being given back");
        assert!(memory.is_current(lkey, far, PAGE));
    });
    assert!(!gate.timed_out.load(Relaxed));
    drop(cache);
    assert_eq!(memory.live(), (0, 0), "leaked registrations");
    assert_eq!(memory.active_watches(), 0);
}
