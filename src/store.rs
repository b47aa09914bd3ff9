//! The store: the node's key space in sled, always consistent with one applied LSN.
//!
//! ## Job
//! Applies journal records forward (after-images) and backward (before-images), keeping three
//! facts in the same atomic sled batch as the data: the applied LSN, the digest of the whole key
//! space, and the key count. After a crash sled recovers to some whole batch, so the store is at
//! *some* applied LSN with a matching digest, and the node replays the journal from there.
//!
//! ## Invariants
//! - `apply` takes records in LSN order with no gap; a record at or below the applied LSN is
//!   a no-op (applying twice changes nothing).
//! - `apply_many` ends where `apply` of the same records one by one ends, in one batch; it
//!   writes nothing of a record whose digest disagrees, nor of anything after it.
//! - `rewind` takes exactly the last applied record and leaves the store as it was before it.
//! - `position` never waits for a writer: it reads the position of the last batch sled accepted.
//! - The kept digest always equals [`Store::full_digest`]: both are computed from the values
//!   actually stored (not from the images in the record), so a store that diverged from its
//!   primary shows it at the next digest comparison instead of hiding it.
//!
//! ## Layout in sled
//! One tree. Data keys are stored as `b'd' ‖ key`; bookkeeping as `b'm' ‖ name`
//! (`applied_lsn`, `digest`, `key_count`, `expiring`, all little-endian). One tree means one `apply_batch`,
//! which sled makes atomic.
//!
//! The journal, not sled, provides durability: `apply` does not flush. `flush` is called at
//! checkpoints and at shutdown.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};

use crate::digest::Digest;
use crate::journal::{Lsn, Op, Record, RecordBody};

/// A client key and its stored bytes (see [`crate::value`]).
pub type StoredPair = (Vec<u8>, Vec<u8>);

const DATA_PREFIX: u8 = b'd';
const META_APPLIED_LSN: &[u8] = b"mapplied_lsn";
const META_DIGEST: &[u8] = b"mdigest";
const META_KEY_COUNT: &[u8] = b"mkey_count";
/// Keys with an expiry and the sum of their deadlines (u64 count ‖ u128 sum of ms), for
/// `INFO keyspace`. A store written before it existed gets it by one scan at open.
const META_EXPIRING: &[u8] = b"mexpiring";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {} failed: {source}", path.display())]
    Sled { path: PathBuf, source: sled::Error },
    #[error("store is at LSN {applied}; record {got} would leave a gap")]
    Gap { applied: Lsn, got: Lsn },
    #[error("can only rewind the last applied record (LSN {applied}), not LSN {got}")]
    RewindOrder { applied: Lsn, got: Lsn },
    #[error("store {} bookkeeping key {key} is damaged", path.display())]
    BadMeta { path: PathBuf, key: String },
}

/// An intended write: the key and its new value (`None` deletes it).
pub type KeyWrite = (Vec<u8>, Option<Vec<u8>>);

/// Where the store stands: everything up to `applied_lsn` is in, and `digest` covers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub applied_lsn: Lsn,
    pub digest: Digest,
    pub key_count: u64,
}

/// What `apply` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The record was applied; `digest_matches` says whether our digest equals the record's.
    Done { digest: Digest, digest_matches: bool },
    /// The record was at or below the applied LSN: nothing changed.
    AlreadyApplied,
}

/// What `apply_many` did with a run of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppliedRun {
    /// Where the store stands after the run (unchanged if nothing was applied).
    pub position: Position,
    /// Records written by this call (records at or below the applied LSN are not counted).
    pub applied: usize,
    /// The first record whose `digest_after` differs from the digest the store would have after
    /// it. That record and every record after it were *not* applied.
    pub mismatch: Option<DigestMismatch>,
}

/// A record whose digest disagrees with the store's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestMismatch {
    pub lsn: Lsn,
    /// The digest the store would have had after the record.
    pub store: Digest,
    /// The digest the record says the key space has after it.
    pub record: Digest,
}

pub struct Store {
    path: PathBuf,
    db: sled::Db,
    /// Serialises writers (held across `apply_batch`, which can block). Only writers take it.
    writer: Mutex<Position>,
    /// The position of the last batch sled accepted, for readers. Written by a writer, after its
    /// batch, while it holds `writer`; held by anyone only long enough to copy a `Position`, so
    /// a reader never waits on sled (an async task may call `position()`).
    published: RwLock<Position>,
    /// Keys with an expiry (expired or not) and the sum of their deadlines, as of the last
    /// batch; written with the batch, under `writer`.
    expiring: RwLock<Expiring>,
}

