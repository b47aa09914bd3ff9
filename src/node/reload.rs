//! `hotpair reload` on one node: re-read the pair file the node was started with (and the
//! data port's password and users files), say what changed, and swap in what may change live.
//!
//! ## Job
//! A *check* loads the file and answers what differs from what the node runs, refusing when any
//! key that needs a restart differs. An *apply* does the same and then swaps the config in
//! ([`Node::set_pair`]), points the notifier at the new targets and re-reads the client users.
//! The orchestrator (`crate::orchestrator::commands::reload`) checks both nodes before it
//! applies on either.
//!
//! ## Invariants
//! - A check changes nothing; a refused apply changes nothing.
//! - An apply applies only the file its check read: it names the digest it expects and is
//!   refused if the file changed since (so what was checked on both nodes is what lands).
//! - What may change live is read where it is used from one snapshot ([`Node::pair`]): a commit
//!   waits under the sync level, timeout and peer-loss policy it read when it began, so a
//!   reload between `durable` and `async` under load fails no write and mixes no levels.
//! - Keys that need a restart (see [`restart_keys`]) are refused by name; they are the ones
//!   read once at start (addresses, directories, certificates, ports' limits, the witness).

use std::sync::Arc;

use super::Node;
use crate::admin::protocol::ReloadReply;
use crate::config::PairConfig;

/// Checks (and with `apply`, swaps in) the node's pair file; `Err` is the refusal, one sentence.
pub(crate) fn handle(
    node: &Arc<Node>,
    apply: bool,
    expect_digest: Option<String>,
    peer_digest: Option<String>,
) -> Result<ReloadReply, String> {
    let running = node.pair();
    let path = running.path.clone();
    let name = node.name().to_string();
    let new = PairConfig::load(&path)
        .map_err(|err| format!("{name} cannot reload {}: {err}; it keeps running the file it has", path.display()))?;
    let restart = restart_keys(&running, &new);
    if !restart.is_empty() {
        return Err(format!(
            "{} in {} cannot change while the nodes run (read only at start: a restart takes {}); nothing was changed",
            restart.join(", "),
            path.display(),
            if restart.len() == 1 { "it" } else { "them" }
        ));
    }
    // Read now, at the check too: a password file that cannot be used is refused before either
    // node changes anything.
    let users = load_users(&new).map_err(|err| format!("{name} cannot reload: {err}; nothing was changed"))?;
    let changed = live_keys(&running, &new);
    if let Some(expected) = &expect_digest {
        if *expected != new.digest {
            return Err(format!(
                "{} changed since the check ({} then, {} now); nothing was changed: run `hotpair reload` again",
                path.display(),
                short(expected),
                short(&new.digest)
            ));
        }
    }
    let reply = ReloadReply {
        node: name.clone(),
        path: path.display().to_string(),
        previous_digest: running.digest.clone(),
        digest: new.digest.clone(),
        changed: changed.clone(),
        applied: apply,
    };
    if !apply {
        return Ok(reply);
    }
    if let (Some(users), Some(live)) = (users, super::lock(&node.data_users).clone()) {
        live.replace(users);
    }
    if new.notify != running.notify {
        node.incidents.set_targets(new.notify.incident_log.clone(), new.notify.commands.clone());
    }
    node.set_pair(new);
    if changed.is_empty() {
        tracing::info!(path = %path.display(), "reload: the pair file is unchanged (client users re-read)");
    } else {
        tracing::info!(path = %path.display(), changed = %changed.join(", "), digest = %reply.digest, "reloaded the pair file");
    }
    node.note_peer_config(peer_digest);
    super::monitor::check_config(node);
    Ok(reply)
}

/// The client users the new file names, read now; `None` when it sets no password (then the
/// running node had none either: adding or removing AUTH is a restart key).
fn load_users(new: &PairConfig) -> Result<Option<crate::server::auth::Users>, String> {
    let clients = &new.clients;
    crate::server::auth::Users::load(clients.password_file.as_deref(), clients.users_file.as_deref())
        .map_err(|err| err.to_string())
}

