//! The Sentinel port's answers, built from a node's [`View`] (pure: no I/O).
//!
//! ## Job
//! The replies Redis Sentinel gives to what client libraries ask, field for field where they
//! read them: `SENTINEL get-master-addr-by-name` (Jedis, Lettuce, go-redis, ioredis),
//! `SENTINEL MASTERS` / `MASTER` (redis-py and the Rust `redis` crate read `ip`, `port` and
//! `flags`, and redis-py `num-other-sentinels`), `SENTINEL REPLICAS`, `SENTINEL SENTINELS`
//! (ioredis and go-redis add the listed Sentinels to their own list), `INFO` and `ROLE`.
//!
//! ## What a node that names nobody answers
//! `get-master-addr-by-name` answers nil, as Sentinel does for a master it does not know: every
//! client then asks its next Sentinel. `MASTERS`, `MASTER`, `REPLICAS` and `SENTINELS` answer
//! `-IDONTKNOW …`: redis-py and the Rust `redis` crate move on to the next Sentinel on an error,
//! while an empty list would make the Rust crate give up at the first Sentinel.

use std::net::SocketAddr;

use bytes::Bytes;

use super::view::View;
use crate::config::NodeConfig;
use crate::resp::Frame;

/// What the answers are built from.
pub struct Snapshot<'a> {
    pub view: View,
    /// The master name (`name` in the pair file).
    pub master: &'a str,
    pub me: &'a NodeConfig,
    pub peer: &'a NodeConfig,
    pub cluster: uuid::Uuid,
    /// Reported as `down-after-milliseconds`: how long the pair takes to call a peer gone.
    pub down_after_ms: u64,
}

/// Redis Sentinel's answer to a name it does not monitor.
pub const NO_SUCH_MASTER: &str = "ERR No such master with that name";

