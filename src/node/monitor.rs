//! The node watching itself and its peer: turns what the other tasks publish (the peer link,
//! heartbeat gaps, `replicate stop`, a stopped applier) into incidents, and clears them when the
//! condition ends. It only reads; each incident is raised once while its condition holds.

use std::sync::Arc;
use std::time::Duration;

use super::Node;
use crate::incident::{Kind, Severity};
use crate::Error;

/// How often the conditions are looked at.
const TICK: Duration = Duration::from_millis(200);

pub async fn run(node: Arc<Node>) -> Result<(), Error> {
    let mut shutdown = node.shutdown.subscribe();
    let mut ever_connected = false;
    let mut gaps_seen = node.peer.borrow().heartbeat_gaps;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = tokio::time::sleep(TICK) => {}
        }
        let peer = node.peer.borrow().clone();
        let name = &node.peer_config.name;
        // Heard from at all (a session may come and go between two ticks).
        ever_connected |= peer.last_heard_ms > 0;
        if peer.connected {
            ever_connected = true;
            node.incidents.resolve(Kind::PeerLost, format!("{name} is connected again"));
        } else if ever_connected {
            let gone = peer.since.elapsed();
            node.incidents.raise(
                Kind::PeerLost,
                Severity::Critical,
                format!("{name} is not connected (for {} ms)", gone.as_millis()),
            );
        }
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
    }
}
