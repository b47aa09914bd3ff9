//! Golden files pin the journal format (`journals/README.md`): `journals/golden/` holds a small
//! journal written by this code — records of every kind, two segments — and the JSON dump of it.
//!
//! - The committed segments must dump to exactly `expected-dump.jsonl` and decode to exactly the
//!   records below: a reader change that misreads old bytes fails here.
//! - Writing the same records again must give byte-identical segment files: a writer change that
//!   alters any byte fails here.
//!
//! An intended format change bumps the version and regenerates the files with
//! `HOTPAIR_REGEN_GOLDEN=1 cargo test --release --test golden` (see `journals/golden/README.md`).

use std::path::{Path, PathBuf};
use std::sync::Once;

use hotpair::storage::journal::{
    read_dir_from, segment, HistoryEntry, Journal, JournalIdentity, JournalKind, JournalOptions, Lsn, Op, Record,
    RecordBody,
};
use hotpair::Digest;

/// Relative to the package root (the working directory of integration tests), so that the
/// `"journal"` label in the dump is the same on every checkout.
const GOLDEN_DIR: &str = "journals/golden";
const EXPECTED_DUMP: &str = "journals/golden/expected-dump.jsonl";
/// The second golden journal: what the commands of issue 23 write (txns that carry client
/// commands, hash and expiring values, a flush, a transaction of many keys). The first one must
/// still read unchanged beside it: old journals still read.
const COMMANDS_DIR: &str = "journals/golden-commands";
const COMMANDS_DUMP: &str = "journals/golden-commands/expected-dump.jsonl";
const REGEN_ENV: &str = "HOTPAIR_REGEN_GOLDEN";

/// 2026-01-01T00:00:00Z: every timestamp and creation time is fixed, so the bytes are too.
const T0: u64 = 1_767_225_600_000;
/// The second segment starts here, opened by `reopen_log(SECOND_SEGMENT_EPOCH, T0 + 1_000)`.
const SECOND_SEGMENT_LSN: Lsn = 6;
const SECOND_SEGMENT_EPOCH: u64 = 2;

fn identity() -> JournalIdentity {
    JournalIdentity {
        // A fixed UUID (bytes as UUIDs are written).
        cluster: [0x6f, 0x1c, 0x2a, 0x3b, 0x4d, 0x5e, 0x4f, 0x60, 0x81, 0x92, 0xa3, 0xb4, 0xc5, 0xd6, 0xe7, 0xf8],
        node: "alpha".into(),
        kind: JournalKind::Local,
    }
}

/// Tracks the key space so every record carries a real digest and key count.
#[derive(Default)]
struct KeySpace {
    pairs: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    digest: Digest,
}

impl KeySpace {
    fn txn(&mut self, lsn: Lsn, epoch: u64, timestamp_ms: u64, writes: &[(&[u8], Option<&[u8]>)]) -> Record {
        self.txn_with(lsn, epoch, timestamp_ms, writes, Vec::new())
    }

    fn txn_with(
        &mut self,
        lsn: Lsn,
        epoch: u64,
        timestamp_ms: u64,
        writes: &[(&[u8], Option<&[u8]>)],
        commands: Vec<Vec<Vec<u8>>>,
    ) -> Record {
        let mut ops = Vec::new();
        for &(key, after) in writes {
            let before = self.pairs.get(key).cloned();
            self.digest = self.digest.updated(key, before.as_deref(), after);
            match after {
                Some(value) => self.pairs.insert(key.to_vec(), value.to_vec()),
                None => self.pairs.remove(key),
            };
            ops.push(Op { key: key.to_vec(), before, after: after.map(<[u8]>::to_vec) });
        }
        self.record(lsn, epoch, timestamp_ms, RecordBody::Txn { ops, commands })
    }

    fn record(&self, lsn: Lsn, epoch: u64, timestamp_ms: u64, body: RecordBody) -> Record {
        Record { lsn, epoch, timestamp_ms, digest_after: self.digest, body }
    }
}

/// The golden records, in order: every kind; text, binary, empty and non-ASCII keys and values;
/// puts, overwrites and deletes; a history of one and of two epochs.
fn golden_records() -> Vec<Record> {
    let mut space = KeySpace::default();
    let alpha = |epoch, first_lsn| HistoryEntry { epoch, first_lsn, primary: "alpha".into() };
    let mut records = vec![space.record(1, 1, T0, RecordBody::EpochStart { history: vec![alpha(1, 1)] })];
    records.push(space.txn(
        2,
        1,
        T0 + 10,
        &[(b"user:1", Some(b"Ada")), (&[0x00, 0xff, 0x10, 0x80], Some(&[0xde, 0xad, 0xbe, 0xef])), (b"tmp", Some(b""))],
    ));
    records.push(space.txn(
        3,
        1,
        T0 + 20,
        &[(b"user:1", Some(b"Ada Lovelace")), (b"tmp", None), ("ключ".as_bytes(), Some("значение".as_bytes()))],
    ));
    records.push(space.record(4, 1, T0 + 30, RecordBody::Canary { sequence: 1 }));
    records.push(space.record(5, 1, T0 + 40, RecordBody::Checkpoint { key_count: space.pairs.len() as u64 }));
    // Second segment, opened by reopen_log: a new epoch begins.
    records.push(space.record(
        SECOND_SEGMENT_LSN,
        2,
        T0 + 2_000,
        RecordBody::EpochStart { history: vec![alpha(1, 1), alpha(2, SECOND_SEGMENT_LSN)] },
    ));
    records.push(space.txn(
        7,
        2,
        T0 + 2_010,
        &[(&[0x00, 0xff, 0x10, 0x80], None), (b"user:2", Some(&[0x01, 0x00, 0xfe])), (b"user:1", Some(b"Ada"))],
    ));
    records.push(space.record(8, 2, T0 + 2_020, RecordBody::Canary { sequence: 2 }));
    records.push(space.record(9, 2, T0 + 2_030, RecordBody::Checkpoint { key_count: space.pairs.len() as u64 }));
    records
}

