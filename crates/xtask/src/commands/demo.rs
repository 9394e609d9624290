//! `demo`: the main job, shown on the newest kernel, with its stock and its
//! fixed rdma_rxe.

use super::vm::{boot_and_judge, guest_environment, prepare};
use super::{Context, COMMAND_TIMEOUT};
use crate::artefacts;
use crate::p2p_report::Figures;
use anyhow::{bail, Result};

/// What the ODP self-test's tests print for the cache's choice in mode auto.
const CHOICE_MARK: &str = "ODP choice:";
/// What the guest script prints before the stock and the fixed rxe's part.
const PART_MARK: &str = "regcache-guest: demo: ODP on the ";

/// `demo`: the newest kernel, its rxe devices and their ODP caps; the
/// cache's ODP choice on the stock rdma_rxe (refused, with the self-test's
/// findings); then with the fixed rdma_rxe swapped in: the integration
/// tests' transfers with their output shown, the choice again (ODP) and the
/// latency table of the benchmark's short plan.
pub fn demo(ctx: &Context) -> Result<()> {
    let prepared = prepare(ctx)?;
    let config = &prepared.select_configurations("backports-fixed")?[0];
    let stage = artefacts::stage_suite(
        &ctx.workspace,
        &prepared.rootfs,
        std::slice::from_ref(&config.kernel),
    )?;
    let environment = guest_environment(ctx, &prepared.rootfs, config)?;
    let judged = boot_and_judge(
        &prepared,
        &config.kernel,
        &config.describe(),
        &stage.exec_line_in(&environment, "demo"),
        COMMAND_TIMEOUT,
    )?;
    if !judged.verdict.ok() {
        bail!(
            "demo failed{}: {}",
            judged.second_boot_note(),
            judged.verdict.summary()
        );
    }
    let run = &judged.run;
    eprintln!("==> the cache's ODP choice in mode auto on rxe0");
    let mut part = "";
    for line in &run.output {
        if let Some((_, rest)) = line.split_once(PART_MARK) {
            part = rest;
        } else if let Some((_, choice)) = line.split_once(CHOICE_MARK) {
            eprintln!("    {part}:{choice}");
        }
    }
    let title = format!(
        "p2p over Soft-RoCE on {} ({:?}), short plan (3 to 20 repetitions: indicative; \
         `cargo xtask bench p2p` measures the bound)",
        config.describe(),
        prepared.accel
    );
    let figures = Figures::parse(run.output.iter().map(String::as_str))?;
    eprintln!("==> {title}");
    eprintln!("{}", figures.markdown(&title));
    Ok(())
}
