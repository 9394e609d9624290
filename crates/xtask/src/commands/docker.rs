//! `cargo xtask docker`: the development image (`docker/Dockerfile`) built and
//! run with docker (when its daemon answers) or podman.
//!
//! Machines without a container registry cannot pull the Dockerfile's base,
//! so a missing base is made here with mmdebstrap (the same Debian suite) and
//! imported under the name the Dockerfile uses. Runs mount the workspace and
//! caches from the host: cargo's registry (crates are downloaded once for
//! host and container), and a VM cache of the container's own (its virtme-ng
//! venv belongs to the image's Python), seeded from the host's rootfs so a
//! first run downloads no Debian packages.

use super::Context;
use crate::host;
use crate::rootfs::Rootfs;
use crate::sh::{self, cmd};
use crate::vmdir::VmDir;
use anyhow::{bail, Context as _, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Dockerfile's default base image (a unit test keeps them equal).
const BASE_IMAGE: &str = "debian:bookworm";
/// The Debian suite of [`BASE_IMAGE`], for mmdebstrap.
const BASE_SUITE: &str = "bookworm";
/// With the security suite: bookworm's newest rustc-web is there.
const BASE_SOURCES: &[&str] = &[
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
];
const IMAGE: &str = "regcache-dev";
/// The host's CA roots: a TLS-inspecting proxy that the host trusts is then
/// trusted by cargo and pip in the container too.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where the workspace and the container's VM cache are mounted (the
/// Dockerfile's `WORKDIR` and `REGCACHE_VM_DIR`; a unit test checks).
const SRC_MOUNT: &str = "/src";
const VM_MOUNT: &str = "/vm";
/// This module's files on the host, under the workspace; in the container,
/// cargo's target directory is in there too (the Dockerfile's
/// `CARGO_TARGET_DIR`).
const STATE_DIR: &str = "target/docker";
/// podman settings this kind of host needs: its default ulimits and pids
/// limit cannot be applied in a container without a systemd cgroup tree.
const PODMAN_CONF: &str = "[containers]\ndefault_ulimits = []\npids_limit = 0\n";

/// The container engine found on this machine.
#[derive(Debug)]
enum Engine {
    Docker,
    /// podman with `CONTAINERS_CONF` naming this file.
    Podman {
        conf: PathBuf,
    },
}

impl Engine {
    /// docker if its daemon answers, else podman, installed with apt when
    /// missing.
    fn detect(state: &Path) -> Result<Self> {
        if quiet_success(&mut cmd("docker", ["info"])) {
            eprintln!("    container engine: docker");
            return Ok(Engine::Docker);
        }
        if !quiet_success(&mut cmd("podman", ["--version"])) {
            eprintln!("    no docker daemon answers and podman is missing: installing podman");
            host::install(&["podman", "runc"])?;
        }
        let conf = state.join("containers.conf");
        fs::write(&conf, PODMAN_CONF)?;
        eprintln!(
            "    container engine: podman (settings in {})",
            conf.display()
        );
        Ok(Engine::Podman { conf })
    }

    fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        match self {
            Engine::Docker => cmd("docker", args),
            Engine::Podman { conf } => {
                // crun fails on hosts with hybrid cgroups; runc works there
                // and everywhere else. cgroupfs needs no systemd.
                let mut command = cmd("podman", ["--cgroup-manager", "cgroupfs"]);
                if quiet_success(&mut cmd("runc", ["--version"])) {
                    command.args(["--runtime", "runc"]);
                }
                command.args(args).env("CONTAINERS_CONF", conf);
                command
            }
        }
    }

    fn has_image(&self, name: &str) -> bool {
        quiet_success(&mut self.command(["image", "inspect", name]))
    }
}

