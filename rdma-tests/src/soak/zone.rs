//! A zone: slots one thread owns, its random stream, and the operations it draws.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use super::memory::{Backing, FixedBuffer, PAGE};
use super::wire::{Exec, Place};
use super::Rng;
use crate::pattern;

/// Everything a zone may do in one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// `cached_reg` + RDMA WRITE of part of a slot, after rewriting some of its bytes or not.
    Write,
    /// `cached_reg` + RDMA READ of fresh bytes into part of a slot.
    Read,
    /// munmap, then mmap at the same address.
    Munmap,
    /// mmap(MAP_FIXED) of new pages over the slot.
    MapFixed,
    /// mremap of the slot's pages elsewhere (sent from there), new pages at the slot.
    Mremap,
    /// madvise(MADV_DONTNEED).
    DontNeed,
    /// madvise(MADV_FREE).
    Free,
    /// mprotect read-only (a WRITE from the read-only slot), no access, then read-write.
    Mprotect,
    /// brk shrink and regrow: the heap's top pages are freed and come back zeroed.
    Brk,
    /// shmdt, then shmat of a new segment at the same address.
    Shm,
    /// fork: the child writes its copy of a slot, then the parent writes (copy-on-write) and
    /// sends its own bytes.
    Fork,
    /// A burst of operations in every worker zone at once, sharing the cache.
    Threads,
}

impl Action {
    pub(crate) const ALL: [Self; 12] = [
        Self::Write,
        Self::Read,
        Self::Munmap,
        Self::MapFixed,
        Self::Mremap,
        Self::DontNeed,
        Self::Free,
        Self::Mprotect,
        Self::Brk,
        Self::Shm,
        Self::Fork,
        Self::Threads,
    ];

    pub(crate) fn index(self) -> usize {
        Self::ALL.iter().position(|o| *o == self).expect("listed")
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Write => "write",
            Self::Read => "read",
            Self::Munmap => "munmap+mmap",
            Self::MapFixed => "MAP_FIXED",
            Self::Mremap => "mremap",
            Self::DontNeed => "DONTNEED",
            Self::Free => "FREE",
            Self::Mprotect => "mprotect",
            Self::Brk => "brk",
            Self::Shm => "shmdt+shmat",
            Self::Fork => "fork",
            Self::Threads => "threads",
        }
    }

    /// The operations a slot takes, with their weights: transfers half the time, each change
    /// of the pages that applies to the slot's backing otherwise.
    fn menu(backing: &Backing) -> &'static [(Self, u64)] {
        match backing {
            Backing::Anon(_) => &[
                (Self::Write, 30),
                (Self::Read, 20),
                (Self::Munmap, 10),
                (Self::MapFixed, 10),
                (Self::Mremap, 8),
                (Self::DontNeed, 8),
                (Self::Free, 6),
                (Self::Mprotect, 8),
            ],
            Backing::Brk => &[
                (Self::Write, 30),
                (Self::Read, 20),
                (Self::Brk, 24),
                (Self::DontNeed, 10),
                (Self::Free, 8),
                (Self::Mprotect, 8),
            ],
            Backing::Shm => &[
                (Self::Write, 30),
                (Self::Read, 20),
                (Self::Shm, 30),
                (Self::DontNeed, 10),
                (Self::Mprotect, 10),
            ],
        }
    }
}

/// Slots one thread owns and its random stream.
#[derive(Debug)]
pub(crate) struct Zone {
    pub(crate) name: String,
    pub(crate) slots: Vec<FixedBuffer>,
    pub(crate) rng: Rng,
    /// Operations done here so far.
    pub(crate) done: u64,
    /// How many of each operation (indexed like [`Action::ALL`]).
    pub(crate) counts: [u64; Action::ALL.len()],
    /// Wall time spent in each operation (indexed like [`Action::ALL`]), to see where a run's
    /// time goes.
    pub(crate) time: [Duration; Action::ALL.len()],
    /// The last operations, for failure messages.
    recent: VecDeque<String>,
}

