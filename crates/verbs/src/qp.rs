//! Reliable-connected queue pairs.

use std::hash::{BuildHasher, Hasher};
use std::mem::MaybeUninit;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use rdma_sys::{
    ibv_create_qp, ibv_destroy_qp, ibv_modify_qp, ibv_post_recv, ibv_post_send, ibv_qp,
    ibv_qp_attr, ibv_qp_attr_mask, ibv_qp_cap, ibv_qp_init_attr, ibv_qp_state, ibv_qp_type,
    ibv_recv_wr, ibv_send_flags, ibv_send_wr, ibv_sge, ibv_wr_opcode,
};

use crate::attr::Mtu;
use crate::cq::CompletionQueue;
use crate::error::{last_os_error, note_drop_result, returned_os_error, Error, Result};
use crate::gid::Gid;
use crate::mr::{AccessFlags, Sge};
use crate::pd::ProtectionDomain;

/// Queue-pair states this crate moves a QP through (`enum ibv_qp_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QpState {
    /// Initialised: receives may be posted.
    Init,
    /// Ready to receive: connected to the remote QP.
    ReadyToReceive,
    /// Ready to send.
    ReadyToSend,
}

impl QpState {
    fn to_raw(self) -> ibv_qp_state::Type {
        match self {
            Self::Init => ibv_qp_state::IBV_QPS_INIT,
            Self::ReadyToReceive => ibv_qp_state::IBV_QPS_RTR,
            Self::ReadyToSend => ibv_qp_state::IBV_QPS_RTS,
        }
    }
}

/// What a peer needs to know to connect its QP to ours; exchange it out of band.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpEndpoint {
    /// Queue-pair number.
    pub qpn: u32,
    /// Initial packet sequence number of the QP's send queue (24 bits).
    pub psn: u32,
    /// GID the QP sends from.
    pub gid: Gid,
    /// Index of `gid` in its own device's GID table (informational for the peer).
    pub gid_index: u8,
    /// LID of the port (0 on RoCE).
    pub lid: u16,
}

/// Creation and connection parameters of an RC queue pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpConfig {
    /// Port to use (numbered from 1).
    pub port: u8,
    /// Local GID table index to send from (for RoCE v2: the entry of the
    /// local IP address, see [`crate::Context::roce_v2_gid`]).
    pub gid_index: u8,
    /// Send-queue depth.
    pub max_send_wr: u32,
    /// Receive-queue depth.
    pub max_recv_wr: u32,
    /// Scatter/gather elements per send work request.
    pub max_send_sge: u32,
    /// Scatter/gather elements per receive work request.
    pub max_recv_sge: u32,
    /// Outstanding RDMA READs, as initiator and as responder.
    pub max_rd_atomic: u8,
    /// Remote operations peers may perform through this QP.
    pub remote_access: AccessFlags,
    /// Local ACK timeout exponent: 4.096 µs × 2^`ack_timeout`.
    pub ack_timeout: u8,
    /// Bytes a SEND may carry inline, in the work request itself
    /// ([`QueuePair::post_send_inline`]); 0 for none. Devices refuse more
    /// than they support (no verb reports their limit: ask, and ask for less
    /// on failure), and may grant more ([`QueuePair::max_inline_data`]).
    pub max_inline_data: u32,
}

impl QpConfig {
    /// Defaults for port `port` sending from GID `gid_index`: 64 send and
    /// receive work requests of one element each, one outstanding READ,
    /// remote READ and WRITE allowed, and an ACK timeout of about 0.5 s, which
    /// tolerates emulated machines.
    #[must_use]
    pub fn new(port: u8, gid_index: u8) -> Self {
        Self {
            port,
            gid_index,
            max_send_wr: 64,
            max_recv_wr: 64,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_rd_atomic: 1,
            remote_access: AccessFlags::REMOTE_READ | AccessFlags::REMOTE_WRITE,
            ack_timeout: 17,
            max_inline_data: 0,
        }
    }
}

/// A reliable-connected queue pair (`struct ibv_qp` of type `IBV_QPT_RC`).
///
/// Every posted send-side work request is signalled: it produces a
/// completion on the send CQ.
#[derive(Debug)]
pub struct QueuePair {
    raw: NonNull<ibv_qp>,
    qpn: u32,
    /// Inline bytes the device granted.
    max_inline_data: u32,
    endpoint: QpEndpoint,
    config: QpConfig,
    pd: Arc<ProtectionDomain>,
    send_cq: Arc<CompletionQueue>,
    recv_cq: Arc<CompletionQueue>,
}

