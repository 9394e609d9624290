//! rdma_rxe with the ODP copy fix of `kernel-patches/rxe`, for the guest
//! configuration "7.x with the fixed rxe".
//!
//! rxe's internal APIs drift between kernel versions, so the module is built
//! from Debian's own source of exactly the kernel under test (the
//! `linux-source-X.Y` package whose version is the kernel image's), patched,
//! inside the rootfs with that kernel's headers and gcc-14. Everything is
//! cached in the rootfs: the pristine rxe sources per Debian version, the
//! module per kernel release, Debian version and patch hash. In the guest,
//! `rxe-swap.sh` replaces the stock module with the built one.

use crate::kernels::Kernel;
use crate::rootfs::Rootfs;
use crate::sh::{self, cmd};
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The fix and its reproducer, relative to the workspace.
const PATCH_DIR: &str = "kernel-patches/rxe";
/// Where rxe lives in a kernel tree (the paths the patches name, after -p1).
const RXE_SUBDIR: &str = "drivers/infiniband/sw/rxe";
/// Guest paths: the pristine sources per Debian version, and the builds
/// with the swap script. Under /opt, which the guest sees from the rootfs
/// (virtme-ng hides the rootfs's /var/cache).
const SOURCE_CACHE: &str = "/opt/regcache-rxe/source";
const BUILD_CACHE: &str = "/opt/regcache-rxe/build";
const SWAP_SCRIPT: &str = include_str!("../guest/rxe-swap.sh");

/// The rxe sources of one Debian kernel version, unpacked in the rootfs.
#[derive(Debug)]
pub struct RxeSource {
    /// The Debian version of the kernel image and of `linux-source-X.Y`,
    /// e.g. `7.3.4-1~bpo13+1`.
    pub debian_version: String,
    /// Guest path of a tree holding only `drivers/infiniband/sw/rxe`.
    pub tree: String,
}

/// A patched rdma_rxe built for one kernel.
#[derive(Debug)]
pub struct PatchedRxe {
    /// Guest path of the module.
    pub module: String,
    /// The guest command that replaces the running rdma_rxe by `module`,
    /// keeping the rxe links (run it after the guest set Soft-RoCE up, or
    /// before: without a loaded rdma_rxe it only loads the module).
    pub swap_command: String,
}

/// The patches of `kernel-patches/rxe`, in the order they apply.
///
/// # Errors
/// When the directory cannot be read or holds no `*.patch`.
pub fn patch_files(workspace: &Path) -> Result<Vec<PathBuf>> {
    let dir = workspace.join(PATCH_DIR);
    let mut patches: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "patch"))
        .collect();
    if patches.is_empty() {
        bail!("no *.patch in {}", dir.display());
    }
    patches.sort();
    Ok(patches)
}

/// A key for the patches' changes: the first 16 hex digits of the SHA-256
/// of their `git patch-id --verbatim` lines, in order. It covers the diffs
/// (whitespace included) and not the commit messages, so rewording a
/// message does not rebuild the module.
fn patch_hash(patches: &[PathBuf]) -> Result<String> {
    let script = "cat \"$@\" | git patch-id --verbatim | sha256sum";
    // From `/`: patch-id needs no repository, but git dies on a broken one,
    // such as a worktree's `.git` file in a container that lacks its target.
    let digest = sh::output(
        cmd("sh", ["-c", script, "sh"])
            .args(patches)
            .current_dir("/"),
    )?;
    let hex = digest.split_whitespace().next().unwrap_or_default();
    // e3b0c442...: the SHA-256 of nothing, when git found no diff.
    if hex.len() < 16 || hex.starts_with("e3b0c44298fc1c14") {
        bail!("git patch-id found no diff in {patches:?}");
    }
    Ok(hex[..16].to_owned())
}

