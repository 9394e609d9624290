//! MPI-style point-to-point messaging between processes ("ranks") over RDMA RC queue pairs.
//!
//! Every pair of ranks is connected by one RC queue pair at the port's active path MTU. The
//! queue pairs are bootstrapped out of band over TCP: rank 0 listens on the root address, the
//! others connect, and rank 0 hands every rank the endpoints of the queue pairs aimed at it.
//! Rank, size and root address come from the launcher's environment ([`LaunchConfig`]).
//!
//! Messages shorter than the eager threshold (8 KiB) are copied and travel in one SEND: into
//! the work request itself (inline) when they are as short as the queue pair's inline limit
//! (asked of the device at set-up; 512 bytes on Soft-RoCE), else into a pre-registered bounce
//! buffer; with their tag in the immediate data and no header (like zero-copy eager ones,
//! below) unless the tag needs the top bit. Messages from there up to the rendezvous threshold (256 KiB)
//! also travel in one SEND, zero-copy: the sender registers its buffer through the
//! registration cache (`regcache`) and SENDs straight from it, the tag in the immediate data;
//! the receiver copies the payload out of its bounce buffer. Longer ones use rendezvous: the sender
//! registers its buffer through the cache and sends a request-to-send with address, length and
//! rkey; the receiver RDMA-READs into its own cached registration and answers with a FIN that
//! completes the send. Zero-copy eager spares middle sizes the rendezvous' two extra trips
//! (request-to-send, READ request) at the price of larger receive bounce buffers.
//!
//! Receives match like MPI's: by source and tag, either of which may be a wildcard
//! ([`ANY_SOURCE`], [`ANY_TAG`]); messages between one pair of ranks never overtake each
//! other. Every wait is bounded: a peer that dies turns into an error, never a hang.
//! A blocking [`Communicator::recv`] that nothing stands before (no other receive posted, no
//! unexpected message it matches) and a blocking copied [`Communicator::send`] that goes out at
//! once take their own completions in their wait loop, without the matcher or the operation
//! table: the shortest path from a poll to the caller, with the same matching.
//!
//! Nothing a peer sends is trusted: a message that is not the protocol (a truncated header, a
//! length other than the bytes carried or longer than the receive bounce buffer, unknown
//! immediate data, a FIN for no send waiting for one, a receive consumed by an RDMA WRITE)
//! closes the connection to that peer, and its operations fail with
//! [`Error::PeerMisbehaved`] naming the [`Violation`]; garbage on a bootstrap socket is
//! [`Error::BootstrapMessage`], and a rank that connects and says nothing fails the bootstrap at
//! its deadline. No received byte is written outside the receive buffer it was meant for.
//!
//! ```no_run
//! # fn main() -> Result<(), p2p::Error> {
//! let mut comm = p2p::Communicator::from_env()?;
//! if comm.rank() == 0 {
//!     comm.send(b"hello", 1, 7)?;
//! } else if comm.rank() == 1 {
//!     let mut buf = [0u8; 16];
//!     let status = comm.recv(&mut buf, p2p::ANY_SOURCE, 7)?;
//!     assert_eq!(&buf[..status.len], b"hello");
//! }
//! # Ok(())
//! # }
//! ```

mod bootstrap;
mod bounce;
mod comm;
mod connection;
mod error;
mod idle;
mod launch;
mod matching;
mod operation;
mod protocol;
mod registrations;
mod setup;
mod wire;

pub use comm::{undelivered_at_drop, Communicator};
pub use error::{Error, Result, Violation};
pub use idle::IdleWait;
pub use launch::LaunchConfig;
pub use matching::{Source, Status, TagMatch, ANY_SOURCE, ANY_TAG};
pub use operation::Request;
