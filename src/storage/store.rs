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
//!   primary shows it at the next digest comparison instead of hiding it. The one exception is
//!   [`Before::FromRecord`], for the primary's own records only, whose images *are* this
//!   store's values as its only writer read them (`pipeline`, "The primary's applier trusts its
//!   own reads").
//! - A full copy into the store ([`Store::begin_copy`] … [`Store::finish_copy`]) claims no
//!   applied LSN until its digest and key count, kept from the values written and replaced,
//!   equal the sender's; until then its checkpoint is saved with every batch.
//!
//! ## Layout in sled
//! One tree. Data keys are stored as `b'd' ‖ key`; bookkeeping as `b'm' ‖ name`
//! (`applied_lsn`, `digest`, `key_count`, `expiring`, all little-endian; and `copy`, JSON,
//! only while a full copy into the store is under way: [`CopyCheckpoint`]). One tree means
//! one `apply_batch`, which sled makes atomic.
//!
//! The journal, not sled, provides durability: `apply` does not flush. `flush` is called at
//! checkpoints and at shutdown.
//!
//! ## When sled fails
//! - A store sled cannot recover (it returns `Corruption`, or panics while replaying its log:
//!   "tried to serialize Uninitialized" on a bit-flipped segment) is [`StoreError::Damaged`],
//!   never a panic: the node says what to do (rebuild it from the peer).
//! - After any error from sled the store is *failed* for good, as a journal is after a failed
//!   fsync: sled 0.34 can be left waiting forever for a log write that failed (seen on a full
//!   disk: `flush` and sled's own flush on drop never returned, so SIGTERM never ended the
//!   node). A failed store is neither flushed nor flushed on drop (its handle is leaked, the
//!   process is ending); the journals are the truth, and the next start replays them into
//!   whatever sled recovers.

use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::storage::digest::Digest;
use crate::storage::journal::{Lsn, Op, Record, RecordBody};

/// A client key and its stored bytes (see [`crate::storage::value`]).
pub type StoredPair = (Vec<u8>, Vec<u8>);

const DATA_PREFIX: u8 = b'd';
const META_APPLIED_LSN: &[u8] = b"mapplied_lsn";
const META_DIGEST: &[u8] = b"mdigest";
const META_KEY_COUNT: &[u8] = b"mkey_count";
/// Keys with an expiry and the sum of their deadlines (u64 count ‖ u128 sum of ms), for
/// `INFO keyspace`. A store written before it existed gets it by one scan at open.
const META_EXPIRING: &[u8] = b"mexpiring";
/// A full copy into this store is under way ([`CopyCheckpoint`], JSON): written with every
/// batch of copied pairs and redo records, removed when the copy is checked and done.
const META_COPY: &[u8] = b"mcopy";

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
    #[error("store {} is damaged: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
    #[error(
        "store {} is not flushed: sled failed earlier ({first}), and a store that failed is not written again; the journals are synced and the next start replays them into it",
        path.display()
    )]
    Failed { path: PathBuf, first: String },
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

/// Where [`Store::apply_many_reading`] takes a key's value before an op, for the digest, the
/// key count and the expiry count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Before {
    /// From sled: the store's own values, so a store that disagrees with the record's images
    /// shows as a digest mismatch. Every applier but the primary's.
    Stored,
    /// From the op's before-image, without reading sled. Only for records whose images were
    /// read from this very store by its only writer: the primary's own commits (see
    /// `pipeline`, "The primary's applier trusts its own reads").
    FromRecord,
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
    /// Dropped by hand: a failed sled's drop may wait forever (see the module doc).
    db: ManuallyDrop<sled::Db>,
    /// The first error sled returned; once set the store is failed for good.
    failed: Mutex<Option<String>>,
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

