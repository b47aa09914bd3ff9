//! The orchestrator: the admin CLI's side of switchover, failover, rejoin, switchback and
//! verify. The [`plan`]ner decides, from both nodes' status, the saved progress and what this
//! run heard so far, the next step; the CLI ([`commands`]) only carries steps out — sends a
//! primitive of [`crate::node::primitives`], saves progress, waits — printing each phase with
//! its duration.
//!
//! ## Invariants
//! - Every primitive it sends carries the run's `op_id` and the epoch it saw; the nodes refuse
//!   stale ones, so two orchestrators (or a re-run racing an old one) cannot both win.
//! - Before the first step that changes anything, the run's [`Progress`] is saved on both
//!   nodes; a re-run reads it and resumes (or says it rolls back) instead of starting blind.
//! - Outcomes map to exit codes as INTERFACE.md promises: 0 done, 1 refused or failed with
//!   nothing changed, 3 failed part-way (the message names the command that resumes it).
//!
//! - A switchover keeps its progress until it has verified: a re-run after any interruption
//!   finishes the one under way instead of starting another, and never promotes without the
//!   drain LSN.
//!
//! ## Parts
//! [`view`] reads where the pair stands; [`plan`] decides; [`commands`] runs the steps.

pub mod commands;
pub mod plan;
pub mod reload;
pub mod view;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::config::PairConfig;
use crate::replication::wire::AdminRequest;
use crate::storage::journal::{Epoch, Lsn};

pub use commands::{failover, rejoin, switchback, switchover, verify};
pub use reload::reload;

/// The phases of the orchestration commands, as they are printed and persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Preflight,
    Drain,
    WaitApplied,
    Demote,
    Promote,
    Fence,
    Rejoin,
    FullCopy,
    CatchUp,
    Reverse,
    Verify,
    /// A switchover undoing its drain: the old primary takes writes again.
    RollBack,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Preflight => "preflight",
            Step::Drain => "drain",
            Step::WaitApplied => "wait-applied",
            Step::Demote => "demote",
            Step::Promote => "promote",
            Step::Fence => "fence",
            Step::Rejoin => "rejoin",
            Step::FullCopy => "full-copy",
            Step::CatchUp => "catch-up",
            Step::Reverse => "reverse",
            Step::Verify => "verify",
            Step::RollBack => "roll-back",
        }
    }

    /// How far a run had got: the record of the most advanced step wins (a node that was
    /// unreachable at a save holds an older one).
    pub fn rank(self) -> u8 {
        match self {
            Step::Preflight => 0,
            Step::Drain => 1,
            Step::WaitApplied => 2,
            Step::Demote => 3,
            Step::Promote => 4,
            Step::Fence | Step::Rejoin | Step::FullCopy => 5,
            Step::Reverse | Step::CatchUp => 6,
            Step::Verify => 7,
            Step::RollBack => 8,
        }
    }
}

/// What a run saves on both nodes (`meta.orchestration`) before it changes anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub op_id: Uuid,
    pub command: String,
    pub from: String,
    pub to: String,
    /// The epoch the pair was in when the run began.
    pub epoch: Epoch,
    /// The step about to run.
    pub step: Step,
    /// The drained primary's last LSN, once known.
    pub drain_lsn: Option<Lsn>,
    /// The drained primary's digest at `drain_lsn` (progress saved by older builds lacks it).
    #[serde(default)]
    pub drain_digest: Option<String>,
    /// The new epoch's first LSN, once promoted.
    #[serde(default)]
    pub first_lsn: Option<Lsn>,
    /// Why a switchover is being rolled back.
    #[serde(default)]
    pub reason: Option<String>,
}

/// How a command ended.
#[derive(Debug, thiserror::Error)]
pub enum OrchestrationError {
    /// Refused before changing anything (exit 1).
    #[error("{0}")]
    Refused(String),
    /// Failed after changing something; `resume` is the command that continues (exit 3).
    #[error("{reason} — run `{resume}` to resume")]
    PartWay { reason: String, resume: String },
}

impl OrchestrationError {
    pub fn exit_code(&self) -> u8 {
        match self {
            OrchestrationError::Refused(_) => 1,
            OrchestrationError::PartWay { .. } => 3,
        }
    }
}

