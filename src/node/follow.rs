//! The backup's follower loop: connect to the primary's control port, say hello, and follow
//! its journal until the connection ends; reconnect with a bounded backoff.
//!
//! Reconnects back off from [`FIRST_RETRY`] doubling to [`MAX_RETRY`]; after
//! [`QUIET_ATTEMPTS`] failures in a row it says so once, loudly, and keeps retrying at the slow
//! pace. A `diverged` answer stops following until the node is rejoined (it retries slowly,
//! in case an admin fixed it meanwhile).
//!
//! A session starts following (and adopts the primary's history) only while no orchestration
//! primitive holds `Node::role_change`, and only if the engine still has the generation the
//! hello was sent under (no role change since: `Event::Welcomed`). A primitive that holds the
//! follower and then waits for `following` to be false (promote, rejoin) can therefore rely on
//! it: no session slips in behind the wait and writes records into the remote journal it is
//! about to replay, rewind or replace.
//!
//! While disk space is below `disk_min_free` (`super::disk`) the backup ends its session and
//! opens none: a remote journal that stops is whole, one that hits a full disk fails. It
//! reconnects by itself once space is back.
//!
//! The loop runs on a thread of its own, with its own single-threaded runtime
//! ([`run_on_own_thread`]). At `durable` and `applied` a session fsyncs each received batch on
//! that thread before it acks (`replication::follow`): a slow disk holds up the session and
//! nothing else, not the node's status, control port or reads; and the fsync needs no hand-off
//! of the node's runtime to another thread per batch (what `block_in_place` would cost:
//! docs/benchmarks.md, "The follower on its own thread").

use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::TlsConnector;

use super::Node;
use crate::engine::{Event, Reply};
use crate::replication::wire::{self, Envelope, Frame, Message};
use crate::replication::{self, FollowContext};
use crate::storage::meta::Role;
use crate::Error;

const FIRST_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_secs(2);
const QUIET_ATTEMPTS: u32 = 10;
/// Bound on each step of connecting: TCP, TLS, and the primary's answer to the hello.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The primary's refusal while it is not (yet) primary; see `control::peer_session`.
const NOT_PRIMARY_YET: &str = "is not the primary";
/// Retry pace while the peer is reachable but not yet promoted, for this many attempts (2 s).
const PENDING_PROMOTION_RETRY: Duration = Duration::from_millis(10);
const PENDING_PROMOTION_ATTEMPTS: u32 = 200;
/// How often a primary without a backup session asks its peer where it stands.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Runs [`run`] on a thread named `follower` with its own runtime; the returned future ends
/// when the loop does (at shutdown).
pub fn run_on_own_thread(node: Arc<Node>) -> impl std::future::Future<Output = Result<(), Error>> {
    on_own_thread("follower", move || run(node))
}

/// Runs the future `make` returns on a new thread named `name`, on a single-threaded runtime of
/// that thread: whatever blocks in it blocks that thread only. The returned future gives its
/// result once the runtime (and every task the future spawned on it) is gone.
fn on_own_thread<F, Fut>(name: &str, make: F) -> impl std::future::Future<Output = Result<(), Error>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = name.to_string();
    let thread_name = name.clone();
    let spawned = std::thread::Builder::new().name(thread_name.clone()).spawn(move || {
        let result = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => {
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(make())));
                drop(runtime);
                // Said at once and loudly: the node runs on without this loop, and its result
                // is read only at shutdown.
                ran.unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(thread = %thread_name, panic = %what, "the thread panicked (a bug): this node no longer follows its primary or probes its peer; restart it");
                    Err(Error::Failed(format!("the {thread_name} thread panicked: {what}")))
                })
            }
            Err(source) => Err(Error::Io { context: format!("starting the {thread_name} thread's runtime"), source }),
        };
        let _ = tx.send(result);
    });
    async move {
        spawned.map_err(|source| Error::Io { context: format!("starting the {name} thread"), source })?;
        rx.await.unwrap_or_else(|_| Err(Error::Failed(format!("the {name} thread ended without a result"))))
    }
}

