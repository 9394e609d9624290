//! The `regwatch` client crate against the real module: what a registration
//! cache relies on, checked through the safe Rust API: which changes
//! invalidate a watch (with which reason) and which keep it valid, exactly
//! once, and a reused slot never validating an old watch.
//! tests/regwatch_hostile.rs has bad input, other processes, scale, races
//! and the per-user limit.
//!
//! The module must be loaded (the VM harness insmods `kmod/regwatch.ko`).
//! On a host without it every test prints why and returns; inside the VM
//! (`REGCACHE_VM=1`) a missing module is a failure.

use rdma_tests::watching::{
    assert_errno, drain, map_pages, open, page, poll_readable, protect, unmap, unwatch, watch,
};
use rdma_tests::{error_chain, in_vm};
use regwatch::{Error, Monitor, Reason, Record};

/// Whether the fd polls readable right now.
fn readable(monitor: &Monitor) -> bool {
    poll_readable(monitor, 0)
}

#[test]
fn the_module_is_loaded_in_the_vm() {
    match Monitor::open() {
        Ok(monitor) => {
            let api = monitor.api_info();
            assert_eq!(u64::from(monitor.capacity()), api.default_slots);
            assert!(api.max_slots >= api.default_slots, "{api:?}");
            assert!(!api.strict, "the harness loads the module without strict=1");
            assert_eq!(monitor.generation(), 0);
            assert_eq!(monitor.totals(), regwatch::Totals::default());
        }
        Err(Error::NotLoaded) => assert!(!in_vm(), "REGCACHE_VM=1 but regwatch is not loaded"),
        Err(err) => panic!("{}", error_chain(&err)),
    }
}

#[test]
fn munmap_invalidates_and_is_reported_once_with_reason_unmap() {
    let Some(monitor) = open(Monitor::builder().capacity(16)) else {
        return;
    };
    let len = 2 * page();
    let addr = map_pages(2);
    let generation = monitor.generation();
    let w = watch(&monitor, addr, len, 0xfeed);
    assert!(monitor.is_valid(&w));
    assert!(!readable(&monitor));

    unmap(addr, len);

    assert!(!monitor.is_valid(&w));
    assert_eq!(monitor.generation(), generation + 1);
    assert_eq!(monitor.dirty_unread(), 1);
    assert!(readable(&monitor));
    let expected = Record {
        cookie: 0xfeed,
        watch: w,
        start: addr,
        end: addr + len,
        reason: Reason::Unmap,
    };
    assert_eq!(drain(&monitor), [expected]);
    assert_eq!(drain(&monitor), [], "a dirty watch is reported once");
    assert!(!readable(&monitor));
    assert_eq!(monitor.dirty_unread(), 0);
    assert!(!monitor.is_valid(&w), "stays invalid after it was read");
    let totals = monitor.totals();
    assert_eq!((totals.watched, totals.dirtied, totals.reported), (1, 1, 1));

    unwatch(&monitor, w, 0xfeed);
    assert!(!monitor.is_valid(&w));
    assert_eq!(monitor.totals().unwatched, 1);
}

#[test]
fn a_watch_covers_whole_pages() {
    let Some(monitor) = open(Monitor::builder().capacity(16)) else {
        return;
    };
    let addr = map_pages(3);
    // 10 bytes in the middle page: the watch is exactly that page.
    let w = watch(&monitor, addr + page() + 100, 10, 1);
    unmap(addr, page());
    unmap(addr + 2 * page(), page());
    assert!(monitor.is_valid(&w), "unmapping the neighbouring pages");
    unmap(addr + page(), page());
    assert!(!monitor.is_valid(&w));
    let records = drain(&monitor);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        (records[0].start, records[0].end),
        (addr + page(), addr + 2 * page())
    );
    unwatch(&monitor, w, 1);
}

#[test]
fn madvise_mremap_and_map_fixed_invalidate_with_their_reasons() {
    let Some(monitor) = open(Monitor::builder().capacity(16)) else {
        return;
    };
    let page = page();
    let zapped = map_pages(1);
    let moved = map_pages(1);
    let target = map_pages(1);
    let replaced = map_pages(1);
    let watches = [
        watch(&monitor, zapped, page, 1),
        watch(&monitor, moved, page, 2),
        watch(&monitor, replaced, page, 3),
    ];

    // SAFETY: ranges from `map_pages` that no reference points into.
    unsafe {
        assert_eq!(
            libc::madvise(zapped as *mut libc::c_void, page, libc::MADV_DONTNEED),
            0
        );
        let new_addr = libc::mremap(
            moved as *mut libc::c_void,
            page,
            page,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            target as *mut libc::c_void,
        );
        assert_eq!(new_addr as usize, target, "mremap");
        let new_map = libc::mmap(
            replaced as *mut libc::c_void,
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        );
        assert_eq!(new_map as usize, replaced, "mmap MAP_FIXED");
    }

    assert!(watches.iter().all(|w| !monitor.is_valid(w)));
    let mut reasons: Vec<(u64, Reason)> = drain(&monitor)
        .iter()
        .map(|r| (r.cookie, r.reason))
        .collect();
    reasons.sort_unstable_by_key(|&(cookie, _)| cookie);
    assert_eq!(
        reasons,
        [(1, Reason::Clear), (2, Reason::Unmap), (3, Reason::Unmap)]
    );
    for (cookie, w) in (1..).zip(watches) {
        unwatch(&monitor, w, cookie);
    }
    for addr in [zapped, target, replaced] {
        unmap(addr, page);
    }
}

