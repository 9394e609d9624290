//! The references: a queue pair of its own with every buffer registered once up front, moving
//! each message either by one SEND into a posted receive (in one variant inline when it fits,
//! as p2p's short copied messages go), or by p2p's rendezvous done by hand
//! (a small SEND announces it, the receiver RDMA-READs, a small SEND says it is done). The
//! ranks' communicator only carries the endpoints, the buffer's key, and a barrier.
//!
//! Completions are waited for with p2p's own policy ([`p2p::IdleWait`]: poll, yield for a
//! while, then sleep between polls) so the comparison measures protocol and registration, not
//! polling.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use p2p::{Communicator, IdleWait};
use verbs::{
    AccessFlags, CompletionQueue, Context, Gid, OwnedMemoryRegion, ProtectionDomain, QpConfig,
    QpEndpoint, QueuePair, WcOpcode, FIRST_PORT,
};

use crate::plan::{Plan, WINDOW};
use crate::sweep::{Exchange, PAYLOAD_SEED};

/// Receive buffers: a window's messages plus the acknowledgement.
const RECV_SLOTS: usize = WINDOW + 1;
/// Length of the acknowledgement and of the rendezvous' announcement and completion notice.
const CONTROL_BYTES: usize = 8;
/// Length of an encoded endpoint: QP number, PSN, GID, GID index, LID; then the send buffer's
/// address and remote key.
const ENDPOINT_BYTES: usize = 27;
const HELLO_BYTES: usize = ENDPOINT_BYTES + 12;
/// Bound on one wait: a lost completion fails the run instead of hanging it.
const WAIT_LIMIT: Duration = Duration::from_secs(60);
const ENDPOINT_TAG: u32 = 10;
/// Inline bytes the `SendInline` queue pair asks for: Soft-RoCE's limit, and p2p's first ask.
const INLINE_WANTED: u32 = 512;

/// How a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// One SEND into a receive posted in advance.
    SendRecv,
    /// As `SendRecv`, inline (copied into the work request) when the message fits the
    /// queue pair's inline limit ([`INLINE_WANTED`]).
    SendInline,
    /// As `SendInline`, and the receiver copies each message out of its receive slot into a
    /// buffer of its own: the least an eager protocol's receive does (the message lands in a
    /// buffer posted before anyone knew where it was going), which `SendRecv` never does.
    SendInlineCopiedOut,
    /// A SEND announces the message, the receiver RDMA-READs it from the sender's registered
    /// buffer, and a SEND tells the sender it may reuse the buffer.
    ReadRendezvous,
}

/// One rank's queue pair and its pre-registered buffers.
#[derive(Debug)]
pub struct RawVerbs {
    rank: usize,
    protocol: Protocol,
    /// The peer's send buffer: address and remote key, for the rendezvous' READs.
    peer_send: (u64, u32),
    // Destroyed before the regions and the CQ it uses (fields drop in order).
    qp: QueuePair,
    cq: Arc<CompletionQueue>,
    send: OwnedMemoryRegion,
    /// The first bytes of the payload, which inline SENDs copy from (empty unless inline).
    inline_payload: Vec<u8>,
    /// `RECV_SLOTS` slots of `slot_len` bytes, each always posted again as soon as its
    /// completion is seen, then one slot the rendezvous' READs land in.
    recv: OwnedMemoryRegion,
    slot_len: usize,
    /// The latest receives, oldest first: slot and length. A slot's bytes stay those of its
    /// receive until the peer sends `RECV_SLOTS` messages more, which no check waits for.
    filled: VecDeque<(usize, usize)>,
    /// Where [`Protocol::SendInlineCopiedOut`] copies each message out of its slot.
    copied_out: Vec<u8>,
    /// Completions polled but not yet taken by a wait.
    unclaimed_sends: usize,
    unclaimed_recvs: usize,
    /// Send completions nobody waited for yet (the rendezvous' notices, which p2p does not
    /// wait for either); the next wait takes them.
    deferred_sends: usize,
}

/// What a rank tells its peer: its queue pair's endpoint and where its send buffer is.
fn encode(endpoint: &QpEndpoint, send: &OwnedMemoryRegion) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HELLO_BYTES);
    bytes.extend_from_slice(&endpoint.qpn.to_le_bytes());
    bytes.extend_from_slice(&endpoint.psn.to_le_bytes());
    bytes.extend_from_slice(&endpoint.gid.0);
    bytes.push(endpoint.gid_index);
    bytes.extend_from_slice(&endpoint.lid.to_le_bytes());
    bytes.extend_from_slice(&send.mr().addr().to_le_bytes());
    bytes.extend_from_slice(&send.mr().rkey().to_le_bytes());
    bytes
}

