//! The Sentinel-compatible port: applications find the primary the way they find a Redis
//! primary behind Redis Sentinel, with their client library's stock Sentinel support.
//!
//! ## Job
//! Each node serves, on its `sentinel` address (default control port + 2), the part of Redis
//! Sentinel's protocol that redis-py, Jedis, Lettuce, go-redis and ioredis use: `SENTINEL
//! get-master-addr-by-name`, `MASTERS`, `MASTER`, `REPLICAS`/`SLAVES`, `SENTINELS`, `PING`,
//! `CLIENT SETNAME|SETINFO`, `HELLO` (refused, so RESP3 clients fall back to RESP2), `INFO`,
//! `ROLE`, and `SUBSCRIBE`/`PSUBSCRIBE` with `+switch-master` on every change of primary. The
//! master name is the pair file's `name` (default `hotpair`). docs/clients.md says how each
//! client library is pointed at it and what it sees during a switchover, failover or partition.
//!
//! - [`view`]: what the node knows, turned into the primary it names (pure).
//! - `answers`: the Sentinel replies built from a view (pure).
//! - `events`: publishes `+switch-master`, `±sdown` and `+hotpair-view` (what `hotpair proxy`
//!   follows) as the view changes.
//! - `server`: the port itself.
//! - [`watch_demotions`]: the data port's connection hand-off when the node stops being primary.
//!
//! ## Invariants
//! - A node answers from what it knows with the highest epoch, and never names itself unless
//!   it is the primary (or draining) in good standing: a fenced node, a demoted one, or a
//!   restarted primary not yet confirmed by its peer names its peer or nobody ([`view`]).
//! - The port decides nothing: it reads the node's published role, metadata and links, and
//!   changes none of them.
//!
//! ## Caveats
//! - During a partition each side answers from its own knowledge; docs/clients.md says what a
//!   client may see, and why no acknowledged write is lost by it at `durable`.
//! - No password or TLS yet: when the data port gets them (`[clients]`), `server::auth_reply`
//!   is where the Sentinel port checks the same password.

mod answers;
pub mod events;
mod handoff;
mod server;
pub mod view;

use std::sync::Arc;

pub use handoff::watch_demotions;
pub use view::{View, ViewMessage};

use crate::node::Node;

/// What `node` knows right now, as a [`View`].
pub fn current_view(node: &Node) -> View {
    let meta = node.meta();
    let role = node.role();
    let link_up = match role {
        crate::storage::meta::Role::Primary | crate::storage::meta::Role::Draining => node.peer.borrow().connected,
        _ => *node.following.borrow(),
    };
    view::view(&view::Knowledge {
        me: &node.config,
        peer: &node.peer_config,
        role,
        epoch: meta.epoch,
        history_last: meta.history.last().map(|h| (h.epoch, h.primary.as_str())),
        awaiting_peer: node.awaits_peer(),
        pipeline: node.pipeline().is_some(),
        link_up,
    })
}

fn snapshot(node: &Node) -> answers::Snapshot<'_> {
    answers::Snapshot {
        view: current_view(node),
        master: &node.master_name,
        me: &node.config,
        peer: &node.peer_config,
        cluster: node.pair().cluster,
        down_after_ms: node.pair().sync_timeout.as_millis() as u64,
    }
}

/// Serves the Sentinel port and publishes the node's view changes until the node shuts down.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    users: Option<Arc<crate::server::auth::Users>>,
) -> Result<(), crate::Error> {
    let hub = Arc::new(events::Hub::new(&node));
    let publisher = tokio::spawn(events::publish(node.clone(), hub.clone()));
    server::serve(node, listener, hub, users).await;
    let _ = publisher.await;
    Ok(())
}

/// What a refused write on a draining primary adds to its `-TRYAGAIN`: the node expected to
/// take over (in a pair, always the peer), so that a client or an admin reading it knows where
/// writes go next. Empty when the node is not draining.
pub fn drain_hint(node: &Node) -> String {
    if node.role() != crate::storage::meta::Role::Draining {
        return String::new();
    }
    format!("; the new primary is expected to be {} at {}", node.peer_config.name, node.peer_config.data)
}
