//! The ODP self-test: ODP is trusted only after the device moved real data through it.
//!
//! Issue 4: Debian's 7.3.4 kernel with rdma_rxe completes an RDMA WRITE into an ODP target, or
//! an RDMA READ into an ODP sink, with `IBV_WC_SUCCESS` while only the first 1024 bytes of every
//! 4 KiB page arrive when the path MTU is 1024; at 4096 every byte arrives, and ODP memory the
//! device only reads is correct at both. So the test runs at the smallest path MTU the cache's
//! users configure, over a QP connected to itself, and checks every byte of four transfers of a
//! few pages each: the device reading ODP memory (WRITE source, READ responder) and the device
//! writing it (WRITE target, READ sink). Destinations have touched and never-touched pages, and
//! nothing is prefetched: a registration meets the fault path again after its pages change.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::io;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use verbs::{
    AccessFlags, CompletionQueue, GidEntry, GidType, Mtu, ProtectionDomain, QpConfig, QueuePair,
};

use crate::config::OdpSupport;

/// The port the test QP uses.
const PORT: u8 = 1;
const PAGE: usize = 4096;
/// Pages per transfer: enough for several packets per page at every MTU, cheap under emulation.
const PAGES: usize = 4;
const LEN: usize = PAGES * PAGE;
/// Generous for an emulated machine; the test waits this long at most once per transfer.
const COMPLETION_TIMEOUT: Duration = Duration::from_secs(10);
/// What touched destination pages hold before the transfer; never a pattern byte.
const POISON: u8 = 0xee;

/// The outcome of one ODP self-test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OdpSelfTest {
    /// The device tested.
    pub device: String,
    /// Path MTU of the test QP in bytes; `None` when the test did not run (no ODP caps, or a
    /// verbs call failed before any transfer).
    pub path_mtu: Option<u32>,
    /// How far ODP can be trusted on this device.
    pub support: OdpSupport,
    /// What each check found, or why none ran.
    pub findings: String,
}

impl fmt::Display for OdpSelfTest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path_mtu {
            Some(mtu) => write!(
                f,
                "{} at path MTU {mtu}: {:?} ({})",
                self.device, self.support, self.findings
            ),
            None => write!(f, "{}: {:?} ({})", self.device, self.support, self.findings),
        }
    }
}

/// Runs the self-test on `pd`'s device at path MTU `path_mtu` (bytes; lowered to the port's
/// active MTU when that is smaller) and logs the outcome. Takes milliseconds on hardware, about
/// a second under emulation. Never fails: anything that stops the test makes the result
/// [`OdpSupport::None`], with the reason in [`OdpSelfTest::findings`].
#[must_use]
pub fn odp_self_test(pd: &Arc<ProtectionDomain>, path_mtu: u32) -> OdpSelfTest {
    let device = pd.context().name().to_owned();
    let result = match run(pd, path_mtu) {
        Ok((mtu, checks)) => OdpSelfTest {
            device,
            path_mtu: Some(mtu.bytes()),
            support: checks.support(),
            findings: checks.to_string(),
        },
        Err(reason) => OdpSelfTest {
            device,
            path_mtu: None,
            support: OdpSupport::None,
            findings: reason,
        },
    };
    tracing::info!(
        device = result.device,
        path_mtu = result.path_mtu,
        support = ?result.support,
        findings = result.findings,
        "regcache: ODP self-test"
    );
    result
}

/// [`odp_self_test`], run once per device and path MTU in this process.
pub(crate) fn odp_self_test_once(pd: &Arc<ProtectionDomain>, path_mtu: u32) -> OdpSelfTest {
    static DONE: OnceLock<Mutex<HashMap<(String, u32), OdpSelfTest>>> = OnceLock::new();
    let mut done = DONE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    done.entry((pd.context().name().to_owned(), path_mtu))
        .or_insert_with(|| odp_self_test(pd, path_mtu))
        .clone()
}

