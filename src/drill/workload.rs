//! The workload and its oracle: clients that write at a steady rate and remember every answer,
//! and the check that no acknowledged write is missing at the end.
//!
//! ## Job
//! [`Workload::start`] runs `clients` tokio tasks, each writing `SET key value` at
//! `rate / clients` per second over its own small RESP2 client ([`RespConn`], on the crate's frame
//! codec). Client `c` owns the keys `drill:c{c}:k{i}` (`drill:w{n}:c{c}:k{i}` for the n-th
//! workload of a drill, n ≥ 2); its write number `seq` goes to key `seq % keys_per_client`
//! with the value `c{c}:s{seq}:` padded with `x` to `value_size` bytes. Every attempt is recorded
//! as [`Outcome::Acknowledged`] (`+OK`), [`Outcome::Failed`] (an error reply) or
//! [`Outcome::Unknown`] (no reply: timeout or connection lost after the request was sent).
//! Clients follow the primary as the spec's [`Connect`] says ([`Route`]): `direct` clients, on
//! `-READONLY`, `-TRYAGAIN` or a broken connection, move to the other node (or to the node
//! another client last got an acknowledgement from); `sentinel` clients ask the nodes'
//! Sentinel ports again, as a Sentinel-aware client library does; `proxy` clients keep their
//! one address. Each tries again after a small backoff with a *new* write (new `seq`).
//!
//! After the workload stops, [`read_back`] reads every owned key from one node and [`judge`]
//! compares each with the record.
//!
//! ## Invariants (of the oracle)
//! - `seq` grows by one per attempt, per client; the attempt log is indexed by `seq`.
//! - A key is **lost** when some write to it was acknowledged and the stored value is missing or
//!   carries a `seq` below the last acknowledged one: an acknowledged write is gone.
//! - A stored `seq` above the last acknowledged one is fine only if that write was attempted
//!   (failed or unknown: it may have committed without its acknowledgement reaching the client).
//!   A value the clients never wrote, or cannot be parsed, is **unexplained**.
//! - Outage windows are measured from the clients' side: a gap between two acknowledgements (or
//!   from the start to the first, or from the last to the stop) longer than the threshold, with
//!   write attempts inside it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::client::{ClientStream, DataEndpoint};
use tokio::time::Instant;

use super::playbook::WorkloadSpec;
use crate::resp::{Frame, Limits};

/// Backoff after a refused or failed write, doubling up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(200);
/// GETs sent per round trip when reading the keys back.
const READ_BATCH: usize = 256;
/// Least outage threshold: below it, scheduling noise on a busy machine would look like outages.
pub const MIN_OUTAGE_THRESHOLD: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Acknowledged,
    Failed,
    Unknown,
}

/// One write attempt; times in ms since the drill started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attempt {
    pub start_ms: f64,
    pub end_ms: f64,
    pub outcome: Outcome,
    /// Index of the node written to (in the pair file's order); `u8::MAX` through a proxy.
    pub node: u8,
}

/// Everything one client did.
#[derive(Debug, Clone, Default)]
pub struct ClientLog {
    /// Indexed by `seq`.
    pub attempts: Vec<Attempt>,
    /// Failed connection attempts (no write was sent), ms since the drill started.
    pub connect_errors: Vec<f64>,
    /// The first few distinct error replies, for the report.
    pub error_samples: Vec<String>,
}

/// Where the clients send their writes.
#[derive(Debug, Clone)]
pub enum Route {
    /// The nodes' data ports, in pair-file order.
    Direct { nodes: Vec<DataEndpoint> },
    /// Ask the nodes' Sentinel ports (pair-file order) for `master`; `nodes` are the data ports,
    /// to tell which node an answer names (and how to talk to it: TLS, `AUTH`).
    Sentinel { sentinels: Vec<SocketAddr>, master: String, nodes: Vec<DataEndpoint> },
    /// One address that follows the primary by itself (`hotpair proxy`).
    Proxy { address: DataEndpoint },
}

impl Route {
    fn node_count(&self) -> usize {
        match self {
            Route::Direct { nodes } | Route::Sentinel { nodes, .. } => nodes.len(),
            Route::Proxy { .. } => 1,
        }
    }
}

