//! Where the pair stands, read from both nodes' `status` at one moment: the orchestrator's
//! only source of truth before it acts.

use serde_json::Value;

use super::Progress;
use crate::config::PairConfig;
use crate::journal::{Epoch, HistoryEntry, Lsn};

/// One node as its status reported it (or why it could not be reached).
#[derive(Debug, Clone)]
pub struct NodeView {
    pub name: String,
    pub status: Result<Value, String>,
}

impl NodeView {
    pub fn reachable(&self) -> bool {
        self.status.as_ref().is_ok_and(|s| s["reachable"] == true)
    }

    fn field(&self, key: &str) -> Option<&Value> {
        self.status.as_ref().ok().and_then(|s| s.get(key))
    }

    pub fn role(&self) -> Option<&str> {
        self.field("role").and_then(Value::as_str)
    }

    pub fn is(&self, role: &str) -> bool {
        self.role() == Some(role)
    }

    pub fn epoch(&self) -> Epoch {
        self.field("epoch").and_then(Value::as_u64).unwrap_or(0)
    }

    /// Last LSN committed (primary) or applied (backup).
    pub fn lsn(&self) -> Lsn {
        self.field("lsn").and_then(Value::as_u64).unwrap_or(0)
    }

    pub fn last_lsn(&self) -> Lsn {
        self.field("last_lsn").and_then(Value::as_u64).unwrap_or(0)
    }

    pub fn applied_lsn(&self) -> Lsn {
        self.field("applied_lsn").and_then(Value::as_u64).unwrap_or(0)
    }

    pub fn lag_ms(&self) -> u64 {
        self.field("lag_ms").and_then(Value::as_u64).unwrap_or(0)
    }

    /// The incarnation of this node's data directory.
    pub fn incarnation(&self) -> Option<&str> {
        self.field("incarnation").and_then(Value::as_str)
    }

    /// How far, as primary, this node holds its peer to have acknowledged as durable (0 when
    /// it is not primary or the peer acknowledged nothing in its epoch).
    pub fn peer_acknowledged_lsn(&self) -> Lsn {
        self.field("peer").and_then(|p| p.get("acknowledged_lsn")).and_then(Value::as_u64).unwrap_or(0)
    }

    /// The incarnation this node knows its peer by (`None` until they first met).
    pub fn peer_incarnation(&self) -> Option<&str> {
        self.field("peer_incarnation").and_then(Value::as_str)
    }

    pub fn history(&self) -> Vec<HistoryEntry> {
        self.field("history").and_then(|h| serde_json::from_value(h.clone()).ok()).unwrap_or_default()
    }

    pub fn peer_connected(&self) -> bool {
        self.field("peer").is_some_and(|p| p["connected"] == true)
    }

    /// `false` after `hotpair replicate stop` on this node.
    pub fn replicating(&self) -> bool {
        self.field("replicating") != Some(&Value::Bool(false))
    }

    /// A backup in a session with its primary right now.
    pub fn following(&self) -> bool {
        self.field("following") == Some(&Value::Bool(true))
    }

    pub fn failure(&self) -> Option<String> {
        self.field("failure").and_then(Value::as_str).map(str::to_string)
    }

    pub fn accepting_writes(&self) -> bool {
        self.field("writes").is_some_and(|w| w["accepting"] == true)
    }

    pub fn diverged(&self) -> bool {
        self.field("remote_journal").and_then(Value::as_str) == Some("diverged")
    }

    pub fn disk_free(&self) -> Option<u64> {
        self.field("disk_free_bytes").and_then(Value::as_u64)
    }

    pub fn progress(&self) -> Option<Progress> {
        self.field("orchestration").and_then(|p| serde_json::from_value(p.clone()).ok())
    }

    pub fn error(&self) -> String {
        match &self.status {
            Ok(status) => status["error"].as_str().unwrap_or("unreachable").to_string(),
            Err(reason) => reason.clone(),
        }
    }
}

/// Both nodes at one moment.
#[derive(Debug, Clone)]
pub struct PairView {
    pub nodes: Vec<NodeView>,
}

impl PairView {
    pub async fn load(pair: &PairConfig) -> PairView {
        let status = crate::admin::status(pair).await;
        let nodes = pair
            .nodes
            .iter()
            .map(|n| {
                let value = status["nodes"][&n.name].clone();
                let status = if value["reachable"] == true {
                    Ok(value)
                } else {
                    Err(value["error"].as_str().unwrap_or("unreachable").to_string())
                };
                NodeView { name: n.name.clone(), status }
            })
            .collect();
        PairView { nodes }
    }

    pub fn node(&self, name: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn other(&self, name: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.name != name)
    }

    /// The reachable node taking writes (or draining) in the highest epoch.
    pub fn primary(&self) -> Option<&NodeView> {
        self.nodes.iter().filter(|n| n.is("primary") || n.is("draining")).max_by_key(|n| n.epoch())
    }

    /// The newest progress record either node holds for `command`.
    pub fn progress(&self, command: &str) -> Option<Progress> {
        self.nodes.iter().filter_map(NodeView::progress).filter(|p| p.command == command).max_by_key(|p| p.epoch)
    }
}
