//! What one node tells applications about where the primary is: its *view*, computed from what
//! it knows (pure: no I/O, no clock).
//!
//! ## The rules
//! - A primary taking writes names itself, at its epoch. A draining primary too (it is still the
//!   primary until it is demoted), flagged `draining`. A node being promoted (its role already
//!   says primary, its history or its commit pipeline are not there yet) names nobody until it
//!   takes writes: a client sent there a moment early would get `-READONLY`.
//! - A restarted primary that waits for its peer's word names nobody: it may have been failed
//!   over while it was down, and it takes no writes until it knows.
//! - A backup, fenced or rejoining node names its peer — never itself: a fenced node has heard
//!   of a newer epoch, which only its peer can lead. The epoch it names the peer at is the
//!   history's when the history names the peer, else its own epoch + 1 (the peer must be ahead
//!   of it to be primary at all).
//! - A backup whose history still names itself (just demoted, the new primary not heard of yet)
//!   names nobody: the peer is not known to be promoted, and a client sent there would be
//!   refused with `-READONLY`. It names the peer as soon as it follows it.
//!
//! ## Invariants
//! - A view never names its own node unless the node is primary or draining and not waiting for
//!   its peer: a fenced node, or one that knows a newer epoch, never names itself.
//! - The `+hotpair-view` message text round-trips ([`View::message`], [`ViewMessage::parse`]).

use std::net::SocketAddr;

use crate::config::NodeConfig;
use crate::storage::journal::Epoch;
use crate::storage::meta::Role;

/// What a node knows, as [`view`] needs it.
#[derive(Debug, Clone)]
pub struct Knowledge<'a> {
    pub me: &'a NodeConfig,
    pub peer: &'a NodeConfig,
    pub role: Role,
    pub epoch: Epoch,
    /// The last entry of the node's history: which node led its newest epoch, and that epoch.
    pub history_last: Option<(Epoch, &'a str)>,
    /// A restarted primary waiting for its peer's confirmation, or a primary being fenced.
    pub awaiting_peer: bool,
    /// The commit pipeline is running: without it a primary refuses writes.
    pub pipeline: bool,
    /// On a primary: a backup session is connected. Elsewhere: this node follows the primary.
    pub link_up: bool,
}

/// The primary a view names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub node: String,
    /// Its data port: where clients connect.
    pub data: SocketAddr,
    /// Draining for a switchover: writes get `-TRYAGAIN` until the new primary takes over.
    pub draining: bool,
}

/// What a node answers: the primary of the newest epoch it knows, or nobody for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub epoch: Epoch,
    pub primary: Option<Named>,
    /// When nobody is named: why, in a few words (shown in errors).
    pub unknown_because: &'static str,
    /// The link between the named primary and its backup, as this node sees it.
    pub link_up: bool,
}

impl View {
    /// Whether this view names `node` as the primary.
    pub fn names(&self, node: &str) -> bool {
        self.primary.as_ref().is_some_and(|p| p.node == node)
    }
}

/// The view of a node that knows `k`.
pub fn view(k: &Knowledge<'_>) -> View {
    let me = |draining| Named { node: k.me.name.clone(), data: k.me.data, draining };
    let peer = Named { node: k.peer.name.clone(), data: k.peer.data, draining: false };
    let unknown = |because| View { epoch: k.epoch, primary: None, unknown_because: because, link_up: k.link_up };
    let named = |epoch, primary| View { epoch, primary: Some(primary), unknown_because: "", link_up: k.link_up };
    let history_names_peer = k.history_last.is_some_and(|(_, node)| node == k.peer.name);
    let history_names_me = k.history_last.is_some_and(|(_, node)| node == k.me.name);
    let peer_epoch = match k.history_last {
        Some((epoch, _)) if history_names_peer => epoch.max(k.epoch),
        _ => k.epoch + 1,
    };
    match k.role {
        Role::Primary | Role::Draining if k.awaiting_peer => {
            unknown("restarted primary waiting for its peer to confirm it was not failed over")
        }
        // A promotion publishes the role before the new epoch is written: until then the node
        // is not yet the primary of anything it could name.
        Role::Primary | Role::Draining if !history_names_me || !k.pipeline => unknown("being promoted"),
        Role::Primary => named(k.epoch, me(false)),
        Role::Draining => named(k.epoch, me(true)),
        Role::Backup if !history_names_peer => unknown("just demoted; the new primary has not been heard from yet"),
        Role::Backup | Role::Fenced | Role::Rejoining => named(peer_epoch, peer),
    }
}

/// The state word of a `+hotpair-view` message.
const STATE_PRIMARY: &str = "primary";
const STATE_DRAINING: &str = "draining";
const STATE_UNKNOWN: &str = "unknown";

impl View {
    /// The `+hotpair-view` message: `<master-name> <reporter> <epoch> <state> <node> <ip> <port>`,
    /// `state` one of `primary`, `draining`, `unknown` (then node, ip and port are `-`).
    pub fn message(&self, master: &str, reporter: &str) -> String {
        match &self.primary {
            Some(p) => {
                let state = if p.draining { STATE_DRAINING } else { STATE_PRIMARY };
                format!("{master} {reporter} {} {state} {} {} {}", self.epoch, p.node, p.data.ip(), p.data.port())
            }
            None => format!("{master} {reporter} {} {STATE_UNKNOWN} - - -", self.epoch),
        }
    }
}

