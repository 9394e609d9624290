//! Which kernels are under test: Debian's newest from trixie-backports and
//! trixie's LTS, resolved with the rootfs's apt and remembered, or pinned by
//! flag or environment; what each must support in the guest; and picking
//! them by `--kernel`.

use crate::rootfs::Rootfs;
use crate::sh;
use crate::vmdir::VmDir;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::PathBuf;

/// The file in the cache directory that remembers the resolved releases.
const RESOLVED_FILE: &str = "kernels.resolved";

/// Where a kernel under test comes from; its `--kernel` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// trixie-backports' newest kernel.
    Backports,
    /// trixie's own kernel, an LTS.
    Lts,
}

impl Origin {
    /// The name `--kernel` selects it by.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Backports => "backports",
            Origin::Lts => "lts",
        }
    }

    /// The Debian suite that ships it.
    pub fn suite(self) -> &'static str {
        match self {
            Origin::Backports => "trixie-backports",
            Origin::Lts => "trixie",
        }
    }

    /// The suite apt must be told to take its packages from: backports are
    /// never installed by default.
    pub fn apt_target(self) -> Option<&'static str> {
        match self {
            Origin::Backports => Some(self.suite()),
            Origin::Lts => None,
        }
    }
}

/// A kernel under test, named by its release string (`uname -r`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub release: String,
    pub origin: Origin,
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

    /// The environment that tells the guest script and the tests what this
    /// kernel must support with its stock rdma_rxe.
    pub fn guest_expectations(&self) -> String {
        Configuration::stock(self.clone()).guest_expectations()
    }

    /// The kernel image in the rootfs.
    pub fn vmlinuz(&self, rootfs: &Rootfs) -> PathBuf {
        rootfs.host_path(&format!("/boot/vmlinuz-{}", self.release))
    }

    /// Installs the kernel's image, modules and headers into the rootfs
    /// unless present.
    pub fn ensure_installed(&self, rootfs: &Rootfs) -> Result<()> {
        rootfs.ensure_kernel(&self.release, self.origin.apt_target())
    }
}

/// Which rdma_rxe a guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rxe {
    /// The kernel's own module.
    Stock,
    /// Built from the kernel's own source with the ODP copy fix of
    /// `kernel-patches/rxe` ([`crate::rxe_fix`]), swapped in right after the
    /// guest set Soft-RoCE up.
    Fixed,
}

/// A guest configuration under test: a kernel and the rdma_rxe it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configuration {
    pub kernel: Kernel,
    pub rxe: Rxe,
}

impl Configuration {
    pub fn stock(kernel: Kernel) -> Self {
        Configuration {
            kernel,
            rxe: Rxe::Stock,
        }
    }

    /// The name `--kernel` selects it by: the origin's, `-fixed` added for
    /// the fixed rxe (`backports-fixed`).
    pub fn name(&self) -> String {
        match self.rxe {
            Rxe::Stock => self.kernel.origin.name().to_owned(),
            Rxe::Fixed => format!("{}-fixed", self.kernel.origin.name()),
        }
    }

    /// The release and the rxe, for summaries.
    pub fn describe(&self) -> String {
        match self.rxe {
            Rxe::Stock => format!("{} ({})", self.kernel.release, self.name()),
            Rxe::Fixed => format!(
                "{} with the fixed rdma_rxe ({})",
                self.kernel.release,
                self.name()
            ),
        }
    }

    /// Whether rxe's ODP moves data correctly, so the cache's ODP self-test
    /// must pass: only with the fix.
    pub fn rxe_odp_correct(&self) -> bool {
        self.rxe == Rxe::Fixed && self.kernel.rxe_has_odp()
    }

    /// The environment that tells the guest script and the tests what this
    /// configuration must support.
    pub fn guest_expectations(&self) -> String {
        format!(
            "REGCACHE_EXPECT_ODP={} REGCACHE_EXPECT_ODP_CORRECT={} REGCACHE_EXPECT_RXE1={}",
            u8::from(self.kernel.rxe_has_odp()),
            u8::from(self.rxe_odp_correct()),
            u8::from(self.kernel.rxe_crosses_netns()),
        )
    }
}

/// Every configuration of the suite, in the order it runs: each kernel with
/// its stock rxe, and right after a kernel whose rxe has ODP, that kernel
/// with the fixed rxe.
pub fn configurations(kernels: &[Kernel]) -> Vec<Configuration> {
    kernels
        .iter()
        .flat_map(|kernel| {
            let fixed = kernel.rxe_has_odp().then(|| Configuration {
                kernel: kernel.clone(),
                rxe: Rxe::Fixed,
            });
            std::iter::once(Configuration::stock(kernel.clone())).chain(fixed)
        })
        .collect()
}

