//! Out-of-band exchange of queue-pair endpoints over TCP, through rank 0.
//!
//! Every rank has one queue pair per peer. Rank `i` publishes `mine[j]`, the endpoint of its
//! queue pair aimed at rank `j`; rank 0 gathers all of them and sends rank `i` the endpoints
//! aimed at it. After connecting its queue pairs each rank enters a barrier, so nobody sends
//! before every queue pair is ready to receive.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use verbs::QpEndpoint;

use crate::error::{Error, Result};
use crate::launch::LaunchConfig;
use crate::wire::{decode_endpoint, encode_endpoint, ENDPOINT_LEN};

const READY: u8 = b'R';
const GO: u8 = b'G';
/// Pause between connection attempts while rank 0 is not listening yet.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// The shortest read timeout set on a socket (zero would mean none).
const MIN_SOCKET_TIMEOUT: Duration = Duration::from_millis(1);

/// The open bootstrap connections, kept for the barrier.
#[derive(Debug)]
pub(crate) enum Bootstrap {
    /// Rank 0 with a connection to every other rank.
    Root(Vec<TcpStream>),
    /// Any other rank with its connection to rank 0.
    Leaf(TcpStream),
    /// A job of one rank.
    Alone,
}

struct Step<'a> {
    root: &'a str,
    step: &'static str,
}

/// What went wrong on a bootstrap socket: the socket itself, or the bytes that came through it.
#[derive(Debug)]
enum Fault {
    Io(io::Error),
    Malformed(String),
}

impl From<io::Error> for Fault {
    fn from(source: io::Error) -> Self {
        Self::Io(source)
    }
}

impl Step<'_> {
    /// [`Error::Bootstrap`] for a socket error, [`Error::BootstrapMessage`] for malformed bytes.
    fn error(&self, fault: impl Into<Fault>) -> Error {
        let root = self.root.to_owned();
        let step = self.step;
        match fault.into() {
            Fault::Io(source) => Error::Bootstrap { root, step, source },
            Fault::Malformed(reason) => Error::BootstrapMessage { root, step, reason },
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Publishes `mine` (indexed by peer rank; the entry for this rank is ignored) and returns the
/// endpoints of the peers' queue pairs aimed at this rank (indexed by peer rank).
pub(crate) fn exchange(
    config: &LaunchConfig,
    mine: &[QpEndpoint],
) -> Result<(Bootstrap, Vec<QpEndpoint>)> {
    let deadline = Instant::now() + config.timeout;
    match (config.size, config.rank) {
        (1, _) => Ok((Bootstrap::Alone, mine.to_vec())),
        (_, 0) => gather_at_root(config, mine, deadline),
        _ => exchange_with_root(config, mine, deadline),
    }
}

fn encode_all(endpoints: &[QpEndpoint]) -> Vec<u8> {
    endpoints.iter().flat_map(encode_endpoint).collect()
}

/// The endpoints encoded back to back in `bytes`, or why one of them is none.
fn decode_endpoints(bytes: &[u8]) -> Result<Vec<QpEndpoint>, String> {
    let chunks = bytes.chunks_exact(ENDPOINT_LEN);
    if !chunks.remainder().is_empty() {
        return Err(format!(
            "{} bytes are no whole number of endpoints",
            bytes.len()
        ));
    }
    chunks
        .zip(0..)
        .map(|(chunk, rank)| {
            let mut endpoint = [0; ENDPOINT_LEN];
            endpoint.copy_from_slice(chunk);
            decode_endpoint(&endpoint).map_err(|why| format!("endpoint of rank {rank}: {why}"))
        })
        .collect()
}

fn read_endpoints(stream: &mut TcpStream, count: usize) -> Result<Vec<QpEndpoint>, Fault> {
    let mut bytes = vec![0; count * ENDPOINT_LEN];
    stream.read_exact(&mut bytes)?;
    decode_endpoints(&bytes).map_err(Fault::Malformed)
}

/// The rank a hello (rank and size, `u32` each) announces, unless it does not fit a job of
/// `job_size` ranks in which `joined` ranks already announced themselves (rank 0 is the root's).
fn parse_hello(
    ids: &[u8; 8],
    job_size: usize,
    joined: impl Fn(usize) -> bool,
) -> Result<usize, String> {
    let rank = u32::from_le_bytes([ids[0], ids[1], ids[2], ids[3]]) as usize;
    let size = u32::from_le_bytes([ids[4], ids[5], ids[6], ids[7]]) as usize;
    if size != job_size || rank == 0 || rank >= size {
        return Err(format!(
            "rank {rank} of {size} does not fit a job of {job_size} ranks"
        ));
    }
    if joined(rank) {
        return Err(format!("rank {rank} announced itself twice"));
    }
    Ok(rank)
}

fn configure(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))
}

