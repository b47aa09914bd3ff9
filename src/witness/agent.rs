//! The witness agent: one task per node of a pair with `[witness]`, talking to etcd for it.
//!
//! ## Job
//! Every [`ROUND`] it looks at the node's role and does that role's part, then reports to the
//! engine ([`crate::engine::WitnessReport`]) and carries out what the engine decides:
//! - primary (or draining): hold the leader key `/hotpair/<cluster>/leader` (value: node and
//!   epoch) on a lease of `ttl`, renewed every ttl/4; keep the epoch key
//!   `/hotpair/<cluster>/epoch` (no lease: the highest epoch handed out) at our epoch; report
//!   until when the lease is surely ours, and until when the backup's echo covers us;
//! - backup: read both keys, measure how long the primary has been silent, and when the engine
//!   says so, claim the next epoch (one etcd transaction: leader key absent and epoch key as
//!   read → leader key ours on a new lease, epoch key the next epoch) and promote;
//! - fenced: when the witness shows a newer epoch led by the peer, rejoin behind it exactly as
//!   `hotpair rejoin` does (the same orchestration, run from here);
//! - any other role: release a lease it still holds.
//!
//! ## Invariants
//! - Time for the engine is the node's monotonic clock ([`Node::now_ms`]), read *before* the
//!   etcd call whose success it dates: a lease renewed at `sent` is counted from `sent`.
//! - A lease's safe end is `sent + ttl / (1 + DRIFT) - MARGIN`; the failsafe's is the same from
//!   the monotonic send time of the last heartbeat the backup echoed, never a wall-clock age
//!   (docs/witness.md, "Timing").
//! - Silence of the primary is measured from the last round that saw the follower in a session
//!   (later than the last receipt: a takeover can only come later, never sooner).
//! - Nothing here changes a role: the engine decides, [`Node::drive`] carries it out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

use super::etcd::{Compare, EtcdClient, EtcdTls, KeyValue};
use crate::config::{FailoverMode, WitnessConfig};
use crate::engine::{Event, Reply, WitnessDecision, WitnessEpoch, WitnessPolicy, WitnessReport};
use crate::node::incident::{Kind, Severity};
use crate::node::Node;
use crate::storage::meta::Role;
use crate::Error;

/// How often the agent looks (and a backup may notice the lease gone at most this late).
pub const ROUND: Duration = Duration::from_millis(200);
/// The clock drift allowed between any two clocks involved (etcd's, the nodes'): 1%.
pub const DRIFT_PERCENT: u64 = 1;
/// Taken off every safe end: the time between checking a deadline and a reply leaving.
pub const MARGIN_MS: u64 = 200;
/// Between two automatic rejoin attempts.
const REJOIN_RETRY: Duration = Duration::from_secs(3);

/// `[witness]` as the engine takes it.
pub fn policy(config: &WitnessConfig) -> WitnessPolicy {
    WitnessPolicy {
        automatic: config.failover == FailoverMode::Automatic,
        ttl_ms: config.ttl.as_millis() as u64,
        max_lag_ms: config.max_lag.map(|l| l.as_millis() as u64),
        min_interval_ms: config.min_interval.as_millis() as u64,
    }
}

/// The keys of one pair in etcd.
pub fn keys(cluster: Uuid) -> (String, String) {
    (format!("/hotpair/{cluster}/leader"), format!("/hotpair/{cluster}/epoch"))
}

/// The pause key (`hotpair witness pause`): present, no automatic decision.
pub fn paused_key(cluster: Uuid) -> String {
    format!("/hotpair/{cluster}/paused")
}

/// The leader key's value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Leader {
    pub node: String,
    pub epoch: u64,
}

/// The safe end (engine ms, this node's clock) of a lease of `ttl_ms` counted from `sent_ms`.
///
/// Whoever may act when it ends (etcd dropping the key, the backup counting its silence) counts
/// `ttl` on a clock that may run fast by ρ: no sooner than `ttl/(1+ρ)` real time. Our clock
/// may run slow by ρ: `x` of it may take `x/(1-ρ)` real time. So `x = ttl·(1-ρ)/(1+ρ)`, less
/// the margin. (`ttl/(1+ρ)` alone, as this was until 2026-12-07, overran by up to
/// `ttl·ρ/(1+ρ)`: more than the margin past a 20 s ttl, when this clock runs slow and etcd's
/// fast.)
pub fn safe_end(sent_ms: u64, ttl_ms: u64) -> u64 {
    (sent_ms + ttl_ms * (100 - DRIFT_PERCENT) / (100 + DRIFT_PERCENT)).saturating_sub(MARGIN_MS)
}

