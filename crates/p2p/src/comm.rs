//! The communicator: queue pairs to every peer, the progress engine and the public calls.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use verbs::{
    AccessFlags, Completion, CompletionQueue, Context, Gid, GidType, Mtu, OwnedMemoryRegion,
    ProtectionDomain, QpConfig, QpEndpoint, QueuePair, WcOpcode,
};

use crate::bootstrap;
use crate::error::{Error, Result};
use crate::launch::LaunchConfig;
use crate::matching::{Matcher, Source, Status, TagMatch};
use crate::registrations::{Registrations, UserRegistration};
use crate::wire::{Header, Kind, HEADER_LEN, ZERO_COPY_IMM};

/// Port used on every device.
const PORT: u8 = 1;
/// Pre-posted receive bounce buffers per peer.
const RECV_SLOTS: u32 = 32;
/// Send bounce buffers per peer: bounds the SENDs in flight to one peer.
const SEND_SLOTS: u32 = 32;
/// RDMA READs in flight per peer; more wait in a backlog.
const MAX_READS: usize = 16;
/// Polls without progress before a waiter starts sleeping between polls.
const SPINS_BEFORE_SLEEP: u32 = 100;
/// Sleep between polls of an idle waiter: short, but leaves the CPU to the peers and to the
/// (software) provider.
const IDLE_SLEEP: Duration = Duration::from_micros(50);

/// What a work-request id says about the work request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkRequest {
    /// Receive bounce buffer `slot` of `peer`.
    RecvSlot { peer: usize, slot: u32 },
    /// Send bounce buffer `slot` of `peer`.
    SendSlot { peer: usize, slot: u32 },
    /// The RDMA READ of receive operation `op`.
    Read { op: u64 },
}

const WR_RECV_SLOT: u64 = 1;
const WR_SEND_SLOT: u64 = 2;
const WR_READ: u64 = 3;

impl WorkRequest {
    fn id(self) -> u64 {
        match self {
            Self::RecvSlot { peer, slot } => {
                WR_RECV_SLOT << 56 | (peer as u64) << 32 | u64::from(slot)
            }
            Self::SendSlot { peer, slot } => {
                WR_SEND_SLOT << 56 | (peer as u64) << 32 | u64::from(slot)
            }
            Self::Read { op } => WR_READ << 56 | op,
        }
    }

    fn from_id(id: u64) -> Option<Self> {
        let peer = ((id >> 32) & 0x00ff_ffff) as usize;
        let slot = (id & 0xffff_ffff) as u32;
        match id >> 56 {
            WR_RECV_SLOT => Some(Self::RecvSlot { peer, slot }),
            WR_SEND_SLOT => Some(Self::SendSlot { peer, slot }),
            WR_READ => Some(Self::Read {
                op: id & 0x00ff_ffff_ffff_ffff,
            }),
            _ => None,
        }
    }
}

/// A nonblocking operation started by [`Communicator::isend`] or [`Communicator::irecv`].
///
/// Complete it with [`Communicator::wait`]; a request that is dropped instead keeps its buffer
/// until the communicator is dropped.
#[derive(Debug, PartialEq, Eq, Hash)]
#[must_use = "a request holds its buffer until it is waited for"]
pub struct Request {
    id: u64,
}

/// The memory an operation sends from or receives into.
#[derive(Debug)]
enum Buffer {
    /// Owned by the operation (nonblocking calls).
    Owned(Vec<u8>),
    /// Borrowed by a blocking call, which does not return while the device or this
    /// communicator may still touch it (see [`Communicator::finish_borrowed`]).
    Borrowed { ptr: *mut u8, len: usize },
}

impl Buffer {
    fn ptr(&mut self) -> *mut u8 {
        match self {
            Self::Owned(vec) => vec.as_mut_ptr(),
            Self::Borrowed { ptr, .. } => *ptr,
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Owned(vec) => vec.len(),
            Self::Borrowed { len, .. } => *len,
        }
    }
}

#[derive(Debug)]
enum OpState {
    /// A receive waiting in the matcher.
    Unmatched,
    /// An eager send waiting for the completion of its SEND. A zero-copy one holds the
    /// registration its SEND reads the buffer through; a copied one has none.
    Sending {
        registration: Option<UserRegistration>,
    },
    /// A rendezvous send waiting for the receiver's FIN; the registration keeps the buffer
    /// registered for the receiver's READ.
    AwaitingFin {
        _registration: UserRegistration,
    },
    /// A rendezvous receive reading (or about to read) the sender's buffer.
    Reading {
        status: Status,
        registration: UserRegistration,
        remote_addr: u64,
        rkey: u32,
        cookie: u64,
    },
    Done(Result<Status>),
}