/// Where a full copy into this store stands, saved in the same sled batch as the pairs and
/// records it counts, so that a copy cut off (either node killed, the link lost) resumes
/// where it stopped instead of starting over (`node::copy`, "Resuming").
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CopyCheckpoint {
    /// The sender's applied LSN when its first scan began: every pair copied reflects the
    /// sender's store at that LSN or later, so the records after it are redone on top.
    pub from_lsn: Lsn,
    /// The last key loaded (pairs arrive in key order); `None` before the first batch.
    pub after_key: Option<Vec<u8>>,
    /// The last redo record applied (`from_lsn` until the first). Once a redo record is in,
    /// keys past `after_key` may exist here, so the scan must not be resumed.
    pub redo_lsn: Lsn,
    /// Digest, key count and expiry count of what is stored now (kept up to date with every
    /// batch from the values actually written and replaced, never from the sender's word).
    pub digest: Digest,
    pub key_count: u64,
    pub expiring_keys: u64,
    pub expiring_deadline_sum_ms: u128,
    /// Pairs loaded so far, and how many keys the sender had when the copy began (progress).
    pub pairs: u64,
    pub total: u64,
}

impl CopyCheckpoint {
    /// A copy from a sender whose applied LSN is `from_lsn` and which holds `total` keys.
    pub fn new(from_lsn: Lsn, total: u64) -> CopyCheckpoint {
        CopyCheckpoint {
            from_lsn,
            after_key: None,
            redo_lsn: from_lsn,
            digest: Digest::EMPTY,
            key_count: 0,
            expiring_keys: 0,
            expiring_deadline_sum_ms: 0,
            pairs: 0,
            total,
        }
    }

    /// Whether the scan may go on from `after_key` (no redo record applied yet).
    pub fn scanning(&self) -> bool {
        self.redo_lsn == self.from_lsn
    }

    fn expiring(&self) -> Expiring {
        Expiring { keys: self.expiring_keys, deadline_sum_ms: self.expiring_deadline_sum_ms }
    }

