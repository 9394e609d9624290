//! The p2p layer across processes on Soft-RoCE: the seed scenario (a send buffer unmapped and
//! mapped again at the same address with new bytes) in every cache mode the kernel allows,
//! and its negative control, a cache without invalidation, which sends the old bytes.
//!
//! Each test runs a [`Job`] of rank processes (`rdma_tests::ranks`), which re-executes this
//! test program with only `rank_entry` selected.

use p2p::{Communicator, LaunchConfig};
use rdma_tests::ranks::{ok, rank_scenario, run_on_rxe0, run_rank, seed, Job, MIB, MODE_VAR};
use rdma_tests::{assert_same_bytes, expect_odp, expect_odp_correct, pattern, require_devices};

/// The scenario of the negative control, whose ranks join with a cache without invalidation.
const WITHOUT_INVALIDATION: &str = "remapped_send_buffer_without_invalidation";

/// The entry point of a rank process; does nothing in a normal test run.
#[test]
fn rank_entry() {
    let Some(scenario) = rank_scenario() else {
        return;
    };
    // The negative control's cache ignores the mode.
    let (joined, mode_is_chosen) = if scenario == WITHOUT_INVALIDATION {
        (
            LaunchConfig::from_env().and_then(Communicator::without_invalidation),
            false,
        )
    } else {
        (Communicator::from_env(), true)
    };
    run_rank(&scenario, joined, mode_is_chosen, |comm| {
        match scenario.as_str() {
            "remapped_send_buffer" => remapped_send_buffer(comm, Expect::NewBytes),
            WITHOUT_INVALIDATION => remapped_send_buffer(comm, Expect::OldBytes),
            "join_only" => {}
            other => panic!("unknown scenario {other}"),
        }
    });
}

/// An anonymous private mapping of `len` bytes at `hint` (exactly there when given).
fn map(len: usize, hint: Option<usize>) -> *mut u8 {
    let flags =
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | hint.map_or(0, |_| libc::MAP_FIXED_NOREPLACE);
    // SAFETY: a fresh anonymous mapping; with MAP_FIXED_NOREPLACE the kernel refuses to
    // replace anything already mapped at `hint`.
    let addr = unsafe {
        libc::mmap(
            hint.unwrap_or(0) as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    assert_ne!(
        addr,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    addr.cast()
}

/// The seed scenario: the sender's buffer is unmapped and mapped again at the same address
/// with new contents between two sends; the receiver must get the new bytes. Once at a
/// zero-copy eager size (the SEND reads the cached registration) and once at a rendezvous
/// size (the receiver READs through it).
fn remapped_send_buffer(comm: &mut Communicator, expect: Expect) {
    let page = 4096;
    let zero_copy = (comm.eager_threshold() + comm.rendezvous_threshold()) / 2 / page * page;
    assert!(zero_copy >= comm.eager_threshold() && zero_copy < comm.rendezvous_threshold());
    for (first_tag, len) in [(0, zero_copy), (10, MIB.max(comm.rendezvous_threshold()))] {
        remapped_send_buffer_of(comm, first_tag, len, expect);
    }
}

/// What the receiver of a remapped send buffer must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// What the buffer held when it was sent: the cache noticed the remapping.
    NewBytes,
    /// Every round, the first mapping's bytes: a cache that never learns of munmap keeps
    /// sending from the first mapping's pages, which its registration still pins.
    OldBytes,
}

fn remapped_send_buffer_of(comm: &mut Communicator, first_tag: u32, len: usize, expect: Expect) {
    let rounds = 3u32;
    if comm.rank() == 0 {
        let first = map(len, None);
        let addr = first as usize;
        for round in 0..rounds {
            let ptr = if round == 0 {
                first
            } else {
                map(len, Some(addr))
            };
            assert_eq!(ptr as usize, addr, "remapped at the same address");
            let data = pattern(len, seed(first_tag + round, len));
            // SAFETY: the mapping is `len` bytes, private to this function and unmapped below
            // only after the last use of the slice.
            let buf = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
            buf.copy_from_slice(&data);
            ok(
                comm.send(buf, 1, first_tag + round),
                "send from the (re)mapped buffer",
            );
            // SAFETY: `buf` is not used any more; the range is the mapping created above.
            assert_eq!(unsafe { libc::munmap(ptr.cast(), len) }, 0);
        }
    } else {
        let mut buf = vec![0; len];
        for round in 0..rounds {
            let status = ok(comm.recv(&mut buf, 0, first_tag + round), "recv");
            assert_eq!(status.len, len);
            let sent_in_round = match expect {
                Expect::NewBytes => round,
                Expect::OldBytes => 0,
            };
            assert_same_bytes(
                &pattern(len, seed(first_tag + sent_in_round, len)),
                &buf,
                "bytes after remapping",
            );
        }
    }
}

/// The negative control of the test below: the same scenario through a cache without
/// invalidation delivers the first mapping's bytes every round, at the zero-copy and at the
/// rendezvous size, so the check there would catch a stale registration.
#[test]
fn negative_control_without_invalidation_delivers_the_old_bytes() {
    run_on_rxe0("remapped_send_buffer_without_invalidation", 2);
}

#[test]
fn a_remapped_send_buffer_delivers_its_new_bytes_in_every_available_mode() {
    if require_devices().is_none() {
        return;
    }
    for mode in ["off", "odp", "pinned"] {
        if mode == "odp" && !expect_odp() {
            println!("mode odp: the kernel has no ODP, not tested");
            continue;
        }
        // Whether the cache can run in a mode is regcache's to test (and its tests fail when
        // it cannot); here a mode is exercised where a rank can join in it.
        if mode != "off" {
            let join = Job::on_rxe0("join_only", 1).env(MODE_VAR, mode);
            if let Err(why) = join.try_run() {
                assert!(
                    !(mode == "odp" && expect_odp_correct()),
                    "mode odp must run where rxe's ODP is correct: {why}"
                );
                println!("mode {mode}: the cache cannot run in it here, not tested: {why}");
                continue;
            }
        }
        println!("mode {mode}");
        Job::on_rxe0("remapped_send_buffer", 2)
            .env(MODE_VAR, mode)
            .run();
    }
}
