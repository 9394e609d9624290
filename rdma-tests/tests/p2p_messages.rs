//! The p2p layer across processes on Soft-RoCE: messages of every size and protocol between
//! ranks, their order and matching, wildcards, a ring, a flood, truncation, and what a rank
//! owes its peer when it drops its communicator.
//!
//! Each test runs a [`Job`] of rank processes (`rdma_tests::ranks`), which re-executes this
//! test program with only `rank_entry` selected.

use std::time::{Duration, Instant};

use p2p::{Communicator, Error, Status, ANY_SOURCE, ANY_TAG};
use rdma_tests::ranks::{
    expect_any_message, expect_message, ok, rank_scenario, run_on_rxe0, run_rank, seed, Job,
    RankPlacement, MIB,
};
use rdma_tests::{assert_same_bytes, expect_rxe1, pattern, require_devices, RXE0, RXE1};

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
            "sizes" => sizes(comm, false),
            "sizes_and_64_mib" => sizes(comm, true),
            "order" => order(comm),
            "flood" => flood(comm),
            "wildcards_and_ring" => wildcards_and_ring(comm),
            "truncation" => truncation(comm),
            "waiting_alone" => waiting_alone(comm),
            "owed_at_drop" => owed_at_drop(comm),
            other => panic!("unknown scenario {other}"),
        },
    );
}

/// Messages each rank sends in `flood`: several times the bounce buffers of a connection.
const FLOOD_MESSAGES: u32 = 150;

/// Both ranks start sending at once more messages than a connection has send and receive
/// bounce buffers, copied, zero-copy and rendezvous in turn, and only then post their
/// receives: every send bounce buffer, every posted receive and the READs in flight are
/// outstanding together, and their completions all go to the communicator's one CQ, which
/// must hold them (one too small loses completions, and a wait then fails). Every message
/// arrives whole, matched by its tag.
fn flood(comm: &mut Communicator) {
    let peer = 1 - comm.rank();
    let lens = [
        8,
        comm.eager_threshold() + 100,
        comm.rendezvous_threshold() + 100,
    ];
    let len_of = |tag: u32| lens[tag as usize % lens.len()];
    let sends: Vec<_> = (0..FLOOD_MESSAGES)
        .map(|tag| {
            let payload = pattern(len_of(tag), seed(tag, len_of(tag)));
            ok(comm.isend(payload, peer, tag), "isend")
        })
        .collect();
    let receives: Vec<_> = (0..FLOOD_MESSAGES)
        .map(|tag| ok(comm.irecv(vec![0; len_of(tag)], peer, tag), "irecv"))
        .collect();
    for (tag, request) in (0..FLOOD_MESSAGES).zip(receives) {
        let (status, buf) = ok(comm.wait(request), "wait for a receive");
        let len = len_of(tag);
        assert_eq!(
            status,
            Status {
                source: peer,
                tag,
                len
            }
        );
        assert_same_bytes(&pattern(len, seed(tag, len)), &buf, "flooded message");
    }
    for request in sends {
        ok(comm.wait(request), "wait for a send");
    }
}

/// Messages rank 1 sends in `owed_at_drop`: twice a connection's send bounce buffers, so
/// that half of them are still queued when it returns.
const OWED_MESSAGES: u32 = 64;

