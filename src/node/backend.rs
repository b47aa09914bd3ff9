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
//! - `EXEC` is one commit: every queued command runs under the pipeline's writer lock against
//!   the same view, its writes become **one** record, and the replies go out only once that
//!   record reached the sync level. A `WATCH`ed key written since aborts it before it runs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::Node;
use crate::config::{PeerLossPolicy, SyncLevel};
use crate::kv::keyspace::{self, Context, Savepoint, ScanSlice, ScanStart};
use crate::kv::pipeline::CommitError;
use crate::kv::watch::{Registry, Watcher};
use crate::resp::{Command, Frame};
use crate::server::auth::Users;
use crate::server::memory::ReplyLimit;
use crate::server::{DataBackend, ServeOptions};
use crate::storage::journal::ClientCommand;
use crate::storage::meta::Role;
use crate::Error;

/// How long `WAIT numreplicas 0` ("forever") waits at most before answering what it has.
const WAIT_FOREVER_CAP: Duration = Duration::from_secs(3600);

/// Most bytes of before-images one `FLUSHALL` record may carry: under the journal's record limit
/// with room for the record's own framing (`docs/commands.md`, "FLUSHALL").
pub const MAX_FLUSH_BYTES: usize = crate::storage::journal::format::MAX_RECORD_BODY - (1 << 20);

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

    fn execute_transaction(
        &self,
        commands: Vec<Command>,
        watcher: Option<Arc<Watcher>>,
    ) -> impl std::future::Future<Output = Frame> + Send {
        let node = self.node.clone();
        async move { execute_transaction(&node, commands, watcher).await }
    }

    fn watch(&self, watcher: &Arc<Watcher>, keys: &[Bytes]) -> Option<Arc<Registry>> {
        let now = crate::clock::now_ms();
        let view = ReadView { node: &self.node };
        for key in keys {
            let live = keyspace::View::get(&view, key)
                .ok()
                .flatten()
                .and_then(|stored| keyspace::live(&stored, now).ok().flatten())
                .is_some();
            self.node.watches.watch(watcher, key.to_vec(), live);
        }
        Some(self.node.watches.clone())
    }

    fn write_refusal(&self) -> Option<Frame> {
        match (self.node.role(), self.node.pipeline()) {
            (Role::Primary | Role::Draining, Some(_)) => None,
            (role, _) => Some(not_primary(role)),
        }
    }

    fn role_name(&self) -> &'static str {
        if master_pipeline(&self.node).is_some() {
            "master"
        } else {
            "replica"
        }
    }
}

/// What the pair file's `[clients]` table asks of the data port, loaded and checked.
pub struct DataSecurity {
    tls: Option<tokio_rustls::TlsAcceptor>,
    users: Option<Arc<Users>>,
}

impl DataSecurity {
    /// Who may `AUTH` on the data port (`None`: no password is set); the Sentinel port checks
    /// an `AUTH` it is sent against the same users.
    pub fn users(&self) -> Option<Arc<Users>> {
        self.users.clone()
    }

    /// Reads the password and users files and the data-port certificate: an error names the file.
    pub fn load(node: &Node) -> Result<DataSecurity, Error> {
        let clients = &node.pair().clients;
        let users = Users::load(clients.password_file.as_deref(), clients.users_file.as_deref())?.map(Arc::new);
        let tls = match clients.tls {
            true => Some(tokio_rustls::TlsAcceptor::from(crate::tls::data_server_config(&node.pair(), node.name())?)),
            false => None,
        };
        if let Some(users) = &users {
            tracing::info!(named_users = users.named_users(), "data port: AUTH required");
        }
        Ok(DataSecurity { tls, users })
    }
}

/// Serves the data port until the node shuts down.
pub async fn serve(node: Arc<Node>, listener: tokio::net::TcpListener, security: DataSecurity) -> Result<(), Error> {
    let options = ServeOptions {
        limits: node.pair().limits.data_port(),
        tls: security.tls,
        users: security.users,
        memory: node.client_memory.clone(),
    };
    std::sync::LazyLock::force(&PROCESS_STARTED);
    let mut shutdown = node.shutdown.subscribe();
    let demotions = crate::sentinel::watch_demotions(&node);
    let backend = Arc::new(Backend { node, demotions });
    crate::server::serve_with(listener, backend, options, async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    })
    .await
    .map_err(|source| Error::Io { context: "data port".into(), source })
}

