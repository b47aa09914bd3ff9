//! The full copy: a node whose needed journal range is gone gets the primary's whole store
//! (`rejoin --allow-full-copy`), then catches up from the journal as a backup.
//!
//! ## How a copy goes
//! The receiver opens a control connection and asks with a [`Message::CopyRequest`]. The
//! sender (the primary) answers [`Message::CopyBegin`] with its store's position when the scan
//! starts (LSN `from`), then streams its store in key order, a few megabytes per
//! [`Frame::Copy`], **without stopping its writer**: the primary goes on applying commits while
//! it scans, so a pair read late may be newer than `from`. That is why the scan is followed by
//! the records after `from` up to the position the store had when the scan ended (`to`), read
//! from the journal ([`Frame::Records`]), and [`Message::CopyEnd`] with the position at `to`.
//! The receiver redoes those records over the pairs with their after-images: every key ends
//! as the last record in `(from, to]` that wrote it left it, or, if none did, as it was all
//! along — which is the store at `to`. The receiver's digest and key count are kept from the
//! values it actually stores and replaces, and the copy is refused unless they equal the
//! sender's at `to`.
//!
//! Reading, shipping and writing overlap: the sender scans on a blocking thread while its
//! async task writes the previous batch to the socket, and the receiver writes each batch to
//! sled on a thread of its own while the next one arrives. The receiver writes copied pairs
//! without looking anything up: its store was empty, and pairs come in key order, each after
//! the last one stored.
//!
//! ## Resuming
//! With every batch of pairs or records, the receiver saves in the same sled batch where the
//! copy stands ([`CopyCheckpoint`]: `from`, the last key stored, the last record redone, and
//! the digest and counts of what is stored). A copy cut off — either node killed, the link
//! lost — resumes when `rejoin --allow-full-copy` runs again: the receiver asks for the pairs
//! after its last key (or, once records are being redone, only for the records after the last
//! one), and the sender scans from there and sends every record after `from`. It needs those
//! records still in its journal; if they are gone, it refuses and the copy starts over.
//!
//! A copy request says, like a hello, that the peer is at an epoch not above the sender's
//! (it is refused otherwise): a primary restarted while its backup is being rebuilt takes that
//! as the confirmation it waits for before taking writes, and writes go on during the copy.
//!
//! ## Invariants
//! - The receiver's store never claims a position (applied LSN) until the whole copy is in
//!   and checked; until then a node restarted mid-copy is still rejoining and follows nobody,
//!   and a rejoin without `--allow-full-copy` is refused.
//! - The primary keeps taking and applying writes throughout; the copy costs it CPU for the
//!   scan and disk reads for the records, nothing else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};

use super::Node;
use crate::replication::wire::{self, CopyResume, Envelope, Frame, Message};
use crate::storage::journal::{Lsn, Record};
use crate::storage::store::{CopyCheckpoint, Position, StoredPair};

/// About the bytes of pairs per copy frame: large enough that per-frame costs vanish, small
/// enough that three in flight stay a few megabytes.
pub const COPY_BATCH_BYTES: usize = 4 << 20;
/// Keys read from the store per scan step.
const SCAN_STEP_KEYS: usize = 4096;
/// Batches in flight between the scanning thread and the socket, and between the socket and
/// the thread writing to sled.
const QUEUED_BATCHES: usize = 3;
/// A receiver that hears nothing for this long gives up (the copy resumes on the next rejoin).
const SILENCE: Duration = Duration::from_secs(30);

/// What the receiving thread is handed, in order.
enum Incoming {
    Pairs(Vec<StoredPair>),
    Records(Vec<Record>),
}