    fn set_expiring(&mut self, expiring: Expiring) {
        (self.expiring_keys, self.expiring_deadline_sum_ms) = (expiring.keys, expiring.deadline_sum_ms);
    }
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
        if let Some(at) = before.and_then(crate::storage::value::expiry_of) {
            self.keys = self.keys.saturating_sub(1);
            self.deadline_sum_ms = self.deadline_sum_ms.saturating_sub(u128::from(at));
        }
        if let Some(at) = after.and_then(crate::storage::value::expiry_of) {
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
        let damaged = |reason: String| StoreError::Damaged { path: path.to_path_buf(), reason };
        let db = match without_panicking(|| sled::Config::new().path(path).open()) {
            Ok(Ok(db)) => db,
            Ok(Err(sled::Error::Corruption { .. })) => {
                return Err(damaged("sled found its log corrupted and cannot recover it".into()))
            }
            Ok(Err(source)) => return Err(StoreError::Sled { path: path.to_path_buf(), source }),
            Err(panic) => return Err(damaged(format!("sled cannot recover its log (sled: {panic})"))),
        };
        let empty = Position { applied_lsn: 0, digest: Digest::EMPTY, key_count: 0 };
        let store = Store {
            path: path.to_path_buf(),
            db: ManuallyDrop::new(db),
            failed: Mutex::new(None),
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
        self.apply_many_reading(records, Before::Stored)
    }

    /// [`Store::apply_many`], taking each key's current value from where `before` says.
    pub fn apply_many_reading(&self, records: &[Record], before: Before) -> Result<AppliedRun, StoreError> {
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
                    let current = match (before, overlay.get(key)) {
                        (Before::FromRecord, _) => op.before.as_deref(),
                        (Before::Stored, Some(&value)) => value,
                        (Before::Stored, None) => {
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
                    if before == Before::Stored {
                        overlay.insert(key, after);
                    }
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

    /// Full copy, receiving side: removes every pair and the bookkeeping (position 0).
    pub fn clear(&self) -> Result<(), StoreError> {
        let mut writer = self.lock_writer();
        self.db.clear().map_err(|e| self.err(e))?;
        self.set_expiring(Expiring::default());
        self.publish(&mut writer, Position { applied_lsn: 0, digest: Digest::EMPTY, key_count: 0 });
        Ok(())
    }

    /// Restore (`restore`): stores pairs as they are (no bookkeeping yet).
    pub fn load(&self, pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
        let _writer = self.lock_writer();
        let mut batch = sled::Batch::default();
        for (key, value) in pairs {
            batch.insert(data_key(key), value.as_slice());
        }
        self.db.apply_batch(batch).map_err(|e| self.err(e))
    }

    /// Restore: after the last pair, recomputes the digest and key count from
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

    /// The position after every batch the writer has finished, waiting for one in flight (unlike
    /// [`Store::position`]): a value read from the store now was written at or before it.
    pub fn settled_position(&self) -> Position {
        *self.lock_writer()
    }

    /// The full copy under way into this store, if one was cut off (see [`CopyCheckpoint`]).
    pub fn copy_checkpoint(&self) -> Result<Option<CopyCheckpoint>, StoreError> {
        match self.db.get(META_COPY).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|_| self.bad_meta(META_COPY)),
        }
    }

    /// Full copy, receiving side: empties the store and records `checkpoint` (a fresh copy).
    pub fn begin_copy(&self, checkpoint: &CopyCheckpoint) -> Result<(), StoreError> {
        let mut writer = self.lock_writer();
        self.db.clear().map_err(|e| self.err(e))?;
        self.db.insert(META_COPY, copy_bytes(checkpoint)).map_err(|e| self.err(e))?;
        self.set_expiring(Expiring::default());
        self.publish(&mut writer, Position { applied_lsn: 0, digest: Digest::EMPTY, key_count: 0 });
        Ok(())
    }

    /// Full copy, receiving side: stores a batch of copied pairs, which must follow
    /// `checkpoint.after_key` in key order (so none of them is stored yet: no lookups, no
    /// before-images), in one sled batch with the checkpoint brought up to date.
    pub fn load_copy(&self, pairs: &[StoredPair], checkpoint: &mut CopyCheckpoint) -> Result<(), String> {
        if !checkpoint.scanning() {
            return Err("copied pairs arrived after the redo records began".into());
        }
        let mut next = checkpoint.clone();
        let mut expiring = next.expiring();
        let mut batch = sled::Batch::default();
        for (key, value) in pairs {
            if next.after_key.as_deref().is_some_and(|last| key.as_slice() <= last) {
                return Err(format!("copied pairs out of key order at {}", String::from_utf8_lossy(key)));
            }
            batch.insert(data_key(key), value.as_slice());
            next.digest = next.digest.with_pair(key, value);
            expiring = expiring.updated(None, Some(value));
            next.key_count += 1;
            next.pairs += 1;
            next.after_key = Some(key.clone());
        }
        next.set_expiring(expiring);
        batch.insert(META_COPY, copy_bytes(&next));
        let _writer = self.lock_writer();
        self.db.apply_batch(batch).map_err(|e| self.err(e).to_string())?;
        *checkpoint = next;
        Ok(())
    }

    /// Full copy, receiving side: redoes the sender's records written while it scanned (after
    /// `checkpoint.redo_lsn`, in LSN order without a gap) with their after-images, updating
    /// the checkpoint's digest from the values actually replaced. Their own digests are not
    /// checked: until the last of them the store mixes pairs read at different LSNs.
    pub fn redo_copy(&self, records: &[Record], checkpoint: &mut CopyCheckpoint) -> Result<(), String> {
        let mut next = checkpoint.clone();
        let mut expiring = next.expiring();
        let mut overlay: HashMap<&[u8], Option<&[u8]>> = HashMap::new();
        let mut batch = sled::Batch::default();
        for record in records.iter().filter(|r| r.lsn > checkpoint.redo_lsn) {
            if record.lsn != next.redo_lsn + 1 {
                return Err(format!("redo record {} does not follow {}", record.lsn, next.redo_lsn));
            }
            if let RecordBody::Txn { ops, .. } = &record.body {
                for op in ops {
                    let (key, after) = (op.key.as_slice(), op.after.as_deref());
                    let from_sled;
                    let current = match overlay.get(key) {
                        Some(&value) => value,
                        None => {
                            from_sled = self.db.get(data_key(key)).map_err(|e| self.err(e).to_string())?;
                            from_sled.as_deref()
                        }
                    };
                    next.digest = next.digest.updated(key, current, after);
                    expiring = expiring.updated(current, after);
                    match (current.is_some(), after.is_some()) {
                        (false, true) => next.key_count += 1,
                        (true, false) => next.key_count -= 1,
                        _ => {}
                    }
                    match after {
                        Some(value) => batch.insert(data_key(key), value),
                        None => batch.remove(data_key(key)),
                    }
                    overlay.insert(key, after);
                }
            }
            next.redo_lsn = record.lsn;
        }
        if next.redo_lsn == checkpoint.redo_lsn {
            return Ok(());
        }
        next.set_expiring(expiring);
        batch.insert(META_COPY, copy_bytes(&next));
        let _writer = self.lock_writer();
        self.db.apply_batch(batch).map_err(|e| self.err(e).to_string())?;
        *checkpoint = next;
        Ok(())
    }

    /// Full copy, receiving side: once every pair and every redo record up to
    /// `expected.applied_lsn` is in, refuses unless what is stored has the sender's digest and
    /// key count there; then records that position (and flushes) and forgets the checkpoint,
    /// so that catch-up continues at its next LSN.
    pub fn finish_copy(&self, checkpoint: &CopyCheckpoint, expected: Position) -> Result<(), String> {
        if checkpoint.redo_lsn != expected.applied_lsn
            || checkpoint.digest != expected.digest
            || checkpoint.key_count != expected.key_count
        {
            return Err(format!(
                "the copy does not match the primary at LSN {}: {} keys with digest {} at LSN {}, expected {} keys with digest {}",
                expected.applied_lsn,
                checkpoint.key_count,
                checkpoint.digest,
                checkpoint.redo_lsn,
                expected.key_count,
                expected.digest
            ));
        }
        let mut writer = self.lock_writer();
        let mut batch = sled::Batch::default();
        batch.insert(META_APPLIED_LSN, &expected.applied_lsn.to_le_bytes());
        batch.insert(META_DIGEST, &expected.digest.to_le_bytes());
        batch.insert(META_KEY_COUNT, &expected.key_count.to_le_bytes());
        batch.insert(META_EXPIRING, &checkpoint.expiring().to_bytes());
        batch.remove(META_COPY);
        self.db.apply_batch(batch).map_err(|e| self.err(e).to_string())?;
        self.db.flush().map_err(|e| self.err(e).to_string())?;
        self.set_expiring(checkpoint.expiring());
        self.publish(&mut writer, expected);
        Ok(())
    }

    /// Makes everything applied so far durable in sled. A failed store is not flushed.
    pub fn flush(&self) -> Result<(), StoreError> {
        if let Some(first) = self.first_failure() {
            return Err(StoreError::Failed { path: self.path.clone(), first });
        }
        self.db.flush().map(|_| ()).map_err(|e| self.err(e))
    }

    /// The first error sled returned, if it ever did.
    pub fn first_failure(&self) -> Option<String> {
        self.failed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
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

    /// An error from sled, which also fails the store for good (see the module doc).
    fn err(&self, source: sled::Error) -> StoreError {
        let mut failed = self.failed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if failed.is_none() {
            tracing::error!(store = %self.path.display(), error = %source, "the store failed; it is not written again until the node restarts");
            *failed = Some(source.to_string());
        }
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

fn copy_bytes(checkpoint: &CopyCheckpoint) -> Vec<u8> {
    // A struct of plain fields: serializing it cannot fail.
    serde_json::to_vec(checkpoint).unwrap_or_default()
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.first_failure().is_some() {
            // sled's drop flushes, and a failed sled may wait forever for that: leak it instead
            // (the process is ending; the journals are synced).
            return;
        }
        // SAFETY: `db` is not used after this; `drop` runs once.
        unsafe { ManuallyDrop::drop(&mut self.db) }
    }
}

/// Runs `f`, turning a panic on this thread into `Err(its message)` instead of a crash with a
/// backtrace. A panic on another thread meanwhile still goes to the hook that was installed.
fn without_panicking<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    // One hook swap at a time, so that each restores the hook it found.
    static SWAPPING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = SWAPPING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let this = std::thread::current().id();
    let previous: Arc<PanicHook> = Arc::new(std::panic::take_hook());
    let forward = previous.clone();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != this {
            forward(info);
        }
    }));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(Box::new(move |info| previous(info)));
    result.map_err(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        // An assertion's message goes on with `left: …` lines: the first line says what broke.
        message.lines().next().unwrap_or("no message").to_string()
    })
}

