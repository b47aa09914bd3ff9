//! The metrics endpoint: Prometheus text exposition of one node on its optional `metrics`
//! address (`[nodes.NAME] metrics = "IP:port"`), plain HTTP/1.1 served with hyper.
//!
//! ## Job
//! `GET /metrics` answers `200` with `text/plain; version=0.0.4`: the node's role, epoch,
//! positions, lag, journal sizes, incidents, replication sessions and a commit-latency histogram
//! per sync level — every family documented in `docs/operations.md` ("Metrics"). Any other path
//! answers `404`, another method on `/metrics` `405`. [`Counters`] holds what only this module
//! needs counted (commit latencies, follower sessions); everything else is read where it is kept.
//!
//! ## Invariants
//! - A scrape never waits on sled, on a journal's state lock, on a commit, or on any lock held
//!   across I/O: it reads watch channels, the store's published position, each journal's
//!   published [`crate::storage::journal::JournalFootprint`], the incident table (whose lock is never held
//!   across I/O) and atomics. The one lock held across I/O that it would need, the node's
//!   metadata (saved under its lock), is only *tried*: when busy, the last epoch read is shown.
//! - It only reads: serving metrics changes nothing in the node, so a scraper cannot disturb it.
//! - Bounded: at most [`MAX_CONNECTIONS`] connections at once (one more is closed at once), one
//!   request per connection (no keep-alive), each connection done within [`CONNECTION_DEADLINE`].
//! - Stops with the node: on the shutdown signal the listener closes and open connections are
//!   dropped (a scrape cut short is simply retried by the scraper).
//!
//! ## Caveats
//! - On a primary, `hotpair_lsn` is the last LSN in its journals, read without the pipeline's
//!   lock: it equals `status`'s `lsn` whenever no commit is half-way through its append.
//! - The commit histogram counts acknowledged writes only, under the sync level the pair file
//!   sets (a commit acknowledged while degraded, `on_peer_loss = degrade-after`, counts too).

use std::convert::Infallible;
use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, TryLockError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::Node;
use crate::config::SyncLevel;
use crate::storage::journal::{Journal, JournalFootprint};
use crate::storage::meta::Role;
use crate::Error;

/// The one path served.
pub const METRICS_PATH: &str = "/metrics";
/// The content type of the Prometheus text format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Connections served at once; one more is closed without an answer (a scraper needs one).
pub const MAX_CONNECTIONS: usize = 16;
/// Longest a connection may live: request headers, rendering and writing the answer.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// Longest wait for a request's headers once a connection is open.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (out of file descriptors, say) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Upper bounds of the commit-latency buckets, in seconds; a `+Inf` bucket follows. From half a
/// millisecond (an `async` commit on a fast disk) to the default `sync_timeout` of 5 s.
pub const COMMIT_BUCKETS: [f64; 13] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Every role, for the one-hot `hotpair_role` family (keep in step with [`Role`]).
const ROLES: [Role; 5] = [Role::Primary, Role::Backup, Role::Draining, Role::Fenced, Role::Rejoining];

/// Counts kept only for metrics, updated where the events happen (lock-free).
pub struct Counters {
    /// One histogram per sync level, indexed by `SyncLevel as usize`.
    commit: [Histogram; SyncLevel::ALL.len()],
    connect_attempts: AtomicU64,
    sessions: AtomicU64,
    /// Expired keys this node deleted as primary (active expiry), since it started.
    expired_keys: AtomicU64,
    /// The epoch last read from the metadata, shown while the metadata lock is busy.
    epoch: AtomicU64,
}

impl Counters {
    pub fn new(epoch: u64) -> Counters {
        Counters {
            commit: std::array::from_fn(|_| Histogram::default()),
            connect_attempts: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            expired_keys: AtomicU64::new(0),
            epoch: AtomicU64::new(epoch),
        }
    }

    /// A write acknowledged at `level`, `elapsed` after it was submitted to the pipeline.
    pub fn observe_commit(&self, level: SyncLevel, elapsed: Duration) {
        self.commit[level as usize].observe(elapsed);
    }

    /// The follower is about to try a session with the primary.
    pub fn note_connect_attempt(&self) {
        self.connect_attempts.fetch_add(1, Ordering::Relaxed);
    }

