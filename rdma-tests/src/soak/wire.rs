//! The soak's transfers: `cached_reg` + RDMA WRITE or READ over one loopback connection,
//! every byte checked against the slot's model.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use regcache::{Access, Error, RdmaCache, RdmaRegistration};
use verbs::{AccessFlags, Mtu, OwnedMemoryRegion, Sge};

use super::memory::FixedBuffer;
use crate::{connected_pair, error_chain, Side, RXE0};

/// The QP the cache's registrations are used on, and the peer's registered buffer that
/// WRITEs land in and READs come from.
#[derive(Debug)]
pub(crate) struct Wire {
    local: Side,
    peer: Side,
    target: OwnedMemoryRegion,
}

impl Wire {
    /// A loopback RC connection on rxe0 (every test kernel has it) at path MTU 4096, and a
    /// peer buffer of `len` bytes.
    pub(crate) fn new(len: usize) -> Self {
        let (local, peer) = connected_pair(RXE0, RXE0, Mtu::Mtu4096);
        let target = OwnedMemoryRegion::new(
            &peer.pd,
            len,
            AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ,
        )
        .unwrap_or_else(|e| panic!("register the peer's buffer: {}", error_chain(&e)));
        Self {
            local,
            peer,
            target,
        }
    }

    /// The protection domain the cache must register in.
    pub(crate) fn pd(&self) -> &std::sync::Arc<verbs::ProtectionDomain> {
        &self.local.pd
    }

    fn sge(addr: usize, len: usize, lkey: u32) -> Sge {
        Sge {
            addr: addr as u64,
            length: u32::try_from(len).expect("slots are far below 4 GiB"),
            lkey,
        }
    }

    /// Clears the peer's first `len` bytes, WRITEs `len` bytes at `addr` there and returns
    /// what landed.
    fn write(&mut self, addr: usize, len: usize, lkey: u32) -> Vec<u8> {
        self.target
            .write_at(0, &vec![0; len])
            .expect("transfers fit the peer's buffer");
        let mr = self.target.mr();
        self.local
            .qp
            .post_write(1, &[Self::sge(addr, len, lkey)], mr.addr(), mr.rkey())
            .unwrap_or_else(|e| panic!("post RDMA WRITE: {}", error_chain(&e)));
        let _ = self.local.expect_completion("RDMA WRITE");
        let mut landed = vec![0; len];
        self.target
            .read_at(0, &mut landed)
            .expect("transfers fit the peer's buffer");
        landed
    }

    /// Puts `source` in the peer's buffer and READs it into `len` bytes at `addr`.
    fn read(&mut self, addr: usize, lkey: u32, source: &[u8]) {
        self.target
            .write_at(0, source)
            .expect("transfers fit the peer's buffer");
        let mr = self.target.mr();
        self.local
            .qp
            .post_read(
                1,
                &[Self::sge(addr, source.len(), lkey)],
                mr.addr(),
                mr.rkey(),
            )
            .unwrap_or_else(|e| panic!("post RDMA READ: {}", error_chain(&e)));
        let _ = self.local.expect_completion("RDMA READ");
    }

    /// The peer's device, for the report.
    pub(crate) fn peer_device(&self) -> &str {
        self.peer.ctx.name()
    }
}

/// Counters of one mode's run, shared by the threads.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) transfers: AtomicU64,
    pub(crate) stale_bytes: AtomicU64,
    pub(crate) stale_transfers: AtomicU64,
    pub(crate) unstable: AtomicU64,
    /// Time the transfers spent in each phase, in nanoseconds (summed over threads): to see
    /// where a run's time goes.
    pub(crate) phases: Phases,
}

/// Where the transfers' time goes, in nanoseconds.
#[derive(Debug, Default)]
pub(crate) struct Phases {
    /// Checking the slot holds its model, and the transfer's bytes against it.
    pub(crate) checks: AtomicU64,
    /// `cached_reg` (and the registration's drop).
    pub(crate) registration: AtomicU64,
    /// Posting, waiting for the completion, and filling or reading the peer's buffer.
    pub(crate) wire: AtomicU64,
}

impl Phases {
    /// Adds the time since `*since` to `phase` and restarts the clock.
    fn lap(phase: &AtomicU64, since: &mut Instant) {
        let now = Instant::now();
        let nanos = u64::try_from((now - *since).as_nanos()).unwrap_or(u64::MAX);
        phase.fetch_add(nanos, Relaxed);
        *since = now;
    }

    /// The three phases in seconds, for the report.
    pub(crate) fn describe(&self) -> String {
        let secs = |phase: &AtomicU64| phase.load(Relaxed) as f64 / 1e9;
        format!(
            "checks {:.1} s, registration {:.1} s, wire {:.1} s",
            secs(&self.checks),
            secs(&self.registration),
            secs(&self.wire)
        )
    }
}

/// Where a transfer happens, for failure messages: enough to find it again with `--seed`.
pub(crate) struct Place<'a> {
    pub(crate) zone: &'a str,
    pub(crate) op: u64,
    pub(crate) what: &'a str,
    pub(crate) slot: usize,
    pub(crate) recent: &'a dyn fmt::Debug,
}

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} op {} ({}) on slot {}; the zone's recent ops: {:?}",
            self.zone, self.op, self.what, self.slot, self.recent
        )
    }
}

/// What every transfer of one mode's run shares: the cache, the wire and the counters.
pub(crate) struct Exec<'a> {
    pub(crate) cache: &'a RdmaCache,
    pub(crate) wire: &'a Mutex<Wire>,
    pub(crate) tally: &'a Tally,
    /// The negative control: stale bytes are counted, not a failure.
    pub(crate) control: bool,
    /// Mode and seed, for failure messages.
    pub(crate) run: String,
}

