//! The fast paths of blocking calls that wait alone: a receive that no other posted receive
//! or unexpected message stands before, and a copied send that goes out at once.
//!
//! A blocking [`Communicator::recv`] posted when no other receive is posted and no unexpected
//! message matches it ([`Matcher::would_wait_alone`]) is the receive every message arriving
//! while it waits is offered to first, so it need not enter the matcher or the operation
//! table: its own wait loop looks at each completion as it polls it, and takes a matching
//! eager message straight from the receive bounce buffer into the caller's buffer, reposts the
//! bounce buffer and returns. Likewise a blocking copied send that goes out at once
//! ([`Connection::send_copied_at_once`]) waits for its own SEND's completion, with no
//! operation in the table. That is the whole path from the poll to the caller and on to the
//! reply's post in a ping-pong, which under emulation costs per function and page reached
//! more than per instruction (benches/RESULTS.md, "p2p's copied path, stop 18"). Every other
//! completion goes the generic way, in the order polled. A matching request to send turns the
//! receive into an ordinary one, which then takes that message from the unexpected queue,
//! where it is the only one the receive matches.
//!
//! [`Matcher::would_wait_alone`]: crate::matching::Matcher::would_wait_alone
//! [`Connection::send_copied_at_once`]: crate::connection::Connection::send_copied_at_once

use verbs::{Completion, WcOpcode};

use super::incoming::{copy_failed, repost_failed};
use super::{abandoned, Communicator};
use crate::error::{Error, PeerFailure, Result};
use crate::idle::{IdleWait, WaitTimer};
use crate::matching::{Source, Status, TagMatch};
use crate::operation::{truncation, UserBuffer};
use crate::wire::{Kind, WorkRequest};

/// What a polled completion is to a call waiting alone.
enum Offered<T> {
    /// Not its own: the generic path handles it.
    NotItsOwn,
    /// Its own, taken: what the call returns.
    Taken(T),
    /// Its own, but for the generic path to handle: the call goes on as an ordinary
    /// operation (a receive's request to send).
    Ordinary,
}

/// How a wait alone ended without an error.
enum Ended<T> {
    Taken(T),
    Ordinary,
}

impl Communicator {
    /// [`Communicator::recv`] of a receive that waits alone (see the module's documentation).
    pub(super) fn recv_alone(
        &mut self,
        buf: &mut [u8],
        source: Source,
        tag: TagMatch,
    ) -> Result<Status> {
        let only_source = match source {
            Source::Rank(rank) => {
                self.peers.check_rank(rank)?;
                if let Some(error) = self.peers.failure(rank) {
                    return Err(error);
                }
                Some(rank)
            }
            Source::Any => None,
        };
        let offer = |comm: &mut Self, completion: &Completion| {
            comm.offer_receive(completion, buf, source, tag)
        };
        match self.wait_alone("receive", only_source, offer)? {
            Ended::Taken(result) => result,
            Ended::Ordinary => {
                let buffer = UserBuffer::Borrowed {
                    ptr: buf.as_mut_ptr(),
                    len: buf.len(),
                };
                let id = self.start_recv(buffer, source, tag)?;
                self.finish_borrowed(id, "receive")
            }
        }
    }

    /// The rest of [`Communicator::send`] once [`Connection::send_copied_at_once`] posted its
    /// message to `dest` from send bounce buffer `index` (`posted`: how that went): waits for
    /// the SEND's completion. A failed wait closes the connection, as an abandoned send does.
    ///
    /// [`Connection::send_copied_at_once`]: crate::connection::Connection::send_copied_at_once
    pub(super) fn finish_send_alone(
        &mut self,
        dest: usize,
        index: u32,
        posted: std::result::Result<(), String>,
    ) -> Result<()> {
        if let Err(reason) = posted {
            let failure = PeerFailure::from(reason);
            let error = failure.error(dest);
            self.fail_peer(dest, failure);
            return Err(error);
        }
        let offer =
            |comm: &mut Self, completion: &Completion| match WorkRequest::from_id(completion.wr_id)
            {
                Some(WorkRequest::SendBounce { peer, index: sent })
                    if (peer, sent) == (dest, index) =>
                {
                    comm.peers.get_mut(peer).and_then(|c| c.send_done(index));
                    Offered::Taken(())
                }
                _ => Offered::NotItsOwn,
            };
        match self.wait_alone("send", Some(dest), offer) {
            Ok(_) => {
                // The send bounce buffer is free again: messages queued meanwhile may go.
                self.post_queued();
                Ok(())
            }
            Err(error) => {
                self.fail_peer(dest, abandoned("send"));
                Err(error)
            }
        }
    }