const RECENT: usize = 12;

impl Zone {
    pub(crate) fn new(name: String, slots: Vec<FixedBuffer>, rng: Rng) -> Self {
        Self {
            name,
            slots,
            rng,
            done: 0,
            counts: [0; Action::ALL.len()],
            time: [Duration::ZERO; Action::ALL.len()],
            recent: VecDeque::new(),
        }
    }

    /// Records `op` on slot `slot` as begun and returns where it happens.
    pub(crate) fn begin(&mut self, op: Action, slot: usize) -> u64 {
        self.counts[op.index()] += 1;
        self.done += 1;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        let addr = self.slots.get(slot).map_or(0, |s| s.addr);
        self.recent
            .push_back(format!("{} {}@{addr:#x}", op.name(), slot));
        self.done
    }

    fn place<'a>(&'a self, op: u64, what: &'a str, slot: usize) -> Place<'a> {
        Place {
            zone: &self.name,
            op,
            what,
            slot,
            recent: &self.recent,
        }
    }

    /// One operation on a slot drawn at random.
    pub(crate) fn step(&mut self, exec: &Exec<'_>) {
        let slot = self.rng.below(self.slots.len() as u64) as usize;
        let menu = Action::menu(&self.slots[slot].backing);
        let total: u64 = menu.iter().map(|(_, weight)| weight).sum();
        let mut pick = self.rng.below(total);
        let op = menu
            .iter()
            .find(|(_, weight)| {
                let hit = pick < *weight;
                pick = pick.saturating_sub(*weight);
                hit
            })
            .expect("the weights add up")
            .0;
        let started = Instant::now();
        self.apply(exec, op, slot);
        self.time[op.index()] += started.elapsed();
    }

    fn apply(&mut self, exec: &Exec<'_>, op: Action, i: usize) {
        let n = self.begin(op, i);
        match op {
            Action::Write => {
                if self.rng.below(3) == 0 {
                    // Plain stores: the pages stay, so a registration of them stays right.
                    self.rewrite(i, false);
                }
                let (offset, len) = self.range(i);
                exec.send(&self.slots[i], offset, len, &self.place(n, "write", i));
            }
            Action::Read => {
                let (offset, len) = self.range(i);
                let source = pattern(len, self.rng.next());
                let place = Place {
                    zone: &self.name,
                    op: n,
                    what: "read",
                    slot: i,
                    recent: &self.recent,
                };
                exec.receive(&mut self.slots[i], offset, &source, &place);
            }
            Action::Munmap | Action::Brk | Action::Shm => {
                let kept = self.slots[i].unmap_and_map_again();
                if !kept {
                    self.recent
                        .push_back("(the heap grew above the brk slot: it moved)".to_owned());
                }
                self.rewrite(i, false);
            }
            Action::MapFixed => {
                self.slots[i].map_fixed_over();
                self.rewrite(i, false);
            }
            Action::Mremap => {
                let (moved, bytes) = self.slots[i].move_away();
                // The moved pages at their new address: a registration of the parking range
                // made before must not serve them unless it holds these very pages.
                let parked = FixedBuffer::parked(moved, bytes);
                exec.send(
                    &parked,
                    0,
                    parked.len,
                    &self.place(n, "send the moved pages", i),
                );
                drop(parked);
                self.rewrite(i, false);
            }
            Action::DontNeed => {
                self.slots[i].advise(libc::MADV_DONTNEED);
                self.rewrite(i, false);
            }
            Action::Free => {
                self.slots[i].advise(libc::MADV_FREE);
                // Freed pages hold old bytes or zeros until written: write them all.
                self.rewrite(i, true);
            }
            Action::Mprotect => {
                self.slots[i].protect(libc::PROT_READ);
                let (offset, len) = self.range(i);
                exec.send(
                    &self.slots[i],
                    offset,
                    len,
                    &self.place(n, "write, read-only", i),
                );
                self.slots[i].protect(libc::PROT_NONE);
                self.slots[i].protect(libc::PROT_READ | libc::PROT_WRITE);
                self.rewrite(i, false);
            }
            Action::Fork | Action::Threads => unreachable!("the driver draws forks and bursts"),
        }
    }

