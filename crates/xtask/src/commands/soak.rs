//! `cargo xtask soak`: the randomized soak of the registration cache (rdma-tests' `soak`
//! program, `rdma_tests::soak`) in a guest per kernel, with regwatch loaded and Soft-RoCE up.

use super::vm::{boot_and_judge, prepare, Judged};
use super::Context;
use crate::artefacts;
use crate::kmod;
use crate::stage::Stage;
use anyhow::{bail, Result};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time limit of one guest: the boot and set-up, plus a budget per operation far above what
/// TCG needs (see benches/RESULTS.md for the measured rate), so that only a hang hits it.
const BOOT_BUDGET: Duration = Duration::from_secs(15 * 60);
const BUDGET_PER_OP: Duration = Duration::from_millis(250);

/// What `cargo xtask soak` was asked for.
#[derive(Debug)]
pub struct SoakArgs {
    /// Operations per mode.
    pub ops: u64,
    /// The seed as given (the soak program parses it); `None` picks one from the clock
    /// (printed, the same on every kernel).
    pub seed: Option<String>,
    /// all, backports, lts or a release prefix.
    pub kernel: String,
    /// Every mode in a process of its own, at once (the soak program's `--parallel`).
    pub parallel: bool,
}

/// `soak`: boots each selected kernel and runs the soak with the same seed; fails when a
/// guest fails (a wrong byte, a control without stale bytes, a kernel warning, a timeout).
pub fn soak(ctx: &Context, args: &SoakArgs) -> Result<()> {
    let seed = args.seed.clone().unwrap_or_else(|| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH);
        format!("{:#x}", now.map_or(1, |since| since.as_nanos() as u64))
    });
    if !seed.chars().all(|c| c.is_ascii_alphanumeric()) {
        bail!("--seed {seed:?}: a decimal or 0x-hexadecimal number");
    }
    eprintln!(
        "==> soak: seed {seed}, {} operations per mode (replay: cargo xtask soak --seed {seed} --ops {} --kernel {}{})",
        args.ops,
        args.ops,
        args.kernel,
        if args.parallel { " --parallel" } else { "" }
    );
    let prepared = prepare(ctx)?;
    let kernels = prepared.select_kernels(&args.kernel)?;
    let stage = Stage::fresh(&prepared.rootfs)?;
    kmod::stage_required_module(
        &ctx.workspace,
        &prepared.rootfs,
        &stage,
        &kernels,
        kmod::With::Nothing,
        "the soak's pinned mode",
    )?;
    artefacts::stage_soak(&ctx.workspace, &stage)?;
    let timeout = BOOT_BUDGET + BUDGET_PER_OP * u32::try_from(args.ops).unwrap_or(u32::MAX);
    let parallel = if args.parallel { " --parallel" } else { "" };
    let command = format!(
        "run {}/vmbench/soak --ops {} --seed {seed}{parallel}",
        stage.guest_dir, args.ops
    );
    let mut failed = Vec::new();
    for kernel in &kernels {
        let Judged { run, verdict, .. } = boot_and_judge(
            &prepared,
            kernel,
            &kernel.release,
            &stage.exec_line(kernel, &command),
            timeout,
        )?;
        eprintln!(
            "==> soak on {} ({:?}) in {} s: {}",
            kernel.release,
            prepared.accel,
            run.elapsed.as_secs(),
            if verdict.ok() { "PASS" } else { "FAIL" }
        );
        for line in run
            .output
            .iter()
            .filter(|line| line.starts_with("soak:   "))
        {
            eprintln!("    {line}");
        }
        if !verdict.ok() {
            eprintln!("    {}", verdict.summary());
            failed.push(kernel.release.clone());
        }
    }
    if !failed.is_empty() {
        bail!(
            "the soak failed on {} (replay: cargo xtask soak --seed {seed} --ops {})",
            failed.join(", "),
            args.ops
        );
    }
    Ok(())
}
