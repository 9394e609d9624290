//! Multi-rank p2p jobs for the integration tests: a launcher that starts one process per rank
//! and the rank side's entry, plus the checks the p2p test programs share.
//!
//! A test program that uses [`Job`] defines a test named `rank_entry` that calls
//! [`rank_scenario`] and, when it names a scenario, [`run_rank`]: [`Job::run`] starts every
//! rank by re-executing the test program with only `rank_entry` selected and
//! `P2P_TEST_SCENARIO` naming what the ranks run; every rank joins through the same
//! environment variables a launcher would set (`P2P_RANK`, `P2P_SIZE`, `P2P_ROOT_ADDR`,
//! `P2P_DEVICE`). A rank that fails panics, which makes its process exit non-zero; the
//! launching test then fails with every rank's output.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use p2p::{Communicator, Source, Status, TagMatch, ANY_SOURCE, ANY_TAG};

use crate::{assert_same_bytes, error_chain, expect_odp_correct, pattern, require_devices, RXE0};

const SCENARIO_VAR: &str = "P2P_TEST_SCENARIO";
/// The cache mode a rank's communicator runs in (`regcache::Policy`'s environment variable).
pub const MODE_VAR: &str = "REGCACHE_MODE";
/// One mebibyte.
pub const MIB: usize = 1 << 20;
/// Bound on a whole multi-rank run, start-up included (TCG is slow).
const RUN_TIMEOUT: Duration = Duration::from_secs(480);
/// Bound on each p2p wait inside the ranks.
const RANK_TIMEOUT_MS: &str = "60000";

/// The scenario this process runs as a rank, or `None` in a normal test run.
#[must_use]
pub fn rank_scenario() -> Option<String> {
    std::env::var(SCENARIO_VAR).ok()
}

/// Joins the job (`joined` is the communicator or why joining failed), runs `scenario`
/// through `run`, drops the communicator and says it passed.
///
/// # Panics
///
/// When joining failed, when `mode_is_chosen` and `REGCACHE_MODE=odp` but the cache does not
/// run in mode odp, whenever `run` panics, and when the drop could not deliver what the rank
/// owed its peers ([`p2p::undelivered_at_drop`]).
pub fn run_rank(
    scenario: &str,
    joined: p2p::Result<Communicator>,
    mode_is_chosen: bool,
    run: impl FnOnce(&mut Communicator),
) {
    let mut comm = joined.unwrap_or_else(|e| panic!("joining: {}", error_chain(&e)));
    println!(
        "rank {} of {}: scenario {scenario}, MTU {:?}, cache policy {:?}",
        comm.rank(),
        comm.size(),
        comm.mtu(),
        comm.cache_policy()
    );
    if mode_is_chosen && std::env::var(MODE_VAR).as_deref() == Ok("odp") {
        assert_eq!(comm.cache_policy(), regcache::Policy::Odp, "mode odp");
    }
    run(&mut comm);
    let rank = comm.rank();
    drop(comm);
    assert_eq!(
        p2p::undelivered_at_drop(),
        0,
        "rank {rank}: dropping the communicator left messages to peers undelivered"
    );
    println!("rank {rank}: scenario {scenario} passed");
}

/// The value of a p2p call, or a panic naming `what` and the error's chain.
///
/// # Panics
///
/// When `result` is an error.
pub fn ok<T>(result: p2p::Result<T>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {}", error_chain(&e)))
}

/// The [`pattern`] seed of the message with `tag` and `len` bytes.
#[must_use]
pub fn seed(tag: u32, len: usize) -> u64 {
    u64::from(tag) << 40 ^ len as u64
}

/// Receives from `source` with `tag` into a buffer of `capacity` bytes and checks the status
/// and the `len` bytes of [`pattern`] the sender sent.
///
/// # Panics
///
/// When the receive fails or the status or the bytes differ.
pub fn expect_message(
    comm: &mut Communicator,
    source: usize,
    tag: u32,
    len: usize,
    capacity: usize,
) {
    check_received(
        comm,
        source.into(),
        tag.into(),
        Status { source, tag, len },
        capacity,
    );
}

/// Receives with both wildcards into a buffer of `capacity` bytes and checks that it was the
/// message `expected` and its bytes of [`pattern`].
///
/// # Panics
///
/// When the receive fails or the status or the bytes differ.
pub fn expect_any_message(comm: &mut Communicator, expected: Status, capacity: usize) {
    check_received(comm, ANY_SOURCE, ANY_TAG, expected, capacity);
}

fn check_received(
    comm: &mut Communicator,
    source: Source,
    tag: TagMatch,
    expected: Status,
    capacity: usize,
) {
    let mut buf = vec![0; capacity];
    let status = ok(comm.recv(&mut buf, source, tag), "recv");
    assert_eq!(status, expected);
    let Status { tag, len, .. } = expected;
    assert_same_bytes(&pattern(len, seed(tag, len)), &buf[..len], "received bytes");
}

/// Where and how one rank runs.
#[derive(Debug, Clone)]
pub struct RankPlacement {
    /// The RDMA device the rank joins on.
    pub device: &'static str,
    /// Network namespace to run in (`ip netns exec`), if not the test's own.
    pub netns: Option<&'static str>,
    /// The exit code the rank must end with.
    pub exit_code: i32,
}

impl RankPlacement {
    /// A rank on `rxe0` in the test's own namespace that must exit with 0.
    #[must_use]
    pub fn rxe0() -> Self {
        Self {
            device: RXE0.device,
            netns: None,
            exit_code: 0,
        }
    }
}

/// A multi-rank run of one scenario.
#[derive(Debug)]
pub struct Job {
    scenario: &'static str,
    /// One placement per rank, rank 0 first.
    pub ranks: Vec<RankPlacement>,
    /// Host rank 0 listens on.
    pub root_host: String,
    env: Vec<(&'static str, String)>,
}

impl Job {
    /// `size` ranks on rxe0 running `scenario`; where rxe's ODP is correct, their caches run
    /// in mode odp (a test may choose another mode with [`Job::env`]).
    #[must_use]
    pub fn on_rxe0(scenario: &'static str, size: usize) -> Self {
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

    /// The job with `var` set to `value` in every rank (later settings win).
    #[must_use]
    pub fn env(mut self, var: &'static str, value: &str) -> Self {
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
    pub fn run(&self) {
        if let Err(failure) = self.try_run() {
            panic!("{failure}");
        }
    }

    /// Runs every rank to completion; on a wrong exit code prints every rank's output and
    /// says which ranks failed.
    ///
    /// # Errors
    /// Which ranks ended with another exit code than their placement expects, or hung.
    ///
    /// # Panics
    /// When a rank's process or its log cannot be created.
    pub fn try_run(&self) -> Result<(), String> {
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

/// Runs `scenario` with `ranks` ranks on `rxe0`, unless there is no RDMA device to test on.
///
/// # Panics
/// As [`Job::run`].
pub fn run_on_rxe0(scenario: &'static str, ranks: usize) {
    if require_devices().is_some() {
        Job::on_rxe0(scenario, ranks).run();
    }
}