/// The bound on a reply a command builds (`MGET`, `HMGET`, `KEYS`): `client_output_buffer_limit`
/// each, and all clients' memory together.
fn reply_limit(node: &Node) -> ReplyLimit<'_> {
    ReplyLimit { memory: &node.client_memory, max_bytes: node.pair().limits.client_output_buffer_limit }
}

fn not_primary(role: Role) -> Frame {
    match role {
        Role::Fenced => Frame::error("READONLY this node is fenced (a newer primary exists); write to the primary"),
        _ => Frame::error("READONLY You can't write against a read only replica."),
    }
}

async fn execute(node: &Arc<Node>, command: Command) -> Frame {
    if command.is_write() {
        return Box::pin(run_transaction(node, vec![command], None)).await.into_single();
    }
    match command {
        Command::Role => role_frame(node),
        Command::Info { sections } => Frame::bulk(info_text(node, &sections)),
        Command::Wait { replicas, timeout } => wait_command(node, replicas, timeout).await,
        // Reads never wait on sled's writers for long, but a KEYS or a large SCAN walks the
        // store: off the async workers.
        Command::Keys { .. } | Command::Scan { .. } | Command::RandomKey => {
            let node = node.clone();
            tokio::task::spawn_blocking(move || read(&node, command))
                .await
                .unwrap_or_else(|err| Frame::error(format!("ERR internal: the read failed: {err}")))
        }
        command => read(node, command),
    }
}

/// Runs a read-only command over the node's current state.
fn read(node: &Node, command: Command) -> Frame {
    let now = crate::clock::now_ms();
    let context = Context {
        now_ms: now,
        cursors: &node.scan_cursors,
        max_flush_bytes: MAX_FLUSH_BYTES,
        reply_limit: Some(reply_limit(node)),
    };
    let mut view = ReadView { node };
    match keyspace::execute(&mut view, command, &context) {
        Ok(frame) => frame,
        Err(err) => Frame::error(format!("ERR {err}")),
    }
}

/// What an `EXEC` (or a single write) answers.
enum TxnReply {
    /// One reply per command.
    Replies(Vec<Frame>),
    /// The whole transaction was refused or aborted: nothing ran.
    Whole(Frame),
}

impl TxnReply {
    /// The reply of a transaction of one command.
    fn into_single(self) -> Frame {
        match self {
            TxnReply::Replies(mut replies) if replies.len() == 1 => replies.remove(0),
            TxnReply::Replies(_) => Frame::error("ERR internal: one command, several replies"),
            TxnReply::Whole(frame) => frame,
        }
    }
}

async fn execute_transaction(node: &Arc<Node>, commands: Vec<Command>, watcher: Option<Arc<Watcher>>) -> Frame {
    match run_transaction(node, commands, watcher).await {
        TxnReply::Replies(replies) => Frame::array(replies),
        TxnReply::Whole(frame) => frame,
    }
}

/// Commands that read the node rather than the key space: answered after the commit, in place.
fn is_node_command(command: &Command) -> bool {
    matches!(command, Command::Role | Command::Info { .. } | Command::Wait { .. })
}

