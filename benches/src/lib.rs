//! Benchmarks of regcache's hit and miss paths beside UCX's registration cache (libucs rcache).
//!
//! Both caches get the same requests over the same regions: one-page regions one page apart
//! (regcache merges overlapping *and adjacent* registrations, so a gap keeps every region
//! separate; the fixtures assert it for both caches), registered by callbacks that cost nothing
//! (regcache's fake registrar, a no-op callback in UCX). What is timed is the caches' own work.
//!
//! `benches/hit_path.rs` runs them under criterion; `src/bin/hit_callgrind.rs` runs the same
//! loops for instruction counts under callgrind. `benches/miss_scaling.rs` measures misses from
//! many threads at once and hits beside them (`concurrency`), over a registrar that takes time.

pub mod concurrency;
pub mod summary;
pub mod ucx;
pub mod workload;
