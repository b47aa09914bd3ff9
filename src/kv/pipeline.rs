//! The commit pipeline on the primary: a write becomes a journal record, then durable, then
//! store state.
//!
//! ## Job
//! One writer at a time runs a transaction against the current state (store plus the writes not
//! yet applied), turns its writes into ops with before-images and the digest after them, gives it
//! the next LSN and appends it to the local journal. The caller then waits for the sync level it
//! needs. A separate applier thread applies each record to the store once the journal says it
//! is durable.
//!
//! ## Invariants
//! - LSNs are assigned, and records appended, in one order under one lock: the journal order is
//!   the commit order, and a transaction sees every transaction before it.
//! - The store only ever holds durable records (sled may write to disk at any time, so a record
//!   applied before its fsync could survive a crash that the record itself does not). Until it is
//!   applied, a write lives in the *overlay*, which reads consult first.
//! - The running digest equals the digest the store will have after applying every appended
//!   record; the applier checks each record's digest against the store's and stops the node on a
//!   mismatch (it would mean the store and the journal disagree).
//!
//! ## The primary's applier trusts its own reads
//! A record's before-images are what this pipeline read, under its lock, from the store (or
//! the overlay of records not yet applied) — the store's values, with this pipeline as their
//! only writer. So the primary's applier takes the digest's before-values from the images
//! ([`crate::storage::store::Before::FromRecord`]) rather than looking every key up in sled a second
//! time, which at a million keys was a large share of the applier's CPU (docs/benchmarks.md,
//! issue 24). What the second lookup would catch is still caught: a primary store that lost or
//! changed a value gives wrong before-images to the next write of that key, hence a wrong
//! digest, and the backup — which computes its digest from its own stored values — reports the
//! mismatch; a key never written again shows at `verify --full`. A transaction also reads each
//! key from sled once: its writes' before-images reuse the values it read ([`Txn::get`]).
//!
//! ## Caveat
//! Reads on the primary see writes that are appended but not yet durable or replicated (as Redis
//! does). A client that needs a write to survive failover waits for its acknowledgement.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

use crate::kv::applier::{Applier, APPLY_PACE};
use crate::kv::keyspace::{ScanSlice, ScanStart, StoredPair};
use crate::kv::watch::Registry;
use crate::storage::digest::Digest;
use crate::storage::journal::{ClientCommand, Epoch, Journal, JournalError, Lsn, Record, RecordBody};
use crate::storage::store::{Applied, Store, StoreError};

/// Why a commit failed. Nothing is acknowledged when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The transaction itself refused (e.g. INCR on a non-integer); nothing was written.
    #[error("{0}")]
    Rejected(String),
    #[error("this node is not accepting writes: {0}")]
    NotAccepting(String),
    #[error("the pipeline has stopped: {0}")]
    Stopped(String),
}

/// A write not yet applied to the store: who wrote it, and the value (`None` = deleted).
type Pending = (Lsn, Option<Vec<u8>>);

pub struct Pipeline {
    journal: Journal,
    store: Arc<Store>,
    writer: Mutex<Writer>,
    overlay: Arc<Mutex<HashMap<Vec<u8>, Pending>>>,
    applier: Applier,
    recent: Mutex<RecentFrames>,
    /// `WATCH`ed keys: every commit touches the keys it writes (`crate::kv::watch`).
    watches: Arc<Registry>,
}

/// The most recently appended records as encoded frames, so that shipping the live tail never
/// has to read the journal files back. Bounded by [`RECENT_FRAMES_BYTES`]; older records are
/// read from the journal (catch-up).
#[derive(Default)]
struct RecentFrames {
    /// LSN, commit time (wall-clock ms) and encoded frame of each record.
    frames: std::collections::VecDeque<(Lsn, u64, Arc<Vec<u8>>)>,
    bytes: usize,
}