fn gather_at_root(
    config: &LaunchConfig,
    mine: &[QpEndpoint],
    deadline: Instant,
) -> Result<(Bootstrap, Vec<QpEndpoint>)> {
    let root = config.root_addr.as_str();
    let step = |step| Step { root, step };
    let listener = TcpListener::bind(root).map_err(|e| step("listening").error(e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| step("listening").error(e))?;
    // by_rank[i]: rank i's connection and its endpoints, indexed by the peer they aim at.
    let mut by_rank: Vec<Option<(TcpStream, Vec<QpEndpoint>)>> =
        (0..config.size).map(|_| None).collect();
    let mut missing = config.size - 1;
    while missing > 0 {
        let mut stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(
                        step("waiting for every rank to connect").error(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("{missing} rank(s) did not connect"),
                        )),
                    );
                }
                std::thread::sleep(RETRY_PAUSE);
                continue;
            }
            Err(err) => return Err(step("accepting").error(err)),
        };
        let hello = step("reading a rank's endpoints");
        // A rank that connects and says nothing fails the bootstrap at its deadline.
        let left = deadline.saturating_duration_since(Instant::now());
        configure(&stream, left.max(MIN_SOCKET_TIMEOUT)).map_err(|e| hello.error(e))?;
        let mut ids = [0; 8];
        stream.read_exact(&mut ids).map_err(|e| hello.error(e))?;
        let rank = parse_hello(&ids, config.size, |rank| by_rank[rank].is_some())
            .map_err(|why| hello.error(Fault::Malformed(why)))?;
        let endpoints = read_endpoints(&mut stream, config.size).map_err(|e| hello.error(e))?;
        by_rank[rank] = Some((stream, endpoints));
        missing -= 1;
    }
    let aimed_at = |target: usize| -> Vec<QpEndpoint> {
        (0..config.size)
            .map(|from| match &by_rank[from] {
                Some((_, endpoints)) => endpoints[target],
                None => mine[target],
            })
            .collect()
    };
    let for_root = aimed_at(0);
    let replies: Vec<Vec<u8>> = (1..config.size)
        .map(|target| encode_all(&aimed_at(target)))
        .collect();
    let mut streams = Vec::with_capacity(config.size - 1);
    for (target, reply) in (1..config.size).zip(replies) {
        let (mut stream, _) = by_rank[target]
            .take()
            .ok_or_else(|| step("answering").error(invalid("rank vanished")))?;
        stream
            .write_all(&reply)
            .map_err(|e| step("sending endpoints").error(e))?;
        streams.push(stream);
    }
    Ok((Bootstrap::Root(streams), for_root))
}

fn connect_until(root: &str, deadline: Instant) -> Result<TcpStream> {
    let step = Step {
        root,
        step: "connecting to rank 0",
    };
    loop {
        let addrs: Vec<SocketAddr> = root.to_socket_addrs().map_err(|e| step.error(e))?.collect();
        let mut last_error = invalid("the root address resolves to nothing");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(stream) => return Ok(stream),
                Err(err) => last_error = err,
            }
        }
        if Instant::now() >= deadline {
            return Err(step.error(last_error));
        }
        std::thread::sleep(RETRY_PAUSE);
    }
}

fn exchange_with_root(
    config: &LaunchConfig,
    mine: &[QpEndpoint],
    deadline: Instant,
) -> Result<(Bootstrap, Vec<QpEndpoint>)> {
    let root = config.root_addr.as_str();
    let step = |step| Step { root, step };
    let mut stream = connect_until(root, deadline)?;
    configure(&stream, config.timeout).map_err(|e| step("configuring the socket").error(e))?;
    let too_many = |_| step("announcing").error(invalid("rank or size above u32::MAX"));
    let mut hello = Vec::with_capacity(8 + mine.len() * ENDPOINT_LEN);
    hello.extend_from_slice(&u32::try_from(config.rank).map_err(too_many)?.to_le_bytes());
    hello.extend_from_slice(&u32::try_from(config.size).map_err(too_many)?.to_le_bytes());
    hello.extend_from_slice(&encode_all(mine));
    stream
        .write_all(&hello)
        .map_err(|e| step("sending endpoints").error(e))?;
    let aimed_at_me = read_endpoints(&mut stream, config.size)
        .map_err(|e| step("receiving endpoints").error(e))?;
    Ok((Bootstrap::Leaf(stream), aimed_at_me))
}

