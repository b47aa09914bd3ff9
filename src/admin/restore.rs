//! `hotpair restore BACKUP --dir NEWDIR --nodes a=…,b=… [--to-lsn N | --to-time T]`: a **new**
//! pair holding the data as of a point in the old pair's history.
//!
//! ## Job
//! The recovery from a logical mistake (a `FLUSHDB`, a bad deploy): the old pair faithfully
//! replicated the mistake, so the data must come from before it. Restore
//! 1. finds the target: an LSN, the last record stamped at or before a time, or (neither given)
//!    the last record the journals hold;
//! 2. makes a new pair in NEWDIR exactly as `hotpair init` does — a new cluster id, a new CA and
//!    new certificates — so the new pair and the old one can never talk to each other: each
//!    refuses the other's certificates at the TLS handshake;
//! 3. builds the first node's store: the backup's store copy, then the journal records replayed
//!    up to the target (the backup's own, and any journal directories given with `--journal`:
//!    a node's data directory, another backup, an archive of trimmed segments). A target before
//!    the backup's consistent point is reached from an empty store, when the journals given
//!    reach back to LSN 1;
//! 4. checks the result: the store's digest at the target must be the one the old primary wrote
//!    into that record (digests are checked record by record after the backup's consistent point);
//! 5. seeds the second node with the same store (a copy, checked the same way), and starts the
//!    new pair's history right after the target: the first node's journal opens with an
//!    `epoch-start` record at target + 1, so LSNs go on from the old pair's (its LSN N is the
//!    old pair's LSN N) and the second node follows from there like any backup.
//!
//! ## Invariants
//! - NEWDIR must be missing or empty; a restore that fails removes everything it wrote (exit 1,
//!   nothing changed). Nothing of the old pair is touched: the backup and journal directories are
//!   only read.
//! - The restored store is exactly the old pair's store at the target LSN, or restore fails: the
//!   digest decides.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::admin::backup::{format_time, BackupError, Manifest, StoreFileReader};
use crate::admin::init::NodeSpecs;
use crate::config::{PairConfig, SyncLevel};
use crate::storage::digest::Digest;
use crate::storage::journal::merged::{Merged, Source};
use crate::storage::journal::{
    HistoryEntry, Journal, JournalIdentity, JournalKind, JournalOptions, Lsn, Record, RecordBody,
};
use crate::storage::meta::NodeMeta;
use crate::storage::store::{Position, Store};

/// Records applied to the store per batch (one sled batch) once digests are checked per record.
const REPLAY_BATCH: usize = 1000;
/// The note restore leaves in NEWDIR: where the new pair's data came from.
pub const RESTORED_FILE: &str = "restored.json";

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error("{0}")]
    Refused(String),
    #[error("restore failed, NEWDIR {} removed again: {reason}", dir.display())]
    Failed { dir: PathBuf, reason: String },
}

/// Where to stop replaying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// As far as the journals reach.
    Latest,
    Lsn(Lsn),
    /// The last record stamped at or before this time (ms since the Unix epoch).
    Time(u64),
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub backup: PathBuf,
    pub dir: PathBuf,
    pub nodes: NodeSpecs,
    pub target: Target,
    /// More journal directories to replay from (node data directories, backups, archives).
    pub journals: Vec<PathBuf>,
    /// The new pair's sync level (default: the old pair's, from the manifest).
    pub sync: Option<SyncLevel>,
    pub json: bool,
}

/// What a restore made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Restored {
    pub pair_file: PathBuf,
    pub cluster: uuid::Uuid,
    pub old_cluster: uuid::Uuid,
    pub lsn: Lsn,
    pub lsn_time_ms: Option<u64>,
    pub digest: Digest,
    pub keys: u64,
    /// `copy` (the backup's store copy plus the journal) or `empty` (the journal from LSN 1).
    pub from: String,
    pub replayed: u64,
}

/// `hotpair restore`: prints the outcome, returns the exit code.
pub fn main(options: &RestoreOptions) -> Result<u8, crate::Error> {
    let restored = restore(options)?;
    if options.json {
        println!("{}", serde_json::to_string_pretty(&restored).unwrap_or_default());
    } else {
        let first = &options.nodes.0[0].name;
        let second = &options.nodes.0[1].name;
        println!(
            "restored cluster {} at LSN {} ({}) into a new pair {} in {}\n  {} keys, digest {}; built from the {} plus {} journal record(s), checked against the old primary's digest\n  {first} and {second} hold the same store; {first} starts as primary, its journal going on at LSN {}\nnext: hotpair run {first} --pair {}; hotpair run {second} --pair {}",
            restored.old_cluster,
            restored.lsn,
            format_time(restored.lsn_time_ms),
            restored.cluster,
            options.dir.display(),
            restored.keys,
            restored.digest,
            if restored.from == "copy" { "backup's store copy" } else { "empty store" },
            restored.replayed,
            restored.lsn + 1,
            restored.pair_file.display(),
            restored.pair_file.display()
        );
    }
    Ok(0)
}