const REGISTRATION_ATTEMPTS: u32 = 8;

impl Exec<'_> {
    fn register(
        &self,
        slot: &FixedBuffer,
        offset: usize,
        len: usize,
        access: Access,
        place: &Place<'_>,
    ) -> RdmaRegistration {
        for _ in 0..REGISTRATION_ATTEMPTS {
            // SAFETY: slots are reached only through raw pointers (their models are separate
            // buffers); the device writes a slot only during `receive`, which reads the slot
            // after the completion, and no thread but the slot's owner touches it.
            match unsafe {
                self.cache
                    .cached_reg(slot.ptr().wrapping_add(offset), len, access)
            } {
                Ok(registration) => return registration,
                // The documented outcome of pages changing during every registration attempt
                // (a merged neighbour of another thread's slot being changed): try again.
                Err(Error::Unstable { .. }) => {
                    self.tally.unstable.fetch_add(1, Relaxed);
                }
                Err(e) => panic!("{}: {place}: cached_reg: {}", self.run, error_chain(&e)),
            }
        }
        panic!(
            "{}: {place}: the pages kept changing during {REGISTRATION_ATTEMPTS} registrations",
            self.run
        )
    }

    /// Checks that the slot's memory holds its model: a harness invariant, so that every
    /// difference a transfer shows is the transfer's.
    fn check_model(&self, slot: &FixedBuffer, offset: usize, len: usize, place: &Place<'_>) {
        let memory = slot.read(offset, len);
        if let Some(diff) = Diff::of(&slot.model[offset..offset + len], &memory) {
            panic!(
                "{}: {place}: the slot's memory differs from what the soak wrote: {diff}",
                self.run
            );
        }
    }

    /// Counts a transfer's differing bytes; in the cache's modes any is a failure.
    fn judge(&self, diff: Option<Diff>, direction: &str, place: &Place<'_>) {
        self.tally.transfers.fetch_add(1, Relaxed);
        let Some(diff) = diff else { return };
        assert!(
            self.control,
            "{}: STALE {direction}: {place}: {diff}",
            self.run
        );
        self.tally.stale_bytes.fetch_add(diff.count as u64, Relaxed);
        self.tally.stale_transfers.fetch_add(1, Relaxed);
    }

    /// `cached_reg` + RDMA WRITE of `len` bytes of the slot at `offset`; the peer must
    /// receive exactly the slot's model.
    pub(crate) fn send(&self, slot: &FixedBuffer, offset: usize, len: usize, place: &Place<'_>) {
        let phases = &self.tally.phases;
        let mut clock = Instant::now();
        self.check_model(slot, offset, len, place);
        Phases::lap(&phases.checks, &mut clock);
        let registration = self.register(slot, offset, len, Access::LOCAL_READ_ONLY, place);
        Phases::lap(&phases.registration, &mut clock);
        let landed = self
            .wire
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write(slot.addr + offset, len, registration.lkey());
        Phases::lap(&phases.wire, &mut clock);
        drop(registration);
        Phases::lap(&phases.registration, &mut clock);
        let diff = Diff::of(&slot.model[offset..offset + len], &landed);
        Phases::lap(&phases.checks, &mut clock);
        self.judge(
            diff,
            "WRITE (the device read other pages than the slot's)",
            place,
        );
    }

    /// `cached_reg` + RDMA READ of `source` into the slot at `offset`; the slot's memory must
    /// then hold exactly `source`. The model takes what the memory holds.
    pub(crate) fn receive(
        &self,
        slot: &mut FixedBuffer,
        offset: usize,
        source: &[u8],
        place: &Place<'_>,
    ) {
        let len = source.len();
        let phases = &self.tally.phases;
        let mut clock = Instant::now();
        self.check_model(slot, offset, len, place);
        Phases::lap(&phases.checks, &mut clock);
        let registration = self.register(slot, offset, len, Access::LOCAL_WRITE, place);
        Phases::lap(&phases.registration, &mut clock);
        self.wire
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .read(slot.addr + offset, registration.lkey(), source);
        Phases::lap(&phases.wire, &mut clock);
        drop(registration);
        Phases::lap(&phases.registration, &mut clock);
        let memory = slot.read(offset, len);
        let diff = Diff::of(source, &memory);
        slot.model[offset..offset + len].copy_from_slice(&memory);
        Phases::lap(&phases.checks, &mut clock);
        self.judge(
            diff,
            "READ (the device wrote other pages than the slot's)",
            place,
        );
    }
}

/// How two byte ranges differ.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Diff {
    pub(crate) count: usize,
    first: usize,
    len: usize,
}

impl Diff {
    fn of(expected: &[u8], actual: &[u8]) -> Option<Self> {
        assert_eq!(expected.len(), actual.len());
        // Equal ranges (every transfer of the cache's modes) take one memcmp; the count
        // below, a byte at a time, only runs when some byte differs.
        if expected == actual {
            return None;
        }
        let mut differing = expected
            .iter()
            .zip(actual)
            .enumerate()
            .filter(|(_, (e, a))| e != a)
            .map(|(offset, _)| offset);
        let first = differing.next()?;
        Some(Self {
            count: 1 + differing.count(),
            first,
            len: expected.len(),
        })
    }
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} bytes differ, the first at offset {:#x} of the transfer",
            self.count, self.len, self.first
        )
    }
}
