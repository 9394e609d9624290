//! `vm setup`, `vm test`, `vm run`, `vm shell` and `vm selftest`, and
//! [`prepare`], which every command that boots a guest starts with.

use super::{Context, COMMAND_TIMEOUT, SUITE_TIMEOUT};
use crate::artefacts;
use crate::host;
use crate::kernels::{self, Configuration, Kernel, Rxe};
use crate::kmod;
use crate::rootfs::Rootfs;
use crate::rxe_fix;
use crate::stage::Stage;
use crate::verdict::{self, BootAgain, Verdict};
use crate::virtme::{self, Accel, Guest, GuestRun, Virtme};
use crate::vmdir::VmDir;
use anyhow::{bail, Result};
use std::time::{Duration, Instant};

const GUEST_MEMORY_GIB: u32 = 4;
const GUEST_CPUS: u32 = 2;

/// Everything a guest boot needs, installed and cached.
#[derive(Debug)]
pub struct Prepared {
    virtme: Virtme,
    pub rootfs: Rootfs,
    /// Every kernel under test, newest first.
    pub kernels: Vec<Kernel>,
    pub accel: Accel,
}

impl Prepared {
    /// The guest of a judged run: with its boot console, so that a guest
    /// that dies leaves its kernel's last words.
    fn judged_guest(&self) -> Guest<'_> {
        Guest {
            boot_console: true,
            ..self.guest()
        }
    }

    pub fn guest(&self) -> Guest<'_> {
        Guest {
            virtme: &self.virtme,
            rootfs: &self.rootfs,
            accel: self.accel,
            memory_gib: GUEST_MEMORY_GIB,
            cpus: GUEST_CPUS,
            boot_console: false,
        }
    }

    /// The kernels under test a `--kernel` selector picks.
    pub fn select_kernels(&self, selector: &str) -> Result<Vec<Kernel>> {
        kernels::select(&self.kernels, selector)
    }

    /// The guest configurations a `--kernel` selector picks.
    pub fn select_configurations(&self, selector: &str) -> Result<Vec<Configuration>> {
        kernels::select_configurations(&kernels::configurations(&self.kernels), selector)
    }
}