async fn run_transaction(node: &Arc<Node>, commands: Vec<Command>, watcher: Option<Arc<Watcher>>) -> TxnReply {
    let writes = commands.iter().any(Command::is_write);
    let pipeline = match (node.role(), node.pipeline()) {
        (Role::Primary | Role::Draining, Some(pipeline)) => pipeline,
        (role, _) if writes => return TxnReply::Whole(not_primary(role)),
        // A backup runs a read-only EXEC over its store; nothing can commit meanwhile except
        // the records it applies, which it does not watch (`crate::kv::watch`, "Caveat").
        _ => return read_transaction(node, commands, watcher.as_deref()).await,
    };
    if writes {
        if let Some(refusal) = node.disk_refusal() {
            return TxnReply::Whole(Frame::error(refusal));
        }
    }
    let now = crate::clock::now_ms();
    let submitted = Instant::now();
    let context = Context {
        now_ms: now,
        cursors: &node.scan_cursors,
        max_flush_bytes: MAX_FLUSH_BYTES,
        reply_limit: Some(reply_limit(node)),
    };
    let committed = pipeline.commit(now, |txn| -> Result<Option<Vec<Option<Frame>>>, CommitError> {
        if let Some(watcher) = &watcher {
            if aborted_by_watch(txn, watcher, now)? {
                return Ok(None);
            }
        }
        let mut replies = Vec::with_capacity(commands.len());
        for command in &commands {
            replies.push(if is_node_command(command) {
                None
            } else {
                Some(keyspace::execute(txn, command.clone(), &context)?)
            });
        }
        Ok(Some(replies))
    });
    let replies = match committed {
        Ok((_, None)) => return TxnReply::Whole(Frame::Array(None)),
        Ok((None, Some(replies))) => replies,
        Ok((Some(lsn), Some(replies))) => match wait_sync(node, lsn).await {
            Ok(()) => {
                node.metrics.observe_commit(node.pair().sync, submitted.elapsed());
                replies
            }
            Err(message) => {
                // A full disk fails the journal write behind the wait: see it now, not next tick.
                super::disk::check(node);
                return TxnReply::Whole(Frame::error(message));
            }
        },
        Err(CommitError::NotAccepting(reason)) => {
            return TxnReply::Whole(Frame::error(format!("TRYAGAIN {reason}{}", crate::sentinel::drain_hint(node))))
        }
        Err(CommitError::Rejected(message)) => return TxnReply::Whole(Frame::error(message)),
        Err(err) => {
            super::disk::check(node);
            return TxnReply::Whole(Frame::error(format!("ERR write failed, nothing was acknowledged: {err}")));
        }
    };
    TxnReply::Replies(fill_node_replies(node, commands, replies).await)
}

/// Whether a `WATCH`ed key changed: written since (the watcher is dirty) or expired since.
fn aborted_by_watch(view: &impl keyspace::View, watcher: &Watcher, now: u64) -> Result<bool, CommitError> {
    if watcher.is_dirty() {
        return Ok(true);
    }
    for (key, was_live) in watcher.keys() {
        if was_live
            && keyspace::View::get(view, &key)?
                .is_some_and(|stored| keyspace::live(&stored, now).ok().flatten().is_none())
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The replies of `ROLE`, `INFO`, `WAIT` inside a transaction, put in their places.
async fn fill_node_replies(node: &Arc<Node>, commands: Vec<Command>, replies: Vec<Option<Frame>>) -> Vec<Frame> {
    let mut out = Vec::with_capacity(replies.len());
    for (command, reply) in commands.into_iter().zip(replies) {
        out.push(match reply {
            Some(frame) => frame,
            None => Box::pin(execute(node, command)).await,
        });
    }
    out
}

/// A read-only `EXEC` where there is no pipeline (a backup).
async fn read_transaction(node: &Arc<Node>, commands: Vec<Command>, watcher: Option<&Watcher>) -> TxnReply {
    let now = crate::clock::now_ms();
    if let Some(watcher) = watcher {
        if aborted_by_watch(&ReadView { node }, watcher, now).unwrap_or(true) {
            return TxnReply::Whole(Frame::Array(None));
        }
    }
    let mut replies = Vec::with_capacity(commands.len());
    for command in commands {
        replies.push(Box::pin(execute(node, command)).await);
    }
    TxnReply::Replies(replies)
}

/// The key space as a read sees it: on the primary the store plus the writes not yet applied,
/// on a backup its store. It takes no writes: the read path only runs commands that write
/// nothing ([`Command::is_write`]), and a write reaching it is dropped and reported.
struct ReadView<'a> {
    node: &'a Node,
}

impl keyspace::View for ReadView<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, CommitError> {
        match self.node.pipeline() {
            Some(pipeline) => pipeline.read(key),
            None => Ok(self.node.store.get(key)?),
        }
    }

    fn scan(&self, start: &ScanStart, limit: usize) -> Result<ScanSlice, CommitError> {
        match self.node.pipeline() {
            Some(pipeline) => pipeline.scan(start, limit),
            None => crate::kv::pipeline::scan_store(&self.node.store, start, limit),
        }
    }

    fn key_count(&self) -> Result<u64, CommitError> {
        Ok(self.node.pipeline().map_or_else(|| self.node.store.position().key_count, |p| p.key_count()))
    }
}

