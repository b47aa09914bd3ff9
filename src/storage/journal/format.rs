//! The on-disk format of journal segments, byte by byte. No I/O here: only encoding and decoding.
//!
//! `journals/README.md` is the specification; this file implements it and the golden files in
//! `journals/golden/` pin it. Every integer is little-endian. Any change to the layout bumps
//! [`FORMAT_VERSION`]; a segment of another version is refused with a message naming both.
//!
//! ## Segment header ([`SEGMENT_HEADER_LEN`] = 128 bytes)
//! ```text
//! offset size field
//!      0    8 magic "HOTPAIRJ"
//!      8    2 format version (1)
//!     10    1 journal kind: 1 = local, 2 = remote
//!     11    1 node name length N (1..=64)
//!     12   16 cluster id (UUID bytes)
//!     28    8 first LSN: the LSN the segment's first record has (or will have)
//!     36    8 epoch when the segment was created
//!     44    8 creation time, ms since the Unix epoch
//!     52   64 node name, UTF-8, zero-padded
//!    116    8 reserved, zero
//!    124    4 CRC32C of bytes 0..124
//! ```
//! ## Record frame
//! ```text
//!      0    4 body length L (u32), [MIN_BODY_LEN, MAX_RECORD_BODY]
//!      4    4 CRC32C of (the 4 length bytes ‖ body)
//!      8    L body
//! body:
//!      0    1 kind: 1 txn, 2 epoch-start, 3 canary, 4 checkpoint, 5 txn with commands
//!      1    8 LSN
//!      9    8 epoch
//!     17    8 timestamp, ms since the Unix epoch
//!     25   16 digest after the record (u128)
//!     41    … payload of the kind:
//!   txn:         u32 op count, then per op: u8 flags (bit 0 before-image present, bit 1
//!                after-image present), u32 key length, key, [u32 length, before], [u32 length, after]
//!   txn with commands: u32 command count, then per command: u32 argument count, then per
//!                argument u32 length and bytes; then the txn payload above
//!   epoch-start: u32 entry count, then per entry: u64 epoch, u64 first LSN, u8 name length, name
//!   canary:      u64 sequence
//!   checkpoint:  u64 key count
//! ```
//! The payload must be consumed exactly: trailing bytes make a record invalid.

use super::record::{Epoch, HistoryEntry, Lsn, Op, Record, RecordBody};
use crate::storage::digest::Digest;

pub const MAGIC: [u8; 8] = *b"HOTPAIRJ";
pub const FORMAT_VERSION: u16 = 1;
pub const SEGMENT_HEADER_LEN: usize = 128;
/// Length + CRC in front of every record body.
pub const FRAME_HEADER_LEN: usize = 8;
/// Kind, LSN, epoch, timestamp and digest: the part of the body every record has.
pub const MIN_BODY_LEN: usize = 41;
/// The largest record body accepted, written or read. A bigger transaction is refused at append
/// with [`super::JournalError::RecordTooLarge`]; a bigger length read from disk marks damage.
pub const MAX_RECORD_BODY: usize = 64 * 1024 * 1024;
/// Longest node name a segment header can hold.
pub const MAX_NODE_NAME: usize = 64;

const KIND_TXN: u8 = 1;
const KIND_EPOCH_START: u8 = 2;
const KIND_CANARY: u8 = 3;
const KIND_CHECKPOINT: u8 = 4;
/// A txn that also carries the client commands behind it (added after version 1's first four
/// kinds; a txn without commands is still written as kind 1, byte for byte as before).
const KIND_TXN_COMMANDS: u8 = 5;
const FLAG_BEFORE: u8 = 1;
const FLAG_AFTER: u8 = 2;

/// Whether a journal holds the records this node wrote, or a copy of its peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalKind {
    Local,
    Remote,
}

impl JournalKind {
    fn to_byte(self) -> u8 {
        match self {
            JournalKind::Local => 1,
            JournalKind::Remote => 2,
        }
    }