/// Picks configurations by a `--kernel` selector: `all`, a configuration's
/// name (`backports`, `backports-fixed`, `lts`), or a prefix of a release,
/// which picks every configuration of that kernel.
pub fn select_configurations(
    configurations: &[Configuration],
    selector: &str,
) -> Result<Vec<Configuration>> {
    let chosen: Vec<Configuration> = configurations
        .iter()
        .filter(|c| {
            selector == "all" || c.name() == selector || c.kernel.release.starts_with(selector)
        })
        .cloned()
        .collect();
    if chosen.is_empty() {
        let names: Vec<String> = configurations.iter().map(Configuration::describe).collect();
        bail!(
            "--kernel {selector} matches none of the configurations under test ({}); use all, a name or a release prefix",
            names.join(", ")
        );
    }
    Ok(chosen)
}

/// Kernel releases fixed by flag or environment instead of resolved.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KernelPins {
    /// Kernel release from trixie-backports to test, e.g. 7.3.4+deb13-amd64.
    #[arg(long, env = "REGCACHE_KERNEL_BACKPORTS", global = true)]
    pub backports_kernel: Option<String>,
    /// Kernel release from trixie (the LTS) to test, e.g. 6.12.107+deb13-amd64.
    #[arg(long, env = "REGCACHE_KERNEL_LTS", global = true)]
    pub lts_kernel: Option<String>,
    /// Ask apt for the newest kernels again instead of using the cached answer.
    #[arg(long, global = true)]
    pub refresh_kernels: bool,
}

/// The newest release of each origin, backports first.
#[derive(Debug, PartialEq, Eq)]
struct Newest {
    backports: String,
    lts: String,
}

/// The kernels under test, newest first: trixie-backports' and trixie's.
/// Resolved once and remembered in the cache directory, so a warm run asks no
/// mirror; pins override either.
pub fn under_test(vm: &VmDir, rootfs: &Rootfs, pins: &KernelPins) -> Result<Vec<Kernel>> {
    let all_pinned = pins.backports_kernel.is_some() && pins.lts_kernel.is_some();
    let resolved_file = vm.root.join(RESOLVED_FILE);
    let cached = fs::read_to_string(&resolved_file)
        .ok()
        .filter(|_| !pins.refresh_kernels);
    let newest = if all_pinned {
        Newest {
            backports: String::new(),
            lts: String::new(),
        }
    } else if let Some(found) = cached.as_deref().and_then(parse_remembered) {
        found
    } else {
        let newest = resolve(rootfs)?;
        fs::write(
            &resolved_file,
            format!("{}\n{}\n", newest.backports, newest.lts),
        )?;
        newest
    };
    let kernels = vec![
        Kernel {
            release: pins.backports_kernel.clone().unwrap_or(newest.backports),
            origin: Origin::Backports,
        },
        Kernel {
            release: pins.lts_kernel.clone().unwrap_or(newest.lts),
            origin: Origin::Lts,
        },
    ];
    for kernel in &kernels {
        eprintln!(
            "    kernel under test: {} ({})",
            kernel.release,
            kernel.origin.suite()
        );
    }
    Ok(kernels)
}

fn parse_remembered(text: &str) -> Option<Newest> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    Some(Newest {
        backports: lines.next()?.to_owned(),
        lts: lines.next()?.to_owned(),
    })
}

/// The newest amd64 kernel of trixie-backports and of trixie proper, as the
/// rootfs's apt sees them now.
fn resolve(rootfs: &Rootfs) -> Result<Newest> {
    let listing = sh::step(
        "resolving kernel versions (apt-get update in the rootfs)",
        || {
            rootfs.chroot("apt-get update -q >/dev/null")?;
            rootfs.chroot_output("apt-cache show linux-image-amd64")
        },
    )?;
    parse_apt_listing(&listing)
}

/// Reads `apt-cache show linux-image-amd64`: each version of the
/// meta-package depends on one `linux-image-<release>`; a backports version
/// has `bpo` in it. The first entry of each origin is its newest.
fn parse_apt_listing(listing: &str) -> Result<Newest> {
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
            let newest = if version.contains("bpo") {
                &mut backports
            } else {
                &mut lts
            };
            newest.get_or_insert(release.to_owned());
        }
    }
    match (backports, lts) {
        (Some(backports), Some(lts)) => Ok(Newest { backports, lts }),
        _ => bail!(
            "apt-cache found no linux-image-amd64 in both trixie-backports and trixie:\n{listing}"
        ),
    }
}

