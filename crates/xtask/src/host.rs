//! The build host: its Debian packages and its privileges.

use crate::sh::{self, cmd};
use anyhow::{bail, Result};

/// Debian bookworm packages the host needs (docker/Dockerfile installs them
/// too): the verbs headers for `rdma-sys` (and libclang for its bindgen),
/// QEMU and mmdebstrap for the guest, modprobe and busybox for virtme-ng's
/// initramfs (and `file`, with which virtme-ng checks that busybox is
/// static), the 6.1 kernel headers for the module's build matrix, UCX for the
/// reference benchmark, gnuplot for the latency plots, and git (the fixed
/// rdma_rxe's build is keyed by `git patch-id`).
pub const HOST_PACKAGES: &[&str] = &[
    "build-essential",
    "pkg-config",
    "libibverbs-dev",
    "librdmacm-dev",
    "libclang-dev",
    "qemu-system-x86",
    "mmdebstrap",
    "python3-venv",
    "kmod",
    "busybox-static",
    "file",
    "linux-headers-amd64",
    "libucx-dev",
    "gnuplot-nox",
    "git",
];

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails with a clear message unless running as root; `why` says what needs it.
pub fn require_root(why: &str) -> Result<()> {
    if !is_root() {
        bail!("{why} needs root (chroot, mmdebstrap and apt); run `cargo xtask` as root, e.g. with sudo -E");
    }
    Ok(())
}

fn missing_packages(packages: &[&'static str]) -> Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for package in packages {
        let status = cmd("dpkg-query", ["-W", "-f=${Status}", package])
            .stdin(std::process::Stdio::null())
            .output()?;
        if !String::from_utf8_lossy(&status.stdout).contains("install ok installed") {
            missing.push(*package);
        }
    }
    Ok(missing)
}

/// Installs the host packages that are not installed yet (bookworm's own
/// suites only: the host's apt sources are never touched).
pub fn install_packages() -> Result<()> {
    install(HOST_PACKAGES)
}

/// Installs those of `packages` that are not installed yet, with apt.
pub fn install(packages: &[&'static str]) -> Result<()> {
    let missing = missing_packages(packages)?;
    if missing.is_empty() {
        eprintln!("    host packages: all {} present", packages.len());
        return Ok(());
    }
    if !is_root() {
        bail!(
            "host packages missing: {}; as root run: apt-get install -y {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    sh::step(
        &format!("installing host packages: {}", missing.join(" ")),
        || {
            sh::run(&mut cmd("apt-get", ["update", "-q"]))?;
            sh::run(
                cmd(
                    "apt-get",
                    ["install", "-y", "-q", "--no-install-recommends"],
                )
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            )
        },
    )
}

/// Asserts the host's apt sources name no trixie suite: guests get trixie in
/// their own rootfs, and adding it to the host would upgrade its libc.
pub fn assert_no_trixie_sources() -> Result<()> {
    let listing = sh::output(&mut cmd(
        "sh",
        [
            "-c",
            "cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null || true",
        ],
    ))?;
    if listing
        .lines()
        .any(|line| !line.trim_start().starts_with('#') && line.contains("trixie"))
    {
        bail!("the host's apt sources name trixie; remove it (it upgrades the host's libc)");
    }
    Ok(())
}