/// The keys, as the pair file spells them, that differ and need a restart.
pub fn restart_keys(old: &PairConfig, new: &PairConfig) -> Vec<String> {
    let mut keys = Vec::new();
    let mut differs = |key: &str, differ: bool| {
        if differ {
            keys.push(key.to_string());
        }
    };
    differs("cluster", old.cluster != new.cluster);
    differs("name", old.name != new.name);
    differs("tls.ca", old.tls.ca != new.tls.ca);
    differs("tls.admin_cert", old.tls.admin_cert != new.tls.admin_cert);
    differs("tls.admin_key", old.tls.admin_key != new.tls.admin_key);
    differs("witness", old.witness != new.witness);
    let (a, b) = (&old.clients, &new.clients);
    // Adding or removing AUTH changes how the data port greets clients: a restart. A new
    // password in the same file (or a file at a new path) is live.
    differs("clients.password_file", a.password_file.is_some() != b.password_file.is_some());
    differs("clients.users_file", a.users_file.is_some() != b.users_file.is_some());
    differs("clients.tls", a.tls != b.tls);
    differs("clients.tls_auth_clients", a.tls_auth_clients != b.tls_auth_clients);
    let (a, b) = (&old.limits, &new.limits);
    differs("limits.max_value_bytes", a.max_value_bytes != b.max_value_bytes);
    differs("limits.max_connections", a.max_connections != b.max_connections);
    differs("limits.max_args", a.max_args != b.max_args);
    differs("limits.max_client_memory", a.max_client_memory != b.max_client_memory);
    differs("limits.client_idle_timeout", a.client_idle_timeout != b.client_idle_timeout);
    let (a, b) = (&old.monitor, &new.monitor);
    differs("monitor.canary_interval", a.canary_interval != b.canary_interval);
    differs("monitor.digest_interval", a.digest_interval != b.digest_interval);
    let old_names: Vec<&str> = old.nodes.iter().map(|n| n.name.as_str()).collect();
    let new_names: Vec<&str> = new.nodes.iter().map(|n| n.name.as_str()).collect();
    if old_names != new_names {
        keys.push(format!("the node names ({} → {})", old_names.join(", "), new_names.join(", ")));
        return keys;
    }
    for (a, b) in old.nodes.iter().zip(&new.nodes) {
        let n = &a.name;
        let mut node_key = |field: &str, differ: bool| {
            if differ {
                keys.push(format!("nodes.{n}.{field}"));
            }
        };
        node_key("control", a.control != b.control);
        node_key("data", a.data != b.data);
        node_key("peer_via", a.peer_via != b.peer_via);
        node_key("metrics", a.metrics != b.metrics);
        node_key("sentinel", a.sentinel != b.sentinel);
        node_key("dir", a.dir != b.dir);
        node_key("cert", a.cert != b.cert);
        node_key("key", a.key != b.key);
        node_key("data_cert", a.data_cert != b.data_cert);
        node_key("data_key", a.data_key != b.data_key);
    }
    keys
}

/// The keys that differ and change live (valid only when [`restart_keys`] is empty).
pub fn live_keys(old: &PairConfig, new: &PairConfig) -> Vec<String> {
    let mut keys = Vec::new();
    let mut differs = |key: &str, differ: bool| {
        if differ {
            keys.push(key.to_string());
        }
    };
    differs("sync", old.sync != new.sync);
    differs("sync_timeout", old.sync_timeout != new.sync_timeout);
    differs("on_peer_loss", old.on_peer_loss != new.on_peer_loss);
    differs("heartbeat", old.heartbeat != new.heartbeat);
    differs("disk_min_free", old.disk_min_free != new.disk_min_free);
    differs("notify.commands", old.notify.commands != new.notify.commands);
    differs("notify.incident_log", old.notify.incident_log != new.notify.incident_log);
    differs("limits.admin_idle_timeout", old.limits.admin_idle_timeout != new.limits.admin_idle_timeout);
    differs(
        "limits.client_output_buffer_limit",
        old.limits.client_output_buffer_limit != new.limits.client_output_buffer_limit,
    );
    differs("monitor.lag_alert", old.monitor.lag_alert != new.monitor.lag_alert);
    differs("monitor.lag_alert_records", old.monitor.lag_alert_records != new.monitor.lag_alert_records);
    differs("monitor.retention_alert", old.monitor.retention_alert != new.monitor.retention_alert);
    differs("clients.password_file", old.clients.password_file != new.clients.password_file);
    differs("clients.users_file", old.clients.users_file != new.clients.users_file);
    keys
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}
