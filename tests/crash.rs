//! Crash test with real processes: a child (`hotpair append-loop`) appends with group commit and
//! prints every LSN `sync_to` has made durable; the parent SIGKILLs it at random moments, round
//! after round on the same directory, and after each kill checks the recovered journal against
//! the child's promises: every LSN printed as durable is present, LSNs run gap-free from 1, and
//! every record is exactly `crash_record(lsn)`.
//!
//! A SIGKILL rarely tears a write (the page cache survives the process), so some rounds also
//! leave a torn tail behind on purpose — a prefix of the next record, or a run of zeros as after
//! a power cut — which the next child must cut back at its open before appending. Each injected
//! tail must be accounted for: cut by the next child (its log says so) or, if it was killed
//! before its open finished, by the parent's open.
//!
//! Randomness comes from one seed, printed at the start; rerun with `HOTPAIR_CRASH_SEED=<seed>`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hotpair::admin::demo::{crash_record, crash_test_identity, CRASH_TEST_SEGMENT_BYTES};
use hotpair::storage::journal::format::encode_record;
use hotpair::storage::journal::{segment, Journal, JournalOptions, Lsn};

const ROUNDS: u32 = 25;
const COMMITTERS: &str = "8";
/// The most durable lines a round waits for before the kill: about two segments' worth, so kills
/// land across segment rolls (the child makes ~2k records/s durable on a VM disk: a round takes
/// up to ~1.5 s, the whole test 5–10 s).
const MAX_LINES_BEFORE_KILL: u64 = 3000;
/// A round that cannot reach its kill point in this time has a hung or dead child.
const ROUND_DEADLINE: Duration = Duration::from_secs(30);
/// What the journal logs when it cuts a torn tail (`warn` level, on the child's stderr).
const CUT_LOG_LINE: &str = "cutting a torn tail";
/// What it logs when the tail is all zeros: preallocated space (or a power cut's zeros), which
/// is cut the same way but is not damage.
const ZEROED_LOG_LINE: &str = "cutting the preallocated end";

/// SplitMix64: small, seedable, good enough to pick kill points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bound > 0; the modulo bias is irrelevant here).
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

fn seed() -> u64 {
    match std::env::var("HOTPAIR_CRASH_SEED") {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| panic!("HOTPAIR_CRASH_SEED={text:?} is not a u64")),
        Err(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        }
    }
}

/// What the child has promised so far, filled by the stdout reader thread.
#[derive(Default)]
struct Promises {
    durable: Vec<Lsn>,
    /// The child's stdout closed: it died or exited.
    closed: bool,
}

struct Running {
    child: Child,
    promises: Arc<(Mutex<Promises>, Condvar)>,
    stdout: JoinHandle<()>,
    stderr: JoinHandle<String>,
}

fn spawn_child(dir: &Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hotpair"))
        .args(["append-loop", "--dir", dir.to_str().unwrap(), "--committers", COMMITTERS])
        .env("HOTPAIR_LOG", "warn,hotpair::storage::journal=info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hotpair append-loop");
    let promises = Arc::new((Mutex::new(Promises::default()), Condvar::new()));
    let out = child.stdout.take().unwrap();
    let shared = promises.clone();
    let stdout = std::thread::spawn(move || {
        let mut reader = BufReader::new(out);
        let mut line = String::new();
        loop {
            line.clear();
            // A line cut short by the kill was never a whole promise: only lines ending in a
            // newline count.
            let whole = matches!(reader.read_line(&mut line), Ok(n) if n > 0) && line.ends_with('\n');
            let (lock, changed) = &*shared;
            let mut promises = lock.lock().unwrap();
            if !whole {
                promises.closed = true;
                changed.notify_all();
                return;
            }
            let lsn = line
                .strip_prefix("durable ")
                .and_then(|rest| rest.trim_end().parse::<Lsn>().ok())
                .unwrap_or_else(|| panic!("unexpected line from the child: {line:?}"));
            promises.durable.push(lsn);
            changed.notify_all();
        }
    });
    let mut err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    Running { child, promises, stdout, stderr }
}

/// Waits until the child has printed `lines` durable LSNs; panics if it stops first or hangs.
fn wait_for_promises(running: &mut Running, lines: u64, context: &str) {
    let deadline = Instant::now() + ROUND_DEADLINE;
    let (lock, changed) = &*running.promises;
    let mut promises = lock.lock().unwrap();
    while (promises.durable.len() as u64) < lines {
        if promises.closed {
            drop(promises);
            let status = running.child.wait().unwrap();
            panic!(
                "{context}: the child stopped by itself ({status}) before the kill; its stderr:\n{}",
                stderr_of(running)
            );
        }
        let now = Instant::now();
        if now >= deadline {
            panic!(
                "{context}: the child printed {} of {lines} durable LSNs within {ROUND_DEADLINE:?}",
                promises.durable.len()
            );
        }
        promises = changed.wait_timeout(promises, deadline - now).unwrap().0;
    }
}

fn stderr_of(running: &mut Running) -> String {
    let _ = running.child.kill();
    let handle = std::mem::replace(&mut running.stderr, std::thread::spawn(String::new));
    handle.join().unwrap_or_default()
}

/// SIGKILLs the child and collects everything it printed before it died.
fn kill(mut running: Running, context: &str) -> (Vec<Lsn>, String) {
    if let Some(status) = running.child.try_wait().unwrap() {
        panic!("{context}: the child exited by itself ({status}); its stderr:\n{}", stderr_of(&mut running));
    }
    running.child.kill().unwrap();
    let status = running.child.wait().unwrap();
    let stderr = running.stderr.join().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{context}: the child ended with {status}; stderr:\n{stderr}");
    running.stdout.join().unwrap();
    let promises = std::mem::take(&mut running.promises.0.lock().unwrap().durable);
    (promises, stderr)
}

