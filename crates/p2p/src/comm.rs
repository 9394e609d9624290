//! The communicator: the public calls, and the progress engine that drives both protocols from
//! the completions of the queue pairs.

use std::sync::Arc;

use verbs::{Completion, CompletionQueue, Mtu, ProtectionDomain, WcOpcode};

use crate::connection::{Outgoing, Peers};
use crate::error::{Error, PeerFailure, Result, Violation};
use crate::idle::{IdleWait, WaitTimer};
use crate::launch::LaunchConfig;
use crate::matching::{Matcher, Source, Status, TagMatch};
use crate::operation::{Operation, Operations, Progress, Request, State, UserBuffer};
use crate::protocol::{Protocol, Thresholds};
use crate::registrations::UserBufferCache;
use crate::setup;
use crate::wire::{Header, WorkRequest};

mod incoming;
mod lone;
mod shutdown;

use incoming::Arrived;
pub use shutdown::undelivered_at_drop;

/// Why the connection of an `operation` abandoned while in progress closes: the device may
/// still be reading or writing its buffer.
fn abandoned(operation: &str) -> PeerFailure {
    format!("a {operation} was abandoned while in progress").into()
}

/// One rank of a job: connected to every other rank by an RC queue pair.
///
/// Not thread-safe: one thread drives it; every call makes progress on all operations.
/// Dropping it first delivers what the rank still owes its peers (a rendezvous's FIN, sends
/// never waited for), for at most the configured timeout ([`undelivered_at_drop`] counts the
/// drops that gave up).
#[derive(Debug)]
pub struct Communicator {
    config: LaunchConfig,
    // Dropped first: destroying the queue pairs stops all device access to operation buffers.
    peers: Peers,
    ops: Operations,
    matcher: Matcher<u64, Arrived>,
    cache: UserBufferCache,
    /// Every queue pair's sends and receives complete here.
    cq: Arc<CompletionQueue>,
    thresholds: Thresholds,
    mtu: Mtu,
}

impl Communicator {
    /// Joins the job described by the environment ([`LaunchConfig::from_env`]).
    ///
    /// # Errors
    /// As [`LaunchConfig::from_env`] and [`Communicator::new`].
    pub fn from_env() -> Result<Self> {
        Self::new(LaunchConfig::from_env()?)
    }

    /// Opens the device, creates a queue pair per peer, exchanges endpoints through rank 0,
    /// connects at the port's active MTU and waits until every rank is ready.
    ///
    /// User buffers are registered through a `regcache` cache configured from `REGCACHE_*`.
    ///
    /// # Errors
    /// [`Error::Setup`] for a failing verbs call, [`Error::NoRoceGid`], [`Error::Cache`],
    /// [`Error::Bootstrap`] when a rank does not show up or say its part within the timeout,
    /// [`Error::BootstrapMessage`] when a bootstrap socket carries bytes that are not the protocol.
    pub fn new(config: LaunchConfig) -> Result<Self> {
        Self::connect(config, UserBufferCache::from_env)
    }

    /// [`Communicator::new`] with a registration cache that never learns of munmap, so it
    /// hands out registrations of pages a buffer no longer has: the negative control of the
    /// stale-buffer tests, which must see the old bytes arrive. Never use it for anything else.
    ///
    /// # Errors
    /// As [`Communicator::new`].
    #[cfg(feature = "testing")]
    pub fn without_invalidation(config: LaunchConfig) -> Result<Self> {
        Self::connect(config, |pd, _| {
            Ok(UserBufferCache::trust_without_invalidation(pd))
        })
    }

    fn connect(
        config: LaunchConfig,
        cache: impl FnOnce(Arc<ProtectionDomain>, Mtu) -> Result<UserBufferCache>,
    ) -> Result<Self> {
        let thresholds = Thresholds::new(config.eager_threshold, config.rendezvous_threshold);
        let setup::Connected {
            peers,
            cache,
            cq,
            mtu,
        } = setup::connect(&config, thresholds, cache)?;
        Ok(Self {
            config,
            peers,
            ops: Operations::default(),
            matcher: Matcher::default(),
            cache,
            cq,
            thresholds,
            mtu,
        })
    }

    /// This process's rank.
    #[must_use]
    pub fn rank(&self) -> usize {
        self.config.rank
    }

    /// Number of ranks.
    #[must_use]
    pub fn size(&self) -> usize {
        self.config.size
    }

    /// Messages shorter than this are copied through bounce buffers.
    #[must_use]
    pub fn eager_threshold(&self) -> usize {
        self.thresholds.eager()
    }

