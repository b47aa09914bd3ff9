//! Connection hand-off: when a node stops being the primary, its data port closes every client
//! connection, as Redis Sentinel's `CLIENT KILL TYPE normal` does after a failover, so that
//! pooled clients ask their Sentinels again at once instead of writing into `-READONLY`.
//!
//! ## Invariants
//! - The signal fires once per change from a writing role (`primary`, `draining`) to any other
//!   (demoted to `backup`, `fenced`, `rejoining`); nothing else fires it. A role the watch skips
//!   over (primary → draining → backup seen as primary → backup) still fires once.
//! - It observes the published role only: it never changes a role, and a role change never
//!   waits for it.

use std::sync::Arc;

use tokio::sync::watch;

use crate::node::Node;
use crate::storage::meta::Role;

fn writes(role: Role) -> bool {
    matches!(role, Role::Primary | Role::Draining)
}

/// A counter that goes up each time `node` stops being a writer; the data port closes its
/// client connections when it moves. The watcher task ends with the node.
pub fn watch_demotions(node: &Arc<Node>) -> watch::Receiver<u64> {
    let (sender, receiver) = watch::channel(0u64);
    let mut role = node.subscribe_role();
    let mut shutdown = node.shutdown.subscribe();
    tokio::spawn(async move {
        let mut was_writer = writes(*role.borrow_and_update());
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return,
                changed = role.changed() => if changed.is_err() { return },
            }
            let now = *role.borrow_and_update();
            if was_writer && !writes(now) {
                tracing::info!(role = now.name(), "no longer the primary: closing the data port's client connections");
                sender.send_modify(|count| *count += 1);
            }
            was_writer = writes(now);
        }
    });
    receiver
}