/// Bytes of recent frames kept in memory for the live tail: ~56,000 of the benchmark's SETs, far
/// more than a connected backup lags (hundreds of records at `async`); one further behind is
/// caught up from the files (700k records/s here). It was 64 MB: until the ring was full, its
/// growth took fresh memory, whose first touch on these VMs (huge pages zeroed, the host backing
/// them) cost a fresh primary ~16% of its CPU for the first 225,000 records.
pub const RECENT_FRAMES_BYTES: usize = 16 * 1024 * 1024;

struct Writer {
    next_lsn: Lsn,
    epoch: Epoch,
    digest: Digest,
    /// Keys after the last appended record (the store's count once everything is applied).
    key_count: u64,
    /// `Some(reason)` while writes are refused (draining, fenced, awaiting the peer…).
    refusing: Option<String>,
}

/// The view a transaction works on: current values, including its own earlier writes.
pub struct Txn<'a> {
    pipeline: &'a Pipeline,
    overlay: &'a HashMap<Vec<u8>, Pending>,
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    own: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Client commands kept with the record (`RecordBody::Txn::commands`).
    commands: Vec<ClientCommand>,
    /// Keys after the last appended record, before this transaction.
    base_key_count: u64,
    /// What this transaction read from the store (not the overlay), so that the before-images
    /// of its writes reuse those reads: one sled lookup per key, not two (a `SET` reads the
    /// old value for its options, and its op needs it as the before-image).
    store_reads: std::cell::RefCell<HashMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl Txn<'_> {
    /// The current stored bytes of `key` (see [`crate::storage::value`] for their format).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, CommitError> {
        if let Some(value) = self.own.get(key) {
            return Ok(value.clone());
        }
        self.committed(key)
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.own.insert(key.clone(), Some(value.clone()));
        self.writes.push((key, Some(value)));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.own.insert(key.clone(), None);
        self.writes.push((key, None));
    }

    /// The value `key` had before this transaction.
    fn committed(&self, key: &[u8]) -> Result<Option<Vec<u8>>, CommitError> {
        if let Some((_, value)) = self.overlay.get(key) {
            return Ok(value.clone());
        }
        if let Some(value) = self.store_reads.borrow().get(key) {
            return Ok(value.clone());
        }
        let value = self.pipeline.store.get(key)?;
        self.store_reads.borrow_mut().insert(key.to_vec(), value.clone());
        Ok(value)
    }
}

impl crate::kv::keyspace::View for Txn<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, CommitError> {
        Txn::get(self, key)
    }

    fn scan(&self, start: &ScanStart, limit: usize) -> Result<ScanSlice, CommitError> {
        let slice = scan_store(&self.pipeline.store, start, limit)?;
        let pending = self.overlay.iter().map(|(key, (_, value))| (key, value));
        let slice = merge_pending(slice, start, pending);
        Ok(merge_pending(slice, start, self.own.iter()))
    }

    fn key_count(&self) -> Result<u64, CommitError> {
        let mut count = self.base_key_count as i64;
        for (key, value) in &self.own {
            count += i64::from(value.is_some()) - i64::from(self.committed(key)?.is_some());
        }
        Ok(count.max(0) as u64)
    }
}

impl crate::kv::keyspace::Writer for Txn<'_> {
    fn put(&mut self, key: Vec<u8>, stored: Vec<u8>) {
        Txn::put(self, key, stored);
    }

    fn delete(&mut self, key: Vec<u8>) {
        Txn::delete(self, key);
    }

    fn note(&mut self, command: ClientCommand) {
        self.commands.push(command);
    }

    fn savepoint(&self) -> crate::kv::keyspace::Savepoint {
        crate::kv::keyspace::Savepoint { writes: self.writes.len(), notes: self.commands.len() }
    }

    fn rollback(&mut self, savepoint: crate::kv::keyspace::Savepoint) {
        self.writes.truncate(savepoint.writes);
        self.commands.truncate(savepoint.notes);
        self.own = self.writes.iter().cloned().collect();
    }
}

