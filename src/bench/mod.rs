//! `hotpair bench`: measurements that report ratios against a baseline taken in the same run.
//!
//! Part of the `hotpair` binary, not of the library: `main.rs` declares this module and adds its
//! subcommands to the library's command line, and it uses only the library's public API (as a
//! `benches/` or `examples/` program would), so nothing in the library depends on it.
//!
//! ## `bench journal`: what is measured
//! Everything runs in one fresh scratch directory (under `--dir`, else under the system temp
//! directory; removed afterwards), one measurement after the other, each for `--seconds`:
//! - **raw fsync**: one thread writing one encoded journal record ([`RECORD_BYTES`] bytes) with
//!   `write` and calling `fdatasync`, in a loop. Its rate is what one writer gets from this disk
//!   when every record pays for its own fsync: the baseline. It runs before *and* after the
//!   group-commit measurements, so that drift (a neighbour's I/O) shows; ratios are taken against
//!   the faster of the two, so that a noisy baseline cannot make group commit look better.
//! - **group commit** with 1, 8 and 64 committers: each committer takes the next LSN and appends
//!   under one small mutex (as the commit pipeline in `demo.rs` does), then waits in `sync_to`.
//!   A fresh journal for each measurement. Reported: durable records/s, fsyncs/s, records per
//!   fsync, p50/p99 commit latency, the mean time per commit waiting for the LSN mutex, holding
//!   it (`append`) and waiting in `sync_to`, and the ratio to raw.
//! - **sled apply**: `Store::prepare` + `Store::apply` of single-key SETs of 100-byte values over
//!   10,000 keys from one thread, without a flush (the journal is the durability), and again with
//!   `Store::flush` after every record as a reference point. Caveat: on Linux, sled 0.34's flush
//!   ends in `sync_file_range`, which does not flush the disk's write cache, so that line is not
//!   an fsync-per-record rate and can exceed the raw baseline.
//!
//! ## Simulated slow fsync (`--fsync-delay-ms D`)
//! A fast disk makes the 64-committer run CPU-bound, which says little about a slow disk. With
//! `D > 0` every fsync is followed by a sleep of `D` ms in **both** the raw loop and the journal's
//! flusher (`Journal::simulate_fsync_delay`), so both pay the same extra latency per fsync, as
//! on a disk whose fsync is that much slower. The report says so in its first line, in the JSON
//! (`simulated_fsync_delay_ms`) and in the verdict. It is a simulation: the disk itself is
//! unchanged, and no other fsync (segment rolls, sled) is delayed.
//!
//! ## Why ratios
//! An fsync costs what the disk makes it cost: a laptop NVMe, a cloud volume and a VM's virtual
//! disk differ by orders of magnitude. Absolute rates describe the machine; the ratio of group
//! commit to a raw fsync loop on the same directory in the same run describes hotpair. So the
//! baseline is always measured alongside, and the target ([`TARGET_RATIO`] at
//! [`TARGET_COMMITTERS`] committers) is stated as a ratio.

pub mod orchestrator;
pub mod store;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Subcommand;
use serde::Serialize;

use hotpair::storage::digest::Digest;
use hotpair::storage::journal::format::encode_record;
use hotpair::storage::journal::{Journal, JournalIdentity, JournalKind, JournalOptions, Lsn, Op, Record, RecordBody};
use hotpair::storage::store::Store;
use hotpair::Error;

/// Committer counts the group-commit measurement runs with, in order.
const COMMITTER_COUNTS: [usize; 3] = [1, 8, 64];
/// Issue 2: with this many committers …
const TARGET_COMMITTERS: usize = 64;
/// … group commit must reach at least this multiple of the raw single-writer fsync rate.
const TARGET_RATIO: f64 = 20.0;
const TARGET_TEXT: &str = "with 64 committers, at least 20x the raw single-writer fsync rate";
/// Encoded size (frame included) of every journal record the bench writes, and of the raw buffer.
const RECORD_BYTES: usize = 150;
/// After-image length that makes a one-op record with a [`RECORD_KEY_BYTES`] key [`RECORD_BYTES`] long.
const RECORD_VALUE_BYTES: usize = 79;
const RECORD_KEY_BYTES: usize = 9;
/// Distinct keys of the sled apply measurement (SETs overwrite each other).
const APPLY_KEYS: u64 = 10_000;
/// Value length of the sled apply measurement.
const APPLY_VALUE_BYTES: usize = 100;
/// Longest accepted `--seconds`: a bench is not a soak test.
const MAX_SECONDS: f64 = 3600.0;
/// Longest accepted `--fsync-delay-ms`.
const MAX_FSYNC_DELAY_MS: f64 = 1000.0;

