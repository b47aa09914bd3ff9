//! The node's half of `hotpair backup`: streams a copy of its store and the journal records
//! that make the copy consistent, over an admin connection, while it goes on working.
//!
//! ## How the copy is made consistent without stopping anything
//! The store is scanned *fuzzily*, a slice of keys at a time with no lock held, while the
//! applier keeps applying (and on the primary, clients keep committing). What is sent:
//! 1. `begin`: the store's position S as the scan starts;
//! 2. the pairs, as [`Frame::Copy`] batches: each key's value as it was at some moment of the
//!    scan;
//! 3. `scanned`: the store's position E once the scan is over;
//! 4. the journal records from S (or from `journal_from`) to E, as [`Frame::Records`] batches,
//!    read from the node's two journals as one history;
//! 5. `end`: how many records were sent.
//!
//! Replaying S+1..E over the copy gives exactly the store at E: a key that no record of S+1..E
//! touches did not change during the scan, so the copy holds its value at E; a key that one
//! touches gets its value at E from the last such record, because a record carries the value
//! a key *has* after it (an after-image, never an increment). This is PostgreSQL's base backup
//! (a fuzzy copy of the files plus the WAL from the backup's start to its end), done at the
//! logical level. `restore` checks the result against the digest at E, which every record
//! carries: a copy that mixed in something else (a rejoin rewound the node during the scan)
//! cannot pass.
//!
//! Why not the full copy's way (`Store::copy_out` holds the store's writer lock for the whole
//! scan)? On a backup that stops applying for as long as the scan runs, and at sync level
//! `applied` every commit waits for the backup's applier: writes would stop. The fuzzy scan
//! costs one more pass over a few records at restore and stops nothing.
//!
//! ## Invariants
//! - Only what the node's store has applied is sent, so on a backup only records its primary
//!   confirmed durable (`replication`, "Overlapped fsyncs").
//! - A node whose history was cut or whose store went backwards during the backup (a rejoin
//!   ran) ends the stream with a refusal instead of `end`: the copy may mix two histories.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};

use super::Node;
use crate::replication::wire::{self, Envelope, Frame, Message};
use crate::storage::journal::{HistoryEntry, Lsn};
use crate::storage::meta::Role;
use crate::storage::store::Position;

/// Pairs read from the store per look (each look is a fresh read).
const SCAN_SLICE: usize = 1024;
/// A copy batch (or a records batch) is sent once it holds about this many bytes.
const BATCH_BYTES: usize = 1024 * 1024;

/// Serves one backup on an admin connection (the admin asked `{"op": "backup"}`).
pub async fn serve<S>(node: Arc<Node>, mut stream: S, journal_from: Option<Lsn>) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match stream_backup(&node, &mut stream, journal_from).await {
        Ok(()) => Ok(()),
        Err(reason) => {
            let _ = reply(&node, &mut stream, false, json!({ "error": reason })).await;
            Err(format!("backup: {reason}"))
        }
    }
}

async fn reply<S: AsyncWrite + Unpin>(node: &Node, stream: &mut S, ok: bool, body: Value) -> Result<(), String> {
    let envelope =
        Envelope { from: node.name().to_string(), epoch: node.meta().epoch, message: Message::AdminReply { ok, body } };
    wire::write_frame(stream, &Frame::Message(envelope)).await.map_err(|e| e.to_string())
}

async fn stream_backup<S>(node: &Arc<Node>, stream: &mut S, journal_from: Option<Lsn>) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let role = node.role();
    if !matches!(role, Role::Primary | Role::Backup | Role::Draining) {
        return Err(format!(
            "{} is {}: its store may hold a tail its pair does not; back up the primary or a following backup",
            node.name(),
            role.name()
        ));
    }
    let history = node.meta().history;
    let start = node.store.position();
    tracing::info!(lsn = start.applied_lsn, keys = start.key_count, "backup: scanning the store");
    let begin = json!({
        "backup": "begin",
        "cluster": node.pair().cluster,
        "node": node.name(),
        "role": role.name(),
        "epoch": node.meta().epoch,
        "history": history,
        "sync": node.pair().sync,
        "start": start,
    });
    reply(node, stream, true, begin).await?;

    let pairs = send_scan(node, stream).await?;
    let end = node.store.position();
    check_unchanged(node, &history, start, end)?;
    reply(node, stream, true, json!({ "backup": "scanned", "pairs": pairs, "end": end })).await?;

    // From S itself when the journals still hold it: its timestamp dates the copy.
    let from = journal_from.unwrap_or(start.applied_lsn).min(start.applied_lsn).max(1);
    let (records, first, last) = send_journal(node, stream, from, end.applied_lsn).await?;
    check_unchanged(node, &history, start, node.store.position())?;
    let meta = node.meta();
    let done = json!({
        "backup": "end",
        "records": records,
        "first_lsn": first,
        "last_lsn": last,
        "epoch": meta.epoch,
        "history": meta.history,
    });
    reply(node, stream, true, done).await?;
    tracing::info!(pairs, records, lsn = end.applied_lsn, "backup sent");
    Ok(())
}

