use std::net::Ipv4Addr;

use proptest::prelude::*;

use super::*;

/// A receive bounce buffer of the default thresholds' shape, but small.
const LIMITS: ReceiveLimits = ReceiveLimits {
    capacity: HEADER_LEN + 64,
    eager_below: 64,
};

/// What a SEND without immediate data parses to when `header` heads its `byte_len` bytes.
fn parse_with(header: &Header, byte_len: usize) -> Result<(Header, usize), Violation> {
    parse_message(None, byte_len, LIMITS, &header.encode())
}

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
        assert_eq!(Header::decode(&header.encode()), Ok(header));
    }
}

#[test]
fn unknown_kinds_are_refused() {
    let mut bytes = Header::eager(1, 1, 0).encode();
    bytes[0] = 9;
    assert_eq!(
        Header::decode(&bytes),
        Err(Violation::UnknownKind { kind: 9 })
    );
}

#[test]
fn messages_parse_from_immediate_data_or_header() {
    let unread = [0xee; HEADER_LEN];
    let imm = headerless_imm(7).expect("a tag without the top bit");
    assert_eq!(
        parse_message(Some(imm), 60, LIMITS, &unread),
        Ok((Header::eager(7, 60, 0), 0))
    );
    assert_eq!(headerless_imm(HEADERLESS_IMM | 7), None);

    let header = Header::eager(7, 50, 3);
    assert_eq!(
        parse_with(&header, HEADER_LEN + 50),
        Ok((header, HEADER_LEN))
    );
    let finish = Header::finish(9);
    assert_eq!(parse_with(&finish, HEADER_LEN), Ok((finish, HEADER_LEN)));
    let request = Header::request_to_send(1, u32::MAX as usize, 0x1000, 5, 2);
    assert_eq!(parse_with(&request, HEADER_LEN), Ok((request, HEADER_LEN)));
}

#[test]
fn each_malformed_message_is_its_violation() {
    let eager = Header::eager(7, 50, 3);
    let cases = [
        (
            parse_message(Some(7), 60, LIMITS, &eager.encode()),
            Violation::UnknownImmediate { imm: 7 },
        ),
        (
            parse_with(&eager, HEADER_LEN - 1),
            Violation::TruncatedHeader {
                byte_len: HEADER_LEN - 1,
            },
        ),
        (
            parse_with(&eager, HEADER_LEN + 49),
            Violation::LengthMismatch {
                announced: 50,
                carried: 49,
            },
        ),
        (
            parse_with(&Header::eager(7, u64::MAX as usize, 3), HEADER_LEN + 10),
            Violation::LengthMismatch {
                announced: u64::MAX,
                carried: 10,
            },
        ),
        (
            parse_with(&Header::eager(7, 64, 3), HEADER_LEN + 64),
            Violation::EagerTooLong {
                len: 64,
                threshold: 64,
            },
        ),
        (
            parse_message(
                Some(headerless_imm(1).unwrap()),
                64,
                LIMITS,
                &[0; HEADER_LEN],
            ),
            Violation::EagerTooLong {
                len: 64,
                threshold: 64,
            },
        ),
        (
            parse_with(&Header::finish(1), HEADER_LEN + 1),
            Violation::TrailingBytes {
                byte_len: HEADER_LEN + 1,
            },
        ),
        (
            parse_with(
                &Header {
                    len: u64::from(u32::MAX) + 1,
                    ..Header::request_to_send(1, 0, 0x1000, 5, 2)
                },
                HEADER_LEN,
            ),
            Violation::RendezvousTooLong {
                len: u64::from(u32::MAX) + 1,
            },
        ),
        (
            parse_with(&Header::request_to_send(1, 0, 0x1000, 5, 2), HEADER_LEN),
            Violation::EmptyRequestToSend,
        ),
        (
            parse_with(&eager, LIMITS.capacity + 1),
            Violation::Overlong {
                byte_len: LIMITS.capacity + 1,
                capacity: LIMITS.capacity,
            },
        ),
    ];
    for (parsed, violation) in cases {
        assert_eq!(parsed, Err(violation));
    }
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

fn endpoint() -> QpEndpoint {
    QpEndpoint {
        qpn: 0x00ab_cdef,
        psn: 0x0012_3456,
        gid: Gid::from_ipv4(Ipv4Addr::new(10, 77, 0, 2)),
        gid_index: 3,
        lid: 0,
    }
}

#[test]
fn endpoints_round_trip() {
    assert_eq!(
        decode_endpoint(&encode_endpoint(&endpoint())),
        Ok(endpoint())
    );
}

#[test]
fn impossible_endpoints_are_refused() {
    for (at, byte) in [(3, 1), (7, 1), (27, 1)] {
        let mut bytes = encode_endpoint(&endpoint());
        bytes[at] = byte;
        assert!(decode_endpoint(&bytes).is_err(), "byte {at} = {byte}");
    }
}

fn any_limits() -> impl Strategy<Value = ReceiveLimits> {
    (1..4 * HEADER_LEN).prop_map(|eager_below| ReceiveLimits {
        capacity: HEADER_LEN + eager_below,
        eager_below,
    })
}

fn any_kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Eager),
        Just(Kind::RequestToSend),
        Just(Kind::Finish)
    ]
}

