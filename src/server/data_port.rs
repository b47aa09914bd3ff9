//! The data port: a TCP server speaking RESP2 (RESP3 after `HELLO 3`), one task per client,
//! commands handed to a backend; each connection's own state (name, protocol, `MULTI` queue,
//! watch) lives in its [`Session`].
//!
//! ## Per connection
//! Read → parse every whole request in the buffer → execute them in order → write all their
//! replies with one write → read again. So a pipelining client (`redis-benchmark -P 16`) gets its
//! sixteen replies in one segment, and replies always come back in request order.
//!
//! ## Bounds
//! - Connections: a semaphore of [`Limits::max_connections`] permits. One more is answered
//!   `-ERR max number of clients reached` (a non-blocking write on the fresh socket) and dropped;
//!   no task is spawned for it.
//! - Read buffer: at most one partial request ([`Limits::max_request_bytes`]) plus one read of
//!   [`READ_CHUNK_BYTES`]; [`parse`] refuses a request that would not fit.
//! - Replies: flushed whenever [`FLUSH_REPLY_BYTES`] have piled up within one batch.
//! - After a protocol error: the reply is sent, the write side closed, and what the client is
//!   still sending is discarded for at most [`LINGER_AFTER_ERROR`] / [`LINGER_DISCARD_BYTES`],
//!   so that closing with unread bytes does not turn into a TCP reset that destroys the reply.
//!
//! ## Shutdown
//! When the `shutdown` future completes the listener is dropped (no new clients), every
//! connection is told, and `serve` returns once all have ended. A connection ends at its next
//! wait for bytes: requests already read are executed and answered first. A client that does
//! not read its replies holds shutdown up for at most [`SHUTDOWN_WRITE_GRACE`]. The backend's own
//! waits (sync level, `WAIT`) must be bounded by the backend.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::session::{Outcome, Session};
use crate::resp::{encode, encode_as, parse, request_arguments, Command, Frame, Limits, Request};
use crate::watch::{Registry, Watcher};

/// Bytes asked of the socket per read.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Replies buffered within one batch before they are written out early.
pub const FLUSH_REPLY_BYTES: usize = 256 * 1024;

/// How long a connection keeps discarding input after a protocol error before it closes.
pub const LINGER_AFTER_ERROR: Duration = Duration::from_secs(2);

/// How much input a connection discards after a protocol error before it closes.
pub const LINGER_DISCARD_BYTES: usize = 16 * 1024 * 1024;

/// How long a reply write may take once shutdown has begun.
pub const SHUTDOWN_WRITE_GRACE: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (out of file descriptors, say) so the loop does not spin.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

const MAX_CLIENTS_REPLY: &[u8] = b"-ERR max number of clients reached\r\n";

/// Parameters a `CONFIG GET` can see, with the values `redis-benchmark` and tools expect.
/// Anything else matches nothing (an empty reply), as Redis does for unknown parameters.
const CONFIG_PARAMETERS: &[(&str, &str)] = &[
    // No RDB snapshots: durability comes from the journal.
    ("save", ""),
    // No append-only file either: the journal is hotpair's own.
    ("appendonly", "no"),
    ("databases", "1"),
];

