//! How a production cache is chosen: the user's [`Mode`], what the system offers
//! ([`Capabilities`]), the [`Policy`] they resolve to, and what can go wrong on the way
//! ([`SetupError`]).

use std::fmt;

use regcache_core::Policy;

/// The user's choice, as in `REGCACHE_MODE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// ODP where the device passes its self-test, else pinned with invalidation, else off.
    #[default]
    Auto,
    /// On-demand paging: the device follows the page tables, no invalidation needed.
    Odp,
    /// Pinned registrations, invalidated through an
    /// [`InvalidationSource`](regcache_core::InvalidationSource).
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

    pub(crate) fn parse(value: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(value))
            .map(|(mode, _)| *mode)
    }

    /// The policy this mode runs with on a system with `caps`.
    ///
    /// # Errors
    /// [`SetupError::ModeUnavailable`] when an explicit `odp` or `pinned` needs what `caps`
    /// lacks.
    pub fn resolve(self, caps: Capabilities) -> Result<Resolved, SetupError> {
        let unavailable = |reason| Err(SetupError::ModeUnavailable { mode: self, reason });
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

/// Everything that can stop [`RdmaCache::new`](crate::RdmaCache::new) or
/// [`Config::from_env`](crate::Config::from_env), one variant per cause.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// An environment variable held a value the cache cannot use.
    #[error("{var}={value:?}: {reason}")]
    Config {
        /// The variable's name.
        var: &'static str,
        /// The value found (lossily converted when it was not UTF-8).
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// `/dev/regwatch` exists but could not be opened for the pinned mode.
    #[error("opening /dev/regwatch failed")]
    OpenRegwatch {
        /// What regwatch reported.
        source: regwatch::Error,
    },
    /// The requested mode needs a capability the system lacks.
    #[error("mode {mode} is unavailable: {reason}")]
    ModeUnavailable {
        /// The mode that was asked for.
        mode: Mode,
        /// The missing capability.
        reason: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Err(SetupError::ModeUnavailable {
                mode: Mode::Odp,
                ..
            })
        ));
        assert!(matches!(
            Mode::Pinned.resolve(caps(OdpSupport::Full, false)),
            Err(SetupError::ModeUnavailable {
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
}
