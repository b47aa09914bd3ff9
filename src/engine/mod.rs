//! The pair engine: every decision that changes a node's role, as a pure state machine.
//!
//! ## Job
//! [`Engine::step`] takes one [`Event`] — a restart with what the disk holds, an orchestration
//! primitive, a peer's hello, a probe's answer, a welcome, the end of a long action, a tick of
//! the clock — and returns the [`Effect`]s the node must carry out, in order: save the
//! metadata, publish the role, open or close the write gate, start or stop the pipeline and the
//! applier, replay, cut, set aside orphans, answer. The node ([`crate::node`]) applies them and
//! nothing else changes a role; the simulation (`tests/simulation.rs`) applies them to a
//! simulated disk and network; the transcripts (`tests/transcripts/`) print them.
//!
//! ## Invariants
//! - No I/O, no clock, no threads: time comes in with the event (`now_ms`), observations of
//!   the journals come in with the event or as an [`Outcome`] (a test checks the imports).
//! - One writer per epoch: the gate is open only in role `primary`, never while a restarted
//!   primary waits for its peer's word, and a higher epoch heard from anyone closes it before
//!   anything else happens ([`Effect::Writes`] first).
//! - Persist before announce: a role, epoch or history is in an [`Effect::Save`] before any
//!   effect that acts on it.
//! - Epochs never go back and the history only grows: the engine adopts a history only from a
//!   primary of its epoch or a higher one.
//! - A step's effects end with at most one [`Effect::Run`]; its [`Outcome`] is the next event.
//!   While it runs, other events (fences, ticks, hellos) are decided against the state as it is
//!   then, and the outcome is judged against the state as it is when it comes back.
//!
//! ## Room for the witness
//! Automatic failover (a lease from an etcd witness) adds events — lease granted, lost and
//! expired, a witness epoch seen — and effects — ask for the lease, renew it, publish an epoch.
//! They are decided here like a primitive: a lost lease closes the gate as a fence does, a
//! granted lease and a witness epoch become a promotion through the same stages
//! ([`Action::StopReceiving`], [`Action::ReplayReceived`]).

pub mod effect;
pub mod event;
pub mod history;
pub mod render;
pub mod role;
pub mod witness;

use uuid::Uuid;

pub use effect::{Action, Alarm, Effect, Gate, HelloAnswer, RejoinPlan, ReplayBound, Reply, WriteRefusal};
pub use event::{
    Event, Hello, Outcome, Persisted, Primitive, Promotion, Recovered, RejoinRequest, Rejoined, TailMatch,
};
pub use history::PrimaryView;
pub use witness::{WitnessDecision, WitnessEpoch, WitnessPolicy, WitnessReport, WitnessState};

use crate::storage::journal::{Epoch, HistoryEntry, Lsn};
use crate::storage::meta::Role;
use history::{divergence_point, standing, welcome_plan, BackupTail, Plan};
use role::{transition, Event as Change};

/// The version of the node-to-node protocol a hello announces; a peer speaking another is
/// refused with both numbers (run the same hotpair build on both nodes).
pub const PROTOCOL_VERSION: u32 = 2;

/// Who this engine decides for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub node: String,
    pub peer: String,
    pub cluster: Uuid,
}

/// A switchover's drain: writes refused until `expires_at_ms`, then taken again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainLease {
    pub op_id: Uuid,
    pub expires_at_ms: u64,
}

/// Everything the engine knows.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub role: Role,
    pub epoch: Epoch,
    pub history: Vec<HistoryEntry>,
    pub promotion: Option<Promotion>,
    pub rejoined: Option<Rejoined>,
    pub drain: Option<DrainLease>,
    /// A restarted primary waits for its peer's word before it takes writes.
    pub awaiting_peer: bool,
    pub fenced_reason: Option<String>,
    /// The gate as last set.
    pub gate: Gate,
    /// Raised at every published role change: a welcome to a hello sent before is void.
    pub generation: u64,
    /// Whether a replication session with the peer is up.
    pub peer_connected: bool,
    /// `[witness]`: what the engine keeps of it; `None` without one.
    pub witness: Option<WitnessState>,
}

