//! One client connection of the proxy: requests forwarded, as the bytes they came in, to the
//! current primary's data port on one upstream connection; replies returned in order.
//!
//! ## Holding, retrying, and when a client gets an error
//! - While the [`Target`] says hold (a switchover drains the primary, or no primary is known),
//!   requests are read and queued, not sent. When a primary is named again they go there, in
//!   order. A request held longer than the hold timeout is answered `-TRYAGAIN` (not executed).
//! - A request answered `-TRYAGAIN` was not executed (a draining or not-yet-confirmed primary
//!   refuses before it commits anything), so it is sent again once the target changes (or
//!   after [`TRYAGAIN_PAUSE`]). Requests pipelined behind it are held back with it and their
//!   replies set aside, so that replies and effects keep their order. Only if one of those
//!   was a write that did execute (the drain ended between the two, by its lease running out)
//!   would the order break: then the client gets the refusals as they were.
//! - The upstream connection ends (the node was demoted and closed its clients, or it
//!   died): requests still unanswered on it are read-only → sent again; anything else → the
//!   client gets `-ERR … outcome unknown` for it (it may or may not have been executed), in its
//!   place in the reply order. The client's connection stays open.
//! - A connection that subscribes (`SUBSCRIBE`, `PSUBSCRIBE`, `MONITOR`) becomes a plain byte
//!   tunnel to the primary of the moment, and is closed when that connection ends.
//! - `MULTI`…`EXEC` is forwarded as it comes and never sent again: an `EXEC` refused with
//!   `-TRYAGAIN` (a drain) reaches the client as it is (nothing executed); if the upstream ends
//!   in the middle, what was in flight gets the outcome-unknown error.
//! - `AUTH`, `HELLO`, `CLIENT SETNAME` and `SELECT` are replayed on every new upstream
//!   connection (`AUTH` first), so a client keeps its credentials, protocol (RESP3 included),
//!   name and database; RESP3 pushes go straight through.
//!
//! ## Bounds
//! [`MAX_QUEUED_BYTES`] of requests read and not yet answered (held, in flight, or part of a
//! request); beyond it the client is not read from (back pressure). A single request larger
//! than that is refused and the connection closed.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::follow::Target;
use super::scan::Scanner;
use super::UpstreamTls;
use crate::resp::{parse, request_arguments, CommandError, Request};
use crate::tls::ClientStream;

/// Bytes of requests a session keeps (held, in flight, or incomplete) before it stops reading.
pub const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;
/// After a `-TRYAGAIN` without news from the nodes, the request is sent again this much later.
pub const TRYAGAIN_PAUSE: Duration = Duration::from_millis(100);
/// After a failed connect to the primary, the next attempt waits this long.
pub const CONNECT_RETRY: Duration = Duration::from_millis(20);
/// Bound on connecting to a primary's data port.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Requests in flight to a node that is no longer the target get this long to be answered
/// before their outcome is called unknown (a paused or partitioned old primary).
pub const ABANDON_AFTER: Duration = Duration::from_secs(2);
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// How a request is treated when it must be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Changes nothing: safe to send again whatever happened to it.
    Read,
    /// Changes data, or not known not to: sent again only after an answer that says it was not
    /// executed (`-TRYAGAIN`).
    Write,
    /// Part of a transaction (`MULTI`, the commands it queues, `EXEC`, `DISCARD`, `WATCH`):
    /// never sent again — its queue lives on one upstream connection.
    Transaction,
    /// `QUIT`: answered by the proxy, which then closes.
    Quit,
    /// Turns the connection into a byte tunnel.
    Tunnel,
}

#[derive(Debug)]
enum Item {
    Request {
        bytes: Bytes,
        kind: Kind,
    },
    /// A reply the proxy makes (an outcome-unknown error, a held request's time-out), written in
    /// its place in the reply order.
    Reply(Bytes),
    /// A request's reply set aside while the requests before it are retried.
    Answered {
        bytes: Bytes,
        kind: Kind,
        reply: Bytes,
    },
    /// The proxy's own request on a new upstream (replaying `CLIENT SETNAME`); its reply is dropped.
    Handshake,
}

