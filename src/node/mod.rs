//! The node: one `hotpair run NODE` process — its journals, store, role, ports and replication.
//!
//! ## Job
//! Opens the data directory (metadata, local and remote journals, store), replays whatever the
//! store is missing from the journals, and then runs, until shutdown:
//! - the control port (mutual TLS): the peer's replication connection, and admin requests;
//! - the data port (RESP) through [`backend`];
//! - the Sentinel-compatible discovery port ([`crate::sentinel`]);
//! - as backup, the follower loop that connects to the primary and keeps up with it;
//! - when the pair file gives the node a `metrics` address, the Prometheus endpoint ([`metrics`]).
//! - the disk-space guard ([`disk`]): below `disk_min_free` writes are refused and the backup
//!   stops receiving, until space returns;
//! - as primary, active expiry (`expiry`): expired keys are deleted through the journal;
//! - once, after start, the check of the closed journal segments an open no longer reads
//!   (`journal_check`).
//!
//! Every role it takes is the pair engine's decision ([`crate::engine`]): the node feeds the
//! engine its events and carries out the effects in the order given ([`apply`]).
//!
//! ## Invariants
//! - A restarted primary takes no writes until its peer has said (in its hello) that it has not
//!   moved to a higher epoch. Only a brand-new pair, whose journals are empty, starts accepting.
//! - A node that hears of a higher epoch than its own stops taking writes at once (role `fenced`).
//! - No role, epoch or history changes but through an engine effect (`Effect::Save`).
//! - One backup session at a time: a second connection claiming the peer's name is refused.
//! - A peer that comes back behind what it acknowledged as durable to this primary (a restored
//!   copy) is refused; the acknowledged position is saved, so a restart of the primary keeps it.
//! - Shutdown: the ports stop, in-flight commits finish or fail, the appliers drain what is
//!   durable, journals are synced and the store flushed before the process exits.

mod apply;
pub mod backend;
mod backup;
mod control;
mod copy;
pub mod disk;
mod expiry;
pub(crate) mod follow;
pub mod incident;
mod journal_check;
pub mod metrics;
mod monitor;
pub mod primitives;
mod reload;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{NodeConfig, PairConfig};
use crate::engine::Engine;
use crate::kv::applier::Applier;
use crate::kv::pipeline::Pipeline;
use crate::node::incident::{Kind, Severity};
use crate::replication::PeerState;
use crate::storage::journal::{Journal, JournalIdentity, JournalKind, JournalOptions, Lsn};
use crate::storage::meta::{NodeMeta, Role};
use crate::storage::store::Store;
use crate::Error;

/// Below sync level `durable`, the backup fsyncs its remote journal at most this often
/// (`journal`, "Paced fsyncs"): no commit waits for it, and one fsync per shipped batch was a
/// third of the backup's CPU per `async` SET. What it received stays in its memory meanwhile,
/// which is what `received` promises; the primary keeps its segments until they are durable.
const REMOTE_SYNC_PACE: Duration = Duration::from_millis(10);