/// Sending side (the primary): answers a copy request on `stream`.
pub async fn send<S>(node: Arc<Node>, mut stream: S, resume: Option<CopyResume>) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if node.pipeline().is_none() {
        return Err("a full copy was asked of a node that is not the primary".into());
    }
    let envelope = |message| Envelope { from: node.name().to_string(), epoch: node.meta().epoch, message };
    let start = node.store.settled_position();
    let from = resume.as_ref().map_or(start.applied_lsn, |r| r.from_lsn);
    if let Some(resume) = &resume {
        let first = super::primitives::first_available(&node)?;
        let reason = if resume.from_lsn > start.applied_lsn {
            // Not this store's past (a failover since?): the pairs held may be from elsewhere.
            Some(format!(
                "cannot resume the copy: it began at LSN {}, past this store's {}; start over",
                resume.from_lsn, start.applied_lsn
            ))
        } else if resume.redo_lsn < start.applied_lsn && first > resume.redo_lsn + 1 {
            Some(format!(
                "cannot resume the copy: it needs the records after LSN {}, and the journal starts at {first}; start over",
                resume.redo_lsn
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            let refused = Message::Refused { reason: reason.clone(), last_lsn: None, leader: None };
            let _ = wire::write_frame(&mut stream, &Frame::Message(envelope(refused))).await;
            return Err(reason);
        }
    }
    // The copy replaces whatever the peer held; the admin allowed it (rejoin --allow-full-copy).
    node.forget_peer_position().map_err(|e| e.to_string())?;
    let begin = Message::CopyBegin { position: Position { applied_lsn: from, ..start }, history: node.meta().history };
    wire::write_frame(&mut stream, &Frame::Message(envelope(begin))).await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    let scan_from = match &resume {
        None => Some(None),
        Some(CopyResume { after_key, redo_lsn, from_lsn, .. }) if redo_lsn == from_lsn => Some(after_key.clone()),
        Some(_) => None, // the scan was over: only records
    };
    let mut pairs = 0u64;
    if let Some(after) = scan_from {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<StoredPair>>(QUEUED_BATCHES);
        let store = node.store.clone();
        let scan = tokio::task::spawn_blocking(move || scan(&store, after, |batch| tx.blocking_send(batch).is_ok()));
        while let Some(batch) = rx.recv().await {
            pairs += batch.len() as u64;
            wire::write_frame(&mut stream, &Frame::Copy(wire::encode_pairs(&batch)))
                .await
                .map_err(|e| e.to_string())?;
        }
        scan.await.map_err(|e| e.to_string())??;
    }
    let end = node.store.settled_position();
    let redo_from = resume.as_ref().map_or(from, |r| r.redo_lsn.max(from));
    let records = send_records(&node, &mut stream, redo_from, end.applied_lsn).await?;
    let done = Message::CopyEnd { pairs, position: Some(end) };
    wire::write_frame(&mut stream, &Frame::Message(envelope(done))).await.map_err(|e| e.to_string())?;
    // The receiver closes once it has the end: closing first could cut frames still in flight.
    let _ = tokio::time::timeout(SILENCE, wire::read_frame(&mut stream)).await;
    tracing::info!(
        pairs,
        records,
        from,
        to = end.applied_lsn,
        ms = started.elapsed().as_millis() as u64,
        "full copy sent"
    );
    Ok(())
}

/// Reads the store in key order after `after`, handing `send` batches of about
/// [`COPY_BATCH_BYTES`]; stops early when `send` returns false.
fn scan(
    store: &crate::storage::store::Store,
    mut after: Option<Vec<u8>>,
    mut send: impl FnMut(Vec<StoredPair>) -> bool,
) -> Result<(), String> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    loop {
        let step = store.scan_after(after.as_deref(), SCAN_STEP_KEYS).map_err(|e| e.to_string())?;
        let last_step = step.len() < SCAN_STEP_KEYS;
        after = step.last().map(|(key, _)| key.clone()).or(after);
        for pair in step {
            bytes += pair.0.len() + pair.1.len() + 8;
            batch.push(pair);
            if bytes >= COPY_BATCH_BYTES {
                if !send(std::mem::take(&mut batch)) {
                    return Ok(());
                }
                bytes = 0;
            }
        }
        if last_step {
            break;
        }
    }
    if !batch.is_empty() {
        send(batch);
    }
    Ok(())
}

/// Sends the records `(after, until]` from the journals, in [`Frame::Records`] batches.
async fn send_records<S>(node: &Arc<Node>, stream: &mut S, after: Lsn, until: Lsn) -> Result<u64, String>
where
    S: AsyncWrite + Unpin,
{
    let mut next = after + 1;
    while next <= until {
        let reader = node.clone();
        let from = next;
        let (frames, last) = tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, Lsn), String> {
            let mut frames = Vec::new();
            let mut last = from - 1;
            for entry in reader.journal_for(from).read_from(from).map_err(|e| e.to_string())? {
                let entry = entry.map_err(|e| e.to_string())?;
                if entry.record.lsn != last + 1 || entry.record.lsn > until || frames.len() >= wire::BATCH_BYTES {
                    break;
                }
                frames.extend_from_slice(&entry.frame);
                last = entry.record.lsn;
            }
            Ok((frames, last))
        })
        .await
        .map_err(|e| e.to_string())??;
        if last < next {
            return Err(format!("the journals do not hold record {next}, needed to finish the copy"));
        }
        wire::write_frame(stream, &Frame::Records { durable: until, head: until, frames })
            .await
            .map_err(|e| e.to_string())?;
        next = last + 1;
    }
    Ok(until.saturating_sub(after))
}

