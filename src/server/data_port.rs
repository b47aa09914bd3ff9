//! The data port: a TCP server speaking RESP2 (RESP3 after `HELLO 3`; optionally inside TLS),
//! one task per client, commands handed to a backend; each connection's own state (name,
//! protocol, `MULTI` queue, watch) lives in its [`Session`], its authentication here.
//!
//! ## Per connection
//! Read → decode every whole request in the buffer ([`RequestDecoder`], which goes on where the
//! last read stopped: each byte is parsed once) → execute them in order → write all their replies
//! together → read again. So a pipelining client (`redis-benchmark -P 16`) gets its sixteen
//! replies in one segment, and replies always come back in request order.
//!
//! ## Who may talk ([`super::auth`])
//! With `[clients] password_file` or `users_file` set, a connection starts unauthenticated:
//! every command but `AUTH`, `HELLO` and `QUIT` answers `-NOAUTH Authentication required.` A
//! wrong password answers `-WRONGPASS …`, is logged once per source per minute, and slows the
//! source's next attempts down ([`super::throttle::AuthThrottle`]). A read-only user's writes
//! answer `-NOPERM …`. With `[clients] tls = true` every connection is TLS from its first byte;
//! a handshake not done within [`TLS_HANDSHAKE_TIMEOUT`] closes it.
//!
//! ## Bounds
//! - Connections: a semaphore of [`Limits::max_connections`] permits. One more is answered
//!   `-ERR max number of clients reached` (a non-blocking write on the fresh socket) and dropped;
//!   no task is spawned for it.
//! - Read buffer: at most one partial request ([`Limits::max_request_bytes`]) plus one read;
//!   room is made as bytes arrive (at most doubling what has arrived), never by what a request
//!   declares.
//! - Replies: a reply larger than [`Limits::max_reply_bytes`] (`client_output_buffer_limit`) is
//!   replaced by an error naming the limit before it is encoded; replies are written whenever
//!   [`FLUSH_REPLY_BYTES`] have piled up, and large values are written from the value itself, not
//!   copied into the output.
//! - All connections together: partial requests and unwritten replies beyond a small allowance
//!   each are reserved from [`Limits::max_client_memory`] ([`super::memory`]). A reply that does
//!   not fit answers `-OOM …`; a request that does not fit closes its connection with an error.
//! - Time: a connection with no request and no progress writing its replies for
//!   [`Limits::idle_timeout`] is closed, which also reclaims half-sent requests.
//! - After a protocol error: the reply is sent, the write side closed, and what the client is
//!   still sending is discarded for at most [`LINGER_AFTER_ERROR`] / [`LINGER_DISCARD_BYTES`],
//!   so that closing with unread bytes does not turn into a TCP reset that destroys the reply.
//!   Protocol errors and wrong passwords are logged at most once per source per minute
//!   ([`super::throttle::LogThrottle`]), with the count of those left out.
//!
//! ## Shutdown
//! When the `shutdown` future completes the listener is dropped (no new clients), every
//! connection is told, and `serve` returns once all have ended. A connection ends at its next
//! wait for bytes: requests already read are executed and answered first. A client that does
//! not read its replies holds shutdown up for at most [`SHUTDOWN_WRITE_GRACE`]. The backend's own
//! waits (sync level, `WAIT`) must be bounded by the backend.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::auth::{Rights, Users, DEFAULT_USER};
use super::memory::{out_of_memory, reply_too_large, ClientMemory, Reservation};
use super::session::{Outcome, Session};
use super::throttle::{AuthThrottle, AuthVerdict, LogThrottle};
use crate::kv::watch::{Registry, Watcher};
use crate::resp::{
    encode_into, encoded_len, Command, ConnectionCommand, Frame, Limits, Protocol, ProtocolError, Request,
    RequestDecoder,
};

/// Bytes asked of the socket per read.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Replies buffered within one batch before they are written out early.
pub const FLUSH_REPLY_BYTES: usize = 256 * 1024;