/// Everything one running node shares between its tasks.
pub struct Node {
    /// The pair file this node runs: swapped whole by `hotpair reload` ([`reload`]). Readers
    /// take one snapshot ([`Node::pair`]) and use it for what they do (a commit waits under
    /// the one sync level it read).
    pair: std::sync::RwLock<Arc<PairConfig>>,
    /// The pair's heartbeat interval; replication sessions take a reloaded one at their next tick.
    pub heartbeat: watch::Sender<Duration>,
    /// The master name (`name`): a reload never changes it (it needs a restart).
    pub master_name: String,
    /// The data port's users once it serves (`None`: no AUTH); `hotpair reload` re-reads them.
    pub(crate) data_users: Mutex<Option<Arc<crate::server::auth::Users>>>,
    pub config: NodeConfig,
    pub peer_config: NodeConfig,
    meta: Mutex<NodeMeta>,
    /// The pair engine: every role decision ([`apply`] carries out its effects).
    engine: Mutex<Engine>,
    /// Where the engine's clock starts: it is given monotonic ms since the node opened.
    clock_origin: std::time::Instant,
    pub local: Journal,
    pub remote: Journal,
    pub store: Arc<Store>,
    role: watch::Sender<Role>,
    /// The commit pipeline, while this node is primary.
    pipeline: Mutex<Option<Arc<Pipeline>>>,
    /// The applier of received records, while this node is backup.
    applier: Mutex<Option<Arc<Applier>>>,
    /// The peer as this node sees it (on a primary: the backup's acks).
    pub peer: watch::Sender<PeerState>,
    /// `false` after `replicate stop`, until `replicate start`.
    pub replicating: watch::Sender<bool>,
    /// Whether a backup session is being served right now (one at a time).
    session_active: std::sync::atomic::AtomicBool,
    /// The remote journal's state as the follower last found it (`diverged` stops following).
    pub diverged_at: Mutex<Option<Lsn>>,
    pub shutdown: watch::Sender<bool>,
    /// Set once commits were acknowledged without the peer (`on_peer_loss = degrade-after`).
    degraded: std::sync::atomic::AtomicBool,
    /// Serialises orchestration primitives on this node (and a follower session's start).
    pub(crate) role_change: tokio::sync::Mutex<()>,
    /// Whether the follower is in a session with the primary right now.
    pub following: watch::Sender<bool>,
    /// Engine ms when the follower's last session with a primary ended (0: none): no
    /// heartbeat was received, nor echoed, after it (the witness's echo promise).
    pub(crate) followed_until_ms: std::sync::atomic::AtomicU64,
    /// While true the follower opens no session (a promotion or rejoin is taking over).
    follower_held: watch::Sender<bool>,
    /// A full copy in progress: pairs received so far and the total expected.
    pub copy_progress: watch::Sender<Option<(u64, u64)>>,
    /// Open incidents; raising one logs it and notifies (`crate::node::incident`).
    pub incidents: crate::node::incident::Incidents,
    /// What only the metrics endpoint needs counted (commit latencies, follower sessions).
    pub metrics: metrics::Counters,
    /// Free space of the data directory and whether it is below `disk_min_free` ([`disk`]).
    pub disk: watch::Sender<disk::DiskSpace>,
    /// This process's exclusive hold on the data directory, for the node's whole life.
    _dir_lock: crate::storage::datadir::DataDirLock,
    /// The budget of the data port's client buffers (`[limits] max_client_memory`), shared by its
    /// connections and by replies the backend builds (`MGET`).
    pub client_memory: Arc<crate::server::memory::ClientMemory>,
    /// The pipeline refuses because the node's standing as primary is in doubt (fenced, or a
    /// restarted primary awaiting its peer): see [`Node::awaits_peer`].
    standing_in_doubt: std::sync::atomic::AtomicBool,
    /// Keys clients `WATCH`; every commit of the pipeline touches the keys it writes.
    pub watches: Arc<crate::kv::watch::Registry>,
    /// Where `SCAN` cursors handed out by this node resume (`crate::kv::keyspace::scan`).
    pub scan_cursors: crate::kv::keyspace::ScanCursors,
    /// With a witness: engine ms past which no write is acknowledged (`u64::MAX`: none).
    write_deadline: std::sync::atomic::AtomicU64,
    /// What the witness agent saw last (`status` shows it); `None` without a witness.
    pub witness_seen: Mutex<Option<serde_json::Value>>,
    /// The digest of the pair file the peer said (in its last hello or welcome) it runs.
    peer_config_digest: Mutex<Option<String>>,
}

