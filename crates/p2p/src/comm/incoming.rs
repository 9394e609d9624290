//! What arrives from peers, for both protocols: messages in receive bounce buffers (eager
//! payloads, requests to send, FINs) and completed RDMA READs.

use crate::connection::Outgoing;
use crate::error::Violation;
use crate::matching::Status;
use crate::operation::{truncation, State};
use crate::wire::Kind;

use super::Communicator;

/// What the matcher keeps of a message that arrived before its receive.
#[derive(Debug)]
pub(super) enum Arrived {
    Eager(Vec<u8>),
    Rendezvous { addr: u64, rkey: u32, cookie: u64 },
}

/// Why a connection closes when a payload could not be copied out of its receive bounce buffer.
pub(super) fn copy_failed(err: verbs::Error) -> String {
    format!("copying a payload out of a receive buffer failed: {err}")
}

/// Why a connection closes when one of its receive bounce buffers could not be posted again.
pub(super) fn repost_failed(err: verbs::Error) -> String {
    format!("reposting a receive failed: {err}")
}

impl Communicator {
    /// A SEND from `peer` landed in receive bounce buffer `index`: take it out and repost the
    /// buffer. An eager payload goes straight into the buffer of the receive it matches, if one
    /// is posted, and is kept as an unexpected message otherwise. A message the peer had no
    /// right to send closes the connection ([`Error::PeerMisbehaved`]).
    ///
    /// [`Error::PeerMisbehaved`]: crate::Error::PeerMisbehaved
    pub(super) fn on_message(
        &mut self,
        peer: usize,
        index: u32,
        byte_len: usize,
        imm_data: Option<u32>,
    ) {
        let Some(connection) = self.peers.get_mut(peer) else {
            return;
        };
        let taken = connection
            .received(index, byte_len, imm_data, self.thresholds)
            .and_then(|(header, payload_at)| {
                let status = Status {
                    source: peer,
                    tag: header.tag,
                    // Fits: `parse_message` admits no longer eager payload than the buffer,
                    // and no request to send above `u32::MAX`.
                    len: header.len as usize,
                };
                let arrived = match header.kind {
                    Kind::Eager => match self.matcher.claim(&status) {
                        Some(id) => {
                            if let Some(op) = self.ops.get_mut(id) {
                                op.complete_eager(status, |out| {
                                    connection.read_payload(index, payload_at, out)
                                })
                                .map_err(copy_failed)?;
                            }
                            None
                        }
                        None => {
                            let mut payload = vec![0; status.len];
                            connection
                                .read_payload(index, payload_at, &mut payload)
                                .map_err(copy_failed)?;
                            Some(Arrived::Eager(payload))
                        }
                    },
                    Kind::RequestToSend => Some(Arrived::Rendezvous {
                        addr: header.addr,
                        rkey: header.rkey,
                        cookie: header.cookie,
                    }),
                    Kind::Finish => None,
                };
                connection
                    .post_receive(peer, index)
                    .map_err(repost_failed)?;
                Ok((header, status, arrived))
            });
        let (header, status, arrived) = match taken {
            Ok(taken) => taken,
            Err(failure) => return self.fail_peer(peer, failure),
        };
        match (header.kind, arrived) {
            (Kind::Finish, _) => {
                if let Err(violation) = self.on_fin(peer, header.cookie) {
                    self.fail_peer(peer, violation.into());
                }
            }
            (_, Some(arrived)) => {
                if let Some((id, status, arrived)) = self.matcher.arrive(status, arrived) {
                    self.deliver(id, status, arrived);
                }
            }
            // An eager payload already delivered to its receive.
            (_, None) => {}
        }
    }

    /// The FIN of `peer` for send `cookie`: completes that rendezvous send to `peer`, which must
    /// be waiting for it.
    fn on_fin(&mut self, peer: usize, cookie: u64) -> Result<(), Violation> {
        match self.ops.get_mut(cookie) {
            Some(op) if op.peer == Some(peer) && matches!(op.state, State::AwaitingFin { .. }) => {
                op.complete_send(self.config.rank);
                Ok(())
            }
            _ => Err(Violation::UnexpectedFin { cookie }),
        }
    }

    /// Hands matched message `status` to receive operation `id`.
    pub(super) fn deliver(&mut self, id: u64, status: Status, arrived: Arrived) {
        let Some(op) = self.ops.get_mut(id) else {
            return;
        };
        let (remote_addr, rkey, cookie) = match arrived {
            Arrived::Eager(payload) => {
                let Ok(()) = op.complete_eager(status, |out| {
                    out.copy_from_slice(&payload);
                    Ok::<_, std::convert::Infallible>(())
                });
                return;
            }
            Arrived::Rendezvous { addr, rkey, cookie } => (addr, rkey, cookie),
        };
        let peer = status.source;
        op.peer = Some(peer);
        let connection = match self.peers.connection(peer) {
            Ok(connection) => connection,
            Err(error) => {
                op.state = State::Done(Err(error));
                return;
            }
        };
        let capacity = op.buffer.len();
        let registered = if status.len > capacity {
            Err(truncation(status, capacity))
        } else {
            let ptr = op.buffer.ptr();
            // SAFETY: the buffer holds `status.len` writable bytes that nothing else uses
            // until the READ completes or the connection is closed (see `UserBuffer::Borrowed`).
            unsafe { self.cache.for_local_write(ptr, status.len) }
        };
        let posted = match registered {
            Ok(registration) => {
                op.state = State::Reading {
                    status,
                    registration,
                    remote_addr,
                    rkey,
                    cookie,
                };
                connection.queue_read(id);
                connection.pump_reads(&mut self.ops)
            }
            Err(error) => {
                op.state = State::Done(Err(error));
                connection.send_or_queue(Outgoing::finish(cookie), peer, &mut self.ops)
            }
        };
        self.close_on_error(peer, posted);
    }

    pub(super) fn on_read_done(&mut self, id: u64) {
        let Some(op) = self.ops.get_mut(id) else {
            return;
        };
        let State::Reading { status, cookie, .. } = op.state else {
            return;
        };
        op.state = State::Done(Ok(status));
        let peer = status.source;
        let Some(connection) = self.peers.get_mut(peer) else {
            return;
        };
        connection.read_done();
        // The READ's turn went to the next READ queued, if any.
        let posted = connection
            .send_or_queue(Outgoing::finish(cookie), peer, &mut self.ops)
            .and_then(|()| connection.pump_reads(&mut self.ops));
        self.close_on_error(peer, posted);
    }
}
