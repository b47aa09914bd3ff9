//! How the node carries out the pair engine's decisions ([`crate::engine`]).
//!
//! ## Job
//! [`Node::step_now`] and [`Node::drive`] give the engine an event and apply the effects it
//! returns, in its order: metadata saves, the published role, the write gate, the pipeline and
//! the applier, incidents, and the long actions ([`Action`]) whose outcomes go back to the
//! engine as the next event. [`tick`] gives the engine the time, so a drain lease runs out.
//!
//! ## Invariants
//! - A step and its quick effects happen under the engine's lock: the effects of two events
//!   (a fence heard from the peer, a primitive's resume) never interleave, and they reach the
//!   disk in the order the engine decided them.
//! - A long action runs outside that lock; events that arrive meanwhile are decided at once,
//!   and the action's outcome is judged against the state as it is when it ends.
//! - An effect that fails ends its batch: what follows it is not done (nothing is announced
//!   that was not saved). A long action the engine waits for is then failed back to it.

use std::sync::Arc;
use std::time::Duration;

use super::{lock, Node};
use crate::engine::{Action, Alarm, Effect, Event, Gate, Outcome, ReplayBound, Reply, WriteRefusal};
use crate::node::incident::{Kind, Severity};
use crate::storage::journal::{Lsn, RecordBody};
use crate::storage::meta::Role;
use crate::Error;