/// Picks kernels by a `--kernel` selector: `all`, an origin's name
/// (`backports`, `lts`), or a prefix of a release such as `7`, `6.12` or
/// `7.3.4+deb13-amd64`.
pub fn select(kernels: &[Kernel], selector: &str) -> Result<Vec<Kernel>> {
    let chosen: Vec<Kernel> = kernels
        .iter()
        .filter(|k| {
            selector == "all" || k.origin.name() == selector || k.release.starts_with(selector)
        })
        .cloned()
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = kernels.iter().map(|k| k.release.as_str()).collect();
        bail!(
            "--kernel {selector} matches none of the kernels under test ({}); use all, backports, lts or a release prefix",
            names.join(", ")
        );
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernels() -> Vec<Kernel> {
        vec![
            Kernel {
                release: "7.3.4+deb13-amd64".to_owned(),
                origin: Origin::Backports,
            },
            Kernel {
                release: "6.12.117+deb13-amd64".to_owned(),
                origin: Origin::Lts,
            },
        ]
    }

    fn releases(selector: &str) -> Vec<String> {
        select(&kernels(), selector)
            .unwrap()
            .into_iter()
            .map(|k| k.release)
            .collect()
    }

    #[test]
    fn selectors_pick_by_origin_or_release_prefix() {
        assert_eq!(releases("all").len(), 2);
        assert_eq!(releases("backports"), ["7.3.4+deb13-amd64"]);
        assert_eq!(releases("lts"), ["6.12.117+deb13-amd64"]);
        assert_eq!(releases("6.12"), ["6.12.117+deb13-amd64"]);
        assert_eq!(releases("7"), ["7.3.4+deb13-amd64"]);
    }

    #[test]
    fn an_unknown_selector_names_the_kernels() {
        let error = select(&kernels(), "5.10").unwrap_err().to_string();
        assert!(error.contains("7.3.4+deb13-amd64, 6.12.117+deb13-amd64"));
    }

    #[test]
    fn expectations_follow_the_release_and_the_rxe() {
        let [backports, fixed, lts] = configurations(&kernels()).try_into().unwrap();
        assert_eq!(
            backports.guest_expectations(),
            "REGCACHE_EXPECT_ODP=1 REGCACHE_EXPECT_ODP_CORRECT=0 REGCACHE_EXPECT_RXE1=1"
        );
        assert_eq!(
            fixed.guest_expectations(),
            "REGCACHE_EXPECT_ODP=1 REGCACHE_EXPECT_ODP_CORRECT=1 REGCACHE_EXPECT_RXE1=1"
        );
        assert_eq!(
            lts.guest_expectations(),
            "REGCACHE_EXPECT_ODP=0 REGCACHE_EXPECT_ODP_CORRECT=0 REGCACHE_EXPECT_RXE1=0"
        );
        assert_eq!(
            kernels()[0].guest_expectations(),
            backports.guest_expectations()
        );
    }

    #[test]
    fn the_fixed_rxe_is_a_configuration_of_kernels_with_rxe_odp_only() {
        let names: Vec<String> = configurations(&kernels())
            .iter()
            .map(Configuration::name)
            .collect();
        assert_eq!(names, ["backports", "backports-fixed", "lts"]);
        let pick = |selector| -> Vec<String> {
            select_configurations(&configurations(&kernels()), selector)
                .unwrap()
                .iter()
                .map(Configuration::name)
                .collect()
        };
        assert_eq!(pick("backports"), ["backports"]);
        assert_eq!(pick("backports-fixed"), ["backports-fixed"]);
        assert_eq!(pick("7"), ["backports", "backports-fixed"]);
        assert_eq!(pick("all").len(), 3);
        let error = select_configurations(&configurations(&kernels()), "lts-fixed")
            .unwrap_err()
            .to_string();
        assert!(error.contains("7.3.4+deb13-amd64 with the fixed rdma_rxe (backports-fixed)"));
    }

    #[test]
    fn the_apt_listing_gives_the_newest_of_each_origin() {
        let listing = "Package: linux-image-amd64\nVersion: 7.3.4-1~bpo13+1\n\
                       Depends: linux-image-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)\n\n\
                       Package: linux-image-amd64\nVersion: 7.2.1-1~bpo13+1\n\
                       Depends: linux-image-7.2.1+deb13-amd64 (= 7.2.1-1~bpo13+1)\n\n\
                       Package: linux-image-amd64\nVersion: 6.12.117-1\n\
                       Depends: linux-image-6.12.117+deb13-amd64 (= 6.12.117-1)\n";
        assert_eq!(
            parse_apt_listing(listing).unwrap(),
            Newest {
                backports: "7.3.4+deb13-amd64".to_owned(),
                lts: "6.12.117+deb13-amd64".to_owned(),
            }
        );
        assert!(parse_apt_listing(
            "Version: 6.12.117-1\nDepends: linux-image-6.12.117+deb13-amd64\n"
        )
        .is_err());
    }

    #[test]
    fn the_remembered_file_round_trips() {
        assert_eq!(
            parse_remembered("7.3.4+deb13-amd64\n6.12.117+deb13-amd64\n"),
            Some(Newest {
                backports: "7.3.4+deb13-amd64".to_owned(),
                lts: "6.12.117+deb13-amd64".to_owned(),
            })
        );
        assert_eq!(parse_remembered("7.3.4+deb13-amd64\n"), None);
    }
}
