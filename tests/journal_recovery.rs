//! Journal recovery and operations, against real files: torn tails cut back at every byte,
//! damage in the middle refused with file and offset, the maintenance operations (read, truncate,
//! reopen, trim, archive, byte-exact frames), the refusals, durability reporting, and the offline
//! tools driven through the real `hotpair` binary.
//!
//! Small segments (`SEGMENT_BYTES`) make every journal here span several segment files.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use hotpair::storage::journal::format::{encode_record, FRAME_HEADER_LEN, MAX_RECORD_BODY, SEGMENT_HEADER_LEN};
use hotpair::storage::journal::reader::read_header;
use hotpair::storage::journal::segment::{self, file_name};
use hotpair::storage::journal::{
    Journal, JournalEntry, JournalError, JournalIdentity, JournalKind, JournalOptions, Lsn, Op, Record, RecordBody,
};
use hotpair::Digest;

/// Small enough that `RECORDS` records fill several segments (records are 60–200 bytes).
const SEGMENT_BYTES: u64 = 1024;
const RECORDS: Lsn = 40;

fn identity() -> JournalIdentity {
    JournalIdentity { cluster: [0xA5; 16], node: "alpha".into(), kind: JournalKind::Local }
}

fn options() -> JournalOptions {
    JournalOptions { segment_bytes: SEGMENT_BYTES, ..JournalOptions::default() }
}

/// A deterministic record of every kind, of varying size.
fn record(lsn: Lsn) -> Record {
    let body = match lsn % 10 {
        0 => RecordBody::Checkpoint { key_count: lsn * 3 },
        5 => RecordBody::Canary { sequence: lsn / 5 },
        _ => {
            let value = vec![b'a' + (lsn % 26) as u8; 20 + (lsn as usize * 37) % 90];
            let before = (lsn % 3 == 0).then(|| format!("old-{lsn}").into_bytes());
            let after = (lsn % 4 != 3).then_some(value);
            RecordBody::txn(vec![Op { key: format!("key-{lsn}").into_bytes(), before, after }])
        }
    };
    Record {
        lsn,
        epoch: 1,
        timestamp_ms: 1_700_000_000_000 + lsn,
        digest_after: Digest(u128::from(lsn) * 0x9E37_79B9_7F4A_7C15),
        body,
    }
}

fn open(dir: &Path) -> (Journal, hotpair::storage::journal::Recovery) {
    Journal::open(dir, identity(), options()).unwrap_or_else(|err| panic!("open {}: {err}", dir.display()))
}

/// Writes records `1..=count` durably and closes the journal.
fn write_journal(dir: &Path, count: Lsn) {
    let (journal, _) = open(dir);
    for lsn in 1..=count {
        journal.append(&record(lsn)).unwrap();
    }
    journal.sync_to(count).unwrap();
}

fn entries(journal: &Journal, from: Lsn) -> Vec<JournalEntry> {
    journal.read_from(from).unwrap().collect::<Result<Vec<_>, _>>().unwrap()
}

fn lsns(entries: &[JournalEntry]) -> Vec<Lsn> {
    entries.iter().map(|e| e.record.lsn).collect()
}

/// The segment files of `dir` in LSN order, as the journal itself lists them.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    segment::list(dir).unwrap().into_iter().map(|(_, path)| path).collect()
}

fn copy_journal(from: &Path, to: &Path) {
    for file in segment_files(from) {
        std::fs::copy(&file, to.join(file.file_name().unwrap())).unwrap();
    }
}

/// The entry (path, offset, frame) of every record, read from a healthy copy.
fn layout(dir: &Path) -> Vec<JournalEntry> {
    let (journal, _) = open(dir);
    entries(&journal, 1)
}

fn flip_bit(path: &Path, byte: u64, bit: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[byte as usize] ^= 1 << bit;
    std::fs::write(path, bytes).unwrap();
}

fn expect_corrupt(dir: &Path, path: &Path, offset: u64, what: &str) -> String {
    let err = match Journal::open(dir, identity(), options()) {
        Ok(_) => panic!("{what}: expected Corrupt at {} offset {offset}, but the journal opened", path.display()),
        Err(err) => err,
    };
    let JournalError::Corrupt { path: found_path, offset: found_offset, .. } = &err else {
        panic!("{what}: expected Corrupt at {} offset {offset}, got {err}", path.display())
    };
    assert_eq!((found_path.as_path(), *found_offset), (path, offset), "{what}: {err}");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{what}: message does not name the file: {text}");
    assert!(text.contains(&format!("offset {offset}")), "{what}: message does not name the offset: {text}");
    assert!(err.is_fatal(), "{what}: damage must stop the node");
    text
}

// ---------------------------------------------------------------------------------------------
// Torn tails

/// Cuts the last record at every byte inside it; each copy must recover to the previous record,
/// report the cut, take the next append and read back whole. `alone`: the last record is the
/// only record of its segment (so the cut leaves an empty segment behind).
fn torn_tail_at_every_byte(alone: bool) {
    let base = tempfile::tempdir().unwrap();
    {
        let (journal, _) = open(base.path());
        for lsn in 1..RECORDS {
            journal.append(&record(lsn)).unwrap();
        }
        if alone {
            journal.reopen_log(1, 1_700_000_000_000).unwrap().expect("a new segment");
        }
        journal.append_durable(&record(RECORDS)).unwrap();
    }
    let files = segment_files(base.path());
    assert!(files.len() >= 4, "want several segments, got {}", files.len());
    let all = layout(base.path());
    let last = all.last().unwrap();
    assert_eq!(last.record.lsn, RECORDS);
    assert_eq!(last.path, *files.last().unwrap());
    let last_name = last.path.file_name().unwrap().to_owned();
    assert_eq!(std::fs::metadata(&last.path).unwrap().len(), last.offset + last.frame.len() as u64);
    if alone {
        assert_eq!(last.offset, SEGMENT_HEADER_LEN as u64);
    } else {
        assert!(last.offset > SEGMENT_HEADER_LEN as u64, "the last segment should hold more than one record");
    }

    for keep in 0..last.frame.len() as u64 {
        let cut_at = last.offset + keep;
        let copy = tempfile::tempdir().unwrap();
        copy_journal(base.path(), copy.path());
        let segment = copy.path().join(&last_name);
        std::fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(cut_at).unwrap();

        let (journal, recovery) = open(copy.path());
        let what = format!("cut {keep} bytes into the last record (alone in its segment: {alone})");
        if keep == 0 {
            // Cut exactly at a record boundary: nothing is torn.
            assert!(recovery.cut.is_none(), "{what}: {:?}", recovery.cut);
        } else {
            let (path, offset, bytes, _) = recovery.cut.clone().unwrap_or_else(|| panic!("{what}: no cut reported"));
            assert_eq!((path, offset, bytes), (segment.clone(), last.offset, keep), "{what}");
        }
        assert_eq!(journal.last_lsn(), Some(RECORDS - 1), "{what}");
        assert_eq!(journal.next_lsn(), Some(RECORDS), "{what}");
        assert_eq!(std::fs::metadata(&segment).unwrap().len(), last.offset, "{what}: file not cut back");

        journal.append_durable(&record(RECORDS)).unwrap();
        let read: Vec<Record> = entries(&journal, 1).into_iter().map(|e| e.record).collect();
        assert_eq!(read, (1..=RECORDS).map(record).collect::<Vec<_>>(), "{what}");
        drop(journal);

        let (journal, recovery) = open(copy.path());
        assert!(recovery.cut.is_none(), "{what}: second open cut again: {:?}", recovery.cut);
        assert_eq!(journal.last_lsn(), Some(RECORDS), "{what}");
        assert_eq!(
            segment_files(copy.path()),
            segment_files(base.path()).iter().map(|f| copy.path().join(f.file_name().unwrap())).collect::<Vec<_>>()
        );
    }
}

#[test]
fn torn_last_record_is_cut_at_every_byte() {
    torn_tail_at_every_byte(false);
}

#[test]
fn torn_last_record_alone_in_its_segment_is_cut_at_every_byte() {
    torn_tail_at_every_byte(true);
}

