//! The guests' Debian trixie root filesystem: built once with mmdebstrap,
//! holding the compiler, rdma-core and every kernel under test with its
//! headers, and commands run in it with chroot. Everything is keyed by
//! versions, so a warm run downloads nothing.

use crate::sh::{self, cmd};
use crate::vmdir::VmDir;
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const SUITES: &[&str] = &["trixie", "trixie-updates", "trixie-backports"];
const MIRROR: &str = "http://deb.debian.org/debian";

/// What every guest needs besides a kernel: the module toolchain (gcc-14 is
/// trixie's, the kernels' compiler), rdma-core with perftest, dkms, the tools
/// the guest script uses, and what the C API's tests are built and checked
/// with (verbs headers, pkg-config, valgrind).
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
    "libibverbs-dev",
    "pkg-config",
    "valgrind",
];

/// Debian's kernel hook would build a dracut initramfs per kernel (a minute
/// each); virtme-ng brings its own initramfs, and the hook does nothing when
/// /usr/bin/dracut is missing, so dracut's binary is diverted away.
const NO_INITRAMFS_HOOK: &str =
    "--customize-hook=chroot \"$1\" dpkg-divert --local --rename --divert /usr/bin/dracut.disabled --add /usr/bin/dracut";

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

    /// Installs a kernel's image, modules and headers unless present;
    /// `apt_target` names the suite apt must take them from when it is not
    /// one apt installs from by default.
    pub fn ensure_kernel(&self, release: &str, apt_target: Option<&str>) -> Result<()> {
        let stamp = self.stamp(&format!("kernel-{release}"));
        if stamp.exists() {
            eprintln!("    kernel {release}: cached");
            return Ok(());
        }
        let what =
            format!("installing kernel {release} with headers into the rootfs (~1 min, ~150 MB)");
        sh::step(&what, || {
            let target = apt_target.map_or(String::new(), |suite| format!("-t {suite}"));
            self.chroot(&format!(
                "ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || apt-get update -q >/dev/null\n\
                 apt-get install -y -q --no-install-recommends {target} linux-image-{release} linux-headers-{release}\n\
                 apt-get clean"
            ))?;
            fs::write(&stamp, "")?;
            Ok(())
        })
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
