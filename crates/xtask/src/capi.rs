//! libregcache for C programs. `cargo xtask install --prefix DIR` builds the C API crate
//! (release) and installs the shared and static library, `regcache.h` and `regcache.pc` under
//! DIR; the VM suite installs it the same way into its stage in the rootfs and builds the C
//! tests and the example there with gcc-14 against the installed copy, through pkg-config only.

use crate::rootfs::Rootfs;
use crate::sh::{self, cmd};
use crate::stage::Stage;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

const CRATE_DIR: &str = "crates/regcache-capi";
/// What the suite builds in the rootfs: the tests' and the example's sources, and the test
/// harness they share with the module's tests, at the same paths relative to each other as in
/// the repository.
const C_SOURCES: &[&str] = &[
    "crates/regcache-capi/tests/c",
    "crates/regcache-capi/examples/c",
    "kmod/tests/harness.h",
];

/// The C API crate's version (the library's and the .pc file's).
fn version(workspace: &Path) -> Result<String> {
    let manifest = fs::read_to_string(workspace.join(CRATE_DIR).join("Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|line| line.strip_prefix("version = \"")?.strip_suffix('"'))
        .map(str::to_owned)
        .context("no version in crates/regcache-capi/Cargo.toml")
}

/// `root` with `prefix` (absolute) below it: where files for `prefix` go when staged under
/// `root` (like make's DESTDIR).
fn under(root: &Path, prefix: &Path) -> PathBuf {
    root.join(prefix.strip_prefix("/").unwrap_or(prefix))
}

/// Builds libregcache (release) and installs it for `prefix`: files go to `destdir` + `prefix`
/// (just `prefix` without a destdir), and `regcache.pc` names `prefix`.
pub fn install(workspace: &Path, prefix: &Path, destdir: Option<&Path>) -> Result<()> {
    if !prefix.is_absolute() {
        bail!(
            "--prefix {} must be an absolute path (regcache.pc names it)",
            prefix.display()
        );
    }
    let root = destdir.map_or_else(|| prefix.to_owned(), |dest| under(dest, prefix));
    sh::step(
        &format!("installing libregcache into {}", root.display()),
        || {
            sh::run(
                cmd(
                    "cargo",
                    ["build", "--release", "--package", "regcache-capi"],
                )
                .current_dir(workspace),
            )?;
            let version = version(workspace)?;
            let major = version.split('.').next().unwrap_or("0");
            let built = workspace.join("target/release");
            let (lib, include, pkgconfig) = (
                root.join("lib"),
                root.join("include"),
                root.join("lib/pkgconfig"),
            );
            for dir in [&lib, &include, &pkgconfig] {
                fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let real = format!("libregcache.so.{version}");
            let soname = format!("libregcache.so.{major}");
            copy(&built.join("libregcache.so"), &lib.join(&real))?;
            copy(&built.join("libregcache.a"), &lib.join("libregcache.a"))?;
            for (link, target) in [(&soname, &real), (&"libregcache.so".to_owned(), &soname)] {
                let link = lib.join(link);
                if fs::symlink_metadata(&link).is_ok() {
                    fs::remove_file(&link)?;
                }
                std::os::unix::fs::symlink(target, &link)
                    .with_context(|| format!("linking {}", link.display()))?;
            }
            let crate_dir = workspace.join(CRATE_DIR);
            copy(
                &crate_dir.join("include/regcache.h"),
                &include.join("regcache.h"),
            )?;
            let pc = fs::read_to_string(crate_dir.join("regcache.pc.in"))?
                .replace("@PREFIX@", &prefix.to_string_lossy())
                .replace("@VERSION@", &version);
            fs::write(pkgconfig.join("regcache.pc"), pc)?;
            eprintln!(
                "    installed libregcache {version}: lib/{real} (+ .so, .so.{major}, .a), \
                 include/regcache.h, lib/pkgconfig/regcache.pc"
            );
            Ok(())
        },
    )
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

/// Installs libregcache into the stage (prefix `<stage>/prefix` as the guest sees it) and
/// builds the C API's tests and example in the rootfs against it into `<stage>/ctests`, where
/// the guest script runs every executable.
pub fn build_c_tests(workspace: &Path, rootfs: &Rootfs, stage: &Stage) -> Result<()> {
    let prefix = format!("{}/prefix", stage.guest_dir);
    install(workspace, Path::new(&prefix), Some(&rootfs.path))?;
    sh::step(
        "building the C API's tests and example (rootfs gcc-14, pkg-config)",
        || {
            let src = format!("{}/src/capi", stage.guest_dir);
            let src_host = rootfs.host_path(&src);
            for path in C_SOURCES {
                let dest = src_host.join(path);
                fs::create_dir_all(dest.parent().context("no parent")?)?;
                sh::run(&mut cmd(
                    "cp",
                    [
                        "-a".as_ref(),
                        workspace.join(path).as_os_str(),
                        dest.as_os_str(),
                    ],
                ))?;
            }
            rootfs.chroot(&format!(
                "PKG_CONFIG_PATH={prefix}/lib/pkgconfig make -C {src}/{CRATE_DIR}/tests/c \
                 CC=gcc-14 OUT={}/ctests",
                stage.guest_dir
            ))
        },
    )
}
