//! `hotpair backup NODE --out DIR`: an online backup of one node, written by the admin CLI.
//!
//! ## Job
//! Asks NODE for a backup over its control port (admin mutual TLS; the node's half is
//! `node::backup`, which says why a fuzzy scan plus the journal is consistent) and writes what
//! it streams into DIR, showing progress. Writes never stop on the pair. Back up the backup
//! node rather than the primary where you can: the scan then reads the backup's disk.
//!
//! ## A backup directory
//! ```text
//! DIR/manifest.json   written last: what the backup holds (see [`Manifest`])
//! DIR/store.pairs     the store's pairs as scanned (format below)
//! DIR/journal/        the journal records from where the scan began to where the copy is
//!                     consistent, in the journal format (journals/README.md): a journal
//!                     directory the `hotpair journal` tools read
//! ```
//! `store.pairs`, all integers little-endian:
//! ```text
//!  0  8  magic "HOTPAIRS"
//!  8  2  format version (1)
//! 10  6  zero
//! 16  …  chunks: u32 length L (> 0), u32 CRC32C of the L bytes, L bytes of pairs
//!        (u32 key length, key, u32 value length, value — repeated; values are stored values,
//!        `crate::storage::value`)
//!  …  8  end: u32 0, u32 0
//!  …  8  u64 number of pairs in all chunks
//! ```
//!
//! ## Invariants
//! - The manifest is written last (temporary file, fsync, rename, fsync of the directory), after
//!   every other file is fsynced: a directory without one is an unfinished backup and `restore`
//!   refuses it.
//! - A backup that fails removes what it wrote (exit 1, nothing changed); DIR must be missing
//!   or empty, so a backup never overwrites another.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use crate::config::{PairConfig, SyncLevel};
use crate::replication::wire::{self, AdminRequest, Envelope, Frame, Message};
use crate::storage::digest::Digest;
use crate::storage::journal::{self, Epoch, HistoryEntry, Journal, JournalIdentity, JournalKind, JournalOptions, Lsn};
use crate::storage::store::Position;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const STORE_FILE: &str = "store.pairs";
pub const JOURNAL_DIR: &str = "journal";
pub const MANIFEST_VERSION: u32 = 1;
/// What `kind` says in every manifest.
pub const MANIFEST_KIND: &str = "hotpair-backup";
const STORE_MAGIC: &[u8; 8] = b"HOTPAIRS";
const STORE_VERSION: u16 = 1;
const STORE_HEADER_LEN: usize = 16;
/// Longest a chunk of `store.pairs` may claim to be (a copy batch is about 1 MB).
const MAX_CHUNK: usize = wire::MAX_FRAME;
/// How long the node may send nothing before the backup gives up.
const SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Refused(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} is damaged at offset {offset}: {reason}", path.display())]
    Damaged { path: PathBuf, offset: u64, reason: String },
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error("{} is not a finished hotpair backup: {reason}", dir.display())]
    NotABackup { dir: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io { path: path.to_path_buf(), source }
}

