//! The p2p variants: blocking send/recv for the ping-pong, isend/irecv windows for streaming.
//! Buffers are reused across repetitions, as an application's would be, so with the cache on
//! every repetition after the first hits it.

use anyhow::{Context, Result};
use memmap2::MmapMut;
use p2p::Communicator;

use crate::plan::{Plan, WINDOW};
use crate::sweep::{Exchange, PAYLOAD_SEED};

const DATA_TAG: u32 = 1;
const ACK_TAG: u32 = 2;

/// Two ranks talking through a [`Communicator`].
#[derive(Debug)]
pub struct ThroughP2p {
    comm: Communicator,
    peer: usize,
    /// Page-aligned, like the buffers of a typical large-message application (and as ODP
    /// needs on kernels whose rxe loses data at other offsets).
    send: MmapMut,
    recv: MmapMut,
    window_sends: Vec<Vec<u8>>,
    window_recvs: Vec<Vec<u8>>,
}

impl ThroughP2p {
    /// Buffers for the largest message of `plan`, filled with the payload.
    ///
    /// # Errors
    /// When the buffers cannot be mapped.
    pub fn new(comm: Communicator, plan: Plan) -> Result<Self> {
        let len = plan.max_size();
        let mut send = MmapMut::map_anon(len).context("mapping the send buffer")?;
        send.copy_from_slice(&rdma_tests::pattern(len, PAYLOAD_SEED));
        let recv = MmapMut::map_anon(len).context("mapping the receive buffer")?;
        let peer = 1 - comm.rank();
        Ok(Self {
            comm,
            peer,
            send,
            recv,
            window_sends: Vec::new(),
            window_recvs: Vec::new(),
        })
    }

    /// Sizes the window buffers for `bytes` (new allocations only when the size changes).
    fn window_buffers(&mut self, bytes: usize) {
        let sized = |buffers: &[Vec<u8>]| buffers.first().is_some_and(|b| b.len() == bytes);
        if self.comm.rank() == 0 && !sized(&self.window_sends) {
            self.window_sends = vec![self.send[..bytes].to_vec(); WINDOW];
        }
        if self.comm.rank() == 1 && !sized(&self.window_recvs) {
            self.window_recvs = vec![vec![0; bytes]; WINDOW];
        }
    }
}

impl Exchange for ThroughP2p {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn ping_pong(&mut self, bytes: usize) -> Result<()> {
        let (send, recv) = (&self.send[..bytes], &mut self.recv[..bytes]);
        if self.comm.rank() == 0 {
            self.comm.send(send, self.peer, DATA_TAG)?;
            self.comm.recv(recv, self.peer, DATA_TAG)?;
        } else {
            self.comm.recv(recv, self.peer, DATA_TAG)?;
            self.comm.send(send, self.peer, DATA_TAG)?;
        }
        Ok(())
    }

    fn window(&mut self, bytes: usize) -> Result<()> {
        self.window_buffers(bytes);
        let mut ack = [0u8; 8];
        if self.comm.rank() == 0 {
            let mut requests = Vec::with_capacity(WINDOW);
            for buffer in self.window_sends.drain(..) {
                requests.push(self.comm.isend(buffer, self.peer, DATA_TAG)?);
            }
            for request in requests {
                self.window_sends.push(self.comm.wait(request)?.1);
            }
            self.comm.recv(&mut ack, self.peer, ACK_TAG)?;
        } else {
            let mut requests = Vec::with_capacity(WINDOW);
            for buffer in self.window_recvs.drain(..) {
                requests.push(self.comm.irecv(buffer, self.peer, DATA_TAG)?);
            }
            for request in requests {
                self.window_recvs.push(self.comm.wait(request)?.1);
            }
            self.comm.send(&ack, self.peer, ACK_TAG)?;
        }
        Ok(())
    }

    fn received(&self, bytes: usize) -> Vec<Vec<u8>> {
        std::iter::once(&self.recv[..bytes])
            .chain(self.window_recvs.iter().map(|b| &b[..bytes.min(b.len())]))
            .map(<[u8]>::to_vec)
            .collect()
    }
}
