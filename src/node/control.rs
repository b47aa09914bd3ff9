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
//!
//! Until its TLS handshake is done a connection is a stranger: it waits in a handshake slot
//! ([`crate::server::handshake`]) for at most `HANDSHAKE_TIMEOUT`, and when the slots are full
//! the oldest stalled handshake makes room. Established sessions are counted apart (the peer's
//! one session, up to `MAX_ADMIN_SESSIONS` admin sessions), so strangers stalling handshakes
//! cannot keep the backup or an admin out. Refusals of strangers are logged at most once per
//! source and reason per minute.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::LazyConfigAcceptor;

use super::{status, Node};
use crate::engine::{Event, Hello, HelloAnswer, Reply, TailMatch};
use crate::replication::wire::{self, AdminRequest, Envelope, Frame, Message};
use crate::replication::{self, ShipContext};
use crate::server::handshake::{Admission, HandshakeSlots, Stage, HANDSHAKE_TIMEOUT, HELLO_GRACE};
use crate::server::throttle::LogThrottle;
use crate::storage::journal::Lsn;
use crate::storage::meta::Role;
use crate::tls::Peer;
use crate::Error;

/// How long the peer has, once its handshake is done, to send its hello.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin sessions served at once; one more is refused after its handshake. Only the admin
/// certificate opens one, so only an admin can fill them (the orchestrator keeps one per node).
const MAX_ADMIN_SESSIONS: usize = 64;

/// How often a live peer session looks at the peer's certificate file.
const CERTIFICATE_RECHECK: Duration = Duration::from_secs(1);

/// Why a control connection ended without being served.
enum Ended {
    /// Before or during its identification: a stranger, as far as we know. Logged at most once
    /// per source and kind of failure per minute.
    Stranger(String),
    /// An identified session (the peer, an admin) ended with an error: always logged.
    Session(String),
}

pub async fn serve(node: Arc<Node>, listener: TcpListener) -> Result<(), Error> {
    let config = crate::tls::server_config(&node.pair(), node.name())?;
    // Handshakes in slots of their own (`server::handshake`); sessions are not counted there,
    // and `accept` never waits for a slot, so stalled strangers cannot keep the peer out.
    let slots = HandshakeSlots::new();
    let admins = Arc::new(Semaphore::new(MAX_ADMIN_SESSIONS));
    let log = Arc::new(LogThrottle::default());
    let mut shutdown = node.shutdown.subscribe();
    loop {
        let (socket, address) = tokio::select! {
            biased;
            _ = shutdown.changed() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "control port accept failed");
                    // Out of file descriptors, say: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (node, config, slots, admins, log) =
            (node.clone(), config.clone(), slots.clone(), admins.clone(), log.clone());
        tokio::spawn(async move {
            match connection(node, config, socket, address, &slots, admins, &log).await {
                Ok(()) => {}
                Err(Ended::Session(reason)) => tracing::warn!(%address, %reason, "control connection ended"),
                Err(Ended::Stranger(reason)) => log_stranger(&log, address, &reason),
            }
        });
    }
}

fn log_stranger(log: &LogThrottle, address: SocketAddr, reason: &str) {
    if let Some(suppressed) = log.admit(address.ip(), reason, std::time::Instant::now()) {
        tracing::warn!(
            %address,
            %reason,
            suppressed,
            "control connection refused (one line per source and reason per minute; `suppressed` were left out)"
        );
    }
}