/// Receiving side: asks the primary for its store (or the rest of a cut-off copy, when the
/// store holds a checkpoint) and writes it. On success the store is at the primary's position
/// at the end of its scan, checked; catch-up goes on from the next LSN.
pub async fn receive(node: &Arc<Node>) -> Result<(), String> {
    let checkpoint = node.store.copy_checkpoint().map_err(|e| e.to_string())?;
    match attempt(node, checkpoint.clone()).await {
        Err(Retry::FromScratch(reason)) if checkpoint.is_some() => {
            tracing::warn!(%reason, "full copy: cannot resume; starting over");
            attempt(node, None).await.map_err(Retry::into_reason)
        }
        other => other.map_err(Retry::into_reason),
    }
}

enum Retry {
    /// The sender cannot resume this copy; a fresh one may work.
    FromScratch(String),
    Failed(String),
}

impl Retry {
    fn into_reason(self) -> String {
        match self {
            Retry::FromScratch(reason) | Retry::Failed(reason) => reason,
        }
    }
}

async fn attempt(node: &Arc<Node>, checkpoint: Option<CopyCheckpoint>) -> Result<(), Retry> {
    let failed = |e: String| Retry::Failed(format!("full copy: {e}"));
    let connector = tokio_rustls::TlsConnector::from(
        crate::tls::node_client_config(&node.pair(), node.name()).map_err(|e| failed(e.to_string()))?,
    );
    let mut stream = super::follow::connect(node, &connector).await.map_err(failed)?;
    let resume = checkpoint.as_ref().map(|c| CopyResume {
        from_lsn: c.from_lsn,
        after_key: c.after_key.clone(),
        redo_lsn: c.redo_lsn,
    });
    let meta = node.meta();
    let request = Message::CopyRequest { cluster: node.pair().cluster, incarnation: meta.incarnation, resume };
    let envelope = Envelope { from: node.name().to_string(), epoch: meta.epoch, message: request };
    wire::write_frame(&mut stream, &Frame::Message(envelope)).await.map_err(|e| failed(e.to_string()))?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Incoming>(QUEUED_BATCHES);
    let mut writer: Option<tokio::task::JoinHandle<Result<CopyCheckpoint, String>>> = None;
    let started = Instant::now();
    let mut rx = Some(rx);
    let mut start = checkpoint;
    let received = receive_frames(node, &mut stream, &tx, &mut writer, &mut rx, &mut start).await;
    drop(tx);
    // The writer finishes what was queued before this attempt ends, whatever its outcome: a
    // later attempt must not find it still writing.
    let written = match writer {
        Some(writer) => Some(writer.await.map_err(|e| failed(e.to_string()))?.map_err(failed)?),
        None => None,
    };
    let end = received?;
    let checkpoint = written.ok_or_else(|| failed("the copy never began".into()))?;
    let store = node.store.clone();
    let finished = tokio::task::spawn_blocking(move || store.finish_copy(&checkpoint, end))
        .await
        .map_err(|e| failed(e.to_string()))?;
    if let Err(reason) = finished {
        // Resuming would only end the same way (pairs from another history, or damage): the
        // next attempt starts over.
        node.store.clear().map_err(|e| failed(e.to_string()))?;
        node.copy_progress.send_replace(None);
        return Err(failed(format!("{reason}; the copy is discarded: run the rejoin again to start over")));
    }
    node.copy_progress.send_replace(None);
    tracing::info!(
        lsn = end.applied_lsn,
        keys = end.key_count,
        ms = started.elapsed().as_millis() as u64,
        "full copy received and checked"
    );
    Ok(())
}

type Writer = Option<tokio::task::JoinHandle<Result<CopyCheckpoint, String>>>;

