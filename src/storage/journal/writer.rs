//! The journal a node writes to: recovery at open, appends, group commit, and the maintenance
//! operations (truncate, reopen, trim).
//!
//! ## Parts
//! - [`group_commit`]: the flusher, fsync pacing, and syncing on the caller's thread.
//! - [`fill`]: preallocation of the active segment, and dropping the page cache behind it.
//! - [`recovery`]: what `open` checks and cuts. [`files`]: the file operations underneath.
//!
//! ## Invariants
//! - The durable LSN only moves past records that were written *and* fsynced: it is set by the
//!   flusher (or `sync_now`) after `sync_data` returns, to the last LSN written before the call.
//! - Bytes reach the file in LSN order: every `write` happens under the state lock.
//! - After an fsync error the journal is failed for good (an fsync error may have dropped dirty
//!   pages; retrying could report lost data as durable). Appends and waits return `Failed`.
//! - A new segment's header is fsynced, and then its directory, before any record goes into it.

mod files;
mod fill;
mod group_commit;
mod recovery;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::format::{self, JournalKind, SegmentHeader, MAX_RECORD_BODY, SEGMENT_HEADER_LEN};
use super::reader::{self, JournalReader, SegmentInfo};
use super::record::{Epoch, Lsn, Record};
use super::seal::{self, Seal};
use super::segment::{self, Tail};
use super::JournalError;
use files::{create_dir_durably, cut_file, io, move_file, open_for_writing, remove_file, sync_dir};
use fill::write_zeros;
use group_commit::{recheck_all, wake_durable};
use recovery::{crc_of_file, offset_after, recover};

/// Default size at which the active segment is closed and a new one started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Buffered bytes past which an append writes the buffer out itself rather than leave it to the
/// flusher, so that memory stays bounded under a burst.
const MAX_BUFFERED_BYTES: usize = 8 * 1024 * 1024;
/// The chunk in which the active segment is zero-filled ahead of its records (see
/// `fill`, "Preallocation"): the filler adds one once the records come within one of the zeros' end, so
/// 1–2 chunks of zeros lie ahead of them.
pub const PREALLOCATE_BYTES: u64 = 1024 * 1024;
/// Cached pages of the active segment this far behind its records are left in the page cache;
/// the filler drops older ones (see `fill`, "Dropping the cache behind").
pub const CACHE_BEHIND_BYTES: u64 = 8 * 1024 * 1024;
/// Zeros are written in pieces this size (see [`write_zeros`]).
const FILL_PIECE_BYTES: usize = 64 * 1024;

/// Who owns a journal: every segment header must match, or the journal refuses to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalIdentity {
    pub cluster: [u8; 16],
    pub node: String,
    pub kind: JournalKind,
}

/// Tunables of one journal.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// The active segment is closed once it reaches this size.
    pub segment_bytes: u64,
    /// Where `trim_below` moves closed segments; `None` deletes them.
    pub archive_dir: Option<PathBuf>,
    /// The flusher starts an fsync at most this often (zero: as soon as anything is appended).
    /// Only for a journal whose durability no commit waits for: the backup's remote journal below
    /// sync level `durable` (see `group_commit`, "Paced fsyncs").
    pub sync_pace: Duration,
    /// How long the flusher may wait after an fsync for the committers it released to come back.
    pub gather: Gather,
    /// Appends do not wake the flusher: the appender makes its records durable itself with
    /// [`Journal::sync_now`] (see `group_commit`, "Syncing on the caller's thread"). The flusher still serves
    /// `sync_to` and shutdown.
    pub caller_syncs: bool,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            archive_dir: None,
            sync_pace: Duration::ZERO,
            gather: Gather::Long,
            caller_syncs: false,
        }
    }
}

/// The flusher's pause after an fsync that covered several records, for the committers it just
/// released to come back and join the next one (see [`Inner::flush_loop`]). The pause ends as soon
/// as they have; the bound only matters when some do not come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gather {
    /// Up to four times the fsync, at most 4 ms. The node's journals all use it: at `durable`
    /// too, where a released committer still waits for the backup's fsync, a long pause makes
    /// the primary's groups (and so the backup's batches) whole, and costs less CPU per commit
    /// than a short one (docs/benchmarks.md, "The backup fsyncs on its follower task").
    Long,
    /// Up to half the fsync, at most 1 ms: splits committers that come back late into smaller
    /// groups with shorter waits. The node used it for the primary's local journal at `durable`
    /// while the backup's flusher gathered by itself; kept for comparison.
    Short,
}

impl Gather {
    /// The longest pause after an fsync that took `fsync`.
    fn bound(self, fsync: Duration) -> Duration {
        match self {
            Gather::Long => (fsync * 4).min(Duration::from_millis(4)),
            Gather::Short => (fsync / 2).min(Duration::from_millis(1)),
        }
    }
}

/// What `open` found and did, for the log and for `status`.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub segments: usize,
    pub records: u64,
    /// Bytes cut from a torn tail, with where and why.
    pub cut: Option<(PathBuf, u64, u64, String)>,
    /// Zero bytes cut from the end of the last segment: preallocated space a writer that did not
    /// close the journal had not reached (not damage; see `fill`, "Preallocation").
    pub zeroed: Option<(PathBuf, u64, u64)>,
    /// Closed segments taken from their seals: only their headers were read (`seal`).
    pub sealed: usize,
    /// Bytes read from segment files to open the journal (headers of sealed segments, the
    /// whole of every other segment).
    pub bytes_read: u64,
}