/// The four checks' outcomes: `Err` says what went wrong.
struct Checks {
    /// Device reads ODP memory: WRITE source, READ responder.
    device_reads: [(&'static str, Result<(), String>); 2],
    /// Device writes ODP memory: WRITE target, READ sink.
    device_writes: [(&'static str, Result<(), String>); 2],
}

impl Checks {
    fn support(&self) -> OdpSupport {
        let passed = |checks: &[(&str, Result<(), String>)]| checks.iter().all(|(_, r)| r.is_ok());
        match (passed(&self.device_reads), passed(&self.device_writes)) {
            (true, true) => OdpSupport::Full,
            (true, false) => OdpSupport::DeviceReadsOnly,
            (false, _) => OdpSupport::None,
        }
    }
}

impl fmt::Display for Checks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all = self.device_reads.iter().chain(&self.device_writes);
        for (i, (what, result)) in all.enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            match result {
                Ok(()) => write!(f, "{what}: ok")?,
                Err(problem) => write!(f, "{what}: {problem}")?,
            }
        }
        Ok(())
    }
}

fn run(pd: &Arc<ProtectionDomain>, path_mtu: u32) -> Result<(Mtu, Checks), String> {
    let context = pd.context();
    let requested =
        mtu_from_bytes(path_mtu).ok_or_else(|| format!("{path_mtu} is not a path MTU"))?;
    let odp = context.query_device().map_err(describe)?.odp;
    if !odp.covers_rc_send_recv_read_write() {
        return Err(format!(
            "not run: the device's ODP caps do not cover RC send/recv/read/write ({odp:?})"
        ));
    }
    let port = context.query_port(PORT).map_err(describe)?;
    let mtu = port
        .active_mtu
        .map_or(requested, |active| active.min(requested));
    let gid_index = loopback_gid(&context.gid_table(PORT).map_err(describe)?)
        .ok_or("not run: port 1 has no GID")?;
    let probe = Probe { pd, gid_index, mtu };
    Ok((
        mtu,
        Checks {
            device_reads: [
                (
                    "ODP source of an RDMA WRITE",
                    probe.check(Op::Write, OdpSide::Source),
                ),
                (
                    "ODP responder of an RDMA READ",
                    probe.check(Op::Read, OdpSide::Source),
                ),
            ],
            device_writes: [
                (
                    "ODP target of an RDMA WRITE",
                    probe.check(Op::Write, OdpSide::Destination),
                ),
                (
                    "ODP sink of an RDMA READ",
                    probe.check(Op::Read, OdpSide::Destination),
                ),
            ],
        },
    ))
}

/// The GID a QP connected to itself sends from: RoCE v2 over IPv4 where there is one (what
/// Soft-RoCE set-ups use), else any RoCE v2 entry, else the first entry (InfiniBand).
fn loopback_gid(table: &[GidEntry]) -> Option<u8> {
    let roce_v2 = |entry: &&GidEntry| entry.gid_type == Some(GidType::RoceV2);
    table
        .iter()
        .filter(roce_v2)
        .find(|entry| entry.gid.to_ipv4_mapped().is_some())
        .or_else(|| table.iter().find(roce_v2))
        .or_else(|| table.first())
        .map(|entry| entry.index)
}

fn mtu_from_bytes(bytes: u32) -> Option<Mtu> {
    [
        Mtu::Mtu256,
        Mtu::Mtu512,
        Mtu::Mtu1024,
        Mtu::Mtu2048,
        Mtu::Mtu4096,
    ]
    .into_iter()
    .find(|mtu| mtu.bytes() == bytes)
}

fn describe(err: verbs::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Write,
    Read,
}

/// Which end of the transfer is ODP memory; the other is pinned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OdpSide {
    Source,
    Destination,
}

struct Probe<'a> {
    pd: &'a Arc<ProtectionDomain>,
    gid_index: u8,
    mtu: Mtu,
}

