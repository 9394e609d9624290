//! The `regwatch` client crate against the real module: what a registration
//! cache relies on, checked through the safe Rust API.
//!
//! The module must be loaded (the VM harness insmods `kmod/regwatch.ko`).
//! On a host without it every test prints why and returns; inside the VM
//! (`REGCACHE_VM=1`) a missing module is a failure.

use std::collections::HashMap;
use std::ptr;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use rdma_tests::{error_chain, in_vm};
use regcache::testing::XorShift;
use regwatch::{Error, Monitor, Reason, Record, Watch};
use regwatch_common::{assert_errno, drain, map_pages, open, page, unmap, unwatch, watch};

mod regwatch_common;

/// mprotect() of a range the test mapped with [`map_pages`].
fn protect(addr: usize, len: usize, prot: libc::c_int) {
    // SAFETY: only ranges from `map_pages` that no reference points into;
    // the test does not access them while they are not writable.
    let ret = unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot) };
    assert_eq!(ret, 0, "mprotect({addr:#x}, {len}, {prot})");
}

/// Whether the fd polls readable right now.
fn readable(monitor: &Monitor) -> bool {
    poll_readable(monitor, 0)
}

/// Whether the fd polls readable within `timeout_ms`.
fn poll_readable(monitor: &Monitor, timeout_ms: libc::c_int) -> bool {
    let mut fds = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(monitor),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ret = unsafe { libc::poll(&mut fds, 1, timeout_ms) };
    assert!(ret >= 0, "poll: {}", std::io::Error::last_os_error());
    fds.revents & libc::POLLIN != 0
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

#[test]
fn bad_input_gets_an_errno_and_changes_nothing() {
    let Some(monitor) = open(Monitor::builder().capacity(4)) else {
        return;
    };
    let is_watch = |e: &Error| matches!(e, Error::Watch { .. });
    let is_unwatch = |e: &Error| matches!(e, Error::Unwatch { .. });
    let addr = map_pages(1);
    assert_errno(
        monitor.watch(addr, 0, 1),
        is_watch,
        libc::EINVAL,
        "zero length",
    );
    assert_errno(
        monitor.watch(usize::MAX - page() + 1, 2 * page(), 1),
        is_watch,
        libc::EINVAL,
        "start + length overflows",
    );
    assert_errno(
        monitor.watch(1 << 62, page(), 1),
        is_watch,
        libc::EINVAL,
        "beyond the user address space",
    );
    assert_eq!(monitor.totals(), regwatch::Totals::default());

    let w = watch(&monitor, addr, page(), 20);
    assert_errno(
        monitor.unwatch(w, 21),
        is_unwatch,
        libc::EINVAL,
        "wrong cookie",
    );
    assert!(monitor.is_valid(&w), "a refused unwatch changes nothing");
    unwatch(&monitor, w, 20);
    assert_errno(
        monitor.unwatch(w, 20),
        is_unwatch,
        libc::EINVAL,
        "unwatched twice",
    );

    // A watch from a larger monitor: its slot does not exist in this one.
    let Some(larger) = open(Monitor::builder().capacity(8)) else {
        return;
    };
    let foreign: Vec<Watch> = (0..6).map(|i| watch(&larger, addr, page(), i)).collect();
    let beyond = foreign[5];
    assert_eq!(beyond.slot(), 5);
    assert!(!monitor.is_valid(&beyond), "a slot beyond the capacity");
    assert_errno(
        monitor.unwatch(beyond, 5),
        is_unwatch,
        libc::EINVAL,
        "slot beyond capacity",
    );

    let max_slots = monitor.api_info().max_slots;
    let is_capacity = |e: &Error| matches!(e, Error::SetCapacity { .. });
    assert_errno(
        Monitor::with_capacity(0),
        is_capacity,
        libc::EINVAL,
        "capacity 0",
    );
    let too_many = u32::try_from(max_slots + 1).expect("max_slots fits u32");
    assert_errno(
        Monitor::with_capacity(too_many),
        is_capacity,
        libc::EINVAL,
        "capacity above max_slots",
    );
    unmap(addr, page());
}

#[test]
fn a_fork_child_gets_eio_and_changes_nothing() {
    let Some(monitor) = open(Monitor::builder().capacity(8)) else {
        return;
    };
    assert!(!monitor.api_info().strict);
    let addr = map_pages(1);
    let w = watch(&monitor, addr, page(), 30);
    let totals = monitor.totals();

    // SAFETY: the child only uses the inherited monitor (no allocation, no
    // lock another test thread could hold) and leaves with _exit(), running
    // nothing of the parent's.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let eio = |result: Result<(), Error>| result.err().and_then(|e| e.raw_os_error());
        let mut failed = 0;
        if eio(monitor.watch(addr, page(), 31).map(drop)) != Some(libc::EIO) {
            failed |= 1;
        }
        if eio(monitor.unwatch(w, 30)) != Some(libc::EIO) {
            failed |= 2;
        }
        if !matches!(monitor.drain(|_| ()), Err(Error::Read(ref e)) if e.raw_os_error() == Some(libc::EIO))
        {
            failed |= 4;
        }
        // The child has no status area: nothing is valid there.
        if monitor.is_valid(&w) || monitor.generation() != 0 {
            failed |= 8;
        }
        // Closes the child's fd, must not unmap anything of the child's.
        drop(monitor);
        // SAFETY: ends the child without running the test harness's code.
        unsafe { libc::_exit(failed) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(ret, pid, "waitpid: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child: wait status {status:#x} (exit code = bit mask of failed checks: \
         1 watch, 2 unwatch, 4 drain not EIO, 8 status area not empty)"
    );
    // fork write-protected the parent's page: protection only, still valid.
    assert!(monitor.is_valid(&w));
    assert_eq!(monitor.totals(), totals);
    assert_eq!(drain(&monitor), []);
    unwatch(&monitor, w, 30);
    unmap(addr, page());
}

#[test]
fn a_hundred_thousand_watches_are_each_reported_once() {
    const WATCHES: usize = 100_000;
    let Some(monitor) = open(Monitor::builder().capacity(WATCHES as u32)) else {
        return;
    };
    let page = page();
    let len = WATCHES * page;
    // SAFETY: a new anonymous mapping; left untouched (watches need no pages).
    let base = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let base = base as usize;
    let watches: Vec<Watch> = (0..WATCHES)
        .map(|i| watch(&monitor, base + i * page, page, i as u64))
        .collect();
    let generation = monitor.generation();

    unmap(base, len);

    assert_eq!(monitor.generation() - generation, WATCHES as u64);
    assert_eq!(monitor.dirty_unread(), WATCHES as u64);
    assert!(watches.iter().all(|w| !monitor.is_valid(w)));
    let mut seen = vec![false; WATCHES];
    let count = monitor
        .drain(|record| {
            let i = usize::try_from(record.cookie).expect("cookie");
            assert!(!seen[i], "cookie {i} reported twice");
            seen[i] = true;
            assert_eq!(record.watch, watches[i]);
            assert_eq!(
                (record.start, record.end),
                (base + i * page, base + (i + 1) * page)
            );
            assert_eq!(record.reason, Reason::Unmap);
        })
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    assert_eq!(count, WATCHES);
    assert_eq!(drain(&monitor), []);
    for (i, w) in watches.into_iter().enumerate() {
        unwatch(&monitor, w, i as u64);
    }
    let totals = monitor.totals();
    assert_eq!(
        (
            totals.watched,
            totals.unwatched,
            totals.dirtied,
            totals.reported
        ),
        (
            WATCHES as u64,
            WATCHES as u64,
            WATCHES as u64,
            WATCHES as u64
        )
    );
}

/// Every record any thread drained, by cookie.
#[derive(Default)]
struct Ledger {
    records: Mutex<HashMap<u64, Record>>,
}

impl Ledger {
    fn drain_from(&self, monitor: &Monitor) {
        let records = drain(monitor);
        let mut seen = self.records.lock().expect("ledger");
        for record in records {
            if let Some(first) = seen.insert(record.cookie, record) {
                panic!("reported twice: {first:?} and {record:?}");
            }
        }
    }

    fn get(&self, cookie: u64) -> Option<Record> {
        self.records.lock().expect("ledger").get(&cookie).copied()
    }
}

/// What one thread did, to be checked against the monitor at the end.
#[derive(Default)]
struct Outcome {
    watches: u64,
    /// Cookies of watches whose range was unmapped while watched.
    unmapped: Vec<u64>,
    /// Cookies of watches unwatched before their range was unmapped.
    unwatched_first: Vec<u64>,
}

/// One thread's share of the race: watch fresh mappings and, at random,
/// unmap them (the record must arrive, exactly once, in some thread's
/// drain), unwatch them first (no record ever), or change their
/// protection and unmap a neighbour (still valid).
fn race(monitor: &Monitor, ledger: &Ledger, thread: u64, until: Instant) -> Outcome {
    let page = page();
    let mut outcome = Outcome::default();
    let mut random = XorShift::new(0x9e37_79b9_7f4a_7c15_u64 ^ thread);
    while Instant::now() < until {
        let cookie = (thread << 32) | outcome.watches;
        outcome.watches += 1;
        let addr = map_pages(3);
        let middle = addr + page;
        let w = watch(monitor, middle, page, cookie);
        assert!(monitor.is_valid(&w));
        match random.below(3) {
            0 => {
                unmap(addr, 3 * page);
                assert!(!monitor.is_valid(&w));
                let deadline = Instant::now() + Duration::from_secs(20);
                let record = loop {
                    ledger.drain_from(monitor);
                    if let Some(record) = ledger.get(cookie) {
                        break record;
                    }
                    assert!(Instant::now() < deadline, "no record for {cookie:#x}");
                    // Another thread's drain has it in flight: let it run.
                    poll_readable(monitor, 1);
                };
                let expected = Record {
                    cookie,
                    watch: w,
                    start: middle,
                    end: middle + page,
                    reason: Reason::Unmap,
                };
                assert_eq!(record, expected);
                unwatch(monitor, w, cookie);
                outcome.unmapped.push(cookie);
            }
            1 => {
                unwatch(monitor, w, cookie);
                assert!(!monitor.is_valid(&w));
                unmap(addr, 3 * page);
                outcome.unwatched_first.push(cookie);
            }
            _ => {
                protect(middle, page, libc::PROT_READ);
                unmap(addr, page);
                unmap(middle + page, page);
                assert!(monitor.is_valid(&w), "{cookie:#x}");
                unwatch(monitor, w, cookie);
                unmap(middle, page);
            }
        }
    }
    outcome
}

#[test]
fn eight_threads_racing_watch_unwatch_munmap_see_every_outcome() {
    const THREADS: u64 = 8;
    // One slot per thread: every unwatch must free its slot before the
    // thread's next watch, or that watch fails with ENOSPC.
    let Some(monitor) = open(Monitor::builder().capacity(THREADS as u32)) else {
        return;
    };
    let ledger = Ledger::default();
    let until = Instant::now() + Duration::from_secs(2);
    let outcomes: Vec<Outcome> = thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (monitor, ledger) = (&monitor, &ledger);
                scope.spawn(move || race(monitor, ledger, t, until))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("racing thread"))
            .collect()
    });
    ledger.drain_from(&monitor);

    let watches: u64 = outcomes.iter().map(|o| o.watches).sum();
    let unmapped: Vec<u64> = outcomes.iter().flat_map(|o| o.unmapped.clone()).collect();
    let records = ledger.records.lock().expect("ledger");
    assert_eq!(
        records.len(),
        unmapped.len(),
        "one record per unmapped watch"
    );
    assert!(unmapped.iter().all(|c| records.contains_key(c)));
    for cookie in outcomes.iter().flat_map(|o| &o.unwatched_first) {
        assert!(
            !records.contains_key(cookie),
            "record after unwatch: {cookie:#x}"
        );
    }
    let totals = monitor.totals();
    let dirtied = unmapped.len() as u64;
    assert_eq!(totals.watched, watches);
    assert_eq!(totals.unwatched, watches);
    assert_eq!((totals.dirtied, totals.reported), (dirtied, dirtied));
    assert_eq!(monitor.generation(), dirtied);
    assert_eq!(monitor.dirty_unread(), 0);
    println!(
        "{watches} watches by {THREADS} threads, {dirtied} unmapped while watched, {} unwatched first",
        outcomes.iter().map(|o| o.unwatched_first.len()).sum::<usize>()
    );
}

