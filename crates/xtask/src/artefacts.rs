//! What the guests run, built on the host and staged: the integration-test
//! executables, `p2p-bench`, the module, and libregcache with its C tests. [`stage_suite`] is the one list
//! of what a suite run stages.

use crate::capi;
use crate::kernels::Kernel;
use crate::kmod;
use crate::rootfs::Rootfs;
use crate::sh::{self, cmd};
use crate::stage::Stage;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Runs a cargo build with `args` and returns the executables it reports
/// for which `wanted` holds (given the compiler-artifact message).
fn cargo_executables(
    workspace: &Path,
    args: &[&str],
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> Result<Vec<PathBuf>> {
    let json = sh::output(
        cmd("cargo", args.iter().chain(&["--message-format=json"])).current_dir(workspace),
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
fn build_test_binaries(workspace: &Path) -> Result<Vec<PathBuf>> {
    sh::step(
        "building the integration tests (rdma-tests) on the host",
        || {
            cargo_executables(
                workspace,
                &["test", "--package", "rdma-tests", "--no-run"],
                |message| message["profile"]["test"] == true,
            )
        },
    )
}

/// Builds executable `name` of `package` with optimisations and stages it in
/// `vmbench/`, where the guest script finds the benchmarks and the soak.
fn stage_release_executable(
    workspace: &Path,
    stage: &Stage,
    package: &str,
    name: &str,
) -> Result<()> {
    let exe = sh::step(
        &format!("building {name} ({package}, release) on the host"),
        || {
            let built = cargo_executables(
                workspace,
                &["build", "--release", "--package", package, "--bin", name],
                |message| message["target"]["name"] == name,
            )?;
            Ok(built[0].clone())
        },
    )?;
    stage.add_executable(&exe, "vmbench")
}

/// Builds `p2p-bench` (benches/vm) with optimisations and stages it.
pub fn stage_p2p_bench(workspace: &Path, stage: &Stage) -> Result<()> {
    stage_release_executable(workspace, stage, "regcache-vm-bench", "p2p-bench")
}

/// Builds the randomized soak (rdma-tests' `soak`) with optimisations and stages it.
pub fn stage_soak(workspace: &Path, stage: &Stage) -> Result<()> {
    stage_release_executable(workspace, stage, "rdma-tests", "soak")
}

/// A fresh stage with everything the guest script's test, run, shell and
/// demo modes use: the test executables, `p2p-bench` (whose short plan the
/// suite runs as a test and the demo shows), the module for each kernel, its
/// C tests and its DKMS install, and libregcache installed in the stage with
/// the C API's tests and example built against it.
pub fn stage_suite(workspace: &Path, rootfs: &Rootfs, kernels: &[Kernel]) -> Result<Stage> {
    let binaries = build_test_binaries(workspace)?;
    let stage = Stage::fresh(rootfs)?;
    for exe in &binaries {
        stage.add_executable(exe, "bin")?;
    }
    stage_p2p_bench(workspace, &stage)?;
    // Optional: a workspace without kmod/ runs the suite without a module.
    kmod::stage_module(workspace, rootfs, &stage, kernels, kmod::With::TestsAndDkms)?;
    capi::build_c_tests(workspace, rootfs, &stage)?;
    Ok(stage)
}
