//! The node's side of the data port: each Redis command becomes a read or a transaction
//! through the commit pipeline, and a write is answered only once it reached the pair's sync
//! level.
//!
//! ## Invariants
//! - A write is acknowledged (`+OK`, an integer…) only after its record is durable locally and
//!   the peer reached the configured sync level — or, under `on_peer_loss = degrade-after:<d>`,
//!   after the peer has been gone for `d` (logged loudly; degrading is never silent).
//! - A write that misses its sync level within `sync_timeout` answers an error that says it was
//!   not acknowledged. It is in the primary's journal and may or may not survive a failover.
//! - Writes on a backup answer `-READONLY`, on a node that refuses writes for now (draining,
//!   restarted primary awaiting its peer) `-TRYAGAIN`. Reads are served in every role.
//! - While disk space is below `disk_min_free` a write answers `-ERR disk space low on node …`
//!   before it reaches the pipeline (`super::disk`). `ERR`, not `TRYAGAIN`: it may last long and
//!   needs an admin to look, and every client shows an `ERR` line as it is; the text says that
//!   writes resume by themselves.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::Node;
use crate::config::{PeerLossPolicy, SyncLevel};
use crate::meta::Role;
use crate::pipeline::{CommitError, Txn};
use crate::resp::{self, Command, Frame};
use crate::server::DataBackend;
use crate::value::StoredValue;
use crate::Error;

/// How long `WAIT numreplicas 0` ("forever") waits at most before answering what it has.
const WAIT_FOREVER_CAP: Duration = Duration::from_secs(3600);

pub struct Backend {
    node: Arc<Node>,
    /// Moves when the node stops being the primary (`crate::sentinel::watch_demotions`).
    demotions: tokio::sync::watch::Receiver<u64>,
}

impl DataBackend for Backend {
    fn execute(&self, command: Command) -> impl std::future::Future<Output = Frame> + Send {
        let node = self.node.clone();
        async move { execute(&node, command).await }
    }

    fn hand_off(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        let mut demotions = self.demotions.clone();
        // Only demotions after the connection opened close it.
        demotions.borrow_and_update();
        Some(demotions)
    }
}

/// Serves the data port until the node shuts down.
pub async fn serve(node: Arc<Node>, listener: tokio::net::TcpListener) -> Result<(), Error> {
    let configured = &node.pair.limits;
    let limits = resp::Limits {
        max_value_bytes: configured.max_value_bytes,
        max_args: configured.max_args,
        max_connections: configured.max_connections,
        ..resp::Limits::default()
    };
    let mut shutdown = node.shutdown.subscribe();
    let demotions = crate::sentinel::watch_demotions(&node);
    let backend = Arc::new(Backend { node, demotions });
    crate::server::serve(listener, backend, limits, async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    })
    .await
    .map_err(|source| Error::Io { context: "data port".into(), source })
}

async fn execute(node: &Node, command: Command) -> Frame {
    if command.is_write() {
        return write(node, command).await;
    }
    let now = crate::clock::now_ms();
    match command {
        Command::Get { key } => match read(node, &key, now) {
            Ok(Some(value)) => Frame::bulk(value),
            Ok(None) => Frame::null(),
            Err(err) => err,
        },
        Command::MGet { keys } => {
            let mut values = Vec::with_capacity(keys.len());
            for key in keys {
                match read(node, &key, now) {
                    Ok(Some(value)) => values.push(Frame::bulk(value)),
                    Ok(None) => values.push(Frame::null()),
                    Err(err) => return err,
                }
            }
            Frame::array(values)
        }
        Command::Exists { keys } => {
            let mut count = 0;
            for key in keys {
                match read(node, &key, now) {
                    Ok(Some(_)) => count += 1,
                    Ok(None) => {}
                    Err(err) => return err,
                }
            }
            Frame::Integer(count)
        }
        Command::DbSize => Frame::Integer(key_count(node) as i64),
        Command::Role => role_frame(node),
        Command::Info { sections } => Frame::bulk(info_text(node, &sections)),
        Command::Wait { replicas, timeout } => wait_command(node, replicas, timeout).await,
        other => Frame::error(format!("ERR internal: '{}' reached the read path", other.name())),
    }
}