/// The record of one command's run: phases with durations, details, the outcome line.
pub struct Run {
    pub command: &'static str,
    pub pair: PairConfig,
    pub op_id: Uuid,
    quiet: bool,
    started: Instant,
    /// Admin connections to the nodes, reused across the run's requests.
    sessions: crate::admin::client::Sessions,
    phases: std::cell::RefCell<Vec<(String, Duration)>>,
    details: std::cell::RefCell<Map<String, Value>>,
}

impl Run {
    pub fn new(command: &'static str, pair: &PairConfig, json: bool) -> Run {
        Run {
            command,
            pair: pair.clone(),
            op_id: Uuid::new_v4(),
            quiet: json,
            started: Instant::now(),
            sessions: crate::admin::client::Sessions::new(pair),
            phases: Default::default(),
            details: Default::default(),
        }
    }

    /// Prints a line for people (not in `--json` mode).
    pub fn say(&self, line: impl AsRef<str>) {
        if !self.quiet {
            println!("{}", line.as_ref());
        }
    }

    /// Records a phase that took `took`, and prints it with a note about what it found.
    pub fn record_phase(&self, step: Step, took: Duration, note: &str) {
        self.phases.borrow_mut().push((step.name().to_string(), took));
        self.say(format!("  {:<13} {:>9}  {note}", step.name(), format_ms(took)));
    }

    /// Both nodes' status, over this run's admin connections.
    pub async fn look(&self) -> view::PairView {
        view::PairView::load(&self.pair, &self.sessions).await
    }

    /// The summed duration of the named phases run so far, in ms.
    pub fn phases_ms(&self, steps: &[Step]) -> f64 {
        let names: Vec<&str> = steps.iter().map(|s| s.name()).collect();
        let phases = self.phases.borrow();
        phases
            .iter()
            .filter(|(name, _)| names.contains(&name.as_str()))
            .map(|(_, took)| took.as_secs_f64() * 1000.0)
            .sum()
    }

    pub fn detail(&self, key: &str, value: impl Serialize) {
        self.details.borrow_mut().insert(key.to_string(), json!(value));
    }

    /// Sends a primitive to `node`, turning a refusal into `Err(reason)`.
    pub async fn send(&self, node: &str, request: AdminRequest, timeout: Duration) -> Result<Value, String> {
        self.sessions.request(node, request, timeout).await
    }

    /// Saves (or clears) this run's progress on both nodes; unreachable nodes are skipped
    /// (the other one keeps it, and a re-run reads the most advanced of the two).
    pub async fn save_progress(&self, progress: Option<&Progress>) {
        let value = progress.map(|p| json!(p));
        let save = |name: String| {
            let request = AdminRequest::SetProgress { progress: value.clone() };
            async move {
                if let Err(reason) = self.send(&name, request, crate::admin::client::ADMIN_TIMEOUT).await {
                    tracing::info!(node = %name, %reason, "could not save orchestration progress");
                }
            }
        };
        // Both at once: the saves between phases lie inside a switchover's write outage.
        // Invariant: a loaded pair file has exactly two nodes.
        let [first, second] = [0, 1].map(|i| self.pair.nodes[i].name.clone());
        tokio::join!(save(first), save(second));
    }

    /// Prints the outcome (a line, or the JSON object) and returns the exit code.
    pub fn finish(self, result: Result<String, OrchestrationError>) -> u8 {
        let total = self.started.elapsed();
        let (ok, outcome, code) = match &result {
            Ok(line) => (true, line.clone(), 0),
            Err(err) => (false, err.to_string(), err.exit_code()),
        };
        if self.quiet {
            let phases: Vec<Value> = self
                .phases
                .borrow()
                .iter()
                .map(|(name, took)| json!({ "name": name, "ms": took.as_secs_f64() * 1000.0 }))
                .collect();
            let report = json!({
                "command": self.command,
                "ok": ok,
                "exit_code": code,
                "op_id": self.op_id,
                "outcome": outcome,
                "total_ms": total.as_secs_f64() * 1000.0,
                "phases": phases,
                "details": Value::Object(self.details.take()),
            });
            println!("{report}");
        } else if ok {
            println!("{} done in {}: {outcome}", self.command, format_ms(total));
        } else {
            eprintln!("hotpair {}: {outcome}", self.command);
        }
        code
    }
}

pub fn format_ms(took: Duration) -> String {
    format!("{:.1} ms", took.as_secs_f64() * 1000.0)
}