/// How long a client waits for one Sentinel port's answer.
const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);

/// A running workload.
pub struct Workload {
    spec: WorkloadSpec,
    run: u32,
    started_ms: f64,
    origin: std::time::Instant,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<ClientLog>>,
}

/// A stopped workload with every client's log.
#[derive(Debug, Clone)]
pub struct Finished {
    pub spec: WorkloadSpec,
    pub run: u32,
    pub started_ms: f64,
    pub stopped_ms: f64,
    pub clients: Vec<ClientLog>,
}

impl WorkloadSpec {
    pub fn keys_per_client(&self) -> u64 {
        (self.keys / u64::from(self.clients)).max(1)
    }

    /// Time between two writes of one client.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.clients) / self.rate)
    }

    pub fn threshold(&self) -> Duration {
        self.outage_threshold.unwrap_or_else(|| (self.interval() * 3).max(MIN_OUTAGE_THRESHOLD))
    }
}

/// The key of client `client`, slot `slot`, in workload number `run`.
pub fn key_name(run: u32, client: u32, slot: u64) -> String {
    if run <= 1 {
        format!("drill:c{client}:k{slot}")
    } else {
        format!("drill:w{run}:c{client}:k{slot}")
    }
}

/// The value of write `seq` of `client`, padded to `size`.
pub fn value_text(client: u32, seq: u64, size: usize) -> Vec<u8> {
    let mut value = format!("c{client}:s{seq}:").into_bytes();
    if value.len() < size {
        value.resize(size, b'x');
    }
    value
}

/// The `seq` in a stored value, if it is `client`'s.
pub fn parse_value(client: u32, value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    let rest = text.strip_prefix(&format!("c{client}:s"))?;
    let (digits, _) = rest.split_once(':')?;
    digits.parse().ok()
}

impl Workload {
    /// Starts the clients, sending their writes by `route`.
    pub fn start(spec: WorkloadSpec, run: u32, route: Route, origin: std::time::Instant) -> Workload {
        let (stop, _) = watch::channel(false);
        let hint = Arc::new(AtomicUsize::new(0));
        let route = Arc::new(route);
        let tasks = (0..spec.clients)
            .map(|client| {
                let client = Client {
                    id: client,
                    run,
                    spec: spec.clone(),
                    route: route.clone(),
                    hint: hint.clone(),
                    origin,
                    stop: stop.subscribe(),
                };
                tokio::spawn(client.run())
            })
            .collect();
        Workload { spec, run, started_ms: ms_since(origin), origin, stop, tasks }
    }

    /// Stops the clients; an in-flight request finishes or times out first.
    pub async fn stop(self) -> Finished {
        let _ = self.stop.send(true);
        let stopped_ms = ms_since(self.origin);
        let mut clients = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            match task.await {
                Ok(log) => clients.push(log),
                Err(e) => {
                    tracing::error!(error = %e, "a workload client task ended abnormally");
                    clients.push(ClientLog::default());
                }
            }
        }
        Finished { spec: self.spec, run: self.run, started_ms: self.started_ms, stopped_ms, clients }
    }
}

fn ms_since(origin: std::time::Instant) -> f64 {
    origin.elapsed().as_secs_f64() * 1000.0
}

struct Client {
    id: u32,
    run: u32,
    spec: WorkloadSpec,
    route: Arc<Route>,
    /// The node some client last got an acknowledgement from.
    hint: Arc<AtomicUsize>,
    origin: std::time::Instant,
    stop: watch::Receiver<bool>,
}

