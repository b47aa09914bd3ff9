//! Reading a journal forward from an LSN, across archived and live segments, and inspecting a
//! journal directory offline (for `hotpair journal ls|dump|verify`) without changing it.
//!
//! A reader is bounded: it yields records up to the last LSN that had been appended when it was
//! made, so it never parses bytes a writer is still putting down. A missing LSN range is an
//! error ([`JournalError::RangeGone`]) — the caller decides whether a full copy is allowed.
//!
//! A reader reads a segment [`READ_CHUNK_BYTES`] at a time (more for a larger record), not the
//! whole file: a primary's shipper reads on the data port's worker during a catch-up, and a
//! whole segment read at once from the disk held every client up (and took a segment's worth of
//! fresh memory; docs/benchmarks.md, "Figures moved out of module headers"). Once it is past part of a closed segment it drops
//! those pages from the page cache, as the writer does behind its records (`writer`, "Dropping
//! the cache behind"): a catch-up reads each record once.
//!
//! Reading lazily, a reader must not outlive a [`super::Journal::truncate_after`] of its
//! journal: the bytes it has not read yet may be cut and rewritten under it. (The node truncates
//! only with no reader open: before it follows, and in a rejoin.)

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::format::{self, DecodeError, SegmentHeader, SEGMENT_HEADER_LEN};
use super::record::{Epoch, Lsn, Record};
use super::segment::{self, Tail};
use super::JournalError;

/// One segment file as the journal knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SegmentInfo {
    pub path: PathBuf,
    pub first_lsn: Lsn,
    /// `None` while the segment holds no record.
    pub last_lsn: Option<Lsn>,
    pub bytes: u64,
    pub epoch: Epoch,
    pub archived: bool,
}

/// One record read back, with the exact bytes it occupies on disk (what replication ships).
#[derive(Debug, Clone)]
pub struct JournalEntry {
    pub record: Record,
    pub frame: Vec<u8>,
    pub path: PathBuf,
    pub offset: u64,
}

/// Bytes a reader reads from a segment file at a time.
pub const READ_CHUNK_BYTES: usize = 1024 * 1024;

/// Iterator over records `from..=until`. Yields an error (and then stops) on damage or a gap.
pub struct JournalReader {
    segments: std::vec::IntoIter<SegmentInfo>,
    next_lsn: Lsn,
    until: Lsn,
    current: Option<Window>,
    /// The buffer of the last segment read, kept for the next one.
    spare: Vec<u8>,
    done: bool,
    /// An error to report on the first `next()` (the start of the range is already gone).
    pending_error: Option<JournalError>,
    /// Whether the range start was found: after that, a later segment may begin past the
    /// next LSN (an epoch gap), before it that would mean the start is gone.
    started: bool,
}

impl JournalReader {
    pub(crate) fn new(segments: Vec<SegmentInfo>, from: Lsn, until: Lsn) -> JournalReader {
        let from = from.max(1);
        // Segments are contiguous, so the first one's first LSN is the oldest that can be read —
        // even when that segment is still empty (everything before it was trimmed).
        let first = segments.first().map(|s| s.first_lsn);
        let pending_error = match first {
            Some(first) if from < first && from <= until => {
                Some(JournalError::RangeGone { from, first_available: first })
            }
            _ => None,
        };
        // `from` may fall into an epoch gap between two segments: reading starts after it.
        let in_gap = first.is_some_and(|first| from >= first);
        let keep: Vec<SegmentInfo> =
            segments.into_iter().filter(|s| s.last_lsn.is_some_and(|last| last >= from)).collect();
        JournalReader {
            segments: keep.into_iter(),
            next_lsn: from,
            until,
            current: None,
            spare: Vec::new(),
            done: from > until,
            pending_error,
            started: in_gap,
        }
    }