/// What [`Journal::check_sealed`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SealCheck {
    /// Sealed segments whose bytes matched their seal's CRC.
    pub segments: usize,
    pub bytes: u64,
}

/// An open journal directory. Cloning shares the same journal.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
    _threads: Arc<JournalThreads>,
}

struct Inner {
    dir: PathBuf,
    identity: JournalIdentity,
    options: JournalOptions,
    state: Mutex<State>,
    /// Wakes the flusher: something was appended, or shutdown.
    work: Condvar,
    /// Wakes maintenance operations waiting in `lock_idle`: a sync finished, or the journal
    /// failed. (`sync_to` waiters are woken one by one through `State::waiters`.)
    durable: Condvar,
    durable_tx: watch::Sender<Lsn>,
    /// What a primary may ship: the last LSN written (handed to the OS, maybe not yet fsynced)
    /// or the last of a complete group (appended, maybe not yet written), whichever is later.
    shippable_tx: watch::Sender<Lsn>,
    fsyncs: AtomicU64,
    /// The journal's size and end, republished at every change so that metrics read them
    /// without the state lock (which a write, a segment roll or a truncation holds across I/O).
    published: Published,
    /// Benchmarks only: a pause after every flusher fsync, to simulate a slower disk.
    simulated_fsync_delay_ns: AtomicU64,
    /// Tests only ([`Journal::skip_fsync_for_tests`]): the fsyncs that make records durable are
    /// not called, so that the power-loss tests can show they would catch it.
    skip_fsync: std::sync::atomic::AtomicBool,
    /// Tests only: a pause before each flusher write, so that a test can kill a process whose
    /// records were shipped (from memory) but never written.
    simulated_write_delay_ns: AtomicU64,
    /// Tests only: a pause before each fill's zeros are written, so that records outrun it.
    simulated_fill_delay_ns: AtomicU64,
    /// Wakes the filler thread (it waits on the state mutex): the records came within a chunk
    /// of the zeros' end, a new segment began, or shutdown.
    fill_wanted: Condvar,
    /// The number of the last fill the filler has finished writing. Under its own mutex, so that
    /// a writer holding the state lock can wait for a fill (`settle_fill`) without the filler
    /// needing that lock to report it.
    fills_done: Mutex<u64>,
    fill_done: Condvar,
}

/// One thread blocked in `sync_to`. Each thread reuses its own (see [`WAITER`]).
struct Waiter {
    /// [`WAITING`], then [`WOKEN_DURABLE`] or [`WOKEN_RECHECK`], set before the unpark.
    status: AtomicU8,
    thread: Thread,
}

/// Registered and parked.
const WAITING: u8 = 0;
/// The durable LSN covers the LSN waited for: return without looking at the state again.
const WOKEN_DURABLE: u8 = 1;
/// Something else happened (failure, truncation, shutdown): take the lock and look again.
const WOKEN_RECHECK: u8 = 2;

thread_local! {
    /// The calling thread's waiter slot: `sync_to` allocates nothing. A thread waits in at most
    /// one `sync_to` at a time, and a slot leaves the waiter list before its status stops being
    /// `WAITING`, so a slot is never in the list twice.
    static WAITER: Arc<Waiter> =
        Arc::new(Waiter { status: AtomicU8::new(WOKEN_RECHECK), thread: std::thread::current() });
}

impl Waiter {
    fn wake(&self, status: u8) {
        self.status.store(status, Ordering::Release);
        self.thread.unpark();
    }
}

/// What [`Journal::footprint`] reads: copies of state fields, stored under the state lock by
/// whoever changed them, read without it.
#[derive(Default)]
struct Published {
    last_lsn: AtomicU64,
    segments: AtomicU64,
    bytes: AtomicU64,
}

/// A journal's size and end as last published: live segments only (archived ones are not
/// counted), bytes of records written to their files (records still buffered are not yet
/// counted, nor the active segment's preallocated zeros, at most [`PREALLOCATE_BYTES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct JournalFootprint {
    /// LSN of the last record appended, 0 for an empty journal.
    pub last_lsn: Lsn,
    pub segments: u64,
    pub bytes: u64,
}

/// Counters for benchmarks and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct JournalStats {
    /// fdatasync calls made by the flusher and `sync_now` (group commits), counted as they end.
    pub fsyncs: u64,
    /// fdatasync calls running right now (0 or 1 for a journal that is working as it should).
    pub in_flight: u32,
}

struct State {
    /// Live segments in LSN order; the last one is the active segment, if any.
    segments: Vec<SegmentInfo>,
    active: Option<Arc<File>>,
    /// Length of the active segment's file: its records, then zeros up to here.
    allocated: u64,
    /// Appended records not yet written to the active segment.
    buffer: Vec<u8>,
    /// CRC32C of the active segment's bytes written so far (`[0, bytes)`), for its seal.
    active_crc: u32,
    /// LSN of the last record appended (buffered or written); `None` for an empty journal.
    last_lsn: Option<Lsn>,
    /// The first LSN the next append must have, when an empty segment or history pins it.
    next_lsn: Option<Lsn>,
    written_lsn: Lsn,
    durable_lsn: Lsn,
    /// Fsyncs in flight, the flusher's and `sync_now`'s (maintenance operations wait for none).
    syncing: u32,
    failed: Option<String>,
    shutdown: bool,
    /// Threads parked in `sync_to`, with the LSN each waits for (unordered).
    waiters: Vec<(Lsn, Arc<Waiter>)>,
    /// The flusher is asleep until an append brings the last LSN to at least this; the append
    /// that does so wakes it (and clears this). `None`: the flusher is busy, nobody wakes it.
    flusher_wants: Option<Lsn>,
    /// The filler's fill in flight, if any. Nothing writes past `allocated` until it is settled.
    filling: Option<Fill>,
    /// Numbers the fills.
    fills_started: u64,
    /// The filler has been woken for the next fill and has not taken it yet.
    fill_asked: bool,
}