/// The module parameter `max_user_watches`, set for one test and restored on drop.
struct UserWatchLimit {
    old: String,
}

impl UserWatchLimit {
    const PATH: &'static str = "/sys/module/regwatch/parameters/max_user_watches";

    fn set(limit: u64) -> Self {
        let old = std::fs::read_to_string(Self::PATH).expect("reading max_user_watches");
        std::fs::write(Self::PATH, limit.to_string()).expect("writing max_user_watches (root)");
        Self { old }
    }
}

impl Drop for UserWatchLimit {
    fn drop(&mut self) {
        if let Err(err) = std::fs::write(Self::PATH, self.old.trim()) {
            eprintln!("restoring max_user_watches: {err}");
        }
    }
}

#[test]
fn the_user_watch_limit_is_enospc_and_reported() {
    let Some(monitor) = open(Monitor::builder().capacity(16)) else {
        return;
    };
    let before = monitor.user_watches().expect("user_watches");
    assert_eq!(before.limit, monitor.api_info().max_user_watches);
    let addr = map_pages(1);
    let first = watch(&monitor, addr, page(), 1);
    assert_eq!(
        monitor.user_watches().expect("user_watches").alive,
        before.alive + 1
    );
    if !in_vm() {
        println!("not in the VM: leaving max_user_watches alone");
        unwatch(&monitor, first, 1);
        unmap(addr, page());
        return;
    }
    let limit = UserWatchLimit::set(before.alive + 2);
    let second = watch(&monitor, addr, page(), 2);
    assert_errno(
        monitor.watch(addr, page(), 3),
        |e| matches!(e, Error::Watch { .. }),
        libc::ENOSPC,
        "a watch beyond max_user_watches",
    );
    let at_limit = monitor.user_watches().expect("user_watches");
    assert_eq!(
        (at_limit.alive, at_limit.limit),
        (before.alive + 2, before.alive + 2)
    );
    assert_eq!(
        monitor.totals().watched,
        2,
        "the refused watch changed nothing"
    );
    unwatch(&monitor, second, 2);
    let third = watch(&monitor, addr, page(), 3);
    drop(limit);
    unwatch(&monitor, third, 3);
    unwatch(&monitor, first, 1);
    assert_eq!(
        monitor.user_watches().expect("user_watches").alive,
        before.alive
    );
    unmap(addr, page());
}
