//! p2p against a hostile peer: a raw verbs queue pair on `rxe0` that joins a job of two through
//! the real TCP bootstrap as rank 1, then sends what the protocol forbids (or, on the bootstrap
//! socket, garbage or nothing). Rank 0, a real communicator in a thread of this process, must end
//! its operations with that peer with a typed error within its timeout, leave the bytes around
//! its receive buffer untouched, and neither panic nor hang (a watchdog fails the test).
//!
//! The hostile peer writes the wire format by hand, as a stranger would: a 40-byte
//! little-endian header (kind `u32`: 1 eager, 2 request to send, 3 FIN; tag `u32`; len `u64`;
//! addr `u64`; rkey `u32`; 4 reserved bytes; cookie `u64`), and on the bootstrap socket rank
//! and size (`u32` each) followed by one 28-byte endpoint per rank (qpn `u32`, psn `u32`,
//! GID, lid `u16`, GID index, a reserved zero byte), a barrier byte `R` answered by `G`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use p2p::{Communicator, Error, LaunchConfig, Violation, ANY_TAG};
use rdma_tests::{error_chain, require_devices, Side, RXE0};
use verbs::{AccessFlags, Gid, Mtu, OwnedMemoryRegion, QpEndpoint, FIRST_PORT};

/// Rank 0's thresholds: small, so the hostile peer's buffers are small.
const EAGER: usize = 1024;
const RENDEZVOUS: usize = 4096;
/// Rank 0's timeout: every error must arrive within it (plus [`SLACK`]).
const TIMEOUT: Duration = Duration::from_secs(10);
/// The timeout of the cases that wait for it to pass (a silent peer): short, TCG is slow.
const SHORT_TIMEOUT: Duration = Duration::from_secs(3);
/// Scheduling slack on a loaded emulated machine.
const SLACK: Duration = Duration::from_secs(10);
/// Bound on joining (device, cache and bootstrap set-up under TCG) before the watchdog fires.
const JOIN_BOUND: Duration = Duration::from_secs(120);

const HEADER_LEN: usize = 40;
const ENDPOINT_LEN: usize = 28;
const KIND_EAGER: u32 = 1;
const KIND_REQUEST_TO_SEND: u32 = 2;
const KIND_FIN: u32 = 3;

/// Bytes around rank 0's receive buffer, and the value they (and the buffer) start with.
const GUARD: usize = 256;
const GUARD_BYTE: u8 = 0x5a;
/// Capacity of rank 0's receive buffer.
const CAPACITY: usize = 64;

// The hostile peer's registered memory: what it sends from, then its receive buffers.
const SEND_AT: usize = 0;
const SEND_SPACE: usize = 16 * 1024;
const RECV_LEN: usize = 4096;
const RECVS: usize = 8;

/// A header as rank 0 parses it.
fn header(kind: u32, tag: u32, len: u64, addr: u64, rkey: u32, cookie: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&addr.to_le_bytes());
    out.extend_from_slice(&rkey.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&cookie.to_le_bytes());
    out
}

fn fin(cookie: u64) -> Vec<u8> {
    header(KIND_FIN, 0, 0, 0, 0, cookie)
}

fn encode_endpoint(endpoint: &QpEndpoint) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENDPOINT_LEN);
    out.extend_from_slice(&endpoint.qpn.to_le_bytes());
    out.extend_from_slice(&endpoint.psn.to_le_bytes());
    out.extend_from_slice(&endpoint.gid.0);
    out.extend_from_slice(&endpoint.lid.to_le_bytes());
    out.extend_from_slice(&[endpoint.gid_index, 0]);
    out
}

fn decode_endpoint(bytes: &[u8]) -> QpEndpoint {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    QpEndpoint {
        qpn: u32_at(0),
        psn: u32_at(4),
        gid: Gid(bytes[8..24].try_into().expect("16 bytes")),
        lid: u16::from_le_bytes([bytes[24], bytes[25]]),
        gid_index: bytes[26],
    }
}

/// Connects to rank 0's bootstrap socket, retrying while it is not listening yet.
fn connect(root: &str) -> TcpStream {
    let deadline = Instant::now() + JOIN_BOUND;
    loop {
        match TcpStream::connect(root) {
            Ok(stream) => return stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(err) => panic!("connecting to rank 0 at {root}: {err}"),
        }
    }
}