/// A zero-fill of the active segment the filler has taken on: from `allocated` to `end`.
#[derive(Debug, Clone, Copy)]
struct Fill {
    /// Counts fills; `Inner::fills_done` reports the last one finished.
    number: u64,
    end: u64,
}

/// The journal's two threads, the flusher and the filler, stopped and joined when the last
/// clone of the journal goes.
struct JournalThreads {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for JournalThreads {
    fn drop(&mut self) {
        self.inner.lock().shutdown = true;
        self.inner.work.notify_all();
        self.inner.fill_wanted.notify_all();
        for thread in self.threads.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default() {
            let _ = thread.join();
        }
    }
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, checks the last segment and every closed
    /// one without a seal whole, and cuts a torn tail back to the last whole record. Damage
    /// anywhere else is an error naming file and offset. Sealed segments are not read (`seal`):
    /// [`Journal::check_sealed`] checks them later.
    pub fn open(
        dir: &Path,
        identity: JournalIdentity,
        options: JournalOptions,
    ) -> Result<(Journal, Recovery), JournalError> {
        if identity.node.is_empty() || identity.node.len() > format::MAX_NODE_NAME {
            return Err(JournalError::InvalidNodeName(identity.node.clone()));
        }
        create_dir_durably(dir)?;
        let (segments, recovery, active_crc) = recover(dir, &identity)?;
        let next_lsn = segments.last().map(|s| s.last_lsn.map_or(s.first_lsn, |l| l + 1));
        let last_lsn = last_of(&segments, next_lsn);
        let active = match segments.last() {
            Some(seg) => Some(Arc::new(open_for_writing(&seg.path)?)),
            None => None,
        };
        // `recover` cut any zero tail: the file ends with its last record.
        let allocated = segments.last().map_or(0, |seg| seg.bytes);
        // Bytes a killed process left in the page cache are in the file but not yet on disk:
        // make them durable before calling them durable.
        if let (Some(file), Some(seg)) = (&active, segments.last()) {
            io(&seg.path, file.sync_data())?;
        }
        let durable = last_lsn.unwrap_or(0);
        let (durable_tx, _) = watch::channel(durable);
        let (shippable_tx, _) = watch::channel(durable);
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            identity,
            options,
            state: Mutex::new(State {
                segments,
                active,
                allocated,
                buffer: Vec::new(),
                active_crc,
                last_lsn,
                next_lsn,
                written_lsn: durable,
                durable_lsn: durable,
                syncing: 0,
                failed: None,
                shutdown: false,
                waiters: Vec::new(),
                flusher_wants: None,
                filling: None,
                fills_started: 0,
                fill_asked: false,
            }),
            work: Condvar::new(),
            durable: Condvar::new(),
            durable_tx,
            shippable_tx,
            fsyncs: AtomicU64::new(0),
            published: Published::default(),
            simulated_fsync_delay_ns: AtomicU64::new(0),
            skip_fsync: std::sync::atomic::AtomicBool::new(false),
            simulated_write_delay_ns: AtomicU64::new(0),
            simulated_fill_delay_ns: AtomicU64::new(0),
            fill_wanted: Condvar::new(),
            fills_done: Mutex::new(0),
            fill_done: Condvar::new(),
        });
        inner.publish(&inner.lock());
        let handle = Arc::new(JournalThreads { inner: inner.clone(), threads: Mutex::new(Vec::new()) });
        let kind = inner.identity.kind.name();
        for (name, run) in [("flush", Inner::flush_loop as fn(&Inner)), ("fill", Inner::fill_loop)] {
            let thread_inner = inner.clone();
            let thread = std::thread::Builder::new()
                .name(format!("journal-{name}-{kind}"))
                .spawn(move || run(&thread_inner))
                .map_err(|source| JournalError::Io { path: dir.to_path_buf(), source })?;
            handle.threads.lock().unwrap_or_else(|p| p.into_inner()).push(thread);
        }
        Ok((Journal { inner, _threads: handle }, recovery))
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn identity(&self) -> &JournalIdentity {
        &self.inner.identity
    }

    /// LSN of the last record appended, durable or not.
    pub fn last_lsn(&self) -> Option<Lsn> {
        self.inner.lock().last_lsn
    }

    /// The LSN the next append must carry, if the journal pins it (it does unless it is empty).
    pub fn next_lsn(&self) -> Option<Lsn> {
        self.inner.lock().next_lsn
    }

    /// Every record up to this LSN is on stable storage.
    pub fn durable_lsn(&self) -> Lsn {
        self.inner.lock().durable_lsn
    }

    /// Size and end without taking the state lock (for metrics; see [`JournalFootprint`]).
    pub fn footprint(&self) -> JournalFootprint {
        let published = &self.inner.published;
        JournalFootprint {
            last_lsn: published.last_lsn.load(Ordering::Acquire),
            segments: published.segments.load(Ordering::Acquire),
            bytes: published.bytes.load(Ordering::Acquire),
        }
    }