    fn from_byte(byte: u8) -> Option<JournalKind> {
        match byte {
            1 => Some(JournalKind::Local),
            2 => Some(JournalKind::Remote),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            JournalKind::Local => "local",
            JournalKind::Remote => "remote",
        }
    }
}

/// The identifying header at the start of every segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    pub kind: JournalKind,
    pub cluster: [u8; 16],
    pub node: String,
    pub first_lsn: Lsn,
    pub epoch: Epoch,
    pub created_ms: u64,
}

/// Why bytes could not be decoded. `Incomplete` is not damage by itself: more bytes may follow
/// (on the wire) or the writer may have been cut off (a torn tail on disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Incomplete,
    Invalid(String),
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[10] = self.kind.to_byte();
        let name = self.node.as_bytes();
        // Invariant: node names are validated to 1..=64 bytes before a journal is opened.
        let name_len = name.len().min(MAX_NODE_NAME);
        out[11] = name_len as u8;
        out[12..28].copy_from_slice(&self.cluster);
        out[28..36].copy_from_slice(&self.first_lsn.to_le_bytes());
        out[36..44].copy_from_slice(&self.epoch.to_le_bytes());
        out[44..52].copy_from_slice(&self.created_ms.to_le_bytes());
        out[52..52 + name_len].copy_from_slice(&name[..name_len]);
        let crc = crc32c::crc32c(&out[..124]);
        out[124..128].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, DecodeError> {
        if bytes.len() < SEGMENT_HEADER_LEN {
            return Err(DecodeError::Incomplete);
        }
        if bytes[0..8] != MAGIC {
            return Err(DecodeError::Invalid("not a hotpair journal segment (bad magic)".into()));
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != FORMAT_VERSION {
            return Err(DecodeError::Invalid(format!(
                "segment format version {version}; this build reads version {FORMAT_VERSION}"
            )));
        }
        let stored_crc = u32_at(bytes, 124);
        if crc32c::crc32c(&bytes[..124]) != stored_crc {
            return Err(DecodeError::Invalid("segment header CRC mismatch".into()));
        }
        let kind = JournalKind::from_byte(bytes[10])
            .ok_or_else(|| DecodeError::Invalid(format!("unknown journal kind {}", bytes[10])))?;
        let name_len = bytes[11] as usize;
        if name_len == 0 || name_len > MAX_NODE_NAME {
            return Err(DecodeError::Invalid(format!("node name length {name_len} out of range")));
        }
        let node = std::str::from_utf8(&bytes[52..52 + name_len])
            .map_err(|_| DecodeError::Invalid("node name is not UTF-8".into()))?
            .to_string();
        let mut cluster = [0u8; 16];
        cluster.copy_from_slice(&bytes[12..28]);
        Ok(SegmentHeader {
            kind,
            cluster,
            node,
            first_lsn: u64_at(bytes, 28),
            epoch: u64_at(bytes, 36),
            created_ms: u64_at(bytes, 44),
        })
    }
}

/// The size a record will take on disk, frame included, without encoding it.
pub fn encoded_len(record: &Record) -> usize {
    FRAME_HEADER_LEN + MIN_BODY_LEN + payload_len(&record.body)
}

fn payload_len(body: &RecordBody) -> usize {
    match body {
        RecordBody::Txn { ops, commands } => {
            commands_len(commands)
                + 4
                + ops
                    .iter()
                    .map(|op| {
                        1 + 4
                            + op.key.len()
                            + op.before.as_ref().map_or(0, |v| 4 + v.len())
                            + op.after.as_ref().map_or(0, |v| 4 + v.len())
                    })
                    .sum::<usize>()
        }
        RecordBody::EpochStart { history } => 4 + history.iter().map(|h| 8 + 8 + 1 + h.primary.len()).sum::<usize>(),
        RecordBody::Canary { .. } | RecordBody::Checkpoint { .. } => 8,
    }
}

/// Bytes the command list of a kind-5 txn takes (none for a txn without commands).
fn commands_len(commands: &[super::record::ClientCommand]) -> usize {
    if commands.is_empty() {
        return 0;
    }
    4 + commands.iter().map(|args| 4 + args.iter().map(|arg| 4 + arg.len()).sum::<usize>()).sum::<usize>()
}

