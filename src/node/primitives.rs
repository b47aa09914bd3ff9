//! The orchestration primitives as one node carries them out: drain, resume, demote, promote,
//! fence, wait-applied, rejoin, verify.
//!
//! ## Job
//! The orchestrator (in the admin CLI) drives the pair by sending these as admin requests; each
//! changes at most this node's role, through the role state machine ([`crate::role`]), and
//! persists the result before it answers.
//!
//! ## Invariants
//! - One primitive at a time per node (`Node::role_change`).
//! - Epoch-guarded: a request that names an epoch other than the node's is refused and changes
//!   nothing — a stale orchestrator cannot undo a newer one's work.
//! - Idempotent: repeating a primitive whose effect is already there answers the same result
//!   ("already done"), so a re-run orchestrator resumes where the last one stopped.
//! - Promote takes writes only after every received record is durable and applied; rejoin
//!   saves the orphaned tail to a file (fsynced) *before* it undoes it in the store.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use super::{lock, Node};
use crate::journal::{Epoch, HistoryEntry, Lsn, Record, RecordBody};
use crate::meta::Role;
use crate::role::{transition, Event};
use crate::wire::{self, AdminRequest, Standing};

/// Carries out one primitive; `Err` is the refusal, in one sentence.
pub async fn handle(node: &Arc<Node>, request: AdminRequest) -> Result<Value, String> {
    match request {
        AdminRequest::Drain { op_id, epoch, lease_ms } => drain(node, op_id, epoch, lease_ms).await,
        AdminRequest::Resume { op_id, epoch } => resume(node, op_id, epoch).await,
        AdminRequest::Demote { op_id, epoch } => demote(node, op_id, epoch).await,
        AdminRequest::Promote { op_id, epoch, expect_lsn } => promote(node, op_id, epoch, expect_lsn).await,
        AdminRequest::Fence { epoch, primary } => fence(node, epoch, &primary).await,
        AdminRequest::WaitApplied { lsn, timeout_ms } => {
            let (applied, digest) = wait_applied(node, lsn, Duration::from_millis(timeout_ms)).await?;
            Ok(json!({ "applied_lsn": applied, "digest": digest.to_hex() }))
        }
        AdminRequest::Rejoin { op_id, history, epoch, last_lsn, first_available, dry_run, full_copy } => {
            let primary = PrimaryView { history, epoch, last_lsn, first_available };
            rejoin(node, op_id, primary, dry_run, full_copy).await
        }
        AdminRequest::Verify { lsn, full, timeout_ms } => {
            verify(node, lsn, full, Duration::from_millis(timeout_ms)).await
        }
        AdminRequest::FirstAvailable => first_available(node).map(|lsn| json!({ "first_available": lsn })),
        AdminRequest::SetProgress { progress } => {
            node.update_meta(|meta| meta.orchestration = progress).map_err(|e| e.to_string())?;
            Ok(json!({ "saved": true }))
        }
        AdminRequest::AcceptPeer { incarnation } => {
            node.accept_peer(incarnation).map_err(|e| e.to_string())?;
            Ok(json!({ "peer_incarnation": incarnation }))
        }
        other => Err(format!("{other:?} is not an orchestration primitive")),
    }
}

fn check_epoch(node: &Node, epoch: Epoch) -> Result<(), String> {
    let ours = node.meta().epoch;
    if ours != epoch {
        return Err(format!(
            "{} is at epoch {ours}, but the orchestrator expected epoch {epoch}: the pair changed since it looked; run `hotpair status`",
            node.name()
        ));
    }
    Ok(())
}

fn next_role(node: &Node, event: Event) -> Result<Role, String> {
    transition(node.role(), event).map_err(|e| format!("{}: {e}", node.name()))
}

/// Runs blocking work (fsync waits, thread joins, sled) without stalling the async runtime.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

