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
//! `replication`, "Overlapped fsyncs"), then the sender's last LSN (u64 LE: how far the primary
//! has got, which a failover's estimate of what was never received is made from), followed by
//! journal record frames back to back, exactly as they lie in the sender's journal
//! (`journals/README.md`); the receiver checks each one's CRC and LSN before it keeps it.
//! A JSON envelope is `{"from": node, "epoch": n, "type": …, …}`: every message says who sent it
//! and in which epoch, so a stale sender is recognised whatever it says.
//!
//! ## Limits
//! A frame longer than [`MAX_FRAME`] or of an unknown type ends the connection with
//! [`WireError::Invalid`]; nothing of it is read into memory first.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use uuid::Uuid;

use crate::storage::digest::Digest;
use crate::storage::journal::{Epoch, HistoryEntry, Lsn, MAX_RECORD_BODY};
use crate::storage::meta::Role;

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
    /// Journal record frames back to back, how far the sender has made its journal durable,
    /// and the last LSN it has appended.
    Records {
        durable: Lsn,
        head: Lsn,
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
        /// [`crate::engine::PROTOCOL_VERSION`]; a hello without it comes from a build before
        /// the protocol was versioned (1), so the refusal can name both versions.
        #[serde(default = "unversioned")]
        protocol: u32,
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
        /// The SHA-256 of the pair file the sender runs (`config-drift` when it differs).
        #[serde(default)]
        config_digest: Option<String>,
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
        /// The SHA-256 of the pair file the primary runs.
        #[serde(default)]
        config_digest: Option<String>,
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
        /// To a probe: the primary of the answering node's epoch, while the answering node
        /// takes writes in it (two promotions that claimed one epoch are told apart by it).
        leader: Option<String>,
    },
    /// The backup's progress: received (in memory), durable (remote journal fsynced), applied.
    Ack { received_lsn: Lsn, durable_lsn: Lsn, applied_lsn: Lsn, digest: Digest },
    /// Liveness both ways; a gap in `seq` means lost messages. `last_lsn` is the primary's
    /// durable LSN (the backup's received one); `head_lsn` the last LSN the sender appended.
    /// From a backup, `echo_ms` is the `time_ms` of the last heartbeat it received from the
    /// primary (0: none yet): the primary's witness failsafe counts from when it sent that one,
    /// by its monotonic clock (it looks the value up among the heartbeats it sent,
    /// `replication::echo`).
    Heartbeat {
        seq: u64,
        time_ms: u64,
        last_lsn: Lsn,
        head_lsn: Lsn,
        #[serde(default)]
        echo_ms: u64,
    },
    /// First message of a full-copy connection (instead of a hello): send me your store — or,
    /// with `resume`, the rest of a copy that was cut off (`node::copy`).
    CopyRequest {
        cluster: Uuid,
        incarnation: Uuid,
        #[serde(default)]
        resume: Option<CopyResume>,
    },
    /// The copy begins: pairs in key order ([`Frame::Copy`]) read from the store while it
    /// moves on from `position` (its applied LSN, and its key count for progress), then the
    /// records after that LSN ([`Frame::Records`]) to redo over them.
    CopyBegin { position: crate::storage::store::Position, history: Vec<HistoryEntry> },
    /// The copy is complete: `pairs` pairs were sent, and the records up to `position` (the
    /// sender's store when its scan ended, with its digest and key count, which the copy must
    /// then have). `None` from a sender that predates redo records: its copy was the store
    /// at `CopyBegin`'s position.
    CopyEnd {
        pairs: u64,
        #[serde(default)]
        position: Option<crate::storage::store::Position>,
    },
    /// An admin request (the CLI is the sender).
    Admin { request: AdminRequest },
    /// The answer to an admin request.
    AdminReply { ok: bool, body: serde_json::Value },
}

/// Where a cut-off full copy resumes (see [`Message::CopyRequest`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyResume {
    /// The first copy's start: the records after it must still be in the sender's journal.
    pub from_lsn: Lsn,
    /// Go on scanning after this key; `None` when the scan is over (only records are needed).
    pub after_key: Option<Vec<u8>>,
    /// The records up to here are already redone.
    pub redo_lsn: Lsn,
}

/// What the admin CLI (and the orchestrator in it) may ask of a node. The orchestration
/// primitives carry the id of the run (`op_id`) and the epoch the orchestrator saw the node in:
/// a node whose epoch moved on refuses them, so a stale orchestrator changes nothing. Read
/// strictly: an unknown field, or a missing one (optional values are sent as `null`), is a bad
/// request. Each has its reply struct in [`crate::admin::protocol`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
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
        #[serde(deserialize_with = "crate::admin::protocol::required")]
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
        #[serde(deserialize_with = "crate::admin::protocol::required")]
        progress: Option<serde_json::Value>,
    },
    /// Take `incarnation` as the peer's from now on: its data directory was rebuilt
    /// (`hotpair reinit`) and the admin asked for it (`rejoin --allow-full-copy`).
    AcceptPeer {
        incarnation: Uuid,
    },
    /// `hotpair reload`: re-read the pair file the node was started with; `apply` swaps it in
    /// if `expect_digest` (the check's) is still its digest. `peer_digest`: the digest the
    /// peer runs after its own apply (what the `config-drift` check compares with).
    Reload {
        apply: bool,
        #[serde(deserialize_with = "crate::admin::protocol::required")]
        expect_digest: Option<String>,
        #[serde(deserialize_with = "crate::admin::protocol::required")]
        peer_digest: Option<String>,
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

fn unversioned() -> u32 {
    1
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames. A stream that ends
/// inside a frame, even inside its length, is an `UnexpectedEof` error, not a clean end.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Frame>, WireError> {
    let mut len_bytes = [0u8; 4];
    let mut filled = 0;
    while filled < len_bytes.len() {
        let read = match reader.read(&mut len_bytes[filled..]).await {
            // Between frames, a TLS peer that closes its socket without a close_notify (a CLI
            // that exits) has ended cleanly: frames delimit themselves, so nothing is cut.
            Err(e) if filled == 0 && e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            other => other?,
        };
        match read {
            0 if filled == 0 => return Ok(None),
            0 => {
                let cut =
                    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "stream ended inside a frame's length");
                return Err(cut.into());
            }
            read => filled += read,
        }
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
            let number =
                |at: usize| {
                    payload.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).ok_or_else(|| {
                        WireError::Invalid("records batch shorter than its durable and last LSNs".into())
                    })
                };
            let (durable, head) = (number(1)?, number(9)?);
            payload.drain(..17);
            Ok(Some(Frame::Records { durable, head, frames: payload }))
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
        Frame::Records { durable, head, frames } => {
            (TYPE_RECORDS, [&durable.to_le_bytes()[..], &head.to_le_bytes()[..], frames].concat())
        }
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

// The history comparisons are decisions: they live in the engine, and the wire keeps its names.
pub use crate::engine::history::{standing, welcome_plan, BackupTail, Plan, Standing};

#[cfg(test)]
mod tests {
    use super::*;

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
        for frame in [
            Frame::Message(envelope),
            Frame::Records { durable: 7, head: 9, frames: vec![1, 2, 3] },
            Frame::Copy(vec![4, 5]),
        ] {
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