    pub fn stats(&self) -> JournalStats {
        let in_flight = self.inner.lock().syncing;
        JournalStats { fsyncs: self.inner.fsyncs.load(Ordering::Relaxed), in_flight }
    }

    /// Benchmarks only: after every flusher fsync, pause `delay` before calling it done, as a
    /// disk with that much more fsync latency would. `bench journal --fsync-delay-ms` uses it.
    #[doc(hidden)]
    pub fn simulate_fsync_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.inner.simulated_fsync_delay_ns.store(nanos, Ordering::Relaxed);
    }

    /// Tests only, and unsafe: from now on the fsyncs that make records durable (the commit
    /// fsync, the filler's, a truncation's) are skipped and reported done. The power-loss tests
    /// run a node so (`HOTPAIR_UNSAFE_TEST_SKIP_JOURNAL_FSYNC`) to show that they catch it.
    #[doc(hidden)]
    pub fn skip_fsync_for_tests(&self) {
        self.inner.skip_fsync.store(true, Ordering::Relaxed);
    }

    /// Tests only: the flusher waits `delay` (without the lock) before each write, so records
    /// a primary shipped from memory stay out of the file that long (`tests/pair.rs` kills it
    /// then).
    #[doc(hidden)]
    pub fn simulate_write_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.inner.simulated_write_delay_ns.store(nanos, Ordering::Relaxed);
    }

    /// Tests only: the filler waits `delay` (its fill in flight) before writing each chunk's
    /// zeros, so that records outrun it and must wait for it (`tests/journal_group_commit.rs`).
    #[doc(hidden)]
    pub fn simulate_fill_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.inner.simulated_fill_delay_ns.store(nanos, Ordering::Relaxed);
    }

    /// A channel that always holds the durable LSN, for async waiters.
    pub fn subscribe_durable(&self) -> watch::Receiver<Lsn> {
        self.inner.durable_tx.subscribe()
    }

    /// A channel that holds how far a primary may ship: the last LSN written to the file (its
    /// fsync perhaps still to come), or, once an append completes the group the flusher was
    /// gathering, that append's LSN (the group perhaps not even written yet: the primary ships
    /// it from memory at once, instead of after the flusher thread's wake-up and write). So
    /// its own fsync and its backup's run side by side (`replication`, "Overlapped fsyncs").
    /// It moves only forward, except at a truncation; it wakes a receiver only when it moves.
    pub fn subscribe_shippable(&self) -> watch::Receiver<Lsn> {
        self.inner.shippable_tx.subscribe()
    }

    /// The last LSN written to the file (its fsync perhaps still to come).
    pub fn written_lsn(&self) -> Lsn {
        self.inner.lock().written_lsn
    }

    /// Tests only: the flusher sleeps until the next append (nothing to write or gather).
    #[doc(hidden)]
    pub fn flusher_is_idle(&self) -> bool {
        self.inner.lock().flusher_wants == Some(0)
    }

    /// Appends a record. It is durable once `sync_to(record.lsn)` returns (or the durable channel
    /// reaches it). The LSN must follow the previous record's; an empty journal takes any LSN ≥ 1.
    pub fn append(&self, record: &Record) -> Result<Lsn, JournalError> {
        let size = format::encoded_len(record);
        if size - format::FRAME_HEADER_LEN > MAX_RECORD_BODY {
            return Err(JournalError::RecordTooLarge { size, max: MAX_RECORD_BODY });
        }
        let mut state = self.inner.lock();
        self.inner.prepare_append(&mut state, record, size)?;
        format::encode_record(record, &mut state.buffer);
        self.inner.finish_append(state, record.lsn)
    }

    /// Appends `record` whose frame the caller has just encoded with
    /// [`format::encode_record`] (the primary keeps that frame for shipping, so it is encoded
    /// once). `frame` must be exactly that encoding; it is not decoded again.
    pub fn append_encoded(&self, record: &Record, frame: &[u8]) -> Result<Lsn, JournalError> {
        debug_assert_eq!(frame.len(), format::encoded_len(record), "frame is not record's encoding");
        if frame.len() - format::FRAME_HEADER_LEN > MAX_RECORD_BODY {
            return Err(JournalError::RecordTooLarge { size: frame.len(), max: MAX_RECORD_BODY });
        }
        let mut state = self.inner.lock();
        self.inner.prepare_append(&mut state, record, frame.len())?;
        state.buffer.extend_from_slice(frame);
        self.inner.finish_append(state, record.lsn)
    }

    /// Appends one already-framed record byte for byte, from a source not yet checked. The frame is
    /// fully decoded and checked first. (The backup's follower decodes each shipped frame anyway,
    /// so it uses [`Journal::append_encoded`] with that frame: what the peer wrote is what it keeps.)
    pub fn append_frame(&self, frame: &[u8]) -> Result<Lsn, JournalError> {
        let (record, used) = format::decode_record(frame).map_err(|err| JournalError::BadFrame {
            reason: match err {
                format::DecodeError::Incomplete => "frame is cut short".into(),
                format::DecodeError::Invalid(reason) => reason,
            },
        })?;
        if used != frame.len() {
            return Err(JournalError::BadFrame { reason: format!("{} bytes after the record", frame.len() - used) });
        }
        let mut state = self.inner.lock();
        self.inner.prepare_append(&mut state, &record, frame.len())?;
        state.buffer.extend_from_slice(frame);
        self.inner.finish_append(state, record.lsn)
    }

    /// Blocks until every record up to `lsn` is durable.
    pub fn sync_to(&self, lsn: Lsn) -> Result<(), JournalError> {
        // Within a thread-local destructor the slot may be gone: use a fresh one then.
        let waiter = WAITER.try_with(Arc::clone).unwrap_or_else(|_| {
            Arc::new(Waiter { status: AtomicU8::new(WOKEN_RECHECK), thread: std::thread::current() })
        });
        let mut state = self.inner.lock();
        loop {
            if state.durable_lsn >= lsn {
                return Ok(());
            }
            if let Some(reason) = &state.failed {
                return Err(self.inner.failed_error(reason));
            }
            if state.last_lsn.is_none_or(|last| last < lsn) {
                return Err(JournalError::NotAppended { lsn, last: state.last_lsn });
            }
            if state.shutdown {
                return Err(JournalError::Closed);
            }
            waiter.status.store(WAITING, Ordering::Relaxed);
            state.waiters.push((lsn, waiter.clone()));
            // A journal whose appenders sync it themselves leaves its flusher asleep until
            // someone waits here; an fsync of theirs in flight wakes it when it ends, if needed.
            let wake_flusher = state.syncing == 0 && state.flusher_wants.take().is_some();
            drop(state);
            if wake_flusher {
                self.inner.work.notify_one();
            }
            // Only the flusher (or a failure, truncation or shutdown) changes the status, after
            // taking the slot out of the list; `park` may also return spuriously.
            let woken = loop {
                match waiter.status.load(Ordering::Acquire) {
                    WAITING => std::thread::park(),
                    status => break status,
                }
            };
            if woken == WOKEN_DURABLE {
                return Ok(());
            }
            state = self.inner.lock();
        }
    }

    /// Whether appenders make this journal durable themselves ([`JournalOptions::caller_syncs`]).
    pub fn caller_syncs(&self) -> bool {
        self.inner.options.caller_syncs
    }

    /// Writes what was appended and fsyncs it on the calling thread; returns the durable LSN.
    /// For an appender that would otherwise hand its records to the flusher and wait for its
    /// wake-up (see `group_commit`, "Syncing on the caller's thread"). Blocks for one fsync.
    pub fn sync_now(&self) -> Result<Lsn, JournalError> {
        let inner = &self.inner;
        // One fsync of the journal at a time. One in flight (the flusher's, for a `sync_to`
        // waiter) may cover what we wrote; and two at once could split a writeback error
        // between them, one reporting it and the other returning Ok for the lost pages.
        let mut state = inner.lock_idle();
        inner.check_failed(&state)?;
        inner.write_buffer(&mut state)?;
        let target = state.written_lsn;
        let Some(file) = state.active.clone().filter(|_| target > state.durable_lsn) else {
            return Ok(state.durable_lsn);
        };
        let mut covered = Vec::new();
        let (mut state, synced, _) = inner.fsync_written(state, &file, target, &mut covered);
        let outcome = synced.map(|()| state.durable_lsn);
        // Waiters this fsync did not cover (records appended during it) are the flusher's.
        let wake_flusher = !state.waiters.is_empty() && state.syncing == 0 && state.flusher_wants.take().is_some();
        drop(state);
        if wake_flusher {
            inner.work.notify_one();
        }
        wake_durable(&mut covered);
        outcome
    }

    /// Appends and waits until the record is durable.
    pub fn append_durable(&self, record: &Record) -> Result<Lsn, JournalError> {
        let lsn = self.append(record)?;
        self.sync_to(lsn)?;
        Ok(lsn)
    }

    /// Reads records with LSN ≥ `from` up to the last one appended now, across live and archived
    /// segments. Buffered records are written out first so the reader sees them.
    pub fn read_from(&self, from: Lsn) -> Result<JournalReader, JournalError> {
        let (segments, last) = {
            let mut state = self.inner.lock();
            self.inner.write_buffer(&mut state)?;
            (state.segments.clone(), state.last_lsn)
        };
        let mut all = reader::archived_segments(self.inner.options.archive_dir.as_deref(), &segments)?;
        all.extend(segments);
        Ok(JournalReader::new(all, from, last.unwrap_or(0)))
    }

    /// Records with LSN > `after`, newest first (for rewinding an orphaned tail).
    pub fn read_reverse_after(&self, after: Lsn) -> Result<Vec<Record>, JournalError> {
        let mut records = Vec::new();
        for entry in self.read_from(after + 1)? {
            records.push(entry?.record);
        }
        records.reverse();
        Ok(records)
    }

    /// Segments as they are now: archived ones first, then live ones.
    pub fn segments(&self) -> Result<Vec<SegmentInfo>, JournalError> {
        let live = self.inner.lock().segments.clone();
        let mut all = reader::archived_segments(self.inner.options.archive_dir.as_deref(), &live)?;
        all.extend(live);
        Ok(all)
    }

    /// Whether one of the live segments holds `lsn` (archived ones are not looked at).
    pub fn covers(&self, lsn: Lsn) -> bool {
        let state = self.inner.lock();
        state.segments.iter().any(|s| s.first_lsn <= lsn && s.last_lsn.is_some_and(|last| last >= lsn))
    }

    /// The lowest LSN still readable (live or archived), if any.
    pub fn first_lsn(&self) -> Result<Option<Lsn>, JournalError> {
        Ok(self.segments()?.iter().find(|s| s.last_lsn.is_some()).map(|s| s.first_lsn))
    }

    /// Reads every sealed closed segment once and checks its bytes against its seal's CRC32C:
    /// the damage check an open no longer makes (`seal`). A mismatch is a `Corrupt` error that
    /// names the file, and the offset of the first bad record when one can be found. Reads a
    /// megabyte at a time without the journal's lock and drops the pages behind it; a segment
    /// trimmed or cut meanwhile is skipped.
    pub fn check_sealed(&self) -> Result<SealCheck, JournalError> {
        let closed: Vec<SegmentInfo> = {
            let state = self.inner.lock();
            let n = state.segments.len().saturating_sub(1);
            state.segments[..n].to_vec()
        };
        let mut checked = SealCheck::default();
        for seg in closed {
            let Some(sealed) = seal::read(&seg.path) else { continue };
            if sealed.bytes != seg.bytes {
                continue;
            }
            let crc = match crc_of_file(&seg.path, sealed.bytes) {
                Ok(crc) => crc,
                // Trimmed or cut since the list was taken.
                Err(_) if !seg.path.exists() => continue,
                Err(err) => return Err(err),
            };
            if let Ok(file) = File::open(&seg.path) {
                segment::drop_from_cache(&file, 0, 0);
            }
            if crc != sealed.crc {
                if seal::read(&seg.path) != Some(sealed) {
                    continue;
                }
                let bytes =
                    std::fs::read(&seg.path).map_err(|source| JournalError::Io { path: seg.path.clone(), source })?;
                segment::scan(&seg.path, &bytes, false, |_| Ok(()))?;
                return Err(JournalError::Corrupt {
                    path: seg.path.clone(),
                    offset: 0,
                    reason: format!(
                        "the segment's bytes do not match the CRC32C its seal recorded when it was closed ({:08x}, now {crc:08x})",
                        sealed.crc
                    ),
                });
            }
            checked.segments += 1;
            checked.bytes += sealed.bytes;
        }
        Ok(checked)
    }

    /// Removes every record after `lsn` (durably). Used to drop an orphaned tail after it was
    /// saved and rewound. Nobody may append while it runs; it waits for an in-flight fsync.
    pub fn truncate_after(&self, lsn: Lsn) -> Result<(), JournalError> {
        let mut state = self.inner.lock_idle();
        self.inner.check_failed(&state)?;
        if state.last_lsn.is_none_or(|last| last <= lsn) {
            return Ok(());
        }
        self.inner.write_buffer(&mut state)?;
        self.inner.settle_fill(&mut state);
        // Linux reports a writeback error to the files open when it happened: the files opened
        // below to cut and reopen the segment would not hear of one the records met. Ask the
        // active file before it goes (the filler's fsync may have seen the error, not reported it).
        if let Some(file) = state.active.clone() {
            if let Err(err) = self.inner.sync_data(&file) {
                let reason = format!("fsync of journal {} failed: {err}", self.inner.dir.display());
                return Err(self.inner.fail(&mut state, reason));
            }
        }
        while let Some(seg) = state.segments.last().cloned() {
            // The seal goes first: a seal must never outlive the bytes it describes.
            seal::remove(&seg.path)?;
            if seg.first_lsn > lsn {
                state.segments.pop();
                state.active = None;
                remove_file(&seg.path)?;
                continue;
            }
            let cut_at = offset_after(&seg.path, lsn)?;
            cut_file(&seg.path, cut_at)?;
            state.active_crc = crc_of_file(&seg.path, cut_at)?;
            let last = state.segments.last_mut().expect("loop holds a segment");
            // `lsn` may lie in an epoch gap past this segment's end: keep what the segment holds.
            last.last_lsn = seg.last_lsn.map(|held| held.min(lsn)).filter(|&held| held >= seg.first_lsn);
            last.bytes = cut_at;
            state.active = Some(Arc::new(open_for_writing(&seg.path)?));
            state.allocated = cut_at;
            break;
        }
        sync_dir(&self.inner.dir)?;
        state.next_lsn = state.segments.last().map(|s| s.last_lsn.map_or(s.first_lsn, |l| l + 1));
        state.last_lsn = last_of(&state.segments, state.next_lsn);
        self.inner.publish(&state);
        let kept = state.last_lsn.unwrap_or(0);
        state.written_lsn = state.written_lsn.min(kept);
        state.durable_lsn = state.durable_lsn.min(kept);
        self.inner.durable_tx.send_replace(state.durable_lsn);
        self.inner.shippable_tx.send_replace(state.written_lsn);
        // Waiters for cut records must learn that they are gone.
        recheck_all(&mut state);
        self.inner.ask_fill(&mut state);
        Ok(())
    }

    /// Closes the current segment (written and fsynced) and starts a new, empty one. A no-op
    /// when the active segment holds no record yet. Returns the new segment's path.
    pub fn reopen_log(&self, epoch: Epoch, now_ms: u64) -> Result<Option<PathBuf>, JournalError> {
        let mut state = self.inner.lock_idle();
        self.inner.check_failed(&state)?;
        let Some(next) = state.next_lsn else {
            return Ok(None);
        };
        if state.segments.last().is_some_and(|s| s.last_lsn.is_none()) {
            return Ok(None);
        }
        self.inner.roll(&mut state, next, epoch, now_ms).map(Some)
    }

    /// Removes closed segments whose records all lie below `lsn` — moving them to the archive
    /// directory when one is configured. The active segment is never trimmed. Returns the files.
    pub fn trim_below(&self, lsn: Lsn) -> Result<Vec<PathBuf>, JournalError> {
        let mut state = self.inner.lock_idle();
        let mut trimmed = Vec::new();
        while state.segments.len() > 1 && state.segments[1].first_lsn <= lsn {
            let seg = state.segments.remove(0);
            self.inner.publish(&state);
            seal::remove(&seg.path)?;
            match &self.inner.options.archive_dir {
                Some(archive) => {
                    create_dir_durably(archive)?;
                    let target = archive.join(seg.path.file_name().unwrap_or_default());
                    move_file(&seg.path, &target)?;
                    sync_dir(archive)?;
                }
                None => remove_file(&seg.path)?,
            }
            trimmed.push(seg.path);
        }
        if !trimmed.is_empty() {
            sync_dir(&self.inner.dir)?;
        }
        Ok(trimmed)
    }
}