/// Rank 1 returns, and so drops its communicator, while it still owes rank 0 messages: it
/// receives rank 0's rendezvous message (its FIN goes out), then sends more messages than it
/// has send bounce buffers, never waiting for them, while rank 0 sleeps. Rank 0 then receives
/// every message, and its rendezvous send completes. The drop must deliver the messages still
/// queued, which a queue pair destroyed at once would never send.
fn owed_at_drop(comm: &mut Communicator) {
    let peer = 1 - comm.rank();
    let rendezvous_len = comm.rendezvous_threshold() + 100;
    let payload = pattern(rendezvous_len, seed(0, rendezvous_len));
    if comm.rank() == 0 {
        let send = ok(comm.isend(payload, peer, 0), "isend");
        std::thread::sleep(Duration::from_secs(3));
        for tag in 1..=OWED_MESSAGES {
            expect_message(comm, peer, tag, 8, 8);
        }
        ok(comm.wait(send), "wait for the rendezvous send");
    } else {
        let receive = ok(comm.irecv(vec![0; rendezvous_len], peer, 0), "irecv");
        let (status, buf) = ok(comm.wait(receive), "wait for the rendezvous message");
        assert_eq!(status.len, rendezvous_len);
        assert_same_bytes(&payload, &buf, "rendezvous message");
        let _never_waited_for: Vec<_> = (1..=OWED_MESSAGES)
            .map(|tag| ok(comm.isend(pattern(8, seed(tag, 8)), peer, tag), "isend"))
            .collect();
    }
}

/// Rank 0 sends every size to rank 1, which checks it and sends it back: both sides of the
/// eager and of the rendezvous threshold, and a zero-copy size with the highest tag; then,
/// optionally, 64 MiB one way.
fn sizes(comm: &mut Communicator, with_64_mib: bool) {
    let (eager, rendezvous) = (comm.eager_threshold(), comm.rendezvous_threshold());
    let lens = [
        0,
        1,
        // Soft-RoCE's inline limit, which p2p asks for first: inline, then a bounce buffer.
        // The end of a receive bounce buffer's 128-byte head, where a message goes on into
        // the buffer's tail.
        127,
        128,
        129,
        512,
        513,
        eager - 1,
        eager,
        eager + 1,
        rendezvous - 1,
        rendezvous,
        rendezvous + 1,
        MIB,
    ];
    // A tag with the top bit set does not fit an eager SEND's immediate data: that message,
    // copied or zero-copy, carries a header instead.
    // With its 40-byte header, such a message reaches the tail of the receive bounce buffer
    // from 89 bytes.
    let high_tags = [
        (u32::MAX - 4, 88),
        (u32::MAX - 3, 89),
        (u32::MAX - 2, 513),
        (u32::MAX - 1, 1),
        (u32::MAX, eager + 1),
    ];
    for (tag, len) in (0u32..).zip(lens).chain(high_tags) {
        let data = pattern(len, seed(tag, len));
        if comm.rank() == 0 {
            ok(comm.send(&data, 1, tag), "send");
            expect_message(comm, 1, tag, len, len);
        } else {
            // A larger buffer than needed: the status tells the length.
            expect_message(comm, 0, tag, len, len + 64);
            ok(comm.send(&data, 0, tag), "echo");
        }
    }
    if with_64_mib {
        let (len, tag) = (64 * MIB, 64);
        // `pattern` and `assert_same_bytes` take minutes for 64 MiB in a debug build under TCG.
        let data = word_pattern(len);
        if comm.rank() == 0 {
            ok(comm.send(&data, 1, tag), "send 64 MiB");
        } else {
            let mut buf = vec![0; len];
            let status = ok(comm.recv(&mut buf, 0, tag), "recv 64 MiB");
            assert_eq!(
                status,
                Status {
                    source: 0,
                    tag,
                    len
                }
            );
            if buf != data {
                assert_same_bytes(&data, &buf, "64 MiB");
            }
        }
    }
}

/// `len` bytes whose 8-byte words hold their own index plus a constant: every page differs,
/// and it is cheap to generate in a debug build.
/// The status of a message of `len` bytes from rank 0 with `tag`.
fn from_rank_0(tag: u32, len: usize) -> Status {
    Status {
        source: 0,
        tag,
        len,
    }
}

fn word_pattern(len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    for (index, word) in bytes.chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&(index as u64 ^ 0x5a5a_0000_0000_0000).to_le_bytes());
    }
    bytes
}