impl Snapshot<'_> {
    /// The node named primary, and the other one (its replica), if a primary is named.
    fn roles(&self) -> Option<(&NodeConfig, &NodeConfig)> {
        let primary = self.view.primary.as_ref()?;
        Some(if primary.node == self.me.name { (self.me, self.peer) } else { (self.peer, self.me) })
    }

    /// `SENTINEL get-master-addr-by-name NAME`: `[ip, port]`, or nil for another name or while
    /// this node names nobody.
    pub fn master_address(&self, name: &[u8]) -> Frame {
        match (&self.view.primary, name == self.master.as_bytes()) {
            (Some(primary), true) => Frame::array(vec![ip(primary.data), port(primary.data)]),
            _ => Frame::Array(None),
        }
    }

    /// `SENTINEL MASTERS`: one master's fields.
    pub fn masters(&self) -> Frame {
        match self.master_fields() {
            Ok(fields) => Frame::array(vec![fields]),
            Err(error) => error,
        }
    }

    /// `SENTINEL MASTER NAME`.
    pub fn master(&self, name: &[u8]) -> Frame {
        if name != self.master.as_bytes() {
            return Frame::error(NO_SUCH_MASTER);
        }
        self.master_fields().unwrap_or_else(|error| error)
    }

    /// `SENTINEL REPLICAS|SLAVES NAME`: the backup's fields.
    pub fn replicas(&self, name: &[u8]) -> Frame {
        if name != self.master.as_bytes() {
            return Frame::error(NO_SUCH_MASTER);
        }
        let Some((primary, replica)) = self.roles() else { return self.dont_know() };
        let up = self.view.link_up;
        let flags = if up { "slave" } else { "slave,s_down" };
        let fields = pairs(&[
            ("name", format!("{}:{}", replica.data.ip(), replica.data.port())),
            ("ip", replica.data.ip().to_string()),
            ("port", replica.data.port().to_string()),
            ("runid", self.run_id(&replica.name)),
            ("flags", flags.to_string()),
            ("link-pending-commands", "0".into()),
            ("link-refcount", "1".into()),
            ("last-ping-sent", "0".into()),
            ("last-ok-ping-reply", "0".into()),
            ("last-ping-reply", "0".into()),
            ("down-after-milliseconds", self.down_after_ms.to_string()),
            ("info-refresh", "0".into()),
            ("role-reported", "slave".into()),
            ("role-reported-time", "0".into()),
            ("master-link-down-time", "0".into()),
            ("master-link-status", if up { "ok" } else { "err" }.into()),
            ("master-host", primary.data.ip().to_string()),
            ("master-port", primary.data.port().to_string()),
            ("slave-priority", "100".into()),
            ("slave-repl-offset", "0".into()),
            ("replica-announced", "1".into()),
        ]);
        Frame::array(vec![fields])
    }

    /// `SENTINEL SENTINELS NAME`: the other node's Sentinel port (the asker knows this one).
    pub fn sentinels(&self, name: &[u8]) -> Frame {
        if name != self.master.as_bytes() {
            return Frame::error(NO_SUCH_MASTER);
        }
        let other = self.peer;
        let fields = pairs(&[
            ("name", self.run_id(&other.name)),
            ("ip", other.sentinel.ip().to_string()),
            ("port", other.sentinel.port().to_string()),
            ("runid", self.run_id(&other.name)),
            ("flags", "sentinel".into()),
            ("link-pending-commands", "0".into()),
            ("link-refcount", "1".into()),
            ("last-ping-sent", "0".into()),
            ("last-ok-ping-reply", "0".into()),
            ("last-ping-reply", "0".into()),
            ("down-after-milliseconds", self.down_after_ms.to_string()),
            ("last-hello-message", "0".into()),
            ("voted-leader", "?".into()),
            ("voted-leader-epoch", "0".into()),
        ]);
        Frame::array(vec![fields])
    }

    /// `SENTINEL MYID`.
    pub fn my_id(&self) -> Frame {
        Frame::bulk(self.run_id(&self.me.name))
    }

    /// `SENTINEL CKQUORUM NAME`.
    pub fn check_quorum(&self, name: &[u8]) -> Frame {
        if name != self.master.as_bytes() {
            return Frame::error(NO_SUCH_MASTER);
        }
        Frame::simple("OK 2 usable Sentinels. Quorum and failover authorization can be reached")
    }

    /// `INFO`: the `# Sentinel` section as Redis Sentinel writes it.
    pub fn info(&self) -> Bytes {
        let (status, address, slaves) = match &self.view.primary {
            Some(p) => ("ok", format!("{}:{}", p.data.ip(), p.data.port()), 1),
            None => ("odown", "0.0.0.0:0".to_string(), 0),
        };
        Bytes::from(format!(
            "# Server\r\nredis_version:7.0.0\r\nredis_mode:sentinel\r\nhotpair_version:{}\r\nhotpair_node:{}\r\n\r\n\
             # Sentinel\r\nsentinel_masters:1\r\nsentinel_tilt:0\r\nsentinel_running_scripts:0\r\n\
             sentinel_scripts_queue_length:0\r\nsentinel_simulate_failure_flags:0\r\n\
             master0:name={},status={status},address={address},slaves={slaves},sentinels=2\r\nhotpair_epoch:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            self.me.name,
            self.master,
            self.view.epoch,
        ))
    }

    /// `ROLE` on a Sentinel: `["sentinel", [master names]]`.
    pub fn role(&self) -> Frame {
        Frame::array(vec![Frame::bulk("sentinel"), Frame::array(vec![Frame::bulk(self.master.to_string())])])
    }

    fn master_fields(&self) -> Result<Frame, Frame> {
        let Some(primary) = &self.view.primary else { return Err(self.dont_know()) };
        let flags = if primary.draining { "master,failover_in_progress" } else { "master" };
        Ok(pairs(&[
            ("name", self.master.to_string()),
            ("ip", primary.data.ip().to_string()),
            ("port", primary.data.port().to_string()),
            ("runid", self.run_id(&primary.node)),
            ("flags", flags.to_string()),
            ("link-pending-commands", "0".into()),
            ("link-refcount", "1".into()),
            ("last-ping-sent", "0".into()),
            ("last-ok-ping-reply", "0".into()),
            ("last-ping-reply", "0".into()),
            ("down-after-milliseconds", self.down_after_ms.to_string()),
            ("info-refresh", "0".into()),
            ("role-reported", "master".into()),
            ("role-reported-time", "0".into()),
            ("config-epoch", self.view.epoch.to_string()),
            ("num-slaves", "1".into()),
            ("num-other-sentinels", "1".into()),
            ("quorum", "1".into()),
            ("failover-timeout", "30000".into()),
            ("parallel-syncs", "1".into()),
            ("hotpair-node", primary.node.clone()),
        ]))
    }

    fn dont_know(&self) -> Frame {
        Frame::error(format!(
            "IDONTKNOW node {} names no primary right now ({}); ask the other Sentinel ({})",
            self.me.name, self.view.unknown_because, self.peer.sentinel
        ))
    }

    /// A Sentinel run id (40 hex digits) for `node`: stable for the node within its cluster.
    fn run_id(&self, node: &str) -> String {
        let hash = xxhash_rust::xxh3::xxh3_128(format!("{}/{node}", self.cluster).as_bytes());
        format!("{hash:032x}{:08x}", (hash >> 96) as u32)
    }
}

