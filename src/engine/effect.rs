//! What the engine asks of the node: the outputs of [`super::Engine::step`], applied in order.
//!
//! ## Order
//! - A step's effects are quick ones, then at most one [`Effect::Run`], always last: the long
//!   action whose [`super::Outcome`] comes back as the next event.
//! - [`Effect::Save`] comes before anything that announces what it saved ([`Effect::Publish`],
//!   a gate that opens, a reply): persist before announce.
//! - A gate that closes ([`Effect::Writes`]) comes before the save: stopping writes is safe at
//!   any moment, taking them before the role is durable is not.

use uuid::Uuid;

use super::event::{Persisted, Promotion, Rejoined};
use super::history::PrimaryView;
use crate::storage::digest::Digest;
use crate::storage::journal::{Epoch, HistoryEntry, Lsn};
use crate::storage::meta::Role;

/// One thing the node must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Write the engine's durable state into `meta.json` (fsynced) before going on.
    Save(Persisted),
    /// Tell the node's tasks the role (the follower, the shipper, the data port, status).
    Publish(Role),
    /// Set the commit pipeline's gate (no-op on a node without a pipeline).
    Writes(Gate),
    /// Bring the store up to date with the journals at startup; `Settled` replays the remote
    /// journal only as far as it is settled (the rest waits for the primary's word).
    Replay(ReplayBound),
    /// Start the commit pipeline at `first_lsn` in `epoch`, refusing writes until a
    /// [`Effect::Writes`] opens it; with `epoch_start`, its first record is an `epoch-start`
    /// carrying the history.
    StartPipeline { first_lsn: Lsn, epoch: Epoch, epoch_start: bool },
    /// Start applying what arrives in the remote journal.
    StartApplier,
    /// Let the follower open sessions again (held by [`Action::StopReceiving`]).
    ReleaseFollower,
    /// Ship to the backup again (lifts a `replicate stop` left from another role).
    ResumeReplication,
    /// Forget the acknowledgements heard from the peer (a new epoch, a new role).
    ForgetPeerAcks,
    /// The remote journal no longer counts as diverged.
    ClearDiverged,
    /// Remember the peer's incarnation (their first meeting).
    RememberPeer { incarnation: Uuid },
    /// Raise an incident (logged and notified).
    Incident { kind: Alarm, message: String },
    /// The incident of this kind is over.
    ResolveIncident { kind: Alarm, message: String },
    /// With a witness: no write may be acknowledged past this engine ms (`None`: no limit).
    /// Checked when a write is acknowledged, not only at ticks (`super::witness`).
    WriteDeadline(Option<u64>),
    /// Log a line an admin should read.
    Note(String),
    /// Carry out a long action; its outcome is the next event.
    Run(Action),
    /// Answer whoever sent the event.
    Reply(Reply),
}

/// Whether the commit pipeline takes writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// No pipeline (backup, rejoining).
    Closed,
    Open,
    Refusing(WriteRefusal),
}

/// Why a primary refuses writes for now (`-TRYAGAIN` with this text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteRefusal {
    Draining {
        op_id: Uuid,
    },
    Fenced {
        reason: String,
    },
    /// A restarted primary waits for its peer's word that it was not promoted past it.
    AwaitingPeer {
        peer: String,
        epoch: Epoch,
    },
    /// A primary with a witness that can neither renew its lease nor count on its backup.
    NoWitness {
        peer: String,
    },
}

impl std::fmt::Display for WriteRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteRefusal::Draining { op_id } => {
                write!(f, "draining for a switchover (op {op_id}); retry on the new primary")
            }
            WriteRefusal::Fenced { reason } => write!(f, "fenced: {reason}"),
            WriteRefusal::NoWitness { peer } => write!(
                f,
                "this primary holds no witness lease (etcd unreachable or not renewed) and {peer} does not acknowledge it: it may have been replaced"
            ),
            WriteRefusal::AwaitingPeer { peer, epoch } => {
                write!(f, "restarted primary waits for {peer} to confirm it has not been promoted past epoch {epoch}")
            }
        }
    }
}