/// The Debian version of `kernel`'s installed image, which is also the
/// version of the `linux-source-X.Y` built from the same source upload.
fn debian_version(rootfs: &Rootfs, kernel: &Kernel) -> Result<String> {
    let version = rootfs.chroot_output(&format!(
        "dpkg-query -W -f '${{Version}}' linux-image-{}",
        kernel.release
    ))?;
    if version.is_empty() {
        bail!("dpkg knows no version of linux-image-{}", kernel.release);
    }
    Ok(version)
}

/// Makes sure Debian's rxe sources of exactly `kernel`'s version are
/// unpacked in the rootfs: installs `linux-source-X.Y` at the image's version
/// (about 170 MB), unpacks `drivers/infiniband/sw/rxe`, then purges the
/// package again. Cached per Debian version.
///
/// # Errors
/// When apt cannot install that exact version (for instance after Debian
/// dropped it from the mirror) or the tarball lacks rxe.
pub fn ensure_source(rootfs: &Rootfs, kernel: &Kernel) -> Result<RxeSource> {
    let debian_version = debian_version(rootfs, kernel)?;
    let tree = format!("{SOURCE_CACHE}/{debian_version}");
    let source = RxeSource {
        debian_version,
        tree,
    };
    if rootfs
        .host_path(&source.tree)
        .join(RXE_SUBDIR)
        .join("Makefile")
        .exists()
    {
        eprintln!(
            "    rxe source of {} ({}): cached",
            kernel.release, source.debian_version
        );
        return Ok(source);
    }
    let (major, minor) = kernel.major_minor();
    let package = format!("linux-source-{major}.{minor}");
    let what = format!(
        "unpacking rxe from Debian's {package} {} into the rootfs (~170 MB download)",
        source.debian_version
    );
    sh::step(&what, || {
        let target = kernel
            .origin
            .apt_target()
            .map_or(String::new(), |suite| format!("-t {suite}"));
        let (version, tree) = (&source.debian_version, &source.tree);
        rootfs
            .chroot(&format!(
                "ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || apt-get update -q >/dev/null\n\
                 apt-get install -y -q --no-install-recommends {target} {package}={version}\n\
                 rm -rf {tree}.tmp && mkdir -p {tree}.tmp\n\
                 tar -xJf /usr/src/{package}.tar.xz -C {tree}.tmp --strip-components=1 {package}/{RXE_SUBDIR}\n\
                 apt-get purge -y -q {package}\n\
                 apt-get clean\n\
                 rm -rf {tree} && mv {tree}.tmp {tree}"
            ))
            .with_context(|| {
                format!(
                    "getting {package}={version}, the source of {} (does Debian still offer that version?)",
                    kernel.release
                )
            })
    })?;
    Ok(source)
}

