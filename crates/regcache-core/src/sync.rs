//! The atomics, statics and thread-locals of the lock-free core (`hazard`, `last_hit` and the
//! index pointer of `cache`): std's, or under `cfg(loom)` loom's, so that
//! `RUSTFLAGS="--cfg loom" cargo test -p regcache-core --lib loom` model-checks them (the
//! convention of tokio and haphazard; `cargo xtask loom` runs it).
//!
//! # How sequentially consistent accesses are modelled
//!
//! loom models acquire, release and sequentially consistent *fences*, but not the single total
//! order of sequentially consistent *accesses*: it checks a `SeqCst` load or store as an acquire
//! or release one (tokio-rs/loom#180), so it would report the store-buffering outcome that the
//! hazard-pointer protocol relies on `SeqCst` to exclude. Under loom the atomics here therefore
//! check `SeqCst` accesses as x86-64 runs them (`xchg` or a `lock`-prefixed instruction, a full
//! barrier, for a store or read-modify-write; a plain load for a load): a `SeqCst` store or
//! read-modify-write as the release (acquire-release) access followed by a `SeqCst` fence, a
//! `SeqCst` load as an acquire load. In the protocol's store-then-load pairs (a reader's
//! announcement then its confirming load, a writer's publication then its scan) the store's
//! fence forbids the store-buffering outcome as the `SeqCst` accesses' total order does. So
//! weakening a store of such a pair is caught; weakening one of its loads is not (it would
//! still be correct on x86-64, not under the language's rules), which review must catch.

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64};

#[cfg(loom)]
pub(crate) use model::{AtomicBool, AtomicPtr, AtomicU64};

/// A `static` of an atomic type: a const-initialised `static`, or loom's lazy static (loom's
/// atomics are created inside each modelled execution).
macro_rules! atomic_static {
    ($(#[$attr:meta])* static $name:ident: $ty:ty = $init:expr;) => {
        #[cfg(not(loom))]
        $(#[$attr])*
        static $name: $ty = $init;
        #[cfg(loom)]
        loom::lazy_static! {
            $(#[$attr])*
            static ref $name: $ty = $init;
        }
    };
}

/// A thread-local with a const initialiser; loom's own thread-local under loom, so that each
/// modelled thread has its own and drops it when it exits.
macro_rules! const_thread_local {
    ($(#[$attr:meta])* static $name:ident: $ty:ty = $init:expr;) => {
        #[cfg(not(loom))]
        std::thread_local! {
            $(#[$attr])*
            static $name: $ty = const { $init };
        }
        #[cfg(loom)]
        loom::thread_local! {
            $(#[$attr])*
            static $name: $ty = $init;
        }
    };
}

pub(crate) use {atomic_static, const_thread_local};

#[cfg(loom)]
mod model {
    use loom::sync::atomic::{self, fence, Ordering, Ordering::SeqCst};

    /// The ordering loom checks in place of `ordering`, and whether a `SeqCst` fence stands
    /// for the rest of it (see the module documentation).
    fn split(ordering: Ordering, acquire_release: Ordering) -> (Ordering, bool) {
        if ordering == SeqCst {
            (acquire_release, true)
        } else {
            (ordering, false)
        }
    }

    macro_rules! atomic {
        ($name:ident, $value:ty $(, $param:ident)?) => {
            pub(crate) struct $name$(<$param>)?(atomic::$name$(<$param>)?);

            // Each type gets every operation; the core uses some of each.
            #[allow(dead_code)]
            impl$(<$param>)? $name$(<$param>)? {
                pub(crate) fn new(value: $value) -> Self {
                    Self(atomic::$name::new(value))
                }

                pub(crate) fn load(&self, ordering: Ordering) -> $value {
                    self.0.load(split(ordering, Ordering::Acquire).0)
                }

                pub(crate) fn store(&self, value: $value, ordering: Ordering) {
                    let (ordering, fenced) = split(ordering, Ordering::Release);
                    self.0.store(value, ordering);
                    if fenced {
                        fence(SeqCst);
                    }
                }

                pub(crate) fn compare_exchange(
                    &self,
                    current: $value,
                    new: $value,
                    success: Ordering,
                    failure: Ordering,
                ) -> Result<$value, $value> {
                    self.read_modify_write(success, failure, |atomic, success, failure| {
                        atomic.compare_exchange(current, new, success, failure)
                    })
                }

                pub(crate) fn compare_exchange_weak(
                    &self,
                    current: $value,
                    new: $value,
                    success: Ordering,
                    failure: Ordering,
                ) -> Result<$value, $value> {
                    self.read_modify_write(success, failure, |atomic, success, failure| {
                        atomic.compare_exchange_weak(current, new, success, failure)
                    })
                }

                fn read_modify_write<R>(
                    &self,
                    success: Ordering,
                    failure: Ordering,
                    operation: impl FnOnce(
                        &atomic::$name$(<$param>)?,
                        Ordering,
                        Ordering,
                    ) -> R,
                ) -> R {
                    let (success, fenced) = split(success, Ordering::AcqRel);
                    let (failure, _) = split(failure, Ordering::Acquire);
                    let result = operation(&self.0, success, failure);
                    if fenced {
                        fence(SeqCst);
                    }
                    result
                }
            }
        };
    }

    atomic!(AtomicBool, bool);
    atomic!(AtomicPtr, *mut T, T);
    atomic!(AtomicU64, u64);

    impl AtomicU64 {
        /// Only ever relaxed (version numbers).
        pub(crate) fn fetch_add(&self, value: u64, ordering: Ordering) -> u64 {
            assert_ne!(ordering, SeqCst, "not modelled");
            self.0.fetch_add(value, ordering)
        }
    }
}