proptest! {
    /// Whatever arrives (immediate data, length, the bytes in the buffer, which the peer
    /// chose, usually a valid kind so the later checks are reached), parsing ends in a
    /// message that fits the buffer or in a violation; it never panics.
    #[test]
    fn any_arrival_parses_into_a_fitting_message_or_a_violation(
        imm_data in proptest::option::of(any::<u32>()),
        byte_len in prop_oneof![0..6 * HEADER_LEN, any::<usize>()],
        limits in any_limits(),
        mut head in any::<[u8; HEADER_LEN]>(),
        kind in prop_oneof![1..=3u32, any::<u32>()],
        small_len in prop_oneof![0..6 * HEADER_LEN as u64, any::<u64>()],
    ) {
        head[..4].copy_from_slice(&kind.to_le_bytes());
        head[8..16].copy_from_slice(&small_len.to_le_bytes());
        match parse_message(imm_data, byte_len, limits, &head) {
            Ok((header, payload_at)) => {
                prop_assert!(byte_len <= limits.capacity);
                prop_assert!(payload_at <= byte_len);
                match imm_data {
                    Some(imm) => {
                        prop_assert_eq!(payload_at, 0);
                        prop_assert_eq!(Some(imm), headerless_imm(header.tag));
                    }
                    None => {
                        prop_assert_eq!(payload_at, HEADER_LEN);
                        prop_assert_eq!(Header::decode(&head), Ok(header));
                    }
                }
                match header.kind {
                    Kind::Eager => {
                        prop_assert_eq!(header.len, (byte_len - payload_at) as u64);
                        prop_assert!(header.len < limits.eager_below as u64);
                    }
                    Kind::RequestToSend => {
                        prop_assert_eq!(byte_len, HEADER_LEN);
                        prop_assert!((1..=u64::from(u32::MAX)).contains(&header.len));
                    }
                    Kind::Finish => prop_assert_eq!(byte_len, HEADER_LEN),
                }
            }
            Err(Violation::Overlong { capacity, .. }) => {
                prop_assert!(byte_len > limits.capacity);
                prop_assert_eq!(capacity, limits.capacity);
            }
            Err(Violation::UnknownImmediate { imm }) => {
                prop_assert_eq!(imm_data, Some(imm));
                prop_assert!(imm & HEADERLESS_IMM == 0);
            }
            Err(Violation::TruncatedHeader { byte_len: reported }) => {
                prop_assert_eq!(reported, byte_len);
                prop_assert!(imm_data.is_none() && byte_len < HEADER_LEN);
            }
            Err(Violation::UnknownKind { kind: reported }) => {
                prop_assert_eq!(reported, kind);
                prop_assert!(!(1..=3).contains(&kind));
            }
            Err(violation) => prop_assert!(
                matches!(
                    violation,
                    Violation::LengthMismatch { .. }
                        | Violation::EagerTooLong { .. }
                        | Violation::TrailingBytes { .. }
                        | Violation::RendezvousTooLong { .. }
                        | Violation::EmptyRequestToSend
                ),
                "{violation}"
            ),
        }
    }

    /// Every message a correct sender builds parses back to its header.
    #[test]
    fn valid_messages_round_trip(
        kind in any_kind(),
        tag in any::<u32>(),
        limits in any_limits(),
        len_seed in any::<u64>(),
        addr in any::<u64>(),
        rkey in any::<u32>(),
        cookie in any::<u64>(),
        zero_copy in any::<bool>(),
    ) {
        let (len, byte_len) = match kind {
            Kind::Eager => {
                let len = len_seed % limits.eager_below as u64;
                (len, HEADER_LEN + len as usize)
            }
            Kind::RequestToSend => (1 + len_seed % u64::from(u32::MAX), HEADER_LEN),
            Kind::Finish => (0, HEADER_LEN),
        };
        let header = Header { kind, tag, len, addr, rkey, cookie };
        let header = match kind {
            Kind::RequestToSend => header,
            Kind::Eager => Header { addr: 0, rkey: 0, ..header },
            Kind::Finish => Header::finish(cookie),
        };
        prop_assert_eq!(
            parse_message(None, byte_len, limits, &header.encode()),
            Ok((header, HEADER_LEN))
        );
        if let (Kind::Eager, true, Some(imm)) = (kind, zero_copy, headerless_imm(tag)) {
            let carried = byte_len - HEADER_LEN;
            prop_assert_eq!(
                parse_message(Some(imm), carried, limits, &[0; HEADER_LEN]),
                Ok((Header::eager(tag, carried, 0), 0))
            );
        }
    }

    /// Any 28 bytes decode into an endpoint that encodes back to them, or are refused.
    #[test]
    fn any_endpoint_bytes_decode_exactly_or_are_refused(bytes in any::<[u8; ENDPOINT_LEN]>()) {
        if let Ok(endpoint) = decode_endpoint(&bytes) {
            prop_assert_eq!(encode_endpoint(&endpoint), bytes);
        }
    }

    /// Any work-request id maps to the request it names, or to none.
    #[test]
    fn any_work_request_id_names_one_request_or_none(id in any::<u64>()) {
        if let Some(request) = WorkRequest::from_id(id) {
            prop_assert_eq!(request.id(), id);
        }
    }
}
