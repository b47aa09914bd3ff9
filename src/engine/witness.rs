//! The witness's part of the engine: when a primary may take writes under its lease, when a
//! backup may take over, when a fenced node rejoins by itself (docs/witness.md).
//!
//! ## Job
//! The node's witness agent (`crate::witness::agent`) talks to etcd and reports each round
//! as a [`WitnessReport`]; the engine decides and answers with a [`WitnessDecision`] for the
//! agent to carry out (claim the next epoch in etcd, start a rejoin). A claim won becomes a
//! promotion through the same stages as `hotpair failover`'s ([`super::Action::StopReceiving`],
//! [`super::Action::ReplayReceived`]).
//!
//! ## Invariants
//! - A primary with a witness takes writes only while its standing is valid: until the later
//!   of its lease's safe end (renewal sent + ttl shrunk for clock drift, minus a margin) and
//!   its backup's failsafe (the monotonic send time of the last heartbeat the backup echoed,
//!   plus the same). The node checks that deadline again when it acknowledges a write
//!   ([`super::Effect::WriteDeadline`]), so a process resumed after a freeze acknowledges
//!   nothing of the old epoch even before the next tick.
//! - A backup asks to take over only when all hold: the leader key is gone, it has heard
//!   nothing from the primary for at least the ttl *and has been a backup for at least the ttl*
//!   (a node demoted a moment ago by a switchover or a rejoin has lost no primary, however long
//!   ago it last heard one: counting from then would let it claim the next epoch in the gap
//!   between the old holder's release and the new primary's claim), its lag is within `max_lag`, the last
//!   automatic failover is `min_interval` old, the witness shows no epoch beyond ours, and no
//!   pause. Each unmet condition is reported once as `failover-suppressed`, with the reason.
//! - A witness epoch above ours fences a writer before anything else, as a peer's would; so
//!   does our own epoch given to the other node (an admin's promotion racing a claim: the
//!   witness names each epoch's primary, and its compare-and-set is what makes one).
//! - A restarted primary goes on without its peer's word only in a new epoch it first raised
//!   in the witness, after a ttl of its peer's silence.
//! - A backup echoes no heartbeat it receives after it decided to claim ([`Engine::may_echo`]).

use uuid::Uuid;

use super::{Alarm, Effect, Engine, Out, Reply};
use crate::storage::journal::Epoch;
use crate::storage::meta::Role;

/// `[witness]` as the engine needs it (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WitnessPolicy {
    /// `failover = "automatic"`; `false`: observe (say what would be done, do nothing).
    pub automatic: bool,
    pub ttl_ms: u64,
    pub max_lag_ms: Option<u64>,
    pub min_interval_ms: u64,
}

/// The witness's epoch key: the highest epoch handed out, who took it and when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WitnessEpoch {
    pub epoch: Epoch,
    pub node: String,
    /// Wall-clock ms when it was taken (the flapping guard's clock; 0 if unknown).
    #[serde(default)]
    pub at_ms: u64,
    /// Taken by an automatic failover (the flapping guard counts only those).
    #[serde(default)]
    pub automatic: bool,
}

/// One round of the witness agent.
#[derive(Debug, Clone, PartialEq)]
pub enum WitnessReport {
    /// On a node that is (or was) primary: what it holds.
    Holder {
        now_ms: u64,
        reachable: bool,
        epoch_key: Option<WitnessEpoch>,
        /// Engine ms until which the lease is surely still ours (`None`: no lease).
        lease_until_ms: Option<u64>,
        /// Engine ms until which the backup's echo keeps us safe (`None`: no backup session).
        backed_until_ms: Option<u64>,
        /// Engine ms until which this node, as a backup, promised its old primary not to take
        /// over: a ttl after its last session with it ended (0: none).
        promised_until_ms: u64,
    },
    /// On a backup: what it sees of the primary and the witness.
    Watcher {
        now_ms: u64,
        wall_ms: u64,
        reachable: bool,
        leader_present: bool,
        epoch_key: Option<WitnessEpoch>,
        /// How long nothing was heard from the primary.
        primary_silent_ms: u64,
        /// How far behind the primary it was when it last heard from it.
        lag_ms: u64,
    },
    /// The backup won its claim of `epoch` in etcd, holding the leader key until `lease_until_ms`.
    Claimed { op_id: Uuid, epoch: Epoch, lease_until_ms: u64 },
    /// A restarted primary whose peer stays silent raised the witness's epoch key to `epoch`
    /// (ours + 1) under its lease: it starts that epoch alone.
    Raised { op_id: Uuid, epoch: Epoch },
    /// `hotpair witness pause|resume`.
    Paused(bool),
}

