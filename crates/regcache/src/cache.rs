//! [`RdmaCache`]: the generic cache over libibverbs registrations and regwatch invalidations,
//! set up in the mode the system supports.

use std::fmt;
use std::sync::Arc;

use regcache_core::{Access, Cache, Limits, Policy, Registration, Result, Stats};
use verbs::{Mtu, ProtectionDomain};

use crate::env::Config;
use crate::odp_probe::{self, OdpSelfTest};
use crate::registrar::VerbsRegistrar;
use crate::regwatch_or_none::RegwatchOrNone;
use crate::setup::{Capabilities, Mode, OdpSupport, SetupError};

/// A registration handed out by an [`RdmaCache`].
pub type RdmaRegistration = Registration<VerbsRegistrar, RegwatchOrNone>;

/// The registration cache of one protection domain, in whichever mode the system supports.
///
/// One concrete type serves every [`Policy`]: the registrar is always [`VerbsRegistrar`] and the
/// invalidation source is [`RegwatchOrNone::Regwatch`] for policies that watch, else
/// [`RegwatchOrNone::None`].
pub struct RdmaCache {
    cache: Cache<VerbsRegistrar, RegwatchOrNone>,
    odp_self_test: Option<OdpSelfTest>,
}

impl RdmaCache {
    /// A cache for registrations in `pd`, in `config.mode`:
    ///
    /// - `auto` and `odp` first run the ODP self-test ([`odp_self_test`](crate::odp_self_test))
    ///   at `config.odp_probe_mtu`, or else at `path_mtu` (that of the caller's queue pairs),
    ///   once per device and MTU in this process;
    /// - `auto` takes ODP when it passed, ODP for device reads plus pinned registrations
    ///   watched through regwatch when only that part passed, pinned with regwatch when
    ///   `/dev/regwatch` opens, else `off`; whenever it does not get full ODP it says why in one
    ///   tracing warning;
    /// - `odp`, `pinned` and `off` get exactly that (`odp` accepts ODP for device reads only,
    ///   with regwatch for the rest) or an error.
    ///
    /// The regwatch monitor gets room for twice `max_regions` watches: entries held by handles
    /// keep their watch after they leave the cache. [`RdmaCache::cached_reg`] evicts idle
    /// entries and retries once when the slots run out anyway.
    ///
    /// # Errors
    /// [`SetupError::ModeUnavailable`] when an explicit mode needs what the system lacks;
    /// [`SetupError::OpenRegwatch`] when `pinned` was asked for and `/dev/regwatch` exists but
    /// cannot be used.
    pub fn new(
        pd: Arc<ProtectionDomain>,
        config: Config,
        path_mtu: Mtu,
    ) -> Result<Self, SetupError> {
        let probe_mtu = config.odp_probe_mtu.unwrap_or(path_mtu);
        let odp_self_test = matches!(config.mode, Mode::Auto | Mode::Odp)
            .then(|| odp_probe::odp_self_test_once(&pd, probe_mtu));
        let odp = odp_self_test
            .as_ref()
            .map_or(OdpSupport::None, |test| test.support);
        let needs_invalidation = match config.mode {
            Mode::Off => false,
            Mode::Pinned => true,
            Mode::Auto | Mode::Odp => odp != OdpSupport::Full,
        };
        let (monitor, monitor_problem) =
            match needs_invalidation.then(|| open_monitor(config.limits)) {
                Some(Ok(monitor)) => (Some(monitor), None),
                Some(Err(problem)) => (None, Some(problem)),
                None => (None, None),
            };
        let caps = Capabilities {
            odp,
            invalidation: monitor.is_some(),
        };
        let resolved = match config.mode.resolve(caps) {
            Ok(resolved) => resolved,
            Err(err) => {
                return Err(match monitor_problem {
                    Some(source)
                        if config.mode == Mode::Pinned
                            && !matches!(source, regwatch::Error::NotLoaded) =>
                    {
                        SetupError::OpenRegwatch { source }
                    }
                    _ => err,
                })
            }
        };
        let policy = resolved.policy;
        if config.mode == Mode::Auto && policy != Policy::Odp {
            warn_fallback(policy, odp_self_test.as_ref(), monitor_problem.as_ref());
        }
        let source = match monitor {
            Some(monitor) if policy.watches() => RegwatchOrNone::Regwatch(monitor),
            _ => RegwatchOrNone::None,
        };
        // SAFETY: the registrar only registers what `cached_reg` is asked for, and
        // `RdmaCache::cached_reg` is unsafe with the contract `VerbsRegistrar::new` requires.
        let registrar = unsafe { VerbsRegistrar::new(pd) };
        tracing::info!(mode = %config.mode, ?policy, "regcache: cache created");
        Ok(Self {
            cache: Cache::new(registrar, source, policy, config.limits),
            odp_self_test,
        })
    }

    /// The negative control of the stale-buffer tests: pinned registrations cached WITHOUT
    /// invalidation ([`Policy::TrustWithoutInvalidation`]), which hand out stale registrations
    /// after munmap. Never use it for anything else.
    #[cfg(any(test, feature = "testing"))]
    #[must_use]
    pub fn trust_without_invalidation(pd: Arc<ProtectionDomain>, limits: Limits) -> Self {
        Self::without_checks(pd, Policy::TrustWithoutInvalidation, limits)
    }

