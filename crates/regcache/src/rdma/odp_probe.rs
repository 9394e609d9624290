//! The ODP self-test: ODP is trusted only after the device moved real data through it.
//!
//! Issue 4: Debian's 7.3.4 kernel with rdma_rxe completes RDMA WRITEs and READs that touch ODP
//! memory with `IBV_WC_SUCCESS` while bytes are lost. So the test runs at the smallest path MTU
//! the cache's users configure, over a QP connected to itself, and checks every byte of
//! transfers of a few pages: the device reading ODP memory (WRITE source, READ responder) and
//! writing it (WRITE target, READ sink), each page aligned and starting 16 bytes into a page
//! (where a malloc'ed buffer starts). Destinations have touched and never-touched pages, and
//! nothing is prefetched: a registration meets the fault path again after its pages change. A
//! pinned-to-pinned control transfer runs first, so a failure is ODP's, not the test's.
//!
//! Measured on 7.3.4 rxe: at path MTU 1024 only the first packet of each page is right; at 4096
//! page-aligned transfers are right but every transfer starting inside a page is wrong, reads
//! and writes alike, so the device gets [`OdpSupport::None`] at both MTUs.

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
/// Where transfers start in their first page: aligned, and where a malloc'ed block starts
/// (packets then start inside pages, which may take another path through the device).
const SKEWS: [usize; 2] = [0, 16];
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
    /// Every transfer of the test, in order (empty when it did not run).
    pub checks: Vec<OdpCheck>,
    /// What each check found, or why none ran, in one line.
    pub findings: String,
}

/// One transfer of the self-test, between an ODP buffer and a pinned one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OdpCheck {
    /// What the ODP buffer was, e.g. "ODP target of an RDMA WRITE".
    pub role: &'static str,
    /// Whether the device wrote the ODP buffer (WRITE target, READ sink) rather than read it.
    pub device_writes: bool,
    /// Where the transfer started in its first page (0: page aligned).
    pub skew: usize,
    /// `None` when every byte arrived, else what went wrong.
    pub problem: Option<String>,
}