/// Why a takeover the lease and the silence allow is held back, if it is.
fn blocker(
    paused: bool,
    epoch_key: Option<&WitnessEpoch>,
    ours: Epoch,
    peer: &str,
    policy: WitnessPolicy,
    lag_ms: u64,
    wall_ms: u64,
) -> Option<String> {
    if paused {
        return Some("automatic decisions are paused (`hotpair witness resume`)".to_string());
    }
    if let Some(key) = epoch_key.filter(|k| k.epoch > ours) {
        return Some(format!(
            "the witness shows epoch {} (taken by {}), beyond ours ({ours}): this node missed a change",
            key.epoch, key.node
        ));
    }
    if let Some(max) = policy.max_lag_ms.filter(|&max| lag_ms > max) {
        return Some(format!("this node was {lag_ms} ms behind {peer} when it lost it, more than max_lag ({max} ms)"));
    }
    let recent =
        epoch_key.filter(|k| k.automatic && k.at_ms > 0 && wall_ms < k.at_ms.saturating_add(policy.min_interval_ms))?;
    Some(format!(
        "the last automatic failover (epoch {}, to {}) was {} s ago, less than min_interval ({} s)",
        recent.epoch,
        recent.node,
        wall_ms.saturating_sub(recent.at_ms) / 1000,
        policy.min_interval_ms / 1000
    ))
}

/// What the agent is to do after a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WitnessDecision {
    Nothing,
    /// Write the leader key and the epoch key for `epoch` in one etcd transaction; if it
    /// wins, report [`WitnessReport::Claimed`].
    Claim {
        epoch: Epoch,
        /// The silence that allowed it: the shorter of the primary's and the time as a backup.
        silent_ms: u64,
    },
    /// Rejoin behind the peer as `hotpair rejoin` does.
    Rejoin,
    /// Raise the witness's epoch key to `epoch` (ours + 1) under our lease, then report
    /// [`WitnessReport::Raised`]: a restarted primary goes on alone, in a new epoch.
    PromoteAlone {
        epoch: Epoch,
    },
}

/// What the engine keeps of the witness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessState {
    pub policy: WitnessPolicy,
    /// Engine ms until which this node may take writes as primary (0: not yet): the later of
    /// `lease_until_ms` and `backed_until_ms`.
    pub valid_until_ms: u64,
    pub lease_until_ms: u64,
    pub backed_until_ms: u64,
    /// Whether, at the last round or tick, the standing was valid.
    pub standing: bool,
    pub paused: bool,
    pub reachable: bool,
    /// The last reason a takeover was held back, so each is said once.
    pub suppressed: Option<String>,
    /// Whether the last lease-less stretch was said (`witness-lost`).
    pub lost_said: bool,
    /// Engine ms of the first round this node watched as a backup since it last became one
    /// (`None` while it is anything else): the silence a takeover needs counts from then at
    /// the earliest.
    pub backup_since_ms: Option<u64>,
    /// From a claim decided until the next round or the promotion's end: the backup echoes
    /// no heartbeat it receives now (see [`Engine::may_echo`]).
    pub claiming: bool,
    /// Engine ms of the first round a restarted primary waited for its peer's word.
    pub alone_since_ms: Option<u64>,
}

impl WitnessState {
    pub fn new(policy: WitnessPolicy) -> WitnessState {
        WitnessState {
            policy,
            valid_until_ms: 0,
            lease_until_ms: 0,
            backed_until_ms: 0,
            standing: false,
            paused: false,
            reachable: false,
            suppressed: None,
            lost_said: false,
            backup_since_ms: None,
            claiming: false,
            alone_since_ms: None,
        }
    }
}

impl Engine {
    /// Gives the engine the pair's `[witness]`; without it the engine decides as it always did.
    pub fn set_witness(&mut self, policy: Option<WitnessPolicy>) {
        self.state.witness = policy.map(WitnessState::new);
    }