#[test]
fn zero_filled_tail_is_cut_as_preallocated_space_not_as_damage() {
    let dir = tempfile::tempdir().unwrap();
    write_journal(dir.path(), RECORDS);
    let last = segment_files(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&last, bytes).unwrap();

    let (journal, recovery) = open(dir.path());
    assert_eq!(recovery.cut, None, "zeros past the records are not a torn write");
    let (path, offset, cut) = recovery.zeroed.expect("the zero tail is cut");
    assert_eq!((path, offset, cut), (last.clone(), len, 4096));
    assert_eq!(std::fs::metadata(&last).unwrap().len(), len);
    assert_eq!(journal.last_lsn(), Some(RECORDS));
    assert_eq!(lsns(&entries(&journal, 1)), (1..=RECORDS).collect::<Vec<_>>());
}

#[test]
fn last_segment_shorter_than_its_header_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    write_journal(dir.path(), RECORDS);
    // The crash came right after the file of the next segment was created.
    let half_made = dir.path().join(file_name(RECORDS + 1));
    std::fs::write(&half_made, &read_header(&segment_files(dir.path())[0]).unwrap().encode()[..50]).unwrap();
    let (journal, _) = open(dir.path());
    assert!(!half_made.exists());
    assert_eq!(journal.last_lsn(), Some(RECORDS));
    journal.append_durable(&record(RECORDS + 1)).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Damage in the middle

/// Flips every bit of one record in turn; each time the open must refuse with the record's file
/// and offset, and leave every file exactly as it was (so the bit is flipped back in place for the
/// next round instead of copying the journal again).
fn every_flipped_bit_is_refused(entry: &JournalEntry, base: &Path, what: &str) {
    let copy = tempfile::tempdir().unwrap();
    copy_journal(base, copy.path());
    let path = copy.path().join(entry.path.file_name().unwrap());
    let others: Vec<(PathBuf, Vec<u8>)> =
        segment_files(copy.path()).into_iter().map(|f| (f.clone(), std::fs::read(f).unwrap())).collect();
    let healthy = std::fs::read(&path).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for byte in 0..entry.frame.len() {
        for bit in 0..8 {
            let at = entry.offset as usize + byte;
            let mut damaged = healthy.clone();
            damaged[at] ^= 1 << bit;
            // One byte written in place: rewriting the whole file costs a block allocation each time.
            file.write_all_at(&damaged[at..=at], at as u64).unwrap();
            let what = format!("{what}: LSN {} byte {byte} bit {bit}", entry.record.lsn);
            expect_corrupt(copy.path(), &path, entry.offset, &what);
            assert_eq!(std::fs::read(&path).unwrap(), damaged, "{what}: the damaged file was changed");
            file.write_all_at(&healthy[at..=at], at as u64).unwrap();
        }
    }
    for (file, bytes) in others {
        assert_eq!(std::fs::read(&file).unwrap(), bytes, "{what}: {} was changed", file.display());
    }
}

#[test]
fn flipped_bit_in_a_middle_record_of_the_last_segment_is_refused() {
    let base = tempfile::tempdir().unwrap();
    write_journal(base.path(), RECORDS);
    let all = layout(base.path());
    let last_path = &all.last().unwrap().path;
    let in_last: Vec<&JournalEntry> = all.iter().filter(|e| &e.path == last_path).collect();
    assert!(in_last.len() >= 3, "the last segment should hold at least 3 records, has {}", in_last.len());
    // The first and the second-to-last record of the last segment: damage with one or more
    // whole records after it.
    every_flipped_bit_is_refused(in_last[0], base.path(), "last segment, first record");
    every_flipped_bit_is_refused(in_last[in_last.len() - 2], base.path(), "last segment, next-to-last record");
}

#[test]
fn flipped_bit_in_a_closed_segment_is_refused_even_in_its_last_record() {
    let base = tempfile::tempdir().unwrap();
    write_journal(base.path(), RECORDS);
    let all = layout(base.path());
    let second = &segment_files(base.path())[1];
    let in_second: Vec<&JournalEntry> = all.iter().filter(|e| &e.path == second).collect();
    assert!(in_second.len() >= 3);
    every_flipped_bit_is_refused(in_second[1], base.path(), "closed segment, middle record");
    // In a closed segment even the last record is damage, not a torn tail.
    every_flipped_bit_is_refused(in_second.last().unwrap(), base.path(), "closed segment, last record");
}

#[test]
fn flipped_bit_in_the_very_last_record_is_cut_like_a_torn_write() {
    // Documented in journals/README.md: it cannot be told from a torn write.
    let dir = tempfile::tempdir().unwrap();
    write_journal(dir.path(), RECORDS);
    let last = layout(dir.path()).pop().unwrap();
    flip_bit(&last.path, last.offset + FRAME_HEADER_LEN as u64 + 20, 3);
    let (journal, recovery) = open(dir.path());
    let (path, offset, bytes, reason) = recovery.cut.expect("cut");
    assert_eq!((path, offset, bytes), (last.path.clone(), last.offset, last.frame.len() as u64));
    assert!(reason.contains("CRC"), "{reason}");
    assert_eq!(journal.last_lsn(), Some(RECORDS - 1));
}

#[test]
fn zeros_inside_a_closed_segment_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_journal(dir.path(), RECORDS);
    let first = &segment_files(dir.path())[0];
    let len = std::fs::metadata(first).unwrap().len();
    let mut bytes = std::fs::read(first).unwrap();
    bytes.extend_from_slice(&[0u8; 4096]);
    std::fs::write(first, &bytes).unwrap();
    expect_corrupt(dir.path(), first, len, "zeros after the last record of a closed segment");
    assert_eq!(std::fs::metadata(first).unwrap().len(), len + 4096, "nothing may be cut");
}

#[test]
fn damaged_segment_headers_are_reported() {
    let base = tempfile::tempdir().unwrap();
    write_journal(base.path(), RECORDS);
    let files = segment_files(base.path());
    for (index, what) in [(1, "closed segment"), (files.len() - 1, "last segment")] {
        for byte in [0u64, 11, 20, 30, 47, 60, 125] {
            let copy = tempfile::tempdir().unwrap();
            copy_journal(base.path(), copy.path());
            let path = copy.path().join(files[index].file_name().unwrap());
            flip_bit(&path, byte, 0);
            let text = expect_corrupt(copy.path(), &path, 0, &format!("{what} header byte {byte}"));
            assert!(text.contains("magic") || text.contains("CRC") || text.contains("version"), "{text}");
        }
    }
    // Another format version is refused by name.
    let copy = tempfile::tempdir().unwrap();
    copy_journal(base.path(), copy.path());
    let path = copy.path().join(files[0].file_name().unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] = 2;
    std::fs::write(&path, bytes).unwrap();
    let text = expect_corrupt(copy.path(), &path, 0, "version 2");
    assert!(text.contains("segment format version 2; this build reads version 1"), "{text}");
}

#[test]
fn a_missing_segment_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    write_journal(dir.path(), RECORDS);
    let files = segment_files(dir.path());
    std::fs::remove_file(&files[1]).unwrap();
    match Journal::open(dir.path(), identity(), options()) {
        Err(err @ JournalError::Gap { .. }) => {
            assert!(err.to_string().contains(&files[2].display().to_string()), "{err}");
        }
        Err(err) => panic!("expected a gap, got {err}"),
        Ok(_) => panic!("expected a gap, but the journal opened"),
    }
}

// ---------------------------------------------------------------------------------------------
// Seals: an open reads only the last segment whole