/// A slice of the store from `start`, as the key space's scans want it.
pub(crate) fn scan_store(store: &Store, start: &ScanStart, limit: usize) -> Result<ScanSlice, CommitError> {
    use std::ops::Bound;
    let bound = match start {
        ScanStart::Beginning => Bound::Unbounded,
        ScanStart::After(key) => Bound::Excluded(key.as_slice()),
        ScanStart::AtOrAfter(key) => Bound::Included(key.as_slice()),
    };
    let limit = limit.max(1);
    let pairs = store.scan_from(bound, limit)?;
    let next_after = if pairs.len() == limit { pairs.last().map(|(key, _)| key.clone()) } else { None };
    Ok(ScanSlice { pairs, next_after })
}

/// Lays writes not in `slice` (pending records, a transaction's own writes) over it: those
/// whose keys fall in the range the slice covers (from `start` up to its last key, or to the
/// end when it is the last slice). `None` values delete.
fn merge_pending<'k>(
    slice: ScanSlice,
    start: &ScanStart,
    pending: impl Iterator<Item = (&'k Vec<u8>, &'k Option<Vec<u8>>)>,
) -> ScanSlice {
    let in_range = |key: &[u8]| {
        let after_start = match start {
            ScanStart::Beginning => true,
            ScanStart::After(from) => key > from.as_slice(),
            ScanStart::AtOrAfter(from) => key >= from.as_slice(),
        };
        after_start && slice.next_after.as_deref().is_none_or(|last| key <= last)
    };
    let mut changes: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = pending.filter(|(key, _)| in_range(key)).collect();
    if changes.is_empty() {
        return slice;
    }
    changes.sort_by(|a, b| a.0.cmp(b.0));
    let mut merged: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = slice.pairs.into_iter().collect();
    for (key, value) in changes {
        match value {
            Some(value) => merged.insert(key.clone(), value.clone()),
            None => merged.remove(key),
        };
    }
    ScanSlice { pairs: merged.into_iter().collect::<Vec<StoredPair>>(), next_after: slice.next_after }
}

impl Pipeline {
    /// Starts a pipeline whose next record is `next_lsn` in `epoch`. The store must already hold
    /// every durable record before `next_lsn` (see [`replay`]).
    pub fn start(journal: Journal, store: Arc<Store>, next_lsn: Lsn, epoch: Epoch) -> Pipeline {
        Pipeline::start_watched(journal, store, next_lsn, epoch, Arc::new(Registry::default()))
    }

