//! Replication between the two nodes: the primary ships its journal records, the backup keeps
//! them byte for byte in its remote journal, applies the ones both nodes hold durably and
//! acknowledges how far it got.
//!
//! ## Job
//! - [`ship`] runs on the primary for one connected backup, after the handshake (done by the
//!   node, which owns the metadata): catch-up from the journal files (in small batches, letting
//!   the data port's clients in between: [`CATCH_UP_BATCH_BYTES`]), then the live tail from
//!   memory, heartbeats, and the backup's acks published as [`PeerState`].
//! - [`follow`] runs on the backup for one connection: writes received frames into the remote
//!   journal, queues them for the applier, and acks received / durable / applied LSNs.
//!
//! ## Overlapped fsyncs
//! The primary ships a group of records from memory as soon as the append that completes it
//! wakes the journal's flusher (or once the flusher has written records no such append
//! announced: [`Journal::subscribe_shippable`]), while its write and fsync are still under way,
//! so that the two nodes' fsyncs overlap instead of running one after the other (a `durable`
//! commit waits for both). Every batch, heartbeat and [`Message::Durable`]
//! carries how far the primary is durable; the backup keeps and fsyncs what it receives at
//! once, but its applier applies nothing past that confirmed LSN (`applier`, "The
//! confirmation gate").
//!
//! A `durable` message goes out only when no batch has carried the news for
//! [`CONFIRM_DELAY`]: under load the next batch confirms the one before it, so the message
//! (a TLS write on the primary, a wake-up and a read on the backup, per round of commits) is
//! not needed. At sync level `applied` every commit waits for the backup's applier, so there it
//! goes out as soon as the primary's fsync ends ([`ShipContext::prompt_confirm`]).
//!
//! ## Invariants
//! - No commit is acknowledged before its own node's fsync (`node::backend::wait_sync` checks
//!   the local journal), so a record shipped before the primary's fsync and then lost in a crash
//!   of the primary was never acknowledged.
//! - A backup's store never holds a record its primary has not confirmed durable: two nodes
//!   that applied the same LSN applied the same record (invariant 3), even if the primary
//!   crashed and wrote other records at those LSNs afterwards. Such a backup's unconfirmed tail
//!   is cut at its next welcome (`Welcome::cut_after`, decided by `control::peer_session`).
//! - A promoted backup keeps and applies everything it received: it may hold acknowledged
//!   commits whose confirmation was still on its way.
//! - Records go out in LSN order with no gap and no duplicate, across the hand-over from files to
//!   memory: one cursor (`next`) decides both.
//! - The backup refuses a record whose LSN is not the next one (its journal checks) and checks
//!   every record's CRC before keeping it; a bad frame ends the connection, never the node.
//! - Heartbeats carry a sequence number; a gap is counted and logged.
//! - Each side ends the session when it has heard nothing from the other — no record, ack or
//!   heartbeat — for [`silence_limit`] (a few heartbeat intervals), also while it is blocked
//!   writing to a peer that has stopped reading. A hung peer, or a partition that drops packets,
//!   keeps a TCP connection open for many minutes; without this the primary would go on
//!   calling a vanished backup connected (so `degrade-after` never began, every write waited
//!   out `sync_timeout`, and the backup's next hello was refused as a second session), and a
//!   backup would wait forever on a vanished primary.
//!
//! ## Parts
//! This file holds the two sessions; [`wire`] is the control port's framing they (and the admin
//! requests) travel in. The node's side — accepting the peer, the follower loop, the full copy —
//! is in `node::control`, `node::follow` and `node::copy`, since it needs the node's state.

pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::kv::applier::Applier;
use crate::kv::pipeline::Pipeline;
use crate::replication::wire::{Envelope, Frame, Message, WireError, BATCH_BYTES};
use crate::storage::digest::Digest;
use crate::storage::journal::{format, Epoch, HistoryEntry, Journal, JournalError, JournalReader, Lsn, RecordBody};
use crate::storage::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("peer broke the protocol: {0}")]
    Protocol(String),
    #[error("applier stopped: {0}")]
    Applier(String),
    #[error(
        "nothing heard from the peer for {silent_ms} ms (no record, ack or heartbeat): it is gone, hung or cut off"
    )]
    Silent { silent_ms: u128 },
}