impl Item {
    fn size(&self) -> usize {
        match self {
            Item::Request { bytes, .. } | Item::Answered { bytes, .. } => bytes.len(),
            Item::Reply(_) | Item::Handshake => 0,
        }
    }
}

struct Upstream {
    stream: ClientStream,
    data: SocketAddr,
    node: String,
    input: BytesMut,
    scanner: Scanner,
}

pub struct Session {
    client: TcpStream,
    target: watch::Receiver<Target>,
    hold_timeout: Duration,
    upstream: Option<Upstream>,
    input: BytesMut,
    scanner: Scanner,
    /// Read, not yet sent.
    queue: VecDeque<Item>,
    /// Sent (or made), waiting for their turn in the reply order.
    pending: VecDeque<Item>,
    /// Set aside after a `-TRYAGAIN`, in order, until the rest of `pending` is answered.
    retrying: Vec<Item>,
    queued_bytes: usize,
    to_client: Vec<u8>,
    to_upstream: Vec<u8>,
    /// How to reach the data ports when they take TLS only.
    tls: Option<Arc<UpstreamTls>>,
    /// The client's last `AUTH`, `HELLO`, `CLIENT SETNAME` and `SELECT`, replayed on each new
    /// upstream so that it keeps its credentials, protocol, name and database.
    replay: Vec<(&'static str, Bytes)>,
    /// Between `MULTI` and `EXEC`/`DISCARD`, in request order.
    in_multi: bool,
    /// Do not send before this (after a `-TRYAGAIN` or a failed connect) unless the target changes.
    not_before: Option<Instant>,
    held_since: Option<Instant>,
    /// When in-flight requests to a node no longer targeted are given up.
    abandon_at: Option<Instant>,
    closing: bool,
    tunnel: bool,
}

impl Session {
    pub fn new(
        client: TcpStream,
        target: watch::Receiver<Target>,
        hold_timeout: Duration,
        tls: Option<Arc<UpstreamTls>>,
    ) -> Session {
        let _ = client.set_nodelay(true);
        Session {
            client,
            tls,
            target,
            hold_timeout,
            upstream: None,
            input: BytesMut::with_capacity(READ_CHUNK_BYTES),
            scanner: Scanner::new(true),
            queue: VecDeque::new(),
            pending: VecDeque::new(),
            retrying: Vec::new(),
            queued_bytes: 0,
            to_client: Vec::new(),
            to_upstream: Vec::new(),
            replay: Vec::new(),
            in_multi: false,
            not_before: None,
            held_since: None,
            abandon_at: None,
            closing: false,
            tunnel: false,
        }
    }

    /// Serves the client until it leaves (or the proxy stops).
    pub async fn run(mut self) -> std::io::Result<()> {
        loop {
            self.pump().await?;
            if self.tunnel {
                return self.run_tunnel().await;
            }
            if self.closing && self.pending.is_empty() && self.to_client.is_empty() {
                return self.client.shutdown().await;
            }
            let read_client = !self.closing && self.queued_bytes + self.input.len() < MAX_QUEUED_BYTES;
            let wake = [self.not_before, self.held_since.map(|t| t + self.hold_timeout), self.abandon_at]
                .into_iter()
                .flatten()
                .min();
            tokio::select! {
                read = self.client.read_buf(&mut self.input), if read_client => {
                    if read? == 0 {
                        return Ok(());
                    }
                    self.take_requests();
                }
                read = read_upstream(&mut self.upstream) => match read {
                    Ok(0) | Err(_) => self.upstream_lost("the connection to the primary ended"),
                    Ok(_) => self.take_replies(),
                },
                changed = self.target.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    self.not_before = None;
                }
                () = sleep_until(wake) => {}
            }
        }
    }

