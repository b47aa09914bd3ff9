//! The control port's wire format: length-prefixed frames carrying either a JSON message in an
//! envelope (hello, acks, heartbeats, admin requests) or a batch of raw journal records.
//!
//! ## Frame
//! ```text
//! u32 LE  length N of what follows (1 ≤ N ≤ MAX_FRAME)
//! u8      type: 1 = JSON envelope, 2 = records batch, 3 = full-copy batch
//! N-1     payload
//! ```
//! A records batch is the sender's durable LSN (u64 LE: how far the backup may apply, see
//! `replication`, "Overlapped fsyncs") followed by journal record frames back to back, exactly as
//! they lie in the sender's journal (`journals/README.md`); the receiver checks each one's CRC
//! and LSN before it keeps it.
//! A JSON envelope is `{"from": node, "epoch": n, "type": …, …}`: every message says who sent it
//! and in which epoch, so a stale sender is recognised whatever it says.
//!
//! ## Limits
//! A frame longer than [`MAX_FRAME`] or of an unknown type ends the connection with
//! [`WireError::Invalid`]; nothing of it is read into memory first.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use uuid::Uuid;

use crate::digest::Digest;
use crate::journal::{Epoch, HistoryEntry, Lsn, MAX_RECORD_BODY};
use crate::meta::Role;

/// Largest frame accepted: one maximal record plus room for its frame header.
pub const MAX_FRAME: usize = MAX_RECORD_BODY + 1024;
/// Batches of records are cut at about this many bytes (a single larger record still goes whole).
pub const BATCH_BYTES: usize = 1024 * 1024;
/// Most record CRCs a hello carries (4 MiB of numbers): a backup's unconfirmed tail is a round
/// or two of commits, or what its store had not applied when it restarted.
pub const MAX_TAIL_CRCS: usize = 1 << 20;

const TYPE_JSON: u8 = 1;
const TYPE_RECORDS: u8 = 2;
const TYPE_COPY: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid frame from peer: {0}")]
    Invalid(String),
}

/// One unit on the control port.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Message(Envelope),
    /// Journal record frames back to back, and how far the sender has made its journal durable.
    Records {
        durable: Lsn,
        frames: Vec<u8>,
    },
    /// A batch of a full copy: `u32 LE key length, key, u32 LE value length, value`, repeated.
    Copy(Vec<u8>),
}

/// Who sent a message, in which epoch, and what it says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub from: String,
    pub epoch: Epoch,
    #[serde(flatten)]
    pub message: Message,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Message {
    /// First message of a node-to-node connection: identity and where the sender stands. A
    /// would-be backup also says up to which LSN its records were confirmed durable by a primary
    /// (it may have applied up to there) and the frame CRCs of its records past it, so that the
    /// primary can tell how much of that tail is its own (see `cut_after`): `tail_crcs` for
    /// `confirmed_lsn + 1` on (at most [`MAX_TAIL_CRCS`]), and `last_crc` for `last_lsn` when
    /// the tail is longer than that.
    Hello {
        cluster: Uuid,
        incarnation: Uuid,
        role: Role,
        history: Vec<HistoryEntry>,
        last_lsn: Lsn,
        #[serde(default)]
        confirmed_lsn: Lsn,
        #[serde(default)]
        tail_crcs: Vec<u32>,
        #[serde(default)]
        last_crc: Option<u32>,
    },
    /// The primary accepts the backup: records from `start_lsn` on follow. With `cut_after`, the
    /// backup first drops every record past that LSN: they were shipped before the primary's
    /// fsync, and the primary no longer holds them (a crash took them) or holds others there.
    Welcome {
        start_lsn: Lsn,
        history: Vec<HistoryEntry>,
        last_lsn: Lsn,
        #[serde(default)]
        cut_after: Option<Lsn>,
    },
    /// The primary's journal is durable up to `lsn`: the backup may apply up to it. Sent when
    /// no batch is about to carry it.
    Durable { lsn: Lsn },
    /// The backup's history left the primary's after `at_lsn`: it must be rejoined.
    Diverged { at_lsn: Lsn, history: Vec<HistoryEntry> },
    /// The connection is refused, with the reason (also logged on both sides). To a restarted
    /// primary's probe, a backup also gives its last LSN: a backup that holds more than the
    /// primary must be welcomed (and its tail checked) before the primary takes writes.
    Refused {
        reason: String,
        #[serde(default)]
        last_lsn: Option<Lsn>,
    },
    /// The backup's progress: received (in memory), durable (remote journal fsynced), applied.
    Ack { received_lsn: Lsn, durable_lsn: Lsn, applied_lsn: Lsn, digest: Digest },
    /// Liveness both ways; a gap in `seq` means lost messages.
    Heartbeat { seq: u64, time_ms: u64, last_lsn: Lsn },
    /// First message of a full-copy connection (instead of a hello): send me your store.
    CopyRequest { cluster: Uuid, incarnation: Uuid },
    /// The copy that follows (as [`Frame::Copy`] frames) is the store at this position.
    CopyBegin { position: crate::store::Position, history: Vec<HistoryEntry> },
    /// The copy is complete: `pairs` pairs were sent.
    CopyEnd { pairs: u64 },
    /// An admin request (the CLI is the sender).
    Admin { request: AdminRequest },
    /// The answer to an admin request.
    AdminReply { ok: bool, body: serde_json::Value },
}