/// Appends the framed record to `out`. The caller checks the size limit first
/// (see [`encoded_len`]); names in histories are at most 255 bytes by construction.
pub fn encode_record(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    let (kind, _) = kind_byte(&record.body);
    out.push(kind);
    out.extend_from_slice(&record.lsn.to_le_bytes());
    out.extend_from_slice(&record.epoch.to_le_bytes());
    out.extend_from_slice(&record.timestamp_ms.to_le_bytes());
    out.extend_from_slice(&record.digest_after.to_le_bytes());
    match &record.body {
        RecordBody::Txn { ops, commands } => {
            if !commands.is_empty() {
                put_u32(out, commands.len() as u32);
                for args in commands {
                    put_u32(out, args.len() as u32);
                    for arg in args {
                        put_bytes(out, arg);
                    }
                }
            }
            put_u32(out, ops.len() as u32);
            for op in ops {
                let flags =
                    if op.before.is_some() { FLAG_BEFORE } else { 0 } | if op.after.is_some() { FLAG_AFTER } else { 0 };
                out.push(flags);
                put_bytes(out, &op.key);
                if let Some(before) = &op.before {
                    put_bytes(out, before);
                }
                if let Some(after) = &op.after {
                    put_bytes(out, after);
                }
            }
        }
        RecordBody::EpochStart { history } => {
            put_u32(out, history.len() as u32);
            for entry in history {
                out.extend_from_slice(&entry.epoch.to_le_bytes());
                out.extend_from_slice(&entry.first_lsn.to_le_bytes());
                let name = entry.primary.as_bytes();
                out.push(name.len().min(255) as u8);
                out.extend_from_slice(&name[..name.len().min(255)]);
            }
        }
        RecordBody::Canary { sequence } => out.extend_from_slice(&sequence.to_le_bytes()),
        RecordBody::Checkpoint { key_count } => out.extend_from_slice(&key_count.to_le_bytes()),
    }
    let body_len = (out.len() - start - FRAME_HEADER_LEN) as u32;
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    let crc = record_crc(&out[start..start + 4], &out[start + FRAME_HEADER_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn kind_byte(body: &RecordBody) -> (u8, &'static str) {
    match body {
        RecordBody::Txn { commands, .. } if !commands.is_empty() => (KIND_TXN_COMMANDS, "txn"),
        RecordBody::Txn { .. } => (KIND_TXN, "txn"),
        RecordBody::EpochStart { .. } => (KIND_EPOCH_START, "epoch-start"),
        RecordBody::Canary { .. } => (KIND_CANARY, "canary"),
        RecordBody::Checkpoint { .. } => (KIND_CHECKPOINT, "checkpoint"),
    }
}

fn record_crc(len_bytes: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len_bytes), body)
}

/// Checks the frame at the start of `bytes` and returns the whole frame's length.
/// `Incomplete` means `bytes` ends inside the frame; `Invalid` means the frame is damaged.
pub fn check_frame(bytes: &[u8]) -> Result<usize, DecodeError> {
    if bytes.len() < FRAME_HEADER_LEN {
        return Err(DecodeError::Incomplete);
    }
    let body_len = u32_at(bytes, 0) as usize;
    if !(MIN_BODY_LEN..=MAX_RECORD_BODY).contains(&body_len) {
        return Err(DecodeError::Invalid(format!(
            "record length {body_len} outside {MIN_BODY_LEN}..={MAX_RECORD_BODY}"
        )));
    }
    let total = FRAME_HEADER_LEN + body_len;
    if bytes.len() < total {
        return Err(DecodeError::Incomplete);
    }
    let stored_crc = u32_at(bytes, 4);
    if record_crc(&bytes[0..4], &bytes[FRAME_HEADER_LEN..total]) != stored_crc {
        return Err(DecodeError::Invalid("record CRC mismatch".into()));
    }
    Ok(total)
}

/// The CRC32C a record frame carries (bytes 4..8), without checking it.
pub fn frame_crc(frame: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(frame.get(4..8)?.try_into().ok()?))
}

