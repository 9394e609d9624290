//! The cache directory for everything the VM harness downloads or builds, and
//! which kernels are under test.

use crate::rootfs::{Kernel, Rootfs};
use anyhow::{Context, Result};
use std::fs;
use std::path::PathBuf;

/// Where the harness keeps its downloads: `target/vm` unless overridden.
#[derive(Debug)]
pub struct VmDir {
    pub root: PathBuf,
}

impl VmDir {
    pub fn new(root: PathBuf) -> Result<Self> {
        fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let root = root.canonicalize()?;
        Ok(VmDir { root })
    }

    fn resolved_kernels(&self) -> PathBuf {
        self.root.join("kernels.resolved")
    }
}

/// Kernel releases fixed by flag or environment instead of resolved.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KernelPins {
    /// Kernel release from trixie-backports to test, e.g. 7.3.4+deb13-amd64.
    #[arg(long, env = "REGCACHE_KERNEL_BACKPORTS", global = true)]
    pub backports_kernel: Option<String>,
    /// Kernel release from trixie (the LTS) to test, e.g. 6.12.107+deb13-amd64.
    #[arg(long, env = "REGCACHE_KERNEL_LTS", global = true)]
    pub lts_kernel: Option<String>,
    /// Ask apt for the newest kernels again instead of using the cached answer.
    #[arg(long, global = true)]
    pub refresh_kernels: bool,
}

/// The kernels under test, newest first: trixie-backports' and trixie's.
/// Resolved once and remembered in the cache directory, so a warm run asks no
/// mirror; pins override either.
pub fn kernels_under_test(vm: &VmDir, rootfs: &Rootfs, pins: &KernelPins) -> Result<Vec<Kernel>> {
    let all_pinned = pins.backports_kernel.is_some() && pins.lts_kernel.is_some();
    let cached = fs::read_to_string(vm.resolved_kernels())
        .ok()
        .filter(|_| !pins.refresh_kernels);
    let (backports, lts) = if all_pinned {
        (String::new(), String::new())
    } else if let Some(found) = cached.as_deref().and_then(parse_resolved) {
        found
    } else {
        let (backports, lts) = rootfs.resolve_kernels()?;
        fs::write(
            vm.resolved_kernels(),
            format!("{}\n{}\n", backports.release, lts.release),
        )?;
        (backports.release, lts.release)
    };
    let kernels = vec![
        Kernel {
            release: pins.backports_kernel.clone().unwrap_or(backports),
            from_backports: true,
        },
        Kernel {
            release: pins.lts_kernel.clone().unwrap_or(lts),
            from_backports: false,
        },
    ];
    for kernel in &kernels {
        let origin = if kernel.from_backports {
            "trixie-backports"
        } else {
            "trixie"
        };
        eprintln!("    kernel under test: {} ({origin})", kernel.release);
    }
    Ok(kernels)
}

fn parse_resolved(text: &str) -> Option<(String, String)> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    Some((lines.next()?.to_owned(), lines.next()?.to_owned()))
}

/// Picks kernels by a `--kernel` selector: `all`, `backports`, `lts`, or a
/// prefix of a release such as `7`, `6.12` or `7.3.4+deb13-amd64`.
pub fn select(kernels: Vec<Kernel>, selector: &str) -> Result<Vec<Kernel>> {
    let chosen: Vec<Kernel> = kernels
        .iter()
        .filter(|k| match selector {
            "all" => true,
            "backports" => k.from_backports,
            "lts" => !k.from_backports,
            prefix => k.release.starts_with(prefix),
        })
        .cloned()
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = kernels.iter().map(|k| k.release.as_str()).collect();
        anyhow::bail!(
            "--kernel {selector} matches none of the kernels under test ({}); use all, backports, lts or a release prefix",
            names.join(", ")
        );
    }
    Ok(chosen)
}
