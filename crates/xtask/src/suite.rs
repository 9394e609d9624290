//! The commands: set-up, the VM suite, the harness self-test, the module
//! build matrix, the demo and the whole test run.

use crate::guest::{self, Stage, Verdict};
use crate::host;
use crate::kmod::{self, CPrograms};
use crate::p2p_report::Figures;
use crate::rootfs::{Kernel, Rootfs};
use crate::sh::{self, cmd};
use crate::virtme::{self, Accel, Guest, Virtme};
use crate::vmdir::{self, KernelPins, VmDir};
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Per-guest time limit for the test suite; TCG is slow, a hang is not.
const SUITE_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// Time limit for one command, a demo or a self-test case.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const GUEST_MEMORY_GIB: u32 = 4;
const GUEST_CPUS: u32 = 2;

#[derive(Debug)]
pub struct Context {
    pub workspace: PathBuf,
    pub vm_dir: PathBuf,
    pub pins: KernelPins,
}

/// Everything a guest boot needs, installed and cached.
#[derive(Debug)]
pub struct Prepared {
    virtme: Virtme,
    rootfs: Rootfs,
    kernels: Vec<Kernel>,
    accel: Accel,
}

impl Prepared {
    fn guest(&self) -> Guest<'_> {
        Guest {
            virtme: &self.virtme,
            rootfs: &self.rootfs,
            accel: self.accel,
            memory_gib: GUEST_MEMORY_GIB,
            cpus: GUEST_CPUS,
        }
    }

    fn kernels(&self, selector: &str) -> Result<Vec<Kernel>> {
        vmdir::select(self.kernels.clone(), selector)
    }
}

/// `vm setup`: host packages, virtme-ng, rootfs, kernels, KVM or TCG.
pub fn prepare(ctx: &Context) -> Result<Prepared> {
    let started = Instant::now();
    eprintln!("==> VM set-up (cache: {})", ctx.vm_dir.display());
    host::require_root("the VM harness")?;
    host::install_packages()?;
    let vm = VmDir::new(ctx.vm_dir.clone())?;
    let virtme = Virtme::ensure(&vm)?;
    let rootfs = Rootfs::locate(&vm);
    rootfs.ensure_base()?;
    let kernels = vmdir::kernels_under_test(&vm, &rootfs, &ctx.pins)?;
    for kernel in &kernels {
        rootfs.ensure_kernel(kernel)?;
    }
    host::assert_no_trixie_sources()?;
    let accel = virtme::detect_accel(&rootfs.vmlinuz(&kernels[0]));
    eprintln!(
        "    VM set-up ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(Prepared {
        virtme,
        rootfs,
        kernels,
        accel,
    })
}

/// Runs a cargo build with `args` and returns the executables it reports
/// for which `wanted` holds (given the compiler-artifact message).
fn cargo_executables(
    ctx: &Context,
    args: &[&str],
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> Result<Vec<PathBuf>> {
    let json = sh::output(
        cmd("cargo", args.iter().chain(&["--message-format=json"])).current_dir(&ctx.workspace),
    )?;
    let mut executables = Vec::new();
    for line in json.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact" && wanted(&message) {
            if let Some(exe) = message["executable"].as_str() {
                executables.push(PathBuf::from(exe));
            }
        }
    }
    if executables.is_empty() {
        bail!("`cargo {}` built no executable", args.join(" "));
    }
    Ok(executables)
}

/// Builds the integration-test executables on the host and returns their paths.
fn build_test_binaries(ctx: &Context) -> Result<Vec<PathBuf>> {
    sh::step(
        "building the integration tests (rdma-tests) on the host",
        || {
            cargo_executables(
                ctx,
                &["test", "--package", "rdma-tests", "--no-run"],
                |message| message["profile"]["test"] == true,
            )
        },
    )
}

/// Builds `p2p-bench` (benches/vm) with optimisations and returns its path.
fn build_p2p_bench(ctx: &Context) -> Result<PathBuf> {
    sh::step("building p2p-bench (release) on the host", || {
        let built = cargo_executables(
            ctx,
            &["build", "--release", "--package", "regcache-vm-bench"],
            |message| message["target"]["name"] == "p2p-bench",
        )?;
        Ok(built[0].clone())
    })
}

