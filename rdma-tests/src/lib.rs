//! Shared helpers for the RDMA integration tests in `tests/`.
//!
//! The tests need a real (Soft-RoCE) RDMA device. The rule from the project
//! notes: on a host without one they print why and pass; inside the test VM
//! (`REGCACHE_VM=1`) a missing device is a failure. The VM harness also states
//! what the kernel must provide through `REGCACHE_EXPECT_ODP`,
//! `REGCACHE_EXPECT_ODP_CORRECT` and `REGCACHE_EXPECT_RXE1` (`1` or `0`).

pub mod ranks;
pub mod rig;
pub mod soak;
pub mod watching;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

pub use verbs::error_chain;
use verbs::{
    CompletionQueue, Context, DeviceInfo, Mtu, ProtectionDomain, QpConfig, QueuePair, FIRST_PORT,
};

/// Upper bound for every completion wait: generous for an emulated (TCG)
/// machine, short enough that a lost completion fails the test instead of hanging it.
pub const COMPLETION_TIMEOUT: Duration = Duration::from_secs(20);

/// A Soft-RoCE device of the VM set-up and the IPv4 address of its netdev.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    /// RDMA device name.
    pub device: &'static str,
    /// Address of the device's netdev, whose RoCE v2 GID the QPs use.
    pub addr: Ipv4Addr,
}

/// `rxe0` on `veth0` (10.77.0.1), present on every test kernel.
pub const RXE0: Node = Node {
    device: "rxe0",
    addr: Ipv4Addr::new(10, 77, 0, 1),
};

/// `rxe1` on `veth1` in netns `ns1` (10.77.0.2), present when `REGCACHE_EXPECT_RXE1=1`.
pub const RXE1: Node = Node {
    device: "rxe1",
    addr: Ipv4Addr::new(10, 77, 0, 2),
};

/// Whether the test runs inside the project's VM (`REGCACHE_VM=1`).
#[must_use]
pub fn in_vm() -> bool {
    std::env::var("REGCACHE_VM").is_ok_and(|v| v == "1")
}

/// The visible RDMA devices, or `None` after printing
/// "no RDMA device: skipping" on a host without any.
///
/// # Panics
///
/// Inside the VM (`REGCACHE_VM=1`), when no device is visible: there a
/// missing device is a broken set-up, never a reason to skip.
#[must_use]
pub fn require_devices() -> Option<Vec<DeviceInfo>> {
    let reason = match verbs::devices() {
        Ok(devices) if !devices.is_empty() => return Some(devices),
        Ok(_) => "the device list is empty".to_owned(),
        Err(err) => error_chain(&err),
    };
    assert!(
        !in_vm(),
        "REGCACHE_VM=1 but no RDMA device is usable ({reason}); was Soft-RoCE set up?"
    );
    println!("no RDMA device: skipping ({reason})");
    None
}

/// A `1`/`0` expectation set by the VM harness.
///
/// # Panics
///
/// When the variable is unset or not `0`/`1`: inside the VM the harness must
/// state every expectation explicitly.
#[must_use]
pub fn expect_flag(name: &str) -> bool {
    match std::env::var(name).as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        other => panic!("{name} must be set to 1 or 0 for RDMA tests, found {other:?}"),
    }
}

/// `REGCACHE_EXPECT_ODP`: whether the kernel's rxe supports ODP for RC.
#[must_use]
pub fn expect_odp() -> bool {
    expect_flag("REGCACHE_EXPECT_ODP")
}

/// `REGCACHE_EXPECT_ODP_CORRECT`: whether the kernel's rxe moves ODP data correctly (the
/// guest runs rdma_rxe with the fix of `kernel-patches/rxe`), so the ODP self-test must pass
/// and every ODP test must run in full.
#[must_use]
pub fn expect_odp_correct() -> bool {
    expect_flag("REGCACHE_EXPECT_ODP_CORRECT")
}

/// `REGCACHE_EXPECT_RXE1`: whether `rxe1` exists (in netns `ns1`).
#[must_use]
pub fn expect_rxe1() -> bool {
    expect_flag("REGCACHE_EXPECT_RXE1")
}

/// Inline bytes a [`Side`]'s queue pair asks for (Soft-RoCE grants up to 512).
pub const SIDE_INLINE_BYTES: u32 = 64;

/// One end of an RC connection: its device, PD, a CQ for both directions and the QP.
#[derive(Debug)]
pub struct Side {
    /// The device context.
    pub ctx: Arc<Context>,
    /// Protection domain for the side's memory regions.
    pub pd: Arc<ProtectionDomain>,
    /// Send and receive completions of `qp`.
    pub cq: Arc<CompletionQueue>,
    /// The queue pair.
    pub qp: QueuePair,
}