    pub(super) fn witness(&mut self, report: WitnessReport, out: &mut Out) {
        if self.state.witness.is_none() {
            return out.push(Effect::Reply(Reply::Witness(WitnessDecision::Nothing)));
        }
        let decision = match report {
            WitnessReport::Holder {
                now_ms,
                reachable,
                epoch_key,
                lease_until_ms,
                backed_until_ms,
                promised_until_ms,
            } => {
                // Our own lease makes us a writer only once our promise to the old primary
                // is kept: an admin's promotion of a backup that echoed its primary a moment
                // ago would otherwise leave that primary's failsafe running beside us (found by
                // the simulation). A claim comes only after a ttl of silence anyway.
                let lease_until_ms = lease_until_ms.filter(|_| now_ms >= promised_until_ms);
                self.holder(now_ms, reachable, epoch_key, lease_until_ms, backed_until_ms, out)
            }
            WitnessReport::Watcher {
                now_ms,
                wall_ms,
                reachable,
                leader_present,
                epoch_key,
                primary_silent_ms,
                lag_ms,
            } => {
                let silent_ms = self.silence(now_ms, primary_silent_ms);
                self.watcher(wall_ms, reachable, leader_present, epoch_key, silent_ms, lag_ms, out)
            }
            WitnessReport::Claimed { op_id, epoch, lease_until_ms } => {
                if let Some(w) = &mut self.state.witness {
                    (w.valid_until_ms, w.lease_until_ms) = (lease_until_ms, lease_until_ms);
                    w.standing = true;
                    w.suppressed = None;
                }
                out.push(Effect::WriteDeadline(Some(lease_until_ms)));
                if self.pending.is_none() && self.state.role == Role::Backup && epoch == self.state.epoch + 1 {
                    // The same promotion as `hotpair failover`'s; its Reply::Promoted ends it.
                    let ours = self.state.epoch;
                    return self.promote(op_id, ours, None, out);
                }
                let reason = format!(
                    "{} claimed epoch {epoch} in the witness but is {} at epoch {}: not promoting",
                    self.id.node,
                    self.state.role.name(),
                    self.state.epoch
                );
                return out.push(Effect::Reply(Reply::Refused(reason)));
            }
            WitnessReport::Raised { op_id, epoch } => {
                let ours = self.state.epoch;
                let alone = self.state.role == Role::Primary && self.state.awaiting_peer;
                if self.pending.is_none() && alone && epoch == ours + 1 {
                    // The same promotion as `failover --to <it> --force`'s.
                    self.pending =
                        Some(super::Pending::PromoteAlone { op_id, epoch: ours, last_lsn: None, by_witness: true });
                    return out.push(Effect::Run(super::Action::FinishInFlight));
                }
                let reason = format!(
                    "{} raised the witness to epoch {epoch} but is {} at epoch {ours}: not promoting",
                    self.id.node,
                    self.state.role.name()
                );
                return out.push(Effect::Reply(Reply::Refused(reason)));
            }
            WitnessReport::Paused(paused) => {
                if let Some(w) = &mut self.state.witness {
                    w.paused = paused;
                }
                WitnessDecision::Nothing
            }
        };
        out.push(Effect::Reply(Reply::Witness(decision)));
    }

    fn holder(
        &mut self,
        now_ms: u64,
        reachable: bool,
        epoch_key: Option<WitnessEpoch>,
        lease_until_ms: Option<u64>,
        backed_until_ms: Option<u64>,
        out: &mut Out,
    ) -> WitnessDecision {
        let ours = self.state.epoch;
        let automatic = self.witness_acts();
        if let Some(w) = &mut self.state.witness {
            w.reachable = reachable;
        }
        // Our own raise of the epoch key, from a round before (a restart may have come between).
        let alone = self.state.role == Role::Primary && self.state.awaiting_peer;
        let raised = alone && epoch_key.as_ref().is_some_and(|k| k.epoch == ours + 1 && k.node == self.id.node);
        if let Some(key) = epoch_key.as_ref().filter(|k| k.epoch > ours && !raised) {
            if self.writer() {
                let reason = format!("the witness shows epoch {} led by {}, ahead of our {ours}", key.epoch, key.node);
                self.fence(reason, out);
            }
            return self.rejoin_decision(key, out, automatic);
        }
        // The witness names each epoch's primary. An admin's promotion (a switchover whose
        // promote came late, a failover) does not go through its compare-and-set, a claim does:
        // if both made a primary of one epoch, the witness's is the one (found by the
        // simulation: a node demoted by a switchover claimed the epoch its target was being
        // promoted to, when the promote came more than a ttl after the demote).
        if let Some(key) = epoch_key.as_ref().filter(|k| k.epoch == ours && k.node != self.id.node) {
            if self.writer() {
                let reason =
                    format!("the witness gives epoch {ours} to {}, not to us: two primaries of one epoch", key.node);
                self.fence(reason, out);
                return self.rejoin_decision(key, out, automatic);
            }
        }
        if self.state.role == Role::Fenced {
            if let Some(key) = epoch_key.as_ref().filter(|k| k.epoch >= ours && k.node != self.id.node) {
                return self.rejoin_decision(key, out, automatic);
            }
            return WitnessDecision::Nothing;
        }
        if !self.writer() {
            return WitnessDecision::Nothing;
        }
        let lease = lease_until_ms.unwrap_or(0);
        let backed = backed_until_ms.unwrap_or(0);
        let valid_until = lease.max(backed);
        let deadline_changed = self.state.witness.as_ref().is_some_and(|w| w.valid_until_ms != valid_until);
        if let Some(w) = &mut self.state.witness {
            (w.valid_until_ms, w.lease_until_ms, w.backed_until_ms) = (valid_until, lease, backed);
        }
        if deadline_changed {
            out.push(Effect::WriteDeadline(Some(valid_until)));
        }
        let shows_us = raised || epoch_key.as_ref().is_some_and(|k| k.epoch == ours);
        let decision = self.go_alone(now_ms, lease, shows_us);
        self.judge_standing(now_ms, out);
        decision
    }

