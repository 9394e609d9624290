//! Hazard pointers: how a hit reads the current index without a lock, an allocation or a
//! reference count.
//!
//! Each thread owns one record in a global list and, while it reads an index, announces the
//! index's address in it. A writer keeps each index it replaced in its [`Retired`] list and
//! frees it only when no record announces it (see [`is_protected`]). A reader pays one sequentially consistent store and a load to
//! announce, and one release store to withdraw; arc-swap, which this replaces, took two atomic
//! read-modify-writes and about 90 instructions per load.
//!
//! Records are never freed: a thread that exits gives its record back and the next new thread
//! takes it over, so the list grows to the largest number of threads that ever used a cache at
//! once, and a thread allocates at most once in its life (its first read, when no record is
//! free).

use std::cell::Cell;
use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::Arc;

use crate::sync::{atomic_static, const_thread_local, AtomicBool, AtomicPtr};

struct Record {
    /// The address being read, or null.
    announced: AtomicPtr<()>,
    /// Whether a live thread owns the record.
    claimed: AtomicBool,
    /// The record pushed before this one; set before this one is published, never changed
    /// after.
    next: AtomicPtr<Record>,
}

atomic_static! {
    /// The most recently pushed record.
    static RECORDS: AtomicPtr<Record> = AtomicPtr::new(ptr::null_mut());
}

fn records() -> impl Iterator<Item = &'static Record> {
    std::iter::successors(listed(&RECORDS), |record| listed(&record.next))
}

/// The record `link` points to.
fn listed(link: &AtomicPtr<Record>) -> Option<&'static Record> {
    // SeqCst rather than acquire (which would show the record's `next`, written before
    // `claim`'s CAS): a writer's scan must see a record whose announcement precedes its
    // publication in the SeqCst order, and the record was pushed (SeqCst) before that
    // announcement.
    let record = link.load(SeqCst);
    // SAFETY: a link is null or a pointer from `Box::leak` in `claim`, and records are never
    // freed, so it is valid for `'static`; the load above sees the `next` written before the
    // record was pushed.
    unsafe { record.as_ref() }
}

/// A free record, claimed for this thread, or a new one.
fn claim() -> &'static Record {
    let free = records().find(|record| {
        record
            .claimed
            .compare_exchange(false, true, Acquire, Relaxed)
            .is_ok()
    });
    if let Some(record) = free {
        return record;
    }
    let record: &'static Record = Box::leak(Box::new(Record {
        announced: AtomicPtr::new(ptr::null_mut()),
        claimed: AtomicBool::new(true),
        next: AtomicPtr::new(ptr::null_mut()),
    }));
    let mut head = RECORDS.load(Relaxed);
    loop {
        record.next.store(head, Relaxed);
        match RECORDS.compare_exchange_weak(head, ptr::from_ref(record).cast_mut(), SeqCst, Relaxed)
        {
            Ok(_) => return record,
            Err(current) => head = current,
        }
    }
}

/// This thread's record, claimed on first use and given back when the thread exits.
struct Owned(Cell<Option<&'static Record>>);

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(record) = self.0.get() {
            // Release: this thread's reads through the record happen before a new owner's.
            record.claimed.store(false, Release);
        }
    }
}

const_thread_local! {
    static OWNED: Owned = Owned(Cell::new(None));
}

/// What `current` points to, announced as read until the guard drops.
pub(crate) struct Protected<'a, T> {
    record: &'static Record,
    value: *const T,
    /// Read from `current`, which the writer keeps pointing to live values.
    current: PhantomData<&'a AtomicPtr<T>>,
}

impl<T> std::ops::Deref for Protected<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: `protect`'s contract: `value` was current after it was announced, and the
        // writer frees no value announced in any record (`is_protected`) while the
        // announcement stands, which is until this guard drops.
        unsafe { &*self.value }
    }
}

impl<T> Drop for Protected<'_, T> {
    fn drop(&mut self) {
        // Release: the reads through the guard happen before a writer that sees the null
        // frees the value.
        self.record.announced.store(ptr::null_mut(), Release);
    }
}

/// Reads `current` and announces it. `None` when this thread cannot announce: it is exiting
/// (its record is gone) or already holds a guard (a reentrant read).
///
/// # Safety
/// `current` always points to a live `T`, and a writer frees a value it replaced in `current`
/// only after storing the replacement (sequentially consistent) and then finding
/// [`is_protected`] false for it.
pub(crate) unsafe fn protect<T>(current: &AtomicPtr<T>) -> Option<Protected<'_, T>> {
    let record = OWNED
        .try_with(|owned| {
            let record = owned.0.get().unwrap_or_else(claim);
            owned.0.set(Some(record));
            record
        })
        .ok()?;
    if !record.announced.load(Relaxed).is_null() {
        return None;
    }
    let mut value = current.load(Relaxed);
    loop {
        record.announced.store(value.cast(), SeqCst);
        // In the single total order of SeqCst operations, either this load comes after a
        // writer's store replacing `value` (it sees the change and the loop announces again),
        // or the announcement comes before that writer's scan, which then sees it. Acquire (by
        // SeqCst): the value's contents are those the writer published.
        let confirmed = current.load(SeqCst);
        if confirmed == value {
            return Some(Protected {
                record,
                value,
                current: PhantomData,
            });
        }
        value = confirmed;
    }
}

