//! What the cache is told: the mode (from the user) and the policy it resolves to, and limits.

use std::ffi::OsString;
use std::fmt;

use crate::access::Access;
use crate::error::{Error, Result};

/// The user's choice, as in `REGCACHE_MODE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// ODP where the device passes its self-test, else pinned with invalidation, else off.
    #[default]
    Auto,
    /// On-demand paging: the device follows the page tables, no invalidation needed.
    Odp,
    /// Pinned registrations, invalidated through an
    /// [`InvalidationSource`](crate::InvalidationSource).
    Pinned,
    /// No cache: register and deregister on every call.
    Off,
}

impl Mode {
    const NAMES: [(Self, &'static str); 4] = [
        (Self::Auto, "auto"),
        (Self::Odp, "odp"),
        (Self::Pinned, "pinned"),
        (Self::Off, "off"),
    ];

    fn parse(value: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(value))
            .map(|(mode, _)| *mode)
    }

    /// The policy this mode runs with on a system with `caps`.
    ///
    /// # Errors
    /// [`Error::ModeUnavailable`] when an explicit `odp` or `pinned` needs what `caps` lacks.
    pub fn resolve(self, caps: Capabilities) -> Result<Resolved> {
        let unavailable = |reason| Err(Error::ModeUnavailable { mode: self, reason });
        let policy =
            match (self, caps.odp, caps.invalidation) {
                (Self::Off, _, _) => Policy::Off,
                (Self::Auto | Self::Odp, OdpSupport::Full, _) => Policy::Odp,
                (Self::Auto | Self::Odp, OdpSupport::DeviceReadsOnly, true) => {
                    Policy::OdpForDeviceReads
                }
                (Self::Odp, OdpSupport::DeviceReadsOnly, false) => return unavailable(
                    "ODP is trusted for device reads only and no invalidation source covers writes",
                ),
                (Self::Odp, OdpSupport::None, _) => {
                    return unavailable("the device has no working ODP for RC send/recv/read/write")
                }
                (Self::Auto | Self::Pinned, _, true) => Policy::Pinned,
                (Self::Pinned, _, false) => {
                    return unavailable("no invalidation source (is regwatch loaded?)")
                }
                (Self::Auto, _, false) => {
                    return Ok(Resolved {
                        policy: Policy::Off,
                        fallback_reason: Some(
                            "no trusted ODP and no invalidation source: registering on every call",
                        ),
                    })
                }
            };
        Ok(Resolved {
            policy,
            fallback_reason: None,
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::NAMES
            .iter()
            .find(|(mode, _)| mode == self)
            .map_or("?", |(_, name)| name);
        f.write_str(name)
    }
}

/// How far the device's on-demand paging can be trusted (from its caps and the ODP self-test).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OdpSupport {
    /// No ODP for RC send/recv/read/write, or the self-test failed for reads too.
    None,
    /// The self-test passed only where the device reads the memory.
    DeviceReadsOnly,
    /// The self-test passed for reads and writes.
    Full,
}

/// What the system offers, as found by the backend at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// ODP support of the device.
    pub odp: OdpSupport,
    /// Whether an invalidation source (regwatch) is available.
    pub invalidation: bool,
}

/// The outcome of [`Mode::resolve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The policy to run the cache with.
    pub policy: Policy,
    /// Why `auto` fell back to [`Policy::Off`]; the caller logs it once.
    pub fallback_reason: Option<&'static str>,
}

/// What the cache does on each request: the only thing the cache logic needs to know of the mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Pinned registrations, each watched before it is registered; a hit needs a valid watch.
    Pinned,
    /// ODP registrations, cached without watches: the device follows the page tables.
    Odp,
    /// ODP for registrations the device only reads, [`Policy::Pinned`] for the rest.
    OdpForDeviceReads,
    /// Register on every call, deregister when the handle drops.
    Off,
    /// Pinned registrations cached WITHOUT invalidation: hands out stale registrations after
    /// munmap. Exists only as the negative control that proves the stale-buffer tests can fail.
    TrustWithoutInvalidation,
}