struct Agent {
    node: Arc<Node>,
    client: EtcdClient,
    ttl: Duration,
    leader_key: Vec<u8>,
    epoch_key: Vec<u8>,
    paused_key: Vec<u8>,
    paused: bool,
    /// The leader key as last read (`status` shows it).
    leader: Option<Leader>,
    /// The lease we hold (id) and its safe end.
    held: Option<(i64, u64)>,
    last_renew: Option<Instant>,
    lag_ms: u64,
    last_rejoin: Option<Instant>,
    /// Why the last round could not read the witness (`status` shows it: a TLS or address
    /// mistake is otherwise only in the log); `None` once a round reads it again.
    last_error: Option<String>,
}

/// Runs the agent until shutdown.
pub async fn run(node: Arc<Node>) -> Result<(), Error> {
    let Some(config) = node.pair().witness.clone() else { return Ok(()) };
    let tls = EtcdTls { ca: config.ca.clone(), cert: config.cert.clone(), key: config.key.clone() };
    // A call must end well within a renewal period, so a hung etcd costs rounds, not the lease.
    let timeout = (config.ttl / 4).min(Duration::from_secs(1));
    let client =
        EtcdClient::new(config.endpoints_for(node.name()), &tls, timeout).map_err(|e| Error::Failed(e.to_string()))?;
    let (leader_key, epoch_key) = keys(node.pair().cluster);
    let mut agent = Agent {
        node: node.clone(),
        client,
        ttl: config.ttl,
        leader_key: leader_key.into_bytes(),
        epoch_key: epoch_key.into_bytes(),
        paused_key: paused_key(node.pair().cluster).into_bytes(),
        paused: false,
        leader: None,
        held: None,
        last_renew: None,
        lag_ms: 0,
        last_rejoin: None,
        last_error: None,
    };
    let mut shutdown = node.shutdown.subscribe();
    let mut ticker = tokio::time::interval(ROUND);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => if *shutdown.borrow() { break },
            _ = ticker.tick() => agent.round(&config).await,
        }
    }
    agent.release().await;
    Ok(())
}

impl Agent {
    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    async fn round(&mut self, config: &WitnessConfig) {
        if let Ok(key) = self.client.get(&self.paused_key).await {
            if key.is_some() != self.paused {
                self.paused = key.is_some();
                tracing::warn!(paused = self.paused, "automatic witness decisions paused or resumed (hotpair witness)");
                self.step(WitnessReport::Paused(self.paused));
            }
        }
        match self.node.role() {
            Role::Primary | Role::Draining => self.hold().await,
            Role::Backup => {
                self.release().await;
                self.watch().await;
            }
            Role::Fenced => {
                self.release().await;
                self.hold().await;
            }
            Role::Rejoining => self.release().await,
        }
        self.publish_status(config);
    }

    /// Gives up a lease this node holds (best effort: left alone it runs out within the ttl).
    async fn release(&mut self) {
        if let Some((lease, _)) = self.held.take() {
            if let Err(err) = self.client.revoke(lease).await {
                tracing::warn!(%err, "releasing the witness lease failed; it runs out by itself");
            }
        }
    }

    async fn read_epoch(&self) -> Result<Option<(WitnessEpoch, i64)>, String> {
        let kv = self.client.get(&self.epoch_key).await.map_err(|e| e.to_string())?;
        kv.map(|kv| {
            serde_json::from_slice::<WitnessEpoch>(&kv.value)
                .map(|e| (e, kv.mod_revision))
                .map_err(|e| format!("the witness's epoch key does not parse: {e}"))
        })
        .transpose()
    }

    fn step(&self, report: WitnessReport) -> WitnessDecision {
        match self.node.step_now(Event::Witness(report)) {
            Ok(Some(Reply::Witness(decision))) => decision,
            Ok(_) => WitnessDecision::Nothing,
            Err(err) => {
                tracing::error!(%err, "the engine refused a witness report");
                WitnessDecision::Nothing
            }
        }
    }