/// Bulk strings of at least this size are written from the value itself instead of being copied
/// into the output buffer.
pub const ZERO_COPY_BYTES: usize = 64 * 1024;

/// Replies are written in pieces of at most this size, each within the idle timeout: a client
/// that reads slowly but steadily is not cut off, one that stopped reading is.
pub const WRITE_PIECE_BYTES: usize = 1024 * 1024;

/// How long a TLS client may take for its handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection keeps discarding input after a protocol error before it closes.
pub const LINGER_AFTER_ERROR: Duration = Duration::from_secs(2);

/// How much input a connection discards after a protocol error before it closes.
pub const LINGER_DISCARD_BYTES: usize = 16 * 1024 * 1024;

/// How long a reply write may take once shutdown has begun.
pub const SHUTDOWN_WRITE_GRACE: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (out of file descriptors, say) so the loop does not spin.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

const MAX_CLIENTS_REPLY: &[u8] = b"-ERR max number of clients reached\r\n";
const NOAUTH: &str = "NOAUTH Authentication required.";
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

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
/// `SET`'s `expire` is a time to live the primary turns into a deadline when it commits. A
/// command that gathers many values should bound its reply while building it
/// ([`super::memory::ReplyBudget`]); the connection refuses any reply over the limit anyway.
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

/// Who may connect and how: TLS, users, and the memory shared by every connection.
#[derive(Clone)]
pub struct ServeOptions {
    pub limits: Limits,
    /// `Some`: every connection is TLS ([`crate::tls::data_server_config`]).
    pub tls: Option<TlsAcceptor>,
    /// `Some`: clients must `AUTH` first.
    pub users: Option<Arc<Users>>,
    /// The budget of every connection's buffers; share it with the backend's [`super::memory::ReplyBudget`]s.
    pub memory: Arc<ClientMemory>,
}

impl ServeOptions {
    /// Plain TCP, no authentication, a budget of `limits.max_client_memory`.
    pub fn plain(limits: Limits) -> ServeOptions {
        ServeOptions { limits, tls: None, users: None, memory: ClientMemory::new(limits.max_client_memory) }
    }
}

/// What every connection shares.
struct Shared {
    limits: Limits,
    users: Option<Arc<Users>>,
    memory: Arc<ClientMemory>,
    auth: AuthThrottle,
    log: LogThrottle,
}

/// Serves the data port on `listener`, plain and without authentication, until `shutdown`
/// completes; see [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    backend: Arc<impl DataBackend>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_with(listener, backend, ServeOptions::plain(limits), shutdown).await
}