/// What executes commands: the node's commit pipeline, or a map in tests.
///
/// Contract: within one connection, `execute` is called for one command at a time, in request
/// order; different connections call it concurrently. Shutdown waits for calls in flight, so
/// each must end in bounded time (a write by `sync_timeout`, `WAIT` by its own timeout or a cap).
/// The backend gets no connection context: `WAIT` means "everything committed so far", and
/// `SET`'s `expire` is a time to live the primary turns into a deadline when it commits.
pub trait DataBackend: Send + Sync + 'static {
    /// Executes one command; returns the reply. Errors are reply frames (-READONLY, -TRYAGAIN, -ERR …).
    fn execute(&self, command: Command) -> impl Future<Output = Frame> + Send;

    /// Connection hand-off: a watch that moves whenever every client connection should be
    /// closed (the node stopped being the primary), so that pooled clients look for the new
    /// one at once. A connection closes at its next wait for bytes, after answering what it
    /// has read, as at shutdown. `None`: never.
    fn hand_off(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    /// `EXEC`: runs `commands` as one transaction and answers an array of their replies — or
    /// null, running nothing, when `watcher` says a watched key changed; or one error when the
    /// whole transaction is refused. Without an override, the commands run one by one.
    fn execute_transaction(
        &self,
        commands: Vec<Command>,
        watcher: Option<Arc<Watcher>>,
    ) -> impl Future<Output = Frame> + Send {
        async move {
            if watcher.is_some_and(|w| w.is_dirty()) {
                return Frame::Array(None);
            }
            let mut replies = Vec::with_capacity(commands.len());
            for command in commands {
                replies.push(self.execute(command).await);
            }
            Frame::array(replies)
        }
    }

    /// `WATCH keys`: registers `watcher` for them; the registry, so the connection can unwatch
    /// (`None`: this backend does not watch, and `EXEC` is never aborted).
    fn watch(&self, _watcher: &Arc<Watcher>, _keys: &[Bytes]) -> Option<Arc<Registry>> {
        None
    }

    /// The error a write would get right now (`-READONLY` on a backup), if any: a write queued
    /// inside `MULTI` gets it at once and aborts the transaction, as in Redis.
    fn write_refusal(&self) -> Option<Frame> {
        None
    }

    /// `master` or `replica`, for `HELLO`.
    fn role_name(&self) -> &'static str {
        "master"
    }
}