#[test]
fn munmap_of_a_neighbouring_page_keeps_the_watch_valid() {
    let Some(monitor) = open(Monitor::builder().capacity(16)) else {
        return;
    };
    let addr = map_pages(3);
    let middle = addr + page();
    let w = watch(&monitor, middle, page(), 2);
    let generation = monitor.generation();
    unmap(addr, page());
    unmap(middle + page(), page());
    assert!(monitor.is_valid(&w));
    assert_eq!(monitor.generation(), generation);
    assert_eq!(drain(&monitor), []);
    unwatch(&monitor, w, 2);
    unmap(middle, page());
}

#[test]
fn mprotect_keeps_the_watch_valid() {
    let Some(monitor) = open(Monitor::builder().capacity(16)) else {
        return;
    };
    let len = 4 * page();
    let addr = map_pages(4);
    let w = watch(&monitor, addr, len, 3);
    let generation = monitor.generation();
    protect(addr, len, libc::PROT_READ);
    protect(addr + page(), page(), libc::PROT_NONE);
    protect(addr, len, libc::PROT_READ | libc::PROT_WRITE);
    // SAFETY: the range is mapped writable again and owned by this test.
    unsafe { (addr as *mut u8).write_bytes(0x5a, len) };
    assert!(monitor.is_valid(&w));
    assert_eq!(monitor.generation(), generation);
    assert_eq!(drain(&monitor), []);
    unwatch(&monitor, w, 3);
    unmap(addr, len);
}

#[test]
fn in_strict_mode_mprotect_invalidates_with_reason_protection() {
    let Some(monitor) = open(Monitor::builder().capacity(16).strict(true)) else {
        return;
    };
    assert!(monitor.api_info().strict);
    let addr = map_pages(1);
    let w = watch(&monitor, addr, page(), 4);
    protect(addr, page(), libc::PROT_READ);
    assert!(!monitor.is_valid(&w));
    let records = drain(&monitor);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        (records[0].cookie, records[0].reason),
        (4, Reason::Protection)
    );
    unwatch(&monitor, w, 4);
    unmap(addr, page());
}

#[test]
fn unwatch_drops_a_pending_event() {
    let Some(monitor) = open(Monitor::builder().capacity(16)) else {
        return;
    };
    let addr = map_pages(1);
    let w = watch(&monitor, addr, page(), 5);
    unmap(addr, page());
    assert_eq!(monitor.dirty_unread(), 1);
    assert!(readable(&monitor));
    unwatch(&monitor, w, 5);
    assert_eq!(monitor.dirty_unread(), 0);
    assert!(!readable(&monitor));
    assert_eq!(drain(&monitor), []);
    let totals = monitor.totals();
    assert_eq!(
        (totals.dirtied, totals.reported, totals.unwatched),
        (1, 0, 1)
    );
}

#[test]
fn a_reused_slot_never_validates_an_old_watch() {
    let Some(monitor) = open(Monitor::builder().capacity(1)) else {
        return;
    };
    let addr = map_pages(2);
    let old = watch(&monitor, addr, page(), 10);
    assert_errno(
        monitor.watch(addr + page(), page(), 11),
        |e| matches!(e, Error::Watch { .. }),
        libc::ENOSPC,
        "a second watch with one slot",
    );
    unwatch(&monitor, old, 10);
    let new = watch(&monitor, addr + page(), page(), 11);
    assert_eq!(new.slot(), old.slot());
    assert_ne!(new.seq(), old.seq());
    assert!(monitor.is_valid(&new));
    assert!(!monitor.is_valid(&old));
    assert_errno(
        monitor.unwatch(old, 10),
        |e| matches!(e, Error::Unwatch { slot: 0, .. }),
        libc::EINVAL,
        "unwatching the old watch (old cookie)",
    );
    assert!(monitor.is_valid(&new));
    unwatch(&monitor, new, 11);
    unmap(addr, 2 * page());
}
