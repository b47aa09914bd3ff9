//! The journal: segmented, append-only files of CRC-checked records — the truth of the pair.
//!
//! ## Job
//! A node owns two journals: its **local** journal (what it writes as primary) and a **remote**
//! journal (a byte-for-byte copy of its peer's local journal, dormant while the peer is backup).
//! Both are a directory of segment files named by their first LSN. The store can always be
//! rebuilt from a journal; the journal is never rebuilt from the store.
//!
//! ## Invariants
//! - Records are length-prefixed, CRC32C-checked, little-endian and versioned
//!   ([`format`] and `journals/README.md`), and never rewritten in place.
//! - LSNs are gap-free within an epoch: each record's LSN is the previous one's plus one. The
//!   one exception is an *epoch gap*: a segment of a later epoch may start past the previous
//!   segment's end, because the pair shares one LSN sequence and the LSNs in between were
//!   written by the peer (they are in this node's other journal). Readers step over it.
//! - No record is reported durable before an fsync that covers it has returned (group commit:
//!   one fsync serves every record appended before it started).
//! - At open, a torn last record is cut back to the last whole record; damage anywhere else is
//!   an error that names the file and the offset ([`segment`] explains how the two are told apart).
//!   Closed segments with a seal are not read at open: their damage is found when they are read
//!   or by [`Journal::check_sealed`] ([`seal`] says what that trades).
//!
//! ## Parts
//! - [`record`]: what a record says. [`format`]: how it is laid out in bytes (no I/O).
//! - [`segment`]: walking one segment file. [`writer`]: the open journal with group commit.
//! - [`seal`]: what a closed segment holds, written beside it, so that an open reads only the
//!   last segment whole (a restart does not grow with the journal).
//! - [`reader`]: forward reads across archived and live segments; offline inspection.
//! - [`merged`]: several journal directories (a node's two, a backup's, archives) read as one history.

pub mod format;
pub mod merged;
pub mod reader;
pub mod record;
pub mod seal;
pub mod segment;
pub mod writer;

use std::path::PathBuf;

pub use format::{JournalKind, SegmentHeader, MAX_RECORD_BODY};
pub use reader::{inspect, read_dir_from, JournalEntry, JournalReader, SegmentInfo, SegmentReport};
pub use record::{ClientCommand, Epoch, HistoryEntry, Lsn, Op, Record, RecordBody};
pub use writer::{
    Gather, Journal, JournalFootprint, JournalIdentity, JournalOptions, JournalStats, Recovery, SealCheck,
    CACHE_BEHIND_BYTES, DEFAULT_SEGMENT_BYTES, PREALLOCATE_BYTES,
};

/// Which of a node's two journals holds `lsn`: the local one for the epochs `me` led, the remote
/// one for its peer's — unless only the other one holds it. That happens to a primary that
/// crashed before its fsync and was failed over: its successor kept records of the old epoch
/// that the old primary lost, and the old primary, rejoined, receives them into its remote
/// journal (`replication`, "Overlapped fsyncs").
pub fn holding<'a>(
    history: &[HistoryEntry],
    me: &str,
    local: &'a Journal,
    remote: &'a Journal,
    lsn: Lsn,
) -> &'a Journal {
    let owner = history.iter().rev().find(|h| h.first_lsn <= lsn).map(|h| h.primary.as_str());
    let (first, other) = if owner.is_none_or(|owner| owner == me) { (local, remote) } else { (remote, local) };
    if !first.covers(lsn) && other.covers(lsn) {
        other
    } else {
        first
    }
}

/// Everything that can go wrong with a journal. `Failed`, `Corrupt`, `Gap` and `Foreign` mean
/// the node must stop and an admin must look; the others fail one request.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O on {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("journal damaged in {} at offset {offset}: {reason}", path.display())]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("journal gap: {} starts at LSN {found}, but the segment before it ends before LSN {expected}", path.display())]
    Gap { path: PathBuf, expected: Lsn, found: Lsn },
    #[error("{} is a {found}, but this is the {expected}", path.display())]
    Foreign { path: PathBuf, found: String, expected: String },
    #[error("record of {size} bytes is larger than the {max}-byte limit")]
    RecordTooLarge { size: usize, max: usize },
    #[error("append out of sequence: the journal expects LSN {expected}, got {got}")]
    OutOfSequence { expected: Lsn, got: Lsn },
    #[error("received frame is not a valid record: {reason}")]
    BadFrame { reason: String },
    #[error("journal {} failed earlier and takes no more writes (restart the node to recover): {reason}", dir.display())]
    Failed { dir: PathBuf, reason: String },
    #[error("journal is shut down")]
    Closed,
    #[error("cannot wait for LSN {lsn}: the last record appended is {}", last.map_or("none".to_string(), |l| l.to_string()))]
    NotAppended { lsn: Lsn, last: Option<Lsn> },
    #[error("journal records from LSN {from} are gone (the oldest kept is {first_available}); a full copy is needed")]
    RangeGone { from: Lsn, first_available: Lsn },
    #[error("record {lsn} is missing: the journal ends before it")]
    Missing { lsn: Lsn },
    #[error("{}: {reason}", path.display())]
    Inspect { path: PathBuf, reason: String },
    #[error("{reason}")]
    Merge { reason: String },
    #[error("node name {0:?} must be 1 to 64 bytes")]
    InvalidNodeName(String),
}

impl JournalError {
    /// Whether the node must stop using this journal until an admin looks.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            JournalError::Failed { .. }
                | JournalError::Corrupt { .. }
                | JournalError::Gap { .. }
                | JournalError::Foreign { .. }
        )
    }
}