fn decode(bytes: &[u8; HELLO_BYTES]) -> (QpEndpoint, (u64, u32)) {
    let field = |at: usize, len: usize| &bytes[at..at + len];
    let u32_at = |at: usize| u32::from_le_bytes(field(at, 4).try_into().unwrap_or_default());
    let mut gid = [0; 16];
    gid.copy_from_slice(field(8, 16));
    let endpoint = QpEndpoint {
        qpn: u32_at(0),
        psn: u32_at(4),
        gid: Gid(gid),
        gid_index: bytes[24],
        lid: u16::from_le_bytes([bytes[25], bytes[26]]),
    };
    let addr = u64::from_le_bytes(field(ENDPOINT_BYTES, 8).try_into().unwrap_or_default());
    (endpoint, (addr, u32_at(ENDPOINT_BYTES + 8)))
}

/// Sends `mine` to the other rank and receives its message of the same kind into `theirs`
/// (rank 0 sends first).
fn swap_with_peer(comm: &mut Communicator, mine: &[u8], theirs: &mut [u8]) -> Result<()> {
    let peer = 1 - comm.rank();
    if comm.rank() == 0 {
        comm.send(mine, peer, ENDPOINT_TAG)?;
        comm.recv(theirs, peer, ENDPOINT_TAG)?;
    } else {
        comm.recv(theirs, peer, ENDPOINT_TAG)?;
        comm.send(mine, peer, ENDPOINT_TAG)?;
    }
    Ok(())
}

impl RawVerbs {
    /// Opens `device`, sends from the RoCE v2 GID of `addr`, registers buffers for the largest
    /// message of `plan`, and connects to the peer rank's queue pair at the port's active MTU,
    /// exchanging endpoints through `comm`.
    ///
    /// # Errors
    /// A failing verbs call, a missing GID, or a failed exchange.
    pub fn connect(
        comm: &mut Communicator,
        device: &str,
        addr: Ipv4Addr,
        plan: Plan,
        protocol: Protocol,
    ) -> Result<Self> {
        let ctx = Context::open(device)?;
        let gid = ctx
            .roce_v2_gid(FIRST_PORT, Some(addr))?
            .with_context(|| format!("{device} has no RoCE v2 GID for {addr}"))?;
        let mtu = ctx
            .query_port(FIRST_PORT)?
            .active_mtu
            .context("the port reports no active MTU")?;
        let pd = ProtectionDomain::new(&ctx)?;
        let depth = u32::try_from(2 * RECV_SLOTS + 2)?;
        let cq = CompletionQueue::new(&ctx, depth)?;
        let max_inline_data = match protocol {
            Protocol::SendInline | Protocol::SendInlineCopiedOut => INLINE_WANTED,
            Protocol::SendRecv | Protocol::ReadRendezvous => 0,
        };
        let qp_config = QpConfig {
            max_send_wr: depth,
            max_recv_wr: depth,
            max_inline_data,
            ..QpConfig::new(FIRST_PORT, gid.index)
        };
        let qp = QueuePair::create_rc(&pd, &cq, &cq, qp_config)?;
        let slot_len = plan.max_size();
        let mut send = OwnedMemoryRegion::new(
            &pd,
            slot_len,
            AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_READ,
        )?;
        let payload = rdma_tests::pattern(slot_len, PAYLOAD_SEED);
        send.write_at(0, &payload)?;
        let inline_len = (qp.max_inline_data() as usize).min(slot_len);
        let inline_payload = payload[..inline_len].to_vec();
        let recv =
            OwnedMemoryRegion::new(&pd, (RECV_SLOTS + 1) * slot_len, AccessFlags::LOCAL_WRITE)?;
        let mut theirs = [0u8; HELLO_BYTES];
        swap_with_peer(comm, &encode(&qp.endpoint(), &send), &mut theirs)?;
        let (endpoint, peer_send) = decode(&theirs);
        qp.connect(&endpoint, mtu)?;
        let raw = Self {
            rank: comm.rank(),
            protocol,
            peer_send,
            qp,
            cq,
            send,
            inline_payload,
            recv,
            copied_out: vec![0; slot_len],
            slot_len,
            filled: VecDeque::with_capacity(RECV_SLOTS),
            unclaimed_sends: 0,
            unclaimed_recvs: 0,
            deferred_sends: 0,
        };
        for slot in 0..RECV_SLOTS {
            raw.post_recv(slot)?;
        }
        // Both sides have receives posted before the first timed SEND.
        swap_with_peer(comm, &[0], &mut [0])?;
        Ok(raw)
    }

    fn post_recv(&self, slot: usize) -> Result<()> {
        let sge = self.recv.sge(slot * self.slot_len, self.slot_len)?;
        self.qp.post_recv(slot as u64, &[sge])?;
        Ok(())
    }

    fn post_send(&self, bytes: usize) -> Result<()> {
        match self.inline_payload.get(..bytes) {
            Some(inline) => self.qp.post_send_inline(0, inline, None)?,
            None => self.qp.post_send(0, &[self.send.sge(0, bytes)?])?,
        }
        Ok(())
    }

    /// The slot after the receive slots, where READs land.
    fn read_slot_offset(&self) -> usize {
        RECV_SLOTS * self.slot_len
    }