/// Whether a reader may be using `value`: a writer that replaced it calls this after the
/// replacement and may free it once this is false (it stays false, as a reader announcing it
/// afterwards finds it replaced).
pub(crate) fn is_protected<T>(value: *const T) -> bool {
    records().any(|record| record.announced.load(SeqCst) == value.cast_mut().cast())
}

/// The values a writer replaced that readers may still be reading: each is dropped once no
/// record announces it. Owned by the writer (the cache keeps it under its state lock).
pub(crate) struct Retired<T> {
    values: Vec<Arc<T>>,
}

impl<T> Retired<T> {
    pub(crate) const fn new() -> Self {
        Self { values: Vec::new() }
    }

    /// Keeps `replaced` until no reader announces it, then drops whatever no reader announces
    /// any more. The writer must have stored `replaced`'s successor (sequentially consistent)
    /// before, the condition of [`protect`].
    pub(crate) fn push(&mut self, replaced: Arc<T>) {
        self.values.push(replaced);
        self.purge();
    }

    /// Drops the values no record announces (they stay unannounced: see [`is_protected`]).
    pub(crate) fn purge(&mut self) {
        self.values.retain(|value| is_protected(Arc::as_ptr(value)));
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn an_announced_value_is_protected_until_the_guard_drops() {
        let value = Box::into_raw(Box::new(7));
        let current = AtomicPtr::new(value);
        // SAFETY: `value` is live for the whole test and never replaced.
        let guard = unsafe { protect(&current) }.expect("a record");
        assert_eq!(*guard, 7);
        assert!(is_protected(value));
        // SAFETY: as above.
        assert!(unsafe { protect(&current) }.is_none(), "reentrant read");
        drop(guard);
        assert!(!is_protected(value));
        // SAFETY: the guard is gone and `value` came from `Box::into_raw`.
        drop(unsafe { Box::from_raw(value) });
    }

    #[test]
    fn a_retired_value_is_dropped_once_no_record_announces_it() {
        let announced = Arc::new(1);
        let unannounced = Arc::new(2);
        let current = AtomicPtr::new(Arc::as_ptr(&announced).cast_mut());
        // SAFETY: `announced` is held by the test until the end, so `current` stays live.
        let guard = unsafe { protect(&current) }.expect("a record");
        let mut retired = Retired::new();
        retired.push(Arc::clone(&announced));
        retired.push(Arc::clone(&unannounced));
        assert_eq!(Arc::strong_count(&announced), 2, "kept while announced");
        assert_eq!(Arc::strong_count(&unannounced), 1, "dropped at once");
        drop(guard);
        retired.purge();
        assert_eq!(Arc::strong_count(&announced), 1, "dropped after the guard");
    }

    /// Readers keep reading whatever is current while a writer replaces it and "frees" every
    /// replaced value that no record announces. Freeing marks the value (the values are leaked,
    /// so a read after the "free" is a wrong value, not undefined behaviour): a reader that
    /// finds the mark through its guard read after the writer let go.
    #[test]
    fn a_reader_never_sees_a_value_the_writer_let_go() {
        const LIVE: u64 = 0x1157;
        const GONE: u64 = 0xdead;
        const VALUES: usize = 20_000;
        let values: Vec<&'static AtomicU64> = (0..VALUES)
            .map(|_| &*Box::leak(Box::new(AtomicU64::new(LIVE))))
            .collect();
        let current = AtomicPtr::new(ptr::from_ref(values[0]).cast_mut());
        let stop = AtomicBool::new(false);
        let reads = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| {
                    while !stop.load(Relaxed) {
                        // SAFETY: every value is leaked, so `current` always points to a live
                        // one; the writer below follows `protect`'s protocol.
                        let guard = unsafe { protect(&current) }.expect("a record");
                        assert_eq!(guard.load(Relaxed), LIVE, "read after the writer let go");
                        reads.fetch_add(1, Relaxed);
                    }
                });
            }
            while reads.load(Relaxed) < 1_000 {
                std::hint::spin_loop();
            }
            let mut retired = Vec::new();
            for pair in values.windows(2) {
                current.store(ptr::from_ref(pair[1]).cast_mut(), SeqCst);
                retired.push(pair[0]);
                retired.retain(|value: &&AtomicU64| {
                    let protected = is_protected(ptr::from_ref(*value));
                    if !protected {
                        value.store(GONE, Relaxed);
                    }
                    protected
                });
            }
            stop.store(true, Relaxed);
        });
    }
}