/// Serves the data port on `listener` until `shutdown` completes, then waits for every
/// connection to finish (see the module docs). Errors of single connections and of `accept` are
/// logged, not returned; today it always returns `Ok`.
pub async fn serve(
    listener: TcpListener,
    backend: Arc<impl DataBackend>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.min(Semaphore::MAX_PERMITS)));
    let (stop_sender, stop) = watch::channel(false);
    let mut connections = JoinSet::new();
    // Whether the last client was refused: only the first refusal of a run is a warning, so a
    // connection storm does not become a log storm.
    let mut refusing = false;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(ended) = connections.join_next() => log_ended(ended),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match Arc::clone(&permits).try_acquire_owned() {
                    Ok(permit) => {
                        refusing = false;
                        let connection = Connection::new(stream, peer, Arc::clone(&backend), limits, stop.clone());
                        connections.spawn(async move {
                            connection.run().await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        refuse(stream, peer, limits.max_connections, !refusing);
                        refusing = true;
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "data port: accept failed; retrying shortly");
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    tracing::debug!(connections = connections.len(), "data port: shutting down");
    stop_sender.send_replace(true);
    while let Some(ended) = connections.join_next().await {
        log_ended(ended);
    }
    Ok(())
}

fn log_ended(ended: Result<(), tokio::task::JoinError>) {
    if let Err(error) = ended {
        tracing::error!(%error, "data port: a connection task failed");
    }
}

/// Turns away a client over the connection limit without spawning anything for it.
fn refuse(stream: TcpStream, peer: SocketAddr, limit: usize, first_of_a_run: bool) {
    if first_of_a_run {
        tracing::warn!(%peer, limit, "data port: max_connections reached; refusing clients");
    } else {
        tracing::debug!(%peer, limit, "data port: max_connections reached; refusing a client");
    }
    // A fresh socket's send buffer is empty, so this short write completes or fails at once.
    let _ = stream.try_write(MAX_CLIENTS_REPLY);
}

/// What to do after a batch of requests.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Read,
    /// `QUIT`: close cleanly.
    Close,
    /// Protocol error: close after discarding what the client still sends.
    CloseAfterError,
}

struct Connection<B> {
    stream: TcpStream,
    peer: SocketAddr,
    backend: Arc<B>,
    limits: Limits,
    stop: watch::Receiver<bool>,
    input: BytesMut,
    /// Name, protocol, transaction and watch of this client.
    session: Session,
    /// See [`DataBackend::hand_off`].
    hand_off: Option<watch::Receiver<u64>>,
}

impl<B: DataBackend> Connection<B> {
    fn new(stream: TcpStream, peer: SocketAddr, backend: Arc<B>, limits: Limits, stop: watch::Receiver<bool>) -> Self {
        // Replies are written whole, one batch at a time; Nagle would only delay them.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "data port: could not set TCP_NODELAY");
        }
        let session = Session::new(peer);
        let hand_off = backend.hand_off();
        Connection {
            stream,
            peer,
            backend,
            limits,
            stop,
            input: BytesMut::with_capacity(READ_CHUNK_BYTES),
            session,
            hand_off,
        }
    }

    async fn run(mut self) {
        tracing::debug!(peer = %self.peer, "data port: client connected");
        match self.serve_requests().await {
            Ok(()) => tracing::debug!(peer = %self.peer, "data port: client disconnected"),
            Err(error) => tracing::debug!(peer = %self.peer, %error, "data port: connection ended"),
        }
    }

    async fn serve_requests(&mut self) -> io::Result<()> {
        let mut replies = Vec::new();
        loop {
            let next = self.answer_buffered(&mut replies).await?;
            self.write(&mut replies).await?;
            match next {
                Next::Read => {}
                Next::Close => return self.stream.shutdown().await,
                Next::CloseAfterError => return self.linger().await,
            }
            self.input.reserve(READ_CHUNK_BYTES);
            let read = tokio::select! {
                biased;
                _ = self.stop.wait_for(|stop| *stop) => return Ok(()),
                () = handed_off(&mut self.hand_off) => return Ok(()),
                read = self.stream.read_buf(&mut self.input) => read?,
            };
            if read == 0 {
                // The client hung up; a partial request left in the buffer dies with it.
                return Ok(());
            }
        }
    }

    /// Executes every whole request in the input buffer, in order, appending the replies.
    async fn answer_buffered(&mut self, replies: &mut Vec<u8>) -> io::Result<Next> {
        loop {
            let (frame, used) = match parse(&self.input, &self.limits) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(Next::Read),
                Err(error) => return Ok(self.protocol_error(error, replies)),
            };
            self.input.advance(used);
            let arguments = match request_arguments(frame) {
                Ok(arguments) => arguments,
                Err(error) => return Ok(self.protocol_error(error, replies)),
            };
            if arguments.is_empty() {
                continue;
            }
            match self.session.handle(&*self.backend, Request::parse(&arguments)).await {
                Outcome::Reply(reply) => encode_as(&reply, self.session.protocol, replies),
                Outcome::Close(reply) => {
                    encode_as(&reply, self.session.protocol, replies);
                    return Ok(Next::Close);
                }
            }
            if replies.len() >= FLUSH_REPLY_BYTES {
                self.write(replies).await?;
            }
        }
    }

    fn protocol_error(&self, error: crate::resp::ProtocolError, replies: &mut Vec<u8>) -> Next {
        tracing::debug!(peer = %self.peer, %error, "data port: protocol error; closing the connection");
        encode(&Frame::Error(format!("ERR Protocol error: {error}")), replies);
        Next::CloseAfterError
    }

    /// Writes and clears `replies`. Once shutdown has begun, a client that does not read gets
    /// [`SHUTDOWN_WRITE_GRACE`] before the write is abandoned.
    async fn write(&mut self, replies: &mut Vec<u8>) -> io::Result<()> {
        if replies.is_empty() {
            return Ok(());
        }
        let mut stop = self.stop.clone();
        let deadline = async move {
            let _ = stop.wait_for(|stop| *stop).await;
            tokio::time::sleep(SHUTDOWN_WRITE_GRACE).await;
        };
        let written = tokio::select! {
            written = self.stream.write_all(replies) => written,
            () = deadline => Err(io::Error::new(io::ErrorKind::TimedOut, "client did not read its replies during shutdown")),
        };
        replies.clear();
        written
    }

    /// After a protocol error: half-close, then discard input until the client hangs up or a
    /// linger bound is hit, so the error reply is not lost to a TCP reset.
    async fn linger(&mut self) -> io::Result<()> {
        self.stream.shutdown().await?;
        let mut discarded = 0;
        let mut scratch = vec![0u8; READ_CHUNK_BYTES];
        let drain = async {
            while discarded < LINGER_DISCARD_BYTES {
                match self.stream.read(&mut scratch).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => discarded += read,
                }
            }
        };
        tokio::select! {
            biased;
            _ = self.stop.wait_for(|stop| *stop) => {}
            _ = tokio::time::timeout(LINGER_AFTER_ERROR, drain) => {}
        }
        Ok(())
    }
}