/// How many stored keys carry an expiry, and the sum of their deadlines in ms (`INFO
/// keyspace`'s `expires` and `avg_ttl`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expiring {
    pub keys: u64,
    pub deadline_sum_ms: u128,
}

impl Expiring {
    /// After `key` changes from `before` to `after` (stored bytes).
    fn updated(mut self, before: Option<&[u8]>, after: Option<&[u8]>) -> Expiring {
        if let Some(at) = before.and_then(crate::value::expiry_of) {
            self.keys = self.keys.saturating_sub(1);
            self.deadline_sum_ms = self.deadline_sum_ms.saturating_sub(u128::from(at));
        }
        if let Some(at) = after.and_then(crate::value::expiry_of) {
            self.keys += 1;
            self.deadline_sum_ms += u128::from(at);
        }
        self
    }

    fn to_bytes(self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.keys.to_le_bytes());
        out[8..].copy_from_slice(&self.deadline_sum_ms.to_le_bytes());
        out
    }

    fn from_bytes(bytes: &[u8]) -> Option<Expiring> {
        let keys = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let deadline_sum_ms = u128::from_le_bytes(bytes.get(8..24)?.try_into().ok()?);
        (bytes.len() == 24).then_some(Expiring { keys, deadline_sum_ms })
    }
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .open()
            .map_err(|source| StoreError::Sled { path: path.to_path_buf(), source })?;
        let empty = Position { applied_lsn: 0, digest: Digest::EMPTY, key_count: 0 };
        let store = Store {
            path: path.to_path_buf(),
            db,
            writer: Mutex::new(empty),
            published: RwLock::new(empty),
            expiring: RwLock::new(Expiring::default()),
        };
        let position = Position {
            applied_lsn: store.meta_u64(META_APPLIED_LSN)?,
            digest: store.meta_digest()?,
            key_count: store.meta_u64(META_KEY_COUNT)?,
        };
        store.publish(&mut store.lock_writer(), position);
        let expiring = match store.db.get(META_EXPIRING).map_err(|e| store.err(e))? {
            Some(bytes) => Expiring::from_bytes(&bytes).ok_or_else(|| store.bad_meta(META_EXPIRING))?,
            None => {
                let counted = store.count_expiring()?;
                store.db.insert(META_EXPIRING, &counted.to_bytes()).map_err(|e| store.err(e))?;
                counted
            }
        };
        *store.expiring.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = expiring;
        Ok(store)
    }

    /// Keys with an expiry and the sum of their deadlines, as of the last batch.
    pub fn expiring(&self) -> Expiring {
        *self.expiring.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts the keys with an expiry by scanning every stored value.
    fn count_expiring(&self) -> Result<Expiring, StoreError> {
        let mut counted = Expiring::default();
        for item in self.db.scan_prefix([DATA_PREFIX]) {
            let (_, value) = item.map_err(|e| self.err(e))?;
            counted = counted.updated(None, Some(&value));
        }
        Ok(counted)
    }

    fn set_expiring(&self, expiring: Expiring) {
        *self.expiring.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = expiring;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the store stands: a consistent triple that a whole sled batch wrote. Never waits
    /// for a writer, so it is safe to call from an async task while sled is slow (or stuck).
    /// While a batch is being written this is still the position before it.
    pub fn position(&self) -> Position {
        *self.published.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(data_key(key)).map_err(|e| self.err(e))?.map(|v| v.to_vec()))
    }

    /// Turns intended writes (`None` = delete) into ops with before-images, and the digest the
    /// store will have after them. For the primary's commit path: the caller must be the only
    /// writer between `prepare` and `apply` of the resulting record.
    pub fn prepare(&self, writes: Vec<KeyWrite>) -> Result<(Vec<Op>, Digest), StoreError> {
        let mut digest = self.position().digest;
        let mut overlay: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        let mut ops = Vec::with_capacity(writes.len());
        for (key, after) in writes {
            let before = match overlay.get(&key) {
                Some(value) => value.clone(),
                None => self.get(&key)?,
            };
            digest = digest.updated(&key, before.as_deref(), after.as_deref());
            overlay.insert(key.clone(), after.clone());
            ops.push(Op { key, before, after });
        }
        Ok((ops, digest))
    }

    /// Applies a record (idempotent; see the module invariants).
    pub fn apply(&self, record: &Record) -> Result<Applied, StoreError> {
        let mut position = self.lock_writer();
        if record.lsn <= position.applied_lsn {
            return Ok(Applied::AlreadyApplied);
        }
        if record.lsn != position.applied_lsn + 1 {
            return Err(StoreError::Gap { applied: position.applied_lsn, got: record.lsn });
        }
        let changes = match &record.body {
            RecordBody::Txn { ops, .. } => ops.iter().map(|op| (op.key.as_slice(), op.after.as_deref())).collect(),
            _ => Vec::new(),
        };
        let next = self.write_changes(&position, &changes, record.lsn)?;
        self.publish(&mut position, next);
        Ok(Applied::Done { digest: next.digest, digest_matches: next.digest == record.digest_after })
    }

    /// Applies a run of records in LSN order in **one** sled batch: the ops of every record in
    /// order, then the bookkeeping of the last one. Much cheaper than `apply` per record when
    /// catching up (one `apply_batch`, one bookkeeping write, for the whole run).
    ///
    /// - Records at or below the applied LSN are skipped (idempotent, as `apply`).
    /// - The rest must follow the applied LSN without a gap; otherwise nothing is written and the
    ///   error names the first gap.
    /// - The digest is checked after *each* record, from the values the store would hold at that
    ///   point. At the first record whose `digest_after` differs, the run is cut just before it:
    ///   the records before it are written (one batch, still atomic), that record and everything
    ///   after it are not, and [`AppliedRun::mismatch`] names it. So the store stays at a
    ///   position whose digest agrees with the journal. (Unlike `apply`, which writes a
    ///   mismatching record and then reports it.)
    ///
    /// An empty run, or one made only of already-applied records, writes nothing.
    pub fn apply_many(&self, records: &[Record]) -> Result<AppliedRun, StoreError> {
        let mut position = self.lock_writer();
        let start = *position;
        let mut next = start;
        let mut applied = 0;
        let mut mismatch = None;
        // Gaps first, so that a refused run writes nothing.
        let mut expected = start.applied_lsn;
        for record in records {
            if record.lsn <= expected {
                continue;
            }
            if record.lsn != expected + 1 {
                return Err(StoreError::Gap { applied: expected, got: record.lsn });
            }
            expected = record.lsn;
        }
        // Values this run has written so far (`None` = deleted), over what sled holds.
        let mut overlay: HashMap<&[u8], Option<&[u8]>> = HashMap::new();
        let mut batch = sled::Batch::default();
        let mut expiring = self.expiring();
        // One record's writes, kept out of `batch` until its digest is known to be right.
        let mut pending: Vec<(&[u8], Option<&[u8]>)> = Vec::new();
        for record in records {
            if record.lsn <= next.applied_lsn {
                continue;
            }
            let mut digest = next.digest;
            let mut key_count = next.key_count;
            let mut record_expiring = expiring;
            pending.clear();
            if let RecordBody::Txn { ops, .. } = &record.body {
                for op in ops {
                    let key = op.key.as_slice();
                    let after = op.after.as_deref();
                    let from_sled;
                    let current = match overlay.get(key) {
                        Some(&value) => value,
                        None => {
                            from_sled = self.db.get(data_key(key)).map_err(|e| self.err(e))?;
                            from_sled.as_deref()
                        }
                    };
                    digest = digest.updated(key, current, after);
                    record_expiring = record_expiring.updated(current, after);
                    match (current.is_some(), after.is_some()) {
                        (false, true) => key_count += 1,
                        (true, false) => key_count -= 1,
                        _ => {}
                    }
                    // Into the overlay at once, so that later ops of this record read it. On a
                    // mismatch the run stops, so a refused record's entries are never read.
                    overlay.insert(key, after);
                    pending.push((key, after));
                }
            }
            if digest != record.digest_after {
                mismatch = Some(DigestMismatch { lsn: record.lsn, store: digest, record: record.digest_after });
                break;
            }
            for &(key, value) in &pending {
                match value {
                    Some(v) => batch.insert(data_key(key), v),
                    None => batch.remove(data_key(key)),
                }
            }
            next = Position { applied_lsn: record.lsn, digest, key_count };
            expiring = record_expiring;
            applied += 1;
        }
        if applied > 0 {
            batch.insert(META_APPLIED_LSN, &next.applied_lsn.to_le_bytes());
            batch.insert(META_DIGEST, &next.digest.to_le_bytes());
            batch.insert(META_KEY_COUNT, &next.key_count.to_le_bytes());
            batch.insert(META_EXPIRING, &expiring.to_bytes());
            self.db.apply_batch(batch).map_err(|e| self.err(e))?;
            self.set_expiring(expiring);
            self.publish(&mut position, next);
        }
        Ok(AppliedRun { position: next, applied, mismatch })
    }

    /// Undoes the last applied record from its before-images, in reverse op order.
    pub fn rewind(&self, record: &Record) -> Result<Position, StoreError> {
        let mut position = self.lock_writer();
        if record.lsn != position.applied_lsn || record.lsn == 0 {
            return Err(StoreError::RewindOrder { applied: position.applied_lsn, got: record.lsn });
        }
        let changes = match &record.body {
            RecordBody::Txn { ops, .. } => {
                ops.iter().rev().map(|op| (op.key.as_slice(), op.before.as_deref())).collect()
            }
            _ => Vec::new(),
        };
        let next = self.write_changes(&position, &changes, record.lsn - 1)?;
        self.publish(&mut position, next);
        Ok(next)
    }

    /// Writes `changes` in order plus the new bookkeeping in one atomic batch.
    fn write_changes(
        &self,
        position: &Position,
        changes: &[(&[u8], Option<&[u8]>)],
        lsn: Lsn,
    ) -> Result<Position, StoreError> {
        let mut digest = position.digest;
        let mut key_count = position.key_count;
        let mut expiring = self.expiring();
        let mut overlay: HashMap<&[u8], Option<&[u8]>> = HashMap::new();
        let mut batch = sled::Batch::default();
        for &(key, value) in changes {
            let current: Option<Vec<u8>> = match overlay.get(key) {
                Some(v) => v.map(|v| v.to_vec()),
                None => self.get(key)?,
            };
            digest = digest.updated(key, current.as_deref(), value);
            expiring = expiring.updated(current.as_deref(), value);
            match (current.is_some(), value.is_some()) {
                (false, true) => key_count += 1,
                (true, false) => key_count -= 1,
                _ => {}
            }
            match value {
                Some(v) => batch.insert(data_key(key), v),
                None => batch.remove(data_key(key)),
            }
            overlay.insert(key, value);
        }
        batch.insert(META_APPLIED_LSN, &lsn.to_le_bytes());
        batch.insert(META_DIGEST, &digest.to_le_bytes());
        batch.insert(META_KEY_COUNT, &key_count.to_le_bytes());
        batch.insert(META_EXPIRING, &expiring.to_bytes());
        self.db.apply_batch(batch).map_err(|e| self.err(e))?;
        self.set_expiring(expiring);
        Ok(Position { applied_lsn: lsn, digest, key_count })
    }

    /// Recomputes the digest and key count by scanning every stored pair.
    pub fn full_digest(&self) -> Result<(Digest, u64), StoreError> {
        let mut digest = Digest::EMPTY;
        let mut count = 0;
        for item in self.db.scan_prefix([DATA_PREFIX]) {
            let (key, value) = item.map_err(|e| self.err(e))?;
            digest = digest.with_pair(&key[1..], &value);
            count += 1;
        }
        Ok((digest, count))
    }

    /// The digest and key count recomputed from the stored pairs, with the position they belong
    /// to. Scans without stopping writers first; if a batch landed during the scan (the result
    /// would mix two positions) it tries once more, then scans with writers held off.
    pub fn full_digest_consistent(&self) -> Result<(Position, Digest, u64), StoreError> {
        for _ in 0..2 {
            let before = self.position();
            let (digest, keys) = self.full_digest()?;
            if self.position() == before {
                return Ok((before, digest, keys));
            }
        }
        let writer = self.lock_writer();
        let (digest, keys) = self.full_digest()?;
        Ok((*writer, digest, keys))
    }

    /// Every stored pair in key order (for a full copy and for tests).
    pub fn iter(&self) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + '_ {
        self.db
            .scan_prefix([DATA_PREFIX])
            .map(move |item| item.map(|(k, v)| (k[1..].to_vec(), v.to_vec())).map_err(|e| self.err(e)))
    }

    /// Up to `limit` stored pairs in key order, starting after `after` (from the first key when
    /// `None`). Each call is a fresh read: pairs written between two calls may or may not show.
    pub fn scan_after(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<StoredPair>, StoreError> {
        use std::ops::Bound;
        let start = match after {
            Some(key) => Bound::Excluded(data_key(key)),
            None => Bound::Included(vec![DATA_PREFIX]),
        };
        let mut pairs = Vec::new();
        for item in self.db.range::<Vec<u8>, _>((start, Bound::Unbounded)).take(limit) {
            let (key, value) = item.map_err(|e| self.err(e))?;
            if key.first() != Some(&DATA_PREFIX) {
                break;
            }
            pairs.push((key[1..].to_vec(), value.to_vec()));
        }
        Ok(pairs)
    }

    /// Up to `limit` stored pairs in key order from `start` (`Bound` over client keys).
    pub fn scan_from(&self, start: std::ops::Bound<&[u8]>, limit: usize) -> Result<Vec<StoredPair>, StoreError> {
        use std::ops::Bound;
        let start = match start {
            Bound::Included(key) => Bound::Included(data_key(key)),
            Bound::Excluded(key) => Bound::Excluded(data_key(key)),
            Bound::Unbounded => Bound::Included(vec![DATA_PREFIX]),
        };
        let mut pairs = Vec::new();
        for item in self.db.range::<Vec<u8>, _>((start, Bound::Unbounded)).take(limit) {
            let (key, value) = item.map_err(|e| self.err(e))?;
            if key.first() != Some(&DATA_PREFIX) {
                break;
            }
            pairs.push((key[1..].to_vec(), value.to_vec()));
        }
        Ok(pairs)
    }

    /// Full copy, sending side: holds off every writer while `send` is given the stored pairs
    /// in batches of about `batch_bytes`, so that the copy is exactly the store at the position
    /// returned. On a primary, commits go on meanwhile (journal and overlay); only applying
    /// them to the store waits. `send` returning `false` stops the copy.
    pub fn copy_out(
        &self,
        batch_bytes: usize,
        mut send: impl FnMut(Position, Vec<(Vec<u8>, Vec<u8>)>) -> bool,
    ) -> Result<Position, StoreError> {
        let writer = self.lock_writer();
        let position = *writer;
        let mut batch = Vec::new();
        let mut bytes = 0;
        for item in self.iter() {
            let (key, value) = item?;
            bytes += key.len() + value.len();
            batch.push((key, value));
            if bytes >= batch_bytes {
                if !send(position, std::mem::take(&mut batch)) {
                    return Ok(position);
                }
                bytes = 0;
            }
        }
        send(position, batch);
        Ok(position)
    }

    /// Full copy, receiving side: removes every pair and the bookkeeping (position 0).
    pub fn clear(&self) -> Result<(), StoreError> {
        let mut writer = self.lock_writer();
        self.db.clear().map_err(|e| self.err(e))?;
        self.set_expiring(Expiring::default());
        self.publish(&mut writer, Position { applied_lsn: 0, digest: Digest::EMPTY, key_count: 0 });
        Ok(())
    }

    /// Full copy, receiving side: stores copied pairs as they are (no bookkeeping yet).
    pub fn load(&self, pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
        let _writer = self.lock_writer();
        let mut batch = sled::Batch::default();
        for (key, value) in pairs {
            batch.insert(data_key(key), value.as_slice());
        }
        self.db.apply_batch(batch).map_err(|e| self.err(e))
    }

    /// Full copy, receiving side: after the last pair, recomputes the digest and key count from
    /// what was stored and refuses unless they equal the sender's `expected` position; then
    /// records the position (and flushes), so that catch-up continues at its next LSN.
    pub fn finish_load(&self, expected: Position) -> Result<(), String> {
        let (digest, keys) = self.full_digest().map_err(|e| e.to_string())?;
        if digest != expected.digest || keys != expected.key_count {
            return Err(format!(
                "the copy does not match the primary at LSN {}: {keys} keys with digest {digest}, expected {} keys with digest {}",
                expected.applied_lsn, expected.key_count, expected.digest
            ));
        }
        let mut writer = self.lock_writer();
        let expiring = self.count_expiring().map_err(|e| e.to_string())?;
        let mut batch = sled::Batch::default();
        batch.insert(META_APPLIED_LSN, &expected.applied_lsn.to_le_bytes());
        batch.insert(META_DIGEST, &expected.digest.to_le_bytes());
        batch.insert(META_KEY_COUNT, &expected.key_count.to_le_bytes());
        batch.insert(META_EXPIRING, &expiring.to_bytes());
        self.set_expiring(expiring);
        self.db.apply_batch(batch).map_err(|e| self.err(e).to_string())?;
        self.db.flush().map_err(|e| self.err(e).to_string())?;
        self.publish(&mut writer, expected);
        Ok(())
    }

    /// Makes everything applied so far durable in sled.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|e| self.err(e))
    }

    fn lock_writer(&self) -> MutexGuard<'_, Position> {
        self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records `next` as the position, for the writer (whose guard proves it holds the writer
    /// lock) and then for readers.
    fn publish(&self, writer: &mut MutexGuard<'_, Position>, next: Position) {
        **writer = next;
        *self.published.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = next;
    }

    fn err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled { path: self.path.clone(), source }
    }

    fn meta_u64(&self, key: &[u8]) -> Result<u64, StoreError> {
        match self.db.get(key).map_err(|e| self.err(e))? {
            None => Ok(0),
            Some(bytes) => {
                let array: [u8; 8] = bytes.as_ref().try_into().map_err(|_| self.bad_meta(key))?;
                Ok(u64::from_le_bytes(array))
            }
        }
    }

    fn meta_digest(&self) -> Result<Digest, StoreError> {
        match self.db.get(META_DIGEST).map_err(|e| self.err(e))? {
            None => Ok(Digest::EMPTY),
            Some(bytes) => {
                let array: [u8; 16] = bytes.as_ref().try_into().map_err(|_| self.bad_meta(META_DIGEST))?;
                Ok(Digest::from_le_bytes(array))
            }
        }
    }

    fn bad_meta(&self, key: &[u8]) -> StoreError {
        StoreError::BadMeta { path: self.path.clone(), key: String::from_utf8_lossy(&key[1..]).into_owned() }
    }
}

