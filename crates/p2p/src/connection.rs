//! The connection to one peer: its queue pair, its bounce buffers, the messages waiting for a
//! send bounce buffer and the RDMA READs waiting for their turn; and the connections of a rank
//! to all its peers.

use std::collections::VecDeque;

use verbs::{Mtu, QpEndpoint, QueuePair};

use crate::bounce::BouncePool;
use crate::error::{Error, PeerFailure, Result};
use crate::operation::{Operation, Operations, State};
use crate::protocol::Thresholds;
use crate::wire::{self, Header, ReceiveLimits, WorkRequest, HEADER_LEN};

/// Pre-posted receive bounce buffers per peer.
pub(crate) const RECV_BOUNCE_BUFFERS: u32 = 32;
/// Send bounce buffers per peer: bounds the SENDs in flight to one peer.
pub(crate) const SEND_BOUNCE_BUFFERS: u32 = 32;
/// RDMA READs in flight per peer; more wait in a backlog.
pub(crate) const MAX_READS: usize = 16;

/// What an outgoing SEND carries besides a header, if it has one.
#[derive(Debug, Clone, Copy)]
enum Payload<'a> {
    /// Bytes copied into the send bounce buffer or, short enough, into the work request
    /// (inline); none for a request to send or a FIN.
    Copied(&'a [u8]),
    /// The user's buffer, sent from its cached registration (zero-copy eager).
    Registered(verbs::Sge),
}

/// A message waiting for a send bounce buffer, in the order it must go out.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) header: Header,
    /// The eager send whose payload follows the header and which the SEND completes.
    pub(crate) eager_op: Option<u64>,
}

impl Outgoing {
    /// The FIN answering the request to send of operation `cookie`.
    pub(crate) fn finish(cookie: u64) -> Self {
        Self {
            header: Header::finish(cookie),
            eager_op: None,
        }
    }
}

/// The connection to one peer.
///
/// The methods that post work requests return `Err(reason)` when posting failed: the
/// connection must then be closed for `reason`.
#[derive(Debug)]
pub(crate) struct Connection {
    // First field: destroyed before the bounce buffers it may write.
    qp: QueuePair,
    recv_pool: BouncePool,
    send_pool: BouncePool,
    free_send_buffers: Vec<u32>,
    /// The eager send each send bounce buffer's SEND completes.
    send_completes: Vec<Option<u64>>,
    outbox: VecDeque<Outgoing>,
    read_backlog: VecDeque<u64>,
    reads_in_flight: usize,
}

impl Connection {
    /// A connection over `qp` with [`RECV_BOUNCE_BUFFERS`] in `recv_pool` and
    /// [`SEND_BOUNCE_BUFFERS`] in `send_pool`.
    pub(crate) fn new(qp: QueuePair, recv_pool: BouncePool, send_pool: BouncePool) -> Self {
        Self {
            qp,
            recv_pool,
            send_pool,
            free_send_buffers: (0..SEND_BOUNCE_BUFFERS).rev().collect(),
            send_completes: vec![None; SEND_BOUNCE_BUFFERS as usize],
            outbox: VecDeque::new(),
            read_backlog: VecDeque::new(),
            reads_in_flight: 0,
        }
    }

    pub(crate) fn endpoint(&self) -> QpEndpoint {
        self.qp.endpoint()
    }

    /// Connects the queue pair to the peer's `remote` one at path MTU `mtu`.
    pub(crate) fn connect(&self, remote: &QpEndpoint, mtu: Mtu) -> verbs::Result<()> {
        self.qp.connect(remote, mtu)
    }

    /// Posts receive bounce buffer `index` of the connection to `peer`: at set-up, and again
    /// once the message that landed in it was taken out.
    pub(crate) fn post_receive(&self, peer: usize, index: u32) -> verbs::Result<()> {
        let sge = self.recv_pool.sge(index, self.recv_pool.buffer_len())?;
        self.qp
            .post_recv(WorkRequest::RecvBounce { peer, index }.id(), &[sge])
    }