async fn drain(node: &Arc<Node>, op_id: Uuid, epoch: Epoch, lease_ms: u64) -> Result<Value, String> {
    let _one = node.role_change.lock().await;
    check_epoch(node, epoch)?;
    let role = next_role(node, Event::Drain)?;
    let pipeline = node.pipeline().ok_or_else(|| format!("{} has no commit pipeline to drain", node.name()))?;
    pipeline.set_refusing(Some(format!("draining for a switchover (op {op_id}); retry on the new primary")));
    node.set_role(role).map_err(|e| e.to_string())?;
    *lock(&node.drain_lease) = Some(op_id);
    // In-flight commits were appended before the refusal; they finish once durable here and at
    // their sync level on the backup. The drain LSN is the last of them.
    let last = pipeline.last_lsn();
    if let Some(local_last) = node.local.last_lsn() {
        blocking(|| node.local.sync_to(local_last)).map_err(|e| e.to_string())?;
    }
    spawn_lease(node.clone(), op_id, Duration::from_millis(lease_ms));
    tracing::info!(%op_id, lsn = last, lease_ms, "drained: new writes get TRYAGAIN");
    Ok(json!({ "lsn": last, "digest": pipeline.digest().to_hex(), "lease_ms": lease_ms }))
}

/// Resumes writes when the lease of drain `op_id` runs out and nothing moved the node on.
fn spawn_lease(node: Arc<Node>, op_id: Uuid, lease: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(lease).await;
        let _one = node.role_change.lock().await;
        if node.role() == Role::Draining && *lock(&node.drain_lease) == Some(op_id) {
            tracing::warn!(%op_id, "drain lease expired before the switchover completed: resuming writes");
            if let Err(err) = resume_writes(&node, Event::LeaseExpired) {
                tracing::error!(%err, "could not resume after the drain lease expired");
            }
        }
    });
}

fn resume_writes(node: &Node, event: Event) -> Result<(), String> {
    let role = next_role(node, event)?;
    node.set_role(role).map_err(|e| e.to_string())?;
    *lock(&node.drain_lease) = None;
    node.lift_refusal();
    Ok(())
}

async fn resume(node: &Arc<Node>, op_id: Uuid, epoch: Epoch) -> Result<Value, String> {
    let _one = node.role_change.lock().await;
    check_epoch(node, epoch)?;
    let was = node.role();
    resume_writes(node, Event::Resume)?;
    tracing::info!(%op_id, "resumed writes");
    Ok(json!({ "resumed": was == Role::Draining }))
}

async fn demote(node: &Arc<Node>, op_id: Uuid, epoch: Epoch) -> Result<Value, String> {
    let _one = node.role_change.lock().await;
    check_epoch(node, epoch)?;
    let already = node.role() == Role::Backup;
    let role = next_role(node, Event::Demote)?;
    if !already {
        blocking(|| node.stop_pipeline()).map_err(|e| e.to_string())?;
        node.start_applier();
        *lock(&node.drain_lease) = None;
        *lock(&node.diverged_at) = None;
        node.peer.send_replace(crate::replication::PeerState::default());
        node.set_role(role).map_err(|e| e.to_string())?;
        tracing::info!(%op_id, "demoted: this node is now the backup");
    }
    let position = node.store.position();
    Ok(
        json!({ "lsn": node.last_lsn(), "applied_lsn": position.applied_lsn, "digest": position.digest.to_hex(), "already": already }),
    )
}