impl Node {
    /// Opens the node's data directory and brings the store up to date with its journals.
    pub fn open(pair: PairConfig, name: &str) -> Result<Arc<Node>, Error> {
        let config = pair.node(name)?.clone();
        let peer_config = pair.peer_of(name)?.clone();
        // Before any other file of the directory is opened: a second process for this node
        // must stop here, having changed nothing (opening a journal trims its preallocated end).
        crate::storage::datadir::check_permissions(&config.dir, name)?;
        let dir_lock = crate::storage::datadir::DataDirLock::acquire(&config.dir, name)?;
        let meta = NodeMeta::load(&config.dir).map_err(|err| match err {
            crate::storage::meta::MetaError::Missing { path } => Error::Failed(format!(
                "node {name} cannot start: {} holds no {} (an empty disk, or its data was lost); if node {name}'s data is gone, run `hotpair reinit {name}`, start it, then `hotpair rejoin {name} --allow-full-copy` (docs/runbook.md procedure 4)",
                config.dir.display(),
                path.file_name().map_or_else(|| path.display().to_string(), |f| f.to_string_lossy().into_owned())
            )),
            other => other.into(),
        })?;
        if meta.cluster != pair.cluster || meta.node != name {
            return Err(Error::Failed(format!(
                "{} belongs to node {} of cluster {}, not node {name} of cluster {}",
                config.dir.display(),
                meta.node,
                meta.cluster,
                pair.cluster
            )));
        }
        let identity = |kind| JournalIdentity { cluster: *pair.cluster.as_bytes(), node: name.to_string(), kind };
        // The local journal gathers long at every level: at `durable` its groups are also the
        // backup's, which fsyncs each batch as it arrives (docs/architecture.md).
        let (local, local_recovery) = Journal::open(
            &journal_dir(&config.dir, JournalKind::Local),
            identity(JournalKind::Local),
            JournalOptions::default(),
        )?;
        if let Some(delay) = simulated_delay(SIMULATED_WRITE_DELAY_ENV)? {
            tracing::warn!(?delay, "{SIMULATED_WRITE_DELAY_ENV} is set: the local journal writes each group only this much later (for tests)");
            local.simulate_write_delay(delay);
        }
        if let Some(delay) = simulated_delay(SIMULATED_FSYNC_DELAY_ENV)? {
            tracing::warn!(?delay, "{SIMULATED_FSYNC_DELAY_ENV} is set: the local journal calls each fsync done only this much later (for tests)");
            local.simulate_fsync_delay(delay);
        }
        // Below `durable` no commit waits for the remote journal's fsync: pace it.
        let remote_sync_pace =
            if pair.sync < crate::config::SyncLevel::Durable { REMOTE_SYNC_PACE } else { Duration::ZERO };
        let (remote, remote_recovery) = Journal::open(
            &journal_dir(&config.dir, JournalKind::Remote),
            identity(JournalKind::Remote),
            JournalOptions {
                sync_pace: remote_sync_pace,
                caller_syncs: pair.sync >= crate::config::SyncLevel::Durable,
                ..JournalOptions::default()
            },
        )?;
        if std::env::var_os(SKIP_JOURNAL_FSYNC_ENV).is_some() {
            tracing::error!("{SKIP_JOURNAL_FSYNC_ENV} is set: the journals do NOT fsync their records; acknowledged writes can be lost (for the power-loss tests only)");
            local.skip_fsync_for_tests();
            remote.skip_fsync_for_tests();
        }
        for (kind, recovery) in [("local", &local_recovery), ("remote", &remote_recovery)] {
            if let Some((path, offset, bytes, reason)) = &recovery.cut {
                tracing::warn!(journal = kind, path = %path.display(), offset, bytes, %reason, "cut a torn journal tail at open");
            }
        }
        let store = match Store::open(&config.dir.join("store")) {
            Ok(store) => Arc::new(store),
            Err(source @ crate::storage::store::StoreError::Damaged { .. }) => {
                return Err(Error::StoreDamaged { node: name.to_string(), dir: config.dir.clone(), source })
            }
            Err(other) => return Err(other.into()),
        };
        let role = meta.role;
        let replicating = !meta.replication_stopped;
        let engine = Engine::new(crate::engine::Identity {
            node: name.to_string(),
            peer: peer_config.name.clone(),
            cluster: pair.cluster,
        });
        let persisted = meta.persisted();
        let epoch = meta.epoch;
        let notify = pair.notify.clone();
        let client_memory = crate::server::memory::ClientMemory::new(pair.limits.max_client_memory);
        let node = Arc::new(Node {
            master_name: pair.name.clone(),
            heartbeat: watch::channel(pair.heartbeat).0,
            data_users: Mutex::new(None),
            pair: std::sync::RwLock::new(Arc::new(pair)),
            config,
            peer_config,
            meta: Mutex::new(meta),
            engine: Mutex::new(engine),
            clock_origin: std::time::Instant::now(),
            local,
            remote,
            store,
            role: watch::channel(role).0,
            pipeline: Mutex::new(None),
            applier: Mutex::new(None),
            peer: watch::channel(PeerState::default()).0,
            replicating: watch::channel(replicating).0,
            session_active: std::sync::atomic::AtomicBool::new(false),
            diverged_at: Mutex::new(None),
            shutdown: watch::channel(false).0,
            degraded: std::sync::atomic::AtomicBool::new(false),
            role_change: tokio::sync::Mutex::new(()),
            following: watch::channel(false).0,
            followed_until_ms: std::sync::atomic::AtomicU64::new(0),
            follower_held: watch::channel(false).0,
            copy_progress: watch::channel(None).0,
            incidents: crate::node::incident::Incidents::start(name, notify.incident_log, notify.commands),
            metrics: metrics::Counters::new(epoch),
            disk: watch::channel(disk::DiskSpace::default()).0,
            _dir_lock: dir_lock,
            client_memory,
            standing_in_doubt: std::sync::atomic::AtomicBool::new(false),
            watches: Arc::new(crate::kv::watch::Registry::default()),
            scan_cursors: crate::kv::keyspace::ScanCursors::default(),
            write_deadline: std::sync::atomic::AtomicU64::new(u64::MAX),
            witness_seen: Mutex::new(None),
            peer_config_digest: Mutex::new(None),
        });
        // Measured before the ports open: a node started on a full disk refuses from its first write.
        disk::check(&node);
        if let Some(cut_off) = node.store.copy_checkpoint()? {
            tracing::warn!(
                pairs = cut_off.pairs,
                total = cut_off.total,
                "a full copy into this node was cut off; `hotpair rejoin {name} --allow-full-copy` resumes it"
            );
            node.copy_progress.send_replace(Some((cut_off.pairs, cut_off.total)));
        }
        lock(&node.engine).set_witness(node.pair().witness.as_ref().map(crate::witness::policy));
        let met_peer = node.meta().peer.is_some();
        let recovered = crate::engine::Recovered { persisted, last_lsn: node.last_lsn(), met_peer };
        node.step_now(crate::engine::Event::Restarted(recovered))?;
        tracing::info!(
            node = name,
            role = node.role().name(),
            applied = node.store.position().applied_lsn,
            "node opened"
        );
        Ok(node)
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn role(&self) -> Role {
        *self.role.borrow()
    }

    pub fn subscribe_role(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// Whether this node's standing as primary is in doubt: a restarted primary still waiting
    /// for its peer's word that it was not promoted past it, or a primary being fenced (its
    /// pipeline refuses a moment before its role says so). Set with the pipeline's
    /// gate ([`crate::engine::Gate`]), which keeps it from writing; `ROLE` and the Sentinel
    /// port do not call it master.
    pub fn awaits_peer(&self) -> bool {
        self.pipeline().is_some() && self.standing_in_doubt.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The pair file as this node runs it now (a snapshot: a reload swaps in a new one).
    pub fn pair(&self) -> Arc<PairConfig> {
        // A poisoned lock still holds a whole config: the writer only swaps an `Arc`.
        self.pair.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Swaps in a reloaded pair file (`reload` checked what changed may change live).
    pub(crate) fn set_pair(&self, pair: PairConfig) {
        self.heartbeat.send_if_modified(|every| std::mem::replace(every, pair.heartbeat) != pair.heartbeat);
        *self.pair.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
    }

    /// The SHA-256 of the pair file this node runs.
    pub fn config_digest(&self) -> String {
        self.pair().digest.clone()
    }

    /// What the peer said of its pair file; `None` from a build that does not say.
    pub fn note_peer_config(&self, digest: Option<String>) {
        if digest.is_some() {
            *lock(&self.peer_config_digest) = digest;
        }
    }

    /// The peer's pair-file digest, as last heard.
    pub fn peer_config_digest(&self) -> Option<String> {
        lock(&self.peer_config_digest).clone()
    }

    pub fn meta(&self) -> NodeMeta {
        lock(&self.meta).clone()
    }

    pub fn pipeline(&self) -> Option<Arc<Pipeline>> {
        lock(&self.pipeline).clone()
    }

    pub fn applier(&self) -> Option<Arc<Applier>> {
        lock(&self.applier).clone()
    }

    /// The last LSN this node holds in the pair's history: in either journal, or in the store
    /// (after a full copy the store starts where the journals are empty).
    pub fn last_lsn(&self) -> Lsn {
        let journals = self.local.last_lsn().unwrap_or(0).max(self.remote.last_lsn().unwrap_or(0));
        journals.max(self.store.position().applied_lsn)
    }

    /// The frame CRCs of our records `from`, `from + 1`, … (at most `count`), as far as our
    /// journals hold them without a gap: a fingerprint of each record that a peer can compare
    /// with its own (see `wire::Message::Hello`). Reads journal files: call it off the runtime.
    pub fn record_crcs(&self, from: Lsn, count: usize) -> Vec<u32> {
        let mut crcs: Vec<u32> = Vec::new();
        while crcs.len() < count {
            let next = from + crcs.len() as u64;
            let Ok(reader) = self.journal_for(next).read_from(next) else { break };
            let before = crcs.len();
            for entry in reader {
                let Ok(entry) = entry else { break };
                if crcs.len() == count || entry.record.lsn != from + crcs.len() as u64 {
                    break;
                }
                crcs.push(crate::storage::journal::format::frame_crc(&entry.frame).unwrap_or(0));
            }
            if crcs.len() == before {
                break;
            }
        }
        crcs
    }

    /// The journal that holds `lsn`: the local one for epochs this node was primary in (see
    /// [`crate::storage::journal::holding`]).
    pub fn journal_for(&self, lsn: Lsn) -> &Journal {
        // A copy of the history: `holding` takes the journals' locks, which a segment roll holds
        // across an fsync, and the meta lock must never wait on that.
        let history = lock(&self.meta).history.clone();
        crate::storage::journal::holding(&history, self.name(), &self.local, &self.remote, lsn)
    }

    /// Applies every journal record the store does not have yet (after a crash the store may be
    /// behind: it is not flushed per record). The store holds only durable records, and the
    /// remote journal's fsyncs may be paced: both journals are made durable first.
    ///
    /// `remote_up_to` bounds what is applied from the remote journal: a record there may have been
    /// shipped before its primary's fsync and never confirmed (`replication`, "Overlapped
    /// fsyncs"), so only a promotion, which keeps everything received, passes `Lsn::MAX`. A
    /// backup applies the rest once its primary confirms it.
    fn replay(&self, remote_up_to: Lsn) -> Result<u64, Error> {
        for journal in [&self.local, &self.remote] {
            if let Some(last) = journal.last_lsn() {
                journal.sync_to(last)?;
            }
        }
        let mut total = 0;
        loop {
            let next = self.store.position().applied_lsn + 1;
            let journal = self.journal_for(next);
            let bound = if std::ptr::eq(journal, &self.remote) { remote_up_to } else { Lsn::MAX };
            // One journal holds a run of consecutive LSNs; at an epoch gap the other one goes on.
            let mut expected = next;
            let records =
                journal.read_from(next)?.map(|entry| entry.map(|e| e.record)).take_while(move |record| match record {
                    Ok(record) if record.lsn != expected || record.lsn > bound => false,
                    Ok(_) => {
                        expected += 1;
                        true
                    }
                    Err(_) => true,
                });
            let applied =
                crate::kv::pipeline::replay(&self.store, records).map_err(|e| Error::Failed(e.to_string()))?;
            if applied == 0 {
                return Ok(total);
            }
            total += applied;
        }
    }

    /// How far this node's remote journal is settled under `history`: everything before its
    /// current epoch (that epoch's primary held all of it when the epoch began) and whatever the
    /// store already applied. Past it a record may be unconfirmed.
    pub(crate) fn settled_lsn(&self, history: &[crate::storage::journal::HistoryEntry]) -> Lsn {
        let epoch_start = history.last().map_or(0, |h| h.first_lsn.saturating_sub(1));
        self.store.position().applied_lsn.max(epoch_start)
    }

    /// The frame CRC of our record at `lsn`, if our journals hold it (see [`Node::record_crcs`]).
    pub fn record_crc(&self, lsn: Lsn) -> Option<u32> {
        self.record_crcs(lsn, 1).first().copied()
    }

    /// `replicate start|stop`: saved first, so a stop holds across a restart.
    pub fn set_replicating(&self, on: bool) -> Result<(), Error> {
        if self.meta().replication_stopped == on {
            self.update_meta(|meta| meta.replication_stopped = !on)?;
        }
        self.replicating.send_replace(on);
        Ok(())
    }

    /// Changes the metadata with `change` and saves it (epoch and history only grow).
    fn update_meta(&self, change: impl FnOnce(&mut NodeMeta)) -> Result<NodeMeta, Error> {
        let mut meta = lock(&self.meta);
        let mut next = meta.clone();
        change(&mut next);
        next.save(&self.config.dir)?;
        *meta = next.clone();
        Ok(next)
    }

    /// Stops the commit pipeline once every record it appended is durable and applied.
    fn stop_pipeline(&self) -> Result<(), Error> {
        if let Some(pipeline) = lock(&self.pipeline).take() {
            if let Some(last) = self.local.last_lsn() {
                self.local.sync_to(last)?;
            }
            pipeline.shutdown();
            if let Some(reason) = pipeline.failure() {
                return Err(Error::Failed(format!("the pipeline had stopped: {reason}")));
            }
        }
        Ok(())
    }

    /// Stops the backup's applier once everything received is durable and applied.
    fn stop_applier(&self) -> Result<(), Error> {
        if let Some(applier) = lock(&self.applier).take() {
            if let Some(last) = self.remote.last_lsn() {
                self.remote.sync_to(last)?;
            }
            applier.shutdown();
            if let Some(reason) = applier.failure() {
                return Err(Error::Failed(format!("the applier had stopped: {reason}")));
            }
        }
        Ok(())
    }

    /// Starts applying what arrives in the remote journal (the backup's half of the node).
    fn start_applier(&self) {
        let mut slot = lock(&self.applier);
        if slot.is_none() {
            *slot = Some(Arc::new(self.backup_applier()));
        }
    }

    /// The backup's applier: paced like the primary's (see `applier`, "Pacing") unless the pair
    /// runs at `applied`, where every commit waits for it. A switchover's wait-applied phase
    /// hurries it; `WAIT` may wait up to one pace longer.
    fn backup_applier(&self) -> Applier {
        let pace = if self.pair().sync == crate::config::SyncLevel::Applied {
            Duration::ZERO
        } else {
            crate::kv::applier::APPLY_PACE
        };
        Applier::start_gated(self.remote.clone(), self.store.clone(), pace, |_| {})
    }

    /// Gets ready to follow a primary that welcomed us: drops the remote journal's records past
    /// `cut_after` if the primary asked (see `wire::Message::Welcome`), and restarts the applier
    /// with the remote journal's records past the store queued behind its confirmation gate (a
    /// restarted backup replays only what its store had; the rest waits for the primary's word).
    /// Returns how many records were cut.
    pub(crate) fn prepare_to_follow(&self, cut_after: Option<Lsn>) -> Result<u64, Error> {
        // Out of its slot before it stops: a waiter for an applied LSN (`wait_applied`) then looks
        // again shortly rather than at a watch that no longer moves.
        let old = lock(&self.applier).take();
        if let Some(old) = old {
            let stopped = match self.remote.last_lsn() {
                Some(last) => self.remote.sync_to(last).map_err(Error::from),
                None => Ok(()),
            };
            old.shutdown();
            // A failed applier goes back in its place, failure and all (status shows it): the
            // store may hold half a run, and only an admin may decide what comes next.
            let failure = old.failure();
            if stopped.is_err() || failure.is_some() {
                *lock(&self.applier) = Some(old);
            }
            stopped?;
            if let Some(reason) = failure {
                return Err(Error::Failed(format!("applier stopped: {reason}")));
            }
        }
        let cut = self.cut_unconfirmed_tail(cut_after);
        self.start_applier();
        let cut = cut?;
        let Some(applier) = self.applier() else {
            return Err(Error::Failed("this node has no applier (not a backup)".into()));
        };
        let from = self.store.position().applied_lsn + 1;
        if self.remote.last_lsn().is_some_and(|last| last >= from) && std::ptr::eq(self.journal_for(from), &self.remote)
        {
            for (expected, entry) in (from..).zip(self.remote.read_from(from)?) {
                let record = entry?.record;
                if record.lsn != expected {
                    break;
                }
                applier.submit(record).map_err(Error::Failed)?;
            }
        }
        Ok(cut)
    }

    fn cut_unconfirmed_tail(&self, cut_after: Option<Lsn>) -> Result<u64, Error> {
        let Some(cut) = cut_after else { return Ok(0) };
        let applied = self.store.position().applied_lsn;
        if applied > cut {
            // Status says so: this node needs a rejoin, as after any divergence.
            *lock(&self.diverged_at) = Some(cut);
            return Err(Error::Failed(format!(
                "the primary asks us to drop the records past LSN {cut}, but our store has applied up to LSN {applied}; not following (hotpair rejoin {})",
                self.name()
            )));
        }
        let held = self.remote.last_lsn().unwrap_or(0);
        self.remote.truncate_after(cut)?;
        let dropped = held.saturating_sub(cut);
        tracing::warn!(
            cut_after = cut,
            dropped,
            "dropped records the primary shipped before its fsync and no longer holds (it crashed); none was applied or acknowledged"
        );
        Ok(dropped)
    }

    /// Notes that a commit was acknowledged without the peer; logged loudly the first time.
    pub fn note_degraded(&self) {
        if !self.degraded.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let message = format!(
                "sync level degraded: acknowledging commits without {} (on_peer_loss = degrade-after)",
                self.peer_config.name
            );
            self.incidents.raise(Kind::SyncDegraded, Severity::Critical, message);
        }
    }

    /// The peer is back: commits wait for it again.
    pub fn note_restored(&self) {
        if self.degraded.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let message = format!("sync level restored: {} is back", self.peer_config.name);
            self.incidents.resolve(Kind::SyncDegraded, message);
        }
    }

    /// The error a write gets while disk space is low (see [`disk`]), `None` otherwise.
    pub fn disk_refusal(&self) -> Option<String> {
        self.disk.borrow().refusal(self.name(), self.pair().disk_min_free)
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How far the peer has acknowledged durably while this node was primary of its current
    /// epoch: the larger of what this process heard and what was saved before a restart.
    pub fn peer_acknowledged(&self) -> Lsn {
        let heard = if self.pipeline().is_some() { self.capped_peer_durable() } else { 0 };
        let meta = lock(&self.meta);
        let saved = meta.peer.as_ref().filter(|p| p.epoch == meta.epoch).map_or(0, |p| p.durable_lsn);
        saved.max(heard)
    }

    /// The backup's durable ack, capped at our own durable LSN: records are shipped before our
    /// fsync, and a crash could take from us what the backup holds; only what both hold durably
    /// is the backup's position for good (the cut at its next welcome may drop the rest).
    fn capped_peer_durable(&self) -> Lsn {
        let ours = self.local.durable_lsn().max(self.remote.durable_lsn());
        self.peer.borrow().durable_lsn.min(ours)
    }

    /// Saves how far the backup has acknowledged durably in this epoch, so that after a restart
    /// the primary still recognises a peer that comes back with less. Called by the monitor
    /// (about once a second) and when a backup session ends; does nothing when nothing moved.
    /// The saved value may trail the acks by up to a second; it is never raised past them.
    pub fn save_peer_position(&self) -> Result<(), Error> {
        if self.pipeline().is_none() {
            return Ok(());
        }
        let heard = self.capped_peer_durable();
        let mut meta = lock(&self.meta);
        let epoch = meta.epoch;
        let Some(peer) = meta.peer.as_mut() else { return Ok(()) };
        let moved = if peer.epoch == epoch { heard > peer.durable_lsn } else { heard > 0 };
        if !moved {
            return Ok(());
        }
        (peer.epoch, peer.durable_lsn) = (epoch, heard);
        Ok(meta.save(&self.config.dir)?)
    }

    /// Forgets what the peer acknowledged (it is being copied afresh, as the admin allowed):
    /// what it holds from now on is all that counts.
    pub fn forget_peer_position(&self) -> Result<(), Error> {
        self.forget_peer_acks();
        let mut meta = lock(&self.meta);
        match meta.peer.as_mut() {
            Some(peer) if peer.durable_lsn > 0 => peer.durable_lsn = 0,
            _ => return Ok(()),
        }
        Ok(meta.save(&self.config.dir)?)
    }

    /// The acks heard from the peer in this process, dropped. Lowering them only makes waiting
    /// commits wait for the peer's next acks.
    fn forget_peer_acks(&self) {
        self.peer.send_modify(|s| (s.received_lsn, s.durable_lsn, s.applied_lsn) = (0, 0, 0));
    }

    /// Takes `incarnation` as the peer's (a rebuilt data directory the admin accepted): the
    /// next hello with it is welcome, and the second-installation incident is closed. Its saved
    /// position starts again from nothing.
    pub fn accept_peer(&self, incarnation: uuid::Uuid) -> Result<(), Error> {
        self.forget_peer_acks();
        let mut meta = lock(&self.meta);
        let epoch = meta.epoch;
        meta.peer = Some(crate::storage::meta::PeerPosition { incarnation, epoch, durable_lsn: 0 });
        meta.save(&self.config.dir)?;
        drop(meta);
        tracing::warn!(peer = %self.peer_config.name, %incarnation, "the admin accepted a new incarnation of the peer");
        let message = format!("{} is accepted with its new incarnation {incarnation}", self.peer_config.name);
        self.incidents.resolve(crate::node::incident::Kind::SecondInstallation, message);
        Ok(())
    }

    /// Clean shutdown: stop the tasks, drain the appliers, sync journals, flush the store.
    pub fn close(&self) -> Result<(), Error> {
        self.shutdown.send_replace(true);
        // Not a reason to skip syncing the journals below.
        if let Err(err) = self.save_peer_position() {
            tracing::warn!(error = %err, "saving the backup's acknowledged position at shutdown");
        }
        if let Some(pipeline) = lock(&self.pipeline).take() {
            if let Some(last) = self.local.last_lsn() {
                self.local.sync_to(last)?;
            }
            pipeline.shutdown();
        }
        if let Some(applier) = lock(&self.applier).take() {
            if let Some(last) = self.remote.last_lsn() {
                self.remote.sync_to(last)?;
            }
            applier.shutdown();
        }
        self.store.flush()?;
        Ok(())
    }
}

/// Tests only: a delay the local journal waits after each fsync before calling it done, so that
/// a test can kill a primary while records it shipped are not yet durable by its own account,
/// then cut them from its journal, as a power loss would (docs/operations.md).
pub const SIMULATED_FSYNC_DELAY_ENV: &str = "HOTPAIR_SIMULATED_LOCAL_FSYNC_DELAY";

/// Tests only, and unsafe: set (to anything) and the node's journals skip the fsyncs that make
/// records durable, while calling them durable. The power-loss tests run a node so to show that
/// they catch a missing fsync (docs/operations.md, "Power-loss tests").
pub const SKIP_JOURNAL_FSYNC_ENV: &str = "HOTPAIR_UNSAFE_TEST_SKIP_JOURNAL_FSYNC";

/// Tests only: a delay the local journal's flusher waits before each write, so that a test can
/// kill a primary whose records were shipped (from memory) but never written (docs/operations.md).
pub const SIMULATED_WRITE_DELAY_ENV: &str = "HOTPAIR_SIMULATED_LOCAL_WRITE_DELAY";

/// Tests only: a delay a node receiving a full copy waits before writing each batch, so that a
/// test can kill either node in the middle of a copy (`copy`, "Resuming").
pub const SIMULATED_COPY_DELAY_ENV: &str = "HOTPAIR_SIMULATED_COPY_DELAY";

fn simulated_delay(variable: &str) -> Result<Option<Duration>, Error> {
    match std::env::var(variable) {
        Ok(text) => humantime::parse_duration(&text)
            .map(Some)
            .map_err(|e| Error::Failed(format!("{variable}={text:?} is not a duration: {e}"))),
        Err(_) => Ok(None),
    }
}

pub fn journal_dir(node_dir: &Path, kind: JournalKind) -> PathBuf {
    node_dir.join("journal").join(kind.name())
}

/// Runs node `name` of the pair until SIGINT or SIGTERM.
pub fn run(pair: PairConfig, name: &str) -> Result<(), Error> {
    // Before anything is opened or served: a node that cannot prove who it is must not start
    // (it used to serve its data port without a control port, and exit 0 at SIGTERM).
    crate::tls::check_node_files(&pair, name)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // `TOKIO_WORKER_THREADS` in the environment wins (tokio reads it when no count is set).
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(async_workers());
    }
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|source| Error::Io { context: "starting the async runtime".into(), source })?;
    // Journals, store, meta.json, orphans files and the incident log: the owner's alone.
    crate::storage::datadir::restrict_new_files();
    let outcome = runtime.block_on(async move {
        let node = Node::open(pair, name)?;
        let result = serve(node.clone()).await;
        close_within(node, SHUTDOWN_LIMIT)?;
        tracing::info!(node = name, "stopped cleanly");
        result
    });
    // A task blocked in the store (a failed sled) must not hold the exit up either.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_LIMIT);
    outcome
}

/// How long a clean shutdown may take (syncing the journals, draining the appliers, flushing
/// the store) before the node exits anyway, saying so: SIGTERM always ends the process.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);
/// How long the async runtime's tasks get to end once the node is closed.
const RUNTIME_SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);