/// Serves the data port on `listener` until `shutdown` completes, then waits for every
/// connection to finish (see the module docs). Errors of single connections and of `accept` are
/// logged, not returned; today it always returns `Ok`.
pub async fn serve_with(
    listener: TcpListener,
    backend: Arc<impl DataBackend>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let limits = options.limits;
    let permits = Arc::new(Semaphore::new(limits.max_connections.min(Semaphore::MAX_PERMITS)));
    let shared = Arc::new(Shared {
        limits,
        users: options.users,
        memory: options.memory,
        auth: AuthThrottle::default(),
        log: LogThrottle::default(),
    });
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
                        // Replies are written whole, one batch at a time; Nagle would only delay them.
                        if let Err(error) = stream.set_nodelay(true) {
                            tracing::debug!(%peer, %error, "data port: could not set TCP_NODELAY");
                        }
                        let (backend, shared, stop, tls) =
                            (Arc::clone(&backend), Arc::clone(&shared), stop.clone(), options.tls.clone());
                        connections.spawn(async move {
                            match tls {
                                None => Connection::new(stream, peer, backend, shared, stop).run().await,
                                Some(acceptor) => accept_tls(acceptor, stream, peer, backend, shared, stop).await,
                            }
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        refuse(stream, peer, limits.max_connections, !refusing, options.tls.is_some());
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

/// Runs the TLS handshake of a fresh connection within [`TLS_HANDSHAKE_TIMEOUT`], then serves it.
async fn accept_tls<B: DataBackend>(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    backend: Arc<B>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let handshake = tokio::select! {
        biased;
        _ = stop.wait_for(|stop| *stop) => return,
        handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => handshake,
    };
    let reason = match handshake {
        Ok(Ok(tls)) => return Connection::new(tls, peer, backend, shared, stop).run().await,
        Ok(Err(error)) => format!("TLS handshake failed: {error}"),
        Err(_) => format!("TLS handshake not done within {}", humantime::format_duration(TLS_HANDSHAKE_TIMEOUT)),
    };
    if let Some(suppressed) = shared.log.admit(peer.ip(), &reason, std::time::Instant::now()) {
        tracing::warn!(%peer, suppressed, "data port: {reason}; closed (one line per source and kind per minute)");
    }
}

fn log_ended(ended: Result<(), tokio::task::JoinError>) {
    if let Err(error) = ended {
        tracing::error!(%error, "data port: a connection task failed");
    }
}

/// Turns away a client over the connection limit without spawning anything for it.
fn refuse(stream: TcpStream, peer: SocketAddr, limit: usize, first_of_a_run: bool, tls: bool) {
    if first_of_a_run {
        tracing::warn!(%peer, limit, "data port: max_connections reached; refusing clients");
    } else {
        tracing::debug!(%peer, limit, "data port: max_connections reached; refusing a client");
    }
    // A TLS client could not read a plain reply; it sees the connection close.
    if !tls {
        // A fresh socket's send buffer is empty, so this short write completes or fails at once.
        let _ = stream.try_write(MAX_CLIENTS_REPLY);
    }
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

/// Encoded replies not yet written: small ones copied into `tail`, large values kept as they
/// are, in order (`chunks` first, then `tail`).
#[derive(Default)]
struct Output {
    chunks: VecDeque<Bytes>,
    chunk_bytes: usize,
    tail: Vec<u8>,
}

impl Output {
    fn len(&self) -> usize {
        self.chunk_bytes + self.tail.len()
    }

    fn push(&mut self, reply: Frame, protocol: Protocol) {
        let (chunks, chunk_bytes) = (&mut self.chunks, &mut self.chunk_bytes);
        encode_into(reply, protocol, &mut self.tail, ZERO_COPY_BYTES, &mut |before, data| {
            if !before.is_empty() {
                *chunk_bytes += before.len();
                chunks.push_back(Bytes::from(std::mem::take(before)));
            }
            *chunk_bytes += data.len();
            chunks.push_back(data);
        });
    }
}

/// Where a connection is with authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Access {
    /// `AUTH` is required and has not succeeded yet.
    Anonymous,
    /// Authenticated as `user` (or nobody needs to be: the default user with read-write rights).
    User { name: Bytes, rights: Rights },
}

struct Connection<B, S> {
    stream: S,
    peer: SocketAddr,
    backend: Arc<B>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    input: BytesMut,
    decoder: RequestDecoder,
    output: Output,
    /// What the partial request holds of `max_client_memory`.
    input_reserved: Reservation,
    /// What the unwritten replies hold of it.
    output_reserved: Reservation,
    access: Access,
    /// Name, protocol, transaction and watch of this client.
    session: Session,
    /// The last time a request arrived or a reply was written: the idle timeout counts from it.
    last_activity: Instant,
    /// See [`DataBackend::hand_off`].
    hand_off: Option<watch::Receiver<u64>>,
}

impl<B: DataBackend, S: AsyncRead + AsyncWrite + Unpin> Connection<B, S> {
    fn new(stream: S, peer: SocketAddr, backend: Arc<B>, shared: Arc<Shared>, stop: watch::Receiver<bool>) -> Self {
        let access = match shared.users {
            Some(_) => Access::Anonymous,
            None => Access::User { name: Bytes::from_static(DEFAULT_USER.as_bytes()), rights: Rights::ReadWrite },
        };
        let hand_off = backend.hand_off();
        Connection {
            hand_off,
            stream,
            peer,
            backend,
            decoder: RequestDecoder::new(shared.limits),
            input_reserved: Reservation::new(&shared.memory),
            output_reserved: Reservation::new(&shared.memory),
            shared,
            stop,
            input: BytesMut::with_capacity(READ_CHUNK_BYTES),
            output: Output::default(),
            access,
            session: Session::new(peer),
            last_activity: Instant::now(),
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
        let idle_limit = self.shared.limits.idle_timeout;
        // One timer for the connection, moved only when it fires early: arming a timer per
        // request would cost a timer-wheel insert and removal for every request.
        let idle = tokio::time::sleep(idle_limit.unwrap_or(Duration::from_secs(3600)));
        tokio::pin!(idle);
        loop {
            let next = self.answer_buffered().await?;
            self.write().await?;
            match next {
                Next::Read => {}
                Next::Close => return self.stream.shutdown().await,
                Next::CloseAfterError => return self.linger().await,
            }
            // Room for the rest of a large value as it arrives, at most doubling what is here.
            let wanted = self.decoder.bytes_wanted(self.input.len()).min(self.input.len().max(READ_CHUNK_BYTES));
            self.input.reserve(wanted.max(READ_CHUNK_BYTES));
            let read = loop {
                tokio::select! {
                    biased;
                    _ = self.stop.wait_for(|stop| *stop) => return Ok(()),
                    () = handed_off(&mut self.hand_off) => return Ok(()),
                    read = self.stream.read_buf(&mut self.input) => break read?,
                    () = &mut idle, if idle_limit.is_some() => {}
                }
                // The timer fired: idle for real, or activity since it was set moves it on.
                let quiet_until = self.last_activity + idle_limit.unwrap_or_default();
                if Instant::now() >= quiet_until {
                    tracing::debug!(peer = %self.peer, "data port: idle for client_idle_timeout; closing");
                    return self.stream.shutdown().await;
                }
                idle.as_mut().reset(quiet_until);
            };
            if read == 0 {
                // The client hung up; a partial request left in the buffer dies with it.
                return Ok(());
            }
            self.last_activity = Instant::now();
        }
    }

    /// Executes every whole request in the input buffer, in order, appending the replies.
    async fn answer_buffered(&mut self) -> io::Result<Next> {
        loop {
            let arguments = match self.decoder.decode(&mut self.input) {
                Ok(Some(arguments)) => arguments,
                Ok(None) => return Ok(self.account_input()),
                Err(error) => return Ok(self.protocol_error(error)),
            };
            if arguments.is_empty() {
                continue;
            }
            let outcome = match self.refusal(&arguments) {
                Some(refusal) => Outcome::Reply(refusal),
                None => self.handle(Request::parse(&arguments)).await,
            };
            match outcome {
                Outcome::Reply(reply) => self.push_reply(reply),
                Outcome::Close(reply) => {
                    self.push_reply(reply);
                    return Ok(Next::Close);
                }
            }
            if self.output.len() >= FLUSH_REPLY_BYTES {
                self.write().await?;
            }
        }
    }

    /// Answers one request of an allowed client: authentication here, the rest in the session.
    async fn handle(&mut self, request: Result<Request, crate::resp::CommandError>) -> Outcome {
        match request {
            Ok(Request::Connection(ConnectionCommand::Auth { username, password })) => {
                Outcome::Reply(self.authenticate(username, password).await)
            }
            // Redis checks the version before the credentials: HELLO 4 AUTH … is -NOPROTO.
            Ok(Request::Connection(ConnectionCommand::Hello { protocol, auth, name }))
                if protocol.is_none_or(|version| version == 2 || version == 3) =>
            {
                if let Some((username, password)) = auth {
                    let answer = self.authenticate(Some(username), password).await;
                    if matches!(answer, Frame::Error(_)) {
                        return Outcome::Reply(answer);
                    }
                }
                if self.access == Access::Anonymous {
                    return Outcome::Reply(Frame::error(
                        "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
                    ));
                }
                let hello = ConnectionCommand::Hello { protocol, auth: None, name };
                self.session.handle(&*self.backend, Ok(Request::Connection(hello))).await
            }
            Ok(Request::Data(command)) if self.forbidden(&command).is_some() => {
                Outcome::Reply(self.forbidden(&command).unwrap_or_else(Frame::null))
            }
            request => self.session.handle(&*self.backend, request).await,
        }
    }

    /// Counts the partial request against `max_client_memory`; a request that does not fit
    /// closes the connection (its bytes cannot be kept, and the stream cannot skip them).
    fn account_input(&mut self) -> Next {
        // Capacity, not length: the buffer grows by doubling, and what it took is what it holds.
        let held = self.input.capacity() + self.decoder.held_bytes();
        match self.input_reserved.cover(held) {
            Ok(()) => Next::Read,
            Err(over) => {
                self.log_throttled(
                    "memory",
                    &format!("a request of {held}+ bytes does not fit; closing the connection: {over}"),
                );
                let refusal = format!(
                    "ERR {over}: a request still arriving cannot be held; closing the connection (retry later)"
                );
                self.output.push(Frame::Error(refusal), self.session.protocol);
                Next::CloseAfterError
            }
        }
    }

    /// Appends `reply` to the output, or the error that replaces it when it is too large for
    /// the client's output limit or for the shared budget.
    fn push_reply(&mut self, reply: Frame) {
        let limits = &self.shared.limits;
        let size = encoded_len(&reply);
        let reply = if size > limits.max_reply_bytes {
            reply_too_large(Some(size), limits.max_reply_bytes)
        } else {
            match self.output_reserved.cover(self.output.len() + size) {
                Ok(()) => reply,
                Err(over) => out_of_memory(&over),
            }
        };
        self.output.push(reply, self.session.protocol);
    }

    /// The answer to a request the connection may not make yet, if any: before `AUTH`,
    /// everything but `AUTH`, `HELLO` and `QUIT` (looked at by name only, as Redis does).
    fn refusal(&self, arguments: &[Bytes]) -> Option<Frame> {
        if self.access != Access::Anonymous {
            return None;
        }
        let name = arguments.first().map(|name| name.to_ascii_uppercase()).unwrap_or_default();
        match name.as_slice() {
            b"AUTH" | b"HELLO" | b"QUIT" => None,
            _ => Some(Frame::error(NOAUTH)),
        }
    }

    /// `-NOPERM` for a write by a read-only user.
    fn forbidden(&self, command: &Command) -> Option<Frame> {
        match &self.access {
            Access::User { name, rights: Rights::ReadOnly } if command.is_write() => Some(Frame::Error(format!(
                "NOPERM User {} has no permissions to run the '{}' command",
                String::from_utf8_lossy(name),
                command.name()
            ))),
            _ => None,
        }
    }

    /// `AUTH [username] password`, paced by the source's earlier failures.
    async fn authenticate(&mut self, username: Option<Bytes>, password: Bytes) -> Frame {
        let Some(users) = self.shared.users.clone() else {
            return match username {
                None => Frame::error(
                    "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
                ),
                // Redis's default user without a password takes any.
                Some(name) if name == DEFAULT_USER.as_bytes() => Frame::ok(),
                Some(_) => Frame::error(WRONGPASS),
            };
        };
        let source = self.peer.ip();
        match self.shared.auth.attempt(source, std::time::Instant::now()) {
            AuthVerdict::Now => {}
            AuthVerdict::At(when) => tokio::time::sleep_until(Instant::from_std(when)).await,
            AuthVerdict::Refuse(after) => {
                self.log_throttled("auth", "AUTH refused unchecked: too many wrong passwords from this address");
                return Frame::Error(format!(
                    "WRONGPASS too many wrong passwords from {source}; try again in {} s",
                    after.as_secs().max(1)
                ));
            }
        }
        match users.check(username.as_deref(), &password) {
            Some(rights) => {
                let name = username.unwrap_or_else(|| Bytes::from_static(DEFAULT_USER.as_bytes()));
                self.access = Access::User { name, rights };
                Frame::ok()
            }
            None => {
                self.shared.auth.failed(source, std::time::Instant::now());
                let user = username.as_deref().map_or_else(|| DEFAULT_USER.into(), String::from_utf8_lossy);
                self.log_throttled("auth", &format!("wrong password for user {user:?}"));
                Frame::error(WRONGPASS)
            }
        }
    }

    /// A WARN line about this client, at most once per source and `kind` per minute.
    fn log_throttled(&self, kind: &str, what: &str) {
        if let Some(suppressed) = self.shared.log.admit(self.peer.ip(), kind, std::time::Instant::now()) {
            tracing::warn!(peer = %self.peer, suppressed, "data port: {what} (one line per source and kind per minute)");
        }
    }

    fn protocol_error(&mut self, error: ProtocolError) -> Next {
        self.log_throttled("protocol", &format!("protocol error: {error}; closing the connection"));
        self.output.push(Frame::Error(format!("ERR Protocol error: {error}")), self.session.protocol);
        Next::CloseAfterError
    }

    /// Writes and clears the output, a piece at a time: a piece that makes no progress for the
    /// idle timeout closes the connection, and once shutdown has begun a client that does not
    /// read gets [`SHUTDOWN_WRITE_GRACE`] in all.
    async fn write(&mut self) -> io::Result<()> {
        if self.output.len() == 0 {
            return Ok(());
        }
        let output = std::mem::take(&mut self.output);
        let mut stop = self.stop.clone();
        let deadline = async move {
            let _ = stop.wait_for(|stop| *stop).await;
            tokio::time::sleep(SHUTDOWN_WRITE_GRACE).await;
        };
        tokio::pin!(deadline);
        let idle = self.shared.limits.idle_timeout;
        let pieces = output.chunks.iter().map(|chunk| &chunk[..]).chain(std::iter::once(&output.tail[..]));
        let mut written = Ok(());
        'pieces: for chunk in pieces {
            for piece in chunk.chunks(WRITE_PIECE_BYTES) {
                let write = async {
                    match idle {
                        Some(idle) => {
                            tokio::time::timeout(idle, self.stream.write_all(piece)).await.unwrap_or_else(|_| {
                                Err(io::Error::new(
                                    io::ErrorKind::TimedOut,
                                    "client read none of its replies for client_idle_timeout",
                                ))
                            })
                        }
                        None => self.stream.write_all(piece).await,
                    }
                };
                written = tokio::select! {
                    written = write => written,
                    () = &mut deadline => Err(io::Error::new(io::ErrorKind::TimedOut, "client did not read its replies during shutdown")),
                };
                if written.is_err() {
                    break 'pieces;
                }
            }
        }
        if written.is_ok() {
            // TLS keeps what the socket did not take yet; plain TCP has nothing to flush.
            written = self.stream.flush().await;
        }
        drop(output);
        let _ = self.output_reserved.cover(0);
        self.last_activity = Instant::now();
        written
    }

    /// After a protocol error: half-close, then discard input until the client hangs up or a
    /// linger bound is hit, so the error reply is not lost to a TCP reset.
    async fn linger(&mut self) -> io::Result<()> {
        self.stream.shutdown().await?;
        // Nothing read from here on is kept.
        self.input = BytesMut::new();
        let _ = self.input_reserved.cover(0);
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
