//! What goes over the wire, and what this crate's work requests say about themselves: message
//! headers and immediate data on the queue pairs, queue-pair endpoints over TCP, work-request
//! ids.

use verbs::{Gid, QpEndpoint};

use crate::error::Violation;

/// What a message on a queue pair is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Header followed by the whole payload.
    Eager,
    /// Request to send: the receiver reads `len` bytes at `addr` with `rkey`.
    RequestToSend,
    /// The receiver is done with the sender's buffer of send `cookie`.
    Finish,
}

/// The fixed-size header at the start of every SEND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: Kind,
    pub(crate) tag: u32,
    /// Payload length (eager, request to send); 0 for finish.
    pub(crate) len: u64,
    /// Sender buffer address (request to send).
    pub(crate) addr: u64,
    /// Sender buffer rkey (request to send).
    pub(crate) rkey: u32,
    /// The sender's operation id, echoed in the finish (unused by the receiver of an eager
    /// message).
    pub(crate) cookie: u64,
}

/// Encoded size of a [`Header`].
pub(crate) const HEADER_LEN: usize = 40;

/// Immediate data of an eager SEND that carries no header, copied or zero-copy: this bit, and
/// the tag in the low 31 bits (MPI's tags are non-negative `int`s); the length is the SEND's.
/// A message whose tag needs the top bit goes with a header instead. Every other SEND has no
/// immediate data.
const HEADERLESS_IMM: u32 = 1 << 31;

/// The immediate data of an eager SEND of `tag` without a header, or `None` when the tag needs
/// the top bit (the message then goes with a header).
pub(crate) fn headerless_imm(tag: u32) -> Option<u32> {
    (tag & HEADERLESS_IMM == 0).then_some(HEADERLESS_IMM | tag)
}

/// What a receive bounce buffer admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReceiveLimits {
    /// Bytes of the buffer.
    pub(crate) capacity: usize,
    /// Eager payloads are shorter than this (the rendezvous threshold).
    pub(crate) eager_below: usize,
}

/// What a SEND of `byte_len` bytes with immediate data `imm_data` carries: its header and the
/// offset of an eager payload from the start of the message. `head` holds the first
/// [`HEADER_LEN`] bytes of the receive bounce buffer the SEND landed in (only the first
/// `byte_len` of them came with it); a SEND with immediate data has no header, and `head` is
/// not read then.
///
/// Total: any input gives a message or the [`Violation`] it commits, never a panic. A message
/// that parses fits its buffer: an eager one is shorter than `limits.eager_below` and its
/// payload lies within the `byte_len` bytes that arrived; a request to send announces 1 to
/// `u32::MAX` bytes (one RDMA READ); a request to send or a FIN is a header alone.
pub(crate) fn parse_message(
    imm_data: Option<u32>,
    byte_len: usize,
    limits: ReceiveLimits,
    head: &[u8; HEADER_LEN],
) -> Result<(Header, usize), Violation> {
    if byte_len > limits.capacity {
        return Err(Violation::Overlong {
            byte_len,
            capacity: limits.capacity,
        });
    }
    let (header, payload_at) = match imm_data {
        Some(imm) if imm & HEADERLESS_IMM != 0 => {
            (Header::eager(imm & !HEADERLESS_IMM, byte_len, 0), 0)
        }
        Some(imm) => return Err(Violation::UnknownImmediate { imm }),
        None if byte_len < HEADER_LEN => return Err(Violation::TruncatedHeader { byte_len }),
        None => (Header::decode(head)?, HEADER_LEN),
    };
    let carried = byte_len - payload_at;
    match header.kind {
        Kind::Eager if usize::try_from(header.len).ok() != Some(carried) => {
            Err(Violation::LengthMismatch {
                announced: header.len,
                carried,
            })
        }
        Kind::Eager if carried >= limits.eager_below => Err(Violation::EagerTooLong {
            len: header.len,
            threshold: limits.eager_below,
        }),
        Kind::RequestToSend | Kind::Finish if carried != 0 => {
            Err(Violation::TrailingBytes { byte_len })
        }
        Kind::RequestToSend if header.len > u64::from(u32::MAX) => {
            Err(Violation::RendezvousTooLong { len: header.len })
        }
        Kind::RequestToSend if header.len == 0 => Err(Violation::EmptyRequestToSend),
        _ => Ok((header, payload_at)),
    }
}

impl Header {
    /// The header of an eager message of `len` bytes, sent by operation `cookie`.
    pub(crate) fn eager(tag: u32, len: usize, cookie: u64) -> Self {
        Self {
            kind: Kind::Eager,
            tag,
            len: len as u64,
            addr: 0,
            rkey: 0,
            cookie,
        }
    }

    /// The request to send of operation `cookie`: read `len` bytes at `addr` with `rkey`.
    pub(crate) fn request_to_send(tag: u32, len: usize, addr: u64, rkey: u32, cookie: u64) -> Self {
        Self {
            kind: Kind::RequestToSend,
            addr,
            rkey,
            ..Self::eager(tag, len, cookie)
        }
    }

