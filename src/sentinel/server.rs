//! The Sentinel port's server: RESP2 connections, commands answered from the node's current
//! view ([`super::answers`]), and publish/subscribe for the events ([`super::events`]).
//!
//! ## Per connection
//! Read → answer every whole request in the buffer → write the replies → read again, as the
//! data port does. Once a connection subscribed to a channel or pattern it only takes
//! (P)SUBSCRIBE, (P)UNSUBSCRIBE, PING and QUIT, as Redis does, and events are written to it as
//! they are published.
//!
//! ## Bounds
//! - Connections: the pair's `[limits] max_connections`; one more is answered
//!   `-ERR max number of clients reached` and closed.
//! - Requests: [`REQUEST_LIMITS`] (Sentinel requests are a few short words).
//! - Channels and patterns per connection: [`MAX_SUBSCRIPTIONS`].
//! - A subscriber that falls [`EVENT_BACKLOG`] events behind is closed (it missed events; a
//!   client reconnects and asks again), so a subscriber that stops reading holds no memory.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, Semaphore};

use super::events::{Event, Hub, VIEW_CHANNEL};
use crate::node::Node;
use crate::resp::{encode, parse, request_arguments, Frame, Limits};
use crate::server::auth::Users;

/// Limits on one request to the Sentinel port.
pub const REQUEST_LIMITS: Limits = Limits {
    max_value_bytes: 64 * 1024,
    max_args: 1024,
    max_inline_bytes: 64 * 1024,
    max_request_bytes: 1024 * 1024,
    max_connections: 1024,
    // The fields below belong to the data port's loop (`server::data_port`); this port's replies
    // are small and its subscribers sit idle by design.
    max_reply_bytes: 1024 * 1024,
    max_client_memory: 64 * 1024 * 1024,
    idle_timeout: None,
};

/// Most channels plus patterns one connection may subscribe to.
pub const MAX_SUBSCRIPTIONS: usize = 1024;

/// Events a subscriber may fall behind before it is closed.
pub const EVENT_BACKLOG: usize = 1024;

const READ_CHUNK_BYTES: usize = 4096;

