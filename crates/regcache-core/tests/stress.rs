//! Threads hitting and missing while another thread keeps replacing their pages.
//!
//! The lock-free hit path is argued correct in `src/cache.rs`; this test checks that argument's
//! conclusions under contention: a registration returned by `cached_reg` never pins a page older
//! than the page that was mapped when the call started, a region is never released while a
//! handle holds it, nothing is released twice, and everything is released at the end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use regcache_core::testing::{FakeMemory, XorShift, PAGE};
use regcache_core::{Access, Error, Limits, Policy};

const BASE: usize = 0x80_0000;
const PAGES: usize = 64;
const WORKERS: usize = 4;

#[test]
fn hits_stay_fresh_while_pages_are_replaced() {
    let memory = FakeMemory::new(4096);
    memory.map(BASE, PAGES * PAGE);
    let limits = Limits {
        max_regions: 16,
        max_bytes: 16 * PAGE,
        max_merge_bytes: 4 * PAGE,
    };
    let cache = memory.cache(Policy::Pinned, limits);
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(2);

    let outcomes: Vec<(u64, u64)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|id| {
                let (memory, cache, stop) = (&memory, &cache, &stop);
                scope.spawn(move || {
                    let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1));
                    let (mut ok, mut unstable) = (0u64, 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        // Half the requests go to 8 hot buffers, so hits are common.
                        let page = if rng.below(2) == 0 {
                            rng.below(8) * 8
                        } else {
                            rng.below(PAGES - 2)
                        };
                        let addr = BASE + page * PAGE + rng.below(PAGE);
                        let len = 1 + rng.below(PAGE);
                        let before = memory.versions(addr, len).expect("always mapped");
                        match cache.cached_reg(
                            std::ptr::without_provenance(addr),
                            len,
                            Access::LOCAL_WRITE,
                        ) {
                            Ok(registration) => {
                                let pinned = memory
                                    .registered_versions(registration.lkey(), addr, len)
                                    .expect("a returned region is live and covers the request");
                                assert!(
                                    pinned.iter().zip(&before).all(|(p, b)| p >= b),
                                    "stale: pinned {pinned:?}, mapped before the call {before:?}"
                                );
                                std::thread::yield_now();
                                assert!(
                                    memory.is_live(registration.lkey()),
                                    "released under a handle"
                                );
                                ok += 1;
                            }
                            Err(Error::Unstable { .. }) => unstable += 1,
                            Err(err) => panic!("undocumented error under stress: {err:?}"),
                        }
                    }
                    (ok, unstable)
                })
            })
            .collect();

        let mut rng = XorShift::new(42);
        let mut remaps = 0u64;
        while Instant::now() < deadline {
            let page = rng.below(PAGES);
            let n = 1 + rng.below(2.min(PAGES - page));
            memory.map(BASE + page * PAGE, n * PAGE);
            remaps += 1;
            if remaps % 64 == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        stop.store(true, Ordering::Relaxed);
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });

    let ok: u64 = outcomes.iter().map(|o| o.0).sum();
    let stats = cache.stats();
    eprintln!("{ok} registrations, {outcomes:?} (ok, unstable) per worker, {stats:?}");
    assert!(ok > 1000, "too little work to mean anything: {ok}");
    assert!(
        stats.hits > 0 && stats.invalidated > 0 && stats.evictions > 0,
        "{stats:?}"
    );
    assert_eq!(stats.regions_in_use, 0);
    assert_eq!(memory.double_deregistrations(), 0);
    drop(cache);
    assert_eq!(memory.live(), (0, 0));
    assert_eq!(memory.active_watches(), 0);
}