/// The live value of `key`: unapplied writes first on the primary, the store otherwise.
fn read(node: &Node, key: &[u8], now_ms: u64) -> Result<Option<Vec<u8>>, Frame> {
    let stored = match node.pipeline() {
        Some(pipeline) => pipeline.read(key).map_err(|e| Frame::error(format!("ERR {e}")))?,
        None => node.store.get(key).map_err(|e| Frame::error(format!("ERR {e}")))?,
    };
    live_value(stored.as_deref(), now_ms)
}

fn live_value(stored: Option<&[u8]>, now_ms: u64) -> Result<Option<Vec<u8>>, Frame> {
    let Some(bytes) = stored else {
        return Ok(None);
    };
    let value =
        StoredValue::decode(bytes).ok_or_else(|| Frame::error("ERR stored value is damaged (unknown format tag)"))?;
    Ok(value.is_live(now_ms).then_some(value.data))
}

fn key_count(node: &Node) -> u64 {
    node.pipeline().map_or_else(|| node.store.position().key_count, |p| p.key_count())
}

async fn write(node: &Node, command: Command) -> Frame {
    let pipeline = match (node.role(), node.pipeline()) {
        (Role::Primary | Role::Draining, Some(pipeline)) => pipeline,
        (Role::Fenced, _) => {
            return Frame::error("READONLY this node is fenced (a newer primary exists); write to the primary")
        }
        _ => return Frame::error("READONLY You can't write against a read only replica."),
    };
    if let Some(refusal) = node.disk_refusal() {
        return Frame::error(refusal);
    }
    let now = crate::clock::now_ms();
    let submitted = Instant::now();
    match pipeline.commit(now, |txn| run_write(txn, command, now)) {
        Ok((None, reply)) => reply,
        Ok((Some(lsn), reply)) => match wait_sync(node, lsn).await {
            Ok(()) => {
                node.metrics.observe_commit(node.pair.sync, submitted.elapsed());
                reply
            }
            Err(message) => {
                // A full disk fails the journal write behind the wait: see it now, not next tick.
                super::disk::check(node);
                Frame::error(message)
            }
        },
        Err(CommitError::NotAccepting(reason)) => {
            Frame::error(format!("TRYAGAIN {reason}{}", crate::sentinel::drain_hint(node)))
        }
        Err(CommitError::Rejected(message)) => Frame::error(message),
        Err(err) => {
            super::disk::check(node);
            Frame::error(format!("ERR write failed, nothing was acknowledged: {err}"))
        }
    }
}

/// The transaction a write command runs. Errors are whole Redis error lines.
fn run_write(txn: &mut Txn<'_>, command: Command, now_ms: u64) -> Result<Frame, CommitError> {
    let current = |txn: &Txn<'_>, key: &[u8]| -> Result<Option<StoredValue>, CommitError> {
        match txn.get(key)? {
            None => Ok(None),
            Some(bytes) => match StoredValue::decode(&bytes) {
                Some(value) if value.is_live(now_ms) => Ok(Some(value)),
                Some(_) => Ok(None),
                None => Err(CommitError::Rejected("ERR stored value is damaged (unknown format tag)".into())),
            },
        }
    };
    match command {
        Command::Set { key, value, expire } => {
            let expires_at_ms = expire.map(|ttl| now_ms.saturating_add(ttl.as_millis() as u64));
            txn.put(key.to_vec(), StoredValue { expires_at_ms, data: value.to_vec() }.encode());
            Ok(Frame::ok())
        }
        Command::MSet { pairs } => {
            for (key, value) in pairs {
                txn.put(key.to_vec(), StoredValue { expires_at_ms: None, data: value.to_vec() }.encode());
            }
            Ok(Frame::ok())
        }
        Command::Del { keys } => {
            let mut deleted = 0;
            for key in keys {
                let stored = txn.get(&key)?;
                if stored.is_some() {
                    // An expired key is removed too, but not counted: for the client it was gone.
                    if current(txn, &key)?.is_some() {
                        deleted += 1;
                    }
                    txn.delete(key.to_vec());
                }
            }
            Ok(Frame::Integer(deleted))
        }
        Command::IncrBy { key, delta } => {
            let existing = current(txn, &key)?;
            let old = match &existing {
                None => 0,
                Some(value) => resp::frame::parse_integer(&value.data)
                    .ok_or_else(|| CommitError::Rejected("ERR value is not an integer or out of range".into()))?,
            };
            let new = old
                .checked_add(delta)
                .ok_or_else(|| CommitError::Rejected("ERR increment or decrement would overflow".into()))?;
            let expires_at_ms = existing.and_then(|v| v.expires_at_ms);
            txn.put(key.to_vec(), StoredValue { expires_at_ms, data: new.to_string().into_bytes() }.encode());
            Ok(Frame::Integer(new))
        }
        other => Err(CommitError::Rejected(format!("ERR internal: '{}' reached the write path", other.name()))),
    }
}