/// The restore itself (see the module doc).
pub fn restore(options: &RestoreOptions) -> Result<Restored, RestoreError> {
    let manifest = Manifest::load(&options.backup)?;
    let sources = sources(options, &manifest)?;
    let survey = survey(&sources, options.target)?;
    let target = match options.target {
        Target::Lsn(lsn) => lsn,
        Target::Latest => survey.last.unwrap_or(manifest.consistent_lsn).max(manifest.consistent_lsn),
        Target::Time(ms) => survey.at_time.ok_or_else(|| {
            RestoreError::Refused(format!(
                "no record at or before {} in these journals (they begin at LSN {}); give an older backup, or journals that reach further back with --journal",
                format_time(Some(ms)),
                survey.first.map_or("-".into(), |l| l.to_string())
            ))
        })?,
    };
    let base = plan(&manifest, &survey, target)?;
    let created = prepare_dir(&options.dir)?;
    match build(options, &manifest, &sources, target, base) {
        Ok(restored) => Ok(restored),
        Err(reason) => {
            if created {
                let _ = std::fs::remove_dir_all(&options.dir);
            } else if let Ok(entries) = std::fs::read_dir(&options.dir) {
                for entry in entries.flatten() {
                    let path = entry.path();
                    let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                }
            }
            Err(RestoreError::Failed { dir: options.dir.clone(), reason })
        }
    }
}

/// The backup's journal and every `--journal` directory, each checked to be of the backup's
/// cluster.
fn sources(options: &RestoreOptions, manifest: &Manifest) -> Result<Vec<Source>, RestoreError> {
    let mut sources = vec![Source::new("backup", options.backup.join(&manifest.journal.dir))];
    for path in &options.journals {
        if !path.is_dir() {
            return Err(RestoreError::Refused(format!(
                "--journal {} is not a directory (give a node's data directory, a backup, or a journal directory)",
                path.display()
            )));
        }
        for (label, dir) in crate::admin::journal_tools::journal_dirs(path) {
            let label = if label == path.display().to_string() { label } else { format!("{}:{label}", path.display()) };
            sources.push(Source::new(label, dir));
        }
    }
    for source in &sources {
        let segments =
            crate::storage::journal::segment::list(&source.dir).map_err(|e| RestoreError::Refused(e.to_string()))?;
        if let Some((_, path)) = segments.first() {
            let header =
                crate::storage::journal::reader::read_header(path).map_err(|e| RestoreError::Refused(e.to_string()))?;
            let cluster = uuid::Uuid::from_bytes(header.cluster);
            if cluster != manifest.cluster {
                return Err(RestoreError::Refused(format!(
                    "{} holds journals of cluster {cluster}, but the backup is of cluster {}",
                    source.dir.display(),
                    manifest.cluster
                )));
            }
        }
    }
    Ok(sources)
}

/// What the journals hold, read once before anything is written.
struct Survey {
    first: Option<Lsn>,
    last: Option<Lsn>,
    at_time: Option<Lsn>,
}

fn survey(sources: &[Source], target: Target) -> Result<Survey, RestoreError> {
    let time = match target {
        Target::Time(ms) => ms,
        _ => u64::MAX,
    };
    let point =
        crate::admin::journal_tools::find_time(sources, time).map_err(|e| RestoreError::Refused(e.to_string()))?;
    Ok(Survey { first: point.first_lsn, last: point.last_lsn, at_time: point.lsn })
}

/// Where the store starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    /// The backup's copy, consistent once replayed to the manifest's `consistent_lsn`.
    Copy,
    /// An empty store, replayed from LSN 1.
    Empty,
}

fn plan(manifest: &Manifest, survey: &Survey, target: Lsn) -> Result<Base, RestoreError> {
    let last = survey.last.unwrap_or(0);
    if target > last.max(manifest.consistent_lsn) {
        return Err(RestoreError::Refused(format!(
            "LSN {target} is past the last record these journals hold (LSN {last}); give the journals that reach it with --journal (a node's data directory, say)"
        )));
    }
    if target >= manifest.consistent_lsn {
        return Ok(Base::Copy);
    }
    if survey.first == Some(1) {
        return Ok(Base::Empty);
    }
    Err(RestoreError::Refused(format!(
        "LSN {target} is before this backup's consistent point (LSN {}), and the journals given begin at LSN {}: \
         give an older backup, or journals from LSN 1 (a node's data directory, trimmed segments' archive) with --journal",
        manifest.consistent_lsn,
        survey.first.map_or("-".into(), |l| l.to_string())
    )))
}