/// Rank 1 played by hand: its queue pair connected to rank 0's, receives posted.
struct HostilePeer {
    side: Side,
    memory: OwnedMemoryRegion,
    /// Kept open: rank 0 must see the violation, not a closed socket.
    _bootstrap: TcpStream,
}

impl HostilePeer {
    /// Joins through the bootstrap as rank 1 of 2 and passes the barrier.
    fn join(root: &str) -> Self {
        let side = Side::open(RXE0);
        let access = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_READ;
        let memory = OwnedMemoryRegion::new(&side.pd, SEND_SPACE + RECVS * RECV_LEN, access)
            .unwrap_or_else(|e| panic!("hostile memory: {}", error_chain(&e)));
        let mut stream = connect(root);
        stream
            .set_read_timeout(Some(JOIN_BOUND))
            .expect("read timeout");
        let mut hello = Vec::from([1, 0, 0, 0, 2, 0, 0, 0]);
        hello.extend(encode_endpoint(&side.qp.endpoint()));
        hello.extend([0; ENDPOINT_LEN]);
        stream.write_all(&hello).expect("sending the hello");
        let mut aimed_at_me = [0; 2 * ENDPOINT_LEN];
        stream
            .read_exact(&mut aimed_at_me)
            .expect("rank 0's endpoints");
        let mtu = side
            .ctx
            .query_port(FIRST_PORT)
            .expect("port")
            .active_mtu
            .unwrap_or(Mtu::Mtu1024);
        side.qp
            .connect(&decode_endpoint(&aimed_at_me[..ENDPOINT_LEN]), mtu)
            .unwrap_or_else(|e| panic!("connecting the hostile QP: {}", error_chain(&e)));
        // Posted before the barrier, as rank 0 does: it may send right after.
        for index in 0..RECVS {
            let sge = memory
                .sge(SEND_SPACE + index * RECV_LEN, RECV_LEN)
                .expect("receive buffer inside the region");
            side.qp
                .post_recv(index as u64, &[sge])
                .unwrap_or_else(|e| panic!("hostile receive: {}", error_chain(&e)));
        }
        stream.write_all(b"R").expect("entering the barrier");
        let mut go = [0];
        stream.read_exact(&mut go).expect("the barrier");
        assert_eq!(&go, b"G");
        Self {
            side,
            memory,
            _bootstrap: stream,
        }
    }

    /// SENDs `bytes` (with immediate data `imm`) to rank 0; does not wait for the completion.
    fn send(&mut self, bytes: &[u8], imm: Option<u32>) {
        self.memory
            .write_at(SEND_AT, bytes)
            .expect("fits the send space");
        let sge = self.memory.sge(SEND_AT, bytes.len()).expect("send element");
        let posted = match imm {
            Some(imm) => self.side.qp.post_send_with_imm(1, &[sge], imm),
            None => self.side.qp.post_send(1, &[sge]),
        };
        posted.unwrap_or_else(|e| panic!("hostile SEND: {}", error_chain(&e)));
    }

    /// The header of the next message rank 0 SENDs here (skipping send completions).
    fn next_header(&self) -> (u32, u64, u64) {
        let deadline = Instant::now() + TIMEOUT + SLACK;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let completion =
                self.side.cq.wait_completion(left).unwrap_or_else(|e| {
                    panic!("waiting for rank 0's message: {}", error_chain(&e))
                });
            if completion.opcode != verbs::WcOpcode::Recv {
                continue;
            }
            let mut bytes = [0; HEADER_LEN];
            let at = SEND_SPACE + completion.wr_id as usize * RECV_LEN;
            self.memory.read_at(at, &mut bytes).expect("receive buffer");
            let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
            // (kind, len, cookie)
            return (u32_at(0), u64_at(8), u64_at(32));
        }
    }
}

