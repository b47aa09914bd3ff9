//! Several journal directories read as one history.
//!
//! ## Job
//! No single journal directory holds a pair's history: a node's local journal holds the epochs
//! it led, its remote journal its peer's (so each skips the other's LSNs), a backup holds a
//! journal of its own, and trimming may have moved old segments to an archive directory.
//! [`Merged`] reads any number of such directories ("sources") forward at once and yields each
//! LSN's record once, from whichever source holds it — for `hotpair journal verify` of a node
//! directory, `hotpair journal find-time` and `hotpair restore`.
//!
//! ## Which record an LSN gets
//! One writer per epoch, and epochs only grow along the LSNs (DESIGN.md invariant 2), so:
//! - among the sources holding an LSN, the record of the **highest epoch** is the history's;
//! - a record of an epoch *lower* than the one before it is an orphaned tail that a newer epoch
//!   replaced (an old primary's unshipped records, not yet rejoined): it is counted in
//!   [`Merged::superseded`] and skipped;
//! - two sources holding *different* bytes for one LSN in one epoch contradict each other: an
//!   error naming both.
//!
//! ## Invariants
//! - No gap: once the first record is out, every later LSN is yielded or the read ends with an
//!   error naming the LSNs that no source holds (superseded records do not fill a gap).
//! - Offline and read-only, like the rest of the journal tools: a torn tail is read up to its
//!   last whole record and left as it is; damage inside a source is that source's error, with
//!   its file and offset.
//! - Records below the first one any source holds are simply not there: the caller decides
//!   whether that is a problem (a node after a full copy, or a trimmed journal, starts later).

use std::path::PathBuf;

use super::reader::{inspect, read_dir_from, JournalEntry, JournalReader};
use super::record::{Epoch, Lsn, RecordBody};
use super::JournalError;

/// A journal directory taken as a source of the history, named for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub label: String,
    pub dir: PathBuf,
}

impl Source {
    pub fn new(label: impl Into<String>, dir: impl Into<PathBuf>) -> Source {
        Source { label: label.into(), dir: dir.into() }
    }
}

/// One record of the merged history and the source it was taken from (index into the sources).
#[derive(Debug, Clone)]
pub struct MergedEntry {
    pub entry: JournalEntry,
    pub source: usize,
}

/// Where an epoch begins in the merged history, as far as the records show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EpochSeen {
    pub epoch: Epoch,
    pub first_lsn: Lsn,
    /// The epoch's primary, when its `epoch-start` record was among the records read.
    pub primary: Option<String>,
}

/// The sources' records in LSN order, one per LSN (see the module doc).
pub struct Merged {
    labels: Vec<String>,
    readers: Vec<std::iter::Peekable<JournalReader>>,
    until: Lsn,
    /// The LSN the next record must have, once the first was yielded.
    expected: Option<Lsn>,
    last_epoch: Epoch,
    done: bool,
    /// Records skipped because a newer epoch replaced them.
    pub superseded: u64,
    /// Records yielded, per source.
    pub taken: Vec<u64>,
    /// The epochs met so far, in order.
    pub epochs: Vec<EpochSeen>,
}

impl Merged {
    /// Reads `sources` from `from` to `until` (inclusive). A source with damage anywhere is
    /// refused here, naming the file; a source with no records is simply empty.
    pub fn open(sources: &[Source], from: Lsn, until: Lsn) -> Result<Merged, JournalError> {
        let mut readers = Vec::with_capacity(sources.len());
        for source in sources {
            let reports = inspect(&source.dir)?;
            if let Some(bad) = reports.iter().find(|r| r.error.is_some()) {
                let reason = bad.error.clone().unwrap_or_default();
                return Err(JournalError::Inspect { path: bad.path.clone(), reason });
            }
            let first = reports.iter().find(|r| r.last_lsn.is_some()).and_then(|r| r.first_lsn);
            let reader = match first {
                Some(first) => read_dir_from(&source.dir, from.max(first))?,
                // Nothing to read: a reader over no segments ends at once.
                None => read_dir_from(&source.dir, Lsn::MAX)?,
            };
            readers.push(reader.peekable());
        }
        Ok(Merged {
            labels: sources.iter().map(|s| s.label.clone()).collect(),
            readers,
            until,
            expected: None,
            last_epoch: 0,
            done: false,
            superseded: 0,
            taken: vec![0; sources.len()],
            epochs: Vec::new(),
        })
    }