/// Copies a journal with the seals its writer left beside the closed segments.
fn copy_with_seals(from: &Path, to: &Path) {
    copy_journal(from, to);
    for file in segment_files(from) {
        let seal = hotpair::storage::journal::seal::path_of(&file);
        if seal.exists() {
            std::fs::copy(&seal, to.join(seal.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn an_open_reads_only_the_last_segment_whole_when_the_closed_ones_are_sealed() {
    let dir = tempfile::tempdir().unwrap();
    write_journal(dir.path(), 400);
    let files = segment_files(dir.path());
    assert!(files.len() >= 20, "400 records should fill many {SEGMENT_BYTES}-byte segments, got {}", files.len());
    let total: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    let last_len = std::fs::metadata(files.last().unwrap()).unwrap().len();
    let (journal, recovery) = open(dir.path());
    // What was read: the header of every closed segment, and the last segment whole.
    assert_eq!(recovery.sealed, files.len() - 1, "every closed segment is taken from its seal");
    let expected = (files.len() as u64 - 1) * SEGMENT_HEADER_LEN as u64 + last_len;
    assert_eq!(recovery.bytes_read, expected, "read {} of {total} bytes", recovery.bytes_read);
    assert_eq!(recovery.records, 400);
    assert_eq!(journal.last_lsn(), Some(400));
    assert_eq!(lsns(&entries(&journal, 1)), (1..=400).collect::<Vec<_>>());
    let checked = journal.check_sealed().unwrap();
    assert_eq!(checked.segments, files.len() - 1);
    // New records roll more segments: those are sealed as they close, and the next open trusts them too.
    for lsn in 401..=600 {
        journal.append(&record(lsn)).unwrap();
    }
    journal.sync_to(600).unwrap();
    drop(journal);
    let files = segment_files(dir.path());
    let (journal, recovery) = open(dir.path());
    assert_eq!(recovery.sealed, files.len() - 1);
    assert_eq!(lsns(&entries(&journal, 1)), (1..=600).collect::<Vec<_>>());
    assert_eq!(journal.check_sealed().unwrap().segments, files.len() - 1);
}

#[test]
fn a_journal_written_before_seals_is_read_whole_once_and_sealed() {
    let base = tempfile::tempdir().unwrap();
    write_journal(base.path(), RECORDS);
    let copy = tempfile::tempdir().unwrap();
    copy_journal(base.path(), copy.path()); // segments only: as a journal from before seals
    let files = segment_files(copy.path());
    let total: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    let (journal, recovery) = open(copy.path());
    assert_eq!((recovery.sealed, recovery.bytes_read), (0, total));
    drop(journal);
    let (journal, recovery) = open(copy.path());
    assert_eq!(recovery.sealed, files.len() - 1, "the first open sealed the closed segments");
    assert_eq!(lsns(&entries(&journal, 1)), (1..=RECORDS).collect::<Vec<_>>());
}

/// Spoils a seal (first path) or its segment (second path).
type Spoil = fn(&Path, &Path);

#[test]
fn a_seal_that_disagrees_with_its_segment_is_not_trusted() {
    let base = tempfile::tempdir().unwrap();
    write_journal(base.path(), RECORDS);
    let files = segment_files(base.path());
    let second = files[1].file_name().unwrap().to_owned();
    // A damaged seal, a seal of another length, and a seal of another segment: each costs a
    // full read of that segment, never a wrong end.
    let damage: [(&str, Spoil); 3] = [
        ("flipped bit in the seal", |seal, _| flip_bit(seal, 20, 1)),
        ("segment longer than sealed", |_, segment| {
            let mut bytes = std::fs::read(segment).unwrap();
            bytes.extend_from_slice(&[0u8; 16]);
            std::fs::write(segment, bytes).unwrap();
        }),
        ("seal of the next segment", |seal, segment| {
            let files = segment_files(segment.parent().unwrap());
            let at = files.iter().position(|f| f == segment).unwrap();
            std::fs::copy(hotpair::storage::journal::seal::path_of(&files[at + 1]), seal).unwrap();
        }),
    ];
    for (what, spoil) in damage {
        let copy = tempfile::tempdir().unwrap();
        copy_with_seals(base.path(), copy.path());
        let segment = copy.path().join(&second);
        spoil(&hotpair::storage::journal::seal::path_of(&segment), &segment);
        match Journal::open(copy.path(), identity(), options()) {
            Ok((journal, recovery)) => {
                assert_ne!(what, "segment longer than sealed", "{what}: the full read must find the zeros");
                assert_eq!(recovery.sealed, files.len() - 2, "{what}");
                assert_eq!(lsns(&entries(&journal, 1)), (1..=RECORDS).collect::<Vec<_>>(), "{what}");
            }
            // Read whole, the spoiled segment shows what it is: zeros after its last record, or
            // (the other seal) nothing wrong at all.
            Err(err) => assert!(
                what == "segment longer than sealed" && matches!(err, JournalError::Corrupt { .. }),
                "{what}: {err}"
            ),
        }
    }
}

#[test]
fn a_flipped_bit_in_a_sealed_segment_is_found_by_the_check_and_by_reading_it() {
    let base = tempfile::tempdir().unwrap();
    write_journal(base.path(), RECORDS);
    let all = layout(base.path());
    let second = &segment_files(base.path())[1];
    let victim = all.iter().filter(|e| &e.path == second).nth(1).unwrap().clone();
    let copy = tempfile::tempdir().unwrap();
    copy_with_seals(base.path(), copy.path());
    let path = copy.path().join(second.file_name().unwrap());
    flip_bit(&path, victim.offset + FRAME_HEADER_LEN as u64 + 3, 2);
    // The open does not read it (this is what a seal trades) ...
    let (journal, recovery) = open(copy.path());
    assert_eq!(recovery.sealed, segment_files(copy.path()).len() - 1);
    // ... the check finds it, naming the file and the record ...
    match journal.check_sealed() {
        Err(JournalError::Corrupt { path: found, offset, .. }) => {
            assert_eq!((found, offset), (path.clone(), victim.offset))
        }
        other => panic!("expected Corrupt in {}, got {other:?}", path.display()),
    }
    // ... and so does any reader that reaches it.
    let err = journal.read_from(1).unwrap().find_map(Result::err).expect("the reader meets the damage");
    let JournalError::Corrupt { path: found, offset, .. } = err else { panic!("expected Corrupt, got {err}") };
    assert_eq!((found, offset), (path, victim.offset));
}

// ---------------------------------------------------------------------------------------------
// Operations

#[test]
fn read_from_crosses_segments_and_starts_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    write_journal(dir.path(), RECORDS);
    let (journal, recovery) = open(dir.path());
    assert_eq!(recovery.records, RECORDS);
    let files = segment_files(dir.path());
    assert!(files.len() >= 4);
    let all = entries(&journal, 1);
    assert_eq!(all.iter().map(|e| e.record.clone()).collect::<Vec<_>>(), (1..=RECORDS).map(record).collect::<Vec<_>>());
    // Every segment file is visited, and each entry's frame is the encoding of its record.
    let mut seen: Vec<PathBuf> = all.iter().map(|e| e.path.clone()).collect();
    seen.dedup();
    assert_eq!(seen, files);
    for entry in &all {
        let mut frame = Vec::new();
        encode_record(&entry.record, &mut frame);
        assert_eq!(entry.frame, frame);
        let on_disk = std::fs::read(&entry.path).unwrap();
        assert_eq!(&on_disk[entry.offset as usize..entry.offset as usize + frame.len()], &frame[..]);
    }
    for from in [0, 1, 2, 17, RECORDS - 1, RECORDS] {
        let expected: Vec<Lsn> = (from.max(1)..=RECORDS).collect();
        assert_eq!(lsns(&entries(&journal, from)), expected, "read_from({from})");
    }
    // The first LSN of every segment, and the one just before it.
    for file in &files[1..] {
        let first = read_header(file).unwrap().first_lsn;
        assert_eq!(lsns(&entries(&journal, first))[0], first);
        assert_eq!(lsns(&entries(&journal, first - 1))[0], first - 1);
    }
    assert!(entries(&journal, RECORDS + 1).is_empty());
    // A reader is bounded by what was appended when it was made.
    let reader = journal.read_from(RECORDS).unwrap();
    journal.append(&record(RECORDS + 1)).unwrap();
    assert_eq!(reader.map(|e| e.unwrap().record.lsn).collect::<Vec<_>>(), vec![RECORDS]);
    // Records not yet durable are readable (the buffer is written out first).
    assert_eq!(lsns(&entries(&journal, RECORDS)), vec![RECORDS, RECORDS + 1]);
    assert_eq!(
        journal.read_reverse_after(RECORDS - 2).unwrap(),
        vec![record(RECORDS + 1), record(RECORDS), record(RECORDS - 1)]
    );
}

#[test]
fn truncate_after_crosses_segment_boundaries() {
    let base = tempfile::tempdir().unwrap();
    write_journal(base.path(), RECORDS);
    let files = segment_files(base.path());
    let second_first = read_header(&files[1]).unwrap().first_lsn;
    let third_first = read_header(&files[2]).unwrap().first_lsn;
    // Inside the first segment; exactly at the end of the second; just one record off the end.
    for (keep, segments_left) in [(3, 1), (third_first - 1, 2), (RECORDS - 1, files.len())] {
        let copy = tempfile::tempdir().unwrap();
        copy_journal(base.path(), copy.path());
        let (journal, _) = open(copy.path());
        journal.truncate_after(keep).unwrap();
        let what = format!("truncate_after({keep})");
        assert_eq!(journal.last_lsn(), Some(keep), "{what}");
        assert_eq!(journal.next_lsn(), Some(keep + 1), "{what}");
        assert_eq!(journal.durable_lsn(), keep, "{what}");
        assert_eq!(segment_files(copy.path()).len(), segments_left, "{what}");
        assert_eq!(lsns(&entries(&journal, 1)), (1..=keep).collect::<Vec<_>>(), "{what}");
        assert!(
            matches!(journal.append(&record(keep + 2)), Err(JournalError::OutOfSequence { expected, got }) if expected == keep + 1 && got == keep + 2),
            "{what}"
        );
        // Appends continue at the next LSN; new (different) records replace the cut ones.
        let replaced = |lsn: Lsn| Record { lsn, epoch: 2, ..record(lsn + 1000) };
        for lsn in keep + 1..=keep + 12 {
            journal.append(&replaced(lsn)).unwrap();
        }
        journal.sync_to(keep + 12).unwrap();
        let expected: Vec<Record> = (1..=keep).map(record).chain((keep + 1..=keep + 12).map(replaced)).collect();
        let read = |j: &Journal| entries(j, 1).into_iter().map(|e| e.record).collect::<Vec<_>>();
        assert_eq!(read(&journal), expected, "{what}");
        drop(journal);
        let (journal, recovery) = open(copy.path());
        assert!(recovery.cut.is_none(), "{what}");
        assert_eq!(journal.last_lsn(), Some(keep + 12), "{what}");
        assert_eq!(read(&journal), expected, "{what}: after reopen");
    }
    // Truncating at or past the end changes nothing.
    let (journal, _) = open(base.path());
    journal.truncate_after(RECORDS).unwrap();
    journal.truncate_after(RECORDS + 5).unwrap();
    assert_eq!(journal.last_lsn(), Some(RECORDS));
    assert_eq!(segment_files(base.path()), files);
    assert!(second_first > 1);
}

#[test]
fn reopen_log_starts_a_segment_named_by_the_next_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), identity(), JournalOptions::default()).unwrap();
    assert_eq!(journal.reopen_log(1, 5).unwrap(), None, "an empty journal has nothing to close");
    for lsn in 1..=5 {
        journal.append(&record(lsn)).unwrap();
    }
    // Records still in the buffer go into the segment being closed.
    let path = journal.reopen_log(1, 1_234).unwrap().expect("a new segment");
    assert_eq!(path, dir.path().join(file_name(6)));
    assert_eq!(journal.durable_lsn(), 5, "closing a segment makes it durable");
    let header = read_header(&path).unwrap();
    assert_eq!((header.first_lsn, header.epoch, header.created_ms), (6, 1, 1_234));
    // No record: the header, then (once the filler has been) preallocated zeros.
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes[SEGMENT_HEADER_LEN..].iter().all(|&b| b == 0), "the new segment holds no record");
    assert_eq!(journal.reopen_log(1, 9_999).unwrap(), None, "a second reopen with no append is a no-op");
    assert_eq!(segment_files(dir.path()).len(), 2);
    assert_eq!(journal.next_lsn(), Some(6));
    drop(journal);

    // The empty segment survives a restart and pins the next LSN.
    let (journal, _) = Journal::open(dir.path(), identity(), JournalOptions::default()).unwrap();
    assert_eq!((journal.last_lsn(), journal.next_lsn()), (Some(5), Some(6)));
    assert_eq!(journal.reopen_log(1, 9_999).unwrap(), None);
    assert!(matches!(journal.append(&record(7)), Err(JournalError::OutOfSequence { expected: 6, got: 7 })));
    journal.append_durable(&record(6)).unwrap();
    let all = entries(&journal, 1);
    assert_eq!(lsns(&all), (1..=6).collect::<Vec<_>>());
    assert_eq!(all[5].path, path);
    assert_eq!(all[4].path, dir.path().join(file_name(1)));
}

