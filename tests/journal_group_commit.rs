//! Group commit against real files: many committers appending and waiting in `sync_to`, the
//! durable LSN as the async waiters see it, the lone committer, and shutdown with waiters.
//!
//! Nothing here synchronises with sleeps: threads meet at barriers and channels, and a watchdog
//! turns a hang into a failure instead of a stuck test run. (One test has committers pause
//! between commits: that is the workload, a client's round trip, not synchronisation.)

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use hotpair::storage::journal::{
    inspect, read_dir_from, Gather, Journal, JournalIdentity, JournalKind, JournalOptions, Lsn, Op, Record, RecordBody,
};
use hotpair::Digest;

/// Generous: a hang is a bug, not a slow disk.
const WATCHDOG: Duration = Duration::from_secs(120);

fn identity() -> JournalIdentity {
    JournalIdentity { cluster: [0x5C; 16], node: "gc".into(), kind: JournalKind::Local }
}

fn open(dir: &Path) -> Journal {
    Journal::open(dir, identity(), JournalOptions::default())
        .unwrap_or_else(|err| panic!("open {}: {err}", dir.display()))
        .0
}

fn record(lsn: Lsn) -> Record {
    Record {
        lsn,
        epoch: 1,
        timestamp_ms: 1_700_000_000_000 + lsn,
        digest_after: Digest(u128::from(lsn)),
        body: RecordBody::Txn {
            ops: vec![Op { key: format!("key-{lsn}").into_bytes(), before: None, after: Some(vec![b'v'; 64]) }],
            commands: Vec::new(),
        },
    }
}

/// Runs `f` on another thread and fails the test if it does not finish within [`WATCHDOG`].
fn within_watchdog<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(WATCHDOG) {
        Ok(value) => {
            worker.join().expect("worker finished");
            value
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the worker sends before it ends"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} hung for {WATCHDOG:?}"),
    }
}

/// `committers` threads, each taking the next LSN and appending under one mutex (as the commit
/// pipeline does), then waiting in `sync_to`; `per_committer` records each. Checks that every
/// `sync_to` returns only once the durable LSN covers it. Returns the last LSN.
fn commit_concurrently(journal: &Journal, committers: usize, per_committer: usize) -> Lsn {
    commit_with_think_time(journal, committers, per_committer, Duration::ZERO)
}

/// [`commit_concurrently`], each committer pausing `think` after each commit before the next one:
/// a client's round trip between its reply and its next request.
fn commit_with_think_time(journal: &Journal, committers: usize, per_committer: usize, think: Duration) -> Lsn {
    commit_records(journal, committers, per_committer, think, record)
}

/// [`commit_with_think_time`] with the records `make` gives for each LSN.
fn commit_records(
    journal: &Journal,
    committers: usize,
    per_committer: usize,
    think: Duration,
    make: impl Fn(Lsn) -> Record + Sync,
) -> Lsn {
    let next = Mutex::new(journal.next_lsn().unwrap_or(1));
    thread::scope(|scope| {
        for _ in 0..committers {
            scope.spawn(|| {
                for _ in 0..per_committer {
                    let lsn = {
                        let mut next = next.lock().unwrap();
                        let lsn = journal.append(&make(*next)).unwrap();
                        *next += 1;
                        lsn
                    };
                    journal.sync_to(lsn).unwrap();
                    let durable = journal.durable_lsn();
                    assert!(durable >= lsn, "sync_to({lsn}) returned with the durable LSN at {durable}");
                    thread::sleep(think);
                }
            });
        }
    });
    let last = *next.lock().unwrap() - 1;
    assert_eq!(journal.last_lsn(), Some(last));
    last
}

/// Reads the journal directory offline and checks it holds exactly records `1..=last`, in order.
fn assert_holds_exactly(dir: &Path, last: Lsn) {
    let mut expected = 1;
    for entry in read_dir_from(dir, 1).unwrap() {
        let entry = entry.unwrap();
        assert_eq!(entry.record, record(expected), "record at LSN {expected}");
        expected += 1;
    }
    assert_eq!(expected - 1, last, "records in {}", dir.display());
}