/// How often the engine hears the time (a drain lease ends at most this late).
const TICK: Duration = Duration::from_millis(50);
/// How long a promotion or rejoin waits for the follower's session to end.
const FOLLOWER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl Node {
    /// Monotonic milliseconds since the node opened: the engine's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock_origin.elapsed().as_millis() as u64
    }

    /// The engine's generation (raised at every role change); a hello carries it.
    pub(crate) fn generation(&self) -> u64 {
        lock(&self.engine).state().generation
    }

    /// The engine's state (status shows parts of it).
    pub fn engine_state(&self) -> crate::engine::State {
        lock(&self.engine).state().clone()
    }

    /// Whether the follower may echo a heartbeat it receives now (`Engine::may_echo`).
    pub(crate) fn may_echo(&self) -> bool {
        lock(&self.engine).may_echo()
    }

    /// A replication session with the peer began (`true`) or ended.
    pub(crate) fn note_peer_link(&self, up: bool) {
        let event = if up { Event::PeerBack } else { Event::PeerLost };
        if let Err(err) = self.step_now(event) {
            tracing::error!(%err, "telling the engine about the peer link");
        }
    }

    /// Steps the engine with an event whose effects are all quick, and applies them; returns
    /// the engine's reply, if it gave one.
    pub(crate) fn step_now(&self, event: Event) -> Result<Option<Reply>, Error> {
        let mut engine = lock(&self.engine);
        let effects = engine.step(event);
        let mut reply = None;
        match self.apply(effects, &mut reply) {
            Ok(None) => Ok(reply),
            Ok(Some(action)) => {
                // Only `drive` carries out long actions; the engine is told so it can unwind.
                let reason = format!("{action} asked for outside a primitive (a bug)");
                let effects =
                    engine.step(Event::Done(Outcome::Failed { reason: reason.clone(), applied_unconfirmed: false }));
                let _ = self.apply(effects, &mut None);
                Err(Error::Failed(reason))
            }
            Err(err) => {
                self.unwind(&mut engine, &err);
                Err(err)
            }
        }
    }

    /// Steps the engine with `event`, applies its effects, carries out the long actions it asks
    /// for and gives it their outcomes, until it replies.
    pub(crate) async fn drive(self: &Arc<Node>, event: Event) -> Result<Reply, String> {
        let mut event = event;
        let mut reply = None;
        loop {
            let action = {
                let mut engine = lock(&self.engine);
                let effects = engine.step(event);
                match self.apply(effects, &mut reply) {
                    Ok(action) => action,
                    Err(err) => {
                        self.unwind(&mut engine, &err);
                        return Err(err.to_string());
                    }
                }
            };
            match action {
                Some(action) => event = Event::Done(self.run_action(action).await),
                None => return reply.ok_or_else(|| "the engine gave no answer (a bug)".to_string()),
            }
        }
    }

    /// An effect failed: a long action the engine waits for will not run, so it is told.
    fn unwind(&self, engine: &mut crate::engine::Engine, err: &Error) {
        tracing::error!(%err, "carrying out the engine's effects failed");
        if engine.busy() {
            let failed = Outcome::Failed { reason: err.to_string(), applied_unconfirmed: false };
            let effects = engine.step(Event::Done(failed));
            if let Err(again) = self.apply(effects, &mut None) {
                tracing::error!(%again, "unwinding after a failed effect failed too");
            }
        }
    }

    /// Applies quick effects in order; returns the long action that ends the batch, if any.
    fn apply(&self, effects: Vec<Effect>, reply: &mut Option<Reply>) -> Result<Option<Action>, Error> {
        for effect in effects {
            match effect {
                Effect::Run(action) => return Ok(Some(action)),
                Effect::Reply(answer) => *reply = Some(answer),
                other => self.apply_one(other)?,
            }
        }
        Ok(None)
    }

    fn apply_one(&self, effect: Effect) -> Result<(), Error> {
        match effect {
            Effect::Save(persisted) => {
                self.update_meta(|meta| meta.adopt(&persisted))?;
            }
            Effect::Publish(role) => {
                self.role.send_replace(role);
                if matches!(role, Role::Primary | Role::Backup) {
                    // Rejoined or promoted: whatever fenced it is behind it.
                    let message = format!("{} is {} of epoch {} now", self.name(), role.name(), self.meta().epoch);
                    self.incidents.resolve(Kind::Fenced, message);
                }
            }
            Effect::Writes(gate) => {
                let in_doubt = matches!(
                    gate,
                    Gate::Refusing(
                        WriteRefusal::Fenced { .. }
                            | WriteRefusal::AwaitingPeer { .. }
                            | WriteRefusal::NoWitness { .. }
                    )
                );
                self.standing_in_doubt.store(in_doubt, std::sync::atomic::Ordering::SeqCst);
                if let Some(pipeline) = self.pipeline() {
                    pipeline.set_refusing(match gate {
                        Gate::Open => None,
                        Gate::Refusing(why) => Some(why.to_string()),
                        Gate::Closed => Some("this node is not the primary".into()),
                    });
                }
            }
            Effect::Replay(bound) => {
                let up_to = match bound {
                    ReplayBound::Everything => Lsn::MAX,
                    ReplayBound::Settled => self.settled_lsn(&self.meta().history),
                };
                let replayed = self.replay(up_to)?;
                tracing::info!(replayed, "replayed what the store was missing from the journals");
            }
            Effect::StartPipeline { first_lsn, epoch, epoch_start } => {
                let pipeline = crate::kv::pipeline::Pipeline::start_watched(
                    self.local.clone(),
                    self.store.clone(),
                    first_lsn,
                    epoch,
                    self.watches.clone(),
                );
                // Closed until the engine opens it.
                pipeline.set_refusing(Some("the pipeline is starting".into()));
                if epoch_start {
                    let history = self.meta().history;
                    pipeline
                        .append_control(crate::clock::now_ms(), RecordBody::EpochStart { history })
                        .map_err(|e| Error::Failed(e.to_string()))?;
                }
                *lock(&self.pipeline) = Some(Arc::new(pipeline));
            }
            Effect::StartApplier => self.start_applier(),
            Effect::ReleaseFollower => {
                self.follower_held.send_replace(false);
            }
            Effect::ResumeReplication => self.set_replicating(true)?,
            Effect::ForgetPeerAcks => {
                self.peer.send_replace(crate::replication::PeerState::default());
            }
            Effect::ClearDiverged => *lock(&self.diverged_at) = None,
            Effect::RememberPeer { incarnation } => {
                self.update_meta(|meta| {
                    if meta.peer.is_none() {
                        let epoch = meta.epoch;
                        meta.peer = Some(crate::storage::meta::PeerPosition { incarnation, epoch, durable_lsn: 0 });
                    }
                })?;
            }
            Effect::Incident { kind, message } => self.alarm(kind, message),
            Effect::ResolveIncident { kind, message } => {
                if let Some((kind, _)) = incident_kind(kind) {
                    self.incidents.resolve(kind, message);
                }
            }
            Effect::WriteDeadline(deadline) => {
                // u64::MAX: no deadline (a pair without a witness never sets one).
                self.write_deadline.store(deadline.unwrap_or(u64::MAX), std::sync::atomic::Ordering::SeqCst);
            }
            Effect::Note(text) => tracing::warn!("{text}"),
            Effect::Run(_) | Effect::Reply(_) => unreachable!("handled by apply"),
        }
        Ok(())
    }

    fn alarm(&self, kind: Alarm, message: String) {
        if let Some((kind, severity)) = incident_kind(kind) {
            self.incidents.raise(kind, severity, message.clone());
        }
        if kind == Alarm::OrphanedTail {
            // A notice: the tail is saved and undone, nothing remains to be done about it.
            self.incidents.resolve(Kind::OrphanedTail, message);
        }
    }

    /// Whether a write may still be acknowledged now: with a witness, not past the standing's
    /// deadline (a primary resumed after a freeze sees it passed before any tick runs).
    pub(crate) fn within_write_deadline(&self) -> bool {
        let deadline = self.write_deadline.load(std::sync::atomic::Ordering::SeqCst);
        deadline == u64::MAX || self.now_ms() < deadline
    }

    /// Carries out a long action and says how it ended.
    async fn run_action(self: &Arc<Node>, action: Action) -> Outcome {
        let failed = |reason: String| Outcome::Failed { reason, applied_unconfirmed: false };
        match action {
            Action::FinishInFlight => {
                let Some(pipeline) = self.pipeline() else {
                    return failed(format!("{} has no commit pipeline to drain", self.name()));
                };
                // In-flight commits were appended before the refusal; they finish once durable
                // here and at their sync level on the backup. The drain LSN is the last of them.
                let lsn = pipeline.last_lsn();
                let synced = match self.local.last_lsn() {
                    Some(last) => blocking(|| self.local.sync_to(last)).map_err(|e| e.to_string()),
                    None => Ok(()),
                };
                match synced {
                    Ok(()) => Outcome::InFlightFinished { lsn, digest: pipeline.digest() },
                    Err(reason) => failed(reason),
                }
            }
            Action::StopPipeline => match blocking(|| self.stop_pipeline()) {
                Ok(()) => Outcome::PipelineStopped,
                Err(err) => failed(err.to_string()),
            },
            Action::StopReceiving => self.stop_receiving().await,
            Action::ReplayReceived => {
                let confirmed = self.store.position().applied_lsn;
                // Everything received counts, confirmed or not: it may hold acknowledged commits.
                match blocking(|| self.replay(Lsn::MAX)) {
                    Ok(_) => {
                        Outcome::Replayed { last_lsn: self.last_lsn(), applied_lsn: self.store.position().applied_lsn }
                    }
                    Err(err) => Outcome::Failed {
                        reason: err.to_string(),
                        applied_unconfirmed: self.store.position().applied_lsn > confirmed,
                    },
                }
            }
            Action::CountOrphans { divergence } => {
                let counted = blocking(|| super::primitives::count_orphans(self, divergence));
                Outcome::OrphansCounted { orphaned: counted }
            }
            Action::Resynchronize { op_id, divergence, primary, full_copy } => {
                let done = if full_copy {
                    super::primitives::copy_in(self, op_id, divergence).await
                } else {
                    blocking(|| super::primitives::resynchronize(self, op_id, &primary, divergence))
                };
                match done {
                    Ok(done) => Outcome::Resynchronized {
                        orphans_file: done.file,
                        orphaned: done.orphaned,
                        rewound: done.rewound,
                    },
                    Err(reason) => failed(reason),
                }
            }
            // On the follower's own thread (its runtime has one thread: no block_in_place).
            Action::PrepareToFollow { cut_after } => match self.prepare_to_follow(cut_after) {
                Ok(_) => Outcome::FollowPrepared,
                Err(err) => failed(err.to_string()),
            },
        }
    }

    /// Holds the follower, waits until its session ended, and stops the applier once
    /// everything received is durable and applied.
    async fn stop_receiving(self: &Arc<Node>) -> Outcome {
        let failed = |reason: String| Outcome::Failed { reason, applied_unconfirmed: false };
        self.follower_held.send_replace(true);
        let mut following = self.following.subscribe();
        if tokio::time::timeout(FOLLOWER_STOP_TIMEOUT, following.wait_for(|f| !*f)).await.is_err() {
            return failed(format!(
                "the follower did not stop within {}",
                humantime::format_duration(FOLLOWER_STOP_TIMEOUT)
            ));
        }
        let heard_primary_lsn = self.peer.borrow().peer_last_lsn;
        if let Err(err) = blocking(|| self.stop_applier()) {
            return failed(err.to_string());
        }
        Outcome::ReceivingStopped { last_lsn: self.last_lsn(), heard_primary_lsn }
    }
}