fn prepare_dir(dir: &Path) -> Result<bool, RestoreError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(RestoreError::Refused(format!(
                    "{} is not empty; restore makes a new pair in a new or empty directory",
                    dir.display()
                )));
            }
            Ok(false)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(err) => Err(RestoreError::Refused(format!("{}: {err}", dir.display()))),
    }
}

fn build(
    options: &RestoreOptions,
    manifest: &Manifest,
    sources: &[Source],
    target: Lsn,
    base: Base,
) -> Result<Restored, String> {
    let sync = options.sync.unwrap_or(manifest.sync);
    let report = crate::admin::init::init(&options.dir, &options.nodes, sync).map_err(|e| e.to_string())?;
    let pair = report.pair;
    let (first, second) = (&pair.nodes[0], &pair.nodes[1]);
    let store = Store::open(&first.dir.join("store")).map_err(|e| e.to_string())?;
    let (replayed, time_ms) = match base {
        Base::Copy => {
            load_copy(&store, &options.backup.join(&manifest.store.file), manifest.store.scan_started_lsn)?;
            replay(&store, sources, manifest.store.scan_started_lsn, target, Some(manifest))?
        }
        Base::Empty => replay(&store, sources, 0, target, None)?,
    };
    // Nothing replayed past the copy: the copy's last record dates it.
    let time_ms = time_ms.or(manifest.journal.last_time_ms.filter(|_| manifest.journal.last_lsn == Some(target)));
    let position = store.position();
    if position.applied_lsn != target {
        return Err(format!("the journals end at LSN {} before the target LSN {target}", position.applied_lsn));
    }
    store.flush().map_err(|e| e.to_string())?;
    seed(&store, &second.dir.join("store"), position)?;
    start_history(&pair, position, target)?;
    let restored = Restored {
        pair_file: pair.path.clone(),
        cluster: pair.cluster,
        old_cluster: manifest.cluster,
        lsn: target,
        lsn_time_ms: time_ms,
        digest: position.digest,
        keys: position.key_count,
        from: if base == Base::Copy { "copy".into() } else { "empty".into() },
        replayed,
    };
    let note = json!({
        "restored": restored,
        "backup": std::path::absolute(&options.backup).unwrap_or(options.backup.clone()),
        "backup_node": manifest.node,
        "backup_consistent_lsn": manifest.consistent_lsn,
        "journals": sources.iter().map(|s| std::path::absolute(&s.dir).unwrap_or(s.dir.clone())).collect::<Vec<_>>(),
        "at_ms": crate::clock::now_ms(),
    });
    let note_path = options.dir.join(RESTORED_FILE);
    std::fs::write(&note_path, format!("{}\n", serde_json::to_string_pretty(&note).unwrap_or_default()))
        .map_err(|e| format!("{}: {e}", note_path.display()))?;
    Ok(restored)
}

/// Loads the backup's store copy and records it at `lsn` with the digest of what was loaded
/// (recomputed from the store by `finish_load`, which so also checks what sled kept).
fn load_copy(store: &Store, path: &Path, lsn: Lsn) -> Result<(), String> {
    let mut reader = StoreFileReader::open(path).map_err(|e| e.to_string())?;
    let mut digest = Digest::EMPTY;
    let mut keys = 0u64;
    while let Some(pairs) = reader.next_chunk().map_err(|e| e.to_string())? {
        for (key, value) in &pairs {
            digest = digest.with_pair(key, value);
        }
        keys += pairs.len() as u64;
        store.load(&pairs).map_err(|e| e.to_string())?;
    }
    store.finish_load(Position { applied_lsn: lsn, digest, key_count: keys })
}

