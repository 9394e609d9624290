//! Misses from many threads at once, and hits beside them, over a registrar that spends
//! [`REGISTRATION_TIME`] per registration off the caller's CPU (as `ibv_reg_mr` does in the
//! kernel and the device), so that misses registering outside the cache's lock overlap even on
//! two cores.
//!
//! `benches/miss_scaling.rs` runs these and prints the table with the targets.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use regcache_core::testing::{FakeInvalidation, FakeMemory, FakeRegistrar, XorShift, PAGE};
use regcache_core::{Access, Cache, Limits, Policy, Registration};

use crate::summary::thread_cpu_time;

/// What the fake registrar sleeps per registration.
pub const REGISTRATION_TIME: Duration = Duration::from_micros(100);
/// Cached regions at most: each missing thread cycles over more buffers than that, so with
/// least-recently-used eviction every one of its requests misses.
const CAPACITY: usize = 4_096;
/// Buffers each missing thread cycles over.
const BUFFERS_PER_THREAD: usize = 2 * CAPACITY;
/// Most threads missing at once.
const MAX_THREADS: usize = 8;
/// Regions a hitting thread holds and hits.
const HIT_REGIONS: usize = 1_000;
/// Hits timed together: one sample.
const HITS_PER_SAMPLE: u64 = 1_000;
const BASE: usize = 0x1000_0000;

type FakeCache = Cache<FakeRegistrar, FakeInvalidation>;
type FakeRegistration = Registration<FakeRegistrar, FakeInvalidation>;

fn ptr(addr: usize) -> *const u8 {
    std::ptr::without_provenance(addr)
}

/// A cache over a fake memory whose registrations take [`REGISTRATION_TIME`]: the missing
/// threads' buffers (one page each, a page apart, so none merge), then the hitting thread's.
struct Fixture {
    memory: FakeMemory,
    cache: FakeCache,
}

impl Fixture {
    fn new() -> Self {
        let memory = FakeMemory::new(CAPACITY + HIT_REGIONS + 2 * MAX_THREADS);
        memory.map(
            BASE,
            2 * (MAX_THREADS * BUFFERS_PER_THREAD + HIT_REGIONS) * PAGE,
        );
        memory.delay_registrations(REGISTRATION_TIME);
        let limits = Limits {
            max_regions: CAPACITY + HIT_REGIONS,
            ..Limits::default()
        };
        let cache = memory.cache(Policy::Pinned, limits);
        Self { memory, cache }
    }

    /// Buffer `index` of missing thread `thread`.
    fn miss_buffer(thread: usize, index: usize) -> usize {
        BASE + 2 * (thread * BUFFERS_PER_THREAD + index) * PAGE
    }

    /// Hit region `index`.
    fn hit_buffer(index: usize) -> usize {
        BASE + 2 * (MAX_THREADS * BUFFERS_PER_THREAD + index) * PAGE
    }

    /// Thread `thread` requests its buffers in turn from the `first`th until `stop`, dropping
    /// each handle at once; returns how many requests it made.
    fn miss_until(&self, thread: usize, first: u64, stop: &AtomicBool) -> u64 {
        let mut requests = 0;
        while !stop.load(Relaxed) {
            let index = (first + requests) as usize % BUFFERS_PER_THREAD;
            let addr = Self::miss_buffer(thread, index);
            drop(self.request(addr));
            requests += 1;
        }
        requests
    }

    fn request(&self, addr: usize) -> FakeRegistration {
        self.cache
            .cached_reg(ptr(addr), PAGE, Access::LOCAL_WRITE)
            .expect("the fake registers every mapped page")
    }
}

/// Misses per second of `threads` threads missing at once on disjoint buffers for `duration`.
///
/// # Panics
/// When a request hit: the figure would not be of misses.
pub fn miss_throughput(threads: usize, duration: Duration) -> f64 {
    assert!((1..=MAX_THREADS).contains(&threads));
    let fixture = Fixture::new();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let requests: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let (fixture, stop) = (&fixture, &stop);
                scope.spawn(move || fixture.miss_until(thread, 0, stop))
            })
            .collect();
        std::thread::sleep(duration);
        stop.store(true, Relaxed);
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a missing thread panicked"))
            .sum()
    });
    let elapsed = started.elapsed();
    let stats = fixture.cache.stats();
    assert_eq!(stats.hits, 0, "a missing thread's request hit");
    assert_eq!(stats.misses, requests);
    assert_eq!(fixture.memory.registrations(), requests);
    requests as f64 / elapsed.as_secs_f64()
}