    /// Messages of this length and longer go by rendezvous; shorter ones from the eager
    /// threshold up go in one SEND from the sender's cached registration (zero-copy eager).
    #[must_use]
    pub fn rendezvous_threshold(&self) -> usize {
        self.thresholds.rendezvous()
    }

    /// Path MTU of the queue pairs.
    #[must_use]
    pub fn mtu(&self) -> Mtu {
        self.mtu
    }

    /// The registration cache's policy (from `REGCACHE_MODE` and the system).
    #[must_use]
    pub fn cache_policy(&self) -> regcache::Policy {
        self.cache.policy()
    }

    /// Sends `buf` to `dest` with `tag`; returns when the buffer may be reused (eager, copied
    /// or zero-copy: the SEND completed; rendezvous: the receiver's FIN arrived).
    ///
    /// # Errors
    /// [`Error::InvalidRank`], [`Error::MessageTooLong`], [`Error::Register`],
    /// [`Error::PeerFailed`], [`Error::PeerMisbehaved`], [`Error::Timeout`] (the connection to
    /// `dest` is then closed).
    pub fn send(&mut self, buf: &[u8], dest: usize, tag: u32) -> Result<()> {
        if self.thresholds.protocol(buf.len()) == Protocol::Copied {
            let connection = self.peers.connection(dest)?;
            if let Some((index, posted)) = connection.send_copied_at_once(buf, tag, dest) {
                return self.finish_send_alone(dest, index, posted);
            }
        }
        let buffer = UserBuffer::Borrowed {
            // Never written through: send buffers are only read, by the CPU or the device.
            ptr: buf.as_ptr().cast_mut(),
            len: buf.len(),
        };
        let id = self.start_send(buffer, dest, tag)?;
        self.finish_borrowed(id, "send").map(|_| ())
    }

    /// Receives a message from `source` with `tag` (either may be a wildcard) into `buf`.
    ///
    /// # Errors
    /// [`Error::Truncated`] when the message is longer than `buf`, [`Error::InvalidRank`],
    /// [`Error::Register`], [`Error::PeerFailed`], [`Error::PeerMisbehaved`], [`Error::Timeout`].
    pub fn recv(
        &mut self,
        buf: &mut [u8],
        source: impl Into<Source>,
        tag: impl Into<TagMatch>,
    ) -> Result<Status> {
        let (source, tag) = (source.into(), tag.into());
        if self.matcher.would_wait_alone(source, tag) {
            return self.recv_alone(buf, source, tag);
        }
        let buffer = UserBuffer::Borrowed {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        };
        let id = self.start_recv(buffer, source, tag)?;
        self.finish_borrowed(id, "receive")
    }

    /// Starts sending `buf` (owned until [`Communicator::wait`] returns it).
    ///
    /// # Errors
    /// As [`Communicator::send`], except timeouts, which [`Communicator::wait`] reports.
    pub fn isend(&mut self, buf: Vec<u8>, dest: usize, tag: u32) -> Result<Request> {
        self.start_send(UserBuffer::Owned(buf), dest, tag)
            .map(|id| Request { id })
    }

    /// Starts receiving into `buf` (its length is the capacity; owned until
    /// [`Communicator::wait`] returns it).
    ///
    /// # Errors
    /// [`Error::InvalidRank`]; matching errors are reported by [`Communicator::wait`].
    pub fn irecv(
        &mut self,
        buf: Vec<u8>,
        source: impl Into<Source>,
        tag: impl Into<TagMatch>,
    ) -> Result<Request> {
        self.start_recv(UserBuffer::Owned(buf), source.into(), tag.into())
            .map(|id| Request { id })
    }

    /// Makes progress; returns whether `request` is complete ([`Communicator::wait`] then
    /// returns at once).
    ///
    /// # Errors
    /// [`Error::UnknownRequest`], [`Error::Poll`].
    pub fn test(&mut self, request: &Request) -> Result<bool> {
        self.progress()?;
        match self.ops.get(request.id) {
            Some(op) => Ok(op.is_done()),
            None => Err(Error::UnknownRequest { id: request.id }),
        }
    }

    /// Waits for `request`; returns its status and its buffer.
    ///
    /// # Errors
    /// The operation's error (as for [`Communicator::send`] and [`Communicator::recv`]);
    /// after [`Error::Timeout`] the operation is abandoned (and the connection of a send or a matched
    /// receive closed).
    pub fn wait(&mut self, request: Request) -> Result<(Status, Vec<u8>)> {
        let op = self.wait_op(request.id, "nonblocking operation")?;
        let buffer = op.buffer;
        let status = Self::finished(request.id, op.state)?;
        match buffer {
            UserBuffer::Owned(vec) => Ok((status, vec)),
            UserBuffer::Borrowed { .. } => Err(Error::UnknownRequest { id: request.id }),
        }
    }