    /// The primary's round (also a fenced node's: it only reads).
    async fn hold(&mut self) {
        let state = self.node.engine_state();
        let ours = state.epoch;
        let fenced = state.role == Role::Fenced;
        let mut reachable = true;
        let epoch = match self.read_epoch().await {
            Ok(epoch) => epoch,
            Err(err) => {
                tracing::debug!(%err, "reading the witness's epoch key");
                self.last_error = Some(err);
                reachable = false;
                None
            }
        };
        if reachable {
            self.last_error = None;
        }
        if !fenced && reachable && epoch.as_ref().is_none_or(|(e, _)| e.epoch <= ours) {
            if self.held.is_some() {
                self.renew().await;
            } else {
                self.acquire(ours, epoch.as_ref()).await;
            }
        }
        if reachable {
            self.leader = self.held.map(|_| Leader { node: self.node.name().to_string(), epoch: ours });
        }
        let backed = self.backed_until();
        let followed = self.node.followed_until_ms.load(std::sync::atomic::Ordering::SeqCst);
        let report = WitnessReport::Holder {
            now_ms: self.node.now_ms(),
            reachable,
            epoch_key: epoch.as_ref().map(|(e, _)| e.clone()),
            lease_until_ms: self.held.map(|(_, until)| until),
            backed_until_ms: backed,
            promised_until_ms: if followed == 0 { 0 } else { followed + self.ttl_ms() },
        };
        match self.step(report) {
            WitnessDecision::Rejoin => self.rejoin().await,
            WitnessDecision::PromoteAlone { epoch: next } => self.go_alone(next, epoch.as_ref()).await,
            WitnessDecision::Nothing | WitnessDecision::Claim { .. } => {}
        }
    }

    /// A restarted primary whose peer stays silent: raise the epoch key to `next` under our
    /// lease (unless a round before did), then start that epoch as `failover --force` would.
    async fn go_alone(&mut self, next: u64, epoch: Option<&(WitnessEpoch, i64)>) {
        let Some((lease, _)) = self.held else { return };
        let me = self.node.name().to_string();
        if !epoch.is_some_and(|(e, _)| e.epoch == next && e.node == me) {
            let Some((_, revision)) = epoch else { return };
            let leader = serde_json::to_vec(&Leader { node: me.clone(), epoch: next }).unwrap_or_default();
            let value = WitnessEpoch { epoch: next, node: me.clone(), at_ms: crate::clock::now_ms(), automatic: false };
            let epoch_value = serde_json::to_vec(&value).unwrap_or_default();
            let puts: [(&[u8], &[u8], i64); 2] =
                [(&self.leader_key, &leader, lease), (&self.epoch_key, &epoch_value, 0)];
            match self.client.put_all_if(&[Compare::AtRevision(&self.epoch_key, *revision)], &puts).await {
                Ok(true) => {
                    tracing::warn!(epoch = next, "the peer is silent: raised the witness's epoch key to go on alone")
                }
                Ok(false) => return tracing::info!(epoch = next, "the witness's epoch key moved; not going on alone"),
                Err(err) => return tracing::warn!(%err, "raising the witness's epoch key"),
            }
        }
        let reply = {
            let _one = self.node.role_change.lock().await;
            self.node.drive(Event::Witness(WitnessReport::Raised { op_id: Uuid::new_v4(), epoch: next })).await
        };
        match reply {
            Ok(Reply::Promoted { promotion, .. }) => {
                tracing::warn!(epoch = promotion.epoch, first_lsn = promotion.first_lsn, "went on alone in a new epoch")
            }
            Ok(other) => tracing::warn!(?other, "raised the witness's epoch key but the promotion was refused"),
            Err(reason) => tracing::error!(%reason, "raised the witness's epoch key but the promotion failed"),
        }
    }

    /// Renews the lease every ttl/4 (each round once a renewal failed).
    async fn renew(&mut self) {
        let Some((lease, _)) = self.held else { return };
        if self.last_renew.is_some_and(|at| at.elapsed() < self.ttl / 4) {
            return;
        }
        let sent = self.node.now_ms();
        match self.client.keep_alive(lease).await {
            Ok(Some(ttl_s)) => {
                let ttl = self.ttl_ms().min(ttl_s as u64 * 1000);
                self.held = Some((lease, safe_end(sent, ttl)));
                self.last_renew = Some(Instant::now());
            }
            Ok(None) => {
                tracing::warn!(
                    lease,
                    "the witness lease is gone (it ran out or was revoked); taking it again if we may"
                );
                self.held = None;
            }
            Err(err) => tracing::warn!(%err, "renewing the witness lease failed; retrying"),
        }
    }

