//! The one module that uses the `regcache` and `verbs` crates: a cache over a C caller's PD, in
//! the terms of the C API (its config struct, access bits, counters and names). Everything else
//! in this crate is C plumbing, so a change of the Rust API touches only this file.

use std::ffi::CStr;
use std::ptr::NonNull;

use rdma_sys::ibv_pd;
use regcache_rust::{
    Access, Config as CoreConfig, Limits, Mode, OdpSupport, Policy, RdmaCache, SetupError,
};
use verbs::{Mtu, ProtectionDomain, FIRST_PORT};

use crate::abi::{
    Config, Region, Stats, REGCACHE_MODE_AUTO, REGCACHE_MODE_ODP, REGCACHE_MODE_OFF,
    REGCACHE_MODE_PINNED, REGCACHE_ODP_DEVICE_READS_ONLY, REGCACHE_ODP_FULL, REGCACHE_ODP_NONE,
    REGCACHE_ODP_NOT_RUN,
};
use crate::failure::Failure;

/// A registration held for a C handle.
pub(crate) type Held = regcache_rust::RdmaRegistration;

/// The modes C names by number, in `REGCACHE_MODE_*` order, with their names.
const MODES: [(u32, Mode, &CStr); 4] = [
    (REGCACHE_MODE_AUTO, Mode::Auto, c"auto"),
    (REGCACHE_MODE_ODP, Mode::Odp, c"odp"),
    (REGCACHE_MODE_PINNED, Mode::Pinned, c"pinned"),
    (REGCACHE_MODE_OFF, Mode::Off, c"off"),
];

/// The defaults C starts from (`regcache_config_init`).
pub(crate) fn default_config() -> Config {
    let defaults = CoreConfig::default();
    let mode = MODES
        .iter()
        .find(|(_, mode, _)| *mode == defaults.mode)
        .map_or(REGCACHE_MODE_AUTO, |(number, _, _)| *number);
    Config {
        mode,
        odp_probe_mtu: defaults.odp_probe_mtu.map_or(0, Mtu::bytes),
        max_regions: defaults.limits.max_regions as u64,
        max_bytes: defaults.limits.max_bytes as u64,
        max_merge_bytes: defaults.limits.max_merge_bytes as u64,
        reserved: [0; 4],
    }
}

fn core_config(config: &Config) -> Result<CoreConfig, Failure> {
    let mode = MODES
        .iter()
        .find(|(number, _, _)| *number == config.mode)
        .map(|(_, mode, _)| *mode)
        .ok_or_else(|| Failure::invalid(format!("unknown mode {}", config.mode)))?;
    let odp_probe_mtu = match config.odp_probe_mtu {
        0 => None,
        bytes => Some(Mtu::try_from(bytes).map_err(|_| {
            Failure::invalid(format!(
                "odp_probe_mtu {bytes} is not 0 nor a path MTU (256, 512, 1024, 2048 or 4096)"
            ))
        })?),
    };
    if config.reserved != [0; 4] {
        return Err(Failure::invalid("reserved fields must be zero"));
    }
    // `as usize` is lossless: libibverbs and regwatch exist for 64-bit Linux only.
    Ok(CoreConfig {
        mode,
        odp_probe_mtu,
        limits: Limits {
            max_regions: config.max_regions as usize,
            max_bytes: config.max_bytes as usize,
            max_merge_bytes: config.max_merge_bytes as usize,
        },
    })
}

/// A cache over a borrowed PD.
#[derive(Debug)]
pub(crate) struct Backend {
    cache: RdmaCache,
    mode: &'static CStr,
}

impl Backend {
    /// A cache for registrations in `pd`, configured by `config` or, without one, by the
    /// `REGCACHE_*` environment variables.
    ///
    /// # Safety
    ///
    /// `pd` must be allocated, with its context open, until the returned value and every
    /// registration it handed out are dropped.
    pub(crate) unsafe fn new(
        pd: NonNull<ibv_pd>,
        config: Option<&Config>,
    ) -> Result<Self, Failure> {
        let config = match config {
            Some(config) => core_config(config)?,
            None => {
                CoreConfig::from_env().map_err(|err| Failure::from_chain(&err, libc::EINVAL))?
            }
        };
        // SAFETY: the caller keeps the PD and its context alive for as long as the cache and its
        // registrations, which are the only holders of the wrapper.
        let pd = unsafe { ProtectionDomain::from_borrowed(pd) }
            .ok_or_else(|| Failure::invalid("the ibv_pd has no context: not an allocated PD"))?;
        let mode = MODES
            .iter()
            .find(|(_, mode, _)| *mode == config.mode)
            .map_or(c"?", |(_, _, name)| *name);
        // Without a probe MTU of its own, the self-test runs at the port's active MTU: the
        // path MTU of the caller's QPs is not known here.
        let path_mtu = pd
            .context()
            .query_port(FIRST_PORT)
            .map_err(|err| Failure::from_chain(&err, libc::EIO))?
            .active_mtu
            .unwrap_or(Mtu::Mtu1024);
        let cache = RdmaCache::new(pd, config, path_mtu).map_err(|err| match err {
            SetupError::ModeUnavailable { .. } => Failure::new(libc::EOPNOTSUPP, err.to_string()),
            _ => Failure::from_chain(&err, libc::EIO),
        })?;
        Ok(Self { cache, mode })
    }