async fn promote(node: &Arc<Node>, op_id: Uuid, epoch: Epoch, expect_lsn: Option<Lsn>) -> Result<Value, String> {
    let _one = node.role_change.lock().await;
    let meta = node.meta();
    let new_epoch = epoch + 1;
    let ours = meta.history.last().is_some_and(|h| h.epoch == new_epoch && h.primary == node.name());
    if meta.epoch == new_epoch && ours && node.role() == Role::Primary {
        let first_lsn = meta.history.last().map_or(0, |h| h.first_lsn);
        return Ok(json!({ "epoch": new_epoch, "first_lsn": first_lsn, "already": true }));
    }
    check_epoch(node, epoch)?;
    if node.role() != Role::Backup {
        return Err(format!("{} is {}; only a backup can be promoted", node.name(), node.role().name()));
    }
    let heard = node.peer.borrow().peer_last_lsn;
    // Stop following first (the follower ends its session when the role is no longer backup),
    // then apply everything received.
    node.role.send_replace(Role::Primary);
    let mut following = node.following.subscribe();
    let stopped = tokio::time::timeout(Duration::from_secs(10), following.wait_for(|f| !*f)).await;
    let result = match stopped {
        Ok(_) => blocking(|| take_over(node, new_epoch, expect_lsn)),
        Err(_) => Err(TakeOverFailed {
            reason: "the follower did not stop within 10s".to_string(),
            applied_unconfirmed: false,
        }),
    };
    match result {
        Ok(first_lsn) => {
            let received = first_lsn - 1;
            tracing::info!(%op_id, epoch = new_epoch, first_lsn, "promoted: this node is the primary");
            Ok(json!({
                "epoch": new_epoch,
                "first_lsn": first_lsn,
                "last_received_lsn": received,
                "last_heard_lsn": heard,
                "not_received": heard.saturating_sub(received),
                "already": false,
            }))
        }
        Err(TakeOverFailed { reason, applied_unconfirmed: false }) => {
            // Nothing was persisted: back to following.
            node.start_applier();
            node.role.send_replace(Role::Backup);
            Err(reason)
        }
        Err(TakeOverFailed { reason, applied_unconfirmed: true }) => {
            // The store took records its primary may never have confirmed, so this node cannot
            // go back to following as if nothing happened (its hello would count them as agreed).
            let message = format!(
                "promotion of {} failed after applying records its primary had not confirmed ({reason}); it is fenced: promote it again, or rejoin it with --allow-full-copy",
                node.name()
            );
            node.fence(&message);
            node.incidents.raise(
                crate::incident::Kind::ApplyError,
                crate::incident::Severity::Critical,
                message.clone(),
            );
            Err(message)
        }
    }
}

/// Why a promotion failed, and whether the store already holds records past what the old
/// primary confirmed (then the node may not simply follow again).
struct TakeOverFailed {
    reason: String,
    applied_unconfirmed: bool,
}

/// The backup's half of a promotion; returns the new epoch's first LSN.
fn take_over(node: &Node, new_epoch: Epoch, expect_lsn: Option<Lsn>) -> Result<Lsn, TakeOverFailed> {
    let before = |reason: String| TakeOverFailed { reason, applied_unconfirmed: false };
    node.stop_applier().map_err(|e| before(e.to_string()))?;
    // Checked before anything unconfirmed is applied: a promotion refused here leaves the node
    // the backup it was, its store holding only what its primary confirmed.
    if let Some(expect) = expect_lsn {
        let last = node.last_lsn();
        if last < expect {
            return Err(before(format!(
                "{} has only LSN {last}, but the drained primary ended at {expect}",
                node.name()
            )));
        }
    }
    let confirmed = node.store.position().applied_lsn;
    let after =
        |reason: String| TakeOverFailed { applied_unconfirmed: node.store.position().applied_lsn > confirmed, reason };
    // Everything received counts, confirmed or not: it may hold acknowledged commits.
    node.replay(Lsn::MAX).map_err(|e| after(e.to_string()))?;
    let last = node.last_lsn();
    let applied = node.store.position().applied_lsn;
    if applied != last {
        return Err(after(format!("{} applied LSN {applied} but holds {last}; cannot promote", node.name())));
    }
    let first_lsn = last + 1;
    let name = node.name().to_string();
    let meta = node
        .update_meta(|meta| {
            meta.epoch = new_epoch;
            meta.history.push(HistoryEntry { epoch: new_epoch, first_lsn, primary: name });
            meta.role = Role::Primary;
            meta.orchestration = None;
        })
        .map_err(|e| after(e.to_string()))?;
    let pipeline = Arc::new(crate::pipeline::Pipeline::start_watched(
        node.local.clone(),
        node.store.clone(),
        first_lsn,
        new_epoch,
        node.watches.clone(),
    ));
    pipeline
        .append_control(crate::clock::now_ms(), RecordBody::EpochStart { history: meta.history.clone() })
        .map_err(|e| after(e.to_string()))?;
    node.peer.send_replace(crate::replication::PeerState::default());
    // A new primary ships to its backup, whatever `replicate stop` said in its backup days.
    node.set_replicating(true).map_err(|e| after(e.to_string()))?;
    *lock(&node.diverged_at) = None;
    *lock(&node.pipeline) = Some(pipeline);
    node.role.send_replace(Role::Primary);
    Ok(first_lsn)
}