    fn start_send(&mut self, mut buffer: UserBuffer, dest: usize, tag: u32) -> Result<u64> {
        let connection = self.peers.connection(dest)?;
        let len = buffer.len();
        let protocol = self.thresholds.protocol(len);
        let ptr = buffer.ptr();
        let (state, rendezvous_rkey) = match protocol {
            Protocol::Copied => (State::Sending { registration: None }, None),
            Protocol::ZeroCopyEager => {
                // SAFETY: the buffer is readable for `len` bytes (a borrowed slice or an owned
                // vector) and stays so until the SEND completes or the connection is closed.
                let registration = unsafe { self.cache.for_send(ptr, len) }?;
                let registration = Some(registration);
                (State::Sending { registration }, None)
            }
            Protocol::Rendezvous => {
                let max = u32::MAX as usize;
                if len > max {
                    return Err(Error::MessageTooLong { len, max });
                }
                // SAFETY: the buffer is readable for `len` bytes (a borrowed slice or an owned
                // vector) and stays so until the FIN or until the connection is closed.
                let registration = unsafe { self.cache.for_remote_read(ptr, len) }?;
                let rkey = registration.rkey();
                let state = State::AwaitingFin {
                    _registration: registration,
                };
                (state, Some(rkey))
            }
        };
        let peer = Some(dest);
        let id = self.ops.insert(Operation {
            peer,
            tag,
            buffer,
            state,
        });
        let header = match rendezvous_rkey {
            Some(rkey) => Header::request_to_send(tag, len, ptr.addr() as u64, rkey, id),
            None => Header::eager(tag, len, id),
        };
        let eager_op = protocol.is_eager().then_some(id);
        let posted = connection.send_or_queue(Outgoing { header, eager_op }, dest, &mut self.ops);
        self.close_on_error(dest, posted);
        Ok(id)
    }

    fn start_recv(&mut self, buffer: UserBuffer, source: Source, tag: TagMatch) -> Result<u64> {
        if let Source::Rank(rank) = source {
            self.peers.check_rank(rank)?;
        }
        let id = self.ops.insert(Operation {
            peer: None,
            tag: 0,
            buffer,
            state: State::Unmatched,
        });
        if let Some((status, arrived)) = self.matcher.post(id, source, tag) {
            self.deliver(id, status, arrived);
        } else if let Source::Rank(rank) = source {
            if let Some(error) = self.peers.failure(rank) {
                self.matcher.cancel(&id);
                self.ops.complete(id, Err(error));
            }
        }
        Ok(id)
    }

    /// Waits for a blocking call's operation and removes it, so the borrowed buffer is
    /// untouched by this communicator and the device once the call returns.
    fn finish_borrowed(&mut self, id: u64, operation: &'static str) -> Result<Status> {
        let op = self.wait_op(id, operation)?;
        Self::finished(id, op.state)
    }

    /// The result of operation `id` from its final `state`.
    fn finished(id: u64, state: State) -> Result<Status> {
        match state {
            State::Done(result) => result,
            _ => Err(Error::UnknownRequest { id }),
        }
    }

    /// Waits until operation `id` is done and takes it out of the table. When the wait fails
    /// (timeout, polling), the operation is abandoned ([`Communicator::abandon`]). The
    /// timeout is kept by a [`WaitTimer`].
    fn wait_op(&mut self, id: u64, operation: &'static str) -> Result<Operation> {
        let waited = self.progress_until(operation, |comm| match comm.ops.take_if_done(id) {
            Progress::Done(op) => Some(Ok(op)),
            Progress::Unknown => Some(Err(Error::UnknownRequest { id })),
            Progress::Pending => None,
        });
        match waited {
            Ok(result) => result,
            Err(error) => Err(self.abandon(id, operation, error)),
        }
    }

    /// Makes progress until `settled` returns a value, and returns it.
    ///
    /// # Errors
    /// [`Error::Poll`]; [`Error::Timeout`] of `operation` after the configured timeout.
    fn progress_until<T>(
        &mut self,
        operation: &'static str,
        mut settled: impl FnMut(&mut Self) -> Option<T>,
    ) -> Result<T> {
        let mut idle = IdleWait::default();
        let mut timer = WaitTimer::new(self.config.timeout);
        loop {
            if let Some(value) = settled(self) {
                return Ok(value);
            }
            let timed_out = match self.progress()? {
                0 => timer.idle(idle.idle()),
                _ => {
                    idle.progressed();
                    timer.busy()
                }
            };
            if let Some(after) = timed_out {
                return Err(Error::Timeout { operation, after });
            }
        }
    }