fn ip(address: SocketAddr) -> Frame {
    Frame::bulk(address.ip().to_string())
}

fn port(address: SocketAddr) -> Frame {
    Frame::bulk(address.port().to_string())
}

/// A flat array of name, value, name, value…: how RESP2 Sentinel replies carry a record.
fn pairs(fields: &[(&str, String)]) -> Frame {
    Frame::array(
        fields.iter().flat_map(|(name, value)| [Frame::bulk(name.to_string()), Frame::bulk(value.clone())]).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sentinel::view::Named;

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

    fn field(record: &Frame, name: &str) -> Option<String> {
        let Frame::Array(Some(items)) = record else { return None };
        items.chunks(2).find_map(|pair| match pair {
            [Frame::Bulk(Some(k)), Frame::Bulk(Some(v))] if k.as_ref() == name.as_bytes() => {
                Some(String::from_utf8_lossy(v).into_owned())
            }
            _ => None,
        })
    }

    #[test]
    fn answers_name_the_views_primary_and_refuse_other_names() {
        let (a, b) = (node("a", 7401), node("b", 7501));
        let view = View {
            epoch: 3,
            primary: Some(Named { node: "b".into(), data: b.data, draining: false }),
            unknown_because: "",
            link_up: true,
        };
        let s = Snapshot { view, master: "hotpair", me: &a, peer: &b, cluster: uuid::Uuid::nil(), down_after_ms: 5000 };
        assert_eq!(s.master_address(b"hotpair"), Frame::array(vec![Frame::bulk("127.0.0.1"), Frame::bulk("7502")]));
        assert_eq!(s.master_address(b"other"), Frame::Array(None));
        let master = s.master(b"hotpair");
        assert_eq!(field(&master, "flags").as_deref(), Some("master"));
        assert_eq!(field(&master, "port").as_deref(), Some("7502"));
        assert_eq!(field(&master, "config-epoch").as_deref(), Some("3"));
        assert_eq!(s.master(b"nope"), Frame::error(NO_SUCH_MASTER));
        let Frame::Array(Some(replicas)) = s.replicas(b"hotpair") else { panic!() };
        assert_eq!(field(&replicas[0], "port").as_deref(), Some("7402"));
        assert_eq!(field(&replicas[0], "master-port").as_deref(), Some("7502"));
        let Frame::Array(Some(sentinels)) = s.sentinels(b"hotpair") else { panic!() };
        assert_eq!(field(&sentinels[0], "port").as_deref(), Some("7503"));
        assert_eq!(field(&sentinels[0], "runid").map(|id| id.len()), Some(40));
    }

    #[test]
    fn a_node_that_names_nobody_says_so_and_sends_clients_on() {
        let (a, b) = (node("a", 7401), node("b", 7501));
        let view = View { epoch: 3, primary: None, unknown_because: "just demoted", link_up: false };
        let s = Snapshot { view, master: "hotpair", me: &a, peer: &b, cluster: uuid::Uuid::nil(), down_after_ms: 5000 };
        assert_eq!(s.master_address(b"hotpair"), Frame::Array(None));
        for answer in [s.masters(), s.master(b"hotpair"), s.replicas(b"hotpair")] {
            assert!(matches!(&answer, Frame::Error(e) if e.starts_with("IDONTKNOW") && e.contains("127.0.0.1:7503")));
        }
    }
}
