//! What the engine hears: the inputs of [`super::Engine::step`].
//!
//! Every event carries what the engine needs to decide and nothing it must look up: the time
//! (for leases), and the node's observations (its last LSN, what its peer acknowledged) read by
//! the node as the event arrived. The engine never asks.

use uuid::Uuid;

use super::history::PrimaryView;
use crate::storage::digest::Digest;
use crate::storage::journal::{Epoch, HistoryEntry, Lsn};
use crate::storage::meta::Role;

/// One input to the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The process started on its data directory: what `meta.json` and the journals hold.
    Restarted(Recovered),
    /// An orchestration primitive from the admin (one at a time per node).
    Admin(Primitive),
    /// The long action the engine asked for last ([`super::Action`]) ended.
    Done(Outcome),
    /// A peer's hello reached this node's control port.
    Hello(Hello),
    /// The peer answered this (primary) node's probe: its epoch, its last LSN if it gave it, and
    /// the primary of its epoch if it takes writes in it.
    ProbeAnswered { epoch: Epoch, leader: Option<String>, last_lsn: Option<Lsn>, our_last: Lsn },
    /// The primary welcomed this node's hello. `generation` is the engine's generation when
    /// the hello was sent ([`super::State::generation`]): a role change since voids the welcome.
    Welcomed { epoch: Epoch, history: Vec<HistoryEntry>, cut_after: Option<Lsn>, generation: u64 },
    /// The backup acknowledged for the first time in a session: it did what the welcome asked.
    PeerAcked,
    /// The replication session with the peer ended.
    PeerLost,
    /// A replication session with the peer began.
    PeerBack,
    /// Time passed (the node ticks a few times a second; the simulation at will).
    Tick { now_ms: u64 },
    /// A round of the witness agent, or its claim won (`super::witness`).
    Witness(super::witness::WitnessReport),
}

/// What a node found on its disk when it started.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered {
    pub persisted: Persisted,
    /// The last LSN its journals (or its store, after a full copy) hold.
    pub last_lsn: Lsn,
    /// Whether it ever met its peer (`meta.json` keeps the peer's incarnation from then on).
    pub met_peer: bool,
}

/// The engine's durable state: what [`super::Effect::Save`] writes into `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persisted {
    pub role: Role,
    pub epoch: Epoch,
    pub history: Vec<HistoryEntry>,
    /// This node's last promotion and what it knew then of the transactions it never received.
    pub promotion: Option<Promotion>,
    /// This node's last rejoin: what it set aside, so a re-run can name the file.
    pub rejoined: Option<Rejoined>,
}

/// A promotion as the node that was promoted remembers it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Promotion {
    pub op_id: Uuid,
    pub epoch: Epoch,
    pub first_lsn: Lsn,
    /// Everything this node had received from the old primary.
    pub last_received_lsn: Lsn,
    /// The old primary's last position this node heard of (its batches and heartbeats carry it).
    pub last_heard_lsn: Lsn,
}

impl Promotion {
    /// The estimate of transactions the old primary held and this node never received.
    pub fn not_received(&self) -> u64 {
        self.last_heard_lsn.saturating_sub(self.last_received_lsn)
    }
}

/// A rejoin as the rejoined node remembers it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rejoined {
    pub op_id: Uuid,
    /// The primary's epoch it rejoined behind.
    pub epoch: Epoch,
    pub divergence_lsn: Lsn,
    pub orphaned: u64,
    pub orphans_file: Option<String>,
}

/// The orchestration primitives, as the engine decides them.
#[derive(Debug, Clone, PartialEq)]
pub enum Primitive {
    Drain { op_id: Uuid, epoch: Epoch, lease_ms: u64, now_ms: u64 },
    Resume { op_id: Uuid, epoch: Epoch },
    Demote { op_id: Uuid, epoch: Epoch },
    Promote { op_id: Uuid, epoch: Epoch, expect_lsn: Option<Lsn> },
    Fence { epoch: Epoch, primary: String },
    Rejoin(RejoinRequest),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RejoinRequest {
    pub op_id: Uuid,
    pub primary: PrimaryView,
    pub dry_run: bool,
    pub full_copy: bool,
    /// The node's last LSN as the request arrived.
    pub our_last: Lsn,
}

/// How a long action ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Drain: every appended record is durable; `lsn` is the last, `digest` the state after it.
    InFlightFinished { lsn: Lsn, digest: Digest },
    /// Demote: the pipeline stopped with everything durable and applied.
    PipelineStopped,
    /// Promote, rejoin: no session and no applier any more; what the node holds, and the last
    /// primary position it heard of.
    ReceivingStopped { last_lsn: Lsn, heard_primary_lsn: Lsn },
    /// Promote: everything received is applied.
    Replayed { last_lsn: Lsn, applied_lsn: Lsn },
    /// Rejoin: transactions past the divergence point.
    OrphansCounted { orphaned: u64 },
    /// Rejoin: the tail is saved, undone and cut; the node holds the primary's history up to
    /// the divergence point.
    Resynchronized { orphans_file: Option<String>, orphaned: u64, rewound: u64 },
    /// A welcome's cut is done and the applier waits for the primary's records.
    FollowPrepared,
    /// The action failed; `applied_unconfirmed` when the store already took records the old
    /// primary had not confirmed (a promotion that cannot go back to following).
    Failed { reason: String, applied_unconfirmed: bool },
}

/// A peer's hello, and what this node knew when it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    pub from: String,
    pub protocol: u32,
    pub cluster: Uuid,
    pub incarnation: Uuid,
    pub epoch: Epoch,
    /// The role the peer believes it has: a primary's hello is a probe.
    pub role: Role,
    pub history: Vec<HistoryEntry>,
    pub last_lsn: Lsn,
    /// The peer's unconfirmed tail held against our records (see `history::BackupTail`).
    pub tail: TailMatch,
    /// The incarnation this node knows the peer by (`None` until they first met).
    pub known_incarnation: Option<Uuid>,
    /// How far the peer acknowledged as durable to this node as primary of its epoch.
    pub acknowledged: Lsn,
    /// This node's last LSN.
    pub our_last: Lsn,
    /// `false` after `hotpair replicate stop` on this node.
    pub replicating: bool,
}

/// How much of a would-be backup's unconfirmed tail is this node's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TailMatch {
    pub confirmed_lsn: Lsn,
    pub matched: u64,
    pub all_matched: bool,
}
