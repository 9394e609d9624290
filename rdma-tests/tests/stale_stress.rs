//! Stress: eight threads register, send and verify their buffers through one cache (pinned; ODP
//! where rxe's ODP is correct) while another thread keeps giving those buffers new pages. No
//! delivery may hold a stale byte.
//!
//! The buffers are adjacent, so the cache merges neighbours and one buffer's change invalidates
//! registrations other threads use. A buffer is changed only between its owner's sends (a lock
//! per buffer: changing memory under a transfer in flight is undefined for any cache), so each
//! send must deliver exactly the buffer's current contents. The one error allowed is the
//! documented `Error::Unstable` (the pages changed during every registration attempt, possible
//! when a merge spans a neighbour being changed); it is counted and the send retried.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdma_tests::rig::{AnonMap, Tally, WriteRig};
use rdma_tests::{error_chain, expect_odp_correct, require_devices, RXE0};
use regcache::{Access, Config, Error, Mode, Policy, RdmaCache};
use verbs::{Context, Mtu, ProtectionDomain};

const WORKERS: usize = 8;
const BUFFER: usize = 4 * 4096;
/// How long the threads run (bounded for emulated machines).
const RUN_FOR: Duration = Duration::from_secs(10);
/// Sends each worker must complete for the run to mean anything.
const MIN_SENDS_PER_WORKER: u64 = 5;

/// A buffer and the byte it holds now.
struct Slot {
    map: AnonMap,
    byte: u8,
}

#[test]
fn pinned_cache_never_sends_stale_bytes_while_buffers_change() {
    if require_devices().is_none() {
        return;
    }
    stress(Mode::Pinned, Policy::Pinned);
}

#[test]
fn odp_cache_never_sends_stale_bytes_while_buffers_change() {
    if require_devices().is_none() {
        return;
    }
    if !expect_odp_correct() {
        println!("rxe's ODP is not correct on this kernel: the odp cache is refused, not tested");
        return;
    }
    stress(Mode::Odp, Policy::Odp);
}

/// The stress through a cache in `mode`, which must run with `policy`.
fn stress(mode: Mode, policy: Policy) {
    let ctx = Context::open(RXE0.device).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let pd = ProtectionDomain::new(&ctx).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let config = Config {
        mode,
        ..Config::default()
    };
    // The rigs' QPs run at path MTU 4096, so ODP's self-test does too.
    let cache = RdmaCache::new(pd.clone(), config, Mtu::Mtu4096)
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    assert_eq!(cache.policy(), policy, "{:?}", cache.odp_self_test());

    // Adjacent buffers: reserve the whole span, then map each buffer at its place in it.
    let span = AnonMap::new(WORKERS * BUFFER);
    let base = span.addr();
    drop(span);
    let slots: Vec<Mutex<Slot>> = (0..WORKERS)
        .map(|i| {
            let map = AnonMap::at(base + i * BUFFER, BUFFER);
            map.fill(1);
            Mutex::new(Slot { map, byte: 1 })
        })
        .collect();
    let links: Vec<WriteRig> = (0..WORKERS)
        .map(|_| WriteRig::new(&pd, RXE0, RXE0, BUFFER))
        .collect();

    let stop = AtomicBool::new(false);
    let sends = AtomicU64::new(0);
    let unstable = AtomicU64::new(0);
    let changes = AtomicU64::new(0);
    let deadline = Instant::now() + RUN_FOR;
    std::thread::scope(|scope| {
        let workers: Vec<_> = slots
            .iter()
            .zip(links)
            .enumerate()
            .map(|(i, (slot, mut link))| {
                let (cache, stop, sends, unstable) = (&cache, &stop, &sends, &unstable);
                scope.spawn(move || {
                    let mut mine = 0;
                    while !stop.load(Relaxed) {
                        let slot = slot.lock().unwrap();
                        // SAFETY: the buffer is reached only through raw pointers and the
                        // device only reads it (no write rights are asked for).
                        let registration = match unsafe {
                            cache.cached_reg(slot.map.ptr(), BUFFER, Access::LOCAL_READ_ONLY)
                        } {
                            Ok(registration) => registration,
                            Err(Error::Unstable { .. }) => {
                                unstable.fetch_add(1, Relaxed);
                                continue;
                            }
                            Err(e) => panic!("worker {i}: cached_reg: {}", error_chain(&e)),
                        };
                        link.write(slot.map.addr(), BUFFER, registration.lkey())
                            .unwrap_or_else(|e| panic!("worker {i}: write: {}", error_chain(&e)));
                        drop(registration);
                        let tally =
                            Tally::of(link.landed(BUFFER), slot.byte, slot.byte.wrapping_sub(1));
                        assert!(
                            tally.all_expected(),
                            "worker {i}: sent {tally:?} expecting byte {} (stale = previous byte)",
                            slot.byte
                        );
                        drop(slot);
                        // Let the changer in: the mutex is not fair, and a worker that locks
                        // again at once would starve it.
                        std::thread::yield_now();
                        mine += 1;
                        sends.fetch_add(1, Relaxed);
                    }
                    mine
                })
            })
            .collect();

        // The changer: new pages for one buffer after another, by remap or by discard.
        let mut round: usize = 0;
        while Instant::now() < deadline {
            let mut slot = slots[round % WORKERS].lock().unwrap();
            if round % 2 == 0 {
                slot.map.remap_in_place();
            } else {
                slot.map.discard_pages();
            }
            // Never 0: fresh pages read as 0, so a lost fill must not pass for the new byte.
            slot.byte = slot.byte % 250 + 1;
            slot.map.fill(slot.byte);
            drop(slot);
            changes.fetch_add(1, Relaxed);
            round += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        stop.store(true, Relaxed);
        for (i, worker) in workers.into_iter().enumerate() {
            let mine = worker.join().expect("worker panicked");
            assert!(
                mine >= MIN_SENDS_PER_WORKER,
                "worker {i} completed only {mine} sends: the run proves little"
            );
        }
    });
    assert!(
        changes.load(Relaxed) >= 2 * WORKERS as u64,
        "only {} buffer changes: the run proves little",
        changes.load(Relaxed)
    );
    let stats = cache.stats();
    println!(
        "{} sends, {} buffer changes, {} unstable registrations; {stats:?}",
        sends.load(Relaxed),
        changes.load(Relaxed),
        unstable.load(Relaxed)
    );
    // Pinned registrations must be invalidated when their pages change; ODP ones need not be
    // (the device follows the page tables).
    if policy == Policy::Pinned {
        assert!(stats.invalidated > 0, "no invalidation seen: {stats:?}");
    }
    assert!(stats.hits > 0, "no hit seen: {stats:?}");
    drop(slots);
    drop(cache);
    assert_eq!(
        verbs::drop_failures(),
        0,
        "a verbs object failed to be destroyed"
    );
}
