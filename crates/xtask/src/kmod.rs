//! The regwatch module built and staged for guests: Debian bookworm's 6.1
//! with the host's gcc-12, and each kernel under test inside the trixie rootfs
//! with gcc-14 (the compiler those kernels were built with), its C tests or
//! benchmarks, and its DKMS install. `Kbuild` adds -Werror.

use crate::kernels::Kernel;
use crate::rootfs::Rootfs;
use crate::sh::{self, cmd};
use crate::stage::Stage;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

pub fn module_exists(workspace: &Path) -> bool {
    workspace.join("kmod/Kbuild").exists()
}

/// What a stage gets of `kmod/` besides the module built for each kernel.
#[derive(Debug, Clone, Copy)]
pub enum With {
    Nothing,
    /// The C tests, which the suite runs, and the DKMS install it loads.
    TestsAndDkms,
    /// The C benchmarks.
    Benches,
}

/// Builds the module for each kernel in the rootfs into `stage`, with what
/// `with` asks for. Returns `Ok(false)`, staging nothing, when the workspace
/// has no module.
pub fn stage_module(
    workspace: &Path,
    rootfs: &Rootfs,
    stage: &Stage,
    kernels: &[Kernel],
    with: With,
) -> Result<bool> {
    if !module_exists(workspace) {
        return Ok(false);
    }
    for kernel in kernels {
        build_in_rootfs(workspace, rootfs, stage, kernel)?;
    }
    match with {
        With::Nothing => {}
        With::TestsAndDkms => {
            build_c_programs(workspace, rootfs, stage, CPrograms::Tests)?;
            stage_dkms_source(workspace, stage)?;
            dkms_install_in_rootfs(rootfs, stage, kernels)?;
        }
        With::Benches => build_c_programs(workspace, rootfs, stage, CPrograms::Benches)?,
    }
    Ok(true)
}

/// [`stage_module`] for a command that cannot run without the module: a
/// workspace without `kmod/` is an error saying what needed it.
pub fn stage_required_module(
    workspace: &Path,
    rootfs: &Rootfs,
    stage: &Stage,
    kernels: &[Kernel],
    with: With,
    needed_by: &str,
) -> Result<()> {
    if !stage_module(workspace, rootfs, stage, kernels, with)? {
        bail!(
            "no kmod/Kbuild in {}: {needed_by} needs the regwatch module",
            workspace.display()
        );
    }
    Ok(())
}

/// Copies `kmod/` to `dest` (fresh), so builds never litter the source tree.
fn copy_sources(workspace: &Path, dest: &Path) -> Result<()> {
    if dest.exists() {
        fs::remove_dir_all(dest)?;
    }
    fs::create_dir_all(dest.parent().context("no parent")?)?;
    sh::run(&mut cmd(
        "cp",
        [
            "-a".as_ref(),
            workspace.join("kmod").as_os_str(),
            dest.as_os_str(),
        ],
    ))
}

/// The newest bookworm kernel headers on the host (from linux-headers-amd64).
fn host_headers() -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir("/usr/src")?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.starts_with("linux-headers-") && name.ends_with("-amd64")
        })
        .collect();
    found.sort();
    found
        .pop()
        .context("no /usr/src/linux-headers-*-amd64: install linux-headers-amd64")
}

/// Builds against bookworm's 6.1 headers with the host compiler; returns the
/// headers' release.
pub fn build_on_host(workspace: &Path, build_root: &Path) -> Result<String> {
    if !module_exists(workspace) {
        bail!(
            "no kmod/Kbuild in {}: nothing to build",
            workspace.display()
        );
    }
    let headers = host_headers()?;
    let release = headers
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .replace("linux-headers-", "");
    sh::step(
        &format!("building regwatch for {release} (host gcc-12, -Werror)"),
        || {
            let dir = build_root.join(format!("kmod-{release}"));
            copy_sources(workspace, &dir)?;
            sh::run(
                cmd("make", ["-C".as_ref(), dir.as_os_str()])
                    .arg(format!("KDIR={}", headers.display())),
            )?;
            if !dir.join("regwatch.ko").exists() {
                bail!(
                    "make succeeded but left no regwatch.ko in {}",
                    dir.display()
                );
            }
            Ok(release.clone())
        },
    )
}