    /// Takes the leader key for our epoch: if absent, and the epoch key still as read.
    async fn acquire(&mut self, ours: u64, epoch: Option<&(WitnessEpoch, i64)>) {
        let me = self.node.name().to_string();
        let sent = self.node.now_ms();
        let lease = match self.client.grant_lease(self.ttl).await {
            Ok(lease) => lease,
            Err(err) => return tracing::warn!(%err, "asking the witness for a lease"),
        };
        let leader = serde_json::to_vec(&Leader { node: me.clone(), epoch: ours }).unwrap_or_default();
        let value = match epoch {
            Some((e, _)) if e.epoch == ours => e.clone(),
            _ => WitnessEpoch { epoch: ours, node: me.clone(), at_ms: crate::clock::now_ms(), automatic: false },
        };
        let epoch_value = serde_json::to_vec(&value).unwrap_or_default();
        let condition = match epoch {
            Some((_, revision)) => Compare::AtRevision(&self.epoch_key, *revision),
            None => Compare::Absent(&self.epoch_key),
        };
        let puts: [(&[u8], &[u8], i64); 2] =
            [(&self.leader_key, &leader, lease.id), (&self.epoch_key, &epoch_value, 0)];
        let won = self.client.put_all_if(&[Compare::Absent(&self.leader_key), condition], &puts).await;
        let ttl = self.ttl_ms().min(lease.ttl_seconds as u64 * 1000);
        match won {
            Ok(true) => {
                tracing::info!(epoch = ours, "holding the witness's leader key");
                self.held = Some((lease.id, safe_end(sent, ttl)));
                self.last_renew = Some(Instant::now());
                return;
            }
            Ok(false) => {}
            Err(err) => tracing::warn!(%err, "taking the witness's leader key"),
        }
        // Lost, or unknown: the key may hold our own value (a timed-out first attempt that
        // landed, or the lease of this node before its restart).
        let _ = self.client.revoke(lease.id).await;
        let current = self.client.get(&self.leader_key).await.ok().flatten();
        if let Some(kv) = current {
            self.adopt_or_push(kv, ours, epoch).await;
        }
    }

    /// The leader key is held: adopt it if it is ours; if it holds an older epoch (we were
    /// promoted by the admin while the old primary still holds it), raise the epoch key so the
    /// old holder fences itself and lets go.
    async fn adopt_or_push(&mut self, kv: KeyValue, ours: u64, epoch: Option<&(WitnessEpoch, i64)>) {
        let Ok(leader) = serde_json::from_slice::<Leader>(&kv.value) else { return };
        if leader.node == self.node.name() && leader.epoch == ours && kv.lease != 0 {
            let sent = self.node.now_ms();
            if let Ok(Some(ttl_s)) = self.client.keep_alive(kv.lease).await {
                let ttl = self.ttl_ms().min(ttl_s as u64 * 1000);
                self.held = Some((kv.lease, safe_end(sent, ttl)));
                self.last_renew = Some(Instant::now());
            }
            return;
        }
        if leader.epoch < ours {
            if let Some((e, revision)) = epoch.filter(|(e, _)| e.epoch < ours) {
                let value = WitnessEpoch {
                    epoch: ours,
                    node: self.node.name().to_string(),
                    at_ms: crate::clock::now_ms(),
                    automatic: false,
                };
                let bytes = serde_json::to_vec(&value).unwrap_or_default();
                let _ = self
                    .client
                    .put_all_if(&[Compare::AtRevision(&self.epoch_key, *revision)], &[(&self.epoch_key, &bytes, 0)])
                    .await;
                tracing::warn!(
                    holder = %leader.node,
                    their = e.epoch,
                    ours,
                    "the witness's leader key is held for an older epoch: raised the epoch key so its holder fences itself"
                );
            }
        }
    }