async fn fence(node: &Arc<Node>, epoch: Epoch, primary: &str) -> Result<Value, String> {
    let _one = node.role_change.lock().await;
    let ours = node.meta().epoch;
    let writer = matches!(node.role(), Role::Primary | Role::Draining);
    if epoch > ours && writer {
        node.fence(&format!("the admin reports epoch {epoch} led by {primary}, ahead of our {ours}"));
    }
    Ok(json!({ "role": node.role().name(), "epoch": ours }))
}

/// Waits until the store has applied `lsn`; answers the applied LSN and the store's digest.
pub async fn wait_applied(node: &Node, lsn: Lsn, timeout: Duration) -> Result<(Lsn, crate::Digest), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let position = node.store.position();
        if position.applied_lsn >= lsn {
            return Ok((position.applied_lsn, position.digest));
        }
        if let Some(reason) = node.applier().and_then(|a| a.failure()) {
            return Err(format!("{} stopped applying: {reason}", node.name()));
        }
        // Asked again each round: the applier may have been replaced (a role change) meanwhile.
        match (node.applier(), node.pipeline()) {
            (Some(applier), _) => applier.hurry_to(lsn),
            (None, Some(pipeline)) => pipeline.applier().hurry_to(lsn),
            (None, None) => {}
        }
        let watcher = node.applier().map(|a| a.subscribe()).or_else(|| node.pipeline().map(|p| p.subscribe_applied()));
        let wait = async {
            match watcher {
                Some(mut applied) => {
                    let _ = applied.wait_for(|&applied| applied >= lsn).await;
                }
                // Between roles nothing publishes progress: look again shortly.
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        if tokio::time::timeout_at(deadline, wait).await.is_err() {
            return Err(format!(
                "{} applied only LSN {} of {lsn} within {}",
                node.name(),
                node.store.position().applied_lsn,
                humantime::format_duration(timeout)
            ));
        }
    }
}

/// The primary as the orchestrator saw it, for a rejoin.
struct PrimaryView {
    history: Vec<HistoryEntry>,
    epoch: Epoch,
    last_lsn: Lsn,
    first_available: Lsn,
}

async fn rejoin(
    node: &Arc<Node>,
    op_id: Uuid,
    primary: PrimaryView,
    dry_run: bool,
    full_copy: bool,
) -> Result<Value, String> {
    let _one = node.role_change.lock().await;
    let meta = node.meta();
    if primary.epoch < meta.epoch {
        return Err(format!(
            "{} is at epoch {}, ahead of the primary's {}: it cannot rejoin behind an older primary",
            node.name(),
            meta.epoch,
            primary.epoch
        ));
    }
    let (divergence, orphaned, plan) = rejoin_plan(node, &primary);
    if dry_run {
        return Ok(plan);
    }
    let needs_from = divergence + 1;
    if plan["shippable"] != true && !full_copy {
        return Err(format!(
            "the primary's journals start at LSN {}, but {} needs them from LSN {needs_from}: a full copy is needed (--allow-full-copy)",
            primary.first_available,
            node.name()
        ));
    }
    let writer = matches!(node.role(), Role::Primary | Role::Draining);
    if writer && primary.epoch == meta.epoch && orphaned == 0 && primary.history == meta.history {
        return Err(format!("{} is the primary of the current epoch; there is nothing to rejoin", node.name()));
    }
    if writer {
        node.fence(&format!("rejoin {op_id}: epoch {} is led by another primary", primary.epoch));
    }
    let role = next_role(node, Event::RejoinStarted)?;
    node.set_role(role).map_err(|e| e.to_string())?;
    // A lagging backup may be in a session: it ends when the role is no longer backup.
    let mut following = node.following.subscribe();
    if tokio::time::timeout(Duration::from_secs(10), following.wait_for(|f| !*f)).await.is_err() {
        return Err(format!("{} did not stop following within 10s; run rejoin again", node.name()));
    }
    // Until now the node may have been following (a rebuilt node the primary has just accepted
    // reconnects by itself): plan again on what it holds now, or the records it received since
    // would be rewound as if they had diverged — records it acknowledged, so that the primary
    // would then refuse it as a restored copy. It only ever moves forward on the primary's history.
    let (divergence, orphaned, plan) = rejoin_plan(node, &primary);
    if divergence + 1 != needs_from {
        tracing::info!(%op_id, planned = needs_from - 1, now = divergence, "received more from the primary as the rejoin began");
    }
    let started = std::time::Instant::now();
    let outcome = if full_copy {
        copy_in(node, op_id, &primary, divergence).await
    } else {
        blocking(|| resynchronize(node, op_id, &primary, divergence))
    };
    let (orphans_file, rewound) = outcome.map_err(|e| format!("rejoin of {} failed while {e}", node.name()))?;
    // Rejoining means following: a `replicate stop` left on this node is lifted.
    node.set_replicating(true).map_err(|e| e.to_string())?;
    let role = next_role(node, Event::RejoinFinished)?;
    node.start_applier();
    node.set_role(role).map_err(|e| e.to_string())?;
    tracing::info!(%op_id, divergence, orphaned, rewound, ms = started.elapsed().as_millis() as u64, "rejoined as backup; catching up");
    if let Some(file) = &orphans_file {
        use crate::incident::{Kind, Severity};
        let message = format!("{orphaned} orphaned transaction(s) past LSN {divergence} undone and saved in {file}");
        node.incidents.raise(Kind::OrphanedTail, Severity::Warning, message.clone());
        node.incidents.resolve(Kind::OrphanedTail, message);
    }
    let mut plan = plan;
    plan["orphans_file"] = json!(orphans_file);
    plan["rewound"] = json!(rewound);
    plan["full_copy"] = json!(full_copy);
    Ok(plan)
}