// SAFETY: verbs objects are safe for multi-threaded access by default
// (ibv_alloc_td(3)); providers serialise posts to one queue internally. The QP
// is destroyed once, in `Drop`.
unsafe impl Send for QueuePair {}
// SAFETY: as for `Send`: `&self` methods only post and modify, both thread-safe verbs.
unsafe impl Sync for QueuePair {}

/// A random 24-bit packet sequence number, so a reconnected QP number does not
/// accept stale packets of its predecessor.
fn random_psn() -> u32 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_usize(std::process::id() as usize);
    (hasher.finish() & 0x00ff_ffff) as u32
}

impl QueuePair {
    /// Creates an RC queue pair in `pd` that completes to `send_cq` and `recv_cq`.
    ///
    /// # Errors
    ///
    /// [`Error::CreateQp`] with the errno of `ibv_create_qp` (e.g. `EINVAL` for
    /// queue sizes above the device limits), or [`Error::QueryGid`] if the
    /// configured GID cannot be read.
    pub fn create_rc(
        pd: &Arc<ProtectionDomain>,
        send_cq: &Arc<CompletionQueue>,
        recv_cq: &Arc<CompletionQueue>,
        config: QpConfig,
    ) -> Result<Self> {
        let context = pd.context();
        let gid = context.query_gid(config.port, config.gid_index)?;
        let lid = context.query_port(config.port)?.lid;
        let mut init = ibv_qp_init_attr {
            qp_context: ptr::null_mut(),
            send_cq: send_cq.as_ptr(),
            recv_cq: recv_cq.as_ptr(),
            srq: ptr::null_mut(),
            cap: ibv_qp_cap {
                max_send_wr: config.max_send_wr,
                max_recv_wr: config.max_recv_wr,
                max_send_sge: config.max_send_sge,
                max_recv_sge: config.max_recv_sge,
                max_inline_data: config.max_inline_data,
            },
            qp_type: ibv_qp_type::IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: PD and CQs are alive (we keep `Arc`s for the QP's lifetime);
        // `init` is a fully initialised attribute struct the call may update.
        let raw = unsafe { ibv_create_qp(pd.as_ptr(), &raw mut init) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::CreateQp {
            source: last_os_error(),
        })?;
        // SAFETY: a created QP is initialised; `qp_num` never changes.
        let qpn = unsafe { raw.as_ref() }.qp_num;
        Ok(Self {
            raw,
            qpn,
            // `ibv_create_qp` wrote the capabilities it granted back into `init`.
            max_inline_data: init.cap.max_inline_data,
            endpoint: QpEndpoint {
                qpn,
                psn: random_psn(),
                gid,
                gid_index: config.gid_index,
                lid,
            },
            config,
            pd: Arc::clone(pd),
            send_cq: Arc::clone(send_cq),
            recv_cq: Arc::clone(recv_cq),
        })
    }

    /// Queue-pair number.
    #[must_use]
    pub fn qpn(&self) -> u32 {
        self.qpn
    }

    /// What the peer needs to connect to this QP.
    #[must_use]
    pub fn endpoint(&self) -> QpEndpoint {
        self.endpoint
    }

    /// The protection domain of the QP.
    #[must_use]
    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.pd
    }

    /// The CQ that send-side completions go to.
    #[must_use]
    pub fn send_cq(&self) -> &Arc<CompletionQueue> {
        &self.send_cq
    }

    /// The CQ that receive completions go to.
    #[must_use]
    pub fn recv_cq(&self) -> &Arc<CompletionQueue> {
        &self.recv_cq
    }

    /// RESET → INIT: binds the QP to its port and sets the allowed remote access.
    ///
    /// # Errors
    ///
    /// [`Error::ModifyQp`] with the errno of `ibv_modify_qp`.
    pub fn modify_to_init(&self) -> Result<()> {
        let mut attr = zeroed_qp_attr();
        attr.qp_state = QpState::Init.to_raw();
        attr.pkey_index = 0;
        attr.port_num = self.config.port;
        attr.qp_access_flags = self.config.remote_access.bits();
        let mask = ibv_qp_attr_mask::IBV_QP_STATE
            | ibv_qp_attr_mask::IBV_QP_PKEY_INDEX
            | ibv_qp_attr_mask::IBV_QP_PORT
            | ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS;
        self.modify(QpState::Init, &mut attr, mask)
    }

    /// INIT → RTR: connects the receive side to `remote` at path MTU `mtu`.
    ///
    /// # Errors
    ///
    /// [`Error::ModifyQp`] with the errno of `ibv_modify_qp`.
    pub fn modify_to_rtr(&self, remote: &QpEndpoint, mtu: Mtu) -> Result<()> {
        let mut attr = zeroed_qp_attr();
        attr.qp_state = QpState::ReadyToReceive.to_raw();
        attr.path_mtu = mtu.to_raw();
        attr.dest_qp_num = remote.qpn;
        attr.rq_psn = remote.psn;
        attr.max_dest_rd_atomic = self.config.max_rd_atomic;
        attr.min_rnr_timer = 12;
        attr.ah_attr.is_global = 1;
        attr.ah_attr.dlid = remote.lid;
        attr.ah_attr.port_num = self.config.port;
        attr.ah_attr.grh.dgid = rdma_sys::ibv_gid { raw: remote.gid.0 };
        attr.ah_attr.grh.sgid_index = self.config.gid_index;
        // RoCE v2 packets with hop limit 0 or 1 are not routed; 64 is the usual default.
        attr.ah_attr.grh.hop_limit = 64;
        let mask = ibv_qp_attr_mask::IBV_QP_STATE
            | ibv_qp_attr_mask::IBV_QP_AV
            | ibv_qp_attr_mask::IBV_QP_PATH_MTU
            | ibv_qp_attr_mask::IBV_QP_DEST_QPN
            | ibv_qp_attr_mask::IBV_QP_RQ_PSN
            | ibv_qp_attr_mask::IBV_QP_MAX_DEST_RD_ATOMIC
            | ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER;
        self.modify(QpState::ReadyToReceive, &mut attr, mask)
    }

    /// RTR → RTS: enables the send side.
    ///
    /// # Errors
    ///
    /// [`Error::ModifyQp`] with the errno of `ibv_modify_qp`.
    pub fn modify_to_rts(&self) -> Result<()> {
        let mut attr = zeroed_qp_attr();
        attr.qp_state = QpState::ReadyToSend.to_raw();
        attr.sq_psn = self.endpoint.psn;
        attr.timeout = self.config.ack_timeout;
        attr.retry_cnt = 7;
        // 7 means "retry forever" while the receiver has no receive posted.
        attr.rnr_retry = 7;
        attr.max_rd_atomic = self.config.max_rd_atomic;
        let mask = ibv_qp_attr_mask::IBV_QP_STATE
            | ibv_qp_attr_mask::IBV_QP_SQ_PSN
            | ibv_qp_attr_mask::IBV_QP_TIMEOUT
            | ibv_qp_attr_mask::IBV_QP_RETRY_CNT
            | ibv_qp_attr_mask::IBV_QP_RNR_RETRY
            | ibv_qp_attr_mask::IBV_QP_MAX_QP_RD_ATOMIC;
        self.modify(QpState::ReadyToSend, &mut attr, mask)
    }

    /// RESET → INIT → RTR → RTS in one go.
    ///
    /// # Errors
    ///
    /// [`Error::ModifyQp`] naming the transition that failed.
    pub fn connect(&self, remote: &QpEndpoint, mtu: Mtu) -> Result<()> {
        self.modify_to_init()?;
        self.modify_to_rtr(remote, mtu)?;
        self.modify_to_rts()
    }

    fn modify(&self, state: QpState, attr: &mut ibv_qp_attr, mask: ibv_qp_attr_mask) -> Result<()> {
        let modify_error = |source| Error::ModifyQp {
            qpn: self.qpn,
            state,
            source,
        };
        let mask = i32::try_from(mask.0)
            .map_err(|_| modify_error(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        // SAFETY: the QP is alive; `attr` is initialised for every field named
        // in `mask` (and zero elsewhere); the call only reads it.
        let ret = unsafe { ibv_modify_qp(self.raw.as_ptr(), attr, mask) };
        if ret != 0 {
            return Err(modify_error(returned_os_error(ret)));
        }
        Ok(())
    }

    /// Posts an RDMA WRITE of the `local` elements to `remote_addr` in the peer
    /// region with key `rkey`.
    ///
    /// # Errors
    ///
    /// [`Error::PostSend`] with the errno of `ibv_post_send` (e.g. `ENOMEM`
    /// when the send queue is full, `EINVAL` for too many elements).
    pub fn post_write(&self, wr_id: u64, local: &[Sge], remote_addr: u64, rkey: u32) -> Result<()> {
        self.post_send_wr(
            wr_id,
            ibv_wr_opcode::IBV_WR_RDMA_WRITE,
            local,
            Some((remote_addr, rkey)),
            None,
        )
    }

    /// Posts an RDMA READ from `remote_addr` in the peer region with key `rkey`
    /// into the `local` elements.
    ///
    /// # Errors
    ///
    /// [`Error::PostSend`] with the errno of `ibv_post_send`.
    pub fn post_read(&self, wr_id: u64, local: &[Sge], remote_addr: u64, rkey: u32) -> Result<()> {
        self.post_send_wr(
            wr_id,
            ibv_wr_opcode::IBV_WR_RDMA_READ,
            local,
            Some((remote_addr, rkey)),
            None,
        )
    }

    /// Posts a SEND of the `local` elements; the peer must have a receive posted.
    ///
    /// # Errors
    ///
    /// [`Error::PostSend`] with the errno of `ibv_post_send`.
    pub fn post_send(&self, wr_id: u64, local: &[Sge]) -> Result<()> {
        self.post_send_wr(wr_id, ibv_wr_opcode::IBV_WR_SEND, local, None, None)
    }

    /// Posts a SEND of the `local` elements with 32 bits of immediate data, which the peer's
    /// receive completion reports as [`Completion::imm_data`](crate::Completion::imm_data).
    ///
    /// # Errors
    ///
    /// [`Error::PostSend`] with the errno of `ibv_post_send`.
    pub fn post_send_with_imm(&self, wr_id: u64, local: &[Sge], imm_data: u32) -> Result<()> {
        self.post_send_wr(
            wr_id,
            ibv_wr_opcode::IBV_WR_SEND_WITH_IMM,
            local,
            None,
            Some(imm_data),
        )
    }

    /// Bytes a SEND may carry inline ([`QueuePair::post_send_inline`]): at
    /// least what [`QpConfig::max_inline_data`] asked for.
    #[must_use]
    pub fn max_inline_data(&self) -> u32 {
        self.max_inline_data
    }

    /// Posts a SEND of `data` copied into the work request (inline), with
    /// immediate data if `imm_data` is given: no memory region, and `data`
    /// may be reused as soon as this returns.
    ///
    /// # Errors
    ///
    /// [`Error::PostSend`] with `EINVAL` when `data` is longer than
    /// [`QueuePair::max_inline_data`], else with the errno of `ibv_post_send`.
    pub fn post_send_inline(&self, wr_id: u64, data: &[u8], imm_data: Option<u32>) -> Result<()> {
        let opcode = match imm_data {
            Some(_) => ibv_wr_opcode::IBV_WR_SEND_WITH_IMM,
            None => ibv_wr_opcode::IBV_WR_SEND,
        };
        let length = u32::try_from(data.len())
            .ok()
            .filter(|&length| length <= self.max_inline_data);
        let Some(length) = length else {
            return Err(Error::PostSend {
                qpn: self.qpn,
                wr_id,
                opcode: "SEND",
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            });
        };
        // Inline, the provider copies `length` bytes from `addr` while posting;
        // it ignores the key.
        let sge = Sge {
            addr: data.as_ptr() as u64,
            length,
            lkey: 0,
        };
        let inline = ibv_send_flags::IBV_SEND_INLINE.0;
        self.post_send_wr_flagged(wr_id, opcode, &[sge], None, imm_data, inline)
    }

    fn post_send_wr(
        &self,
        wr_id: u64,
        opcode: ibv_wr_opcode::Type,
        local: &[Sge],
        remote: Option<(u64, u32)>,
        imm_data: Option<u32>,
    ) -> Result<()> {
        self.post_send_wr_flagged(wr_id, opcode, local, remote, imm_data, 0)
    }

    /// Posts one signalled send-queue work request with `extra_flags`.
    fn post_send_wr_flagged(
        &self,
        wr_id: u64,
        opcode: ibv_wr_opcode::Type,
        local: &[Sge],
        remote: Option<(u64, u32)>,
        imm_data: Option<u32>,
        extra_flags: u32,
    ) -> Result<()> {
        let opcode_name = match opcode {
            ibv_wr_opcode::IBV_WR_RDMA_WRITE => "RDMA WRITE",
            ibv_wr_opcode::IBV_WR_RDMA_READ => "RDMA READ",
            _ => "SEND",
        };
        let post_error = |source| Error::PostSend {
            qpn: self.qpn,
            wr_id,
            opcode: opcode_name,
            source,
        };
        let num_sge = i32::try_from(local.len())
            .map_err(|_| post_error(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        // SAFETY: `ibv_send_wr` consists of integers, raw pointers and unions of
        // those, for all of which all-zero is a valid value.
        let mut wr: ibv_send_wr = unsafe { MaybeUninit::zeroed().assume_init() };
        wr.wr_id = wr_id;
        wr.next = ptr::null_mut();
        // Providers only read the list; the cast follows the C prototype.
        wr.sg_list = local.as_ptr().cast::<ibv_sge>().cast_mut();
        wr.num_sge = num_sge;
        wr.opcode = opcode;
        wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0 | extra_flags;
        if let Some((remote_addr, rkey)) = remote {
            wr.wr.rdma = rdma_sys::rdma_t { remote_addr, rkey };
        }
        if let Some(imm_data) = imm_data {
            // The wire carries it in network byte order.
            wr.imm_data_invalidated_rkey_union.imm_data = imm_data.to_be();
        }
        let mut bad_wr = ptr::null_mut();
        // SAFETY: the QP is alive; `wr` and the `Sge` array it points to (same
        // layout as `ibv_sge`, asserted in mr.rs) live across the call, and the
        // provider copies them before returning. Local memory is only reached
        // through `lkey`s of registered regions, which the HCA bounds-checks,
        // or, inline, by the provider during the call, from the bytes of a
        // slice borrowed across it (`post_send_inline`).
        let ret = unsafe { ibv_post_send(self.raw.as_ptr(), &raw mut wr, &raw mut bad_wr) };
        if ret != 0 {
            return Err(post_error(returned_os_error(ret)));
        }
        Ok(())
    }

    /// Posts a receive of up to the total length of the `local` elements.
    ///
    /// # Errors
    ///
    /// [`Error::PostRecv`] with the errno of `ibv_post_recv` (e.g. `ENOMEM`
    /// when the receive queue is full).
    pub fn post_recv(&self, wr_id: u64, local: &[Sge]) -> Result<()> {
        let post_error = |source| Error::PostRecv {
            qpn: self.qpn,
            wr_id,
            source,
        };
        let num_sge = i32::try_from(local.len())
            .map_err(|_| post_error(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        let mut wr = ibv_recv_wr {
            wr_id,
            next: ptr::null_mut(),
            sg_list: local.as_ptr().cast::<ibv_sge>().cast_mut(),
            num_sge,
        };
        let mut bad_wr = ptr::null_mut();
        // SAFETY: as for `post_send_wr`: live QP, `wr` and its `Sge` array
        // outlive the call, which copies them; memory is reached via lkeys only.
        let ret = unsafe { ibv_post_recv(self.raw.as_ptr(), &raw mut wr, &raw mut bad_wr) };
        if ret != 0 {
            return Err(post_error(returned_os_error(ret)));
        }
        Ok(())
    }
}

fn zeroed_qp_attr() -> ibv_qp_attr {
    // SAFETY: `ibv_qp_attr` consists of integers and unions of integer arrays,
    // for which all-zero is a valid value.
    unsafe { MaybeUninit::zeroed().assume_init() }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // SAFETY: created in `create_rc` and destroyed exactly once; the PD and
        // CQs it uses are kept alive by our `Arc`s until after this call.
        let ret = unsafe { ibv_destroy_qp(self.raw.as_ptr()) };
        note_drop_result("ibv_qp", ret);
    }
}
