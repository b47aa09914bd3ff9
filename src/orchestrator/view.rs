//! Where the pair stands, read from both nodes' `status` at one moment: the planner's only
//! source of truth about the nodes.
//!
//! A status is read as [`StatusView`]: a node whose status lacks a field the orchestrator
//! needs is shown as unreadable with the reason, never with a default in its place.

use super::Progress;
use crate::admin::protocol::StatusView;
use crate::config::PairConfig;
use crate::storage::journal::{Epoch, HistoryEntry, Lsn};
use crate::storage::meta::Role;

/// One node as its status reported it (or why it could not be reached or read).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub status: Result<StatusView, String>,
}

impl NodeView {
    pub fn reachable(&self) -> bool {
        self.status.is_ok()
    }

    pub fn role(&self) -> Option<Role> {
        self.status.as_ref().ok().map(|s| s.role)
    }

    pub fn is(&self, role: Role) -> bool {
        self.role() == Some(role)
    }

    /// The role's name, or `unreachable`.
    pub fn role_name(&self) -> &'static str {
        self.role().map_or("unreachable", Role::name)
    }

    pub fn epoch(&self) -> Epoch {
        self.status.as_ref().map_or(0, |s| s.epoch)
    }

    /// Last LSN committed (primary) or applied (backup); 0 when unreachable.
    pub fn lsn(&self) -> Lsn {
        self.status.as_ref().map_or(0, |s| s.lsn)
    }

    pub fn history(&self) -> &[HistoryEntry] {
        self.status.as_ref().map_or(&[], |s| &s.history)
    }

    /// Whether this node leads `epoch` (primary or draining in it, its history says it leads it).
    pub fn leads(&self, epoch: Epoch) -> bool {
        let led = self.history().last().is_some_and(|h| h.epoch == epoch && h.primary == self.name);
        led && self.epoch() == epoch && matches!(self.role(), Some(Role::Primary | Role::Draining))
    }

    /// A backup in a session with its primary right now.
    pub fn following(&self) -> bool {
        self.status.as_ref().is_ok_and(|s| s.following)
    }

    pub fn diverged(&self) -> bool {
        self.status.as_ref().is_ok_and(|s| s.remote_journal == "diverged")
    }

    pub fn failure(&self) -> Option<String> {
        self.status.as_ref().ok().and_then(|s| s.failure.clone())
    }

    /// A restarted primary that takes no writes until its peer confirms it.
    pub fn awaiting_peer(&self) -> bool {
        self.status.as_ref().is_ok_and(|s| s.awaiting_peer && s.role == Role::Primary)
    }

    /// How far the peer acknowledged as durable to this primary in its epoch.
    pub fn peer_acknowledged(&self) -> Lsn {
        self.status.as_ref().map_or(0, |s| s.peer.acknowledged_lsn)
    }

    pub fn peer_connected(&self) -> bool {
        self.status.as_ref().is_ok_and(|s| s.peer.connected)
    }

    pub fn error(&self) -> String {
        match &self.status {
            Ok(_) => "reachable".into(),
            Err(reason) => reason.clone(),
        }
    }

    /// The orchestration progress this node holds; unreadable progress is reported as such.
    pub fn progress(&self) -> Result<Option<Progress>, String> {
        let Ok(status) = &self.status else { return Ok(None) };
        match &status.orchestration {
            None => Ok(None),
            Some(value) => serde_json::from_value(value.clone())
                .map(Some)
                .map_err(|e| format!("{} holds orchestration progress this build cannot read: {e}", self.name)),
        }
    }
}

/// Both nodes at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct PairView {
    pub nodes: Vec<NodeView>,
}

impl PairView {
    /// Reads both nodes' status at once over `sessions`.
    pub async fn load(pair: &PairConfig, sessions: &crate::admin::client::Sessions) -> PairView {
        let ask = |name: String| async move {
            let answer = sessions
                .request(&name, crate::replication::wire::AdminRequest::Status, crate::admin::client::ADMIN_TIMEOUT)
                .await;
            let status =
                answer.and_then(|body| crate::admin::protocol::read::<StatusView>(&format!("status of {name}"), body));
            NodeView { name, status }
        };
        // Invariant: a loaded pair file has exactly two nodes.
        let [first, second] = [0, 1].map(|i| pair.nodes[i].name.clone());
        let (first, second) = tokio::join!(ask(first), ask(second));
        PairView { nodes: vec![first, second] }
    }

    pub fn node(&self, name: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn other(&self, name: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.name != name)
    }

    /// The reachable node taking writes (or draining) in the highest epoch.
    pub fn primary(&self) -> Option<&NodeView> {
        self.nodes.iter().filter(|n| n.is(Role::Primary) || n.is(Role::Draining)).max_by_key(|n| n.epoch())
    }

    /// The highest epoch either reachable node knows.
    pub fn epoch(&self) -> Epoch {
        self.nodes.iter().map(NodeView::epoch).max().unwrap_or(0)
    }

    /// The most advanced progress record either node holds for `command`: the newer epoch,
    /// then the later step (a node that was unreachable at a save holds an older step).
    pub fn progress(&self, command: &str) -> Result<Option<Progress>, String> {
        let mut found = Vec::new();
        for node in &self.nodes {
            if let Some(progress) = node.progress()? {
                found.push(progress);
            }
        }
        Ok(found.into_iter().filter(|p| p.command == command).max_by_key(|p| (p.epoch, p.step.rank())))
    }
}