#[test]
fn trim_below_without_an_archive_makes_the_range_gone() {
    let dir = tempfile::tempdir().unwrap();
    write_journal(dir.path(), RECORDS);
    let files = segment_files(dir.path());
    let (journal, _) = open(dir.path());
    let third_first = read_header(&files[2]).unwrap().first_lsn;
    // Below the start of the third segment: the first two go; the third holds `keep` itself.
    let trimmed = journal.trim_below(third_first).unwrap();
    assert_eq!(trimmed, files[..2].to_vec());
    assert!(!files[0].exists() && !files[1].exists());
    assert_eq!(journal.first_lsn().unwrap(), Some(third_first));
    for from in [1, third_first - 1] {
        match journal.read_from(from).unwrap().next() {
            Some(Err(JournalError::RangeGone { from: f, first_available })) => {
                assert_eq!((f, first_available), (from, third_first));
            }
            other => panic!(
                "read_from({from}) after trim: expected RangeGone, got {:?}",
                other.map(|r| r.map(|e| e.record.lsn))
            ),
        }
    }
    assert_eq!(lsns(&entries(&journal, third_first)), (third_first..=RECORDS).collect::<Vec<_>>());
    // The active segment is never trimmed, whatever the LSN.
    journal.trim_below(Lsn::MAX).unwrap();
    assert_eq!(segment_files(dir.path()), files[files.len() - 1..].to_vec());
    let last_first = read_header(&files[files.len() - 1]).unwrap().first_lsn;
    drop(journal);
    let (journal, _) = open(dir.path());
    assert_eq!(journal.first_lsn().unwrap(), Some(last_first));
    assert_eq!(journal.last_lsn(), Some(RECORDS));
    assert!(matches!(journal.read_from(1).unwrap().next(), Some(Err(JournalError::RangeGone { .. }))));
    journal.append_durable(&record(RECORDS + 1)).unwrap();
}

#[test]
fn trim_below_everything_but_an_empty_active_segment_still_says_range_gone() {
    let dir = tempfile::tempdir().unwrap();
    write_journal(dir.path(), RECORDS);
    let (journal, _) = open(dir.path());
    journal.reopen_log(1, 0).unwrap().expect("a new segment");
    journal.trim_below(RECORDS + 1).unwrap();
    assert_eq!(segment_files(dir.path()), vec![dir.path().join(file_name(RECORDS + 1))]);
    match journal.read_from(1).unwrap().next() {
        Some(Err(JournalError::RangeGone { from: 1, first_available })) => assert_eq!(first_available, RECORDS + 1),
        other => panic!("expected RangeGone, got {:?}", other.map(|r| r.map(|e| e.record.lsn))),
    }
    journal.append_durable(&record(RECORDS + 1)).unwrap();
    assert_eq!(lsns(&entries(&journal, RECORDS + 1)), vec![RECORDS + 1]);
}

