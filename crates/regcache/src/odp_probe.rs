//! The ODP self-test: ODP is trusted only after the device moved real data through it.
//!
//! Issue 4 and 9: rdma_rxe of Linux 6.15 and later (Debian's 7.3.4 included) completes RDMA
//! WRITEs and READs that touch ODP memory with `IBV_WC_SUCCESS` while bytes land in the wrong
//! place, bytes outside the target are overwritten and READ replies carry bytes that were never
//! in the source (`kernel-patches/rxe`). So the test runs at the path MTU of the cache's user,
//! over a QP connected to itself, in all four roles ODP memory can have (WRITE source, READ
//! responder, WRITE target, READ sink), each transfer spanning four pages and starting page
//! aligned, 16 bytes into a page (where a malloc'ed block starts) and 512 bytes in. Every
//! 8-byte word carries a tag and its position, so nothing repeats and a word in the wrong place
//! is told from a right one; each buffer's registration covers exactly the transfer, between
//! guard bytes with a non-zero fill that must stay untouched. Destinations have touched and
//! never-touched pages, and nothing is prefetched: a registration meets the fault path again
//! after its pages change. A pinned-to-pinned control transfer runs first, so a failure is
//! ODP's, not the test's.
//!
//! Measured on stock 7.3.4 rxe: at path MTU 1024 no page-aligned ODP transfer is right, at 4096
//! every transfer starting inside a page is wrong and one writing ODP memory overwrites the 16
//! guard bytes before its target, so the device gets [`OdpSupport::None`] at both MTUs. With
//! the fix of `kernel-patches/rxe` every check passes.

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
/// Each buffer's mapping: a guard page, the pages a transfer can span (one more than `PAGES`
/// when it starts inside a page), a guard page.
const MAPPING_PAGES: usize = PAGES + 3;
const MAPPING_LEN: usize = MAPPING_PAGES * PAGE;
/// Generous for an emulated machine; the test waits this long at most once per transfer.
const COMPLETION_TIMEOUT: Duration = Duration::from_secs(10);
/// Where transfers start in their first page: aligned, where a malloc'ed block starts, and
/// far enough in that a packet of 1024 bytes crosses every page boundary.
const SKEWS: [usize; 3] = [0, 16, 512];
/// The skew of the pinned-to-pinned control transfer.
const CONTROL_SKEW: usize = 16;
const WORD: usize = 8;
/// Tags in the top 16 bits of every word: the source's pattern, and what the destination held
/// before the transfer (its guards and touched pages).
const SOURCE_TAG: u64 = 0x5352;
const DESTINATION_TAG: u64 = 0x4453;
/// Destination mapping pages left untouched before the transfer: inside the target at every
/// skew, so the device meets both pages that exist and pages it must fault in.
const UNTOUCHED_PAGES: [usize; 2] = [2, 4];

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
            findings: findings(&checks),
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

