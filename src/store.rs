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
//! - `rewind` takes exactly the last applied record and leaves the store as it was before it.
//! - The kept digest always equals [`Store::full_digest`]: both are computed from the values
//!   actually stored (not from the images in the record), so a store that diverged from its
//!   primary shows it at the next digest comparison instead of hiding it.
//!
//! ## Layout in sled
//! One tree. Data keys are stored as `b'd' ‖ key`; bookkeeping as `b'm' ‖ name`
//! (`applied_lsn`, `digest`, `key_count`, all little-endian). One tree means one `apply_batch`,
//! which sled makes atomic.
//!
//! The journal, not sled, provides durability: `apply` does not flush. `flush` is called at
//! checkpoints and at shutdown.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::digest::Digest;
use crate::journal::{Lsn, Op, Record, RecordBody};

const DATA_PREFIX: u8 = b'd';
const META_APPLIED_LSN: &[u8] = b"mapplied_lsn";
const META_DIGEST: &[u8] = b"mdigest";
const META_KEY_COUNT: &[u8] = b"mkey_count";

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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

pub struct Store {
    path: PathBuf,
    db: sled::Db,
    /// Serialises writers and caches the position; readers go to sled directly.
    position: Mutex<Position>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .open()
            .map_err(|source| StoreError::Sled { path: path.to_path_buf(), source })?;
        let store = Store {
            path: path.to_path_buf(),
            db,
            position: Mutex::new(Position { applied_lsn: 0, digest: Digest::EMPTY, key_count: 0 }),
        };
        let position = Position {
            applied_lsn: store.meta_u64(META_APPLIED_LSN)?,
            digest: store.meta_digest()?,
            key_count: store.meta_u64(META_KEY_COUNT)?,
        };
        *store.lock() = position;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn position(&self) -> Position {
        *self.lock()
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(data_key(key)).map_err(|e| self.err(e))?.map(|v| v.to_vec()))
    }

    /// Turns intended writes (`None` = delete) into ops with before-images, and the digest the
    /// store will have after them. For the primary's commit path: the caller must be the only
    /// writer between `prepare` and `apply` of the resulting record.
    pub fn prepare(&self, writes: Vec<KeyWrite>) -> Result<(Vec<Op>, Digest), StoreError> {
        let mut digest = self.lock().digest;
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
        let mut position = self.lock();
        if record.lsn <= position.applied_lsn {
            return Ok(Applied::AlreadyApplied);
        }
        if record.lsn != position.applied_lsn + 1 {
            return Err(StoreError::Gap { applied: position.applied_lsn, got: record.lsn });
        }
        let changes = match &record.body {
            RecordBody::Txn { ops } => ops.iter().map(|op| (op.key.as_slice(), op.after.as_deref())).collect(),
            _ => Vec::new(),
        };
        let next = self.write_changes(&position, &changes, record.lsn)?;
        *position = next;
        Ok(Applied::Done { digest: next.digest, digest_matches: next.digest == record.digest_after })
    }

    /// Undoes the last applied record from its before-images, in reverse op order.
    pub fn rewind(&self, record: &Record) -> Result<Position, StoreError> {
        let mut position = self.lock();
        if record.lsn != position.applied_lsn || record.lsn == 0 {
            return Err(StoreError::RewindOrder { applied: position.applied_lsn, got: record.lsn });
        }
        let changes = match &record.body {
            RecordBody::Txn { ops } => ops.iter().rev().map(|op| (op.key.as_slice(), op.before.as_deref())).collect(),
            _ => Vec::new(),
        };
        let next = self.write_changes(&position, &changes, record.lsn - 1)?;
        *position = next;
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
        let mut overlay: HashMap<&[u8], Option<&[u8]>> = HashMap::new();
        let mut batch = sled::Batch::default();
        for &(key, value) in changes {
            let current: Option<Vec<u8>> = match overlay.get(key) {
                Some(v) => v.map(|v| v.to_vec()),
                None => self.get(key)?,
            };
            digest = digest.updated(key, current.as_deref(), value);
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
        self.db.apply_batch(batch).map_err(|e| self.err(e))?;
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

    /// Every stored pair in key order (for a full copy and for tests).
    pub fn iter(&self) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + '_ {
        self.db
            .scan_prefix([DATA_PREFIX])
            .map(move |item| item.map(|(k, v)| (k[1..].to_vec(), v.to_vec())).map_err(|e| self.err(e)))
    }

    /// Makes everything applied so far durable in sled.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|e| self.err(e))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Position> {
        self.position.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
        Record { lsn, epoch: 1, timestamp_ms: 0, digest_after, body: RecordBody::Txn { ops } }
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
            body: RecordBody::Txn { ops: vec![Op { key: b"k".to_vec(), before: Some(b"x".to_vec()), after: None }] },
        };
        assert!(matches!(store.apply(&record).unwrap(), Applied::Done { digest_matches: false, .. }));
    }
}