    /// The LSN the next yielded record will have.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    fn load_next_segment(&mut self) -> Result<bool, JournalError> {
        let Some(seg) = self.segments.next() else {
            return Ok(false);
        };
        if seg.first_lsn > self.next_lsn {
            if !self.started {
                return Err(JournalError::RangeGone { from: self.next_lsn, first_available: seg.first_lsn });
            }
            // An epoch gap (the journal was opened and checked, so a gap between segments is
            // one): the LSNs in between belong to the other journal. Step over them.
            self.next_lsn = seg.first_lsn;
        }
        self.started = true;
        // The last segment listed may be the active one, whose last 8 MB the writer keeps cached
        // (and whose tail page the next record's write needs).
        let closed = !self.segments.as_slice().is_empty();
        let mut window = Window::open(seg.path, std::mem::take(&mut self.spare), closed)?;
        window.read_more()?;
        SegmentHeader::decode(window.rest()).map_err(|err| JournalError::Corrupt {
            path: window.path.clone(),
            offset: 0,
            reason: match err {
                DecodeError::Incomplete => "segment header cut short".into(),
                DecodeError::Invalid(reason) => reason,
            },
        })?;
        window.pos = SEGMENT_HEADER_LEN;
        self.current = Some(window);
        Ok(true)
    }

    /// Leaves the current segment, keeping its buffer for the next one.
    fn finish_segment(&mut self) {
        if let Some(window) = self.current.take() {
            self.spare = window.finish();
        }
    }

    fn step(&mut self) -> Result<Option<JournalEntry>, JournalError> {
        loop {
            if self.next_lsn > self.until {
                return Ok(None);
            }
            let Some(window) = &mut self.current else {
                if !self.load_next_segment()? {
                    return Err(JournalError::Missing { lsn: self.next_lsn });
                }
                continue;
            };
            let (record, used) = match format::decode_record(window.rest()) {
                Ok(decoded) => decoded,
                Err(DecodeError::Incomplete) => {
                    if window.read_more()? {
                        continue;
                    }
                    if window.rest().is_empty() {
                        self.finish_segment();
                        continue;
                    }
                    return Err(window.corrupt("record is cut off by the end of the file".into()));
                }
                Err(DecodeError::Invalid(reason)) => return Err(window.corrupt(reason)),
            };
            let (offset, at) = (window.offset(), window.pos);
            window.pos += used;
            if record.lsn < self.next_lsn {
                continue;
            }
            if record.lsn != self.next_lsn {
                return Err(
                    window.corrupt_at(offset, format!("record has LSN {}, expected {}", record.lsn, self.next_lsn))
                );
            }
            self.next_lsn += 1;
            let frame = window.bytes[at..at + used].to_vec();
            let entry = JournalEntry { record, frame, path: window.path.clone(), offset };
            return Ok(Some(entry));
        }
    }
}

/// The segment a reader is in: a window onto its bytes, read a chunk at a time.
struct Window {
    path: PathBuf,
    file: File,
    /// Bytes of the file from offset `start` on.
    bytes: Vec<u8>,
    start: u64,
    /// Where the next record begins in `bytes`.
    pos: usize,
    /// A closed segment: the pages the reader is past are dropped from the page cache.
    closed: bool,
    /// How far the pages have been dropped.
    dropped_to: u64,
}

impl Window {
    fn open(path: PathBuf, mut buffer: Vec<u8>, closed: bool) -> Result<Window, JournalError> {
        let file = File::open(&path).map_err(|source| JournalError::Io { path: path.clone(), source })?;
        buffer.clear();
        Ok(Window { path, file, bytes: buffer, start: 0, pos: 0, closed, dropped_to: 0 })
    }

    /// The bytes read but not yet taken as records.
    fn rest(&self) -> &[u8] {
        &self.bytes[self.pos..]
    }

    /// The file offset of the next record.
    fn offset(&self) -> u64 {
        self.start + self.pos as u64
    }

    /// Moves what is left to the front and reads the next chunk after it; false at the end of the
    /// file.
    fn read_more(&mut self) -> Result<bool, JournalError> {
        if self.pos > 0 {
            self.bytes.drain(..self.pos);
            self.start += self.pos as u64;
            self.pos = 0;
            self.drop_behind(segment::cache_page_floor(self.start));
        }
        let kept = self.bytes.len();
        self.bytes.resize(kept + READ_CHUNK_BYTES, 0);
        let mut filled = kept;
        while filled < self.bytes.len() {
            match self.file.read_at(&mut self.bytes[filled..], self.start + filled as u64) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => return Err(JournalError::Io { path: self.path.clone(), source }),
            }
        }
        self.bytes.truncate(filled);
        Ok(filled > kept)
    }

    fn drop_behind(&mut self, to: u64) {
        if self.closed && to > self.dropped_to {
            segment::drop_from_cache(&self.file, self.dropped_to, to - self.dropped_to);
            self.dropped_to = to;
        }
    }

    /// Done with the segment: drops the rest of a closed one from the cache, returns the buffer.
    fn finish(mut self) -> Vec<u8> {
        if self.closed {
            segment::drop_from_cache(&self.file, 0, 0);
        }
        std::mem::take(&mut self.bytes)
    }

    fn corrupt(&self, reason: String) -> JournalError {
        self.corrupt_at(self.offset(), reason)
    }

    fn corrupt_at(&self, offset: u64, reason: String) -> JournalError {
        JournalError::Corrupt { path: self.path.clone(), offset, reason }
    }
}

impl Iterator for JournalReader {
    type Item = Result<JournalEntry, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Some(err) = self.pending_error.take() {
            self.done = true;
            return Some(Err(err));
        }
        match self.step() {
            Ok(Some(entry)) => Some(Ok(entry)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(err) => {
                self.done = true;
                Some(Err(err))
            }
        }
    }
}

