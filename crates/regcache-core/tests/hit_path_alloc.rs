//! The hit path allocates nothing: 10,000 hits under a counting global allocator.
//!
//! Only allocations made on the measuring thread while counting is on are counted, so the test
//! harness's own threads cannot disturb the figure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use regcache_core::testing::{FakeMemory, PAGE};
use regcache_core::{Access, Limits, Policy};

struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds exactly as it does for `System`; the counting touches only a
// const-initialised thread-local and an atomic, neither of which allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from `System` through this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged; `ptr` came from `System` through this allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn count() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|counting| counting.set(true));
    f();
    COUNTING.with(|counting| counting.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

const BASE: usize = 0x100_0000;
const REGIONS: usize = 1000;

#[test]
fn ten_thousand_hits_allocate_nothing() {
    // Proves the counter works, so a zero below means something.
    assert_eq!(allocations_during(|| drop(Box::new(1u64))), 1);

    let memory = FakeMemory::new(2 * REGIONS);
    memory.map(BASE, 2 * REGIONS * PAGE);
    let cache = memory.cache(Policy::Pinned, Limits::default());
    let addr = |i: usize| BASE + 2 * i * PAGE;
    // Disjoint, non-adjacent buffers: one region each, spread over many index chunks.
    for i in 0..REGIONS {
        drop(
            cache
                .cached_reg(
                    std::ptr::without_provenance(addr(i)),
                    PAGE,
                    Access::LOCAL_WRITE,
                )
                .unwrap(),
        );
    }
    let warm_up = cache.cached_reg(
        std::ptr::without_provenance(addr(0)),
        64,
        Access::LOCAL_WRITE,
    );
    drop(warm_up.unwrap());
    let hits_before = cache.stats().hits;

    let allocations = allocations_during(|| {
        for n in 0..10_000 {
            let i = (n * 7919) % REGIONS;
            let registration = cache
                .cached_reg(
                    std::ptr::without_provenance(addr(i) + 8),
                    512,
                    Access::LOCAL_WRITE,
                )
                .expect("hit");
            std::hint::black_box(registration.lkey());
        }
    });

    assert_eq!(
        cache.stats().hits - hits_before,
        10_000,
        "every request must have hit"
    );
    assert_eq!(allocations, 0, "the hit path allocated");
}
