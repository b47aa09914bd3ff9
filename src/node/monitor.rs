//! The node watching itself and its peer: turns what the other tasks publish (the peer link,
//! heartbeat gaps, canaries, lag, `replicate stop`, a stopped applier) into incidents, and
//! clears them when the condition ends. It also writes the primary's canaries and runs the
//! backup's periodic digest check.
//!
//! ## Invariants
//! - The watch loop only reads; each incident is raised once while its condition holds and
//!   resolved when it ends (repeats are rate-limited by `incident`).
//! - A canary takes an LSN like a write, so it is only written while the pipeline accepts
//!   writes ([`crate::kv::pipeline::Pipeline::append_canary`]): never past a drain, never by a
//!   restarted primary its peer has not confirmed.
//! - The periodic digest check compares a digest recomputed from the stored pairs with the
//!   store's incremental digest at the same position. The applier already checked that
//!   incremental digest against the primary's record at every LSN, so equality here ties the
//!   stored data to the primary's digest at that LSN; it catches damage the per-record check
//!   cannot see (a store changed behind the node's back).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Node;
use crate::node::incident::{Kind, Severity};
use crate::storage::meta::Role;
use crate::Error;

/// How often the conditions are looked at.
const TICK: Duration = Duration::from_millis(200);

/// How long a peer may stay away inside a planned switchover before it is a real loss. A
/// switchover's own outage is its drain, promote and re-follow (about a second); a target that
/// needs its full `--timeout` to catch up stays connected meanwhile.
const PLANNED_OUTAGE: Duration = Duration::from_secs(30);

/// The backup's acknowledged position is saved every this many ticks (about once a second).
const SAVE_POSITION_EVERY: u64 = 5;

pub async fn run(node: Arc<Node>) -> Result<(), Error> {
    let mut shutdown = node.shutdown.subscribe();
    let mut ever_connected = false;
    let mut gaps_seen = node.peer.borrow().heartbeat_gaps;
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = tokio::time::sleep(TICK) => {}
        }
        ticks += 1;
        if ticks % SAVE_POSITION_EVERY == 0 {
            save_peer_position(&node).await;
        }
        let peer = node.peer.borrow().clone();
        let name = &node.peer_config.name;
        // Heard from at all (a session may come and go between two ticks).
        ever_connected |= peer.last_heard_ms > 0;
        if peer.connected {
            ever_connected = true;
            node.incidents.resolve(Kind::PeerLost, format!("{name} is connected again"));
            node.incidents.resolve(Kind::StalePrimary, format!("{name} is connected again"));
            node.incidents.resolve(Kind::ForcedPromotion, format!("{name} is back and follows"));
        } else if ever_connected {
            let (severity, message) = peer_lost(&node, peer.since.elapsed());
            node.incidents.raise(Kind::PeerLost, severity, message);
        }
        check_config(&node);
        if peer.heartbeat_gaps > gaps_seen {
            let message = format!("{} heartbeat(s) from {name} went missing", peer.heartbeat_gaps - gaps_seen);
            node.incidents.raise(Kind::HeartbeatGap, Severity::Warning, message);
            gaps_seen = peer.heartbeat_gaps;
        } else {
            node.incidents.resolve(Kind::HeartbeatGap, "heartbeats arrive in sequence again");
        }
        if *node.replicating.borrow() {
            node.incidents.resolve(Kind::ReplicationStopped, "replication started again");
        } else {
            node.incidents.raise(
                Kind::ReplicationStopped,
                Severity::Warning,
                "replication stopped by the admin (hotpair replicate start resumes it)",
            );
        }
        let failure = node.pipeline().and_then(|p| p.failure()).or_else(|| node.applier().and_then(|a| a.failure()));
        if let Some(reason) = failure {
            let kind = if reason.contains("digest mismatch") { Kind::DigestMismatch } else { Kind::ApplyError };
            node.incidents.raise(kind, Severity::Critical, reason);
        }
        let role = node.role();
        check_lag(&node, role, &peer);
        check_canary(&node, role, &peer);
        check_retention(&node, role, &peer);
    }
}

/// `config-drift` while the peer last said it runs another pair file than this node.
pub(super) fn check_config(node: &Node) {
    let Some(theirs) = node.peer_config_digest() else { return };
    let ours = node.config_digest();
    let peer = &node.peer_config.name;
    if theirs == ours {
        node.incidents.resolve(Kind::ConfigDrift, format!("{peer} runs the same pair file ({})", short(&ours)));
        return;
    }
    let message = format!(
        "{} runs pair file {} ({}), {peer} runs another ({}): the nodes may disagree on addresses, sync level or limits; copy the same pair file to both hosts and run `hotpair reload` (for a key it refuses, restart the node that runs the old one)",
        node.name(),
        node.pair().path.display(),
        short(&ours),
        short(&theirs)
    );
    node.incidents.raise(Kind::ConfigDrift, Severity::Warning, message);
}