/// Every failed check, or that all passed.
fn findings(checks: &[OdpCheck]) -> String {
    let failed: Vec<String> = checks
        .iter()
        .filter(|check| check.problem.is_some())
        .map(ToString::to_string)
        .collect();
    if failed.is_empty() {
        format!(
            "all {} transfers right, guards intact: four roles, starting {:?} bytes into a page",
            checks.len(),
            SKEWS
        )
    } else {
        format!(
            "{} of {} transfers wrong: {}",
            failed.len(),
            checks.len(),
            failed.join("; ")
        )
    }
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
    if let Err(problem) = probe.check(Transfer::Write, None, CONTROL_SKEW) {
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
    /// Moves the source's words to the destination with `op` on a fresh QP connected to itself
    /// (a failed transfer leaves a QP in the error state) and compares every word of the
    /// destination's mapping: the target must hold the source's words, the guards around it
    /// their fill. The transfer covers `LEN` bytes starting `skew` bytes into the second page
    /// of both mappings, and each registration covers exactly that. `odp: None` is the control:
    /// both buffers pinned.
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
        let target = PAGE + skew;
        let source = probe_buffer(
            self.pd,
            target,
            source_rights | on_demand(OdpSide::Source),
            &source_words(),
            &[],
        )?;
        let before = destination_words();
        let destination = probe_buffer(
            self.pd,
            target,
            destination_rights | on_demand(OdpSide::Destination),
            &before,
            &UNTOUCHED_PAGES,
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
        let sge = local.sge(0, LEN).map_err(describe)?;
        let posted = match op {
            Transfer::Write => qp.post_write(1, &[sge], remote.mr().addr(), remote.mr().rkey()),
            Transfer::Read => qp.post_read(1, &[sge], remote.mr().addr(), remote.mr().rkey()),
        };
        posted.map_err(describe)?;
        cq.wait_completion(COMPLETION_TIMEOUT).map_err(describe)?;
        // The QP goes first, so no request of it can reach the buffers any more.
        drop(qp);
        let after = words(&destination.to_vec());
        compare(&Expected::new(skew), &after)
    }
}

/// Word `index` of a mapping with `tag`: unique in the test, never zero.
fn tagged(tag: u64, index: usize) -> u64 {
    tag << 48 | index as u64
}

/// The source mapping: every word tagged as the source's, with its position.
fn source_words() -> Vec<u64> {
    (0..MAPPING_LEN / WORD)
        .map(|index| tagged(SOURCE_TAG, index))
        .collect()
}

/// The destination mapping before the transfer: every word tagged as the destination's
/// (written to touched pages only; untouched ones read as zero).
fn destination_words() -> Vec<u64> {
    (0..MAPPING_LEN / WORD)
        .map(|index| tagged(DESTINATION_TAG, index))
        .collect()
}

fn words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(WORD)
        .map(|chunk| u64::from_ne_bytes(chunk.try_into().expect("8-byte chunk")))
        .collect()
}

/// What the destination mapping must hold after a transfer starting `skew` bytes into its
/// second page.
struct Expected {
    /// Word range of the target (and of the transferred source words).
    target: std::ops::Range<usize>,
    /// The destination's contents before the transfer.
    before: Vec<u64>,
}

impl Expected {
    fn new(skew: usize) -> Self {
        let start = (PAGE + skew) / WORD;
        let mut before = destination_words();
        for page in UNTOUCHED_PAGES {
            before[page * PAGE / WORD..(page + 1) * PAGE / WORD].fill(0);
        }
        Self {
            target: start..start + LEN / WORD,
            before,
        }
    }

    fn word(&self, index: usize) -> u64 {
        if self.target.contains(&index) {
            tagged(SOURCE_TAG, index)
        } else {
            self.before[index]
        }
    }
}

/// `Err` saying what the wrong words of the target are (source words misplaced, source words
/// from outside the transfer, never written, or foreign: never in any buffer of the test) and
/// how many guard words before and after the target changed.
fn compare(expected: &Expected, actual: &[u64]) -> Result<(), String> {
    let mut misplaced = 0;
    let mut first_shift = None;
    let mut outside_source = 0;
    let mut unwritten = 0;
    let mut foreign = 0;
    let mut guards_before = 0;
    let mut guards_after = 0;
    for (index, &word) in actual.iter().enumerate() {
        if word == expected.word(index) {
            continue;
        }
        if index < expected.target.start {
            guards_before += 1;
        } else if index >= expected.target.end {
            guards_after += 1;
        } else if word >> 48 == SOURCE_TAG {
            let from = (word & 0xffff_ffff_ffff) as usize;
            if expected.target.contains(&from) {
                misplaced += 1;
                first_shift.get_or_insert(WORD as i64 * (index as i64 - from as i64));
            } else {
                outside_source += 1;
            }
        } else if word == expected.before[index] {
            unwritten += 1;
        } else {
            foreign += 1;
        }
    }
    let wrong = misplaced + outside_source + unwritten + foreign;
    if wrong + guards_before + guards_after == 0 {
        return Ok(());
    }
    let mut parts = vec![format!(
        "completed but {wrong} of {} words are wrong",
        expected.target.len()
    )];
    if let Some(shift) = first_shift {
        parts.push(format!("{misplaced} misplaced (e.g. by {shift:+} bytes)"));
    }
    let counted = [
        (outside_source, "from the source outside the transfer"),
        (unwritten, "never written"),
        (foreign, "foreign (never in a buffer of the test)"),
        (guards_before, "guard words BEFORE the target overwritten"),
        (guards_after, "guard words after the target overwritten"),
    ];
    parts.extend(
        counted
            .into_iter()
            .filter(|(count, _)| *count > 0)
            .map(|(count, what)| format!("{count} {what}")),
    );
    Err(parts.join(", "))
}

