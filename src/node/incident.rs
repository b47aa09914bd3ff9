//! Incidents: what an admin must hear about, raised where it is detected, written to the
//! incident log and handed to every notification command.
//!
//! ## Job
//! [`Incidents::raise`] opens an incident of a [`Kind`] (or refreshes the open one) and
//! [`Incidents::resolve`] closes it with a resolution event. Each event goes, as one JSON object,
//! to the incident log (JSON lines, `notify.incident_log`) and on stdin to each
//! `notify.commands` entry (run with `sh -c`).
//!
//! ## Invariants
//! - Raising never blocks the caller: events go through a bounded queue to one notifier thread;
//!   when the queue is full the event is dropped and counted (`dropped`, shown in `status`).
//! - A slow or hanging command cannot stall the node: each runs with a deadline
//!   ([`COMMAND_DEADLINE`]) and is killed past it; the log is written before the commands run.
//! - Repeats are rate-limited, not lost: while an incident of a kind is open, raising it again
//!   updates its message and count, and is re-sent at most once per [`REPEAT_INTERVAL`] —
//!   at once if the severity rose (an open incident's severity never falls).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Events waiting for the notifier beyond this are dropped (and counted).
pub const QUEUE: usize = 256;
/// How long one notification command may run before it is killed.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(10);
/// An open incident raised again is re-sent at most this often.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(30);

/// What happened. The names are what the log, commands and `status` show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    PeerLost,
    ReplicationStopped,
    HeartbeatGap,
    ApplyError,
    DigestMismatch,
    SyncDegraded,
    SplitBrain,
    /// The primary of a superseded epoch came back (after a failover) and was told to fence.
    StalePrimary,
    /// The peer runs another pair file (its hello's digest differs from ours).
    ConfigDrift,
    /// A restarted primary took a new epoch without its peer (`failover --to it --force`).
    ForcedPromotion,
    Fenced,
    OrphanedTail,
    SecondInstallation,
    LagHigh,
    CanaryOverdue,
    RetentionPinned,
    /// Free space below `disk_min_free`: writes refused, backup not receiving.
    DiskLow,
    /// A closed journal segment no longer matches the CRC its seal recorded when it was closed
    /// (found by the background check after start; `journal::seal`).
    JournalDamaged,
    /// The primary cannot renew its witness lease (`crate::witness`).
    WitnessLost,
    /// The backup took over through the witness (or, in observe mode, would have).
    AutoFailover,
    /// A fenced old primary rejoined behind the new one by itself.
    AutoRejoin,
    /// The witness would have failed over but a condition held it back (the message says which).
    FailoverSuppressed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// One incident event as it is logged and sent.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub kind: Kind,
    pub severity: Severity,
    pub node: String,
    pub time_ms: u64,
    pub message: String,
    /// `open` when raised (or repeated), `resolved` when it cleared.
    pub state: &'static str,
    /// How many times it was raised while open.
    pub count: u64,
}

struct Open {
    event: Event,
    last_sent: Instant,
}

pub struct Incidents {
    node: String,
    open: Mutex<BTreeMap<Kind, Open>>,
    queue: SyncSender<Event>,
    dropped: AtomicU64,
    /// Events queued and not yet logged and handed to every command (`incidents_pending` in
    /// status: zero means every event raised so far was delivered).
    pending: Arc<AtomicU64>,
    /// Incidents opened so far, by kind (repeats of an open one not counted), for metrics.
    raised: Mutex<BTreeMap<Kind, u64>>,
    /// Where events go (`notify.incident_log`, `notify.commands`): `hotpair reload` may change
    /// them; the notifier reads them afresh for each event.
    targets: Arc<Mutex<(PathBuf, Vec<String>)>>,
}

impl Incidents {
    /// Starts the notifier thread for `node`.
    pub fn start(node: &str, log: PathBuf, commands: Vec<String>) -> Incidents {
        let (queue, events) = sync_channel(QUEUE);
        let pending = Arc::new(AtomicU64::new(0));
        let counted = pending.clone();
        let targets = Arc::new(Mutex::new((log, commands)));
        let read_by_loop = targets.clone();
        let spawned = std::thread::Builder::new()
            .name("notifier".into())
            .spawn(move || notify_loop(events, &read_by_loop, &counted));
        if let Err(err) = spawned {
            tracing::error!(%err, "could not start the notifier thread; incidents go to the node log only");
        }
        Incidents {
            node: node.to_string(),
            open: Mutex::new(BTreeMap::new()),
            queue,
            dropped: AtomicU64::new(0),
            pending,
            raised: Mutex::new(BTreeMap::new()),
            targets,
        }
    }

    /// Sends the events raised from now on to `log` and `commands` (`hotpair reload`).
    pub fn set_targets(&self, log: PathBuf, commands: Vec<String>) {
        *lock(&self.targets) = (log, commands);
    }