/// Where the node's history leaves the primary's (the divergence LSN), how many transactions of
/// the node lie past it, and the plan as the orchestrator shows it.
///
/// `primary` was read before the request was sent. Records the node holds past `primary.last_lsn`
/// in the primary's own epoch came from that primary (one writer per epoch), received in the
/// meantime: they are on its history, not a divergence.
fn rejoin_plan(node: &Node, primary: &PrimaryView) -> (Lsn, u64, Value) {
    let our_last = node.last_lsn();
    let (divergence, primary_last) = divergence_point(primary, &node.meta().history, our_last);
    // Transactions only: canaries and other control records in the tail carry no data. If
    // the tail cannot be read (journals lost: a full-copy case), count every record past it.
    let orphaned = orphaned_tail(node, divergence)
        .map(|tail| tail.iter().filter(|r| matches!(r.body, RecordBody::Txn { .. })).count() as u64)
        .unwrap_or(our_last.saturating_sub(divergence));
    let needs_from = divergence + 1;
    let shippable = primary_last < needs_from || primary.first_available <= needs_from;
    let plan = json!({
        "node": node.name(),
        "divergence_lsn": divergence,
        "orphaned": orphaned,
        "needs_from": needs_from,
        "primary_first_available": primary.first_available,
        "shippable": shippable,
    });
    (divergence, orphaned, plan)
}

/// The divergence LSN of a node with `history` and records up to `our_last`, and the primary's
/// last LSN as far as the node knows it (see [`rejoin_plan`]).
fn divergence_point(primary: &PrimaryView, history: &[HistoryEntry], our_last: Lsn) -> (Lsn, Lsn) {
    let in_primary_epoch =
        history.last().is_some_and(|h| h.epoch == primary.epoch) && history.last() == primary.history.last();
    let primary_last = if in_primary_epoch { primary.last_lsn.max(our_last) } else { primary.last_lsn };
    let divergence = match wire::standing(&primary.history, primary_last, history, our_last) {
        Standing::OnHistory { next_lsn } => next_lsn - 1,
        Standing::Diverged { at_lsn } => at_lsn,
    };
    (divergence, primary_last)
}

