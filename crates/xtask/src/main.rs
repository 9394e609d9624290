//! `cargo xtask`: the project's build, VM and test automation.
//!
//! The VM harness boots Debian's own kernels (trixie-backports' newest and
//! trixie's LTS) with virtme-ng on a cached trixie rootfs, brings up Soft-RoCE
//! (rdma_rxe) in the guest, loads the regwatch module and runs the
//! integration tests there, because build machines have no RDMA device and
//! cannot load modules.
//!
//! # Where a change belongs
//!
//! - A command: `commands/` (`vm`, `check`, `bench`, `demo`), each starting
//!   from [`commands::vm::prepare`].
//! - A guest configuration (another kernel, or a kernel with a different
//!   rdma_rxe): `kernels`, which lists the kernels under test, picks them by
//!   `--kernel` and says what each must support in the guest.
//! - Something the guest runs: built on the host or in the rootfs and staged
//!   by `artefacts::stage_suite` (the module through `kmod::stage_module`);
//!   the guest script `guest/guest.sh` runs what it finds in the stage.
//! - What fails a run: `verdict` (results and exit status) and `kernel_log`.
//! - Below those: `rootfs` (the chroot), `virtme` (booting), `stage` (the
//!   staging directory), `vmdir` (the cache directory), `host` and `sh`.

mod artefacts;
mod capi;
mod commands;
mod host;
mod kernel_log;
mod kernels;
mod kmod;
mod p2p_report;
mod rootfs;
mod rust_version;
mod rxe_fix;
mod sh;
mod stage;
mod verdict;
mod virtme;
mod vmdir;

use anyhow::Result;
use clap::{Parser, Subcommand};
use commands::{bench, check, demo, docker, soak, vm};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "regcache build, VM and test automation")]
struct Cli {
    /// Cache directory for the rootfs, kernels and virtme-ng.
    #[arg(long, env = "REGCACHE_VM_DIR", global = true)]
    vm_dir: Option<PathBuf>,
    #[command(flatten)]
    pins: kernels::KernelPins,
    #[command(subcommand)]
    command: Top,
}

