//! The applier: a thread that applies records to the store, in LSN order, once the journal
//! they came from says they are durable. Used by the primary's pipeline (local journal) and by
//! the backup (remote journal).
//!
//! ## Invariants
//! - A record is applied only after `journal.sync_to(record.lsn)` returned: the store never holds
//!   a record its journal could lose in a crash.
//! - After each record the store's digest is compared with the record's; on a mismatch, or any
//!   error, the applier stops for good and says why in [`Applier::failure`] — applying more on
//!   top of a diverged store would only spread the damage. A mismatching record is not applied:
//!   the store stays at the record before it.
//! - `after_apply` runs once per record, in LSN order, after the record is in the store (or was
//!   already there); the applied LSN is published after it.
//!
//! ## Batches
//! The thread takes everything queued, up to [`MAX_RUN_RECORDS`] records or about
//! [`MAX_RUN_BYTES`] bytes, and applies the part of it that is durable as one run
//! ([`Store::apply_many`]: one sled batch). It waits (`sync_to`) only for the first queued record,
//! then applies every queued record the journal's durable LSN covers, so a record is never held
//! back for an fsync it did not need; records past the durable LSN wait for the next round. When
//! the queue holds one record at a time this is the old one-record-per-batch behaviour; when it
//! is long (catch-up, bursts) the cost of a sled batch and of the bookkeeping is shared.
//!
//! ## The confirmation gate (backup)
//! A primary ships records before its own fsync (even before its write) (`replication`, "Overlapped
//! fsyncs"), and says with every batch and heartbeat how far it is durable. A backup's applier
//! is started [`Applier::start_gated`]: it applies nothing past the LSN its primary confirmed
//! ([`Applier::confirm`]), so its store never holds a record its primary could still lose in a
//! crash. Records past it wait in the queue; a shutdown drops them (they stay in the journal).
//!
//! ## Pacing
//! Every sled batch rolls sled's IO buffer twice, and each roll hands a write to sled's thread
//! pool, whose `notify_all` wakes every idle pool thread: at one batch per journal fsync that
//! was more than one context switch per SET on a loaded primary (docs/benchmarks.md, "Figures moved out of module headers"). Where nothing waits on
//! the store (the primary: its reads see pending writes through the pipeline's overlay), the
//! applier starts a run at most every `pace`, so runs are larger and batches fewer. The backup
//! is paced too unless the pair runs at `applied`, where every commit waits for its applier.
//!
//! Pacing never delays a waiter: [`Applier::hurry_to`] (called by whoever waits for an applied
//! LSN: a switchover's wait-applied phase, a rejoin, a digest check) skips the pause until that
//! LSN is applied.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::storage::journal::{Journal, Lsn, Record, RecordBody};
use crate::storage::store::{Before, Store};

/// Most records applied as one run (one sled batch).
pub const MAX_RUN_RECORDS: usize = 4096;
/// About the most key and value bytes applied as one run (a single larger record still goes alone).
pub const MAX_RUN_BYTES: usize = 8 * 1024 * 1024;
/// How often a paced applier starts a run, at most (see "Pacing"). At 2 ms sled's pool threads
/// still took ~0.13 context switches per SET on each node; at 10 ms 0.04, and the whole machine
/// did 20% less work per async SET (docs/benchmarks.md). 25 ms bought nothing more.
pub const APPLY_PACE: Duration = Duration::from_millis(10);

pub struct Applier {
    tx: Mutex<Option<Sender<Record>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    applied_rx: watch::Receiver<Lsn>,
    failure: Arc<Mutex<Option<String>>>,
    /// While the applied LSN is below this, runs are not paced (see [`Applier::hurry_to`]).
    hurry_until: Arc<AtomicU64>,
    /// The applier thread, to cut a pause short.
    worker: Option<Thread>,
    gate: Arc<Gate>,
}

/// The highest LSN the applier may apply (see "The confirmation gate"), and whether it is
/// shutting down (then it stops waiting for a confirmation that may never come).
struct Gate {
    confirmed: AtomicU64,
    closing: AtomicBool,
}

