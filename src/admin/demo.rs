//! `hotpair demo`: the durable core at work on one node, end to end, with each phase timed —
//! concurrent commits through group commit into the journal and the store, a rewind of the last
//! transactions from their before-images, a restart that recovers both, and the journal listing.
//! Also `append_loop`, the child process the crash tests SIGKILL.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::storage::digest::Digest;
use crate::storage::journal::{Journal, JournalIdentity, JournalKind, JournalOptions, Lsn, Op, Record, RecordBody};
use crate::storage::store::Store;
use crate::Error;

/// How many of the last transactions the demo rewinds.
const DEMO_REWIND: u64 = 100;
/// Distinct keys the demo writes, so transactions overwrite each other.
const DEMO_KEYS: u64 = 1000;

pub fn run(dir: Option<PathBuf>, records: u64, committers: u64) -> Result<(), Error> {
    if records <= DEMO_REWIND || committers == 0 {
        return Err(Error::Usage(format!("--records must be more than {DEMO_REWIND} and --committers at least 1")));
    }
    let (dir, temporary) = match dir {
        Some(dir) => (dir, false),
        None => {
            (std::env::temp_dir().join(format!("hotpair-demo-{}-{}", std::process::id(), crate::clock::now_ms())), true)
        }
    };
    if dir.join("journal").exists() {
        return Err(Error::Usage(format!("{} already holds a journal; give an empty directory", dir.display())));
    }
    let result = run_in(&dir, records, committers);
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn identity() -> JournalIdentity {
    JournalIdentity { cluster: *uuid::Uuid::new_v4().as_bytes(), node: "demo".into(), kind: JournalKind::Local }
}

fn open(dir: &Path, identity: &JournalIdentity) -> Result<(Journal, Store), Error> {
    let (journal, _) = Journal::open(&dir.join("journal").join("local"), identity.clone(), JournalOptions::default())?;
    let store = Store::open(&dir.join("store"))?;
    Ok((journal, store))
}

fn run_in(dir: &Path, records: u64, committers: u64) -> Result<(), Error> {
    println!("hotpair demo in {}", dir.display());
    let identity = identity();

    let started = Instant::now();
    let (journal, store) = open(dir, &identity)?;
    let store = Arc::new(store);
    let committed = commit_concurrently(&journal, &store, records, committers)?;
    let elapsed = started.elapsed();
    let fsyncs = journal.stats().fsyncs.max(1);
    println!(
        "phase commit:  {committed} transactions from {committers} committers in {:.0} ms ({:.0} txn/s durable), {fsyncs} fsyncs ({:.1} txns per fsync)",
        elapsed.as_secs_f64() * 1000.0,
        committed as f64 / elapsed.as_secs_f64(),
        committed as f64 / fsyncs as f64
    );

    let started = Instant::now();
    let keep = records - DEMO_REWIND;
    let tail = journal.read_reverse_after(keep)?;
    for record in &tail {
        store.rewind(record)?;
    }
    journal.truncate_after(keep)?;
    let expected = journal
        .read_from(keep)?
        .next()
        .transpose()?
        .map(|entry| entry.record.digest_after)
        .ok_or_else(|| Error::Failed(format!("record {keep} is missing after the rewind")))?;
    check(
        store.position().digest == expected,
        "the rewound store's digest equals the digest recorded at the kept LSN",
    )?;
    println!(
        "phase rewind:  undid the last {} transactions from their before-images and cut the journal after LSN {keep} in {:.1} ms",
        tail.len(),
        started.elapsed().as_secs_f64() * 1000.0
    );

    let started = Instant::now();
    store.flush()?;
    drop(store);
    drop(journal);
    let (journal, store) = open(dir, &identity)?;
    let position = store.position();
    let (full, count) = store.full_digest()?;
    check(journal.last_lsn() == Some(keep), "the reopened journal ends at the kept LSN")?;
    check(position.applied_lsn == keep, "the reopened store is at the kept LSN")?;
    check(full == position.digest && count == position.key_count, "a full scan gives the kept digest and key count")?;
    println!(
        "phase recover: reopened journal and store at LSN {keep}, {count} keys, digest {} (full scan agrees) in {:.1} ms",
        position.digest,
        started.elapsed().as_secs_f64() * 1000.0
    );
    print!("{}", crate::admin::journal_tools::ls(dir, false)?);
    println!("demo: ok");
    Ok(())
}

fn check(condition: bool, what: &str) -> Result<(), Error> {
    if condition {
        Ok(())
    } else {
        Err(Error::Failed(format!("demo check failed: {what}")))
    }
}

/// Commits `records` transactions from `committers` threads. LSN assignment, prepare, append and
/// apply are serialised (one writer); waiting for durability is not, which is what lets one
/// fsync serve many committers.
fn commit_concurrently(journal: &Journal, store: &Arc<Store>, records: u64, committers: u64) -> Result<u64, Error> {
    let writer = Arc::new(Mutex::new(journal.next_lsn().unwrap_or(1)));
    let per_thread = records / committers;
    let extra = records % committers;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..committers)
            .map(|t| {
                let writer = writer.clone();
                let count = per_thread + u64::from(t < extra);
                scope.spawn(move || -> Result<u64, Error> {
                    for _ in 0..count {
                        let lsn = {
                            let mut next = writer.lock().map_err(|_| Error::Failed("a committer panicked".into()))?;
                            let lsn = *next;
                            let key = format!("key:{}", lsn % DEMO_KEYS).into_bytes();
                            let value = format!("value written at lsn {lsn}").into_bytes();
                            let (ops, digest_after) = store.prepare(vec![(key, Some(value))])?;
                            let record = Record {
                                lsn,
                                epoch: 1,
                                timestamp_ms: crate::clock::now_ms(),
                                digest_after,
                                body: RecordBody::txn(ops),
                            };
                            journal.append(&record)?;
                            store.apply(&record)?;
                            *next += 1;
                            lsn
                        };
                        journal.sync_to(lsn)?;
                    }
                    Ok(count)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().map_err(|_| Error::Failed("a committer panicked".into()))?).sum()
    })
}

/// Identity the crash tests use for their journal.
pub fn crash_test_identity() -> JournalIdentity {
    JournalIdentity { cluster: [0x11; 16], node: "crash".into(), kind: JournalKind::Local }
}

/// Segment size of the crash child's journal: small, so that kills often land near a roll.
pub const CRASH_TEST_SEGMENT_BYTES: u64 = 256 * 1024;

/// The crash tests' child: appends forever from `committers` threads and prints
/// `durable LSN` once `sync_to(LSN)` has returned — a promise the parent checks after SIGKILL.
/// It only returns on an error, which stops every committer (a child that keeps running with a
/// failed journal, or exits 0, would hide the failure from the parent).
pub fn append_loop(dir: &Path, committers: u64) -> Result<(), Error> {
    let options = JournalOptions { segment_bytes: CRASH_TEST_SEGMENT_BYTES, ..JournalOptions::default() };
    let (journal, _) = Journal::open(dir, crash_test_identity(), options)?;
    let writer = Mutex::new(journal.next_lsn().unwrap_or(1));
    let stdout = Mutex::new(std::io::stdout());
    let stop = AtomicBool::new(false);
    let commit_forever = || -> Result<(), Error> {
        while !stop.load(Ordering::Relaxed) {
            let lsn = {
                let mut next = writer.lock().map_err(|_| Error::Failed("a committer panicked".into()))?;
                let lsn = *next;
                journal.append(&crash_record(lsn))?;
                *next += 1;
                lsn
            };
            journal.sync_to(lsn)?;
            let mut out = stdout.lock().map_err(|_| Error::Failed("a committer panicked".into()))?;
            writeln!(out, "durable {lsn}")?;
            out.flush()?;
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..committers.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let result = commit_forever();
                    stop.store(true, Ordering::Relaxed);
                    result
                })
            })
            .collect();
        let mut first_error = None;
        for handle in handles {
            let result = handle.join().unwrap_or_else(|_| Err(Error::Failed("a committer panicked".into())));
            if let Err(err) = result {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    })
}

/// The record the crash child writes at `lsn`: its content is derivable, so the parent can check it.
pub fn crash_record(lsn: Lsn) -> Record {
    let value = format!("value-{lsn}-").repeat((lsn % 7 + 1) as usize).into_bytes();
    Record {
        lsn,
        epoch: 1,
        timestamp_ms: lsn,
        digest_after: Digest(u128::from(lsn)),
        body: RecordBody::Txn {
            ops: vec![Op { key: format!("k{lsn}").into_bytes(), before: None, after: Some(value) }],
            commands: Vec::new(),
        },
    }
}
