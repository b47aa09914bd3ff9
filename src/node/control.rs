//! The control port: mutual TLS, then either the peer's replication session or admin requests.
//!
//! Every connection is identified by its client certificate ([`crate::tls::identify_peer`]):
//! the peer node may replicate, the admin certificate may send admin requests, anything else is
//! refused and logged with the reason. A bad frame closes only that connection.
//!
//! A would-be backup's hello is refused (a `second-installation` incident) when it presents
//! another incarnation than the one this pair knows for it, or a position behind what it already
//! acknowledged to this primary as durable ([`Node::save_peer_position`] keeps that across
//! restarts), or while another session for it is live. An admin connection that sends nothing
//! for `[limits] admin_idle_timeout` is closed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{status, Node};
use crate::journal::Lsn;
use crate::meta::Role;
use crate::replication::{self, ShipContext};
use crate::tls::Peer;
use crate::wire::{self, AdminRequest, Envelope, Frame, Message};
use crate::Error;

/// How long a new connection may take for its TLS handshake and first frame.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a live peer session looks at the peer's certificate file.
const CERTIFICATE_RECHECK: Duration = Duration::from_secs(1);
/// Connections served at once on the control port; more wait to be accepted.
const MAX_CONTROL_CONNECTIONS: usize = 64;

pub async fn serve(node: Arc<Node>, listener: TcpListener) -> Result<(), Error> {
    let acceptor = TlsAcceptor::from(crate::tls::server_config(&node.pair, node.name())?);
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONTROL_CONNECTIONS));
    let mut shutdown = node.shutdown.subscribe();
    loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.changed() => return Ok(()),
            permit = limit.clone().acquire_owned() => permit.map_err(|_| Error::Failed("control port limiter closed".into()))?,
        };
        let (socket, address) = tokio::select! {
            biased;
            _ = shutdown.changed() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "control port accept failed");
                    continue;
                }
            },
        };
        let (node, acceptor) = (node.clone(), acceptor.clone());
        tokio::spawn(async move {
            if let Err(reason) = connection(node, acceptor, socket).await {
                tracing::warn!(%address, %reason, "control connection refused or ended");
            }
            drop(permit);
        });
    }
}

async fn connection(node: Arc<Node>, acceptor: TlsAcceptor, socket: tokio::net::TcpStream) -> Result<(), String> {
    // Without it, the first small frame after the handshake (a Welcome, an admin answer) waits
    // behind the TLS 1.3 session ticket for the peer's delayed ACK: ~40 ms on Linux, which
    // showed up whole in the switchover's write outage.
    if let Err(err) = socket.set_nodelay(true) {
        tracing::debug!(%err, "could not set TCP_NODELAY on a control connection");
    }
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let certs = stream.get_ref().1.peer_certificates().unwrap_or(&[]).to_vec();
    let peer = crate::tls::identify_peer(&node.pair, &certs).map_err(|e| e.to_string())?;
    match peer {
        Peer::Admin => admin(node, stream, certs).await,
        Peer::Node(name) if name == node.peer_config.name => peer_session(node, stream).await,
        Peer::Node(name) => Err(format!("node certificate {name} is not this node's peer")),
    }
}