    /// The message of `byte_len` bytes with `imm_data` that landed in receive bounce buffer
    /// `index`: its header and where its eager payload starts in the buffer (for
    /// [`Connection::read_payload`]), or why the connection must close: the peer's violation
    /// ([`wire::parse_message`]) or a failure to read the buffer.
    pub(crate) fn received(
        &self,
        index: u32,
        byte_len: usize,
        imm_data: Option<u32>,
        thresholds: Thresholds,
    ) -> Result<(Header, usize), PeerFailure> {
        let mut head = [0; HEADER_LEN];
        // A SEND with immediate data has no header to read (`wire::parse_message` reads none).
        if imm_data.is_none() {
            self.recv_pool
                .read(index, 0, &mut head)
                .map_err(|err| format!("reading a receive bounce buffer failed: {err}"))?;
        }
        let limits = ReceiveLimits {
            capacity: self.recv_pool.buffer_len(),
            eager_below: thresholds.rendezvous(),
        };
        Ok(wire::parse_message(imm_data, byte_len, limits, &head)?)
    }

    /// Copies the bytes from `at` of receive bounce buffer `index` into `out`.
    pub(crate) fn read_payload(&self, index: u32, at: usize, out: &mut [u8]) -> verbs::Result<()> {
        self.recv_pool.read(index, at, out)
    }

    /// The SEND from send bounce buffer `index` completed: frees the buffer; returns the eager
    /// send the SEND completes.
    pub(crate) fn send_done(&mut self, index: u32) -> Option<u64> {
        self.free_send_buffers.push(index);
        self.send_completes
            .get_mut(index as usize)
            .and_then(Option::take)
    }

    /// Sends `outgoing` to `peer`: at once when nothing is queued before it and a send bounce
    /// buffer is free (a blocking call's message, as a rule), else behind the messages queued
    /// before it, as send bounce buffers free up.
    pub(crate) fn send_or_queue(
        &mut self,
        outgoing: Outgoing,
        peer: usize,
        operations: &mut Operations,
    ) -> Result<(), String> {
        if self.outbox.is_empty() {
            if let Some(index) = self.free_send_buffers.pop() {
                return self.post_outgoing(outgoing, peer, index, operations);
            }
        }
        self.outbox.push_back(outgoing);
        self.flush_outbox(peer, operations)
    }

    /// Sends queued messages to `peer` while send bounce buffers are free.
    pub(crate) fn flush_outbox(
        &mut self,
        peer: usize,
        operations: &mut Operations,
    ) -> Result<(), String> {
        while let Some(&index) = self.free_send_buffers.last() {
            let Some(outgoing) = self.outbox.pop_front() else {
                break;
            };
            self.free_send_buffers.pop();
            self.post_outgoing(outgoing, peer, index, operations)?;
        }
        Ok(())
    }

    /// Whether a message to the peer is queued, or posted and not yet acknowledged: a SEND
    /// completes on an RC queue pair once the peer's device has it.
    pub(crate) fn owes_peer(&self) -> bool {
        !self.outbox.is_empty() || self.free_send_buffers.len() < SEND_BOUNCE_BUFFERS as usize
    }

    /// Sends copied eager message `bytes` with `tag` to `peer` at once, if nothing is queued
    /// before it and a send bounce buffer is free: returns that buffer's index, whose SEND
    /// completion completes nothing ([`Connection::send_done`] returns `None`), with the
    /// posting's outcome; `None` when the message cannot go at once. For a blocking send that
    /// waits for the completion itself, with no operation in the table.
    pub(crate) fn send_copied_at_once(
        &mut self,
        bytes: &[u8],
        tag: u32,
        peer: usize,
    ) -> Option<(u32, Result<(), String>)> {
        if !self.outbox.is_empty() {
            return None;
        }
        let index = self.free_send_buffers.pop()?;
        self.send_completes[index as usize] = None;
        // The receiver of an eager message does not use its cookie.
        let header = Header::eager(tag, bytes.len(), 0);
        let posted = self.post_message(header, true, Payload::Copied(bytes), peer, index);
        Some((index, posted))
    }