    /// [`Policy::Odp`] without the self-test: for tests that exercise the ODP policy with
    /// transfers the device gets right on a device whose self-test fails for others (issue 4:
    /// rxe at path MTU 4096 with page-aligned buffers only). Never use it for anything else.
    #[cfg(any(test, feature = "testing"))]
    #[must_use]
    pub fn odp_without_self_test(pd: Arc<ProtectionDomain>, limits: Limits) -> Self {
        Self::without_checks(pd, Policy::Odp, limits)
    }

    #[cfg(any(test, feature = "testing"))]
    fn without_checks(pd: Arc<ProtectionDomain>, policy: Policy, limits: Limits) -> Self {
        // SAFETY: as in `RdmaCache::new`: `cached_reg` carries the contract.
        let registrar = unsafe { VerbsRegistrar::new(pd) };
        Self {
            cache: Cache::new(registrar, RegwatchOrNone::None, policy, limits),
            odp_self_test: None,
        }
    }

    /// A registration covering `[ptr, ptr + len)` with at least `access` (see
    /// [`Cache::cached_reg`]). A hit takes no lock, allocates nothing and makes no system call.
    ///
    /// # Safety
    ///
    /// The registration covers the whole pages holding the range, possibly merged with
    /// neighbouring requests, and stays registered while a handle or the cache holds it. The
    /// caller must guarantee, as for [`verbs::MemoryRegion::register`], that no Rust reference
    /// assuming those bytes unchanged or exclusively owned covers any of them while a work
    /// request or a peer holding the keys may write them (e.g. only pass memory set aside for
    /// I/O, and look at it only after the completions of writes into it).
    ///
    /// # Errors
    /// As [`Cache::cached_reg`]: [`Error::InvalidRange`], [`Error::Register`] (`EFAULT` when
    /// part of the range is not mapped), [`Error::Watch`] (`ENOSPC` also after evicting every
    /// idle registration), [`Error::Unstable`], [`Error::Drain`].
    ///
    /// [`Error::InvalidRange`]: crate::Error::InvalidRange
    /// [`Error::Register`]: crate::Error::Register
    /// [`Error::Watch`]: crate::Error::Watch
    /// [`Error::Unstable`]: crate::Error::Unstable
    /// [`Error::Drain`]: crate::Error::Drain
    pub unsafe fn cached_reg(
        &self,
        ptr: *const u8,
        len: usize,
        access: Access,
    ) -> Result<RdmaRegistration> {
        self.cache.cached_reg(ptr, len, access)
    }

    /// The counters (the ODP verdict is [`RdmaCache::odp_self_test`]).
    pub fn stats(&self) -> Stats {
        self.cache.stats()
    }

    /// The policy the cache runs.
    pub fn policy(&self) -> Policy {
        self.cache.policy()
    }

    /// The ODP self-test this cache was created after (`None` in modes that do not use ODP).
    pub fn odp_self_test(&self) -> Option<&OdpSelfTest> {
        self.odp_self_test.as_ref()
    }

    /// See [`Cache::flush_invalidations`].
    ///
    /// # Errors
    /// [`Error::Drain`](crate::Error::Drain) when regwatch cannot be read.
    pub fn flush_invalidations(&self) -> Result<()> {
        self.cache.flush_invalidations()
    }

    /// See [`Cache::evict_idle`].
    pub fn evict_idle(&self) -> usize {
        self.cache.evict_idle()
    }
}

impl fmt::Debug for RdmaCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RdmaCache")
            .field("cache", &self.cache)
            .field("odp_self_test", &self.odp_self_test)
            .finish()
    }
}

/// Opens regwatch with room for twice `max_regions` watches (plus slack for small limits), or
/// with the module's default when the module allows fewer.
fn open_monitor(limits: Limits) -> regwatch::Result<regwatch::Monitor> {
    let slots = limits
        .max_regions
        .saturating_mul(2)
        .saturating_add(1024)
        .try_into()
        .unwrap_or(u32::MAX);
    match regwatch::Monitor::with_capacity(slots) {
        Err(regwatch::Error::SetCapacity { source, .. })
            if source.raw_os_error() == Some(libc::EINVAL) =>
        {
            regwatch::Monitor::open()
        }
        result => result,
    }
}

/// The one warning of `auto` without full ODP: what it runs and why.
fn warn_fallback(
    policy: Policy,
    odp: Option<&OdpSelfTest>,
    monitor_problem: Option<&regwatch::Error>,
) {
    let odp = odp.map_or_else(|| "not tested".to_owned(), ToString::to_string);
    let regwatch = monitor_problem.map_or_else(|| "available".to_owned(), |err| err.to_string());
    let running = match policy {
        Policy::OdpForDeviceReads => {
            "ODP for registrations the device only reads, pinned + regwatch for the rest"
        }
        Policy::Pinned => "pinned registrations invalidated through regwatch",
        _ => "no cache: registering and deregistering on every call",
    };
    tracing::warn!(
        "regcache: mode auto runs {running}; ODP self-test: {odp}; regwatch: {regwatch}"
    );
}
