//! A randomized soak of the registration cache through the real stack.
//!
//! One random stream (the seed) draws operations on a few buffers ("slots") at fixed
//! addresses: `cached_reg` + RDMA WRITE from a slot and RDMA READ into one, every byte checked,
//! interleaved with changes of the pages behind the slots: munmap + mmap at the same address,
//! `MAP_FIXED` over the slot, `mremap` away (the moved pages are sent from their new place),
//! `madvise(DONTNEED | FREE)`, brk shrink and regrow, shmdt + shmat of a new segment at the
//! same address, fork (the child writes its copy, the parent writes and must send its own
//! bytes), mprotect, and bursts in which worker threads do the same on their own slots at
//! once, through the same cache. After each change the process writes new bytes into some of
//! the slot's pages and leaves the others as the change left them.
//!
//! The same seed runs in every mode the kernel allows (pinned + regwatch, off; ODP only where
//! the cache's ODP self-test passes) and in the negative control, a cache that never
//! invalidates: in the cache's modes any byte a transfer gets wrong fails the soak at once,
//! naming the seed and the operation; the control must get some wrong, or the soak proves
//! nothing. Threads make the interleaving, not the operations, vary between runs.

mod crew;
mod memory;
mod wire;
mod zone;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use regcache::{Config, Limits, Mode, Policy, RdmaCache};
use verbs::Mtu;

use crate::rig::AnonMap;
use crate::{error_chain, in_vm, splitmix64};
use crew::Crew;
use memory::{FixedBuffer, PAGE};
use wire::{Exec, Tally, Wire};
use zone::{Action, Zone};

/// Largest slot, in pages (a transfer never exceeds a slot). Transfers and registrations
/// cost about their length under TCG; 8 pages keep slots and transfers multi-page (and
/// neighbours merging) at about half the cost of 16.
const MAX_SLOT_PAGES: u64 = 8;
/// Private anonymous slots of the main zone (besides its shm and brk slots).
const MAIN_ANON_SLOTS: usize = 3;
/// Worker threads of a burst, and the slots each owns.
const WORKERS: usize = 3;
const WORKER_SLOTS: usize = 2;
/// Operations each worker does in one burst.
const BURST: u64 = 16;
/// Out of 1000 main-zone draws: forks, and bursts of threads.
const FORK_PER_MILLE: u64 = 20;
const THREADS_PER_MILLE: u64 = 10;
/// How often a long run says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Operations per mode (bursts of threads count each worker's operations).
    pub ops: u64,
    /// The seed of every random choice; the same seed replays the same operations.
    pub seed: u64,
    /// One mode only (the soak program's `--mode`, which `--parallel` gives each of its
    /// processes); `None` runs every mode in turn.
    pub only: Option<CacheMode>,
}

/// The caches the soak runs through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Pinned registrations invalidated through regwatch.
    Pinned,
    /// On-demand paging, where the cache's self-test passes.
    Odp,
    /// No cache: register on every call.
    Off,
    /// The negative control: pinned registrations cached without invalidation.
    Control,
}

impl CacheMode {
    /// Every mode, in the order the soak runs them.
    pub const ALL: [Self; 4] = [Self::Pinned, Self::Odp, Self::Off, Self::Control];

    /// The mode called `name` in reports.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|mode| mode.name() == name)
    }

    /// The mode's name in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Pinned => "pinned",
            Self::Odp => "odp",
            Self::Off => "off",
            Self::Control => "control",
        }
    }

    /// The cache, or why this kernel does not allow the mode.
    ///
    /// # Panics
    ///
    /// In the VM when the pinned mode is refused (regwatch is loaded there), or when a cache
    /// runs another policy than its mode's.
    fn open(self, wire: &Mutex<Wire>) -> Result<RdmaCache, String> {
        let pd = std::sync::Arc::clone(wire.lock().unwrap_or_else(PoisonError::into_inner).pd());
        let config = |mode| Config {
            mode,
            ..Config::default()
        };
        // The soak's QP runs at path MTU 4096, where the ODP self-test runs too.
        let path_mtu = Mtu::Mtu4096;
        let opened = match self {
            Self::Pinned => RdmaCache::new(pd, config(Mode::Pinned), path_mtu),
            Self::Odp => RdmaCache::new(pd, config(Mode::Odp), path_mtu),
            Self::Off => RdmaCache::new(pd, config(Mode::Off), path_mtu),
            Self::Control => Ok(RdmaCache::trust_without_invalidation(pd, Limits::default())),
        };
        let cache = match opened {
            Ok(cache) => cache,
            Err(err) => {
                let reason = error_chain(&err);
                assert!(
                    self != Self::Pinned || !in_vm(),
                    "the pinned cache is refused in the VM, where regwatch is loaded: {reason}"
                );
                return Err(reason);
            }
        };
        let expected: &[Policy] = match self {
            Self::Pinned => &[Policy::Pinned],
            Self::Odp => &[Policy::Odp, Policy::OdpForDeviceReads],
            Self::Off => &[Policy::Off],
            Self::Control => &[Policy::TrustWithoutInvalidation],
        };
        assert!(
            expected.contains(&cache.policy()),
            "mode {} runs policy {:?}",
            self.name(),
            cache.policy()
        );
        Ok(cache)
    }
}