    /// The wait loop of a call waiting alone: offers every completion it polls to `offer`, in
    /// order, until `offer` takes one or hands it to the generic path as the call's own; every
    /// other completion goes the generic way. A closed connection to `only_peer` ends the wait
    /// with its error.
    ///
    /// # Errors
    /// [`Error::Poll`], [`Error::Timeout`] (of `operation`), the failure of `only_peer`.
    fn wait_alone<T>(
        &mut self,
        operation: &'static str,
        only_peer: Option<usize>,
        mut offer: impl FnMut(&mut Self, &Completion) -> Offered<T>,
    ) -> Result<Ended<T>> {
        let mut idle = IdleWait::default();
        let mut timer = WaitTimer::new(self.config.timeout);
        loop {
            // One completion per poll, as the raw verbs baseline polls: a batch comes back
            // by value through an iterator, which cost as much as a fifth of the turnaround.
            let timed_out = match self.cq.poll().transpose() {
                None => timer.idle(idle.idle()),
                Some(polled) => {
                    let offered = match &polled {
                        Ok(completion) => offer(self, completion),
                        Err(_) => Offered::NotItsOwn,
                    };
                    let ordinary = match offered {
                        // What the call takes itself frees nothing queued messages or READs
                        // wait for (a send's caller posts them itself).
                        Offered::Taken(taken) => return Ok(Ended::Taken(taken)),
                        Offered::Ordinary => true,
                        Offered::NotItsOwn => false,
                    };
                    self.on_polled(polled)?;
                    self.post_queued();
                    if ordinary {
                        return Ok(Ended::Ordinary);
                    }
                    // A completion handled the generic way may have closed the connection.
                    if let Some(error) = only_peer.and_then(|peer| self.peers.failure(peer)) {
                        return Err(error);
                    }
                    idle.progressed();
                    timer.busy()
                }
            };
            if let Some(after) = timed_out {
                return Err(Error::Timeout { operation, after });
            }
        }
    }

    /// Offers `completion` to the receive into `buf` from `source` with `tag` that waits
    /// alone: takes the eager message it matches. A message that does not parse is not
    /// taken: the generic path refuses it and closes the connection.
    fn offer_receive(
        &mut self,
        completion: &Completion,
        buf: &mut [u8],
        source: Source,
        tag: TagMatch,
    ) -> Offered<Result<Status>> {
        let Some(WorkRequest::RecvBounce { peer, index }) = WorkRequest::from_id(completion.wr_id)
        else {
            return Offered::NotItsOwn;
        };
        if completion.opcode != WcOpcode::Recv
            || matches!(source, Source::Rank(rank) if rank != peer)
        {
            return Offered::NotItsOwn;
        }
        let Some(connection) = self.peers.get_mut(peer) else {
            return Offered::NotItsOwn;
        };
        let byte_len = completion.byte_len as usize;
        let parsed = connection.received(index, byte_len, completion.imm_data, self.thresholds);
        let Ok((header, payload_at)) = parsed else {
            return Offered::NotItsOwn;
        };
        let status = Status {
            source: peer,
            tag: header.tag,
            // Fits: `parse_message` admits no longer eager payload than the buffer, and no
            // request to send above `u32::MAX`.
            len: header.len as usize,
        };
        match header.kind {
            Kind::Finish => return Offered::NotItsOwn,
            _ if !status.matches(source, tag) => return Offered::NotItsOwn,
            Kind::RequestToSend => return Offered::Ordinary,
            Kind::Eager => {}
        }
        let (result, closing) = match buf.get_mut(..status.len) {
            None => (Err(truncation(status, buf.len())), None),
            Some(out) => match connection.read_payload(index, payload_at, out) {
                Ok(()) => (Ok(status), None),
                Err(err) => {
                    let failure = PeerFailure::from(copy_failed(err));
                    (Err(failure.error(peer)), Some(failure))
                }
            },
        };
        // A failed copy closes the connection, which also stops its receives.
        let closing = closing.or_else(|| {
            let reposted = connection.post_receive(peer, index);
            reposted.err().map(|err| repost_failed(err).into())
        });
        if let Some(failure) = closing {
            self.fail_peer(peer, failure);
        }
        Offered::Taken(result)
    }
}
