//! The Sentinel port's events: what a node publishes when its view changes.
//!
//! ## Job
//! [`publish`] recomputes the node's [`View`] whenever its role or its following changes (and
//! every [`RECHECK`], for what has no signal of its own: an epoch adopted from the primary, a
//! backup session that ends) and publishes, to every subscriber of every Sentinel connection:
//! - `+switch-master <master> <old ip> <old port> <new ip> <new port>` when the primary it
//!   names moves to another address (Jedis, Lettuce, go-redis and ioredis listen for it);
//! - `+sdown slave <ip>:<port> <ip> <port> @ <master> <ip> <port>` and `-sdown …` when this
//!   node is the primary and its backup's session drops or returns;
//! - `+hotpair-view <master> <reporter> <epoch> <state> <node> <ip> <port>` on every change of
//!   epoch, named primary or drain ([`View::message`]): what `hotpair proxy` follows, drains
//!   included. A subscriber to it is sent the current view first.
//!
//! ## Invariants
//! - Events carry a sequence number that only grows; the current view is kept with the number
//!   of the event that published it, so a new subscriber can skip what is older than what it
//!   was just sent.
//! - Nothing is published for the first view after start: no client was told anything before.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::node::Node;

/// The channel of `hotpair proxy`'s view messages.
pub const VIEW_CHANNEL: &str = "+hotpair-view";
/// How often the view is recomputed without a signal.
pub const RECHECK: Duration = Duration::from_millis(50);
/// Events kept for subscribers that have not read them yet (see `server::EVENT_BACKLOG`).
const CHANNEL_CAPACITY: usize = super::server::EVENT_BACKLOG;

/// One published message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub channel: &'static str,
    pub message: String,
    pub seq: u64,
}

/// Where events go: the live stream, and the current view for new subscribers.
pub struct Hub {
    pub events: broadcast::Sender<Event>,
    pub view: watch::Sender<Event>,
}

impl Hub {
    pub fn new(node: &Node) -> Hub {
        let first = Event {
            channel: VIEW_CHANNEL,
            message: super::current_view(node).message(&node.pair().name, node.name()),
            seq: 0,
        };
        Hub { events: broadcast::channel(CHANNEL_CAPACITY).0, view: watch::channel(first).0 }
    }
}

/// Publishes the node's view changes until it shuts down.
pub async fn publish(node: Arc<Node>, hub: Arc<Hub>) {
    let mut role = node.subscribe_role();
    let mut following = node.following.subscribe();
    let mut shutdown = node.shutdown.subscribe();
    let master = node.pair().name.clone();
    let mut last = super::current_view(&node);
    let mut last_named = last.primary.clone();
    let mut seq = 0u64;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = role.changed() => {}
            _ = following.changed() => {}
            () = tokio::time::sleep(RECHECK) => {}
        }
        let now = super::current_view(&node);
        let mut publish = |channel: &'static str, message: String| {
            seq += 1;
            let event = Event { channel, message, seq };
            if channel == VIEW_CHANNEL {
                hub.view.send_replace(event.clone());
            }
            // No subscriber is not an error.
            let _ = hub.events.send(event);
        };
        if (now.epoch, &now.primary) != (last.epoch, &last.primary) {
            tracing::info!(view = %now.message(&master, node.name()), "sentinel view changed");
            publish(VIEW_CHANNEL, now.message(&master, node.name()));
        }
        if let Some(primary) = &now.primary {
            if let Some(old) = last_named.as_ref().filter(|old| old.data != primary.data) {
                let message = format!(
                    "{master} {} {} {} {}",
                    old.data.ip(),
                    old.data.port(),
                    primary.data.ip(),
                    primary.data.port()
                );
                tracing::info!(%message, "+switch-master");
                publish("+switch-master", message);
            }
            last_named = Some(primary.clone());
        }
        let me_primary_before = last.names(node.name());
        if me_primary_before && now.names(node.name()) && now.link_up != last.link_up {
            let (me, backup) = (&node.config.data, &node.peer_config.data);
            let message = format!(
                "slave {}:{} {} {} @ {master} {} {}",
                backup.ip(),
                backup.port(),
                backup.ip(),
                backup.port(),
                me.ip(),
                me.port()
            );
            publish(if now.link_up { "-sdown" } else { "+sdown" }, message);
        }
        last = now;
    }
}
