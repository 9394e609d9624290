//! The guests' Debian trixie root filesystem: built once with mmdebstrap,
//! holding the compiler, rdma-core and every kernel under test with its
//! headers. Everything is keyed by versions, so a warm run downloads nothing.

use crate::sh::{self, cmd};
use crate::vmdir::VmDir;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const SUITES: &[&str] = &["trixie", "trixie-updates", "trixie-backports"];
const MIRROR: &str = "http://deb.debian.org/debian";

/// What every guest needs besides a kernel: the module toolchain (gcc-14 is
/// trixie's, the kernels' compiler), rdma-core with perftest, dkms, and the
/// tools the guest script uses.
const GUEST_PACKAGES: &[&str] = &[
    "gcc-14",
    "make",
    "libc6-dev",
    "kmod",
    "iproute2",
    "rdma-core",
    "ibverbs-utils",
    "ibverbs-providers",
    "librdmacm1t64",
    "perftest",
    "dkms",
    "util-linux",
    "procps",
    "numactl",
    "libnuma-dev",
    "ca-certificates",
];

/// Debian's kernel hook would build a dracut initramfs per kernel (a minute
/// each); virtme-ng brings its own initramfs, and the hook does nothing when
/// /usr/bin/dracut is missing, so dracut's binary is diverted away.
const NO_INITRAMFS_HOOK: &str =
    "--customize-hook=chroot \"$1\" dpkg-divert --local --rename --divert /usr/bin/dracut.disabled --add /usr/bin/dracut";

/// A kernel under test, named by its release string (`uname -r`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub release: String,
    /// From trixie-backports (apt needs `-t trixie-backports` for its deps).
    pub from_backports: bool,
}

impl Kernel {
    /// `(major, minor)` of the release, e.g. `(7, 3)` for `7.3.4+deb13-amd64`.
    pub fn major_minor(&self) -> (u32, u32) {
        let mut parts = self.release.split(|c: char| !c.is_ascii_digit());
        let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        (major, minor)
    }

    /// rdma_rxe supports on-demand paging since 6.15.
    pub fn rxe_has_odp(&self) -> bool {
        self.major_minor() >= (6, 15)
    }

    /// A second rxe device in its own network namespace only completes work on
    /// 7.x (on 6.12 it connects but no completion ever arrives).
    pub fn rxe_crosses_netns(&self) -> bool {
        self.major_minor() >= (7, 0)
    }
}

/// The trixie rootfs for one package set.
#[derive(Debug)]
pub struct Rootfs {
    pub path: PathBuf,
}

