//! `hotpair bench store`: what the store costs per operation at a given size, in CPU time.
//!
//! ## What is measured
//! One fresh sled store in a scratch directory (removed afterwards), `--keys` keys loaded in a
//! random order (runs of [`LOAD_RUN`] one-key SET records, as a catch-up applies them), then,
//! over random keys that exist, `--ops` of each of:
//! - **get**: `Store::get` (a `GET`'s store read, and the before-image read of a write);
//! - **apply, reading sled**: one-key SET records in runs of [`APPLY_RUN`] through
//!   `Store::apply_many` (`Before::Stored`): a backup's applier, which reads each key's value
//!   for its digest;
//! - **apply, images**: the same through `Before::FromRecord`: the primary's applier.
//!
//! Each is reported as the CPU time of the measuring thread per operation
//! (`CLOCK_THREAD_CPUTIME_ID`), which moves much less with other load on the machine than the
//! wall-clock time, also reported. Then the process's resident memory per key, the store's
//! size on disk, and the time to reopen it.
//!
//! Keys are `key:` and 12 digits and values 100 bytes, as `redis-benchmark -r N -d 100` writes
//! them (plus the stored value's one-byte type tag).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use hotpair::storage::digest::Digest;
use hotpair::storage::journal::{Lsn, Op, Record, RecordBody};
use hotpair::storage::store::{Before, Store};
use hotpair::Error;

/// Records per `apply_many` while loading.
const LOAD_RUN: usize = 1024;
/// Records per `apply_many` in the apply measurements (the size of a paced applier's run at a
/// few thousand SETs per second).
const APPLY_RUN: usize = 64;
const VALUE_BYTES: usize = 100;

#[derive(Debug, Serialize)]
struct Report {
    dir: String,
    keys: u64,
    ops: u64,
    load: Cost,
    get: Cost,
    apply_reading_sled: Cost,
    apply_from_images: Cost,
    rss_bytes_per_key: f64,
    disk_bytes_per_key: f64,
    reopen_ms: f64,
}

/// CPU and wall time per operation, in microseconds.
#[derive(Debug, Serialize, Clone, Copy)]
struct Cost {
    cpu_us: f64,
    wall_us: f64,
}

/// Runs the store benchmark and prints its report.
pub fn main(dir: Option<PathBuf>, keys: u64, ops: u64, json: bool) -> Result<(), Error> {
    if keys == 0 || ops == 0 {
        return Err(Error::Usage("--keys and --ops must be at least 1".into()));
    }
    let report = super::in_scratch(dir, "hotpair-bench-store", |scratch| measure(scratch, keys, ops))?;
    super::print_report(&report, json, table)
}

/// A small, fast, seeded generator (splitmix64): the same keys in every run.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn key_of(slot: u64) -> Vec<u8> {
    format!("key:{slot:012}").into_bytes()
}

fn value_of(lsn: Lsn) -> Vec<u8> {
    let mut value = vec![0u8]; // the stored value's tag: a string without expiry
    value.extend_from_slice(format!("value at lsn {lsn} ").as_bytes());
    value.resize(VALUE_BYTES + 1, b'.');
    value
}

/// Makes SET records in LSN order, with their before-images and digests, from what the store
/// holds (read before the measured part, so reading is not timed).
struct Writer {
    lsn: Lsn,
    digest: Digest,
}