/// Serves admin requests until the admin closes, or sends nothing for `admin_idle_timeout`:
/// an idle connection would otherwise hold one of the control port's slots for ever. Each
/// request is checked against the admin certificate the pair file names *now*: after
/// `hotpair certs rotate --admin` an open connection with the old one gets no more answers.
async fn admin<S: AsyncRead + AsyncWrite + Unpin>(
    node: Arc<Node>,
    mut stream: S,
    certs: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> Result<(), String> {
    let idle = node.pair.limits.admin_idle_timeout;
    loop {
        let Ok(next) = tokio::time::timeout(idle, wire::read_frame(&mut stream)).await else {
            tracing::info!(idle = %humantime::format_duration(idle), "admin connection idle; closed");
            // close_notify, so the admin's next read sees a clean end rather than a cut.
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
            return Ok(());
        };
        let Some(frame) = next.map_err(|e| e.to_string())? else { return Ok(()) };
        let Frame::Message(Envelope { message: Message::Admin { request }, .. }) = frame else {
            return Err("admin connection sent something other than an admin request".into());
        };
        if let Err(err) = crate::tls::identify_peer(&node.pair, &certs) {
            let reply = Envelope {
                from: node.name().to_string(),
                epoch: node.meta().epoch,
                message: Message::AdminReply { ok: false, body: serde_json::json!({ "error": err.to_string() }) },
            };
            let _ = wire::write_frame(&mut stream, &Frame::Message(reply)).await;
            return Err(format!("admin connection closed: {err}"));
        }
        if let AdminRequest::Backup { journal_from } = request {
            // A stream, not one answer: the connection is the backup's until it ends.
            return super::backup::serve(node, stream, journal_from).await;
        }
        let (ok, body) = handle_admin(&node, request).await;
        let reply = Envelope {
            from: node.name().to_string(),
            epoch: node.meta().epoch,
            message: Message::AdminReply { ok, body },
        };
        wire::write_frame(&mut stream, &Frame::Message(reply)).await.map_err(|e| e.to_string())?;
    }
}

async fn handle_admin(node: &Arc<Node>, request: AdminRequest) -> (bool, serde_json::Value) {
    match request {
        AdminRequest::Status => (true, status::node_status(node)),
        AdminRequest::ReplicateStop | AdminRequest::ReplicateStart => {
            let on = matches!(request, AdminRequest::ReplicateStart);
            match node.set_replicating(on) {
                Ok(()) => (true, serde_json::json!({ "replicating": on })),
                Err(err) => (false, serde_json::json!({ "error": err.to_string() })),
            }
        }
        AdminRequest::ReopenLog => {
            let journal = if node.pipeline().is_some() { &node.local } else { &node.remote };
            match journal.reopen_log(node.meta().epoch, crate::clock::now_ms()) {
                Ok(path) => (true, serde_json::json!({ "new_segment": path })),
                Err(err) => (false, serde_json::json!({ "error": err.to_string() })),
            }
        }
        primitive => match super::primitives::handle(node, primitive).await {
            Ok(body) => (true, body),
            Err(reason) => {
                tracing::warn!(%reason, "refused an orchestration primitive");
                (false, serde_json::json!({ "error": reason }))
            }
        },
    }
}

/// The peer connected to us: it must say hello; if we are the primary it becomes our backup.
async fn peer_session<S>(node: Arc<Node>, mut stream: S) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, wire::read_frame(&mut stream))
        .await
        .map_err(|_| "peer sent no hello in time".to_string())?
        .map_err(|e| e.to_string())?;
    if let Some(Frame::Message(Envelope { from, epoch, message: Message::CopyRequest { cluster, incarnation } })) =
        &first
    {
        check_hello(&node, from, *epoch, *cluster, *incarnation)?;
        return copy_out(node, stream).await;
    }
    let Some(Frame::Message(Envelope {
        from,
        epoch,
        message:
            Message::Hello { cluster, incarnation, history, last_lsn, role: hello_role, confirmed_lsn, tail_crcs, last_crc },
    })) = first
    else {
        return Err("peer's first frame was not a hello".into());
    };
    let refuse = |reason: String| {
        let node = node.clone();
        async move {
            let reply = Envelope {
                from: node.name().to_string(),
                epoch: node.meta().epoch,
                message: Message::Refused { reason: reason.clone(), last_lsn: None },
            };
            (reply, reason)
        }
    };
    // A probe from a node that believes it is primary is answered below; only a would-be
    // backup's position is held against what it acknowledged.
    let probe = matches!(hello_role, Role::Primary | Role::Draining);
    let verdict = check_hello(&node, &from, epoch, cluster, incarnation).and_then(|()| {
        if probe {
            return Ok(());
        }
        node.check_position(last_lsn).inspect_err(|reason| {
            node.incidents.raise(
                crate::incident::Kind::SecondInstallation,
                crate::incident::Severity::Critical,
                reason.clone(),
            )
        })
    });
    if let Err(reason) = verdict {
        let (reply, reason) = refuse(reason).await;
        let _ = wire::write_frame(&mut stream, &Frame::Message(reply)).await;
        return Err(reason);
    }
    if probe {
        // A probe from a node that believes it is primary: tell it where we stand. Our epoch
        // in the envelope is what it needs (a higher one fences it); nothing is shipped.
        let ours = node.meta().epoch;
        if node.pipeline().is_some() && epoch <= ours {
            let message = format!("{from} claims to be primary at epoch {epoch} while this node is primary at epoch {ours}; it is told our epoch and fences");
            node.incidents.raise(crate::incident::Kind::SplitBrain, crate::incident::Severity::Critical, message);
        }
        let reason = format!("{} is {} at epoch {ours}", node.name(), node.role().name());
        // Our last LSN too: a restarted primary takes no writes while we hold more than it does.
        let message = Message::Refused { reason, last_lsn: Some(node.last_lsn()) };
        let reply = Envelope { from: node.name().to_string(), epoch: ours, message };
        let _ = wire::write_frame(&mut stream, &Frame::Message(reply)).await;
        return Ok(());
    }
    let meta = node.meta();
    let Some(pipeline) = node.pipeline() else {
        let (reply, reason) = refuse("this node is not the primary".into()).await;
        let _ = wire::write_frame(&mut stream, &Frame::Message(reply)).await;
        return Err(reason);
    };
    if !*node.replicating.borrow() {
        // The peer is not ahead of our epoch, but it is not welcomed either, so nothing of its
        // tail is cut: a restarted primary takes writes only if it holds no more than we do.
        if last_lsn <= node.last_lsn() {
            node.peer_confirmed();
        }
        let (reply, reason) = refuse("replication is stopped by the admin (hotpair replicate start)".into()).await;
        let _ = wire::write_frame(&mut stream, &Frame::Message(reply)).await;
        return Err(reason);
    }
    // Everything we hold, written or durable: we ship records before our fsync (`replication`,
    // "Overlapped fsyncs"), so a backup may hold records we have not fsynced yet.
    let our_last = node.last_lsn();
    let acknowledged = node.peer_acknowledged();
    let tail = backup_tail(&node, last_lsn, confirmed_lsn, tail_crcs, last_crc, history == meta.history).await;
    let standing = wire::standing(&meta.history, our_last, &history, last_lsn);
    let plan = wire::welcome_plan(standing, tail, acknowledged);
    let (start_lsn, cut_after) = match plan {
        wire::Plan::From { next_lsn } => (next_lsn, None),
        wire::Plan::CutAfter { lsn } => {
            tracing::warn!(
                peer = %from,
                backup_last = last_lsn,
                cut_after = lsn,
                "the backup holds records we shipped before our fsync and no longer hold as they were (we crashed): it drops them past LSN {lsn}"
            );
            (lsn + 1, Some(lsn))
        }
        wire::Plan::Diverged { at_lsn } => {
            let reply = Envelope {
                from: node.name().to_string(),
                epoch: meta.epoch,
                message: Message::Diverged { at_lsn, history: meta.history.clone() },
            };
            let _ = wire::write_frame(&mut stream, &Frame::Message(reply)).await;
            return Err(format!(
                "peer {from} diverged from our history after LSN {at_lsn}; it needs `hotpair rejoin {from}`"
            ));
        }
    };
    if node.session_active.swap(true, Ordering::SeqCst) {
        let (reply, reason) =
            refuse(format!("a session for {from} is already active; a second live connection is refused")).await;
        let _ = wire::write_frame(&mut stream, &Frame::Message(reply)).await;
        return Err(reason);
    }
    let welcome = Envelope {
        from: node.name().to_string(),
        epoch: meta.epoch,
        message: Message::Welcome { start_lsn, history: meta.history.clone(), last_lsn: our_last, cut_after },
    };
    let result = match wire::write_frame(&mut stream, &Frame::Message(welcome)).await {
        Ok(()) => {
            tracing::info!(peer = %from, start_lsn, "backup connected; shipping");
            replication::set_connected(&node.peer, true);
            node.note_restored();
            // A restarted primary takes writes again once the backup has acked in this session:
            // it is not ahead of our epoch, and it has cut any tail of ours it held (its first
            // ack comes after the cut), so our new records cannot reuse the LSNs of its records.
            let (first_ack, acked) = tokio::sync::oneshot::channel();
            let confirmer = node.clone();
            tokio::spawn(async move {
                if acked.await.is_ok() {
                    confirmer.peer_confirmed();
                }
            });
            let ctx = ShipContext {
                name: node.name().to_string(),
                epoch: meta.epoch,
                journal: node.local.clone(),
                remote: node.remote.clone(),
                history: meta.history.clone(),
                pipeline,
                peer: node.peer.clone(),
                heartbeat: node.pair.heartbeat,
                prompt_confirm: node.pair.sync == crate::config::SyncLevel::Applied,
                first_ack: Some(first_ack),
            };
            let stop = stop_signal(&node);
            let result = replication::ship(stream, ctx, start_lsn, stop).await.map_err(|e| e.to_string());
            // Saved before the session is seen to end, so a crash right after still knows
            // how far the backup acknowledged.
            if let Err(err) = node.save_peer_position() {
                tracing::warn!(error = %err, "saving the backup's acknowledged position");
            }
            replication::set_connected(&node.peer, false);
            result
        }
        Err(err) => Err(err.to_string()),
    };
    node.session_active.store(false, Ordering::SeqCst);
    result
}