impl Inner {
    /// `fdatasync` of a file holding records, unless a test asked to skip it.
    fn sync_data(&self, file: &File) -> std::io::Result<()> {
        if self.skip_fsync.load(Ordering::Relaxed) {
            return Ok(());
        }
        file.sync_data()
    }

    /// Republishes what [`Journal::footprint`] reads. Caller holds the lock; called after
    /// every change of the segments or their sizes (a sum over the live segments: a handful).
    fn publish(&self, state: &State) {
        let bytes = state.segments.iter().map(|s| s.bytes).sum();
        self.published.last_lsn.store(state.last_lsn.unwrap_or(0), Ordering::Release);
        self.published.segments.store(state.segments.len() as u64, Ordering::Release);
        self.published.bytes.store(bytes, Ordering::Release);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than the panic itself; keep serving the other threads.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The lock, once no fsync is in flight: maintenance must not race the flusher's update.
    fn lock_idle(&self) -> MutexGuard<'_, State> {
        let mut state = self.lock();
        while state.syncing > 0 {
            state = self.wait_durable(state);
        }
        state
    }

    fn wait_durable<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.durable.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn failed_error(&self, reason: &str) -> JournalError {
        JournalError::Failed { dir: self.dir.clone(), reason: reason.to_string() }
    }

