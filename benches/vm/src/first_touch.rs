//! `p2p-bench first-touch`: what the first transfer of a fresh buffer costs with on-demand
//! paging (registration alone, and with a synchronous `ibv_advise_mr` prefetch) against a
//! pinned `ibv_reg_mr`; then what one munmap of a registered buffer costs
//! ([`crate::munmap_cost`]).
//!
//! A fresh buffer is a new anonymous mapping the application has just written, as a send
//! buffer is: its pages are present in the process but in no memory region. Each repetition
//! maps one per registration, registers it with the cache's access flags, and RDMA WRITEs it
//! whole from rxe0 to a pinned target on rxe1 (rxe0 when the guest has no rxe1) at path MTU
//! 4096. The first-touch figure runs from the registration to the WRITE's completion; a second
//! WRITE of the same, now registered buffer is the floor. The device reads the fresh buffer,
//! as it reads a send buffer in p2p's eager SEND and its rendezvous READ.
//!
//! ODP is measured only where the cache's own ODP self-test trusts the device fully, as the
//! cache would use it; elsewhere the ODP rows are reported as skips.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use memmap2::MmapMut;
use rdma_tests::{connected_pair, Node, Side, RXE0, RXE1};
use regcache::OdpSupport;
use verbs::{AccessFlags, MemoryRegion, Mtu, Prefetch, Sge};

use crate::munmap_cost;
use crate::plan::{median, Figure, Metric, SKIP_PREFIX, WARM_UP};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// The sizes users ask about: a page, a medium message, a rendezvous one, a large array.
pub const SIZES: [usize; 4] = [4 * KIB, 64 * KIB, MIB, 16 * MIB];
/// Seed of the fresh buffers' contents.
const SEED: u64 = 0xf1e5_70c4;
/// The path MTU of the benchmark's queue pairs, as p2p's between rxe devices.
const PATH_MTU: Mtu = Mtu::Mtu4096;
/// Bound on one completion: a lost one fails the run instead of hanging it.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// Timed repetitions of `bytes`: medians of 15, and of 7 for 16 MiB, whose WRITE takes a
/// fifth of a second under TCG.
pub fn repetitions(bytes: usize) -> usize {
    if bytes >= 16 * MIB {
        7
    } else {
        15
    }
}

/// How a fresh buffer is registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// `ibv_reg_mr`: the pages are pinned now.
    Pinned,
    /// `ibv_reg_mr` with `IBV_ACCESS_ON_DEMAND`: rxe faults the pages in during the transfer.
    Odp,
    /// As [`Registration::Odp`], then `ibv_advise_mr(PREFETCH, FLUSH)`: the pages are mapped
    /// before the transfer, synchronously.
    OdpPrefetch,
}

impl Registration {
    pub const ALL: [Self; 3] = [Self::Pinned, Self::Odp, Self::OdpPrefetch];

    /// The name of its figure lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pinned => "pinned",
            Self::Odp => "odp",
            Self::OdpPrefetch => "odp-prefetch",
        }
    }

    fn access(self) -> AccessFlags {
        // The cache's flags (regcache's registrar), so the faults are the cache's too.
        let cache = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ;
        match self {
            Self::Pinned => cache,
            Self::Odp | Self::OdpPrefetch => cache | AccessFlags::ON_DEMAND,
        }
    }
}

/// A fresh buffer and its registration.
pub struct Registered {
    // Before `map`: deregistered before the memory is unmapped (fields drop in order).
    pub mr: MemoryRegion,
    pub map: MmapMut,
}

/// rxe0's queue pair, connected to a peer that owns a pinned target of the largest size.
pub struct Rig {
    source: Side,
    // Before `target`: deregistered before the memory is unmapped (fields drop in order).
    target_mr: MemoryRegion,
    target: MmapMut,
    _sink: Side,
}

impl Rig {
    /// Connects rxe0 to `peer` and registers a target of `len` bytes on the peer.
    ///
    /// # Errors
    /// When the target cannot be mapped or registered.
    ///
    /// # Panics
    /// When a device cannot be opened or the queue pairs connected (rdma-tests' set-up).
    pub fn new(peer: Node, len: usize) -> Result<Self> {
        let (source, sink) = connected_pair(RXE0, peer, PATH_MTU);
        let mut target = MmapMut::map_anon(len).context("mapping the target")?;
        // SAFETY: the mapping lives in `Rig` and outlives the region (field order). The device
        // writes it only inside `Rig::write`, which holds `&mut self`; Rust reads it only in
        // `Rig::check` (`&mut self`, after the completion), so never while a write is in flight.
        let target_mr = unsafe {
            MemoryRegion::register(
                &sink.pd,
                target.as_mut_ptr(),
                len,
                AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE,
            )
        }
        .context("registering the target")?;
        Ok(Self {
            source,
            target_mr,
            target,
            _sink: sink,
        })
    }

