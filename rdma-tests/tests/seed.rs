//! The stale-buffer scenarios of issue 4 through `RdmaCache`, in every mode the kernel offers.
//!
//! Each scenario sends a buffer filled with 'A' through `cached_reg` + RDMA WRITE, replaces the
//! pages behind the same addresses (munmap + mmap, madvise(DONTNEED), mremap away + mmap, free +
//! malloc), fills the new pages with 'B' and sends again: the peer must receive 'B'. The target
//! is cleared before every write, so received 'A' bytes were read by the device from the old
//! pages. The negative control runs the same scenarios through a cache that never invalidates
//! and asserts that it delivers 'A': the scenarios can catch the bug.

use std::sync::Arc;

use rdma_tests::rig::{AnonMap, HeapBlock, Tally, WriteRig};
use rdma_tests::{
    error_chain, expect_odp, expect_odp_correct, expect_rxe1, require_devices, Node, RXE0, RXE1,
};
use regcache::{Access, Config, Limits, Mode, Policy, RdmaCache, SetupError};
use verbs::{Context, Mtu, ProtectionDomain};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const PAGE: usize = 4096;
const OLD: u8 = b'A';
const NEW: u8 = b'B';
/// The bytes of a mapping around the range a scenario sends: a device reading outside the
/// range delivers them.
const GUARD: u8 = b'G';
/// Blocks of at least this size are mmapped by malloc (glibc's default threshold, fixed).
const MMAP_THRESHOLD: usize = 128 * KIB;

/// How a scenario gives the buffer's addresses new pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// munmap, then mmap at the same address (asserted).
    Munmap,
    /// madvise(MADV_DONTNEED): same mapping, fresh pages on the next touch.
    DiscardPages,
    /// mremap the pages elsewhere, then mmap new memory at the old address (asserted).
    MoveAway,
    /// free + malloc of a block above the mmap threshold (same address asserted).
    FreeLargeBlock,
    /// free + malloc of a small block from the brk heap. If glibc hands back the same address
    /// without touching the mappings (it does: tcache), the pages did NOT change and the old
    /// registration is still right; only the received bytes are asserted, not an invalidation.
    FreeSmallBlock,
}

/// What a scenario's sends delivered.
#[derive(Debug)]
struct Observed {
    /// The 'A' buffer's send, counted against 'A' (expected) and 'B'.
    first: Tally,
    /// The 'B' buffer's send, counted against 'B' (expected) and 'A' (stale).
    second: Tally,
    /// Whether `cached_reg` for the 'B' buffer was a hit.
    second_hit: bool,
    /// Whether the 'B' buffer has the 'A' buffer's address.
    same_address: bool,
    /// `MoveAway` only: the moved 'A' pages, sent from their new address.
    moved: Option<Tally>,
}

impl Change {
    fn uses_heap(self) -> bool {
        matches!(self, Self::FreeLargeBlock | Self::FreeSmallBlock)
    }

    /// Whether the new buffer's pages differ from the ones first registered.
    fn replaces_pages(self) -> bool {
        self != Self::FreeSmallBlock
    }
}

/// A scenario: how the pages change, where the sent range starts in its mapping's first page
/// and its length.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    change: Change,
    offset: usize,
    len: usize,
}

const fn scenario(change: Change, offset: usize, len: usize) -> Scenario {
    Scenario {
        change,
        offset,
        len,
    }
}

/// The scenarios every mode runs: the seed at 4 KiB and 1 MiB, every other change at 1 MiB (a
/// heap block below the mmap threshold for the brk case), and ranges that start inside a page
/// and end inside another (an offset 16 like a malloc'ed block's, 512, and 16 bytes before a
/// page's end). 64 MiB seeds run once per kernel (pinned on rxe0) to bound the time under
/// emulation.
const SCENARIOS: [Scenario; 9] = [
    scenario(Change::Munmap, 0, 4 * KIB),
    scenario(Change::Munmap, 0, MIB),
    scenario(Change::DiscardPages, 0, MIB),
    scenario(Change::MoveAway, 0, MIB),
    scenario(Change::FreeLargeBlock, 0, MIB),
    scenario(Change::FreeSmallBlock, 0, 3000),
    scenario(Change::Munmap, 16, 3 * PAGE + 100),
    scenario(Change::DiscardPages, 512, MIB),
    scenario(Change::MoveAway, PAGE - 16, 2 * PAGE),
];
const BIG_SEED: Scenario = scenario(Change::Munmap, 0, 64 * MIB);

impl Scenario {
    /// Whether the sent range starts on a page (a malloc'ed block need not).
    fn page_aligned(self) -> bool {
        self.offset == 0 && !self.change.uses_heap()
    }

    /// The mapping's length: whole pages holding the range.
    fn map_len(self) -> usize {
        (self.offset + self.len).next_multiple_of(PAGE)
    }
}