impl Side {
    /// Opens `node`'s device and creates an RC QP sending from the RoCE v2 GID of its address,
    /// with [`SIDE_INLINE_BYTES`] of inline data.
    ///
    /// # Panics
    ///
    /// When any verbs call fails or the device has no RoCE v2 GID for the address.
    #[must_use]
    pub fn open(node: Node) -> Self {
        let ctx = Context::open(node.device)
            .unwrap_or_else(|e| panic!("open {}: {}", node.device, error_chain(&e)));
        let gid = ctx
            .roce_v2_gid(FIRST_PORT, Some(node.addr))
            .unwrap_or_else(|e| panic!("GID table of {}: {}", node.device, error_chain(&e)))
            .unwrap_or_else(|| {
                panic!(
                    "{} has no RoCE v2 GID for {}; table: {:?}",
                    node.device,
                    node.addr,
                    ctx.gid_table(FIRST_PORT)
                )
            });
        let pd = ProtectionDomain::new(&ctx).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        let cq = CompletionQueue::new(&ctx, 128).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        let config = QpConfig {
            max_inline_data: SIDE_INLINE_BYTES,
            ..QpConfig::new(FIRST_PORT, gid.index)
        };
        let qp = QueuePair::create_rc(&pd, &cq, &cq, config)
            .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        Self { ctx, pd, cq, qp }
    }

    /// Waits for the next completion on the side's CQ, failing the test with
    /// the reason (timeout or the named work-completion status).
    ///
    /// # Panics
    ///
    /// When no successful completion arrives within [`COMPLETION_TIMEOUT`].
    #[must_use]
    pub fn expect_completion(&self, what: &str) -> verbs::Completion {
        self.cq
            .wait_completion(COMPLETION_TIMEOUT)
            .unwrap_or_else(|e| panic!("{what} on {}: {}", self.ctx.name(), error_chain(&e)))
    }
}

/// Opens both nodes and connects their QPs to each other at path MTU `mtu`.
///
/// # Panics
///
/// When any verbs call fails.
#[must_use]
pub fn connected_pair(a: Node, b: Node, mtu: Mtu) -> (Side, Side) {
    let side_a = Side::open(a);
    let side_b = Side::open(b);
    let (ep_a, ep_b) = (side_a.qp.endpoint(), side_b.qp.endpoint());
    side_a
        .qp
        .connect(&ep_b, mtu)
        .unwrap_or_else(|e| panic!("connect {a:?} -> {ep_b:?}: {}", error_chain(&e)));
    side_b
        .qp
        .connect(&ep_a, mtu)
        .unwrap_or_else(|e| panic!("connect {b:?} -> {ep_a:?}: {}", error_chain(&e)));
    (side_a, side_b)
}

/// `len` bytes in which every 8-byte word differs from its neighbours and
/// every page differs from every other, so a misplaced, duplicated or
/// missing page or fragment shows up as a mismatch.
#[must_use]
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0; len];
    // A word at a time rather than a byte at a time: the soak makes megabytes of it under
    // TCG, where every instruction counts.
    for (word, chunk) in bytes.chunks_mut(8).enumerate() {
        let value = splitmix64(seed ^ word as u64).to_le_bytes();
        chunk.copy_from_slice(&value[..chunk.len()]);
    }
    bytes
}

/// splitmix64's output function: a well-mixed 64-bit value for every `x` (the soak's random
/// stream, the patterns, the benchmark's round orders).
#[must_use]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Asserts `actual == expected`, reporting the first differing offset, its
/// 4 KiB page and how many bytes differ instead of dumping megabytes.
///
/// # Panics
///
/// When the contents differ.
pub fn assert_same_bytes(expected: &[u8], actual: &[u8], what: &str) {
    assert_eq!(expected.len(), actual.len(), "{what}: length differs");
    let mut diffs = expected
        .iter()
        .zip(actual)
        .enumerate()
        .filter(|(_, (e, a))| e != a);
    if let Some((first, _)) = diffs.next() {
        let count = 1 + diffs.count();
        panic!(
            "{what}: {count} of {} bytes differ, first at offset {first:#x} (page {}): \
             expected {:02x?}, found {:02x?}",
            expected.len(),
            first / 4096,
            &expected[first..expected.len().min(first + 16)],
            &actual[first..actual.len().min(first + 16)],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_pages_are_all_distinct() {
        let bytes = pattern(64 * 4096, 1);
        let mut pages: Vec<&[u8]> = bytes.chunks(4096).collect();
        pages.sort_unstable();
        pages.dedup();
        assert_eq!(pages.len(), 64);
    }

    #[test]
    fn a_shorter_pattern_is_the_start_of_a_longer_one() {
        let long = pattern(3 * 4096 + 8, 7);
        for len in [0, 1, 7, 8, 13, 4096, 3 * 4096 + 5] {
            assert_eq!(pattern(len, 7), long[..len], "{len} bytes");
        }
        assert_eq!(long[..8], splitmix64(7).to_le_bytes());
        assert_eq!(long[8..16], splitmix64(7 ^ 1).to_le_bytes());
    }

    #[test]
    #[should_panic(expected = "first at offset 0x1000 (page 1)")]
    fn a_misplaced_page_is_reported_with_its_offset() {
        let expected = pattern(4 * 4096, 2);
        let mut actual = expected.clone();
        actual[4096..8192].copy_from_slice(&expected[..4096]);
        assert_same_bytes(&expected, &actual, "page 0 landed on page 1");
    }
}