#[test]
fn trim_below_with_an_archive_keeps_every_record_readable() {
    let dir = tempfile::tempdir().unwrap();
    let archive = tempfile::tempdir().unwrap();
    let archive_dir = archive.path().join("tape");
    let options = JournalOptions {
        segment_bytes: SEGMENT_BYTES,
        archive_dir: Some(archive_dir.clone()),
        ..JournalOptions::default()
    };
    let (journal, _) = Journal::open(dir.path(), identity(), options.clone()).unwrap();
    for lsn in 1..=RECORDS {
        journal.append(&record(lsn)).unwrap();
    }
    journal.sync_to(RECORDS).unwrap();
    let files = segment_files(dir.path());
    let keep_from = read_header(&files[3]).unwrap().first_lsn;
    let trimmed = journal.trim_below(keep_from).unwrap();
    assert_eq!(trimmed, files[..3].to_vec());
    let archived = segment_files(&archive_dir);
    assert_eq!(archived, files[..3].iter().map(|f| archive_dir.join(f.file_name().unwrap())).collect::<Vec<_>>());
    assert_eq!(segment_files(dir.path()), files[3..].to_vec());
    let all = |j: &Journal| entries(j, 1).into_iter().map(|e| e.record).collect::<Vec<_>>();
    assert_eq!(all(&journal), (1..=RECORDS).map(record).collect::<Vec<_>>());
    let segments = journal.segments().unwrap();
    assert_eq!(segments.iter().filter(|s| s.archived).count(), 3);
    assert_eq!(journal.first_lsn().unwrap(), Some(1));
    // A reader starting inside an archived segment, and one crossing from the archive into the live ones.
    assert_eq!(lsns(&entries(&journal, 4)), (4..=RECORDS).collect::<Vec<_>>());
    assert_eq!(lsns(&entries(&journal, keep_from - 1))[..2], [keep_from - 1, keep_from]);
    drop(journal);
    let (journal, _) = Journal::open(dir.path(), identity(), options).unwrap();
    assert_eq!(all(&journal), (1..=RECORDS).map(record).collect::<Vec<_>>());
}

#[test]
fn append_frame_keeps_the_bytes_identical() {
    let primary = tempfile::tempdir().unwrap();
    write_journal(primary.path(), RECORDS);
    let (source, _) = open(primary.path());
    let shipped = entries(&source, 1);

    let backup = tempfile::tempdir().unwrap();
    let remote = JournalIdentity { cluster: identity().cluster, node: "beta".into(), kind: JournalKind::Remote };
    let (copy, _) = Journal::open(backup.path(), remote.clone(), options()).unwrap();
    for entry in &shipped {
        assert_eq!(copy.append_frame(&entry.frame).unwrap(), entry.record.lsn);
    }
    copy.sync_to(RECORDS).unwrap();
    let received = entries(&copy, 1);
    assert_eq!(received.len(), shipped.len());
    for (got, sent) in received.iter().zip(&shipped) {
        assert_eq!(got.frame, sent.frame, "LSN {}", sent.record.lsn);
        assert_eq!(got.record, sent.record);
    }
    // Refusals: a cut frame, trailing bytes, a flipped bit, the wrong LSN.
    let next = {
        let mut frame = Vec::new();
        encode_record(&record(RECORDS + 1), &mut frame);
        frame
    };
    assert!(matches!(copy.append_frame(&next[..next.len() - 1]), Err(JournalError::BadFrame { .. })));
    let mut long = next.clone();
    long.push(0);
    assert!(matches!(copy.append_frame(&long), Err(JournalError::BadFrame { .. })));
    let mut flipped = next.clone();
    flipped[FRAME_HEADER_LEN + 30] ^= 0x10;
    assert!(matches!(copy.append_frame(&flipped), Err(JournalError::BadFrame { .. })));
    assert!(matches!(
        copy.append_frame(&shipped[3].frame),
        Err(JournalError::OutOfSequence { expected, got: 4 }) if expected == RECORDS + 1
    ));
    copy.append_frame(&next).unwrap();
    copy.sync_to(RECORDS + 1).unwrap();
    drop(copy);
    let (copy, recovery) = Journal::open(backup.path(), remote, options()).unwrap();
    assert!(recovery.cut.is_none());
    assert_eq!(entries(&copy, RECORDS + 1)[0].frame, next);
}

#[test]
fn out_of_sequence_and_oversized_records_are_refused_and_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path());
    assert!(matches!(journal.append(&record(0)), Err(JournalError::OutOfSequence { expected: 1, got: 0 })));
    journal.append(&record(1)).unwrap();
    assert!(matches!(journal.append(&record(3)), Err(JournalError::OutOfSequence { expected: 2, got: 3 })));
    assert!(matches!(journal.append(&record(1)), Err(JournalError::OutOfSequence { expected: 2, got: 1 })));
    // A body one byte over the limit: 41 fixed bytes, op count 4, flags 1, key 4 + 3, value 4 + v.
    let over = MAX_RECORD_BODY + 1 - (41 + 4 + 1 + 4 + 3 + 4);
    let huge = Record {
        body: RecordBody::Txn {
            ops: vec![Op { key: b"big".to_vec(), before: None, after: Some(vec![0u8; over]) }],
            commands: Vec::new(),
        },
        ..record(2)
    };
    assert_eq!(hotpair::storage::journal::format::encoded_len(&huge), FRAME_HEADER_LEN + MAX_RECORD_BODY + 1);
    match journal.append(&huge) {
        Err(err @ JournalError::RecordTooLarge { size, max }) => {
            assert_eq!((size, max), (FRAME_HEADER_LEN + MAX_RECORD_BODY + 1, MAX_RECORD_BODY));
            assert!(!err.is_fatal());
            assert!(err.to_string().contains(&MAX_RECORD_BODY.to_string()), "{err}");
        }
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    // Nothing was written, and the journal still takes the right LSN after the refusals.
    journal.append(&record(2)).unwrap();
    journal.sync_to(2).unwrap();
    assert_eq!(lsns(&entries(&journal, 1)), vec![1, 2]);
    drop(journal);
    let (journal, _) = open(dir.path());
    assert_eq!(journal.last_lsn(), Some(2));
}

#[test]
fn an_empty_journal_may_start_at_any_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path());
    assert_eq!((journal.last_lsn(), journal.next_lsn(), journal.durable_lsn()), (None, None, 0));
    journal.append_durable(&record(500)).unwrap();
    assert_eq!(segment_files(dir.path()), vec![dir.path().join(file_name(500))]);
    assert!(matches!(
        journal.read_from(1).unwrap().next(),
        Some(Err(JournalError::RangeGone { from: 1, first_available: 500 }))
    ));
}

#[test]
fn a_segment_of_another_cluster_node_or_kind_is_foreign() {
    let dir = tempfile::tempdir().unwrap();
    write_journal(dir.path(), RECORDS);
    let others = [
        JournalIdentity { cluster: [0x5A; 16], ..identity() },
        JournalIdentity { node: "beta".into(), ..identity() },
        JournalIdentity { kind: JournalKind::Remote, ..identity() },
    ];
    let first = segment_files(dir.path())[0].clone();
    for other in others {
        match Journal::open(dir.path(), other.clone(), options()) {
            Err(err @ JournalError::Foreign { .. }) => {
                assert!(err.is_fatal());
                let text = err.to_string();
                assert!(text.contains(&first.display().to_string()), "{text}");
                assert!(text.contains("local journal of node alpha in cluster a5a5"), "{text}");
            }
            Err(err) => panic!("{other:?}: expected Foreign, got {err}"),
            Ok(_) => panic!("{other:?}: a foreign journal opened"),
        }
    }
    // A foreign segment slipped in after the node's own is refused too, by its own name.
    let stranger = tempfile::tempdir().unwrap();
    let (journal, _) =
        Journal::open(stranger.path(), JournalIdentity { node: "gamma".into(), ..identity() }, options()).unwrap();
    journal.append_durable(&record(RECORDS + 1)).unwrap();
    drop(journal);
    let slipped = dir.path().join(file_name(RECORDS + 1));
    std::fs::copy(stranger.path().join(file_name(RECORDS + 1)), &slipped).unwrap();
    match Journal::open(dir.path(), identity(), options()) {
        Err(err @ JournalError::Foreign { .. }) => assert!(err.to_string().contains(&slipped.display().to_string())),
        Err(err) => panic!("expected Foreign, got {err}"),
        Ok(_) => panic!("a journal with a foreign segment opened"),
    }
}

#[test]
fn invalid_node_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for node in [String::new(), "x".repeat(65)] {
        let identity = JournalIdentity { node, ..identity() };
        assert!(matches!(Journal::open(dir.path(), identity, options()), Err(JournalError::InvalidNodeName(_))));
    }
}

