//! `bench regwatch`, `bench p2p` and `bench hit-path`.

use super::vm::{boot_and_judge, guest_environment, prepare, Judged, Prepared};
use super::{Context, P2P_BENCH_TIMEOUT, SUITE_TIMEOUT};
use crate::artefacts;
use crate::host;
use crate::kernels::{Configuration, Kernel, Rxe};
use crate::kmod;
use crate::p2p_report::Figures;
use crate::sh::{self, cmd};
use crate::stage::Stage;
use crate::verdict::Verdict;
use anyhow::{bail, Result};

/// `bench regwatch`: the module's micro-benchmarks in a guest; the lines
/// they print are kept in `target/bench/regwatch-<kernel>.txt`.
pub fn bench_regwatch(ctx: &Context, selector: &str) -> Result<()> {
    let prepared = prepare(ctx)?;
    let kernels = prepared.select_kernels(selector)?;
    let stage = Stage::fresh(&prepared.rootfs)?;
    kmod::stage_required_module(
        &ctx.workspace,
        &prepared.rootfs,
        &stage,
        &kernels,
        kmod::With::Benches,
        "the regwatch benchmark",
    )?;
    let out_dir = ctx.workspace.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    for kernel in &kernels {
        let Judged { run, verdict, .. } = boot_and_judge(
            &prepared,
            kernel,
            &kernel.release,
            &stage.exec_line(kernel, "bench"),
            SUITE_TIMEOUT,
        )?;
        let figures: Vec<&str> = run
            .output
            .iter()
            .filter(|line| line.contains("-bench:"))
            .map(String::as_str)
            .collect();
        let file = out_dir.join(format!("regwatch-{}.txt", kernel.release));
        std::fs::write(&file, format!("{}\n", figures.join("\n")))?;
        eprintln!(
            "==> regwatch benchmark on {} ({:?}), saved to {}",
            kernel.release,
            prepared.accel,
            file.display()
        );
        for line in &figures {
            eprintln!("    {line}");
        }
        benchmark_run_passed(kernel, &verdict)?;
    }
    Ok(())
}

/// What `p2p-bench` measures in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The p2p variants, perftest, then first-touch and munmap; with `max_size`, only the
    /// variants and perftest at the sizes up to that many bytes (minutes, not tens of them).
    Everything { max_size: Option<usize> },
    /// Only first-touch and munmap (`p2p-bench first-touch`), minutes instead of the
    /// p2p sweep's tens of minutes on a loaded TCG host.
    FirstTouch,
}

impl Plan {
    /// The guest script's mode that runs `p2p-bench` with this plan.
    fn guest_mode(self) -> String {
        match self {
            Self::Everything { max_size: None } => "p2p-bench".to_owned(),
            Self::Everything {
                max_size: Some(bytes),
            } => format!("p2p-bench --max-size {bytes}"),
            Self::FirstTouch => "p2p-bench first-touch".to_owned(),
        }
    }
}

/// `bench p2p` (`plan` everything) and `bench first-touch`: latency and
/// bandwidth of p2p (cache pinned and ODP, always-register), raw verbs and
/// perftest, then the first transfer of fresh buffers and the munmap costs,
/// in one boot per configuration `selector` picks (`backports-fixed`: the
/// fixed rdma_rxe, swapped in by the guest as in the suite); writes
/// `target/bench/p2p[-first-touch]-<kernel>[-fixed-rxe].md`, the figure
/// lines, and the log-log plots. With the fixed module ODP must have been
/// measured.
pub fn bench_p2p(ctx: &Context, selector: &str, plan: Plan) -> Result<()> {
    let prepared = prepare(ctx)?;
    for config in &prepared.select_configurations(selector)? {
        bench_p2p_in(ctx, &prepared, config, plan)?;
    }
    Ok(())
}

fn bench_p2p_in(
    ctx: &Context,
    prepared: &Prepared,
    config: &Configuration,
    plan: Plan,
) -> Result<()> {
    let kernel = &config.kernel;
    let environment = guest_environment(ctx, &prepared.rootfs, config)?;
    let stage = Stage::fresh(&prepared.rootfs)?;
    // Optional: without kmod/ the variants that need it report a skip.
    kmod::stage_module(
        &ctx.workspace,
        &prepared.rootfs,
        &stage,
        std::slice::from_ref(kernel),
        kmod::With::Nothing,
    )?;
    artefacts::stage_p2p_bench(&ctx.workspace, &stage)?;
    let Judged { run, verdict, .. } = boot_and_judge(
        prepared,
        kernel,
        &config.describe(),
        &stage.exec_line_in(&environment, &plan.guest_mode()),
        P2P_BENCH_TIMEOUT,
    )?;
    let out_dir = ctx.workspace.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let (name, odp) = match plan {
        Plan::Everything { max_size: None } => ("p2p".to_owned(), "p2p-cache-odp"),
        Plan::Everything {
            max_size: Some(bytes),
        } => (format!("p2p-up-to-{bytes}"), "p2p-cache-odp"),
        Plan::FirstTouch => ("p2p-first-touch".to_owned(), "first-touch-odp"),
    };
    let stem = match config.rxe {
        Rxe::Stock => format!("{name}-{}", kernel.release),
        Rxe::Fixed => format!("{name}-{}-fixed-rxe", kernel.release),
    };
    let lines: Vec<&str> = run
        .output
        .iter()
        .map(String::as_str)
        .filter(|line| line.contains("REGCACHE-BENCH"))
        .collect();
    std::fs::write(out_dir.join(format!("{stem}.txt")), lines.join("\n") + "\n")?;
    let title = format!(
        "p2p over Soft-RoCE, rxe0 to rxe1, {} ({:?}, ratios only)",
        config.describe(),
        prepared.accel
    );
    let figures = Figures::parse(lines.iter().copied())?;
    let markdown = figures.markdown(&title);
    let report = out_dir.join(format!("{stem}.md"));
    std::fs::write(&report, &markdown)?;
    let pngs = figures.plot(&out_dir, &stem, &title)?;
    eprintln!("{markdown}");
    eprintln!("==> saved {}", report.display());
    for png in pngs {
        eprintln!("==> saved {}", png.display());
    }
    benchmark_run_passed(kernel, &verdict)?;
    if config.rxe_odp_correct() {
        if let Some(why) = figures.not_measured(odp) {
            bail!("{} ran, yet ODP was not measured: {why}", config.describe());
        }
    }
    Ok(())
}

/// Fails with the guest's problems unless the benchmark's boot was clean.
fn benchmark_run_passed(kernel: &Kernel, verdict: &Verdict) -> Result<()> {
    if !verdict.ok() {
        bail!(
            "benchmark run failed on {}: {}",
            kernel.release,
            verdict.summary()
        );
    }
    Ok(())
}

/// `bench hit-path`: the cache's hit and miss paths natively with criterion,
/// beside UCX's rcache; the benchmark prints its own ratio table.
pub fn bench_hit_path(ctx: &Context) -> Result<()> {
    host::install_packages()?;
    sh::step("criterion: cargo bench -p regcache-benches", || {
        sh::run(
            cmd("cargo", ["bench", "--package", "regcache-benches"]).current_dir(&ctx.workspace),
        )
    })
}