struct Rig {
    cache: RdmaCache,
    link: WriteRig,
}

impl Rig {
    /// Registers `[ptr, ptr + len)` for a device read through the cache, writes it to the peer
    /// and tallies what arrived; also says whether the registration was a hit.
    fn send(&mut self, ptr: *const u8, len: usize, expected: u8, stale: u8) -> (Tally, bool) {
        let hits = self.cache.stats().hits;
        // SAFETY: the buffers of these tests are reached only through raw pointers, and the
        // device only reads them (no write rights are asked for).
        let registration = unsafe { self.cache.cached_reg(ptr, len, Access::LOCAL_READ_ONLY) }
            .unwrap_or_else(|e| panic!("cached_reg of {len} bytes: {}", error_chain(&e)));
        let hit = self.cache.stats().hits > hits;
        self.link
            .write(ptr as usize, len, registration.lkey())
            .unwrap_or_else(|e| panic!("RDMA WRITE of {len} bytes: {}", error_chain(&e)));
        drop(registration);
        (Tally::of(self.link.landed(len), expected, stale), hit)
    }

    fn run(&mut self, scenario: Scenario) -> Observed {
        let Scenario {
            change,
            offset,
            len,
        } = scenario;
        if change.uses_heap() {
            assert_eq!(offset, 0, "{scenario:?}: malloc picks where a block starts");
            return self.run_on_heap(change, len);
        }
        let map_len = scenario.map_len();
        // The range holds `byte`, the rest of the mapping the guard.
        let fill = |map: &AnonMap, byte| {
            map.fill(GUARD);
            map.fill_range(offset, len, byte);
        };
        let old = AnonMap::new(map_len);
        fill(&old, OLD);
        let (first, _) = self.send(old.ptr().wrapping_add(offset), len, OLD, NEW);
        let addr = old.addr();
        let (new, moved) = match change {
            Change::Munmap => {
                drop(old);
                (AnonMap::at(addr, map_len), None)
            }
            Change::DiscardPages => {
                old.discard_pages();
                (old, None)
            }
            _ => {
                let moved = old.move_onto(AnonMap::new(map_len));
                (AnonMap::at(addr, map_len), Some(moved))
            }
        };
        fill(&new, NEW);
        let (second, second_hit) = self.send(new.ptr().wrapping_add(offset), len, NEW, OLD);
        let moved = moved.map(|moved| self.send(moved.ptr().wrapping_add(offset), len, OLD, NEW).0);
        Observed {
            first,
            second,
            second_hit,
            same_address: new.addr() == addr,
            moved,
        }
    }

    fn run_on_heap(&mut self, change: Change, len: usize) -> Observed {
        HeapBlock::fix_mmap_threshold(MMAP_THRESHOLD as i32);
        assert_eq!(
            len >= MMAP_THRESHOLD,
            change == Change::FreeLargeBlock,
            "{change:?} needs a block on the other side of the mmap threshold"
        );
        let old = HeapBlock::new(len);
        old.fill(OLD);
        let (first, _) = self.send(old.ptr(), len, OLD, NEW);
        let addr = old.addr();
        drop(old);
        let new = HeapBlock::new(len);
        new.fill(NEW);
        let (second, second_hit) = self.send(new.ptr(), len, NEW, OLD);
        Observed {
            first,
            second,
            second_hit,
            same_address: new.addr() == addr,
            moved: None,
        }
    }
}

/// The cache under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Under {
    Pinned,
    Odp,
    Off,
    /// The negative control: pinned, cached, never invalidated.
    Trust,
}

impl Under {
    /// The cache, and whether only page-aligned buffers may go through it.
    fn cache(self, pd: &Arc<ProtectionDomain>) -> (RdmaCache, bool) {
        // The tests' QPs run at path MTU 4096, so the ODP self-test does too.
        let new = |mode| {
            let config = Config {
                mode,
                ..Config::default()
            };
            RdmaCache::new(Arc::clone(pd), config, Mtu::Mtu4096)
        };
        let fail = |e: SetupError| -> ! { panic!("{self:?} cache: {}", error_chain(&e)) };
        let (cache, aligned_only) = match self {
            Self::Pinned => (new(Mode::Pinned), false),
            Self::Off => (new(Mode::Off), false),
            Self::Trust => (
                Ok(RdmaCache::trust_without_invalidation(
                    Arc::clone(pd),
                    Limits::default(),
                )),
                false,
            ),
            Self::Odp => match new(Mode::Odp) {
                Err(SetupError::ModeUnavailable { reason, .. }) if !expect_odp_correct() => {
                    // tests/odp_self_test.rs pins down why: on 7.x rxe, ODP transfers that
                    // start inside a page lose data at every MTU. Page-aligned ones are right
                    // at 4096, so those scenarios still run through the ODP policy.
                    println!("odp mode refused ({reason}); running page-aligned scenarios only");
                    (
                        Ok(RdmaCache::odp_without_self_test(
                            Arc::clone(pd),
                            Limits::default(),
                        )),
                        true,
                    )
                }
                cache => (cache, false),
            },
        };
        let cache = cache.unwrap_or_else(|e| fail(e));
        let policy = match self {
            Self::Pinned => Policy::Pinned,
            Self::Odp => Policy::Odp,
            Self::Off => Policy::Off,
            Self::Trust => Policy::TrustWithoutInvalidation,
        };
        assert_eq!(
            cache.policy(),
            policy,
            "{self:?}: {:?}",
            cache.odp_self_test()
        );
        (cache, aligned_only)
    }

