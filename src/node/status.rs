//! What `hotpair status` shows for one node, as the JSON object INTERFACE.md promises.

use serde_json::{json, Value};

use super::Node;
use crate::storage::meta::Role;

pub fn node_status(node: &Node) -> Value {
    let meta = node.meta();
    let role = node.role();
    let peer = node.peer.borrow().clone();
    let now = crate::clock::now_ms();
    let (lsn, received_lsn, digest, lag_records) = match role {
        Role::Primary | Role::Draining => {
            let last = node.pipeline().map_or(node.last_lsn(), |p| p.last_lsn());
            let digest = node.pipeline().map_or(node.store.position().digest, |p| p.digest());
            (last, node.local.last_lsn().unwrap_or(0), digest, last.saturating_sub(peer.applied_lsn))
        }
        _ => {
            let position = node.store.position();
            let received = node.remote.last_lsn().unwrap_or(0).max(position.applied_lsn);
            (position.applied_lsn, received, position.digest, peer.peer_last_lsn.saturating_sub(position.applied_lsn))
        }
    };
    let diverged = *super::lock(&node.diverged_at);
    let (local_journal, remote_journal) = match role {
        Role::Primary | Role::Draining => ("active", "dormant"),
        _ if diverged.is_some() => ("dormant", "diverged"),
        _ if peer.connected && lag_records > 0 => ("dormant", "catching-up"),
        _ => ("dormant", "active"),
    };
    let mut status = json!({
        "reachable": true,
        "node": node.name(),
        "role": role.name(),
        "epoch": meta.epoch,
        "lsn": lsn,
        "received_lsn": received_lsn,
        "durable_lsn": if role == Role::Primary { node.local.durable_lsn() } else { node.remote.durable_lsn().max(node.store.position().applied_lsn) },
        "digest": digest.to_hex(),
        "sync": node.pair().sync.name(),
        "lag_records": lag_records,
        "lag_ms": lag_ms(node, role, &peer, lag_records, now),
        "local_journal": local_journal,
        "remote_journal": remote_journal,
        "diverged_at": diverged,
        "replicating": *node.replicating.borrow(),
        "degraded": node.is_degraded(),
        "witness": super::lock(&node.witness_seen).clone(),
        "peer": {
            "name": node.peer_config.name,
            "connected": peer.connected,
            "received_lsn": peer.received_lsn,
            "durable_lsn": peer.durable_lsn,
            "applied_lsn": peer.applied_lsn,
            // What the peer acknowledged as durable to this primary in its epoch, saved across
            // restarts: a hello from further back is refused (a restored copy).
            "acknowledged_lsn": node.peer_acknowledged(),
            "last_heartbeat_ms_ago": if peer.last_heard_ms == 0 { Value::Null } else { json!(now.saturating_sub(peer.last_heard_ms)) },
            "heartbeat_gaps": peer.heartbeat_gaps,
        },
        "canary": canary(node, role, &peer),
        "writes": node.pipeline().map(|p| match p.refusing().or_else(|| node.disk_refusal()) { Some(reason) => json!({"accepting": false, "reason": reason}), None => json!({"accepting": true, "reason": null}) }),
        "failure": node.pipeline().and_then(|p| p.failure()).or_else(|| node.applier().and_then(|a| a.failure())),
        "incidents": node.incidents.open(),
        "incidents_dropped": node.incidents.dropped(),
        "incidents_pending": node.incidents.pending(),
        "expired_keys": node.metrics.expired_keys(),
        "last_lsn": node.last_lsn(),
        "applied_lsn": node.store.position().applied_lsn,
        "history": meta.history,
        "incarnation": meta.incarnation,
        "peer_incarnation": meta.peer.as_ref().map(|p| p.incarnation),
        "orchestration": meta.orchestration,
        // The last promotion (with the failover's estimate of what it never received) and the
        // last rejoin (with the orphans file) of this node.
        "promotion": meta.promotion,
        "rejoined": meta.rejoined,
        "following": *node.following.borrow(),
        "disk_free_bytes": super::disk::free_bytes(&node.config.dir).ok(),
        "disk_min_free": node.pair().disk_min_free,
        "disk_low": node.disk.borrow().low,
        "full_copy": node.copy_progress.borrow().map(|(done, total)| json!({ "pairs": done, "total": total })),
    });
    if let Value::Object(fields) = &mut status {
        fields.extend(operations(node, role));
    }
    status
}

/// Day-two fields: the pair file this node runs and the peer's (different: `config-drift`),
/// and whether a restarted primary waits for its peer's word.
fn operations(node: &Node, role: Role) -> serde_json::Map<String, Value> {
    let mut fields = serde_json::Map::new();
    fields.insert("config_digest".into(), json!(node.config_digest()));
    fields.insert("peer_config_digest".into(), json!(node.peer_config_digest()));
    // `failover --to <it> --force` if the peer is gone for good (runbook procedure 13).
    fields.insert("awaiting_peer".into(), json!(node.awaits_peer() && role == Role::Primary));
    fields
}

/// How far behind the backup is, in time: the age of the oldest commit it has not applied.
/// The primary knows the commit times of recent records; the backup knows those it received
/// (and when a heartbeat told it of more). Ages compare two hosts' clocks. When neither side has
/// a time (records older than the primary keeps in memory and never announced), it falls back to
/// the time since the peer was last heard from.
pub(crate) fn lag_ms(node: &Node, role: Role, peer: &crate::replication::PeerState, lag_records: u64, now: u64) -> u64 {
    if lag_records == 0 {
        return 0;
    }
    let oldest = match role {
        Role::Primary | Role::Draining => node.pipeline().and_then(|p| p.commit_time(peer.applied_lsn + 1)),
        _ => (peer.oldest_unapplied_ms > 0).then_some(peer.oldest_unapplied_ms),
    };
    match oldest {
        Some(time) => now.saturating_sub(time),
        None if peer.last_heard_ms == 0 => 0,
        None => now.saturating_sub(peer.last_heard_ms),
    }
}

/// On a backup: the canaries received from the primary (`null` on other roles).
fn canary(node: &Node, role: Role, peer: &crate::replication::PeerState) -> serde_json::Value {
    if role != Role::Backup {
        return serde_json::Value::Null;
    }
    json!({
        "interval_ms": node.pair().monitor.canary_interval.map(|i| i.as_millis() as u64),
        "received": peer.canaries,
        "last_ms_ago": peer.last_canary_at.map(|at| at.elapsed().as_millis() as u64),
        "last_delay_ms": peer.last_canary_delay_ms,
    })
}