pub async fn run(node: Arc<Node>) -> Result<(), Error> {
    let connector = TlsConnector::from(crate::tls::node_client_config(&node.pair(), node.name())?);
    let mut shutdown = node.shutdown.subscribe();
    let mut replicating = node.replicating.subscribe();
    let mut role = node.subscribe_role();
    let mut disk = node.disk.subscribe();
    let mut held = node.follower_held.subscribe();
    let mut delay = FIRST_RETRY;
    let mut failures = 0u32;
    let mut last_role = None;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let current = *role.borrow_and_update();
        if last_role != Some(current) {
            // A new role starts a fresh run of attempts: a node just demoted must reach its new
            // primary at once, not at the tail of a backoff from its backup days long ago.
            (delay, failures, last_role) = (FIRST_RETRY, 0, Some(current));
        }
        match current {
            Role::Backup if *replicating.borrow() && node.disk.borrow().low => {
                tracing::warn!("disk space low: not following the primary until space returns");
                tokio::select! {
                    _ = shutdown.changed() => {}
                    _ = replicating.changed() => {}
                    _ = role.changed() => {}
                    _ = disk.wait_for(|space| !space.low) => {}
                }
                continue;
            }
            Role::Backup if *held.borrow_and_update() => {
                // A promotion or rejoin is taking over: no session until it lets go.
                tokio::select! {
                    _ = shutdown.changed() => {}
                    _ = held.changed() => {}
                    _ = role.changed() => {}
                }
                continue;
            }
            Role::Backup if *replicating.borrow() => {}
            Role::Primary | Role::Draining => {
                if !node.session_active.load(std::sync::atomic::Ordering::SeqCst) {
                    probe(&node, &connector).await;
                }
                tokio::select! {
                    _ = shutdown.changed() => {}
                    _ = role.changed() => {}
                    _ = tokio::time::sleep(PROBE_INTERVAL) => {}
                }
                continue;
            }
            _ => {
                tokio::select! {
                    _ = shutdown.changed() => {}
                    _ = replicating.changed() => {}
                    _ = role.changed() => {}
                }
                continue;
            }
        }
        let mut established = false;
        node.metrics.note_connect_attempt();
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
                if reason.contains(NOT_PRIMARY_YET) && failures <= PENDING_PROMOTION_ATTEMPTS {
                    // The peer is up but not yet promoted (a switchover between demote and
                    // promote): the moment it is, this node's hello ends the write outage.
                    delay = PENDING_PROMOTION_RETRY;
                }
                if failures == QUIET_ATTEMPTS {
                    tracing::error!(%reason, attempts = failures, "primary unreachable; retrying every {:?}", MAX_RETRY);
                } else if failures < QUIET_ATTEMPTS {
                    tracing::warn!(%reason, attempt = failures, "replication connection failed; retrying");
                }
                tokio::select! {
                    _ = shutdown.changed() => {}
                    _ = role.changed() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = if reason.contains(NOT_PRIMARY_YET) && failures < PENDING_PROMOTION_ATTEMPTS {
                    PENDING_PROMOTION_RETRY
                } else {
                    (delay * 2).min(MAX_RETRY)
                };
            }
        }
    }
}

/// Connects to the peer's control port with TLS, bounded at each step.
pub(super) async fn connect(
    node: &Arc<Node>,
    connector: &TlsConnector,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let peer = &node.peer_config;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(peer.peer_via))
        .await
        .map_err(|_| format!("connecting to {} timed out", peer.peer_via))?
        .map_err(|e| format!("connecting to {}: {e}", peer.peer_via))?;
    let _ = tcp.set_nodelay(true);
    // A hung peer accepts TCP (the kernel does) but never finishes TLS or answers the hello:
    // bound both, so the loop goes on retrying instead of waiting on it forever.
    tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(crate::tls::server_name(&node.pair(), &peer.name), tcp))
        .await
        .map_err(|_| format!("TLS with {} timed out", peer.name))?
        .map_err(|e| crate::tls::explain_foreign(format!("TLS with {} at {}: {e}", peer.name, peer.peer_via)))
}