/// A decision waiting for the outcome of its long action.
#[derive(Debug, Clone, PartialEq)]
enum Pending {
    Drain {
        op_id: Uuid,
        lease_ms: u64,
    },
    Demote {
        op_id: Uuid,
    },
    Promote {
        op_id: Uuid,
        epoch: Epoch,
        expect_lsn: Option<Lsn>,
        stopped: Option<(Lsn, Lsn)>,
    },
    /// A restarted primary promoted past its lost peer: its last LSN once known, then its
    /// pipeline stopped, then a new epoch.
    PromoteAlone {
        op_id: Uuid,
        epoch: Epoch,
        last_lsn: Option<Lsn>,
        /// Asked by the witness agent (its peer silent for a ttl), not by `failover --force`.
        by_witness: bool,
    },
    Rejoin {
        request: RejoinRequest,
        primary_last: Lsn,
        stage: RejoinStage,
    },
    Follow {
        epoch: Epoch,
        history: Vec<HistoryEntry>,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum RejoinStage {
    Counting { divergence: Lsn },
    Stopping { plan: RejoinPlan },
    Resynchronizing { plan: RejoinPlan },
}

/// One node's decisions.
#[derive(Debug, Clone)]
pub struct Engine {
    id: Identity,
    state: State,
    pending: Option<Pending>,
    started: bool,
    /// What the last [`Effect::Save`] wrote, and the last [`Effect::Publish`].
    saved: Option<Persisted>,
    published: Option<Role>,
}

/// Effects as a step collects them.
type Out = Vec<Effect>;

impl Engine {
    /// An engine that knows nothing yet: its first event is [`Event::Restarted`].
    pub fn new(id: Identity) -> Engine {
        let state = State {
            role: Role::Backup,
            epoch: 0,
            history: Vec::new(),
            promotion: None,
            rejoined: None,
            drain: None,
            awaiting_peer: false,
            fenced_reason: None,
            gate: Gate::Closed,
            generation: 0,
            peer_connected: false,
            witness: None,
        };
        Engine { id, state, pending: None, started: false, saved: None, published: None }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn identity(&self) -> &Identity {
        &self.id
    }

    /// Whether a long action is under way.
    pub fn busy(&self) -> bool {
        self.pending.is_some()
    }

    /// The durable part of the state, as [`Effect::Save`] carries it.
    pub fn persisted(&self) -> Persisted {
        Persisted {
            role: self.state.role,
            epoch: self.state.epoch,
            history: self.state.history.clone(),
            promotion: self.state.promotion.clone(),
            rejoined: self.state.rejoined.clone(),
        }
    }

    /// Decides `event`; the node applies the effects in order.
    pub fn step(&mut self, event: Event) -> Vec<Effect> {
        let mut out = Vec::new();
        if !self.started && !matches!(event, Event::Restarted(_)) {
            out.push(Effect::Reply(Reply::Refused(format!("{} has not started yet", self.id.node))));
            return out;
        }
        match event {
            Event::Restarted(recovered) => self.restarted(recovered, &mut out),
            Event::Admin(primitive) => self.admin(primitive, &mut out),
            Event::Done(outcome) => self.done(outcome, &mut out),
            Event::Hello(hello) => self.hello(hello, &mut out),
            Event::ProbeAnswered { epoch, leader, last_lsn, our_last } => {
                self.probe_answered(epoch, leader, last_lsn, our_last, &mut out)
            }
            Event::Welcomed { epoch, history, cut_after, generation } => {
                self.welcomed(epoch, history, cut_after, generation, &mut out)
            }
            Event::PeerAcked => self.peer_confirmed(&mut out),
            Event::PeerLost => self.state.peer_connected = false,
            Event::PeerBack => self.state.peer_connected = true,
            Event::Tick { now_ms } => self.tick(now_ms, &mut out),
            Event::Witness(report) => self.witness(report, &mut out),
        }
        debug_assert!(
            out.iter().rev().skip(1).all(|e| !matches!(e, Effect::Run(_))),
            "a Run must be the last effect of a step: {out:?}"
        );
        out
    }

    // -----------------------------------------------------------------------------------------
    // Restart.

    fn restarted(&mut self, recovered: Recovered, out: &mut Out) {
        let Recovered { persisted, last_lsn, met_peer } = recovered;
        self.started = true;
        self.pending = None;
        self.state.role = persisted.role;
        self.state.epoch = persisted.epoch;
        self.state.history = persisted.history.clone();
        self.state.promotion = persisted.promotion.clone();
        self.state.rejoined = persisted.rejoined.clone();
        self.state.drain = None;
        self.state.gate = Gate::Closed;
        self.state.peer_connected = false;
        if let Some(w) = &mut self.state.witness {
            // A restart holds no lease: the agent gets one (or finds a newer epoch) first.
            *w = WitnessState { paused: w.paused, ..WitnessState::new(w.policy) };
        }
        self.saved = Some(persisted);
        self.published = None;
        if self.state.role == Role::Draining {
            // The drain lease died with the process: the switchover did not complete.
            out.push(Effect::Note("restarted while draining: the drain lease is over, resuming as primary".into()));
            self.state.role = Role::Primary;
            self.save(out);
        }
        let role = self.state.role;
        let bound = if role == Role::Primary { ReplayBound::Everything } else { ReplayBound::Settled };
        out.push(Effect::Replay(bound));
        match role {
            Role::Primary => {
                // A brand-new pair starts the history; nobody can be ahead. Empty journals alone
                // do not make one: a primary that crashed before its first fsync has them too,
                // and its peer may have been promoted since (the simulation found that one).
                let fresh = last_lsn == 0 && !met_peer;
                self.state.awaiting_peer = !fresh;
                out.push(Effect::StartPipeline {
                    first_lsn: last_lsn + 1,
                    epoch: self.state.epoch,
                    epoch_start: fresh,
                });
            }
            Role::Backup => out.push(Effect::StartApplier),
            _ => out.push(Effect::Note(format!(
                "starts {}: takes no writes and follows nobody until it is rejoined",
                role.name()
            ))),
        }
        self.commit(out, Vec::new());
    }

    // -----------------------------------------------------------------------------------------
    // Orchestration primitives.

    fn admin(&mut self, primitive: Primitive, out: &mut Out) {
        if let Some(pending) = &self.pending {
            // The node runs one primitive at a time; a welcome being prepared also counts.
            let busy = format!("{} is busy ({}); try again", self.id.node, pending_name(pending));
            return refuse(out, busy);
        }
        match primitive {
            Primitive::Drain { op_id, epoch, lease_ms, now_ms } => self.drain(op_id, epoch, lease_ms, now_ms, out),
            Primitive::Resume { op_id: _, epoch } => self.resume(epoch, out),
            Primitive::Demote { op_id, epoch } => self.demote(op_id, epoch, out),
            Primitive::Promote { op_id, epoch, expect_lsn } => self.promote(op_id, epoch, expect_lsn, out),
            Primitive::Fence { epoch, primary } => {
                let ours = self.state.epoch;
                if epoch > ours && self.writer() {
                    self.fence(format!("the admin reports epoch {epoch} led by {primary}, ahead of our {ours}"), out);
                }
                out.push(Effect::Reply(Reply::Fenced { role: self.state.role, epoch: self.state.epoch }));
            }
            Primitive::Rejoin(request) => self.rejoin(request, out),
        }
    }

    fn check_epoch(&self, epoch: Epoch) -> Result<(), String> {
        let ours = self.state.epoch;
        if ours == epoch {
            return Ok(());
        }
        Err(format!(
            "{} is at epoch {ours}, but the orchestrator expected epoch {epoch}: the pair changed since it looked; run `hotpair status`",
            self.id.node
        ))
    }

    fn next_role(&self, change: Change) -> Result<Role, String> {
        transition(self.state.role, change).map_err(|e| format!("{}: {e}", self.id.node))
    }

    fn drain(&mut self, op_id: Uuid, epoch: Epoch, lease_ms: u64, now_ms: u64, out: &mut Out) {
        let next = match self.check_epoch(epoch).and_then(|()| self.next_role(Change::Drain)) {
            Ok(next) => next,
            Err(reason) => return refuse(out, reason),
        };
        self.state.role = next;
        // A second drain (a re-run of the same switchover) renews the lease.
        self.state.drain = Some(DrainLease { op_id, expires_at_ms: now_ms.saturating_add(lease_ms) });
        self.commit(out, Vec::new());
        self.pending = Some(Pending::Drain { op_id, lease_ms });
        out.push(Effect::Run(Action::FinishInFlight));
    }

    fn resume(&mut self, epoch: Epoch, out: &mut Out) {
        let next = match self.check_epoch(epoch).and_then(|()| self.next_role(Change::Resume)) {
            Ok(next) => next,
            Err(reason) => return refuse(out, reason),
        };
        let was_draining = self.state.role == Role::Draining;
        self.state.role = next;
        self.state.drain = None;
        self.commit(out, Vec::new());
        out.push(Effect::Reply(Reply::Resumed { was_draining }));
    }

    fn demote(&mut self, op_id: Uuid, epoch: Epoch, out: &mut Out) {
        if let Err(reason) = self.check_epoch(epoch) {
            return refuse(out, reason);
        }
        if self.state.role == Role::Backup {
            return out.push(Effect::Reply(Reply::Demoted { already: true }));
        }
        if let Err(reason) = self.next_role(Change::Demote) {
            return refuse(out, reason);
        }
        // The lease does not run out under a demote: a pipeline being stopped takes no writes.
        self.pending = Some(Pending::Demote { op_id });
        out.push(Effect::Run(Action::StopPipeline));
    }

    fn promote(&mut self, op_id: Uuid, epoch: Epoch, expect_lsn: Option<Lsn>, out: &mut Out) {
        let new_epoch = epoch + 1;
        let ours = self.state.history.last().is_some_and(|h| h.epoch == new_epoch && h.primary == self.id.node);
        if self.state.epoch == new_epoch && ours && self.state.role == Role::Primary {
            let first_lsn = self.state.history.last().map_or(1, |h| h.first_lsn);
            let promotion = self.state.promotion.clone().filter(|p| p.epoch == new_epoch).unwrap_or(Promotion {
                op_id,
                epoch: new_epoch,
                first_lsn,
                last_received_lsn: first_lsn - 1,
                last_heard_lsn: first_lsn - 1,
            });
            return out.push(Effect::Reply(Reply::Promoted { promotion, already: true }));
        }
        if let Err(reason) = self.check_epoch(epoch) {
            return refuse(out, reason);
        }
        if self.state.role == Role::Primary && self.state.awaiting_peer {
            // `failover --to <it> --force`: its peer, the only one who could say it was not
            // promoted past us, is gone for good (the admin's word). Sent only with --force.
            self.pending = Some(Pending::PromoteAlone { op_id, epoch, last_lsn: None, by_witness: false });
            return out.push(Effect::Run(Action::FinishInFlight));
        }
        if self.state.role != Role::Backup {
            let reason = format!("{} is {}; only a backup can be promoted", self.id.node, self.state.role.name());
            return refuse(out, reason);
        }
        self.pending = Some(Pending::Promote { op_id, epoch, expect_lsn, stopped: None });
        out.push(Effect::Run(Action::StopReceiving));
    }

    fn rejoin(&mut self, request: RejoinRequest, out: &mut Out) {
        if request.primary.epoch < self.state.epoch {
            let reason = format!(
                "{} is at epoch {}, ahead of the primary's {}: it cannot rejoin behind an older primary",
                self.id.node, self.state.epoch, request.primary.epoch
            );
            return refuse(out, reason);
        }
        let (divergence, primary_last) = divergence_point(&request.primary, &self.state.history, request.our_last);
        self.pending = Some(Pending::Rejoin { request, primary_last, stage: RejoinStage::Counting { divergence } });
        out.push(Effect::Run(Action::CountOrphans { divergence }));
    }

    // -----------------------------------------------------------------------------------------
    // Outcomes of long actions.

    fn done(&mut self, outcome: Outcome, out: &mut Out) {
        let Some(pending) = self.pending.take() else {
            return out.push(Effect::Note(format!("an outcome nobody waits for: {outcome:?}")));
        };
        match pending {
            Pending::Drain { op_id, lease_ms } => self.drained(op_id, lease_ms, outcome, out),
            Pending::Demote { op_id } => self.demoted(op_id, outcome, out),
            Pending::Promote { op_id, epoch, expect_lsn, stopped } => {
                self.promoting(op_id, epoch, expect_lsn, stopped, outcome, out)
            }
            Pending::PromoteAlone { op_id, epoch, last_lsn, by_witness } => {
                self.promoting_alone(op_id, epoch, last_lsn, by_witness, outcome, out)
            }
            Pending::Rejoin { request, primary_last, stage } => {
                self.rejoining(request, primary_last, stage, outcome, out)
            }
            Pending::Follow { epoch, history } => self.follow_prepared(epoch, history, outcome, out),
        }
    }

    fn drained(&mut self, op_id: Uuid, lease_ms: u64, outcome: Outcome, out: &mut Out) {
        let still = self.state.role == Role::Draining && self.state.drain.is_some_and(|d| d.op_id == op_id);
        match outcome {
            Outcome::InFlightFinished { lsn, digest } if still => {
                out.push(Effect::Reply(Reply::Drained { lsn, digest, lease_ms }))
            }
            Outcome::InFlightFinished { .. } => refuse(
                out,
                format!(
                    "{} did not stay drained: it is {} now (its lease ran out, or it was fenced)",
                    self.id.node,
                    self.state.role.name()
                ),
            ),
            Outcome::Failed { reason, .. } => refuse(out, format!("{}: drain failed: {reason}", self.id.node)),
            other => self.unexpected(other, out),
        }
    }

    fn demoted(&mut self, op_id: Uuid, outcome: Outcome, out: &mut Out) {
        match outcome {
            Outcome::PipelineStopped if self.state.role == Role::Draining => {
                self.state.role = Role::Backup;
                self.state.drain = None;
                self.state.awaiting_peer = false;
                let between = vec![Effect::StartApplier, Effect::ForgetPeerAcks, Effect::ClearDiverged];
                self.commit(out, between);
                out.push(Effect::Note(format!("demoted (op {op_id}): this node is now the backup")));
                out.push(Effect::Reply(Reply::Demoted { already: false }));
            }
            Outcome::PipelineStopped => {
                refuse(out, format!("{} became {} while it was being demoted", self.id.node, self.state.role.name()))
            }
            Outcome::Failed { reason, .. } => {
                // Still draining: its lease (ticking again) resumes it if nobody does.
                refuse(out, format!("{}: demote failed: {reason}", self.id.node))
            }
            other => self.unexpected(other, out),
        }
    }

    fn promoting(
        &mut self,
        op_id: Uuid,
        epoch: Epoch,
        expect_lsn: Option<Lsn>,
        stopped: Option<(Lsn, Lsn)>,
        outcome: Outcome,
        out: &mut Out,
    ) {
        match (outcome, stopped) {
            (Outcome::ReceivingStopped { last_lsn, heard_primary_lsn }, None) => {
                // Checked before anything unconfirmed is applied: a promotion refused here
                // leaves the node the backup it was, its store holding only what was confirmed.
                if let Some(expect) = expect_lsn.filter(|&expect| last_lsn < expect) {
                    out.extend([Effect::StartApplier, Effect::ReleaseFollower]);
                    let reason =
                        format!("{} has only LSN {last_lsn}, but the drained primary ended at {expect}", self.id.node);
                    return refuse(out, reason);
                }
                if self.state.role != Role::Backup || self.state.epoch != epoch {
                    out.extend([Effect::StartApplier, Effect::ReleaseFollower]);
                    let reason = format!("{} changed while it was being promoted; run `hotpair status`", self.id.node);
                    return refuse(out, reason);
                }
                let stopped = Some((last_lsn, heard_primary_lsn));
                self.pending = Some(Pending::Promote { op_id, epoch, expect_lsn, stopped });
                out.push(Effect::Run(Action::ReplayReceived));
            }
            (Outcome::Replayed { last_lsn, applied_lsn }, Some((received, heard))) => {
                if applied_lsn != last_lsn {
                    let reason = format!("{} applied LSN {applied_lsn} but holds {last_lsn}", self.id.node);
                    return self.promotion_failed(reason, out);
                }
                let new_epoch = epoch + 1;
                let first_lsn = last_lsn + 1;
                let promotion = Promotion {
                    op_id,
                    epoch: new_epoch,
                    first_lsn,
                    last_received_lsn: received.max(last_lsn),
                    last_heard_lsn: heard,
                };
                self.state.role = Role::Primary;
                self.state.epoch = new_epoch;
                self.state.history.push(HistoryEntry { epoch: new_epoch, first_lsn, primary: self.id.node.clone() });
                self.state.promotion = Some(promotion.clone());
                self.state.awaiting_peer = false;
                self.state.drain = None;
                let between = vec![
                    Effect::StartPipeline { first_lsn, epoch: new_epoch, epoch_start: true },
                    Effect::ResumeReplication,
                    Effect::ForgetPeerAcks,
                    Effect::ClearDiverged,
                ];
                self.commit(out, between);
                out.push(Effect::ReleaseFollower);
                out.push(Effect::Reply(Reply::Promoted { promotion, already: false }));
            }
            (Outcome::Failed { reason, applied_unconfirmed: false }, _) => {
                // Nothing was persisted: back to following.
                out.extend([Effect::StartApplier, Effect::ReleaseFollower]);
                refuse(out, format!("promotion of {} failed: {reason}", self.id.node));
            }
            (Outcome::Failed { reason, applied_unconfirmed: true }, _) => self.promotion_failed(reason, out),
            (other, _) => self.unexpected(other, out),
        }
    }

    /// A restarted primary taking a new epoch without its peer: its journal stays as it is
    /// (nothing to replay, nothing unconfirmed to apply), the new epoch starts after its last
    /// LSN. Whatever the lost peer held past that (records shipped before our fsync and lost
    /// in the crash, none acknowledged to a client) diverges: its rejoin sets them aside.
    fn promoting_alone(
        &mut self,
        op_id: Uuid,
        epoch: Epoch,
        last_lsn: Option<Lsn>,
        by_witness: bool,
        outcome: Outcome,
        out: &mut Out,
    ) {
        let still = self.state.role == Role::Primary && self.state.awaiting_peer && self.state.epoch == epoch;
        match (outcome, last_lsn) {
            (_, _) if !still => {
                let reason = format!(
                    "{} changed while it was being promoted (it is {} of epoch {}); run `hotpair status`",
                    self.id.node,
                    self.state.role.name(),
                    self.state.epoch
                );
                refuse(out, reason)
            }
            (Outcome::InFlightFinished { lsn, .. }, None) => {
                self.pending = Some(Pending::PromoteAlone { op_id, epoch, last_lsn: Some(lsn), by_witness });
                out.push(Effect::Run(Action::StopPipeline));
            }
            (Outcome::PipelineStopped, Some(last)) => {
                let new_epoch = epoch + 1;
                let first_lsn = last + 1;
                let promotion =
                    Promotion { op_id, epoch: new_epoch, first_lsn, last_received_lsn: last, last_heard_lsn: last };
                self.state.epoch = new_epoch;
                self.state.history.push(HistoryEntry { epoch: new_epoch, first_lsn, primary: self.id.node.clone() });
                self.state.promotion = Some(promotion.clone());
                self.state.awaiting_peer = false;
                let between = vec![
                    Effect::StartPipeline { first_lsn, epoch: new_epoch, epoch_start: true },
                    Effect::ForgetPeerAcks,
                ];
                self.commit(out, between);
                let why = if by_witness {
                    format!("{} did not answer for a ttl; the witness showed no newer epoch", self.id.peer)
                } else {
                    "failover --force".to_string()
                };
                let message = format!(
                    "{} promoted itself to epoch {new_epoch} from LSN {first_lsn} without {} ({why}): records {} may hold past LSN {last} are not here; rejoin it when it is back",
                    self.id.node, self.id.peer, self.id.peer
                );
                out.push(Effect::Incident { kind: Alarm::ForcedPromotion, message });
                out.push(Effect::Reply(Reply::Promoted { promotion, already: false }));
            }
            (Outcome::Failed { reason, .. }, _) => {
                refuse(out, format!("promotion of {} failed: {reason}", self.id.node));
            }
            (other, _) => self.unexpected(other, out),
        }
    }

    /// The store took records its primary may never have confirmed: this node can neither go
    /// back to following as if nothing happened (its hello would count them as agreed) nor
    /// take writes.
    fn promotion_failed(&mut self, reason: String, out: &mut Out) {
        let message = format!(
            "promotion of {} failed after applying records its primary had not confirmed ({reason}); it is fenced: rejoin it with --allow-full-copy",
            self.id.node
        );
        if let Ok(next) = self.next_role(Change::PromotionFailed) {
            self.state.role = next;
            self.state.fenced_reason = Some(message.clone());
            self.commit(out, Vec::new());
        }
        out.push(Effect::ReleaseFollower);
        out.push(Effect::Incident { kind: Alarm::ApplyError, message: message.clone() });
        refuse(out, message);
    }

    fn rejoining(
        &mut self,
        request: RejoinRequest,
        primary_last: Lsn,
        stage: RejoinStage,
        outcome: Outcome,
        out: &mut Out,
    ) {
        let node = self.id.node.clone();
        match (stage, outcome) {
            (RejoinStage::Counting { divergence }, Outcome::OrphansCounted { orphaned }) => {
                let needs_from = divergence + 1;
                let first_available = request.primary.first_available;
                let plan = RejoinPlan {
                    divergence_lsn: divergence,
                    orphaned,
                    needs_from,
                    primary_first_available: first_available,
                    shippable: primary_last < needs_from || first_available <= needs_from,
                    earlier: self.state.rejoined.clone().filter(|r| r.epoch == request.primary.epoch),
                };
                if request.dry_run {
                    return out.push(Effect::Reply(Reply::RejoinPlanned(plan)));
                }
                if !plan.shippable && !request.full_copy {
                    return refuse(out, format!(
                        "the primary's journals start at LSN {first_available}, but {node} needs them from LSN {needs_from}: a full copy is needed (--allow-full-copy)"
                    ));
                }
                let primary = &request.primary;
                if self.writer()
                    && primary.epoch == self.state.epoch
                    && orphaned == 0
                    && primary.history == self.state.history
                {
                    return refuse(
                        out,
                        format!("{node} is the primary of the current epoch; there is nothing to rejoin"),
                    );
                }
                if self.writer() {
                    let reason = format!("rejoin {}: epoch {} is led by another primary", request.op_id, primary.epoch);
                    self.fence(reason, out);
                }
                match self.next_role(Change::RejoinStarted) {
                    Ok(next) => self.state.role = next,
                    Err(reason) => return refuse(out, reason),
                }
                self.commit(out, Vec::new());
                self.pending = Some(Pending::Rejoin { request, primary_last, stage: RejoinStage::Stopping { plan } });
                out.push(Effect::Run(Action::StopReceiving));
            }
            (RejoinStage::Stopping { mut plan }, Outcome::ReceivingStopped { last_lsn, .. }) => {
                // Until its follower stopped the node may have received more from the primary
                // (a rebuilt node reconnects as soon as it is accepted): plan on what it holds
                // now, or records it acknowledged would be undone as a divergence.
                let (divergence, _) = divergence_point(&request.primary, &self.state.history, last_lsn);
                if divergence != plan.divergence_lsn {
                    out.push(Effect::Note(format!(
                        "received more from the primary as the rejoin began: divergence point {} -> {divergence}",
                        plan.divergence_lsn
                    )));
                    plan.divergence_lsn = divergence;
                    plan.needs_from = divergence + 1;
                }
                let action = Action::Resynchronize {
                    op_id: request.op_id,
                    divergence,
                    primary: request.primary.clone(),
                    full_copy: request.full_copy,
                };
                self.pending =
                    Some(Pending::Rejoin { request, primary_last, stage: RejoinStage::Resynchronizing { plan } });
                out.push(Effect::Run(action));
            }
            (
                RejoinStage::Resynchronizing { mut plan },
                Outcome::Resynchronized { orphans_file, orphaned, rewound },
            ) => {
                plan.orphaned = orphaned;
                let primary = &request.primary;
                self.state.role = self.next_role(Change::RejoinFinished).unwrap_or(Role::Backup);
                self.state.epoch = self.state.epoch.max(primary.epoch);
                if primary.history.len() >= self.state.history.len() {
                    self.state.history = primary.history.clone();
                }
                self.state.fenced_reason = None;
                self.state.awaiting_peer = false;
                self.state.drain = None;
                // A re-run that finds nothing more keeps the record of the run that set the tail aside.
                if orphans_file.is_some() || plan.earlier.is_none() {
                    self.state.rejoined = Some(Rejoined {
                        op_id: request.op_id,
                        epoch: primary.epoch,
                        divergence_lsn: plan.divergence_lsn,
                        orphaned,
                        orphans_file: orphans_file.clone(),
                    });
                }
                let between = vec![
                    Effect::ResumeReplication,
                    Effect::ClearDiverged,
                    Effect::ForgetPeerAcks,
                    Effect::StartApplier,
                ];
                self.commit(out, between);
                out.push(Effect::ReleaseFollower);
                if let Some(file) = &orphans_file {
                    let message = format!(
                        "{orphaned} orphaned transaction(s) past LSN {} undone and saved in {file}",
                        plan.divergence_lsn
                    );
                    out.push(Effect::Incident { kind: Alarm::OrphanedTail, message });
                }
                out.push(Effect::Reply(Reply::Rejoined { plan, orphans_file, rewound, full_copy: request.full_copy }));
            }
            (stage, Outcome::Failed { reason, .. }) => {
                if !matches!(stage, RejoinStage::Counting { .. }) {
                    out.push(Effect::ReleaseFollower);
                }
                refuse(out, format!("rejoin of {node} failed while {reason}"));
            }
            (_, other) => self.unexpected(other, out),
        }
    }

    fn follow_prepared(&mut self, epoch: Epoch, history: Vec<HistoryEntry>, outcome: Outcome, out: &mut Out) {
        match outcome {
            Outcome::FollowPrepared => {
                // The cut first, the history after: a crash between the two must not leave the
                // primary's history adopted over a tail it asked us to drop.
                if epoch > self.state.epoch || history.len() > self.state.history.len() {
                    self.state.epoch = self.state.epoch.max(epoch);
                    self.state.history = history;
                    self.commit(out, Vec::new());
                }
                out.push(Effect::ClearDiverged);
                out.push(Effect::Reply(Reply::Follow));
            }
            Outcome::Failed { reason, .. } => refuse(out, reason),
            other => self.unexpected(other, out),
        }
    }

    fn unexpected(&mut self, outcome: Outcome, out: &mut Out) {
        refuse(out, format!("{}: unexpected outcome {outcome:?} (a bug)", self.id.node));
    }

    // -----------------------------------------------------------------------------------------
    // The peer.

    fn hello(&mut self, hello: Hello, out: &mut Out) {
        let answer = self.answer_hello(hello, out);
        out.push(Effect::Reply(Reply::Hello(answer)));
    }

    fn answer_hello(&mut self, hello: Hello, out: &mut Out) -> HelloAnswer {
        let refused = |reason: String| HelloAnswer::Refused { reason };
        if hello.protocol != PROTOCOL_VERSION {
            return refused(format!(
                "{} speaks protocol {}, this node protocol {PROTOCOL_VERSION}: run the same hotpair version on both nodes",
                hello.from, hello.protocol
            ));
        }
        if hello.from != self.id.peer {
            return refused(format!("hello claims to be {}, but this node's peer is {}", hello.from, self.id.peer));
        }
        if hello.cluster != self.id.cluster {
            return refused(format!("peer is in cluster {}, this pair is {}", hello.cluster, self.id.cluster));
        }
        match hello.known_incarnation {
            None => out.push(Effect::RememberPeer { incarnation: hello.incarnation }),
            Some(known) if known != hello.incarnation => {
                let reason = format!(
                    "peer {} presents incarnation {}, but this pair knows it as {known} — a restored copy or second installation; refused",
                    hello.from, hello.incarnation
                );
                out.push(Effect::Incident { kind: Alarm::SecondInstallation, message: reason.clone() });
                return refused(reason);
            }
            Some(_) => {}
        }
        let ours = self.state.epoch;
        if hello.epoch > ours {
            let fenced =
                self.fence(format!("peer {} is at epoch {}, ahead of our {ours}", hello.from, hello.epoch), out);
            let note = if fenced { "; this node fenced itself" } else { "" };
            return refused(format!("peer is at epoch {}, ahead of ours ({ours}){note}", hello.epoch));
        }
        if matches!(hello.role, Role::Primary | Role::Draining) {
            // A probe: tell it where we stand. Our epoch is what it needs (a higher one fences
            // it), and our last LSN (a restarted primary takes no writes while we hold more).
            if self.writer() && hello.epoch < ours {
                out.push(Effect::Incident { kind: Alarm::StalePrimary, message: self.stale_primary(&hello) });
            } else if self.writer() {
                let message = format!(
                    "{} claims to be primary at epoch {} while this node is primary at epoch {ours}; it is told our epoch and fences",
                    hello.from, hello.epoch
                );
                out.push(Effect::Incident { kind: Alarm::SplitBrain, message });
                let theirs = hello.history.iter().rev().find(|h| h.epoch == ours).map(|h| h.primary.clone());
                if hello.epoch == ours && theirs.is_some() && theirs.as_deref() != self.leader() && self.yields() {
                    let reason = format!(
                        "{} also leads epoch {ours} (two promotions claimed it); the node named later yields",
                        hello.from
                    );
                    self.fence(reason, out);
                }
            }
            let leader = self.writer().then(|| self.leader().map(str::to_string)).flatten();
            return HelloAnswer::Standing { epoch: ours, last_lsn: hello.our_last, leader };
        }
        if hello.last_lsn < hello.acknowledged {
            // Durable commits were acknowledged on the strength of records it no longer has.
            let peer = &hello.from;
            let reason = format!(
                "peer {peer} presents LSN {}, behind LSN {} it already acknowledged as durable — a restored copy or second installation; refused (rebuild it: hotpair reinit {peer}, then hotpair rejoin {peer} --allow-full-copy)",
                hello.last_lsn, hello.acknowledged
            );
            out.push(Effect::Incident { kind: Alarm::SecondInstallation, message: reason.clone() });
            return refused(reason);
        }
        if !self.writer() {
            return refused("this node is not the primary".into());
        }
        if !hello.replicating {
            // Not ahead of our epoch, but not welcomed either, so nothing of its tail is cut: a
            // restarted primary takes writes only if it holds no more than we do.
            if hello.last_lsn <= hello.our_last {
                self.peer_confirmed(out);
            }
            return refused("replication is stopped by the admin (hotpair replicate start)".into());
        }
        let standing = standing(&self.state.history, hello.our_last, &hello.history, hello.last_lsn);
        let tail = BackupTail {
            last_lsn: hello.last_lsn,
            confirmed_lsn: hello.tail.confirmed_lsn,
            matched: hello.tail.matched,
            all_matched: hello.tail.all_matched,
            same_history: hello.history == self.state.history,
        };
        match welcome_plan(standing, tail, hello.acknowledged) {
            Plan::From { next_lsn } => HelloAnswer::Welcome { start_lsn: next_lsn, cut_after: None },
            Plan::CutAfter { lsn } => {
                out.push(Effect::Note(format!(
                    "{} holds records we shipped before our fsync and no longer hold as they were (we crashed): it drops them past LSN {lsn}",
                    hello.from
                )));
                HelloAnswer::Welcome { start_lsn: lsn + 1, cut_after: Some(lsn) }
            }
            Plan::Diverged { at_lsn } => HelloAnswer::Diverged { at_lsn, history: self.state.history.clone() },
        }
    }

    /// What an old primary's probe means: not two writers (it restarted waiting for our word,
    /// or it took writes only in an epoch our promotion closed), but a node to rejoin, and
    /// how much of its tail the rejoin will set aside.
    fn stale_primary(&self, hello: &Hello) -> String {
        let ours = self.state.epoch;
        let peer = &hello.from;
        let closed_at =
            self.state.history.iter().find(|h| h.epoch > hello.epoch).map(|h| h.first_lsn.saturating_sub(1));
        let beyond = closed_at.map_or(0, |at| hello.last_lsn.saturating_sub(at));
        let tail = if beyond > 0 {
            format!("; it holds {beyond} record(s) past LSN {} where its epoch ended, which the rejoin sets aside as orphans", closed_at.unwrap_or(0))
        } else {
            String::new()
        };
        format!(
            "{peer}, primary of epoch {} before this node's promotion, is back; it is told epoch {ours} and fences itself, taking no more writes{tail}; run `hotpair rejoin {peer}`",
            hello.epoch
        )
    }

    fn probe_answered(
        &mut self,
        epoch: Epoch,
        leader: Option<String>,
        last_lsn: Option<Lsn>,
        our_last: Lsn,
        out: &mut Out,
    ) {
        if !self.writer() {
            return;
        }
        let ours = self.state.epoch;
        if epoch > ours {
            let reason =
                format!("peer {} is at epoch {epoch}, ahead of our {ours}: it was promoted past us", self.id.peer);
            self.fence(reason, out);
        } else if epoch == ours && leader.is_some() && leader.as_deref() != self.leader() {
            // Two promotions claimed our epoch; the peer kept taking writes in it when it heard
            // our probe, so it is the one that stays (see `yields`).
            let reason = format!(
                "{} also leads epoch {ours} (two promotions claimed it); the node named later yields",
                self.id.peer
            );
            self.fence(reason, out);
        } else if last_lsn.is_some_and(|theirs| theirs > our_last) {
            // It holds records we shipped before our fsync and lost: were we to write now, we
            // would reuse their LSNs. Its hello's welcome cuts them first (then PeerAcked).
        } else {
            self.peer_confirmed(out);
        }
    }

    fn welcomed(
        &mut self,
        epoch: Epoch,
        history: Vec<HistoryEntry>,
        cut_after: Option<Lsn>,
        generation: u64,
        out: &mut Out,
    ) {
        let ours = self.state.epoch;
        if epoch < ours {
            let reason =
                format!("{} is primary of epoch {epoch}, behind ours ({ours}); its records are refused", self.id.peer);
            return refuse(out, reason);
        }
        // A primitive that changed the role (promote, rejoin) must not find a session started
        // behind its back by a welcome to a hello sent before.
        if self.state.role != Role::Backup || generation != self.state.generation || self.pending.is_some() {
            return refuse(out, "the role changed during the hello; not following".into());
        }
        self.pending = Some(Pending::Follow { epoch, history });
        out.push(Effect::Run(Action::PrepareToFollow { cut_after }));
    }

    /// The peer confirmed it was not promoted past us: a restarted primary may take writes.
    fn peer_confirmed(&mut self, out: &mut Out) {
        if !self.state.awaiting_peer {
            return;
        }
        self.state.awaiting_peer = false;
        if self.writer() {
            out.push(Effect::Note("the peer confirmed it was not promoted past us".into()));
        }
        self.commit(out, Vec::new());
    }

    fn tick(&mut self, now_ms: u64, out: &mut Out) {
        self.judge_standing(now_ms, out);
        let Some(lease) = self.state.drain else { return };
        let demoting = matches!(self.pending, Some(Pending::Demote { .. }));
        if self.state.role != Role::Draining || lease.expires_at_ms > now_ms || demoting {
            return;
        }
        out.push(Effect::Note(format!(
            "drain lease of op {} expired before the switchover completed: resuming writes",
            lease.op_id
        )));
        self.state.role = self.next_role(Change::LeaseExpired).unwrap_or(Role::Primary);
        self.state.drain = None;
        self.commit(out, Vec::new());
    }

    // -----------------------------------------------------------------------------------------
    // Helpers.

    fn writer(&self) -> bool {
        matches!(self.state.role, Role::Primary | Role::Draining)
    }

    /// The primary of our epoch, as our history says.
    fn leader(&self) -> Option<&str> {
        let epoch = self.state.epoch;
        self.state.history.iter().rev().find(|h| h.epoch == epoch).map(|h| h.primary.as_str())
    }

    /// Of two primaries of one epoch (two promotions that claimed it, apart), the node named
    /// later yields: both sides decide the same without a word more.
    fn yields(&self) -> bool {
        self.id.node > self.id.peer
    }

    /// Stops taking writes because someone is in a higher epoch; `false` when this node takes
    /// no writes anyway (a backup or rejoining node follows the newer epoch: that is its job).
    fn fence(&mut self, reason: String, out: &mut Out) -> bool {
        let Ok(next) = self.next_role(Change::HigherEpochSeen) else { return false };
        if next == self.state.role {
            return false;
        }
        self.state.role = next;
        self.state.drain = None;
        self.state.awaiting_peer = false;
        self.state.fenced_reason = Some(reason.clone());
        self.commit(out, Vec::new());
        out.push(Effect::Incident { kind: Alarm::Fenced, message: format!("fenced, takes no writes: {reason}") });
        true
    }

    fn gate(&self) -> Gate {
        match self.state.role {
            Role::Primary if self.state.awaiting_peer => {
                Gate::Refusing(WriteRefusal::AwaitingPeer { peer: self.id.peer.clone(), epoch: self.state.epoch })
            }
            Role::Primary if self.witness_refuses() => {
                Gate::Refusing(WriteRefusal::NoWitness { peer: self.id.peer.clone() })
            }
            Role::Primary => Gate::Open,
            Role::Draining => {
                let op_id = self.state.drain.map_or(Uuid::nil(), |d| d.op_id);
                Gate::Refusing(WriteRefusal::Draining { op_id })
            }
            Role::Fenced => {
                let reason = self.state.fenced_reason.clone().unwrap_or_else(|| "a newer primary exists".into());
                Gate::Refusing(WriteRefusal::Fenced { reason })
            }
            Role::Backup | Role::Rejoining => Gate::Closed,
        }
    }

    fn save(&mut self, out: &mut Out) {
        let persisted = self.persisted();
        if self.saved.as_ref() != Some(&persisted) {
            out.push(Effect::Save(persisted.clone()));
            self.saved = Some(persisted);
        }
    }

    /// Emits what a change of state needs, in the order that keeps the invariants: a gate that
    /// closes, the save, `between`, the role published, a gate that opens.
    fn commit(&mut self, out: &mut Out, between: Vec<Effect>) {
        let gate = self.gate();
        let changed = gate != self.state.gate;
        if changed && gate != Gate::Open {
            out.push(Effect::Writes(gate.clone()));
        }
        self.save(out);
        out.extend(between);
        if self.published != Some(self.state.role) {
            self.published = Some(self.state.role);
            self.state.generation += 1;
            self.witness_role_changed();
            out.push(Effect::Publish(self.state.role));
        }
        if changed && gate == Gate::Open {
            out.push(Effect::Writes(Gate::Open));
        }
        self.state.gate = gate;
    }
}

fn refuse(out: &mut Out, reason: String) {
    out.push(Effect::Reply(Reply::Refused(reason)));
}

fn pending_name(pending: &Pending) -> &'static str {
    match pending {
        Pending::Drain { .. } => "draining",
        Pending::Demote { .. } => "demoting",
        Pending::Promote { .. } | Pending::PromoteAlone { .. } => "promoting",
        Pending::Rejoin { .. } => "rejoining",
        Pending::Follow { .. } => "starting to follow",
    }
}

#[cfg(test)]
mod tests;