/// Sends the whole store to the peer (a full copy for a rejoin whose journals are gone): the
/// store at one position, then the peer catches up from the next LSN as a backup.
async fn copy_out<S>(node: Arc<Node>, mut stream: S) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if node.pipeline().is_none() {
        return Err("a full copy was asked of a node that is not the primary".into());
    }
    // The copy replaces whatever the peer held; the admin allowed it (rejoin --allow-full-copy).
    node.forget_peer_position().map_err(|e| e.to_string())?;
    let history = node.meta().history;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(crate::store::Position, Vec<(Vec<u8>, Vec<u8>)>)>(4);
    let store = node.store.clone();
    let scan = tokio::task::spawn_blocking(move || {
        store.copy_out(1 << 20, |position, batch| tx.blocking_send((position, batch)).is_ok())
    });
    let mut begun = false;
    let mut pairs = 0u64;
    let started = std::time::Instant::now();
    while let Some((position, batch)) = rx.recv().await {
        if !begun {
            tracing::info!(lsn = position.applied_lsn, keys = position.key_count, "full copy: sending the store");
            let begin = Message::CopyBegin { position, history: history.clone() };
            let envelope = Envelope { from: node.name().to_string(), epoch: node.meta().epoch, message: begin };
            wire::write_frame(&mut stream, &Frame::Message(envelope)).await.map_err(|e| e.to_string())?;
            begun = true;
        }
        pairs += batch.len() as u64;
        wire::write_frame(&mut stream, &Frame::Copy(wire::encode_pairs(&batch))).await.map_err(|e| e.to_string())?;
    }
    scan.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    let end = Envelope { from: node.name().to_string(), epoch: node.meta().epoch, message: Message::CopyEnd { pairs } };
    wire::write_frame(&mut stream, &Frame::Message(end)).await.map_err(|e| e.to_string())?;
    // The receiver closes once it has the end: closing first could cut frames still in flight.
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, wire::read_frame(&mut stream)).await;
    tracing::info!(pairs, ms = started.elapsed().as_millis() as u64, "full copy sent");
    Ok(())
}

