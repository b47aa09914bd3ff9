//! `hotpair witness show|pause|resume`: the witness as etcd holds it, and the pause of
//! automatic decisions during maintenance.
//!
//! ## Job
//! Talks to etcd directly with the pair file's `[witness]` (the nodes need not be up). `pause`
//! writes the pause key `/hotpair/<cluster>/paused`; both nodes' agents read it every round and
//! hand it to their engines, which then decide nothing automatically (each held-back takeover is
//! still reported as `failover-suppressed`). `resume` deletes it. The pause lives in etcd, so it
//! holds across node restarts and needs no node to be reachable.

use std::time::Duration;

use serde_json::json;

use super::agent::{keys, paused_key, Leader};
use super::etcd::{EtcdClient, EtcdTls};
use crate::config::PairConfig;
use crate::engine::WitnessEpoch;
use crate::Error;

/// Bound on each etcd call of the command.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Show { json: bool },
    Pause,
    Resume,
}

/// Runs one `hotpair witness` action; returns what to print.
pub fn main(pair: &PairConfig, action: Action) -> Result<String, Error> {
    let Some(config) = &pair.witness else {
        return Err(Error::Failed(format!(
            "{} has no [witness] table: failover is manual (docs/witness.md)",
            pair.path.display()
        )));
    };
    let tls = EtcdTls { ca: config.ca.clone(), cert: config.cert.clone(), key: config.key.clone() };
    let client = EtcdClient::new(&config.etcd, &tls, CALL_TIMEOUT).map_err(|e| Error::Failed(e.to_string()))?;
    let failed = |e: super::EtcdError| Error::Failed(format!("the witness: {e}"));
    let (leader_key, epoch_key) = keys(pair.cluster);
    let paused_key = paused_key(pair.cluster);
    crate::admin::client::block_on(async {
        match action {
            Action::Pause => {
                let value = json!({ "at_ms": crate::clock::now_ms() }).to_string();
                client.put_all_if(&[], &[(paused_key.as_bytes(), value.as_bytes(), 0)]).await.map_err(failed)?;
                Ok("automatic failover paused: neither node takes over or rejoins by itself until `hotpair witness resume`\n".to_string())
            }
            Action::Resume => {
                if let Some(kv) = client.get(paused_key.as_bytes()).await.map_err(failed)? {
                    client.delete_if_revision(paused_key.as_bytes(), kv.mod_revision).await.map_err(failed)?;
                }
                Ok(format!("automatic failover resumed ({})\n", config.failover.name()))
            }
            Action::Show { json } => {
                let leader = client.get(leader_key.as_bytes()).await.map_err(failed)?;
                let epoch = client.get(epoch_key.as_bytes()).await.map_err(failed)?;
                let paused = client.get(paused_key.as_bytes()).await.map_err(failed)?.is_some();
                let leader: Option<Leader> = leader.and_then(|kv| serde_json::from_slice(&kv.value).ok());
                let epoch: Option<WitnessEpoch> = epoch.and_then(|kv| serde_json::from_slice(&kv.value).ok());
                if json {
                    let value = json!({
                        "etcd": config.etcd,
                        "mode": config.failover.name(),
                        "ttl_ms": config.ttl.as_millis() as u64,
                        "min_interval_ms": config.min_interval.as_millis() as u64,
                        "max_lag_ms": config.max_lag.map(|l| l.as_millis() as u64),
                        "paused": paused,
                        "leader": leader,
                        "epoch": epoch,
                    });
                    return Ok(format!("{value}\n"));
                }
                let leader = leader.map_or("none (no node holds the lease)".to_string(), |l| {
                    format!("{} (epoch {})", l.node, l.epoch)
                });
                let epoch = epoch.map_or("none yet".to_string(), |e| {
                    format!("{} taken by {}{}", e.epoch, e.node, if e.automatic { " (automatic failover)" } else { "" })
                });
                Ok(format!(
                    "witness: {}\nmode: {}{}, ttl {}, min_interval {}\nleader: {leader}\nepoch: {epoch}\n",
                    config.etcd.join(", "),
                    config.failover.name(),
                    if paused { " (paused: `hotpair witness resume`)" } else { "" },
                    humantime::format_duration(config.ttl),
                    humantime::format_duration(config.min_interval),
                ))
            }
        }
    })?
}