/// Accepts Sentinel clients until the node shuts down.
pub async fn serve(node: Arc<Node>, listener: TcpListener, hub: Arc<Hub>, users: Option<Arc<Users>>) {
    let permits = Arc::new(Semaphore::new(node.pair().limits.max_connections.min(Semaphore::MAX_PERMITS)));
    let mut shutdown = node.shutdown.subscribe();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let mut accept_failed = false;
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            Some(_) = connections.join_next() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match Arc::clone(&permits).try_acquire_owned() {
                    Ok(permit) => {
                        let connection = Connection::new(stream, node.clone(), hub.clone(), users.clone());
                        connections.spawn(async move {
                            if let Err(error) = connection.run().await {
                                tracing::debug!(%peer, %error, "sentinel port: connection ended");
                            }
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "sentinel port: max_connections reached; refusing a client");
                        let _ = stream.try_write(b"-ERR max number of clients reached\r\n");
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "sentinel port: accept failed; retrying shortly");
                    accept_failed = true;
                }
            },
        }
        if accept_failed {
            // Out of file descriptors, say: do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

struct Connection {
    stream: TcpStream,
    /// The data port's users: an `AUTH` sent here is checked against them (never required).
    users: Option<Arc<Users>>,
    node: Arc<Node>,
    hub: Arc<Hub>,
    /// The event stream, while subscribed to anything.
    events: Option<broadcast::Receiver<Event>>,
    /// The sequence number of the view this connection was sent when it subscribed to the view
    /// channel: older view events in its stream are stale.
    view_sent: u64,
    input: BytesMut,
    out: Vec<u8>,
    channels: BTreeSet<Bytes>,
    patterns: BTreeSet<Bytes>,
    closing: bool,
}

impl Connection {
    fn new(stream: TcpStream, node: Arc<Node>, hub: Arc<Hub>, users: Option<Arc<Users>>) -> Connection {
        let _ = stream.set_nodelay(true);
        Connection {
            stream,
            users,
            node,
            hub,
            events: None,
            view_sent: 0,
            input: BytesMut::with_capacity(READ_CHUNK_BYTES),
            out: Vec::new(),
            channels: BTreeSet::new(),
            patterns: BTreeSet::new(),
            closing: false,
        }
    }

    fn subscribed(&self) -> bool {
        !self.channels.is_empty() || !self.patterns.is_empty()
    }

    async fn run(mut self) -> std::io::Result<()> {
        let mut shutdown = self.node.shutdown.subscribe();
        loop {
            self.answer_buffered();
            if !self.out.is_empty() {
                self.stream.write_all(&self.out).await?;
                self.out.clear();
            }
            if self.closing {
                return self.stream.shutdown().await;
            }
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
                event = next_event(&mut self.events) => match event {
                    Ok(event) => self.deliver(&event),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "sentinel port: a subscriber fell behind; closing it");
                        return Ok(());
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                read = self.stream.read_buf(&mut self.input) => {
                    if read? == 0 {
                        return Ok(());
                    }
                }
            }
            if !self.subscribed() {
                self.events = None;
            }
        }
    }

    fn answer_buffered(&mut self) {
        while !self.closing {
            let (frame, used) = match parse(&self.input, &REQUEST_LIMITS) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return,
                Err(error) => {
                    encode(&Frame::error(format!("ERR Protocol error: {error}")), &mut self.out);
                    self.closing = true;
                    return;
                }
            };
            self.input.advance(used);
            let arguments = match request_arguments(frame) {
                Ok(arguments) if arguments.is_empty() => continue,
                Ok(arguments) => arguments,
                Err(error) => {
                    encode(&Frame::error(format!("ERR Protocol error: {error}")), &mut self.out);
                    self.closing = true;
                    return;
                }
            };
            self.answer(&arguments);
        }
    }

    fn reply(&mut self, frame: Frame) {
        encode(&frame, &mut self.out);
    }

    fn answer(&mut self, arguments: &[Bytes]) {
        let name = arguments[0].to_ascii_uppercase();
        let args = &arguments[1..];
        let pubsub = matches!(
            name.as_slice(),
            b"SUBSCRIBE" | b"PSUBSCRIBE" | b"UNSUBSCRIBE" | b"PUNSUBSCRIBE" | b"PING" | b"QUIT" | b"RESET"
        );
        if self.subscribed() && !pubsub {
            let shown = String::from_utf8_lossy(&arguments[0]).to_lowercase();
            return self.reply(Frame::error(format!(
                "ERR Can't execute '{shown}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
            )));
        }
        match name.as_slice() {
            b"PING" => {
                let reply = match (self.subscribed(), args.first()) {
                    (false, None) => Frame::simple("PONG"),
                    (false, Some(message)) => Frame::Bulk(Some(message.clone())),
                    (true, message) => {
                        Frame::array(vec![Frame::bulk("pong"), Frame::Bulk(Some(message.cloned().unwrap_or_default()))])
                    }
                };
                self.reply(reply)
            }
            b"ECHO" => match args {
                [message] => self.reply(Frame::Bulk(Some(message.clone()))),
                _ => self.reply(wrong_arity("echo")),
            },
            b"QUIT" => {
                self.reply(Frame::ok());
                self.closing = true;
            }
            b"RESET" => {
                self.channels.clear();
                self.patterns.clear();
                self.reply(Frame::simple("RESET"))
            }
            b"CLIENT" => self.client(args),
            // RESP3 clients ask with HELLO first and fall back to RESP2 when refused.
            b"HELLO" => {
                self.reply(Frame::error("NOPROTO hotpair's Sentinel port speaks RESP2 only; connect without HELLO"))
            }
            b"AUTH" => self.reply(auth_reply(self.users.as_deref(), args)),
            b"COMMAND" => self.reply(Frame::array(Vec::new())),
            b"INFO" => {
                let info = self.snapshot().info();
                self.reply(Frame::Bulk(Some(info)))
            }
            b"ROLE" => {
                let role = self.snapshot().role();
                self.reply(role)
            }
            b"SENTINEL" => {
                let reply = self.sentinel(args);
                self.reply(reply)
            }
            b"SUBSCRIBE" | b"PSUBSCRIBE" => self.subscribe(name.as_slice() == b"PSUBSCRIBE", args),
            b"UNSUBSCRIBE" | b"PUNSUBSCRIBE" => self.unsubscribe(name.as_slice() == b"PUNSUBSCRIBE", args),
            _ => {
                let shown = String::from_utf8_lossy(&arguments[0]).chars().take(128).collect::<String>();
                self.reply(Frame::error(format!("ERR unknown command '{shown}'")))
            }
        }
    }

    fn client(&mut self, args: &[Bytes]) {
        let Some(sub) = args.first() else { return self.reply(wrong_arity("client")) };
        let reply = match sub.to_ascii_uppercase().as_slice() {
            b"SETNAME" | b"SETINFO" => Frame::ok(),
            b"GETNAME" => Frame::null(),
            b"ID" => Frame::Integer(1),
            _ => Frame::error(format!("ERR unknown subcommand '{}' for 'client'", String::from_utf8_lossy(sub))),
        };
        self.reply(reply)
    }

    fn snapshot(&self) -> super::answers::Snapshot<'_> {
        super::snapshot(&self.node)
    }

    fn sentinel(&self, args: &[Bytes]) -> Frame {
        let Some(sub) = args.first() else { return wrong_arity("sentinel") };
        let name = args.get(1).map(Bytes::as_ref);
        let snapshot = self.snapshot();
        let upper = sub.to_ascii_uppercase();
        let needs_name = |answer: &dyn Fn(&[u8]) -> Frame| match (name, args.len()) {
            (Some(name), 2) => answer(name),
            _ => Frame::error(format!(
                "ERR wrong number of arguments for 'sentinel|{}' command",
                String::from_utf8_lossy(sub).to_lowercase()
            )),
        };
        match upper.as_slice() {
            b"GET-MASTER-ADDR-BY-NAME" => needs_name(&|n| snapshot.master_address(n)),
            b"MASTERS" => snapshot.masters(),
            b"MASTER" => needs_name(&|n| snapshot.master(n)),
            b"SLAVES" | b"REPLICAS" => needs_name(&|n| snapshot.replicas(n)),
            b"SENTINELS" => needs_name(&|n| snapshot.sentinels(n)),
            b"CKQUORUM" => needs_name(&|n| snapshot.check_quorum(n)),
            b"MYID" => snapshot.my_id(),
            b"FAILOVER" | b"RESET" | b"SET" | b"MONITOR" | b"REMOVE" | b"CONFIG" | b"FLUSHCONFIG" => {
                Frame::error(format!(
                    "ERR SENTINEL {} is not supported: hotpair's roles change with its own commands (hotpair switchover, hotpair failover)",
                    String::from_utf8_lossy(sub).to_lowercase()
                ))
            }
            _ => Frame::error(format!("ERR Unknown sentinel subcommand '{}'", String::from_utf8_lossy(sub))),
        }
    }

    fn subscribe(&mut self, pattern: bool, targets: &[Bytes]) {
        let kind = if pattern { "psubscribe" } else { "subscribe" };
        if targets.is_empty() {
            return self.reply(wrong_arity(kind));
        }
        if self.events.is_none() {
            self.events = Some(self.hub.events.subscribe());
        }
        for target in targets {
            if self.channels.len() + self.patterns.len() >= MAX_SUBSCRIPTIONS {
                self.reply(Frame::error(format!(
                    "ERR at most {MAX_SUBSCRIPTIONS} channels and patterns per connection"
                )));
                continue;
            }
            let set = if pattern { &mut self.patterns } else { &mut self.channels };
            set.insert(target.clone());
            let count = (self.channels.len() + self.patterns.len()) as i64;
            self.reply(Frame::array(vec![Frame::bulk(kind), Frame::Bulk(Some(target.clone())), Frame::Integer(count)]));
            // The view channel opens with the current view, so that a subscriber needs no
            // separate question (and misses no change between the two).
            let view_channel = Bytes::from_static(VIEW_CHANNEL.as_bytes());
            let wants_view = if pattern {
                crate::server::data_port::glob_matches(target, VIEW_CHANNEL.as_bytes())
            } else {
                *target == view_channel
            };
            if wants_view {
                // Read after the stream was joined: every newer view is in the stream.
                let event = self.hub.view.borrow().clone();
                self.view_sent = event.seq;
                self.deliver_to(&event, pattern.then_some(target));
            }
        }
    }

    fn unsubscribe(&mut self, pattern: bool, targets: &[Bytes]) {
        let kind = if pattern { "punsubscribe" } else { "unsubscribe" };
        let set = if pattern { &mut self.patterns } else { &mut self.channels };
        let leaving: Vec<Bytes> = if targets.is_empty() { set.iter().cloned().collect() } else { targets.to_vec() };
        for target in &leaving {
            set.remove(target);
        }
        if leaving.is_empty() {
            let count = (self.channels.len() + self.patterns.len()) as i64;
            return self.reply(Frame::array(vec![Frame::bulk(kind), Frame::null(), Frame::Integer(count)]));
        }
        for target in leaving {
            let count = (self.channels.len() + self.patterns.len()) as i64;
            self.reply(Frame::array(vec![Frame::bulk(kind), Frame::Bulk(Some(target)), Frame::Integer(count)]));
        }
    }

    /// Writes `event` out for every subscription that matches it.
    fn deliver(&mut self, event: &Event) {
        if event.channel == VIEW_CHANNEL && event.seq <= self.view_sent {
            return;
        }
        if self.channels.contains(event.channel.as_bytes()) {
            self.deliver_to(event, None);
        }
        let matching: Vec<Bytes> = self
            .patterns
            .iter()
            .filter(|p| crate::server::data_port::glob_matches(p, event.channel.as_bytes()))
            .cloned()
            .collect();
        for pattern in matching {
            self.deliver_to(event, Some(&pattern));
        }
    }

    fn deliver_to(&mut self, event: &Event, pattern: Option<&Bytes>) {
        let channel = Frame::bulk(event.channel);
        let message = Frame::bulk(event.message.clone());
        let frame = match pattern {
            None => Frame::array(vec![Frame::bulk("message"), channel, message]),
            Some(pattern) => {
                Frame::array(vec![Frame::bulk("pmessage"), Frame::Bulk(Some(pattern.clone())), channel, message])
            }
        };
        encode(&frame, &mut self.out);
    }
}

/// The next event while subscribed; never, otherwise.
async fn next_event(events: &mut Option<broadcast::Receiver<Event>>) -> Result<Event, broadcast::error::RecvError> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

fn wrong_arity(command: &str) -> Frame {
    Frame::error(format!("ERR wrong number of arguments for '{command}' command"))
}

/// `AUTH`: the Sentinel port has no password yet. When the data port gets one (`[clients]`
/// password), this is where it is checked, so that a client configured with one password for
/// both works.
/// `AUTH [user] password`. Without a password on the data port, Redis's "none configured"
/// error; with one, the same check as the data port's, so a client configured to send the
/// data-port password to its Sentinels works. Nothing here requires it: this port only says
/// where the primary is.
fn auth_reply(users: Option<&Users>, args: &[Bytes]) -> Frame {
    let (user, password) = match args {
        [password] => (None, password),
        [user, password] => (Some(user.as_ref()), password),
        _ => return wrong_arity("auth"),
    };
    match users {
        None => Frame::error(
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        ),
        Some(users) => match users.check(user, password) {
            Some(_) => Frame::Simple("OK".into()),
            None => Frame::error("WRONGPASS invalid username-password pair or user is disabled."),
        },
    }
}