    /// [`Pipeline::start`], touching the node's `WATCH` registry at every commit.
    pub fn start_watched(
        journal: Journal,
        store: Arc<Store>,
        next_lsn: Lsn,
        epoch: Epoch,
        watches: Arc<Registry>,
    ) -> Pipeline {
        let digest = store.position().digest;
        let key_count = store.position().key_count;
        let overlay: Arc<Mutex<HashMap<Vec<u8>, Pending>>> = Arc::new(Mutex::new(HashMap::new()));
        let applied_overlay = overlay.clone();
        // Once a record is in the store its writes leave the overlay — unless a later record
        // already replaced them there.
        // Paced (see `applier`, "Pacing"): nothing waits on the primary's store in the write
        // path, since readers see pending writes through the overlay.
        let applier = Applier::start_for_pipeline(journal.clone(), store.clone(), APPLY_PACE, move |record| {
            if let RecordBody::Txn { ops, .. } = &record.body {
                let mut overlay = lock(&applied_overlay);
                for op in ops {
                    if overlay.get(&op.key).is_some_and(|(lsn, _)| *lsn == record.lsn) {
                        overlay.remove(&op.key);
                    }
                }
            }
        });
        Pipeline {
            journal,
            store,
            writer: Mutex::new(Writer { next_lsn, epoch, digest, key_count, refusing: None }),
            overlay,
            applier,
            recent: Mutex::new(RecentFrames::default()),
            watches,
        }
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// LSN of the last record appended (committed, maybe not yet durable).
    pub fn last_lsn(&self) -> Lsn {
        lock(&self.writer).next_lsn - 1
    }

    pub fn epoch(&self) -> Epoch {
        lock(&self.writer).epoch
    }

    /// The digest after the last appended record.
    pub fn digest(&self) -> Digest {
        lock(&self.writer).digest
    }

    /// Keys after the last appended record.
    pub fn key_count(&self) -> u64 {
        lock(&self.writer).key_count
    }

    /// A channel holding the LSN the store has applied.
    pub fn subscribe_applied(&self) -> watch::Receiver<Lsn> {
        self.applier.subscribe()
    }

    /// The applier's handle, for waiting on it ([`Applier::hurry_to`]).
    pub fn applier(&self) -> &Applier {
        &self.applier
    }

    /// Refuses (with `reason`) or accepts new writes. Transactions already appended are not
    /// affected: they finish or fail on their own.
    pub fn set_refusing(&self, reason: Option<String>) {
        lock(&self.writer).refusing = reason;
    }

    /// Clears the refusal only if `is_it` says the current one is the one the caller lifts, in
    /// one step: a refusal set meanwhile for another reason (a drain, a fence) stays.
    pub fn clear_refusing_if(&self, is_it: impl Fn(&str) -> bool) -> bool {
        let mut writer = lock(&self.writer);
        if writer.refusing.as_deref().is_some_and(is_it) {
            writer.refusing = None;
            return true;
        }
        false
    }

    /// Why writes are refused right now, if they are.
    pub fn refusing(&self) -> Option<String> {
        lock(&self.writer).refusing.clone()
    }

    /// The current value of `key` as stored bytes: unapplied writes first, then the store.
    pub fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, CommitError> {
        if let Some((_, value)) = lock(&self.overlay).get(key) {
            return Ok(value.clone());
        }
        Ok(self.store.get(key)?)
    }

    /// About `limit` keys from `start` in key order, the writes not yet applied included.
    ///
    /// Pending writes are read before the store: a write leaves the overlay only after it is in
    /// the store, so a key present throughout is seen in one or the other (a `SCAN` promise).
    pub fn scan(&self, start: &ScanStart, limit: usize) -> Result<ScanSlice, CommitError> {
        let pending: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            lock(&self.overlay).iter().map(|(key, (_, value))| (key.clone(), value.clone())).collect();
        let slice = scan_store(&self.store, start, limit)?;
        Ok(merge_pending(slice, start, pending.iter().map(|(key, value)| (key, value))))
    }

    /// Runs `body` as one transaction and appends its record. Returns the record's LSN (`None`
    /// if the transaction wrote nothing) and `body`'s result. The record is not yet durable:
    /// wait on the journal or the replication acks before acknowledging it.
    pub fn commit<R>(
        &self,
        now_ms: u64,
        body: impl FnOnce(&mut Txn<'_>) -> Result<R, CommitError>,
    ) -> Result<(Option<Lsn>, R), CommitError> {
        self.check_running()?;
        let mut writer = lock(&self.writer);
        if let Some(reason) = &writer.refusing {
            return Err(CommitError::NotAccepting(reason.clone()));
        }
        let mut overlay = lock(&self.overlay);
        let mut txn = Txn {
            pipeline: self,
            overlay: &overlay,
            writes: Vec::new(),
            own: HashMap::new(),
            commands: Vec::new(),
            base_key_count: writer.key_count,
            store_reads: Default::default(),
        };
        let result = body(&mut txn)?;
        let writes = std::mem::take(&mut txn.writes);
        let commands = std::mem::take(&mut txn.commands);
        let mut store_reads = txn.store_reads.take();
        if writes.is_empty() {
            return Ok((None, result));
        }
        let mut digest = writer.digest;
        let mut key_count = writer.key_count;
        let mut seen: HashMap<&[u8], Option<Vec<u8>>> = HashMap::new();
        let mut ops = Vec::with_capacity(writes.len());
        for (key, after) in &writes {
            let before = match seen.get(key.as_slice()) {
                Some(value) => value.clone(),
                None => match overlay.get(key) {
                    Some((_, value)) => value.clone(),
                    None => match store_reads.remove(key.as_slice()) {
                        Some(value) => value,
                        None => self.store.get(key)?,
                    },
                },
            };
            digest = digest.updated(key, before.as_deref(), after.as_deref());
            match (before.is_some(), after.is_some()) {
                (false, true) => key_count += 1,
                (true, false) => key_count -= 1,
                _ => {}
            }
            seen.insert(key, after.clone());
            ops.push(crate::storage::journal::Op { key: key.clone(), before, after: after.clone() });
        }
        let record = Record {
            lsn: writer.next_lsn,
            epoch: writer.epoch,
            timestamp_ms: now_ms,
            digest_after: digest,
            body: RecordBody::Txn { ops, commands },
        };
        self.append_and_remember(&record)?;
        if self.watches.is_watching() {
            for (key, _) in &writes {
                self.watches.touch(key);
            }
        }
        for (key, after) in writes {
            overlay.insert(key, (record.lsn, after));
        }
        drop(overlay);
        writer.next_lsn += 1;
        writer.digest = digest;
        writer.key_count = key_count;
        let lsn = record.lsn;
        self.send_to_applier(record)?;
        Ok((Some(lsn), result))
    }

    /// Commit time (wall-clock ms) of record `lsn`, or of the oldest record still in memory if
    /// `lsn` is older than that (so the age it gives is a lower bound); `None` past the end.
    pub fn commit_time(&self, lsn: Lsn) -> Option<u64> {
        let recent = lock(&self.recent);
        let first = recent.frames.front()?.0;
        let index = lsn.saturating_sub(first) as usize;
        recent.frames.get(index).map(|(_, time, _)| *time)
    }

    /// Appends a canary record, unless writes are refused (draining, fenced, not yet confirmed
    /// by the peer): a canary takes an LSN like a write, so it must not slip past a drain.
    /// `None` when refused.
    pub fn append_canary(&self, now_ms: u64, sequence: u64) -> Result<Option<Lsn>, CommitError> {
        self.check_running()?;
        let writer = lock(&self.writer);
        if writer.refusing.is_some() {
            return Ok(None);
        }
        self.append_locked(writer, now_ms, RecordBody::Canary { sequence }).map(Some)
    }

    /// Appends a record that changes no data (epoch-start, canary, checkpoint).
    pub fn append_control(&self, now_ms: u64, body: RecordBody) -> Result<Lsn, CommitError> {
        self.check_running()?;
        self.append_locked(lock(&self.writer), now_ms, body)
    }

    fn append_locked(
        &self,
        mut writer: MutexGuard<'_, Writer>,
        now_ms: u64,
        body: RecordBody,
    ) -> Result<Lsn, CommitError> {
        let record = Record {
            lsn: writer.next_lsn,
            epoch: writer.epoch,
            timestamp_ms: now_ms,
            digest_after: writer.digest,
            body,
        };
        self.append_and_remember(&record)?;
        writer.next_lsn += 1;
        let lsn = record.lsn;
        self.send_to_applier(record)?;
        Ok(lsn)
    }

    /// Encodes `record` once, keeps the frame in memory for shipping, and appends it to the
    /// journal. The frame is remembered *before* the append: once appended it may become durable
    /// at any moment, and the shipper, woken by that, must find it in memory. (Remembering after
    /// the append lost that race now and then, and each loss sent the shipper to read whole
    /// segment files back.) Called with the writer lock held, so nothing else is remembered in
    /// between and a failed append can take its frame back.
    fn append_and_remember(&self, record: &Record) -> Result<(), CommitError> {
        let mut frame = Vec::with_capacity(crate::storage::journal::format::encoded_len(record));
        crate::storage::journal::format::encode_record(record, &mut frame);
        let frame = Arc::new(frame);
        self.remember(record, frame.clone());
        if let Err(err) = self.journal.append_encoded(record, &frame) {
            let mut recent = lock(&self.recent);
            if recent.frames.back().is_some_and(|(lsn, _, _)| *lsn == record.lsn) {
                if let Some((_, _, taken)) = recent.frames.pop_back() {
                    recent.bytes -= taken.len();
                }
            }
            return Err(err.into());
        }
        Ok(())
    }

    fn remember(&self, record: &Record, frame: Arc<Vec<u8>>) {
        let mut recent = lock(&self.recent);
        recent.bytes += frame.len();
        recent.frames.push_back((record.lsn, record.timestamp_ms, frame));
        while recent.bytes > RECENT_FRAMES_BYTES && recent.frames.len() > 1 {
            if let Some((_, _, old)) = recent.frames.pop_front() {
                recent.bytes -= old.len();
            }
        }
    }

    /// Frames `from..=until` from memory, up to about `max_bytes`, concatenated, with the last
    /// LSN included; `None` if `from` is no longer (or not yet) in memory.
    pub fn recent_frames(&self, from: Lsn, until: Lsn, max_bytes: usize) -> Option<(Vec<u8>, Lsn)> {
        let recent = lock(&self.recent);
        let first = recent.frames.front()?.0;
        if from < first || from > until {
            return None;
        }
        let mut out = Vec::new();
        let mut last = from - 1;
        for (lsn, _, frame) in recent.frames.iter().skip((from - first) as usize) {
            if *lsn > until || (!out.is_empty() && out.len() + frame.len() > max_bytes) {
                break;
            }
            out.extend_from_slice(frame);
            last = *lsn;
        }
        (last >= from).then_some((out, last))
    }

    fn send_to_applier(&self, record: Record) -> Result<(), CommitError> {
        self.applier.submit(record).map_err(CommitError::Stopped)
    }

    fn check_running(&self) -> Result<(), CommitError> {
        match self.applier.failure() {
            Some(reason) => Err(CommitError::Stopped(reason)),
            None => Ok(()),
        }
    }

    /// Why the pipeline stopped, if it did.
    pub fn failure(&self) -> Option<String> {
        self.applier.failure()
    }

    /// Stops the applier after it has applied every record that becomes durable.
    pub fn shutdown(&self) {
        self.applier.shutdown();
    }
}

/// Applies to `store` every record of `records` past its applied LSN (recovery at start-up).
/// Returns how many were applied. Stops at the first digest mismatch with an error.
pub fn replay(store: &Store, records: impl Iterator<Item = Result<Record, JournalError>>) -> Result<u64, CommitError> {
    let mut applied = 0;
    for record in records {
        let record = record?;
        match store.apply(&record)? {
            Applied::Done { digest_matches: false, digest } => {
                return Err(CommitError::Stopped(format!(
                    "replay: digest mismatch at LSN {}: store has {digest}, record says {}",
                    record.lsn, record.digest_after
                )))
            }
            Applied::Done { .. } => applied += 1,
            Applied::AlreadyApplied => {}
        }
    }
    Ok(applied)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another holder leaves plain data behind; keep going rather than cascade.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::journal::{JournalIdentity, JournalKind, JournalOptions};

    fn setup(dir: &std::path::Path) -> (Journal, Arc<Store>) {
        let identity = JournalIdentity { cluster: [1; 16], node: "a".into(), kind: JournalKind::Local };
        let (journal, _) = Journal::open(&dir.join("journal"), identity, JournalOptions::default()).unwrap();
        (journal, Arc::new(Store::open(&dir.join("store")).unwrap()))
    }

    #[test]
    fn commits_are_read_back_applied_and_replayable() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, store) = setup(dir.path());
        let pipeline = Pipeline::start(journal.clone(), store.clone(), 1, 1);
        let mut last = 0;
        for i in 0..200u32 {
            let (lsn, ()) = pipeline
                .commit(0, |txn| {
                    let old = txn.get(b"counter")?.map(|v| u32::from_le_bytes(v.try_into().unwrap())).unwrap_or(0);
                    txn.put(b"counter".to_vec(), (old + 1).to_le_bytes().to_vec());
                    txn.put(format!("k{i}").into_bytes(), b"v".to_vec());
                    Ok(())
                })
                .unwrap();
            last = lsn.unwrap();
        }
        assert_eq!(pipeline.read(b"counter").unwrap(), Some(200u32.to_le_bytes().to_vec()));
        journal.sync_to(last).unwrap();
        let mut applied = pipeline.subscribe_applied();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while *applied.borrow_and_update() < last {
            assert!(std::time::Instant::now() < deadline, "applier did not catch up");
            std::thread::yield_now();
        }
        assert_eq!(store.position().digest, pipeline.digest());
        assert_eq!(store.full_digest().unwrap().0, pipeline.digest());

        // A fresh store rebuilt from the journal reaches the same state.
        let other = Store::open(&dir.path().join("store2")).unwrap();
        let records = journal.read_from(1).unwrap().map(|e| e.map(|e| e.record));
        assert_eq!(replay(&other, records).unwrap(), 200);
        assert_eq!(other.position().digest, pipeline.digest());
    }

