//! The p2p layer across processes on Soft-RoCE.
//!
//! Each test starts one process per rank by re-executing this test binary with only the
//! `rank_entry` test selected and `P2P_TEST_SCENARIO` naming what the ranks run; every rank
//! joins through the same environment variables a launcher would set (`P2P_RANK`, `P2P_SIZE`,
//! `P2P_ROOT_ADDR`, `P2P_DEVICE`). A rank that fails panics, which makes its process exit
//! non-zero; the launching test then fails with every rank's output.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use p2p::{Communicator, Error, LaunchConfig, Status, ANY_SOURCE, ANY_TAG};
use rdma_tests::{
    assert_same_bytes, expect_odp, expect_odp_correct, expect_rxe1, pattern, require_devices, RXE0,
    RXE1,
};

const SCENARIO_VAR: &str = "P2P_TEST_SCENARIO";
const MODE_VAR: &str = "REGCACHE_MODE";
const MIB: usize = 1 << 20;
/// Bound on a whole multi-rank run, start-up included (TCG is slow).
const RUN_TIMEOUT: Duration = Duration::from_secs(480);
/// Bound on each p2p wait inside the ranks.
const RANK_TIMEOUT_MS: &str = "60000";

/// The entry point of a rank process; does nothing in a normal test run.
#[test]
fn rank_entry() {
    let Ok(scenario) = std::env::var(SCENARIO_VAR) else {
        return;
    };
    let joined = match scenario.as_str() {
        "remapped_send_buffer_without_invalidation" => {
            LaunchConfig::from_env().and_then(Communicator::without_invalidation)
        }
        _ => Communicator::from_env(),
    };
    let mut comm = joined.unwrap_or_else(|e| panic!("joining: {}", chain(&e)));
    println!(
        "rank {} of {}: scenario {scenario}, MTU {:?}, cache policy {:?}",
        comm.rank(),
        comm.size(),
        comm.mtu(),
        comm.cache_policy()
    );
    // The negative control's cache ignores the mode.
    let chose_mode = scenario != "remapped_send_buffer_without_invalidation";
    if chose_mode && std::env::var(MODE_VAR).as_deref() == Ok("odp") {
        assert_eq!(comm.cache_policy(), regcache::Policy::Odp, "mode odp");
    }
    match scenario.as_str() {
        "sizes" => sizes(&mut comm, false),
        "sizes_and_64_mib" => sizes(&mut comm, true),
        "order" => order(&mut comm),
        "flood" => flood(&mut comm),
        "wildcards_and_ring" => wildcards_and_ring(&mut comm),
        "truncation" => truncation(&mut comm),
        "dead_peer" => dead_peer(&mut comm),
        "remapped_send_buffer" => remapped_send_buffer(&mut comm, Expect::NewBytes),
        "remapped_send_buffer_without_invalidation" => {
            remapped_send_buffer(&mut comm, Expect::OldBytes);
        }
        "join_only" => {}
        other => panic!("unknown scenario {other}"),
    }
    println!("rank {}: scenario {scenario} passed", comm.rank());
}

fn chain(err: &dyn std::error::Error) -> String {
    rdma_tests::error_chain(err)
}

fn ok<T>(result: p2p::Result<T>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {}", chain(&e)))
}

fn seed(tag: u32, len: usize) -> u64 {
    u64::from(tag) << 40 ^ len as u64
}