    fn check_failed(&self, state: &State) -> Result<(), JournalError> {
        match &state.failed {
            Some(reason) => Err(self.failed_error(reason)),
            None if state.shutdown => Err(JournalError::Closed),
            None => Ok(()),
        }
    }

    /// Checks the sequence and makes room: creates the first segment or rolls a full one.
    fn prepare_append(&self, state: &mut State, record: &Record, size: usize) -> Result<(), JournalError> {
        self.check_failed(state)?;
        let lsn = record.lsn;
        if lsn == 0 {
            return Err(JournalError::OutOfSequence { expected: state.next_lsn.unwrap_or(1), got: lsn });
        }
        if let Some(expected) = state.next_lsn {
            if lsn != expected {
                if !is_epoch_gap(state.segments.last(), expected, lsn, record.epoch) {
                    return Err(JournalError::OutOfSequence { expected, got: lsn });
                }
                // A later epoch begins past our end: the LSNs in between were written while the
                // peer was primary and live in the other journal. The new epoch gets its own
                // segment, so that the gap lies between segments and recovery can check it.
                self.roll(state, lsn, record.epoch, record.timestamp_ms)?;
                return Ok(());
            }
        }
        let full = state.segments.last().is_some_and(|seg| {
            seg.last_lsn.is_some() && seg.bytes + (state.buffer.len() + size) as u64 > self.options.segment_bytes
        });
        if state.active.is_none() || full {
            self.roll(state, lsn, record.epoch, record.timestamp_ms)?;
        }
        Ok(())
    }