/// Per pair, messages match in the order they were sent, whatever their protocol (copied,
/// zero-copy eager, rendezvous); tags select.
fn order(comm: &mut Communicator) {
    let mid = comm.eager_threshold() + 100;
    let big = comm.rendezvous_threshold() + 100;
    // (tag, len) in sending order.
    let sent = [(1, 10), (2, big), (1, mid), (3, 20), (1, big), (1, 30)];
    if comm.rank() == 0 {
        let requests: Vec<_> = sent
            .iter()
            .map(|&(tag, len)| ok(comm.isend(pattern(len, seed(tag, len)), 1, tag), "isend"))
            .collect();
        for request in requests {
            ok(comm.wait(request), "wait for isend");
        }
        // Phase 2: rank 1 posted its receives before we send.
        let mut go = [0u8; 1];
        ok(comm.recv(&mut go, 1, 99), "go");
        for (tag, len) in [(6, 5), (5, 1), (5, big), (5, mid), (5, 3)] {
            ok(comm.send(&pattern(len, seed(tag, len)), 1, tag), "send");
        }
    } else {
        // Tag 3 overtakes the other tags; within a tag (and for ANY_TAG) the order holds.
        expect_message(comm, 0, 3, 20, 64);
        expect_any_message(comm, from_rank_0(1, 10), big);
        expect_any_message(comm, from_rank_0(2, big), big);
        expect_message(comm, 0, 1, mid, mid);
        expect_message(comm, 0, 1, big, big);
        expect_message(comm, 0, 1, 30, 30);
        // Phase 2: receives posted before the messages arrive, completed out of posting order.
        let fives: Vec<_> = (0..4)
            .map(|_| ok(comm.irecv(vec![0; big], 0, 5), "irecv"))
            .collect();
        let six = ok(comm.irecv(vec![0; 16], ANY_SOURCE, 6), "irecv");
        ok(comm.send(&[1], 0, 99), "go");
        let started = Instant::now();
        while !ok(comm.test(&six), "test") {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "tag 6 never arrived"
            );
        }
        let (status, buf) = ok(comm.wait(six), "wait tag 6");
        assert_eq!(
            status,
            Status {
                source: 0,
                tag: 6,
                len: 5
            }
        );
        assert_same_bytes(&pattern(5, seed(6, 5)), &buf[..5], "tag 6");
        for (request, len) in fives.into_iter().zip([1, big, mid, 3]) {
            let (status, buf) = ok(comm.wait(request), "wait tag 5");
            assert_eq!(
                status,
                Status {
                    source: 0,
                    tag: 5,
                    len
                }
            );
            assert_same_bytes(&pattern(len, seed(5, len)), &buf[..len], "tag 5 in order");
        }
    }
}

const RING_START_TAG: u32 = 77;

/// Every other rank sends rank 0 a small, a middle and a large message (one per protocol),
/// received with both wildcards; then all ranks pass messages around a ring with nonblocking
/// calls.
fn wildcards_and_ring(comm: &mut Communicator) {
    let (rank, size) = (comm.rank(), comm.size());
    let mid = comm.eager_threshold() * 4;
    let big = comm.rendezvous_threshold() * 2;
    if rank == 0 {
        let mut seen: Vec<Vec<usize>> = vec![Vec::new(); size];
        for _ in 0..3 * (size - 1) {
            let mut buf = vec![0; big];
            let status = ok(comm.recv(&mut buf, ANY_SOURCE, ANY_TAG), "recv any");
            assert_eq!(status.tag as usize, status.source, "{status:?}");
            let seed = seed(status.tag, status.len);
            assert_same_bytes(&pattern(status.len, seed), &buf[..status.len], "wildcard");
            seen[status.source].push(status.len);
        }
        for (source, lens) in seen.iter().enumerate().skip(1) {
            assert_eq!(
                lens,
                &[source, mid, big],
                "rank {source}: small, middle, then large, in order"
            );
        }
        // Released only now, so no ring message meets the wildcard receives above.
        for peer in 1..size {
            ok(comm.send(&[], peer, RING_START_TAG), "release the ring");
        }
    } else {
        let tag = rank as u32;
        for len in [rank, mid, big] {
            ok(
                comm.send(&pattern(len, seed(tag, len)), 0, tag),
                "send to 0",
            );
        }
        ok(comm.recv(&mut [], 0, RING_START_TAG), "wait for the ring");
    }
    let (next, prev) = ((rank + 1) % size, (rank + size - 1) % size);
    for len in [7, mid, big] {
        let tag = 1000 + len as u32;
        let recv = ok(comm.irecv(vec![0; len], prev, tag), "irecv ring");
        let send = ok(
            comm.isend(pattern(len, seed(tag, rank)), next, tag),
            "isend ring",
        );
        let (status, buf) = ok(comm.wait(recv), "wait ring receive");
        assert_eq!(
            status,
            Status {
                source: prev,
                tag,
                len
            }
        );
        assert_same_bytes(&pattern(len, seed(tag, prev)), &buf, "ring");
        ok(comm.wait(send), "wait ring send");
    }
}