impl Applier {
    /// Starts the thread. `after_apply` runs after each record is in the store.
    pub fn start(journal: Journal, store: Arc<Store>, after_apply: impl Fn(&Record) + Send + 'static) -> Applier {
        Applier::start_paced(journal, store, Duration::ZERO, after_apply)
    }

    /// [`Applier::start`], taking a run at most every `pace` (see "Pacing" above).
    pub fn start_paced(
        journal: Journal,
        store: Arc<Store>,
        pace: Duration,
        after_apply: impl Fn(&Record) + Send + 'static,
    ) -> Applier {
        Applier::start_with_gate(journal, store, pace, Lsn::MAX, Before::Stored, after_apply)
    }

    /// The primary pipeline's applier: [`Applier::start_paced`], taking the digest's before-values
    /// from the records' images instead of reading them back from sled (`Before::FromRecord`;
    /// `pipeline`, "The primary's applier trusts its own reads").
    pub fn start_for_pipeline(
        journal: Journal,
        store: Arc<Store>,
        pace: Duration,
        after_apply: impl Fn(&Record) + Send + 'static,
    ) -> Applier {
        Applier::start_with_gate(journal, store, pace, Lsn::MAX, Before::FromRecord, after_apply)
    }

    /// A backup's applier: [`Applier::start_paced`], applying nothing past the store's current
    /// LSN until [`Applier::confirm`] allows more (see "The confirmation gate").
    pub fn start_gated(
        journal: Journal,
        store: Arc<Store>,
        pace: Duration,
        after_apply: impl Fn(&Record) + Send + 'static,
    ) -> Applier {
        let applied = store.position().applied_lsn;
        Applier::start_with_gate(journal, store, pace, applied, Before::Stored, after_apply)
    }

    fn start_with_gate(
        journal: Journal,
        store: Arc<Store>,
        pace: Duration,
        confirmed: Lsn,
        before: Before,
        after_apply: impl Fn(&Record) + Send + 'static,
    ) -> Applier {
        let gate = Arc::new(Gate { confirmed: AtomicU64::new(confirmed), closing: AtomicBool::new(false) });
        let thread_gate = gate.clone();
        let (tx, rx) = channel::<Record>();
        let (applied_tx, applied_rx) = watch::channel(store.position().applied_lsn);
        let failure = Arc::new(Mutex::new(None));
        let thread_failure = failure.clone();
        let hurry_until = Arc::new(AtomicU64::new(0));
        let thread_hurry = hurry_until.clone();
        let thread = std::thread::Builder::new()
            .name("applier".into())
            .spawn(move || {
                let mut queued = Vec::new();
                let mut last_run = Instant::now();
                while take_queued(&rx, &mut queued) {
                    if queued.len() < MAX_RUN_RECORDS {
                        let applied = *applied_tx.borrow();
                        if pause_until(last_run + pace, || thread_hurry.load(Ordering::Acquire) > applied) {
                            take_queued(&rx, &mut queued);
                        }
                    }
                    last_run = Instant::now();
                    if !wait_confirmed(&thread_gate, queued[0].lsn) {
                        // Shutting down: what the primary never confirmed stays unapplied.
                        return;
                    }
                    let confirmed = thread_gate.confirmed.load(Ordering::Acquire);
                    let result =
                        apply_durable(&journal, &store, &mut queued, confirmed, before, &after_apply, &applied_tx);
                    if let Err(reason) = result {
                        tracing::error!(%reason, "the applier stops");
                        *lock(&thread_failure) = Some(reason);
                        return;
                    }
                }
            })
            .ok();
        if thread.is_none() {
            *lock(&failure) = Some("could not start the applier thread".into());
        }
        let worker = thread.as_ref().map(|t| t.thread().clone());
        Applier { tx: Mutex::new(Some(tx)), thread: Mutex::new(thread), applied_rx, failure, hurry_until, worker, gate }
    }

    /// The primary has made everything up to `lsn` durable: the applier may apply up to it.
    pub fn confirm(&self, lsn: Lsn) {
        if self.gate.confirmed.fetch_max(lsn, Ordering::AcqRel) < lsn {
            if let Some(worker) = &self.worker {
                worker.unpark();
            }
        }
    }

    /// The LSN the applier may apply up to (`Lsn::MAX` when ungated).
    pub fn confirmed(&self) -> Lsn {
        self.gate.confirmed.load(Ordering::Acquire)
    }