    /// A registration covering `[addr, addr + length)` with at least the `IBV_ACCESS_*` rights
    /// of `access`, and the fields C reads.
    pub(crate) fn register(
        &self,
        addr: usize,
        length: usize,
        access: u32,
    ) -> Result<(Held, Region), Failure> {
        let access = Access::from_bits(access).ok_or_else(|| {
            Failure::invalid(format!(
                "access {access:#x} holds a bit other than IBV_ACCESS_LOCAL_WRITE, \
                 REMOTE_WRITE, REMOTE_READ, REMOTE_ATOMIC or ON_DEMAND"
            ))
        })?;
        // SAFETY: the memory belongs to a C program: no Rust reference covers it, so the
        // device writing it cannot break Rust's aliasing rules (the contract of `cached_reg`).
        let held =
            unsafe { self.cache.cached_reg(addr as *const u8, length, access) }.map_err(|err| {
                let fallback = match err {
                    regcache_rust::Error::InvalidRange { .. } => libc::EINVAL,
                    regcache_rust::Error::Unstable { .. } => libc::EAGAIN,
                    _ => libc::EIO,
                };
                Failure::from_chain(&err, fallback)
            })?;
        let region = Region {
            addr: held.addr() as u64,
            length: held.length() as u64,
            lkey: held.lkey(),
            rkey: held.rkey(),
            access: held.access().bits(),
            reserved: 0,
        };
        Ok((held, region))
    }

    /// Takes the pending invalidations, then deregisters every idle registration; returns how
    /// many were deregistered.
    pub(crate) fn flush(&self) -> Result<usize, Failure> {
        self.cache
            .flush_invalidations()
            .map_err(|err| Failure::from_chain(&err, libc::EIO))?;
        Ok(self.cache.evict_idle())
    }

    /// The counters; `handles` is filled by the caller, who counts them.
    pub(crate) fn stats(&self) -> Stats {
        let stats = self.cache.stats();
        Stats {
            hits: stats.hits,
            misses: stats.misses,
            merges: stats.merges,
            evictions: stats.evictions,
            invalidations: stats.invalidated,
            registration_retries: stats.registration_retries,
            duplicate_registrations: stats.duplicate_registrations,
            deregister_failures: stats.deregister_failures,
            unwatch_failures: stats.unwatch_failures,
            regions: stats.regions,
            regions_in_use: stats.regions_in_use,
            bytes_registered: stats.bytes_registered,
            handles: 0,
            odp_self_test: match self.cache.odp_self_test().map(|test| test.support) {
                None => REGCACHE_ODP_NOT_RUN,
                Some(OdpSupport::None) => REGCACHE_ODP_NONE,
                Some(OdpSupport::DeviceReadsOnly) => REGCACHE_ODP_DEVICE_READS_ONLY,
                Some(OdpSupport::Full) => REGCACHE_ODP_FULL,
            },
            reserved: 0,
        }
    }

    /// The mode asked for: `auto`, `odp`, `pinned` or `off`.
    pub(crate) fn mode(&self) -> &'static CStr {
        self.mode
    }

    /// What the cache runs: `odp`, `odp-for-device-reads`, `pinned` or `off`.
    pub(crate) fn policy(&self) -> &'static CStr {
        match self.cache.policy() {
            Policy::Odp => c"odp",
            Policy::OdpForDeviceReads => c"odp-for-device-reads",
            Policy::Pinned => c"pinned",
            Policy::Off => c"off",
            Policy::TrustWithoutInvalidation => c"trust-without-invalidation",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_c_defaults_are_the_rust_defaults() {
        let config = default_config();
        assert_eq!(core_config(&config).unwrap(), CoreConfig::default());
    }

    #[test]
    fn every_mode_number_maps_to_its_mode() {
        for (number, mode, name) in MODES {
            let config = Config {
                mode: number,
                ..default_config()
            };
            assert_eq!(core_config(&config).unwrap().mode, mode);
            assert_eq!(name.to_str().unwrap(), mode.to_string());
        }
    }

    #[test]
    fn bad_fields_are_refused() {
        let bad = [
            Config {
                mode: 4,
                ..default_config()
            },
            Config {
                odp_probe_mtu: 1500,
                ..default_config()
            },
            Config {
                odp_probe_mtu: 8192,
                ..default_config()
            },
            Config {
                reserved: [0, 0, 1, 0],
                ..default_config()
            },
        ];
        for config in bad {
            assert!(core_config(&config).is_err(), "{config:?}");
        }
    }
}