/// A rejoin (rewind, truncation, full copy) replaces a history instead of extending it.
fn check_unchanged(node: &Node, before: &[HistoryEntry], start: Position, now: Position) -> Result<(), String> {
    let history = node.meta().history;
    if now.applied_lsn < start.applied_lsn || !history.starts_with(before) {
        return Err(format!(
            "{} was rewound or rebuilt during the backup (a rejoin ran): the copy may mix two histories; run the backup again",
            node.name()
        ));
    }
    Ok(())
}

/// Scans the store a slice at a time on a blocking thread and sends the pairs; returns how many.
async fn send_scan<S: AsyncWrite + Unpin>(node: &Arc<Node>, stream: &mut S) -> Result<u64, String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<(Vec<u8>, Vec<u8>)>, String>>(4);
    let store = node.store.clone();
    let scan = tokio::task::spawn_blocking(move || {
        let mut after: Option<Vec<u8>> = None;
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut applied = store.position().applied_lsn;
        loop {
            // A store that goes backwards is being rewound (a rejoin): the copy would mix the
            // tail it undoes with what follows. Sampled per slice; `restore`'s digest check at
            // the consistent point catches a rewind that fell between two samples.
            let now = store.position().applied_lsn;
            if now < applied {
                let _ = tx.blocking_send(Err(format!(
                    "the store went back from LSN {applied} to {now} during the scan (a rejoin rewound it); run the backup again"
                )));
                return;
            }
            applied = now;
            let slice = match store.scan_after(after.as_deref(), SCAN_SLICE) {
                Ok(slice) => slice,
                Err(err) => {
                    let _ = tx.blocking_send(Err(err.to_string()));
                    return;
                }
            };
            let finished = slice.len() < SCAN_SLICE;
            after = slice.last().map(|(key, _)| key.clone()).or(after);
            for pair in slice {
                bytes += pair.0.len() + pair.1.len() + 8;
                batch.push(pair);
            }
            if bytes >= BATCH_BYTES || (finished && !batch.is_empty()) {
                bytes = 0;
                if tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
                    return;
                }
            }
            if finished {
                return;
            }
        }
    });
    let mut pairs = 0u64;
    while let Some(batch) = rx.recv().await {
        let batch = batch?;
        pairs += batch.len() as u64;
        wire::write_frame(stream, &Frame::Copy(wire::encode_pairs(&batch))).await.map_err(|e| e.to_string())?;
    }
    scan.await.map_err(|e| format!("the scan stopped: {e}"))?;
    Ok(pairs)
}

/// Sends the records `from..=until` from whichever of the node's journals holds each (a record
/// the journals no longer hold below S is skipped: the copy does not need it). Returns the
/// count and the first and last LSN sent.
async fn send_journal<S: AsyncWrite + Unpin>(
    node: &Arc<Node>,
    stream: &mut S,
    from: Lsn,
    until: Lsn,
) -> Result<(u64, Option<Lsn>, Option<Lsn>), String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, String>>(4);
    let reader = node.clone();
    let read = tokio::task::spawn_blocking(move || {
        if let Err(reason) = read_records(&reader, from, until, &tx) {
            let _ = tx.blocking_send(Err(reason));
        }
    });
    let (mut records, mut first, mut last) = (0u64, None, None);
    while let Some(frames) = rx.recv().await {
        let frames = frames?;
        let mut rest = frames.as_slice();
        while !rest.is_empty() {
            let (record, used) = crate::storage::journal::format::decode_record(rest)
                .map_err(|e| format!("a journal record read back does not decode: {e:?}"))?;
            first.get_or_insert(record.lsn);
            last = Some(record.lsn);
            records += 1;
            rest = &rest[used..];
        }
        let batch = Frame::Records { durable: until, head: until, frames };
        wire::write_frame(stream, &batch).await.map_err(|e| e.to_string())?;
    }
    read.await.map_err(|e| format!("the journal read stopped: {e}"))?;
    Ok((records, first, last))
}

fn read_records(
    node: &Node,
    from: Lsn,
    until: Lsn,
    tx: &tokio::sync::mpsc::Sender<Result<Vec<u8>, String>>,
) -> Result<(), String> {
    let start = node.store.position().applied_lsn;
    let mut next = from;
    let mut batch = Vec::new();
    while next <= until {
        let journal = node.journal_for(next);
        let reader = match journal.read_from(next) {
            Ok(reader) => reader,
            // Older than S and gone (a node built by a full copy): S+1 on is what matters.
            Err(crate::storage::journal::JournalError::RangeGone { .. }) if next <= start => {
                next = start + 1;
                continue;
            }
            Err(err) => return Err(err.to_string()),
        };
        let before = next;
        for entry in reader {
            let entry = entry.map_err(|e| e.to_string())?;
            if entry.record.lsn != next || next > until {
                break;
            }
            batch.extend_from_slice(&entry.frame);
            next += 1;
            if batch.len() >= BATCH_BYTES && tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
                return Ok(());
            }
        }
        if next == before {
            if next <= start {
                next = start + 1;
                continue;
            }
            return Err(format!("record {next} is in neither of {}'s journals", node.name()));
        }
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(Ok(batch));
    }
    Ok(())
}