    /// The receiver's answer to the request to send of operation `cookie`.
    pub(crate) fn finish(cookie: u64) -> Self {
        Self {
            kind: Kind::Finish,
            ..Self::eager(0, 0, cookie)
        }
    }

    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let kind: u32 = match self.kind {
            Kind::Eager => 1,
            Kind::RequestToSend => 2,
            Kind::Finish => 3,
        };
        let mut out = [0; HEADER_LEN];
        out[0..4].copy_from_slice(&kind.to_le_bytes());
        out[4..8].copy_from_slice(&self.tag.to_le_bytes());
        out[8..16].copy_from_slice(&self.len.to_le_bytes());
        out[16..24].copy_from_slice(&self.addr.to_le_bytes());
        out[24..28].copy_from_slice(&self.rkey.to_le_bytes());
        out[32..40].copy_from_slice(&self.cookie.to_le_bytes());
        out
    }

    /// The header encoded in `bytes`.
    pub(crate) fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, Violation> {
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let u64_at = |at: usize| u64::from(u32_at(at)) | u64::from(u32_at(at + 4)) << 32;
        let kind = match u32_at(0) {
            1 => Kind::Eager,
            2 => Kind::RequestToSend,
            3 => Kind::Finish,
            kind => return Err(Violation::UnknownKind { kind }),
        };
        Ok(Self {
            kind,
            tag: u32_at(4),
            len: u64_at(8),
            addr: u64_at(16),
            rkey: u32_at(24),
            cookie: u64_at(32),
        })
    }
}

/// What a work-request id says about the work request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkRequest {
    /// Receive bounce buffer `index` of the connection to `peer`.
    RecvBounce { peer: usize, index: u32 },
    /// Send bounce buffer `index` of the connection to `peer`.
    SendBounce { peer: usize, index: u32 },
    /// The RDMA READ of receive operation `op`.
    Read { op: u64 },
}

const WR_RECV_BOUNCE: u64 = 1;
const WR_SEND_BOUNCE: u64 = 2;
const WR_READ: u64 = 3;

impl WorkRequest {
    pub(crate) fn id(self) -> u64 {
        match self {
            Self::RecvBounce { peer, index } => {
                WR_RECV_BOUNCE << 56 | (peer as u64) << 32 | u64::from(index)
            }
            Self::SendBounce { peer, index } => {
                WR_SEND_BOUNCE << 56 | (peer as u64) << 32 | u64::from(index)
            }
            Self::Read { op } => WR_READ << 56 | op,
        }
    }

    pub(crate) fn from_id(id: u64) -> Option<Self> {
        let peer = ((id >> 32) & 0x00ff_ffff) as usize;
        let index = (id & 0xffff_ffff) as u32;
        match id >> 56 {
            WR_RECV_BOUNCE => Some(Self::RecvBounce { peer, index }),
            WR_SEND_BOUNCE => Some(Self::SendBounce { peer, index }),
            WR_READ => Some(Self::Read {
                op: id & 0x00ff_ffff_ffff_ffff,
            }),
            _ => None,
        }
    }
}

/// Encoded size of a [`QpEndpoint`].
pub(crate) const ENDPOINT_LEN: usize = 28;

pub(crate) fn encode_endpoint(endpoint: &QpEndpoint) -> [u8; ENDPOINT_LEN] {
    let mut out = [0; ENDPOINT_LEN];
    out[0..4].copy_from_slice(&endpoint.qpn.to_le_bytes());
    out[4..8].copy_from_slice(&endpoint.psn.to_le_bytes());
    out[8..24].copy_from_slice(&endpoint.gid.0);
    out[24..26].copy_from_slice(&endpoint.lid.to_le_bytes());
    out[26] = endpoint.gid_index;
    out
}

/// Queue-pair numbers and packet sequence numbers are 24-bit.
const MAX_QPN_OR_PSN: u32 = 0x00ff_ffff;

/// The endpoint encoded in `bytes`, or why they encode none: a queue-pair or packet sequence
/// number wider than 24 bits, or a non-zero reserved byte.
pub(crate) fn decode_endpoint(bytes: &[u8; ENDPOINT_LEN]) -> Result<QpEndpoint, String> {
    let mut gid = [0; 16];
    gid.copy_from_slice(&bytes[8..24]);
    let endpoint = QpEndpoint {
        qpn: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        psn: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        gid: Gid(gid),
        lid: u16::from_le_bytes([bytes[24], bytes[25]]),
        gid_index: bytes[26],
    };
    if endpoint.qpn > MAX_QPN_OR_PSN || endpoint.psn > MAX_QPN_OR_PSN {
        return Err(format!(
            "queue pair {:#x} or sequence number {:#x} is wider than 24 bits",
            endpoint.qpn, endpoint.psn
        ));
    }
    if bytes[27] != 0 {
        return Err(format!("reserved byte {:#x} is not zero", bytes[27]));
    }
    Ok(endpoint)
}

#[cfg(test)]
mod tests;