/// Heartbeat intervals without a word from the peer after which a session ends.
pub const SILENT_HEARTBEATS: u32 = 10;
/// A session never ends for silence sooner than this, however short the heartbeat: a loaded
/// machine may delay a heartbeat or two, and a needless reconnect costs a blip of `connected`.
pub const MIN_SILENCE: Duration = Duration::from_secs(1);

/// How long the primary holds back a [`Message::Durable`] for a batch to carry the news
/// instead (see "Overlapped fsyncs"). A backup applies its last records this much later when
/// the writes stop; a `WAIT` at levels below `applied` may wait this much longer.
pub const CONFIRM_DELAY: Duration = Duration::from_millis(2);

/// Batches read from the journal files (a catch-up) are cut at about this many bytes, and the
/// shipper yields to the data port's clients, on the same worker, between them: a client's write
/// waits behind at most one. With 1 MB batches and no yield a catch-up held writes up for up to
/// 115–160 ms; with 64 KB batches the worst was 27–34 ms, as with no catch-up, for a catch-up
/// ~5% slower (docs/benchmarks.md, "The catch-up's batches").
pub const CATCH_UP_BATCH_BYTES: usize = 64 * 1024;

/// How long a clean stop may spend telling the backup the primary's durable LSN.
pub const STOP_CONFIRM_GRACE: Duration = Duration::from_millis(100);

/// How long a session may go without hearing from the peer (see the module invariants).
pub fn silence_limit(heartbeat: Duration) -> Duration {
    heartbeat.saturating_mul(SILENT_HEARTBEATS).max(MIN_SILENCE)
}

/// A session's heartbeat interval as it last read it: `hotpair reload` may change the node's,
/// and the session takes it at its next tick (the silence limit with it). Both nodes reload
/// within milliseconds of each other, far inside [`MIN_SILENCE`].
struct Beat {
    every: Duration,
}

impl Beat {
    fn new(source: &watch::Receiver<Duration>) -> Beat {
        Beat { every: *source.borrow() }
    }

    /// The new interval, if it changed since the last look.
    fn changed(&mut self, source: &watch::Receiver<Duration>) -> Option<Duration> {
        let now = *source.borrow();
        (now != self.every).then(|| {
            self.every = now;
            now
        })
    }

    /// A ticker whose first tick is one interval away (the tick that read it was just sent).
    fn ticker(every: Duration) -> tokio::time::Interval {
        tokio::time::interval_at(tokio::time::Instant::now() + every, every)
    }
}

/// Resolves once nothing has been heard for `limit` (`heard` holds when the peer last spoke).
async fn silence(heard: &watch::Receiver<Instant>, limit: Duration) -> ReplicationError {
    loop {
        let last = *heard.borrow();
        let now = Instant::now();
        if now >= last + limit {
            return ReplicationError::Silent { silent_ms: (now - last).as_millis() };
        }
        tokio::time::sleep_until(last + limit).await;
    }
}

/// Writes a frame, unless the peer falls silent first: a peer that stopped reading must not
/// hold the session (and its `connected` state) in a write forever.
async fn write_or_silence<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &Frame,
    heard: &watch::Receiver<Instant>,
    limit: Duration,
) -> Result<(), ReplicationError> {
    tokio::select! {
        written = wire::write_frame(writer, frame) => Ok(written?),
        silent = silence(heard, limit) => Err(silent),
    }
}

