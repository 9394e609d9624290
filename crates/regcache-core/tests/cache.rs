//! Behaviour of the cache against the fakes, one rule per test.

use regcache_core::testing::{FakeInvalidation, FakeMemory, FakeRegistrar, PAGE};
use regcache_core::{Access, Cache, Error, Limits, Policy, Registration};

const BASE: usize = 0x10_0000;
const RW: Access = Access::LOCAL_WRITE;

type FakeCache = Cache<FakeRegistrar, FakeInvalidation>;
type FakeRegistration = Registration<FakeRegistrar, FakeInvalidation>;

fn ptr(addr: usize) -> *const u8 {
    std::ptr::without_provenance(addr)
}

fn setup(policy: Policy, limits: Limits) -> (FakeMemory, FakeCache) {
    let memory = FakeMemory::new(64);
    memory.map(BASE, 64 * PAGE);
    let cache = memory.cache(policy, limits);
    (memory, cache)
}

fn pinned() -> (FakeMemory, FakeCache) {
    setup(Policy::Pinned, Limits::default())
}

fn reg(cache: &FakeCache, addr: usize, len: usize) -> FakeRegistration {
    cache.cached_reg(ptr(addr), len, RW).unwrap()
}

#[test]
fn cache_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<FakeCache>();
    assert_send_sync::<FakeRegistration>();
}

#[test]
fn a_repeated_request_hits() {
    let (memory, cache) = pinned();
    let first = reg(&cache, BASE + 100, 1000);
    let second = reg(&cache, BASE + 100, 1000);
    assert_eq!(first.lkey(), second.lkey());
    assert_eq!((first.addr(), first.length()), (BASE, PAGE));
    assert_eq!(memory.registrations(), 1);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (1, 1));
    assert_eq!((stats.regions, stats.regions_in_use), (1, 1));
    assert_eq!(stats.bytes_registered, PAGE as u64);
}

#[test]
fn a_contained_request_hits() {
    let (memory, cache) = pinned();
    let outer = reg(&cache, BASE, 4 * PAGE);
    let inner = reg(&cache, BASE + PAGE + 7, 2 * PAGE);
    assert_eq!(outer.lkey(), inner.lkey());
    assert_eq!(memory.registrations(), 1);
}

#[test]
fn missing_rights_miss_and_the_merge_keeps_both() {
    let (memory, cache) = pinned();
    let local = reg(&cache, BASE, PAGE);
    let remote = cache
        .cached_reg(ptr(BASE), PAGE, Access::REMOTE_READ)
        .unwrap();
    assert_ne!(local.lkey(), remote.lkey());
    assert_eq!(remote.access(), RW | Access::REMOTE_READ);
    assert_eq!(reg(&cache, BASE, PAGE).lkey(), remote.lkey());
    assert_eq!(memory.registrations(), 2);
}

#[test]
fn a_remapped_range_is_registered_again() {
    let (memory, cache) = pinned();
    let before = reg(&cache, BASE, PAGE).lkey();
    memory.map(BASE, PAGE);
    let after = reg(&cache, BASE, PAGE);
    assert_ne!(after.lkey(), before);
    assert!(memory.is_current(after.lkey(), BASE, PAGE));
    assert!(
        !memory.is_live(before),
        "the idle stale region was deregistered"
    );
    assert_eq!(cache.stats().invalidated, 1);
}

#[test]
fn a_held_region_outlives_its_invalidation() {
    let (memory, cache) = pinned();
    let held = reg(&cache, BASE, PAGE);
    memory.unmap(BASE, PAGE);
    memory.map(BASE, PAGE);
    let fresh = reg(&cache, BASE, PAGE);
    assert!(memory.is_live(held.lkey()));
    assert_eq!(cache.stats().regions_in_use, 2);
    let held_lkey = held.lkey();
    drop(held);
    assert!(!memory.is_live(held_lkey));
    assert!(memory.is_live(fresh.lkey()));
    assert_eq!(memory.double_deregistrations(), 0);
}