/// A message longer than the receive buffer is an error on the receiver only, for every
/// protocol, and the pair keeps working.
fn truncation(comm: &mut Communicator) {
    let mid = comm.eager_threshold() * 2;
    let big = comm.rendezvous_threshold() * 2;
    if comm.rank() == 0 {
        for (tag, len) in [(1, 100), (2, mid), (4, big), (3, 10)] {
            ok(comm.send(&pattern(len, seed(tag, len)), 1, tag), "send");
        }
    } else {
        for (tag, len, capacity) in [(1, 100, 10), (2, mid, 1024), (4, big, 1024)] {
            let mut buf = vec![0; capacity];
            match comm.recv(&mut buf, 0, tag) {
                Err(Error::Truncated {
                    source_rank: 0,
                    tag: got_tag,
                    len: got_len,
                    capacity: got_capacity,
                }) => assert_eq!((got_tag, got_len, got_capacity), (tag, len, capacity)),
                other => panic!("expected truncation of tag {tag}, got {other:?}"),
            }
        }
        expect_message(comm, 0, 3, 10, 10);
    }
}

/// Tags of `waiting_alone`'s go-ahead messages, from rank 1 to rank 0.
const GO_TAG: u32 = 90;

/// Rank 1 tells rank 0 to go on, then receives: the receive is posted before rank 0 sends, so
/// it waits alone (no other receive posted, no unexpected message it matches) and takes the
/// messages of the fast path (`p2p`'s `comm::lone`) as they are polled.
fn go(comm: &mut Communicator) {
    if comm.rank() == 0 {
        ok(comm.recv(&mut [], 1, GO_TAG), "wait for go");
    } else {
        ok(comm.send(&[], 0, GO_TAG), "go");
    }
}

