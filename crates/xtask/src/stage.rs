//! What goes into the guest: this process's staging directory inside the
//! rootfs, and the command line that runs the guest script from it.

use crate::kernels::Kernel;
use crate::rootfs::Rootfs;
use anyhow::{Context, Result};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where each harness process stages its files in the rootfs: its own
/// directory, so concurrent runs never empty each other's. In the guest,
/// /opt/regcache points at the running one.
const STAGE_PARENT: &str = "/opt/regcache-runs";
const GUEST_SCRIPT: &str = include_str!("../guest/guest.sh");

/// This process's staging directory in the rootfs.
#[derive(Debug)]
pub struct Stage {
    /// Host path.
    pub dir: PathBuf,
    /// The same directory as the guest (and a chroot) sees it.
    pub guest_dir: String,
}

impl Stage {
    /// Creates an empty stage for this process, removing stages of harness
    /// processes that are gone.
    pub fn fresh(rootfs: &Rootfs) -> Result<Self> {
        let parent = rootfs.host_path(STAGE_PARENT);
        fs::create_dir_all(&parent)?;
        for entry in fs::read_dir(&parent)? {
            let path = entry?.path();
            let pid = path
                .file_name()
                .and_then(|n| n.to_str()?.parse::<i32>().ok());
            if pid.is_some_and(|pid| !process_alive(pid)) {
                fs::remove_dir_all(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
        let pid = std::process::id();
        let dir = parent.join(pid.to_string());
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("emptying {}", dir.display()))?;
        }
        for sub in ["bin", "ctests", "cbench", "vmbench", "kmod", "src"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let script = dir.join("guest.sh");
        fs::write(&script, GUEST_SCRIPT)?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
        Ok(Stage {
            dir,
            guest_dir: format!("{STAGE_PARENT}/{pid}"),
        })
    }

    /// Copies a host-built executable into the stage's `subdir`: `bin` for the
    /// test executables the suite runs, `vmbench` for `p2p-bench`.
    pub fn add_executable(&self, exe: &Path, subdir: &str) -> Result<()> {
        let name = exe.file_name().context("executable without a name")?;
        fs::copy(exe, self.dir.join(subdir).join(name))
            .with_context(|| format!("staging {}", exe.display()))?;
        Ok(())
    }

    /// Guest path of the directory a kernel's modules are built into.
    pub fn kmod_dir(&self, kernel: &Kernel) -> String {
        format!("{}/kmod/{}", self.guest_dir, kernel.release)
    }

    /// The command line handed to the guest: the environment that tells
    /// tests what this kernel must support with its stock rdma_rxe, then the
    /// guest script in a mode.
    pub fn exec_line(&self, kernel: &Kernel, mode_and_args: &str) -> String {
        self.exec_line_in(&kernel.guest_expectations(), mode_and_args)
    }

    /// [`Self::exec_line`] with the guest environment `environment`
    /// (`NAME=value` words, quoted for the guest's shell).
    pub fn exec_line_in(&self, environment: &str, mode_and_args: &str) -> String {
        format!(
            "env {environment} {}/guest.sh {mode_and_args}",
            self.guest_dir
        )
    }
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}
