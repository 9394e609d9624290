//! `test`, every check in order, and `kmod build`, the module's build matrix.

use super::docker;
use super::vm::{self, prepare};
use super::Context;
use crate::host;
use crate::kmod;
use crate::rust_version;
use crate::sh::{self, cmd};
use crate::stage::Stage;
use anyhow::{bail, Result};

/// `kmod build`: the three-kernel matrix, all with -Werror.
pub fn kmod_build(ctx: &Context) -> Result<()> {
    let host_release = kmod::build_on_host(&ctx.workspace, &ctx.workspace.join("target/kmod"))?;
    let prepared = prepare(ctx)?;
    let stage = Stage::fresh(&prepared.rootfs)?;
    kmod::stage_module(
        &ctx.workspace,
        &prepared.rootfs,
        &stage,
        &prepared.kernels,
        kmod::With::Nothing,
    )?;
    let built: Vec<&str> = std::iter::once(host_release.as_str())
        .chain(prepared.kernels.iter().map(|k| k.release.as_str()))
        .collect();
    eprintln!("    regwatch built with -Werror for: {}", built.join(", "));
    Ok(())
}

/// `loom`: regcache-core's model checks (the `loom` tests of `hazard.rs` and `last_hit.rs`),
/// in release (loom explores thousands of interleavings per model) and in their own target
/// directory, since `--cfg loom` changes every crate's flags and would rebuild the normal
/// build's. One test at a time, so each model's result shows as it finishes.
pub fn loom(ctx: &Context) -> Result<()> {
    eprintln!("    with RUSTFLAGS=\"--cfg loom\" CARGO_TARGET_DIR=target/loom");
    sh::run(
        cmd(
            "cargo",
            [
                "test",
                "-p",
                "regcache-core",
                "--release",
                "--lib",
                "loom",
                "--",
                "--test-threads=1",
            ],
        )
        .current_dir(&ctx.workspace)
        .env("RUSTFLAGS", "--cfg loom")
        .env("CARGO_TARGET_DIR", ctx.workspace.join("target/loom")),
    )
}

/// One named check of `cargo xtask test`.
type Step<'a> = Box<dyn Fn() -> Result<()> + 'a>;

/// `test`: every check, in order, each reported; fails if any failed.
pub fn test_everything(ctx: &Context) -> Result<()> {
    host::install_packages()?;
    let cargo =
        |args: &[&str]| -> Result<()> { sh::run(cmd("cargo", args).current_dir(&ctx.workspace)) };
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
        (
            "rust-version: the workspace with Debian's rustc-web of that version",
            Box::new(|| rust_version::check(&ctx.workspace)),
        ),
        ("unit tests", Box::new(|| cargo(&["test", "--workspace"]))),
        ("loom models", Box::new(|| loom(ctx))),
        ("VM harness selftest", Box::new(|| vm::vm_selftest(ctx))),
    ];
    if kmod::module_exists(&ctx.workspace) {
        steps.push(("regwatch build matrix", Box::new(|| kmod_build(ctx))));
    }
    steps.push(("VM suite", Box::new(|| vm::vm_test(ctx, "all"))));
    steps.push((
        "the development image (docker/Dockerfile): build, one guest boot in it",
        Box::new(|| docker::check_image(ctx)),
    ));
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