impl Client {
    async fn run(mut self) -> ClientLog {
        let mut log = ClientLog::default();
        let interval = self.spec.interval();
        let keys_per_client = self.spec.keys_per_client();
        let mut node = self.hint.load(Ordering::Relaxed) % self.route.node_count().max(1);
        let mut conn: Option<RespConn> = None;
        let mut backoff = FIRST_BACKOFF;
        // Stagger the clients over one interval so that they do not all write at once.
        let mut next = Instant::now() + interval.mul_f64(f64::from(self.id) / f64::from(self.spec.clients.max(1)));
        loop {
            tokio::select! {
                _ = self.stop.changed() => {}
                _ = tokio::time::sleep_until(next) => {}
            }
            if *self.stop.borrow() {
                break;
            }
            let connection = match conn.as_mut() {
                Some(c) => c,
                None => match self.connect(node).await {
                    Ok((connected, index)) => {
                        node = index;
                        conn.insert(connected)
                    }
                    Err(error) => {
                        if error.kind() == std::io::ErrorKind::PermissionDenied
                            && log.error_samples.len() < 5
                            && !log.error_samples.contains(&error.to_string())
                        {
                            log.error_samples.push(error.to_string());
                        }
                        log.connect_errors.push(ms_since(self.origin));
                        node = self.other_node(node);
                        next = Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                },
            };
            let seq = log.attempts.len() as u64;
            let key = key_name(self.run, self.id, seq % keys_per_client);
            let value = value_text(self.id, seq, self.spec.value_size);
            let request = Frame::array(vec![
                Frame::bulk(Bytes::from_static(b"SET")),
                Frame::bulk(Bytes::from(key.into_bytes())),
                Frame::bulk(Bytes::from(value)),
            ]);
            let wrote_to = node;
            let start_ms = ms_since(self.origin);
            let reply = tokio::time::timeout(self.spec.request_timeout, connection.request(&request)).await;
            let end_ms = ms_since(self.origin);
            let outcome = match reply {
                Ok(Ok(Frame::Simple(text))) if text == "OK" => Outcome::Acknowledged,
                Ok(Ok(Frame::Error(text))) => {
                    if log.error_samples.len() < 5 && !log.error_samples.contains(&text) {
                        log.error_samples.push(text.clone());
                    }
                    if text.starts_with("READONLY") || text.starts_with("TRYAGAIN") {
                        node = self.other_node(node);
                        // Through a proxy the one connection stays: the proxy follows.
                        if !matches!(*self.route, Route::Proxy { .. }) {
                            conn = None;
                        }
                    }
                    Outcome::Failed
                }
                Ok(Ok(other)) => {
                    let text = format!("unexpected reply to SET: {other:?}");
                    if log.error_samples.len() < 5 {
                        log.error_samples.push(text);
                    }
                    Outcome::Failed
                }
                Ok(Err(_)) | Err(_) => {
                    conn = None;
                    node = self.other_node(node);
                    Outcome::Unknown
                }
            };
            log.attempts.push(Attempt { start_ms, end_ms, outcome, node: node_index(wrote_to) });
            if outcome == Outcome::Acknowledged {
                self.hint.store(wrote_to, Ordering::Relaxed);
                backoff = FIRST_BACKOFF;
                next += interval;
                let now = Instant::now();
                if next + interval < now {
                    next = now; // Fell behind (a slow write): do not burst to catch up.
                }
            } else {
                next = Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        log
    }

    /// A new connection by the route (TLS and `AUTH` as the pair file says), and the index of
    /// the node it reaches (`u8::MAX` as usize through a proxy).
    async fn connect(&self, node: usize) -> std::io::Result<(RespConn, usize)> {
        let nowhere = || std::io::Error::new(std::io::ErrorKind::NotFound, "no node to connect to");
        let (endpoint, index) = match &*self.route {
            Route::Direct { nodes } => (nodes.get(node).ok_or_else(nowhere)?.clone(), node),
            Route::Proxy { address } => (address.clone(), usize::from(u8::MAX)),
            Route::Sentinel { sentinels, master, nodes } => {
                let address = ask_sentinels(sentinels, master).await.ok_or_else(nowhere)?;
                match nodes.iter().position(|n| n.address == address) {
                    Some(index) => (nodes[index].clone(), index),
                    None => (DataEndpoint::plain(address), usize::from(u8::MAX)),
                }
            }
        };
        Ok((endpoint.connect(self.spec.request_timeout).await?, index))
    }

    /// Where to go after a refusal or a broken connection: the node another client last got an
    /// acknowledgement from, unless that is the one that just failed; then the other one.
    fn other_node(&self, current: usize) -> usize {
        let count = self.route.node_count().max(1);
        let hint = self.hint.load(Ordering::Relaxed) % count;
        if hint != current {
            hint
        } else {
            (current + 1) % count
        }
    }
}

/// What Jedis, ioredis and go-redis do: ask each Sentinel in turn for the master's address; the
/// first one that names it wins.
async fn ask_sentinels(sentinels: &[SocketAddr], master: &str) -> Option<SocketAddr> {
    let request = Frame::array(vec![
        Frame::bulk(Bytes::from_static(b"SENTINEL")),
        Frame::bulk(Bytes::from_static(b"get-master-addr-by-name")),
        Frame::bulk(Bytes::from(master.to_string())),
    ]);
    for sentinel in sentinels {
        let answer = async {
            let mut connection = RespConn::connect(*sentinel, SENTINEL_TIMEOUT).await.ok()?;
            match connection.request(&request).await.ok()? {
                Frame::Array(Some(items)) => match items.as_slice() {
                    [Frame::Bulk(Some(ip)), Frame::Bulk(Some(port))] => {
                        let ip: std::net::IpAddr = std::str::from_utf8(ip).ok()?.parse().ok()?;
                        let port: u16 = std::str::from_utf8(port).ok()?.parse().ok()?;
                        Some(SocketAddr::new(ip, port))
                    }
                    _ => None,
                },
                _ => None,
            }
        };
        if let Ok(Some(address)) = tokio::time::timeout(SENTINEL_TIMEOUT, answer).await {
            return Some(address);
        }
    }
    None
}

fn node_index(node: usize) -> u8 {
    u8::try_from(node).unwrap_or(u8::MAX)
}

/// A minimal RESP2 client connection on the crate's codec, plain or TLS ([`DataEndpoint`]).
pub struct RespConn {
    stream: ClientStream,
    buf: Vec<u8>,
    limits: Limits,
    out: Vec<u8>,
}

impl RespConn {
    pub fn new(stream: TcpStream) -> RespConn {
        RespConn::over(ClientStream::Plain(stream))
    }

    pub fn over(stream: ClientStream) -> RespConn {
        // Replies come from a node: as large as its client_output_buffer_limit allows.
        let limits = Limits {
            max_value_bytes: 1 << 30,
            max_request_bytes: 2 << 30,
            max_args: usize::MAX >> 8,
            ..Limits::default()
        };
        RespConn { stream, buf: Vec::with_capacity(4096), limits, out: Vec::with_capacity(256) }
    }

    pub async fn connect(address: SocketAddr, timeout: Duration) -> std::io::Result<RespConn> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {address}")))??;
        let _ = stream.set_nodelay(true);
        Ok(RespConn::new(stream))
    }

    /// Sends one request and reads its reply.
    pub async fn request(&mut self, request: &Frame) -> std::io::Result<Frame> {
        self.send(std::slice::from_ref(request)).await?;
        self.read_frame().await
    }

    /// Sends requests in one write (pipelining); read the replies with [`RespConn::read_frame`].
    pub async fn send(&mut self, requests: &[Frame]) -> std::io::Result<()> {
        self.out.clear();
        for request in requests {
            crate::resp::encode(request, &mut self.out);
        }
        self.stream.write_all(&self.out).await?;
        self.stream.flush().await
    }

    pub async fn read_frame(&mut self) -> std::io::Result<Frame> {
        loop {
            match crate::resp::parse(&self.buf, &self.limits) {
                Ok(Some((frame, used))) => {
                    self.buf.drain(..used);
                    return Ok(frame);
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())),
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// What one key holds at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    Missing,
    Seq(u64),
    /// A value that is not this client's format.
    Unparsable(String),
}

/// The oracle's finding for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyVerdict {
    /// The stored value is the last acknowledged write (or nothing was acknowledged and nothing
    /// is stored).
    Intact,
    /// A later, unacknowledged (failed or unknown) write is stored: allowed.
    UnacknowledgedStored { seq: u64, outcome: Outcome },
    /// An acknowledged write is gone.
    Lost { last_acknowledged: u64, stored: Option<u64> },
    /// A value no attempt explains.
    Unexplained { stored: String },
}

/// Judges one key from the attempts of its client. `slot` is the key's index among the
/// client's keys; the attempts to it are those with `seq % keys_per_client == slot`.
pub fn judge_key(attempts: &[Attempt], keys_per_client: u64, slot: u64, stored: &Stored) -> KeyVerdict {
    let step = keys_per_client.max(1);
    let last_acknowledged = (slot..attempts.len() as u64)
        .step_by(step as usize)
        .filter(|&seq| attempts[seq as usize].outcome == Outcome::Acknowledged)
        .last();
    match (stored.clone(), last_acknowledged) {
        (Stored::Unparsable(text), _) => KeyVerdict::Unexplained { stored: text },
        (Stored::Missing, None) => KeyVerdict::Intact,
        (Stored::Missing, Some(acked)) => KeyVerdict::Lost { last_acknowledged: acked, stored: None },
        (Stored::Seq(seq), _) if seq % step != slot || seq >= attempts.len() as u64 => {
            KeyVerdict::Unexplained { stored: format!("s{seq}, which this client never wrote to this key") }
        }
        (Stored::Seq(seq), Some(acked)) if seq < acked => {
            KeyVerdict::Lost { last_acknowledged: acked, stored: Some(seq) }
        }
        (Stored::Seq(seq), Some(acked)) if seq == acked => KeyVerdict::Intact,
        // Above the last acknowledged write (or none acknowledged): it was attempted (checked
        // above), so it must be failed or unknown — an acknowledged one would be `acked`.
        (Stored::Seq(seq), _) => KeyVerdict::UnacknowledgedStored { seq, outcome: attempts[seq as usize].outcome },
    }
}

/// A lost acknowledged write, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct LostWrite {
    pub key: String,
    pub last_acknowledged_seq: u64,
    pub stored_seq: Option<u64>,
}

/// The oracle's findings over every key of one workload.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OracleResult {
    pub keys_checked: u64,
    pub lost: u64,
    pub unexplained: u64,
    /// Keys holding a failed or unknown write (it committed without the client hearing so).
    pub unacknowledged_stored: u64,
    /// The first lost writes (at most 20).
    pub lost_examples: Vec<LostWrite>,
    pub unexplained_examples: Vec<String>,
}

/// Judges every key of `finished` given what a node stores (`stored[client][slot]`).
pub fn judge(finished: &Finished, stored: &[Vec<Stored>]) -> OracleResult {
    let keys_per_client = finished.spec.keys_per_client();
    let mut result = OracleResult::default();
    for (client, log) in finished.clients.iter().enumerate() {
        for slot in 0..keys_per_client {
            let value = stored.get(client).and_then(|s| s.get(slot as usize)).cloned().unwrap_or(Stored::Missing);
            result.keys_checked += 1;
            let key = || key_name(finished.run, client as u32, slot);
            match judge_key(&log.attempts, keys_per_client, slot, &value) {
                KeyVerdict::Intact => {}
                KeyVerdict::UnacknowledgedStored { .. } => result.unacknowledged_stored += 1,
                KeyVerdict::Lost { last_acknowledged, stored } => {
                    result.lost += 1;
                    if result.lost_examples.len() < 20 {
                        result.lost_examples.push(LostWrite {
                            key: key(),
                            last_acknowledged_seq: last_acknowledged,
                            stored_seq: stored,
                        });
                    }
                }
                KeyVerdict::Unexplained { stored } => {
                    result.unexplained += 1;
                    if result.unexplained_examples.len() < 20 {
                        result.unexplained_examples.push(format!("{}: {stored}", key()));
                    }
                }
            }
        }
    }
    result
}

/// Reads every key of `finished` from the data port at `endpoint`: `stored[client][slot]`.
pub async fn read_back(endpoint: &DataEndpoint, finished: &Finished) -> std::io::Result<Vec<Vec<Stored>>> {
    let mut conn = endpoint.connect(Duration::from_secs(5)).await?;
    let keys_per_client = finished.spec.keys_per_client();
    let mut all = Vec::with_capacity(finished.clients.len());
    for client in 0..finished.clients.len() as u32 {
        let mut values = Vec::with_capacity(keys_per_client as usize);
        let slots: Vec<u64> = (0..keys_per_client).collect();
        for batch in slots.chunks(READ_BATCH) {
            let requests: Vec<Frame> = batch
                .iter()
                .map(|&slot| {
                    Frame::array(vec![
                        Frame::bulk(Bytes::from_static(b"GET")),
                        Frame::bulk(Bytes::from(key_name(finished.run, client, slot).into_bytes())),
                    ])
                })
                .collect();
            let read = async {
                conn.send(&requests).await?;
                let mut replies = Vec::with_capacity(batch.len());
                for _ in batch {
                    replies.push(conn.read_frame().await?);
                }
                Ok::<_, std::io::Error>(replies)
            };
            let replies = tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "reading the keys back"))??;
            for reply in replies {
                values.push(match reply {
                    Frame::Bulk(None) => Stored::Missing,
                    Frame::Bulk(Some(bytes)) => match parse_value(client, &bytes) {
                        Some(seq) => Stored::Seq(seq),
                        None => Stored::Unparsable(String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).into()),
                    },
                    Frame::Error(e) => {
                        return Err(std::io::Error::other(format!("GET answered an error: {e}")));
                    }
                    other => Stored::Unparsable(format!("{other:?}")),
                });
            }
        }
        all.push(values);
    }
    Ok(all)
}