    /// The failsafe: until when the backup's last echo keeps us safe (`None` without a session).
    fn backed_until(&self) -> Option<u64> {
        let peer = self.node.peer.borrow().clone();
        let echoed_sent_at = peer.echoed_sent_at.filter(|_| peer.connected)?;
        // Monotonic throughout (no wall clock): `now` read first, so the send is dated no later
        // than it was.
        let now = self.node.now_ms();
        let sent = now.saturating_sub(echoed_sent_at.elapsed().as_millis() as u64);
        Some(safe_end(sent, self.ttl_ms()))
    }

    /// The backup's round.
    async fn watch(&mut self) {
        let following = *self.node.following.borrow();
        if following {
            let peer = self.node.peer.borrow().clone();
            let position = self.node.store.position();
            let lag_records = peer.peer_last_lsn.saturating_sub(position.applied_lsn);
            self.lag_ms =
                crate::node::status::lag_ms(&self.node, Role::Backup, &peer, lag_records, crate::clock::now_ms());
        }
        let leader = self.client.get(&self.leader_key).await;
        let epoch = self.read_epoch().await;
        let reachable = leader.is_ok() && epoch.is_ok();
        self.last_error = match (&leader, &epoch) {
            (Err(err), _) => Some(err.to_string()),
            (_, Err(err)) => Some(err.clone()),
            _ => None,
        };
        let leader_present = leader.as_ref().map_or(true, |l| l.is_some());
        if let Ok(kv) = &leader {
            self.leader = kv.as_ref().and_then(|kv| serde_json::from_slice(&kv.value).ok());
        }
        let epoch = epoch.ok().flatten();
        let report = WitnessReport::Watcher {
            now_ms: self.node.now_ms(),
            wall_ms: crate::clock::now_ms(),
            reachable,
            leader_present,
            epoch_key: epoch.as_ref().map(|(e, _)| e.clone()),
            primary_silent_ms: self.silence(following),
            lag_ms: self.lag_ms,
        };
        if let WitnessDecision::Claim { epoch: next, silent_ms } = self.step(report) {
            self.claim(next, epoch.as_ref(), Duration::from_millis(silent_ms)).await;
        }
    }

    /// How long this node has heard nothing from a primary: none while it follows one, else
    /// since its last session ended (or the node started). The engine counts it from when
    /// the node became a backup at the earliest.
    fn silence(&self, following: bool) -> u64 {
        if following {
            return 0;
        }
        let followed = self.node.followed_until_ms.load(std::sync::atomic::Ordering::SeqCst);
        self.node.now_ms().saturating_sub(followed)
    }

    /// Claims epoch `next` in etcd and, if won, promotes as `hotpair failover` does.
    async fn claim(&mut self, next: u64, epoch: Option<&(WitnessEpoch, i64)>, silent: Duration) {
        let me = self.node.name().to_string();
        let sent = self.node.now_ms();
        let lease = match self.client.grant_lease(self.ttl).await {
            Ok(lease) => lease,
            Err(err) => return tracing::warn!(%err, "asking the witness for a lease to take over"),
        };
        let leader = serde_json::to_vec(&Leader { node: me.clone(), epoch: next }).unwrap_or_default();
        let value = WitnessEpoch { epoch: next, node: me.clone(), at_ms: crate::clock::now_ms(), automatic: true };
        let epoch_value = serde_json::to_vec(&value).unwrap_or_default();
        let condition = match epoch {
            Some((_, revision)) => Compare::AtRevision(&self.epoch_key, *revision),
            None => Compare::Absent(&self.epoch_key),
        };
        let puts: [(&[u8], &[u8], i64); 2] =
            [(&self.leader_key, &leader, lease.id), (&self.epoch_key, &epoch_value, 0)];
        let won = match self.client.put_all_if(&[Compare::Absent(&self.leader_key), condition], &puts).await {
            Ok(true) => true,
            // A timed-out attempt may have landed: the key then holds our own value.
            Ok(false) | Err(_) => self
                .client
                .get(&self.leader_key)
                .await
                .ok()
                .flatten()
                .is_some_and(|kv| kv.value == leader && kv.lease == lease.id),
        };
        if !won {
            let _ = self.client.revoke(lease.id).await;
            return tracing::info!(epoch = next, "lost the witness claim (the primary is back, or etcd moved)");
        }
        let ttl = self.ttl_ms().min(lease.ttl_seconds as u64 * 1000);
        let until = safe_end(sent, ttl);
        self.held = Some((lease.id, until));
        self.last_renew = Some(Instant::now());
        let peer = self.node.peer_config.name.clone();
        let op_id = Uuid::new_v4();
        let reply = {
            let _one = self.node.role_change.lock().await;
            self.node.drive(Event::Witness(WitnessReport::Claimed { op_id, epoch: next, lease_until_ms: until })).await
        };
        match reply {
            Ok(Reply::Promoted { promotion, .. }) => {
                let message = format!(
                    "{me} took over from {peer} as primary of epoch {} from LSN {} ({peer}'s lease gone, silent {} ms); last primary LSN heard {}, about {} transaction(s) never received; {peer} rejoins by itself when it is back",
                    promotion.epoch,
                    promotion.first_lsn,
                    silent.as_millis(),
                    promotion.last_heard_lsn,
                    promotion.not_received()
                );
                self.node.incidents.raise(Kind::AutoFailover, Severity::Critical, message);
            }
            Ok(other) => {
                tracing::error!(?other, "claimed the witness but the promotion was refused; releasing the lease");
                self.release().await;
            }
            Err(reason) => {
                tracing::error!(%reason, "claimed the witness but the promotion failed; releasing the lease");
                self.release().await;
            }
        }
    }