    /// The label of source `index`.
    pub fn label(&self, index: usize) -> &str {
        self.labels.get(index).map_or("?", String::as_str)
    }

    /// The LSN after the last record yielded (`None` before the first).
    pub fn next_lsn(&self) -> Option<Lsn> {
        self.expected
    }

    fn step(&mut self) -> Result<Option<MergedEntry>, JournalError> {
        loop {
            // A source's error (damage met while reading) ends the merged read.
            for reader in &mut self.readers {
                if matches!(reader.peek(), Some(Err(_))) {
                    if let Some(Err(err)) = reader.next() {
                        return Err(err);
                    }
                }
            }
            let lowest = self
                .readers
                .iter_mut()
                .filter_map(|r| r.peek().and_then(|e| e.as_ref().ok()))
                .map(|e| e.record.lsn)
                .min();
            let Some(lsn) = lowest else { return Ok(None) };
            if lsn > self.until {
                return Ok(None);
            }
            let mut candidates: Vec<(usize, JournalEntry)> = Vec::new();
            for (index, reader) in self.readers.iter_mut().enumerate() {
                if reader.peek().is_some_and(|e| e.as_ref().is_ok_and(|e| e.record.lsn == lsn)) {
                    if let Some(Ok(entry)) = reader.next() {
                        candidates.push((index, entry));
                    }
                }
            }
            let before = candidates.len();
            candidates.retain(|(_, entry)| entry.record.epoch >= self.last_epoch);
            self.superseded += (before - candidates.len()) as u64;
            let Some(best) = candidates.iter().map(|(_, e)| e.record.epoch).max() else { continue };
            if let Some(expected) = self.expected {
                if lsn > expected {
                    return Err(JournalError::Merge {
                        reason: format!(
                            "LSN {expected}..{} are in none of the journals read ({}): the history has a gap there",
                            lsn - 1,
                            self.labels.join(", ")
                        ),
                    });
                }
            }
            let mut chosen: Option<(usize, JournalEntry)> = None;
            for (index, entry) in candidates {
                if entry.record.epoch < best {
                    self.superseded += 1;
                    continue;
                }
                match &chosen {
                    None => chosen = Some((index, entry)),
                    Some((first, kept)) if kept.frame != entry.frame => {
                        return Err(JournalError::Merge {
                            reason: format!(
                                "LSN {lsn} of epoch {best} differs between {} ({} at offset {}) and {} ({} at offset {}); one writer per epoch means they must be equal",
                                self.label(*first),
                                kept.path.display(),
                                kept.offset,
                                self.label(index),
                                entry.path.display(),
                                entry.offset
                            ),
                        });
                    }
                    Some(_) => {}
                }
            }
            let Some((source, entry)) = chosen else { continue };
            if best != self.last_epoch || self.epochs.is_empty() {
                let primary = match &entry.record.body {
                    RecordBody::EpochStart { history } => history.last().map(|h| h.primary.clone()),
                    _ => None,
                };
                self.epochs.push(EpochSeen { epoch: best, first_lsn: lsn, primary });
            }
            self.last_epoch = best;
            self.expected = Some(lsn + 1);
            self.taken[source] += 1;
            return Ok(Some(MergedEntry { entry, source }));
        }
    }
}

impl Iterator for Merged {
    type Item = Result<MergedEntry, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::digest::Digest;
    use crate::storage::journal::{HistoryEntry, Journal, JournalIdentity, JournalKind, JournalOptions, Op, Record};

    fn journal(dir: &std::path::Path, kind: JournalKind) -> Journal {
        let identity = JournalIdentity { cluster: [7; 16], node: "a".into(), kind };
        Journal::open(dir, identity, JournalOptions::default()).unwrap().0
    }

    fn txn(lsn: Lsn, epoch: Epoch, value: &str) -> Record {
        let op = Op { key: b"k".to_vec(), before: None, after: Some(value.as_bytes().to_vec()) };
        Record { lsn, epoch, timestamp_ms: lsn * 10, digest_after: Digest::EMPTY, body: RecordBody::txn(vec![op]) }
    }

    fn start(lsn: Lsn, epoch: Epoch, primary: &str) -> Record {
        let history = vec![HistoryEntry { epoch, first_lsn: lsn, primary: primary.into() }];
        Record {
            lsn,
            epoch,
            timestamp_ms: lsn * 10,
            digest_after: Digest::EMPTY,
            body: RecordBody::EpochStart { history },
        }
    }