#[derive(Debug)]
struct Op {
    /// The peer the operation is bound to: the destination of a send, the source of a matched
    /// receive.
    peer: Option<usize>,
    tag: u32,
    buffer: Buffer,
    state: OpState,
}

impl Op {
    /// Completes this receive with eager message `status`: `fill` writes its `status.len`
    /// bytes into the buffer, or, when they do not fit, the receive fails as truncated. If
    /// `fill` fails, the receive stays as it was and the error is returned.
    fn complete_eager<E>(
        &mut self,
        status: Status,
        fill: impl FnOnce(&mut [u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        self.peer = Some(status.source);
        let capacity = self.buffer.len();
        let result = if status.len > capacity {
            Err(truncation(status, capacity))
        } else {
            // SAFETY: the buffer of a receive holds `capacity >= status.len` writable bytes (a
            // borrowed `&mut [u8]` whose call is waiting, or an owned vector) that nothing else
            // accesses while the operation is in progress.
            fill(unsafe { std::slice::from_raw_parts_mut(self.buffer.ptr(), status.len) })?;
            Ok(status)
        };
        self.state = OpState::Done(result);
        Ok(())
    }
}

/// What the matcher keeps of a message that arrived before its receive.
#[derive(Debug)]
enum Arrived {
    Eager(Vec<u8>),
    Rendezvous { addr: u64, rkey: u32, cookie: u64 },
}

/// A message waiting for a send bounce buffer, in the order it must go out.
#[derive(Debug)]
struct Outgoing {
    header: Header,
    /// The eager send whose payload follows the header and which the SEND completes.
    eager_op: Option<u64>,
}

/// The connection to one peer.
#[derive(Debug)]
struct Link {
    // First field: destroyed before the bounce buffers it may write.
    qp: QueuePair,
    recv_pool: OwnedMemoryRegion,
    send_pool: OwnedMemoryRegion,
    free_send_slots: Vec<u32>,
    /// The eager send each send slot's SEND completes.
    slot_owner: Vec<Option<u64>>,
    outbox: VecDeque<Outgoing>,
    read_backlog: VecDeque<u64>,
    reads_in_flight: usize,
}

/// One rank of a job: connected to every other rank by an RC queue pair.
///
/// Not thread-safe: one thread drives it; every call makes progress on all operations.
#[derive(Debug)]
pub struct Communicator {
    config: LaunchConfig,
    // Dropped first: destroying the queue pairs stops all device access to operation buffers.
    links: Vec<Option<Link>>,
    /// Why the link to a peer was closed.
    failures: Vec<Option<String>>,
    ops: HashMap<u64, Op>,
    next_op: u64,
    matcher: Matcher<u64, Arrived>,
    registrations: Registrations,
    send_cq: Arc<CompletionQueue>,
    recv_cq: Arc<CompletionQueue>,
    /// Messages shorter than this go eagerly (copied or zero-copy): the rendezvous threshold,
    /// or the eager threshold where that is larger.
    eager_limit: usize,
    /// Bytes of a receive bounce buffer: a header and up to `eager_limit` bytes.
    recv_slot_len: usize,
    /// Bytes of a send bounce buffer: a header and a copied payload (below the eager
    /// threshold).
    send_slot_len: usize,
    mtu: Mtu,
}

fn setup_error(device: &str, step: &'static str) -> impl FnOnce(verbs::Error) -> Error {
    let device = device.to_owned();
    move |source| Error::Setup {
        device,
        step,
        source,
    }
}

/// The first RoCE v2 GID of the port that carries an IPv4 address.
fn roce_v2_ipv4_gid(ctx: &Context) -> Result<u8> {
    let name = ctx.name();
    let table = ctx
        .gid_table(PORT)
        .map_err(setup_error(name, "reading the GID table"))?;
    table
        .iter()
        .find(|entry| {
            entry.gid_type == Some(GidType::RoceV2) && entry.gid.to_ipv4_mapped().is_some()
        })
        .map(|entry| entry.index)
        .ok_or_else(|| Error::NoRoceGid {
            device: name.to_owned(),
            port: PORT,
        })
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
    /// [`Error::Bootstrap`] when a rank does not show up within the timeout.
    pub fn new(config: LaunchConfig) -> Result<Self> {
        Self::connect(config, Registrations::from_env)
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
            Ok(Registrations::trust_without_invalidation(pd))
        })
    }