/// The highest LSN whose bytes are in the segment files now (what a reader of the files sees).
///
/// The flusher keeps writing while this reads, into preallocated zeros: one `read` can see a
/// page the writer has not reached yet as zeros and the next one already written, which an
/// offline scan rightly calls damage. That damage lies past every record written before the
/// read began (durable ones included), so a scan that reports it is simply taken again.
fn last_lsn_in_files(dir: &Path) -> Lsn {
    let mut attempts = 0;
    loop {
        let reports = inspect(dir).unwrap();
        match reports.iter().find_map(|report| report.error.as_ref()) {
            Some(error) if attempts < 100 => {
                attempts += 1;
                eprintln!("scan raced the writer ({error}), scanning again");
            }
            Some(error) => panic!("the journal files stay damaged after 100 scans: {error}"),
            None => return reports.iter().filter_map(|report| report.last_lsn).max().unwrap_or(0),
        }
    }
}

#[test]
fn many_committers_are_durable_in_order_and_share_fsyncs() {
    within_watchdog("64 committers", || {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path());
        let durable_rx = journal.subscribe_durable();
        let (committers, per_committer) = (64, 40);
        let total = (committers * per_committer) as Lsn;

        // An async waiter, on its own runtime: every durable LSN it is shown must only grow, and
        // the records up to it must already be in the files (written before the fsync).
        let watch_dir = dir.path().to_path_buf();
        let watcher = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async move {
                let mut rx = durable_rx;
                let (mut seen, mut changes) = (0, 0u64);
                while seen < total {
                    rx.changed().await.expect("the journal is alive until the watcher is done");
                    let durable = *rx.borrow_and_update();
                    assert!(durable >= seen, "durable LSN went back from {seen} to {durable}");
                    let in_files = last_lsn_in_files(&watch_dir);
                    assert!(in_files >= durable, "durable LSN {durable} published with only {in_files} in the files");
                    seen = durable;
                    changes += 1;
                }
                changes
            })
        });

        let fsyncs_before = journal.stats().fsyncs;
        let last = commit_concurrently(&journal, committers, per_committer);
        let fsyncs = journal.stats().fsyncs - fsyncs_before;
        assert_eq!(last, total);
        assert_eq!(journal.durable_lsn(), total);
        let changes = watcher.join().expect("watcher");
        assert!(changes >= 1);
        // Group commit at work: one fsync per record would mean no committer ever shared one.
        assert!(fsyncs >= 1 && fsyncs < total, "{fsyncs} fsyncs for {total} records");
        drop(journal);
        assert_holds_exactly(dir.path(), total);
    });
}

#[test]
fn committers_that_come_back_after_a_pause_still_share_each_fsync() {
    within_watchdog("committers with think time", || {
        // A 5 ms fsync, and committers that take 2 ms to come back after each commit (a busy
        // client's round trip): within the default gather's bound (four fsyncs, at most 4 ms),
        // beyond the short one's (half an fsync, at most 1 ms). Whole groups are 8 records; a
        // flusher that does not wait for them splits them, a straggler and then the rest (4).
        for (gather, whole) in [(Gather::Long, true), (Gather::Short, false)] {
            let dir = tempfile::tempdir().unwrap();
            let options = JournalOptions { gather, ..JournalOptions::default() };
            let journal = Journal::open(dir.path(), identity(), options).unwrap().0;
            journal.simulate_fsync_delay(Duration::from_millis(5));
            let total = commit_with_think_time(&journal, 8, 25, Duration::from_millis(2));
            let per_fsync = total as f64 / journal.stats().fsyncs as f64;
            assert_eq!(per_fsync >= 6.0, whole, "{gather:?}: {per_fsync:.1} records per fsync");
            drop(journal);
            assert_holds_exactly(dir.path(), total);
        }
    });
}

