//! What goes over the wire, and what this crate's work requests say about themselves: message
//! headers and immediate data on the queue pairs, queue-pair endpoints over TCP, work-request
//! ids.

use verbs::{Gid, QpEndpoint};

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

/// Immediate data of a zero-copy eager SEND that carries no header: this bit, and the tag in
/// the low 31 bits (MPI's tags are non-negative `int`s); the length is the SEND's. A message
/// whose tag needs the top bit goes with a header instead. Every other SEND has no immediate
/// data.
const ZERO_COPY_IMM: u32 = 1 << 31;

/// The immediate data of a zero-copy eager SEND of `tag` without a header, or `None` when the
/// tag needs the top bit (the message then goes with a header).
pub(crate) fn zero_copy_imm(tag: u32) -> Option<u32> {
    (tag & ZERO_COPY_IMM == 0).then_some(ZERO_COPY_IMM | tag)
}

/// What a SEND of `byte_len` bytes with immediate data `imm_data` carries: its header and the
/// offset of an eager payload from the start of the message. `read_header` fills its argument
/// with the first [`HEADER_LEN`] bytes of the receive bounce buffer the SEND landed in, and
/// says whether it could. `None`: the message is malformed.
pub(crate) fn parse_message(
    imm_data: Option<u32>,
    byte_len: usize,
    read_header: impl FnOnce(&mut [u8; HEADER_LEN]) -> bool,
) -> Option<(Header, usize)> {
    match imm_data {
        Some(imm) if imm & ZERO_COPY_IMM != 0 => {
            Some((Header::eager(imm & !ZERO_COPY_IMM, byte_len, 0), 0))
        }
        Some(_) => None,
        None => {
            let mut header_bytes = [0; HEADER_LEN];
            if !read_header(&mut header_bytes) {
                return None;
            }
            Header::decode(&header_bytes[..byte_len.min(HEADER_LEN)])
                .filter(|header| {
                    header.kind != Kind::Eager
                        || usize::try_from(header.len).ok() == byte_len.checked_sub(HEADER_LEN)
                })
                .map(|header| (header, HEADER_LEN))
        }
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

    /// The header at the start of `bytes`, or `None` when it is not one.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        let u32_at =
            |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
        let u64_at =
            |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
        let kind = match u32_at(0) {
            1 => Kind::Eager,
            2 => Kind::RequestToSend,
            3 => Kind::Finish,
            _ => return None,
        };
        Some(Self {
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

pub(crate) fn decode_endpoint(bytes: &[u8; ENDPOINT_LEN]) -> QpEndpoint {
    let mut gid = [0; 16];
    gid.copy_from_slice(&bytes[8..24]);
    QpEndpoint {
        qpn: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        psn: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        gid: Gid(gid),
        lid: u16::from_le_bytes([bytes[24], bytes[25]]),
        gid_index: bytes[26],
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn headers_round_trip() {
        for kind in [Kind::Eager, Kind::RequestToSend, Kind::Finish] {
            let header = Header {
                kind,
                tag: 0xdead_beef,
                len: 64 << 20,
                addr: 0x7f00_1234_5000,
                rkey: 0x1234_5678,
                cookie: u64::MAX - 1,
            };
            assert_eq!(Header::decode(&header.encode()), Some(header));
        }
    }

    #[test]
    fn short_or_unknown_headers_are_refused() {
        let mut bytes = Header::eager(1, 1, 0).encode();
        assert_eq!(Header::decode(&bytes[..HEADER_LEN - 1]), None);
        bytes[0] = 9;
        assert_eq!(Header::decode(&bytes), None);
    }

    #[test]
    fn messages_parse_from_immediate_data_or_header() {
        let unread = |_: &mut [u8; HEADER_LEN]| panic!("a zero-copy message has no header");
        let imm = zero_copy_imm(7).expect("a tag without the top bit");
        assert_eq!(
            parse_message(Some(imm), 4096, unread),
            Some((Header::eager(7, 4096, 0), 0))
        );
        assert_eq!(zero_copy_imm(ZERO_COPY_IMM | 7), None);
        assert_eq!(parse_message(Some(7), 4096, unread), None);

        let header = Header::eager(7, 100, 3);
        let landed = |bytes: &mut [u8; HEADER_LEN]| {
            *bytes = header.encode();
            true
        };
        let at = Some((header, HEADER_LEN));
        assert_eq!(parse_message(None, HEADER_LEN + 100, landed), at);
        // An eager header whose length is not the SEND's is refused.
        assert_eq!(parse_message(None, HEADER_LEN + 99, landed), None);
        assert_eq!(parse_message(None, HEADER_LEN - 1, landed), None);
        assert_eq!(parse_message(None, HEADER_LEN + 100, |_| false), None);
        let finish = Header::finish(9);
        let landed = |bytes: &mut [u8; HEADER_LEN]| {
            *bytes = finish.encode();
            true
        };
        assert_eq!(
            parse_message(None, HEADER_LEN, landed),
            Some((finish, HEADER_LEN))
        );
    }

    #[test]
    fn work_request_ids_round_trip() {
        for request in [
            WorkRequest::RecvBounce { peer: 0, index: 0 },
            WorkRequest::RecvBounce {
                peer: 0x00ff_ffff,
                index: u32::MAX,
            },
            WorkRequest::SendBounce { peer: 3, index: 31 },
            WorkRequest::Read { op: 0 },
            WorkRequest::Read {
                op: 0x00ff_ffff_ffff_ffff,
            },
        ] {
            assert_eq!(WorkRequest::from_id(request.id()), Some(request));
        }
        assert_eq!(WorkRequest::from_id(0), None);
    }

    #[test]
    fn endpoints_round_trip() {
        let endpoint = QpEndpoint {
            qpn: 0x00ab_cdef,
            psn: 0x0012_3456,
            gid: Gid::from_ipv4(Ipv4Addr::new(10, 77, 0, 2)),
            gid_index: 3,
            lid: 0,
        };
        assert_eq!(decode_endpoint(&encode_endpoint(&endpoint)), endpoint);
    }
}
