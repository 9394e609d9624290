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
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use regcache_core::PAGE;
use verbs::{
    error_chain, AccessFlags, CompletionQueue, IoMemory, Mtu, OwnedMemoryRegion, ProtectionDomain,
    QpConfig, QueuePair, FIRST_PORT,
};

use crate::setup::OdpSupport;

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
    /// Path MTU of the test QP; `None` when the test did not run (no ODP caps, or a verbs call
    /// failed before any transfer).
    pub path_mtu: Option<Mtu>,
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
                "{} at path MTU {}: {:?} ({})",
                self.device,
                mtu.bytes(),
                self.support,
                self.findings
            ),
            None => write!(f, "{}: {:?} ({})", self.device, self.support, self.findings),
        }
    }
}

/// Runs the self-test on `pd`'s device at path MTU `path_mtu` (lowered to the port's active
/// MTU when that is smaller) and logs the outcome. Takes milliseconds on hardware, about
/// a second under emulation. Never fails: anything that stops the test makes the result
/// [`OdpSupport::None`], with the reason in [`OdpSelfTest::findings`].
#[must_use]
pub fn odp_self_test(pd: &Arc<ProtectionDomain>, path_mtu: Mtu) -> OdpSelfTest {
    let device = pd.context().name().to_owned();
    let result = match run(pd, path_mtu) {
        Ok((mtu, checks)) => OdpSelfTest {
            device,
            path_mtu: Some(mtu),
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
        path_mtu = result.path_mtu.map(Mtu::bytes),
        support = ?result.support,
        findings = result.findings,
        "regcache: ODP self-test"
    );
    result
}

/// [`odp_self_test`], run once per device and path MTU in this process.
pub(crate) fn odp_self_test_once(pd: &Arc<ProtectionDomain>, path_mtu: Mtu) -> OdpSelfTest {
    static DONE: OnceLock<Mutex<HashMap<(String, Mtu), OdpSelfTest>>> = OnceLock::new();
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

fn run(pd: &Arc<ProtectionDomain>, requested: Mtu) -> Result<(Mtu, Vec<OdpCheck>), String> {
    let context = pd.context();
    let odp = context.query_device().map_err(describe)?.odp;
    if !odp.covers_rc_send_recv_read_write() {
        return Err(format!(
            "not run: the device's ODP caps do not cover RC send/recv/read/write ({odp:?})"
        ));
    }
    let port = context.query_port(FIRST_PORT).map_err(describe)?;
    let mtu = port
        .active_mtu
        .map_or(requested, |active| active.min(requested));
    // Any address will do for a QP connected to itself.
    let gid_index = context
        .roce_v2_gid(FIRST_PORT, None)
        .map_err(describe)?
        .ok_or("not run: port 1 has no GID")?
        .index;
    let probe = Probe { pd, gid_index, mtu };
    // The control: pinned to pinned, unaligned. If even that fails, the failures below say
    // nothing about ODP.
    if let Err(problem) = probe.check(Transfer::Write, None, SKEWS[1]) {
        return Err(format!(
            "not trusted: an RDMA WRITE between pinned buffers failed too: {problem}"
        ));
    }
    let roles = [
        (
            Transfer::Write,
            OdpSide::Source,
            "ODP source of an RDMA WRITE",
        ),
        (
            Transfer::Read,
            OdpSide::Source,
            "ODP responder of an RDMA READ",
        ),
        (
            Transfer::Write,
            OdpSide::Destination,
            "ODP target of an RDMA WRITE",
        ),
        (
            Transfer::Read,
            OdpSide::Destination,
            "ODP sink of an RDMA READ",
        ),
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

fn describe(err: verbs::Error) -> String {
    error_chain(&err)
}

/// The RDMA operation that moves the pattern.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transfer {
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
    fn check(&self, op: Transfer, odp: Option<OdpSide>, skew: usize) -> Result<(), String> {
        let on_demand = |side| {
            if odp == Some(side) {
                AccessFlags::ON_DEMAND
            } else {
                AccessFlags::LOCAL_READ
            }
        };
        // Each buffer gets the rights its role needs and no more, as the cache registers them.
        let (source_rights, destination_rights) = match op {
            Transfer::Write => (
                AccessFlags::LOCAL_READ,
                AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE,
            ),
            Transfer::Read => (AccessFlags::REMOTE_READ, AccessFlags::LOCAL_WRITE),
        };
        let expected = pattern();
        let source = probe_buffer(
            self.pd,
            source_rights | on_demand(OdpSide::Source),
            |memory| memory.write_at(0, &expected),
        )?;
        let destination = probe_buffer(
            self.pd,
            destination_rights | on_demand(OdpSide::Destination),
            // Even pages touched, odd pages never: both ways a page can meet the device.
            |memory| {
                (0..PAGES)
                    .step_by(2)
                    .try_for_each(|page| memory.write_at(page * PAGE, &[POISON; PAGE]))
            },
        )?;
        let cq = CompletionQueue::new(self.pd.context(), 4).map_err(describe)?;
        let config = QpConfig {
            max_send_wr: 1,
            max_recv_wr: 1,
            ..QpConfig::new(FIRST_PORT, self.gid_index)
        };
        let qp = QueuePair::create_rc(self.pd, &cq, &cq, config).map_err(describe)?;
        qp.connect(&qp.endpoint(), self.mtu).map_err(describe)?;
        let (local, remote) = match op {
            Transfer::Write => (&source, &destination),
            Transfer::Read => (&destination, &source),
        };
        let sge = local.sge(skew, LEN - skew).map_err(describe)?;
        let remote_addr = remote.mr().addr() + skew as u64;
        let posted = match op {
            Transfer::Write => qp.post_write(1, &[sge], remote_addr, remote.mr().rkey()),
            Transfer::Read => qp.post_read(1, &[sge], remote_addr, remote.mr().rkey()),
        };
        posted.map_err(describe)?;
        cq.wait_completion(COMPLETION_TIMEOUT).map_err(describe)?;
        // The QP goes first, so no request of it can reach the buffers any more.
        drop(qp);
        compare(&expected[skew..], &destination.to_vec()[skew..], skew)
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

/// A test buffer of untouched anonymous pages, filled by `fill` and then registered: filled
/// first, as the pages of a pinned source must hold their bytes when they are pinned.
fn probe_buffer(
    pd: &Arc<ProtectionDomain>,
    access: AccessFlags,
    fill: impl FnOnce(&mut IoMemory) -> verbs::Result<()>,
) -> Result<OwnedMemoryRegion, String> {
    let mut memory = IoMemory::anonymous(LEN).map_err(describe)?;
    fill(&mut memory).map_err(describe)?;
    OwnedMemoryRegion::over(pd, memory, access).map_err(describe)
}

#[cfg(test)]
mod tests {
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
}