/// Waits until record `lsn` reached the pair's sync level (see the module invariants).
///
/// Above `async` the peer's confirmation is waited for first, and the local journal checked
/// after it. The primary ships a record before its fsync begins (`replication`, "Overlapped
/// fsyncs"), so by the time the backup confirms `lsn` (its own fsync and a round trip later) the
/// local fsync has nearly always covered it too: the commit wakes once (on the ack) instead of
/// twice. The local check is what keeps a write from being acknowledged before the primary's
/// own fsync: the backup may well hold it durably first.
pub async fn wait_sync(node: &Node, lsn: u64) -> Result<(), String> {
    let level = node.pair.sync;
    let timeout = node.pair.sync_timeout;
    let deadline = Instant::now() + timeout;
    let not_reached = |what: &str| {
        format!(
            "ERR sync level {level} not reached within {}: {what}; the write is NOT acknowledged (it is in the primary's journal and may or may not survive a failover)",
            humantime::format_duration(timeout)
        )
    };
    let mut durable = node.local.subscribe_durable();
    let peer = if level == SyncLevel::Async { Ok(()) } else { wait_peer(node, lsn, level, deadline).await };
    if let Err(what) = peer {
        let local_behind = *durable.borrow() < lsn;
        let what = if local_behind { "the local journal is not durable yet" } else { what };
        return Err(not_reached(what));
    }
    let local = tokio::time::timeout_at(deadline, durable.wait_for(|&d| d >= lsn)).await;
    match local {
        Ok(Ok(_)) => Ok(()),
        _ => Err(not_reached("the local journal is not durable yet")),
    }
}

/// Waits until the peer confirmed `lsn` at `level` (above `async`), or the peer has been gone
/// long enough to degrade. `Err` says why not by `deadline`.
async fn wait_peer(node: &Node, lsn: u64, level: SyncLevel, deadline: Instant) -> Result<(), &'static str> {
    let mut peer = node.peer.subscribe();
    // One timer for the whole wait, moved only when the wake-up time changes: every ack wakes
    // every waiting commit, and a new timer per wake-up is a timer-wheel insert and removal each.
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    loop {
        let state = peer.borrow_and_update().clone();
        let reached = match level {
            SyncLevel::Async => true,
            SyncLevel::Received => state.received_lsn >= lsn,
            SyncLevel::Durable => state.durable_lsn >= lsn,
            SyncLevel::Applied => state.applied_lsn >= lsn,
        };
        if reached {
            return Ok(());
        }
        let degrade_at = match node.pair.on_peer_loss {
            PeerLossPolicy::DegradeAfter(after) if !state.connected => Some(state.since + after),
            _ => None,
        };
        if degrade_at.is_some_and(|at| Instant::now() >= at) {
            node.note_degraded();
            return Ok(());
        }
        let wake = degrade_at.map_or(deadline, |at| at.min(deadline));
        if timer.deadline() != wake {
            timer.as_mut().reset(wake);
        }
        tokio::select! {
            _ = peer.changed() => {}
            _ = &mut timer => {}
        }
        if Instant::now() >= deadline {
            return Err(if state.connected {
                "the backup has not confirmed it yet"
            } else {
                "the backup is not connected"
            });
        }
    }
}

