//! The crate's single error type and the drop-failure counter.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::cq::WcOpcode;
use crate::qp::QpState;

/// Result alias used by every fallible function of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a verbs call, one variant per operation.
///
/// Variants that wrap a failed libibverbs call carry the `errno` it reported as
/// an [`io::Error`], so callers can match on [`io::ErrorKind`] or
/// [`io::Error::raw_os_error`] (see [`Error::os_error`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `ibv_get_device_list` failed (e.g. `ENOSYS`: the kernel has no RDMA support).
    #[error("listing RDMA devices failed")]
    ListDevices {
        /// The errno reported by libibverbs.
        source: io::Error,
    },
    /// The named device does not exist ([`io::ErrorKind::NotFound`]) or `ibv_open_device` failed.
    #[error("opening RDMA device {name} failed")]
    OpenDevice {
        /// Device name as listed by [`crate::devices`], e.g. `rxe0`.
        name: String,
        /// The errno reported by libibverbs.
        source: io::Error,
    },
    /// `ibv_query_device_ex` failed.
    #[error("querying attributes of device {device} failed")]
    QueryDevice {
        /// Device name.
        device: String,
        /// The errno reported by libibverbs.
        source: io::Error,
    },
    /// `ibv_query_port` failed.
    #[error("querying port {port} of device {device} failed")]
    QueryPort {
        /// Device name.
        device: String,
        /// Port number (1-based).
        port: u8,
        /// The errno reported by libibverbs.
        source: io::Error,
    },
    /// `ibv_query_gid` or reading the GID type from sysfs failed.
    #[error("querying GID {index} of {device} port {port} failed")]
    QueryGid {
        /// Device name.
        device: String,
        /// Port number (1-based).
        port: u8,
        /// Index into the port's GID table.
        index: u32,
        /// The errno reported by libibverbs or the sysfs read.
        source: io::Error,
    },
    /// `ibv_alloc_pd` failed.
    #[error("allocating a protection domain on {device} failed")]
    AllocPd {
        /// Device name.
        device: String,
        /// The errno reported by libibverbs.
        source: io::Error,
    },
    /// `ibv_reg_mr` failed (`EOPNOTSUPP` for an ODP registration on a device without ODP,
    /// `ENOMEM`/`EPERM` when the pinned-memory limit is exhausted, `EFAULT` for unmapped memory).
    #[error("registering a memory region of {len} bytes failed")]
    RegisterMr {
        /// Length of the range that was to be registered.
        len: usize,
        /// The errno reported by libibverbs.
        source: io::Error,
    },
    /// `ibv_advise_mr` failed for a reason other than lack of support.
    #[error("advising (prefetching) {len} bytes of a memory region failed")]
    AdviseMr {
        /// Length of the advised range.
        len: usize,
        /// The errno reported by libibverbs.
        source: io::Error,
    },
    /// `mmap` of anonymous memory for a memory region failed.
    #[error("mapping {len} bytes of anonymous memory failed")]
    MapMemory {
        /// Length of the mapping.
        len: usize,
        /// The errno reported by mmap.
        source: io::Error,
    },
    /// A number of bytes that is not an IB path MTU (256, 512, 1024, 2048 or 4096).
    #[error("{bytes} is not a path MTU (256, 512, 1024, 2048 or 4096)")]
    NotAPathMtu {
        /// The number given.
        bytes: u32,
    },
    /// Access bits that this crate does not offer (e.g. remote atomics).
    #[error("access bits {bits:#x} hold rights the verbs layer does not offer")]
    UnsupportedAccess {
        /// The bits given.
        bits: u32,
    },
    /// A byte range (for a scatter/gather element or a copy) lies outside the memory region.
    #[error("range {offset}+{len} lies outside a memory region of {region_len} bytes")]
    RangeOutOfBounds {
        /// Requested offset into the region.
        offset: usize,
        /// Requested length.
        len: usize,
        /// Length of the region.
        region_len: usize,
    },
    /// `ibv_create_cq` failed.
    #[error("creating a completion queue with {entries} entries failed")]
    CreateCq {
        /// Requested number of entries.
        entries: u32,
        /// The errno reported by libibverbs.
        source: io::Error,
    },
    /// `ibv_create_qp` failed.
    #[error("creating an RC queue pair failed")]
    CreateQp {
        /// The errno reported by libibverbs.
        source: io::Error,
    },
    /// `ibv_modify_qp` to `state` failed.
    #[error("moving queue pair {qpn} to {state:?} failed")]
    ModifyQp {
        /// Number of the local queue pair.
        qpn: u32,
        /// The state the transition targeted.
        state: QpState,
        /// The errno reported by libibverbs.
        source: io::Error,
    },
    /// `ibv_post_send` refused the work request.
    #[error("posting {opcode} work request {wr_id} on queue pair {qpn} failed")]
    PostSend {
        /// Number of the local queue pair.
        qpn: u32,
        /// Caller's work-request id.
        wr_id: u64,
        /// `"RDMA WRITE"`, `"RDMA READ"` or `"SEND"`.
        opcode: &'static str,
        /// The errno reported by the provider.
        source: io::Error,
    },
    /// `ibv_post_recv` refused the work request.
    #[error("posting receive work request {wr_id} on queue pair {qpn} failed")]
    PostRecv {
        /// Number of the local queue pair.
        qpn: u32,
        /// Caller's work-request id.
        wr_id: u64,
        /// The errno reported by the provider.
        source: io::Error,
    },
    /// `ibv_poll_cq` reported an error.
    #[error("polling a completion queue failed")]
    PollCq {
        /// The errno reported by the provider.
        source: io::Error,
    },
    /// No completion arrived within the allowed time.
    #[error("no work completion arrived within {after:?}")]
    CompletionTimeout {
        /// How long was waited.
        after: Duration,
    },
    /// A work request completed with a status other than success.
    #[error("work request {wr_id} completed with status {status} ({status_code}, vendor error {vendor_err:#x}, opcode {opcode:?})")]
    WorkCompletion {
        /// Caller's work-request id.
        wr_id: u64,
        /// `ibv_wc_status_str` of the status, e.g. `"remote access error"`.
        status: String,
        /// Raw `enum ibv_wc_status` value.
        status_code: u32,
        /// Provider-specific error detail.
        vendor_err: u32,
        /// Opcode as reported; per the verbs specification it is only reliable on success.
        opcode: WcOpcode,
    },
}