    /// Posts the SEND of `outgoing` to `peer` from send bounce buffer `index`.
    fn post_outgoing(
        &mut self,
        outgoing: Outgoing,
        peer: usize,
        index: u32,
        operations: &mut Operations,
    ) -> Result<(), String> {
        self.send_completes[index as usize] = outgoing.eager_op;
        let payload = match outgoing.eager_op.and_then(|id| operations.get_mut(id)) {
            Some(Operation {
                buffer,
                state:
                    State::Sending {
                        registration: Some(registration),
                    },
                ..
            }) => {
                // The length fits: it is below the rendezvous threshold.
                Payload::Registered(registration.sge(buffer.ptr(), buffer.len() as u32))
            }
            Some(op) => {
                let (ptr, len) = (op.buffer.ptr().cast_const(), op.buffer.len());
                // SAFETY: an eager send's buffer holds `len` readable bytes (a borrowed
                // slice whose call is waiting, or an owned vector) and is not written
                // while the operation is in progress.
                Payload::Copied(unsafe { std::slice::from_raw_parts(ptr, len) })
            }
            None => Payload::Copied(&[]),
        };
        let eager = outgoing.eager_op.is_some();
        self.post_message(outgoing.header, eager, payload, peer, index)
    }

    /// Posts the SEND of the message with `header` to `peer` from send bounce buffer `index`;
    /// an `eager` one carries `payload` after the header.
    fn post_message(
        &mut self,
        header: Header,
        eager: bool,
        payload: Payload<'_>,
        peer: usize,
        index: u32,
    ) -> Result<(), String> {
        let wr_id = WorkRequest::SendBounce { peer, index }.id();
        // Eager messages whose tag fits the immediate data go without a header: a message
        // of whole pages takes no extra packet, a short one no header to write and read.
        let headerless = eager.then(|| wire::headerless_imm(header.tag)).flatten();
        let posted = match (payload, headerless) {
            (Payload::Registered(sge), Some(imm)) => self.qp.post_send_with_imm(wr_id, &[sge], imm),
            (Payload::Copied(bytes), Some(imm))
                if bytes.len() <= self.qp.max_inline_data() as usize =>
            {
                self.qp.post_send_inline(wr_id, bytes, Some(imm))
            }
            (Payload::Copied(bytes), Some(imm)) => {
                let pool = &mut self.send_pool;
                pool.write(index, 0, bytes)
                    .and_then(|()| pool.sge(index, bytes.len()))
                    .and_then(|sge| self.qp.post_send_with_imm(wr_id, &[sge], imm))
            }
            (payload, None) => {
                let copied = match payload {
                    Payload::Copied(bytes) => bytes,
                    Payload::Registered(_) => &[],
                };
                let pool = &mut self.send_pool;
                pool.write(index, 0, &header.encode())
                    .and_then(|()| pool.write(index, HEADER_LEN, copied))
                    .and_then(|()| pool.sge(index, HEADER_LEN + copied.len()))
                    .and_then(|head| match payload {
                        Payload::Registered(sge) => self.qp.post_send(wr_id, &[head, sge]),
                        Payload::Copied(_) => self.qp.post_send(wr_id, &[head]),
                    })
            }
        };
        posted.map_err(|err| format!("posting a SEND failed: {err}"))
    }

    /// Sends what is queued and posts the READs whose turn it is ([`Connection::flush_outbox`],
    /// [`Connection::pump_reads`]).
    pub(crate) fn post_queued(
        &mut self,
        peer: usize,
        operations: &mut Operations,
    ) -> Result<(), String> {
        self.flush_outbox(peer, operations)?;
        self.pump_reads(operations)
    }

    /// Queues the READ of receive operation `op` behind the READs queued before it;
    /// [`Connection::pump_reads`] posts it.
    pub(crate) fn queue_read(&mut self, op: u64) {
        self.read_backlog.push_back(op);
    }

    /// A READ posted by [`Connection::pump_reads`] completed.
    pub(crate) fn read_done(&mut self) {
        self.reads_in_flight -= 1;
    }