    /// The primary welcomed the follower: a replication session is up.
    pub fn note_session_established(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
    }

    /// Active expiry deleted `count` expired keys.
    pub fn note_expired(&self, count: u64) {
        self.expired_keys.fetch_add(count, Ordering::Relaxed);
    }

    pub fn expired_keys(&self) -> u64 {
        self.expired_keys.load(Ordering::Relaxed)
    }
}

/// A Prometheus histogram on atomics: per-bucket counts (not cumulative) and the sum.
struct Histogram {
    /// `COMMIT_BUCKETS.len()` bounded buckets, then the `+Inf` one.
    buckets: [AtomicU64; COMMIT_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum_nanos: AtomicU64::new(0) }
    }
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = COMMIT_BUCKETS.iter().position(|&bound| seconds <= bound).unwrap_or(COMMIT_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket (the last is `+Inf`, the count) and the sum in seconds.
    /// `_count` is taken from the buckets, so it always equals the `+Inf` bucket even while
    /// commits are being observed during the read.
    fn snapshot(&self) -> (Vec<u64>, f64) {
        let mut running = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|bucket| {
                running += bucket.load(Ordering::Relaxed);
                running
            })
            .collect();
        (cumulative, self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9)
    }
}

/// Serves the endpoint on `listener` until the node shuts down.
pub async fn serve(node: Arc<Node>, listener: TcpListener) -> Result<(), Error> {
    let mut shutdown = node.shutdown.subscribe();
    let mut connections = JoinSet::new();
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "metrics: serving GET {METRICS_PATH}");
    }
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            Some(_) = connections.join_next() => continue,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            // Over the bound the socket is dropped: the scraper sees a closed connection.
            Ok((stream, _)) if connections.len() >= MAX_CONNECTIONS => drop(stream),
            Ok((stream, _)) => {
                connections.spawn(connection(node.clone(), stream));
            }
            Err(error) => {
                tracing::warn!(%error, "metrics: accept failed; retrying shortly");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
    // A scrape in flight is cut short: it reads nothing that needs finishing.
    connections.shutdown().await;
    Ok(())
}

/// One connection, one request.
async fn connection(node: Arc<Node>, stream: TcpStream) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let response = respond(&node, &request);
        async move { Ok::<_, Infallible>(response) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(false).timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let served = builder.serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(CONNECTION_DEADLINE, served).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "metrics: connection ended with an error"),
        Err(_) => tracing::debug!("metrics: connection dropped after {CONNECTION_DEADLINE:?}"),
    }
}

/// The answer to one request: the exposition, 404 or 405.
fn respond(node: &Node, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != METRICS_PATH {
        return plain(StatusCode::NOT_FOUND, format!("not found; metrics are at {METRICS_PATH}\n"));
    }
    if request.method() != Method::GET {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n".into());
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(render(node))));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
    response
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The whole exposition for `node`.
pub fn render(node: &Node) -> String {
    let mut out = Exposition { text: String::new(), node: escape(node.name()) };
    role_and_epoch(&mut out, node);
    positions(&mut out, node);
    journals(&mut out, node);
    peer(&mut out, node);
    incidents(&mut out, node);
    commits(&mut out, node);
    out.text
}

fn role_and_epoch(out: &mut Exposition, node: &Node) {
    let current = node.role();
    out.family("hotpair_role", "gauge", "1 for the role this node has now, 0 for the others.");
    for role in ROLES {
        out.sample("hotpair_role", &[("role", role.name())], u8::from(role == current));
    }
    out.gauge("hotpair_epoch", "The highest epoch this node knows (raised at every promotion).", epoch(node));
}

/// The node's epoch from its metadata, or the last one read while the metadata is being saved
/// (its lock is held across the file write and fsync).
fn epoch(node: &Node) -> u64 {
    let epoch = match node.meta.try_lock() {
        Ok(meta) => meta.epoch,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner().epoch,
        Err(TryLockError::WouldBlock) => return node.metrics.epoch.load(Ordering::Relaxed),
    };
    node.metrics.epoch.store(epoch, Ordering::Relaxed);
    epoch
}

/// Positions and lag as `status` computes them (`status.rs`), from lock-free sources.
struct Positions {
    lsn: u64,
    received_lsn: u64,
    applied_lsn: u64,
    lag_records: u64,
    lag_ms: u64,
}