/// Holds a would-be backup's unconfirmed tail (`tail_crcs` from `confirmed_lsn + 1` on, and
/// `last_crc` at `last_lsn` when the tail is longer) against our records.
async fn backup_tail(
    node: &Arc<Node>,
    last_lsn: Lsn,
    confirmed_lsn: Lsn,
    tail_crcs: Vec<u32>,
    last_crc: Option<u32>,
    same_history: bool,
) -> wire::BackupTail {
    let reader = node.clone();
    // A peer that sends more than a hello may carry is held to the limit.
    let sent = tail_crcs.len().min(wire::MAX_TAIL_CRCS);
    let ours = tokio::task::spawn_blocking(move || {
        let ours = reader.record_crcs(confirmed_lsn.saturating_add(1), sent);
        let our_last = last_crc.and_then(|_| reader.record_crc(last_lsn));
        (ours, our_last)
    })
    .await;
    let (ours, our_last) = ours.unwrap_or_default();
    let matched = tail_crcs.iter().zip(&ours).take_while(|(theirs, ours)| theirs == ours).count();
    let whole_tail = last_lsn.saturating_sub(confirmed_lsn);
    let rest_matches = sent as u64 >= whole_tail || (last_crc.is_some() && our_last == last_crc);
    wire::BackupTail {
        last_lsn,
        confirmed_lsn,
        matched: matched as u64,
        all_matched: matched == sent && rest_matches,
        same_history,
    }
}