/// One interval with no acknowledgement while writes were attempted; ms since the drill started.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OutageWindow {
    pub start_ms: f64,
    pub end_ms: f64,
    /// The workload stopped before an acknowledgement closed the window.
    pub open_at_stop: bool,
}

impl OutageWindow {
    pub fn ms(&self) -> f64 {
        self.end_ms - self.start_ms
    }
}

/// Outage windows of one workload longer than `threshold`.
pub fn outages(finished: &Finished, threshold: Duration) -> Vec<OutageWindow> {
    let mut acks: Vec<f64> = Vec::new();
    let mut tries: Vec<f64> = Vec::new();
    for log in &finished.clients {
        for a in &log.attempts {
            tries.push(a.start_ms);
            if a.outcome == Outcome::Acknowledged {
                acks.push(a.end_ms);
            }
        }
        tries.extend_from_slice(&log.connect_errors);
    }
    windows(finished.started_ms, finished.stopped_ms, acks, tries, threshold.as_secs_f64() * 1000.0)
}

/// The pure part of [`outages`]: gaps between `start`, the acknowledgements and `stop` that are
/// longer than `threshold_ms` and hold at least one attempt.
pub fn windows(start: f64, stop: f64, mut acks: Vec<f64>, mut tries: Vec<f64>, threshold_ms: f64) -> Vec<OutageWindow> {
    acks.sort_by(f64::total_cmp);
    tries.sort_by(f64::total_cmp);
    let attempted = |from: f64, to: f64| {
        let i = tries.partition_point(|&t| t <= from);
        tries.get(i).is_some_and(|&t| t < to)
    };
    let mut out = Vec::new();
    let round = |ms: f64| (ms * 10.0).round() / 10.0;
    let mut push = |from: f64, to: f64, open_at_stop| {
        out.push(OutageWindow { start_ms: round(from), end_ms: round(to), open_at_stop });
    };
    let mut previous = start;
    for &ack in &acks {
        if ack - previous > threshold_ms && attempted(previous, ack) {
            push(previous, ack, false);
        }
        previous = previous.max(ack);
    }
    if stop - previous > threshold_ms && attempted(previous, stop) {
        push(previous, stop, true);
    }
    out
}