/// Which regions a hitting thread asks for.
#[derive(Clone, Copy, Debug)]
pub enum HitPattern {
    /// Always the same one.
    Same,
    /// One of [`HIT_REGIONS`] at random.
    Random,
}

/// CPU time per hit, in ns, of each sample of [`HITS_PER_SAMPLE`] hits.
#[derive(Debug, Default)]
pub struct HitSamples(Vec<f64>);

impl HitSamples {
    /// The `q`-quantile (0 ≤ q ≤ 1), nearest rank.
    ///
    /// # Panics
    /// When there are no samples.
    pub fn quantile(&self, q: f64) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((sorted.len() - 1) as f64 * q).round() as usize;
        sorted[rank]
    }

    /// How many samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Hit latency samples with the cache idle and while another thread misses continuously, in
/// `rounds` alternations of `duration` each (alternating spreads the machine's changing load
/// over both).
///
/// # Panics
/// When a hitting request missed or a missing one hit.
pub fn hits_beside_misses(
    pattern: HitPattern,
    rounds: usize,
    duration: Duration,
) -> (HitSamples, HitSamples) {
    let fixture = Fixture::new();
    let held: Vec<FakeRegistration> = (0..HIT_REGIONS)
        .map(|index| fixture.request(Fixture::hit_buffer(index)))
        .collect();
    let (mut idle, mut beside_misses) = (HitSamples::default(), HitSamples::default());
    let mut rng = XorShift::new(0x5eed);
    let hits_before = fixture.cache.stats().hits;
    let mut hits = 0;
    // The missing thread goes on where it stopped: its buffers cached last are not asked again
    // before eviction took them.
    let mut misses = 0;
    for _ in 0..rounds {
        hits += sample_hits(&fixture, pattern, &mut rng, duration, &mut idle);
        let stop = AtomicBool::new(false);
        let first = misses;
        misses += std::thread::scope(|scope| {
            let missing = scope.spawn(|| fixture.miss_until(0, first, &stop));
            hits += sample_hits(&fixture, pattern, &mut rng, duration, &mut beside_misses);
            stop.store(true, Relaxed);
            missing.join().expect("the missing thread panicked")
        });
        assert!(misses > first, "the missing thread never ran");
    }
    assert_eq!(
        fixture.cache.stats().hits - hits_before,
        hits,
        "a request hit or missed where it should not"
    );
    assert_eq!(fixture.cache.stats().misses, misses + HIT_REGIONS as u64);
    drop(held);
    (idle, beside_misses)
}

/// Times samples of hits into `samples` for `duration`; returns the hits made.
fn sample_hits(
    fixture: &Fixture,
    pattern: HitPattern,
    rng: &mut XorShift,
    duration: Duration,
    samples: &mut HitSamples,
) -> u64 {
    let mut addrs = [0_usize; HITS_PER_SAMPLE as usize];
    let deadline = Instant::now() + duration;
    let mut hits = 0;
    while Instant::now() < deadline {
        for addr in &mut addrs {
            let index = match pattern {
                HitPattern::Same => 0,
                HitPattern::Random => rng.below(HIT_REGIONS),
            };
            *addr = Fixture::hit_buffer(index);
        }
        let started = thread_cpu_time();
        for &addr in &addrs {
            std::hint::black_box(fixture.request(addr));
        }
        let elapsed = thread_cpu_time().saturating_sub(started);
        samples
            .0
            .push(elapsed.as_nanos() as f64 / HITS_PER_SAMPLE as f64);
        hits += HITS_PER_SAMPLE;
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let samples = HitSamples((1..=101).rev().map(f64::from).collect());
        assert_eq!(samples.quantile(0.5), 51.0);
        assert_eq!(samples.quantile(0.99), 100.0);
        assert_eq!(samples.quantile(1.0), 101.0);
    }

    #[test]
    fn misses_and_hits_are_what_they_claim() {
        assert!(miss_throughput(2, Duration::from_millis(20)) > 0.0);
        let (idle, beside) = hits_beside_misses(HitPattern::Random, 1, Duration::from_millis(5));
        assert!(!idle.is_empty() && !beside.is_empty());
    }
}