    /// Posts queued READs while fewer than [`MAX_READS`] are in flight.
    pub(crate) fn pump_reads(&mut self, operations: &mut Operations) -> Result<(), String> {
        while self.reads_in_flight < MAX_READS {
            let Some(id) = self.read_backlog.pop_front() else {
                return Ok(());
            };
            let Some(op) = operations.get_mut(id) else {
                continue;
            };
            let ptr = op.buffer.ptr();
            let State::Reading {
                status,
                registration,
                remote_addr,
                rkey,
                ..
            } = &op.state
            else {
                continue;
            };
            // `status.len` fits: `wire::parse_message` refuses longer requests to send.
            let sge = registration.sge(ptr, status.len as u32);
            let wr_id = WorkRequest::Read { op: id }.id();
            self.qp
                .post_read(wr_id, &[sge], *remote_addr, *rkey)
                .map_err(|err| format!("posting an RDMA READ failed: {err}"))?;
            self.reads_in_flight += 1;
        }
        Ok(())
    }
}

/// The connections of one rank to all others, and why the ones that were closed were.
#[derive(Debug)]
pub(crate) struct Peers {
    me: usize,
    /// By rank; `None` for this rank and for closed connections.
    connections: Vec<Option<Connection>>,
    /// Why the connection to a rank was closed.
    failures: Vec<Option<PeerFailure>>,
}

impl Peers {
    /// Rank `me` with `connections` by rank (`None` for `me`).
    pub(crate) fn new(me: usize, connections: Vec<Option<Connection>>) -> Self {
        Self {
            me,
            failures: vec![None; connections.len()],
            connections,
        }
    }

    /// Number of ranks, this one included.
    pub(crate) fn size(&self) -> usize {
        self.connections.len()
    }

    /// # Errors
    /// [`Error::InvalidRank`] unless `rank` is a peer of this rank.
    pub(crate) fn check_rank(&self, rank: usize) -> Result<()> {
        if rank >= self.size() || rank == self.me {
            return Err(self.invalid(rank));
        }
        Ok(())
    }

    fn invalid(&self, rank: usize) -> Error {
        Error::InvalidRank {
            rank,
            me: self.me,
            size: self.size(),
        }
    }

    /// The error of operations with `rank` once its connection was closed.
    pub(crate) fn failure(&self, rank: usize) -> Option<Error> {
        Some(self.failures.get(rank)?.as_ref()?.error(rank))
    }

    /// The open connection to `rank`.
    ///
    /// # Errors
    /// [`Error::InvalidRank`], [`Error::PeerFailed`].
    pub(crate) fn connection(&mut self, rank: usize) -> Result<&mut Connection> {
        self.check_rank(rank)?;
        if let Some(error) = self.failure(rank) {
            return Err(error);
        }
        let invalid = self.invalid(rank);
        self.connections[rank].as_mut().ok_or(invalid)
    }

    /// Whether an open connection owes its peer a message ([`Connection::owes_peer`]).
    pub(crate) fn owe_a_peer(&self) -> bool {
        self.connections.iter().flatten().any(Connection::owes_peer)
    }

    /// The connection to `peer`, if it is open.
    pub(crate) fn get_mut(&mut self, peer: usize) -> Option<&mut Connection> {
        self.connections.get_mut(peer)?.as_mut()
    }

    /// Closes the connection to `peer` for `failure`: destroys its queue pair. Returns whether
    /// it was open.
    pub(crate) fn close(&mut self, peer: usize, failure: &PeerFailure) -> bool {
        let Some(connection) = self.connections.get_mut(peer) else {
            return false;
        };
        if connection.take().is_none() {
            return false;
        }
        self.failures[peer] = Some(failure.clone());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_other_ranks_below_the_size_are_peers() {
        let mut peers = Peers::new(1, (0..3).map(|_| None).collect());
        assert_eq!(peers.size(), 3);
        assert!(peers.check_rank(0).is_ok());
        assert!(peers.check_rank(2).is_ok());
        for rank in [1, 3] {
            assert!(matches!(
                peers.check_rank(rank),
                Err(Error::InvalidRank { me: 1, size: 3, .. })
            ));
        }
        assert!(peers.failure(0).is_none());
        assert!(peers.failure(7).is_none());
        // Without a connection (and without a recorded failure), a peer cannot be reached.
        let never_open = PeerFailure::Transport("never open".into());
        assert!(!peers.close(0, &never_open));
        assert!(!peers.close(7, &never_open));
        assert!(peers.failure(0).is_none());
        assert!(matches!(
            peers.connection(0),
            Err(Error::InvalidRank { rank: 0, .. })
        ));
    }
}