#[test]
fn sync_to_and_subscribe_durable_report_durability() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path());
    let mut durable = journal.subscribe_durable();
    assert_eq!(*durable.borrow(), 0);
    assert!(matches!(journal.sync_to(1), Err(JournalError::NotAppended { lsn: 1, last: None })));
    journal.sync_to(0).unwrap();
    for lsn in 1..=10 {
        journal.append(&record(lsn)).unwrap();
    }
    journal.sync_to(10).unwrap();
    assert!(journal.durable_lsn() >= 10);
    assert!(*durable.borrow_and_update() >= 10);
    assert!(matches!(journal.sync_to(11), Err(JournalError::NotAppended { lsn: 11, last: Some(10) })));

    // Without anyone calling sync_to, the flusher still makes appends durable and says so.
    for lsn in 11..=RECORDS {
        journal.append(&record(lsn)).unwrap();
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(30), durable.wait_for(|&lsn| lsn >= RECORDS)).await
        })
        .expect("the durable LSN reaches the last append within 30 s")
        .unwrap();
    assert_eq!(journal.durable_lsn(), RECORDS);
    assert!(journal.stats().fsyncs >= 1);

    // Many committers share fsyncs and every one of them returns only once durable.
    let journal_for_threads = journal.clone();
    let next = std::sync::Mutex::new(RECORDS + 1);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..50 {
                    let lsn = {
                        let mut next = next.lock().unwrap();
                        let lsn = *next;
                        journal_for_threads.append(&record(lsn)).unwrap();
                        *next += 1;
                        lsn
                    };
                    journal_for_threads.sync_to(lsn).unwrap();
                    assert!(journal_for_threads.durable_lsn() >= lsn);
                }
            });
        }
    });
    let last = RECORDS + 400;
    assert_eq!(journal.durable_lsn(), last);
    drop(journal);
    let (journal, recovery) = open(dir.path());
    assert!(recovery.cut.is_none());
    assert_eq!(lsns(&entries(&journal, 1)), (1..=last).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------------
// The offline tools, through the real binary

fn hotpair(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hotpair")).args(args).env("HOTPAIR_LOG", "warn").output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn cli_verify_reports_healthy_damaged_and_torn_journals() {
    let dir = tempfile::tempdir().unwrap();
    write_journal(dir.path(), RECORDS);
    let out = hotpair(&["journal", "verify", arg(dir.path())]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("{RECORDS} records, LSN 1..{RECORDS}")), "{stdout}");
    assert!(stdout.contains("verify: ok"), "{stdout}");

    // A torn tail: reported, not damage, and the file is left as it was.
    let last = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(&[0x42; 33]);
    std::fs::write(&last, &bytes).unwrap();
    let out = hotpair(&["journal", "verify", arg(dir.path())]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("torn tail of 33 bytes"), "{stdout}");
    assert_eq!(std::fs::read(&last).unwrap(), bytes, "verify must not change the journal");
    let out = hotpair(&["journal", "ls", arg(dir.path())]);
    assert!(text(&out.stdout).contains("torn tail of 33 bytes"), "{}", text(&out.stdout));
    assert_eq!(std::fs::read(&last).unwrap(), bytes, "ls must not change the journal");

    // A flipped bit in the middle: exit 1, naming the file and the offset.
    let victim = layout_without_tail(dir.path(), 2);
    flip_bit(&victim.path, victim.offset + FRAME_HEADER_LEN as u64 + 3, 5);
    let out = hotpair(&["journal", "verify", arg(dir.path())]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains(&victim.path.display().to_string()), "{stdout}");
    assert!(stdout.contains(&format!("offset {}", victim.offset)), "{stdout}");
    assert!(stdout.contains("verify: DAMAGED"), "{stdout}");
    let out = hotpair(&["journal", "verify", "--json", arg(dir.path())]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], false);
    let problem = json["journals"][0]["problems"][0].as_str().unwrap();
    assert!(problem.contains(&format!("offset {}", victim.offset)), "{problem}");
}

/// The entry of record `lsn` (the journal may have a torn tail, so it is read offline).
fn layout_without_tail(dir: &Path, lsn: Lsn) -> JournalEntry {
    hotpair::storage::journal::read_dir_from(dir, lsn).unwrap().next().unwrap().unwrap()
}

#[test]
fn cli_dump_json_prints_one_object_per_record() {
    let dir = tempfile::tempdir().unwrap();
    write_journal(dir.path(), RECORDS);
    let out = hotpair(&["journal", "dump", "--json", arg(dir.path())]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len() as u64, RECORDS, "{stdout}");
    for (line, lsn) in lines.iter().zip(1..) {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value.is_object());
        assert_eq!(value["lsn"], lsn);
        assert_eq!(value["kind"], record(lsn).body.kind_name());
        assert_eq!(value, {
            let mut expected = hotpair::admin::journal_tools::record_json(&record(lsn));
            expected["journal"] = serde_json::json!(dir.path().display().to_string());
            expected
        });
    }
    let out = hotpair(&["journal", "dump", "--json", "--from", "38", arg(dir.path())]);
    assert_eq!(text(&out.stdout).lines().count(), 3);
    let out = hotpair(&["journal", "dump", arg(dir.path())]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout).lines().filter(|l| l.starts_with("lsn=")).count() as u64, RECORDS);
}

#[test]
fn cli_takes_a_node_data_directory_with_both_journals() {
    let data = tempfile::tempdir().unwrap();
    let local = data.path().join("journal").join("local");
    let remote = data.path().join("journal").join("remote");
    write_journal(&local, 12);
    let (copy, _) =
        Journal::open(&remote, JournalIdentity { kind: JournalKind::Remote, ..identity() }, options()).unwrap();
    for entry in entries(&open(&local).0, 1).iter().take(7) {
        copy.append_frame(&entry.frame).unwrap();
    }
    copy.sync_to(7).unwrap();
    drop(copy);
    let out = hotpair(&["journal", "verify", arg(data.path())]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("local journal") && stdout.contains("12 records, LSN 1..12"), "{stdout}");
    assert!(stdout.contains("remote journal") && stdout.contains("7 records, LSN 1..7"), "{stdout}");
    let out = hotpair(&["journal", "dump", "--json", arg(data.path())]);
    let labels: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["journal"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(labels.iter().filter(|l| *l == "local").count(), 12);
    assert_eq!(labels.iter().filter(|l| *l == "remote").count(), 7);
    let out = hotpair(&["journal", "ls", "--json", arg(data.path())]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
}

#[test]
fn cli_refuses_a_path_that_is_not_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"hello").unwrap();
    let missing = dir.path().join("missing");
    for path in [&file, &missing] {
        for action in ["ls", "dump", "verify"] {
            let out = hotpair(&["journal", action, arg(path)]);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "journal {action} {}: {stderr}", path.display());
            assert!(stderr.contains(&format!("{} is not a directory", path.display())), "{stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
}

fn record_in(lsn: Lsn, epoch: u64) -> Record {
    Record { epoch, ..record(lsn) }
}

/// A node's local journal skips the epochs its peer was primary in: 1..=10 in epoch 1, then
/// 31..=35 in epoch 3. The gap is accepted only forward and only into a later epoch; it
/// survives reopening, readers step over it, and truncating into it works.
#[test]
fn epoch_gap_is_accepted_forward_into_a_later_epoch_only() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path());
    for lsn in 1..=10 {
        journal.append(&record(lsn)).unwrap();
    }
    let same_epoch = journal.append(&record_in(20, 1)).unwrap_err();
    assert!(matches!(same_epoch, JournalError::OutOfSequence { expected: 11, got: 20 }), "{same_epoch}");
    let backwards = journal.append(&record_in(5, 3)).unwrap_err();
    assert!(matches!(backwards, JournalError::OutOfSequence { .. }), "{backwards}");
    for lsn in 31..=35 {
        journal.append(&record_in(lsn, 3)).unwrap();
    }
    journal.sync_to(35).unwrap();
    drop(journal);

    let (journal, _) = open(dir.path());
    assert_eq!(journal.last_lsn(), Some(35));
    let all: Vec<Lsn> = lsns(&entries(&journal, 1));
    assert_eq!(all, (1..=10).chain(31..=35).collect::<Vec<_>>());
    assert_eq!(lsns(&entries(&journal, 15)), (31..=35).collect::<Vec<_>>(), "a start inside the gap reads on");
    assert_eq!(lsns(&entries(&journal, 33)), vec![33, 34, 35]);

    journal.truncate_after(20).unwrap();
    assert_eq!(journal.last_lsn(), Some(10));
    journal.append(&record_in(41, 5)).unwrap();
    journal.sync_to(41).unwrap();
    assert_eq!(lsns(&entries(&journal, 1)), (1..=10).chain([41]).collect::<Vec<_>>());
    let report = hotpair::storage::journal::inspect(dir.path()).unwrap();
    assert!(report.iter().all(|s| s.error.is_none()), "offline inspection accepts the gap: {report:?}");
}