/// Fills the guest's staging directory: test binaries, `p2p-bench` (whose
/// short plan the suite runs as a test and the demo shows), the module for
/// each kernel and the module's C tests.
fn stage_suite(ctx: &Context, prepared: &Prepared, kernels: &[Kernel]) -> Result<Stage> {
    let binaries = build_test_binaries(ctx)?;
    let stage = Stage::fresh(&prepared.rootfs)?;
    for exe in &binaries {
        stage.add_executable(exe, "bin")?;
    }
    stage.add_executable(&build_p2p_bench(ctx)?, "vmbench")?;
    if kmod::module_exists(&ctx.workspace) {
        for kernel in kernels {
            kmod::build_in_rootfs(&ctx.workspace, &prepared.rootfs, &stage, kernel)?;
        }
        kmod::build_c_programs(&ctx.workspace, &prepared.rootfs, &stage, CPrograms::Tests)?;
        stage.add_dkms_source(&ctx.workspace.join("kmod"))?;
        kmod::dkms_install_in_rootfs(&prepared.rootfs, &stage, kernels)?;
    }
    Ok(stage)
}

/// Boots each kernel with the suite and prints a summary per kernel.
fn run_suite(prepared: &Prepared, stage: &Stage, kernels: &[Kernel]) -> Result<()> {
    let mut verdicts = Vec::new();
    for kernel in kernels {
        let run = prepared
            .guest()
            .run(kernel, &stage.exec_line(kernel, "test"), SUITE_TIMEOUT)?;
        verdicts.push((kernel, guest::judge(&run), run.elapsed));
    }
    eprintln!("==> VM suite summary");
    for (kernel, verdict, elapsed) in &verdicts {
        let state = if verdict.ok() { "PASS" } else { "FAIL" };
        eprintln!(
            "    {state} {} in {} s: {}",
            kernel.release,
            elapsed.as_secs(),
            verdict.summary()
        );
    }
    let failed = verdicts.iter().filter(|(_, v, _)| !v.ok()).count();
    if failed > 0 {
        bail!(
            "the VM suite failed on {failed} of {} kernels",
            verdicts.len()
        );
    }
    Ok(())
}

