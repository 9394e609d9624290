//! `soak [--ops N] [--seed S]`: the randomized soak of the registration cache (see
//! `rdma_tests::soak`), run by `cargo xtask soak` in a guest or natively on an RDMA host.
//! Exits 0 when every mode passed and the negative control found stale bytes.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use rdma_tests::require_devices;
use rdma_tests::soak::{self, Options};

const USAGE: &str =
    "usage: soak [--ops N] [--seed S]   (S decimal or 0x-hex; default: from the clock)";
const DEFAULT_OPS: u64 = 10_000;

fn parse_number(flag: &str, value: Option<String>) -> Result<u64, String> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    parsed.map_err(|e| format!("{flag} {value:?}: {e}"))
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        ops: DEFAULT_OPS,
        seed: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |since| since.as_nanos() as u64),
    };
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--ops" => options.ops = parse_number("--ops", args.next())?,
            "--seed" => options.seed = parse_number("--seed", args.next())?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.ops == 0 {
        return Err("--ops must be at least 1".to_owned());
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(problem) => {
            eprintln!("soak: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if require_devices().is_none() {
        eprintln!("soak: needs an RDMA device (rxe0)");
        return ExitCode::FAILURE;
    }
    let _ = soak::run(options);
    ExitCode::SUCCESS
}