/// A gap without a later epoch is damage, and open names the file.
#[test]
fn gap_without_a_later_epoch_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path());
    for lsn in 1..=5 {
        journal.append(&record(lsn)).unwrap();
    }
    for lsn in 21..=25 {
        journal.append(&record_in(lsn, 2)).unwrap();
    }
    journal.sync_to(25).unwrap();
    drop(journal);
    // Rewrite the later segment's header to claim epoch 1: now the gap lies inside one epoch.
    let gapped = dir.path().join(file_name(21));
    let mut bytes = std::fs::read(&gapped).unwrap();
    let mut header = hotpair::storage::journal::SegmentHeader::decode(&bytes).unwrap();
    header.epoch = 1;
    bytes[..SEGMENT_HEADER_LEN].copy_from_slice(&header.encode());
    std::fs::write(&gapped, bytes).unwrap();
    let err = Journal::open(dir.path(), identity(), options()).err().expect("a gap in one epoch must be refused");
    assert!(matches!(err, JournalError::Gap { expected: 6, found: 21, .. }), "{err}");
    assert!(err.to_string().contains(&file_name(21)), "{err}");
}

/// The footprint the metrics endpoint reads (without the journal's lock) agrees with the files.
#[test]
fn the_published_footprint_matches_the_segment_files() {
    let dir = tempfile::tempdir().unwrap();
    // Up to the end of each segment's records: the active one runs on into preallocated zeros,
    // which the footprint does not count.
    let on_disk = |dir: &Path| {
        let files = segment_files(dir);
        let records_end = |f: &PathBuf| {
            let bytes = std::fs::read(f).unwrap();
            hotpair::storage::journal::segment::scan(f, &bytes, true, |_| Ok(())).unwrap().valid_len
        };
        (files.len() as u64, files.iter().map(records_end).sum::<u64>())
    };
    let check = |journal: &Journal, last: Lsn, what: &str| {
        let footprint = journal.footprint();
        assert_eq!(footprint.last_lsn, last, "{what}");
        assert_eq!((footprint.segments, footprint.bytes), on_disk(dir.path()), "{what}");
    };
    let (journal, _) = open(dir.path());
    check(&journal, 0, "empty");
    for lsn in 1..=RECORDS {
        journal.append(&record(lsn)).unwrap();
    }
    journal.sync_to(RECORDS).unwrap();
    check(&journal, RECORDS, "after appends over several segments");
    journal.reopen_log(1, 1_700_000_000_000).unwrap();
    check(&journal, RECORDS, "after reopen-log");
    journal.truncate_after(RECORDS / 2).unwrap();
    check(&journal, RECORDS / 2, "after truncating across segments");
    drop(journal);
    let (journal, _) = open(dir.path());
    check(&journal, RECORDS / 2, "after reopening");
}

/// The active segment is zero-filled ahead of its records (so that an fsync writes data, not
/// the file's size); closed segments, and the active one after a clean close, end with their
/// last record; a copy taken while the journal is open (what a crash leaves) opens with every
/// record and its zeros cut, and the journal goes on appending after them.
#[test]
fn the_active_segment_is_preallocated_and_every_closed_one_ends_with_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let big = JournalOptions { segment_bytes: 4 * 1024 * 1024, ..JournalOptions::default() };
    let (journal, _) = Journal::open(dir.path(), identity(), big.clone()).unwrap();
    for lsn in 1..=RECORDS {
        journal.append(&record(lsn)).unwrap();
    }
    journal.sync_to(RECORDS).unwrap();
    let active = segment_files(dir.path()).pop().unwrap();
    let records_end = journal.footprint().bytes;
    // The filler keeps a whole chunk of zeros ahead of the records, on its own thread: the
    // first write filled up to the first chunk boundary, so the filler adds the next chunk (in
    // pieces: wait for the whole of it), and no more.
    let chunk = hotpair::storage::journal::PREALLOCATE_BYTES;
    assert!(records_end < chunk / 2, "the test's records fit well in one chunk");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let len = loop {
        let len = std::fs::metadata(&active).unwrap().len();
        if len >= 2 * chunk {
            break len;
        }
        assert!(std::time::Instant::now() < deadline, "the filler stayed at {len} bytes for {records_end} of records");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(len, 2 * chunk, "zero-filled one chunk ahead of the records' chunk");

    // A crash image: the files as they are on disk right now.
    let crashed = tempfile::tempdir().unwrap();
    std::fs::copy(&active, crashed.path().join(active.file_name().unwrap())).unwrap();

    journal.reopen_log(1, 1_700_000_000_000).unwrap();
    assert_eq!(std::fs::metadata(&active).unwrap().len(), records_end, "a closed segment ends with its records");
    drop(journal);
    for file in segment_files(dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        let scanned = segment::scan(&file, &bytes, false, |_| Ok(())).unwrap();
        assert_eq!(
            scanned.valid_len,
            bytes.len() as u64,
            "{} ends past its records after a clean close",
            file.display()
        );
    }

    let (journal, recovery) = Journal::open(crashed.path(), identity(), big).unwrap();
    assert_eq!(recovery.cut, None, "preallocated zeros are not a torn write");
    let (_, offset, zeros) = recovery.zeroed.expect("the crash image's zeros are cut");
    assert_eq!((offset, offset + zeros), (records_end, len));
    assert_eq!(lsns(&entries(&journal, 1)), (1..=RECORDS).collect::<Vec<_>>());
    for lsn in RECORDS + 1..=RECORDS + 5 {
        journal.append(&record(lsn)).unwrap();
    }
    journal.sync_to(RECORDS + 5).unwrap();
    assert_eq!(lsns(&entries(&journal, 1)), (1..=RECORDS + 5).collect::<Vec<_>>());
}

/// Record `lsn` as [`record`] makes it, but writing one key with a value of `size` bytes.
fn record_of_size(lsn: Lsn, size: usize) -> Record {
    let op = Op { key: format!("key-{lsn}").into_bytes(), before: None, after: Some(vec![lsn as u8; size]) };
    Record { body: RecordBody::txn(vec![op]), ..record(lsn) }
}

/// How many pages of `path` between byte `from` and `to` are in the page cache (`mincore`).
fn cached_pages(path: &Path, from: u64, to: u64) -> usize {
    use std::os::fd::AsRawFd;
    let page = 4096;
    let (from, to) = (from / page * page, to.div_ceil(page) * page);
    if to <= from {
        return 0;
    }
    // Opened for writing: Linux answers `mincore` on a file mapping only to those who could write it.
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let len = (to - from) as usize;
    // SAFETY: a fresh shared read-only mapping of a file that is at least `to` bytes long (the
    // callers pass ranges inside it), unmapped before returning; nothing reads through it.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            from as libc::off_t,
        );
        assert_ne!(addr, libc::MAP_FAILED, "mmap {}", path.display());
        let mut resident = vec![0u8; len / page as usize];
        let rc = libc::mincore(addr, len, resident.as_mut_ptr());
        libc::munmap(addr, len);
        assert_eq!(rc, 0, "mincore {}: {}", path.display(), std::io::Error::last_os_error());
        resident.iter().filter(|&&byte| byte & 1 == 1).count()
    }
}