impl keyspace::Writer for ReadView<'_> {
    fn put(&mut self, key: Vec<u8>, _stored: Vec<u8>) {
        tracing::error!(key = %key.escape_ascii(), "internal: a read-only command tried to write; dropped");
    }

    fn delete(&mut self, key: Vec<u8>) {
        tracing::error!(key = %key.escape_ascii(), "internal: a read-only command tried to delete; dropped");
    }

    fn note(&mut self, _command: ClientCommand) {}

    fn savepoint(&self) -> Savepoint {
        Savepoint { writes: 0, notes: 0 }
    }

    fn rollback(&mut self, _savepoint: Savepoint) {}
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
    let level = node.pair().sync;
    let timeout = node.pair().sync_timeout;
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
        Ok(Ok(_)) if !node.within_write_deadline() => Err(
            "ERR this primary's witness lease ran out before the write could be acknowledged; the write is NOT acknowledged (it may have been replaced: retry on the primary)".to_string()
        ),
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
        let degrade_at = match node.pair().on_peer_loss {
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
fn master_pipeline(node: &Node) -> Option<Arc<crate::kv::pipeline::Pipeline>> {
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
        text.push_str(&server_section(node));
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
        text.push_str("\r\n");
    }
    if all || sections.iter().any(|s| s == "keyspace") {
        text.push_str(&keyspace_section(node));
    }
    Bytes::from(text)
}

/// `INFO server`: what clients read to pick commands (`redis_version`), and who this is.
fn server_section(node: &Node) -> String {
    let started = *PROCESS_STARTED;
    let uptime = started.elapsed().as_secs();
    format!(
        "# Server\r\nredis_version:{}\r\nredis_mode:standalone\r\nos:{} {}\r\narch_bits:{}\r\nprocess_id:{}\r\nrun_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{uptime}\r\nuptime_in_days:{}\r\nhotpair_version:{}\r\nhotpair_types:string,hash\r\n\r\n",
        crate::server::session::REDIS_VERSION,
        std::env::consts::OS,
        std::env::consts::ARCH,
        usize::BITS,
        std::process::id(),
        node.meta().incarnation.simple(),
        node.config.data.port(),
        uptime / 86_400,
        env!("CARGO_PKG_VERSION"),
    )
}

/// `INFO keyspace`: `db0:keys=N,expires=M,avg_ttl=ms` (nothing when the store is empty, as
/// Redis). Keys and expiring keys count expired keys not yet deleted, as Redis does; the
/// counts are the store's (on a primary, up to one applier pace behind the last commit).
fn keyspace_section(node: &Node) -> String {
    let keys = node.pipeline().map_or_else(|| node.store.position().key_count, |p| p.key_count());
    let expiring = node.store.expiring();
    let mut text = "# Keyspace\r\n".to_string();
    if keys > 0 {
        let now = u128::from(crate::clock::now_ms());
        let avg_ttl = match expiring.keys {
            0 => 0,
            n => (expiring.deadline_sum_ms / u128::from(n)).saturating_sub(now),
        };
        text.push_str(&format!("db0:keys={keys},expires={},avg_ttl={avg_ttl}\r\n", expiring.keys));
    }
    text.push_str("\r\n");
    text
}

/// When this process started, for `uptime_in_seconds`.
static PROCESS_STARTED: std::sync::LazyLock<std::time::Instant> = std::sync::LazyLock::new(std::time::Instant::now);