/// Everything one `bench journal` run measured; printed as a table or as one JSON object.
#[derive(Debug, Serialize)]
struct Report {
    dir: String,
    seconds_per_measurement: f64,
    /// Sleep added after every fsync of the raw loop and of the journal flusher; 0 = real disk.
    simulated_fsync_delay_ms: f64,
    record_bytes: usize,
    /// The raw loop runs before and after the group-commit measurements, to show drift.
    raw_fsync_before: RawFsync,
    raw_fsync_after: RawFsync,
    /// The faster of the two raw runs: every ratio is taken against it (the conservative choice).
    baseline_records_per_second: f64,
    group_commit: Vec<GroupCommit>,
    sled_apply: Apply,
    sled_apply_flush_per_record: Apply,
    target: Verdict,
}

#[derive(Debug, Serialize)]
struct RawFsync {
    records: u64,
    seconds: f64,
    records_per_second: f64,
    p50_latency_ms: f64,
    p99_latency_ms: f64,
}

#[derive(Debug, Serialize)]
struct GroupCommit {
    committers: usize,
    records: u64,
    fsyncs: u64,
    seconds: f64,
    records_per_second: f64,
    fsyncs_per_second: f64,
    records_per_fsync: f64,
    p50_latency_ms: f64,
    p99_latency_ms: f64,
    /// Mean time per commit waiting for the LSN mutex.
    mean_lock_wait_us: f64,
    /// Mean time per commit holding the LSN mutex: `append`, which itself takes the journal's lock.
    mean_append_us: f64,
    /// Mean time per commit in `sync_to`.
    mean_sync_wait_us: f64,
    ratio_to_raw: f64,
}

#[derive(Debug, Serialize)]
struct Apply {
    records: u64,
    seconds: f64,
    records_per_second: f64,
    ratio_to_raw: f64,
    /// Above 1, the store applies faster than the journal makes records durable at 64 committers.
    ratio_to_group_commit_64: f64,
}