/// What one node knows of the other's progress and liveness.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerState {
    pub connected: bool,
    /// When `connected` last changed.
    pub since: Instant,
    pub received_lsn: Lsn,
    pub durable_lsn: Lsn,
    pub applied_lsn: Lsn,
    pub applied_digest: Digest,
    /// Wall-clock ms of the last message heard.
    pub last_heard_ms: u64,
    /// The peer's last LSN as of its last heartbeat or batch (on a backup: the last the primary
    /// appended, which a failover's estimate of what was never received is made from).
    pub peer_last_lsn: Lsn,
    /// Heartbeat sequence numbers that never arrived.
    pub heartbeat_gaps: u64,
    /// On a primary: its own clock (wall ms) at the send of the last heartbeat the backup
    /// echoed — the backup heard from us at or after that moment (witness failsafe).
    pub echoed_ms: u64,
    /// On a backup: canary records received, when the last one arrived, and how long it took
    /// from the primary's clock to ours (clocks of the two hosts are assumed close).
    pub canaries: u64,
    pub last_canary_at: Option<Instant>,
    pub last_canary_delay_ms: u64,
    /// On a backup: the primary's commit time (ms) of the oldest record we know of but have
    /// not applied (received, or announced by a heartbeat); 0 when there is none.
    pub oldest_unapplied_ms: u64,
}

impl Default for PeerState {
    fn default() -> Self {
        PeerState {
            connected: false,
            since: Instant::now(),
            received_lsn: 0,
            durable_lsn: 0,
            applied_lsn: 0,
            applied_digest: Digest::EMPTY,
            last_heard_ms: 0,
            peer_last_lsn: 0,
            heartbeat_gaps: 0,
            echoed_ms: 0,
            canaries: 0,
            last_canary_at: None,
            last_canary_delay_ms: 0,
            oldest_unapplied_ms: 0,
        }
    }
}

/// Marks the peer connected or not (and when that changed), keeping its last known positions.
pub fn set_connected(peer: &watch::Sender<PeerState>, connected: bool) {
    peer.send_modify(|state| {
        if state.connected != connected {
            state.connected = connected;
            state.since = Instant::now();
        }
    });
}

/// Tracks heartbeat sequence numbers from one peer.
#[derive(Default)]
struct HeartbeatTracker {
    last_seq: Option<u64>,
}

impl HeartbeatTracker {
    /// Returns how many heartbeats were skipped before `seq`.
    fn observe(&mut self, seq: u64) -> u64 {
        let gap = match self.last_seq {
            Some(last) if seq > last + 1 => seq - last - 1,
            _ => 0,
        };
        self.last_seq = Some(seq);
        gap
    }
}