#[test]
fn an_unmapped_range_is_an_error_not_a_stale_hit() {
    let (memory, cache) = pinned();
    drop(reg(&cache, BASE, PAGE));
    memory.unmap(BASE, PAGE);
    match cache.cached_reg(ptr(BASE), PAGE, RW) {
        Err(Error::Register { addr, source, .. }) => {
            assert_eq!(addr, BASE);
            assert_eq!(source.raw_os_error(), Some(14));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(memory.live(), (0, 0));
    assert_eq!(memory.active_watches(), 0);
}

#[test]
fn adjacent_requests_merge() {
    let (memory, cache) = pinned();
    let left = reg(&cache, BASE, PAGE);
    let right = reg(&cache, BASE + PAGE, PAGE);
    assert_eq!((right.addr(), right.length()), (BASE, 2 * PAGE));
    let both = reg(&cache, BASE + 10, 2 * PAGE - 20);
    assert_eq!(both.lkey(), right.lkey());
    let left_lkey = left.lkey();
    assert!(
        memory.is_live(left_lkey),
        "merged-away region kept while held"
    );
    drop(left);
    assert!(!memory.is_live(left_lkey));
    assert_eq!(cache.stats().merges, 1);
}

#[test]
fn overlapping_requests_merge_within_the_limit_only() {
    let limits = Limits {
        max_merge_bytes: 3 * PAGE,
        ..Limits::default()
    };
    let (_memory, cache) = setup(Policy::Pinned, limits);
    let a = reg(&cache, BASE, 2 * PAGE);
    let b = reg(&cache, BASE + PAGE, 2 * PAGE);
    assert_eq!((b.addr(), b.length()), (BASE, 3 * PAGE));
    let c = reg(&cache, BASE + 2 * PAGE, 2 * PAGE);
    assert_eq!((c.addr(), c.length()), (BASE + 2 * PAGE, 2 * PAGE));
    let d = reg(&cache, BASE + 6 * PAGE, PAGE);
    assert_eq!(reg(&cache, BASE + 6 * PAGE, PAGE).lkey(), d.lkey());
    assert_eq!(cache.stats().merges, 1);
    drop((a, b, c));
}

#[test]
fn a_failed_merge_falls_back_to_the_request_alone() {
    let (memory, cache) = pinned();
    memory.limit_registration_bytes(Some(2 * PAGE));
    let _left = reg(&cache, BASE, 2 * PAGE);
    let right = reg(&cache, BASE + PAGE, 2 * PAGE);
    assert_eq!((right.addr(), right.length()), (BASE + PAGE, 2 * PAGE));
    assert_eq!(cache.stats().merges, 0);
    assert_eq!(reg(&cache, BASE + 2 * PAGE, 10).lkey(), right.lkey());
}

#[test]
fn a_change_during_registration_is_retried() {
    let (memory, cache) = pinned();
    let racer = memory.clone();
    let mut remaining = 1;
    memory.on_register(move |addr, len| {
        if remaining > 0 {
            remaining -= 1;
            racer.map(addr, len);
        }
    });
    let registration = reg(&cache, BASE, PAGE);
    assert!(memory.is_current(registration.lkey(), BASE, PAGE));
    assert_eq!(cache.stats().registration_retries, 1);
    assert_eq!(memory.live().0, 1, "the raced registration was released");
}

#[test]
fn pages_that_never_settle_give_unstable() {
    let (memory, cache) = pinned();
    let racer = memory.clone();
    memory.on_register(move |addr, len| racer.map(addr, len));
    match cache.cached_reg(ptr(BASE), PAGE, RW) {
        Err(Error::Unstable { attempts, .. }) => assert_eq!(attempts, 4),
        other => panic!("{other:?}"),
    }
    assert_eq!(memory.live(), (0, 0));
    assert_eq!(memory.active_watches(), 0);
}

#[test]
fn the_least_recently_used_idle_region_is_evicted() {
    let limits = Limits {
        max_regions: 2,
        ..Limits::default()
    };
    let (memory, cache) = setup(Policy::Pinned, limits);
    let a = reg(&cache, BASE, PAGE).lkey();
    let b = reg(&cache, BASE + 4 * PAGE, PAGE).lkey();
    drop(reg(&cache, BASE, PAGE));
    let c = reg(&cache, BASE + 8 * PAGE, PAGE).lkey();
    assert!(memory.is_live(a) && memory.is_live(c));
    assert!(!memory.is_live(b));
    assert_eq!(cache.stats().evictions, 1);
}

#[test]
fn eviction_by_bytes() {
    let limits = Limits {
        max_bytes: 4 * PAGE,
        ..Limits::default()
    };
    let (memory, cache) = setup(Policy::Pinned, limits);
    drop(reg(&cache, BASE, 3 * PAGE));
    drop(reg(&cache, BASE + 8 * PAGE, 2 * PAGE));
    assert_eq!(memory.live(), (1, 2 * PAGE));
}

#[test]
fn held_regions_are_never_evicted() {
    let limits = Limits {
        max_regions: 1,
        ..Limits::default()
    };
    let (memory, cache) = setup(Policy::Pinned, limits);
    let a = reg(&cache, BASE, PAGE);
    let b = reg(&cache, BASE + 4 * PAGE, PAGE);
    assert!(memory.is_live(a.lkey()) && memory.is_live(b.lkey()));
    drop((a, b));
    let _c = reg(&cache, BASE + 8 * PAGE, PAGE);
    assert_eq!(memory.live().0, 1);
}

#[test]
fn evict_idle_releases_everything_unheld() {
    let (memory, cache) = pinned();
    let held = reg(&cache, BASE, PAGE);
    drop(reg(&cache, BASE + 4 * PAGE, PAGE));
    drop(reg(&cache, BASE + 8 * PAGE, PAGE));
    assert_eq!(cache.evict_idle(), 2);
    assert_eq!(memory.live_lkeys(), [held.lkey()]);
}

#[test]
fn off_registers_on_every_call() {
    let (memory, cache) = setup(Policy::Off, Limits::default());
    let first = reg(&cache, BASE + 10, 100);
    let second = reg(&cache, BASE + 10, 100);
    assert_ne!(first.lkey(), second.lkey());
    assert_eq!((first.addr(), first.length()), (BASE + 10, 100));
    drop((first, second));
    assert_eq!(memory.live(), (0, 0));
    assert_eq!(memory.active_watches(), 0);
    assert_eq!(cache.stats().misses, 2);
}

#[test]
fn odp_registrations_are_on_demand_and_unwatched() {
    let (memory, cache) = setup(Policy::Odp, Limits::default());
    let first = reg(&cache, BASE, PAGE);
    assert_eq!(first.access(), RW | Access::ON_DEMAND);
    assert_eq!(memory.active_watches(), 0);
    memory.map(BASE, PAGE);
    assert_eq!(reg(&cache, BASE, PAGE).lkey(), first.lkey());
}

#[test]
fn odp_for_device_reads_pins_what_the_device_writes() {
    let (memory, cache) = setup(Policy::OdpForDeviceReads, Limits::default());
    let source = cache
        .cached_reg(ptr(BASE), PAGE, Access::LOCAL_READ_ONLY)
        .unwrap();
    assert_eq!(source.access(), Access::ON_DEMAND);
    assert_eq!(memory.active_watches(), 0);
    let sink = reg(&cache, BASE + 4 * PAGE, PAGE);
    assert_eq!(sink.access(), RW);
    assert_eq!(memory.active_watches(), 1);
    memory.map(BASE + 4 * PAGE, PAGE);
    assert_ne!(reg(&cache, BASE + 4 * PAGE, PAGE).lkey(), sink.lkey());
}

#[test]
fn trust_mode_hands_out_stale_registrations() {
    let (memory, cache) = setup(Policy::TrustWithoutInvalidation, Limits::default());
    let before = reg(&cache, BASE, PAGE).lkey();
    memory.map(BASE, PAGE);
    let after = reg(&cache, BASE, PAGE);
    assert_eq!(after.lkey(), before);
    assert!(
        !memory.is_current(after.lkey(), BASE, PAGE),
        "the negative control must be stale"
    );
}

#[test]
fn drain_is_skipped_while_the_generation_stands() {
    let (memory, cache) = pinned();
    for i in 0..8 {
        drop(reg(&cache, BASE + 2 * i * PAGE, PAGE));
    }
    assert_eq!(memory.drains(), 0);
    memory.map(BASE, PAGE);
    drop(reg(&cache, BASE + 40 * PAGE, PAGE));
    drop(reg(&cache, BASE + 42 * PAGE, PAGE));
    assert_eq!(memory.drains(), 1);
    assert_eq!(cache.stats().invalidated, 1);
}

#[test]
fn flush_invalidations_releases_idle_stale_regions() {
    let (memory, cache) = pinned();
    drop(reg(&cache, BASE, PAGE));
    memory.map(BASE, PAGE);
    assert_eq!(memory.live().0, 1);
    cache.flush_invalidations().unwrap();
    assert_eq!(memory.live().0, 0);
}

#[test]
fn failed_deregistrations_are_counted_not_panicked() {
    let (memory, cache) = pinned();
    let registration = reg(&cache, BASE, PAGE);
    memory.fail_deregistrations(true);
    memory.map(BASE, PAGE);
    drop(reg(&cache, BASE, PAGE));
    drop(registration);
    assert_eq!(cache.stats().deregister_failures, 1);
    assert_eq!(cache.evict_idle(), 1);
    assert_eq!(cache.stats().deregister_failures, 2);
    assert_eq!(cache.stats().regions, 0);
}

#[test]
fn watch_exhaustion_is_a_watch_error() {
    let memory = FakeMemory::new(1);
    memory.map(BASE, 64 * PAGE);
    let cache = memory.cache(Policy::Pinned, Limits::default());
    let _held = reg(&cache, BASE, PAGE);
    match cache.cached_reg(ptr(BASE + 8 * PAGE), PAGE, RW) {
        Err(Error::Watch { source, .. }) => assert_eq!(source.raw_os_error(), Some(28)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_and_wrapping_ranges_are_refused() {
    let (_memory, cache) = pinned();
    assert!(matches!(
        cache.cached_reg(ptr(BASE), 0, RW),
        Err(Error::InvalidRange { len: 0, .. })
    ));
    assert!(matches!(
        cache.cached_reg(ptr(usize::MAX - 10), 100, RW),
        Err(Error::InvalidRange { .. })
    ));
    assert!(matches!(
        cache.cached_reg(ptr(usize::MAX - 10), 5, RW),
        Err(Error::InvalidRange { .. })
    ));
}

#[test]
fn registrations_outlive_the_cache() {
    let (memory, cache) = pinned();
    let held = reg(&cache, BASE, PAGE);
    drop(reg(&cache, BASE + 4 * PAGE, PAGE));
    drop(cache);
    assert_eq!(memory.live_lkeys(), [held.lkey()]);
    drop(held);
    assert_eq!(memory.live(), (0, 0));
    assert_eq!(memory.active_watches(), 0);
}

/// Requests `[addr, addr + 64)` until this thread's last hit holds its region (a registration,
/// then the second index hit in a row fills the slot, then hits served from it), dropping each
/// handle; returns the region's lkey.
fn remembered_as_last_hit(cache: &FakeCache, addr: usize) -> u32 {
    let lkey = reg(cache, addr, 64).lkey();
    for _ in 0..3 {
        assert_eq!(reg(cache, addr, 64).lkey(), lkey);
    }
    lkey
}

#[test]
fn a_last_hit_whose_pages_changed_is_not_returned() {
    let (memory, cache) = pinned();
    let stale = remembered_as_last_hit(&cache, BASE);
    // Nothing was drained yet, so the index is unchanged: only the watch tells.
    memory.map(BASE, PAGE);
    let fresh = reg(&cache, BASE, 64);
    assert_ne!(fresh.lkey(), stale);
    assert!(memory.is_current(fresh.lkey(), BASE, 64));
}

#[test]
fn an_evicted_last_hit_is_neither_kept_nor_returned() {
    let (memory, cache) = pinned();
    let evicted = remembered_as_last_hit(&cache, BASE);
    assert_eq!(
        cache.evict_idle(),
        1,
        "the last hit must not count as a use"
    );
    assert!(!memory.is_live(evicted));
    assert_eq!(memory.live(), (0, 0));
    let again = reg(&cache, BASE, 64);
    assert_ne!(again.lkey(), evicted);
    assert_eq!(cache.stats().misses, 2);
}

#[test]
fn a_last_hit_merged_away_is_not_returned() {
    let (_memory, cache) = pinned();
    let held = reg(&cache, BASE, 64);
    assert_eq!(remembered_as_last_hit(&cache, BASE), held.lkey());
    // Adjacent: the new registration absorbs the held one, which leaves the index but stays
    // registered (and valid) while `held` lives.
    let merged = reg(&cache, BASE + PAGE, 64);
    assert_eq!((merged.addr(), merged.length()), (BASE, 2 * PAGE));
    assert_eq!(reg(&cache, BASE, 64).lkey(), merged.lkey());
}

#[test]
fn a_last_hit_serves_only_its_own_cache() {
    let (memory, first) = pinned();
    let second = memory.cache(Policy::Pinned, Limits::default());
    let in_first = remembered_as_last_hit(&first, BASE);
    let in_second = reg(&second, BASE, 64);
    assert_ne!(in_second.lkey(), in_first);
    assert_eq!(second.stats().misses, 1);
}

/// A cache whose invalidation source has room for `watch_slots` watches.
fn with_watch_slots(watch_slots: usize) -> (FakeMemory, FakeCache) {
    let memory = FakeMemory::new(watch_slots);
    memory.map(BASE, 64 * PAGE);
    let cache = memory.cache(Policy::Pinned, Limits::default());
    (memory, cache)
}

#[test]
fn out_of_watches_the_idle_registrations_are_evicted_and_the_request_retried() {
    let (memory, cache) = with_watch_slots(2);
    // Two pages apart, so that they neither merge nor touch.
    for page in [0, 2] {
        drop(reg(&cache, BASE + page * PAGE, PAGE));
    }
    let third = reg(&cache, BASE + 4 * PAGE, PAGE);
    assert!(memory.is_current(third.lkey(), BASE + 4 * PAGE, PAGE));
    assert_eq!(memory.active_watches(), 1);
    assert_eq!(memory.live().0, 1, "the two idle registrations are gone");
    let stats = cache.stats();
    assert_eq!((stats.misses, stats.evictions, stats.regions), (3, 2, 1));
}

#[test]
fn out_of_watches_with_every_registration_held_is_an_error_that_leaks_nothing() {
    let (memory, cache) = with_watch_slots(2);
    let held: Vec<FakeRegistration> = [0, 2]
        .into_iter()
        .map(|page| reg(&cache, BASE + page * PAGE, PAGE))
        .collect();
    let err = cache
        .cached_reg(ptr(BASE + 4 * PAGE), PAGE, RW)
        .unwrap_err();
    assert!(
        matches!(&err, Error::Watch { source, .. } if source.raw_os_error() == Some(libc::ENOSPC)),
        "{err:?}"
    );
    assert_eq!(
        memory.live().0,
        2,
        "the failed request left no registration behind"
    );
    assert_eq!(memory.active_watches(), 2);
    drop(held);
    assert_eq!(cache.evict_idle(), 2);
    assert_eq!((memory.live().0, memory.active_watches()), (0, 0));
}