/// The records of the commands' golden journal, one segment: values in the `hotpair::storage::value`
/// format (strings with and without expiry, hashes with and without expiry), a txn carrying an
/// increment's client command (kind 5), an EXEC-like txn of several keys, a flush of them all.
fn commands_records() -> Vec<Record> {
    use hotpair::storage::value::{Data, StoredValue};
    let string = |data: &[u8], expires| StoredValue::string(data.to_vec(), expires).encode();
    let hash = |fields: &[(&[u8], &[u8])], expires| {
        let fields = fields.iter().map(|(f, v)| (f.to_vec(), v.to_vec())).collect();
        StoredValue { expires_at_ms: expires, data: Data::Hash(fields) }.encode()
    };
    let words = |line: &str| line.split(' ').map(|w| w.as_bytes().to_vec()).collect::<Vec<_>>();
    let mut space = KeySpace::default();
    let alpha = HistoryEntry { epoch: 1, first_lsn: 1, primary: "alpha".into() };
    let mut records = vec![space.record(1, 1, T0, RecordBody::EpochStart { history: vec![alpha] })];
    let session = hash(&[(b"user", b"ada"), (b"csrf", &[0xff, 0x00])], Some(T0 + 3_600_000));
    records.push(space.txn(
        2,
        1,
        T0 + 10,
        &[(b"session:1", Some(&session)), (b"page", Some(&string(b"<html>", Some(T0 + 300))))],
    ));
    records.push(space.txn_with(3, 1, T0 + 20, &[(b"hits", Some(&string(b"5", None)))], vec![words("INCRBY hits 5")]));
    let counts = hash(&[(b"views", b"3")], None);
    records.push(space.txn_with(
        4,
        1,
        T0 + 30,
        &[(b"hits", Some(&string(b"6", None))), (b"stats", Some(&counts)), (b"page", None)],
        vec![words("INCRBY hits 1"), words("HINCRBY stats views 3")],
    ));
    let keys: Vec<Vec<u8>> = space.pairs.keys().cloned().collect();
    let flush: Vec<(&[u8], Option<&[u8]>)> = keys.iter().map(|k| (k.as_slice(), None)).collect();
    records.push(space.txn_with(5, 1, T0 + 40, &flush, vec![words("FLUSHALL")]));
    records.push(space.record(6, 1, T0 + 50, RecordBody::Checkpoint { key_count: space.pairs.len() as u64 }));
    records
}

/// Writes the golden journal into `dir` (which holds no segment yet).
fn write_golden(dir: &Path) {
    write_records(dir, golden_records(), Some(SECOND_SEGMENT_LSN));
}

/// Writes `records`, opening a second segment before `second_segment_at` if given.
fn write_records(dir: &Path, records: Vec<Record>, second_segment_at: Option<Lsn>) {
    let (journal, _) = Journal::open(dir, identity(), JournalOptions::default()).unwrap();
    for record in records {
        if Some(record.lsn) == second_segment_at {
            journal.reopen_log(SECOND_SEGMENT_EPOCH, T0 + 1_000).unwrap().expect("the second segment");
        }
        journal.append(&record).unwrap();
    }
    journal.sync_to(journal.last_lsn().unwrap()).unwrap();
}

/// The segment files of `dir` in LSN order, as the journal itself lists them.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    segment::list(dir).unwrap().into_iter().map(|(_, path)| path).collect()
}