/// Completes when the backend's hand-off watch moves; never without one (or once it is gone).
async fn handed_off(hand_off: &mut Option<watch::Receiver<u64>>) {
    let Some(receiver) = hand_off else { return std::future::pending().await };
    if receiver.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// `CONFIG GET pattern…`: a flat array of name/value pairs for the parameters that match.
pub(super) fn config_get(patterns: &[Bytes]) -> Frame {
    let mut reply = Vec::new();
    for (name, value) in CONFIG_PARAMETERS {
        if patterns.iter().any(|pattern| glob_matches(&pattern.to_ascii_lowercase(), name.as_bytes())) {
            reply.push((Frame::bulk(name.as_bytes()), Frame::bulk(value.as_bytes())));
        }
    }
    Frame::Map(reply)
}

/// Glob matching with `*` and `?`, enough for `CONFIG GET *`. Iterative with one backtrack
/// point, so a pattern of many stars costs O(pattern × text), not exponential time.
pub(crate) fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last star: (pattern index after it, text index it swallowed up to).
    let mut resume: Option<(usize, usize)> = None;
    while let Some(&byte) = text.get(t) {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                resume = Some((p, t));
            }
            Some(&wanted) if wanted == b'?' || wanted == byte => {
                p += 1;
                t += 1;
            }
            _ => match resume {
                Some((after_star, swallowed)) => {
                    p = after_star;
                    t = swallowed + 1;
                    resume = Some((after_star, swallowed + 1));
                }
                None => return false,
            },
        }
    }
    pattern.get(p..).unwrap_or_default().iter().all(|&byte| byte == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_get_answers_what_benchmark_tools_ask() {
        let pair = |name: &str, value: &str| {
            vec![(Frame::bulk(name.as_bytes().to_vec()), Frame::bulk(value.as_bytes().to_vec()))]
        };
        assert_eq!(config_get(&[Bytes::from_static(b"save")]), Frame::Map(pair("save", "")));
        assert_eq!(config_get(&[Bytes::from_static(b"APPENDONLY")]), Frame::Map(pair("appendonly", "no")));
        assert_eq!(config_get(&[Bytes::from_static(b"maxmemory")]), Frame::Map(vec![]));
        let Frame::Map(all) = config_get(&[Bytes::from_static(b"*")]) else { panic!() };
        assert_eq!(all.len(), CONFIG_PARAMETERS.len());
    }

    #[test]
    fn globs_match_as_redis_does() {
        assert!(glob_matches(b"app*", b"appendonly"));
        assert!(glob_matches(b"sa?e", b"save"));
        assert!(!glob_matches(b"sa?e", b"sav"));
        assert!(!glob_matches(b"save", b"saves"));
        assert!(glob_matches(b"*", b""));
        assert!(glob_matches(b"*e*", b"save"));
        let many_stars = [b'*'; 10_000];
        assert!(!glob_matches(&[&many_stars[..], b"x"].concat(), b"appendonly"));
    }
}
