//! `bench regwatch`, `bench p2p` and `bench hit-path`.

use super::vm::prepare;
use super::{Context, SUITE_TIMEOUT};
use crate::artefacts;
use crate::host;
use crate::kernels::Kernel;
use crate::kmod;
use crate::p2p_report::Figures;
use crate::sh::{self, cmd};
use crate::stage::Stage;
use crate::verdict::{self, Verdict};
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
        let run = prepared
            .guest()
            .run(kernel, &stage.exec_line(kernel, "bench"), SUITE_TIMEOUT)?;
        let verdict = verdict::judge(&run);
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

/// `bench p2p`: latency and bandwidth of p2p (cache pinned and ODP,
/// always-register), raw verbs and perftest in one boot; writes
/// `target/bench/p2p-<kernel>.md`, the figure lines, and two log-log plots.
pub fn bench_p2p(ctx: &Context, selector: &str) -> Result<()> {
    let prepared = prepare(ctx)?;
    let kernel = &prepared.select_kernels(selector)?[0];
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
    let run = prepared
        .guest()
        .run(kernel, &stage.exec_line(kernel, "p2p-bench"), SUITE_TIMEOUT)?;
    let verdict = verdict::judge(&run);
    let out_dir = ctx.workspace.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let stem = format!("p2p-{}", kernel.release);
    let lines: Vec<&str> = run
        .output
        .iter()
        .map(String::as_str)
        .filter(|line| line.contains("REGCACHE-BENCH"))
        .collect();
    std::fs::write(out_dir.join(format!("{stem}.txt")), lines.join("\n") + "\n")?;
    let title = format!(
        "p2p over Soft-RoCE, rxe0 to rxe1, {} ({:?}, ratios only)",
        kernel.release, prepared.accel
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
    benchmark_run_passed(kernel, &verdict)
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
