//! The active segment's preallocation: the filler thread that zero-fills it ahead of its
//! records, and drops from the page cache what the records left behind.
//!
//! ## Preallocation
//! The active segment is zero-filled ahead of its records, [`PREALLOCATE_BYTES`] at a time, and
//! records are written into that space at their offset. An `fdatasync` after an append that
//! grows the file must also write the inode (the new size) — a second write on the disk for
//! every group commit. Into preallocated space only the data goes (figures: docs/benchmarks.md, "Figures moved out of module headers"). A segment is cut back to its
//! records when it is closed (a roll, a clean shutdown), and at open a zero tail left by a crash
//! is cut too, so only the active segment of a running journal ever ends in zeros (`segment`,
//! "Preallocated space").
//!
//! The zeros are written by a *filler* thread, one chunk ahead, beside the commits: a megabyte of
//! zeros and its `fdatasync` take milliseconds, which, done by the flusher under the state lock,
//! stalled every committer once per megabyte. The filler writes through a file it opened itself (in 64 KB
//! pieces, so a record's write never waits long for the kernel's inode lock) and fdatasyncs
//! that file, so the zeros and the new size are normally on disk before records reach them.
//! It only writes at or past `State::allocated`, which records never pass while a fill is in
//! flight: a write that would waits for its zeros to be written (`settle_fill`), and so does
//! anything that cuts or replaces the active file (a roll, a truncation, a clean close). A
//! writer that outruns the filler fills the chunk itself, as all writers once did.
//!
//! ## Dropping the cache behind
//! After each fill the filler also drops from the page cache the active segment's pages more
//! than [`CACHE_BEHIND_BYTES`] behind the records, and the whole of the segment it dropped in
//! before, once that is closed (`posix_fadvise(DONTNEED)`; a segment rolled past between two
//! fills is left to the kernel's reclaim). Nothing reads those pages in the normal course (the
//! primary ships from memory; a backup's hello reads a few recent records), and a page the cache
//! takes anew is dear on the VMs this runs on (the first touch of a guest page the host has not
//! backed yet; figures: docs/benchmarks.md, "Figures moved out of module headers"). The pages dropped are
//! clean: every record below the end taken at the fill's start was written before the fill's
//! `fdatasync`, which writes back the whole file. Catch-up, rejoin and `verify` read older
//! records from the disk.

use super::*;

impl Inner {
    /// The next chunk the filler should zero-fill, if the records have come within a chunk of
    /// the zeros' end: from `allocated` to the chunk boundary after it (at most the segment's
    /// size). Only when every record, buffered or written, lies below `allocated`.
    pub(super) fn next_fill(&self, state: &State) -> Option<(u64, u64)> {
        let seg = state.segments.last().filter(|_| state.active.is_some())?;
        let end = seg.bytes + state.buffer.len() as u64;
        let from = state.allocated;
        let due = state.filling.is_none() && state.failed.is_none() && !state.shutdown;
        if !due || end > from || from - end >= PREALLOCATE_BYTES {
            return None;
        }
        let to = ((from / PREALLOCATE_BYTES + 1) * PREALLOCATE_BYTES).min(self.options.segment_bytes);
        (to > from).then_some((from, to))
    }

    /// Wakes the filler if there is a chunk to fill and it has not been asked yet (a wake-up is
    /// a syscall; this runs at every write). Caller holds the lock.
    pub(super) fn ask_fill(&self, state: &mut State) {
        if !state.fill_asked && self.next_fill(state).is_some() {
            state.fill_asked = true;
            self.fill_wanted.notify_one();
        }
    }

    /// Waits for the filler's fill in flight, if any, and counts its chunk as allocated. Called,
    /// with the lock held, before anything writes past `allocated` or cuts or replaces the active
    /// file. The filler reports a finished fill without the state lock, so this cannot deadlock.
    pub(super) fn settle_fill(&self, state: &mut State) {
        let Some(Fill { number, end }) = state.filling.take() else {
            return;
        };
        let mut done = self.fills_done.lock().unwrap_or_else(|p| p.into_inner());
        while *done < number {
            done = self.fill_done.wait(done).unwrap_or_else(|p| p.into_inner());
        }
        state.allocated = state.allocated.max(end);
    }

