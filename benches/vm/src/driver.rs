//! Starts the two ranks of every variant, forwards what they print, then runs perftest
//! between the same two devices.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};
use rdma_tests::{Node, RXE0, RXE1};

use crate::perftest;
use crate::plan::{Plan, Variant};
use crate::ADDR_VAR;

/// First TCP port of the ranks' bootstraps; each communicator uses the next one.
const BOOTSTRAP_PORT: u16 = 18_600;
/// A command (words split at spaces) rank 0 runs under, to profile it, e.g.
/// `valgrind --tool=callgrind --callgrind-out-file=/tmp/rank0.out`.
const RANK0_WRAPPER_VAR: &str = "P2P_BENCH_RANK0_WRAPPER";

/// Where a rank runs: its device and address, the network namespace it must enter, and the
/// CPU it is bound to.
#[derive(Debug, Clone, Copy)]
pub struct Place {
    pub node: Node,
    pub netns: Option<&'static str>,
    pub cpu: Option<usize>,
}

impl Place {
    /// `program` with `args`, run inside this place's network namespace and bound to its CPU.
    pub fn command(&self, program: &Path, args: &[String]) -> Command {
        let mut words: Vec<OsString> = Vec::new();
        if let Some(netns) = self.netns {
            words.extend(["ip", "netns", "exec", netns].map(OsString::from));
        }
        if let Some(cpu) = self.cpu {
            words.extend([
                "taskset".into(),
                "--cpu-list".into(),
                cpu.to_string().into(),
            ]);
        }
        words.push(program.into());
        words.extend(args.iter().map(OsString::from));
        let mut command = Command::new(&words[0]);
        command.args(&words[1..]);
        command
    }

    fn describe(&self) -> String {
        let netns = self
            .netns
            .map_or(String::new(), |ns| format!(", netns {ns}"));
        let cpu = self.cpu.map_or(String::new(), |cpu| format!(", CPU {cpu}"));
        format!("{} ({}{netns}{cpu})", self.node.device, self.node.addr)
    }
}

/// The two ends: rxe0 and, where the guest set it up, rxe1 in `ns1`; else rxe0 twice.
///
/// With two CPUs or more, rank 0 is bound to CPU 0 and rank 1 to CPU 1, as Open MPI's
/// `mpirun` binds two ranks to cores by default. Unbound, the scheduler at times puts both
/// ranks on one CPU, where each yield of a waiting rank switches to the other process; under
/// emulation every such switch flushes the translation caches, so each message then costs
/// by the pages and functions it reaches, and the ratios move by a tenth from run to run
/// (benches/RESULTS.md, "Ranks bound to CPUs, stop 22").
fn places() -> Result<[Place; 2]> {
    let devices = verbs::devices().context("listing RDMA devices")?;
    if !devices.iter().any(|d| d.name == RXE0.device) {
        bail!("no {} device: run inside the project's VM", RXE0.device);
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let cpu = |rank: usize| (cpus >= 2).then_some(rank);
    let here = Place {
        node: RXE0,
        netns: None,
        cpu: cpu(0),
    };
    let across =
        devices.iter().any(|d| d.name == RXE1.device) && Path::new("/var/run/netns/ns1").exists();
    let there = if across {
        Place {
            node: RXE1,
            netns: Some("ns1"),
            cpu: cpu(1),
        }
    } else {
        Place {
            cpu: cpu(1),
            ..here
        }
    };
    Ok([here, there])
}

/// Copies each line of `stream` to stdout with `label` in front, as it arrives.
fn forward(stream: impl Read + Send + 'static, label: String) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            println!("[{label}] {line}");
        }
    })
}

/// Spawns `command` with its output forwarded under `label`.
fn spawn_forwarded(mut command: Command, label: &str) -> Result<(Child, Vec<JoinHandle<()>>)> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {label}"))?;
    let mut forwarders = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        forwarders.push(forward(stdout, label.to_owned()));
    }
    if let Some(stderr) = child.stderr.take() {
        forwarders.push(forward(stderr, label.to_owned()));
    }
    Ok((child, forwarders))
}