#[test]
fn an_append_that_wakes_the_flusher_is_shippable_when_it_returns() {
    // A primary ships a group as soon as the append that completes it wakes the flusher, not
    // after the flusher thread has woken and written it (replication, "Overlapped fsyncs").
    // A lone committer's append wakes an idle flusher, so each record is shippable the moment
    // its append returns. A journal that published only what its flusher wrote would show it
    // only when the flusher happened to win the race to the lock, never 200 times in a row.
    within_watchdog("shippable", || {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path());
        let shippable = journal.subscribe_shippable();
        for lsn in 1..=200 {
            let deadline = std::time::Instant::now() + WATCHDOG;
            while !journal.flusher_is_idle() {
                assert!(std::time::Instant::now() < deadline, "the flusher never went idle");
                thread::yield_now();
            }
            assert_eq!(journal.append(&record(lsn)).unwrap(), lsn);
            assert_eq!(*shippable.borrow(), lsn, "record {lsn} was not shippable when its append returned");
            journal.sync_to(lsn).unwrap();
        }
    });
}

#[test]
fn the_shippable_lsn_follows_a_crowd_of_committers_and_never_runs_ahead() {
    // With many committers the flusher gathers, and groups are announced by the append that
    // completes them or by the flusher's write after a gathering pause that ran out. Whatever
    // the path, the shippable LSN never passes what was appended, never goes back, and ends at
    // the last record (a record never announced would never ship).
    within_watchdog("shippable crowd", || {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(open(dir.path()));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let (journal, done) = (journal.clone(), done.clone());
            thread::spawn(move || {
                let shippable = journal.subscribe_shippable();
                let mut seen = 0;
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    let now = *shippable.borrow();
                    let appended = journal.last_lsn().unwrap_or(0);
                    assert!(now <= appended, "shippable {now} passed the last appended LSN {appended}");
                    assert!(now >= seen, "shippable went back from {seen} to {now}");
                    seen = now;
                    thread::yield_now();
                }
            })
        };
        let last = commit_concurrently(&journal, 16, 50);
        done.store(true, std::sync::atomic::Ordering::Release);
        watcher.join().expect("watcher");
        assert_eq!(*journal.subscribe_shippable().borrow(), last, "the last record is not shippable");
    });
}

#[test]
fn a_lone_committer_gets_one_fsync_per_record_even_after_a_crowd() {
    within_watchdog("lone committer", || {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path());
        // First a crowd, so that the flusher has gathered groups before…
        let crowd = commit_concurrently(&journal, 16, 20);
        // … then one committer alone: each of its records is fsynced on its own, right away
        // (a flusher pausing to gather would still show one fsync per record, but a flusher
        // that held a record back for company would show fewer).
        let fsyncs_before = journal.stats().fsyncs;
        let alone = 100;
        for lsn in crowd + 1..=crowd + alone {
            assert_eq!(journal.append_durable(&record(lsn)).unwrap(), lsn);
            assert!(journal.durable_lsn() >= lsn);
        }
        assert_eq!(journal.stats().fsyncs - fsyncs_before, alone, "one fsync per record for a lone committer");
        drop(journal);
        assert_holds_exactly(dir.path(), crowd + alone);
    });
}

#[test]
fn waiters_finish_when_the_other_handles_are_dropped() {
    within_watchdog("shutdown with waiters", || {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path());
        // A slow (simulated) fsync so that the waiters are still waiting when the handle drops.
        journal.simulate_fsync_delay(Duration::from_millis(20));
        let committers = 8;
        let next = Arc::new(Mutex::new(1));
        let appended = Arc::new(Barrier::new(committers + 1));
        let handles: Vec<_> = (0..committers)
            .map(|_| {
                let (journal, next, appended) = (journal.clone(), next.clone(), appended.clone());
                thread::spawn(move || {
                    let lsn = {
                        let mut next = next.lock().unwrap();
                        let lsn = journal.append(&record(*next)).unwrap();
                        *next += 1;
                        lsn
                    };
                    appended.wait();
                    journal.sync_to(lsn).map(|()| (lsn, journal.durable_lsn()))
                })
            })
            .collect();
        appended.wait();
        drop(journal);
        for handle in handles {
            let (lsn, durable) = handle.join().expect("committer").expect("sync_to after the other handles dropped");
            assert!(durable >= lsn);
        }
        assert_holds_exactly(dir.path(), committers as Lsn);
    });
}

