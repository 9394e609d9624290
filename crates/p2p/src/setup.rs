//! Opening the device and connecting to every peer: completion queues, a queue pair with its
//! bounce buffers per peer, the cache of user buffers, and the exchange of endpoints through
//! rank 0.

use std::sync::Arc;

use verbs::{
    AccessFlags, CompletionQueue, Context, Gid, Mtu, ProtectionDomain, QpConfig, QpEndpoint,
    QueuePair, FIRST_PORT as PORT,
};

use crate::bootstrap;
use crate::bounce::BouncePool;
use crate::connection::{Connection, Peers, MAX_READS, RECV_BOUNCE_BUFFERS, SEND_BOUNCE_BUFFERS};
use crate::error::{Error, Result};
use crate::launch::LaunchConfig;
use crate::protocol::Thresholds;
use crate::registrations::UserBufferCache;

/// What a rank has once it is connected to every peer.
#[derive(Debug)]
pub(crate) struct Connected {
    pub(crate) peers: Peers,
    pub(crate) cache: UserBufferCache,
    /// The one CQ of every queue pair's sends and receives.
    pub(crate) cq: Arc<CompletionQueue>,
    pub(crate) mtu: Mtu,
}

fn setup_error(device: &str, step: &'static str) -> impl FnOnce(verbs::Error) -> Error {
    let device = device.to_owned();
    move |source| Error::Setup {
        device,
        step,
        source,
    }
}

/// The GID a queue pair sends from: the port's RoCE v2 entry over IPv4 where there is one
/// (see [`Context::roce_v2_gid`] for the fallbacks).
fn roce_v2_gid(ctx: &Context) -> Result<u8> {
    let name = ctx.name();
    ctx.roce_v2_gid(PORT, None)
        .map_err(setup_error(name, "reading the GID table"))?
        .map(|entry| entry.index)
        .ok_or_else(|| Error::NoRoceGid {
            device: name.to_owned(),
            port: PORT,
        })
}

/// Inline bytes asked of a device, most first, before none: a copied message this short goes
/// in the work request itself, with no copy into a bounce buffer and no memory region for the
/// device to look up. No verb reports a device's limit (Soft-RoCE's is 512), so a refused
/// queue pair is asked again for less.
const INLINE_LADDER: [u32; 3] = [512, 256, 64];

/// An RC queue pair of `config` with as many inline bytes as the device grants from
/// [`INLINE_LADDER`], else none.
fn create_qp(
    pd: &Arc<ProtectionDomain>,
    cq: &Arc<CompletionQueue>,
    config: QpConfig,
) -> verbs::Result<QueuePair> {
    let with_inline = |max_inline_data| QpConfig {
        max_inline_data,
        ..config
    };
    for max_inline_data in INLINE_LADDER {
        if let Ok(qp) = QueuePair::create_rc(pd, cq, cq, with_inline(max_inline_data)) {
            return Ok(qp);
        }
    }
    QueuePair::create_rc(pd, cq, cq, with_inline(0))
}

/// Opens the device of `config`, creates a queue pair per peer with bounce buffers sized for
/// `thresholds`, makes the cache of user buffers with `cache` (given the protection domain and
/// the path MTU), exchanges endpoints through rank 0, connects at the port's active MTU, posts
/// the receives and waits until every rank is ready.
pub(crate) fn connect(
    config: &LaunchConfig,
    thresholds: Thresholds,
    cache: impl FnOnce(Arc<ProtectionDomain>, Mtu) -> Result<UserBufferCache>,
) -> Result<Connected> {
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
    let gid_index = roce_v2_gid(&ctx)?;
    let pd = ProtectionDomain::new(&ctx).map_err(setup_error(dev, "allocating a PD"))?;
    let peers = u32::try_from(config.size).unwrap_or(u32::MAX);
    // One CQ for sends and receives: a progress call that finds nothing polls once, as a
    // hand-written verbs loop does. Room for every work request that can be outstanding: the
    // SENDs (one per send bounce buffer), the READs and the posted receives of every peer.
    let per_peer = SEND_BOUNCE_BUFFERS + MAX_READS as u32 + RECV_BOUNCE_BUFFERS;
    let cq = CompletionQueue::new(&ctx, per_peer.saturating_mul(peers))
        .map_err(setup_error(dev, "creating the CQ"))?;
    let cache = cache(Arc::clone(&pd), mtu)?;
    let qp_config = QpConfig {
        max_send_wr: SEND_BOUNCE_BUFFERS + MAX_READS as u32,
        max_recv_wr: RECV_BOUNCE_BUFFERS,
        // A zero-copy SEND gathers its header and the user's buffer.
        max_send_sge: 2,
        max_recv_sge: 1,
        ..QpConfig::new(PORT, gid_index)
    };
    let mut connections = Vec::with_capacity(config.size);
    for peer in 0..config.size {
        if peer == config.rank {
            connections.push(None);
            continue;
        }
        let qp =
            create_qp(&pd, &cq, qp_config).map_err(setup_error(dev, "creating a queue pair"))?;
        let recv_pool = BouncePool::new(
            &pd,
            RECV_BOUNCE_BUFFERS,
            thresholds.recv_bounce_len(),
            AccessFlags::LOCAL_WRITE,
        )
        .map_err(setup_error(dev, "registering bounce buffers"))?;
        let send_pool = BouncePool::new(
            &pd,
            SEND_BOUNCE_BUFFERS,
            thresholds.send_bounce_len(),
            AccessFlags::LOCAL_READ,
        )
        .map_err(setup_error(dev, "registering bounce buffers"))?;
        connections.push(Some(Connection::new(qp, recv_pool, send_pool)));
    }
    let unused = QpEndpoint {
        qpn: 0,
        psn: 0,
        gid: Gid::default(),
        gid_index: 0,
        lid: 0,
    };
    let mine: Vec<QpEndpoint> = connections
        .iter()
        .map(|connection| connection.as_ref().map_or(unused, Connection::endpoint))
        .collect();
    let (bootstrap, aimed_at_me) = bootstrap::exchange(config, &mine)?;
    for (peer, connection) in connections.iter().enumerate() {
        let Some(connection) = connection else {
            continue;
        };
        connection
            .connect(&aimed_at_me[peer], mtu)
            .map_err(setup_error(dev, "connecting a queue pair"))?;
        for index in 0..RECV_BOUNCE_BUFFERS {
            connection
                .post_receive(peer, index)
                .map_err(setup_error(dev, "posting receives"))?;
        }
    }
    bootstrap.barrier(&config.root_addr)?;
    tracing::debug!(
        rank = config.rank,
        size = config.size,
        device,
        ?mtu,
        policy = ?cache.policy(),
        "p2p: communicator ready"
    );
    Ok(Connected {
        peers: Peers::new(config.rank, connections),
        cache,
        cq,
        mtu,
    })
}