/// Waits for `child` and the threads forwarding its output; fails on a non-zero exit.
pub fn finish(mut child: Child, forwarders: Vec<JoinHandle<()>>, label: &str) -> Result<()> {
    let status = child
        .wait()
        .with_context(|| format!("waiting for {label}"))?;
    for forwarder in forwarders {
        // A forwarder only prints; if it panicked, the lines are lost, not the run.
        let _ = forwarder.join();
    }
    if !status.success() {
        bail!("{label} failed ({status})");
    }
    Ok(())
}

/// The two ranks, which run every variant interleaved.
fn run_ranks(plan: Plan, places: &[Place; 2]) -> Result<()> {
    let exe = std::env::current_exe().context("locating p2p-bench")?;
    let mut args = vec!["rank".to_owned()];
    if plan.is_quick() {
        args.push("--quick".to_owned());
    }
    if let Some(cap) = plan.cap() {
        args.extend(["--max-size".to_owned(), cap.to_string()]);
    }
    let root = format!("{}:{BOOTSTRAP_PORT}", places[0].node.addr);
    let mut ranks = Vec::new();
    let wrapper = std::env::var(RANK0_WRAPPER_VAR).unwrap_or_default();
    for (rank, place) in places.iter().enumerate() {
        let mut command = match wrapper.split_whitespace().collect::<Vec<_>>().split_first() {
            Some((program, words)) if rank == 0 => {
                let mut wrapped: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
                wrapped.push(exe.display().to_string());
                wrapped.extend(args.iter().cloned());
                place.command(Path::new(program), &wrapped)
            }
            _ => place.command(&exe, &args),
        };
        command
            .env("P2P_RANK", rank.to_string())
            .env("P2P_SIZE", "2")
            .env("P2P_ROOT_ADDR", &root)
            .env("P2P_DEVICE", place.node.device)
            .env(ADDR_VAR, place.node.addr.to_string());
        let label = format!("rank {rank}");
        let (child, forwarders) = spawn_forwarded(command, &label)?;
        ranks.push((child, forwarders, label));
    }
    let mut failures = Vec::new();
    for (child, forwarders, label) in ranks {
        if let Err(error) = finish(child, forwarders, &label) {
            failures.push(format!("{error:#}"));
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// Every variant, then perftest's `ib_write_lat` and `ib_read_lat`, then (in the full plan)
/// the first transfer of fresh buffers and the munmap costs, in this one boot.
///
/// # Errors
/// When a variant, a perftest run or first-touch fails; the others still run first.
pub fn run_everything(plan: Plan) -> Result<()> {
    let places = places()?;
    println!(
        "p2p-bench: rank 0 on {}, rank 1 on {}; {} sizes",
        places[0].describe(),
        places[1].describe(),
        plan.sizes().len(),
    );
    let mut failures = Vec::new();
    let variants: Vec<String> = Variant::ALL.iter().map(ToString::to_string).collect();
    println!("p2p-bench: measuring {}, interleaved", variants.join(", "));
    if let Err(error) = run_ranks(plan, &places) {
        failures.push(format!("ranks: {error:#}"));
    }
    for tool in perftest::TOOLS {
        println!("p2p-bench: measuring {tool}");
        if let Err(error) = perftest::run(tool, plan, &places) {
            failures.push(format!("{tool}: {error:#}"));
        }
    }
    // Not in the short plan: the suite and the demo run that on every kernel, and its
    // tables are the p2p figures. Nor in a capped one, which asks about small messages.
    if !plan.is_quick() && plan.cap().is_none() {
        println!("p2p-bench: measuring first-touch and munmap");
        if let Err(error) = crate::first_touch::run() {
            failures.push(format!("first-touch: {error:#}"));
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}