/// What the primary needs to ship to one backup.
pub struct ShipContext {
    pub name: String,
    pub epoch: Epoch,
    /// The primary's local journal: the epochs it led, and the live tail.
    pub journal: Journal,
    /// Its remote journal: the epochs its peer led (catch-up of a backup that is far behind).
    pub remote: Journal,
    /// The pair's history, which says which journal holds an LSN.
    pub history: Vec<HistoryEntry>,
    pub pipeline: Arc<Pipeline>,
    pub peer: watch::Sender<PeerState>,
    /// The heartbeat interval; `hotpair reload` may change it, and the session takes the new
    /// one at its next tick ([`Beat`]).
    pub heartbeat: watch::Receiver<Duration>,
    /// Tell the backup the primary's durable LSN as soon as it moves, not after
    /// [`CONFIRM_DELAY`]: commits wait for the backup's applier (sync level `applied`).
    pub prompt_confirm: bool,
    /// Fired at the backup's first ack: it has done what the welcome asked (cut its tail).
    pub first_ack: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Ships records from `start_lsn` on until the connection ends or `stop` turns true.
pub async fn ship<S>(
    stream: S,
    mut ctx: ShipContext,
    start_lsn: Lsn,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ReplicationError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let peer = ctx.peer.clone();
    let (heard_tx, heard) = watch::channel(Instant::now());
    let mut beat = Beat::new(&ctx.heartbeat);
    let mut limit = silence_limit(beat.every);
    let first_ack = ctx.first_ack.take();
    let mut acks = tokio::spawn(async move { read_acks(&mut reader, &peer, &heard_tx, first_ack).await });
    let mut durable = ctx.journal.subscribe_durable();
    let mut shippable = ctx.journal.subscribe_shippable();
    let mut ticker = tokio::time::interval(beat.every);
    let mut next = start_lsn;
    let mut files: Option<std::iter::Peekable<JournalReader>> = None;
    let mut seq = 0u64;
    // The durable LSN the backup was last told (with a batch, a heartbeat or on its own).
    let mut told = 0;
    // When the backup is told our durable LSN on its own, if no batch has told it by then.
    let mut confirm_at = Instant::now();
    // A primary's remote journal takes no appends: what it holds durably now stays so.
    let remote_durable = ctx.remote.durable_lsn();
    let result = loop {
        // How far we hold the pair's history durably: our local journal, and our remote journal
        // for the epochs our peer led (a new primary's first record may not be fsynced yet).
        let durable_lsn = (*durable.borrow_and_update()).max(remote_durable);
        // Written, or a complete group in memory, is enough to ship (see "Overlapped fsyncs");
        // the remote journal's records (our peer's epochs, for a catch-up) are durable already.
        let until = (*shippable.borrow_and_update()).max(durable_lsn);
        if next <= until {
            match next_batch(&ctx, &mut files, next, until) {
                Ok((frames, last)) => {
                    // `until`: how far the primary has written (or gathered a whole group): no
                    // commit past it was acknowledged at any level.
                    let batch = Frame::Records { durable: durable_lsn, head: until, frames };
                    if let Err(err) = write_or_silence(&mut writer, &batch, &heard, limit).await {
                        break Err(err);
                    }
                    (next, told) = (last + 1, durable_lsn);
                    confirm_at = Instant::now() + CONFIRM_DELAY;
                    if files.is_some() {
                        // Catching up from the files, batch after batch is ready: let the data
                        // port's clients, on the same worker, in between.
                        tokio::task::yield_now().await;
                    }
                    continue;
                }
                Err(err) => break Err(err),
            }
        }
        // The backup holds records it may not apply yet. Once a batch has not told it for
        // CONFIRM_DELAY (at `applied`: at once), tell it how far we are durable.
        let unconfirmed = told < next - 1;
        let confirm_due = unconfirmed && (ctx.prompt_confirm || Instant::now() >= confirm_at);
        if confirm_due && told < durable_lsn {
            told = durable_lsn;
            let message = shipper_message(&ctx, Message::Durable { lsn: durable_lsn });
            if let Err(err) = write_or_silence(&mut writer, &message, &heard, limit).await {
                break Err(err);
            }
            continue;
        }
        tokio::select! {
            biased;
            _ = stop.changed() => if *stop.borrow() {
                // A clean stop (replicate stop, shutdown, a role change) tells the backup what it
                // may apply now rather than leave it to the next session's first batch; briefly,
                // so a backup that does not read cannot hold the stop up.
                let durable_lsn = (*durable.borrow()).max(remote_durable);
                if told < next - 1 && told < durable_lsn {
                    let message = shipper_message(&ctx, Message::Durable { lsn: durable_lsn });
                    let tell = crate::replication::wire::write_frame(&mut writer, &message);
                    let _ = tokio::time::timeout(STOP_CONFIRM_GRACE, tell).await;
                }
                break Ok(())
            },
            ended = &mut acks => break ended.unwrap_or_else(|e| Err(ReplicationError::Protocol(format!("ack reader failed: {e}")))),
            silent = silence(&heard, limit) => break Err(silent),
            _ = shippable.changed() => {}
            // Woken by our fsyncs only when a confirmation is due: under load a batch carries it.
            _ = durable.changed(), if confirm_due => {}
            () = tokio::time::sleep_until(confirm_at), if unconfirmed && !confirm_due => {}
            _ = ticker.tick() => {
                if let Some(every) = beat.changed(&ctx.heartbeat) {
                    (ticker, limit) = (Beat::ticker(every), silence_limit(every));
                }
                seq += 1;
                told = durable_lsn;
                let heartbeat =
                    Message::Heartbeat { seq, time_ms: crate::clock::now_ms(), last_lsn: durable_lsn, head_lsn: until, echo_ms: 0 };
                if let Err(err) = write_or_silence(&mut writer, &shipper_message(&ctx, heartbeat), &heard, limit).await {
                    break Err(err);
                }
            }
        }
    };
    acks.abort();
    result
}

/// A message from the primary's shipper, in its envelope.
fn shipper_message(ctx: &ShipContext, message: Message) -> Frame {
    Frame::Message(Envelope { from: ctx.name.clone(), epoch: ctx.epoch, message })
}

/// The next batch of frames `next..=until`: from memory when the live tail holds them, else
/// from the journal files through a reader kept across batches (each segment is read once),
/// as far as they hold. Records not yet written are in memory (the live tail keeps the newest
/// frames, each remembered before it is appended) or, if a huge record evicted them, written
/// by `read_from`, which writes the journal's buffer out before it reads.
fn next_batch(
    ctx: &ShipContext,
    files: &mut Option<std::iter::Peekable<JournalReader>>,
    next: Lsn,
    until: Lsn,
) -> Result<(Vec<u8>, Lsn), ReplicationError> {
    if let Some(batch) = ctx.pipeline.recent_frames(next, until, BATCH_BYTES) {
        *files = None;
        return Ok(batch);
    }
    let journal = journal_holding(ctx, next);
    if files.as_mut().and_then(|f| f.peek()).is_none_or(|e| e.as_ref().is_ok_and(|e| e.record.lsn != next)) {
        *files = Some(journal.read_from(next)?.peekable());
    }
    let until = until.min(journal.written_lsn());
    let reader = files.as_mut().ok_or_else(|| ReplicationError::Protocol("no journal reader".into()))?;
    let mut batch = Vec::new();
    let mut last = next - 1;
    // A batch ends at an epoch gap: the LSNs after it are in the other journal.
    let in_order = |e: &Result<crate::storage::journal::JournalEntry, JournalError>, last: Lsn| {
        e.as_ref().map_or(true, |e| e.record.lsn <= until && e.record.lsn == last + 1)
    };
    while let Some(entry) = reader.next_if(|e| in_order(e, last)) {
        let entry = entry?;
        batch.extend_from_slice(&entry.frame);
        last = entry.record.lsn;
        if batch.len() >= CATCH_UP_BATCH_BYTES {
            break;
        }
    }
    if last < next {
        return Err(ReplicationError::Journal(JournalError::Missing { lsn: next }));
    }
    Ok((batch, last))
}

/// The journal that holds `lsn`: ours for the epochs we led, the remote one for our peer's.
fn journal_holding(ctx: &ShipContext, lsn: Lsn) -> &Journal {
    crate::storage::journal::holding(&ctx.history, &ctx.name, &ctx.journal, &ctx.remote, lsn)
}

async fn read_acks<R: AsyncRead + Unpin>(
    reader: &mut R,
    peer: &watch::Sender<PeerState>,
    heard: &watch::Sender<Instant>,
    mut first_ack: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), ReplicationError> {
    let mut heartbeats = HeartbeatTracker::default();
    loop {
        let Some(frame) = wire::read_frame(reader).await? else {
            return Ok(());
        };
        heard.send_replace(Instant::now());
        let Frame::Message(envelope) = frame else {
            return Err(ReplicationError::Protocol("a backup sent records".into()));
        };
        let now = crate::clock::now_ms();
        match envelope.message {
            Message::Ack { received_lsn, durable_lsn, applied_lsn, digest } => {
                peer.send_modify(|s| {
                    s.received_lsn = s.received_lsn.max(received_lsn);
                    s.durable_lsn = s.durable_lsn.max(durable_lsn);
                    s.applied_lsn = s.applied_lsn.max(applied_lsn);
                    s.applied_digest = digest;
                    s.last_heard_ms = now;
                });
                if let Some(first) = first_ack.take() {
                    let _ = first.send(());
                }
            }
            Message::Heartbeat { seq, last_lsn, echo_ms, .. } => {
                let gap = heartbeats.observe(seq);
                if gap > 0 {
                    tracing::warn!(gap, "heartbeats from the backup went missing");
                }
                peer.send_modify(|s| {
                    s.echoed_ms = s.echoed_ms.max(echo_ms);
                    s.heartbeat_gaps += gap;
                    s.last_heard_ms = now;
                    s.peer_last_lsn = last_lsn;
                });
            }
            other => return Err(ReplicationError::Protocol(format!("unexpected message from the backup: {other:?}"))),
        }
    }
}

/// What the backup needs to follow its primary.
pub struct FollowContext {
    pub name: String,
    pub epoch: Epoch,
    pub remote: Journal,
    pub store: Arc<Store>,
    pub applier: Arc<Applier>,
    /// The primary as this backup sees it: link state, its last LSN, and our own progress.
    pub primary: watch::Sender<PeerState>,
    /// As [`ShipContext::heartbeat`].
    pub heartbeat: watch::Receiver<Duration>,
    /// Commits wait for `received` (the pair's sync level): ack every batch as it arrives.
    /// Otherwise a receipt alone waits for the next durable or applied ack, or the next
    /// heartbeat tick: at `durable` an ack per receipt woke every waiting committer on the
    /// primary for nothing, half the acks of every batch.
    pub ack_every_receipt: bool,
    /// Whether a heartbeat received now may be echoed (`engine::Engine::may_echo`: not once
    /// the witness agent has decided to claim the next epoch).
    pub may_echo: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// The primary's last LSN as a batch told it: what a failover's estimate of the transactions
/// never received is made from (`engine::Promotion`). Written only when it moved: the watch
/// wakes status readers.
fn note_primary_head(ctx: &FollowContext, head: Lsn) {
    if ctx.primary.borrow().peer_last_lsn != head {
        ctx.primary.send_modify(|s| s.peer_last_lsn = head);
    }
}

/// Receives records after a successful handshake until the connection ends or `stop` is true.
pub async fn follow<S>(stream: S, ctx: &FollowContext, mut stop: watch::Receiver<bool>) -> Result<(), ReplicationError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (frames_tx, mut frames) = tokio::sync::mpsc::channel::<Result<Option<Frame>, WireError>>(4);
    let (heard_tx, heard) = watch::channel(Instant::now());
    let mut beat = Beat::new(&ctx.heartbeat);
    let mut limit = silence_limit(beat.every);
    let read_task = tokio::spawn(async move {
        loop {
            let frame = wire::read_frame(&mut reader).await;
            heard_tx.send_replace(Instant::now());
            let end = !matches!(frame, Ok(Some(_)));
            if frames_tx.send(frame).await.is_err() || end {
                return;
            }
        }
    });
    let mut durable = ctx.remote.subscribe_durable();
    let mut applied = ctx.applier.subscribe();
    let mut ticker = tokio::time::interval(beat.every);
    let mut heartbeats = HeartbeatTracker::default();
    // After a full copy the remote journal starts empty at the store's LSN: count the copy.
    let mut received = ctx.remote.last_lsn().unwrap_or(0).max(ctx.store.position().applied_lsn);
    let mut seq = 0u64;
    let mut sent: Option<(Lsn, Lsn, Lsn)> = None;
    // Set at every heartbeat tick: then a receipt alone is worth an ack too.
    let mut report_receipt = true;
    let mut unapplied = UnappliedTimes::default();
    // The primary's clock reading in the last heartbeat it sent us, echoed back (witness failsafe).
    let mut echo_ms = 0u64;
    let result = loop {
        let applied_lsn = *applied.borrow_and_update();
        let oldest = unapplied.oldest(applied_lsn);
        if ctx.primary.borrow().oldest_unapplied_ms != oldest {
            ctx.primary.send_modify(|s| s.oldest_unapplied_ms = oldest);
        }
        // Applied records are durable (only durable ones are applied; a copy is flushed).
        let progress = (received, (*durable.borrow_and_update()).max(applied_lsn), applied_lsn);
        let worth_an_ack = match sent {
            None => true,
            Some((r, d, a)) => {
                d != progress.1 || a != progress.2 || (r != progress.0 && (ctx.ack_every_receipt || report_receipt))
            }
        };
        if worth_an_ack {
            let digest = ctx.store.position().digest;
            let ack =
                Message::Ack { received_lsn: progress.0, durable_lsn: progress.1, applied_lsn: progress.2, digest };
            if let Err(err) = send(&mut writer, ctx, ack, &heard, limit).await {
                break Err(err);
            }
            ctx.primary.send_modify(|s| {
                (s.received_lsn, s.durable_lsn, s.applied_lsn, s.applied_digest) =
                    (progress.0, progress.1, progress.2, digest)
            });
            sent = Some(progress);
            report_receipt = false;
        }
        if let Some(reason) = ctx.applier.failure() {
            break Err(ReplicationError::Applier(reason));
        }
        tokio::select! {
            biased;
            _ = stop.changed() => if *stop.borrow() { break Ok(()) },
            frame = frames.recv() => match frame {
                Some(Ok(Some(Frame::Copy(_)))) => break Err(ReplicationError::Protocol("the primary sent a copy batch into a replication session".into())),
                Some(Ok(Some(Frame::Records { durable: confirmed, head, frames }))) => match keep_records(ctx, &frames) {
                    Ok(Some(kept)) => {
                        // Commits wait for this fsync (`durable`, `applied`: the node opens the
                        // remote journal `caller_syncs`): do it here rather than wake its flusher.
                        // It blocks this thread, which is the follower's own (`node::follow`):
                        // the node's status, reads and metrics run elsewhere. The session is
                        // silent meanwhile: an fsync that stalls past the primary's
                        // `silence_limit` ends the session, and the primary reports the backup
                        // lost, as it would any backup that stopped making progress.
                        if ctx.remote.caller_syncs() {
                            if let Err(err) = ctx.remote.sync_now() {
                                break Err(err.into());
                            }
                        }
                        received = kept.last_lsn;
                        unapplied.received(kept.last_lsn, kept.first_time_ms);
                        ctx.applier.confirm(confirmed);
                        note_primary_head(ctx, head);
                    }
                    Ok(None) => {
                        ctx.applier.confirm(confirmed);
                        note_primary_head(ctx, head);
                    }
                    Err(err) => break Err(err),
                },
                Some(Ok(Some(Frame::Message(envelope)))) => match envelope.message {
                    Message::Heartbeat { seq, last_lsn, head_lsn, time_ms, .. } => {
                        if (ctx.may_echo)() {
                            echo_ms = echo_ms.max(time_ms);
                        }
                        let gap = heartbeats.observe(seq);
                        if gap > 0 {
                            tracing::warn!(gap, "heartbeats from the primary went missing");
                        }
                        let now = crate::clock::now_ms();
                        unapplied.announced(last_lsn, received, now);
                        ctx.primary.send_modify(|s| { s.heartbeat_gaps += gap; s.last_heard_ms = now; s.peer_last_lsn = head_lsn.max(last_lsn); });
                        // A primary's heartbeat carries its durable LSN.
                        ctx.applier.confirm(last_lsn);
                    }
                    Message::Durable { lsn } => ctx.applier.confirm(lsn),
                    other => break Err(ReplicationError::Protocol(format!("unexpected message from the primary: {other:?}"))),
                },
                Some(Ok(None)) | None => break Ok(()),
                Some(Err(err)) => break Err(err.into()),
            },
            silent = silence(&heard, limit) => break Err(silent),
            _ = durable.changed() => {}
            _ = applied.changed() => {}
            _ = ticker.tick() => {
                if let Some(every) = beat.changed(&ctx.heartbeat) {
                    (ticker, limit) = (Beat::ticker(every), silence_limit(every));
                }
                report_receipt = true;
                seq += 1;
                let heartbeat =
                    Message::Heartbeat { seq, time_ms: crate::clock::now_ms(), last_lsn: received, head_lsn: received, echo_ms };
                if let Err(err) = send(&mut writer, ctx, heartbeat, &heard, limit).await {
                    break Err(err);
                }
            }
        }
    };
    read_task.abort();
    result
}

async fn send<W: AsyncWrite + Unpin>(
    writer: &mut W,
    ctx: &FollowContext,
    message: Message,
    heard: &watch::Receiver<Instant>,
    limit: Duration,
) -> Result<(), ReplicationError> {
    let envelope = Envelope { from: ctx.name.clone(), epoch: ctx.epoch, message };
    write_or_silence(writer, &Frame::Message(envelope), heard, limit).await
}

/// What one batch added to the remote journal.
struct Kept {
    first_time_ms: u64,
    last_lsn: Lsn,
}

/// Commit times of records the backup knows of but has not applied, for `lag_ms`: the first
/// record of each batch (so the age is exact to within one batch, and never overstated), and
/// the time a heartbeat first announced records beyond what we received.
#[derive(Default)]
struct UnappliedTimes {
    /// Last LSN and first record's commit time of each batch not wholly applied.
    batches: std::collections::VecDeque<(Lsn, u64)>,
    announced_at: Option<u64>,
}

/// Batch start times kept at most; past it the newest are not kept (the oldest is what counts).
const UNAPPLIED_BATCHES: usize = 65_536;

impl UnappliedTimes {
    fn received(&mut self, last_lsn: Lsn, time_ms: u64) {
        // The batch's own commit time is better than the moment a heartbeat told us of it.
        self.announced_at = None;
        if self.batches.len() < UNAPPLIED_BATCHES {
            self.batches.push_back((last_lsn, time_ms));
        }
    }