/// Runs the TLS handshake (first on probation, then in a slot), then serves whoever it turned
/// out to be.
async fn connection(
    node: Arc<Node>,
    config: Arc<rustls::ServerConfig>,
    socket: tokio::net::TcpStream,
    address: SocketAddr,
    slots: &Arc<HandshakeSlots>,
    admins: Arc<Semaphore>,
    log: &LogThrottle,
) -> Result<(), Ended> {
    // Without it, the first small frame after the handshake (a Welcome, an admin answer) waits
    // behind the TLS 1.3 session ticket for the peer's delayed ACK: ~40 ms on Linux, which
    // showed up whole in the switchover's write outage.
    if let Err(err) = socket.set_nodelay(true) {
        tracing::debug!(%err, "could not set TCP_NODELAY on a control connection");
    }
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let timed_out =
        || Ended::Stranger(format!("TLS handshake not done within {}", humantime::format_duration(HANDSHAKE_TIMEOUT)));
    let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), socket);
    tokio::pin!(hello);
    // A client that sends its ClientHello at once is past it within the grace, and enters the
    // slots as negotiating, where stallers cannot push it out.
    let early = match slots.probation() {
        Some(_probation) => tokio::time::timeout(HELLO_GRACE, &mut hello).await.ok(),
        None => None,
    };
    let stage = if early.is_some() { Stage::Negotiating } else { Stage::AwaitingHello };
    let admission = slots.admit_at(address.ip(), stage);
    if let Some(source) = admission.made_room_from {
        if log.admit(source, "evicted", std::time::Instant::now()).is_some() {
            tracing::warn!(%source, "control port: handshake slots full; the oldest stalled handshake from {source} was closed to make room");
        }
    }
    let Admission { slot, mut evicted, .. } = admission;
    let evicted_error =
        || Ended::Stranger("evicted: handshake slots were full and this handshake was the oldest stalled one".into());
    let start = match early {
        Some(start) => start,
        None => tokio::select! {
            biased;
            _ = &mut evicted => return Err(evicted_error()),
            start = tokio::time::timeout_at(deadline, &mut hello) => start.map_err(|_| timed_out())?,
        },
    }
    .map_err(|e| Ended::Stranger(crate::tls::explain_foreign(format!("TLS handshake failed: {e}"))))?;
    slot.hello_received();
    let stream = tokio::select! {
        biased;
        _ = &mut evicted => return Err(evicted_error()),
        stream = tokio::time::timeout_at(deadline, start.into_stream(config)) => stream
            .map_err(|_| timed_out())?
            .map_err(|e| Ended::Stranger(crate::tls::explain_foreign(format!("TLS handshake failed: {e}"))))?,
    };
    drop(slot);
    let certs = stream.get_ref().1.peer_certificates().unwrap_or(&[]).to_vec();
    let peer = crate::tls::identify_peer(&node.pair(), &certs).map_err(|e| Ended::Stranger(e.to_string()))?;
    match peer {
        Peer::Admin => {
            let Ok(permit) = admins.try_acquire_owned() else {
                return Err(Ended::Session(format!(
                    "{MAX_ADMIN_SESSIONS} admin sessions are open already; refusing another"
                )));
            };
            admin(node, stream, certs, permit).await.map_err(Ended::Session)
        }
        Peer::Node(name) if name == node.peer_config.name => peer_session(node, stream).await.map_err(Ended::Session),
        Peer::Node(name) => Err(Ended::Stranger(format!("node certificate {name} is not this node's peer"))),
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
    _session: OwnedSemaphorePermit,
) -> Result<(), String> {
    let idle = node.pair().limits.admin_idle_timeout;
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
        if let Err(err) = crate::tls::identify_peer(&node.pair(), &certs) {
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
        AdminRequest::Reload { apply, expect_digest, peer_digest } => {
            match super::reload::handle(node, apply, expect_digest, peer_digest) {
                Ok(reply) => (true, crate::admin::protocol::body(&reply)),
                Err(reason) => {
                    tracing::warn!(%reason, "refused a reload");
                    (false, serde_json::json!({ "error": reason }))
                }
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
    let first = tokio::time::timeout(FIRST_FRAME_TIMEOUT, wire::read_frame(&mut stream))
        .await
        .map_err(|_| "peer sent no hello in time".to_string())?
        .map_err(|e| e.to_string())?;
    if let Some(Frame::Message(Envelope {
        from,
        epoch,
        message: Message::CopyRequest { cluster, incarnation, resume },
    })) = &first
    {
        check_copy_request(&node, from, *epoch, *cluster, *incarnation)?;
        // The peer names its epoch, not above ours (`check_copy_request`), as a hello would: a
        // restarted primary has heard what it waits for, and takes writes during the copy.
        node.step_now(Event::PeerAcked).map_err(|e| e.to_string())?;
        return super::copy::send(node, stream, resume.clone()).await;
    }
    let Some(Frame::Message(Envelope {
        from,
        epoch,
        message:
            Message::Hello {
                protocol,
                cluster,
                incarnation,
                history,
                last_lsn,
                role: hello_role,
                confirmed_lsn,
                tail_crcs,
                last_crc,
                config_digest,
            },
    })) = first
    else {
        return Err("peer's first frame was not a hello".into());
    };
    node.note_peer_config(config_digest);
    let meta = node.meta();
    // Only a would-be backup's tail matters (a probe, every 500 ms, reads no journal).
    let probe = matches!(hello_role, Role::Primary | Role::Draining);
    let tail = if probe {
        TailMatch::default()
    } else {
        backup_tail(&node, last_lsn, confirmed_lsn, tail_crcs, last_crc).await
    };
    let hello = Hello {
        from: from.clone(),
        protocol,
        cluster,
        incarnation,
        epoch,
        role: hello_role,
        history,
        last_lsn,
        tail,
        known_incarnation: meta.peer.as_ref().map(|p| p.incarnation),
        acknowledged: node.peer_acknowledged(),
        our_last: node.last_lsn(),
        replicating: *node.replicating.borrow(),
    };
    let answer = match node.step_now(Event::Hello(hello)) {
        Ok(Some(Reply::Hello(answer))) => answer,
        Ok(other) => HelloAnswer::Refused { reason: format!("no answer to the hello ({other:?}): a bug") },
        Err(err) => HelloAnswer::Refused { reason: format!("this node could not decide on the hello: {err}") },
    };
    let our_epoch = node.meta().epoch;
    let reply = |message| Frame::Message(Envelope { from: node.name().to_string(), epoch: our_epoch, message });
    let (start_lsn, cut_after) = match answer {
        HelloAnswer::Welcome { start_lsn, cut_after } => (start_lsn, cut_after),
        HelloAnswer::Standing { epoch: ours, last_lsn, leader } => {
            // A probe: our epoch in the envelope is what it needs (a higher one fences it);
            // our last LSN too (a restarted primary takes no writes while we hold more).
            let reason = format!("{} is {} at epoch {ours}", node.name(), node.role().name());
            let _ =
                wire::write_frame(&mut stream, &reply(Message::Refused { reason, last_lsn: Some(last_lsn), leader }))
                    .await;
            return Ok(());
        }
        HelloAnswer::Diverged { at_lsn, history } => {
            let _ = wire::write_frame(&mut stream, &reply(Message::Diverged { at_lsn, history })).await;
            return Err(format!(
                "peer {from} diverged from our history after LSN {at_lsn}; it needs `hotpair rejoin {from}`"
            ));
        }
        HelloAnswer::Refused { reason } => {
            let _ = wire::write_frame(
                &mut stream,
                &reply(Message::Refused { reason: reason.clone(), last_lsn: None, leader: None }),
            )
            .await;
            return Err(reason);
        }
    };
    let Some(pipeline) = node.pipeline() else {
        let reason = "this node is not the primary".to_string();
        let _ = wire::write_frame(
            &mut stream,
            &reply(Message::Refused { reason: reason.clone(), last_lsn: None, leader: None }),
        )
        .await;
        return Err(reason);
    };
    let meta = node.meta();
    let our_last = node.last_lsn();
    let refuse = |reason: String| {
        let node = node.clone();
        async move {
            let reply = Envelope {
                from: node.name().to_string(),
                epoch: node.meta().epoch,
                message: Message::Refused { reason: reason.clone(), last_lsn: None, leader: None },
            };
            (reply, reason)
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
        message: Message::Welcome {
            start_lsn,
            history: meta.history.clone(),
            last_lsn: our_last,
            cut_after,
            config_digest: Some(node.config_digest()),
        },
    };
    let result = match wire::write_frame(&mut stream, &Frame::Message(welcome)).await {
        Ok(()) => {
            tracing::info!(peer = %from, start_lsn, "backup connected; shipping");
            replication::set_connected(&node.peer, true);
            node.note_peer_link(true);
            node.note_restored();
            // A restarted primary takes writes again once the backup has acked in this session:
            // it is not ahead of our epoch, and it has cut any tail of ours it held (its first
            // ack comes after the cut), so our new records cannot reuse the LSNs of its records.
            let (first_ack, acked) = tokio::sync::oneshot::channel();
            let confirmer = node.clone();
            tokio::spawn(async move {
                if acked.await.is_ok() {
                    if let Err(err) = confirmer.step_now(Event::PeerAcked) {
                        tracing::error!(%err, "taking the backup's first ack");
                    }
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
                heartbeat: node.heartbeat.subscribe(),
                prompt_confirm: node.pair().sync == crate::config::SyncLevel::Applied,
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
            node.note_peer_link(false);
            result
        }
        Err(err) => Err(err.to_string()),
    };
    node.session_active.store(false, Ordering::SeqCst);
    result
}

/// Holds a would-be backup's unconfirmed tail (`tail_crcs` from `confirmed_lsn + 1` on, and
/// `last_crc` at `last_lsn` when the tail is longer) against our records.
async fn backup_tail(
    node: &Arc<Node>,
    last_lsn: Lsn,
    confirmed_lsn: Lsn,
    tail_crcs: Vec<u32>,
    last_crc: Option<u32>,
) -> TailMatch {
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
    TailMatch { confirmed_lsn, matched: matched as u64, all_matched: matched == sent && rest_matches }
}

/// A full-copy request's identity checks (a hello's are the engine's): the name and cluster,
/// and the incarnation the pair knows the peer by (the admin accepted a rebuilt node before).
fn check_copy_request(
    node: &Node,
    from: &str,
    epoch: u64,
    cluster: uuid::Uuid,
    incarnation: uuid::Uuid,
) -> Result<(), String> {
    if from != node.peer_config.name {
        return Err(format!("copy request claims to be {from}, but the certificate is {}", node.peer_config.name));
    }
    if cluster != node.pair().cluster {
        return Err(format!("peer is in cluster {cluster}, this pair is {}", node.pair().cluster));
    }
    if let Some(known) = node.meta().peer.map(|p| p.incarnation).filter(|known| *known != incarnation) {
        return Err(format!(
            "peer {from} presents incarnation {incarnation}, but this pair knows it as {known}; refused"
        ));
    }
    let ours = node.meta().epoch;
    if epoch > ours {
        return Err(format!("peer is at epoch {epoch}, ahead of ours ({ours}): it cannot be copied from us"));
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