    fn finish_append(&self, mut state: MutexGuard<'_, State>, lsn: Lsn) -> Result<Lsn, JournalError> {
        state.last_lsn = Some(lsn);
        self.published.last_lsn.store(lsn, Ordering::Release);
        state.next_lsn = Some(lsn + 1);
        if let Some(seg) = state.segments.last_mut() {
            seg.last_lsn = Some(lsn);
        }
        if state.buffer.len() >= MAX_BUFFERED_BYTES {
            self.write_buffer(&mut state)?;
        }
        // Wake the flusher only when it sleeps and this append is what it waits for: a busy
        // flusher finds the record itself, and a gathering one wants the whole group.
        let wake = !self.options.caller_syncs && state.flusher_wants.is_some_and(|wants| lsn >= wants);
        if wake {
            state.flusher_wants = None;
            self.publish_shippable(lsn);
        }
        drop(state);
        if wake {
            self.work.notify_one();
        }
        Ok(lsn)
    }

    /// Writes the buffer to the active segment (no fsync). Caller holds the lock.
    fn write_buffer(&self, state: &mut State) -> Result<(), JournalError> {
        if state.buffer.is_empty() {
            return Ok(());
        }
        let (Some(file), Some(seg)) = (state.active.clone(), state.segments.last().cloned()) else {
            return Err(self.fail(state, "records buffered without an active segment".into()));
        };
        let end = seg.bytes + state.buffer.len() as u64;
        if end > state.allocated {
            // The filler's chunk in flight may cover the records: they must not go in before it.
            self.settle_fill(state);
        }
        if end > state.allocated {
            // The records outran the filler: fill their chunk here, as every writer once did.
            // The chunk after the records, but a small segment (tests) is not filled past its size.
            let target = end.div_ceil(PREALLOCATE_BYTES) * PREALLOCATE_BYTES;
            let target = target.min(self.options.segment_bytes.max(end));
            if let Err(err) = write_zeros(&file, state.allocated, target) {
                // Only a speed-up: without it the records grow the file, as they did before, and
                // the next chunk is tried once they reach it. A full disk fails the records' own
                // write next, and that fails the journal.
                tracing::warn!(path = %seg.path.display(), %err, "could not preallocate journal space");
            }
            state.allocated = target;
        }
        if let Err(err) = file.write_all_at(&state.buffer, seg.bytes) {
            // A partial write leaves a torn record in the file; only a reopen may cut it back.
            let reason = format!("write to {} failed: {err}", seg.path.display());
            return Err(self.fail(state, reason));
        }
        let written = state.buffer.len() as u64;
        state.active_crc = crc32c::crc32c_append(state.active_crc, &state.buffer);
        state.buffer.clear();
        if let Some(seg) = state.segments.last_mut() {
            seg.bytes += written;
        }
        self.publish(state);
        state.written_lsn = state.last_lsn.unwrap_or(0);
        self.publish_shippable(state.written_lsn);
        self.ask_fill(state);
        Ok(())
    }