    /// The filler thread: zero-fills the active segment one chunk ahead of its records (see
    /// "Preallocation"), outside the state lock, while records are written below it.
    pub(super) fn fill_loop(&self) {
        // The segment whose cache the filler drops behind its records, and how far it has.
        let mut behind: Option<(PathBuf, u64)> = None;
        let mut state = self.lock();
        loop {
            if state.shutdown {
                return;
            }
            // Only when asked (by a write or a roll): a journal opened only to be read is left
            // as it is.
            let job = if std::mem::take(&mut state.fill_asked) { self.next_fill(&state) } else { None };
            let (Some((from, to)), Some(seg)) = (job, state.segments.last()) else {
                state = self.fill_wanted.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            let (path, records_end) = (seg.path.clone(), seg.bytes);
            state.fills_started += 1;
            let number = state.fills_started;
            state.filling = Some(Fill { number, end: to });
            drop(state);
            let delay = self.simulated_fill_delay_ns.load(Ordering::Relaxed);
            if delay > 0 {
                std::thread::sleep(Duration::from_nanos(delay));
            }
            // Its own open file, not a clone of the journal's: Linux reports a writeback error
            // to the next fsync of every file that was open when it happened, so an error the
            // fdatasync below sees (for the records' pages too) still reaches the flusher's
            // fsync, which fails the journal. A clone shares one report, which this could take.
            let written =
                OpenOptions::new().write(true).open(&path).and_then(|file| write_zeros(&file, from, to).map(|()| file));
            // Done as far as writers care: records may go in past the zeros now. The fdatasync
            // only brings the zeros and the new size to the disk before a commit's fsync would;
            // after a roll or a truncation it syncs a file nobody writes any more, harmlessly.
            *self.fills_done.lock().unwrap_or_else(|p| p.into_inner()) = number;
            self.fill_done.notify_all();
            match written.and_then(|file| self.sync_data(&file).map(|()| file)) {
                Ok(file) => drop_cache_behind(&mut behind, &path, &file, records_end),
                // Only a speed-up: the records still go in (they grow the file instead), and the
                // flusher's own fsync reports any error that matters for them.
                Err(err) => tracing::warn!(path = %path.display(), %err, "could not preallocate journal space"),
            }
            state = self.lock();
            if state.filling.is_some_and(|fill| fill.number == number) {
                state.filling = None;
                state.allocated = state.allocated.max(to);
            }
            // The records may have come within a chunk of the new end meanwhile.
            state.fill_asked = true;
        }
    }

    /// At a clean close: cuts the active segment's zeros, so that the file ends with its last
    /// record (as every closed segment does). Failing to is harmless — the next open cuts them —
    /// so it is only logged.
    pub(super) fn cut_preallocation(&self, state: &mut State) {
        self.settle_fill(state);
        let (Some(file), Some(seg)) = (&state.active, state.segments.last()) else {
            return;
        };
        if state.allocated > seg.bytes {
            match file.set_len(seg.bytes).and_then(|()| file.sync_all()) {
                Ok(()) => state.allocated = seg.bytes,
                Err(err) => {
                    tracing::warn!(path = %seg.path.display(), %err, "could not cut the preallocated end of the segment")
                }
            }
        }
    }
}

/// Drops from the page cache what the records of the segment at `path` (written up to
/// `records_end`) left more than [`CACHE_BEHIND_BYTES`] behind them, and all of the segment
/// dropped from before, if the active segment has changed since (see "Dropping the cache
/// behind"). Advice only: it loses nothing (dirty pages are not dropped) and a failure is
/// ignored. `behind` is the filler's note of the segment and offset it has dropped up to.
fn drop_cache_behind(behind: &mut Option<(PathBuf, u64)>, path: &Path, file: &File, records_end: u64) {
    // On a page boundary: the kernel keeps a page only partly in the range, so the next range
    // must start where this one ends.
    let to = segment::cache_page_floor(records_end.saturating_sub(CACHE_BEHIND_BYTES));
    let from = match behind.take() {
        Some((dropped, done)) if dropped == path => done.min(to),
        Some((closed, _)) => {
            // Closed by a roll (or cut by a truncation, or archived: then there is nothing to open).
            if let Ok(closed) = File::open(&closed) {
                segment::drop_from_cache(&closed, 0, 0);
            }
            0
        }
        None => 0,
    };
    if to > from {
        segment::drop_from_cache(file, from, to - from);
    }
    *behind = Some((path.to_path_buf(), to));
}

/// Writes zeros into `file` from `from` to `to`, in pieces of [`FILL_PIECE_BYTES`]: the kernel
/// holds the file's inode lock for each `pwrite`, and a record's write waits for it.
pub(super) fn write_zeros(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    static ZEROS: [u8; FILL_PIECE_BYTES] = [0; FILL_PIECE_BYTES];
    let mut at = from;
    while at < to {
        let len = (to - at).min(FILL_PIECE_BYTES as u64) as usize;
        file.write_all_at(&ZEROS[..len], at)?;
        at += len as u64;
    }
    Ok(())
}
