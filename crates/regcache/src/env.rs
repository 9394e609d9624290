//! What the user says, through `REGCACHE_*` variables: the [`Config`] of an
//! [`RdmaCache`](crate::RdmaCache).

use std::ffi::OsString;

use regcache_core::Limits;
use verbs::Mtu;

use crate::setup::{Mode, SetupError};

/// The cache's configuration; the default is mode `auto` within [`Limits::default`], with the
/// ODP self-test at the caller's path MTU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Which mode to run in.
    pub mode: Mode,
    /// Bounds (`REGCACHE_MAX_REGIONS`, `REGCACHE_MAX_BYTES`, `REGCACHE_MAX_MERGE_BYTES`).
    pub limits: Limits,
    /// Path MTU at which the ODP self-test runs (`REGCACHE_ODP_PROBE_MTU`); `None`: the path
    /// MTU the caller passes to [`RdmaCache::new`](crate::RdmaCache::new), that of its queue
    /// pairs. It should be the smallest path MTU of the QPs that will use the cache's
    /// registrations, because ODP may lose data at small MTUs only (issue 4).
    pub odp_probe_mtu: Option<Mtu>,
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
    /// [`SetupError::Config`] naming the first variable whose value is empty, not UTF-8 or not
    /// valid.
    pub fn from_env() -> Result<Self, SetupError> {
        Self::from_lookup(std::env::var_os)
    }

    /// [`Config::from_env`] reading variables through `lookup` instead of the environment.
    ///
    /// # Errors
    /// As [`Config::from_env`].
    pub fn from_lookup(
        lookup: impl Fn(&'static str) -> Option<OsString>,
    ) -> Result<Self, SetupError> {
        let mut config = Self::default();
        if let Some(value) = text(MODE_VAR, lookup(MODE_VAR))? {
            config.mode = Mode::parse(&value).ok_or(SetupError::Config {
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
                *field = parse_size(&value).map_err(|reason| SetupError::Config {
                    var,
                    value,
                    reason,
                })?;
            }
        }
        if let Some(value) = text(ODP_PROBE_MTU_VAR, lookup(ODP_PROBE_MTU_VAR))? {
            config.odp_probe_mtu = Some(parse_path_mtu(&value).ok_or(SetupError::Config {
                var: ODP_PROBE_MTU_VAR,
                value,
                reason: "expected a path MTU: 256, 512, 1024, 2048 or 4096",
            })?);
        }
        Ok(config)
    }
}

fn text(var: &'static str, value: Option<OsString>) -> Result<Option<String>, SetupError> {
    let Some(value) = value else { return Ok(None) };
    match value.into_string() {
        Ok(value) if value.trim().is_empty() => Err(SetupError::Config {
            var,
            value,
            reason: "empty value (unset the variable to get the default)",
        }),
        Ok(value) => Ok(Some(value)),
        Err(raw) => Err(SetupError::Config {
            var,
            value: raw.to_string_lossy().into_owned(),
            reason: "not valid UTF-8",
        }),
    }
}

fn parse_path_mtu(value: &str) -> Option<Mtu> {
    Mtu::try_from(value.trim().parse::<u32>().ok()?).ok()
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

    fn from_pairs(pairs: &[(&'static str, &str)]) -> Result<Config, SetupError> {
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
        assert_eq!(config.odp_probe_mtu, Some(Mtu::Mtu4096));
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
                Err(SetupError::Config {
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
        assert!(matches!(
            result,
            Err(SetupError::Config { var: MODE_VAR, .. })
        ));
    }
}