/// Saves and undoes everything past `divergence`, truncates both journals there, and adopts the
/// primary's history. Returns the orphans file (if there were orphans) and how many records
/// were rewound in the store. Each step is safe to repeat after a crash: the file is rewritten
/// whole, the store is rewound only down from where it stands, truncation is idempotent.
fn resynchronize(
    node: &Node,
    op_id: Uuid,
    primary: &PrimaryView,
    divergence: Lsn,
) -> Result<(Option<String>, u64), String> {
    node.stop_pipeline().map_err(|e| format!("stopping the pipeline: {e}"))?;
    node.stop_applier().map_err(|e| format!("stopping the applier: {e}"))?;
    let orphans = orphaned_tail(node, divergence)?;
    let file = if orphans.iter().any(|r| matches!(r.body, RecordBody::Txn { .. })) {
        Some(save_orphans(node, op_id, &orphans).map_err(|e| format!("saving the orphans file: {e}"))?)
    } else {
        None
    };
    let mut rewound = 0;
    for record in &orphans {
        let applied = node.store.position().applied_lsn;
        if record.lsn == applied {
            node.store.rewind(record).map_err(|e| format!("rewinding LSN {}: {e}", record.lsn))?;
            rewound += 1;
        }
    }
    let applied = node.store.position().applied_lsn;
    if applied > divergence {
        return Err(format!(
            "rewinding: the store is at LSN {applied}, but the journals no longer hold the records to undo it back to {divergence}"
        ));
    }
    for journal in [&node.local, &node.remote] {
        journal.truncate_after(divergence).map_err(|e| format!("truncating the journal: {e}"))?;
    }
    // Of the remote journal only what is settled: the primary confirms the rest once followed.
    let settled = node.settled_lsn(&primary.history);
    node.replay(settled.min(divergence)).map_err(|e| format!("replaying up to the divergence point: {e}"))?;
    adopt_primary(node, primary)?;
    Ok((file, rewound))
}

/// Takes the primary's history and epoch: from here on this node is on its history.
fn adopt_primary(node: &Node, primary: &PrimaryView) -> Result<(), String> {
    node.update_meta(|meta| {
        if primary.history.len() >= meta.history.len() {
            meta.history = primary.history.clone();
        }
        meta.epoch = meta.epoch.max(primary.epoch);
        meta.orchestration = None;
    })
    .map_err(|e| format!("saving the primary's history: {e}"))?;
    *lock(&node.diverged_at) = None;
    node.peer.send_replace(crate::replication::PeerState::default());
    Ok(())
}

/// The orphaned transactions still in this node's journals (past `divergence`), newest first.
fn orphaned_tail(node: &Node, divergence: Lsn) -> Result<Vec<Record>, String> {
    let mut orphans: Vec<Record> = Vec::new();
    for journal in [&node.local, &node.remote] {
        let tail = journal.read_reverse_after(divergence).map_err(|e| format!("reading the orphaned tail: {e}"))?;
        orphans.extend(tail);
    }
    orphans.sort_by_key(|r| std::cmp::Reverse(r.lsn));
    orphans.dedup_by_key(|r| r.lsn);
    Ok(orphans)
}