    /// The ODP verdict of the cache's self-test on the source device.
    pub fn odp_self_test(&self) -> regcache::OdpSelfTest {
        regcache::odp_self_test(&self.source.pd, PATH_MTU)
    }

    /// Maps `contents.len()` fresh bytes holding `contents`, untimed.
    ///
    /// # Errors
    /// When the mapping fails.
    pub fn fresh(contents: &[u8]) -> Result<MmapMut> {
        let mut map = MmapMut::map_anon(contents.len()).context("mapping a fresh buffer")?;
        map.copy_from_slice(contents);
        Ok(map)
    }

    /// Registers `map` with the source's protection domain as `registration` says; `None`
    /// when the prefetch is not supported (`EOPNOTSUPP`).
    ///
    /// # Errors
    /// When a verbs call fails.
    pub fn register(
        &self,
        mut map: MmapMut,
        registration: Registration,
    ) -> Result<Option<Registered>> {
        let len = map.len();
        // SAFETY: the region goes into `Registered` before the mapping, so it is deregistered
        // before the memory is unmapped. The device only reads the buffer: the only work
        // requests naming it are WRITEs from it, and its rkey is given to no one, so Rust's
        // references to the mapping never see bytes change under them.
        let mr = unsafe {
            MemoryRegion::register(
                &self.source.pd,
                map.as_mut_ptr(),
                len,
                registration.access(),
            )
        }
        .with_context(|| format!("registering {len} bytes, {}", registration.name()))?;
        if registration == Registration::OdpPrefetch
            && !mr
                .prefetch(0, len, Prefetch::Read, true)
                .context("ibv_advise_mr")?
        {
            return Ok(None);
        }
        Ok(Some(Registered { mr, map }))
    }

    /// Clears the first `len` bytes of the target, untimed, so that what a WRITE leaves in
    /// it was sent by that WRITE.
    pub fn clear_target(&mut self, len: usize) {
        self.target[..len].fill(0);
    }

    /// RDMA WRITEs `sge` to the start of the target and spins until its completion.
    ///
    /// # Errors
    /// When the post or the completion fails, or no completion comes within a minute.
    pub fn write(&mut self, sge: Sge) -> Result<()> {
        self.source
            .qp
            .post_write(1, &[sge], self.target_mr.addr(), self.target_mr.rkey())?;
        let start = Instant::now();
        while self.source.cq.poll()?.is_none() {
            if start.elapsed() > WAIT_LIMIT {
                bail!("no completion for a WRITE of {} bytes", sge.length);
            }
            std::hint::spin_loop();
        }
        Ok(())
    }

    /// Fails unless the target starts with `expected`.
    ///
    /// # Errors
    /// The offset of the first differing byte.
    pub fn check(&mut self, expected: &[u8], what: &str) -> Result<()> {
        let landed = &self.target[..expected.len()];
        if let Some(offset) = landed.iter().zip(expected).position(|(l, e)| l != e) {
            bail!(
                "{what}: the {}-byte WRITE delivered a wrong byte at offset {offset:#x}",
                expected.len()
            );
        }
        Ok(())
    }
}

/// The samples of one registration at one size, in µs.
#[derive(Default)]
struct Samples {
    register: Vec<f64>,
    first: Vec<f64>,
    again: Vec<f64>,
}

/// One repetition of `registration` on a fresh copy of `contents`: returns the registration
/// time, the time to the first WRITE's completion and the second WRITE's time, or `None` when
/// the prefetch is not supported.
fn first_touch_once(
    rig: &mut Rig,
    contents: &[u8],
    registration: Registration,
) -> Result<Option<[Duration; 3]>> {
    let map = Rig::fresh(contents)?;
    let len = contents.len();
    rig.clear_target(len);
    let start = Instant::now();
    let Some(registered) = rig.register(map, registration)? else {
        return Ok(None);
    };
    let register = start.elapsed();
    rig.write(registered.mr.sge(0, len)?)?;
    let first = start.elapsed();
    rig.check(contents, registration.name())?;
    rig.clear_target(len);
    let again_start = Instant::now();
    rig.write(registered.mr.sge(0, len)?)?;
    let again = again_start.elapsed();
    rig.check(contents, registration.name())?;
    Ok(Some([register, first, again]))
}