/// Model checks (`cargo xtask loom`): every interleaving, with at most 3 preemptions (without
/// a bound the second model runs for more than 5 minutes), of a reader protecting and reading
/// the current value with a writer replacing it and retiring what it replaced. Weakening the
/// reader's announcement from `SeqCst` to `Release` makes both models fail (tried). A value's contents are a loom cell that the reader reads through its
/// guard and the writer overwrites ("frees") once [`Retired`] let go of it: loom reports a read
/// not ordered before that write as a data race, and a read after it finds the mark. The
/// values stay allocated (the test holds them), so a bug is reported, not undefined.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::thread;

    const LIVE: u64 = 0x1157;
    const GONE: u64 = 0xdead;

    struct Value(UnsafeCell<u64>);

    // SAFETY: readers only read the cell, and the writer writes it once, after `Retired` let
    // go of the value; that every read is ordered before that write is what the models check
    // (loom reports an unordered pair as a data race and fails).
    unsafe impl Sync for Value {}

    /// Values `0..count`, the first current.
    fn values(count: usize) -> (Vec<Arc<Value>>, Arc<AtomicPtr<Value>>) {
        let values: Vec<_> = (0..count)
            .map(|_| Arc::new(Value(UnsafeCell::new(LIVE))))
            .collect();
        let current = Arc::new(AtomicPtr::new(Arc::as_ptr(&values[0]).cast_mut()));
        (values, current)
    }

    /// Reads the current value once through a guard, asserting it was not freed.
    fn read(current: &AtomicPtr<Value>) {
        // SAFETY: every value is held by the model until its end, so `current` points to a
        // live one; the writer follows `protect`'s protocol (its "frees" are the marks).
        let guard = unsafe { protect(current) }.expect("a record");
        // SAFETY: a read of a `u64` the writer writes only once `Retired` let go of the
        // value; loom reports it as a race if the two are not ordered.
        let contents = guard.0.with(|contents| unsafe { *contents });
        assert_eq!(contents, LIVE, "read after the writer let go");
    }

    /// Marks as freed every value of `replaced` that nothing but the model holds any more
    /// (that `Retired` dropped), once.
    fn free_released(replaced: &[Arc<Value>], freed: &mut [bool]) {
        for (value, freed) in replaced.iter().zip(freed) {
            if !*freed && Arc::strong_count(value) == 1 {
                // SAFETY: the writer's only write; loom checks it against the reads.
                value.0.with_mut(|contents| unsafe { *contents = GONE });
                *freed = true;
            }
        }
    }

    /// The writer: replaces the current value by each of `values[1..]` in turn, retiring the
    /// replaced one and freeing what `Retired` dropped; returns what it still keeps.
    fn replace_all(values: &[Arc<Value>], current: &AtomicPtr<Value>) -> Retired<Value> {
        let mut retired = Retired::new();
        let mut freed = vec![false; values.len()];
        for next in 1..values.len() {
            current.store(Arc::as_ptr(&values[next]).cast_mut(), SeqCst);
            retired.push(Arc::clone(&values[next - 1]));
            free_released(&values[..next], &mut freed);
        }
        retired
    }

    fn model(body: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(body);
    }

    /// One reader reads twice (its record claimed on the first read, reused on the second)
    /// while the writer replaces the value twice: no read after a free, and once the reader
    /// has exited every replaced value is released (no leak).
    #[test]
    fn loom_reader_never_reads_a_freed_value_and_nothing_leaks() {
        model(|| {
            let (values, current) = values(3);
            let reader = {
                let current = Arc::clone(&current);
                thread::spawn(move || {
                    read(&current);
                    read(&current);
                })
            };
            let mut retired = replace_all(&values, &current);
            reader.join().expect("the reader panicked");
            retired.purge();
            let (replaced, last) = values.split_at(values.len() - 1);
            assert!(
                replaced.iter().all(|value| Arc::strong_count(value) == 1),
                "a replaced value is still retired after every reader left"
            );
            assert_eq!(
                Arc::strong_count(&last[0]),
                1,
                "the current value was retired"
            );
        });
    }

    /// Two readers, the second possibly taking over the first's record after it exited (its
    /// thread-local gives the record back), while the writer replaces the value once: the
    /// writer's scan must see whichever reader announces through the shared record list.
    #[test]
    fn loom_readers_sharing_the_record_list_are_seen_by_the_writer() {
        model(|| {
            let (values, current) = values(2);
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    let current = Arc::clone(&current);
                    thread::spawn(move || read(&current))
                })
                .collect();
            let mut retired = replace_all(&values, &current);
            for reader in readers {
                reader.join().expect("a reader panicked");
            }
            retired.purge();
            assert_eq!(
                Arc::strong_count(&values[0]),
                1,
                "leaked after the readers left"
            );
        });
    }
}