impl fmt::Display for OdpCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.role)?;
        match self.skew {
            0 => f.write_str(", page aligned: ")?,
            skew => write!(f, ", starting {skew} bytes into a page: ")?,
        }
        f.write_str(self.problem.as_deref().unwrap_or("ok"))
    }
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
            support: support(&checks),
            findings: checks
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            checks,
        },
        Err(reason) => OdpSelfTest {
            device,
            path_mtu: None,
            support: OdpSupport::None,
            checks: Vec::new(),
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

/// What the checks allow: device writes only count once device reads passed.
fn support(checks: &[OdpCheck]) -> OdpSupport {
    let passed = |device_writes| {
        checks
            .iter()
            .filter(|check| check.device_writes == device_writes)
            .all(|check| check.problem.is_none())
    };
    match (passed(false), passed(true)) {
        (true, true) => OdpSupport::Full,
        (true, false) => OdpSupport::DeviceReadsOnly,
        (false, _) => OdpSupport::None,
    }
}

fn run(pd: &Arc<ProtectionDomain>, path_mtu: u32) -> Result<(Mtu, Vec<OdpCheck>), String> {
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
    // The control: pinned to pinned, unaligned. If even that fails, the failures below say
    // nothing about ODP.
    if let Err(problem) = probe.check(Op::Write, None, SKEWS[1]) {
        return Err(format!(
            "not trusted: an RDMA WRITE between pinned buffers failed too: {problem}"
        ));
    }
    let roles = [
        (Op::Write, OdpSide::Source, "ODP source of an RDMA WRITE"),
        (Op::Read, OdpSide::Source, "ODP responder of an RDMA READ"),
        (
            Op::Write,
            OdpSide::Destination,
            "ODP target of an RDMA WRITE",
        ),
        (Op::Read, OdpSide::Destination, "ODP sink of an RDMA READ"),
    ];
    let checks = roles
        .into_iter()
        .flat_map(|(op, odp, role)| SKEWS.into_iter().map(move |skew| (op, odp, role, skew)))
        .map(|(op, odp, role, skew)| OdpCheck {
            role,
            device_writes: odp == OdpSide::Destination,
            skew,
            problem: probe.check(op, Some(odp), skew).err(),
        })
        .collect();
    Ok((mtu, checks))
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
    /// to itself (a failed transfer leaves a QP in the error state) and compares every byte;
    /// the transfer covers both buffers from byte `skew` to their end. `odp: None` is the
    /// control: both buffers pinned.
    fn check(&self, op: Op, odp: Option<OdpSide>, skew: usize) -> Result<(), String> {
        let on_demand = |side| {
            if odp == Some(side) {
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
        let sge = local.mr.sge(skew, LEN - skew).map_err(describe)?;
        let remote_addr = remote.mr.addr() + skew as u64;
        let posted = match op {
            Op::Write => qp.post_write(1, &[sge], remote_addr, remote.mr.rkey()),
            Op::Read => qp.post_read(1, &[sge], remote_addr, remote.mr.rkey()),
        };
        posted.map_err(describe)?;
        cq.wait_completion(COMPLETION_TIMEOUT).map_err(describe)?;
        // The QP goes first, so no request of it can reach the buffers any more.
        drop(qp);
        compare(&expected[skew..], &destination.map.copy_out()[skew..], skew)
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

/// `Err` naming how many bytes are wrong and how many arrived correctly in each page; the
/// slices start `skew` bytes into the first page.
fn compare(expected: &[u8], actual: &[u8], skew: usize) -> Result<(), String> {
    let wrong = expected.iter().zip(actual).filter(|(e, a)| e != a).count();
    if wrong == 0 {
        return Ok(());
    }
    let first_page = (PAGE - skew).min(expected.len());
    let pages = |bytes: &[u8]| {
        let (first, rest) = bytes.split_at(first_page);
        std::iter::once(first)
            .chain(rest.chunks(PAGE))
            .map(<[u8]>::to_vec)
            .collect::<Vec<_>>()
    };
    let per_page: Vec<String> = pages(expected)
        .iter()
        .zip(pages(actual))
        .map(|(e, a)| e.iter().zip(&a).filter(|(e, a)| e == a).count().to_string())
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
        assert_eq!(compare(&expected, &expected, 0), Ok(()));
        let mut lost = expected.clone();
        for page in lost.chunks_mut(PAGE) {
            page[1024..].fill(0);
        }
        let problem = compare(&expected, &lost, 0).unwrap_err();
        assert!(
            problem.contains("12288 of 16384 bytes are wrong")
                && problem.contains("1024, 1024, 1024, 1024"),
            "{problem}"
        );
        let skewed = compare(&expected[16..], &lost[16..], 16).unwrap_err();
        assert!(skewed.contains("1008, 1024, 1024, 1024"), "{skewed}");
    }

    fn check(device_writes: bool, skew: usize, ok: bool) -> OdpCheck {
        OdpCheck {
            role: "role",
            device_writes,
            skew,
            problem: (!ok).then(|| "lost".to_owned()),
        }
    }

    #[test]
    fn support_needs_every_check_of_its_kind() {
        let all = |reads: [bool; 2], writes: [bool; 2]| {
            vec![
                check(false, 0, reads[0]),
                check(false, 16, reads[1]),
                check(true, 0, writes[0]),
                check(true, 16, writes[1]),
            ]
        };
        assert_eq!(support(&all([true; 2], [true; 2])), OdpSupport::Full);
        assert_eq!(
            support(&all([true; 2], [true, false])),
            OdpSupport::DeviceReadsOnly
        );
        assert_eq!(support(&all([false, true], [true; 2])), OdpSupport::None);
        assert_eq!(
            check(true, 16, false).to_string(),
            "role, starting 16 bytes into a page: lost"
        );
        assert_eq!(check(false, 0, true).to_string(), "role, page aligned: ok");
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