/// Builds rdma_rxe for `kernel` from Debian's source of it with every patch
/// of `kernel-patches/rxe` applied, unless that build is cached (keyed by
/// the kernel release, the Debian version and the patches' hash), and
/// installs the guest's swap script next to it.
///
/// # Errors
/// When `kernel`'s rxe has no ODP (nothing to fix), the source cannot be
/// fetched, a patch does not apply or the build fails.
pub fn build_patched(workspace: &Path, rootfs: &Rootfs, kernel: &Kernel) -> Result<PatchedRxe> {
    let release = &kernel.release;
    if !kernel.rxe_has_odp() {
        bail!("rdma_rxe of {release} has no ODP: the fix in {PATCH_DIR} does not apply to it");
    }
    let patches = patch_files(workspace)?;
    let hash = patch_hash(&patches)?;
    let source = ensure_source(rootfs, kernel)?;
    let dir = format!("{BUILD_CACHE}/{release}/{}-{hash}", source.debian_version);
    let patched = PatchedRxe {
        module: format!("{dir}/{RXE_SUBDIR}/rdma_rxe.ko"),
        swap_command: format!("{} {dir}/{RXE_SUBDIR}/rdma_rxe.ko", swap_script(rootfs)?),
    };
    if rootfs.host_path(&patched.module).exists() {
        eprintln!("    patched rdma_rxe for {release}: cached ({hash})");
        return Ok(patched);
    }
    let what = format!(
        "building rdma_rxe for {release} with {} patch(es) of {PATCH_DIR} (rootfs gcc-14)",
        patches.len()
    );
    sh::step(&what, || {
        let build = format!("{dir}.tmp");
        let host_build = rootfs.host_path(&build);
        if host_build.exists() {
            fs::remove_dir_all(&host_build)?;
        }
        fs::create_dir_all(&host_build)?;
        let mut script = format!("cp -a {}/drivers {build}/\n", source.tree);
        for patch in &patches {
            let name = patch.file_name().context("a patch without a name")?;
            fs::copy(patch, host_build.join(name))
                .with_context(|| format!("staging {}", patch.display()))?;
            script.push_str(&format!(
                "patch -d {build} -p1 --batch --forward < {build}/{}\n",
                name.to_string_lossy()
            ));
        }
        script.push_str(&format!(
            "make -C /lib/modules/{release}/build M={build}/{RXE_SUBDIR} CC=gcc-14 modules\n\
             rm -rf {dir} && mv {build} {dir}"
        ));
        rootfs.chroot(&script)?;
        if !rootfs.host_path(&patched.module).exists() {
            bail!("the build left no {}", patched.module);
        }
        Ok(())
    })?;
    Ok(patched)
}

/// Writes the guest's swap script into the rootfs (every time, so it is
/// always the current one) and returns its guest path.
fn swap_script(rootfs: &Rootfs) -> Result<String> {
    let guest = format!("{BUILD_CACHE}/rxe-swap.sh");
    let host = rootfs.host_path(&guest);
    fs::create_dir_all(host.parent().context("no parent")?)?;
    fs::write(&host, SWAP_SCRIPT).with_context(|| format!("writing {}", host.display()))?;
    fs::set_permissions(&host, fs::Permissions::from_mode(0o755))?;
    Ok(guest)
}

/// Builds the standalone reproducer (`rxe_odp_repro`) on the host, against
/// the host's libibverbs (the rootfs has no verbs headers), into `out`, and
/// returns its path. It runs in the guest like the host-built tests do.
///
/// # Errors
/// When make or the compiler fails.
pub fn build_reproducer(workspace: &Path, out: &Path) -> Result<PathBuf> {
    sh::step(
        "building kernel-patches/rxe/rxe_odp_repro (host cc)",
        || {
            sh::run(
                cmd(
                    "make",
                    ["-C".as_ref(), workspace.join(PATCH_DIR).as_os_str()],
                )
                .arg(format!("OUT={}", out.display())),
            )?;
            Ok(out.join("rxe_odp_repro"))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The module's cache key follows the diffs and ignores the messages.
    #[test]
    fn patch_hash_covers_the_diff_and_not_the_message() -> Result<()> {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let patches = patch_files(&workspace)?;
        let original = fs::read_to_string(&patches[0])?;
        let dir = std::env::temp_dir().join(format!("rxe-fix-test-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        let write = |name: &str, text: &str| -> Result<Vec<PathBuf>> {
            let path = dir.join(name);
            fs::write(&path, text)?;
            Ok(vec![path])
        };
        let reworded = original.replacen("two defects", "2 defects", 1);
        let changed = original.replacen("+\t\taddr += bytes;", "+\t\taddr += bytes - 1;", 1);
        assert_ne!(reworded, original, "the test's rewording found nothing");
        assert_ne!(changed, original, "the test's code change found nothing");
        let hash = patch_hash(&patches)?;
        let same = patch_hash(&write("reworded.patch", &reworded)?)?;
        let other = patch_hash(&write("changed.patch", &changed)?)?;
        fs::remove_dir_all(&dir)?;
        assert_eq!(hash, same);
        assert_ne!(hash, other);
        Ok(())
    }
}