/// What a finished backup holds: `manifest.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// Always [`MANIFEST_KIND`].
    pub kind: String,
    pub cluster: Uuid,
    /// The node the backup was taken from, its role then, and the pair's sync level.
    pub node: String,
    pub role: String,
    pub sync: SyncLevel,
    /// The node's epoch and the pair's history when the backup ended.
    pub epoch: Epoch,
    pub history: Vec<HistoryEntry>,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    pub store: StoreCopy,
    /// The copy plus the journal up to here is the store exactly at this LSN: the earliest
    /// point this backup restores to on its own (earlier ones need journals back to LSN 1).
    pub consistent_lsn: Lsn,
    /// The digest and key count of the store at `consistent_lsn`.
    pub digest: Digest,
    pub key_count: u64,
    pub journal: JournalCopy,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoreCopy {
    pub file: String,
    /// The store's applied LSN when the scan began: replay starts after it.
    pub scan_started_lsn: Lsn,
    pub pairs: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JournalCopy {
    pub dir: String,
    pub records: u64,
    pub first_lsn: Option<Lsn>,
    pub last_lsn: Option<Lsn>,
    /// Timestamps (ms since the Unix epoch, stamped by the primary) of the first and last record.
    pub first_time_ms: Option<u64>,
    pub last_time_ms: Option<u64>,
}

impl Manifest {
    /// Reads `DIR/manifest.json`, refusing anything that is not a finished backup of this format.
    pub fn load(dir: &Path) -> Result<Manifest, BackupError> {
        let not = |reason: String| BackupError::NotABackup { dir: dir.to_path_buf(), reason };
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| not(format!("{}: {e} (a backup that did not finish has no manifest)", path.display())))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| not(format!("{}: {e}", path.display())))?;
        if value["kind"] != MANIFEST_KIND {
            return Err(not(format!("{} is not a hotpair backup manifest", path.display())));
        }
        let version = value["format_version"].as_u64().unwrap_or(0);
        if version != u64::from(MANIFEST_VERSION) {
            return Err(not(format!("manifest format version {version}; this build reads version {MANIFEST_VERSION}")));
        }
        serde_json::from_value(value).map_err(|e| not(format!("{}: {e}", path.display())))
    }
}

/// Writes `store.pairs` a chunk at a time.
pub struct StoreFileWriter {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    pairs: u64,
    bytes: u64,
}

impl StoreFileWriter {
    pub fn create(path: &Path) -> Result<StoreFileWriter, BackupError> {
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(io(path))?;
        let mut out = std::io::BufWriter::new(file);
        let mut header = [0u8; STORE_HEADER_LEN];
        header[..8].copy_from_slice(STORE_MAGIC);
        header[8..10].copy_from_slice(&STORE_VERSION.to_le_bytes());
        out.write_all(&header).map_err(io(path))?;
        Ok(StoreFileWriter { path: path.to_path_buf(), out, pairs: 0, bytes: STORE_HEADER_LEN as u64 })
    }

    /// Appends one chunk: `payload` is pairs as [`wire::encode_pairs`] makes them, `count` of them.
    pub fn chunk(&mut self, payload: &[u8], count: u64) -> Result<(), BackupError> {
        if payload.is_empty() {
            return Ok(());
        }
        let crc = crc32c::crc32c(payload);
        self.out.write_all(&(payload.len() as u32).to_le_bytes()).map_err(io(&self.path))?;
        self.out.write_all(&crc.to_le_bytes()).map_err(io(&self.path))?;
        self.out.write_all(payload).map_err(io(&self.path))?;
        self.pairs += count;
        self.bytes += 8 + payload.len() as u64;
        Ok(())
    }

    /// Writes the end and the pair count, and fsyncs. Returns (pairs, bytes).
    pub fn finish(mut self) -> Result<(u64, u64), BackupError> {
        self.out.write_all(&[0u8; 8]).map_err(io(&self.path))?;
        self.out.write_all(&self.pairs.to_le_bytes()).map_err(io(&self.path))?;
        let file =
            self.out.into_inner().map_err(|e| BackupError::Io { path: self.path.clone(), source: e.into_error() })?;
        file.sync_all().map_err(io(&self.path))?;
        Ok((self.pairs, self.bytes + 16))
    }
}

/// Reads `store.pairs` back chunk by chunk, checking every CRC and the count at the end.
pub struct StoreFileReader {
    path: PathBuf,
    input: std::io::BufReader<std::fs::File>,
    offset: u64,
    pairs: u64,
    done: bool,
}

