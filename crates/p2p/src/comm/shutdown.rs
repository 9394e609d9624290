//! Dropping a communicator: what this rank owes its peers is delivered first.
//!
//! A rank may be done with every operation of its own and still owe a peer a message: the
//! FIN of a rendezvous whose READ it completed (posted, or queued behind sends that wait for
//! the peer to repost receives), or sends the caller never waited for. Destroying a queue
//! pair flushes what its device has not sent, so a rank that dropped its communicator right
//! away would leave the peer's rendezvous send waiting for a FIN until its timeout. The drop
//! therefore makes progress until every open connection's sends have completed, which on an
//! RC queue pair means the peer's device has them.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Communicator;

/// Communicators dropped with messages to peers not delivered, since process start.
static UNDELIVERED_AT_DROP: AtomicU64 = AtomicU64::new(0);

/// How many communicators were dropped, in this process, before what they owed their peers
/// was delivered (the wait timed out or polling failed; each is logged with `tracing`).
#[must_use]
pub fn undelivered_at_drop() -> u64 {
    UNDELIVERED_AT_DROP.load(Ordering::Relaxed)
}

impl Drop for Communicator {
    fn drop(&mut self) {
        let delivered = self.progress_until("delivery of what is owed to peers at drop", |comm| {
            (!comm.peers.owe_a_peer()).then_some(())
        });
        if let Err(error) = delivered {
            UNDELIVERED_AT_DROP.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, "p2p: dropped with messages to peers not delivered");
        }
    }
}