    /// Opens (or refreshes) an incident of `kind`.
    pub fn raise(&self, kind: Kind, severity: Severity, message: impl Into<String>) {
        let message = message.into();
        let mut open = lock(&self.open);
        let now = Instant::now();
        let event = match open.get_mut(&kind) {
            Some(existing) => {
                existing.event.count += 1;
                existing.event.message = message;
                existing.event.time_ms = crate::clock::now_ms();
                // A graver severity (a planned outage that outlived its plan) is news: sent now.
                let graver = severity > existing.event.severity;
                existing.event.severity = existing.event.severity.max(severity);
                if !graver && now.duration_since(existing.last_sent) < REPEAT_INTERVAL {
                    return;
                }
                existing.last_sent = now;
                existing.event.clone()
            }
            None => {
                let event = Event {
                    kind,
                    severity,
                    node: self.node.clone(),
                    time_ms: crate::clock::now_ms(),
                    message,
                    state: "open",
                    count: 1,
                };
                open.insert(kind, Open { event: event.clone(), last_sent: now });
                *lock(&self.raised).entry(kind).or_default() += 1;
                event
            }
        };
        drop(open);
        tracing::error!(kind = ?event.kind, message = %event.message, "INCIDENT");
        self.send(event);
    }

    /// Closes the open incident of `kind`, if any, with a resolution event.
    pub fn resolve(&self, kind: Kind, message: impl Into<String>) {
        let Some(open) = lock(&self.open).remove(&kind) else {
            return;
        };
        let event = Event { time_ms: crate::clock::now_ms(), message: message.into(), state: "resolved", ..open.event };
        tracing::warn!(kind = ?event.kind, message = %event.message, "INCIDENT resolved");
        self.send(event);
    }

    pub fn is_open(&self, kind: Kind) -> bool {
        lock(&self.open).contains_key(&kind)
    }

    /// The open incidents, for `status`.
    pub fn open(&self) -> Vec<Event> {
        lock(&self.open).values().map(|o| o.event.clone()).collect()
    }

    /// How many incidents of each kind were opened since the node started (only kinds seen).
    pub fn raised(&self) -> BTreeMap<Kind, u64> {
        lock(&self.raised).clone()
    }

    /// Events dropped because the notifier was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events raised or resolved but not yet delivered.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::SeqCst)
    }

    fn send(&self, event: Event) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.queue.try_send(event) {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn notify_loop(events: Receiver<Event>, targets: &Mutex<(PathBuf, Vec<String>)>, pending: &AtomicU64) {
    for event in events {
        let (log, commands) = targets.lock().unwrap_or_else(|e| e.into_inner()).clone();
        deliver(&event, &log, &commands);
        pending.fetch_sub(1, Ordering::SeqCst);
    }
}

fn deliver(event: &Event, log: &std::path::Path, commands: &[String]) {
    let line = serde_json::to_string(event).unwrap_or_default();
    let logged = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(crate::storage::datadir::PRIVATE_FILE_MODE)
        .open(log)
        .and_then(|mut file| file.write_all(format!("{line}\n").as_bytes()));
    if let Err(err) = logged {
        tracing::warn!(path = %log.display(), %err, "could not append to the incident log");
    }
    for command in commands {
        if let Err(reason) = run_command(command, &line) {
            tracing::warn!(%command, %reason, "notification command failed");
        }
    }
}

/// Runs `command` with `input` on stdin, killing it past [`COMMAND_DEADLINE`].
fn run_command(command: &str, input: &str) -> Result<(), String> {
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("could not start: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input must not hang us: its pipe closing is fine.
        let _ = stdin.write_all(input.as_bytes());
        let _ = stdin.write_all(b"\n");
    }
    let deadline = Instant::now() + COMMAND_DEADLINE;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("exited with {status}")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("still running after {}; killed", humantime::format_duration(COMMAND_DEADLINE)));
            }
            // Polling a child is the portable way to bound its run time without a thread each.
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(err) => return Err(err.to_string()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data behind the lock; a panicked holder leaves nothing half-done that matters more.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn raise_repeat_and_resolve_reach_the_log_and_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("incidents.jsonl");
        let seen = dir.path().join("seen.jsonl");
        let incidents = Incidents::start("a", log.clone(), vec![format!("cat >> {}", seen.display())]);
        incidents.raise(Kind::PeerLost, Severity::Critical, "b is gone");
        incidents.raise(Kind::PeerLost, Severity::Critical, "b is still gone");
        assert!(incidents.is_open(Kind::PeerLost));
        assert_eq!(incidents.open()[0].count, 2, "the repeat is counted");
        assert_eq!(incidents.raised().get(&Kind::PeerLost), Some(&1), "a repeat is not a new incident");
        incidents.resolve(Kind::PeerLost, "b is back");
        assert!(!incidents.is_open(Kind::PeerLost));
        let logged = wait_for_lines(&log, 2);
        assert_eq!(logged.len(), 2, "the repeat within the interval is not re-sent: {logged:?}");
        assert_eq!(logged[0]["kind"], "peer-lost");
        assert_eq!(logged[0]["state"], "open");
        assert_eq!(logged[1]["state"], "resolved");
        assert_eq!(logged[1]["count"], 2);
        assert_eq!(wait_for_lines(&seen, 2).len(), 2, "the command got both events on stdin");
    }

    #[test]
    fn a_hanging_command_never_blocks_raising_and_overflow_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let incidents = Incidents::start("a", dir.path().join("log.jsonl"), vec!["sleep 60".into()]);
        let started = Instant::now();
        for i in 0..(QUEUE + 50) {
            incidents.raise(Kind::ApplyError, Severity::Critical, format!("error {i}"));
            incidents.resolve(Kind::ApplyError, "cleared");
        }
        assert!(started.elapsed() < COMMAND_DEADLINE, "raising waited for the command");
        assert!(incidents.dropped() > 0, "a full queue drops and counts");
    }
}