    fn write(journal: &Journal, records: &[Record]) {
        for record in records {
            journal.append_durable(record).unwrap();
        }
    }

    fn lsns_and_epochs(merged: Merged) -> Vec<(Lsn, Epoch)> {
        merged.map(|e| e.map(|e| (e.entry.record.lsn, e.entry.record.epoch)).unwrap()).collect()
    }

    #[test]
    fn two_journals_split_by_epoch_read_as_one_history() {
        let dir = tempfile::tempdir().unwrap();
        let (local, remote) = (dir.path().join("local"), dir.path().join("remote"));
        {
            let l = journal(&local, JournalKind::Local);
            let r = journal(&remote, JournalKind::Remote);
            write(&l, &[start(1, 1, "a"), txn(2, 1, "x"), txn(3, 1, "y")]);
            write(&r, &[start(4, 2, "b"), txn(5, 2, "z")]);
            write(&l, &[start(6, 3, "a"), txn(7, 3, "w")]);
        }
        let sources = [Source::new("local", &local), Source::new("remote", &remote)];
        let mut merged = Merged::open(&sources, 0, Lsn::MAX).unwrap();
        let got: Vec<Lsn> = merged.by_ref().map(|e| e.unwrap().entry.record.lsn).collect();
        assert_eq!(got, (1..=7).collect::<Vec<_>>());
        assert_eq!(merged.taken, vec![5, 2]);
        let epochs: Vec<(Epoch, Lsn, Option<String>)> =
            merged.epochs.iter().map(|e| (e.epoch, e.first_lsn, e.primary.clone())).collect();
        assert_eq!(epochs, vec![(1, 1, Some("a".into())), (2, 4, Some("b".into())), (3, 6, Some("a".into()))]);
        // From the middle, and bounded.
        assert_eq!(lsns_and_epochs(Merged::open(&sources, 3, 5).unwrap()), vec![(3, 1), (4, 2), (5, 2)]);
    }

    #[test]
    fn an_orphaned_tail_of_an_older_epoch_is_superseded_and_a_hole_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old"), dir.path().join("new"));
        {
            // The old primary wrote 1..6 in epoch 1; the new one took over at 4 in epoch 2 and
            // wrote up to 5 only.
            write(
                &journal(&old, JournalKind::Local),
                &[start(1, 1, "a"), txn(2, 1, "x"), txn(3, 1, "y"), txn(4, 1, "o"), txn(5, 1, "o"), txn(6, 1, "o")],
            );
            let n = journal(&new, JournalKind::Local);
            write(&n, &[start(4, 2, "b"), txn(5, 2, "z")]);
        }
        let sources = [Source::new("old", &old), Source::new("new", &new)];
        let mut merged = Merged::open(&sources, 0, Lsn::MAX).unwrap();
        let got: Vec<(Lsn, Epoch)> =
            merged.by_ref().map(|e| e.map(|e| (e.entry.record.lsn, e.entry.record.epoch)).unwrap()).collect();
        assert_eq!(got, vec![(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]);
        assert_eq!(merged.superseded, 3, "4, 5 and 6 of epoch 1");

        // A newer epoch's record after LSNs nobody holds: a gap, named.
        let hole = dir.path().join("hole");
        write(&journal(&hole, JournalKind::Local), &[start(9, 3, "a")]);
        let sources = [Source::new("old", &old), Source::new("new", &new), Source::new("hole", &hole)];
        let err = Merged::open(&sources, 0, Lsn::MAX).unwrap().find_map(Result::err).expect("a gap error");
        assert!(err.to_string().contains("LSN 6..8 are in none of the journals"), "{err}");
    }

    #[test]
    fn the_same_lsn_and_epoch_with_other_bytes_is_a_contradiction() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("one"), dir.path().join("two"));
        write(&journal(&one, JournalKind::Local), &[start(1, 1, "a"), txn(2, 1, "x")]);
        write(&journal(&two, JournalKind::Remote), &[start(1, 1, "a"), txn(2, 1, "DIFFERENT")]);
        let sources = [Source::new("one", &one), Source::new("two", &two)];
        let err = Merged::open(&sources, 0, Lsn::MAX).unwrap().find_map(Result::err).expect("a contradiction");
        assert!(err.to_string().contains("LSN 2 of epoch 1 differs between one"), "{err}");
    }
}