fn expect_message(comm: &mut Communicator, source: usize, tag: u32, len: usize, capacity: usize) {
    let mut buf = vec![0; capacity];
    let status = ok(comm.recv(&mut buf, source, tag), "recv");
    assert_eq!(status, Status { source, tag, len });
    assert_same_bytes(&pattern(len, seed(tag, len)), &buf[..len], "received bytes");
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

/// Rank 0 sends every size to rank 1, which checks it and sends it back: both sides of the
/// eager and of the rendezvous threshold, and a zero-copy size with the highest tag; then,
/// optionally, 64 MiB one way.
fn sizes(comm: &mut Communicator, with_64_mib: bool) {
    let (eager, rendezvous) = (comm.eager_threshold(), comm.rendezvous_threshold());
    let lens = [
        0,
        1,
        // Soft-RoCE's inline limit, which p2p asks for first: inline, then a bounce buffer.
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
    let high_tags = [(u32::MAX - 1, 1), (u32::MAX, eager + 1)];
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
        let mut expect_any = |tag: u32, len: usize| {
            let mut buf = vec![0; big];
            let status = ok(comm.recv(&mut buf, ANY_SOURCE, ANY_TAG), "recv any");
            assert_eq!(
                status,
                Status {
                    source: 0,
                    tag,
                    len
                }
            );
            assert_same_bytes(
                &pattern(len, seed(tag, len)),
                &buf[..len],
                "wildcard receive",
            );
        };
        expect_any(1, 10);
        expect_any(2, big);
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

// ---------------------------------------------------------------------------------------
// The launcher.

/// Where and how one rank runs.
#[derive(Debug, Clone)]
struct RankPlacement {
    device: &'static str,
    /// Network namespace to run in (`ip netns exec`), if not the test's own.
    netns: Option<&'static str>,
    /// The exit code the rank must end with.
    exit_code: i32,
}

impl RankPlacement {
    fn rxe0() -> Self {
        Self {
            device: RXE0.device,
            netns: None,
            exit_code: 0,
        }
    }
}

#[derive(Debug)]
struct Job {
    scenario: &'static str,
    ranks: Vec<RankPlacement>,
    /// Host rank 0 listens on.
    root_host: String,
    env: Vec<(&'static str, String)>,
}

impl Job {
    /// `size` ranks on rxe0 running `scenario`; where rxe's ODP is correct, their caches run
    /// in mode odp (a test may choose another mode with [`Job::env`]).
    fn on_rxe0(scenario: &'static str, size: usize) -> Self {
        let mut env = vec![("P2P_TIMEOUT_MS", RANK_TIMEOUT_MS.into())];
        if expect_odp_correct() {
            env.push((MODE_VAR, "odp".into()));
        }
        Self {
            scenario,
            ranks: vec![RankPlacement::rxe0(); size],
            root_host: "127.0.0.1".into(),
            env,
        }
    }

    fn env(mut self, var: &'static str, value: &str) -> Self {
        self.env.push((var, value.to_owned()));
        self
    }

    fn free_port(&self) -> u16 {
        let listener = std::net::TcpListener::bind((self.root_host.as_str(), 0))
            .unwrap_or_else(|e| panic!("binding {}:0: {e}", self.root_host));
        listener.local_addr().expect("local address").port()
    }

    /// Runs every rank to completion and checks each exit code.
    ///
    /// # Panics
    /// When a rank ends with another exit code than its placement expects, or hangs.
    fn run(&self) {
        if let Err(failure) = self.try_run() {
            panic!("{failure}");
        }
    }

    /// Runs every rank to completion; on a wrong exit code prints every rank's output and
    /// says which ranks failed.
    fn try_run(&self) -> Result<(), String> {
        let exe = std::env::current_exe().expect("test executable");
        let root = format!("{}:{}", self.root_host, self.free_port());
        let logs: Vec<PathBuf> = (0..self.ranks.len())
            .map(|rank| {
                std::env::temp_dir().join(format!(
                    "p2p-{}-{}-rank{rank}.log",
                    self.scenario,
                    std::process::id()
                ))
            })
            .collect();
        let mut children: Vec<Child> = self
            .ranks
            .iter()
            .enumerate()
            .map(|(rank, placement)| {
                let mut command = match placement.netns {
                    Some(netns) => {
                        let mut command = Command::new("ip");
                        command.args(["netns", "exec", netns]).arg(&exe);
                        command
                    }
                    None => Command::new(&exe),
                };
                let log = File::create(&logs[rank]).expect("rank log");
                command
                    .args(["--exact", "rank_entry", "--nocapture", "--test-threads=1"])
                    .env(SCENARIO_VAR, self.scenario)
                    .env("P2P_RANK", rank.to_string())
                    .env("P2P_SIZE", self.ranks.len().to_string())
                    .env("P2P_ROOT_ADDR", &root)
                    .env("P2P_DEVICE", placement.device)
                    .envs(self.env.iter().map(|(var, value)| (var, value)))
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().expect("log handle"))
                    .stderr(log);
                command.spawn().expect("spawning a rank")
            })
            .collect();
        let statuses = wait_all(&mut children, RUN_TIMEOUT);
        let mut failures = Vec::new();
        for (rank, (status, placement)) in statuses.iter().zip(&self.ranks).enumerate() {
            if status.and_then(|status| status.code()) != Some(placement.exit_code) {
                failures.push(format!(
                    "rank {rank} ended with {status:?}, expected exit code {}",
                    placement.exit_code
                ));
            }
        }
        for (rank, log) in logs.iter().enumerate() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if !failures.is_empty() {
                println!("----- rank {rank} ({}) -----\n{text}", log.display());
            }
            // Best effort: a leftover log in the temporary directory harms nothing.
            let _ = std::fs::remove_file(log);
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "scenario {}: {}",
                self.scenario,
                failures.join("; ")
            ))
        }
    }
}

/// Waits for every child up to `timeout`, then kills the ones still running (`None`).
fn wait_all(children: &mut [Child], timeout: Duration) -> Vec<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let mut statuses = vec![None; children.len()];
    while Instant::now() < deadline && statuses.iter().any(Option::is_none) {
        for (child, status) in children.iter_mut().zip(&mut statuses) {
            if status.is_none() {
                *status = child.try_wait().expect("waiting for a rank");
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for (child, status) in children.iter_mut().zip(&statuses) {
        if status.is_none() {
            // The rank hung: kill it so the test ends; the missing status fails the test.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    statuses
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

/// Runs `scenario` with `ranks` ranks on `rxe0`, unless there is no RDMA device to test on.
fn run_on_rxe0(scenario: &'static str, ranks: usize) {
    if require_devices().is_some() {
        Job::on_rxe0(scenario, ranks).run();
    }
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
fn a_dead_peer_is_an_error_not_a_hang() {
    if require_devices().is_none() {
        return;
    }
    let mut job = Job::on_rxe0("dead_peer", 2).env("P2P_TIMEOUT_MS", "15000");
    job.ranks[1].exit_code = DEAD_RANK_EXIT_CODE;
    job.run();
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
