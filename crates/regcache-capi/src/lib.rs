//! `libregcache`: the registration cache for C programs (`regcache.h`, `regcache.pc`).
//!
//! The API follows the caches C RDMA code already uses: UCX's `ucs_rcache_get`/`put` and
//! libfabric's `ofi_mr_cache_search`/`delete`. A program creates a cache on its own
//! `struct ibv_pd *` ([`api::regcache_create`]), gets a handle with `lkey`, `rkey`, `addr` and
//! `length` for a buffer ([`api::regcache_register`]) before each transfer and releases it
//! ([`api::regcache_release`]) after the completion. `include/regcache.h` is generated from this
//! crate by cbindgen; `tests/header.rs` fails when it is stale.
//!
//! # Errors
//!
//! Every function returns an `int`: 0 (or a count) on success, a negative errno on failure,
//! described by `regcache_strerror` and, with the details, by `regcache_last_error` (per
//! thread). A Rust panic is caught at the boundary and returned as `-REGCACHE_EPANIC`
//! (`-ENOTRECOVERABLE`).
//!
//! # Pointers from C
//!
//! Cache and handle pointers are looked up in a registry ([`registry`]) before use, so NULL,
//! released, destroyed or foreign pointers get `-EINVAL` instead of a crash. Handles are heap
//! allocations whose first part is the public `struct regcache_region`.
//!
//! # Threads
//!
//! All functions are thread-safe. The cache's hit path takes no lock; the C layer adds one
//! allocation and a short per-cache lock per handle (to know which handles are live).

pub mod abi;
pub mod api;
mod backend;
mod failure;
mod registry;