#[test]
fn dropping_the_last_handle_flushes_what_was_appended() {
    within_watchdog("last handle dropped with records pending", || {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path());
        for lsn in 1..=50 {
            journal.append(&record(lsn)).unwrap();
        }
        drop(journal);
        assert_holds_exactly(dir.path(), 50);
        let reopened = open(dir.path());
        assert_eq!(reopened.durable_lsn(), 50);
        assert_eq!(reopened.last_lsn(), Some(50));
    });
}

#[test]
fn sync_to_refuses_an_lsn_not_appended_and_a_truncated_one() {
    within_watchdog("sync_to refusals", || {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path());
        for lsn in 1..=10 {
            journal.append_durable(&record(lsn)).unwrap();
        }
        assert!(journal.sync_to(11).is_err());
        journal.truncate_after(5).unwrap();
        assert_eq!(journal.durable_lsn(), 5);
        assert!(journal.sync_to(7).is_err(), "LSN 7 was truncated");
        journal.sync_to(5).unwrap();
        // The journal goes on from the cut, and its waiters with it.
        let last = commit_concurrently(&journal, 8, 10);
        assert_eq!(last, 85);
        drop(journal);
        assert_holds_exactly(dir.path(), 85);
    });
}

/// The filler zero-fills each segment ahead of its records on its own thread while committers
/// append, bursts outrun it, segments roll and the journal is truncated. A zero chunk that landed on records
/// (a fill racing a write, a roll or a truncation) shows as records missing or damage when the
/// files are read back.
#[test]
fn records_written_beside_the_filler_are_all_there_after_rolls_and_truncations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    within_watchdog("commits beside the filler", move || {
        // 1 KB records in 3.5 MB segments: several fills per segment, one left in flight at
        // most rolls (the segment size is not a multiple of the chunk).
        let options = JournalOptions { segment_bytes: 3_500_000, ..JournalOptions::default() };
        let (journal, _) = Journal::open(&path, identity(), options.clone()).unwrap();
        let big = |lsn: Lsn| Record {
            body: RecordBody::Txn {
                ops: vec![Op { key: format!("key-{lsn}").into_bytes(), before: None, after: Some(vec![b'w'; 1000]) }],
                commands: Vec::new(),
            },
            ..record(lsn)
        };
        let mut last = 0;
        for round in 0..3 {
            last = commit_records(&journal, 4, 2_000, Duration::ZERO, big);
            // A burst that outruns the filler (held back 50 ms before each chunk): 100 KB groups
            // written one after the other, past the chunk being filled.
            journal.simulate_fill_delay(Duration::from_millis(50));
            for _ in 0..30 {
                for _ in 0..100 {
                    last = journal.append(&big(last + 1)).unwrap();
                }
                journal.sync_to(last).unwrap();
            }
            // A roll while the filler is (most likely) still holding back its next chunk.
            journal.reopen_log(1, 1_700_000_000_000 + last).unwrap();
            journal.simulate_fill_delay(Duration::ZERO);
            // Cut some records off the end, into an earlier segment in the last round.
            let keep = if round == 2 { last - 5_000 } else { last - 100 };
            journal.truncate_after(keep).unwrap();
            last = keep;
        }
        drop(journal);
        let (journal, recovery) = Journal::open(&path, identity(), options).unwrap();
        assert_eq!(recovery.cut, None, "no torn or zeroed records");
        let mut expected = 1;
        for entry in journal.read_from(1).unwrap() {
            let entry = entry.unwrap();
            let want = big(expected);
            assert_eq!(entry.record, want, "record at LSN {expected}");
            expected += 1;
        }
        assert_eq!(expected - 1, last);
    });
}
