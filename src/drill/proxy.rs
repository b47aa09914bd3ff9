//! The fault proxy: a TCP forwarder the drill puts on the link between the two nodes.
//!
//! ## Job
//! For each node the drill spawns, one [`Proxy`] listens on 127.0.0.1 (an ephemeral port) and
//! forwards every connection to that node's control port. The pair file names the proxy as the
//! node's `peer_via`, so the *peer's* replication connection passes through it while admin
//! traffic goes direct. The drill can then:
//! - [`Proxy::partition`] in [`PartitionMode::Drop`]: bytes in flight and from now on vanish in
//!   both directions; connections stay open and new ones are accepted and black-holed, so the
//!   nodes see silence (as with dropped packets), not a reset;
//! - [`Proxy::partition`] in [`PartitionMode::Reset`]: every connection is closed at once and new
//!   ones are closed as soon as they are accepted;
//! - [`Proxy::heal`]: connections that lived through a partition are closed (their byte streams
//!   have holes, so they can never be trusted again) and new ones are forwarded;
//! - [`Proxy::set_delay`]: every chunk is held for this long before it is passed on, in each
//!   direction, order kept;
//! - [`Proxy::set_bandwidth`]: each direction passes at most this many bytes per second (a slow
//!   link: a catch-up stays in flight long enough for a test to cut it midway).
//!
//! ## Invariants
//! - Listens on 127.0.0.1 only.
//! - A byte read during a partition is never forwarded, not even after the heal.
//! - Bytes of one direction are forwarded in the order they were read.
//! - Dropping the [`Proxy`] stops its accept loop and every connection it carries.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub use super::playbook::PartitionMode;

/// How many bytes a bandwidth-limited direction passes between its pauses.
const BANDWIDTH_SLICE: usize = 1024;

/// What every connection of a proxy must do right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LinkState {
    partitioned: Option<PartitionMode>,
    /// Raised at every partition: a connection born in an older generation that sees a healed
    /// link closes itself.
    generation: u64,
    delay: Duration,
    /// Bytes per second in each direction; `None` is unlimited.
    bandwidth: Option<u64>,
}

pub struct Proxy {
    listen: SocketAddr,
    target: SocketAddr,
    state: watch::Sender<LinkState>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Binds 127.0.0.1:0 and starts forwarding to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let listen = listener.local_addr()?;
        let (state, _) =
            watch::channel(LinkState { partitioned: None, generation: 0, delay: Duration::ZERO, bandwidth: None });
        let accept_task = tokio::spawn(accept_loop(listener, target, state.clone()));
        Ok(Proxy { listen, target, state, accept_task })
    }

    /// Where the peer should dial (the node's `peer_via`).
    pub fn listen_address(&self) -> SocketAddr {
        self.listen
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    pub fn partition(&self, mode: PartitionMode) {
        self.state.send_modify(|s| {
            s.partitioned = Some(mode);
            s.generation += 1;
        });
        tracing::info!(proxy = %self.listen, target = %self.target, ?mode, "link partitioned");
    }

    /// Ends a partition and removes any delay and bandwidth limit.
    pub fn heal(&self) {
        self.state.send_modify(|s| {
            s.partitioned = None;
            s.delay = Duration::ZERO;
            s.bandwidth = None;
        });
        tracing::info!(proxy = %self.listen, target = %self.target, "link healed");
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state.send_modify(|s| s.delay = delay);
    }

    /// Limits each direction to `bytes_per_second` (`None`: unlimited).
    pub fn set_bandwidth(&self, bytes_per_second: Option<u64>) {
        self.state.send_modify(|s| s.bandwidth = bytes_per_second.filter(|rate| *rate > 0));
    }

    pub fn is_partitioned(&self) -> bool {
        self.state.borrow().partitioned.is_some()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        // Connections watch the state channel: closing it (the sender drops with `self`) ends them.
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, state: watch::Sender<LinkState>) {
    loop {
        let (inbound, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = inbound.set_nodelay(true);
        let now = *state.borrow();
        match now.partitioned {
            Some(PartitionMode::Reset) => drop(inbound),
            Some(PartitionMode::Drop) => {
                tokio::spawn(black_hole(inbound, now.generation, state.subscribe()));
            }
            None => {
                tokio::spawn(connection(inbound, target, now.generation, state.subscribe()));
            }
        }
    }
}

/// Reads and discards until the link is healed (then closes), or the other side hangs up.
async fn black_hole(mut socket: TcpStream, generation: u64, mut state: watch::Receiver<LinkState>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = socket.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            changed = state.changed() => {
                let now = *state.borrow();
                if changed.is_err() || now.partitioned != Some(PartitionMode::Drop) || now.generation != generation {
                    return;
                }
            }
        }
    }
}