/// A test buffer: a fresh anonymous mapping holding `fill` except in the `untouched` pages
/// (never written), registered from byte `target` for `LEN` bytes: filled first, as the pages
/// of a pinned source must hold their bytes when they are pinned.
fn probe_buffer(
    pd: &Arc<ProtectionDomain>,
    target: usize,
    access: AccessFlags,
    fill: &[u64],
    untouched: &[usize],
) -> Result<OwnedMemoryRegion, String> {
    let mut memory = IoMemory::anonymous(MAPPING_LEN).map_err(describe)?;
    for (page, page_words) in fill.chunks(PAGE / WORD).enumerate() {
        if untouched.contains(&page) {
            continue;
        }
        let bytes: Vec<u8> = page_words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        memory.write_at(page * PAGE, &bytes).map_err(describe)?;
    }
    OwnedMemoryRegion::over_range(pd, memory, target, LEN, access).map_err(describe)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The destination mapping as a right transfer at `skew` leaves it.
    fn delivered(skew: usize) -> (Expected, Vec<u64>) {
        let expected = Expected::new(skew);
        let actual = (0..MAPPING_LEN / WORD).map(|i| expected.word(i)).collect();
        (expected, actual)
    }

    #[test]
    fn words_never_repeat_and_guards_are_never_zero() {
        let mut all: Vec<u64> = source_words();
        all.extend(destination_words());
        assert!(all.iter().all(|&w| w != 0));
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 2 * MAPPING_LEN / WORD);
        for skew in SKEWS {
            let expected = Expected::new(skew);
            let guard_pages = (0..MAPPING_LEN / WORD)
                .filter(|i| !expected.target.contains(i))
                .map(|i| i * WORD / PAGE);
            assert!(guard_pages.clone().all(|p| !UNTOUCHED_PAGES.contains(&p)));
            assert!(UNTOUCHED_PAGES
                .iter()
                .all(|p| expected.target.contains(&(p * PAGE / WORD))));
        }
    }

    #[test]
    fn a_right_transfer_passes() {
        for skew in SKEWS {
            let (expected, actual) = delivered(skew);
            assert_eq!(compare(&expected, &actual), Ok(()));
        }
    }

    #[test]
    fn compare_tells_misplaced_unwritten_foreign_and_guard_words_apart() {
        // rxe's defect A at MTU 4096, skew 16: the packet lands at the page's start, 16 bytes
        // (2 words) early, over the guard before the target.
        let (expected, mut actual) = delivered(16);
        let start = expected.target.start;
        let first_page: Vec<u64> = actual[start..start + 2].to_vec();
        actual[start - 2..start].copy_from_slice(&first_page);
        actual[start] = 0;
        actual[start + 1] = expected.before[start + 1];
        actual[start + 2] = tagged(SOURCE_TAG, 1);
        let problem = compare(&expected, &actual).unwrap_err();
        assert_eq!(
            problem,
            "completed but 3 of 2048 words are wrong, 1 from the source outside the transfer, \
             1 never written, 1 foreign (never in a buffer of the test), \
             2 guard words BEFORE the target overwritten"
        );
        let (expected, mut actual) = delivered(0);
        let start = expected.target.start;
        actual[start] = tagged(SOURCE_TAG, start + 384);
        actual[expected.target.end] = 7;
        let problem = compare(&expected, &actual).unwrap_err();
        assert_eq!(
            problem,
            "completed but 1 of 2048 words are wrong, 1 misplaced (e.g. by -3072 bytes), \
             1 guard words after the target overwritten"
        );
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
        assert_eq!(
            findings(&all([true; 2], [true, false])),
            "1 of 4 transfers wrong: role, starting 16 bytes into a page: lost"
        );
        assert!(findings(&all([true; 2], [true; 2])).starts_with("all 4 transfers right"));
    }
}
