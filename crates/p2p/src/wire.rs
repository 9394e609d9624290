//! What goes over the wire: message headers on the queue pairs, queue-pair endpoints over TCP.

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
    /// The sender's request id, echoed in the finish.
    pub(crate) cookie: u64,
}

/// Encoded size of a [`Header`].
pub(crate) const HEADER_LEN: usize = 40;

/// Immediate data of a zero-copy eager SEND that carries no header: this bit, and the tag in
/// the low 31 bits (MPI's tags are non-negative `int`s); the length is the SEND's. A message
/// whose tag needs the top bit goes with a header instead. Every other SEND has no immediate
/// data.
pub(crate) const ZERO_COPY_IMM: u32 = 1 << 31;

impl Header {
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
        let mut bytes = Header {
            kind: Kind::Eager,
            tag: 1,
            len: 1,
            addr: 0,
            rkey: 0,
            cookie: 0,
        }
        .encode();
        assert_eq!(Header::decode(&bytes[..HEADER_LEN - 1]), None);
        bytes[0] = 9;
        assert_eq!(Header::decode(&bytes), None);
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