fn expect_byte(stream: &mut TcpStream, expected: u8) -> Result<(), Fault> {
    let mut got = [0];
    stream.read_exact(&mut got)?;
    if got[0] == expected {
        Ok(())
    } else {
        Err(Fault::Malformed(format!(
            "barrier byte {:#04x} where {expected:#04x} was expected",
            got[0]
        )))
    }
}

impl Bootstrap {
    /// Returns once every rank has called it (or fails after the sockets' timeout).
    pub(crate) fn barrier(self, root: &str) -> Result<()> {
        let step = |step| Step { root, step };
        match self {
            Self::Alone => Ok(()),
            Self::Root(mut streams) => {
                for stream in &mut streams {
                    expect_byte(stream, READY)
                        .map_err(|e| step("waiting in the barrier").error(e))?;
                }
                for stream in &mut streams {
                    stream
                        .write_all(&[GO])
                        .map_err(|e| step("releasing the barrier").error(e))?;
                }
                Ok(())
            }
            Self::Leaf(mut stream) => {
                stream
                    .write_all(&[READY])
                    .map_err(|e| step("entering the barrier").error(e))?;
                expect_byte(&mut stream, GO).map_err(|e| step("waiting in the barrier").error(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener};

    use verbs::Gid;

    use super::*;

    /// The endpoint rank `from` publishes for its queue pair aimed at rank `to`.
    fn endpoint(from: usize, to: usize) -> QpEndpoint {
        QpEndpoint {
            qpn: (from * 100 + to) as u32,
            psn: 7,
            gid: Gid::from_ipv4(Ipv4Addr::new(10, 0, 0, from as u8)),
            gid_index: 1,
            lid: 0,
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("a free port")
    }

    fn config(rank: usize, size: usize, port: u16, timeout: Duration) -> LaunchConfig {
        LaunchConfig {
            rank,
            size,
            root_addr: format!("127.0.0.1:{port}"),
            device: None,
            eager_threshold: 8192,
            rendezvous_threshold: 8192,
            timeout,
        }
    }

    #[test]
    fn every_rank_gets_the_endpoints_aimed_at_it_and_passes_the_barrier() {
        let size = 4;
        let port = free_port();
        let ranks: Vec<_> = (0..size)
            .rev()
            .map(|rank| {
                std::thread::spawn(move || {
                    let mine: Vec<QpEndpoint> = (0..size).map(|to| endpoint(rank, to)).collect();
                    let config = config(rank, size, port, Duration::from_secs(20));
                    let (bootstrap, aimed_at_me) = exchange(&config, &mine).expect("exchange");
                    bootstrap.barrier(&config.root_addr).expect("barrier");
                    (rank, aimed_at_me)
                })
            })
            .collect();
        for handle in ranks {
            let (rank, aimed_at_me) = handle.join().expect("rank thread");
            let expected: Vec<QpEndpoint> = (0..size).map(|from| endpoint(from, rank)).collect();
            assert_eq!(aimed_at_me, expected, "rank {rank}");
        }
    }

    #[test]
    fn a_missing_rank_is_a_timeout_not_a_hang() {
        let port = free_port();
        let config = config(0, 2, port, Duration::from_millis(300));
        let started = Instant::now();
        let mine = [endpoint(0, 0), endpoint(0, 1)];
        match exchange(&config, &mine) {
            Err(Error::Bootstrap { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::TimedOut);
            }
            other => panic!("expected a bootstrap timeout, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        let leaf = LaunchConfig { rank: 1, ..config };
        assert!(matches!(
            exchange(&leaf, &mine),
            Err(Error::Bootstrap { .. })
        ));
    }

    #[test]
    fn hellos_that_do_not_fit_the_job_are_refused() {
        let hello = |rank: u32, size: u32| {
            let mut ids = [0; 8];
            ids[..4].copy_from_slice(&rank.to_le_bytes());
            ids[4..].copy_from_slice(&size.to_le_bytes());
            ids
        };
        let nobody = |_| false;
        assert_eq!(parse_hello(&hello(2, 3), 3, nobody), Ok(2));
        for (rank, size) in [(0, 3), (3, 3), (1, 4), (u32::MAX, u32::MAX), (1, 0)] {
            let refused = parse_hello(&hello(rank, size), 3, nobody);
            assert!(refused.is_err(), "rank {rank} of {size}: {refused:?}");
        }
        let twice = parse_hello(&hello(1, 3), 3, |rank| rank == 1);
        assert_eq!(twice, Err("rank 1 announced itself twice".into()));
        let garbage: &[u8; 8] = b"GET / HT";
        assert!(parse_hello(garbage, 3, nobody).is_err());
    }

    #[test]
    fn endpoint_lists_that_are_no_endpoints_are_refused() {
        let good = encode_all(&[endpoint(1, 0), endpoint(1, 1)]);
        assert_eq!(
            decode_endpoints(&good),
            Ok(vec![endpoint(1, 0), endpoint(1, 1)])
        );
        assert!(decode_endpoints(&good[..ENDPOINT_LEN + 1]).is_err());
        assert!(decode_endpoints(&[0xff; 2 * ENDPOINT_LEN]).is_err());
        let mut reserved = good;
        reserved[2 * ENDPOINT_LEN - 1] = 1;
        let refused = decode_endpoints(&reserved).expect_err("a non-zero reserved byte");
        assert!(refused.starts_with("endpoint of rank 1"), "{refused}");
    }

    /// Rank 0's bootstrap of a job of two, with `client` playing rank 1 on the socket.
    fn root_against(client: impl FnOnce(TcpStream) + Send + 'static) -> (Result<()>, Duration) {
        let port = free_port();
        let config = config(0, 2, port, Duration::from_millis(500));
        let peer = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            client(connect_until(&format!("127.0.0.1:{port}"), deadline).expect("connect"));
        });
        let started = Instant::now();
        let result = exchange(&config, &[endpoint(0, 0), endpoint(0, 1)]).map(|_| ());
        let elapsed = started.elapsed();
        peer.join().expect("the client thread");
        (result, elapsed)
    }

    #[test]
    fn garbage_on_the_root_socket_is_a_malformed_message() {
        let (result, _) = root_against(|mut stream| {
            // Whether the root already closed the socket does not matter.
            let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: rank0\r\n\r\n");
        });
        assert!(
            matches!(&result, Err(Error::BootstrapMessage { reason, .. }) if reason.contains("does not fit")),
            "{result:?}"
        );
        let (result, _) = root_against(|mut stream| {
            let mut hello = Vec::from([1, 0, 0, 0, 2, 0, 0, 0]);
            hello.extend_from_slice(&[0xff; 2 * ENDPOINT_LEN]);
            let _ = stream.write_all(&hello);
        });
        assert!(
            matches!(&result, Err(Error::BootstrapMessage { reason, .. }) if reason.contains("24 bits")),
            "{result:?}"
        );
    }

    #[test]
    fn a_silent_or_truncated_rank_fails_the_root_within_its_timeout() {
        let hold = |stream: TcpStream| {
            std::thread::sleep(Duration::from_secs(2));
            drop(stream);
        };
        let (result, elapsed) = root_against(hold);
        match &result {
            Err(Error::Bootstrap { source, .. }) => assert!(
                matches!(
                    source.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ),
                "{source:?}"
            ),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
        let (result, _) = root_against(|mut stream| {
            let _ = stream.write_all(&[1, 0, 0, 0, 2]);
        });
        assert!(
            matches!(&result, Err(Error::Bootstrap { source, .. }) if source.kind() == io::ErrorKind::UnexpectedEof),
            "{result:?}"
        );
    }

    /// Rank 1's bootstrap of a job of two against a root that answers its hello with `reply`.
    fn leaf_against(reply: Vec<u8>) -> Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
        let port = listener.local_addr().expect("address").port();
        let root = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut hello = [0; 8 + 2 * ENDPOINT_LEN];
            stream.read_exact(&mut hello).expect("the hello");
            stream.write_all(&reply).expect("the reply");
            // Keep the socket open until the leaf is done with it.
            let _ = stream.read(&mut [0]);
        });
        let config = config(1, 2, port, Duration::from_secs(5));
        let result = exchange(&config, &[endpoint(1, 0), endpoint(1, 1)])
            .and_then(|(bootstrap, _)| bootstrap.barrier(&config.root_addr));
        root.join().expect("the root thread");
        result
    }

    #[test]
    fn garbage_from_the_root_is_a_malformed_message() {
        let endpoints = encode_all(&[endpoint(0, 1), endpoint(1, 1)]);
        assert!(leaf_against([endpoints.as_slice(), &[GO]].concat()).is_ok());
        for reply in [
            [endpoints.as_slice(), b"X"].concat(),
            vec![0xa5; 2 * ENDPOINT_LEN + 1],
        ] {
            let result = leaf_against(reply);
            assert!(
                matches!(result, Err(Error::BootstrapMessage { .. })),
                "{result:?}"
            );
        }
    }
}