impl Gate {
    /// The pipeline's refusal text (`None` when it takes writes or there is no pipeline).
    pub fn refusal(&self) -> Option<String> {
        match self {
            Gate::Refusing(why) => Some(why.to_string()),
            Gate::Open | Gate::Closed => None,
        }
    }
}

/// How far startup replays the remote journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayBound {
    /// All of it: a primary keeps everything it received when it was promoted.
    Everything,
    /// What is settled: before the current epoch, and what the store already applied.
    Settled,
}

/// The incidents the engine raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alarm {
    Fenced,
    SplitBrain,
    /// The primary of a superseded epoch is back (the old primary restarted after a
    /// failover): it is told the newer epoch and fences itself; the admin rejoins it.
    StalePrimary,
    /// `failover --force` promoted a restarted primary whose peer is gone.
    ForcedPromotion,
    SecondInstallation,
    OrphanedTail,
    ApplyError,
    WitnessLost,
    FailoverSuppressed,
    /// Observe mode: what automatic failover would have done.
    WouldAct,
}

/// The long actions: each ends in an [`super::Outcome`] fed back as [`super::Event::Done`].
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Drain: make every appended record durable; report the last LSN and digest.
    FinishInFlight,
    /// Demote: stop the pipeline once everything it appended is durable and applied.
    StopPipeline,
    /// Promote, rejoin: hold the follower, wait until no session runs, stop the applier.
    StopReceiving,
    /// Promote: apply everything received, confirmed or not.
    ReplayReceived,
    /// Rejoin: count the transactions past `divergence`.
    CountOrphans { divergence: Lsn },
    /// Rejoin: save the tail past `divergence` to an orphans file, undo it, cut the journals
    /// there, replay what is settled (or, with `full_copy`, replace the store by the primary's).
    Resynchronize { op_id: Uuid, divergence: Lsn, primary: PrimaryView, full_copy: bool },
    /// Follow: cut the remote journal after `cut_after` if asked, restart the applier.
    PrepareToFollow { cut_after: Option<Lsn> },
}

/// An answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Drained {
        lsn: Lsn,
        digest: Digest,
        lease_ms: u64,
    },
    Resumed {
        was_draining: bool,
    },
    Demoted {
        already: bool,
    },
    Promoted {
        promotion: Promotion,
        already: bool,
    },
    Fenced {
        role: Role,
        epoch: Epoch,
    },
    RejoinPlanned(RejoinPlan),
    Rejoined {
        plan: RejoinPlan,
        orphans_file: Option<String>,
        rewound: u64,
        full_copy: bool,
    },
    Refused(String),
    /// The answer to a peer's hello.
    Hello(HelloAnswer),
    /// The follower may start its session.
    Follow,
    Witness(super::witness::WitnessDecision),
}

/// What a rejoin will do (a dry run) or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejoinPlan {
    pub divergence_lsn: Lsn,
    pub orphaned: u64,
    pub needs_from: Lsn,
    pub primary_first_available: Lsn,
    pub shippable: bool,
    /// An earlier rejoin behind the same primary epoch, and what it set aside.
    pub earlier: Option<Rejoined>,
}

/// What this node tells a peer that said hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloAnswer {
    /// Become our backup: records from `start_lsn` follow (after the cut).
    Welcome {
        start_lsn: Lsn,
        cut_after: Option<Lsn>,
    },
    /// A probe's answer: where we stand, and who leads our epoch while we take writes in it.
    Standing {
        epoch: Epoch,
        last_lsn: Lsn,
        leader: Option<String>,
    },
    /// Its history left ours after `at_lsn`: it must be rejoined.
    Diverged {
        at_lsn: Lsn,
        history: Vec<HistoryEntry>,
    },
    Refused {
        reason: String,
    },
}
