//! The side-by-side table: median ns/op of regcache and UCX per case, and their ratio.
//!
//! Criterion keeps its estimates on disk; this records the same samples as they are taken
//! (each `iter_custom` call is one sample: time over its iteration count), so the table needs
//! neither criterion's output directory nor a second run.
//!
//! Time is the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall-clock time: on a machine
//! shared with other builds, wall-clock samples include whole scheduler slices spent in other
//! processes, which no property of either cache explains. CPU time still includes what sharing
//! does to caches and TLBs.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Which cache a measurement is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    /// regcache.
    Ours,
    /// UCX's rcache.
    Ucx,
}

impl Side {
    /// Both, in table order.
    pub const BOTH: [Self; 2] = [Self::Ours, Self::Ucx];

    /// The name criterion's benchmark ids use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ours => "regcache",
            Self::Ucx => "ucx",
        }
    }
}

/// What a measurement is of: case, region count and side.
pub type Key = (&'static str, usize, Side);

/// Per-iteration times of every sample, by [`Key`].
#[derive(Debug, Default)]
pub struct Recorder {
    samples: RefCell<BTreeMap<Key, Vec<f64>>>,
}

impl Recorder {
    /// Times `run(iterations)`, records its ns per iteration under `(case, regions, side)` and
    /// returns the elapsed time, for `Bencher::iter_custom`.
    pub fn time(&self, key: Key, iterations: u64, run: impl FnOnce(u64)) -> Duration {
        let started = thread_cpu_time();
        run(iterations);
        let elapsed = thread_cpu_time().saturating_sub(started);
        let per_iteration = elapsed.as_nanos() as f64 / iterations.max(1) as f64;
        self.samples
            .borrow_mut()
            .entry(key)
            .or_default()
            .push(per_iteration);
        elapsed
    }

    /// The table over the last `sample_size` samples of each benchmark (criterion's measured
    /// samples; earlier calls were its warm-up), in ns per operation.
    pub fn table(&self, sample_size: usize) -> String {
        let samples = self.samples.borrow();
        let median = |key| {
            samples
                .get(&key)
                .map(|all: &Vec<f64>| median_of_last(all, sample_size))
        };
        let mut rows: Vec<(&'static str, usize)> = samples
            .keys()
            .map(|&(case, regions, _)| (case, regions))
            .collect();
        rows.dedup();
        let mut table = String::new();
        let _ = writeln!(
            table,
            "median ns/op over the last {sample_size} samples of each benchmark\n\
             {:<22} {:>8} {:>10} {:>10} {:>9}",
            "case", "regions", "regcache", "ucx", "ours/ucx"
        );
        for (case, regions) in rows {
            let [ours, ucx] = Side::BOTH.map(|side| median((case, regions, side)));
            let cell = |value: Option<f64>| value.map_or("-".to_owned(), |ns| format!("{ns:.1}"));
            let ratio = ours
                .zip(ucx)
                .map_or("-".to_owned(), |(ours, ucx)| format!("{:.2}", ours / ucx));
            let _ = writeln!(
                table,
                "{case:<22} {regions:>8} {:>10} {:>10} {ratio:>9}",
                cell(ours),
                cell(ucx)
            );
        }
        table
    }
}

/// CPU time this thread has used.
///
/// # Panics
/// When the clock cannot be read (Linux always has it).
pub fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec that outlives the call.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    let seconds = u64::try_from(now.tv_sec).expect("non-negative CPU time");
    let nanos = u32::try_from(now.tv_nsec).expect("tv_nsec below one second");
    Duration::new(seconds, nanos)
}

fn median_of_last(all: &[f64], count: usize) -> f64 {
    let mut last = all[all.len().saturating_sub(count)..].to_vec();
    last.sort_unstable_by(f64::total_cmp);
    let middle = last.len() / 2;
    if last.len() % 2 == 0 {
        (last[middle - 1] + last[middle]) / 2.0
    } else {
        last[middle]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_ignores_warm_up_samples() {
        assert_eq!(median_of_last(&[100.0, 100.0, 3.0, 1.0, 2.0], 3), 2.0);
        assert_eq!(median_of_last(&[9.0, 1.0, 2.0, 3.0, 4.0], 4), 2.5);
    }

    #[test]
    fn cpu_time_advances_with_work_only() {
        let before = thread_cpu_time();
        let mut spin = 0_u64;
        while thread_cpu_time() - before < Duration::from_millis(5) {
            spin = std::hint::black_box(spin + 1);
        }
        let slept = thread_cpu_time();
        std::thread::sleep(Duration::from_millis(50));
        assert!(thread_cpu_time() - slept < Duration::from_millis(25));
    }

    #[test]
    fn the_table_pairs_both_sides_and_divides() {
        let recorder = Recorder::default();
        for (side, iterations) in [(Side::Ours, 1), (Side::Ucx, 1)] {
            recorder.time(("hit", 7, side), iterations, |_| {});
        }
        let table = recorder.table(10);
        assert!(
            table
                .lines()
                .any(|line| line.starts_with("hit") && line.contains(" 7 ")),
            "{table}"
        );
    }
}