    #[test]
    fn every_durable_record_is_already_in_memory_for_the_shipper() {
        // The shipper is woken by the durable LSN and asks memory first; a durable record that
        // is not there yet sends it to read whole segment files back. Committers on 4 threads,
        // and a watcher asking for each new durable LSN the moment it appears.
        let dir = tempfile::tempdir().unwrap();
        let (journal, store) = setup(dir.path());
        let pipeline = Arc::new(Pipeline::start(journal.clone(), store, 1, 1));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let (pipeline, journal, done) = (pipeline.clone(), journal.clone(), done.clone());
            std::thread::spawn(move || {
                let (mut seen, mut misses) = (0, Vec::new());
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let durable = journal.durable_lsn();
                    if durable > seen {
                        if pipeline.recent_frames(durable, durable, 1 << 20).is_none() {
                            misses.push(durable);
                        }
                        seen = durable;
                    }
                }
                misses
            })
        };
        let committers: Vec<_> = (0..4)
            .map(|t| {
                let pipeline = pipeline.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000u32 {
                        let key = format!("t{t}-k{}", i % 100).into_bytes();
                        let put = |txn: &mut Txn| {
                            txn.put(key, i.to_le_bytes().to_vec());
                            Ok(())
                        };
                        pipeline.commit(0, put).unwrap();
                    }
                })
            })
            .collect();
        for committer in committers {
            committer.join().unwrap();
        }
        journal.sync_to(pipeline.last_lsn()).unwrap();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let misses = watcher.join().unwrap();
        assert!(
            misses.is_empty(),
            "durable but not in memory: {} times, first LSNs {:?}",
            misses.len(),
            &misses[..misses.len().min(5)]
        );
    }

    /// A restarted primary's refusal is lifted by its peer's confirmation; a drain's, set in
    /// between from another thread, is not.
    #[test]
    fn only_the_refusal_asked_for_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, store) = setup(dir.path());
        let pipeline = Pipeline::start(journal, store, 1, 1);
        let restarted = |reason: &str| reason.starts_with("restarted");
        pipeline.set_refusing(Some("draining for a switchover".into()));
        assert!(!pipeline.clear_refusing_if(restarted));
        assert_eq!(pipeline.refusing().as_deref(), Some("draining for a switchover"));
        pipeline.set_refusing(Some("restarted primary waits for b".into()));
        assert!(pipeline.clear_refusing_if(restarted));
        assert_eq!(pipeline.refusing(), None);
        assert!(!pipeline.clear_refusing_if(restarted), "nothing left to clear");
    }

    #[test]
    fn a_rejected_transaction_writes_nothing_and_refusal_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, store) = setup(dir.path());
        let pipeline = Pipeline::start(journal.clone(), store, 1, 1);
        let err = pipeline
            .commit(0, |txn| -> Result<(), CommitError> {
                txn.put(b"x".to_vec(), b"1".to_vec());
                Err(CommitError::Rejected("no".into()))
            })
            .unwrap_err();
        assert!(matches!(err, CommitError::Rejected(_)));
        assert_eq!(journal.last_lsn(), None);
        assert_eq!(pipeline.read(b"x").unwrap(), None);
        pipeline.set_refusing(Some("draining".into()));
        assert!(matches!(
            pipeline.commit(0, |t| {
                t.put(b"y".to_vec(), vec![]);
                Ok(())
            }),
            Err(CommitError::NotAccepting(_))
        ));
    }
}
