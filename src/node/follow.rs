//! The backup's follower loop: connect to the primary's control port, say hello, and follow
//! its journal until the connection ends; reconnect with a bounded backoff.
//!
//! Reconnects back off from [`FIRST_RETRY`] doubling to [`MAX_RETRY`]; after
//! [`QUIET_ATTEMPTS`] failures in a row it says so once, loudly, and keeps retrying at the slow
//! pace. A `diverged` answer stops following until the node is rejoined (it retries slowly,
//! in case an admin fixed it meanwhile).

use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::TlsConnector;

use super::Node;
use crate::replication::{self, FollowContext};
use crate::wire::{self, Envelope, Frame, Message};
use crate::Error;

const FIRST_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_secs(2);
const QUIET_ATTEMPTS: u32 = 10;
/// Bound on each step of connecting: TCP, TLS, and the primary's answer to the hello.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(node: Arc<Node>) -> Result<(), Error> {
    let connector = TlsConnector::from(crate::tls::node_client_config(&node.pair, node.name())?);
    let mut shutdown = node.shutdown.subscribe();
    let mut replicating = node.replicating.subscribe();
    let mut delay = FIRST_RETRY;
    let mut failures = 0u32;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        if !*replicating.borrow() {
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = replicating.changed() => {}
            }
            continue;
        }
        let mut established = false;
        match session(&node, &connector, &mut established).await {
            Ok(()) => {
                delay = FIRST_RETRY;
                failures = 0;
            }
            Err(reason) => {
                if established {
                    // The session was up and then ended (the primary went away or fell silent):
                    // a fresh run of failures, retried quickly, not the tail of an old backoff.
                    delay = FIRST_RETRY;
                    failures = 0;
                }
                failures += 1;
                if failures == QUIET_ATTEMPTS {
                    tracing::error!(%reason, attempts = failures, "primary unreachable; retrying every {:?}", MAX_RETRY);
                } else if failures < QUIET_ATTEMPTS {
                    tracing::warn!(%reason, attempt = failures, "replication connection failed; retrying");
                }
                tokio::select! {
                    _ = shutdown.changed() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_RETRY);
            }
        }
    }
}

/// One connection: hello, then follow. `Ok` when the connection ended normally;
/// `established` is set once the primary welcomed us.
async fn session(node: &Arc<Node>, connector: &TlsConnector, established: &mut bool) -> Result<(), String> {
    let primary = &node.peer_config;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(primary.peer_via))
        .await
        .map_err(|_| format!("connecting to {} timed out", primary.peer_via))?
        .map_err(|e| format!("connecting to {}: {e}", primary.peer_via))?;
    let _ = tcp.set_nodelay(true);
    // A hung primary accepts TCP (the kernel does) but never finishes TLS or answers the
    // hello: bound both, so the loop goes on retrying instead of waiting on it forever.
    let mut stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        connector.connect(crate::tls::server_name(&node.pair, &primary.name), tcp),
    )
    .await
    .map_err(|_| format!("TLS with {} timed out", primary.name))?
    .map_err(|e| format!("TLS with {}: {e}", primary.name))?;
    let meta = node.meta();
    let hello = Envelope {
        from: node.name().to_string(),
        epoch: meta.epoch,
        message: Message::Hello {
            cluster: node.pair.cluster,
            incarnation: meta.incarnation,
            role: meta.role,
            history: meta.history.clone(),
            last_lsn: node.last_lsn(),
        },
    };
    wire::write_frame(&mut stream, &Frame::Message(hello)).await.map_err(|e| e.to_string())?;
    let reply = tokio::time::timeout(CONNECT_TIMEOUT, wire::read_frame(&mut stream))
        .await
        .map_err(|_| format!("{} did not answer the hello in time", primary.name))?
        .map_err(|e| e.to_string())?;
    match reply {
        Some(Frame::Message(Envelope {
            epoch, message: Message::Welcome { start_lsn, history, last_lsn }, ..
        })) => {
            *established = true;
            node.adopt_history(epoch, &history).map_err(|e| e.to_string())?;
            *super::lock(&node.diverged_at) = None;
            tracing::info!(start_lsn, primary_last = last_lsn, "following the primary");
            let Some(applier) = node.applier() else {
                return Err("this node has no applier (not a backup)".into());
            };
            replication::set_connected(&node.peer, true);
            let ctx = FollowContext {
                name: node.name().to_string(),
                epoch: node.meta().epoch,
                remote: node.remote.clone(),
                store: node.store.clone(),
                applier,
                primary: node.peer.clone(),
                heartbeat: node.pair.heartbeat,
            };
            let stop = stop_when_not_following(node);
            let result = replication::follow(stream, &ctx, stop).await.map_err(|e| e.to_string());
            replication::set_connected(&node.peer, false);
            result
        }
        Some(Frame::Message(Envelope { message: Message::Diverged { at_lsn, .. }, .. })) => {
            *super::lock(&node.diverged_at) = Some(at_lsn);
            Err(format!("our history left the primary's after LSN {at_lsn}; run `hotpair rejoin {}`", node.name()))
        }
        Some(Frame::Message(Envelope { message: Message::Refused { reason }, .. })) => {
            Err(format!("primary refused: {reason}"))
        }
        Some(other) => Err(format!("unexpected answer to hello: {other:?}")),
        None => Err("primary closed the connection after hello".into()),
    }
}

fn stop_when_not_following(node: &Arc<Node>) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let (mut shutdown, mut replicating) = (node.shutdown.subscribe(), node.replicating.subscribe());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.changed() => if *shutdown.borrow() { break },
                _ = replicating.changed() => if !*replicating.borrow() { break },
                _ = tx.closed() => return,
            }
        }
        let _ = tx.send(true);
    });
    rx
}