/// A busy journal does not keep its whole history in the page cache: the filler drops a closed
/// segment, and the active one's pages more than `CACHE_BEHIND_BYTES` behind the records. (On
/// the VMs this runs on, a page the cache takes anew costs ~20 µs; with the cache growing by
/// every record, the zero-fill took 5–6 ms per megabyte instead of 0.3 ms.) The records stay
/// readable from the disk.
#[test]
fn the_filler_drops_the_page_cache_behind_the_records() {
    // In the target directory, on the disk: tmpfs (/tmp on some machines) has no cache to drop.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mb = 1024 * 1024;
    let segment_bytes = 16 * mb;
    let opts = JournalOptions { segment_bytes, ..JournalOptions::default() };
    let (journal, _) = Journal::open(dir.path(), identity(), opts).unwrap();
    // 64 KB records: 16 MB into the first segment, then 14 MB into the second.
    let record = |lsn: Lsn| record_of_size(lsn, 64 * 1024);
    let count = (30 * mb / (64 * 1024)) as Lsn;
    for lsn in 1..=count {
        journal.append(&record(lsn)).unwrap();
        if lsn % 16 == 0 {
            // About a chunk at a time, as commits come: the filler keeps pace.
            journal.sync_to(lsn).unwrap();
        }
    }
    journal.sync_to(count).unwrap();
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 2, "the records fill one segment and go on into a second");
    let (closed, active) = (&files[0], &files[1]);
    let closed_len = std::fs::metadata(closed).unwrap().len();
    let active_end = journal.footprint().bytes - closed_len;
    // The filler takes the records' end as it starts a fill, one chunk at a time: it has
    // dropped the cache to within a window and two chunks of the end.
    let dropped_to =
        active_end - hotpair::storage::journal::CACHE_BEHIND_BYTES - 2 * hotpair::storage::journal::PREALLOCATE_BYTES;
    assert!(dropped_to > 2 * mb, "the test writes well past the window");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (in_closed, in_active) = (cached_pages(closed, 0, closed_len), cached_pages(active, 0, dropped_to));
        if in_closed == 0 && in_active == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still cached: {in_closed} pages of the closed segment, {in_active} of the active one's first {dropped_to} bytes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Read back from the disk, byte for byte; a reader too leaves a closed segment uncached.
    for (entry, lsn) in journal.read_from(1).unwrap().zip(1..) {
        assert_eq!(entry.unwrap().record, record(lsn));
    }
    assert_eq!(journal.last_lsn(), Some(count));
    let left = cached_pages(closed, 0, closed_len);
    assert_eq!(left, 0, "the reader left {left} pages of the closed segment ({closed_len} bytes) cached");
}

/// A reader reads a segment a chunk at a time: records larger than a chunk, and records that
/// straddle a chunk's end, come back whole, from the start and from any LSN.
#[test]
fn records_larger_than_a_read_chunk_are_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let chunk = hotpair::storage::journal::reader::READ_CHUNK_BYTES;
    let big = JournalOptions { segment_bytes: 4 * chunk as u64, ..JournalOptions::default() };
    let (journal, _) = Journal::open(dir.path(), identity(), big).unwrap();
    let frame_len = |record: &Record| {
        let mut frame = Vec::new();
        encode_record(record, &mut frame);
        frame.len()
    };
    // The first record ends 4 bytes before the first chunk's end: the next frame's header
    // straddles it.
    let first = chunk - 4 - SEGMENT_HEADER_LEN - frame_len(&record_of_size(1, 0));
    assert_eq!(SEGMENT_HEADER_LEN + frame_len(&record_of_size(1, first)), chunk - 4);
    const { assert!(FRAME_HEADER_LEN > 4) };
    let sizes = [first, 100, chunk - 300, 50, 5 * chunk / 2, 10, chunk, 3 * chunk, 7];
    let record = |lsn: Lsn| record_of_size(lsn, sizes[lsn as usize - 1]);
    let count = sizes.len() as Lsn;
    for lsn in 1..=count {
        journal.append(&record(lsn)).unwrap();
    }
    journal.sync_to(count).unwrap();
    assert!(segment_files(dir.path()).len() >= 2, "the records span segments");
    for from in 1..=count {
        let read: Vec<Record> = journal.read_from(from).unwrap().map(|entry| entry.unwrap().record).collect();
        assert_eq!(read, (from..=count).map(record).collect::<Vec<_>>(), "reading from LSN {from}");
    }
}

/// A paced journal (the backup's remote journal below `durable`) fsyncs at most once per pace,
/// however the appends trickle in, and every record still becomes durable.
#[test]
fn a_paced_journal_fsyncs_at_most_once_per_pace() {
    let dir = tempfile::tempdir().unwrap();
    let pace = Duration::from_millis(50);
    let paced = JournalOptions { sync_pace: pace, ..options() };
    let (journal, _) = Journal::open(dir.path(), identity(), paced).unwrap();
    let started = std::time::Instant::now();
    let before = journal.stats().fsyncs;
    // Appends spread over ~0.4 s: unpaced, nearly every one would get its own fsync.
    for lsn in 1..=RECORDS {
        journal.append(&record(lsn)).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    journal.sync_to(RECORDS).unwrap();
    let fsyncs = journal.stats().fsyncs - before;
    let most = started.elapsed().as_millis() / pace.as_millis() + 1;
    assert!(fsyncs as u128 <= most, "{fsyncs} fsyncs in {:?}, at most {most} expected", started.elapsed());
    assert_eq!(lsns(&entries(&journal, 1)), (1..=RECORDS).collect::<Vec<_>>());
}

/// A journal whose appender syncs it itself (the backup's remote journal at `durable`): appends
/// leave the flusher asleep, `sync_now` makes them durable with one fsync on the calling thread
/// (a crash image taken right after holds them), and `sync_to` still works: it wakes the
/// flusher.
#[test]
fn a_caller_synced_journal_fsyncs_on_the_callers_thread_and_sync_to_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions { caller_syncs: true, ..options() };
    let (journal, _) = Journal::open(dir.path(), identity(), options).unwrap();
    let durable = journal.subscribe_durable();
    for lsn in 1..=5 {
        journal.append(&record(lsn)).unwrap();
    }
    assert_eq!(journal.sync_now().unwrap(), 5);
    assert_eq!(journal.stats().fsyncs, 1, "one fsync, the caller's: appends must not wake the flusher");
    assert_eq!((journal.durable_lsn(), *durable.borrow()), (5, 5));
    let image = tempfile::tempdir().unwrap();
    copy_journal(dir.path(), image.path());
    let (crashed, _) = open(image.path());
    assert_eq!(lsns(&entries(&crashed, 1)), (1..=5).collect::<Vec<_>>());
    // Nothing new: no fsync.
    assert_eq!(journal.sync_now().unwrap(), 5);
    assert_eq!(journal.stats().fsyncs, 1);
    for lsn in 6..=7 {
        journal.append(&record(lsn)).unwrap();
    }
    journal.sync_to(7).unwrap();
    assert_eq!(journal.durable_lsn(), 7);
}

/// `sync_now` never runs an fsync beside another one (the flusher's, started for a `sync_to`
/// waiter such as the applier): it waits for it, and finds its records covered, so they cost
/// one fsync. (Two at once could also split a writeback error between them.)
#[test]
fn sync_now_waits_for_an_fsync_in_flight_instead_of_starting_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions { caller_syncs: true, ..options() };
    let (journal, _) = Journal::open(dir.path(), identity(), options).unwrap();
    journal.simulate_fsync_delay(Duration::from_millis(200));
    for lsn in 1..=3 {
        journal.append(&record(lsn)).unwrap();
    }
    let waiter = {
        let journal = journal.clone();
        std::thread::spawn(move || journal.sync_to(3))
    };
    // The order that needs the guard: the flusher's fsync (woken by the waiter) first.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while journal.stats().in_flight == 0 && journal.durable_lsn() < 3 {
        assert!(std::time::Instant::now() < deadline, "the flusher never started the waiter's fsync");
        std::thread::yield_now();
    }
    assert_eq!(journal.sync_now().unwrap(), 3);
    waiter.join().unwrap().unwrap();
    assert_eq!(journal.stats().fsyncs, 1, "two fsyncs of the same records");
}

#[test]
fn bench_store_reports_its_costs_and_refuses_zero_sizes() {
    // `hotpair bench store` at a tiny size: it exits 0 with every measurement (it checks the
    // reopened store holds every key itself), and refuses --keys 0 as a usage error.
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let out = hotpair(&["bench", "store", "--keys", "2000", "--ops", "500", "--json", "--dir", dir_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for field in ["load", "get", "apply_reading_sled", "apply_from_images"] {
        assert!(report[field]["cpu_us"].as_f64().is_some_and(|us| us > 0.0), "{field}: {report}");
    }
    assert_eq!(report["keys"], 2000);
    assert!(report["rss_bytes_per_key"].as_f64().is_some_and(|b| b > 0.0), "{report}");
    let out = hotpair(&["bench", "store", "--keys", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}
