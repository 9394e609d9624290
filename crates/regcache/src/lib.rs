//! A memory-registration cache for RDMA: the generic cache of `regcache-core` (re-exported
//! here, see [`Cache`]) over libibverbs registrations and regwatch invalidations, in the mode
//! the system supports.
//!
//! [`RdmaCache::new`] chooses how a production cache runs: the user's [`Mode`] (from
//! [`Config::from_env`]), what the system offers ([`Capabilities`]: the verdict of the ODP
//! self-test, whether `/dev/regwatch` opens) and the [`Policy`] they resolve to. Everything
//! that can go wrong there is a [`SetupError`]; a request to the running cache returns the
//! core's [`Error`].
//!
//! # Modules
//!
//! - `cache`: [`RdmaCache`], which runs the set-up and then forwards requests to the core;
//! - `setup`: [`Mode`], [`Capabilities`], [`OdpSupport`], [`Mode::resolve`], [`SetupError`];
//! - `env`: [`Config`] and its `REGCACHE_*` variables;
//! - `odp_probe`: the ODP self-test ([`odp_self_test`]) behind [`OdpSupport`];
//! - `registrar`: [`VerbsRegistrar`], the core's registrar over `ibv_reg_mr`;
//! - `regwatch_or_none`: [`RegwatchOrNone`], the core's invalidation source.

mod cache;
mod env;
mod odp_probe;
mod registrar;
mod regwatch_or_none;
mod setup;

pub use cache::{RdmaCache, RdmaRegistration};
pub use env::Config;
pub use odp_probe::{odp_self_test, OdpCheck, OdpSelfTest};
pub use registrar::{VerbsRegion, VerbsRegistrar};
pub use regwatch_or_none::{RegwatchOrNone, RegwatchWatch};
pub use setup::{Capabilities, Mode, OdpSupport, Resolved, SetupError};

/// The core's fakes of the registrar and the invalidation source (cargo feature `testing`).
#[cfg(feature = "testing")]
pub use regcache_core::testing;
pub use regcache_core::{
    Access, Cache, Error, InvalidationSource, Limits, MemoryRegion, NeverWatches, Policy,
    Registrar, Registration, Result, Stats, PAGE,
};