    /// Sends what can be sent, makes the replies that are due, and writes both ways.
    async fn pump(&mut self) -> std::io::Result<()> {
        let now = Instant::now();
        let target = self.target.borrow_and_update().clone();
        let destination = match &target {
            Target::Primary { node, data, .. } => Some((node.clone(), *data)),
            Target::Hold { .. } => None,
        };
        let in_flight = self.pending.iter().any(|i| matches!(i, Item::Request { .. } | Item::Handshake));
        if let Some(upstream) = &self.upstream {
            if destination.as_ref().map(|d| d.1) == Some(upstream.data) {
                // The target came back to it before it was given up.
                self.abandon_at = None;
            } else {
                if !in_flight && self.retrying.is_empty() {
                    self.upstream = None;
                    self.abandon_at = None;
                } else if self.abandon_at.is_none() {
                    self.abandon_at = Some(now + ABANDON_AFTER);
                }
            }
        }
        if self.abandon_at.is_some_and(|at| now >= at) {
            self.upstream_lost("the old primary did not answer in time after the primary changed");
        }
        let may_send = !self.queue.is_empty() && self.not_before.is_none_or(|at| now >= at);
        if let (true, Some((node, data))) = (may_send, destination) {
            if self.upstream.is_none() {
                self.connect(node, data).await;
            }
            if self.upstream.as_ref().is_some_and(|u| u.data == data) {
                self.send_queued();
            }
        }
        self.time_out_held(now, &target);
        self.release_made_replies();
        if let Some(upstream) = self.upstream.as_mut().filter(|_| !self.to_upstream.is_empty()) {
            if let Err(error) = upstream.stream.write_all(&self.to_upstream).await {
                tracing::debug!(%error, "proxy: writing to the primary failed");
                self.to_upstream.clear();
                self.upstream_lost("the connection to the primary failed");
                self.release_made_replies();
            }
            self.to_upstream.clear();
        }
        if !self.to_client.is_empty() {
            self.client.write_all(&self.to_client).await?;
            self.to_client.clear();
        }
        Ok(())
    }

    async fn connect(&mut self, node: String, data: SocketAddr) {
        match tokio::time::timeout(CONNECT_TIMEOUT, open_upstream(self.tls.as_deref(), &node, data)).await {
            Ok(Ok(stream)) => {
                tracing::debug!(node, %data, "proxy: connected to the primary");
                for (_, request) in &self.replay {
                    self.to_upstream.extend_from_slice(request);
                    self.pending.push_back(Item::Handshake);
                }
                self.upstream =
                    Some(Upstream { stream, data, node, input: BytesMut::new(), scanner: Scanner::new(false) });
            }
            Ok(Err(error)) => {
                tracing::debug!(node, %data, %error, "proxy: cannot connect to the primary; retrying");
                self.not_before = Some(Instant::now() + CONNECT_RETRY);
            }
            Err(_) => self.not_before = Some(Instant::now() + CONNECT_RETRY),
        }
    }

    /// Moves queued items to the upstream (requests) or into the reply order (made replies).
    fn send_queued(&mut self) {
        while let Some(item) = self.queue.pop_front() {
            match item {
                Item::Request { kind: Kind::Quit, bytes } => {
                    // Nothing after QUIT is read or answered, as on Redis.
                    let dropped: usize = self.queue.drain(..).map(|i| i.size()).sum();
                    self.unqueue(bytes.len() + dropped);
                    self.pending.push_back(Item::Reply(Bytes::from_static(b"+OK\r\n")));
                    self.closing = true;
                    return;
                }
                Item::Request { kind: Kind::Tunnel, bytes } if !self.pending.is_empty() => {
                    // Everything before it is answered first: then the bytes just flow.
                    self.queue.push_front(Item::Request { kind: Kind::Tunnel, bytes });
                    return;
                }
                Item::Request { kind: Kind::Tunnel, bytes } => {
                    self.to_upstream.extend_from_slice(&bytes);
                    self.tunnel = true;
                    return;
                }
                Item::Request { ref bytes, .. } => {
                    self.to_upstream.extend_from_slice(bytes);
                    self.pending.push_back(item);
                }
                other => self.pending.push_back(other),
            }
        }
    }