#[derive(Debug, Serialize)]
struct Verdict {
    text: &'static str,
    committers: usize,
    required_ratio: f64,
    measured_ratio: f64,
    met: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchWhich {
    /// Group-commit append rate at 1, 8 and 64 committers versus a raw write+fdatasync loop,
    /// and sled apply throughput.
    Journal {
        /// Directory on the disk to measure (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        #[arg(long)]
        json: bool,
        /// Simulate a slower disk: sleep this many milliseconds after every fdatasync, in the raw
        /// loop and in the journal's flusher alike. The report is labelled as simulated.
        #[arg(long, default_value_t = 0.0)]
        fsync_delay_ms: f64,
    },
    /// Catch-up apply rate: the same records applied to sled one per batch, in runs of one
    /// batch, and through the applier from a journal.
    Apply {
        /// Directory on the disk to measure (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Records applied by each measurement (single-key SETs of 100-byte values).
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// Distinct keys the SETs cycle through.
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        #[arg(long)]
        json: bool,
    },
    /// Issue 24: the store's CPU time per get and per applied SET at a given number of keys,
    /// its memory and disk per key, and the time to reopen it.
    Store {
        /// Directory on the disk to measure (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keys loaded before measuring (random order, 100-byte values).
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Operations of each kind measured, over random existing keys.
        #[arg(long, default_value_t = 200_000)]
        ops: u64,
        #[arg(long)]
        json: bool,
    },
    /// Issue 4: switchover write outage under load, failover time, rejoin time versus database
    /// size and versus a full copy, each on spawned pairs of real processes.
    Orchestrator(orchestrator::Options),
}

/// Runs the measurement `which` names; the exit code as the CLI gives it.
pub fn run(which: BenchWhich) -> Result<u8, Error> {
    match which {
        BenchWhich::Journal { dir, seconds, json, fsync_delay_ms } => {
            journal(dir, seconds, json, fsync_delay_ms).map(|_| 0)
        }
        BenchWhich::Apply { dir, records, keys, json } => apply(dir, records, keys, json).map(|_| 0),
        BenchWhich::Store { dir, keys, ops, json } => store::main(dir, keys, ops, json).map(|()| 0),
        BenchWhich::Orchestrator(options) => orchestrator::main(options),
    }
}

/// Runs the journal benchmark and prints its report (see the module documentation).
pub fn journal(dir: Option<PathBuf>, seconds: f64, json: bool, fsync_delay_ms: f64) -> Result<(), Error> {
    let duration = measurement_duration(seconds)?;
    let fsync_delay = fsync_delay(fsync_delay_ms)?;
    let report = in_scratch(dir, "hotpair-bench", |scratch| measure_all(scratch, duration, fsync_delay))?;
    print_report(&report, json, table)
}

/// Runs `measure` in a fresh directory under `dir` (default: the temp dir), removed afterwards.
pub(crate) fn in_scratch<T>(
    dir: Option<PathBuf>,
    prefix: &str,
    measure: impl FnOnce(&Path) -> Result<T, Error>,
) -> Result<T, Error> {
    let parent = match dir {
        Some(dir) if !dir.is_dir() => {
            return Err(Error::Usage(format!("{} is not a directory", dir.display())));
        }
        Some(dir) => dir,
        None => std::env::temp_dir(),
    };
    let scratch = parent.join(format!("{prefix}-{}-{}", std::process::id(), hotpair::clock::now_ms()));
    std::fs::create_dir(&scratch).map_err(|source| io_error("creating the bench directory", &scratch, source))?;
    let result = measure(&scratch);
    let removed = std::fs::remove_dir_all(&scratch);
    let report = result?;
    removed.map_err(|source| io_error("removing the bench directory", &scratch, source))?;
    Ok(report)
}

/// Prints a report as JSON or as the table `render` makes of it.
pub(crate) fn print_report<T: serde::Serialize>(
    report: &T,
    json: bool,
    render: impl Fn(&T) -> String,
) -> Result<(), Error> {
    if json {
        let text = serde_json::to_string(report).map_err(|e| Error::Failed(format!("encoding the report: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", render(report));
    }
    Ok(())
}

fn measurement_duration(seconds: f64) -> Result<Duration, Error> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= MAX_SECONDS) {
        return Err(Error::Usage(format!("--seconds must be more than 0 and at most {MAX_SECONDS}, not {seconds}")));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn fsync_delay(ms: f64) -> Result<Duration, Error> {
    if !(ms.is_finite() && (0.0..=MAX_FSYNC_DELAY_MS).contains(&ms)) {
        return Err(Error::Usage(format!("--fsync-delay-ms must be from 0 to {MAX_FSYNC_DELAY_MS}, not {ms}")));
    }
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

fn io_error(what: &str, path: &Path, source: std::io::Error) -> Error {
    Error::Io { context: format!("{what} {}", path.display()), source }
}

/// Runs every measurement in order, then takes the ratios against the baseline.
fn measure_all(scratch: &Path, duration: Duration, fsync_delay: Duration) -> Result<Report, Error> {
    if !fsync_delay.is_zero() {
        progress(&format!("SIMULATED slow disk: {:.3} ms sleep after every fsync", fsync_delay.as_secs_f64() * 1e3));
    }
    progress(&format!("raw write+fdatasync loop for {:.1} s", duration.as_secs_f64()));
    let raw_fsync_before = raw_fsync(&scratch.join("raw-before.bin"), duration, fsync_delay)?;
    let mut group_commit = Vec::new();
    for committers in COMMITTER_COUNTS {
        progress(&format!("group commit with {committers} committer(s)"));
        let dir = scratch.join(format!("journal-{committers}"));
        group_commit.push(group_commit_run(&dir, committers, duration, fsync_delay)?);
    }
    progress("raw write+fdatasync loop again");
    let raw_fsync_after = raw_fsync(&scratch.join("raw-after.bin"), duration, fsync_delay)?;
    progress("sled apply without flush");
    let sled_apply = apply_run(&scratch.join("store-no-flush"), duration, false)?;
    progress("sled apply with a flush per record");
    let sled_apply_flush_per_record = apply_run(&scratch.join("store-flush"), duration, true)?;
    let baseline = raw_fsync_before.records_per_second.max(raw_fsync_after.records_per_second);
    let mut report = Report {
        dir: scratch.display().to_string(),
        seconds_per_measurement: duration.as_secs_f64(),
        simulated_fsync_delay_ms: fsync_delay.as_secs_f64() * 1e3,
        record_bytes: RECORD_BYTES,
        raw_fsync_before,
        raw_fsync_after,
        baseline_records_per_second: baseline,
        group_commit,
        sled_apply,
        sled_apply_flush_per_record,
        target: Verdict {
            text: TARGET_TEXT,
            committers: TARGET_COMMITTERS,
            required_ratio: TARGET_RATIO,
            measured_ratio: 0.0,
            met: false,
        },
    };
    fill_ratios(&mut report);
    Ok(report)
}

fn fill_ratios(report: &mut Report) {
    let baseline = report.baseline_records_per_second;
    for g in &mut report.group_commit {
        g.ratio_to_raw = ratio(g.records_per_second, baseline);
    }
    let at_target =
        report.group_commit.iter().find(|g| g.committers == TARGET_COMMITTERS).map_or(0.0, |g| g.records_per_second);
    for apply in [&mut report.sled_apply, &mut report.sled_apply_flush_per_record] {
        apply.ratio_to_raw = ratio(apply.records_per_second, baseline);
        apply.ratio_to_group_commit_64 = ratio(apply.records_per_second, at_target);
    }
    report.target.measured_ratio = ratio(at_target, baseline);
    report.target.met = report.target.measured_ratio >= TARGET_RATIO;
}

pub(crate) fn progress(what: &str) {
    eprintln!("bench: {what}…");
}

/// `part / whole`, or 0 when there is no whole to compare with.
fn ratio(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        part / whole
    } else {
        0.0
    }
}

/// The journal record every bench append writes; only the LSN changes between appends.
fn sample_record(lsn: Lsn) -> Record {
    Record {
        lsn,
        epoch: 1,
        timestamp_ms: hotpair::clock::now_ms(),
        digest_after: Digest::EMPTY,
        body: RecordBody::Txn {
            ops: vec![Op {
                key: vec![b'k'; RECORD_KEY_BYTES],
                before: None,
                after: Some(vec![b'v'; RECORD_VALUE_BYTES]),
            }],
            commands: Vec::new(),
        },
    }
}

/// The baseline: one writer, one `write` + `fdatasync` per record, appending to a new file at `path`.
/// With a `fsync_delay`, each fdatasync is followed by that sleep (a simulated slower disk).
fn raw_fsync(path: &Path, duration: Duration, fsync_delay: Duration) -> Result<RawFsync, Error> {
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(path)
        .map_err(|source| io_error("creating", path, source))?;
    let mut buffer = Vec::with_capacity(RECORD_BYTES);
    encode_record(&sample_record(1), &mut buffer);
    let mut latencies = Latencies::default();
    let started = Instant::now();
    let deadline = started + duration;
    while Instant::now() < deadline {
        let one = Instant::now();
        write_and_sync(&file, &buffer).map_err(|source| io_error("write+fdatasync of", path, source))?;
        if !fsync_delay.is_zero() {
            std::thread::sleep(fsync_delay);
        }
        latencies.push(one.elapsed());
    }
    let seconds = started.elapsed().as_secs_f64();
    let records = latencies.count();
    Ok(RawFsync {
        records,
        seconds,
        records_per_second: records as f64 / seconds,
        p50_latency_ms: latencies.percentile_ms(50.0),
        p99_latency_ms: latencies.percentile_ms(99.0),
    })
}

fn write_and_sync(mut file: &File, buffer: &[u8]) -> std::io::Result<()> {
    file.write_all(buffer)?;
    file.sync_data()
}

/// What one committer thread saw.
#[derive(Default)]
struct CommitterTally {
    latencies: Latencies,
    lock_wait: Duration,
    append: Duration,
    sync_wait: Duration,
}

/// `committers` threads appending and waiting for durability on a fresh journal in `dir`.
/// The ratio to raw is filled in later, once both raw runs are known.
fn group_commit_run(
    dir: &Path,
    committers: usize,
    duration: Duration,
    fsync_delay: Duration,
) -> Result<GroupCommit, Error> {
    let identity = JournalIdentity { cluster: [0x42; 16], node: "bench".into(), kind: JournalKind::Local };
    let (journal, _) = Journal::open(dir, identity, JournalOptions::default())?;
    journal.simulate_fsync_delay(fsync_delay);
    let writer = Mutex::new(journal.next_lsn().unwrap_or(1));
    let fsyncs_before = journal.stats().fsyncs;
    let started = Instant::now();
    let deadline = started + duration;
    let tallies = std::thread::scope(|scope| {
        let handles: Vec<_> =
            (0..committers).map(|_| scope.spawn(|| committer_loop(&journal, &writer, deadline))).collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| Error::Failed("a bench committer panicked".into()))?)
            .collect::<Result<Vec<_>, Error>>()
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let fsyncs = journal.stats().fsyncs - fsyncs_before;
    Ok(summarise_commits(committers, tallies, fsyncs, seconds))
}

fn committer_loop(journal: &Journal, writer: &Mutex<Lsn>, deadline: Instant) -> Result<CommitterTally, Error> {
    let mut record = sample_record(0);
    let mut tally = CommitterTally::default();
    while Instant::now() < deadline {
        let started = Instant::now();
        let mut next =
            writer.lock().map_err(|_| Error::Failed("a bench committer panicked holding the LSN lock".into()))?;
        let locked = Instant::now();
        let lsn = append_next(journal, &mut next, &mut record)?;
        drop(next);
        let appended = Instant::now();
        journal.sync_to(lsn)?;
        let durable = Instant::now();
        tally.lock_wait += locked - started;
        tally.append += appended - locked;
        tally.sync_wait += durable - appended;
        tally.latencies.push(durable - started);
    }
    Ok(tally)
}

/// The serialised section, under the LSN mutex: append the record carrying the next LSN.
fn append_next(journal: &Journal, next: &mut Lsn, record: &mut Record) -> Result<Lsn, Error> {
    record.lsn = *next;
    journal.append(record)?;
    *next += 1;
    Ok(record.lsn)
}

fn summarise_commits(committers: usize, tallies: Vec<CommitterTally>, fsyncs: u64, seconds: f64) -> GroupCommit {
    let mut latencies = Latencies::default();
    let (mut lock_wait, mut append, mut sync_wait) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for tally in tallies {
        latencies.extend(tally.latencies);
        lock_wait += tally.lock_wait;
        append += tally.append;
        sync_wait += tally.sync_wait;
    }
    let records = latencies.count();
    let per_record_us = |total: Duration| ratio(total.as_secs_f64() * 1e6, records as f64);
    GroupCommit {
        committers,
        records,
        fsyncs,
        seconds,
        records_per_second: records as f64 / seconds,
        fsyncs_per_second: fsyncs as f64 / seconds,
        records_per_fsync: ratio(records as f64, fsyncs as f64),
        p50_latency_ms: latencies.percentile_ms(50.0),
        p99_latency_ms: latencies.percentile_ms(99.0),
        mean_lock_wait_us: per_record_us(lock_wait),
        mean_append_us: per_record_us(append),
        mean_sync_wait_us: per_record_us(sync_wait),
        ratio_to_raw: 0.0,
    }
}

/// One thread applying single-key SET transactions to a fresh store in `dir`.
/// The ratios are filled in later.
fn apply_run(dir: &Path, duration: Duration, flush_each: bool) -> Result<Apply, Error> {
    let store = Store::open(dir)?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut records = 0u64;
    while Instant::now() < deadline {
        apply_one(&store, records + 1)?;
        if flush_each {
            store.flush()?;
        }
        records += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Apply {
        records,
        seconds,
        records_per_second: records as f64 / seconds,
        ratio_to_raw: 0.0,
        ratio_to_group_commit_64: 0.0,
    })
}

fn apply_one(store: &Store, lsn: Lsn) -> Result<(), Error> {
    let key = format!("key:{:05}", lsn % APPLY_KEYS).into_bytes();
    let mut value = format!("value at lsn {lsn} ").into_bytes();
    value.resize(APPLY_VALUE_BYTES, b'.');
    let (ops, digest_after) = store.prepare(vec![(key, Some(value))])?;
    let record =
        Record { lsn, epoch: 1, timestamp_ms: hotpair::clock::now_ms(), digest_after, body: RecordBody::txn(ops) };
    store.apply(&record)?;
    Ok(())
}

/// Latency samples in nanoseconds.
#[derive(Default)]
struct Latencies(Vec<u64>);

impl Latencies {
    fn push(&mut self, latency: Duration) {
        self.0.push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
    }

    fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    fn count(&self) -> u64 {
        self.0.len() as u64
    }

    /// Nearest-rank percentile in milliseconds; 0 without samples.
    fn percentile_ms(&mut self, percent: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        let rank = ((percent / 100.0) * self.0.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.0.len()) - 1;
        self.0[index] as f64 / 1e6
    }
}

/// The report as a readable table.
fn table(report: &Report) -> String {
    let mut out = format!(
        "hotpair bench journal: {:.1} s per measurement, {}-byte records, in {}\n",
        report.seconds_per_measurement, report.record_bytes, report.dir
    );
    if report.simulated_fsync_delay_ms > 0.0 {
        out += &format!(
            "SIMULATED slow disk: every fsync (raw loop and journal flusher) followed by a {:.3} ms sleep\n",
            report.simulated_fsync_delay_ms
        );
    }
    out += "\n";
    out += &format!(
        "{:<30} {:>9} {:>7} {:>9} {:>8} {:>7} {:>7} {:>9} {:>9} {:>8}\n",
        "measurement",
        "records/s",
        "x raw",
        "rec/fsync",
        "fsyncs/s",
        "p50 ms",
        "p99 ms",
        "lock us",
        "append us",
        "sync us"
    );
    let baseline = report.baseline_records_per_second;
    out += &raw_line("raw write+fdatasync, before", &report.raw_fsync_before, baseline);
    for g in &report.group_commit {
        out += &format!(
            "{:<30} {:>9.0} {:>6.1}x {:>9.1} {:>8.0} {:>7.2} {:>7.2} {:>9.1} {:>9.1} {:>8.0}\n",
            format!("group commit, {} committer{}", g.committers, if g.committers == 1 { "" } else { "s" }),
            g.records_per_second,
            g.ratio_to_raw,
            g.records_per_fsync,
            g.fsyncs_per_second,
            g.p50_latency_ms,
            g.p99_latency_ms,
            g.mean_lock_wait_us,
            g.mean_append_us,
            g.mean_sync_wait_us
        );
    }
    out += &raw_line("raw write+fdatasync, after", &report.raw_fsync_after, baseline);
    out += &apply_line("sled apply, no flush", &report.sled_apply);
    out += &apply_line("sled apply, flush per record", &report.sled_apply_flush_per_record);
    out += &format!(
        "\nx raw: against {baseline:.0} records/s, the faster of the two raw runs.\n\
         sled apply vs 64-committer journal rate: {:.1}x without flush, {:.2}x with a flush per record.\n",
        report.sled_apply.ratio_to_group_commit_64, report.sled_apply_flush_per_record.ratio_to_group_commit_64
    );
    let target = &report.target;
    out += &format!(
        "target (Issue 2), {}: {}{} ({:.1}x measured, {:.0}x required)\n",
        target.text,
        if target.met { "MET" } else { "MISSED" },
        if report.simulated_fsync_delay_ms > 0.0 { " on the SIMULATED slow disk" } else { "" },
        target.measured_ratio,
        target.required_ratio
    );
    out
}

fn raw_line(name: &str, raw: &RawFsync, baseline: f64) -> String {
    format!(
        "{:<30} {:>9.0} {:>6.1}x {:>9.1} {:>8.0} {:>7.2} {:>7.2} {:>9} {:>9} {:>8}\n",
        name,
        raw.records_per_second,
        ratio(raw.records_per_second, baseline),
        1.0,
        raw.records_per_second,
        raw.p50_latency_ms,
        raw.p99_latency_ms,
        "-",
        "-",
        "-"
    )
}

fn apply_line(name: &str, apply: &Apply) -> String {
    format!(
        "{:<30} {:>9.0} {:>6.1}x {:>9} {:>8} {:>7} {:>7} {:>9} {:>9} {:>8}\n",
        name, apply.records_per_second, apply.ratio_to_raw, "-", "-", "-", "-", "-", "-", "-"
    )
}

// ---------------------------------------------------------------------------------------------
// `bench apply`
// ---------------------------------------------------------------------------------------------

/// Everything one `bench apply` run measured.
#[derive(Debug, Serialize)]
struct ApplyReport {
    dir: String,
    records: u64,
    keys: u64,
    value_bytes: usize,
    /// Records per `Store::apply_many` call in the "runs" measurement (the applier's upper bound).
    run_records: usize,
    /// `Store::apply`, one sled batch per record.
    per_record: ApplyRate,
    /// `Store::apply_many` over consecutive runs of `run_records`.
    runs: ApplyRate,
    /// Records read back from a durable journal and submitted to an `Applier` (greedy runs).
    applier: ApplyRate,
    runs_vs_per_record: f64,
    applier_vs_per_record: f64,
}

#[derive(Debug, Serialize)]
struct ApplyRate {
    records: u64,
    seconds: f64,
    records_per_second: f64,
}

impl ApplyRate {
    fn new(records: u64, elapsed: Duration) -> ApplyRate {
        let seconds = elapsed.as_secs_f64();
        ApplyRate { records, seconds, records_per_second: ratio(records as f64, seconds) }
    }
}

/// Single-key SET records over `keys` keys, with before-images and the right digests, made
/// without a store so that making them costs every measurement the same (and is not timed).
struct SetRecords {
    keys: u64,
    next_lsn: Lsn,
    last: Lsn,
    digest: Digest,
    values: std::collections::HashMap<u64, Vec<u8>>,
}

impl SetRecords {
    fn new(records: u64, keys: u64) -> SetRecords {
        SetRecords { keys, next_lsn: 1, last: records, digest: Digest::EMPTY, values: Default::default() }
    }

    /// The next `count` records (fewer at the end, none once all are made).
    fn chunk(&mut self, count: usize) -> Vec<Record> {
        let mut out = Vec::with_capacity(count);
        while out.len() < count && self.next_lsn <= self.last {
            let lsn = self.next_lsn;
            self.next_lsn += 1;
            let slot = lsn % self.keys;
            let key = format!("key:{slot:010}").into_bytes();
            let mut value = format!("value at lsn {lsn} ").into_bytes();
            value.resize(APPLY_VALUE_BYTES, b'.');
            let before = self.values.insert(slot, value.clone());
            self.digest = self.digest.updated(&key, before.as_deref(), Some(&value));
            out.push(Record {
                lsn,
                epoch: 1,
                timestamp_ms: 0,
                digest_after: self.digest,
                body: RecordBody::txn(vec![Op { key, before, after: Some(value) }]),
            });
        }
        out
    }
}

/// Runs the apply benchmark and prints its report: the same `records` SETs applied three ways
/// to fresh stores in a scratch directory (under `dir`, else the system temp directory).
pub fn apply(dir: Option<PathBuf>, records: u64, keys: u64, json: bool) -> Result<(), Error> {
    if records == 0 || keys == 0 {
        return Err(Error::Usage("--records and --keys must be at least 1".into()));
    }
    let report = in_scratch(dir, "hotpair-bench-apply", |scratch| measure_apply(scratch, records, keys))?;
    print_report(&report, json, apply_table)
}

fn measure_apply(scratch: &Path, records: u64, keys: u64) -> Result<ApplyReport, Error> {
    let run_records = hotpair::kv::applier::MAX_RUN_RECORDS;
    progress(&format!("{records} records, Store::apply one at a time"));
    let (per_record, expected) = {
        let store = Store::open(&scratch.join("store-per-record"))?;
        let timed = time_chunks(records, keys, run_records, |chunk| {
            for record in chunk {
                if let hotpair::storage::store::Applied::Done { digest_matches: false, .. } = store.apply(record)? {
                    return Err(Error::Failed(format!("bench: digest mismatch at LSN {}", record.lsn)));
                }
            }
            Ok(())
        })?;
        (ApplyRate::new(records, timed), store.position())
    };
    progress(&format!("{records} records, Store::apply_many in runs of {run_records}"));
    let runs = {
        let store = Store::open(&scratch.join("store-runs"))?;
        let timed = time_chunks(records, keys, run_records, |chunk| match store.apply_many(chunk)?.mismatch {
            Some(m) => Err(Error::Failed(format!("bench: digest mismatch at LSN {}", m.lsn))),
            None => Ok(()),
        })?;
        check_position("apply_many", store.position(), expected)?;
        ApplyRate::new(records, timed)
    };
    progress(&format!("{records} records into a journal (not timed), then through the applier"));
    let applier = applier_run(scratch, records, keys, expected)?;
    Ok(ApplyReport {
        dir: scratch.display().to_string(),
        records,
        keys,
        value_bytes: APPLY_VALUE_BYTES,
        run_records,
        runs_vs_per_record: ratio(runs.records_per_second, per_record.records_per_second),
        applier_vs_per_record: ratio(applier.records_per_second, per_record.records_per_second),
        per_record,
        runs,
        applier,
    })
}

/// Generates `records` SETs over `keys` keys in chunks of `chunk_records` and times only `apply`
/// on each chunk (generating them is not what is measured).
fn time_chunks(
    records: u64,
    keys: u64,
    chunk_records: usize,
    mut apply: impl FnMut(&[Record]) -> Result<(), Error>,
) -> Result<Duration, Error> {
    let mut source = SetRecords::new(records, keys);
    let mut timed = Duration::ZERO;
    loop {
        let chunk = source.chunk(chunk_records);
        if chunk.is_empty() {
            return Ok(timed);
        }
        let started = Instant::now();
        apply(&chunk)?;
        timed += started.elapsed();
    }
}

/// Catch-up as the backup does it, minus the network: records read back from a durable journal,
/// decoded, and submitted to an `Applier`, timed until the applier has published the last LSN.
fn applier_run(
    scratch: &Path,
    records: u64,
    keys: u64,
    expected: hotpair::storage::store::Position,
) -> Result<ApplyRate, Error> {
    let identity = JournalIdentity { cluster: [0x42; 16], node: "bench".into(), kind: JournalKind::Remote };
    let (journal, _) = Journal::open(&scratch.join("journal"), identity, JournalOptions::default())?;
    let mut source = SetRecords::new(records, keys);
    loop {
        let chunk = source.chunk(hotpair::kv::applier::MAX_RUN_RECORDS);
        let Some(last) = chunk.last().map(|r| r.lsn) else { break };
        for record in &chunk {
            journal.append(record)?;
        }
        journal.sync_to(last)?;
    }
    let store = std::sync::Arc::new(Store::open(&scratch.join("store-applier"))?);
    let applier = hotpair::kv::applier::Applier::start(journal.clone(), store.clone(), |_| {});
    // Keep the queue bounded as a network would, so memory does not grow with --records.
    const MAX_AHEAD: Lsn = 200_000;
    let started = Instant::now();
    for entry in journal.read_from(1)? {
        let record = entry?.record;
        while record.lsn > applier.applied_lsn() + MAX_AHEAD && applier.failure().is_none() {
            std::thread::sleep(Duration::from_micros(200));
        }
        applier.submit(record).map_err(Error::Failed)?;
    }
    while applier.applied_lsn() < records {
        if let Some(reason) = applier.failure() {
            return Err(Error::Failed(format!("bench: the applier stopped: {reason}")));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = started.elapsed();
    applier.shutdown();
    check_position("the applier", store.position(), expected)?;
    Ok(ApplyRate::new(records, elapsed))
}

fn check_position(
    what: &str,
    got: hotpair::storage::store::Position,
    expected: hotpair::storage::store::Position,
) -> Result<(), Error> {
    if got != expected {
        return Err(Error::Failed(format!("bench: {what} ended at {got:?}, one record at a time at {expected:?}")));
    }
    Ok(())
}

fn apply_table(report: &ApplyReport) -> String {
    let mut out = format!(
        "hotpair bench apply: {} single-key SETs of {}-byte values over {} keys, in {}\n\n",
        report.records, report.value_bytes, report.keys, report.dir
    );
    out += &format!("{:<44} {:>10} {:>9} {:>12}\n", "measurement", "records/s", "seconds", "x per-record");
    let lines = [
        ("Store::apply, one batch per record", &report.per_record, 1.0),
        (&*format!("Store::apply_many, runs of {}", report.run_records), &report.runs, report.runs_vs_per_record),
        ("journal -> Applier (greedy runs)", &report.applier, report.applier_vs_per_record),
    ];
    for (name, rate, x) in lines {
        out += &format!("{:<44} {:>10.0} {:>9.2} {:>11.1}x\n", name, rate.records_per_second, rate.seconds, x);
    }
    out += "\nNo flush in any line: the journal is the durability. The applier line includes reading\n\
            and decoding the journal; the others time only the store calls.\n";
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotpair::storage::journal::format::encoded_len;

    #[test]
    fn sample_record_has_the_advertised_size() {
        assert_eq!(encoded_len(&sample_record(1)), RECORD_BYTES);
        let mut buffer = Vec::new();
        encode_record(&sample_record(u64::MAX), &mut buffer);
        assert_eq!(buffer.len(), RECORD_BYTES);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut latencies = Latencies::default();
        for ms in 1..=100u64 {
            latencies.push(Duration::from_millis(ms));
        }
        assert_eq!(latencies.percentile_ms(50.0), 50.0);
        assert_eq!(latencies.percentile_ms(99.0), 99.0);
        assert_eq!(latencies.percentile_ms(100.0), 100.0);
        assert_eq!(Latencies::default().percentile_ms(50.0), 0.0);
    }

    #[test]
    fn seconds_must_be_positive_and_bounded() {
        assert!(measurement_duration(0.0).is_err());
        assert!(measurement_duration(f64::NAN).is_err());
        assert!(measurement_duration(MAX_SECONDS + 1.0).is_err());
        assert_eq!(measurement_duration(1.5).ok(), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn fsync_delay_must_be_finite_and_bounded() {
        assert!(fsync_delay(-1.0).is_err());
        assert!(fsync_delay(f64::INFINITY).is_err());
        assert!(fsync_delay(MAX_FSYNC_DELAY_MS + 1.0).is_err());
        assert_eq!(fsync_delay(0.0).ok(), Some(Duration::ZERO));
        assert_eq!(fsync_delay(4.0).ok(), Some(Duration::from_millis(4)));
    }
}