/// Rejoin by full copy (only when the admin allowed it): save what orphans the journals still
/// hold, empty journals and store, receive the primary's store at one position over the control
/// port, check it against the primary's digest, and adopt the primary's history. Catch-up then
/// continues from the copy's LSN as a backup. The primary keeps taking writes meanwhile.
async fn copy_in(
    node: &Arc<Node>,
    op_id: Uuid,
    primary: &PrimaryView,
    divergence: Lsn,
) -> Result<(Option<String>, u64), String> {
    let file = blocking(|| -> Result<Option<String>, String> {
        node.stop_pipeline().map_err(|e| format!("stopping the pipeline: {e}"))?;
        node.stop_applier().map_err(|e| format!("stopping the applier: {e}"))?;
        let orphans = orphaned_tail(node, divergence).unwrap_or_else(|reason| {
            tracing::warn!(%reason, "full copy: the orphaned tail cannot be read whole; saving none of it");
            Vec::new()
        });
        let file = if orphans.iter().any(|r| matches!(r.body, RecordBody::Txn { .. })) {
            Some(save_orphans(node, op_id, &orphans).map_err(|e| format!("saving the orphans file: {e}"))?)
        } else {
            None
        };
        for journal in [&node.local, &node.remote] {
            journal.truncate_after(0).map_err(|e| format!("emptying the journal: {e}"))?;
        }
        node.store.clear().map_err(|e| format!("emptying the store: {e}"))?;
        Ok(file)
    })?;
    let connector = tokio_rustls::TlsConnector::from(
        crate::tls::node_client_config(&node.pair, node.name()).map_err(|e| e.to_string())?,
    );
    let mut stream = super::follow::connect(node, &connector).await.map_err(|e| format!("full copy: {e}"))?;
    let meta = node.meta();
    let request = crate::wire::Message::CopyRequest { cluster: node.pair.cluster, incarnation: meta.incarnation };
    let envelope = crate::wire::Envelope { from: node.name().to_string(), epoch: meta.epoch, message: request };
    wire::write_frame(&mut stream, &wire::Frame::Message(envelope)).await.map_err(|e| e.to_string())?;
    let mut expected = None;
    let mut received = 0u64;
    let started = std::time::Instant::now();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), wire::read_frame(&mut stream))
            .await
            .map_err(|_| "full copy: the primary sent nothing for 30s".to_string())?
            .map_err(|e| format!("full copy: {e}"))?;
        match frame {
            Some(wire::Frame::Message(crate::wire::Envelope { message, .. })) => match message {
                crate::wire::Message::CopyBegin { position, .. } => {
                    node.copy_progress.send_replace(Some((0, position.key_count)));
                    expected = Some(position);
                }
                crate::wire::Message::CopyEnd { .. } => break,
                crate::wire::Message::Refused { reason, .. } => return Err(format!("full copy refused: {reason}")),
                other => return Err(format!("full copy: unexpected message {other:?}")),
            },
            Some(wire::Frame::Copy(bytes)) => {
                let pairs = wire::decode_pairs(&bytes).map_err(|e| format!("full copy: {e}"))?;
                blocking(|| node.store.load(&pairs)).map_err(|e| format!("full copy: {e}"))?;
                received += pairs.len() as u64;
                let total = expected.map_or(0, |p| p.key_count);
                node.copy_progress.send_replace(Some((received, total)));
            }
            Some(other) => return Err(format!("full copy: unexpected frame {other:?}")),
            None => return Err("full copy: the primary closed the connection before the end".into()),
        }
    }
    let expected = expected.ok_or("full copy: the primary never said which position it sends")?;
    blocking(|| node.store.finish_load(expected))?;
    node.copy_progress.send_replace(None);
    tracing::info!(
        pairs = received,
        lsn = expected.applied_lsn,
        ms = started.elapsed().as_millis() as u64,
        "full copy received and checked"
    );
    adopt_primary(node, primary)?;
    Ok((file, 0))
}

/// Writes the orphaned transactions, newest first as they were undone, one JSON object per
/// line, into `DIR/orphans/`, and fsyncs it. Returns the path.
fn save_orphans(node: &Node, op_id: Uuid, orphans: &[Record]) -> std::io::Result<String> {
    let dir = node.config.dir.join("orphans");
    std::fs::create_dir_all(&dir)?;
    let (low, high) = (orphans.last().map_or(0, |r| r.lsn), orphans.first().map_or(0, |r| r.lsn));
    let path = dir.join(format!("orphans-{low}-{high}-{}.jsonl", &op_id.to_string()[..8]));
    let tmp = path.with_extension("jsonl.tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    for record in orphans {
        let RecordBody::Txn { ops, commands } = &record.body else { continue };
        let ops: Vec<Value> = ops
            .iter()
            .map(|op| {
                json!({
                    "key": text_or_hex(&op.key),
                    "before": op.before.as_deref().map(value_json),
                    "after": op.after.as_deref().map(value_json),
                })
            })
            .collect();
        let mut line = json!({ "lsn": record.lsn, "epoch": record.epoch, "time_ms": record.timestamp_ms, "ops": ops });
        // What the client sent, for the writes whose after-images do not say it (increments):
        // re-applying an orphaned increment means sending the command again, not the value.
        if !commands.is_empty() {
            line["commands"] =
                commands.iter().map(|args| args.iter().map(|a| text_or_hex(a)).collect::<Vec<_>>()).collect();
        }
        writeln!(out, "{line}")?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(path.display().to_string())
}

fn text_or_hex(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => json!(text),
        Err(_) => json!({ "hex": bytes.iter().map(|b| format!("{b:02x}")).collect::<String>() }),
    }
}

fn value_json(stored: &[u8]) -> Value {
    match crate::value::StoredValue::decode(stored) {
        Some(value) => {
            let data = match &value.data {
                crate::value::Data::String(bytes) => text_or_hex(bytes),
                crate::value::Data::Hash(fields) => {
                    json!({ "hash": fields.iter().map(|(f, v)| json!([text_or_hex(f), text_or_hex(v)])).collect::<Vec<_>>() })
                }
            };
            json!({ "data": data, "expires_at_ms": value.expires_at_ms })
        }
        None => json!({ "raw": text_or_hex(stored) }),
    }
}