/// What the admin CLI (and the orchestrator in it) may ask of a node. The orchestration
/// primitives carry the id of the run (`op_id`) and the epoch the orchestrator saw the node in:
/// a node whose epoch moved on refuses them, so a stale orchestrator changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum AdminRequest {
    Status,
    ReplicateStart,
    ReplicateStop,
    ReopenLog,
    /// Primary: refuse new writes (`-TRYAGAIN`) for `lease_ms`, let in-flight commits finish,
    /// answer the last LSN. The node resumes by itself when the lease runs out.
    Drain {
        op_id: Uuid,
        epoch: Epoch,
        lease_ms: u64,
    },
    /// Draining primary: take writes again (a switchover rolled back).
    Resume {
        op_id: Uuid,
        epoch: Epoch,
    },
    /// Draining primary: become the backup (and follow whoever is promoted).
    Demote {
        op_id: Uuid,
        epoch: Epoch,
    },
    /// Backup: apply everything received, then become primary of `epoch + 1`. With
    /// `expect_lsn`, refuse unless everything up to it was received (switchover).
    Promote {
        op_id: Uuid,
        epoch: Epoch,
        expect_lsn: Option<Lsn>,
    },
    /// A higher epoch exists (`primary` leads it): a node taking writes stops at once.
    Fence {
        epoch: Epoch,
        primary: String,
    },
    /// Wait until the store has applied `lsn`; answer the applied LSN and digest.
    WaitApplied {
        lsn: Lsn,
        timeout_ms: u64,
    },
    /// Catch-up + resynchronize behind the primary whose history, epoch and last LSN are given:
    /// save and undo the orphaned tail, truncate, become backup. `dry_run` only reports the plan.
    Rejoin {
        op_id: Uuid,
        history: Vec<HistoryEntry>,
        epoch: Epoch,
        last_lsn: Lsn,
        first_available: Lsn,
        dry_run: bool,
        /// Replace the store with a copy of the primary's (when the journals needed are gone).
        #[serde(default)]
        full_copy: bool,
    },
    /// The digest at `lsn` (waiting to reach it); `full` also recomputes it from the stored data.
    Verify {
        lsn: Lsn,
        full: bool,
        timeout_ms: u64,
    },
    /// Primary: the lowest LSN it can still ship from its journals.
    FirstAvailable,
    /// Record (or clear) the orchestration in flight in `meta.json`.
    SetProgress {
        progress: Option<serde_json::Value>,
    },
    /// Take `incarnation` as the peer's from now on: its data directory was rebuilt
    /// (`hotpair reinit`) and the admin asked for it (`rejoin --allow-full-copy`).
    AcceptPeer {
        incarnation: Uuid,
    },
    /// `hotpair backup`: the connection turns into a stream (`node::backup`): replies with
    /// `"backup"` set to `begin`, `scanned` and `end`, the store's pairs as [`Frame::Copy`] and
    /// the journal records as [`Frame::Records`] between them. `journal_from` asks for records
    /// from that LSN on (default: from where the store copy starts).
    Backup {
        #[serde(default)]
        journal_from: Option<Lsn>,
    },
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Frame>, WireError> {
    let mut len_bytes = [0u8; 4];
    match reader.read_exact(&mut len_bytes).await {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err.into()),
    }
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(WireError::Invalid(format!("frame length {len} outside 1..={MAX_FRAME}")));
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await?;
    decode_payload(payload)
}