fn node_positions(node: &Node) -> Positions {
    let peer = node.peer.borrow().clone();
    let applied_lsn = node.store.position().applied_lsn;
    let (local, remote) = (node.local.footprint().last_lsn, node.remote.footprint().last_lsn);
    let (lsn, received_lsn, lag_records) = match node.role() {
        Role::Primary | Role::Draining => {
            // What the pipeline's next LSN follows: the last in either journal or the store.
            let last = local.max(remote).max(applied_lsn);
            (last, local, last.saturating_sub(peer.applied_lsn))
        }
        _ => (applied_lsn, remote.max(applied_lsn), peer.peer_last_lsn.saturating_sub(applied_lsn)),
    };
    // The commit-time lookup takes the pipeline's short frames lock, never its writer lock.
    let lag_ms = super::status::lag_ms(node, node.role(), &peer, lag_records, crate::clock::now_ms());
    Positions { lsn, received_lsn, applied_lsn, lag_records, lag_ms }
}

fn positions(out: &mut Exposition, node: &Node) {
    let p = node_positions(node);
    out.gauge("hotpair_lsn", "Last LSN committed (primary) or applied (backup): `lsn` in status.", p.lsn);
    out.gauge(
        "hotpair_received_lsn",
        "Last LSN this node holds in its journal: `received_lsn` in status.",
        p.received_lsn,
    );
    out.gauge("hotpair_applied_lsn", "Last LSN applied to this node's store.", p.applied_lsn);
    out.gauge("hotpair_lag_records", "Records the backup has yet to apply: `lag_records` in status.", p.lag_records);
    let lag_seconds = p.lag_ms as f64 / 1000.0;
    out.gauge("hotpair_lag_seconds", "Replication lag in time (`lag_ms` in status, in seconds).", lag_seconds);
}

fn journals(out: &mut Exposition, node: &Node) {
    // One look at each journal, so that the four families describe the same moment.
    let [local, remote] = [&node.local, &node.remote].map(|journal| (journal.footprint(), durable_lsn(journal)));
    let per_kind = |out: &mut Exposition, name: &str, help: &str, read: fn(&(JournalFootprint, u64)) -> u64| {
        out.family(name, "gauge", help);
        out.sample(name, &[("kind", "local")], read(&local));
        out.sample(name, &[("kind", "remote")], read(&remote));
    };
    per_kind(out, "hotpair_journal_last_lsn", "LSN of the last record appended to the journal (0: empty).", |j| {
        j.0.last_lsn
    });
    per_kind(out, "hotpair_journal_durable_lsn", "Every record up to this LSN is fsynced in the journal.", |j| j.1);
    per_kind(
        out,
        "hotpair_journal_bytes",
        "Bytes in the journal's live segment files (archived ones not counted).",
        |j| j.0.bytes,
    );
    per_kind(out, "hotpair_journal_segments", "Live segment files of the journal.", |j| j.0.segments);
}

/// The journal's durable LSN from its watch channel (no lock the flusher holds).
fn durable_lsn(journal: &Journal) -> u64 {
    *journal.subscribe_durable().borrow()
}

fn peer(out: &mut Exposition, node: &Node) {
    let peer = node.peer.borrow().clone();
    out.gauge("hotpair_peer_connected", "1 while a replication session with the peer is up.", u8::from(peer.connected));
    out.family("hotpair_peer_lsn", "gauge", "The peer's acknowledged positions, as a primary last heard them.");
    for (ack, lsn) in [("received", peer.received_lsn), ("durable", peer.durable_lsn), ("applied", peer.applied_lsn)] {
        out.sample("hotpair_peer_lsn", &[("ack", ack)], lsn);
    }
    out.counter("hotpair_heartbeat_gaps_total", "Heartbeats from the peer that never arrived.", peer.heartbeat_gaps);
    let counters = &node.metrics;
    out.counter(
        "hotpair_replication_connect_attempts_total",
        "Sessions the follower tried to open with the primary (first connections and reconnects).",
        counters.connect_attempts.load(Ordering::Relaxed),
    );
    out.counter(
        "hotpair_replication_sessions_total",
        "Sessions the primary accepted from this follower; more than one means reconnects.",
        counters.sessions.load(Ordering::Relaxed),
    );
    out.counter(
        "hotpair_expired_keys_total",
        "Expired keys this node deleted through its journal as primary (active expiry).",
        counters.expired_keys(),
    );
}