/// The guest environment of `config`: what it must support and, with the
/// fixed rdma_rxe, `REGCACHE_RXE_SWAP`, the command that swaps it in (built
/// from Debian's source of the kernel first, or taken from the rootfs's cache).
pub fn guest_environment(ctx: &Context, rootfs: &Rootfs, config: &Configuration) -> Result<String> {
    let expectations = config.guest_expectations();
    match config.rxe {
        Rxe::Stock => Ok(expectations),
        Rxe::Fixed => {
            let patched = rxe_fix::build_patched(&ctx.workspace, rootfs, &config.kernel)?;
            Ok(format!(
                "{expectations} REGCACHE_RXE_SWAP={}",
                shell_quote(&patched.swap_command)
            ))
        }
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
    let kernels = kernels::under_test(&vm, &rootfs, &ctx.pins)?;
    for kernel in &kernels {
        kernel.ensure_installed(&rootfs)?;
    }
    host::assert_no_trixie_sources()?;
    let accel = virtme::detect_accel(&kernels[0].vmlinuz(&rootfs));
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

/// Boots each configuration with the suite and prints a summary per
/// configuration, with the boot console kept and a lost first boot tried
/// again ([`boot_and_judge`]).
fn run_suite(
    ctx: &Context,
    prepared: &Prepared,
    stage: &Stage,
    configurations: &[Configuration],
) -> Result<()> {
    let mut verdicts = Vec::new();
    for config in configurations {
        let environment = guest_environment(ctx, &prepared.rootfs, config)?;
        let exec = stage.exec_line_in(&environment, "test");
        let judged = boot_and_judge(
            prepared,
            &config.kernel,
            &config.describe(),
            &exec,
            SUITE_TIMEOUT,
        )?;
        verdicts.push((config, judged));
    }
    eprintln!("==> VM suite summary");
    for (config, judged) in &verdicts {
        let state = if judged.verdict.ok() { "PASS" } else { "FAIL" };
        eprintln!(
            "    {state} {}{} in {} s: {}",
            config.describe(),
            judged.second_boot_note(),
            judged.run.elapsed.as_secs(),
            judged.verdict.summary()
        );
    }
    let failed = verdicts.iter().filter(|(_, j)| !j.verdict.ok()).count();
    if failed > 0 {
        bail!(
            "the VM suite failed in {failed} of {} guest configurations",
            verdicts.len()
        );
    }
    Ok(())
}

/// A guest run judged by [`boot_and_judge`].
pub(crate) struct Judged {
    /// The boot that gave the verdict.
    pub(crate) run: GuestRun,
    pub(crate) verdict: Verdict,
    /// Why the first boot was not the verdict, when it was not.
    pub(crate) first_boot_lost: Option<BootAgain>,
}

impl Judged {
    pub(crate) fn second_boot_note(&self) -> String {
        self.first_boot_lost.map_or(String::new(), |why| {
            format!(" (second boot: in the first, {})", why.describe())
        })
    }
}

/// Boots `kernel` to run `exec` in `prepared`'s guest, with its boot console
/// ([`Prepared::judged_guest`]), and judges the run. A run whose failure says
/// nothing about the code under test (`verdict::BootAgain`: the kernel
/// faulted or stopped before the guest script started, or the guest died
/// with nothing failed and no fault) is booted once more, aloud, and the
/// second boot is the verdict. `what` names the run in what is printed.
pub(crate) fn boot_and_judge(
    prepared: &Prepared,
    kernel: &Kernel,
    what: &str,
    exec: &str,
    timeout: Duration,
) -> Result<Judged> {
    let guest = prepared.judged_guest();
    let mut run = guest.run(kernel, exec, timeout)?;
    let mut verdict = verdict::judge(&run);
    let first_boot_lost = verdict.boot_again;
    if let Some(why) = first_boot_lost {
        eprintln!(
            "    {what}: {}; booting once more: {}",
            why.describe(),
            verdict.summary()
        );
        run = guest.run(kernel, exec, timeout)?;
        verdict = verdict::judge(&run);
    }
    Ok(Judged {
        run,
        verdict,
        first_boot_lost,
    })
}

/// `vm test`.
pub fn vm_test(ctx: &Context, selector: &str) -> Result<()> {
    let prepared = prepare(ctx)?;
    let configurations = prepared.select_configurations(selector)?;
    let mut kernels: Vec<Kernel> = configurations.iter().map(|c| c.kernel.clone()).collect();
    kernels.dedup();
    let stage = artefacts::stage_suite(&ctx.workspace, &prepared.rootfs, &kernels)?;
    run_suite(ctx, &prepared, &stage, &configurations)
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Runs the guest script's `run` mode with `command_line` on `kernel` and
/// judges the run ([`boot_and_judge`]).
fn run_command(
    prepared: &Prepared,
    stage: &Stage,
    kernel: &Kernel,
    command_line: &str,
) -> Result<Judged> {
    boot_and_judge(
        prepared,
        kernel,
        &kernel.release,
        &stage.exec_line(kernel, &format!("run {command_line}")),
        COMMAND_TIMEOUT,
    )
}

/// `vm run --kernel K -- CMD`: exits non-zero when the command or the kernel log failed.
pub fn vm_run(ctx: &Context, selector: &str, command: &[String]) -> Result<()> {
    let prepared = prepare(ctx)?;
    let kernels = prepared.select_kernels(selector)?;
    let stage = artefacts::stage_suite(&ctx.workspace, &prepared.rootfs, &kernels)?;
    let line: Vec<String> = command.iter().map(|w| shell_quote(w)).collect();
    for kernel in &kernels {
        let judged = run_command(&prepared, &stage, kernel, &line.join(" "))?;
        if !judged.verdict.ok() {
            bail!(
                "{}{}: {}",
                kernel.release,
                judged.second_boot_note(),
                judged.verdict.summary()
            );
        }
    }
    Ok(())
}

/// What `vm boot-check` asks of the guest: the guest script has brought
/// rdma_rxe up and loaded regwatch (it fails the run otherwise); this shows
/// both are really there: rxe0's port active, /dev/regwatch a device.
const BOOT_CHECK: &str = "grep -q ACTIVE /sys/class/infiniband/rxe0/ports/1/state \
     && test -c /dev/regwatch \
     && echo \"boot check: rxe0 port $(cat /sys/class/infiniband/rxe0/ports/1/state), \
     /dev/regwatch present\"";

/// `vm boot-check --kernel K`: one guest per selected kernel with only the
/// module staged (no test executables built): rdma_rxe must give rxe0 and
/// regwatch /dev/regwatch. The least a guest boot needs, for the container
/// image's check in `cargo xtask test`. The boot console is kept and a lost
/// first boot tried again ([`boot_and_judge`]), so that a failure in CI says
/// why.
pub fn vm_boot_check(ctx: &Context, selector: &str) -> Result<()> {
    let prepared = prepare(ctx)?;
    let kernels = prepared.select_kernels(selector)?;
    let stage = Stage::fresh(&prepared.rootfs)?;
    kmod::stage_required_module(
        &ctx.workspace,
        &prepared.rootfs,
        &stage,
        &kernels,
        kmod::With::Nothing,
        "vm boot-check",
    )?;
    let line = format!("sh -c {}", shell_quote(BOOT_CHECK));
    for kernel in &kernels {
        let judged = run_command(&prepared, &stage, kernel, &line)?;
        if !judged.verdict.ok() {
            bail!(
                "{}: no rxe0 or no /dev/regwatch{}: {}",
                kernel.release,
                judged.second_boot_note(),
                judged.verdict.summary()
            );
        }
        eprintln!("    {}: rxe0 and /dev/regwatch present", kernel.release);
    }
    Ok(())
}

/// `vm shell`.
pub fn vm_shell(ctx: &Context, selector: &str) -> Result<()> {
    let prepared = prepare(ctx)?;
    let kernels = prepared.select_kernels(selector)?;
    let stage = artefacts::stage_suite(&ctx.workspace, &prepared.rootfs, &kernels[..1])?;
    prepared
        .guest()
        .interactive(&kernels[0], &stage.exec_line(&kernels[0], "shell"))
}

/// `vm selftest`: the harness must fail a guest command that exits 1 and
/// one that leaves a kernel warning, and pass a clean one.
pub fn vm_selftest(ctx: &Context) -> Result<()> {
    let prepared = prepare(ctx)?;
    let stage = Stage::fresh(&prepared.rootfs)?;
    let kernel = &prepared.select_kernels("lts")?[0];
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
        let judged = run_command(&prepared, &stage, kernel, command)?;
        let verdict = &judged.verdict;
        let right = verdict.ok() == should_pass;
        let reading = format!(
            "{name}: reported as {} ({}){}{}",
            if verdict.ok() { "pass" } else { "failure" },
            if right { "correct" } else { "WRONG" },
            judged.second_boot_note(),
            if verdict.ok() {
                String::new()
            } else {
                format!(": {}", verdict.summary())
            }
        );
        eprintln!("    selftest: {reading}");
        if !right {
            wrong.push(reading);
        }
    }
    if !wrong.is_empty() {
        bail!("harness selftest: misjudged\n{}", wrong.join("\n"));
    }
    eprintln!("    selftest: all 3 cases judged correctly");
    Ok(())
}

/// `vm rxe-fix`: one boot per selected kernel whose rdma_rxe has ODP; the
/// reproducer of `kernel-patches/rxe` must fail on the stock module, then
/// pass on the patched one.
pub fn vm_rxe_fix(ctx: &Context, selector: &str) -> Result<()> {
    let prepared = prepare(ctx)?;
    let kernels: Vec<Kernel> = prepared
        .select_kernels(selector)?
        .into_iter()
        .filter(Kernel::rxe_has_odp)
        .collect();
    if kernels.is_empty() {
        bail!("--kernel {selector} selects no kernel whose rdma_rxe has ODP");
    }
    let stage = Stage::fresh(&prepared.rootfs)?;
    rxe_fix::build_reproducer(&ctx.workspace, &stage.dir.join("bin"))?;
    let repro = format!("{}/bin/rxe_odp_repro", stage.guest_dir);
    for kernel in &kernels {
        let patched = rxe_fix::build_patched(&ctx.workspace, &prepared.rootfs, kernel)?;
        let script = format!(
            "echo '== stock rdma_rxe'; {repro}; stock=$?; \
             echo \"== stock: exit $stock\"; {swap} || exit 2; \
             echo '== patched rdma_rxe'; {repro}; fixed=$?; \
             echo \"== patched: exit $fixed\"; [ $stock -eq 1 ] && [ $fixed -eq 0 ]",
            swap = patched.swap_command
        );
        let judged = run_command(
            &prepared,
            &stage,
            kernel,
            &format!("sh -c {}", shell_quote(&script)),
        )?;
        if !judged.verdict.ok() {
            bail!(
                "{}: the reproducer did not fail on the stock rdma_rxe and pass on the patched one{}: {}",
                kernel.release,
                judged.second_boot_note(),
                judged.verdict.summary()
            );
        }
        eprintln!(
            "    {}: the reproducer fails on the stock rdma_rxe and passes on the patched one",
            kernel.release
        );
    }
    Ok(())
}