    /// A heartbeat said the primary is at `primary_last`; we hold up to `received`.
    fn announced(&mut self, primary_last: Lsn, received: Lsn, now_ms: u64) {
        if primary_last > received {
            self.announced_at.get_or_insert(now_ms);
        } else {
            self.announced_at = None;
        }
    }

    /// The oldest commit time not yet applied (a batch partly applied counts from its first
    /// record), 0 if everything known is applied.
    fn oldest(&mut self, applied: Lsn) -> u64 {
        while self.batches.front().is_some_and(|(last, _)| *last <= applied) {
            self.batches.pop_front();
        }
        match (self.batches.front().map(|(_, time)| *time), self.announced_at) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => 0,
        }
    }
}

/// Checks, keeps (remote journal) and queues (applier) every record of a batch, and notes each
/// canary. Returns what was kept. Records at or below what we already hold are skipped (a
/// resent tail after a reconnect); anything else out of order is refused by the journal.
fn keep_records(ctx: &FollowContext, bytes: &[u8]) -> Result<Option<Kept>, ReplicationError> {
    let mut pos = 0;
    let mut kept: Option<Kept> = None;
    while pos < bytes.len() {
        let (record, used) = format::decode_record(&bytes[pos..]).map_err(|err| {
            ReplicationError::Protocol(format!("record at byte {pos} of a batch is not valid: {err:?}"))
        })?;
        let frame = &bytes[pos..pos + used];
        pos += used;
        if ctx.remote.last_lsn().is_some_and(|held| record.lsn <= held) {
            continue;
        }
        // `frame` is exactly the bytes `record` was decoded from: checked once, kept as sent.
        ctx.remote.append_encoded(&record, frame)?;
        match &mut kept {
            Some(kept) => kept.last_lsn = record.lsn,
            None => kept = Some(Kept { first_time_ms: record.timestamp_ms, last_lsn: record.lsn }),
        }
        if let RecordBody::Canary { .. } = record.body {
            note_canary(&ctx.primary, record.timestamp_ms);
        }
        ctx.applier.submit(record).map_err(ReplicationError::Applier)?;
    }
    Ok(kept)
}

fn note_canary(primary: &watch::Sender<PeerState>, sent_ms: u64) {
    let delay = crate::clock::now_ms().saturating_sub(sent_ms);
    primary.send_modify(|s| {
        s.canaries += 1;
        s.last_canary_at = Some(Instant::now());
        s.last_canary_delay_ms = delay;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_gaps_are_counted() {
        let mut tracker = HeartbeatTracker::default();
        assert_eq!(tracker.observe(1), 0);
        assert_eq!(tracker.observe(2), 0);
        assert_eq!(tracker.observe(5), 2);
        assert_eq!(tracker.observe(5), 0);
    }
}