#[derive(Debug, Subcommand)]
enum Top {
    /// The main job: boot the newest kernel and show what regcache does.
    Demo,
    /// Everything: rustfmt, clippy, the rust-version check, unit tests, the loom
    /// models, the harness self-test, the module's build matrix, the VM suite on
    /// every kernel under test and the development image (one guest boot in it).
    Test,
    /// The loom model checks of regcache-core's lock-free core (hazard pointers, last
    /// hit), built with `--cfg loom` in target/loom.
    Loom,
    /// Check the workspace with Debian bookworm's rustc-web of the workspace's
    /// rust-version (downloaded into target/rust-version, not installed).
    RustVersion,
    /// The Soft-RoCE VM harness.
    #[command(subcommand)]
    Vm(VmCommand),
    /// The regwatch kernel module.
    #[command(subcommand)]
    Kmod(KmodCommand),
    /// Build libregcache (release) and install the library, regcache.h and regcache.pc.
    Install {
        /// Installation prefix (absolute): files go to PREFIX/lib, PREFIX/include and
        /// PREFIX/lib/pkgconfig.
        #[arg(long)]
        prefix: PathBuf,
        /// Stage the files under DESTDIR/PREFIX instead, for packaging (regcache.pc still
        /// names PREFIX).
        #[arg(long)]
        destdir: Option<PathBuf>,
    },
    /// Build the development image (docker/Dockerfile; its base with
    /// mmdebstrap when missing) with docker or podman and run a command in
    /// it, privileged, with the workspace at /src (default: cargo xtask test).
    Docker {
        #[arg(trailing_var_arg = true)]
        command: Vec<String>,
    },
    /// Benchmarks; figures go to target/bench (p2p, regwatch) or criterion's
    /// output (hit-path), and by hand to benches/RESULTS.md.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The randomized soak of the cache (every mode, and the negative control) in a guest
    /// per kernel; prints the seed, so that a failure replays with --seed.
    Soak {
        /// Operations per mode.
        #[arg(long, default_value_t = 10_000)]
        ops: u64,
        /// Seed (decimal or 0x-hex); default: from the clock.
        #[arg(long)]
        seed: Option<String>,
        /// all, backports, lts or a release prefix such as 6.12.
        #[arg(long, default_value = "all")]
        kernel: String,
        /// Every mode in a process of its own, all at once in the guest (same seed, same
        /// operations per mode; faster when the host has a free CPU for the second vCPU).
        #[arg(long)]
        parallel: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// The module's micro-benchmarks in a guest (ratios count under TCG).
    Regwatch {
        #[arg(long, default_value = "backports")]
        kernel: String,
    },
    /// Latency and bandwidth, 8 B to 16 MiB, rxe0 to rxe1 in one boot: p2p
    /// with the cache (pinned, ODP), p2p always-registering, raw verbs and
    /// perftest; then the first transfer of fresh buffers and munmap costs,
    /// ODP against pinned; markdown tables and log-log plots under target/bench.
    P2p {
        /// A configuration (backports, backports-fixed: the backports kernel
        /// with the fixed rdma_rxe, swapped in after the Soft-RoCE set-up;
        /// lts), a release prefix (every configuration of that kernel) or all:
        /// one boot each.
        #[arg(long, default_value = "backports")]
        kernel: String,
        /// Only the sizes up to this many bytes, without first-touch and munmap (e.g. 4096:
        /// the copied path, 8 B to 4 KiB, in minutes); the report is p2p-up-to-BYTES-*.
        #[arg(long)]
        max_size: Option<usize>,
    },
    /// Only the last part of `bench p2p`, in a boot of its own: the first
    /// transfer of fresh buffers (4 KiB to 16 MiB; pinned, ODP, ODP with
    /// prefetch) and the munmap of a registered 1 MiB buffer per mode.
    FirstTouch {
        /// As for `bench p2p`.
        #[arg(long, default_value = "backports")]
        kernel: String,
    },
    /// The cache's hit and miss paths, natively with criterion, beside UCX's rcache.
    HitPath,
}

#[derive(Debug, Subcommand)]
enum VmCommand {
    /// Install host packages, virtme-ng, the rootfs and the kernels (cached).
    Setup,
    /// Run the integration tests in a guest per kernel.
    Test {
        /// all, a configuration (backports, backports-fixed: the backports
        /// kernel with the fixed rdma_rxe, lts) or a release prefix such as
        /// 6.12 (every configuration of that kernel).
        #[arg(long, default_value = "all")]
        kernel: String,
    },
    /// An interactive guest with Soft-RoCE up and regwatch loaded.
    Shell {
        #[arg(long, default_value = "backports")]
        kernel: String,
    },
    /// One command in a guest; exits with its status.
    Run {
        #[arg(long, default_value = "backports")]
        kernel: String,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Boot a guest per kernel with only the module staged and check that
    /// rdma_rxe gives rxe0 and regwatch /dev/regwatch (quick: builds no tests).
    BootCheck {
        #[arg(long, default_value = "lts")]
        kernel: String,
    },
    /// Prove the harness reports a failing command and a kernel warning.
    Selftest,
    /// Build the patched rdma_rxe (kernel-patches/rxe) and run its reproducer
    /// on the stock and the patched module in one boot per kernel with rxe ODP.
    RxeFix {
        #[arg(long, default_value = "backports")]
        kernel: String,
    },
}

#[derive(Debug, Subcommand)]
enum KmodCommand {
    /// Build regwatch with -Werror for 6.1 (host) and every kernel under test.
    Build,
}

fn main() {
    let cli = Cli::parse();
    if let Err(error) = dispatch(cli) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()?;
    let vm_dir = cli.vm_dir.unwrap_or_else(|| workspace.join("target/vm"));
    let ctx = commands::Context {
        workspace,
        vm_dir,
        pins: cli.pins,
    };
    match cli.command {
        Top::Demo => demo::demo(&ctx),
        Top::Test => check::test_everything(&ctx),
        Top::Loom => check::loom(&ctx),
        Top::RustVersion => rust_version::check(&ctx.workspace),
        Top::Vm(VmCommand::Setup) => vm::prepare(&ctx).map(drop),
        Top::Vm(VmCommand::Test { kernel }) => vm::vm_test(&ctx, &kernel),
        Top::Vm(VmCommand::Shell { kernel }) => vm::vm_shell(&ctx, &kernel),
        Top::Vm(VmCommand::Run { kernel, command }) => vm::vm_run(&ctx, &kernel, &command),
        Top::Vm(VmCommand::BootCheck { kernel }) => vm::vm_boot_check(&ctx, &kernel),
        Top::Vm(VmCommand::Selftest) => vm::vm_selftest(&ctx),
        Top::Vm(VmCommand::RxeFix { kernel }) => vm::vm_rxe_fix(&ctx, &kernel),
        Top::Kmod(KmodCommand::Build) => check::kmod_build(&ctx),
        Top::Install { prefix, destdir } => {
            let prefix = std::path::absolute(&prefix)?;
            capi::install(&ctx.workspace, &prefix, destdir.as_deref())
        }
        Top::Bench(BenchCommand::Regwatch { kernel }) => bench::bench_regwatch(&ctx, &kernel),
        Top::Bench(BenchCommand::P2p { kernel, max_size }) => {
            bench::bench_p2p(&ctx, &kernel, bench::Plan::Everything { max_size })
        }
        Top::Bench(BenchCommand::FirstTouch { kernel }) => {
            bench::bench_p2p(&ctx, &kernel, bench::Plan::FirstTouch)
        }
        Top::Bench(BenchCommand::HitPath) => bench::bench_hit_path(&ctx),
        Top::Docker { command } => docker::docker(&ctx, &command),
        Top::Soak {
            ops,
            seed,
            kernel,
            parallel,
        } => soak::soak(
            &ctx,
            &soak::SoakArgs {
                ops,
                seed,
                kernel,
                parallel,
            },
        ),
    }
}
