//! What goes into the guest (the staging directory inside the rootfs) and what
//! comes out of it (results and the kernel log, judged on the host).

use crate::rootfs::{Kernel, Rootfs};
use crate::sh;
use crate::virtme::GuestRun;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where each harness process stages its files in the rootfs: its own
/// directory, so concurrent runs never empty each other's. In the guest,
/// /opt/regcache points at the running one.
const STAGE_PARENT: &str = "/opt/regcache-runs";
const GUEST_SCRIPT: &str = include_str!("../guest/guest.sh");

/// Kernel-log lines that fail a run whatever the tests said.
const KERNEL_LOG_FAILURES: &[&str] = &[
    "WARNING:",
    "BUG:",
    "Oops",
    "general protection",
    "list_del corruption",
    "refcount_t:",
    "UBSAN",
    "KASAN",
];

pub fn is_kernel_log_failure(line: &str) -> bool {
    KERNEL_LOG_FAILURES
        .iter()
        .any(|pattern| line.contains(pattern))
}

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

    /// Copies the module's sources (without its tests and benchmarks) for a
    /// DKMS install in the guest.
    pub fn add_dkms_source(&self, kmod: &Path) -> Result<()> {
        let dest = self.dir.join("dkms");
        fs::create_dir_all(&dest)?;
        for entry in fs::read_dir(kmod)? {
            let path = entry?.path();
            let name = path.file_name().context("unnamed entry")?;
            if name == "tests" || name == "bench" {
                continue;
            }
            sh::run(&mut sh::cmd(
                "cp",
                ["-a".as_ref(), path.as_os_str(), dest.as_os_str()],
            ))?;
        }
        Ok(())
    }

    /// Guest path of the directory a kernel's modules are built into.
    pub fn kmod_dir(&self, kernel: &Kernel) -> String {
        format!("{}/kmod/{}", self.guest_dir, kernel.release)
    }

    /// The command line handed to the guest: the environment that tells
    /// tests what this kernel must support, then the guest script in a mode.
    pub fn exec_line(&self, kernel: &Kernel, mode_and_args: &str) -> String {
        format!(
            "env REGCACHE_EXPECT_ODP={} REGCACHE_EXPECT_RXE1={} {}/guest.sh {mode_and_args}",
            u8::from(kernel.rxe_has_odp()),
            u8::from(kernel.rxe_crosses_netns()),
            self.guest_dir,
        )
    }
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// The host's reading of one guest run.
#[derive(Debug, Default)]
pub struct Verdict {
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    /// Test cases counted from libtest's `test result:` lines.
    pub cases_passed: u64,
    pub cases_failed: u64,
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.problems.is_empty()
    }

    pub fn summary(&self) -> String {
        let mut text = format!(
            "{} test programs passed, {} failed ({} test cases passed, {} failed)",
            self.passed.len(),
            self.failed.len(),
            self.cases_passed,
            self.cases_failed
        );
        for name in &self.failed {
            let _ = write!(text, "\n      failed: {name}");
        }
        for problem in &self.problems {
            let _ = write!(text, "\n      problem: {problem}");
        }
        text
    }
}

/// Judges a guest run: its exit status, the per-program results, and every
/// line of the kernel log.
pub fn judge(run: &GuestRun) -> Verdict {
    let mut verdict = Verdict::default();
    let mut in_kernel_log = false;
    let mut saw_kernel_log = false;
    for line in &run.output {
        if line.contains("===REGCACHE-DMESG-BEGIN===") {
            in_kernel_log = true;
            continue;
        }
        if line.contains("===REGCACHE-DMESG-END===") {
            in_kernel_log = false;
            saw_kernel_log = true;
            continue;
        }
        if in_kernel_log {
            if is_kernel_log_failure(line) {
                verdict
                    .problems
                    .push(format!("kernel log: {}", line.trim()));
            }
            continue;
        }
        if let Some(name) = line.strip_prefix("REGCACHE-RESULT pass ") {
            verdict.passed.push(name.to_owned());
        } else if let Some(name) = line.strip_prefix("REGCACHE-RESULT fail ") {
            verdict.failed.push(name.to_owned());
        } else if let Some(counts) = line.strip_prefix("test result: ") {
            verdict.cases_passed += libtest_count(counts, "passed");
            verdict.cases_failed += libtest_count(counts, "failed");
        }
    }
    match run.status {
        None => verdict
            .problems
            .push(format!("boot timed out after {} s", run.elapsed.as_secs())),
        Some(0) => {}
        Some(code) => verdict
            .problems
            .push(format!("guest command exited with status {code}")),
    }
    if !saw_kernel_log {
        verdict
            .problems
            .push("the guest never printed its kernel log (crash or timeout?)".to_owned());
    }
    verdict
}

/// The number libtest prints before `label` in a `test result:` line such as
/// `ok. 3 passed; 0 failed; 0 ignored; ...`.
fn libtest_count(counts: &str, label: &str) -> u64 {
    counts
        .split(';')
        .find_map(|part| {
            let words: Vec<&str> = part.split_whitespace().collect();
            match words.as_slice() {
                [.., number, word] if *word == label => number.parse().ok(),
                _ => None,
            }
        })
        .unwrap_or(0)
}