    /// Answers requests held past the hold timeout (they were never sent: not executed).
    fn time_out_held(&mut self, now: Instant, target: &Target) {
        if self.queue.is_empty() {
            self.held_since = None;
            return;
        }
        let since = *self.held_since.get_or_insert(now);
        if now < since + self.hold_timeout {
            return;
        }
        let why = match target {
            Target::Hold { why } => why.clone(),
            Target::Primary { node, data, .. } => format!("{node} at {data} cannot be reached"),
        };
        let error = Bytes::from(format!(
            "-TRYAGAIN hotpair proxy: no primary took this request within {} ({why}); it was not executed\r\n",
            humantime::format_duration(self.hold_timeout)
        ));
        for item in std::mem::take(&mut self.queue) {
            self.unqueue(item.size());
            self.pending.push_back(match item {
                Item::Request { .. } => Item::Reply(error.clone()),
                other => other,
            });
        }
        self.held_since = None;
    }

    /// Writes out the made replies (and set-aside replies) at the head of the reply order.
    fn release_made_replies(&mut self) {
        if !self.retrying.is_empty() {
            return;
        }
        while let Some(item) = self.pending.front() {
            match item {
                Item::Reply(reply) => self.to_client.extend_from_slice(reply),
                _ => break,
            }
            self.pending.pop_front();
        }
    }

    /// Parses whole requests out of the client's bytes into the queue.
    fn take_requests(&mut self) {
        loop {
            match self.scanner.scan(&self.input) {
                Ok(Some(end)) => {
                    let bytes = self.input.split_to(end).freeze();
                    let kind = self.classify(&bytes);
                    self.queued_bytes += bytes.len();
                    self.queue.push_back(Item::Request { bytes, kind });
                }
                Ok(None) if self.input.len() >= MAX_QUEUED_BYTES => {
                    self.refuse(format!("a request larger than the proxy's {MAX_QUEUED_BYTES} bytes"));
                    return;
                }
                Ok(None) => return,
                Err(error) => {
                    self.refuse(error.to_string());
                    return;
                }
            }
        }
    }

    /// A stream the proxy cannot follow: answer in order, then close.
    fn refuse(&mut self, why: String) {
        self.queue.push_back(Item::Reply(Bytes::from(format!("-ERR Protocol error: {why}\r\n"))));
        self.input.clear();
        self.closing = true;
    }

