//! `p2p-bench`: ping-pong latency and streaming bandwidth between two ranks on Soft-RoCE,
//! run inside the project's VM by `cargo xtask bench p2p` (and, with `--quick`, by the demo).
//!
//! ```text
//! p2p-bench [--quick] [--max-size BYTES]
//!                              every variant, then perftest, between rxe0 and rxe1, then
//!                              (without --quick or --max-size) first-touch; --max-size
//!                              drops the plan's sizes above BYTES
//! p2p-bench rank [--quick] [--max-size BYTES]
//!                              one rank; started by the line above
//! p2p-bench first-touch        only the first transfer of fresh buffers and munmap costs
//! ```
//!
//! Rank 0 runs on rxe0; rank 1 on rxe1 in network namespace `ns1` when the kernel provides it,
//! else on rxe0 as well (loopback). Every figure is printed as a `REGCACHE-BENCH` line (see
//! [`plan::Figure`]); under an emulated CPU only ratios measured in one run mean anything.

mod driver;
mod first_touch;
mod munmap_cost;
mod paired;
mod perftest;
mod plan;
mod raw_verbs;
mod sweep;
mod through_p2p;

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use p2p::{Communicator, LaunchConfig};

use crate::plan::{Plan, Variant, SKIP_PREFIX};
use crate::raw_verbs::{Protocol, RawVerbs};
use crate::sweep::Exchange;
use crate::through_p2p::ThroughP2p;

/// The address whose RoCE v2 GID the raw-verbs queue pair sends from (set by the driver).
const ADDR_VAR: &str = "P2P_BENCH_ADDR";
/// The cache's mode, read by every communicator as it is created.
const MODE_VAR: &str = "REGCACHE_MODE";

const USAGE: &str = "usage: p2p-bench [--quick] [--max-size BYTES] | p2p-bench rank [--quick] \
     [--max-size BYTES] | p2p-bench first-touch";

/// The plan the options ask for, and the other arguments.
fn parse_args(args: &[String]) -> Result<(Plan, Vec<&str>)> {
    let (mut quick, mut cap, mut positional) = (false, None, Vec::new());
    let mut args = args.iter().map(String::as_str);
    while let Some(arg) = args.next() {
        match arg {
            "--quick" => quick = true,
            "--max-size" => {
                let bytes = args.next().context("--max-size needs a number of bytes")?;
                let bytes: usize = bytes
                    .parse()
                    .with_context(|| format!("--max-size {bytes}: not a number of bytes"))?;
                cap = Some(bytes);
            }
            _ => positional.push(arg),
        }
    }
    let plan = Plan::new(quick);
    let plan = match cap {
        Some(cap) => plan.up_to(cap)?,
        None => plan,
    };
    Ok((plan, positional))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = parse_args(&args).and_then(|(plan, positional)| match positional.as_slice() {
        [] => driver::run_everything(plan),
        ["rank"] => rank(plan),
        ["first-touch"] if plan == Plan::new(false) => first_touch::run(),
        _ => Err(anyhow::anyhow!(USAGE)),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("p2p-bench: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Joins a job of two ranks with the cache in `variant`'s mode; the job's bootstrap port is
/// the launcher's plus `port_offset`, so every communicator has its own.
fn join(base: &LaunchConfig, variant: Variant, port_offset: u16) -> p2p::Result<Communicator> {
    // Single-threaded here: nothing reads the environment concurrently.
    std::env::set_var(MODE_VAR, variant.cache_mode());
    let (host, port) = base
        .root_addr
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        .unwrap_or((base.root_addr.as_str(), 0));
    Communicator::new(LaunchConfig {
        root_addr: format!("{host}:{}", port.saturating_add(port_offset)),
        ..base.clone()
    })
}

/// One rank: joins a communicator per cache mode and sets up the raw queue pair, then runs
/// every variant interleaved. A cache mode the system cannot provide (for example ODP
/// refused by the cache's self-test) is reported as a skip, not a failure.
fn rank(plan: Plan) -> Result<()> {
    let base = LaunchConfig::from_env().context("reading the launcher's variables")?;
    if base.size != 2 {
        bail!("the benchmark runs exactly two ranks, not {}", base.size);
    }
    let device = base.device.clone().context("P2P_DEVICE unset")?;
    let addr = std::env::var(ADDR_VAR)
        .with_context(|| format!("{ADDR_VAR} unset"))?
        .parse()
        .with_context(|| format!("{ADDR_VAR} is not an IPv4 address"))?;
    // Mode off never fails for want of a device feature; its communicator also carries the
    // raw queue pair's endpoints.
    let mut off = join(&base, Variant::AlwaysRegister, 0).context("joining with the cache off")?;
    let mut raw = RawVerbs::connect(&mut off, &device, addr, plan, Protocol::SendRecv)?;
    let mut raw_inline = RawVerbs::connect(&mut off, &device, addr, plan, Protocol::SendInline)?;
    let copied_out = Protocol::SendInlineCopiedOut;
    let mut raw_copied_out = RawVerbs::connect(&mut off, &device, addr, plan, copied_out)?;
    let mut raw_read = RawVerbs::connect(&mut off, &device, addr, plan, Protocol::ReadRendezvous)?;
    let mut always_register = ThroughP2p::new(off, plan)?;
    let mut cached = Vec::new();
    for (port_offset, variant) in (1..).zip([Variant::CachePinned, Variant::CacheOdp]) {
        match join(&base, variant, port_offset) {
            Ok(comm) => {
                eprintln!(
                    "rank {}: {variant}: path MTU {:?}, cache policy {:?}",
                    base.rank,
                    comm.mtu(),
                    comm.cache_policy()
                );
                cached.push((variant, ThroughP2p::new(comm, plan)?));
            }
            Err(error @ p2p::Error::Cache { .. }) => {
                println!("{SKIP_PREFIX} {variant} {:#}", anyhow::Error::new(error));
            }
            Err(error) => return Err(error).with_context(|| format!("joining for {variant}")),
        }
    }
    let mut exchanges: Vec<(Variant, &mut dyn Exchange)> = vec![
        (Variant::RawVerbs, &mut raw),
        (Variant::RawVerbsInline, &mut raw_inline),
        (Variant::RawVerbsCopiedOut, &mut raw_copied_out),
        (Variant::RawVerbsRead, &mut raw_read),
    ];
    for (variant, through) in &mut cached {
        exchanges.push((*variant, through));
    }
    exchanges.push((Variant::AlwaysRegister, &mut always_register));
    sweep::sweep(exchanges, base.rank, plan)
}