/// How a policy registers one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The access passed to the registrar.
    pub(crate) access: Access,
    /// Whether the range is watched.
    pub(crate) watched: bool,
}

impl Policy {
    /// Whether registrations are kept after their handles drop.
    pub(crate) fn caches(self) -> bool {
        self != Self::Off
    }

    /// Whether any registration can carry a watch.
    pub(crate) fn watches(self) -> bool {
        matches!(self, Self::Pinned | Self::OdpForDeviceReads)
    }

    pub(crate) fn plan(self, access: Access) -> Plan {
        let access = access.without(Access::ON_DEMAND);
        let on_demand = Plan {
            access: access | Access::ON_DEMAND,
            watched: false,
        };
        let pinned = |watched| Plan { access, watched };
        match self {
            Self::Pinned => pinned(true),
            Self::Odp => on_demand,
            Self::OdpForDeviceReads if access.device_writes() => pinned(true),
            Self::OdpForDeviceReads => on_demand,
            Self::Off | Self::TrustWithoutInvalidation => pinned(false),
        }
    }
}

/// Bounds on what the cache keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Live registrations above which idle ones are evicted (`REGCACHE_MAX_REGIONS`).
    pub max_regions: usize,
    /// Registered bytes above which idle registrations are evicted (`REGCACHE_MAX_BYTES`).
    pub max_bytes: usize,
    /// Largest registration a merge of neighbouring requests may produce
    /// (`REGCACHE_MAX_MERGE_BYTES`); a request that is larger on its own is still registered.
    pub max_merge_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_regions: 16 * 1024,
            max_bytes: 1 << 30,
            max_merge_bytes: 64 << 20,
        }
    }
}

/// The cache's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Which mode to run in.
    pub mode: Mode,
    /// Bounds.
    pub limits: Limits,
    /// Path MTU in bytes at which the ODP self-test runs (`REGCACHE_ODP_PROBE_MTU`): the smallest
    /// path MTU of the QPs that will use the cache's registrations, because ODP may lose data
    /// at small MTUs only (issue 4). One of 256, 512, 1024, 2048, 4096.
    pub odp_probe_mtu: u32,
}

/// Path MTUs an InfiniBand or RoCE path can have, in bytes.
const PATH_MTUS: [u32; 5] = [256, 512, 1024, 2048, 4096];

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::default(),
            limits: Limits::default(),
            // The smallest path MTU QPs commonly use on Ethernet (RoCE over a 1500-byte link).
            odp_probe_mtu: 1024,
        }
    }
}

const MODE_VAR: &str = "REGCACHE_MODE";
const MAX_REGIONS_VAR: &str = "REGCACHE_MAX_REGIONS";
const MAX_BYTES_VAR: &str = "REGCACHE_MAX_BYTES";
const MAX_MERGE_BYTES_VAR: &str = "REGCACHE_MAX_MERGE_BYTES";
const ODP_PROBE_MTU_VAR: &str = "REGCACHE_ODP_PROBE_MTU";