/// A parsed `+hotpair-view` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewMessage {
    pub master: String,
    pub reporter: String,
    pub epoch: Epoch,
    pub primary: Option<Named>,
}

impl ViewMessage {
    /// Parses a `+hotpair-view` message; `None` if it is not one.
    pub fn parse(text: &str) -> Option<ViewMessage> {
        let fields: Vec<&str> = text.split(' ').collect();
        let [master, reporter, epoch, state, node, ip, port] = fields.as_slice() else { return None };
        let epoch = epoch.parse().ok()?;
        let primary = match *state {
            STATE_UNKNOWN => None,
            STATE_PRIMARY | STATE_DRAINING => {
                let ip: std::net::IpAddr = ip.parse().ok()?;
                Some(Named {
                    node: (*node).to_string(),
                    data: SocketAddr::new(ip, port.parse().ok()?),
                    draining: *state == STATE_DRAINING,
                })
            }
            _ => return None,
        };
        Some(ViewMessage { master: (*master).to_string(), reporter: (*reporter).to_string(), epoch, primary })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, port: u16) -> NodeConfig {
        let address = |p| SocketAddr::from(([127, 0, 0, 1], p));
        NodeConfig {
            name: name.into(),
            control: address(port),
            data: address(port + 1),
            peer_via: address(port),
            metrics: None,
            sentinel: address(port + 2),
            dir: "/x".into(),
            cert: "/x".into(),
            key: "/x".into(),
            data_cert: None,
            data_key: None,
        }
    }

    fn knowledge<'a>(me: &'a NodeConfig, peer: &'a NodeConfig, role: Role, history: (Epoch, &'a str)) -> Knowledge<'a> {
        Knowledge {
            me,
            peer,
            role,
            epoch: history.0,
            history_last: Some(history),
            awaiting_peer: false,
            pipeline: matches!(role, Role::Primary | Role::Draining),
            link_up: true,
        }
    }

    const ROLES: [Role; 5] = [Role::Primary, Role::Backup, Role::Draining, Role::Fenced, Role::Rejoining];

    #[test]
    fn each_role_names_what_it_knows() {
        let (a, b) = (node("a", 7401), node("b", 7501));
        let v = view(&knowledge(&a, &b, Role::Primary, (1, "a")));
        assert_eq!(
            (v.epoch, v.primary.as_ref().map(|p| (p.node.as_str(), p.data.port(), p.draining))),
            (1, Some(("a", 7402, false)))
        );
        let v = view(&knowledge(&a, &b, Role::Draining, (1, "a")));
        assert!(v.primary.as_ref().is_some_and(|p| p.node == "a" && p.draining));
        // b follows a: names a at a's epoch.
        let v = view(&knowledge(&b, &a, Role::Backup, (1, "a")));
        assert!(v.names("a") && v.epoch == 1);
        // a just demoted, b not yet heard of as primary: nobody.
        let v = view(&knowledge(&a, &b, Role::Backup, (1, "a")));
        assert_eq!(v.primary, None);
        // a follows b into epoch 2.
        let v = view(&knowledge(&a, &b, Role::Backup, (2, "b")));
        assert!(v.names("b") && v.epoch == 2);
        // a fenced: b leads a newer epoch than a's 1.
        let v = view(&knowledge(&a, &b, Role::Fenced, (1, "a")));
        assert!(v.names("b") && v.epoch == 2, "{v:?}");
        // a being promoted: the role is published before the epoch it leads, and the epoch
        // before the pipeline runs.
        assert_eq!(view(&knowledge(&a, &b, Role::Primary, (1, "b"))).primary, None);
        let starting = Knowledge { pipeline: false, ..knowledge(&a, &b, Role::Primary, (2, "a")) };
        assert_eq!(view(&starting).primary, None);
        let mut restarted = knowledge(&a, &b, Role::Primary, (1, "a"));
        restarted.awaiting_peer = true;
        assert_eq!(view(&restarted).primary, None);
    }

    #[test]
    fn a_node_names_itself_only_as_a_writer_in_good_standing() {
        let (a, b) = (node("a", 7401), node("b", 7501));
        for role in ROLES {
            for history in [(3, "a"), (3, "b")] {
                for awaiting_peer in [false, true] {
                    let k = Knowledge { awaiting_peer, ..knowledge(&a, &b, role, history) };
                    let v = view(&k);
                    if v.names("a") {
                        assert!(
                            matches!(role, Role::Primary | Role::Draining) && !awaiting_peer && history.1 == "a",
                            "{role:?} {v:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn view_messages_round_trip() {
        let (a, b) = (node("a", 7401), node("b", 7501));
        for (role, history) in [(Role::Primary, (4, "a")), (Role::Draining, (4, "a")), (Role::Backup, (4, "a"))] {
            let v = view(&knowledge(&a, &b, role, history));
            let text = v.message("hotpair", "a");
            let parsed = ViewMessage::parse(&text).unwrap();
            assert_eq!((parsed.epoch, parsed.primary, parsed.reporter.as_str()), (v.epoch, v.primary, "a"), "{text}");
        }
        assert_eq!(ViewMessage::parse("hotpair a 1 maybe - - -"), None);
        assert_eq!(ViewMessage::parse("hotpair a x primary a 127.0.0.1 1"), None);
        assert_eq!(ViewMessage::parse(""), None);
    }
}