fn package_key() -> String {
    // FNV-1a over the package list and hooks: a changed list is a new rootfs.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in GUEST_PACKAGES
        .join(",")
        .bytes()
        .chain(NO_INITRAMFS_HOOK.bytes())
    {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", hash as u32)
}

impl Rootfs {
    pub fn locate(vm: &VmDir) -> Self {
        Rootfs {
            path: vm.root.join(format!("rootfs-trixie-{}", package_key())),
        }
    }

    fn stamp(&self, name: &str) -> PathBuf {
        self.path.join(format!(".regcache-{name}"))
    }

    pub fn exists(&self) -> bool {
        self.stamp("base").exists()
    }

    /// Builds the base system unless it is there already.
    pub fn ensure_base(&self) -> Result<()> {
        if self.exists() {
            eprintln!(
                "    rootfs: cached at {} ({} MiB)",
                self.path.display(),
                sh::du_mib(&self.path)
            );
            return Ok(());
        }
        sh::step(
            "building the trixie rootfs with mmdebstrap (about 40 s, ~150 MB download)",
            || {
                if self.path.exists() {
                    fs::remove_dir_all(&self.path).context("removing a half-built rootfs")?;
                }
                let sources: Vec<String> = SUITES
                    .iter()
                    .map(|suite| format!("deb {MIRROR} {suite} main"))
                    .collect();
                sh::run(
                    cmd("mmdebstrap", ["--variant=apt", "--components=main"])
                        .arg(format!("--include={}", GUEST_PACKAGES.join(",")))
                        .arg(NO_INITRAMFS_HOOK)
                        .arg("trixie")
                        .arg(&self.path)
                        .args(&sources),
                )?;
                fs::write(self.stamp("base"), "")?;
                eprintln!("    rootfs: {} MiB", sh::du_mib(&self.path));
                Ok(())
            },
        )
    }

    /// The command that runs `script` with sh inside the rootfs.
    fn chroot_command(&self, script: &str) -> Command {
        let mut command = cmd(
            "chroot",
            [
                self.path.as_os_str(),
                "/bin/sh".as_ref(),
                "-ec".as_ref(),
                script.as_ref(),
            ],
        );
        command
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C");
        command
    }

    /// Runs a shell command inside the rootfs with /proc mounted.
    pub fn chroot(&self, script: &str) -> Result<()> {
        let _proc = ProcMount::new(&self.path)?;
        sh::run(&mut self.chroot_command(script))
    }

    /// Like [`Rootfs::chroot`], capturing standard output.
    pub fn chroot_output(&self, script: &str) -> Result<String> {
        let _proc = ProcMount::new(&self.path)?;
        sh::output(&mut self.chroot_command(script))
    }

    /// The newest amd64 kernel of trixie-backports and of trixie proper, as
    /// the rootfs's apt sees them now.
    pub fn resolve_kernels(&self) -> Result<(Kernel, Kernel)> {
        let listing = sh::step(
            "resolving kernel versions (apt-get update in the rootfs)",
            || {
                self.chroot("apt-get update -q >/dev/null")?;
                self.chroot_output("apt-cache show linux-image-amd64")
            },
        )?;
        let mut backports = None;
        let mut lts = None;
        let mut version = "";
        for line in listing.lines() {
            if let Some(v) = line.strip_prefix("Version: ") {
                version = v;
            } else if let Some(deps) = line.strip_prefix("Depends: ") {
                let release = deps
                    .split(',')
                    .filter_map(|dep| dep.trim().strip_prefix("linux-image-"))
                    .filter_map(|dep| dep.split_whitespace().next())
                    .next()
                    .with_context(|| format!("no linux-image-<release> in `{deps}`"))?;
                let from_backports = version.contains("bpo");
                let kernel = Kernel {
                    release: release.to_owned(),
                    from_backports,
                };
                let slot = if from_backports {
                    &mut backports
                } else {
                    &mut lts
                };
                slot.get_or_insert(kernel);
            }
        }
        match (backports, lts) {
            (Some(b), Some(l)) => Ok((b, l)),
            _ => bail!("apt-cache found no linux-image-amd64 in both trixie-backports and trixie:\n{listing}"),
        }
    }

    /// Installs a kernel's image, modules and headers unless present.
    pub fn ensure_kernel(&self, kernel: &Kernel) -> Result<()> {
        let stamp = self.stamp(&format!("kernel-{}", kernel.release));
        if stamp.exists() {
            eprintln!("    kernel {}: cached", kernel.release);
            return Ok(());
        }
        let what = format!(
            "installing kernel {} with headers into the rootfs (~1 min, ~150 MB)",
            kernel.release
        );
        sh::step(&what, || {
            let target = if kernel.from_backports {
                "-t trixie-backports"
            } else {
                ""
            };
            let release = &kernel.release;
            self.chroot(&format!(
                "ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || apt-get update -q >/dev/null\n\
                 apt-get install -y -q --no-install-recommends {target} linux-image-{release} linux-headers-{release}\n\
                 apt-get clean"
            ))?;
            fs::write(&stamp, "")?;
            Ok(())
        })
    }

    pub fn vmlinuz(&self, kernel: &Kernel) -> PathBuf {
        self.path
            .join("boot")
            .join(format!("vmlinuz-{}", kernel.release))
    }

    /// A host path inside the rootfs for a guest path like `/opt/regcache`.
    pub fn host_path(&self, guest: &str) -> PathBuf {
        self.path.join(guest.trim_start_matches('/'))
    }
}

/// /proc mounted inside the rootfs for as long as this lives.
struct ProcMount {
    target: PathBuf,
    mounted_here: bool,
    /// Held for the guard's life; declared last so it is released after
    /// the unmount in `drop`.
    _lock: fs::File,
}

impl ProcMount {
    /// Mounts /proc in the rootfs, waiting for other harness processes'
    /// chroots to end first: one that finished would unmount it under ours.
    fn new(root: &Path) -> Result<Self> {
        let lock = fs::File::create(root.join(".regcache-chroot.lock"))?;
        // SAFETY: flock(2) on a descriptor `lock` owns; the lock is released
        // when `lock` is dropped with this guard.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).context("locking the rootfs for chroot");
        }
        let target = root.join("proc");
        let already = fs::read_to_string("/proc/self/mounts")?
            .lines()
            .any(|line| line.split_whitespace().nth(1) == Some(&*target.to_string_lossy()));
        if !already {
            sh::run(
                Command::new("mount")
                    .args(["-t", "proc", "proc"])
                    .arg(&target),
            )?;
        }
        Ok(ProcMount {
            target,
            mounted_here: !already,
            _lock: lock,
        })
    }
}

impl Drop for ProcMount {
    fn drop(&mut self) {
        if !self.mounted_here {
            return;
        }
        let status = Command::new("umount").arg("-l").arg(&self.target).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("warning: could not unmount {}", self.target.display());
        }
    }
}
