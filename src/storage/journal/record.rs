//! Journal records as values: what one entry of a journal says.
//!
//! Every record carries the LSN it was written at, the epoch of the primary that wrote it, the
//! primary's wall-clock time in milliseconds (stamped once, by the primary, so that no other part
//! of the system has to read a clock to reason about a record), and the digest of the whole key
//! space *after* the record. Only `Txn` records change data; the others leave the digest as it was.
//!
//! Every record — not only transactions — takes the next LSN. That keeps "no gaps" a one-line
//! check (`next == last + 1`) everywhere: in the journal, in the store and on the wire.

use crate::storage::digest::Digest;

/// Journal sequence number: one sequence for the whole pair, across roles. LSN 0 means "nothing".
pub type Lsn = u64;

/// Raised by one at every promotion. Epoch 0 is never written; a fresh pair starts at epoch 1.
pub type Epoch = u64;

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub lsn: Lsn,
    pub epoch: Epoch,
    /// Milliseconds since the Unix epoch, stamped by the primary that wrote the record.
    pub timestamp_ms: u64,
    /// Digest of the whole key space after this record is applied.
    pub digest_after: Digest,
    pub body: RecordBody,
}

/// What a record says. The discriminants are the on-disk kind bytes (see `journals/README.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordBody {
    /// One committed transaction: its operations in the order they were applied, and the client
    /// commands behind those of its writes whose after-images do not say what the client asked
    /// for (increments, flushes), as sent. `commands` is for people and for re-applying orphans;
    /// apply and rewind use only the ops. A transaction with commands is written as kind 5.
    Txn { ops: Vec<Op>, commands: Vec<ClientCommand> },
    /// First record of an epoch: the whole history up to and including the new epoch.
    EpochStart { history: Vec<HistoryEntry> },
    /// Test data sent through the journal at an interval so the backup can prove the path works.
    Canary { sequence: u64 },
    /// A consistent point: the number of keys in the store after this LSN.
    Checkpoint { key_count: u64 },
}

impl RecordBody {
    /// The kind name used in dumps, logs and docs.
    pub fn kind_name(&self) -> &'static str {
        match self {
            RecordBody::Txn { .. } => "txn",
            RecordBody::EpochStart { .. } => "epoch-start",
            RecordBody::Canary { .. } => "canary",
            RecordBody::Checkpoint { .. } => "checkpoint",
        }
    }
}

/// A client's command as it was sent: the command name and its arguments.
pub type ClientCommand = Vec<Vec<u8>>;

impl RecordBody {
    /// A transaction of `ops` alone (no client commands).
    pub fn txn(ops: Vec<Op>) -> RecordBody {
        RecordBody::Txn { ops, commands: Vec::new() }
    }
}

/// One key's change inside a transaction. `before == None` means the key did not exist;
/// `after == None` means the operation deletes it. Both images are kept so that the record can be
/// applied forward (after-image) and rewound (before-image) without reading anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub key: Vec<u8>,
    pub before: Option<Vec<u8>>,
    pub after: Option<Vec<u8>>,
}

/// One epoch of the pair's history: from `first_lsn` on, `primary` wrote the records of `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    pub epoch: Epoch,
    pub first_lsn: Lsn,
    pub primary: String,
}
