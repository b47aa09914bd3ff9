//! The orchestration primitives as one node carries them out: drain, resume, demote, promote,
//! fence and rejoin go to the pair engine ([`crate::engine`]), which decides; wait-applied,
//! verify, first-available, set-progress and accept-peer are answered here. Also the long
//! actions of a rejoin: counting, saving and undoing the orphaned tail, or a full copy.
//!
//! ## Invariants
//! - One primitive at a time per node (`Node::role_change`).
//! - Epoch-guarded and idempotent (the engine's rules): a request naming another epoch than the
//!   node's is refused and changes nothing; repeating one whose effect is there answers
//!   "already".
//! - Every reply is a typed struct of [`crate::admin::protocol`].
//! - Rejoin saves the orphaned tail to a file (fsynced) *before* it undoes it in the store.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use super::apply::blocking;
use super::Node;
use crate::admin::protocol::{self, body};
use crate::engine::{Event, PrimaryView, Primitive, RejoinRequest, Reply};
use crate::replication::wire::AdminRequest;
use crate::storage::journal::{Lsn, Record, RecordBody};

/// Carries out one primitive; `Err` is the refusal, in one sentence.
pub async fn handle(node: &Arc<Node>, request: AdminRequest) -> Result<Value, String> {
    let primitive = match request {
        AdminRequest::Drain { op_id, epoch, lease_ms } => {
            Primitive::Drain { op_id, epoch, lease_ms, now_ms: node.now_ms() }
        }
        AdminRequest::Resume { op_id, epoch } => Primitive::Resume { op_id, epoch },
        AdminRequest::Demote { op_id, epoch } => Primitive::Demote { op_id, epoch },
        AdminRequest::Promote { op_id, epoch, expect_lsn } => Primitive::Promote { op_id, epoch, expect_lsn },
        AdminRequest::Fence { epoch, primary } => Primitive::Fence { epoch, primary },
        AdminRequest::Rejoin { op_id, history, epoch, last_lsn, first_available, dry_run, full_copy } => {
            let primary = PrimaryView { history, epoch, last_lsn, first_available };
            Primitive::Rejoin(RejoinRequest { op_id, primary, dry_run, full_copy, our_last: 0 })
        }
        AdminRequest::WaitApplied { lsn, timeout_ms } => {
            let (applied_lsn, digest) = wait_applied(node, lsn, Duration::from_millis(timeout_ms)).await?;
            return Ok(body(&protocol::WaitAppliedReply { applied_lsn, digest: digest.to_hex() }));
        }
        AdminRequest::Verify { lsn, full, timeout_ms } => {
            return verify(node, lsn, full, Duration::from_millis(timeout_ms)).await.map(|reply| body(&reply));
        }
        AdminRequest::FirstAvailable => {
            let first_available = first_available(node)?;
            return Ok(body(&protocol::FirstAvailableReply { first_available }));
        }
        AdminRequest::SetProgress { progress } => {
            node.update_meta(|meta| meta.orchestration = progress).map_err(|e| e.to_string())?;
            return Ok(body(&protocol::SetProgressReply { saved: true }));
        }
        AdminRequest::AcceptPeer { incarnation } => {
            node.accept_peer(incarnation).map_err(|e| e.to_string())?;
            return Ok(body(&protocol::AcceptPeerReply { peer_incarnation: incarnation }));
        }
        other => return Err(format!("{other:?} is not an orchestration primitive")),
    };
    let _one = node.role_change.lock().await;
    // Read under the lock: nothing moves the node's journals but a primitive or its follower,
    // and the follower is what the rejoin stops first (then it plans again).
    let primitive = match primitive {
        Primitive::Rejoin(request) if !request.full_copy && !request.dry_run && copy_cut_off(node)? => {
            let name = node.name();
            return Err(format!(
                "a full copy into {name} was cut off before it ended; run `hotpair rejoin {name} --allow-full-copy` to resume it"
            ));
        }
        Primitive::Rejoin(request) => Primitive::Rejoin(RejoinRequest { our_last: node.last_lsn(), ..request }),
        other => other,
    };
    let reply = node.drive(Event::Admin(primitive)).await?;
    answer(node, reply)
}