    fn post_read(&self, bytes: usize) -> Result<()> {
        let local = self.recv.sge(self.read_slot_offset(), bytes)?;
        let (addr, rkey) = self.peer_send;
        self.qp.post_read(0, &[local], addr, rkey)?;
        Ok(())
    }

    /// The sending side of one message: SEND it, or announce it and wait for the notice.
    fn send_one(&mut self, bytes: usize) -> Result<()> {
        match self.protocol {
            Protocol::SendRecv | Protocol::SendInline | Protocol::SendInlineCopiedOut => {
                self.post_send(bytes)?;
                self.wait(1, 0)
            }
            Protocol::ReadRendezvous => {
                self.post_send(CONTROL_BYTES)?;
                self.wait(1, 1)
            }
        }
    }

    /// The receiving side of `count` messages: take them (and copy them out, if the protocol
    /// says so), or their announcements, then READ them all and send a notice for each.
    fn receive(&mut self, count: usize, bytes: usize) -> Result<()> {
        self.wait(0, count)?;
        if self.protocol == Protocol::SendInlineCopiedOut {
            // The newest `count` receives are this call's messages.
            for back in 1..=count.min(self.filled.len()) {
                let (slot, len) = self.filled[self.filled.len() - back];
                self.recv
                    .read_at(slot * self.slot_len, &mut self.copied_out[..len])?;
            }
        }
        if self.protocol == Protocol::ReadRendezvous {
            for _ in 0..count {
                self.post_read(bytes)?;
            }
            self.wait(count, 0)?;
            for _ in 0..count {
                self.post_send(CONTROL_BYTES)?;
            }
            self.deferred_sends += count;
        }
        Ok(())
    }

    /// Waits until `sends` send completions (plus the deferred ones) and `recvs` receive
    /// completions are at hand and takes them; completions that arrive beyond those (the
    /// peer's next message may come before this rank's own send completion) are kept for the
    /// next wait. Each receive slot is posted again as soon as its completion is seen.
    fn wait(&mut self, sends: usize, recvs: usize) -> Result<()> {
        let sends = sends + std::mem::take(&mut self.deferred_sends);
        let start = Instant::now();
        let mut idle = IdleWait::default();
        while self.unclaimed_sends < sends || self.unclaimed_recvs < recvs {
            match self.cq.poll()? {
                Some(completion) if completion.opcode == WcOpcode::Recv => {
                    let slot = usize::try_from(completion.wr_id)?;
                    if self.filled.len() == RECV_SLOTS {
                        self.filled.pop_front();
                    }
                    self.filled.push_back((slot, completion.byte_len as usize));
                    self.post_recv(slot)?;
                    self.unclaimed_recvs += 1;
                    idle.progressed();
                }
                Some(_) => {
                    self.unclaimed_sends += 1;
                    idle.progressed();
                }
                None => {
                    // The time the idle wait read serves the limit too, as in p2p's waits.
                    if idle.idle().saturating_duration_since(start) > WAIT_LIMIT {
                        bail!(
                            "no completion within {WAIT_LIMIT:?} (have {} of {sends} sends, {} \
                             of {recvs} receives)",
                            self.unclaimed_sends,
                            self.unclaimed_recvs
                        );
                    }
                }
            }
        }
        self.unclaimed_sends -= sends;
        self.unclaimed_recvs -= recvs;
        Ok(())
    }
}

impl Exchange for RawVerbs {
    fn rank(&self) -> usize {
        self.rank
    }

    fn ping_pong(&mut self, bytes: usize) -> Result<()> {
        if self.rank == 0 {
            self.send_one(bytes)?;
            self.receive(1, bytes)
        } else {
            self.receive(1, bytes)?;
            self.send_one(bytes)
        }
    }

    fn window(&mut self, bytes: usize) -> Result<()> {
        if self.rank == 0 {
            let (message, notices) = match self.protocol {
                Protocol::SendRecv | Protocol::SendInline | Protocol::SendInlineCopiedOut => {
                    (bytes, 0)
                }
                Protocol::ReadRendezvous => (CONTROL_BYTES, WINDOW),
            };
            for _ in 0..WINDOW {
                self.post_send(message)?;
            }
            self.wait(WINDOW, notices + 1)
        } else {
            self.receive(WINDOW, bytes)?;
            self.post_send(CONTROL_BYTES.min(bytes))?;
            self.wait(1, 0)
        }
    }

    fn settle(&mut self) -> Result<()> {
        self.wait(0, 0)
    }

    fn received(&self, bytes: usize) -> Vec<Vec<u8>> {
        let copy = |offset: usize| {
            let mut out = vec![0; bytes];
            self.recv
                .read_at(offset, &mut out)
                .map(|()| out)
                .unwrap_or_default()
        };
        if self.protocol == Protocol::ReadRendezvous {
            return vec![copy(self.read_slot_offset())];
        }
        let messages = if self.rank == 0 { 1 } else { WINDOW };
        self.filled
            .iter()
            .rev()
            .filter(|&&(_, len)| len == bytes)
            .take(messages)
            .map(|&(slot, _)| copy(slot * self.slot_len))
            .collect()
    }
}