type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A full copy as `node::copy` makes it: the sender is scanned a few keys at a time
        /// while records keep being applied to it, the receiver is killed and reopened (its
        /// checkpoint read back) at some point, then redoes the records written since the scan
        /// began. It ends with the sender's data, digest, key count and expiry count.
        #[test]
        fn a_copy_scanned_under_writes_and_redone_equals_the_sender(
            steps in arb_steps(),
            before_scan in any::<proptest::sample::Index>(),
            step_keys in 1usize..4,
            writes_per_step in proptest::collection::vec(0usize..3, 1..20),
            kill_at in proptest::option::of(0usize..10),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let reference = Store::open(&dir.path().join("reference")).unwrap();
            let records: Vec<Record> = history(&reference, steps).into_iter().map(|(r, _, _)| r).collect();
            let sender = Store::open(&dir.path().join("sender")).unwrap();
            let mut applied = before_scan.index(records.len() + 1);
            sender.apply_many(&records[..applied]).unwrap();
            let start = sender.settled_position();
            let receiver_path = dir.path().join("receiver");
            let mut receiver = Store::open(&receiver_path).unwrap();
            let mut checkpoint = CopyCheckpoint::new(start.applied_lsn, start.key_count);
            receiver.begin_copy(&checkpoint).unwrap();
            let mut writes = writes_per_step.iter().cycle();
            for step in 0.. {
                let pairs = sender.scan_after(checkpoint.after_key.as_deref(), step_keys).unwrap();
                receiver.load_copy(&pairs, &mut checkpoint).unwrap();
                let more = (*writes.next().unwrap()).min(records.len() - applied);
                sender.apply_many(&records[applied..applied + more]).unwrap();
                applied += more;
                if kill_at == Some(step) {
                    receiver.flush().unwrap();
                    drop(receiver);
                    receiver = reopen_after_drop(&receiver_path);
                    checkpoint = receiver.copy_checkpoint().unwrap().expect("the checkpoint survives");
                }
                if pairs.len() < step_keys {
                    break;
                }
            }
            sender.apply_many(&records[applied..]).unwrap();
            let end = sender.settled_position();
            let redo: Vec<Record> = records.iter().filter(|r| r.lsn > start.applied_lsn).cloned().collect();
            for chunk in redo.chunks(3) {
                receiver.redo_copy(chunk, &mut checkpoint).unwrap();
            }
            receiver.finish_copy(&checkpoint, end).unwrap();
            prop_assert_eq!(snapshot(&receiver), snapshot(&sender));
            prop_assert_eq!(receiver.position(), end);
            prop_assert_eq!(receiver.expiring(), sender.expiring());
            prop_assert_eq!(receiver.copy_checkpoint().unwrap(), None);
            prop_assert_eq!(receiver.full_digest().unwrap(), (end.digest, end.key_count));
        }
    }

    #[test]
    fn a_copy_that_does_not_match_the_sender_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut checkpoint = CopyCheckpoint::new(5, 2);
        store.begin_copy(&checkpoint).unwrap();
        store.load_copy(&[(b"a".to_vec(), b"\x001".to_vec())], &mut checkpoint).unwrap();
        assert!(store.load_copy(&[(b"a".to_vec(), b"\x002".to_vec())], &mut checkpoint).is_err(), "out of key order");
        let claimed = Position { applied_lsn: 5, digest: checkpoint.digest, key_count: 2 };
        let err = store.finish_copy(&checkpoint, claimed).unwrap_err();
        assert!(err.contains("does not match the primary at LSN 5"), "{err}");
        assert_eq!(store.position().applied_lsn, 0, "a refused copy claims no position");
        assert!(store.copy_checkpoint().unwrap().is_some(), "and stays resumable");
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
