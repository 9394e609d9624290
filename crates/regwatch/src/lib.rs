//! Safe client of `/dev/regwatch`, the kernel module that tells a process
//! when the pages behind a watched range of its own address space change
//! (munmap, mremap, `MAP_FIXED`, madvise, migration, exit).
//!
//! A registration cache watches each registered range ([`Monitor::watch`]),
//! checks [`Monitor::is_valid`] (one atomic load, no system call) on every
//! hit, skips all invalidation work while [`Monitor::generation`] stands
//! still, and otherwise collects the dirty watches with [`Monitor::drain`].
//! An eviction (unwatch the victim, watch the new buffer) is one system call:
//! [`Monitor::watch_instead_of`].
//!
//! ```no_run
//! # fn main() -> Result<(), regwatch::Error> {
//! let monitor = regwatch::Monitor::with_capacity(1024)?;
//! let buffer = vec![0u8; 1 << 20];
//! let watch = monitor.watch(buffer.as_ptr() as usize, buffer.len(), 1)?;
//! assert!(monitor.is_valid(&watch));
//! let seen = monitor.generation();
//! drop(buffer); // a large Vec is munmapped: the watch turns dirty
//! if monitor.generation() != seen {
//!     monitor.drain(|record| println!("cookie {} changed: {:?}", record.cookie, record.reason))?;
//! }
//! monitor.unwatch(watch, 1)?;
//! # Ok(())
//! # }
//! ```
//!
//! The ABI comes from the module's uapi header (`kmod/include/uapi/linux/regwatch.h`)
//! through bindgen at build time.

// The status area is loaded with 8-byte relaxed atomic loads, which the Rust
// memory model allows on read-only memory only on these 64-bit targets;
// the ioctl numbers use the asm-generic encoding, which all of them share.
#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "loongarch64",
        target_arch = "s390x"
    )
)))]
compile_error!("regwatch supports Linux on x86_64, aarch64, riscv64, loongarch64 and s390x");

mod error;
mod fork;
mod monitor;
mod record;
mod status;
mod sys;
mod uapi;

pub use error::{Error, Result};
pub use monitor::{ApiInfo, Builder, Monitor, Totals, UserWatches};
pub use record::{Reason, Record, Watch};