impl Writer {
    fn record(&mut self, key: Vec<u8>, before: Option<Vec<u8>>) -> Record {
        self.lsn += 1;
        let after = value_of(self.lsn);
        self.digest = self.digest.updated(&key, before.as_deref(), Some(&after));
        Record {
            lsn: self.lsn,
            epoch: 1,
            timestamp_ms: 0,
            digest_after: self.digest,
            body: RecordBody::txn(vec![Op { key, before, after: Some(after) }]),
        }
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `work` and returns its cost per one of `ops` operations.
fn timed(ops: u64, work: impl FnOnce() -> Result<(), Error>) -> Result<Cost, Error> {
    let (cpu, wall) = (thread_cpu(), Instant::now());
    work()?;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / ops as f64;
    Ok(Cost { cpu_us: per(thread_cpu() - cpu), wall_us: per(wall.elapsed()) })
}

fn measure(scratch: &Path, keys: u64, ops: u64) -> Result<Report, Error> {
    let path = scratch.join("store");
    let store = Store::open(&path)?;
    let mut writer = Writer { lsn: 0, digest: Digest::EMPTY };
    // A random permutation of the slots, so that the tree grows as under random writes.
    let mut order: Vec<u64> = (0..keys).collect();
    let mut random = Random(24);
    for i in (1..order.len()).rev() {
        order.swap(i, (random.next() % (i as u64 + 1)) as usize);
    }
    super::progress(&format!("loading {keys} keys"));
    let load = timed(keys, || {
        for chunk in order.chunks(LOAD_RUN) {
            let run: Vec<Record> = chunk.iter().map(|&slot| writer.record(key_of(slot), None)).collect();
            check(store.apply_many(&run)?)?;
        }
        Ok(())
    })?;
    drop(order);
    let picks: Vec<Vec<u8>> = (0..ops).map(|_| key_of(random.next() % keys)).collect();
    super::progress(&format!("{ops} gets"));
    let get = timed(ops, || {
        for key in &picks {
            std::hint::black_box(store.get(key)?);
        }
        Ok(())
    })?;
    // Each run's records are made (their before-images read) just before it is applied; only
    // the apply is timed.
    let mut apply = |before: Before| -> Result<Cost, Error> {
        let (mut cpu, mut wall) = (Duration::ZERO, Duration::ZERO);
        for chunk in picks.chunks(APPLY_RUN) {
            let mut pending: std::collections::HashMap<&[u8], Vec<u8>> = Default::default();
            let mut run = Vec::with_capacity(chunk.len());
            for key in chunk {
                let current = match pending.get(key.as_slice()) {
                    Some(value) => Some(value.clone()),
                    None => store.get(key)?,
                };
                let record = writer.record(key.clone(), current);
                if let RecordBody::Txn { ops, .. } = &record.body {
                    pending.insert(key, ops[0].after.clone().unwrap_or_default());
                }
                run.push(record);
            }
            let (cpu0, wall0) = (thread_cpu(), Instant::now());
            check(store.apply_many_reading(&run, before)?)?;
            cpu += thread_cpu() - cpu0;
            wall += wall0.elapsed();
        }
        let per = |d: Duration| d.as_secs_f64() * 1e6 / ops as f64;
        Ok(Cost { cpu_us: per(cpu), wall_us: per(wall) })
    };
    super::progress(&format!("{ops} SETs in runs of {APPLY_RUN}, reading sled"));
    let apply_reading_sled = apply(Before::Stored)?;
    super::progress(&format!("{ops} SETs in runs of {APPLY_RUN}, from the images"));
    let apply_from_images = apply(Before::FromRecord)?;
    let rss = resident_bytes();
    store.flush()?;
    drop(store);
    let disk = dir_bytes(&path);
    super::progress("reopening the store");
    let started = Instant::now();
    let reopened = reopen(&path)?;
    let reopen_ms = started.elapsed().as_secs_f64() * 1e3;
    let position = reopened.position();
    if position.key_count != keys {
        return Err(Error::Failed(format!("bench: the reopened store has {} keys, not {keys}", position.key_count)));
    }
    Ok(Report {
        dir: scratch.display().to_string(),
        keys,
        ops,
        load,
        get,
        apply_reading_sled,
        apply_from_images,
        rss_bytes_per_key: rss as f64 / keys as f64,
        disk_bytes_per_key: disk as f64 / keys as f64,
        reopen_ms,
    })
}

fn check(run: hotpair::storage::store::AppliedRun) -> Result<(), Error> {
    match run.mismatch {
        Some(m) => Err(Error::Failed(format!("bench: digest mismatch at LSN {}", m.lsn))),
        None => Ok(()),
    }
}

/// Opens a store this process just dropped: sled's flusher may hold its lock for a moment.
fn reopen(path: &Path) -> Result<Store, Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Store::open(path) {
            Ok(store) => return Ok(store),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(err) => return Err(err.into()),
        }
    }
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn table(report: &Report) -> String {
    let line = |name: &str, cost: &Cost| format!("{name:<34} {:>10.2} {:>10.2}\n", cost.cpu_us, cost.wall_us);
    let mut out = format!("store of {} keys, {} operations each, in {}\n", report.keys, report.ops, report.dir);
    out += &format!("{:<34} {:>10} {:>10}\n", "measurement", "cpu us/op", "wall us/op");
    out += &line("load (runs of 1024, new keys)", &report.load);
    out += &line("get", &report.get);
    out += &line("apply SET, reading sled (backup)", &report.apply_reading_sled);
    out += &line("apply SET, from images (primary)", &report.apply_from_images);
    out += &format!(
        "resident memory {:.0} bytes/key, on disk {:.0} bytes/key, reopen {:.0} ms\n",
        report.rss_bytes_per_key, report.disk_bytes_per_key, report.reopen_ms
    );
    out
}