    /// Asserts what this cache must deliver in a scenario.
    fn judge(self, change: Change, len: usize, seen: &Observed) {
        let what = format!("{self:?} {change:?} {len} bytes: {seen:?}");
        assert!(seen.first.all_expected(), "first send: {what}");
        if change == Change::FreeLargeBlock {
            assert!(
                seen.same_address,
                "malloc did not reuse the freed block's address: {what}"
            );
        }
        if let Some(moved) = seen.moved {
            if self != Self::Trust {
                assert!(moved.all_expected(), "moved pages: {what}");
            }
        }
        let replaced = change.replaces_pages();
        match self {
            Self::Trust if replaced => assert_eq!(
                seen.second.stale, len,
                "the negative control must send the old pages: {what}"
            ),
            _ => assert!(seen.second.all_expected(), "second send: {what}"),
        }
        match self {
            // Pinned: the old registration must be dropped once its pages changed.
            Self::Pinned if replaced => assert!(!seen.second_hit, "stale hit: {what}"),
            // ODP: the device follows the page tables, so the same registration serves the new
            // pages without any invalidation.
            Self::Odp => assert!(seen.second_hit, "ODP registration not reused: {what}"),
            Self::Off => assert!(!seen.second_hit, "off mode must not cache: {what}"),
            _ => {}
        }
    }
}

/// Runs every scenario (plus the 64 MiB seed when `big`) with a cache in `pd` on rxe0 that
/// sends to a QP on `peer`.
fn scenarios_through(under: Under, peer: Node, big: bool) {
    let ctx = Context::open(RXE0.device).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let pd = ProtectionDomain::new(&ctx).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let (cache, aligned_only) = under.cache(&pd);
    let target_len = if big { BIG_SEED.len } else { MIB };
    let mut rig = Rig {
        cache,
        link: WriteRig::new(&pd, RXE0, peer, target_len),
    };
    let big_seed = big.then_some(BIG_SEED);
    for scenario in SCENARIOS.into_iter().chain(big_seed) {
        let Scenario { change, len, .. } = scenario;
        if aligned_only && !scenario.page_aligned() {
            println!("{under:?}: skipping {scenario:?}: the range does not start on a page");
            continue;
        }
        if under == Under::Trust {
            // Each scenario of the negative control starts from an empty cache, so its first
            // send cannot hit a stale registration left by an earlier one.
            rig.cache.evict_idle();
        }
        let seen = rig.run(scenario);
        println!(
            "{under:?} rxe0 -> {}: {scenario:?}: {seen:?}",
            rig.link.peer_device()
        );
        under.judge(change, len, &seen);
    }
    let stats = rig.cache.stats();
    println!("{under:?} stats: {stats:?}");
    if under == Under::Pinned {
        assert!(stats.invalidated > 0, "{stats:?}");
    }
    assert_eq!(
        verbs::drop_failures(),
        0,
        "a verbs object failed to be destroyed"
    );
}

#[test]
fn pinned_cache_sends_the_new_pages_on_rxe0() {
    if require_devices().is_none() {
        return;
    }
    scenarios_through(Under::Pinned, RXE0, true);
}

#[test]
fn pinned_cache_sends_the_new_pages_to_rxe1() {
    if require_devices().is_none() || !expect_rxe1() {
        return;
    }
    scenarios_through(Under::Pinned, RXE1, false);
}

#[test]
fn odp_cache_sends_the_new_pages_on_rxe0() {
    if require_devices().is_none() || !expect_odp() {
        return;
    }
    scenarios_through(Under::Odp, RXE0, false);
}

#[test]
fn odp_cache_sends_the_new_pages_to_rxe1() {
    if require_devices().is_none() || !expect_odp() || !expect_rxe1() {
        return;
    }
    scenarios_through(Under::Odp, RXE1, false);
}

#[test]
fn off_mode_sends_the_new_pages_on_rxe0() {
    if require_devices().is_none() {
        return;
    }
    scenarios_through(Under::Off, RXE0, false);
}

#[test]
fn negative_control_without_invalidation_sends_the_old_pages() {
    if require_devices().is_none() {
        return;
    }
    scenarios_through(Under::Trust, RXE0, false);
}
