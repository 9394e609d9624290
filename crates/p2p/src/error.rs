//! The crate's one error type.

use std::io;
use std::time::Duration;

/// Everything that can go wrong in `p2p`, one variant per operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An environment variable of the launch configuration is missing or unusable.
    #[error("launch configuration: {var}={value:?}: {reason}")]
    Config {
        /// The variable (or variables) concerned.
        var: &'static str,
        /// The value found, empty when missing.
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A step of the TCP bootstrap failed (a timeout shows as [`io::ErrorKind::TimedOut`] or
    /// [`io::ErrorKind::WouldBlock`]).
    #[error("bootstrap over TCP with {root}: {step} failed")]
    Bootstrap {
        /// The root address.
        root: String,
        /// What was being done.
        step: &'static str,
        /// The socket error.
        source: io::Error,
    },
    /// Setting up the RDMA resources (device, PD, CQs, QPs, bounce buffers) failed.
    #[error("setting up RDMA resources on {device}: {step} failed")]
    Setup {
        /// RDMA device name.
        device: String,
        /// What was being done.
        step: &'static str,
        /// The verbs error.
        source: verbs::Error,
    },
    /// The device's port has an empty GID table: nothing to send from.
    #[error("{device} port {port} has no GID to send from")]
    NoRoceGid {
        /// RDMA device name.
        device: String,
        /// Port number.
        port: u8,
    },
    /// Creating the registration cache failed.
    #[error("creating the registration cache failed")]
    Cache {
        /// What regcache reported.
        source: regcache::SetupError,
    },
    /// Registering a user buffer through the cache failed.
    #[error("registering {len} bytes of a user buffer failed")]
    Register {
        /// Length of the buffer.
        len: usize,
        /// What regcache reported.
        source: regcache::Error,
    },
    /// A rank outside `0..size`, or this rank itself (sends to self are not supported).
    #[error("rank {rank} is not a peer of rank {me} in a communicator of size {size}")]
    InvalidRank {
        /// The rank asked for.
        rank: usize,
        /// This rank.
        me: usize,
        /// Number of ranks.
        size: usize,
    },
    /// A message longer than a single RDMA READ can carry.
    #[error("a message of {len} bytes is longer than the maximum of {max}")]
    MessageTooLong {
        /// Length of the message.
        len: usize,
        /// The largest supported length.
        max: usize,
    },
    /// The matched message is longer than the receive buffer (`MPI_ERR_TRUNCATE`); the message
    /// is consumed and the buffer left unspecified.
    #[error("message of {len} bytes from rank {source_rank} (tag {tag}) truncated: the receive buffer holds {capacity}")]
    Truncated {
        /// Sender of the message.
        source_rank: usize,
        /// Its tag.
        tag: u32,
        /// Its length.
        len: usize,
        /// Length of the receive buffer.
        capacity: usize,
    },
    /// An operation did not complete within the communicator's timeout.
    #[error("{operation} did not complete within {after:?}")]
    Timeout {
        /// `"send"`, `"receive"`, ...
        operation: &'static str,
        /// How long was waited.
        after: Duration,
    },
    /// The connection to a peer failed (dead process, failed work request); operations with
    /// that peer fail from then on.
    #[error("connection to rank {rank} failed: {reason}")]
    PeerFailed {
        /// The peer.
        rank: usize,
        /// What the transport reported (shared by every operation the failure ended).
        reason: String,
    },
    /// Polling the completion queues failed.
    #[error("polling completions failed")]
    Poll {
        /// The verbs error.
        source: verbs::Error,
    },
    /// The request does not belong to this communicator, or was already waited for.
    #[error("unknown request {id}")]
    UnknownRequest {
        /// The request's id.
        id: u64,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