/// Runs rank 0 in a thread on what joining gave it while `hostile` plays rank 1 on this thread;
/// `hostile` returns what must stay alive until rank 0 is done, and when it misbehaved. Rank 0
/// must finish within its `timeout` of that (plus [`SLACK`]); a panic in it fails the test.
fn run_case<K>(
    timeout: Duration,
    rank0: impl FnOnce(p2p::Result<Communicator>) + Send + 'static,
    hostile: impl FnOnce(&str) -> (K, Instant),
) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let root = format!("127.0.0.1:{port}");
    let config = LaunchConfig {
        rank: 0,
        size: 2,
        root_addr: root.clone(),
        device: Some(RXE0.device.into()),
        eager_threshold: EAGER,
        rendezvous_threshold: RENDEZVOUS,
        timeout,
    };
    let (done, finished) = mpsc::channel();
    let rank0_thread = std::thread::spawn(move || {
        rank0(Communicator::new(config));
        let _ = done.send(Instant::now());
    });
    let (_alive, misbehaved) = hostile(&root);
    match finished.recv_timeout(JOIN_BOUND + timeout + SLACK) {
        Ok(at) => {
            let took = at.saturating_duration_since(misbehaved);
            assert!(took < timeout + SLACK, "rank 0 took {took:?} to give up");
        }
        Err(RecvTimeoutError::Disconnected) => match rank0_thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("rank 0 returned without reporting"),
        },
        Err(RecvTimeoutError::Timeout) => panic!("rank 0 hung"),
    }
}

fn joined(result: p2p::Result<Communicator>) -> Communicator {
    result.unwrap_or_else(|e| panic!("rank 0 joining: {}", error_chain(&e)))
}

/// Rank 0's receive buffer between guard bytes.
struct Guarded(Vec<u8>);

impl Guarded {
    fn new() -> Self {
        Self(vec![GUARD_BYTE; GUARD + CAPACITY + GUARD])
    }

    fn receive_buffer(&mut self) -> &mut [u8] {
        &mut self.0[GUARD..GUARD + CAPACITY]
    }

    /// Asserts that nothing outside the receive buffer changed (and, with `inside`, nothing in it).
    fn assert_untouched(&self, inside: bool) {
        let outside = self.0[..GUARD].iter().chain(&self.0[GUARD + CAPACITY..]);
        assert!(
            outside.copied().all(|byte| byte == GUARD_BYTE),
            "a guard byte changed"
        );
        let receive = &self.0[GUARD..GUARD + CAPACITY];
        assert!(
            !inside || receive.iter().all(|&byte| byte == GUARD_BYTE),
            "the receive buffer changed"
        );
    }
}

/// Rank 0 receives from rank 1 into a guarded buffer: the receive must end with an error
/// `is_expected` accepts, and nothing around (or in) the buffer may change.
fn receive_fails(comm: &mut Communicator, is_expected: impl Fn(&Error) -> bool) {
    let mut guarded = Guarded::new();
    let received = comm.recv(guarded.receive_buffer(), 1, ANY_TAG);
    assert!(
        received.as_ref().is_err_and(&is_expected),
        "receive: {received:?}"
    );
    guarded.assert_untouched(true);
}

/// Rank 0 has a rendezvous send and a receive pending with rank 1: both, and a later send, end
/// with `expected`; its receive buffer and the guard bytes stay as they were.
fn every_operation_ends_with(expected: Violation) -> impl FnOnce(p2p::Result<Communicator>) + Send {
    move |result| {
        let mut comm = joined(result);
        let is_expected = |error: &Error| matches!(error, Error::PeerMisbehaved { rank: 1, violation } if *violation == expected);
        let send = comm.isend(vec![7; RENDEZVOUS], 1, 5);
        receive_fails(&mut comm, is_expected);
        if let Ok(send) = send {
            let waited = comm.wait(send).map(|_| ());
            assert!(
                waited.as_ref().is_err_and(is_expected),
                "pending send: {waited:?}"
            );
        }
        let later = comm.send(&[1], 1, 6);
        assert!(
            later.as_ref().is_err_and(is_expected),
            "later send: {later:?}"
        );
    }
}

/// The hostile peer joins and SENDs `bytes` with `imm`.
fn sends(bytes: Vec<u8>, imm: Option<u32>) -> impl FnOnce(&str) -> (HostilePeer, Instant) {
    move |root| {
        let mut peer = HostilePeer::join(root);
        peer.send(&bytes, imm);
        (peer, Instant::now())
    }
}

