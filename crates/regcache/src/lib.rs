//! A memory-registration cache for RDMA.
//!
//! An MPI point-to-point layer calls [`Cache::cached_reg`] before every send; on a hit it costs
//! a lookup (no lock, no allocation), and it never hands out a registration whose pages were
//! replaced since it was registered:
//!
//! - each pinned registration is watched (through an [`InvalidationSource`], regwatch in
//!   production) *before* it is registered, and the watch is checked again after: a change during
//!   registration throws the registration away and retries;
//! - a hit is a cached registration covering `[ptr, ptr + len)`, with at least the requested
//!   rights, whose watch is still valid;
//! - overlapping and adjacent requests merge into one registration, up to
//!   [`Limits::max_merge_bytes`];
//! - a registration leaves the cache when its pages change, when it is evicted (least recently
//!   used idle ones first, when [`Limits::max_regions`] or [`Limits::max_bytes`] is exceeded) or
//!   when a new registration overlaps it; it is deregistered once no [`Registration`] holds it,
//!   never before.
//!
//! The registrar and the invalidation source are traits ([`Registrar`], [`InvalidationSource`]),
//! so the cache logic is tested without hardware against the fakes of `testing` (cargo feature
//! `testing`).

mod access;
mod cache;
mod config;
mod entry;
mod error;
mod hazard;
mod index;
mod last_hit;
mod rdma;
mod stats;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod traits;

pub use access::Access;
pub use cache::Cache;
pub use config::{Capabilities, Config, Limits, Mode, OdpSupport, Policy, Resolved};
pub use entry::Registration;
pub use error::{Error, Result};
pub use rdma::{
    odp_self_test, Invalidation, OdpCheck, OdpSelfTest, RdmaCache, RdmaRegistration, RegwatchWatch,
    VerbsRegistrar,
};
pub use stats::Stats;
pub use traits::{InvalidationSource, MemoryRegion, NoInvalidation, Registrar};