fn data_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(DATA_PREFIX);
    out.extend_from_slice(key);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn txn(store: &Store, lsn: Lsn, writes: Vec<KeyWrite>) -> Record {
        let (ops, digest_after) = store.prepare(writes).unwrap();
        Record { lsn, epoch: 1, timestamp_ms: 0, digest_after, body: RecordBody::txn(ops) }
    }

    fn snapshot(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
        store.iter().collect::<Result<_, _>>().unwrap()
    }

    fn arb_writes() -> impl Strategy<Value = Vec<Vec<KeyWrite>>> {
        // Few distinct keys so transactions overwrite and delete each other's keys often.
        let key = proptest::collection::vec(0u8..4, 1..3);
        let value = proptest::option::weighted(0.7, proptest::collection::vec(any::<u8>(), 0..12));
        proptest::collection::vec(proptest::collection::vec((key, value), 1..5), 1..25)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn rewinding_in_reverse_restores_data_and_digest(prefix in arb_writes(), tail in arb_writes()) {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let mut lsn = 0;
            for writes in prefix {
                lsn += 1;
                let record = txn(&store, lsn, writes);
                let applied = store.apply(&record).unwrap();
                prop_assert!(matches!(applied, Applied::Done { digest_matches: true, .. }), "{:?}", applied);
            }
            let before = (snapshot(&store), store.position());
            let mut applied = Vec::new();
            for writes in tail {
                lsn += 1;
                let record = txn(&store, lsn, writes);
                store.apply(&record).unwrap();
                prop_assert_eq!(store.full_digest().unwrap(), (store.position().digest, store.position().key_count));
                applied.push(record);
            }
            for record in applied.iter().rev() {
                store.rewind(record).unwrap();
            }
            prop_assert_eq!((snapshot(&store), store.position()), before);
            prop_assert_eq!(store.full_digest().unwrap().0, store.position().digest);
        }
    }

    /// A transaction (`Some`) or a control record (`None`), for runs that mix both.
    fn arb_steps() -> impl Strategy<Value = Vec<Option<Vec<KeyWrite>>>> {
        let key = proptest::collection::vec(0u8..6, 1..3);
        let value = proptest::option::weighted(0.7, proptest::collection::vec(any::<u8>(), 0..12));
        let writes = proptest::collection::vec((key, value), 1..6);
        proptest::collection::vec(proptest::option::weighted(0.85, writes), 1..60)
    }

    /// The records of `steps`, made against (and applied one by one to) `store`, with the
    /// position and data after each.
    type History = Vec<(Record, Position, Vec<(Vec<u8>, Vec<u8>)>)>;

    /// Opens a store that was just dropped in this process. sled's background flusher holds the
    /// directory's file lock for a moment after the last handle goes, so the first tries may
    /// find it locked (a restarted node is a new process and never sees this).
    fn reopen_after_drop(path: &std::path::Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(path) {
                Ok(store) => return store,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(err) => panic!("cannot reopen {}: {err}", path.display()),
            }
        }
    }

    fn history(store: &Store, steps: Vec<Option<Vec<KeyWrite>>>) -> History {
        let mut out = Vec::new();
        for (i, step) in steps.into_iter().enumerate() {
            let lsn = i as Lsn + 1;
            let record = match step {
                Some(writes) => txn(store, lsn, writes),
                None => Record {
                    lsn,
                    epoch: 1,
                    timestamp_ms: 0,
                    digest_after: store.position().digest,
                    body: RecordBody::Canary { sequence: lsn },
                },
            };
            let applied = store.apply(&record).unwrap();
            assert!(matches!(applied, Applied::Done { digest_matches: true, .. }), "{applied:?}");
            out.push((record, store.position(), snapshot(store)));
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Runs of any length, each overlapping the one before (re-sent records are skipped),
        /// end where applying one record at a time ends: same data, digest, key count, LSN.
        #[test]
        fn apply_many_equals_apply_per_record(
            steps in arb_steps(),
            runs in proptest::collection::vec((1usize..12, 0usize..3), 1..40),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let reference = Store::open(&dir.path().join("one-by-one")).unwrap();
            let history = history(&reference, steps);
            let records: Vec<Record> = history.iter().map(|(r, _, _)| r.clone()).collect();
            let store = Store::open(&dir.path().join("runs")).unwrap();
            let mut from = 0;
            let mut runs = runs.into_iter().cycle();
            while from < records.len() {
                let (len, overlap) = runs.next().unwrap();
                let start = from.saturating_sub(overlap);
                let end = (from + len).min(records.len());
                let outcome = store.apply_many(&records[start..end]).unwrap();
                prop_assert_eq!(outcome.mismatch, None);
                prop_assert_eq!(outcome.applied, end - from);
                let (_, position, data) = &history[end - 1];
                prop_assert_eq!(outcome.position, *position);
                prop_assert_eq!(store.position(), *position);
                prop_assert_eq!(&snapshot(&store), data);
                from = end;
            }
            prop_assert_eq!(store.position(), reference.position());
            prop_assert_eq!(store.full_digest().unwrap(), (reference.position().digest, reference.position().key_count));
            // Everything again: all skipped, nothing changes.
            let again = store.apply_many(&records).unwrap();
            prop_assert_eq!((again.applied, again.mismatch), (0, None));
            prop_assert_eq!(store.position(), reference.position());
            // And the bookkeeping survives a reopen.
            let expected = store.position();
            drop(store);
            prop_assert_eq!(reopen_after_drop(&dir.path().join("runs")).position(), expected);
        }

        /// A record whose digest is wrong stops the run just before it: the records before it are
        /// in, it and everything after it are not, and the outcome names its LSN.
        #[test]
        fn apply_many_stops_before_a_digest_mismatch(
            steps in arb_steps(),
            pick in any::<proptest::sample::Index>(),
            applied_first in any::<proptest::sample::Index>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let reference = Store::open(&dir.path().join("one-by-one")).unwrap();
            let history = history(&reference, steps);
            let mut records: Vec<Record> = history.iter().map(|(r, _, _)| r.clone()).collect();
            let bad = pick.index(records.len());
            records[bad].digest_after = Digest(records[bad].digest_after.0 ^ 1);
            let store = Store::open(&dir.path().join("runs")).unwrap();
            // Some records before the bad one may already be in (applied one by one).
            let already = applied_first.index(bad + 1);
            for record in &records[..already] {
                store.apply(record).unwrap();
            }
            let outcome = store.apply_many(&records).unwrap();
            let mismatch = outcome.mismatch.expect("the mismatch is reported");
            prop_assert_eq!(mismatch.lsn, records[bad].lsn);
            prop_assert_eq!(mismatch.record, records[bad].digest_after);
            prop_assert_eq!(mismatch.store, history[bad].1.digest);
            prop_assert_eq!(outcome.applied, bad - already);
            let (position, data) = match bad {
                0 => (Position { applied_lsn: 0, digest: Digest::EMPTY, key_count: 0 }, Vec::new()),
                _ => (history[bad - 1].1, history[bad - 1].2.clone()),
            };
            prop_assert_eq!(outcome.position, position);
            prop_assert_eq!(store.position(), position);
            prop_assert_eq!(snapshot(&store), data);
            prop_assert_eq!(store.full_digest().unwrap(), (position.digest, position.key_count));
        }
    }

    #[test]
    fn apply_many_refuses_a_gap_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let reference = Store::open(&dir.path().join("reference")).unwrap();
        let steps = (0..4u8).map(|i| Some(vec![(vec![i], Some(vec![i; 3]))])).collect();
        let records: Vec<Record> = history(&reference, steps).into_iter().map(|(r, _, _)| r).collect();
        let store = Store::open(&dir.path().join("store")).unwrap();
        store.apply(&records[0]).unwrap();
        let before = (store.position(), snapshot(&store));
        let with_gap = [records[0].clone(), records[1].clone(), records[3].clone()];
        assert!(matches!(store.apply_many(&with_gap), Err(StoreError::Gap { applied: 2, got: 4 })));
        assert!(matches!(store.apply_many(&records[2..]), Err(StoreError::Gap { applied: 1, got: 3 })));
        assert_eq!((store.position(), snapshot(&store)), before);
        let empty = store.apply_many(&[]).unwrap();
        assert_eq!((empty.applied, empty.position, empty.mismatch), (0, before.0, None));
    }

    #[test]
    fn position_does_not_wait_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r1 = txn(&store, 1, vec![(b"k".to_vec(), Some(b"v".to_vec()))]);
        store.apply(&r1).unwrap();
        let expected = store.position();
        // A writer stuck inside sled holds the writer lock; readers must still get an answer.
        let _writer = store.lock_writer();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| tx.send(store.position()).unwrap());
            assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(10)), Ok(expected));
        });
    }

    #[test]
    fn applying_twice_is_a_no_op_and_gaps_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r1 = txn(&store, 1, vec![(b"k".to_vec(), Some(b"v".to_vec()))]);
        store.apply(&r1).unwrap();
        assert_eq!(store.apply(&r1).unwrap(), Applied::AlreadyApplied);
        let r3 = Record { lsn: 3, ..r1.clone() };
        assert!(matches!(store.apply(&r3), Err(StoreError::Gap { applied: 1, got: 3 })));
        assert!(matches!(store.rewind(&r3), Err(StoreError::RewindOrder { .. })));
    }

    #[test]
    fn position_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let position = {
            let store = Store::open(dir.path()).unwrap();
            let r1 = txn(&store, 1, vec![(b"a".to_vec(), Some(b"1".to_vec())), (b"b".to_vec(), Some(b"2".to_vec()))]);
            store.apply(&r1).unwrap();
            store.flush().unwrap();
            store.position()
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.position(), position);
        assert_eq!(position.key_count, 2);
    }

    #[test]
    fn a_diverged_store_shows_in_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // The record claims key "k" held "x" before; this store never had it.
        let record = Record {
            lsn: 1,
            epoch: 1,
            timestamp_ms: 0,
            digest_after: Digest::EMPTY.updated(b"k", None, Some(b"y")).updated(b"j", None, Some(b"z")),
            body: RecordBody::txn(vec![Op { key: b"k".to_vec(), before: Some(b"x".to_vec()), after: None }]),
        };
        assert!(matches!(store.apply(&record).unwrap(), Applied::Done { digest_matches: false, .. }));
    }
}
