//! The soak's short form in the suite: a fixed seed, a few thousand operations per mode
//! (`cargo xtask soak` runs long ones). It fails on any wrong byte in the cache's modes and
//! when the negative control finds no stale byte.

use rdma_tests::require_devices;
use rdma_tests::soak::{self, CacheMode, Options};

const SEED: u64 = 0x5eed_0013;
const OPS: u64 = 1_000;

#[test]
fn every_mode_sends_and_receives_the_current_bytes_and_the_control_does_not() {
    if require_devices().is_none() {
        return;
    }
    let reports = soak::run(Options {
        ops: OPS,
        seed: SEED,
        only: None,
    });
    for report in reports {
        match (report.mode, report.outcome) {
            (CacheMode::Control, Ok(figures)) => assert!(figures.stale_bytes > 0),
            (_, Ok(figures)) => {
                assert_eq!(figures.stale_bytes, 0);
                assert!(
                    figures.ops >= OPS && figures.transfers > OPS / 4,
                    "{figures:?}"
                );
            }
            // Only ODP may be refused (by the cache's self-test); soak::run panics when the
            // pinned mode is refused in the VM.
            (CacheMode::Odp, Err(reason)) => println!("odp skipped: {reason}"),
            (mode, Err(reason)) => {
                assert!(!rdma_tests::in_vm(), "{mode:?} refused in the VM: {reason}")
            }
        }
    }
}