fn check_hello(
    node: &Node,
    from: &str,
    epoch: u64,
    cluster: uuid::Uuid,
    incarnation: uuid::Uuid,
) -> Result<(), String> {
    if from != node.peer_config.name {
        return Err(format!("hello claims to be {from}, but the certificate is {}", node.peer_config.name));
    }
    if cluster != node.pair.cluster {
        return Err(format!("peer is in cluster {cluster}, this pair is {}", node.pair.cluster));
    }
    if let Err(reason) = node.check_incarnation(incarnation) {
        node.incidents.raise(
            crate::incident::Kind::SecondInstallation,
            crate::incident::Severity::Critical,
            reason.clone(),
        );
        return Err(reason);
    }
    let ours = node.meta().epoch;
    if epoch > ours {
        // The hello is refused either way; if a primitive is running, the next hello or probe fences.
        node.fence_on_peer_word(&format!("peer {from} is at epoch {epoch}, ahead of our {ours}"));
        let fenced = if node.role() == Role::Fenced { "; this node fenced itself" } else { "" };
        return Err(format!("peer is at epoch {epoch}, ahead of ours ({ours}){fenced}"));
    }
    Ok(())
}

/// A channel that turns true when the node shuts down, replication is stopped, the role
/// changes, or the peer's certificate file changes (`hotpair certs rotate --node`: the peer
/// reconnects, and is let in only with the certificate now in the file).
fn stop_signal(node: &Arc<Node>) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let (mut shutdown, mut replicating, mut role) =
        (node.shutdown.subscribe(), node.replicating.subscribe(), node.subscribe_role());
    let peer_cert = node.peer_config.cert.clone();
    let presented = crate::tls::current_certificate(&peer_cert);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.changed() => if *shutdown.borrow() { break },
                _ = replicating.changed() => if !*replicating.borrow() { break },
                // A draining primary goes on shipping: the backup must reach the drain LSN.
                _ = role.changed() => if !matches!(*role.borrow(), Role::Primary | Role::Draining) { break },
                _ = tokio::time::sleep(CERTIFICATE_RECHECK) => if crate::tls::current_certificate(&peer_cert) != presented {
                    tracing::info!(file = %peer_cert.display(), "the peer's certificate file changed: ending its session so that it reconnects with the current one");
                    break;
                },
                _ = tx.closed() => return,
            }
        }
        let _ = tx.send(true);
    });
    rx
}