impl StoreFileReader {
    pub fn open(path: &Path) -> Result<StoreFileReader, BackupError> {
        let file = std::fs::File::open(path).map_err(io(path))?;
        let mut input = std::io::BufReader::new(file);
        let mut header = [0u8; STORE_HEADER_LEN];
        input.read_exact(&mut header).map_err(io(path))?;
        let damaged = |reason: String| BackupError::Damaged { path: path.to_path_buf(), offset: 0, reason };
        if &header[..8] != STORE_MAGIC {
            return Err(damaged("not a hotpair store copy (bad magic)".into()));
        }
        let version = u16::from_le_bytes([header[8], header[9]]);
        if version != STORE_VERSION {
            return Err(damaged(format!(
                "store copy format version {version}; this build reads version {STORE_VERSION}"
            )));
        }
        Ok(StoreFileReader { path: path.to_path_buf(), input, offset: STORE_HEADER_LEN as u64, pairs: 0, done: false })
    }

    fn damaged(&self, reason: String) -> BackupError {
        BackupError::Damaged { path: self.path.clone(), offset: self.offset, reason }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        self.input.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.damaged("the file ends in the middle of a chunk (cut short)".into())
            } else {
                BackupError::Io { path: self.path.clone(), source: e }
            }
        })
    }

    /// The next chunk's pairs; `None` after the end, once the count was checked.
    pub fn next_chunk(&mut self) -> Result<Option<wire::Pairs>, BackupError> {
        if self.done {
            return Ok(None);
        }
        let mut head = [0u8; 8];
        self.read_exact(&mut head)?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len == 0 {
            let mut count = [0u8; 8];
            self.read_exact(&mut count)?;
            let count = u64::from_le_bytes(count);
            if count != self.pairs {
                return Err(self.damaged(format!("the end says {count} pairs, the chunks hold {}", self.pairs)));
            }
            self.done = true;
            return Ok(None);
        }
        if len > MAX_CHUNK {
            return Err(self.damaged(format!("chunk length {len} is over the {MAX_CHUNK}-byte limit")));
        }
        let mut payload = vec![0u8; len];
        self.read_exact(&mut payload)?;
        if crc32c::crc32c(&payload) != crc {
            return Err(self.damaged("chunk CRC does not match (the file is damaged)".into()));
        }
        let pairs = wire::decode_pairs(&payload).map_err(|e| self.damaged(e.to_string()))?;
        self.offset += 8 + len as u64;
        self.pairs += pairs.len() as u64;
        Ok(Some(pairs))
    }
}

/// Options of `hotpair backup`.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub node: String,
    pub out: PathBuf,
    /// Also copy the journal records from this LSN on (as far back as the node still holds).
    pub journal_from: Option<Lsn>,
    pub json: bool,
}

/// `hotpair backup`: returns the exit code (0) after printing the outcome.
pub fn main(pair: &PairConfig, options: &BackupOptions) -> Result<u8, crate::Error> {
    pair.node(&options.node)?;
    let created = prepare_dir(&options.out)?;
    let result = crate::admin::client::block_on(run(pair, options))?;
    match result {
        Ok(manifest) => {
            if options.json {
                println!("{}", serde_json::to_string_pretty(&manifest).unwrap_or_default());
            } else {
                print!("{}", summary(&manifest, &options.out));
            }
            Ok(0)
        }
        Err(err) => {
            cleanup(&options.out, created);
            Err(BackupError::Refused(format!(
                "backup of {} failed, nothing kept in {}: {err}",
                options.node,
                options.out.display()
            ))
            .into())
        }
    }
}

/// Makes DIR (missing or empty); true when this run created it.
fn prepare_dir(dir: &Path) -> Result<bool, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::Refused(format!(
                    "{} is not empty; a backup goes into a new or empty directory and never overwrites",
                    dir.display()
                )));
            }
            Ok(false)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            Ok(true)
        }
        Err(source) => Err(BackupError::Io { path: dir.to_path_buf(), source }),
    }
}

fn cleanup(dir: &Path, created: bool) {
    if created {
        let _ = std::fs::remove_dir_all(dir);
    } else if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        }
    }
}