/// Prints the figure lines of `registration` at `bytes`.
fn print_figures(registration: Registration, bytes: usize, samples: &mut Samples) -> Result<()> {
    for (metric, series) in [
        (Metric::RegisterMicros, &mut samples.register),
        (Metric::FirstTransferMicros, &mut samples.first),
        (Metric::RegisteredTransferMicros, &mut samples.again),
    ] {
        let repetitions = series.len();
        let value = median(series).context("no repetitions")?;
        let figure = Figure {
            what: registration.name(),
            metric,
            bytes,
            value,
            repetitions,
        };
        println!("{figure}");
    }
    Ok(())
}

/// The registrations to measure: all where the cache's self-test trusts ODP (without the
/// prefetch when `ibv_advise_mr` answers `EOPNOTSUPP`), else pinned only; a skip line for
/// each one left out.
fn registrations(rig: &Rig) -> Result<Vec<Registration>> {
    let verdict = rig.odp_self_test();
    println!("first-touch: the cache's ODP self-test: {verdict}");
    if verdict.support != OdpSupport::Full {
        for registration in [Registration::Odp, Registration::OdpPrefetch] {
            println!(
                "{SKIP_PREFIX} first-touch-{} the cache's ODP self-test does not trust this device: {verdict}",
                registration.name()
            );
        }
        return Ok(vec![Registration::Pinned]);
    }
    let probe = Rig::fresh(&[0x5a; SIZES[0]])?;
    let prefetch = rig.register(probe, Registration::OdpPrefetch)?.is_some();
    println!(
        "first-touch: ibv_advise_mr(PREFETCH, FLUSH) on an ODP region: {}",
        if prefetch { "supported" } else { "EOPNOTSUPP" }
    );
    if prefetch {
        return Ok(Registration::ALL.to_vec());
    }
    println!(
        "{SKIP_PREFIX} first-touch-{} ibv_advise_mr answered EOPNOTSUPP",
        Registration::OdpPrefetch.name()
    );
    Ok(vec![Registration::Pinned, Registration::Odp])
}

/// First-touch at every size in [`SIZES`], the registrations interleaved repetition by
/// repetition (each round starting one further on), then the munmap costs.
///
/// # Errors
/// When a transfer fails or delivers a wrong byte.
pub fn run() -> Result<()> {
    let devices = verbs::devices().context("listing RDMA devices")?;
    let peer = if devices.iter().any(|d| d.name == RXE1.device) {
        RXE1
    } else {
        RXE0
    };
    let largest = SIZES[SIZES.len() - 1];
    let mut rig = Rig::new(peer, largest)?;
    let registrations = registrations(&rig)?;
    println!(
        "first-touch: fresh buffers on rxe0 written to {} (path MTU {}): {}",
        peer.device,
        PATH_MTU.bytes(),
        registrations
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let payload = rdma_tests::pattern(largest, SEED);
    for bytes in SIZES {
        let repetitions = repetitions(bytes);
        let mut samples: Vec<Samples> = registrations.iter().map(|_| Samples::default()).collect();
        let mut order: Vec<usize> = (0..registrations.len()).collect();
        for round in 0..WARM_UP + repetitions {
            order.rotate_left(1);
            for &index in &order {
                let registration = registrations[index];
                let Some([register, first, again]) =
                    first_touch_once(&mut rig, &payload[..bytes], registration)?
                else {
                    bail!("ibv_advise_mr answered EOPNOTSUPP after it had worked");
                };
                if round >= WARM_UP {
                    let micros = |d: Duration| d.as_secs_f64() * 1e6;
                    samples[index].register.push(micros(register));
                    samples[index].first.push(micros(first));
                    samples[index].again.push(micros(again));
                }
            }
        }
        for (registration, samples) in registrations.iter().zip(&mut samples) {
            print_figures(*registration, bytes, samples)?;
        }
    }
    munmap_cost::run(&mut rig, registrations.contains(&Registration::Odp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sizes_are_the_ones_users_ask_about() {
        assert_eq!(SIZES, [4096, 65536, 1 << 20, 16 << 20]);
        assert!(SIZES.iter().all(|&bytes| repetitions(bytes) >= 7));
    }

    #[test]
    fn only_odp_registrations_ask_for_on_demand_paging() {
        for registration in Registration::ALL {
            let on_demand = registration.access().contains(AccessFlags::ON_DEMAND);
            assert_eq!(on_demand, registration != Registration::Pinned);
            assert!(registration.access().contains(AccessFlags::LOCAL_WRITE));
        }
    }
}