    fn classify(&mut self, bytes: &Bytes) -> Kind {
        let limits = crate::resp::Limits {
            max_value_bytes: usize::MAX,
            max_args: usize::MAX,
            max_request_bytes: usize::MAX,
            ..crate::resp::Limits::default()
        };
        let Ok(Some((frame, _))) = parse(bytes, &limits) else { return Kind::Write };
        let Ok(arguments) = request_arguments(frame) else { return Kind::Write };
        let Some(name) = arguments.first() else { return Kind::Read };
        let upper = name.to_ascii_uppercase();
        let subcommand = arguments.get(1).map(|s| s.to_ascii_uppercase());
        match (upper.as_slice(), subcommand.as_deref()) {
            (b"QUIT", _) => return Kind::Quit,
            (b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" | b"MONITOR", _) => return Kind::Tunnel,
            (b"MULTI", _) => {
                self.in_multi = true;
                return Kind::Transaction;
            }
            (b"EXEC" | b"DISCARD", _) => {
                self.in_multi = false;
                return Kind::Transaction;
            }
            (b"WATCH" | b"UNWATCH", _) => return Kind::Transaction,
            _ if self.in_multi => return Kind::Transaction,
            (b"AUTH", _) => self.remember("AUTH", bytes),
            (b"HELLO", _) => self.remember("HELLO", bytes),
            (b"SELECT", _) => self.remember("SELECT", bytes),
            (b"CLIENT", Some(b"SETNAME")) => self.remember("CLIENT SETNAME", bytes),
            _ => {}
        }
        match Request::parse(&arguments) {
            Ok(Request::Data(command)) if command.is_write() => Kind::Write,
            Ok(_) => Kind::Read,
            // Refused as it is (wrong arity, bad argument): it changes nothing anywhere.
            Err(error) if !matches!(error, CommandError::UnknownCommand { .. }) => Kind::Read,
            Err(_) => Kind::Write,
        }
    }

    /// Keeps the latest request of `what` to replay on a new upstream.
    fn remember(&mut self, what: &'static str, bytes: &Bytes) {
        self.replay.retain(|(kind, _)| *kind != what);
        // AUTH first: on a data port with a password nothing else is answered before it.
        match what {
            "AUTH" => self.replay.insert(0, (what, bytes.clone())),
            _ => self.replay.push((what, bytes.clone())),
        }
    }

    /// Matches whole replies from the upstream with the requests in flight.
    fn take_replies(&mut self) {
        loop {
            let Some(upstream) = self.upstream.as_mut() else { return };
            let end = match upstream.scanner.scan(&upstream.input) {
                Ok(Some(end)) => end,
                Ok(None) => return,
                Err(error) => {
                    let why = format!("the primary's replies cannot be followed: {error}");
                    return self.upstream_lost(&why);
                }
            };
            let reply = upstream.input.split_to(end).freeze();
            if reply.first() == Some(&b'>') {
                // A RESP3 push (client tracking): no request waits for it; straight through.
                self.to_client.extend_from_slice(&reply);
                continue;
            }
            match self.pending.pop_front() {
                Some(Item::Handshake) => {}
                Some(Item::Request { bytes, kind }) => self.answered(bytes, kind, reply),
                other => {
                    // A reply nothing asked for: this stream cannot be trusted any more.
                    if let Some(item) = other {
                        self.pending.push_front(item);
                    }
                    return self.upstream_lost("the primary sent a reply nothing asked for");
                }
            }
            self.release_made_replies();
        }
    }

    fn answered(&mut self, bytes: Bytes, kind: Kind, reply: Bytes) {
        // A transaction's parts are never sent again: EXEC refused as a whole is the client's.
        let refused = reply.starts_with(b"-TRYAGAIN") && kind != Kind::Transaction;
        if refused || (!self.retrying.is_empty() && kind == Kind::Read) {
            // Not executed (or a read, safe to ask again): set aside, sent again later.
            self.retrying.push(Item::Answered { bytes, kind, reply });
            // Made replies behind it keep their place.
            while let Some(Item::Reply(_)) = self.pending.front() {
                let item = self.pending.pop_front().unwrap_or(Item::Handshake);
                self.retrying.push(item);
            }
        } else if !self.retrying.is_empty() {
            // Executed after an earlier request was refused: the order cannot be kept by
            // sending the earlier ones again; the client gets their answers as they were.
            tracing::debug!("proxy: a request executed after a refused one; passing the refusals on");
            for item in std::mem::take(&mut self.retrying) {
                self.unqueue(item.size());
                match item {
                    Item::Answered { reply, .. } | Item::Reply(reply) => self.to_client.extend_from_slice(&reply),
                    Item::Request { .. } | Item::Handshake => {}
                }
            }
            self.unqueue(bytes.len());
            self.to_client.extend_from_slice(&reply);
        } else {
            self.unqueue(bytes.len());
            self.to_client.extend_from_slice(&reply);
        }
        if !self.retrying.is_empty() && !self.pending.iter().any(|i| matches!(i, Item::Request { .. })) {
            self.requeue_retrying();
        }
    }

    /// Requests answered (or dropped) no longer count against [`MAX_QUEUED_BYTES`].
    fn unqueue(&mut self, bytes: usize) {
        self.queued_bytes = self.queued_bytes.saturating_sub(bytes);
    }

    /// Everything set aside goes back to the front of the queue, to be sent once the target
    /// changes or after a pause.
    fn requeue_retrying(&mut self) {
        let items: Vec<Item> = std::mem::take(&mut self.retrying);
        for item in items.into_iter().rev() {
            self.queue.push_front(match item {
                Item::Answered { bytes, kind, .. } => Item::Request { bytes, kind },
                other => other,
            });
        }
        if self.not_before.is_none() {
            self.not_before = Some(Instant::now() + TRYAGAIN_PAUSE);
        }
    }

    /// The upstream is gone: what was in flight is sent again if it was a read (or refused),
    /// and otherwise answered with an outcome-unknown error, in its place.
    fn upstream_lost(&mut self, why: &str) {
        let Some(upstream) = self.upstream.take() else { return };
        self.abandon_at = None;
        let unknown = Bytes::from(format!(
            "-ERR hotpair proxy: {why} ({} at {}) before it answered; the write may or may not have been executed\r\n",
            upstream.node, upstream.data
        ));
        let mut again: Vec<Item> = std::mem::take(&mut self.retrying);
        let mut written = 0;
        for item in std::mem::take(&mut self.pending) {
            match item {
                Item::Request { bytes, kind: Kind::Read } => again.push(Item::Request { bytes, kind: Kind::Read }),
                Item::Request { bytes, .. } => {
                    written += bytes.len();
                    again.push(Item::Reply(unknown.clone()));
                }
                Item::Handshake => {}
                other => again.push(other),
            }
        }
        self.unqueue(written);
        if !again.is_empty() {
            tracing::debug!(items = again.len(), %why, "proxy: upstream lost with requests in flight");
        }
        for item in again.into_iter().rev() {
            self.queue.push_front(match item {
                Item::Answered { bytes, kind, .. } => Item::Request { bytes, kind },
                other => other,
            });
        }
    }

    /// Subscribed: bytes flow both ways until either side closes.
    async fn run_tunnel(mut self) -> std::io::Result<()> {
        let Some(mut upstream) = self.upstream.take() else { return Ok(()) };
        // What the client pipelined behind the subscription goes along, in order.
        for item in std::mem::take(&mut self.queue) {
            if let Item::Request { bytes, .. } = item {
                self.to_upstream.extend_from_slice(&bytes);
            }
        }
        self.to_upstream.extend_from_slice(&self.input.split());
        upstream.stream.write_all(&self.to_upstream).await?;
        self.client.write_all(&upstream.input).await?;
        tokio::io::copy_bidirectional(&mut self.client, &mut upstream.stream).await.map(|_| ())
    }
}

/// A connection to `node`'s data port at `data`: TLS over TCP when the pair's data ports take
/// TLS only, else plain TCP.
async fn open_upstream(tls: Option<&UpstreamTls>, node: &str, data: SocketAddr) -> std::io::Result<ClientStream> {
    let tcp = TcpStream::connect(data).await?;
    let _ = tcp.set_nodelay(true);
    Ok(match tls {
        None => ClientStream::Plain(tcp),
        Some(tls) => ClientStream::Tls(Box::new(tls.connector.connect(tls.server_name(node), tcp).await?)),
    })
}

async fn read_upstream(upstream: &mut Option<Upstream>) -> std::io::Result<usize> {
    match upstream {
        Some(upstream) => {
            upstream.input.reserve(READ_CHUNK_BYTES);
            upstream.stream.read_buf(&mut upstream.input).await
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