/// Whether a full copy into this node was cut off (`copy`): only a full copy may go on from it.
fn copy_cut_off(node: &Node) -> Result<bool, String> {
    Ok(node.store.copy_checkpoint().map_err(|e| e.to_string())?.is_some())
}

/// The engine's reply as the protocol's typed reply.
fn answer(node: &Node, reply: Reply) -> Result<Value, String> {
    let name = node.name().to_string();
    Ok(match reply {
        Reply::Refused(reason) => return Err(reason),
        Reply::Drained { lsn, digest, lease_ms } => {
            tracing::info!(lsn, lease_ms, "drained: new writes get TRYAGAIN");
            body(&protocol::DrainReply { lsn, digest: digest.to_hex(), lease_ms })
        }
        Reply::Resumed { was_draining } => body(&protocol::ResumeReply { resumed: was_draining }),
        Reply::Demoted { already } => {
            let position = node.store.position();
            body(&protocol::DemoteReply {
                lsn: node.last_lsn(),
                applied_lsn: position.applied_lsn,
                digest: position.digest.to_hex(),
                already,
            })
        }
        Reply::Promoted { promotion, already } => {
            if !already {
                tracing::info!(
                    epoch = promotion.epoch,
                    first_lsn = promotion.first_lsn,
                    "promoted: this node is the primary"
                );
            }
            body(&protocol::PromoteReply::from_promotion(&promotion, already))
        }
        Reply::Fenced { role, epoch } => body(&protocol::FenceReply { role, epoch }),
        Reply::RejoinPlanned(plan) => body(&rejoin_reply(name, plan, None)),
        Reply::Rejoined { plan, orphans_file, rewound, full_copy } => {
            tracing::info!(
                divergence = plan.divergence_lsn,
                orphaned = plan.orphaned,
                rewound,
                "rejoined as backup; catching up"
            );
            let done = protocol::RejoinDone { orphans_file, rewound, full_copy };
            body(&rejoin_reply(name, plan, Some(done)))
        }
        other => return Err(format!("unexpected answer to a primitive: {other} (a bug)")),
    })
}