impl Probe<'_> {
    /// Moves a pattern from a source to a destination buffer with `op` on a fresh QP connected
    /// to itself (a failed transfer leaves a QP in the error state) and compares every byte.
    fn check(&self, op: Op, odp: OdpSide) -> Result<(), String> {
        let on_demand = |side| {
            if odp == side {
                AccessFlags::ON_DEMAND
            } else {
                AccessFlags::LOCAL_READ
            }
        };
        // Each buffer gets the rights its role needs and no more, as the cache registers them.
        let (source_rights, destination_rights) = match op {
            Op::Write => (
                AccessFlags::LOCAL_READ,
                AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE,
            ),
            Op::Read => (AccessFlags::REMOTE_READ, AccessFlags::LOCAL_WRITE),
        };
        let expected = pattern();
        let source =
            ProbeBuffer::new(self.pd, source_rights | on_demand(OdpSide::Source), |map| {
                map.copy_in(0, &expected)
            })?;
        let destination = ProbeBuffer::new(
            self.pd,
            destination_rights | on_demand(OdpSide::Destination),
            // Even pages touched, odd pages never: both ways a page can meet the device.
            |map| {
                (0..PAGES)
                    .step_by(2)
                    .for_each(|page| map.copy_in(page * PAGE, &[POISON; PAGE]))
            },
        )?;
        let cq = CompletionQueue::new(self.pd.context(), 4).map_err(describe)?;
        let config = QpConfig {
            max_send_wr: 1,
            max_recv_wr: 1,
            ..QpConfig::new(PORT, self.gid_index)
        };
        let qp = QueuePair::create_rc(self.pd, &cq, &cq, config).map_err(describe)?;
        qp.connect(&qp.endpoint(), self.mtu).map_err(describe)?;
        let (local, remote) = match op {
            Op::Write => (&source, &destination),
            Op::Read => (&destination, &source),
        };
        let sge = local.mr.sge(0, LEN).map_err(describe)?;
        let posted = match op {
            Op::Write => qp.post_write(1, &[sge], remote.mr.addr(), remote.mr.rkey()),
            Op::Read => qp.post_read(1, &[sge], remote.mr.addr(), remote.mr.rkey()),
        };
        posted.map_err(describe)?;
        cq.wait_completion(COMPLETION_TIMEOUT).map_err(describe)?;
        // The QP goes first, so no request of it can reach the buffers any more.
        drop(qp);
        compare(&expected, &destination.map.copy_out())
    }
}

/// Bytes in 1..=0xed, different in every page, so neither a zero page nor a poisoned one, nor
/// a page landing in the wrong place, passes for the pattern.
fn pattern() -> Vec<u8> {
    (0..LEN)
        .map(|i| {
            let hash = (i as u32 ^ 0x5bd1_e995).wrapping_mul(0x9e37_79b1) >> 16;
            1 + (hash % 0xed) as u8
        })
        .collect()
}

/// `Err` naming how many bytes are wrong and how many arrived correctly in each page.
fn compare(expected: &[u8], actual: &[u8]) -> Result<(), String> {
    let wrong = expected.iter().zip(actual).filter(|(e, a)| e != a).count();
    if wrong == 0 {
        return Ok(());
    }
    let per_page: Vec<String> = expected
        .chunks(PAGE)
        .zip(actual.chunks(PAGE))
        .map(|(e, a)| e.iter().zip(a).filter(|(e, a)| e == a).count().to_string())
        .collect();
    Err(format!(
        "completed but {wrong} of {} bytes are wrong (correct bytes per page: {})",
        expected.len(),
        per_page.join(", ")
    ))
}

/// A test buffer and its registration.
struct ProbeBuffer {
    // Before `map`: deregistered before the memory is unmapped (fields drop in order).
    mr: verbs::MemoryRegion,
    map: Mapping,
}

impl ProbeBuffer {
    fn new(
        pd: &Arc<ProtectionDomain>,
        access: AccessFlags,
        fill: impl FnOnce(&Mapping),
    ) -> Result<Self, String> {
        let map = Mapping::anonymous(LEN).map_err(|err| format!("mmap failed: {err}"))?;
        fill(&map);
        // SAFETY: the mapping is private to this buffer and outlives the region (field order);
        // Rust reads and writes it only by copying through raw pointers (`Mapping`), never
        // through references, and only while no transfer is in flight.
        let mr = unsafe { verbs::MemoryRegion::register(pd, map.ptr.as_ptr(), LEN, access) }
            .map_err(describe)?;
        Ok(Self { mr, map })
    }
}

