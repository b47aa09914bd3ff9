//! Where the proxy sends requests: it subscribes to `+hotpair-view` on both nodes' Sentinel
//! ports (pushed, never polled per request) and combines what they say into one [`Target`].
//!
//! ## How two views combine ([`combine`], pure)
//! - The newest epoch either node knows wins.
//! - At that epoch, a node that names itself is the primary (held, while it drains for a
//!   switchover). A node is the authority on itself: when the other node names it but it does
//!   not name itself (demoted a moment ago, the other one not yet told), requests are held.
//! - When the named node's own Sentinel port does not answer (the node is down), the other
//!   node's word is taken: requests go there and wait for it, or for a failover.
//! - Nobody named, no node answering: held.
//!
//! ## Bounds
//! A node's subscription is retried after [`RETRY_FIRST`], doubling up to [`RETRY_MAX`];
//! while it is down that node's view counts as unknown.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::resp::{encode, parse, Frame, Limits};
use crate::sentinel::events::VIEW_CHANNEL;
use crate::sentinel::ViewMessage;

pub const RETRY_FIRST: Duration = Duration::from_millis(20);
pub const RETRY_MAX: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Where requests go now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The primary: requests go to its data port.
    Primary { node: String, data: SocketAddr, epoch: u64 },
    /// Hold requests (a switchover drains the primary, or no primary is known); `why` ends up
    /// in the error of a request held past the hold timeout.
    Hold { why: String },
}

/// The target from each node's latest view (`None`: its Sentinel port does not answer).
pub fn combine(views: &[(String, Option<ViewMessage>)]) -> Target {
    let known: Vec<(&str, &ViewMessage)> =
        views.iter().filter_map(|(reporter, view)| view.as_ref().map(|v| (reporter.as_str(), v))).collect();
    let Some(newest) = known.iter().map(|(_, v)| v.epoch).max() else {
        return Target::Hold { why: "no node's Sentinel port answers".into() };
    };
    let at_newest = || known.iter().filter(|(_, v)| v.epoch == newest);
    let self_named = at_newest().find_map(|(reporter, v)| v.primary.as_ref().filter(|p| p.node == *reporter));
    if let Some(primary) = self_named {
        if primary.draining {
            return Target::Hold { why: format!("{} is draining for a switchover", primary.node) };
        }
        return Target::Primary { node: primary.node.clone(), data: primary.data, epoch: newest };
    }
    let Some(named) = at_newest().find_map(|(_, v)| v.primary.as_ref()) else {
        return Target::Hold { why: format!("no node names a primary at epoch {newest}") };
    };
    if known.iter().any(|(reporter, _)| *reporter == named.node) {
        return Target::Hold { why: format!("{} is named primary but does not say so itself", named.node) };
    }
    Target::Primary { node: named.node.clone(), data: named.data, epoch: newest }
}

/// Follows both nodes' views; the returned watch holds the current [`Target`].
pub fn start(master: String, nodes: Vec<(String, SocketAddr)>) -> watch::Receiver<Target> {
    let (target, receiver) = watch::channel(Target::Hold { why: "starting: no node heard from yet".into() });
    let views = Arc::new(Mutex::new(nodes.iter().map(|(name, _)| (name.clone(), None)).collect::<Vec<_>>()));
    let target = Arc::new(target);
    for (index, (name, sentinel)) in nodes.into_iter().enumerate() {
        let (views, target, master) = (views.clone(), target.clone(), master.clone());
        tokio::spawn(async move {
            let update = |view: Option<ViewMessage>| {
                let mut views = views.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                views[index].1 = view;
                let next = combine(&views);
                target.send_if_modified(|current| {
                    if *current == next {
                        return false;
                    }
                    tracing::info!(target = ?next, "proxy: target changed");
                    *current = next;
                    true
                });
            };
            follow_node(&name, sentinel, &master, update).await;
        });
    }
    receiver
}

/// Subscribes to one node's views for ever, reconnecting with a backoff.
async fn follow_node(name: &str, sentinel: SocketAddr, master: &str, update: impl Fn(Option<ViewMessage>)) {
    let mut retry = RETRY_FIRST;
    loop {
        match subscribe(sentinel, master, &update).await {
            Ok(()) => retry = RETRY_FIRST,
            Err(error) => tracing::debug!(node = name, %sentinel, %error, "proxy: no view from this node"),
        }
        update(None);
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_MAX);
    }
}