/// Segments in the archive directory that precede the live ones (read-only listing).
pub(crate) fn archived_segments(
    archive: Option<&Path>,
    live: &[SegmentInfo],
) -> Result<Vec<SegmentInfo>, JournalError> {
    let Some(archive) = archive else {
        return Ok(Vec::new());
    };
    let live_first = live.first().map_or(Lsn::MAX, |s| s.first_lsn);
    let files: Vec<_> = segment::list(archive)?.into_iter().filter(|(lsn, _)| *lsn < live_first).collect();
    let mut out = Vec::with_capacity(files.len());
    for (i, (first_lsn, path)) in files.iter().enumerate() {
        // A closed segment ends where the next one (archived or live) begins.
        let next_first = files.get(i + 1).map_or(live_first, |(lsn, _)| *lsn);
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        out.push(SegmentInfo {
            path: path.clone(),
            first_lsn: *first_lsn,
            last_lsn: (next_first > *first_lsn && next_first != Lsn::MAX).then(|| next_first - 1),
            bytes,
            epoch: 0,
            archived: true,
        });
    }
    Ok(out)
}

/// What an offline look at one segment file found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SegmentReport {
    pub path: PathBuf,
    pub kind: Option<format::JournalKind>,
    pub node: Option<String>,
    pub epoch: Option<Epoch>,
    pub first_lsn: Option<Lsn>,
    pub last_lsn: Option<Lsn>,
    pub records: u64,
    pub bytes: u64,
    /// Bytes at the end that a read-write open would cut as a torn tail.
    pub torn_tail_bytes: u64,
    /// Damage that a read-write open would refuse, with its offset.
    pub error: Option<String>,
}

/// Looks at every segment of a journal directory without changing anything. Damage is reported
/// per segment (never stops the listing); only an unreadable directory is an error.
pub fn inspect(dir: &Path) -> Result<Vec<SegmentReport>, JournalError> {
    let files = segment::list(dir)?;
    let mut reports = Vec::with_capacity(files.len());
    let mut expected_next: Option<(Lsn, Epoch)> = None;
    for (index, (_, path)) in files.iter().enumerate() {
        let is_last = index + 1 == files.len();
        let mut report = SegmentReport {
            path: path.clone(),
            kind: None,
            node: None,
            epoch: None,
            first_lsn: None,
            last_lsn: None,
            records: 0,
            bytes: 0,
            torn_tail_bytes: 0,
            error: None,
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) => {
                report.error = Some(format!("cannot read: {err}"));
                reports.push(report);
                continue;
            }
        };
        report.bytes = bytes.len() as u64;
        match segment::scan(path, &bytes, is_last, |_| Ok(())) {
            Ok(scanned) => {
                report.kind = Some(scanned.header.kind);
                report.node = Some(scanned.header.node.clone());
                report.epoch = Some(scanned.header.epoch);
                report.first_lsn = Some(scanned.header.first_lsn);
                report.last_lsn = scanned.last_lsn;
                report.records = scanned.record_count;
                if let Tail::Torn { bytes, .. } = scanned.tail {
                    report.torn_tail_bytes = bytes;
                }
                if let Some((expected, epoch)) = expected_next {
                    let found = scanned.header.first_lsn;
                    if found != expected && !(found > expected && scanned.header.epoch > epoch) {
                        report.error = Some(format!(
                            "gap: segment starts at LSN {}, the previous one ends before {expected}",
                            scanned.header.first_lsn
                        ));
                    }
                }
                expected_next =
                    Some((scanned.last_lsn.map_or(scanned.header.first_lsn, |l| l + 1), scanned.header.epoch));
            }
            Err(err) => {
                report.error = Some(err.to_string());
                expected_next = None;
            }
        }
        reports.push(report);
    }
    Ok(reports)
}

/// A reader over a journal directory opened offline (no identity check, nothing cut or
/// changed): records from `from` to the last whole record.
pub fn read_dir_from(dir: &Path, from: Lsn) -> Result<JournalReader, JournalError> {
    let reports = inspect(dir)?;
    let mut segments = Vec::new();
    let mut last = 0;
    for report in reports {
        if let Some(error) = report.error {
            return Err(JournalError::Inspect { path: report.path, reason: error });
        }
        let first_lsn = report.first_lsn.unwrap_or(0);
        if let Some(l) = report.last_lsn {
            last = l;
        }
        segments.push(SegmentInfo {
            path: report.path,
            first_lsn,
            last_lsn: report.last_lsn,
            bytes: report.bytes - report.torn_tail_bytes,
            epoch: report.epoch.unwrap_or(0),
            archived: false,
        });
    }
    Ok(JournalReader::new(segments, from, last))
}

/// The header of a segment file, for tools that want it without a full scan.
pub fn read_header(path: &Path) -> Result<SegmentHeader, JournalError> {
    let mut buf = [0u8; SEGMENT_HEADER_LEN];
    let mut file = std::fs::File::open(path).map_err(|source| JournalError::Io { path: path.to_path_buf(), source })?;
    std::io::Read::read_exact(&mut file, &mut buf)
        .map_err(|source| JournalError::Io { path: path.to_path_buf(), source })?;
    SegmentHeader::decode(&buf).map_err(|err| JournalError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        reason: format!("{err:?}"),
    })
}
