//! `demo`: the main job, shown on the newest kernel.

use super::vm::prepare;
use super::{Context, COMMAND_TIMEOUT};
use crate::artefacts;
use crate::p2p_report::Figures;
use crate::verdict;
use anyhow::{bail, Result};

/// `demo`: the newest kernel, its rxe devices and their ODP caps, the
/// integration tests' transfers with their output shown, and the latency
/// table of the benchmark's short plan.
pub fn demo(ctx: &Context) -> Result<()> {
    let prepared = prepare(ctx)?;
    let kernel = &prepared.select_kernels("backports")?[0];
    let stage = artefacts::stage_suite(
        &ctx.workspace,
        &prepared.rootfs,
        std::slice::from_ref(kernel),
    )?;
    let run = prepared
        .guest()
        .run(kernel, &stage.exec_line(kernel, "demo"), COMMAND_TIMEOUT)?;
    let verdict = verdict::judge(&run);
    if !verdict.ok() {
        bail!("demo failed: {}", verdict.summary());
    }
    let title = format!(
        "p2p over Soft-RoCE on {} ({:?}), short plan (3 to 20 repetitions: indicative; \
         `cargo xtask bench p2p` measures the bound)",
        kernel.release, prepared.accel
    );
    let figures = Figures::parse(run.output.iter().map(String::as_str))?;
    eprintln!("==> {title}");
    eprintln!("{}", figures.markdown(&title));
    Ok(())
}