    /// Someone waits for `lsn` to be applied: no pause until it is.
    pub fn hurry_to(&self, lsn: Lsn) {
        self.hurry_until.fetch_max(lsn, Ordering::AcqRel);
        if let Some(worker) = &self.worker {
            worker.unpark();
        }
    }

    /// Queues a record (records must be queued in LSN order).
    pub fn submit(&self, record: Record) -> Result<(), String> {
        if let Some(reason) = self.failure() {
            return Err(reason);
        }
        match lock(&self.tx).as_ref().map(|tx| tx.send(record)) {
            Some(Ok(())) => Ok(()),
            _ => Err(self.failure().unwrap_or_else(|| "the applier has stopped".into())),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Lsn> {
        self.applied_rx.clone()
    }

    pub fn applied_lsn(&self) -> Lsn {
        *self.applied_rx.borrow()
    }

    pub fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// Applies what was queued and becomes durable (and, gated, confirmed), then stops the thread.
    pub fn shutdown(&self) {
        lock(&self.tx).take();
        self.gate.closing.store(true, Ordering::Release);
        if let Some(worker) = &self.worker {
            worker.unpark();
        }
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The pacing pause: sleeps until `until` unless `hurried()` says someone waits, and checks it
/// again whenever [`Applier::hurry_to`] unparks the thread. True if it paused at all (so what
/// arrived meanwhile can join the run).
fn pause_until(until: Instant, hurried: impl Fn() -> bool) -> bool {
    let mut paused = false;
    // Pacing, not synchronisation: nothing waits on the pause itself, and a waiter cuts it short.
    while !hurried() {
        match until.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()) {
            Some(left) => std::thread::park_timeout(left),
            None => break,
        }
        paused = true;
    }
    paused
}

/// Waits until the gate lets `lsn` be applied; false if the applier is closing first.
fn wait_confirmed(gate: &Gate, lsn: Lsn) -> bool {
    // A condition, not a pause: `confirm` and `shutdown` unpark the thread after changing it.
    while gate.confirmed.load(Ordering::Acquire) < lsn {
        if gate.closing.load(Ordering::Acquire) {
            return false;
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
    true
}

/// Tops `queued` up from the channel: waits for a record only if `queued` is empty, then takes
/// whatever else is already there, within the run limits. False once the channel is closed and
/// nothing is left to apply.
fn take_queued(rx: &Receiver<Record>, queued: &mut Vec<Record>) -> bool {
    if queued.is_empty() {
        match rx.recv() {
            Ok(record) => queued.push(record),
            Err(_) => return false,
        }
    }
    let mut bytes: usize = queued.iter().map(record_bytes).sum();
    while queued.len() < MAX_RUN_RECORDS && bytes < MAX_RUN_BYTES {
        match rx.try_recv() {
            Ok(record) => {
                bytes += record_bytes(&record);
                queued.push(record);
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
        }
    }
    true
}

/// Key and value bytes of a record (what a run's sled batch will hold), roughly.
fn record_bytes(record: &Record) -> usize {
    match &record.body {
        RecordBody::Txn { ops, .. } => {
            ops.iter().map(|op| op.key.len() + op.after.as_ref().map_or(0, Vec::len) + 16).sum::<usize>() + 64
        }
        _ => 64,
    }
}

/// Waits until the first queued record is durable, then applies, as one run, every queued record
/// the journal's durable LSN (and `confirmed`, which the caller checked covers the first) covers, removes them from `queued`, calls `after_apply` for each in
/// order and publishes the last one's LSN. Records past the durable LSN stay queued for the next
/// round. On a digest mismatch the records before it count as applied; the error names it.
fn apply_durable(
    journal: &Journal,
    store: &Store,
    queued: &mut Vec<Record>,
    confirmed: Lsn,
    before: Before,
    after_apply: &impl Fn(&Record),
    applied_tx: &watch::Sender<Lsn>,
) -> Result<(), String> {
    let Some(first) = queued.first().map(|r| r.lsn) else {
        return Ok(());
    };
    journal.sync_to(first).map_err(|e| format!("cannot apply LSN {first}: {e}"))?;
    let durable = journal.durable_lsn().max(first).min(confirmed.max(first));
    let take = queued.iter().position(|r| r.lsn > durable).unwrap_or(queued.len());
    let run = &queued[..take];
    let run_last = run.last().map_or(first, |r| r.lsn);
    let describe = || if first == run_last { format!("LSN {first}") } else { format!("LSNs {first} to {run_last}") };
    let outcome = store.apply_many_reading(run, before).map_err(|e| format!("cannot apply {}: {e}", describe()))?;
    let good = outcome.mismatch.map_or(run.len(), |m| run.iter().position(|r| r.lsn >= m.lsn).unwrap_or(run.len()));
    for record in &run[..good] {
        after_apply(record);
    }
    if let Some(record) = run[..good].last() {
        applied_tx.send_replace(record.lsn);
    }
    if let Some(m) = outcome.mismatch {
        return Err(format!("digest mismatch at LSN {}: store has {}, record says {}", m.lsn, m.store, m.record));
    }
    queued.drain(..take);
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data behind the lock; a panicked holder leaves nothing half-done that matters more.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::digest::Digest;
    use crate::storage::journal::{JournalIdentity, JournalKind, JournalOptions, Op};

    fn setup(dir: &std::path::Path) -> (Journal, Arc<Store>) {
        let identity = JournalIdentity { cluster: [7; 16], node: "b".into(), kind: JournalKind::Remote };
        let (journal, _) = Journal::open(&dir.join("journal"), identity, JournalOptions::default()).unwrap();
        (journal, Arc::new(Store::open(&dir.join("store")).unwrap()))
    }

    /// `count` single-key SETs over 50 keys, with the right digests, from a scratch store.
    fn records(dir: &std::path::Path, count: u64) -> Vec<Record> {
        let scratch = Store::open(&dir.join("scratch")).unwrap();
        (1..=count)
            .map(|lsn| {
                let key = format!("k{}", lsn % 50).into_bytes();
                let (ops, digest_after) = scratch.prepare(vec![(key, Some(lsn.to_le_bytes().to_vec()))]).unwrap();
                let record = Record { lsn, epoch: 1, timestamp_ms: 0, digest_after, body: RecordBody::txn(ops) };
                scratch.apply(&record).unwrap();
                record
            })
            .collect()
    }

    /// [`setup`] with `count` of [`records`] appended and durable.
    fn durable_records(dir: &std::path::Path, count: u64) -> (Journal, Arc<Store>, Vec<Record>) {
        let (journal, store) = setup(dir);
        let records = records(dir, count);
        for record in &records {
            journal.append(record).unwrap();
        }
        journal.sync_to(count).unwrap();
        (journal, store, records)
    }

    fn wait_for(applier: &Applier, lsn: Lsn) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while applier.applied_lsn() < lsn && applier.failure().is_none() {
            assert!(std::time::Instant::now() < deadline, "applier stuck at {}", applier.applied_lsn());
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    #[test]
    fn a_burst_is_applied_in_order_with_after_apply_for_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, store) = setup(dir.path());
        let records = records(dir.path(), 10_000);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_in = seen.clone();
        let check_store = store.clone();
        let applier = Applier::start(journal.clone(), store.clone(), move |record| {
            // The record is in the store when after_apply runs.
            assert!(check_store.position().applied_lsn >= record.lsn);
            lock(&seen_in).push(record.lsn);
        });
        // Appended (not yet fsynced) and queued faster than the applier takes them, so runs form
        // and some must wait for the journal's flusher. As in the node, a record is appended
        // before it is submitted (the applier refuses to wait for one that was not).
        for record in &records {
            journal.append(record).unwrap();
            applier.submit(record.clone()).unwrap();
        }
        wait_for(&applier, 10_000);
        assert_eq!(applier.failure(), None);
        assert_eq!(*lock(&seen), (1..=10_000).collect::<Vec<Lsn>>());
        assert!(journal.durable_lsn() >= 10_000);
        assert_eq!(store.position().digest, records.last().unwrap().digest_after);
        assert_eq!(store.full_digest().unwrap(), (store.position().digest, 50));
        // Re-sent records are skipped, and after_apply still runs for them.
        applier.submit(records[9_999].clone()).unwrap();
        applier.shutdown();
        assert_eq!(lock(&seen).len(), 10_001);
        assert_eq!(store.position().applied_lsn, 10_000);
    }

    #[test]
    fn a_digest_mismatch_stops_the_applier_before_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, store) = setup(dir.path());
        let mut records = records(dir.path(), 300);
        records[199].digest_after = Digest(records[199].digest_after.0.wrapping_add(1));
        for record in &records {
            journal.append(record).unwrap();
        }
        journal.sync_to(300).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_in = seen.clone();
        let applier = Applier::start(journal.clone(), store.clone(), move |record| lock(&seen_in).push(record.lsn));
        for record in &records {
            applier.submit(record.clone()).unwrap();
        }
        wait_for(&applier, 300);
        let failure = applier.failure().expect("the applier stopped");
        assert!(failure.contains("digest mismatch at LSN 200"), "{failure}");
        assert_eq!(applier.applied_lsn(), 199);
        assert_eq!(*lock(&seen), (1..=199).collect::<Vec<Lsn>>());
        assert_eq!(store.position().applied_lsn, 199);
        assert_eq!(store.position().digest, records[198].digest_after);
        assert!(applier.submit(records[0].clone()).is_err());
    }

    #[test]
    fn a_paced_applier_waits_out_its_pace_unless_someone_waits_for_an_lsn() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, store, records) = durable_records(dir.path(), 300);
        // A pace far longer than the test's deadlines: only hurrying can apply anything.
        let applier = Applier::start_paced(journal.clone(), store.clone(), Duration::from_secs(600), |_| {});
        for record in &records[..100] {
            applier.submit(record.clone()).unwrap();
        }
        applier.hurry_to(100);
        wait_for(&applier, 100);
        // Hurrying is per LSN: the next records wait for the pace again...
        for record in &records[100..200] {
            applier.submit(record.clone()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(applier.applied_lsn(), 100, "a paced run started without being hurried");
        // ...until someone waits for them.
        applier.hurry_to(200);
        wait_for(&applier, 200);
        assert_eq!(applier.failure(), None);
        assert_eq!(store.position().digest, records[199].digest_after);
    }

    /// A backup's applier applies nothing its primary did not confirm; a shutdown drops what is
    /// left unconfirmed instead of waiting for a confirmation that will not come.
    #[test]
    fn a_gated_applier_applies_only_what_was_confirmed() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, store, records) = durable_records(dir.path(), 300);
        let applier = Applier::start_gated(journal.clone(), store.clone(), Duration::ZERO, |_| {});
        assert_eq!(applier.confirmed(), 0, "a fresh store confirms nothing");
        for record in &records {
            applier.submit(record.clone()).unwrap();
        }
        applier.confirm(120);
        wait_for(&applier, 120);
        // The records past 120 are durable here and queued: only the confirmation holds them.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(applier.applied_lsn(), 120, "applied past the confirmed LSN");
        applier.confirm(250);
        wait_for(&applier, 250);
        applier.shutdown();
        assert_eq!(store.position().applied_lsn, 250);
        assert_eq!(store.position().digest, records[249].digest_after);
        assert_eq!(applier.failure(), None);
    }

    #[test]
    fn control_records_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, store) = setup(dir.path());
        let op = Op { key: b"k".to_vec(), before: None, after: Some(b"v".to_vec()) };
        let digest = Digest::EMPTY.updated(b"k", None, Some(b"v"));
        let records = [
            Record { lsn: 1, epoch: 1, timestamp_ms: 0, digest_after: digest, body: RecordBody::txn(vec![op]) },
            Record {
                lsn: 2,
                epoch: 1,
                timestamp_ms: 0,
                digest_after: digest,
                body: RecordBody::Canary { sequence: 1 },
            },
        ];
        let applier = Applier::start(journal.clone(), store.clone(), |_| {});
        for record in &records {
            journal.append(record).unwrap();
            applier.submit(record.clone()).unwrap();
        }
        applier.shutdown();
        assert_eq!(applier.failure(), None);
        assert_eq!(store.position(), crate::storage::store::Position { applied_lsn: 2, digest, key_count: 1 });
    }
}
