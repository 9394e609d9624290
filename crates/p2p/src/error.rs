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
    /// The other side of a bootstrap connection sent bytes that are not the bootstrap protocol
    /// (a rank or size that does not fit the job, an impossible endpoint, a wrong barrier byte).
    #[error("bootstrap over TCP with {root}: {step}: malformed message: {reason}")]
    BootstrapMessage {
        /// The root address.
        root: String,
        /// What was being done.
        step: &'static str,
        /// What was wrong with the bytes.
        reason: String,
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
    /// A peer sent what the protocol does not allow (a malformed message, a FIN for no send in
    /// progress); the connection to it is closed and operations with it fail from then on.
    #[error("rank {rank} broke the protocol: {violation}")]
    PeerMisbehaved {
        /// The peer.
        rank: usize,
        /// What it sent (shared by every operation the failure ended).
        violation: Violation,
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

/// What a peer sent that the protocol does not allow ([`Error::PeerMisbehaved`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// A SEND whose immediate data does not mark a zero-copy eager message.
    UnknownImmediate {
        /// The immediate data.
        imm: u32,
    },
    /// A SEND without immediate data, shorter than a header.
    TruncatedHeader {
        /// Bytes the SEND carried.
        byte_len: usize,
    },
    /// A header of no known kind.
    UnknownKind {
        /// The kind field.
        kind: u32,
    },
    /// An eager header whose length is not the number of bytes that followed it.
    LengthMismatch {
        /// The length in the header.
        announced: u64,
        /// The bytes that followed the header.
        carried: usize,
    },
    /// A request to send or a FIN with bytes after its header.
    TrailingBytes {
        /// Bytes the SEND carried.
        byte_len: usize,
    },
    /// An eager message not shorter than the rendezvous threshold.
    EagerTooLong {
        /// Its length.
        len: u64,
        /// The rendezvous threshold.
        threshold: usize,
    },
    /// A request to send longer than one RDMA READ carries.
    RendezvousTooLong {
        /// The length it announced.
        len: u64,
    },
    /// A request to send of no bytes (a sender sends short messages eagerly; the receive could
    /// register nothing to READ into).
    EmptyRequestToSend,
    /// A SEND longer than the receive buffer it landed in.
    Overlong {
        /// Bytes the completion reported.
        byte_len: usize,
        /// Length of the receive buffer.
        capacity: usize,
    },
    /// A FIN that answers no rendezvous send to this peer in progress (an unknown cookie, a
    /// second FIN, the id of another operation).
    UnexpectedFin {
        /// The cookie it carried.
        cookie: u64,
    },
    /// A receive completed by something other than a SEND (an RDMA WRITE with immediate).
    UnexpectedOpcode {
        /// The opcode of the completion.
        opcode: verbs::WcOpcode,
    },
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownImmediate { imm } => {
                write!(f, "a SEND with unknown immediate data {imm:#x}")
            }
            Self::TruncatedHeader { byte_len } => write!(
                f,
                "a SEND of {byte_len} bytes without immediate data is shorter than a header"
            ),
            Self::UnknownKind { kind } => write!(f, "a header of unknown kind {kind}"),
            Self::LengthMismatch { announced, carried } => write!(
                f,
                "an eager header announces {announced} bytes but {carried} followed it"
            ),
            Self::TrailingBytes { byte_len } => write!(
                f,
                "a request to send or FIN of {byte_len} bytes: only a header is allowed"
            ),
            Self::EagerTooLong { len, threshold } => write!(
                f,
                "an eager message of {len} bytes, not shorter than the rendezvous threshold {threshold}"
            ),
            Self::RendezvousTooLong { len } => write!(
                f,
                "a request to send of {len} bytes, longer than one RDMA READ carries"
            ),
            Self::EmptyRequestToSend => f.write_str("a request to send of 0 bytes"),
            Self::Overlong { byte_len, capacity } => write!(
                f,
                "a SEND of {byte_len} bytes into a receive buffer of {capacity}"
            ),
            Self::UnexpectedFin { cookie } => {
                write!(f, "a FIN for cookie {cookie}, which is no send waiting for one")
            }
            Self::UnexpectedOpcode { opcode } => {
                write!(f, "a receive completed by {opcode:?} instead of a SEND")
            }
        }
    }
}

/// Why the connection to a peer was closed: what every operation the closing ends, and every
/// later one with that peer, fails with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerFailure {
    /// The transport failed (a failed work request, a failed post): [`Error::PeerFailed`].
    Transport(String),
    /// The peer broke the protocol: [`Error::PeerMisbehaved`].
    Misbehaved(Violation),
}

impl PeerFailure {
    /// The error of an operation with `rank` that this failure ended.
    pub(crate) fn error(&self, rank: usize) -> Error {
        match self {
            Self::Transport(reason) => Error::PeerFailed {
                rank,
                reason: reason.clone(),
            },
            Self::Misbehaved(violation) => Error::PeerMisbehaved {
                rank,
                violation: violation.clone(),
            },
        }
    }
}

impl std::fmt::Display for PeerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transport(reason) => f.write_str(reason),
            Self::Misbehaved(violation) => write!(f, "it broke the protocol: {violation}"),
        }
    }
}

impl From<String> for PeerFailure {
    fn from(reason: String) -> Self {
        Self::Transport(reason)
    }
}

impl From<Violation> for PeerFailure {
    fn from(violation: Violation) -> Self {
        Self::Misbehaved(violation)
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