fn summary(manifest: &Manifest, dir: &Path) -> String {
    let journal = &manifest.journal;
    let span = match (journal.first_lsn, journal.last_lsn) {
        (Some(first), Some(last)) => format!(
            "LSN {first}..{last} ({} .. {})",
            format_time(journal.first_time_ms),
            format_time(journal.last_time_ms)
        ),
        _ => "none".into(),
    };
    format!(
        "backup of {} ({}, cluster {}) in {}\n  store    {} keys, {} bytes, scanned from LSN {}\n  journal  {} records, {span}\n  consistent at LSN {} (epoch {}), digest {}, {} keys\nbackup done in {:.1} s; restore with: hotpair restore {} --dir NEWDIR --nodes a=…,b=…\n",
        manifest.node,
        manifest.role,
        manifest.cluster,
        dir.display(),
        manifest.store.pairs,
        manifest.store.bytes,
        manifest.store.scan_started_lsn,
        journal.records,
        manifest.consistent_lsn,
        manifest.epoch,
        manifest.digest,
        manifest.key_count,
        (manifest.finished_at_ms.saturating_sub(manifest.started_at_ms)) as f64 / 1000.0,
        dir.display()
    )
}

/// A time in ms since the Unix epoch as RFC 3339 (UTC, milliseconds), or `-`.
pub fn format_time(ms: Option<u64>) -> String {
    match ms {
        Some(ms) => humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
        None => "-".into(),
    }
}

/// What the node said in its `begin` reply.
struct Begin {
    cluster: Uuid,
    node: String,
    role: String,
    sync: SyncLevel,
    start: Position,
}