    /// Removes operation `id`, whose wait failed with `error`; returns `error`. One still in
    /// progress is stopped first: an unmatched receive leaves the matcher; one bound to a peer
    /// closes that connection, which stops the device from touching its buffer.
    fn abandon(&mut self, id: u64, operation: &'static str, error: Error) -> Error {
        let Some(op) = self.ops.get(id) else {
            return error;
        };
        match (&op.state, op.peer) {
            (State::Done(_), _) => {}
            (State::Unmatched, _) => {
                self.matcher.cancel(&id);
            }
            (_, Some(peer)) => self.fail_peer(peer, abandoned(operation)),
            (_, None) => {}
        }
        self.ops.remove(id);
        error
    }

    /// Closes the connection to `peer` when posting to it failed (`posted` is then the reason).
    fn close_on_error(&mut self, peer: usize, posted: Result<(), String>) {
        if let Err(reason) = posted {
            self.fail_peer(peer, reason.into());
        }
    }

    /// Closes the connection to `peer`: destroys its queue pair and fails every operation bound
    /// to it with `failure`'s error.
    fn fail_peer(&mut self, peer: usize, failure: PeerFailure) {
        if !self.peers.close(peer, &failure) {
            return;
        }
        tracing::warn!(peer, %failure, "p2p: closing the connection to a peer");
        let mut victims = self.matcher.cancel_from(peer);
        victims.extend(self.ops.in_progress_with(peer));
        for id in victims {
            self.ops.complete(id, Err(failure.error(peer)));
        }
    }

    /// Handles every available completion and sends what can be sent; returns how many
    /// completions were handled.
    fn progress(&mut self) -> Result<usize> {
        let mut handled = 0;
        loop {
            let batch = self
                .cq
                .poll_batch()
                .map_err(|source| Error::Poll { source })?;
            let more = batch.was_full();
            for polled in batch {
                self.on_polled(polled)?;
                handled += 1;
            }
            if !more {
                break;
            }
        }
        if handled > 0 {
            self.post_queued();
        }
        Ok(handled)
    }

    /// Handles one polled completion, a failed one included.
    ///
    /// # Errors
    /// [`Error::Poll`] for a polling error that is no completion.
    fn on_polled(&mut self, polled: verbs::Result<Completion>) -> Result<()> {
        match polled {
            Ok(completion) => self.on_completion(&completion),
            Err(verbs::Error::WorkCompletion {
                wr_id,
                status,
                opcode,
                ..
            }) => self.on_failed_completion(wr_id, format!("{opcode:?} completed with {status}")),
            Err(source) => return Err(Error::Poll { source }),
        }
        Ok(())
    }

    /// Posts the queued messages and READs of every connection that can go now. Only a
    /// completion frees what they wait for (a send bounce buffer, a READ's turn): call after
    /// a poll that handled one.
    fn post_queued(&mut self) {
        for peer in 0..self.peers.size() {
            if let Some(connection) = self.peers.get_mut(peer) {
                let posted = connection.post_queued(peer, &mut self.ops);
                self.close_on_error(peer, posted);
            }
        }
    }

    fn on_failed_completion(&mut self, wr_id: u64, reason: String) {
        let peer = match WorkRequest::from_id(wr_id) {
            Some(WorkRequest::RecvBounce { peer, .. } | WorkRequest::SendBounce { peer, .. }) => {
                Some(peer)
            }
            Some(WorkRequest::Read { op }) => self.ops.get(op).and_then(|op| op.peer),
            None => None,
        };
        if let Some(peer) = peer {
            self.fail_peer(peer, reason.into());
        }
    }

    fn on_completion(&mut self, completion: &Completion) {
        match WorkRequest::from_id(completion.wr_id) {
            Some(WorkRequest::RecvBounce { peer, index }) => {
                if completion.opcode == WcOpcode::Recv {
                    let byte_len = completion.byte_len as usize;
                    self.on_message(peer, index, byte_len, completion.imm_data);
                } else {
                    // An RDMA WRITE with immediate consumed the receive: never reposted, it
                    // would leave the peer one receive short for good.
                    let opcode = completion.opcode;
                    self.fail_peer(peer, Violation::UnexpectedOpcode { opcode }.into());
                }
            }
            Some(WorkRequest::SendBounce { peer, index }) => {
                let completed = self.peers.get_mut(peer).and_then(|c| c.send_done(index));
                if let Some(op) = completed.and_then(|id| self.ops.get_mut(id)) {
                    op.complete_send(self.config.rank);
                }
            }
            Some(WorkRequest::Read { op }) => self.on_read_done(op),
            other => tracing::warn!(?other, ?completion, "p2p: unexpected completion ignored"),
        }
    }
}
