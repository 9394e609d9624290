//! [`Monitor::watch_instead_of`] against the real module: a cache's eviction (unwatch
//! the victim, watch the new buffer) in one system call, exactly as an
//! unwatch followed by a watch on success, and nothing changed on failure.
//!
//! Like `regwatch_client.rs` and `regwatch_hostile.rs`, the tests skip on a host without the module
//! and fail without it inside the VM.

use rdma_tests::watching::{assert_errno, drain, map_pages, open, page, unmap, unwatch, watch};
use regwatch::{Builder, Error, Totals};

/// A full monitor evicts: the new watch takes the victim's slot, the
/// victim's pending record is never reported, the new range is watched.
#[test]
fn watch_instead_of_evicts_on_a_full_monitor() {
    let Some(monitor) = open(Builder::default().capacity(2)) else {
        return;
    };
    let base = map_pages(3);
    let victim = watch(&monitor, base, 1, 1);
    let kept = watch(&monitor, base + page(), 1, 2);
    assert_errno(
        monitor.watch(base + 2 * page(), 1, 3),
        |e| matches!(e, Error::Watch { .. }),
        libc::ENOSPC,
        "a third watch on two slots",
    );
    unmap(base, page());
    assert_eq!(monitor.dirty_unread(), 1);

    let new = monitor
        .watch_instead_of(victim, 1, base + 2 * page(), 1, 3)
        .expect("a watch instead of a dirty victim");
    assert_eq!(new.slot(), victim.slot());
    assert!(new.seq() > kept.seq());
    assert!(monitor.is_valid(&new));
    assert!(!monitor.is_valid(&victim));
    assert!(monitor.is_valid(&kept));
    assert_eq!(monitor.dirty_unread(), 0);
    assert!(drain(&monitor).is_empty(), "the victim's record is gone");
    assert_eq!(
        monitor.totals(),
        Totals {
            watched: 3,
            unwatched: 1,
            dirtied: 1,
            reported: 0
        }
    );

    unmap(base + 2 * page(), page());
    let records = drain(&monitor);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].cookie, 3);
    assert_eq!(records[0].watch, new);
    unwatch(&monitor, kept, 2);
    unmap(base + page(), page());
}

/// A victim that is gone (or a wrong cookie): `Error::WatchInsteadOf` with
/// `EINVAL`, and nothing changed: no counter moved, the new range is not
/// watched, a live victim still is.
#[test]
fn watch_instead_of_a_gone_victim_changes_nothing() {
    let Some(monitor) = open(Builder::default().capacity(4)) else {
        return;
    };
    let base = map_pages(3);
    let live = watch(&monitor, base, 1, 1);
    let gone = watch(&monitor, base + page(), 1, 2);
    unwatch(&monitor, gone, 2);
    let before = monitor.totals();
    for (victim, cookie, what) in [
        (gone, 2, "an unwatched victim"),
        (live, 9, "a wrong cookie"),
    ] {
        assert_errno(
            monitor.watch_instead_of(victim, cookie, base + 2 * page(), 1, 3),
            |e| matches!(e, Error::WatchInsteadOf { .. }),
            libc::EINVAL,
            what,
        );
    }
    assert_eq!(monitor.totals(), before);
    assert!(monitor.is_valid(&live));
    unmap(base + page(), 2 * page());
    assert!(
        drain(&monitor).is_empty(),
        "the new range was never watched"
    );
    unwatch(&monitor, live, 1);
    unmap(base, page());
}