/// A private anonymous mapping, reached only by raw copies.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn anonymous(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous private mapping at an address the kernel picks: it
        // overlaps nothing Rust owns.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Self { ptr, len })
    }

    fn copy_in(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.len, "copy past the mapping");
        // SAFETY: the range lies in the live mapping (asserted); `bytes` is another
        // allocation; no transfer is in flight while the probe fills its buffers.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(offset),
                bytes.len(),
            );
        }
    }

    fn copy_out(&self) -> Vec<u8> {
        let mut out = vec![0; self.len];
        // SAFETY: the whole live mapping into a distinct allocation; the probe copies out only
        // after the transfer completed and its QP was destroyed.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), out.as_mut_ptr(), self.len) };
        out
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `anonymous` created, once; its region was
        // deregistered before (field order of `ProbeBuffer`).
        if unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) } != 0 {
            tracing::warn!(err = %io::Error::last_os_error(), "regcache: munmap of an ODP probe buffer failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use verbs::Gid;

    use super::*;

    #[test]
    fn pattern_never_looks_like_an_untouched_or_poisoned_page() {
        let bytes = pattern();
        assert!(bytes.iter().all(|&b| b != 0 && b != POISON));
        let mut pages: Vec<&[u8]> = bytes.chunks(PAGE).collect();
        pages.sort_unstable();
        pages.dedup();
        assert_eq!(pages.len(), PAGES, "every page differs");
    }

    #[test]
    fn compare_counts_what_landed_per_page() {
        let expected = pattern();
        assert_eq!(compare(&expected, &expected), Ok(()));
        let mut lost = expected.clone();
        for page in lost.chunks_mut(PAGE) {
            page[1024..].fill(0);
        }
        let problem = compare(&expected, &lost).unwrap_err();
        assert!(
            problem.contains("12288 of 16384 bytes are wrong")
                && problem.contains("1024, 1024, 1024, 1024"),
            "{problem}"
        );
    }

    fn outcome(ok: bool) -> Result<(), String> {
        if ok {
            Ok(())
        } else {
            Err("lost".to_owned())
        }
    }

    fn checks(reads: [bool; 2], writes: [bool; 2]) -> Checks {
        Checks {
            device_reads: [("r0", outcome(reads[0])), ("r1", outcome(reads[1]))],
            device_writes: [("w0", outcome(writes[0])), ("w1", outcome(writes[1]))],
        }
    }

    #[test]
    fn support_needs_every_check_of_its_kind() {
        assert_eq!(checks([true; 2], [true; 2]).support(), OdpSupport::Full);
        assert_eq!(
            checks([true; 2], [true, false]).support(),
            OdpSupport::DeviceReadsOnly
        );
        assert_eq!(checks([false, true], [true; 2]).support(), OdpSupport::None);
        assert_eq!(
            checks([true; 2], [false, true]).to_string(),
            "r0: ok; r1: ok; w0: lost; w1: ok"
        );
    }

    #[test]
    fn loopback_prefers_roce_v2_over_ipv4() {
        let entry = |index, gid, gid_type| GidEntry {
            index,
            gid,
            gid_type,
        };
        let link_local = Gid([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let ipv4 = Gid::from_ipv4(Ipv4Addr::new(10, 77, 0, 1));
        let table = [
            entry(0, link_local, Some(GidType::IbOrRoceV1)),
            entry(1, link_local, Some(GidType::RoceV2)),
            entry(2, ipv4, Some(GidType::IbOrRoceV1)),
            entry(3, ipv4, Some(GidType::RoceV2)),
        ];
        assert_eq!(loopback_gid(&table), Some(3));
        assert_eq!(loopback_gid(&table[..3]), Some(1));
        assert_eq!(loopback_gid(&table[..1]), Some(0));
        assert_eq!(loopback_gid(&[]), None);
    }

    #[test]
    fn only_path_mtus_convert() {
        assert_eq!(mtu_from_bytes(1024), Some(Mtu::Mtu1024));
        assert_eq!(mtu_from_bytes(4096), Some(Mtu::Mtu4096));
        assert_eq!(mtu_from_bytes(1500), None);
    }
}