/// The LSN of a framed record, read without checking the CRC (used to resynchronise while
/// telling a torn tail from damage in the middle of a segment).
pub fn peek_lsn(frame: &[u8]) -> Option<Lsn> {
    if frame.len() < FRAME_HEADER_LEN + 9 {
        return None;
    }
    Some(u64_at(frame, FRAME_HEADER_LEN + 1))
}

/// Decodes one framed record from the start of `bytes`; returns it and the bytes it used.
pub fn decode_record(bytes: &[u8]) -> Result<(Record, usize), DecodeError> {
    let total = check_frame(bytes)?;
    let record = decode_body(&bytes[FRAME_HEADER_LEN..total]).map_err(DecodeError::Invalid)?;
    Ok((record, total))
}

fn decode_body(body: &[u8]) -> Result<Record, String> {
    let mut cur = Cursor { bytes: body, pos: 0 };
    let kind = cur.u8()?;
    let lsn = cur.u64()?;
    let epoch = cur.u64()?;
    let timestamp_ms = cur.u64()?;
    let digest_after = Digest::from_le_bytes(cur.array16()?);
    let body = match kind {
        KIND_TXN | KIND_TXN_COMMANDS => {
            let commands = if kind == KIND_TXN_COMMANDS { decode_commands(&mut cur)? } else { Vec::new() };
            let count = cur.u32()? as usize;
            // Each op takes at least 5 bytes: refuse a count the body cannot hold before allocating.
            if count > cur.remaining() / 5 {
                return Err(format!("txn claims {count} ops, more than its body can hold"));
            }
            let mut ops = Vec::with_capacity(count);
            for _ in 0..count {
                let flags = cur.u8()?;
                if flags & !(FLAG_BEFORE | FLAG_AFTER) != 0 {
                    return Err(format!("unknown op flags {flags:#04x}"));
                }
                let key = cur.bytes()?;
                let before = (flags & FLAG_BEFORE != 0).then(|| cur.bytes()).transpose()?;
                let after = (flags & FLAG_AFTER != 0).then(|| cur.bytes()).transpose()?;
                ops.push(Op { key, before, after });
            }
            RecordBody::Txn { ops, commands }
        }
        KIND_EPOCH_START => {
            let count = cur.u32()? as usize;
            if count > cur.remaining() / 17 {
                return Err(format!("epoch-start claims {count} entries, more than its body can hold"));
            }
            let mut history = Vec::with_capacity(count);
            for _ in 0..count {
                let epoch = cur.u64()?;
                let first_lsn = cur.u64()?;
                let name_len = cur.u8()? as usize;
                let name = cur.take(name_len)?;
                let primary =
                    String::from_utf8(name.to_vec()).map_err(|_| "history node name is not UTF-8".to_string())?;
                history.push(HistoryEntry { epoch, first_lsn, primary });
            }
            RecordBody::EpochStart { history }
        }
        KIND_CANARY => RecordBody::Canary { sequence: cur.u64()? },
        KIND_CHECKPOINT => RecordBody::Checkpoint { key_count: cur.u64()? },
        other => return Err(format!("unknown record kind {other}")),
    };
    if cur.remaining() != 0 {
        return Err(format!("{} unexpected bytes after the payload", cur.remaining()));
    }
    Ok(Record { lsn, epoch, timestamp_ms, digest_after, body })
}