async fn run(pair: &PairConfig, options: &BackupOptions) -> Result<Manifest, String> {
    let started_at_ms = crate::clock::now_ms();
    let mut stream = crate::admin::client::connect(pair, &options.node).await?;
    let request = AdminRequest::Backup { journal_from: options.journal_from };
    let envelope = Envelope { from: "admin".into(), epoch: 0, message: Message::Admin { request } };
    wire::write_frame(&mut stream, &Frame::Message(envelope)).await.map_err(|e| e.to_string())?;
    let node = &options.node;
    let mut progress = Progress::new(node);
    let mut begin: Option<Begin> = None;
    let mut store: Option<StoreFileWriter> = None;
    let mut store_done: Option<(u64, u64, Position)> = None;
    let mut journal: Option<Journal> = None;
    let mut copied = JournalCopy {
        dir: JOURNAL_DIR.into(),
        records: 0,
        first_lsn: None,
        last_lsn: None,
        first_time_ms: None,
        last_time_ms: None,
    };
    let (epoch, history) = loop {
        let frame = tokio::time::timeout(SILENCE_LIMIT, wire::read_frame(&mut stream))
            .await
            .map_err(|_| format!("{node} sent nothing for {}s", SILENCE_LIMIT.as_secs()))?
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{node} closed the connection before the backup ended"))?;
        match frame {
            Frame::Message(Envelope { message: Message::AdminReply { ok: false, body }, .. }) => {
                return Err(format!("{node} refused: {}", body["error"].as_str().unwrap_or("no reason given")));
            }
            Frame::Message(Envelope { message: Message::AdminReply { ok: true, body }, .. }) => {
                match body["backup"].as_str() {
                    Some("begin") => {
                        let parsed = parse_begin(&body)?;
                        progress.total_keys = parsed.start.key_count;
                        store =
                            Some(StoreFileWriter::create(&options.out.join(STORE_FILE)).map_err(|e| e.to_string())?);
                        let identity = JournalIdentity {
                            cluster: *parsed.cluster.as_bytes(),
                            node: parsed.node.clone(),
                            kind: JournalKind::Local,
                        };
                        let dir = options.out.join(JOURNAL_DIR);
                        journal = Some(
                            Journal::open(&dir, identity, JournalOptions::default()).map_err(|e| e.to_string())?.0,
                        );
                        begin = Some(parsed);
                    }
                    Some("scanned") => {
                        let end: Position = serde_json::from_value(body["end"].clone())
                            .map_err(|e| format!("{node} sent a bad end position: {e}"))?;
                        let writer = store.take().ok_or("the scan ended before it began")?;
                        let (pairs, bytes) = writer.finish().map_err(|e| e.to_string())?;
                        progress.scanned(pairs, bytes);
                        store_done = Some((pairs, bytes, end));
                    }
                    Some("end") => {
                        let epoch = body["epoch"].as_u64().unwrap_or(0);
                        let history: Vec<HistoryEntry> = serde_json::from_value(body["history"].clone())
                            .map_err(|e| format!("{node} sent a bad history: {e}"))?;
                        if body["records"].as_u64() != Some(copied.records) {
                            return Err(format!(
                                "{node} says it sent {} records; {} arrived",
                                body["records"], copied.records
                            ));
                        }
                        break (epoch, history);
                    }
                    other => return Err(format!("{node} sent an unexpected reply {other:?}")),
                }
            }
            Frame::Copy(bytes) => {
                let writer = store.as_mut().ok_or("pairs arrived outside the scan")?;
                let count = wire::decode_pairs(&bytes).map_err(|e| e.to_string())?.len() as u64;
                writer.chunk(&bytes, count).map_err(|e| e.to_string())?;
                progress.pairs(count, bytes.len() as u64);
            }
            Frame::Records { frames, .. } => {
                let journal = journal.as_ref().ok_or("records arrived before the backup began")?;
                let mut rest = frames.as_slice();
                while !rest.is_empty() {
                    let (record, used) = journal::format::decode_record(rest)
                        .map_err(|e| format!("{node} sent a record that does not decode: {e:?}"))?;
                    journal.append_frame(&rest[..used]).map_err(|e| e.to_string())?;
                    copied.first_lsn.get_or_insert(record.lsn);
                    copied.first_time_ms.get_or_insert(record.timestamp_ms);
                    copied.last_lsn = Some(record.lsn);
                    copied.last_time_ms = Some(record.timestamp_ms);
                    copied.records += 1;
                    rest = &rest[used..];
                }
                progress.records(copied.records);
            }
            other => return Err(format!("{node} sent an unexpected frame {other:?}")),
        }
    };
    let begin = begin.ok_or("the backup ended before it began")?;
    let (pairs, bytes, end) = store_done.ok_or("the backup ended before the scan did")?;
    let journal = journal.ok_or("no journal was opened")?;
    if let Some(last) = journal.last_lsn() {
        journal.sync_to(last).map_err(|e| e.to_string())?;
    }
    drop(journal);
    if end.applied_lsn > begin.start.applied_lsn && copied.last_lsn != Some(end.applied_lsn) {
        return Err(format!(
            "{node} sent records up to {:?}, but its copy is consistent only at LSN {}",
            copied.last_lsn, end.applied_lsn
        ));
    }
    let manifest = Manifest {
        format_version: MANIFEST_VERSION,
        kind: MANIFEST_KIND.into(),
        cluster: begin.cluster,
        node: begin.node,
        role: begin.role,
        sync: begin.sync,
        epoch,
        history,
        started_at_ms,
        finished_at_ms: crate::clock::now_ms(),
        store: StoreCopy { file: STORE_FILE.into(), scan_started_lsn: begin.start.applied_lsn, pairs, bytes },
        consistent_lsn: end.applied_lsn,
        digest: end.digest,
        key_count: end.key_count,
        journal: copied,
    };
    progress.done();
    write_manifest(&options.out, &manifest).map_err(|e| e.to_string())?;
    Ok(manifest)
}