/// `vm test`.
pub fn vm_test(ctx: &Context, selector: &str) -> Result<()> {
    let prepared = prepare(ctx)?;
    let kernels = prepared.kernels(selector)?;
    let stage = stage_suite(ctx, &prepared, &kernels)?;
    run_suite(&prepared, &stage, &kernels)
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Runs the guest script in one mode on `kernel` and judges the run.
fn run_in_guest(
    prepared: &Prepared,
    stage: &Stage,
    kernel: &Kernel,
    mode_and_args: &str,
) -> Result<Verdict> {
    let run = prepared.guest().run(
        kernel,
        &stage.exec_line(kernel, mode_and_args),
        COMMAND_TIMEOUT,
    )?;
    Ok(guest::judge(&run))
}

/// `vm run --kernel K -- CMD`: exits non-zero when the command or the kernel log failed.
pub fn vm_run(ctx: &Context, selector: &str, command: &[String]) -> Result<()> {
    let prepared = prepare(ctx)?;
    let kernels = prepared.kernels(selector)?;
    let stage = stage_suite(ctx, &prepared, &kernels)?;
    let line: Vec<String> = command.iter().map(|w| shell_quote(w)).collect();
    for kernel in &kernels {
        let verdict = run_in_guest(
            &prepared,
            &stage,
            kernel,
            &format!("run {}", line.join(" ")),
        )?;
        if !verdict.ok() {
            bail!("{}: {}", kernel.release, verdict.summary());
        }
    }
    Ok(())
}

/// `vm shell`.
pub fn vm_shell(ctx: &Context, selector: &str) -> Result<()> {
    let prepared = prepare(ctx)?;
    let kernels = prepared.kernels(selector)?;
    let stage = stage_suite(ctx, &prepared, &kernels[..1])?;
    prepared
        .guest()
        .interactive(&kernels[0], &stage.exec_line(&kernels[0], "shell"))
}

/// `vm selftest`: the harness must fail a guest command that exits 1 and
/// one that leaves a kernel warning, and pass a clean one.
pub fn vm_selftest(ctx: &Context) -> Result<()> {
    let prepared = prepare(ctx)?;
    let stage = Stage::fresh(&prepared.rootfs)?;
    let kernel = &prepared.kernels("lts")?[0];
    let cases = [
        ("a command exiting 1", "false", false),
        (
            "a kernel WARNING",
            "sh -c 'echo \"WARNING: regcache harness selftest\" > /dev/kmsg'",
            false,
        ),
        ("a clean command", "true", true),
    ];
    let mut wrong = Vec::new();
    for (name, command, should_pass) in cases {
        let verdict = run_in_guest(&prepared, &stage, kernel, &format!("run {command}"))?;
        let judged = if verdict.ok() { "pass" } else { "failure" };
        let right = verdict.ok() == should_pass;
        eprintln!(
            "    selftest: {name}: reported as {judged} ({}){}",
            if right { "correct" } else { "WRONG" },
            if verdict.ok() {
                String::new()
            } else {
                format!(": {}", verdict.summary())
            }
        );
        if !right {
            wrong.push(name);
        }
    }
    if !wrong.is_empty() {
        bail!("harness selftest: misjudged {}", wrong.join(", "));
    }
    eprintln!("    selftest: all 3 cases judged correctly");
    Ok(())
}

/// `kmod build`: the three-kernel matrix, all with -Werror.
pub fn kmod_build(ctx: &Context) -> Result<()> {
    if !kmod::module_exists(&ctx.workspace) {
        bail!(
            "no kmod/Kbuild in {}: nothing to build",
            ctx.workspace.display()
        );
    }
    let host_release = kmod::build_on_host(&ctx.workspace, &ctx.workspace.join("target/kmod"))?;
    let prepared = prepare(ctx)?;
    let stage = Stage::fresh(&prepared.rootfs)?;
    for kernel in &prepared.kernels {
        kmod::build_in_rootfs(&ctx.workspace, &prepared.rootfs, &stage, kernel)?;
    }
    let built: Vec<&str> = std::iter::once(host_release.as_str())
        .chain(prepared.kernels.iter().map(|k| k.release.as_str()))
        .collect();
    eprintln!("    regwatch built with -Werror for: {}", built.join(", "));
    Ok(())
}

/// `demo`: the newest kernel, its rxe devices and their ODP caps, the
/// integration tests' transfers with their output shown, and the latency
/// table of the benchmark's short plan.
pub fn demo(ctx: &Context) -> Result<()> {
    let prepared = prepare(ctx)?;
    let kernel = &prepared.kernels("backports")?[0];
    let stage = stage_suite(ctx, &prepared, std::slice::from_ref(kernel))?;
    let run = prepared
        .guest()
        .run(kernel, &stage.exec_line(kernel, "demo"), COMMAND_TIMEOUT)?;
    let verdict = guest::judge(&run);
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

/// One named check of `cargo xtask test`.
type Step<'a> = Box<dyn Fn() -> Result<()> + 'a>;

/// `test`: every check, in order, each reported; fails if any failed.
pub fn test_everything(ctx: &Context) -> Result<()> {
    host::install_packages()?;
    let cargo =
        |args: &[&str]| -> Result<()> { sh::run(cmd("cargo", args).current_dir(&ctx.workspace)) };
    let module = kmod::module_exists(&ctx.workspace);
    let mut steps: Vec<(&str, Step<'_>)> = vec![
        ("rustfmt", Box::new(|| cargo(&["fmt", "--all", "--check"]))),
        (
            "clippy",
            Box::new(|| {
                cargo(&[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ])
            }),
        ),
        ("unit tests", Box::new(|| cargo(&["test", "--workspace"]))),
        ("VM harness selftest", Box::new(|| vm_selftest(ctx))),
    ];
    if module {
        steps.push(("regwatch build matrix", Box::new(|| kmod_build(ctx))));
    }
    steps.push(("VM suite", Box::new(|| vm_test(ctx, "all"))));
    let mut failed = Vec::new();
    for (name, body) in &steps {
        if let Err(error) = sh::step(name, body) {
            eprintln!("error: {error:#}");
            failed.push(*name);
        }
    }
    eprintln!("==> cargo xtask test: summary");
    for (name, _) in &steps {
        let state = if failed.contains(name) {
            "FAIL"
        } else {
            "ok  "
        };
        eprintln!("    {state} {name}");
    }
    println!(
        "xtask test: {} passed, {} failed",
        steps.len() - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

/// `bench regwatch`: the module's micro-benchmarks in a guest; the lines
/// they print are kept in `target/bench/regwatch-<kernel>.txt`.
pub fn bench_regwatch(ctx: &Context, selector: &str) -> Result<()> {
    if !kmod::module_exists(&ctx.workspace) {
        bail!(
            "no kmod/Kbuild in {}: nothing to benchmark",
            ctx.workspace.display()
        );
    }
    let prepared = prepare(ctx)?;
    let kernels = prepared.kernels(selector)?;
    let stage = Stage::fresh(&prepared.rootfs)?;
    for kernel in &kernels {
        kmod::build_in_rootfs(&ctx.workspace, &prepared.rootfs, &stage, kernel)?;
    }
    kmod::build_c_programs(&ctx.workspace, &prepared.rootfs, &stage, CPrograms::Benches)?;
    let out_dir = ctx.workspace.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    for kernel in &kernels {
        let run = prepared
            .guest()
            .run(kernel, &stage.exec_line(kernel, "bench"), SUITE_TIMEOUT)?;
        let verdict = guest::judge(&run);
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
    let kernel = &prepared.kernels(selector)?[0];
    let stage = Stage::fresh(&prepared.rootfs)?;
    if kmod::module_exists(&ctx.workspace) {
        kmod::build_in_rootfs(&ctx.workspace, &prepared.rootfs, &stage, kernel)?;
    }
    stage.add_executable(&build_p2p_bench(ctx)?, "vmbench")?;
    let run = prepared
        .guest()
        .run(kernel, &stage.exec_line(kernel, "p2p-bench"), SUITE_TIMEOUT)?;
    let verdict = guest::judge(&run);
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

/// TEMP wiring of `rxe_fix` (the lead redoes it on the new structure):
/// `vm rxe-fix`, one boot per kernel with ODP: the reproducer on the stock
/// rdma_rxe must fail, then on the patched one must pass.
pub fn vm_rxe_fix(ctx: &Context, selector: &str) -> Result<()> {
    let prepared = prepare(ctx)?;
    let kernels: Vec<Kernel> = prepared
        .kernels(selector)?
        .into_iter()
        .filter(Kernel::rxe_has_odp)
        .collect();
    if kernels.is_empty() {
        bail!("--kernel {selector} selects no kernel whose rdma_rxe has ODP");
    }
    let stage = Stage::fresh(&prepared.rootfs)?;
    crate::rxe_fix::build_reproducer(&ctx.workspace, &stage.dir.join("bin"))?;
    let repro = format!("{}/bin/rxe_odp_repro", stage.guest_dir);
    for kernel in &kernels {
        let patched = crate::rxe_fix::build_patched(&ctx.workspace, &prepared.rootfs, kernel)?;
        let script = format!(
            "echo '== stock rdma_rxe'; {repro}; stock=$?; \
             echo \"== stock: exit $stock\"; {swap} || exit 2; \
             echo '== patched rdma_rxe'; {repro}; fixed=$?; \
             echo \"== patched: exit $fixed\"; [ $stock -eq 1 ] && [ $fixed -eq 0 ]",
            swap = patched.swap_command
        );
        let verdict = run_in_guest(
            &prepared,
            &stage,
            kernel,
            &format!("run sh -c {}", shell_quote(&script)),
        )?;
        if !verdict.ok() {
            bail!(
                "{}: the reproducer did not fail on the stock rdma_rxe and pass on the patched one: {}",
                kernel.release,
                verdict.summary()
            );
        }
        eprintln!(
            "    {}: the reproducer fails on the stock rdma_rxe and passes on the patched one",
            kernel.release
        );
    }
    Ok(())
}