    /// Rejoins behind the peer as `hotpair rejoin` does (at most every [`REJOIN_RETRY`]).
    async fn rejoin(&mut self) {
        if self.last_rejoin.is_some_and(|at| at.elapsed() < REJOIN_RETRY) {
            return;
        }
        self.last_rejoin = Some(Instant::now());
        let name = self.node.name().to_string();
        let peer = self.node.peer_config.name.clone();
        tracing::warn!("fenced behind a newer epoch: rejoining behind {peer} by itself (hotpair rejoin {name})");
        // The orchestration's future is not `Send`: it runs on a thread and runtime of its own.
        let (pair, node) = (self.node.pair().clone(), name.clone());
        let (done, code) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new().name("auto-rejoin".into()).spawn(move || {
            let code = tokio::runtime::Builder::new_current_thread().enable_all().build().map_or(1, |runtime| {
                runtime.block_on(crate::orchestrator::commands::rejoin(&pair, &node, false, true))
            });
            let _ = done.send(code);
        });
        let code = if spawned.is_ok() { code.await.unwrap_or(1) } else { 1 };
        if code == 0 {
            let message = format!("{name} rejoined behind {peer} by itself after a newer epoch was seen in the witness (orphans, if any, are in its orphans file)");
            self.node.incidents.raise(Kind::AutoRejoin, Severity::Warning, message.clone());
            self.node.incidents.resolve(Kind::AutoRejoin, message);
        } else {
            tracing::warn!(code, "the automatic rejoin did not finish; retrying in {}s", REJOIN_RETRY.as_secs());
        }
    }

    fn publish_status(&self, config: &WitnessConfig) {
        let state = self.node.engine_state();
        let witness = state.witness.as_ref();
        let now = self.node.now_ms();
        let status = json!({
            "mode": config.failover.name(),
            "etcd": config.endpoints_for(self.node.name()),
            "ttl_ms": self.ttl_ms(),
            "reachable": witness.is_some_and(|w| w.reachable),
            "error": self.last_error,
            "paused": witness.is_some_and(|w| w.paused),
            "holds_lease": self.held.is_some(),
            "leader": self.leader,
            "lease_left_ms": self.held.map(|(_, until)| until.saturating_sub(now)),
            "standing_left_ms": witness.filter(|_| matches!(state.role, Role::Primary | Role::Draining)).map(|w| w.valid_until_ms.saturating_sub(now)),
            "suppressed": witness.and_then(|w| w.suppressed.clone()),
        });
        *self.node.witness_seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_safe_end_comes_before_anyone_else_may_act_whatever_the_drift() {
        let rho = DRIFT_PERCENT as f64 / 100.0;
        for ttl_s in 2..=60 {
            let ttl = ttl_s * 1000;
            // Our clock slow: the real time until our end. Theirs fast: the earliest real
            // time at which etcd drops the key or the backup's ttl of silence is over.
            let ours = safe_end(0, ttl) as f64 / (1.0 - rho);
            let theirs = ttl as f64 / (1.0 + rho);
            assert!(ours + MARGIN_MS as f64 / (1.0 - rho) <= theirs + 1.0, "ttl {ttl_s} s: {ours} ms vs {theirs} ms");
        }
    }
}