/// [`Node::close`], bounded by `limit`. Past it the node is left as it is (not even dropped:
/// the store's drop flushes too) and the process exits; what was acknowledged was durable in
/// the journals before it was acknowledged, and the next start replays them into the store.
fn close_within(node: Arc<Node>, limit: Duration) -> Result<(), Error> {
    let (done, outcome) = std::sync::mpsc::channel();
    let closing = node.clone();
    std::thread::Builder::new()
        .name("node-close".into())
        .spawn(move || {
            let _ = done.send(closing.close());
        })
        .map_err(|source| Error::Io { context: "starting the shutdown thread".into(), source })?;
    match outcome.recv_timeout(limit) {
        Ok(result) => result,
        Err(_) => {
            std::mem::forget(node);
            Err(Error::Failed(format!(
                "the clean shutdown did not finish within {}; exiting without it (acknowledged writes are in the journals, which the next start replays)",
                humantime::format_duration(limit)
            )))
        }
    }
}

/// Async worker threads: one core fewer than the machine has (at least one). The journals'
/// flusher threads and the applier run beside them on their own threads and are busy at every
/// commit; on 2 cores, two workers plus those threads made the node slower and costlier per
/// request than one worker did (docs/benchmarks.md, "One async worker on 2 cores").
fn async_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    cores.saturating_sub(1).max(1)
}