/// Replays the merged journals from `after + 1` to `target`. With `manifest` (a fuzzy copy
/// below), records up to its consistent point are applied without digest checks, then the
/// store must have the manifest's digest; every record after is checked. Returns the records
/// applied and the target record's timestamp.
fn replay(
    store: &Store,
    sources: &[Source],
    after: Lsn,
    target: Lsn,
    manifest: Option<&Manifest>,
) -> Result<(u64, Option<u64>), String> {
    let mut merged = Merged::open(sources, after + 1, target).map_err(|e| e.to_string())?;
    let consistent = manifest.map_or(after, |m| m.consistent_lsn);
    let mut batch: Vec<Record> = Vec::new();
    let mut replayed = 0u64;
    let mut time_ms = None;
    let mut checked = manifest.is_none() || consistent <= after;
    if manifest.is_some() && consistent <= after {
        // Nothing was applied during the scan: the copy is consistent as it is.
        check_consistent(store, manifest)?;
    }
    for entry in merged.by_ref() {
        let record = entry.map_err(|e| e.to_string())?.entry.record;
        time_ms = Some(record.timestamp_ms);
        replayed += 1;
        if !checked {
            // The copy is fuzzy until the consistent point: values may be newer than the
            // record's digest expects, so only the end of this stretch is checked.
            store.apply(&record).map_err(|e| format!("applying LSN {}: {e}", record.lsn))?;
            if record.lsn == consistent {
                check_consistent(store, manifest)?;
                checked = true;
            }
            continue;
        }
        batch.push(record);
        if batch.len() >= REPLAY_BATCH {
            apply_checked(store, &mut batch)?;
        }
    }
    apply_checked(store, &mut batch)?;
    if !checked {
        return Err(format!(
            "the journals end at LSN {} before the backup's consistent point (LSN {consistent})",
            store.position().applied_lsn
        ));
    }
    Ok((replayed, time_ms))
}

fn check_consistent(store: &Store, manifest: Option<&Manifest>) -> Result<(), String> {
    let Some(manifest) = manifest else { return Ok(()) };
    let position = store.position();
    if position.applied_lsn == manifest.consistent_lsn
        && (position.digest != manifest.digest || position.key_count != manifest.key_count)
    {
        return Err(format!(
            "the store copy plus the journal gives digest {} ({} keys) at LSN {}, but the node had {} ({} keys): the backup is not usable",
            position.digest, position.key_count, manifest.consistent_lsn, manifest.digest, manifest.key_count
        ));
    }
    Ok(())
}

fn apply_checked(store: &Store, batch: &mut Vec<Record>) -> Result<(), String> {
    if batch.is_empty() {
        return Ok(());
    }
    let run = store.apply_many(batch).map_err(|e| e.to_string())?;
    batch.clear();
    if let Some(mismatch) = run.mismatch {
        return Err(format!(
            "after LSN {} the store's digest is {}, but the record says {}: the journals and the copy disagree",
            mismatch.lsn, mismatch.store, mismatch.record
        ));
    }
    Ok(())
}

/// Gives the second node a copy of the restored store, checked against its position.
fn seed(store: &Store, dir: &Path, position: Position) -> Result<(), String> {
    let copy = Store::open(dir).map_err(|e| e.to_string())?;
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    for pair in store.iter() {
        let pair = pair.map_err(|e| e.to_string())?;
        bytes += pair.0.len() + pair.1.len();
        batch.push(pair);
        if bytes >= 4 << 20 {
            copy.load(&batch).map_err(|e| e.to_string())?;
            batch.clear();
            bytes = 0;
        }
    }
    copy.load(&batch).map_err(|e| e.to_string())?;
    copy.finish_load(position)
}

/// The new pair's history begins after the target: both nodes' metadata say epoch 1 from
/// target + 1 on the first node, whose journal opens with that `epoch-start` record.
fn start_history(pair: &PairConfig, position: Position, target: Lsn) -> Result<(), String> {
    let first = &pair.nodes[0];
    let history = vec![HistoryEntry { epoch: 1, first_lsn: target + 1, primary: first.name.clone() }];
    for node in &pair.nodes {
        let mut meta = NodeMeta::load(&node.dir).map_err(|e| e.to_string())?;
        meta.history = history.clone();
        meta.save(&node.dir).map_err(|e| e.to_string())?;
    }
    if target == 0 {
        // Nothing restored: a fresh pair, whose first node writes its own epoch-start.
        return Ok(());
    }
    let identity =
        JournalIdentity { cluster: *pair.cluster.as_bytes(), node: first.name.clone(), kind: JournalKind::Local };
    let dir = crate::node::journal_dir(&first.dir, JournalKind::Local);
    let (journal, _) = Journal::open(&dir, identity, JournalOptions::default()).map_err(|e| e.to_string())?;
    let record = Record {
        lsn: target + 1,
        epoch: 1,
        timestamp_ms: crate::clock::now_ms(),
        digest_after: position.digest,
        body: RecordBody::EpochStart { history },
    };
    journal.append_durable(&record).map_err(|e| e.to_string())?;
    Ok(())
}