/// The first 12 hex digits of a digest: what `status` shows.
fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// The peer-lost incident: informational while an orchestration this node was told of (its
/// saved progress, written on both nodes before the first step) is under way, for at most
/// [`PLANNED_OUTAGE`]; critical otherwise, and critical once a planned outage outlives that.
fn peer_lost(node: &Node, gone: Duration) -> (Severity, String) {
    let name = &node.peer_config.name;
    let planned = node.meta().orchestration.and_then(|p| {
        let command = p.get("command")?.as_str()?.to_string();
        Some(format!("{command} {}", p.get("op_id")?.as_str()?))
    });
    match planned {
        Some(work) if gone < PLANNED_OUTAGE => {
            (Severity::Info, format!("{name} is not connected (for {} ms), as planned by {work}", gone.as_millis()))
        }
        Some(work) => (
            Severity::Critical,
            format!(
                "{name} is not connected (for {} ms), longer than {work} should take ({} s); run `hotpair status`",
                gone.as_millis(),
                PLANNED_OUTAGE.as_secs()
            ),
        ),
        None => (Severity::Critical, format!("{name} is not connected (for {} ms)", gone.as_millis())),
    }
}

/// On the primary: the backup further behind than `monitor.lag_alert` (time) or
/// `monitor.lag_alert_records`.
fn check_lag(node: &Node, role: Role, peer: &crate::replication::PeerState) {
    if role != Role::Primary {
        node.incidents.resolve(Kind::LagHigh, "this node is no longer the primary");
        return;
    }
    let Some(pipeline) = node.pipeline() else { return };
    let records = pipeline.last_lsn().saturating_sub(peer.applied_lsn);
    let ms = super::status::lag_ms(node, role, peer, records, crate::clock::now_ms());
    let limits = &node.pair().monitor;
    if records > limits.lag_alert_records || Duration::from_millis(ms) > limits.lag_alert {
        let message = format!(
            "{} is {records} record(s) and {ms} ms behind (alert above {} records or {})",
            node.peer_config.name,
            limits.lag_alert_records,
            humantime::format_duration(limits.lag_alert)
        );
        node.incidents.raise(Kind::LagHigh, Severity::Warning, message);
    } else {
        node.incidents
            .resolve(Kind::LagHigh, format!("{} is {records} record(s) and {ms} ms behind", node.peer_config.name));
    }
}

/// On a backup in a session: a canary is overdue when none arrived for twice the interval,
/// or late when the last one took longer than the interval to arrive. Outside a session the
/// peer-lost incident speaks instead, and this one is left as it is.
fn check_canary(node: &Node, role: Role, peer: &crate::replication::PeerState) {
    let Some(interval) = node.pair().monitor.canary_interval else { return };
    if role != Role::Backup || !peer.connected || !*node.following.borrow() {
        return;
    }
    let primary = &node.peer_config.name;
    let since = time_without_canary(peer.since, peer.last_canary_at).elapsed();
    let delay = Duration::from_millis(peer.last_canary_delay_ms);
    if since > interval * 2 {
        let message = format!(
            "no canary from {primary} for {} ms (one is written every {}): its journal or the link is stuck",
            since.as_millis(),
            humantime::format_duration(interval)
        );
        node.incidents.raise(Kind::CanaryOverdue, Severity::Critical, message);
    } else if delay > interval {
        let message = format!(
            "the last canary from {primary} took {} ms to arrive (more than the {} interval)",
            delay.as_millis(),
            humantime::format_duration(interval)
        );
        node.incidents.raise(Kind::CanaryOverdue, Severity::Warning, message);
    } else if peer.last_canary_at.is_some_and(|at| at >= peer.since) {
        // Only a canary of this session says they arrive again.
        let message = format!("canaries from {primary} arrive again ({} ms end to end)", delay.as_millis());
        node.incidents.resolve(Kind::CanaryOverdue, message);
    }
}

/// Since when the backup has been waiting for a canary in its current session (`session`: when
/// it started): the last canary's arrival, or the session's start if no canary arrived in it.
/// A canary from an earlier session does not count: after `replicate stop` or an outage the
/// backlog's canaries are still on their way, and counting from before the gap raised a false
/// "no canary" alarm at the first look after the reconnect (seen in a benchmark's catch-up).
/// The price: sessions that keep ending within two intervals never make a canary overdue; each
/// ending is the peer-lost incident's to report.
fn time_without_canary(session: Instant, last_canary: Option<Instant>) -> Instant {
    last_canary.map_or(session, |at| at.max(session))
}