fn decode_payload(mut payload: Vec<u8>) -> Result<Option<Frame>, WireError> {
    match payload[0] {
        TYPE_JSON => serde_json::from_slice(&payload[1..])
            .map(|envelope| Some(Frame::Message(envelope)))
            .map_err(|e| WireError::Invalid(format!("bad JSON message: {e}"))),
        TYPE_RECORDS => {
            let durable = payload
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or_else(|| WireError::Invalid("records batch shorter than its durable LSN".into()))?;
            payload.drain(..9);
            Ok(Some(Frame::Records { durable, frames: payload }))
        }
        TYPE_COPY => {
            payload.remove(0);
            Ok(Some(Frame::Copy(payload)))
        }
        other => Err(WireError::Invalid(format!("unknown frame type {other}"))),
    }
}

/// Encodes a frame (length, type, payload) into bytes ready to write.
pub fn encode_frame(frame: &Frame) -> Vec<u8> {
    let (kind, payload) = match frame {
        // Serialising these plain data types cannot fail (no maps with non-string keys).
        Frame::Message(envelope) => (TYPE_JSON, serde_json::to_vec(envelope).unwrap_or_default()),
        Frame::Records { durable, frames } => (TYPE_RECORDS, [&durable.to_le_bytes()[..], frames].concat()),
        Frame::Copy(bytes) => (TYPE_COPY, bytes.clone()),
    };
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.extend_from_slice(&((payload.len() + 1) as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&payload);
    out
}

pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, frame: &Frame) -> Result<(), WireError> {
    writer.write_all(&encode_frame(frame)).await?;
    writer.flush().await?;
    Ok(())
}

/// Key-value pairs as a full copy carries them.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Encodes pairs for a [`Frame::Copy`].
pub fn encode_pairs(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pairs.iter().map(|(k, v)| k.len() + v.len() + 8).sum());
    for (key, value) in pairs {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// Decodes a [`Frame::Copy`] payload; a length that runs past the end is invalid.
pub fn decode_pairs(mut bytes: &[u8]) -> Result<Pairs, WireError> {
    let take = |bytes: &mut &[u8]| -> Result<Vec<u8>, WireError> {
        let invalid = || WireError::Invalid("copy batch cut short".into());
        let len = u32::from_le_bytes(bytes.get(..4).ok_or_else(invalid)?.try_into().map_err(|_| invalid())?) as usize;
        let field = bytes.get(4..4 + len).ok_or_else(invalid)?.to_vec();
        *bytes = &bytes[4 + len..];
        Ok(field)
    };
    let mut pairs = Vec::new();
    while !bytes.is_empty() {
        let key = take(&mut bytes)?;
        let value = take(&mut bytes)?;
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// Where a node with history `theirs` and last LSN `their_last` stands against `ours`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Everything they hold is on our history: continue from `next_lsn`.
    OnHistory { next_lsn: Lsn },
    /// They hold records after `at_lsn` that are not on our history (an orphaned tail).
    Diverged { at_lsn: Lsn },
}

/// Compares histories. Two nodes agree on an LSN when both histories put it in the same epoch
/// (one writer per epoch makes the records equal). `our_last` bounds what we hold.
pub fn standing(ours: &[HistoryEntry], our_last: Lsn, theirs: &[HistoryEntry], their_last: Lsn) -> Standing {
    let epoch_at =
        |history: &[HistoryEntry], lsn: Lsn| history.iter().rev().find(|h| h.first_lsn <= lsn).map(|h| h.epoch);
    // The epoch functions are step functions: the first disagreement is at a boundary of either.
    let mut boundaries: Vec<Lsn> = ours.iter().chain(theirs).map(|h| h.first_lsn.max(1)).collect();
    boundaries.push(1);
    boundaries.sort_unstable();
    boundaries.dedup();
    let first_disagreement = boundaries
        .into_iter()
        .filter(|&lsn| lsn <= their_last)
        .find(|&lsn| epoch_at(ours, lsn) != epoch_at(theirs, lsn));
    // What we do not hold (past our last record) is not agreed either.
    let agreed = first_disagreement.map_or(their_last, |lsn| lsn - 1).min(our_last);
    if agreed == their_last {
        Standing::OnHistory { next_lsn: their_last + 1 }
    } else {
        Standing::Diverged { at_lsn: agreed }
    }
}

/// What a primary tells a would-be backup at its hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Continue from `next_lsn`.
    From { next_lsn: Lsn },
    /// Drop everything past `lsn` first, then continue from `lsn + 1`.
    CutAfter { lsn: Lsn },
    /// Its history left ours after `at_lsn`: it must be rejoined.
    Diverged { at_lsn: Lsn },
}

/// What a would-be backup says of itself in its hello, held against our journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupTail {
    pub last_lsn: Lsn,
    /// How far a primary confirmed its records durable: it may have applied up to here.
    pub confirmed_lsn: Lsn,
    /// How many of its records past `confirmed_lsn`, from the first on, are ours (same CRC).
    pub matched: u64,
    /// Whether every record it holds past `confirmed_lsn` is ours.
    pub all_matched: bool,
    /// Whether its history is ours, entry for entry.
    pub same_history: bool,
}