async fn serve(node: Arc<Node>) -> Result<(), Error> {
    // Before any port opens: a password file or data-port certificate that cannot be used stops
    // the node here, naming the file, rather than leaving it up without its data port.
    let data_security = backend::DataSecurity::load(&node)?;
    *lock(&node.data_users) = data_security.users();
    let control = bind(node.config.control, "control").await?;
    let data = bind(node.config.data, "data").await?;
    let sentinel = bind(node.config.sentinel, "sentinel").await?;
    let metrics_listener = match node.config.metrics {
        Some(address) => Some(bind(address, "metrics").await?),
        None => None,
    };
    eprintln!(
        "hotpair node {} ({}, epoch {}) control {} data {} sentinel {}",
        node.name(),
        node.role().name(),
        node.meta().epoch,
        node.config.control,
        node.config.data,
        node.config.sentinel
    );
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(control::serve(node.clone(), control));
    let sentinel_users = data_security.users();
    tasks.spawn(backend::serve(node.clone(), data, data_security));
    tasks.spawn(crate::sentinel::serve(node.clone(), sentinel, sentinel_users));
    tasks.spawn(follow::run_on_own_thread(node.clone()));
    tasks.spawn(monitor::run(node.clone()));
    tasks.spawn(monitor::write_canaries(node.clone()));
    tasks.spawn(monitor::check_digests(node.clone()));
    if let Some(listener) = metrics_listener {
        tasks.spawn(metrics::serve(node.clone(), listener));
    }
    tasks.spawn(disk::run(node.clone()));
    tasks.spawn(expiry::run(node.clone()));
    tasks.spawn(apply::tick(node.clone()));
    if node.pair().witness.is_some() {
        tasks.spawn(crate::witness::agent::run(node.clone()));
    }
    journal_check::start(node.clone());
    wait_for_signal().await;
    node.shutdown.send_replace(true);
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(err)) = done {
            tracing::warn!(%err, "task ended with an error during shutdown");
        }
    }
    Ok(())
}

async fn bind(address: std::net::SocketAddr, port: &str) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| Error::Io { context: format!("binding the {port} port {address}"), source })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data behind the lock; a panicked holder leaves nothing half-done that matters more.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