async fn verify(node: &Arc<Node>, lsn: Lsn, full: bool, timeout: Duration) -> Result<Value, String> {
    wait_applied(node, lsn, timeout).await?;
    let node = node.clone();
    let work = move || -> Result<Value, String> {
        let position = node.store.position();
        // At exactly `lsn` the store's own digest answers; past it, the record's digest does —
        // the applier compared it with the store's when it applied that record (and would have
        // stopped on a mismatch), so it is this node's digest at `lsn` too.
        let (digest, source) = if position.applied_lsn == lsn {
            (position.digest, "store")
        } else {
            let record = node
                .journal_for(lsn)
                .read_from(lsn)
                .map_err(|e| e.to_string())?
                .next()
                .ok_or_else(|| format!("record {lsn} is not in the journal"))?
                .map_err(|e| e.to_string())?
                .record;
            (record.digest_after, "journal, checked against the store when applied")
        };
        let mut answer = json!({
            "lsn": lsn,
            "digest": digest.to_hex(),
            "source": source,
            "applied_lsn": position.applied_lsn,
        });
        if full {
            let before = node.store.position();
            let (scanned, keys) = node.store.full_digest().map_err(|e| e.to_string())?;
            let after = node.store.position();
            answer["full"] = if before == after {
                json!({ "at_lsn": after.applied_lsn, "digest": scanned.to_hex(), "keys": keys, "matches": scanned == after.digest && keys == after.key_count })
            } else {
                json!({ "at_lsn": Value::Null, "matches": Value::Null, "note": "the store moved during the scan; run verify --full on a quiet pair" })
            };
        }
        Ok(answer)
    };
    blocking(work)
}

/// The lowest LSN this node could ship from: the start of the pair's history that is still in
/// its journals, following the history's epochs from the newest back.
fn first_available(node: &Node) -> Result<Lsn, String> {
    let meta = node.meta();
    let mut first = node.last_lsn() + 1;
    for entry in meta.history.iter().rev() {
        let journal = node.journal_for(entry.first_lsn.max(1));
        let held = journal.first_lsn().map_err(|e| e.to_string())?;
        match held {
            Some(held) if held <= entry.first_lsn.max(1) => first = entry.first_lsn.max(1),
            Some(held) if held < first => return Ok(held),
            _ => return Ok(first),
        }
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(entries: &[(Epoch, Lsn, &str)]) -> Vec<HistoryEntry> {
        entries.iter().map(|&(epoch, first_lsn, p)| HistoryEntry { epoch, first_lsn, primary: p.into() }).collect()
    }

    fn view(history: Vec<HistoryEntry>, epoch: Epoch, last_lsn: Lsn) -> PrimaryView {
        PrimaryView { history, epoch, last_lsn, first_available: 1 }
    }

    #[test]
    fn records_received_after_the_primary_was_looked_at_are_not_a_divergence() {
        // The orchestrator saw a at LSN 52; b, following a in its epoch, has since received up to 60.
        let one = history(&[(1, 1, "a")]);
        assert_eq!(divergence_point(&view(one.clone(), 1, 52), &one, 60), (60, 60));
        // Behind the view: nothing to undo either.
        assert_eq!(divergence_point(&view(one.clone(), 1, 52), &one, 40), (40, 52));
    }

    #[test]
    fn a_tail_written_in_an_older_epoch_is_still_a_divergence_whatever_the_view() {
        // a wrote 101..120 in epoch 1 while b began epoch 2 at 101: a's tail is orphaned, even
        // if the view of b is older than a's last record.
        let a_history = history(&[(1, 1, "a")]);
        let b_history = history(&[(1, 1, "a"), (2, 101, "b")]);
        assert_eq!(divergence_point(&view(b_history.clone(), 2, 110), &a_history, 120), (100, 110));
        // A node that followed b into epoch 2 is on b's history, past b's view too.
        assert_eq!(divergence_point(&view(b_history.clone(), 2, 110), &b_history, 130), (130, 130));
    }
}