/// The hello, and the engine's generation it was sent under (read first: a role change after it
/// voids the welcome).
fn hello(node: &Node) -> (Envelope, u64) {
    let generation = node.generation();
    let meta = node.meta();
    let last_lsn = node.last_lsn();
    let confirmed_lsn = node.applier().map_or(0, |a| a.confirmed()).max(node.store.position().applied_lsn);
    // Only a would-be backup's tail matters; a primary's probe (every 500 ms) reads no journal.
    let (tail_crcs, last_crc) = if node.role() == Role::Backup {
        let tail = usize::try_from(last_lsn.saturating_sub(confirmed_lsn)).unwrap_or(usize::MAX);
        let crcs = node.record_crcs(confirmed_lsn + 1, tail.min(wire::MAX_TAIL_CRCS));
        let last_crc = if crcs.len() < tail { node.record_crc(last_lsn) } else { None };
        (crcs, last_crc)
    } else {
        (Vec::new(), None)
    };
    let envelope = Envelope {
        from: node.name().to_string(),
        epoch: meta.epoch,
        message: Message::Hello {
            protocol: crate::engine::PROTOCOL_VERSION,
            cluster: node.pair().cluster,
            incarnation: meta.incarnation,
            role: node.role(),
            history: meta.history.clone(),
            last_lsn,
            confirmed_lsn,
            tail_crcs,
            last_crc,
            config_digest: Some(node.config_digest()),
        },
    };
    (envelope, generation)
}

/// A primary without a backup asks the peer where it stands: a peer in a higher epoch means
/// this node was failed over and must fence (invariant 2); a peer in our epoch or below has not
/// been promoted past us, so a restarted primary may take writes again.
async fn probe(node: &Arc<Node>, connector: &TlsConnector) {
    let answer = async {
        let mut stream = connect(node, connector).await?;
        wire::write_frame(&mut stream, &Frame::Message(hello(node).0)).await.map_err(|e| e.to_string())?;
        tokio::time::timeout(CONNECT_TIMEOUT, wire::read_frame(&mut stream))
            .await
            .map_err(|_| "no answer to the probe in time".to_string())?
            .map_err(|e| e.to_string())
    };
    match answer.await {
        Ok(Some(Frame::Message(Envelope { epoch, message, .. }))) => {
            let (last_lsn, leader) = match message {
                Message::Refused { last_lsn, leader, .. } => (last_lsn, leader),
                _ => (None, None),
            };
            // The engine fences on a higher epoch, waits while the peer holds more of our epoch
            // than we do (its welcome cuts that first), and otherwise takes the peer's word.
            let answered = Event::ProbeAnswered { epoch, leader, last_lsn, our_last: node.last_lsn() };
            if let Err(err) = node.step_now(answered) {
                tracing::error!(%err, "taking the probe's answer");
            }
        }
        Ok(other) => tracing::debug!(?other, "probe got no envelope"),
        Err(reason) => tracing::debug!(%reason, "probe of the peer failed"),
    }
}

/// One connection: hello, then follow. `Ok` when the connection ended normally;
/// `established` is set once the primary welcomed us.
async fn session(node: &Arc<Node>, connector: &TlsConnector, established: &mut bool) -> Result<(), String> {
    let primary = &node.peer_config;
    // Subscribed before the hello (the current role counts as seen): any role change from here
    // on (a rejoin that began while the hello was in flight) voids the welcome, and ends the
    // session once it follows.
    let role = node.subscribe_role();
    let mut stream = connect(node, connector).await?;
    let (hello, generation) = hello(node);
    wire::write_frame(&mut stream, &Frame::Message(hello)).await.map_err(|e| e.to_string())?;
    let reply = tokio::time::timeout(CONNECT_TIMEOUT, wire::read_frame(&mut stream))
        .await
        .map_err(|_| format!("{} did not answer the hello in time", primary.name))?
        .map_err(|e| e.to_string())?;
    match reply {
        Some(Frame::Message(Envelope {
            epoch,
            message: Message::Welcome { start_lsn, history, last_lsn, cut_after, config_digest },
            ..
        })) => {
            // Following starts only while no primitive runs (a rejoin or promotion holds
            // `role_change` across its wait for `following` to be false) and the engine still
            // has the generation the hello was sent under; the engine cuts what the welcome
            // asks, then adopts the primary's history.
            node.note_peer_config(config_digest);
            let Ok(_no_primitive) = node.role_change.try_lock() else {
                return Err("a role change began during the hello; not following".into());
            };
            let welcomed = Event::Welcomed { epoch, history, cut_after, generation };
            match node.drive(welcomed).await? {
                Reply::Follow => {}
                Reply::Refused(reason) => return Err(reason),
                other => return Err(format!("unexpected answer to a welcome: {other} (a bug)")),
            }
            *established = true;
            node.metrics.note_session_established();
            tracing::info!(start_lsn, primary_last = last_lsn, "following the primary");
            let Some(applier) = node.applier() else {
                return Err("this node has no applier (not a backup)".into());
            };
            replication::set_connected(&node.peer, true);
            node.note_peer_link(true);
            let ctx = FollowContext {
                name: node.name().to_string(),
                epoch: node.meta().epoch,
                remote: node.remote.clone(),
                store: node.store.clone(),
                applier,
                primary: node.peer.clone(),
                heartbeat: node.heartbeat.subscribe(),
                ack_every_receipt: node.pair().sync == crate::config::SyncLevel::Received,
                may_echo: {
                    let node = node.clone();
                    Arc::new(move || node.may_echo())
                },
            };
            let stop = stop_when_not_following(node, role);
            node.following.send_replace(true);
            drop(_no_primitive);
            let result = replication::follow(stream, &ctx, stop).await.map_err(|e| e.to_string());
            // Disconnected first: `following = false` wakes a promote on another thread, and
            // the old primary may connect to it as its backup at once; a late `false` would
            // then mark that live session lost.
            replication::set_connected(&node.peer, false);
            node.note_peer_link(false);
            node.followed_until_ms.store(node.now_ms(), std::sync::atomic::Ordering::SeqCst);
            node.following.send_replace(false);
            result
        }
        Some(Frame::Message(Envelope { message: Message::Diverged { at_lsn, .. }, .. })) => {
            *super::lock(&node.diverged_at) = Some(at_lsn);
            Err(format!("our history left the primary's after LSN {at_lsn}; run `hotpair rejoin {}`", node.name()))
        }
        Some(Frame::Message(Envelope { message: Message::Refused { reason, .. }, .. })) => {
            Err(format!("primary refused: {reason}"))
        }
        Some(other) => Err(format!("unexpected answer to hello: {other:?}")),
        None => Err("primary closed the connection after hello".into()),
    }
}