/// Blocking receives that wait alone keep MPI's matching exactly: unexpected messages that
/// arrived before them are taken first, in order; messages that arrive while one waits and
/// do not match it are kept, in order, for later receives; a matching request to send is
/// read like any other; wildcards take messages in arrival order; a truncated message on the
/// fast path is an error that leaves its bounce buffer posted again (more rounds than a
/// connection has receive bounce buffers); a receive posted behind another that matches does
/// not wait alone. Blocking sends that go out at once, and wait for their own completion,
/// leave the completion of a nonblocking send before them to the generic path.
fn waiting_alone(comm: &mut Communicator) {
    let mid = comm.eager_threshold() + 100;
    let big = comm.rendezvous_threshold() + 100;
    let send = |comm: &mut Communicator, tag: u32, len: usize| {
        ok(comm.send(&pattern(len, seed(tag, len)), 1, tag), "send");
    };
    // Unexpected messages first: the receive of tag 9 waits alone, the rest do not.
    let unexpected = [(5, 1), (6, 2), (5, 3)];
    // Arriving while a receive of tag 12 waits alone: tag 11 goes by, a request to send
    // matches.
    let arriving = [(11, 10), (12, big), (11, mid), (12, 20)];
    let wildcard = [(21, 5), (22, big), (23, mid), (24, 7)];
    let truncated_rounds = 72;
    if comm.rank() == 0 {
        for (tag, len) in unexpected {
            send(comm, tag, len);
        }
        send(comm, 9, 4);
        go(comm);
        let (tag, len) = arriving[0];
        let first = ok(comm.isend(pattern(len, seed(tag, len)), 1, tag), "isend");
        for (tag, len) in &arriving[1..] {
            send(comm, *tag, *len);
        }
        ok(comm.wait(first), "wait for isend");
        go(comm);
        for (tag, len) in wildcard {
            send(comm, tag, len);
        }
        for _ in 0..truncated_rounds {
            go(comm);
            send(comm, 31, 16);
        }
        send(comm, 32, 8);
        go(comm);
        send(comm, 33, 1);
        send(comm, 33, 2);
    } else {
        expect_message(comm, 0, 9, 4, 4);
        // The oldest unexpected message.
        expect_any_message(comm, from_rank_0(5, 1), 8);
        expect_message(comm, 0, 5, 3, 3);
        expect_message(comm, 0, 6, 2, 2);

        go(comm);
        expect_message(comm, 0, 12, big, big);
        expect_message(comm, 0, 12, 20, 20);
        expect_message(comm, 0, 11, 10, 10);
        expect_message(comm, 0, 11, mid, mid);

        go(comm);
        // In arrival order.
        for (tag, len) in wildcard {
            expect_any_message(comm, from_rank_0(tag, len), big);
        }

        for round in 0..truncated_rounds {
            go(comm);
            match comm.recv(&mut [0; 4], 0, 31) {
                Err(Error::Truncated {
                    source_rank: 0,
                    tag: 31,
                    len: 16,
                    capacity: 4,
                }) => {}
                other => panic!("round {round}: expected a truncation, got {other:?}"),
            }
        }
        expect_message(comm, 0, 32, 8, 8);
        // Behind a posted nonblocking receive that matches too, a blocking one does not wait
        // alone: the first message is the older receive's.
        let older = ok(comm.irecv(vec![0; 8], 0, ANY_TAG), "irecv");
        go(comm);
        expect_message(comm, 0, 33, 2, 8);
        let (status, buf) = ok(comm.wait(older), "wait for the older receive");
        assert_eq!(status, from_rank_0(33, 1));
        assert_same_bytes(&pattern(1, seed(33, 1)), &buf[..1], "older receive");
    }
}

#[test]
fn two_ranks_exchange_every_size_from_0_bytes_to_64_mib() {
    if require_devices().is_none() {
        return;
    }
    // Rank 0's send of 64 MiB waits while rank 1 registers and reads it under TCG.
    Job::on_rxe0("sizes_and_64_mib", 2)
        .env("P2P_TIMEOUT_MS", "240000")
        .run();
}

#[test]
fn messages_match_in_order_by_source_and_tag() {
    run_on_rxe0("order", 2);
}

#[test]
fn a_flood_both_ways_fills_every_bounce_buffer_and_loses_no_completion() {
    run_on_rxe0("flood", 2);
}

#[test]
fn four_ranks_receive_with_wildcards_and_pass_a_ring() {
    run_on_rxe0("wildcards_and_ring", 4);
}

#[test]
fn a_too_small_receive_buffer_is_a_truncation_error() {
    run_on_rxe0("truncation", 2);
}

#[test]
fn blocking_receives_that_wait_alone_keep_the_matching_order() {
    run_on_rxe0("waiting_alone", 2);
}

#[test]
fn a_dropped_communicator_delivers_what_it_owes_its_peer() {
    run_on_rxe0("owed_at_drop", 2);
}

#[test]
fn ranks_on_rxe0_and_on_rxe1_in_another_netns_exchange_every_size() {
    if require_devices().is_none() {
        return;
    }
    if !expect_rxe1() {
        println!("no rxe1 on this kernel: skipping");
        return;
    }
    let mut job = Job::on_rxe0("sizes", 2);
    job.root_host = RXE0.addr.to_string();
    job.ranks[1] = RankPlacement {
        device: RXE1.device,
        netns: Some("ns1"),
        exit_code: 0,
    };
    job.run();
}