    /// A random part of slot `i`: the whole slot half the time, else any non-empty range.
    fn range(&mut self, i: usize) -> (usize, usize) {
        let len = self.slots[i].len;
        if self.rng.below(2) == 0 {
            return (0, len);
        }
        let offset = self.rng.below(len as u64) as usize;
        let take = 1 + self.rng.below((len - offset) as u64) as usize;
        (offset, take)
    }

    /// Writes new bytes into every page of slot `i` (`all`), or into each page with
    /// probability 1/2 and nowhere else: untouched pages keep what they held (zeros after a
    /// change), so registrations of zero pages are exercised too.
    fn rewrite(&mut self, i: usize, all: bool) {
        let slot = &mut self.slots[i];
        let bytes = pattern(slot.len, self.rng.next());
        for page in 0..slot.len / PAGE {
            if all || self.rng.below(2) == 0 {
                let at = page * PAGE;
                slot.write(at, &bytes[at..at + PAGE]);
            }
        }
    }

    /// [`Action::Fork`] on slot `i`, which must be private memory. Call only while no other
    /// thread of the soak runs.
    pub(crate) fn fork_op(&mut self, exec: &Exec<'_>, i: usize) {
        let started = Instant::now();
        let n = self.begin(Action::Fork, i);
        self.fork(exec, i, n);
        self.time[Action::Fork.index()] += started.elapsed();
    }

    /// Forks; the child checks and writes its copy of slot `i` and exits; the parent checks
    /// the child succeeded, writes some of its pages (copy-on-write: new pages at the same
    /// addresses) and sends the whole slot, which must hold the parent's bytes.
    fn fork(&mut self, exec: &Exec<'_>, i: usize, n: u64) {
        let child_bytes = pattern(self.slots[i].len, self.rng.next());
        // SAFETY: no other thread of the soak runs now (the driver forks between bursts), and
        // the child only compares and copies memory, then `_exit`s: it allocates nothing,
        // takes no lock and runs no destructor.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            child_writes(&self.slots[i], &child_bytes);
        }
        assert!(pid > 0, "fork: {}", io::Error::last_os_error());
        let mut status = 0;
        // SAFETY: waits for the child just forked; `status` is a valid out-pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid, "waitpid: {}", io::Error::last_os_error());
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{}: {}: the fork child failed with status {status:#x} (3: its copy differed from \
             the parent's bytes, 4: its write did not stick)",
            exec.run,
            self.place(n, "fork", i)
        );
        self.rewrite(i, false);
        let len = self.slots[i].len;
        exec.send(
            &self.slots[i],
            0,
            len,
            &self.place(n, "fork: the parent's bytes", i),
        );
    }
}

/// The fork child: checks that its copy of the slot holds the parent's bytes, writes
/// `bytes` over it, checks they stuck, and exits 0 (3 or 4 on a failed check).
fn child_writes(slot: &FixedBuffer, bytes: &[u8]) -> ! {
    // SAFETY: the child's copy of the slot is mapped and nothing else runs in the child;
    // the slice lives only until the write below, which goes through a raw pointer.
    let copy = unsafe { std::slice::from_raw_parts(slot.ptr(), slot.len) };
    let code = if copy != slot.model.as_slice() {
        3
    } else {
        // SAFETY: the child's private copy of the slot, `len` writable bytes; `bytes` is a
        // distinct allocation of the same length.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), slot.addr as *mut u8, slot.len) };
        // SAFETY: as above: reads the child's copy after the write.
        let written = unsafe { std::slice::from_raw_parts(slot.ptr(), slot.len) };
        if written == bytes {
            0
        } else {
            4
        }
    };
    // SAFETY: ends the child at once, without running the parent's destructors or atexit
    // handlers in the copy.
    unsafe { libc::_exit(code) }
}