fn parse_begin(body: &Value) -> Result<Begin, String> {
    let bad = |what: &str| format!("the node's backup reply has no valid {what}");
    Ok(Begin {
        cluster: serde_json::from_value(body["cluster"].clone()).map_err(|_| bad("cluster"))?,
        node: body["node"].as_str().ok_or_else(|| bad("node"))?.to_string(),
        role: body["role"].as_str().ok_or_else(|| bad("role"))?.to_string(),
        sync: serde_json::from_value(body["sync"].clone()).map_err(|_| bad("sync"))?,
        start: serde_json::from_value(body["start"].clone()).map_err(|_| bad("start"))?,
    })
}

/// Writes the manifest crash-safely: temporary file, fsync, rename, fsync of the directory.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), BackupError> {
    let path = dir.join(MANIFEST_FILE);
    let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
    let text = serde_json::to_string_pretty(manifest).unwrap_or_default();
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(text.as_bytes()).map_err(io(&tmp))?;
    file.write_all(b"\n").map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Progress lines on stderr, at most one a second.
struct Progress {
    node: String,
    started: Instant,
    last: Instant,
    total_keys: u64,
    pairs: u64,
    bytes: u64,
    records: u64,
}

impl Progress {
    fn new(node: &str) -> Progress {
        let now = Instant::now();
        Progress { node: node.into(), started: now, last: now, total_keys: 0, pairs: 0, bytes: 0, records: 0 }
    }

    fn due(&mut self) -> bool {
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            true
        } else {
            false
        }
    }

    fn pairs(&mut self, count: u64, bytes: u64) {
        self.pairs += count;
        self.bytes += bytes;
        if self.due() {
            let percent = (self.pairs * 100).checked_div(self.total_keys).unwrap_or(100);
            eprintln!(
                "  backup of {}: store {} of ~{} keys ({percent}%), {:.1} MB, {:.1} s",
                self.node,
                self.pairs,
                self.total_keys,
                self.bytes as f64 / 1e6,
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    fn scanned(&mut self, pairs: u64, bytes: u64) {
        eprintln!(
            "  backup of {}: store copied, {pairs} keys, {:.1} MB, {:.1} s",
            self.node,
            bytes as f64 / 1e6,
            self.started.elapsed().as_secs_f64()
        );
    }

    fn records(&mut self, records: u64) {
        self.records = records;
        if self.due() {
            eprintln!("  backup of {}: journal {records} records", self.node);
        }
    }

    fn done(&self) {
        eprintln!(
            "  backup of {}: journal {} records; done in {:.1} s",
            self.node,
            self.records,
            self.started.elapsed().as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_copy_reads_back_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        let batches: Vec<wire::Pairs> = vec![
            vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), vec![0, 1, 2])],
            vec![(b"c".to_vec(), b"3".to_vec())],
        ];
        let mut writer = StoreFileWriter::create(&path).unwrap();
        for batch in &batches {
            writer.chunk(&wire::encode_pairs(batch), batch.len() as u64).unwrap();
        }
        assert_eq!(writer.finish().unwrap().0, 3);
        let mut reader = StoreFileReader::open(&path).unwrap();
        let mut read = Vec::new();
        while let Some(chunk) = reader.next_chunk().unwrap() {
            read.push(chunk);
        }
        assert_eq!(read, batches);
        // A flipped byte inside the second chunk is named with the chunk's offset.
        let mut bytes = std::fs::read(&path).unwrap();
        let second = STORE_HEADER_LEN + 8 + wire::encode_pairs(&batches[0]).len();
        bytes[second + 9] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let mut reader = StoreFileReader::open(&path).unwrap();
        reader.next_chunk().unwrap();
        let err = reader.next_chunk().unwrap_err().to_string();
        assert!(err.contains(&format!("at offset {second}")) && err.contains("CRC"), "{err}");
        // Cut short: said so.
        std::fs::write(&path, &bytes[..second + 4]).unwrap();
        let mut reader = StoreFileReader::open(&path).unwrap();
        reader.next_chunk().unwrap();
        assert!(reader.next_chunk().unwrap_err().to_string().contains("cut short"));
    }
}
