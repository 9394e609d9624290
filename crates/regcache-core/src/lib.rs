//! The generic memory-registration cache: what a hit and a miss do, independent of how memory
//! is registered and how changes are learnt.
//!
//! An MPI point-to-point layer calls [`Cache::cached_reg`] before every send; on a hit it costs
//! a lookup (no lock, no allocation), and it never hands out a registration whose pages were
//! replaced since it was registered:
//!
//! - each pinned registration is watched (through an [`InvalidationSource`], regwatch in
//!   production) *before* it is registered, and the watch is checked again after, and again
//!   under the lock before it enters the index (registrations are made outside the lock, so
//!   concurrent misses overlap): a change in between throws the registration away and retries;
//! - a miss that finds, once it has registered, that another thread published a registration
//!   serving the same request meanwhile uses that one and deregisters its own;
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
//! `testing`). This crate depends on neither libibverbs nor regwatch: the `regcache` crate is
//! the back end over both, and chooses the [`Policy`] a production cache runs.
//!
//! # Modules
//!
//! - `cache`: [`Cache`], the lock-free hit path and the miss path (locked, except while it
//!   registers);
//! - `index`: the immutable sorted index of disjoint spans, whose page map a hit walks;
//! - `page_map`: the radix tree from each page to the span covering it;
//! - `hazard`: hazard pointers that keep a replaced index alive while a hit reads it, and the
//!   list of retired indexes;
//! - `last_hit`: the thread-local shortcut to this thread's last hit;
//! - `sync`: std's atomics, or loom's when model-checking (`cfg(loom)`);
//! - `entry`: one registration ([`Registration`] is its handle) and the back end every entry
//!   of a cache shares;
//! - `policy`: [`Policy`] (what a request does) and [`Limits`];
//! - `traits`: the seams, [`Registrar`] and [`InvalidationSource`];
//! - `access`, `error`, `stats`: [`Access`] rights, [`Error`] of a hit or a miss, [`Stats`]
//!   counters.

mod access;
mod cache;
mod entry;
mod error;
mod hazard;
mod index;
mod last_hit;
mod page_map;
mod policy;
mod stats;
mod sync;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod traits;

pub use access::Access;
pub use cache::{Cache, PAGE};
pub use entry::Registration;
pub use error::{Error, Result};
pub use policy::{Limits, Policy};
pub use stats::Stats;
pub use traits::{InvalidationSource, MemoryRegion, NeverWatches, Registrar};