fn dump_json(dir: &Path) -> String {
    let mut out = Vec::new();
    hotpair::admin::journal_tools::dump(dir, 0, true, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// Runs from the package root; with `HOTPAIR_REGEN_GOLDEN=1`, rewrites the golden files once
/// before any comparison.
fn golden_dir() -> &'static Path {
    static REGEN: Once = Once::new();
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).unwrap();
    REGEN.call_once(|| {
        if std::env::var(REGEN_ENV).is_ok_and(|v| v == "1") {
            let dir = Path::new(GOLDEN_DIR);
            std::fs::create_dir_all(dir).unwrap();
            for old in segment_files(dir) {
                std::fs::remove_file(old).unwrap();
            }
            write_golden(dir);
            std::fs::write(EXPECTED_DUMP, dump_json(dir)).unwrap();
            eprintln!("{REGEN_ENV}=1: rewrote the segments in {GOLDEN_DIR} and {EXPECTED_DUMP}");
        }
        if std::env::var(REGEN_ENV).is_ok_and(|v| v == "1" || v == "commands") {
            let dir = Path::new(COMMANDS_DIR);
            std::fs::create_dir_all(dir).unwrap();
            for old in segment_files(dir) {
                std::fs::remove_file(old).unwrap();
            }
            write_records(dir, commands_records(), None);
            std::fs::write(COMMANDS_DUMP, dump_json(dir)).unwrap();
            eprintln!("{REGEN_ENV}: rewrote the segments in {COMMANDS_DIR} and {COMMANDS_DUMP}");
        }
    });
    Path::new(GOLDEN_DIR)
}

fn regen_hint() -> String {
    format!("if the format change is intended, bump FORMAT_VERSION and run `{REGEN_ENV}=1 cargo test --release --test golden`")
}

#[test]
fn committed_golden_journal_dumps_to_the_expected_file() {
    let dir = golden_dir();
    let expected = std::fs::read_to_string(EXPECTED_DUMP)
        .unwrap_or_else(|err| panic!("{EXPECTED_DUMP}: {err} ({})", regen_hint()));
    let actual = dump_json(dir);
    if actual != expected {
        let (line, (got, want)) = actual
            .lines()
            .zip(expected.lines())
            .enumerate()
            .find(|(_, (a, e))| a != e)
            .map_or((0, ("(line count differs)", "")), |(i, pair)| (i + 1, pair));
        panic!(
            "the dump of {GOLDEN_DIR} differs from {EXPECTED_DUMP} at line {line}:\n  got:  {got}\n  want: {want}\n{}",
            regen_hint()
        );
    }
    // The committed bytes also decode to exactly the records they were written from.
    let decoded: Vec<Record> = read_dir_from(dir, 0).unwrap().map(|e| e.unwrap().record).collect();
    assert_eq!(decoded, golden_records(), "{}", regen_hint());
    let report = hotpair::admin::journal_tools::verify(dir).unwrap();
    assert!(!report.damaged, "{}", report.text);
    assert!(report.text.contains("2 segments, 9 records, LSN 1..9"), "{}", report.text);
}

#[test]
fn writing_the_golden_records_again_gives_identical_bytes() {
    let golden = golden_dir();
    let scratch = tempfile::tempdir().unwrap();
    write_golden(scratch.path());
    let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
    let committed = segment_files(golden);
    let written = segment_files(scratch.path());
    assert_eq!(
        written.iter().map(name).collect::<Vec<_>>(),
        committed.iter().map(name).collect::<Vec<_>>(),
        "segment files differ; {}",
        regen_hint()
    );
    assert_eq!(committed.len(), 2);
    for (new, old) in written.iter().zip(&committed) {
        let (new_bytes, old_bytes) = (std::fs::read(new).unwrap(), std::fs::read(old).unwrap());
        if new_bytes != old_bytes {
            let at = new_bytes
                .iter()
                .zip(&old_bytes)
                .position(|(a, b)| a != b)
                .unwrap_or(new_bytes.len().min(old_bytes.len()));
            panic!(
                "{} differs from the committed {} at byte {at} (written {} bytes, committed {}); {}",
                new.display(),
                old.display(),
                new_bytes.len(),
                old_bytes.len(),
                regen_hint()
            );
        }
    }
}

#[test]
fn committed_commands_journal_dumps_decodes_and_rewrites_identically() {
    golden_dir();
    let dir = Path::new(COMMANDS_DIR);
    let expected = std::fs::read_to_string(COMMANDS_DUMP)
        .unwrap_or_else(|err| panic!("{COMMANDS_DUMP}: {err} ({})", regen_hint()));
    assert_eq!(dump_json(dir), expected, "the dump of {COMMANDS_DIR} changed; {}", regen_hint());
    let decoded: Vec<Record> = read_dir_from(dir, 0).unwrap().map(|e| e.unwrap().record).collect();
    assert_eq!(decoded, commands_records(), "{}", regen_hint());
    // The kinds it pins: a txn that carries client commands is kind 5, one without is kind 1.
    let committed = std::fs::read(&segment_files(dir)[0]).unwrap();
    let kinds: Vec<u8> = {
        let mut at = hotpair::storage::journal::format::SEGMENT_HEADER_LEN;
        let mut kinds = Vec::new();
        while at + 8 < committed.len() {
            let len = u32::from_le_bytes(committed[at..at + 4].try_into().unwrap()) as usize;
            kinds.push(committed[at + 8]);
            at += 8 + len;
        }
        kinds
    };
    assert_eq!(kinds, vec![2, 1, 5, 5, 5, 4]);
    let scratch = tempfile::tempdir().unwrap();
    write_records(scratch.path(), commands_records(), None);
    assert_eq!(std::fs::read(&segment_files(scratch.path())[0]).unwrap(), committed, "{}", regen_hint());
}
