//! Booting a kernel of the rootfs with virtme-ng: KVM where it works, TCG
//! where it does not, and a hard timeout either way.

use crate::kernel_log;
use crate::kernels::Kernel;
use crate::rootfs::Rootfs;
use crate::sh::{self, cmd};
use crate::vmdir::VmDir;
use anyhow::{Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const VIRTME_NG_VERSION: &str = "1.42";

/// virtme-ng installed from PyPI into a venv inside the cache directory.
#[derive(Debug)]
pub struct Virtme {
    bin: PathBuf,
}

impl Virtme {
    pub fn ensure(vm: &VmDir) -> Result<Self> {
        let venv = vm.root.join(format!("virtme-ng-{VIRTME_NG_VERSION}"));
        let bin = venv.join("bin");
        if bin.join("vng").exists() {
            eprintln!("    virtme-ng {VIRTME_NG_VERSION}: cached");
            return Ok(Virtme { bin });
        }
        sh::step(
            &format!(
                "installing virtme-ng {VIRTME_NG_VERSION} from PyPI into {}",
                venv.display()
            ),
            || {
                sh::run(cmd("python3", ["-m", "venv"]).arg(&venv))?;
                sh::run(
                    cmd(&bin.join("pip").to_string_lossy(), ["install", "-q"])
                        .arg(format!("virtme-ng=={VIRTME_NG_VERSION}")),
                )
            },
        )?;
        Ok(Virtme { bin })
    }
}

/// How the guest's CPU is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// Whether KVM can run a real guest here. /dev/kvm may exist and still kill
/// every guest ("KVM internal error", after which QEMU hangs), so a kernel is
/// started under KVM and must print its banner within seconds; anything else
/// means TCG. Never hangs: the probe is killed at its deadline.
pub fn detect_accel(kernel_image: &std::path::Path) -> Accel {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("    accel: TCG (/dev/kvm not usable)");
        return Accel::Tcg;
    }
    let probe = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-nographic",
            "-no-reboot",
            "-kernel",
        ])
        .arg(kernel_image)
        .args(["-append", "console=ttyS0 earlyprintk=serial panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let Ok(mut child) = probe else {
        eprintln!("    accel: TCG (cannot start qemu-system-x86_64 for the KVM probe)");
        return Accel::Tcg;
    };
    let lines = stream_lines(&mut child, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut verdict = Accel::Tcg;
    let mut reason = "no kernel banner within 20 s".to_owned();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if line.contains("Linux version") => {
                verdict = Accel::Kvm;
                break;
            }
            Ok(line)
                if line.contains("KVM internal error") || line.contains("failed to set MSR") =>
            {
                reason = line.trim().to_owned();
                break;
            }
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                reason = "QEMU exited before the kernel started".to_owned();
                break;
            }
        }
    }
    kill_group(&mut child);
    match verdict {
        Accel::Kvm => eprintln!("    accel: KVM (a probe guest booted)"),
        Accel::Tcg => eprintln!("    accel: TCG (KVM probe failed: {reason})"),
    }
    verdict
}

/// Forwards a child's stdout and stderr, line by line, to a channel; with a
/// label, also echoes them as progress.
fn stream_lines(child: &mut Child, label: Option<&str>) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    let pipes: [Option<Box<dyn Read + Send>>; 2] = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ];
    for pipe in pipes.into_iter().flatten() {
        let sender = sender.clone();
        let label = label.map(str::to_owned);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).into_owned();
                if let Some(label) = &label {
                    if !kernel_log::is_routine(&line) {
                        eprintln!("[{label}] {line}");
                    }
                }
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
    }
    receiver
}

fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals the process group we
        // created for this child with process_group(0); it touches no memory.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let _ = child.wait();
}

/// One guest boot's result.
#[derive(Debug)]
pub struct GuestRun {
    pub output: Vec<String>,
    /// The guest command's exit status (virtme-ng passes it through), or
    /// `None` when the boot was killed at its timeout.
    pub status: Option<i32>,
    pub elapsed: Duration,
}