async fn connection(inbound: TcpStream, target: SocketAddr, generation: u64, state: watch::Receiver<LinkState>) {
    let outbound = match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target)).await {
        Ok(Ok(stream)) => stream,
        _ => return, // The node is down: the peer sees its connection closed, as it would.
    };
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let forward = pump(in_read, out_write, generation, state.clone());
    let backward = pump(out_read, in_write, generation, state);
    // Either direction ending ends the connection (dropping both halves closes both sockets).
    tokio::select! {
        _ = forward => {}
        _ = backward => {}
    }
}

/// One direction: read chunks, pass them (after the delay) to a writer, or drop them while
/// partitioned. Returns when either socket ends or the link state says this connection is done.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    generation: u64,
    mut state: watch::Receiver<LinkState>,
) {
    let (chunks, mut due) = mpsc::unbounded_channel::<(Instant, u64, Vec<u8>)>();
    let writer_state = state.clone();
    let writer = async move {
        while let Some((at, chunk_generation, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            // Small slices, so a partition mid-chunk still loses the rest of it on a slow link.
            for slice in chunk.chunks(BANDWIDTH_SLICE) {
                let now = *writer_state.borrow();
                if now.partitioned.is_some() || now.generation != chunk_generation {
                    break; // Lost in the partition.
                }
                if to.write_all(slice).await.is_err() {
                    return;
                }
                if let Some(rate) = now.bandwidth {
                    tokio::time::sleep(Duration::from_secs_f64(slice.len() as f64 / rate as f64)).await;
                }
            }
        }
    };
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let now = *state.borrow();
            if now.generation != generation {
                match now.partitioned {
                    Some(PartitionMode::Drop) => {}
                    // Reset, or healed after a partition: this stream has holes; close it.
                    _ => return,
                }
            }
            tokio::select! {
                read = from.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let now = *state.borrow();
                        if now.partitioned.is_none() && now.generation == generation {
                            let at = Instant::now() + now.delay;
                            if chunks.send((at, now.generation, buf[..n].to_vec())).is_err() {
                                return;
                            }
                        }
                    }
                },
                changed = state.changed() => if changed.is_err() { return },
            }
        }
    };
    // The reader's end (EOF) drops the chunk sender; the writer then delivers what it still
    // holds before this direction ends — a real link delivers bytes sent before a close.
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if socket.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(socket: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        socket.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(within, socket.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf.to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn forwards_partitions_silently_and_heals() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        let mut old = TcpStream::connect(proxy.listen_address()).await.unwrap();
        assert_eq!(round_trip(&mut old, Duration::from_secs(2)).await.as_deref(), Some(&b"ping"[..]));

        proxy.partition(PartitionMode::Drop);
        assert_eq!(round_trip(&mut old, Duration::from_millis(200)).await, None, "silence on the old connection");
        let mut during = TcpStream::connect(proxy.listen_address()).await.expect("accepted during a partition");
        assert_eq!(round_trip(&mut during, Duration::from_millis(200)).await, None, "black-holed");

        proxy.heal();
        let mut fresh = TcpStream::connect(proxy.listen_address()).await.unwrap();
        assert_eq!(round_trip(&mut fresh, Duration::from_secs(2)).await.as_deref(), Some(&b"ping"[..]));
        // The connection that lived through the partition is closed at the heal.
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(2), old.read(&mut buf)).await.expect("closed in time");
        assert!(matches!(read, Ok(0) | Err(_)), "old connection still open: {read:?}");
    }

    #[tokio::test]
    async fn reset_closes_and_delay_and_bandwidth_hold_bytes() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        proxy.set_delay(Duration::from_millis(100));
        let mut socket = TcpStream::connect(proxy.listen_address()).await.unwrap();
        let started = std::time::Instant::now();
        assert!(round_trip(&mut socket, Duration::from_secs(2)).await.is_some());
        assert!(started.elapsed() >= Duration::from_millis(200), "delay in each direction: {:?}", started.elapsed());

        proxy.set_delay(Duration::ZERO);
        proxy.set_bandwidth(Some(10_000));
        let block = vec![7u8; 5_000];
        let started = std::time::Instant::now();
        socket.write_all(&block).await.unwrap();
        let mut echoed = vec![0u8; block.len()];
        tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut echoed)).await.unwrap().unwrap();
        assert_eq!(echoed, block);
        // 5 kB at 10 kB/s, each way: at least ~0.5 s before the last byte is back.
        assert!(started.elapsed() >= Duration::from_millis(400), "bandwidth not limited: {:?}", started.elapsed());

        proxy.partition(PartitionMode::Reset);
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(2), socket.read(&mut buf)).await.expect("closed in time");
        assert!(matches!(read, Ok(0) | Err(_)));
    }
}