impl Error {
    /// The OS error number behind this error, if it wraps a failed call.
    #[must_use]
    pub fn os_error(&self) -> Option<i32> {
        match self {
            Self::ListDevices { source }
            | Self::OpenDevice { source, .. }
            | Self::QueryDevice { source, .. }
            | Self::QueryPort { source, .. }
            | Self::QueryGid { source, .. }
            | Self::AllocPd { source, .. }
            | Self::RegisterMr { source, .. }
            | Self::AdviseMr { source, .. }
            | Self::MapMemory { source, .. }
            | Self::CreateCq { source, .. }
            | Self::CreateQp { source }
            | Self::ModifyQp { source, .. }
            | Self::PostSend { source, .. }
            | Self::PostRecv { source, .. }
            | Self::PollCq { source } => source.raw_os_error(),
            Self::NotAPathMtu { .. }
            | Self::UnsupportedAccess { .. }
            | Self::RangeOutOfBounds { .. }
            | Self::CompletionTimeout { .. }
            | Self::WorkCompletion { .. } => None,
        }
    }

    /// Whether the device or provider rejected the request with `EOPNOTSUPP`.
    #[must_use]
    pub fn is_unsupported(&self) -> bool {
        self.os_error() == Some(libc::EOPNOTSUPP)
    }
}

/// Number of verbs objects whose destruction failed in `Drop` since process start.
static DROP_FAILURES: AtomicU64 = AtomicU64::new(0);

/// How many deregistrations/destructions failed in `Drop` in this process.
///
/// `Drop` cannot return an error; a failure there (for example destroying a
/// queue pair the kernel still considers busy) is logged with `tracing::warn!`
/// and counted here, so tests can assert that nothing leaked.
#[must_use]
pub fn drop_failures() -> u64 {
    DROP_FAILURES.load(Ordering::Relaxed)
}

/// Records the result of an `ibv_destroy_*`/`ibv_dereg_*` style call made in `Drop`.
///
/// `ret` follows the libibverbs convention for destroy calls: 0 on success,
/// otherwise an errno value (positive, or negative in some providers).
pub(crate) fn note_drop_result(what: &'static str, ret: i32) {
    if ret != 0 {
        DROP_FAILURES.fetch_add(1, Ordering::Relaxed);
        let err = io::Error::from_raw_os_error(ret.abs());
        tracing::warn!(object = what, error = %err, "destroying verbs object failed; it leaks");
    }
}

/// The current `errno` as an [`io::Error`], for calls that return NULL on failure.
pub(crate) fn last_os_error() -> io::Error {
    io::Error::last_os_error()
}

/// An errno value returned directly by a call (positive, or negated) as an [`io::Error`].
pub(crate) fn returned_os_error(ret: i32) -> io::Error {
    io::Error::from_raw_os_error(ret.abs())
}

/// `err` followed by each error of its `source()` chain, joined by `": "`: one line for a log or
/// an assertion message that names the errno behind a verbs error.
#[must_use]
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_names_every_cause() {
        let err = Error::RegisterMr {
            len: 4096,
            source: io::Error::other("Bad address"),
        };
        assert_eq!(
            error_chain(&err),
            "registering a memory region of 4096 bytes failed: Bad address"
        );
    }
}