fn violation_case(bytes: Vec<u8>, imm: Option<u32>, expected: Violation) {
    if require_devices().is_none() {
        return;
    }
    run_case(
        TIMEOUT,
        every_operation_ends_with(expected),
        sends(bytes, imm),
    );
}

#[test]
fn a_truncated_header_is_a_violation() {
    let bytes = header(KIND_EAGER, 1, 0, 0, 0, 0)[..20].to_vec();
    violation_case(bytes, None, Violation::TruncatedHeader { byte_len: 20 });
}

#[test]
fn an_eager_header_lying_about_its_length_is_a_violation() {
    let mut bytes = header(KIND_EAGER, 1, 16, 0, 0, 0);
    bytes.extend([0xee; 1000]);
    let expected = Violation::LengthMismatch {
        announced: 16,
        carried: 1000,
    };
    violation_case(bytes, None, expected);
}

#[test]
fn a_header_of_unknown_kind_is_a_violation() {
    let bytes = header(9, 1, 0, 0, 0, 0);
    violation_case(bytes, None, Violation::UnknownKind { kind: 9 });
}

#[test]
fn unknown_immediate_data_is_a_violation() {
    violation_case(
        vec![0xee; 8],
        Some(5),
        Violation::UnknownImmediate { imm: 5 },
    );
}

#[test]
fn a_fin_with_an_unknown_cookie_is_a_violation() {
    let cookie = u64::MAX - 1;
    violation_case(fin(cookie), None, Violation::UnexpectedFin { cookie });
}

/// The FIN of a request never sent (twice for one that was: the second names a send that is no
/// longer waiting). Rank 0's send completes with the first; everything after fails.
#[test]
fn a_second_fin_for_a_send_is_a_violation() {
    if require_devices().is_none() {
        return;
    }
    let (cookies, cookie) = mpsc::channel();
    let rank0 = move |result| {
        let mut comm = joined(result);
        let sent = comm.send(&vec![7; RENDEZVOUS], 1, 5);
        assert!(sent.is_ok(), "the first FIN completes the send: {sent:?}");
        let cookie: u64 = cookie.recv().expect("the hostile peer's cookie");
        let expected = Violation::UnexpectedFin { cookie };
        receive_fails(
            &mut comm,
            |error| matches!(error, Error::PeerMisbehaved { rank: 1, violation } if *violation == expected),
        );
    };
    run_case(TIMEOUT, rank0, |root| {
        let mut peer = HostilePeer::join(root);
        let (kind, len, cookie) = peer.next_header();
        assert_eq!((kind, len), (KIND_REQUEST_TO_SEND, RENDEZVOUS as u64));
        peer.send(&fin(cookie), None);
        peer.send(&fin(cookie), None);
        cookies.send(cookie).expect("rank 0 waits for the cookie");
        (peer, Instant::now())
    });
}

/// An honest eager message longer than the receive is MPI's truncation, not a violation; the
/// bytes around the receive buffer stay untouched and the connection stays open.
#[test]
fn an_eager_message_longer_than_the_receive_is_truncated_in_place() {
    if require_devices().is_none() {
        return;
    }
    let len = EAGER - 1;
    let mut bytes = header(KIND_EAGER, 3, len as u64, 0, 0, 0);
    bytes.extend(vec![0xee; len]);
    let rank0 = move |result| {
        let mut comm = joined(result);
        let mut guarded = Guarded::new();
        let received = comm.recv(guarded.receive_buffer(), 1, 3);
        assert!(
            matches!(received, Err(Error::Truncated { source_rank: 1, tag: 3, len: got, capacity: CAPACITY }) if got == len),
            "{received:?}"
        );
        guarded.assert_untouched(false);
        let later = comm.isend(vec![1], 1, 4);
        assert!(later.is_ok(), "the connection stays open: {later:?}");
    };
    run_case(TIMEOUT, rank0, sends(bytes, None));
}