/// On the primary: its backup gone longer than `monitor.retention_alert` while the journal
/// keeps the records it lacks (they are never trimmed while it may come back for them).
fn check_retention(node: &Node, role: Role, peer: &crate::replication::PeerState) {
    let bound = node.pair().monitor.retention_alert;
    let Some(pipeline) = node.pipeline().filter(|_| role == Role::Primary) else {
        node.incidents.resolve(Kind::RetentionPinned, "this node is no longer the primary");
        return;
    };
    let kept = pipeline.last_lsn().saturating_sub(peer.durable_lsn);
    let gone = peer.since.elapsed();
    if !peer.connected && gone > bound && kept > 0 {
        let message = format!(
            "{} has been gone for {} s; the journal keeps {kept} record(s) from LSN {} for it (alert after {})",
            node.peer_config.name,
            gone.as_secs(),
            peer.durable_lsn + 1,
            humantime::format_duration(bound)
        );
        node.incidents.raise(Kind::RetentionPinned, Severity::Warning, message);
    } else if peer.connected {
        node.incidents.resolve(Kind::RetentionPinned, format!("{} is back", node.peer_config.name));
    }
}

/// The primary's canaries: one record every `monitor.canary_interval` through the journal, so
/// the backup can tell that records flow end to end even when nobody writes.
pub async fn write_canaries(node: Arc<Node>) -> Result<(), Error> {
    let Some(interval) = node.pair().monitor.canary_interval else { return Ok(()) };
    let mut shutdown = node.shutdown.subscribe();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let Some(pipeline) = node.pipeline().filter(|_| node.role() == Role::Primary) else { continue };
        sequence += 1;
        // The append is a short in-memory step plus a buffered write; the flusher fsyncs it.
        match pipeline.append_canary(crate::clock::now_ms(), sequence) {
            Ok(Some(lsn)) => tracing::trace!(lsn, sequence, "canary written"),
            Ok(None) => {}
            Err(err) => tracing::warn!(%err, "could not write a canary"),
        }
    }
}

/// The backup's periodic digest check (see the module invariants), every
/// `monitor.digest_interval`, off the async threads.
pub async fn check_digests(node: Arc<Node>) -> Result<(), Error> {
    let Some(interval) = node.pair().monitor.digest_interval else { return Ok(()) };
    let mut shutdown = node.shutdown.subscribe();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = ticker.tick() => {}
        }
        if node.role() != Role::Backup {
            continue;
        }
        let store = node.store.clone();
        let started = std::time::Instant::now();
        let scanned = tokio::task::spawn_blocking(move || store.full_digest_consistent()).await;
        let (position, digest, keys) = match scanned {
            Ok(Ok(result)) => result,
            Ok(Err(err)) => {
                node.incidents.raise(Kind::ApplyError, Severity::Critical, format!("periodic digest check: {err}"));
                continue;
            }
            Err(err) => {
                tracing::warn!(%err, "the periodic digest check did not finish");
                continue;
            }
        };
        let ms = started.elapsed().as_millis() as u64;
        if digest == position.digest && keys == position.key_count {
            tracing::debug!(lsn = position.applied_lsn, keys, ms, "periodic digest check: equal");
            if node.applier().and_then(|a| a.failure()).is_some() {
                // The applier's own mismatch stays open: it stopped before the bad record.
                continue;
            }
            let message = format!("stored data matches the digest at LSN {} ({keys} keys)", position.applied_lsn);
            node.incidents.resolve(Kind::DigestMismatch, message);
        } else {
            let message = format!(
                "periodic digest check at LSN {}: the stored data gives {} ({keys} keys) but the digest the primary's records agree with is {} ({} keys); the store was changed behind the node's back — rebuild it with `hotpair rejoin {} --allow-full-copy`",
                position.applied_lsn,
                digest.to_hex(),
                position.digest.to_hex(),
                position.key_count,
                node.name()
            );
            node.incidents.raise(Kind::DigestMismatch, Severity::Critical, message);
        }
    }
}

/// On the primary: saves how far the backup acknowledged (see [`Node::save_peer_position`]),
/// off the async threads since it fsyncs the node's metadata.
async fn save_peer_position(node: &Arc<Node>) {
    let node = node.clone();
    let saved = tokio::task::spawn_blocking(move || node.save_peer_position()).await;
    if let Ok(Err(err)) = saved {
        tracing::warn!(error = %err, "saving the backup's acknowledged position");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canary_from_before_the_session_does_not_make_the_new_one_overdue() {
        let start = Instant::now();
        let canary = start + Duration::from_secs(1);
        let reconnect = start + Duration::from_secs(30);
        // Before the outage: counted from the last canary.
        assert_eq!(time_without_canary(start, Some(canary)), canary);
        // After it: counted from the reconnect, not from the canary 29 s before.
        assert_eq!(time_without_canary(reconnect, Some(canary)), reconnect);
        assert_eq!(time_without_canary(reconnect, None), reconnect);
        let fresh = reconnect + Duration::from_millis(5);
        assert_eq!(time_without_canary(reconnect, Some(fresh)), fresh);
    }
}