/// Reads the copy's frames until its end, handing pairs and records to the writing thread
/// (started at the copy's begin); returns the position the copy ends at.
async fn receive_frames<S>(
    node: &Arc<Node>,
    stream: &mut S,
    tx: &std::sync::mpsc::SyncSender<Incoming>,
    writer: &mut Writer,
    rx: &mut Option<std::sync::mpsc::Receiver<Incoming>>,
    start: &mut Option<CopyCheckpoint>,
) -> Result<Position, Retry>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let failed = |e: String| Retry::Failed(format!("full copy: {e}"));
    loop {
        let frame = match tokio::time::timeout(SILENCE, wire::read_frame(stream)).await {
            Err(_) => return Err(failed(format!("the primary sent nothing for {}s", SILENCE.as_secs()))),
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Ok(Ok(None)) => return Err(failed("the primary closed the connection before the end".into())),
            Ok(Ok(Some(frame))) => frame,
        };
        let incoming = match frame {
            Frame::Message(Envelope { message, .. }) => match message {
                Message::CopyBegin { position, .. } => {
                    let checkpoint = match start.take() {
                        Some(resumed) => resumed,
                        None => {
                            let fresh = CopyCheckpoint::new(position.applied_lsn, position.key_count);
                            let store = node.store.clone();
                            let saved = fresh.clone();
                            tokio::task::spawn_blocking(move || store.begin_copy(&saved))
                                .await
                                .map_err(|e| failed(e.to_string()))?
                                .map_err(|e| failed(e.to_string()))?;
                            fresh
                        }
                    };
                    tracing::info!(
                        from = checkpoint.from_lsn,
                        keys = position.key_count,
                        resumed_at = checkpoint.pairs,
                        "full copy: receiving"
                    );
                    node.copy_progress.send_replace(Some((checkpoint.pairs, checkpoint.total)));
                    let (node, rx) = (node.clone(), rx.take().ok_or_else(|| failed("a second copy begin".into()))?);
                    *writer = Some(tokio::task::spawn_blocking(move || write_incoming(&node, checkpoint, rx)));
                    continue;
                }
                Message::CopyEnd { position: Some(end), .. } => return Ok(end),
                Message::CopyEnd { position: None, .. } => {
                    return Err(failed(
                        "the primary runs an older hotpair whose full copy this one cannot check; upgrade it first"
                            .into(),
                    ))
                }
                Message::Refused { reason, .. } if reason.contains("start over") => {
                    return Err(Retry::FromScratch(reason))
                }
                Message::Refused { reason, .. } => return Err(failed(format!("refused: {reason}"))),
                other => return Err(failed(format!("unexpected message {other:?}"))),
            },
            Frame::Copy(bytes) => Incoming::Pairs(wire::decode_pairs(&bytes).map_err(|e| failed(e.to_string()))?),
            Frame::Records { frames, .. } => Incoming::Records(decode_records(&frames).map_err(failed)?),
        };
        if writer.is_none() {
            return Err(failed("data before the copy began".into()));
        }
        // A full queue waits here (blocking) while the writer catches up: that is the point.
        if tokio::task::block_in_place(|| tx.send(incoming)).is_err() {
            // The writer stopped on an error; awaiting it reports that error.
            return Err(failed("the writer stopped".into()));
        }
    }
}

/// The receiving thread: writes pairs and redo records to the store in order, saving the
/// checkpoint with each batch; returns it once the channel closes.
fn write_incoming(
    node: &Node,
    mut checkpoint: CopyCheckpoint,
    rx: std::sync::mpsc::Receiver<Incoming>,
) -> Result<CopyCheckpoint, String> {
    let delay = super::simulated_delay(super::SIMULATED_COPY_DELAY_ENV).map_err(|e| e.to_string())?;
    for incoming in rx {
        if let Some(delay) = delay {
            // Tests only: a slow receiver, so that a copy is still under way when a test kills a node.
            std::thread::sleep(delay);
        }
        match incoming {
            Incoming::Pairs(pairs) => node.store.load_copy(&pairs, &mut checkpoint)?,
            Incoming::Records(records) => node.store.redo_copy(&records, &mut checkpoint)?,
        }
        // Durable before it is reported: what `status` shows as copied survives a crash, and a
        // resumed copy loses at most the batch in flight. One sled flush per few megabytes.
        node.store.flush().map_err(|e| e.to_string())?;
        node.copy_progress.send_replace(Some((checkpoint.pairs, checkpoint.total)));
    }
    Ok(checkpoint)
}

fn decode_records(mut bytes: &[u8]) -> Result<Vec<Record>, String> {
    let mut records = Vec::new();
    while !bytes.is_empty() {
        let (record, used) = crate::storage::journal::format::decode_record(bytes)
            .map_err(|err| format!("a redo record is not valid: {err:?}"))?;
        records.push(record);
        bytes = &bytes[used..];
    }
    Ok(records)
}