/// A request to send longer than the receive is truncated without a READ, and answered with the
/// FIN the sender needs.
#[test]
fn a_request_to_send_longer_than_the_receive_is_truncated_and_answered() {
    if require_devices().is_none() {
        return;
    }
    let cookie = 77;
    let rank0 = move |result| {
        let mut comm = joined(result);
        let mut guarded = Guarded::new();
        let received = comm.recv(guarded.receive_buffer(), 1, 3);
        assert!(
            matches!(received, Err(Error::Truncated { source_rank: 1, len, capacity: CAPACITY, .. }) if len == CAPACITY + 1),
            "{received:?}"
        );
        guarded.assert_untouched(true);
    };
    run_case(TIMEOUT, rank0, |root| {
        let mut peer = HostilePeer::join(root);
        let addr = peer.memory.mr().addr();
        let rkey = peer.memory.mr().rkey();
        let len = CAPACITY as u64 + 1;
        peer.send(
            &header(KIND_REQUEST_TO_SEND, 3, len, addr, rkey, cookie),
            None,
        );
        assert_eq!(peer.next_header(), (KIND_FIN, 0, cookie), "rank 0's FIN");
        (peer, Instant::now())
    });
}

/// Transport failures a liar causes: rank 0's operations end with `PeerFailed`, and nothing is
/// written around (or into) the receive buffer.
fn transport_failure_case(hostile: impl FnOnce(&str) -> (HostilePeer, Instant)) {
    if require_devices().is_none() {
        return;
    }
    let rank0 = |result| {
        let mut comm = joined(result);
        receive_fails(&mut comm, |error| {
            matches!(error, Error::PeerFailed { rank: 1, .. })
        });
        let later = comm.send(&[1], 1, 6);
        assert!(
            matches!(later, Err(Error::PeerFailed { rank: 1, .. })),
            "{later:?}"
        );
    };
    run_case(TIMEOUT, rank0, hostile);
}

/// A SEND longer than rank 0's receive bounce buffer fails that receive in the device.
#[test]
fn a_send_longer_than_the_receive_bounce_buffer_fails_the_peer() {
    let mut bytes = header(KIND_EAGER, 1, 2 * RENDEZVOUS as u64, 0, 0, 0);
    bytes.extend(vec![0xee; 2 * RENDEZVOUS]);
    transport_failure_case(sends(bytes, None));
}

/// A request to send that fits the receive but names memory with a key that does not exist:
/// rank 0's READ fails.
#[test]
fn a_request_to_send_with_a_bogus_key_fails_the_peer() {
    let bytes = header(KIND_REQUEST_TO_SEND, 1, 32, 0x1000, 0xdead_beef, 1);
    transport_failure_case(sends(bytes, None));
}

/// A peer that joins and says nothing: rank 0's receive times out.
#[test]
fn a_silent_peer_is_a_timeout() {
    if require_devices().is_none() {
        return;
    }
    let rank0 = |result| {
        let mut comm = joined(result);
        receive_fails(&mut comm, |error| matches!(error, Error::Timeout { .. }));
    };
    run_case(SHORT_TIMEOUT, rank0, |root| {
        (HostilePeer::join(root), Instant::now())
    });
}

/// Garbage on the bootstrap socket: joining fails with the malformed message.
#[test]
fn garbage_on_the_bootstrap_socket_fails_joining() {
    if require_devices().is_none() {
        return;
    }
    let rank0 = |result: p2p::Result<Communicator>| {
        let refused = result.map(|_| ());
        assert!(
            matches!(&refused, Err(Error::BootstrapMessage { .. })),
            "{refused:?}"
        );
    };
    run_case(TIMEOUT, rank0, |root| {
        let mut stream = connect(root);
        // Whether rank 0 already closed the socket does not matter.
        let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: rank0\r\n\r\n");
        (stream, Instant::now())
    });
}

/// A rank that connects to the bootstrap socket and says nothing: joining times out.
#[test]
fn a_silent_bootstrap_connection_fails_joining_within_the_timeout() {
    if require_devices().is_none() {
        return;
    }
    let rank0 = |result: p2p::Result<Communicator>| match result.map(|_| ()) {
        Err(Error::Bootstrap { source, .. }) => assert!(
            matches!(
                source.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ),
            "{source:?}"
        ),
        other => panic!("expected a bootstrap timeout, got {other:?}"),
    };
    run_case(SHORT_TIMEOUT, rank0, |root| (connect(root), Instant::now()));
}