/// Builds the module for `kernel` inside the rootfs and stages the `.ko`.
fn build_in_rootfs(
    workspace: &Path,
    rootfs: &Rootfs,
    stage: &Stage,
    kernel: &Kernel,
) -> Result<()> {
    let release = &kernel.release;
    sh::step(
        &format!("building regwatch for {release} (rootfs gcc-14, -Werror)"),
        || {
            let src = format!("{}/src/kmod-{release}", stage.guest_dir);
            copy_sources(workspace, &rootfs.host_path(&src))?;
            let out = stage.kmod_dir(kernel);
            rootfs.chroot(&format!(
                "make -C {src} KDIR=/lib/modules/{release}/build CC=gcc-14\n\
             mkdir -p {out} && cp {src}/regwatch.ko {out}/"
            ))
        },
    )
}

/// C programs of `kmod/` built in the rootfs against the uapi header: the
/// tests, which every suite run executes, and the benchmarks.
#[derive(Debug, Clone, Copy)]
enum CPrograms {
    Tests,
    Benches,
}

impl CPrograms {
    fn source_dir(self) -> &'static str {
        match self {
            CPrograms::Tests => "tests",
            CPrograms::Benches => "bench",
        }
    }

    /// The stage subdirectory the guest script runs them from.
    fn stage_dir(self) -> &'static str {
        match self {
            CPrograms::Tests => "ctests",
            CPrograms::Benches => "cbench",
        }
    }
}

/// Builds `kmod/tests` or `kmod/bench` inside the rootfs into the stage.
fn build_c_programs(
    workspace: &Path,
    rootfs: &Rootfs,
    stage: &Stage,
    programs: CPrograms,
) -> Result<()> {
    let dir = programs.source_dir();
    if !workspace.join("kmod").join(dir).join("Makefile").exists() {
        return Ok(());
    }
    sh::step(&format!("building kmod/{dir} (rootfs gcc-14)"), || {
        let src = format!("{}/src/kmod-{dir}", stage.guest_dir);
        copy_sources(workspace, &rootfs.host_path(&src))?;
        rootfs.chroot(&format!(
            "make -C {src}/{dir} CC=gcc-14 OUT={}/{}",
            stage.guest_dir,
            programs.stage_dir()
        ))
    })
}

/// Copies the module's sources (without its tests and benchmarks) into the
/// stage for a DKMS install.
fn stage_dkms_source(workspace: &Path, stage: &Stage) -> Result<()> {
    let dest = stage.dir.join("dkms");
    fs::create_dir_all(&dest)?;
    for entry in fs::read_dir(workspace.join("kmod"))? {
        let path = entry?.path();
        let name = path.file_name().context("unnamed entry")?;
        if name == "tests" || name == "bench" {
            continue;
        }
        sh::run(&mut cmd(
            "cp",
            ["-a".as_ref(), path.as_os_str(), dest.as_os_str()],
        ))?;
    }
    Ok(())
}

/// `dkms add`, `build` and `install` of the staged module sources inside the
/// rootfs for each kernel, replacing an earlier install; the guest then loads
/// it with modprobe.
fn dkms_install_in_rootfs(rootfs: &Rootfs, stage: &Stage, kernels: &[Kernel]) -> Result<()> {
    let conf = fs::read_to_string(stage.dir.join("dkms/dkms.conf"))
        .context("reading the staged dkms.conf")?;
    let field = |key: &str| {
        conf.lines()
            .find_map(|line| {
                line.strip_prefix(key)?
                    .strip_prefix('=')
                    .map(|v| v.trim_matches('"').to_owned())
            })
            .with_context(|| format!("dkms.conf has no {key}"))
    };
    let (name, version) = (field("PACKAGE_NAME")?, field("PACKAGE_VERSION")?);
    sh::step(
        &format!("DKMS add, build and install of {name}/{version} in the rootfs"),
        || {
            let mut script = format!(
                "dkms remove {name}/{version} --all >/dev/null 2>&1 || true\n\
             rm -rf /usr/src/{name}-{version}\n\
             cp -a {}/dkms /usr/src/{name}-{version}\n\
             dkms add {name}/{version}\n",
                stage.guest_dir
            );
            for kernel in kernels {
                let release = &kernel.release;
                script.push_str(&format!(
                "dkms build {name}/{version} -k {release}\ndkms install {name}/{version} -k {release}\n"
            ));
            }
            rootfs.chroot(&script)
        },
    )
}