/// What one mode's run did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    /// Operations done.
    pub ops: u64,
    /// Transfers whose every byte was checked.
    pub transfers: u64,
    /// Bytes a transfer got wrong (only the control may have any).
    pub stale_bytes: u64,
    /// Transfers with at least one wrong byte.
    pub stale_transfers: u64,
    /// Registrations retried because the pages changed during them (`Error::Unstable`).
    pub unstable: u64,
    /// Wall-clock time of the run.
    pub seconds: f64,
}

/// One mode's outcome.
#[derive(Debug, Clone)]
pub struct ModeReport {
    /// The mode.
    pub mode: CacheMode,
    /// Its figures, or why the kernel does not allow it.
    pub outcome: Result<Figures, String>,
}

/// The soak's random stream (splitmix64 over a counter).
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix64(self.0)
    }

    /// A number below `bound` (> 0).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// Runs the soak in every mode (or the one `options.only` names), printing the seed first,
/// progress lines, and the figures of each mode; returns them.
///
/// # Panics
///
/// On a wrong byte in the cache's modes (naming the seed and the operation), on any failed
/// system or verbs call, and when the negative control ran and found no stale byte.
#[must_use]
pub fn run(options: Options) -> Vec<ModeReport> {
    let Options { ops, seed, .. } = options;
    println!(
        "soak: seed {seed:#x}, {ops} operations per mode (replay: --seed {seed:#x} --ops {ops})"
    );
    let wire = Wire::new(MAX_SLOT_PAGES as usize * PAGE);
    println!("soak: loopback on rxe0 -> {}", wire.peer_device());
    let wire = Mutex::new(wire);
    let mut reports = Vec::new();
    let modes = CacheMode::ALL
        .into_iter()
        .filter(|mode| options.only.is_none_or(|only| only == *mode));
    for mode in modes {
        let outcome = mode
            .open(&wire)
            .map(|cache| run_mode(mode, &cache, &wire, options));
        match &outcome {
            Ok(figures) => println!("soak: {} done: {}", mode.name(), describe(figures)),
            Err(reason) => println!("soak: {} skipped: {reason}", mode.name()),
        }
        reports.push(ModeReport { mode, outcome });
    }
    println!("soak: seed {seed:#x}: summary");
    for report in &reports {
        match &report.outcome {
            Ok(figures) => println!("soak:   {:<8} {}", report.mode.name(), describe(figures)),
            Err(reason) => println!("soak:   {:<8} skipped: {reason}", report.mode.name()),
        }
    }
    let control = reports
        .iter()
        .find(|report| report.mode == CacheMode::Control);
    if let Some(control) = control {
        let control = control.outcome.as_ref().expect("the control always runs");
        assert!(
            control.stale_bytes > 0,
            "the negative control (a cache without invalidation) found no stale byte in {} \
             operations with seed {seed:#x}: the soak did not test anything",
            control.ops
        );
    }
    assert_eq!(
        verbs::drop_failures(),
        0,
        "a verbs object failed to be destroyed"
    );
    reports
}

fn describe(figures: &Figures) -> String {
    format!(
        "{} ops, {} transfers verified, {} stale bytes in {} transfers, {} unstable \
         registrations retried, {:.0} s ({:.0} ops/s)",
        figures.ops,
        figures.transfers,
        figures.stale_bytes,
        figures.stale_transfers,
        figures.unstable,
        figures.seconds,
        figures.ops as f64 / figures.seconds.max(1e-3)
    )
}

/// The slots: the main zone's shm slot, its anonymous slots and every worker's slots side by
/// side (so the cache merges neighbours across zones), then a parking range per anonymous
/// slot; the main zone's brk slot on top of the heap. Sizes come from `rng`.
fn layout(rng: &mut Rng) -> (Zone, Vec<Zone>) {
    let mut size = || PAGE * (1 + rng.below(MAX_SLOT_PAGES)) as usize;
    let main_anon: Vec<usize> = (0..MAIN_ANON_SLOTS).map(|_| size()).collect();
    let shm = size();
    let brk = size();
    let workers: Vec<Vec<usize>> = (0..WORKERS)
        .map(|_| (0..WORKER_SLOTS).map(|_| size()).collect())
        .collect();
    let anon_total: usize = main_anon.iter().chain(workers.iter().flatten()).sum();
    let span = far_from_other_mappings(shm + 2 * anon_total);
    let shm_addr = span.addr();
    // Unmapped now, mapped again piece by piece at the same addresses.
    drop(span);
    let mut next = shm_addr + shm;
    let mut parking = next + anon_total;
    let mut anon = |len: usize| {
        let slot = FixedBuffer::anon(next, len, parking);
        next += len;
        parking += len;
        slot
    };
    let mut main: Vec<FixedBuffer> = main_anon.iter().map(|&len| anon(len)).collect();
    let worker_slots: Vec<Vec<FixedBuffer>> = workers
        .iter()
        .map(|lens| lens.iter().map(|&len| anon(len)).collect())
        .collect();
    main.push(FixedBuffer::shm(shm_addr, shm));
    main.push(FixedBuffer::brk(brk));
    let main = Zone::new("main".to_owned(), main, Rng::new(rng.next()));
    let workers = worker_slots
        .into_iter()
        .enumerate()
        .map(|(i, slots)| Zone::new(format!("worker {i}"), slots, Rng::new(rng.next())))
        .collect();
    (main, workers)
}