fn incidents(out: &mut Exposition, node: &Node) {
    let open = node.incidents.open();
    out.family("hotpair_incidents_open", "gauge", "Open incidents by kind (kinds never raised are absent).");
    let raised = node.incidents.raised();
    for kind in raised.keys() {
        let count = open.iter().filter(|event| event.kind == *kind).count();
        out.sample("hotpair_incidents_open", &[("kind", &kind_name(kind))], count);
    }
    out.family("hotpair_incidents_raised_total", "counter", "Incidents opened since the node started, by kind.");
    for (kind, count) in &raised {
        out.sample("hotpair_incidents_raised_total", &[("kind", &kind_name(kind))], count);
    }
    out.counter(
        "hotpair_incident_events_dropped_total",
        "Incident events the notifier could not keep up with (`incidents_dropped` in status).",
        node.incidents.dropped(),
    );
}

/// The kind as the incident log spells it (`peer-lost`, …).
fn kind_name(kind: &crate::node::incident::Kind) -> String {
    match serde_json::to_value(kind) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{kind:?}"),
    }
}

fn commits(out: &mut Exposition, node: &Node) {
    let name = "hotpair_commit_seconds";
    out.family(name, "histogram", "Time from submitting a write to acknowledging it, per sync level.");
    for level in SyncLevel::ALL {
        let (cumulative, sum) = node.metrics.commit[level as usize].snapshot();
        let bounds = COMMIT_BUCKETS.iter().map(|bound| bound.to_string()).chain(["+Inf".to_string()]);
        for (bound, count) in bounds.zip(&cumulative) {
            out.sample(&format!("{name}_bucket"), &[("sync", level.name()), ("le", &bound)], count);
        }
        out.sample(&format!("{name}_sum"), &[("sync", level.name())], sum);
        out.sample(&format!("{name}_count"), &[("sync", level.name())], cumulative.last().copied().unwrap_or(0));
    }
}

/// Text being written in the Prometheus text format; every sample carries `node="…"`.
struct Exposition {
    text: String,
    /// The node's name, escaped for a label value.
    node: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        let _ = write!(self.text, "{name}{{node=\"{}\"", self.node);
        for (label, value) in labels {
            let _ = write!(self.text, ",{label}=\"{}\"", escape(value));
        }
        let _ = writeln!(self.text, "}} {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl Display) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }

    fn counter(&mut self, name: &str, help: &str, value: impl Display) {
        self.family(name, "counter", help);
        self.sample(name, &[], value);
    }
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_is_the_inf_bucket() {
        let histogram = Histogram::default();
        for millis in [0, 1, 3, 3, 700, 9000] {
            histogram.observe(Duration::from_millis(millis));
        }
        let (cumulative, sum) = histogram.snapshot();
        assert_eq!(cumulative.len(), COMMIT_BUCKETS.len() + 1);
        assert_eq!(cumulative[0], 1, "0 ms lands in the first bucket");
        assert_eq!(cumulative[1], 2, "1 ms is <= 0.001 s");
        assert_eq!(cumulative[3], 4, "3 ms is <= 0.005 s");
        assert!(cumulative.windows(2).all(|w| w[0] <= w[1]), "{cumulative:?}");
        assert_eq!(cumulative[COMMIT_BUCKETS.len() - 1], 5, "9 s is past the last bound");
        assert_eq!(cumulative.last(), Some(&6));
        assert!((sum - 9.707).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn samples_carry_the_node_and_escaped_labels() {
        let mut out = Exposition { text: String::new(), node: escape("a") };
        out.family("hotpair_x", "gauge", "An example.");
        out.sample("hotpair_x", &[("kind", "say \"hi\"\\\n")], 1.5);
        assert_eq!(
            out.text,
            "# HELP hotpair_x An example.\n# TYPE hotpair_x gauge\nhotpair_x{node=\"a\",kind=\"say \\\"hi\\\"\\\\\\n\"} 1.5\n"
        );
    }
}