/// The incident an engine alarm raises, and how loud.
fn incident_kind(alarm: Alarm) -> Option<(Kind, Severity)> {
    Some(match alarm {
        Alarm::Fenced => (Kind::Fenced, Severity::Critical),
        Alarm::SplitBrain => (Kind::SplitBrain, Severity::Critical),
        Alarm::StalePrimary => (Kind::StalePrimary, Severity::Warning),
        Alarm::ForcedPromotion => (Kind::ForcedPromotion, Severity::Critical),
        Alarm::SecondInstallation => (Kind::SecondInstallation, Severity::Critical),
        Alarm::ApplyError => (Kind::ApplyError, Severity::Critical),
        Alarm::OrphanedTail => (Kind::OrphanedTail, Severity::Warning),
        Alarm::WitnessLost => (Kind::WitnessLost, Severity::Critical),
        Alarm::FailoverSuppressed => (Kind::FailoverSuppressed, Severity::Warning),
        Alarm::WouldAct => (Kind::AutoFailover, Severity::Warning),
    })
}

/// Runs blocking work (fsync waits, thread joins, sled) without stalling the async runtime.
pub(super) fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

/// Gives the engine the time until shutdown: a drain lease that ran out resumes writes.
pub(super) async fn tick(node: Arc<Node>) -> Result<(), Error> {
    let mut shutdown = node.shutdown.subscribe();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => if *shutdown.borrow() { return Ok(()) },
            _ = ticker.tick() => {
                if let Err(err) = node.step_now(Event::Tick { now_ms: node.now_ms() }) {
                    tracing::error!(%err, "the engine's tick failed");
                }
            }
        }
    }
}