/// Totals over one workload's attempts.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    pub attempted: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub unknown: u64,
    pub connect_errors: u64,
}

/// Writer handoffs the clients can prove: a write acknowledged by one node *sent* after another
/// node's acknowledgement had *arrived* happened after it in real time. Scanning the
/// acknowledgements in arrival order, each such change of node is one handoff; a change the
/// clients cannot order (the two requests overlapped) is not counted, so every counted handoff
/// is real. With at most one writer per epoch and epochs rising, `n` handoffs need at least `n`
/// epoch changes: more handoffs than epoch changes means two nodes acknowledged writes in one
/// epoch (or an old epoch's primary after a newer one), the split brain the witness prevents.
/// Acknowledgements through a proxy (`u8::MAX`: node unknown) are left out.
pub fn writer_handoffs(finished: &[Finished]) -> (u64, u64) {
    let mut acks: Vec<&Attempt> = finished
        .iter()
        .flat_map(|f| f.clients.iter().flat_map(|c| c.attempts.iter()))
        .filter(|a| a.outcome == Outcome::Acknowledged && a.node != u8::MAX)
        .collect();
    acks.sort_by(|a, b| a.end_ms.total_cmp(&b.end_ms));
    let mut writer: Option<(u8, f64)> = None;
    let mut handoffs = 0;
    for a in &acks {
        writer = match writer {
            None => Some((a.node, a.end_ms)),
            Some((node, last)) if node == a.node => Some((node, last.max(a.end_ms))),
            Some((_, last)) if a.start_ms > last => {
                handoffs += 1;
                Some((a.node, a.end_ms))
            }
            unordered => unordered,
        };
    }
    (handoffs, acks.len() as u64)
}

