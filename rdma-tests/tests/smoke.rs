//! Smoke tests of the `verbs` layer on Soft-RoCE: capabilities, registration,
//! and RC WRITE/READ/SEND between QPs on one device and across devices.

use std::time::Duration;

use rdma_tests::{
    assert_same_bytes, connected_pair, error_chain, expect_odp, expect_rxe1, pattern,
    require_devices, Node, Side, RXE0, RXE1, SIDE_INLINE_BYTES,
};
use verbs::{
    AccessFlags, Context, Error, GidType, Mtu, OwnedMemoryRegion, PortState, Prefetch,
    ProtectionDomain, WcOpcode, FIRST_PORT, POLL_BATCH,
};

const MIB: usize = 1 << 20;

/// Memory a region is backed by for WRITE targets, READ sinks and RECV buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Paging {
    Pinned,
    OnDemand,
}

impl Paging {
    /// On-demand where the kernel supports it (that is what the cache
    /// registers), pinned otherwise.
    fn best_available() -> Self {
        if expect_odp() {
            Self::OnDemand
        } else {
            Self::Pinned
        }
    }

    fn with(self, access: AccessFlags) -> AccessFlags {
        match self {
            Self::Pinned => access,
            Self::OnDemand => access | AccessFlags::ON_DEMAND,
        }
    }
}

fn unwrap<T>(result: verbs::Result<T>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {}", error_chain(&e)))
}

#[test]
fn rxe0_port_is_active_with_a_roce_v2_gid_for_its_address() {
    if require_devices().is_none() {
        return;
    }
    let ctx = unwrap(Context::open(RXE0.device), "open rxe0");
    let port = unwrap(ctx.query_port(FIRST_PORT), "query port");
    assert_eq!(port.state, PortState::Active, "{port:?}");
    assert_eq!(
        port.active_mtu,
        Some(Mtu::Mtu4096),
        "veth MTU 9000 allows 4096: {port:?}"
    );
    let entry = unwrap(ctx.roce_v2_gid(FIRST_PORT, Some(RXE0.addr)), "GID table")
        .expect("RoCE v2 GID of 10.77.0.1");
    assert_eq!(entry.gid.to_ipv4_mapped(), Some(RXE0.addr));
    assert_eq!(
        unwrap(ctx.query_gid(FIRST_PORT, entry.index), "query GID"),
        entry.gid
    );
    // What a QP connected to itself (the ODP self-test's) sends from: RoCE v2 over IPv4 too.
    let any = unwrap(ctx.roce_v2_gid(FIRST_PORT, None), "GID table").expect("a GID");
    assert_eq!(any.gid_type, Some(GidType::RoceV2), "{any:?}");
    assert!(any.gid.to_ipv4_mapped().is_some(), "{any:?}");
}