    /// A restarted primary waits for its peer's word; if none comes for a ttl while it holds the
    /// leader key and the witness shows no newer epoch, it may go on without — but in a new
    /// epoch: its peer may hold records it shipped before its crash and lost, and a record it
    /// writes again at such an LSN in the same epoch would be a second truth of one (epoch,
    /// LSN) (found by the simulation). The epoch key is raised first, under its lease, so that
    /// the peer cannot claim the same epoch.
    /// `shows_us`: the witness's epoch key holds our epoch, or the next one raised by us.
    fn go_alone(&mut self, now_ms: u64, lease: u64, shows_us: bool) -> WitnessDecision {
        let ours = self.state.epoch;
        let waiting = self.state.role == Role::Primary && self.state.awaiting_peer && self.pending.is_none();
        let Some(w) = self.state.witness.as_mut().filter(|_| waiting && lease > now_ms) else {
            return WitnessDecision::Nothing;
        };
        let since = *w.alone_since_ms.get_or_insert(now_ms);
        if shows_us && now_ms >= since.saturating_add(w.policy.ttl_ms) && w.policy.automatic && !w.paused {
            return WitnessDecision::PromoteAlone { epoch: ours + 1 };
        }
        WitnessDecision::Nothing
    }

    /// Re-decides whether a writer's standing holds at `now_ms`; at a tick too.
    pub(super) fn judge_standing(&mut self, now_ms: u64, out: &mut Out) {
        let peer = self.id.peer.clone();
        if !self.writer() {
            return;
        }
        let Some(w) = &mut self.state.witness else { return };
        let (leased, backed) = (w.lease_until_ms > now_ms, w.backed_until_ms > now_ms);
        let standing = w.valid_until_ms > now_ms;
        let was = w.standing;
        w.standing = standing;
        let message = if !leased && backed && !w.lost_said {
            w.lost_said = true;
            Some(format!(
                "cannot renew the witness lease (etcd unreachable or the key is gone); {peer} still acknowledges us, so writes go on (failsafe)"
            ))
        } else if !standing && was {
            w.lost_said = true;
            Some(format!(
                "the witness lease ran out and {peer} does not acknowledge us: writes refused until the lease is held again"
            ))
        } else {
            None
        };
        let resolved = leased && w.lost_said;
        if resolved {
            w.lost_said = false;
        }
        // The gate first: a closing gate comes before anything else of the step.
        if was != standing {
            self.commit(out, Vec::new());
        }
        if resolved {
            out.push(Effect::ResolveIncident {
                kind: Alarm::WitnessLost,
                message: "the witness lease is held again".into(),
            });
        }
        if let Some(message) = message {
            out.push(Effect::Incident { kind: Alarm::WitnessLost, message });
        }
    }

    fn rejoin_decision(&mut self, key: &WitnessEpoch, out: &mut Out, automatic: bool) -> WitnessDecision {
        if self.state.role != Role::Fenced || self.pending.is_some() {
            return WitnessDecision::Nothing;
        }
        if automatic {
            return WitnessDecision::Rejoin;
        }
        let why = if self.state.witness.as_ref().is_some_and(|w| w.paused) {
            "automatic decisions are paused (`hotpair witness resume`)"
        } else {
            "observe mode"
        };
        self.say_suppressed(
            format!(
                "{why}: would rejoin {} behind {} (epoch {}); run `hotpair rejoin {}`",
                self.id.node, key.node, key.epoch, self.id.node
            ),
            out,
        );
        WitnessDecision::Nothing
    }