fn last_segment(dir: &Path) -> Option<PathBuf> {
    segment::list(dir).unwrap().pop().map(|(_, path)| path)
}

/// A torn tail left on purpose, and where it starts.
struct Injected {
    path: PathBuf,
    offset: u64,
    bytes: u64,
}

/// Appends what a write cut off mid-record leaves: a prefix of the next record, or zeros.
fn inject_torn_tail(dir: &Path, next_lsn: Lsn, rng: &mut Rng) -> Option<Injected> {
    let path = last_segment(dir)?;
    let offset = std::fs::metadata(&path).unwrap().len();
    let tail = if rng.below(2) == 0 {
        let mut frame = Vec::new();
        encode_record(&crash_record(next_lsn), &mut frame);
        frame.truncate(1 + rng.below(frame.len() as u64 - 1) as usize);
        frame
    } else {
        vec![0u8; 1 + rng.below(8192) as usize]
    };
    let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(&tail).unwrap();
    Some(Injected { path, offset, bytes: tail.len() as u64 })
}

#[derive(Default)]
struct Tally {
    records_checked: u64,
    promises_checked: u64,
    cut_after_kill: u32,
    injected: u32,
    injected_cut_by_child: u32,
    injected_cut_by_parent: u32,
    killed_before_first_promise: u32,
}

#[test]
fn sigkilled_appender_keeps_every_durable_promise() {
    let seed = seed();
    // Straight to stderr, past the test harness's capture: the seed must be visible on failure
    // and the summary on success.
    let _ = writeln!(std::io::stderr(), "crash test seed {seed} (rerun with HOTPAIR_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions { segment_bytes: CRASH_TEST_SEGMENT_BYTES, ..JournalOptions::default() };
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut previous_last: Lsn = 0;
    let mut injected: Option<Injected> = None;

    for round in 1..=ROUNDS {
        let context = format!("seed {seed}, round {round}");
        // One round in five kills the child as soon as it is spawned (often inside its open and
        // recovery); the others after a random number of durable promises.
        let lines = if rng.below(5) == 0 { 0 } else { 1 + rng.below(MAX_LINES_BEFORE_KILL) };
        let mut running = spawn_child(dir.path());
        wait_for_promises(&mut running, lines, &context);
        let (promises, stderr) = kill(running, &context);
        if promises.is_empty() {
            tally.killed_before_first_promise += 1;
        }
        let child_cut = stderr.matches(CUT_LOG_LINE).count() + stderr.matches(ZEROED_LOG_LINE).count();

        let (journal, recovery) = Journal::open(dir.path(), crash_test_identity(), options.clone())
            .unwrap_or_else(|err| panic!("{context}: the journal does not reopen after the kill: {err}"));
        let mut cut_injected = false;
        if let Some(tail) = injected.take() {
            tally.injected += 1;
            cut_injected = recovery.cut.as_ref().is_some_and(|(path, offset, bytes, _)| {
                (path, *offset, *bytes) == (&tail.path, tail.offset, tail.bytes)
            }) || recovery
                .zeroed
                .as_ref()
                .is_some_and(|(path, offset, bytes)| (path, *offset, *bytes) == (&tail.path, tail.offset, tail.bytes));
            if cut_injected {
                tally.injected_cut_by_parent += 1;
            } else {
                assert!(
                    child_cut >= 1,
                    "{context}: the torn tail injected at {} offset {} ({} bytes) was cut by nobody; child stderr:\n{stderr}",
                    tail.path.display(),
                    tail.offset,
                    tail.bytes
                );
                tally.injected_cut_by_child += 1;
            }
        }
        if recovery.cut.is_some() && !cut_injected {
            tally.cut_after_kill += 1;
        }

        let last = journal.last_lsn().unwrap_or(0);
        assert!(last >= previous_last, "{context}: the journal went back from LSN {previous_last} to {last}");
        let mut expected: Lsn = 1;
        for entry in journal.read_from(1).unwrap() {
            let entry = entry.unwrap_or_else(|err| panic!("{context}: reading LSN {expected}: {err}"));
            assert_eq!(entry.record.lsn, expected, "{context}: LSNs are not gap-free from 1");
            assert_eq!(entry.record, crash_record(expected), "{context}: record {expected} is not what was written");
            expected += 1;
        }
        assert_eq!(expected - 1, last, "{context}: read back {} records, the journal ends at {last}", expected - 1);
        for &lsn in &promises {
            assert!(lsn >= 1 && lsn <= last, "{context}: LSN {lsn} was printed durable, the journal ends at {last}");
        }
        tally.records_checked += last;
        tally.promises_checked += promises.len() as u64;
        previous_last = last;
        drop(journal);

        // One round in three leaves a torn tail for the next child to cut.
        if round < ROUNDS && rng.below(3) == 0 {
            injected = inject_torn_tail(dir.path(), last + 1, &mut rng);
        }
    }

    let segments = std::fs::read_dir(dir.path()).unwrap().count();
    let _ = writeln!(
        std::io::stderr(),
        "crash test seed {seed}: {ROUNDS} SIGKILL rounds in {:.1} s; {} records checked (the journal ends at LSN {previous_last} \
         in {segments} segments), {} durable promises kept; torn tails cut: {} after a kill, {} injected ({} cut by the \
         next child, {} by the parent); {} kills before the first promise",
        started.elapsed().as_secs_f64(),
        tally.records_checked,
        tally.promises_checked,
        tally.cut_after_kill,
        tally.injected,
        tally.injected_cut_by_child,
        tally.injected_cut_by_parent,
        tally.killed_before_first_promise,
    );
    assert!(previous_last > 0, "seed {seed}: no record was ever written");
}