/// Fires when the session must end. `role` is the receiver the session's hello was sent under,
/// so a role change made before this is called is not missed.
fn stop_when_not_following(
    node: &Arc<Node>,
    mut role: tokio::sync::watch::Receiver<Role>,
) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let (mut shutdown, mut replicating, mut disk, mut held) = (
        node.shutdown.subscribe(),
        node.replicating.subscribe(),
        node.disk.subscribe(),
        node.follower_held.subscribe(),
    );
    tokio::spawn(async move {
        // What happened before this was called (during the connect or the hello) counts too:
        // these receivers start with the current values already seen.
        let mut stop = *shutdown.borrow() || !*replicating.borrow() || *held.borrow_and_update();
        while !stop {
            stop = tokio::select! {
                _ = shutdown.changed() => *shutdown.borrow(),
                _ = replicating.changed() => !*replicating.borrow(),
                _ = role.changed() => *role.borrow() != Role::Backup,
                _ = held.changed() => *held.borrow(),
                // `wait_for` looks at the current value first.
                _ = disk.wait_for(|space| space.low) => {
                    tracing::warn!("disk space low: ending the session with the primary rather than fill the disk");
                    true
                }
                _ = tx.closed() => return,
            };
        }
        let _ = tx.send(true);
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What blocks on the follower's thread (a batch's fsync) leaves the node's runtime free,
    /// even with one worker: its status answers and timers are not held up by the disk. Both
    /// run as tasks on the one worker, as in a node; were the follower's future run there
    /// rather than on its own thread, its stall would hold the timer up.
    #[test]
    fn blocking_on_the_own_thread_does_not_hold_up_the_nodes_runtime() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let stall = Duration::from_millis(1500);
        runtime.block_on(async move {
            let started = std::time::Instant::now();
            let other = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                started.elapsed()
            });
            let follower = tokio::spawn(on_own_thread("test-follower", move || async move {
                assert_eq!(std::thread::current().name(), Some("test-follower"));
                std::thread::sleep(stall);
                Ok(())
            }));
            let answered_after = other.await.unwrap();
            follower.await.unwrap().unwrap();
            assert!(started.elapsed() >= stall, "the follower did block its own thread");
            assert!(answered_after < stall / 2, "the node's timer waited {answered_after:?} for a {stall:?} stall");
        });
    }

    /// A follower that panics ends with an error that says so, not a hang or a silent Ok.
    #[test]
    fn a_panic_on_the_own_thread_is_reported() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let result = runtime.block_on(on_own_thread("test-panics", || async { panic!("boom") }));
        let err = result.unwrap_err().to_string();
        assert!(err.contains("the test-panics thread panicked: boom"), "{err}");
    }
}