fn rejoin_reply(
    node: String,
    plan: crate::engine::RejoinPlan,
    done: Option<protocol::RejoinDone>,
) -> protocol::RejoinReply {
    protocol::RejoinReply {
        node,
        divergence_lsn: plan.divergence_lsn,
        orphaned: plan.orphaned,
        needs_from: plan.needs_from,
        primary_first_available: plan.primary_first_available,
        shippable: plan.shippable,
        earlier: plan.earlier,
        done,
    }
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

/// Transactions past `divergence` in this node's journals (canaries and other control records
/// carry no data). If the tail cannot be read (journals lost: a full-copy case), every record
/// past it counts.
pub(super) fn count_orphans(node: &Node, divergence: Lsn) -> u64 {
    orphaned_tail(node, divergence)
        .map(|tail| txns(&tail))
        .unwrap_or_else(|_| node.last_lsn().saturating_sub(divergence))
}

fn txns(records: &[Record]) -> u64 {
    records.iter().filter(|r| matches!(r.body, RecordBody::Txn { .. })).count() as u64
}

/// What a resynchronization did.
pub(super) struct Resynchronized {
    pub file: Option<String>,
    pub orphaned: u64,
    pub rewound: u64,
}

/// Saves and undoes everything past `divergence` and truncates both journals there; the engine
/// then saves the primary's history. Each step is safe to repeat after a crash: the file is
/// rewritten whole, the store is rewound only down from where it stands, truncation is
/// idempotent.
pub(super) fn resynchronize(
    node: &Node,
    op_id: Uuid,
    primary: &PrimaryView,
    divergence: Lsn,
) -> Result<Resynchronized, String> {
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
    Ok(Resynchronized { file, orphaned: txns(&orphans), rewound })
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
/// hold, empty journals and store, receive the primary's store over the control port (`copy`:
/// checked against the primary's digest, resumed if an earlier attempt was cut off); the engine
/// then adopts the primary's history. Catch-up then continues from the copy's LSN as a backup.
/// The primary keeps taking writes meanwhile.
pub(super) async fn copy_in(node: &Arc<Node>, op_id: Uuid, divergence: Lsn) -> Result<Resynchronized, String> {
    let (file, orphaned) = blocking(|| -> Result<(Option<String>, u64), String> {
        node.stop_pipeline().map_err(|e| format!("stopping the pipeline: {e}"))?;
        node.stop_applier().map_err(|e| format!("stopping the applier: {e}"))?;
        if node.store.copy_checkpoint().map_err(|e| e.to_string())?.is_some() {
            // A copy cut off earlier: its first attempt saved the orphans and emptied the
            // journals; what the store holds is the copy so far, which resumes.
            return Ok((None, 0));
        }
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
        Ok((file, txns(&orphans)))
    })?;
    super::copy::receive(node).await?;
    Ok(Resynchronized { file, orphaned, rewound: 0 })
}

/// Writes the orphaned transactions, newest first as they were undone, one JSON object per
/// line, into `DIR/orphans/`, and fsyncs it. Returns the path.
fn save_orphans(node: &Node, op_id: Uuid, orphans: &[Record]) -> std::io::Result<String> {
    let dir = node.config.dir.join("orphans");
    crate::storage::datadir::create_private_dir(&dir)?;
    let (low, high) = (orphans.last().map_or(0, |r| r.lsn), orphans.first().map_or(0, |r| r.lsn));
    let path = dir.join(format!("orphans-{low}-{high}-{}.jsonl", &op_id.to_string()[..8]));
    let tmp = path.with_extension("jsonl.tmp");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(crate::storage::datadir::PRIVATE_FILE_MODE)
        .open(&tmp)?;
    let mut out = std::io::BufWriter::new(file);
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
    match crate::storage::value::StoredValue::decode(stored) {
        Some(value) => {
            let data = match &value.data {
                crate::storage::value::Data::String(bytes) => text_or_hex(bytes),
                crate::storage::value::Data::Hash(fields) => {
                    json!({ "hash": fields.iter().map(|(f, v)| json!([text_or_hex(f), text_or_hex(v)])).collect::<Vec<_>>() })
                }
            };
            json!({ "data": data, "expires_at_ms": value.expires_at_ms })
        }
        None => json!({ "raw": text_or_hex(stored) }),
    }
}

async fn verify(node: &Arc<Node>, lsn: Lsn, full: bool, timeout: Duration) -> Result<protocol::VerifyReply, String> {
    wait_applied(node, lsn, timeout).await?;
    let node = node.clone();
    let work = move || -> Result<protocol::VerifyReply, String> {
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
        let full = if full {
            let before = node.store.position();
            let (scanned, keys) = node.store.full_digest().map_err(|e| e.to_string())?;
            let after = node.store.position();
            Some(if before == after {
                protocol::FullScan {
                    at_lsn: Some(after.applied_lsn),
                    digest: Some(scanned.to_hex()),
                    keys: Some(keys),
                    matches: Some(scanned == after.digest && keys == after.key_count),
                    note: None,
                }
            } else {
                protocol::FullScan {
                    at_lsn: None,
                    digest: None,
                    keys: None,
                    matches: None,
                    note: Some("the store moved during the scan; run verify --full on a quiet pair".into()),
                }
            })
        } else {
            None
        };
        Ok(protocol::VerifyReply {
            lsn,
            digest: digest.to_hex(),
            source: source.to_string(),
            applied_lsn: position.applied_lsn,
            full,
        })
    };
    blocking(work)
}

/// The lowest LSN this node could ship from: the start of the pair's history that is still in
/// its journals, following the history's epochs from the newest back.
pub(super) fn first_available(node: &Node) -> Result<Lsn, String> {
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