    /// Moves the shippable LSN forward; a write of a group already shipped wakes nobody. Called
    /// under the state lock, so that it moves in LSN order.
    fn publish_shippable(&self, lsn: Lsn) {
        self.shippable_tx.send_if_modified(|shippable| {
            let forward = lsn > *shippable;
            if forward {
                *shippable = lsn;
            }
            forward
        });
    }

    fn fail(&self, state: &mut State, reason: String) -> JournalError {
        tracing::error!(dir = %self.dir.display(), %reason, "journal failed; it accepts no more writes");
        state.failed = Some(reason.clone());
        self.durable.notify_all();
        recheck_all(state);
        self.failed_error(&reason)
    }

    /// Closes the active segment durably and creates a new one starting at `first_lsn`.
    /// `created_ms` comes from the caller (the record that opens the segment), so that the same
    /// records always produce the same bytes.
    fn roll(&self, state: &mut State, first_lsn: Lsn, epoch: Epoch, created_ms: u64) -> Result<PathBuf, JournalError> {
        // Buffered records belong to the segment being closed: write them out while it is still
        // the active one (`write_buffer` writes to `state.active`).
        self.write_buffer(state)?;
        self.settle_fill(state);
        if let Some(file) = state.active.take() {
            let path = state.segments.last().map(|s| s.path.clone()).unwrap_or_default();
            // A closed segment ends with its last record: cut the preallocated zeros, durably.
            let len = state.segments.last().map_or(0, |s| s.bytes);
            if let Err(err) = file.set_len(len).and_then(|()| file.sync_all()) {
                return Err(self.fail(state, format!("closing {} failed: {err}", path.display())));
            }
            if let Some(closed) = state.segments.last() {
                let sealed = Seal {
                    first_lsn: closed.first_lsn,
                    last_lsn: closed.last_lsn,
                    epoch: closed.epoch,
                    bytes: len,
                    crc: state.active_crc,
                };
                // Only a shortcut for the next open (the directory's fsync below covers it):
                // without it that open reads the segment whole, as it always did.
                if let Err(err) = seal::write(&closed.path, &sealed) {
                    tracing::warn!(path = %closed.path.display(), %err, "could not seal a closed journal segment");
                }
            }
            let (written, mut covered) = (state.written_lsn, Vec::new());
            self.publish_durable(state, written, &mut covered);
            self.durable.notify_all();
            wake_durable(&mut covered);
        }
        let path = self.dir.join(segment::file_name(first_lsn));
        let header = SegmentHeader {
            kind: self.identity.kind,
            cluster: self.identity.cluster,
            node: self.identity.node.clone(),
            first_lsn,
            epoch,
            created_ms,
        };
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(crate::storage::datadir::PRIVATE_FILE_MODE)
            .open(&path)
            .map_err(|source| JournalError::Io { path: path.clone(), source })?;
        let header_bytes = header.encode();
        io(&path, file.write_all_at(&header_bytes, 0))?;
        io(&path, file.sync_all())?;
        sync_dir(&self.dir)?;
        state.active_crc = crc32c::crc32c(&header_bytes);
        state.segments.push(SegmentInfo {
            path: path.clone(),
            first_lsn,
            last_lsn: None,
            bytes: SEGMENT_HEADER_LEN as u64,
            epoch,
            archived: false,
        });
        state.active = Some(Arc::new(file));
        state.allocated = SEGMENT_HEADER_LEN as u64;
        state.next_lsn = Some(first_lsn);
        self.publish(state);
        self.ask_fill(state);
        Ok(path)
    }
}

/// Whether a record (or segment) of `epoch` starting at `lsn` may follow a journal whose next LSN
/// is `expected`: only forward, and only into a later epoch than the segment before it. One
/// sequence of LSNs serves the pair, so a node's journal skips the epochs its peer was primary
/// in; within an epoch there is never a gap.
pub(crate) fn is_epoch_gap(previous: Option<&SegmentInfo>, expected: Lsn, lsn: Lsn, epoch: Epoch) -> bool {
    lsn > expected && previous.is_some_and(|seg| epoch > seg.epoch)
}

/// The last LSN a journal holds: its last record's, or — when trimming left only an empty
/// active segment — the one before the LSN that segment waits for.
fn last_of(segments: &[SegmentInfo], next_lsn: Option<Lsn>) -> Option<Lsn> {
    segments.iter().rev().find_map(|s| s.last_lsn).or(next_lsn.map(|n| n - 1)).filter(|&l| l > 0)
}