impl Config {
    /// The defaults overridden by `REGCACHE_MODE` (`auto|odp|pinned|off`), `REGCACHE_MAX_REGIONS`,
    /// `REGCACHE_MAX_BYTES` and `REGCACHE_MAX_MERGE_BYTES` (a number with an optional binary
    /// suffix: `4096`, `64K`, `64M`, `1GiB`, `2T`) and `REGCACHE_ODP_PROBE_MTU` (a path MTU:
    /// `256`, `512`, `1024`, `2048` or `4096`).
    ///
    /// # Errors
    /// [`Error::Config`] naming the first variable whose value is empty, not UTF-8 or not valid.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(std::env::var_os)
    }

    /// [`Config::from_env`] reading variables through `lookup` instead of the environment.
    ///
    /// # Errors
    /// As [`Config::from_env`].
    pub fn from_lookup(lookup: impl Fn(&'static str) -> Option<OsString>) -> Result<Self> {
        let mut config = Self::default();
        if let Some(value) = text(MODE_VAR, lookup(MODE_VAR))? {
            config.mode = Mode::parse(&value).ok_or(Error::Config {
                var: MODE_VAR,
                value,
                reason: "expected one of auto, odp, pinned, off",
            })?;
        }
        let sizes = [
            (MAX_REGIONS_VAR, &mut config.limits.max_regions),
            (MAX_BYTES_VAR, &mut config.limits.max_bytes),
            (MAX_MERGE_BYTES_VAR, &mut config.limits.max_merge_bytes),
        ];
        for (var, field) in sizes {
            if let Some(value) = text(var, lookup(var))? {
                *field =
                    parse_size(&value).map_err(|reason| Error::Config { var, value, reason })?;
            }
        }
        if let Some(value) = text(ODP_PROBE_MTU_VAR, lookup(ODP_PROBE_MTU_VAR))? {
            config.odp_probe_mtu = parse_path_mtu(&value).ok_or(Error::Config {
                var: ODP_PROBE_MTU_VAR,
                value,
                reason: "expected a path MTU: 256, 512, 1024, 2048 or 4096",
            })?;
        }
        Ok(config)
    }
}

fn text(var: &'static str, value: Option<OsString>) -> Result<Option<String>> {
    let Some(value) = value else { return Ok(None) };
    match value.into_string() {
        Ok(value) if value.trim().is_empty() => Err(Error::Config {
            var,
            value,
            reason: "empty value (unset the variable to get the default)",
        }),
        Ok(value) => Ok(Some(value)),
        Err(raw) => Err(Error::Config {
            var,
            value: raw.to_string_lossy().into_owned(),
            reason: "not valid UTF-8",
        }),
    }
}

fn parse_path_mtu(value: &str) -> Option<u32> {
    let mtu = value.trim().parse().ok()?;
    PATH_MTUS.contains(&mtu).then_some(mtu)
}