/// The first write acknowledged by a node other than `node` that ended after `after_ms` (ms
/// since the drill started): when the clients saw a new primary take writes after a kill.
pub fn first_ack_elsewhere(finished: &[Finished], node: u8, after_ms: f64) -> Option<f64> {
    finished
        .iter()
        .flat_map(|f| f.clients.iter().flat_map(|c| c.attempts.iter()))
        .filter(|a| a.outcome == Outcome::Acknowledged && a.node != node && a.node != u8::MAX && a.end_ms > after_ms)
        .map(|a| a.end_ms)
        .min_by(f64::total_cmp)
}

pub fn counts(finished: &Finished) -> Counts {
    let mut c = Counts::default();
    for log in &finished.clients {
        c.connect_errors += log.connect_errors.len() as u64;
        for a in &log.attempts {
            c.attempted += 1;
            match a.outcome {
                Outcome::Acknowledged => c.acknowledged += 1,
                Outcome::Failed => c.failed += 1,
                Outcome::Unknown => c.unknown += 1,
            }
        }
    }
    c
}

/// Error replies seen, most frequent first is not tracked: the distinct first few per client.
pub fn error_samples(finished: &Finished) -> Vec<String> {
    let mut seen: HashMap<String, ()> = HashMap::new();
    let mut out = Vec::new();
    for log in &finished.clients {
        for sample in &log.error_samples {
            if seen.insert(sample.clone(), ()).is_none() && out.len() < 10 {
                out.push(sample.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(outcome: Outcome) -> Attempt {
        Attempt { start_ms: 0.0, end_ms: 0.0, outcome, node: 0 }
    }

    use Outcome::{Acknowledged as A, Failed as F, Unknown as U};

    #[test]
    fn values_round_trip() {
        let v = value_text(3, 42, 20);
        assert_eq!(v.len(), 20);
        assert_eq!(parse_value(3, &v), Some(42));
        assert_eq!(parse_value(4, &v), None, "another client's value");
        assert_eq!(parse_value(3, b"c3:s12"), None);
        assert_eq!(parse_value(3, &value_text(3, 7, 1)), Some(7), "values are never cut below their header");
        assert_eq!(key_name(1, 2, 3), "drill:c2:k3");
        assert_eq!(key_name(2, 2, 3), "drill:w2:c2:k3");
    }

    #[test]
    fn the_oracle_finds_lost_acknowledged_writes() {
        // Two keys (slots 0 and 1): seqs 0, 2, 4 go to slot 0; seqs 1, 3, 5 to slot 1.
        let log: Vec<Attempt> = [A, A, A, F, U, A].into_iter().map(attempt).collect();
        // Slot 0: last acknowledged is seq 2; seq 4 is unknown.
        assert_eq!(judge_key(&log, 2, 0, &Stored::Seq(2)), KeyVerdict::Intact);
        assert_eq!(
            judge_key(&log, 2, 0, &Stored::Seq(4)),
            KeyVerdict::UnacknowledgedStored { seq: 4, outcome: U },
            "an unknown write may have committed"
        );
        assert_eq!(judge_key(&log, 2, 0, &Stored::Seq(0)), KeyVerdict::Lost { last_acknowledged: 2, stored: Some(0) });
        assert_eq!(judge_key(&log, 2, 0, &Stored::Missing), KeyVerdict::Lost { last_acknowledged: 2, stored: None });
        // Slot 1: last acknowledged is seq 5 (seq 3 failed before it).
        assert_eq!(judge_key(&log, 2, 1, &Stored::Seq(5)), KeyVerdict::Intact);
        assert_eq!(judge_key(&log, 2, 1, &Stored::Seq(3)), KeyVerdict::Lost { last_acknowledged: 5, stored: Some(3) });
        // Never written by this client to this key, or past the last attempt.
        assert!(matches!(judge_key(&log, 2, 1, &Stored::Seq(2)), KeyVerdict::Unexplained { .. }));
        assert!(matches!(judge_key(&log, 2, 0, &Stored::Seq(8)), KeyVerdict::Unexplained { .. }));
        assert!(matches!(judge_key(&log, 2, 0, &Stored::Unparsable("zz".into())), KeyVerdict::Unexplained { .. }));
    }

    #[test]
    fn keys_without_acknowledged_writes() {
        let log: Vec<Attempt> = [F, U].into_iter().map(attempt).collect();
        assert_eq!(judge_key(&log, 4, 0, &Stored::Missing), KeyVerdict::Intact, "a failed write may not commit");
        assert_eq!(judge_key(&log, 4, 0, &Stored::Seq(0)), KeyVerdict::UnacknowledgedStored { seq: 0, outcome: F });
        assert_eq!(judge_key(&log, 4, 3, &Stored::Missing), KeyVerdict::Intact, "never written");
        assert_eq!(judge_key(&[], 4, 0, &Stored::Missing), KeyVerdict::Intact);
    }

    #[test]
    fn judge_counts_over_clients() {
        let spec = WorkloadSpec {
            clients: 2,
            rate: 10.0,
            keys: 4,
            value_size: 16,
            request_timeout: Duration::from_secs(1),
            outage_threshold: None,
            connect: crate::drill::playbook::Connect::Direct,
        };
        let log =
            |o: &[Outcome]| ClientLog { attempts: o.iter().copied().map(attempt).collect(), ..Default::default() };
        let finished =
            Finished { spec, run: 1, started_ms: 0.0, stopped_ms: 10.0, clients: vec![log(&[A, A, A]), log(&[A, U])] };
        let stored = vec![vec![Stored::Seq(2), Stored::Missing], vec![Stored::Seq(0), Stored::Seq(1)]];
        let result = judge(&finished, &stored);
        assert_eq!((result.keys_checked, result.lost, result.unacknowledged_stored, result.unexplained), (4, 1, 1, 0));
        assert_eq!(result.lost_examples[0].key, "drill:c0:k1");
    }

    #[test]
    fn outage_windows_need_a_long_gap_with_attempts() {
        let acks = vec![10.0, 20.0, 30.0, 500.0, 510.0];
        let tries = vec![10.0, 20.0, 30.0, 100.0, 200.0, 500.0, 510.0, 600.0, 700.0];
        let w = windows(0.0, 1000.0, acks.clone(), tries, 100.0);
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!((w[0].start_ms, w[0].end_ms, w[0].open_at_stop), (30.0, 500.0, false));
        assert_eq!((w[1].start_ms, w[1].end_ms, w[1].open_at_stop), (510.0, 1000.0, true));
        // No attempts in the gap (e.g. nothing was being written): no outage.
        let w = windows(0.0, 1000.0, acks, vec![10.0, 20.0, 30.0, 500.0, 510.0], 100.0);
        // (An attempt that ends in the acknowledgement closing a gap does not count as inside it.)
        assert!(w.is_empty(), "{w:?}");
    }
}
