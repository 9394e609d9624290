//! The workspace's `rust-version` proven: the whole workspace checked with
//! Debian bookworm's `rustc-web` of that version (the one the development
//! image's users get without bookworm-security, which has a newer one).
//!
//! The toolchain's packages are downloaded with `apt-get download` and
//! unpacked with `dpkg -x` under `target/rust-version`, never installed: the
//! host's own toolchain and packages stay as they are.

use crate::sh::{self, cmd};
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// Debian's version of `rustc-web` and `cargo-web` in bookworm's main archive.
const DEBIAN_VERSION: &str = "1.85.0+dfsg3-1~deb12u3";
/// Libraries the toolchain's binaries load that a bookworm host with the
/// host packages lacks: rustc's LLVM, and cargo's HTTP parser and PCRE.
const RUNTIME_LIBRARIES: &[&str] = &["libllvm19", "libhttp-parser2.9", "libpcre3"];
/// Under the workspace: the downloaded packages, the unpacked toolchain and
/// its own cargo target directory.
const STATE_DIR: &str = "target/rust-version";

/// `1.85` of [`DEBIAN_VERSION`]: what the workspace's `rust-version` must say.
fn major_minor() -> &'static str {
    let mut dots = DEBIAN_VERSION.match_indices('.');
    let (second_dot, _) = dots.nth(1).expect("DEBIAN_VERSION is x.y.z+...");
    &DEBIAN_VERSION[..second_dot]
}

/// The packages to download, with their versions where one must be exact.
fn packages() -> Vec<String> {
    let pinned = [
        "rustc-web".to_string(),
        "cargo-web".to_string(),
        format!("libstd-rust-web-{}", major_minor()),
        "libstd-rust-web-dev".to_string(),
    ];
    pinned
        .into_iter()
        .map(|name| format!("{name}={DEBIAN_VERSION}"))
        .chain(RUNTIME_LIBRARIES.iter().map(|name| name.to_string()))
        .collect()
}

/// Downloads the packages into `debs` (refreshing apt's lists once if they
/// lack them, as in a container whose lists were removed) and unpacks them
/// into `root`.
fn fetch(debs: &Path, root: &Path) -> Result<()> {
    for dir in [debs, root] {
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        fs::create_dir_all(dir)?;
    }
    let download = || {
        sh::run(
            cmd(
                "apt-get",
                ["download", "-q", "-o", "APT::Sandbox::User=root"],
            )
            .args(packages())
            .current_dir(debs),
        )
    };
    if download().is_err() {
        eprintln!("    apt's lists lack them: apt-get update, then again");
        sh::run(&mut cmd("apt-get", ["update", "-q"]))?;
        download()?;
    }
    for entry in fs::read_dir(debs)? {
        let deb = entry?.path();
        sh::run(&mut cmd(
            "dpkg",
            ["-x".as_ref(), deb.as_os_str(), root.as_os_str()],
        ))?;
    }
    Ok(())
}

/// `rust-version`: `cargo check --workspace --all-targets --locked` with
/// Debian's rustc-web [`DEBIAN_VERSION`] (downloaded once, ~100 MB).
pub fn check(workspace: &Path) -> Result<()> {
    let state = workspace.join(STATE_DIR);
    let root = state.join(format!("root-{DEBIAN_VERSION}"));
    let bin = root.join("usr/bin");
    if !bin.join("cargo").exists() {
        sh::step(
            &format!("fetching Debian's rustc-web and cargo-web {DEBIAN_VERSION} (~100 MB, once)"),
            || fetch(&state.join("debs"), &root),
        )?;
    }
    let multiarch = sh::output(&mut cmd("gcc", ["-print-multiarch"]))?;
    let libraries: Vec<PathBuf> = ["usr/lib", "lib"]
        .iter()
        .map(|lib| root.join(lib).join(multiarch.trim()))
        .collect();
    let library_path =
        std::env::join_paths(&libraries).context("a library path with a colon in it")?;
    eprintln!(
        "    the workspace's rust-version is {}: checking it with that rustc",
        major_minor()
    );
    sh::run(
        cmd(
            bin.join("cargo").to_str().context("a non-UTF-8 path")?,
            ["check", "--workspace", "--all-targets", "--locked"],
        )
        .current_dir(workspace)
        .env("RUSTC", bin.join("rustc"))
        .env("LD_LIBRARY_PATH", library_path)
        .env("CARGO_TARGET_DIR", state.join("cargo"))
        .env_remove("RUSTUP_TOOLCHAIN"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKSPACE_MANIFEST: &str = include_str!("../../../Cargo.toml");

    #[test]
    fn checks_the_rust_version_the_workspace_declares() {
        let declared = WORKSPACE_MANIFEST
            .lines()
            .find_map(|line| line.strip_prefix("rust-version = "))
            .expect("Cargo.toml declares rust-version");
        let declared = declared.trim_matches('"');
        assert_eq!(declared, major_minor());
        assert!(packages().contains(&format!("libstd-rust-web-{declared}={DEBIAN_VERSION}")));
    }
}