/// `digits[K|M|G|T][i][B]`, case-insensitive, binary multiples.
fn parse_size(value: &str) -> Result<usize, &'static str> {
    let value = value.trim();
    let digits_end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, suffix) = value.split_at(digits_end);
    if digits.is_empty() {
        return Err("expected a number with an optional K, M, G or T suffix");
    }
    let suffix = suffix.to_ascii_uppercase();
    let unit = suffix
        .strip_suffix('B')
        .map_or(suffix.as_str(), |s| s.strip_suffix('I').unwrap_or(s));
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err("expected a number with an optional K, M, G or T suffix"),
    };
    let number: usize = digits.parse().map_err(|_| "number too large")?;
    number.checked_mul(1 << shift).ok_or("number too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_pairs(pairs: &[(&'static str, &str)]) -> Result<Config> {
        Config::from_lookup(|var| {
            pairs
                .iter()
                .find(|(name, _)| *name == var)
                .map(|(_, value)| OsString::from(value))
        })
    }

    #[test]
    fn no_variables_give_defaults() {
        assert_eq!(from_pairs(&[]).unwrap(), Config::default());
    }

    #[test]
    fn every_variable_is_read() {
        let config = from_pairs(&[
            (MODE_VAR, "Pinned"),
            (MAX_REGIONS_VAR, "4K"),
            (MAX_BYTES_VAR, "64M"),
            (MAX_MERGE_BYTES_VAR, "1GiB"),
            (ODP_PROBE_MTU_VAR, "4096"),
        ])
        .unwrap();
        assert_eq!(config.mode, Mode::Pinned);
        assert_eq!(config.limits.max_regions, 4096);
        assert_eq!(config.limits.max_bytes, 64 << 20);
        assert_eq!(config.limits.max_merge_bytes, 1 << 30);
        assert_eq!(config.odp_probe_mtu, 4096);
    }

    #[test]
    fn sizes_accept_binary_suffixes() {
        for (text, expected) in [
            ("0", 0),
            ("4096", 4096),
            ("2k", 2048),
            ("3KB", 3072),
            ("64M", 64 << 20),
            ("1G", 1 << 30),
            ("1gib", 1 << 30),
            ("2T", 2 << 40),
        ] {
            assert_eq!(parse_size(text), Ok(expected), "{text}");
        }
        for bad in [
            "",
            "M",
            "12X",
            "1.5G",
            "-1",
            "99999999999999999999",
            "16777216T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_invalid_value_names_its_variable() {
        let cases = [
            (MODE_VAR, "fast"),
            (MAX_REGIONS_VAR, "many"),
            (MAX_BYTES_VAR, "64Q"),
            (MAX_MERGE_BYTES_VAR, ""),
            (ODP_PROBE_MTU_VAR, "1500"),
            (ODP_PROBE_MTU_VAR, "4K"),
        ];
        for (var, value) in cases {
            match from_pairs(&[(var, value)]) {
                Err(Error::Config {
                    var: named,
                    value: found,
                    ..
                }) => {
                    assert_eq!(named, var);
                    assert_eq!(found, value);
                }
                other => panic!("{var}={value}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_non_utf8_value_is_an_error() {
        use std::os::unix::ffi::OsStringExt;
        let result = Config::from_lookup(|var| {
            (var == MODE_VAR).then(|| OsString::from_vec(vec![0xff, b'o']))
        });
        assert!(matches!(result, Err(Error::Config { var: MODE_VAR, .. })));
    }

    fn caps(odp: OdpSupport, invalidation: bool) -> Capabilities {
        Capabilities { odp, invalidation }
    }

    #[test]
    fn auto_prefers_odp_then_pinned_then_off() {
        let resolve = |odp, inval| Mode::Auto.resolve(caps(odp, inval)).unwrap();
        assert_eq!(resolve(OdpSupport::Full, false).policy, Policy::Odp);
        assert_eq!(
            resolve(OdpSupport::DeviceReadsOnly, true).policy,
            Policy::OdpForDeviceReads
        );
        assert_eq!(resolve(OdpSupport::None, true).policy, Policy::Pinned);
        let off = resolve(OdpSupport::DeviceReadsOnly, false);
        assert_eq!(off.policy, Policy::Off);
        assert!(off.fallback_reason.is_some());
    }

    #[test]
    fn explicit_modes_fail_without_their_capability() {
        assert!(matches!(
            Mode::Odp.resolve(caps(OdpSupport::None, true)),
            Err(Error::ModeUnavailable {
                mode: Mode::Odp,
                ..
            })
        ));
        assert!(matches!(
            Mode::Pinned.resolve(caps(OdpSupport::Full, false)),
            Err(Error::ModeUnavailable {
                mode: Mode::Pinned,
                ..
            })
        ));
        assert_eq!(
            Mode::Off
                .resolve(caps(OdpSupport::Full, true))
                .unwrap()
                .policy,
            Policy::Off
        );
    }

    #[test]
    fn plans_follow_the_policy() {
        let write = Access::LOCAL_WRITE;
        let read = Access::REMOTE_READ | Access::ON_DEMAND;
        let plan = |policy: Policy, access| policy.plan(access);
        assert_eq!(
            plan(Policy::Pinned, read),
            Plan {
                access: Access::REMOTE_READ,
                watched: true
            }
        );
        assert_eq!(plan(Policy::Odp, write).access, write | Access::ON_DEMAND);
        assert!(plan(Policy::OdpForDeviceReads, write).watched);
        assert!(!plan(Policy::OdpForDeviceReads, read).watched);
        assert!(!plan(Policy::TrustWithoutInvalidation, write).watched);
    }
}