#[test]
fn opening_an_unknown_device_reports_not_found() {
    if require_devices().is_none() {
        return;
    }
    match Context::open("no_such_rdma_dev") {
        Err(Error::OpenDevice { name, source }) => {
            assert_eq!(name, "no_such_rdma_dev");
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected OpenDevice/NotFound, got {other:?}"),
    }
}

#[test]
fn odp_caps_match_expectation() {
    if require_devices().is_none() {
        return;
    }
    let ctx = unwrap(Context::open(RXE0.device), "open rxe0");
    let odp = unwrap(ctx.query_device(), "query device").odp;
    if expect_odp() {
        assert!(
            odp.covers_rc_send_recv_read_write(),
            "REGCACHE_EXPECT_ODP=1 but rxe0 reports {odp:?}"
        );
    } else {
        assert!(
            !odp.general && !odp.covers_rc_send_recv_read_write(),
            "REGCACHE_EXPECT_ODP=0 but rxe0 reports {odp:?}"
        );
    }
}

#[test]
fn pinned_and_odp_regions_register() {
    if require_devices().is_none() {
        return;
    }
    let ctx = unwrap(Context::open(RXE0.device), "open rxe0");
    let pd = unwrap(ProtectionDomain::new(&ctx), "alloc PD");
    let access = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ;

    let pinned = unwrap(
        OwnedMemoryRegion::anonymous(&pd, MIB, access),
        "pinned registration",
    );
    assert_eq!(pinned.mr().len(), MIB);
    assert_eq!(pinned.mr().addr(), pinned.as_ptr() as u64);
    assert_eq!(pinned.mr().access(), access);

    let owned = unwrap(
        OwnedMemoryRegion::new(&pd, 8192, access),
        "owned registration",
    );
    assert_eq!(owned.mr().len(), 8192);
    assert_ne!(
        owned.mr().lkey(),
        pinned.mr().lkey(),
        "lkeys are per region"
    );
    assert!(matches!(
        owned.sge(4096, 4097),
        Err(Error::RangeOutOfBounds { .. })
    ));

    let odp = OwnedMemoryRegion::anonymous(&pd, MIB, access | AccessFlags::ON_DEMAND);
    if expect_odp() {
        let odp = unwrap(odp, "ODP registration");
        assert_eq!(odp.mr().len(), MIB);
        // Prefetch is optional for a provider; both outcomes are valid, an error is not.
        let prefetched = unwrap(
            odp.mr().prefetch(0, MIB, Prefetch::Write, true),
            "ODP prefetch",
        );
        println!("ibv_advise_mr prefetch supported: {prefetched}");
    } else {
        let err = odp.expect_err("ODP registration must be refused without ODP support");
        assert!(
            err.is_unsupported(),
            "expected EOPNOTSUPP, got {}",
            error_chain(&err)
        );
    }
}

#[test]
fn waiting_on_an_idle_cq_times_out() {
    if require_devices().is_none() {
        return;
    }
    let side = Side::open(RXE0);
    let timeout = Duration::from_millis(200);
    match side.cq.wait_completion(timeout) {
        Err(Error::CompletionTimeout { after }) => assert!(after >= timeout),
        other => panic!("expected CompletionTimeout, got {other:?}"),
    }
}

#[test]
fn write_with_a_bad_rkey_fails_with_a_named_status() {
    if require_devices().is_none() {
        return;
    }
    let (initiator, responder) = connected_pair(RXE0, RXE0, Mtu::Mtu4096);
    let src = unwrap(
        OwnedMemoryRegion::new(&initiator.pd, 4096, AccessFlags::LOCAL_WRITE),
        "source",
    );
    let target = unwrap(
        OwnedMemoryRegion::new(
            &responder.pd,
            4096,
            AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE,
        ),
        "target",
    );
    let bad_rkey = target.mr().rkey() ^ 0x5a5a_0000;
    unwrap(
        initiator.qp.post_write(
            7,
            &[unwrap(src.sge(0, 4096), "sge")],
            target.mr().addr(),
            bad_rkey,
        ),
        "post write",
    );
    match initiator.cq.wait_completion(rdma_tests::COMPLETION_TIMEOUT) {
        Err(Error::WorkCompletion { wr_id, status, .. }) => {
            assert_eq!(wr_id, 7);
            assert!(
                status.contains("remote access error"),
                "unexpected status {status}"
            );
        }
        other => panic!("expected a remote access error completion, got {other:?}"),
    }
}

/// WRITE 1 MiB of a pattern from a pinned source into the responder's
/// region, check it landed, READ it back into a third region, check that,
/// then SEND a multi-page message into a posted receive.
fn write_read_send_round_trip(a: Node, b: Node) {
    let paging = Paging::best_available();
    println!("{} -> {}: target memory {paging:?}", a.device, b.device);
    let (initiator, responder) = connected_pair(a, b, Mtu::Mtu4096);
    let expected = pattern(MIB, 0x5eed_0001);

    let mut src = unwrap(
        OwnedMemoryRegion::new(&initiator.pd, MIB, AccessFlags::LOCAL_WRITE),
        "pinned source",
    );
    unwrap(src.write_at(0, &expected), "fill source");
    let target = unwrap(
        OwnedMemoryRegion::anonymous(
            &responder.pd,
            MIB,
            paging.with(
                AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ,
            ),
        ),
        "target",
    );
    let sink = unwrap(
        OwnedMemoryRegion::anonymous(&initiator.pd, MIB, paging.with(AccessFlags::LOCAL_WRITE)),
        "read sink",
    );

    unwrap(
        initiator.qp.post_write(
            1,
            &[unwrap(src.sge(0, MIB), "source sge")],
            target.mr().addr(),
            target.mr().rkey(),
        ),
        "post RDMA WRITE",
    );
    let done = initiator.expect_completion("RDMA WRITE");
    assert_eq!((done.wr_id, done.opcode), (1, WcOpcode::RdmaWrite));
    assert_same_bytes(&expected, &target.to_vec(), "RDMA WRITE target");

    unwrap(
        initiator.qp.post_read(
            2,
            &[unwrap(sink.mr().sge(0, MIB), "sink sge")],
            target.mr().addr(),
            target.mr().rkey(),
        ),
        "post RDMA READ",
    );
    let done = initiator.expect_completion("RDMA READ");
    assert_eq!((done.wr_id, done.opcode), (2, WcOpcode::RdmaRead));
    assert_same_bytes(&expected, &sink.to_vec(), "RDMA READ sink");

    let message_len = 16 * 4096 + 100;
    let recv = unwrap(
        OwnedMemoryRegion::anonymous(
            &responder.pd,
            message_len,
            paging.with(AccessFlags::LOCAL_WRITE),
        ),
        "receive buffer",
    );
    unwrap(
        responder
            .qp
            .post_recv(3, &[unwrap(recv.mr().sge(0, message_len), "recv sge")]),
        "post RECV",
    );
    unwrap(
        initiator
            .qp
            .post_send(4, &[unwrap(src.sge(4096, message_len), "send sge")]),
        "post SEND",
    );
    let sent = initiator.expect_completion("SEND");
    assert_eq!((sent.wr_id, sent.opcode), (4, WcOpcode::Send));
    let received = responder.expect_completion("RECV");
    assert_eq!((received.wr_id, received.opcode), (3, WcOpcode::Recv));
    assert_eq!(received.byte_len as usize, message_len);
    assert_same_bytes(
        &expected[4096..4096 + message_len],
        &recv.to_vec(),
        "SEND/RECV buffer",
    );
    inline_send_with_imm(&initiator, &responder, &recv, &expected);
}

/// An inline SEND with immediate data of as many bytes as the queue pair allows arrives with
/// its bytes and its immediate data; one byte more is refused before it reaches the device.
fn inline_send_with_imm(
    initiator: &Side,
    responder: &Side,
    recv: &OwnedMemoryRegion,
    expected: &[u8],
) {
    let max = initiator.qp.max_inline_data() as usize;
    assert!(
        max >= SIDE_INLINE_BYTES as usize,
        "granted {max} inline bytes"
    );
    unwrap(
        responder
            .qp
            .post_recv(5, &[unwrap(recv.mr().sge(0, max), "recv sge")]),
        "post RECV for the inline SEND",
    );
    let too_long = initiator.qp.post_send_inline(6, &expected[..=max], None);
    assert!(
        matches!(&too_long, Err(Error::PostSend { source, .. })
            if source.raw_os_error() == Some(libc::EINVAL)),
        "{too_long:?}"
    );
    unwrap(
        initiator
            .qp
            .post_send_inline(7, &expected[..max], Some(0x8000_0007)),
        "post inline SEND",
    );
    let sent = initiator.expect_completion("inline SEND");
    assert_eq!((sent.wr_id, sent.opcode), (7, WcOpcode::Send));
    let received = responder.expect_completion("RECV of the inline SEND");
    assert_eq!((received.wr_id, received.opcode), (5, WcOpcode::Recv));
    assert_eq!(received.byte_len as usize, max);
    assert_eq!(received.imm_data, Some(0x8000_0007));
    assert_same_bytes(
        &expected[..max],
        &recv.to_vec()[..max],
        "inline SEND buffer",
    );
}

/// Runs the round trip and checks that tearing it all down raised no errors.
fn round_trip_and_teardown(a: Node, b: Node) {
    write_read_send_round_trip(a, b);
    assert_eq!(
        verbs::drop_failures(),
        0,
        "a verbs object failed to be destroyed"
    );
}

#[test]
fn loopback_rc_write_read_send_on_rxe0() {
    if require_devices().is_none() {
        return;
    }
    round_trip_and_teardown(RXE0, RXE0);
}

#[test]
fn cross_device_rc_write_read_send_rxe0_to_rxe1() {
    if require_devices().is_none() {
        return;
    }
    if !expect_rxe1() {
        println!("REGCACHE_EXPECT_RXE1=0: rxe0<->rxe1 is not expected to work on this kernel");
        return;
    }
    round_trip_and_teardown(RXE0, RXE1);
}

/// More completions than one batch holds come out of `poll_batch` all, in posting order, in
/// batches of at most `POLL_BATCH`, each saying whether it was full.
#[test]
fn a_batched_poll_takes_every_completion_in_order() {
    if require_devices().is_none() {
        return;
    }
    let (initiator, responder) = connected_pair(RXE0, RXE0, Mtu::Mtu1024);
    let source = unwrap(
        OwnedMemoryRegion::new(&initiator.pd, 64, AccessFlags::LOCAL_WRITE),
        "source",
    );
    let target = unwrap(
        OwnedMemoryRegion::new(
            &responder.pd,
            64,
            AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE,
        ),
        "target",
    );
    let count = 2 * POLL_BATCH + 3;
    for wr_id in 0..count as u64 {
        let sge = unwrap(source.sge(0, 64), "source sge");
        unwrap(
            initiator
                .qp
                .post_write(wr_id, &[sge], target.mr().addr(), target.mr().rkey()),
            "post RDMA WRITE",
        );
    }
    let mut taken = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while taken.len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {count} completions",
            taken.len()
        );
        let batch = unwrap(initiator.cq.poll_batch(), "poll a batch");
        let full = batch.was_full();
        let before = taken.len();
        for completion in batch {
            let completion = unwrap(completion, "a WRITE's completion");
            assert_eq!(completion.opcode, WcOpcode::RdmaWrite);
            taken.push(completion.wr_id);
        }
        let polled = taken.len() - before;
        assert!(polled <= POLL_BATCH, "{polled} in one batch");
        assert_eq!(full, polled == POLL_BATCH, "{polled} polled, full {full}");
        if polled == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(taken, (0..count as u64).collect::<Vec<_>>());
    assert!(
        unwrap(initiator.cq.poll_batch(), "poll the empty CQ")
            .next()
            .is_none(),
        "nothing more"
    );
}