    fn connect(
        config: LaunchConfig,
        registrations: impl FnOnce(Arc<ProtectionDomain>, Mtu) -> Result<Registrations>,
    ) -> Result<Self> {
        let device = match &config.device {
            Some(device) => device.clone(),
            None => verbs::devices()
                .map_err(setup_error("?", "listing devices"))?
                .into_iter()
                .next()
                .map(|info| info.name)
                .ok_or_else(|| Error::Setup {
                    device: "?".into(),
                    step: "finding a device",
                    source: verbs::Error::ListDevices {
                        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no RDMA device"),
                    },
                })?,
        };
        let dev = device.as_str();
        let ctx = Context::open(dev).map_err(setup_error(dev, "opening the device"))?;
        let mtu = ctx
            .query_port(PORT)
            .map_err(setup_error(dev, "querying the port"))?
            .active_mtu
            .unwrap_or(Mtu::Mtu1024);
        let gid_index = roce_v2_ipv4_gid(&ctx)?;
        let pd = ProtectionDomain::new(&ctx).map_err(setup_error(dev, "allocating a PD"))?;
        let peers = u32::try_from(config.size).unwrap_or(u32::MAX);
        let send_cq = CompletionQueue::new(&ctx, (SEND_SLOTS * 2).saturating_mul(peers))
            .map_err(setup_error(dev, "creating the send CQ"))?;
        let recv_cq = CompletionQueue::new(&ctx, RECV_SLOTS.saturating_mul(peers))
            .map_err(setup_error(dev, "creating the receive CQ"))?;
        let registrations = registrations(Arc::clone(&pd), mtu)?;
        let eager_limit = config.rendezvous_threshold.max(config.eager_threshold);
        let recv_slot_len = HEADER_LEN + eager_limit;
        let send_slot_len = HEADER_LEN + config.eager_threshold;
        let qp_config = QpConfig {
            max_send_wr: SEND_SLOTS + MAX_READS as u32,
            max_recv_wr: RECV_SLOTS,
            // A zero-copy SEND gathers its header and the user's buffer.
            max_send_sge: 2,
            ..QpConfig::new(PORT, gid_index)
        };
        let mut links = Vec::with_capacity(config.size);
        for peer in 0..config.size {
            if peer == config.rank {
                links.push(None);
                continue;
            }
            let pool = |slots: u32, slot_len: usize, access| {
                OwnedMemoryRegion::new(&pd, slots as usize * slot_len, access)
                    .map_err(setup_error(dev, "registering bounce buffers"))
            };
            links.push(Some(Link {
                qp: QueuePair::create_rc(&pd, &send_cq, &recv_cq, qp_config)
                    .map_err(setup_error(dev, "creating a queue pair"))?,
                recv_pool: pool(RECV_SLOTS, recv_slot_len, AccessFlags::LOCAL_WRITE)?,
                send_pool: pool(SEND_SLOTS, send_slot_len, AccessFlags::LOCAL_READ)?,
                free_send_slots: (0..SEND_SLOTS).rev().collect(),
                slot_owner: vec![None; SEND_SLOTS as usize],
                outbox: VecDeque::new(),
                read_backlog: VecDeque::new(),
                reads_in_flight: 0,
            }));
        }
        let unused = QpEndpoint {
            qpn: 0,
            psn: 0,
            gid: Gid::default(),
            gid_index: 0,
            lid: 0,
        };
        let mine: Vec<QpEndpoint> = links
            .iter()
            .map(|link| link.as_ref().map_or(unused, |link| link.qp.endpoint()))
            .collect();
        let (bootstrap, aimed_at_me) = bootstrap::exchange(&config, &mine)?;
        for (peer, link) in links.iter().enumerate() {
            let Some(link) = link else { continue };
            link.qp
                .connect(&aimed_at_me[peer], mtu)
                .map_err(setup_error(dev, "connecting a queue pair"))?;
            for slot in 0..RECV_SLOTS {
                let sge = link
                    .recv_pool
                    .sge(slot as usize * recv_slot_len, recv_slot_len)
                    .map_err(setup_error(dev, "posting receives"))?;
                link.qp
                    .post_recv(WorkRequest::RecvSlot { peer, slot }.id(), &[sge])
                    .map_err(setup_error(dev, "posting receives"))?;
            }
        }
        bootstrap.barrier(&config.root_addr)?;
        tracing::debug!(
            rank = config.rank,
            size = config.size,
            device,
            ?mtu,
            policy = ?registrations.policy(),
            "p2p: communicator ready"
        );
        Ok(Self {
            failures: vec![None; config.size],
            config,
            links,
            ops: HashMap::new(),
            next_op: 0,
            matcher: Matcher::default(),
            registrations,
            send_cq,
            recv_cq,
            eager_limit,
            recv_slot_len,
            send_slot_len,
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
        self.config.eager_threshold
    }

    /// Messages of this length and longer go by rendezvous; shorter ones from the eager
    /// threshold up go in one SEND from the sender's cached registration (zero-copy eager).
    #[must_use]
    pub fn rendezvous_threshold(&self) -> usize {
        self.eager_limit
    }

    /// Path MTU of the queue pairs.
    #[must_use]
    pub fn mtu(&self) -> Mtu {
        self.mtu
    }

    /// The registration cache's policy (from `REGCACHE_MODE` and the system).
    #[must_use]
    pub fn cache_policy(&self) -> regcache::Policy {
        self.registrations.policy()
    }

    /// Sends `buf` to `dest` with `tag`; returns when the buffer may be reused (eager, copied
    /// or zero-copy: the SEND completed; rendezvous: the receiver's FIN arrived).
    ///
    /// # Errors
    /// [`Error::InvalidRank`], [`Error::MessageTooLong`], [`Error::Register`],
    /// [`Error::PeerFailed`], [`Error::Timeout`] (the link to `dest` is then closed).
    pub fn send(&mut self, buf: &[u8], dest: usize, tag: u32) -> Result<()> {
        let buffer = Buffer::Borrowed {
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
    /// [`Error::Register`], [`Error::PeerFailed`], [`Error::Timeout`].
    pub fn recv(
        &mut self,
        buf: &mut [u8],
        source: impl Into<Source>,
        tag: impl Into<TagMatch>,
    ) -> Result<Status> {
        let buffer = Buffer::Borrowed {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        };
        let id = self.start_recv(buffer, source.into(), tag.into())?;
        self.finish_borrowed(id, "receive")
    }

    /// Starts sending `buf` (owned until [`Communicator::wait`] returns it).
    ///
    /// # Errors
    /// As [`Communicator::send`], except timeouts, which [`Communicator::wait`] reports.
    pub fn isend(&mut self, buf: Vec<u8>, dest: usize, tag: u32) -> Result<Request> {
        self.start_send(Buffer::Owned(buf), dest, tag)
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
        self.start_recv(Buffer::Owned(buf), source.into(), tag.into())
            .map(|id| Request { id })
    }

    /// Makes progress; returns whether `request` is complete ([`Communicator::wait`] then
    /// returns at once).
    ///
    /// # Errors
    /// [`Error::UnknownRequest`], [`Error::Poll`].
    pub fn test(&mut self, request: &Request) -> Result<bool> {
        self.progress()?;
        match self.ops.get(&request.id) {
            Some(op) => Ok(matches!(op.state, OpState::Done(_))),
            None => Err(Error::UnknownRequest { id: request.id }),
        }
    }

    /// Waits for `request`; returns its status and its buffer.
    ///
    /// # Errors
    /// The operation's error (as for [`Communicator::send`] and [`Communicator::recv`]);
    /// after [`Error::Timeout`] the operation is abandoned (and the link of a send or a matched
    /// receive closed).
    pub fn wait(&mut self, request: Request) -> Result<(Status, Vec<u8>)> {
        let operation = "nonblocking operation";
        let result = self.wait_op(request.id, operation);
        let op = self.abandon(request.id, operation);
        let status = result?;
        match op.map(|op| op.buffer) {
            Some(Buffer::Owned(vec)) => Ok((status, vec)),
            _ => Err(Error::UnknownRequest { id: request.id }),
        }
    }

    fn check_peer(&self, rank: usize) -> Result<()> {
        if rank >= self.config.size || rank == self.config.rank {
            return Err(Error::InvalidRank {
                rank,
                me: self.config.rank,
                size: self.config.size,
            });
        }
        match &self.failures[rank] {
            Some(reason) => Err(Error::PeerFailed {
                rank,
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn new_op(&mut self, op: Op) -> u64 {
        let id = self.next_op;
        self.next_op += 1;
        self.ops.insert(id, op);
        id
    }

    fn start_send(&mut self, mut buffer: Buffer, dest: usize, tag: u32) -> Result<u64> {
        self.check_peer(dest)?;
        let len = buffer.len();
        let mut header = Header {
            kind: Kind::Eager,
            tag,
            len: len as u64,
            addr: 0,
            rkey: 0,
            cookie: 0,
        };
        let eager = len < self.eager_limit;
        let state = if len < self.config.eager_threshold {
            OpState::Sending { registration: None }
        } else if eager {
            let ptr = buffer.ptr();
            // SAFETY: the buffer is readable for `len` bytes (a borrowed slice or an owned
            // vector) and stays so until the SEND completes or the link is closed.
            let registration = unsafe { self.registrations.for_send(ptr, len) }?;
            OpState::Sending {
                registration: Some(registration),
            }
        } else {
            let max = u32::MAX as usize;
            if len > max {
                return Err(Error::MessageTooLong { len, max });
            }
            let ptr = buffer.ptr();
            // SAFETY: the buffer is readable for `len` bytes (a borrowed slice or an owned
            // vector) and stays so until the FIN or until the link is closed.
            let registration = unsafe { self.registrations.for_remote_read(ptr, len) }?;
            header.kind = Kind::RequestToSend;
            header.addr = ptr.addr() as u64;
            header.rkey = registration.rkey();
            OpState::AwaitingFin {
                _registration: registration,
            }
        };
        let id = self.new_op(Op {
            peer: Some(dest),
            tag,
            buffer,
            state,
        });
        header.cookie = id;
        let link = self.links[dest].as_mut().ok_or(Error::InvalidRank {
            rank: dest,
            me: self.config.rank,
            size: self.config.size,
        })?;
        link.outbox.push_back(Outgoing {
            header,
            eager_op: eager.then_some(id),
        });
        self.flush_outbox(dest);
        Ok(id)
    }

    fn start_recv(&mut self, buffer: Buffer, source: Source, tag: TagMatch) -> Result<u64> {
        if let Source::Rank(rank) = source {
            if rank >= self.config.size || rank == self.config.rank {
                return Err(Error::InvalidRank {
                    rank,
                    me: self.config.rank,
                    size: self.config.size,
                });
            }
        }
        let id = self.new_op(Op {
            peer: None,
            tag: 0,
            buffer,
            state: OpState::Unmatched,
        });
        if let Some((status, arrived)) = self.matcher.post(id, source, tag) {
            self.deliver(id, status, arrived);
        } else if let Source::Rank(rank) = source {
            if let Some(reason) = self.failures[rank].clone() {
                self.matcher.cancel(&id);
                self.complete(id, Err(Error::PeerFailed { rank, reason }));
            }
        }
        Ok(id)
    }

    /// Waits for a blocking call's operation and removes it, so the borrowed buffer is
    /// untouched by this communicator and the device once the call returns.
    fn finish_borrowed(&mut self, id: u64, operation: &'static str) -> Result<Status> {
        let result = self.wait_op(id, operation);
        self.abandon(id, operation);
        result
    }

    fn wait_op(&mut self, id: u64, operation: &'static str) -> Result<Status> {
        let start = Instant::now();
        let mut idle_polls = 0;
        loop {
            match self.ops.get_mut(&id) {
                None => return Err(Error::UnknownRequest { id }),
                Some(Op {
                    state: OpState::Done(result),
                    ..
                }) => {
                    return std::mem::replace(result, Err(Error::UnknownRequest { id }));
                }
                Some(_) => {}
            }
            if start.elapsed() >= self.config.timeout {
                return Err(Error::Timeout {
                    operation,
                    after: start.elapsed(),
                });
            }
            if self.progress()? > 0 {
                idle_polls = 0;
            } else if idle_polls < SPINS_BEFORE_SLEEP {
                idle_polls += 1;
                std::thread::yield_now();
            } else {
                std::thread::sleep(IDLE_SLEEP);
            }
        }
    }

    /// Removes operation `id`. One still in progress is stopped first: an unmatched receive
    /// leaves the matcher; one bound to a peer closes that link, which stops the device from
    /// touching its buffer.
    fn abandon(&mut self, id: u64, operation: &'static str) -> Option<Op> {
        let op = self.ops.get(&id)?;
        match (&op.state, op.peer) {
            (OpState::Done(_), _) => {}
            (OpState::Unmatched, _) => {
                self.matcher.cancel(&id);
            }
            (_, Some(peer)) => {
                self.fail_peer(
                    peer,
                    format!("a {operation} was abandoned while in progress"),
                );
            }
            (_, None) => {}
        }
        self.ops.remove(&id)
    }

    fn complete(&mut self, id: u64, result: Result<Status>) {
        if let Some(op) = self.ops.get_mut(&id) {
            op.state = OpState::Done(result);
        }
    }

    /// Closes the link to `peer`: destroys its queue pair and fails every operation bound to it.
    fn fail_peer(&mut self, peer: usize, reason: String) {
        if self.links[peer].take().is_none() {
            return;
        }
        tracing::warn!(peer, %reason, "p2p: closing the link to a peer");
        let mut victims = self.matcher.cancel_from(peer);
        victims.extend(
            self.ops
                .iter()
                .filter(|(_, op)| op.peer == Some(peer) && !matches!(op.state, OpState::Done(_)))
                .map(|(&id, _)| id),
        );
        for id in victims {
            self.complete(
                id,
                Err(Error::PeerFailed {
                    rank: peer,
                    reason: reason.clone(),
                }),
            );
        }
        self.failures[peer] = Some(reason);
    }

    /// Handles every available completion and sends what can be sent; returns how many
    /// completions were handled.
    fn progress(&mut self) -> Result<usize> {
        let mut handled = 0;
        for cq in [Arc::clone(&self.recv_cq), Arc::clone(&self.send_cq)] {
            loop {
                match cq.poll() {
                    Ok(Some(completion)) => self.on_completion(&completion),
                    Ok(None) => break,
                    Err(verbs::Error::WorkCompletion {
                        wr_id,
                        status,
                        opcode,
                        ..
                    }) => self
                        .on_failed_completion(wr_id, format!("{opcode:?} completed with {status}")),
                    Err(source) => return Err(Error::Poll { source }),
                }
                handled += 1;
            }
        }
        for peer in 0..self.links.len() {
            self.flush_outbox(peer);
            self.pump_reads(peer);
        }
        Ok(handled)
    }

    fn on_failed_completion(&mut self, wr_id: u64, reason: String) {
        let peer = match WorkRequest::from_id(wr_id) {
            Some(WorkRequest::RecvSlot { peer, .. } | WorkRequest::SendSlot { peer, .. }) => {
                Some(peer)
            }
            Some(WorkRequest::Read { op }) => self.ops.get(&op).and_then(|op| op.peer),
            None => None,
        };
        if let Some(peer) = peer {
            self.fail_peer(peer, reason);
        }
    }

    fn on_completion(&mut self, completion: &Completion) {
        match WorkRequest::from_id(completion.wr_id) {
            Some(WorkRequest::RecvSlot { peer, slot }) if completion.opcode == WcOpcode::Recv => {
                self.on_message(
                    peer,
                    slot,
                    completion.byte_len as usize,
                    completion.imm_data,
                );
            }
            Some(WorkRequest::SendSlot { peer, slot }) => {
                let Some(link) = self.links[peer].as_mut() else {
                    return;
                };
                link.free_send_slots.push(slot);
                let owner = link
                    .slot_owner
                    .get_mut(slot as usize)
                    .and_then(Option::take);
                if let Some(id) = owner {
                    self.finish_send(id);
                }
            }
            Some(WorkRequest::Read { op }) => self.on_read_done(op),
            other => tracing::warn!(?other, ?completion, "p2p: unexpected completion ignored"),
        }
    }

    fn finish_send(&mut self, id: u64) {
        let rank = self.config.rank;
        if let Some(op) = self.ops.get_mut(&id) {
            let len = op.buffer.len();
            op.state = OpState::Done(Ok(Status {
                source: rank,
                tag: op.tag,
                len,
            }));
        }
    }

    /// A SEND from `peer` landed in receive slot `slot`: take it out and repost the slot. An
    /// eager payload goes straight into the buffer of the receive it matches, if one is
    /// posted, and is kept as an unexpected message otherwise.
    fn on_message(&mut self, peer: usize, slot: u32, byte_len: usize, imm_data: Option<u32>) {
        let slot_len = self.recv_slot_len;
        let eager_limit = self.eager_limit;
        let Some(link) = self.links[peer].as_mut() else {
            return;
        };
        let offset = slot as usize * slot_len;
        // The header, and where the payload of an eager message starts.
        let parsed = match imm_data {
            Some(imm) if imm & ZERO_COPY_IMM != 0 => Some((
                Header {
                    kind: Kind::Eager,
                    tag: imm & !ZERO_COPY_IMM,
                    len: byte_len as u64,
                    addr: 0,
                    rkey: 0,
                    cookie: 0,
                },
                offset,
            )),
            Some(_) => None,
            None => {
                let mut header_bytes = [0; HEADER_LEN];
                link.recv_pool
                    .read_at(offset, &mut header_bytes)
                    .ok()
                    .and_then(|()| Header::decode(&header_bytes[..byte_len.min(HEADER_LEN)]))
                    .filter(|header| {
                        header.kind != Kind::Eager
                            || usize::try_from(header.len).ok() == byte_len.checked_sub(HEADER_LEN)
                    })
                    .map(|header| (header, offset + HEADER_LEN))
            }
        };
        let status = |header: &Header| Status {
            source: peer,
            tag: header.tag,
            len: header.len as usize,
        };
        let message = parsed.and_then(|(header, payload_at)| match header.kind {
            Kind::Eager => {
                let len = usize::try_from(header.len)
                    .ok()
                    .filter(|&len| len < eager_limit)?;
                let status = status(&header);
                let delivered = match self.matcher.claim(&status) {
                    Some(id) => {
                        self.ops
                            .get_mut(&id)?
                            .complete_eager(status, |out| link.recv_pool.read_at(payload_at, out))
                            .ok()?;
                        None
                    }
                    None => {
                        let mut payload = vec![0; len];
                        link.recv_pool.read_at(payload_at, &mut payload).ok()?;
                        Some(Arrived::Eager(payload))
                    }
                };
                Some((header, delivered))
            }
            Kind::RequestToSend => Some((
                header,
                Some(Arrived::Rendezvous {
                    addr: header.addr,
                    rkey: header.rkey,
                    cookie: header.cookie,
                }),
            )),
            Kind::Finish => Some((header, None)),
        });
        let repost = link.recv_pool.sge(offset, slot_len).and_then(|sge| {
            link.qp
                .post_recv(WorkRequest::RecvSlot { peer, slot }.id(), &[sge])
        });
        if let Err(err) = repost {
            self.fail_peer(peer, format!("reposting a receive failed: {err}"));
            return;
        }
        let Some((header, arrived)) = message else {
            self.fail_peer(peer, format!("malformed message of {byte_len} bytes"));
            return;
        };
        match (header.kind, arrived) {
            (Kind::Finish, _) => self.on_fin(peer, header.cookie),
            (_, Some(arrived)) => {
                if let Some((id, status, arrived)) = self.matcher.arrive(status(&header), arrived) {
                    self.deliver(id, status, arrived);
                }
            }
            // An eager payload already delivered to its receive.
            (_, None) => {}
        }
    }

    fn on_fin(&mut self, peer: usize, cookie: u64) {
        let awaited = self.ops.get(&cookie).is_some_and(|op| {
            op.peer == Some(peer) && matches!(op.state, OpState::AwaitingFin { .. })
        });
        if awaited {
            self.finish_send(cookie);
        } else {
            tracing::warn!(peer, cookie, "p2p: FIN for no waiting send ignored");
        }
    }

    /// Hands matched message `status` to receive operation `id`.
    fn deliver(&mut self, id: u64, status: Status, arrived: Arrived) {
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        op.peer = Some(status.source);
        let capacity = op.buffer.len();
        let truncated = status.len > capacity;
        match arrived {
            Arrived::Eager(payload) => {
                let Ok(()) = op.complete_eager(status, |out| {
                    out.copy_from_slice(&payload);
                    Ok::<_, std::convert::Infallible>(())
                });
            }
            Arrived::Rendezvous { addr, rkey, cookie } => {
                if let Some(reason) = self.failures[status.source].clone() {
                    let rank = status.source;
                    op.state = OpState::Done(Err(Error::PeerFailed { rank, reason }));
                    return;
                }
                if truncated {
                    op.state = OpState::Done(Err(truncation(status, capacity)));
                    self.send_fin(status.source, cookie);
                    return;
                }
                let ptr = op.buffer.ptr();
                // SAFETY: the buffer holds `status.len` writable bytes that nothing else uses
                // until the READ completes or the link is closed (see `Buffer::Borrowed`).
                match unsafe { self.registrations.for_local_write(ptr, status.len) } {
                    Ok(registration) => {
                        if let Some(op) = self.ops.get_mut(&id) {
                            op.state = OpState::Reading {
                                status,
                                registration,
                                remote_addr: addr,
                                rkey,
                                cookie,
                            };
                        }
                        if let Some(link) = self.links[status.source].as_mut() {
                            link.read_backlog.push_back(id);
                        }
                        self.pump_reads(status.source);
                    }
                    Err(err) => {
                        self.complete(id, Err(err));
                        self.send_fin(status.source, cookie);
                    }
                }
            }
        }
    }

    fn send_fin(&mut self, peer: usize, cookie: u64) {
        let Some(link) = self.links[peer].as_mut() else {
            return;
        };
        link.outbox.push_back(Outgoing {
            header: Header {
                kind: Kind::Finish,
                tag: 0,
                len: 0,
                addr: 0,
                rkey: 0,
                cookie,
            },
            eager_op: None,
        });
        self.flush_outbox(peer);
    }

    fn on_read_done(&mut self, id: u64) {
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        let OpState::Reading { status, cookie, .. } = op.state else {
            return;
        };
        op.state = OpState::Done(Ok(status));
        if let Some(link) = self.links[status.source].as_mut() {
            link.reads_in_flight -= 1;
        }
        self.send_fin(status.source, cookie);
        self.pump_reads(status.source);
    }

    /// Posts queued READs from `peer` while fewer than [`MAX_READS`] are in flight.
    fn pump_reads(&mut self, peer: usize) {
        loop {
            let Some(link) = self.links[peer].as_mut() else {
                return;
            };
            if link.reads_in_flight >= MAX_READS {
                return;
            }
            let Some(id) = link.read_backlog.pop_front() else {
                return;
            };
            let Some(op) = self.ops.get_mut(&id) else {
                continue;
            };
            let ptr = op.buffer.ptr();
            let OpState::Reading {
                status,
                registration,
                remote_addr,
                rkey,
                ..
            } = &op.state
            else {
                continue;
            };
            // `status.len` fits: the sender refuses longer messages.
            let sge = registration.sge(ptr, status.len as u32);
            match link.qp.post_read(
                WorkRequest::Read { op: id }.id(),
                &[sge],
                *remote_addr,
                *rkey,
            ) {
                Ok(()) => link.reads_in_flight += 1,
                Err(err) => {
                    self.fail_peer(peer, format!("posting an RDMA READ failed: {err}"));
                    return;
                }
            }
        }
    }

    /// Sends queued messages to `peer` while send bounce buffers are free.
    fn flush_outbox(&mut self, peer: usize) {
        let slot_len = self.send_slot_len;
        loop {
            let Some(link) = self.links[peer].as_mut() else {
                return;
            };
            if link.outbox.is_empty() {
                return;
            }
            let Some(slot) = link.free_send_slots.pop() else {
                return;
            };
            let Some(outgoing) = link.outbox.pop_front() else {
                return;
            };
            let offset = slot as usize * slot_len;
            let id = WorkRequest::SendSlot { peer, slot }.id();
            link.slot_owner[slot as usize] = outgoing.eager_op;
            let header = outgoing.header;
            // What follows the header in the slot (a copied payload), and the user's buffer as
            // the SEND's second element when it goes zero-copy.
            let (copied, zero_copy): (&[u8], _) =
                match outgoing.eager_op.and_then(|id| self.ops.get_mut(&id)) {
                    Some(Op {
                        buffer,
                        state:
                            OpState::Sending {
                                registration: Some(registration),
                            },
                        ..
                    }) => {
                        // The length fits: it is below the rendezvous threshold.
                        (
                            &[],
                            Some(registration.sge(buffer.ptr(), buffer.len() as u32)),
                        )
                    }
                    Some(op) => {
                        let (ptr, len) = (op.buffer.ptr().cast_const(), op.buffer.len());
                        // SAFETY: an eager send's buffer holds `len` readable bytes (a borrowed
                        // slice whose call is waiting, or an owned vector) and is not written while
                        // the operation is in progress.
                        (unsafe { std::slice::from_raw_parts(ptr, len) }, None)
                    }
                    None => (&[], None),
                };
            let posted = match zero_copy {
                // No header: a message of whole pages takes no extra packet.
                Some(payload) if header.tag & ZERO_COPY_IMM == 0 => {
                    link.qp
                        .post_send_with_imm(id, &[payload], ZERO_COPY_IMM | header.tag)
                }
                _ => link
                    .send_pool
                    .write_at(offset, &header.encode())
                    .and_then(|()| link.send_pool.write_at(offset + HEADER_LEN, copied))
                    .and_then(|()| link.send_pool.sge(offset, HEADER_LEN + copied.len()))
                    .and_then(|header| match zero_copy {
                        Some(payload) => link.qp.post_send(id, &[header, payload]),
                        None => link.qp.post_send(id, &[header]),
                    }),
            };
            if let Err(err) = posted {
                self.fail_peer(peer, format!("posting a SEND failed: {err}"));
                return;
            }
        }
    }
}

fn truncation(status: Status, capacity: usize) -> Error {
    Error::Truncated {
        source_rank: status.source,
        tag: status.tag,
        len: status.len,
        capacity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_request_ids_round_trip() {
        for request in [
            WorkRequest::RecvSlot { peer: 0, slot: 0 },
            WorkRequest::RecvSlot {
                peer: 0x00ff_ffff,
                slot: u32::MAX,
            },
            WorkRequest::SendSlot { peer: 3, slot: 31 },
            WorkRequest::Read { op: 0 },
            WorkRequest::Read {
                op: 0x00ff_ffff_ffff_ffff,
            },
        ] {
            assert_eq!(WorkRequest::from_id(request.id()), Some(request));
        }
        assert_eq!(WorkRequest::from_id(0), None);
    }
}