/// Spacing of the places [`far_from_other_mappings`] tries.
const GIB: usize = 1 << 30;

/// `len` bytes mapped far below where the kernel puts mappings made without an address (it
/// takes the highest free range that fits, under the libraries): the slots' ranges are
/// unmapped for a moment by munmap + mmap, shmdt + shmat and mremap, and parking ranges are
/// free most of the time, so next to the other mappings another thread's mmap (of libc,
/// libibverbs or the cache) could take them; down here the free space above always fits
/// first.
fn far_from_other_mappings(len: usize) -> AnonMap {
    // A quarter of the way up to the mappings the kernel places, on a GiB boundary: far
    // above the program and its brk heap, far below the mappings.
    let placed = AnonMap::new(len).addr();
    let start = (placed / 4) & !(GIB - 1);
    (0..64)
        .find_map(|step| AnonMap::try_at(start + step * GIB, len))
        .unwrap_or_else(|| panic!("no free {len} bytes in the 64 GiB from {start:#x}"))
}

fn run_mode(mode: CacheMode, cache: &RdmaCache, wire: &Mutex<Wire>, options: Options) -> Figures {
    let started = Instant::now();
    let tally = Tally::default();
    let exec = Exec {
        cache,
        wire,
        tally: &tally,
        control: mode == CacheMode::Control,
        run: format!(
            "mode {}, seed {:#x} (replay: --seed {:#x} --ops {})",
            mode.name(),
            options.seed,
            options.seed,
            options.ops
        ),
    };
    std::thread::scope(|scope| {
        let crew = Crew::start(scope, &exec, WORKERS);
        let (mut main, workers) = layout(&mut Rng::new(options.seed));
        crew.hand_out(workers);
        let private: Vec<usize> = (0..main.slots.len())
            .filter(|&i| main.slots[i].is_private())
            .collect();
        let mut worker_ops = 0;
        let mut last_progress = Instant::now();
        while main.done + worker_ops < options.ops {
            let draw = main.rng.below(1000);
            if draw < FORK_PER_MILLE {
                let i = private[main.rng.below(private.len() as u64) as usize];
                main.fork_op(&exec, i);
            } else if draw < FORK_PER_MILLE + THREADS_PER_MILLE {
                let started = Instant::now();
                main.begin(Action::Threads, usize::MAX);
                crew.burst(BURST);
                main.time[Action::Threads.index()] += started.elapsed();
                worker_ops += WORKERS as u64 * BURST;
            } else {
                main.step(&exec);
            }
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                let done = main.done + worker_ops;
                println!(
                    "soak: {}: {done}/{} ops, {} transfers verified, {} stale bytes, {:.0} ops/s",
                    mode.name(),
                    options.ops,
                    tally.transfers.load(Relaxed),
                    tally.stale_bytes.load(Relaxed),
                    done as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        let workers = crew.finish();
        report_counts(mode, &main, &workers);
        println!("soak: {}: cache: {:?}", mode.name(), cache.stats());
        println!(
            "soak: {}: transfers' time: {}",
            mode.name(),
            tally.phases.describe()
        );
        let ops = main.done + worker_ops;
        drop((main, workers));
        Figures {
            ops,
            transfers: tally.transfers.load(Relaxed),
            stale_bytes: tally.stale_bytes.load(Relaxed),
            stale_transfers: tally.stale_transfers.load(Relaxed),
            unstable: tally.unstable.load(Relaxed),
            seconds: started.elapsed().as_secs_f64(),
        }
    })
}

/// Prints how many of each operation the zones did and the time they took (the workers'
/// operations overlap each other, and their time is inside the bursts' "threads" time).
fn report_counts(mode: CacheMode, main: &Zone, workers: &[Zone]) {
    let mut counts = main.counts;
    let mut time = main.time;
    for worker in workers {
        for (sum, count) in counts.iter_mut().zip(worker.counts) {
            *sum += count;
        }
        for (sum, spent) in time.iter_mut().zip(worker.time) {
            *sum += spent;
        }
    }
    let by_op: Vec<String> = Action::ALL
        .iter()
        .zip(counts.iter().zip(time))
        .map(|(op, (count, spent))| format!("{} {count} ({:.1} s)", op.name(), spent.as_secs_f64()))
        .collect();
    println!("soak: {}: operations: {}", mode.name(), by_op.join(", "));
}
