//! Counters, and the hit counter that many threads bump without sharing a cache line.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// A point-in-time copy of the cache's counters (counters only: what a back end found at set-up,
/// such as the ODP verdict, it reports itself). Each field is read on its own, so a copy taken
/// while other threads work may mix moments; `regions_in_use` is exact only when no thread is
/// inside `cached_reg`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests served from the lock-free lookup.
    pub hits: u64,
    /// Requests that took the locked path (most register; some find a registration another
    /// thread just made).
    pub misses: u64,
    /// Registrations that absorbed overlapping or adjacent cached registrations.
    pub merges: u64,
    /// Idle registrations dropped to respect the limits.
    pub evictions: u64,
    /// Cached registrations dropped because their pages changed.
    pub invalidated: u64,
    /// Registrations thrown away because the pages changed while they were being registered.
    pub registration_retries: u64,
    /// Registrations thrown away because, while they were being made outside the lock, another
    /// thread published one that serves the same request.
    pub duplicate_registrations: u64,
    /// Deregistrations the registrar reported as failed.
    pub deregister_failures: u64,
    /// Unwatches the invalidation source reported as failed.
    pub unwatch_failures: u64,
    /// Live registrations, cached or not.
    pub regions: u64,
    /// Live registrations held by at least one [`Registration`](crate::Registration).
    pub regions_in_use: u64,
    /// Bytes covered by the live registrations.
    pub bytes_registered: u64,
}

const STRIPES: usize = 16;

#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// A counter split over cache-line-padded stripes, one chosen per thread, so that hits on
/// different threads never write the same line.
#[derive(Default)]
pub(crate) struct StripedCounter {
    stripes: [Padded; STRIPES],
}

thread_local! {
    // Const-initialised and without Drop: reading it never allocates nor registers a destructor.
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

impl StripedCounter {
    pub(crate) fn increment(&self) {
        let stripe = STRIPE.with(|stripe| {
            if stripe.get() == usize::MAX {
                stripe.set(NEXT_STRIPE.fetch_add(1, Relaxed) % STRIPES);
            }
            stripe.get()
        });
        self.stripes[stripe].0.fetch_add(1, Relaxed);
    }

    pub(crate) fn sum(&self) -> u64 {
        self.stripes
            .iter()
            .map(|stripe| stripe.0.load(Relaxed))
            .sum()
    }
}

/// The live counters behind [`Stats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hits: StripedCounter,
    pub(crate) misses: AtomicU64,
    pub(crate) merges: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) invalidated: AtomicU64,
    pub(crate) registration_retries: AtomicU64,
    pub(crate) duplicate_registrations: AtomicU64,
    pub(crate) deregister_failures: AtomicU64,
    pub(crate) unwatch_failures: AtomicU64,
    pub(crate) regions: AtomicU64,
    pub(crate) bytes_registered: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn region_added(&self, len: usize) {
        self.regions.fetch_add(1, Relaxed);
        self.bytes_registered.fetch_add(len as u64, Relaxed);
    }

    pub(crate) fn region_removed(&self, len: usize) {
        self.regions.fetch_sub(1, Relaxed);
        self.bytes_registered.fetch_sub(len as u64, Relaxed);
    }

    pub(crate) fn live(&self) -> (u64, u64) {
        (
            self.regions.load(Relaxed),
            self.bytes_registered.load(Relaxed),
        )
    }

    pub(crate) fn snapshot(&self, idle_regions: u64) -> Stats {
        let (regions, bytes_registered) = self.live();
        Stats {
            hits: self.hits.sum(),
            misses: self.misses.load(Relaxed),
            merges: self.merges.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
            invalidated: self.invalidated.load(Relaxed),
            registration_retries: self.registration_retries.load(Relaxed),
            duplicate_registrations: self.duplicate_registrations.load(Relaxed),
            deregister_failures: self.deregister_failures.load(Relaxed),
            unwatch_failures: self.unwatch_failures.load(Relaxed),
            regions,
            regions_in_use: regions.saturating_sub(idle_regions),
            bytes_registered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_counter_sums_across_threads() {
        let counter = StripedCounter::default();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| (0..1000).for_each(|_| counter.increment()));
            }
        });
        assert_eq!(counter.sum(), 4000);
    }
}