/// How a guest is booted.
#[derive(Debug)]
pub struct Guest<'a> {
    pub virtme: &'a Virtme,
    pub rootfs: &'a Rootfs,
    pub accel: Accel,
    /// Guest memory in GiB, split over two NUMA nodes so that page migration
    /// between nodes can be tested: node 0 holds every CPU, node 1 only
    /// memory (a CPU per node would split the CPUs' shared cache across
    /// nodes, which the kernel warns about at boot).
    pub memory_gib: u32,
    pub cpus: u32,
    /// The kernel's boot console on the run's output (virtme-ng discards
    /// it otherwise): captured but not echoed, being timestamped, so that a
    /// guest dying before its kernel-log dump leaves the reason behind.
    pub boot_console: bool,
}

impl Guest<'_> {
    fn command(&self, kernel: &Kernel, exec: &str) -> Command {
        let mut command = Command::new(self.virtme.bin.join("vng"));
        command
            .arg("--run")
            .arg(kernel.vmlinuz(self.rootfs))
            .arg("--root")
            .arg(&self.rootfs.path)
            .args([
                "--memory",
                &format!("{}G", self.memory_gib),
                "--cpus",
                &self.cpus.to_string(),
            ]);
        let node_mib = self.memory_gib * 1024 / 2;
        command.args(["--numa", &format!("{node_mib}M,cpus=0-{}", self.cpus - 1)]);
        command.args(["--numa", &format!("{node_mib}M")]);
        command.args(["--exec", exec]);
        // The emulated CPUs' time stamp counters all read the host's clock, so they agree. Left
        // to judge that itself, the kernel at times marks the TSC unstable under TCG's stalls
        // and flips a static branch in `sched_clock_cpu` while the other CPU runs through
        // it: TCG then lets that CPU execute the patch's temporary breakpoint (`Oops: int3`
        // in `sched_clock_cpu`, at boot or hours in). And a TSC marked unstable makes the
        // clock a system call for the rest of the run.
        command.args(["--append", "tsc=reliable"]);
        if self.accel == Accel::Tcg {
            command.arg("--disable-kvm");
        }
        if self.boot_console {
            command.arg("--verbose");
        }
        let path = std::env::var("PATH").unwrap_or_default();
        command.env(
            "PATH",
            format!("{}:/usr/sbin:/sbin:{path}", self.virtme.bin.display()),
        );
        command
    }

    /// Boots `kernel`, runs `exec` in the guest, echoes its output prefixed
    /// with the kernel's release and returns it; kills the guest at `timeout`.
    pub fn run(&self, kernel: &Kernel, exec: &str, timeout: Duration) -> Result<GuestRun> {
        eprintln!(
            "==> booting {} ({:?}) to run: {exec}",
            kernel.release, self.accel
        );
        let started = Instant::now();
        let mut child = self
            .command(kernel, exec)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .context("cannot start vng (virtme-ng)")?;
        let lines = stream_lines(&mut child, Some(&kernel.release));
        let mut output = Vec::new();
        let deadline = started + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => output.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if left.is_zero() => {
                    eprintln!(
                        "[{}] timed out after {} s: killing the guest",
                        kernel.release,
                        timeout.as_secs()
                    );
                    kill_group(&mut child);
                    return Ok(GuestRun {
                        output,
                        status: None,
                        elapsed: started.elapsed(),
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        let status = child.wait()?.code().or(Some(-1));
        output.extend(lines.try_iter());
        Ok(GuestRun {
            output,
            status,
            elapsed: started.elapsed(),
        })
    }

    /// Boots `kernel` with the terminal attached, for `vm shell`.
    pub fn interactive(&self, kernel: &Kernel, exec: &str) -> Result<()> {
        let status = self
            .command(kernel, exec)
            .status()
            .context("cannot start vng (virtme-ng)")?;
        eprintln!("guest shell ended: {status}");
        Ok(())
    }
}
