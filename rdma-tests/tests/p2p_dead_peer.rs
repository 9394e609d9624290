//! The p2p layer across processes on Soft-RoCE: a rank that dies makes its peer's operations
//! fail in bounded time instead of hanging.
//!
//! The test runs a [`Job`] of rank processes (`rdma_tests::ranks`), which re-executes this
//! test program with only `rank_entry` selected.

use std::time::{Duration, Instant};

use p2p::{Communicator, Error};
use rdma_tests::ranks::{rank_scenario, run_rank, Job};
use rdma_tests::require_devices;

/// The entry point of a rank process; does nothing in a normal test run.
#[test]
fn rank_entry() {
    let Some(scenario) = rank_scenario() else {
        return;
    };
    run_rank(
        &scenario,
        Communicator::from_env(),
        true,
        |comm| match scenario.as_str() {
            "dead_peer" => dead_peer(comm),
            other => panic!("unknown scenario {other}"),
        },
    );
}

/// Rank 1 dies right after joining; rank 0's receive from it and send to it fail in bounded
/// time.
fn dead_peer(comm: &mut Communicator) {
    if comm.rank() == 1 {
        std::process::exit(DEAD_RANK_EXIT_CODE);
    }
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let mut buf = [0u8; 16];
    match comm.recv(&mut buf, 1, 0) {
        Err(Error::Timeout { .. }) => {}
        other => panic!("receive from a dead rank: expected a timeout, got {other:?}"),
    }
    for len in [8, 64 * 1024, 2 * comm.rendezvous_threshold()] {
        match comm.send(&vec![0; len], 1, 0) {
            Err(Error::PeerFailed { rank: 1, .. } | Error::Timeout { .. }) => {}
            other => panic!("send of {len} bytes to a dead rank: got {other:?}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
    match comm.send(&[0], 1, 0) {
        Err(Error::PeerFailed { rank: 1, .. }) => {}
        other => panic!("send after the link closed: got {other:?}"),
    }
}

const DEAD_RANK_EXIT_CODE: i32 = 17;

#[test]
fn a_dead_peer_is_an_error_not_a_hang() {
    if require_devices().is_none() {
        return;
    }
    let mut job = Job::on_rxe0("dead_peer", 2).env("P2P_TIMEOUT_MS", "15000");
    job.ranks[1].exit_code = DEAD_RANK_EXIT_CODE;
    job.run();
}