/// Decides the welcome. Records are shipped before the primary's fsync, so a primary that
/// crashed may restart without records its backup holds, and may then write others at those
/// LSNs in the same epoch. What is the same on both sides is everything up to `agreed`: what
/// the backup had confirmed (a primary made it durable, the backup may have applied it), the
/// records past it that we hold too (same CRC, in order), and what it acknowledged to us
/// durably (`acknowledged`, capped at our own durable LSN). Past `agreed` the backup's records
/// were never applied, so dropping them costs nothing, and never acknowledged: an acknowledged
/// record was durable here, so we still hold it and it matched.
pub fn welcome_plan(standing: Standing, tail: BackupTail, acknowledged: Lsn) -> Plan {
    let agreed = tail.confirmed_lsn.saturating_add(tail.matched).max(acknowledged).min(tail.last_lsn);
    match standing {
        Standing::OnHistory { next_lsn } if tail.all_matched || tail.last_lsn <= agreed => Plan::From { next_lsn },
        Standing::OnHistory { .. } => Plan::CutAfter { lsn: agreed },
        // Our own epoch's tail, lost in a crash (or rewritten since): the backup holds more of it.
        Standing::Diverged { at_lsn } if tail.same_history && agreed <= at_lsn => Plan::CutAfter { lsn: agreed },
        Standing::Diverged { at_lsn } => Plan::Diverged { at_lsn },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(entries: &[(Epoch, Lsn, &str)]) -> Vec<HistoryEntry> {
        entries.iter().map(|&(epoch, first_lsn, p)| HistoryEntry { epoch, first_lsn, primary: p.into() }).collect()
    }

    #[test]
    fn standing_follows_the_histories() {
        let one = h(&[(1, 1, "a")]);
        let two = h(&[(1, 1, "a"), (2, 101, "b")]);
        // A lagging backup in the same epoch continues.
        assert_eq!(standing(&one, 500, &one, 120), Standing::OnHistory { next_lsn: 121 });
        // The old primary wrote 101..120 in epoch 1 while b started epoch 2 at 101.
        assert_eq!(standing(&two, 300, &one, 120), Standing::Diverged { at_lsn: 100 });
        // The old primary had shipped everything: nothing to undo.
        assert_eq!(standing(&two, 300, &one, 100), Standing::OnHistory { next_lsn: 101 });
        // A backup that already followed into epoch 2.
        assert_eq!(standing(&two, 300, &two, 250), Standing::OnHistory { next_lsn: 251 });
        // They hold more of our own epoch than we do (we crashed before our fsync: see `welcome_plan`).
        assert_eq!(standing(&one, 90, &one, 100), Standing::Diverged { at_lsn: 90 });
        // An empty node is on every history.
        assert_eq!(standing(&two, 300, &one, 0), Standing::OnHistory { next_lsn: 1 });
    }

    #[test]
    fn a_backup_tail_the_primary_lost_or_rewrote_is_cut_where_both_agree() {
        let tail = |last_lsn, confirmed_lsn, matched, all_matched, same_history| BackupTail {
            last_lsn,
            confirmed_lsn,
            matched,
            all_matched,
            same_history,
        };
        let on = Standing::OnHistory { next_lsn: 101 };
        // A backup that holds only confirmed records continues.
        assert_eq!(welcome_plan(on, tail(100, 100, 0, true, true), 90), Plan::From { next_lsn: 101 });
        // Unconfirmed records that are all ours: continue.
        assert_eq!(welcome_plan(on, tail(100, 80, 20, true, true), 90), Plan::From { next_lsn: 101 });
        // We restarted without some and wrote others at their LSNs: cut after the last one of
        // ours (85), never below what it acknowledged to us (90).
        assert_eq!(welcome_plan(on, tail(100, 80, 5, false, true), 0), Plan::CutAfter { lsn: 85 });
        assert_eq!(welcome_plan(on, tail(100, 80, 5, false, true), 90), Plan::CutAfter { lsn: 90 });
        // We restarted holding less of our own epoch (97): its records up to 97 that we hold
        // stay (one of them may be an acknowledged commit), the rest goes.
        let behind = Standing::Diverged { at_lsn: 97 };
        assert_eq!(welcome_plan(behind, tail(100, 90, 7, false, true), 0), Plan::CutAfter { lsn: 97 });
        assert_eq!(welcome_plan(behind, tail(100, 95, 0, false, true), 0), Plan::CutAfter { lsn: 95 });
        // It applied past what we hold, or its history is another: a real divergence.
        assert_eq!(welcome_plan(behind, tail(100, 99, 0, false, true), 0), Plan::Diverged { at_lsn: 97 });
        assert_eq!(welcome_plan(behind, tail(100, 95, 0, false, false), 0), Plan::Diverged { at_lsn: 97 });
    }

    #[tokio::test]
    async fn frames_round_trip_and_bad_frames_are_refused() {
        let envelope = Envelope {
            from: "a".into(),
            epoch: 3,
            message: Message::Ack { received_lsn: 5, durable_lsn: 4, applied_lsn: 3, digest: Digest(9) },
        };
        let pairs = vec![(b"k".to_vec(), b"value".to_vec()), (Vec::new(), vec![0u8; 3])];
        assert_eq!(decode_pairs(&encode_pairs(&pairs)).unwrap(), pairs);
        assert!(decode_pairs(&encode_pairs(&pairs)[..7]).is_err());
        for frame in
            [Frame::Message(envelope), Frame::Records { durable: 7, frames: vec![1, 2, 3] }, Frame::Copy(vec![4, 5])]
        {
            let bytes = encode_frame(&frame);
            let mut reader = &bytes[..];
            assert_eq!(read_frame(&mut reader).await.unwrap(), Some(frame));
            assert_eq!(read_frame(&mut reader).await.unwrap(), None);
        }
        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert!(matches!(read_frame(&mut &huge[..]).await, Err(WireError::Invalid(_))));
        let unknown = [1u8, 0, 0, 0, 9];
        assert!(matches!(read_frame(&mut &unknown[..]).await, Err(WireError::Invalid(_))));
        let short_records = [3u8, 0, 0, 0, 2, 5, 6];
        assert!(matches!(read_frame(&mut &short_records[..]).await, Err(WireError::Invalid(_))));
        let bad_json = [3u8, 0, 0, 0, 1, b'{', b'x'];
        assert!(matches!(read_frame(&mut &bad_json[..]).await, Err(WireError::Invalid(_))));
    }
}