/// The command list of a kind-5 txn. An empty list is refused: such a txn is written as kind 1.
fn decode_commands(cur: &mut Cursor<'_>) -> Result<Vec<super::record::ClientCommand>, String> {
    let count = cur.u32()? as usize;
    if count == 0 || count > cur.remaining() / 4 {
        return Err(format!("txn claims {count} client commands, which its body cannot hold"));
    }
    let mut commands = Vec::with_capacity(count);
    for _ in 0..count {
        let args = cur.u32()? as usize;
        if args > cur.remaining() / 4 {
            return Err(format!("client command claims {args} arguments, more than its body can hold"));
        }
        commands.push((0..args).map(|_| cur.bytes()).collect::<Result<Vec<_>, _>>()?);
    }
    Ok(commands)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.remaining() < n {
            return Err(format!("field of {n} bytes at body offset {} runs past the end of the record", self.pos));
        }
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32_at(self.take(4)?, 0))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64_at(self.take(8)?, 0))
    }

    fn array16(&mut self) -> Result<[u8; 16], String> {
        let mut out = [0u8; 16];
        out.copy_from_slice(self.take(16)?);
        Ok(out)
    }

    fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    fn arb_body() -> impl Strategy<Value = RecordBody> {
        let op = (arb_bytes(16), proptest::option::of(arb_bytes(32)), proptest::option::of(arb_bytes(32)))
            .prop_map(|(key, before, after)| Op { key, before, after });
        let entry = (any::<u64>(), any::<u64>(), "[a-z0-9-]{1,20}")
            .prop_map(|(epoch, first_lsn, primary)| HistoryEntry { epoch, first_lsn, primary });
        prop_oneof![
            (
                proptest::collection::vec(op, 0..8),
                proptest::collection::vec(proptest::collection::vec(arb_bytes(8), 0..4), 0..3)
            )
                .prop_map(|(ops, commands)| RecordBody::Txn { ops, commands }),
            proptest::collection::vec(entry, 0..4).prop_map(|history| RecordBody::EpochStart { history }),
            any::<u64>().prop_map(|sequence| RecordBody::Canary { sequence }),
            any::<u64>().prop_map(|key_count| RecordBody::Checkpoint { key_count }),
        ]
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u128>(), arb_body()).prop_map(
            |(lsn, epoch, timestamp_ms, digest, body)| Record {
                lsn,
                epoch,
                timestamp_ms,
                digest_after: Digest(digest),
                body,
            },
        )
    }

    proptest! {
        #[test]
        fn record_round_trips(record in arb_record()) {
            let mut bytes = Vec::new();
            encode_record(&record, &mut bytes);
            prop_assert_eq!(bytes.len(), encoded_len(&record));
            let (decoded, used) = decode_record(&bytes).unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(decoded, record);
        }

        #[test]
        fn every_prefix_is_incomplete(record in arb_record()) {
            let mut bytes = Vec::new();
            encode_record(&record, &mut bytes);
            for cut in 0..bytes.len() {
                prop_assert_eq!(decode_record(&bytes[..cut]).unwrap_err(), DecodeError::Incomplete);
            }
        }

        #[test]
        fn any_flipped_bit_is_detected(record in arb_record(), bit in any::<prop::sample::Index>()) {
            let mut bytes = Vec::new();
            encode_record(&record, &mut bytes);
            let bit = bit.index(bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            // A flip in the length field may also make the frame look incomplete; either way it
            // never decodes to a record.
            prop_assert!(decode_record(&bytes).is_err());
        }

        #[test]
        fn header_round_trips(first_lsn in any::<u64>(), epoch in any::<u64>(), created_ms in any::<u64>(),
                              cluster in any::<[u8; 16]>(), node in "[a-z0-9_-]{1,64}", remote in any::<bool>()) {
            let header = SegmentHeader {
                kind: if remote { JournalKind::Remote } else { JournalKind::Local },
                cluster, node, first_lsn, epoch, created_ms,
            };
            prop_assert_eq!(SegmentHeader::decode(&header.encode()).unwrap(), header);
        }
    }

    #[test]
    fn other_version_is_refused_by_name() {
        let header = SegmentHeader {
            kind: JournalKind::Local,
            cluster: [7; 16],
            node: "a".into(),
            first_lsn: 1,
            epoch: 1,
            created_ms: 0,
        };
        let mut bytes = header.encode();
        bytes[8] = 2;
        match SegmentHeader::decode(&bytes) {
            Err(DecodeError::Invalid(msg)) => assert!(msg.contains("version 2"), "{msg}"),
            other => panic!("expected a version error, got {other:?}"),
        }
    }
}