async fn wait_command(node: &Node, replicas: u64, timeout: Option<Duration>) -> Frame {
    let Some(pipeline) = node.pipeline() else {
        return Frame::error("ERR WAIT cannot be used with replica instances.");
    };
    let target = pipeline.last_lsn();
    let mut peer = node.peer.subscribe();
    let caught_up = |state: &crate::replication::PeerState| state.applied_lsn >= target;
    if replicas > 0 {
        let limit = timeout.unwrap_or(WAIT_FOREVER_CAP);
        let _ = tokio::time::timeout(limit, peer.wait_for(caught_up)).await;
    }
    let count = i64::from(caught_up(&peer.borrow()));
    Frame::Integer(count)
}

/// The commit pipeline while this node is the primary (draining included): what `ROLE` and
/// `INFO` call `master`. A fenced node may still hold its pipeline, but it is no master; nor is
/// a restarted primary until its peer confirmed it was not failed over meanwhile.
fn master_pipeline(node: &Node) -> Option<Arc<crate::pipeline::Pipeline>> {
    match node.role() {
        Role::Primary | Role::Draining if !node.awaits_peer() => node.pipeline(),
        _ => None,
    }
}

fn role_frame(node: &Node) -> Frame {
    let peer = node.peer.borrow().clone();
    let peer_host = Frame::bulk(node.peer_config.data.ip().to_string());
    let peer_port = Frame::bulk(node.peer_config.data.port().to_string());
    match master_pipeline(node) {
        Some(pipeline) => {
            let replicas = if peer.connected {
                vec![Frame::array(vec![peer_host, peer_port, Frame::bulk(peer.applied_lsn.to_string())])]
            } else {
                Vec::new()
            };
            Frame::array(vec![
                Frame::bulk("master"),
                Frame::Integer(pipeline.last_lsn() as i64),
                Frame::array(replicas),
            ])
        }
        None => Frame::array(vec![
            Frame::bulk("slave"),
            peer_host,
            Frame::Integer(i64::from(node.peer_config.data.port())),
            Frame::bulk(if peer.connected { "connected" } else { "connect" }),
            Frame::Integer(node.store.position().applied_lsn as i64),
        ]),
    }
}

fn info_text(node: &Node, sections: &[String]) -> Bytes {
    let all = sections.is_empty() || sections.iter().any(|s| s == "all" || s == "everything" || s == "default");
    let status = super::status::node_status(node);
    let mut text = String::new();
    if all || sections.iter().any(|s| s == "server") {
        text.push_str(&format!(
            "# Server\r\nredis_version:7.0.0\r\nhotpair_version:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        ));
    }
    if all || sections.iter().any(|s| s == "replication") {
        let peer = node.peer.borrow().clone();
        let field = |name: &str| status.get(name).cloned().unwrap_or_default();
        text.push_str("# Replication\r\n");
        match master_pipeline(node) {
            Some(pipeline) => {
                text.push_str(&format!("role:master\r\nconnected_slaves:{}\r\n", u8::from(peer.connected)));
                if peer.connected {
                    text.push_str(&format!(
                        "slave0:ip={},port={},state=online,offset={},lag={}\r\n",
                        node.peer_config.data.ip(),
                        node.peer_config.data.port(),
                        peer.applied_lsn,
                        field("lag_ms").as_u64().unwrap_or(0) / 1000
                    ));
                }
                text.push_str(&format!("master_repl_offset:{}\r\n", pipeline.last_lsn()));
            }
            None => text.push_str(&format!(
                "role:slave\r\nmaster_host:{}\r\nmaster_port:{}\r\nmaster_link_status:{}\r\nslave_repl_offset:{}\r\nslave_read_only:1\r\n",
                node.peer_config.data.ip(),
                node.peer_config.data.port(),
                if peer.connected { "up" } else { "down" },
                node.store.position().applied_lsn
            )),
        }
        for name in
            ["role", "epoch", "lsn", "received_lsn", "digest", "sync", "lag_records", "lag_ms", "remote_journal"]
        {
            let value = field(name);
            let value = value.as_str().map_or_else(|| value.to_string(), str::to_string);
            text.push_str(&format!("hotpair_{name}:{value}\r\n"));
        }
    }
    Bytes::from(text)
}
