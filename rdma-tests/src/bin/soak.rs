//! `soak [--ops N] [--seed S] [--mode M | --parallel]`: the randomized soak of the
//! registration cache (see `rdma_tests::soak`), run by `cargo xtask soak` in a guest or
//! natively on an RDMA host. Exits 0 when every mode passed and the negative control found
//! stale bytes.
//!
//! `--parallel` runs each mode in a process of its own, all at once, with the same seed:
//! the same operations per mode as one process running them in turn, in about the time of the
//! slowest mode when the machine has a CPU per mode.

use std::process::{Command, ExitCode};
use std::time::{SystemTime, UNIX_EPOCH};

use rdma_tests::require_devices;
use rdma_tests::soak::{self, CacheMode, Options};

const USAGE: &str =
    "usage: soak [--ops N] [--seed S] [--mode pinned|odp|off|control | --parallel]   \
     (S decimal or 0x-hex; default: from the clock)";
const DEFAULT_OPS: u64 = 10_000;

/// What the command line asks for.
struct Request {
    options: Options,
    /// Every mode in a process of its own, at once.
    parallel: bool,
}

fn parse_number(flag: &str, value: Option<String>) -> Result<u64, String> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    parsed.map_err(|e| format!("{flag} {value:?}: {e}"))
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Request, String> {
    let mut options = Options {
        ops: DEFAULT_OPS,
        seed: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |since| since.as_nanos() as u64),
        only: None,
    };
    let mut parallel = false;
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--ops" => options.ops = parse_number("--ops", args.next())?,
            "--seed" => options.seed = parse_number("--seed", args.next())?,
            "--mode" => {
                let name = args.next().ok_or("--mode needs a value")?;
                let mode = CacheMode::from_name(&name)
                    .ok_or_else(|| format!("--mode {name:?}: not a mode"))?;
                options.only = Some(mode);
            }
            "--parallel" => parallel = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.ops == 0 {
        return Err("--ops must be at least 1".to_owned());
    }
    if parallel && options.only.is_some() {
        return Err("--parallel runs every mode: leave out --mode".to_owned());
    }
    Ok(Request { options, parallel })
}

/// Runs every mode in a child process of its own (this program with `--mode`), all at once;
/// their lines go to this program's output as they come. Fails when any child failed.
fn run_in_parallel(options: Options) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("soak: where is this program? {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "soak: seed {:#x}, {} operations per mode, a process per mode",
        options.seed, options.ops
    );
    let children: Vec<_> = CacheMode::ALL
        .into_iter()
        .map(|mode| {
            let child = Command::new(&exe)
                .args(["--mode", mode.name()])
                .args(["--ops", &options.ops.to_string()])
                .args(["--seed", &format!("{:#x}", options.seed)])
                .spawn();
            (mode, child)
        })
        .collect();
    let mut failed = Vec::new();
    for (mode, child) in children {
        let status = child.and_then(|mut child| child.wait());
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => failed.push(format!("{} ({status})", mode.name())),
            Err(e) => failed.push(format!("{} ({e})", mode.name())),
        }
    }
    if failed.is_empty() {
        println!("soak: every mode's process passed");
        ExitCode::SUCCESS
    } else {
        println!("soak: FAILED: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let Request { options, parallel } = match parse(std::env::args().skip(1)) {
        Ok(request) => request,
        Err(problem) => {
            eprintln!("soak: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if require_devices().is_none() {
        eprintln!("soak: needs an RDMA device (rxe0)");
        return ExitCode::FAILURE;
    }
    if parallel {
        return run_in_parallel(options);
    }
    let _ = soak::run(options);
    ExitCode::SUCCESS
}