    /// How long this node has lost its primary: what the agent measured, but no longer than
    /// it has been a backup.
    fn silence(&mut self, now_ms: u64, primary_silent_ms: u64) -> u64 {
        let backup = self.state.role == Role::Backup;
        let Some(w) = &mut self.state.witness else { return primary_silent_ms };
        if !backup {
            w.backup_since_ms = None;
            return 0;
        }
        let since = *w.backup_since_ms.get_or_insert(now_ms);
        primary_silent_ms.min(now_ms.saturating_sub(since))
    }

    /// A published role change: whatever the node was, the backup's count starts again.
    pub(super) fn witness_role_changed(&mut self) {
        if let Some(w) = &mut self.state.witness {
            w.backup_since_ms = None;
            w.claiming = false;
        }
    }

    /// Whether a backup may echo a heartbeat it receives now. Its echo promises the primary
    /// "I heard you at your `p0` and take over no sooner than a ttl after" (the failsafe); a
    /// backup that has decided to claim the next epoch can keep that promise only for what it
    /// heard before (found by the simulation: a heartbeat of a link healed during the claim,
    /// echoed, let the old primary go on writing beside the new one).
    pub fn may_echo(&self) -> bool {
        !self.state.witness.as_ref().is_some_and(|w| w.claiming)
    }

    #[allow(clippy::too_many_arguments)]
    fn watcher(
        &mut self,
        wall_ms: u64,
        reachable: bool,
        leader_present: bool,
        epoch_key: Option<WitnessEpoch>,
        silent_ms: u64,
        lag_ms: u64,
        out: &mut Out,
    ) -> WitnessDecision {
        let promoting = self.pending.is_some();
        let Some(w) = &mut self.state.witness else { return WitnessDecision::Nothing };
        w.reachable = reachable;
        // A claim decided at the last round was lost by now, unless its promotion runs.
        w.claiming &= promoting;
        let policy = w.policy;
        let paused = w.paused;
        if self.state.role != Role::Backup || self.pending.is_some() || !reachable {
            return WitnessDecision::Nothing;
        }
        if leader_present || silent_ms < policy.ttl_ms {
            // The primary holds its lease, or we heard it within the ttl: nothing to decide.
            if let Some(w) = &mut self.state.witness {
                w.suppressed = None;
            }
            return WitnessDecision::Nothing;
        }
        let ours = self.state.epoch;
        let next = ours + 1;
        let peer = self.id.peer.clone();
        let reason = blocker(paused, epoch_key.as_ref(), ours, &peer, policy, lag_ms, wall_ms);
        if let Some(reason) = reason {
            self.say_suppressed(
                format!(
                    "{} does not take over from {peer} (lease gone, silent {silent_ms} ms): {reason}",
                    self.id.node
                ),
                out,
            );
            return WitnessDecision::Nothing;
        }
        if !policy.automatic {
            self.say_suppressed(
                format!(
                    "observe mode: would fail over to {} as primary of epoch {next} ({peer}'s lease is gone and it was silent {silent_ms} ms)",
                    self.id.node
                ),
                out,
            );
            return WitnessDecision::Nothing;
        }
        if let Some(w) = &mut self.state.witness {
            w.claiming = true;
        }
        WitnessDecision::Claim { epoch: next, silent_ms }
    }

    /// Reports a held-back decision once per distinct reason (the text after its last `: `,
    /// which carries no changing numbers).
    fn say_suppressed(&mut self, message: String, out: &mut Out) {
        let Some(w) = &mut self.state.witness else { return };
        let kind = if message.starts_with("observe mode") { Alarm::WouldAct } else { Alarm::FailoverSuppressed };
        let stable = message.rsplit(": ").next().unwrap_or_default().to_string();
        if w.suppressed.as_deref() == Some(stable.as_str()) {
            return;
        }
        w.suppressed = Some(stable);
        out.push(Effect::Incident { kind, message });
    }

    /// Whether the witness acts (automatic, not paused).
    fn witness_acts(&self) -> bool {
        self.state.witness.as_ref().is_some_and(|w| w.policy.automatic && !w.paused)
    }

    /// Whether a primary's standing under the witness is in doubt (no witness: never).
    pub(super) fn witness_refuses(&self) -> bool {
        self.state.witness.as_ref().is_some_and(|w| !w.standing)
    }
}