fn quiet_success(command: &mut Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The engine, the image built, and the host directories runs mount.
#[derive(Debug)]
struct Image {
    engine: Engine,
    /// The container's VM cache on the host.
    vm_cache: PathBuf,
    /// Cargo's registry on the host, shared with the container.
    cargo_registry: PathBuf,
}

/// Detects the engine, makes the base image when it is missing, and builds
/// the image (its layers are cached by the engine: a rebuild takes seconds).
fn build_image(ctx: &Context) -> Result<Image> {
    host::require_root("the container image (mmdebstrap, a privileged container)")?;
    let state = ctx.workspace.join(STATE_DIR);
    fs::create_dir_all(&state)?;
    let engine = Engine::detect(&state)?;
    if engine.has_image(BASE_IMAGE) {
        eprintln!("    base image {BASE_IMAGE}: present");
    } else {
        make_base_image(&engine, &state)?;
    }
    sh::step(
        &format!("building the image {IMAGE} (docker/Dockerfile)"),
        || {
            sh::run(
                engine
                    .command(["build", "--tag", IMAGE, "--build-arg"])
                    .arg(format!("BASE={BASE_IMAGE}"))
                    .arg(ctx.workspace.join("docker")),
            )
        },
    )?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set: cannot find cargo's registry")?;
    let cargo_registry = cargo_home.join("registry");
    fs::create_dir_all(&cargo_registry)?;
    Ok(Image {
        engine,
        vm_cache: state.join("vm"),
        cargo_registry,
    })
}

/// mmdebstrap of [`BASE_SUITE`] imported as [`BASE_IMAGE`].
fn make_base_image(engine: &Engine, state: &Path) -> Result<()> {
    let what = format!(
        "making the base image {BASE_IMAGE} with mmdebstrap (no registry needed; ~2 min, ~120 MB)"
    );
    sh::step(&what, || {
        let tarball = state.join(format!("base-{BASE_SUITE}.tar"));
        sh::run(
            cmd("mmdebstrap", ["--variant=apt", "--quiet", BASE_SUITE])
                .arg(&tarball)
                .args(BASE_SOURCES),
        )?;
        sh::run(
            engine
                .command(["import".as_ref(), tarball.as_os_str()])
                .arg(BASE_IMAGE),
        )?;
        fs::remove_file(&tarball)?;
        Ok(())
    })
}

/// Copies the host's rootfs (and its resolved kernels) into the container's
/// VM cache when that has none: the same packages, without downloading them
/// again. `cp -x` stays off /proc should a chroot have it mounted.
fn seed_vm_cache(host_vm: &Path, container_vm: &Path) -> Result<()> {
    let container = VmDir::new(container_vm.to_path_buf())?;
    let theirs = Rootfs::locate(&container);
    if theirs.exists() || !host_vm.exists() {
        return Ok(());
    }
    let host = VmDir::new(host_vm.to_path_buf())?;
    let ours = Rootfs::locate(&host);
    if !ours.exists() {
        return Ok(());
    }
    sh::step(
        &format!(
            "seeding the container's VM cache from {} (a copy, ~1 GB)",
            ours.path.display()
        ),
        || {
            if theirs.path.exists() {
                fs::remove_dir_all(&theirs.path).context("removing a half-copied rootfs")?;
            }
            sh::run(&mut cmd(
                "cp",
                [
                    "-a".as_ref(),
                    "-x".as_ref(),
                    ours.path.as_os_str(),
                    theirs.path.as_os_str(),
                ],
            ))?;
            let resolved = "kernels.resolved";
            if host.root.join(resolved).exists() {
                fs::copy(host.root.join(resolved), container.root.join(resolved))?;
            }
            Ok(())
        },
    )
}

/// Runs `command` in a privileged container of the image, with the
/// workspace, cargo's registry and the VM cache mounted and the host's
/// `REGCACHE_*` settings (except the VM cache's location) passed on.
fn run_in_image(ctx: &Context, image: &Image, command: &[String]) -> Result<()> {
    seed_vm_cache(&ctx.vm_dir, &image.vm_cache)?;
    // The host's PID namespace: the harness names its stages in the rootfs
    // by process id and removes those of dead processes, so runs sharing
    // the cache must see each other's processes. The host's network: the
    // container serves nothing, and podman installed without recommends (as
    // here, on a fresh machine) gets another network stack than one set up
    // by hand, so a network of its own is one difference less.
    let mut run = image.engine.command([
        "run",
        "--rm",
        "--privileged",
        "--pid=host",
        "--network=host",
    ]);
    let mounts = [
        (ctx.workspace.as_path(), SRC_MOUNT, ""),
        (image.vm_cache.as_path(), VM_MOUNT, ""),
        (image.cargo_registry.as_path(), "/root/.cargo/registry", ""),
        (Path::new(CA_BUNDLE), CA_BUNDLE, ":ro"),
    ];
    for (host_path, container_path, options) in mounts {
        if host_path.exists() {
            run.arg("--volume")
                .arg(format!("{}:{container_path}{options}", host_path.display()));
        }
    }
    run.args(["--workdir", SRC_MOUNT]);
    for (name, value) in std::env::vars() {
        if name.starts_with("REGCACHE_") && name != "REGCACHE_VM_DIR" {
            run.arg("--env").arg(format!("{name}={value}"));
        }
    }
    run.arg(IMAGE).args(command);
    sh::step(&format!("in the container: {}", command.join(" ")), || {
        sh::run(&mut run)
    })
}

/// Set by the Dockerfile: this process runs in the image.
const IN_IMAGE_ENV: &str = "REGCACHE_IN_IMAGE";

fn in_image() -> bool {
    std::env::var_os(IN_IMAGE_ENV).is_some()
}

/// What the image check runs in the container: xtask built with cargo's
/// progress shown (the `cargo xtask` alias is quiet), then one guest boot
/// that builds nothing but the module. The rest of the suite runs on the host.
const IMAGE_CHECK: &[&str] = &[
    "cargo",
    "run",
    "--package",
    "xtask",
    "--",
    "vm",
    "boot-check",
    "--kernel",
    "lts",
];

/// `cargo xtask test`'s image check: builds the image (its base if missing)
/// and boots a guest in it. Inside the image it is skipped, saying why.
pub fn check_image(ctx: &Context) -> Result<()> {
    if in_image() {
        eprintln!(
            "    skipped: this `cargo xtask test` runs inside the development image \
             ({IN_IMAGE_ENV} is set by docker/Dockerfile); the image cannot build and \
             run itself, the host's `cargo xtask test` checks it"
        );
        return Ok(());
    }
    let image = build_image(ctx)?;
    let command: Vec<String> = IMAGE_CHECK.iter().map(|word| word.to_string()).collect();
    run_in_image(ctx, &image, &command)
}

/// `docker -- CMD`: builds the image (and its base if missing) and runs CMD
/// in it; without CMD, `cargo xtask test`.
pub fn docker(ctx: &Context, command: &[String]) -> Result<()> {
    if in_image() {
        bail!(
            "already inside the development image ({IN_IMAGE_ENV} is set): run the command itself"
        );
    }
    let default = ["cargo", "xtask", "test"].map(String::from);
    let command = if command.is_empty() {
        &default
    } else {
        command
    };
    let image = build_image(ctx)?;
    run_in_image(ctx, &image, command)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKERFILE: &str = include_str!("../../../../docker/Dockerfile");

    #[test]
    fn dockerfile_default_base_is_the_one_made_here() {
        let default = DOCKERFILE
            .lines()
            .find_map(|line| line.strip_prefix("ARG BASE="))
            .expect("the Dockerfile declares ARG BASE=<default>");
        assert_eq!(default.trim(), BASE_IMAGE);
        assert!(BASE_SOURCES
            .iter()
            .all(|source| source.contains(BASE_SUITE)));
    }

    #[test]
    fn dockerfile_puts_workspace_and_caches_where_runs_mount_them() {
        let words: Vec<&str> = DOCKERFILE.split_whitespace().collect();
        for expected in [
            format!("REGCACHE_VM_DIR={VM_MOUNT}"),
            format!("CARGO_TARGET_DIR={SRC_MOUNT}/{STATE_DIR}/cargo"),
            format!("{IN_IMAGE_ENV}=1"),
        ] {
            assert!(
                words.contains(&expected.as_str()),
                "docker/Dockerfile lacks {expected}"
            );
        }
        assert!(DOCKERFILE
            .lines()
            .any(|line| line == format!("WORKDIR {SRC_MOUNT}")));
    }

    #[test]
    fn dockerfile_installs_every_host_package() {
        let words: Vec<&str> = DOCKERFILE.split_whitespace().collect();
        let missing: Vec<&&str> = host::HOST_PACKAGES
            .iter()
            .filter(|package| !words.contains(package))
            .collect();
        assert!(missing.is_empty(), "docker/Dockerfile lacks {missing:?}");
        for toolchain in ["rustc-web", "cargo-web", "rustfmt-web", "rust-web-clippy"] {
            assert!(
                words.contains(&toolchain),
                "docker/Dockerfile lacks {toolchain}"
            );
        }
    }
}