/// One subscription: returns when the connection ends.
async fn subscribe(sentinel: SocketAddr, master: &str, update: &impl Fn(Option<ViewMessage>)) -> std::io::Result<()> {
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(sentinel))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let mut request = Vec::new();
    encode(&Frame::array(vec![Frame::bulk("SUBSCRIBE"), Frame::bulk(VIEW_CHANNEL)]), &mut request);
    stream.write_all(&request).await?;
    let limits = Limits::default();
    let mut buffer = Vec::with_capacity(4096);
    loop {
        while let Some((frame, used)) =
            parse(&buffer, &limits).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
        {
            buffer.drain(..used);
            if let Some(view) = view_of(&frame).filter(|v| v.master == master) {
                update(Some(view));
            }
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// The view in a `message` push on the view channel.
fn view_of(frame: &Frame) -> Option<ViewMessage> {
    let Frame::Array(Some(items)) = frame else { return None };
    match items.as_slice() {
        [Frame::Bulk(Some(kind)), Frame::Bulk(Some(channel)), Frame::Bulk(Some(text))]
            if kind.as_ref() == b"message" && channel.as_ref() == VIEW_CHANNEL.as_bytes() =>
        {
            ViewMessage::parse(std::str::from_utf8(text).ok()?)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(text: &str) -> Option<ViewMessage> {
        Some(ViewMessage::parse(text).unwrap())
    }

    fn target(views: &[(&str, Option<ViewMessage>)]) -> Target {
        combine(&views.iter().map(|(n, v)| (n.to_string(), v.clone())).collect::<Vec<_>>())
    }

    fn primary_node(t: &Target) -> Option<&str> {
        match t {
            Target::Primary { node, .. } => Some(node),
            Target::Hold { .. } => None,
        }
    }

    #[test]
    fn a_switchover_holds_from_the_drain_to_the_promotion() {
        let backup_view = view("hotpair b 1 primary a 127.0.0.1 7402");
        // Steady: a says it is primary, b agrees.
        let t = target(&[("a", view("hotpair a 1 primary a 127.0.0.1 7402")), ("b", backup_view.clone())]);
        assert_eq!(primary_node(&t), Some("a"));
        // Drain: a says draining, b (not told) still names a: hold.
        let t = target(&[("a", view("hotpair a 1 draining a 127.0.0.1 7402")), ("b", backup_view.clone())]);
        assert!(matches!(t, Target::Hold { .. }), "{t:?}");
        // Demoted: a names nobody, b still names a: a is the authority on itself: hold.
        let t = target(&[("a", view("hotpair a 1 unknown - - -")), ("b", backup_view)]);
        assert!(matches!(t, Target::Hold { .. }), "{t:?}");
        // b promoted at epoch 2.
        let t =
            target(&[("a", view("hotpair a 1 unknown - - -")), ("b", view("hotpair b 2 primary b 127.0.0.1 7502"))]);
        assert_eq!(primary_node(&t), Some("b"));
    }

    #[test]
    fn the_newest_epoch_wins_and_a_silent_node_is_taken_at_the_others_word() {
        // a was partitioned away and still believes in epoch 1; b was failed over to at 2.
        let t = target(&[
            ("a", view("hotpair a 1 primary a 127.0.0.1 7402")),
            ("b", view("hotpair b 2 primary b 127.0.0.1 7502")),
        ]);
        assert_eq!(primary_node(&t), Some("b"));
        // a is down (no view); b follows a: requests go to a (and wait for it or a failover).
        let t = target(&[("a", None), ("b", view("hotpair b 1 primary a 127.0.0.1 7402"))]);
        assert_eq!(primary_node(&t), Some("a"));
        // Nobody answers.
        assert!(matches!(target(&[("a", None), ("b", None)]), Target::Hold { .. }));
        // A restarted a waiting for its peer, b down: nobody to send to.
        assert!(matches!(target(&[("a", view("hotpair a 1 unknown - - -")), ("b", None)]), Target::Hold { .. }));
    }
}
