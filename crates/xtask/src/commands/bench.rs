//! `bench regwatch`, `bench p2p` and `bench hit-path`.

use super::vm::prepare;
use super::{Context, P2P_BENCH_TIMEOUT, SUITE_TIMEOUT};
use crate::artefacts;
use crate::host;
use crate::kernels::Kernel;
use crate::kmod;
use crate::p2p_report::Figures;
use crate::rxe_fix;
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

/// The rdma_rxe a benchmark's guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Rxe {
    /// Debian's module, as the kernel ships it.
    Stock,
    /// Built from Debian's source of the kernel with `kernel-patches/rxe`
    /// (the ODP copy fix), cached in the rootfs, swapped in by the guest.
    Patched,
}

/// What `p2p-bench` measures in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The p2p variants, perftest, then first-touch and munmap.
    Everything,
    /// Only first-touch and munmap (`p2p-bench first-touch`), minutes instead of the
    /// p2p sweep's tens of minutes on a loaded TCG host.
    FirstTouch,
}

impl Plan {
    fn args(self) -> &'static str {
        match self {
            Self::Everything => "",
            Self::FirstTouch => " first-touch",
        }
    }
}

/// The guest script's mode that runs `p2p-bench` with `plan` from the stage
/// in `stage_dir`, after `swap` (the command that loads the patched
/// rdma_rxe) when there is one: the guest set Soft-RoCE up before, and the
/// swap keeps its links. The paths are the harness's own (no quote, space or
/// `$`), so double quotes suffice.
fn p2p_bench_mode(stage_dir: &str, swap: Option<&str>, plan: Plan) -> String {
    let args = plan.args();
    match swap {
        None => format!("p2p-bench{args}"),
        Some(swap) => format!("run sh -c \"{swap} && {stage_dir}/vmbench/p2p-bench{args}\""),
    }
}

/// `bench p2p` (`plan` everything) and `bench first-touch`: latency and
/// bandwidth of p2p (cache pinned and ODP, always-register), raw verbs and
/// perftest, then the first transfer of fresh buffers and the munmap costs,
/// in one boot with the `rxe` module; writes
/// `target/bench/p2p[-first-touch]-<kernel>[-patched-rxe].md`, the figure
/// lines, and the log-log plots. With the patched module ODP must have been
/// measured.
pub fn bench_p2p(ctx: &Context, selector: &str, rxe: Rxe, plan: Plan) -> Result<()> {
    let prepared = prepare(ctx)?;
    let kernel = &prepared.select_kernels(selector)?[0];
    let swap = match rxe {
        Rxe::Stock => None,
        Rxe::Patched => {
            Some(rxe_fix::build_patched(&ctx.workspace, &prepared.rootfs, kernel)?.swap_command)
        }
    };
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
    let mode = p2p_bench_mode(&stage.guest_dir, swap.as_deref(), plan);
    let run = prepared
        .guest()
        .run(kernel, &stage.exec_line(kernel, &mode), P2P_BENCH_TIMEOUT)?;
    let verdict = verdict::judge(&run);
    let out_dir = ctx.workspace.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let (name, odp) = match plan {
        Plan::Everything => ("p2p", "p2p-cache-odp"),
        Plan::FirstTouch => ("p2p-first-touch", "first-touch-odp"),
    };
    let (stem, module) = match rxe {
        Rxe::Stock => (format!("{name}-{}", kernel.release), "Debian's rdma_rxe"),
        Rxe::Patched => (
            format!("{name}-{}-patched-rxe", kernel.release),
            "rdma_rxe with kernel-patches/rxe",
        ),
    };
    let lines: Vec<&str> = run
        .output
        .iter()
        .map(String::as_str)
        .filter(|line| line.contains("REGCACHE-BENCH"))
        .collect();
    std::fs::write(out_dir.join(format!("{stem}.txt")), lines.join("\n") + "\n")?;
    let title = format!(
        "p2p over Soft-RoCE, rxe0 to rxe1, {}, {module} ({:?}, ratios only)",
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
    benchmark_run_passed(kernel, &verdict)?;
    if rxe == Rxe::Patched {
        if let Some(why) = figures.not_measured(odp) {
            bail!("the patched rdma_rxe ran, yet ODP was not measured: {why}");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patched_module_is_swapped_in_before_the_benchmark() {
        assert_eq!(
            p2p_bench_mode("/opt/s", None, Plan::Everything),
            "p2p-bench"
        );
        assert_eq!(
            p2p_bench_mode("/opt/s", None, Plan::FirstTouch),
            "p2p-bench first-touch"
        );
        let swap = Some("/opt/rxe-swap.sh /opt/rdma_rxe.ko");
        assert_eq!(
            p2p_bench_mode("/opt/s", swap, Plan::Everything),
            "run sh -c \"/opt/rxe-swap.sh /opt/rdma_rxe.ko && /opt/s/vmbench/p2p-bench\""
        );
        assert_eq!(
            p2p_bench_mode("/opt/s", swap, Plan::FirstTouch),
            "run sh -c \"/opt/rxe-swap.sh /opt/rdma_rxe.ko && /opt/s/vmbench/p2p-bench first-touch\""
        );
    }
}
