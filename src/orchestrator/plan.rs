//! The orchestrator's decisions: [`plan`] takes the command, both nodes' status ([`PairView`])
//! and what this run saved and heard so far ([`Memory`]) and returns the next step ([`Next`]).
//! Pure: no I/O, no clock; the CLI ([`super::commands`]) and the simulation
//! (`tests/simulation.rs`) carry the steps out and call it again.
//!
//! ## Invariants
//! - Nothing changes before the run's [`Progress`] is saved, and a switchover's progress stays
//!   until it has verified: a re-run finishes the switchover under way, wherever it stopped,
//!   and never starts a second role swap in its place.
//! - A switchover never promotes without the drain LSN (`expect_lsn`), and verifies at it.
//! - A roll-back is saved as such before it resumes the old primary, so a re-run finishes it.
//! - Two values compared to catch a restored copy are read in an order that cannot make a
//!   healthy, moving pair look like one (the primary's acknowledged LSN first, then the node's).
//! - Every message names the node that is unreachable when that is why a run stopped.

use serde_json::{json, Value};
use uuid::Uuid;

use super::view::{NodeView, PairView};
use super::{OrchestrationError, Progress, Step};
use crate::admin::protocol::{
    read, DemoteReply, DrainReply, FenceReply, PromoteReply, RejoinReply, ResumeReply, StatusView, VerifyReply,
    WaitAppliedReply,
};
use crate::replication::wire::AdminRequest;
use crate::storage::journal::Lsn;
use crate::storage::meta::Role;

use OrchestrationError::{PartWay, Refused};

/// Free space a node needs for a switchover to be started.
pub const MIN_DISK_FREE: u64 = 64 * 1024 * 1024;
/// Bound on a single quick primitive (drain, demote, promote, fence).
pub const STEP_TIMEOUT_MS: u64 = 15_000;
/// How close (in records) a switchback waits for the preferred node to come before it swaps.
const SWITCHBACK_CLOSE_ENOUGH: Lsn = 64;

/// What the admin asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Switchover {
        to: Option<String>,
        timeout_ms: u64,
        max_lag_ms: u64,
        dry_run: bool,
    },
    Failover {
        to: String,
        force: bool,
    },
    Rejoin {
        node: String,
        allow_full_copy: bool,
        catch_up_ms: u64,
    },
    /// Back to `preferred` (the pair file's first node).
    Switchback {
        preferred: String,
        timeout_ms: u64,
    },
}

/// A typed answer to a primitive.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Drained(DrainReply),
    Resumed(ResumeReply),
    Demoted(DemoteReply),
    Promoted(PromoteReply),
    Fenced(FenceReply),
    WaitApplied(WaitAppliedReply),
    Rejoin(RejoinReply),
    Verified(VerifyReply),
    FirstAvailable(Lsn),
    Accepted,
    Status(Box<StatusView>),
}

/// What happened in this run, in order.
// A run hears a few dozen of these; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Heard {
    Said(String),
    Reply { step: Step, node: String, request: AdminRequest, answer: Result<Answer, String> },
    Waited { step: Step, result: Result<(), String> },
}

/// What the planner knows beyond the view: the run's id, the progress as saved (or as found on
/// the nodes when the run began), and what it heard.
#[derive(Debug, Clone, PartialEq)]
pub struct Memory {
    pub op_id: Uuid,
    pub progress: Option<Progress>,
    pub heard: Vec<Heard>,
}

impl Memory {
    pub fn new(op_id: Uuid, progress: Option<Progress>) -> Memory {
        Memory { op_id, progress, heard: Vec::new() }
    }

    fn said(&self, line: &str) -> bool {
        self.heard.iter().any(|h| matches!(h, Heard::Said(said) if said == line))
    }

    /// The last answer of `node` to a request of this `kind` in this run.
    fn answer(&self, node: &str, kind: Kind) -> Option<&Result<Answer, String>> {
        self.heard.iter().rev().find_map(|h| match h {
            Heard::Reply { node: n, request, answer, .. } if n == node && Kind::of(request) == kind => Some(answer),
            _ => None,
        })
    }

    fn waited(&self, step: Step) -> Option<&Result<(), String>> {
        self.heard.iter().rev().find_map(|h| match h {
            Heard::Waited { step: s, result } if *s == step => Some(result),
            _ => None,
        })
    }
}

/// The kinds of request, to find an answer in what was heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Drain,
    Resume,
    Demote,
    Promote,
    Fence,
    WaitApplied,
    RejoinDry,
    Rejoin,
    Verify,
    FirstAvailable,
    AcceptPeer,
    Status,
    Other,
}

impl Kind {
    fn of(request: &AdminRequest) -> Kind {
        match request {
            AdminRequest::Drain { .. } => Kind::Drain,
            AdminRequest::Resume { .. } => Kind::Resume,
            AdminRequest::Demote { .. } => Kind::Demote,
            AdminRequest::Promote { .. } => Kind::Promote,
            AdminRequest::Fence { .. } => Kind::Fence,
            AdminRequest::WaitApplied { .. } => Kind::WaitApplied,
            AdminRequest::Rejoin { dry_run: true, .. } => Kind::RejoinDry,
            AdminRequest::Rejoin { .. } => Kind::Rejoin,
            AdminRequest::Verify { .. } => Kind::Verify,
            AdminRequest::FirstAvailable => Kind::FirstAvailable,
            AdminRequest::AcceptPeer { .. } => Kind::AcceptPeer,
            AdminRequest::Status => Kind::Status,
            _ => Kind::Other,
        }
    }
}

/// Reads a reply body as the struct its request calls for: a missing field is an error.
pub fn answer_of(node: &str, request: &AdminRequest, body: Value) -> Result<Answer, String> {
    let what = format!("{} on {node}", request_name(request));
    Ok(match request {
        AdminRequest::Drain { .. } => Answer::Drained(read(&what, body)?),
        AdminRequest::Resume { .. } => Answer::Resumed(read(&what, body)?),
        AdminRequest::Demote { .. } => Answer::Demoted(read(&what, body)?),
        AdminRequest::Promote { .. } => Answer::Promoted(read(&what, body)?),
        AdminRequest::Fence { .. } => Answer::Fenced(read(&what, body)?),
        AdminRequest::WaitApplied { .. } => Answer::WaitApplied(read(&what, body)?),
        AdminRequest::Rejoin { .. } => Answer::Rejoin(read(&what, body)?),
        AdminRequest::Verify { .. } => Answer::Verified(read(&what, body)?),
        AdminRequest::FirstAvailable => {
            Answer::FirstAvailable(read::<crate::admin::protocol::FirstAvailableReply>(&what, body)?.first_available)
        }
        AdminRequest::AcceptPeer { .. } => {
            read::<crate::admin::protocol::AcceptPeerReply>(&what, body)?;
            Answer::Accepted
        }
        AdminRequest::Status => Answer::Status(Box::new(read(&what, body)?)),
        other => return Err(format!("{} is not an orchestration request", request_name(other))),
    })
}

fn request_name(request: &AdminRequest) -> String {
    let text = serde_json::to_value(request).ok().and_then(|v| v["op"].as_str().map(str::to_string));
    text.unwrap_or_else(|| "request".into())
}

/// A condition the CLI waits for, looking at the pair again and again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Until {
    /// `node` follows `primary` (which has its backup connected) and applied `lsn`.
    Follows { node: String, primary: String, lsn: Lsn },
    /// `node` is a connected backup within a few records of the primary.
    CloseBehind { node: String },
}

impl Until {
    pub fn holds(&self, view: &PairView) -> bool {
        match self {
            Until::Follows { node, primary, lsn } => {
                let primary = view.node(primary).is_some_and(|p| p.is(Role::Primary) && p.peer_connected());
                let follows = view
                    .node(node)
                    .and_then(|n| n.status.as_ref().ok())
                    .is_some_and(|s| s.role == Role::Backup && s.following && s.applied_lsn >= *lsn);
                primary && follows
            }
            Until::CloseBehind { node } => {
                let (Some(primary), Some(backup)) = (view.primary(), view.node(node)) else { return false };
                let applied = backup.status.as_ref().map_or(0, |s| s.applied_lsn);
                backup.is(Role::Backup)
                    && primary.peer_connected()
                    && applied + SWITCHBACK_CLOSE_ENOUGH >= primary.lsn()
            }
        }
    }
}

/// How a run ends.
#[derive(Debug)]
pub struct Finish {
    /// Clear the progress on both nodes first.
    pub clear: bool,
    pub result: Result<String, OrchestrationError>,
    pub details: Vec<(String, Value)>,
}

/// The next step.
#[derive(Debug)]
pub enum Next {
    /// Save this progress on both nodes (`None` clears it), then plan again.
    Save(Option<Progress>),
    /// Send `request` to `node` as phase `step`; its answer goes into [`Memory::heard`].
    Send {
        step: Step,
        node: String,
        request: AdminRequest,
        timeout_ms: u64,
    },
    /// Look at the pair until `until` holds, for at most `timeout_ms`.
    Wait {
        step: Step,
        until: Until,
        timeout_ms: u64,
    },
    /// Tell the admin (once: it goes into what was heard).
    Say(String),
    Finish(Finish),
}

fn finish(result: Result<String, OrchestrationError>) -> Next {
    Next::Finish(Finish { clear: false, result, details: Vec::new() })
}

fn refuse(reason: impl Into<String>) -> Next {
    finish(Err(Refused(reason.into())))
}

fn part_way(reason: impl Into<String>, resume: impl Into<String>) -> Next {
    finish(Err(PartWay { reason: reason.into(), resume: resume.into() }))
}

fn say_once(memory: &Memory, line: String) -> Option<Next> {
    (!memory.said(&line)).then_some(Next::Say(line))
}

/// The next step of `command`.
pub fn plan(command: &Command, view: &PairView, memory: &Memory) -> Next {
    match command {
        Command::Switchover { to, timeout_ms, max_lag_ms, dry_run } => {
            switchover(view, memory, to.as_deref(), *timeout_ms, *max_lag_ms, *dry_run)
        }
        Command::Failover { to, force } => failover(view, memory, to, *force),
        Command::Rejoin { node, allow_full_copy, catch_up_ms } => {
            rejoin(view, memory, node, *allow_full_copy, *catch_up_ms, false)
        }
        Command::Switchback { preferred, timeout_ms } => switchback(view, memory, preferred, *timeout_ms),
    }
}

// ---------------------------------------------------------------------------------------------
// Switchover.

/// Whether a saved switchover still concerns the pair: its epoch, or the one its promotion
/// began, is the newest either node knows.
fn current(progress: &Progress, view: &PairView) -> bool {
    let newest = view.epoch();
    newest == progress.epoch || newest == progress.epoch + 1
}

fn switchover(
    view: &PairView,
    memory: &Memory,
    to: Option<&str>,
    timeout_ms: u64,
    max_lag_ms: u64,
    dry_run: bool,
) -> Next {
    let saved = memory.progress.clone().filter(|p| p.command == "switchover" && current(p, view));
    let Some(progress) = saved else {
        return start_switchover(view, memory, to, max_lag_ms, dry_run);
    };
    if let Some(to) = to.filter(|to| *to != progress.to) {
        return refuse(format!(
            "switchover {} from {} to {} is under way (step {}): run `hotpair switchover` to finish it before switching to {to}",
            progress.op_id,
            progress.from,
            progress.to,
            progress.step.name()
        ));
    }
    if dry_run {
        return refuse(format!(
            "switchover {} from {} to {} is under way (step {}); a dry run changes nothing",
            progress.op_id,
            progress.from,
            progress.to,
            progress.step.name()
        ));
    }
    continue_switchover(view, memory, progress, timeout_ms, max_lag_ms)
}

fn start_switchover(view: &PairView, memory: &Memory, to: Option<&str>, max_lag_ms: u64, dry_run: bool) -> Next {
    let (primary, backup) = match preflight(view, to, max_lag_ms) {
        Ok(pair) => pair,
        Err(reason) => return refuse(reason),
    };
    if dry_run {
        let line = format!("ready: {} can hand over to {} (dry run, nothing changed)", primary.name, backup.name);
        return Next::Finish(Finish { clear: false, result: Ok(line), details: vec![("ready".into(), json!(true))] });
    }
    Next::Save(Some(Progress {
        op_id: memory.op_id,
        command: "switchover".into(),
        from: primary.name.clone(),
        to: backup.name.clone(),
        epoch: primary.epoch(),
        step: Step::Drain,
        drain_lsn: None,
        drain_digest: None,
        first_lsn: None,
        reason: None,
    }))
}

/// Checks a switchover can start; returns (primary, backup).
fn preflight<'v>(
    view: &'v PairView,
    to: Option<&str>,
    max_lag_ms: u64,
) -> Result<(&'v NodeView, &'v NodeView), String> {
    for node in &view.nodes {
        if !node.reachable() {
            return Err(format!("{} is unreachable ({}); a switchover needs both nodes", node.name, node.error()));
        }
    }
    let primary = view.primary().ok_or("no node is primary; use failover or rejoin")?;
    let backup = view.other(&primary.name).ok_or("the pair has one node")?;
    if let Some(to) = to {
        if to == primary.name {
            return Err(format!("{to} is already the primary"));
        }
        if to != backup.name {
            return Err(format!("{to} is not a node of this pair"));
        }
    }
    let (Ok(p), Ok(b)) = (&primary.status, &backup.status) else { unreachable!("both checked reachable") };
    if b.role != Role::Backup {
        return Err(format!("{} is {}, not a healthy backup; rejoin it first", backup.name, b.role.name()));
    }
    if backup.diverged() {
        return Err(format!("{} has diverged from the primary; run `hotpair rejoin {}`", backup.name, backup.name));
    }
    if let Some(failure) = b.failure.clone().or_else(|| p.failure.clone()) {
        return Err(format!("a node has failed: {failure}"));
    }
    if !p.peer.connected {
        return Err(format!("{} is not connected to {}: the backup is not following", backup.name, primary.name));
    }
    if b.lag_ms > max_lag_ms {
        return Err(format!(
            "{} is {} ms behind, more than --max-lag {}",
            backup.name,
            b.lag_ms,
            humantime::format_duration(std::time::Duration::from_millis(max_lag_ms))
        ));
    }
    for (node, status) in [(primary, p), (backup, b)] {
        if status.disk_free_bytes.is_some_and(|free| free < MIN_DISK_FREE) {
            return Err(format!("{} has less than {} MiB free", node.name, MIN_DISK_FREE >> 20));
        }
    }
    Ok((primary, backup))
}

/// Where a switchover stands, from what the nodes show and what this run heard.
fn continue_switchover(view: &PairView, memory: &Memory, p: Progress, timeout_ms: u64, max_lag_ms: u64) -> Next {
    let (from, to) = match (view.node(&p.from), view.node(&p.to)) {
        (Some(from), Some(to)) => (from, to),
        _ => {
            return refuse(format!("switchover {} names nodes not in this pair file ({} → {})", p.op_id, p.from, p.to))
        }
    };
    let new_epoch = p.epoch + 1;
    // Promoted: this run heard it, or the target leads the next epoch.
    let heard_promotion = match memory.answer(&p.to, Kind::Promote) {
        Some(Ok(Answer::Promoted(reply))) => Some(reply.first_lsn),
        _ => None,
    };
    let seen_promotion = to.leads(new_epoch).then(|| to.history().last().map_or(0, |h| h.first_lsn));
    if let Some(first_lsn) =
        heard_promotion.or(seen_promotion).or(p.first_lsn.filter(|_| p.step.rank() >= Step::Reverse.rank()))
    {
        return after_promotion(view, memory, p, first_lsn, timeout_ms);
    }
    if p.step == Step::RollBack {
        return roll_back(memory, from, p);
    }
    let earlier = p.op_id != memory.op_id;
    let first_drain = !earlier && p.step == Step::Drain && memory.answer(&p.from, Kind::Drain).is_none();
    match (from.role(), to.role()) {
        // This run saved its progress and drains now.
        (Some(Role::Primary), _) if from.epoch() == p.epoch && first_drain => before_demote(memory, to, p, timeout_ms),
        // Still draining in the switchover's epoch: drain (again), wait, demote.
        (Some(Role::Draining), _) if from.epoch() == p.epoch => before_demote(memory, to, p, timeout_ms),
        // Demoted: promote with the drain LSN, never without it.
        (Some(Role::Backup), Some(Role::Backup)) if from.epoch() == p.epoch && to.epoch() == p.epoch => {
            let Some(drain_lsn) = p.drain_lsn.filter(|_| p.step.rank() >= Step::Demote.rank()) else {
                return part_way(
                    format!(
                        "{} and {} are both backups, but the drain LSN of switchover {} is unknown (its record is at step {}): promoting without it could lose acknowledged writes",
                        p.from, p.to, p.op_id, p.step.name()
                    ),
                    format!("hotpair failover --to {} (after checking `hotpair status`)", p.to),
                );
            };
            if let Some(next) = earlier.then(|| say_once(memory, format!("resuming switchover {} from {} to {} at promote", p.op_id, p.from, p.to))).flatten() {
                return next;
            }
            promote_target(memory, &p, drain_lsn)
        }
        // The old primary takes writes again in the same epoch: the lease ran out, or it was
        // restarted, before the demote. Nothing was handed over.
        (Some(Role::Primary), _) if from.epoch() == p.epoch && p.step.rank() <= Step::Demote.rank() => {
            if earlier {
                if let Some(next) = say_once(memory, format!(
                    "an earlier switchover {} did not finish and was rolled back ({} takes writes again); starting again",
                    p.op_id, p.from
                )) {
                    return next;
                }
                return start_switchover(view, memory, Some(&p.to), max_lag_ms, false);
            }
            Next::Finish(Finish {
                clear: true,
                result: Err(Refused(format!(
                    "the drain lease ({}) ran out before {} was demoted: {} takes writes again in epoch {}; nothing changed (give --timeout more time, or check why {} is slow)",
                    humantime::format_duration(std::time::Duration::from_millis(timeout_ms)),
                    p.from,
                    p.from,
                    p.epoch,
                    p.to
                ))),
                details: Vec::new(),
            })
        }
        (None, _) => part_way(
            format!(
                "{} is unreachable ({}) in the middle of switchover {} (step {}): it resumes as primary when it restarts (its drain lease died with it), unless it was demoted",
                p.from,
                from.error(),
                p.op_id,
                p.step.name()
            ),
            format!("hotpair switchover (once {} is back), or hotpair failover --to {} if it is lost", p.from, p.to),
        ),
        (_, None) => part_way(
            format!(
                "{} is unreachable ({}) in the middle of switchover {} (step {}), before its promotion; {} is {}",
                p.to,
                to.error(),
                p.op_id,
                p.step.name(),
                p.from,
                from.role_name()
            ),
            format!("hotpair switchover (once {} is back)", p.to),
        ),
        (from_role, to_role) => refuse(format!(
            "switchover {} cannot go on: {} is {} and {} is {} (epochs {} and {}); run `hotpair status`",
            p.op_id,
            p.from,
            from_role.map_or("?", Role::name),
            p.to,
            to_role.map_or("?", Role::name),
            from.epoch(),
            to.epoch()
        )),
    }
}

/// Drain (again, to learn the drain LSN), wait until the target applied it, demote.
fn before_demote(memory: &Memory, to: &NodeView, p: Progress, timeout_ms: u64) -> Next {
    let known = p.drain_lsn.zip(p.drain_digest.clone()).filter(|_| p.step.rank() >= Step::WaitApplied.rank());
    let Some((drain_lsn, drain_digest)) = known else {
        return match memory.answer(&p.from, Kind::Drain) {
            Some(Ok(Answer::Drained(reply))) => Next::Save(Some(Progress {
                step: Step::WaitApplied,
                drain_lsn: Some(reply.lsn),
                drain_digest: Some(reply.digest.clone()),
                ..p
            })),
            Some(Err(reason)) => Next::Finish(Finish {
                clear: true,
                result: Err(Refused(format!("drain of {} failed: {reason}", p.from))),
                details: Vec::new(),
            }),
            _ => Next::Send {
                step: Step::Drain,
                node: p.from.clone(),
                request: AdminRequest::Drain { op_id: p.op_id, epoch: p.epoch, lease_ms: timeout_ms },
                timeout_ms: STEP_TIMEOUT_MS,
            },
        };
    };
    if p.step == Step::WaitApplied {
        return match memory.answer(&p.to, Kind::WaitApplied) {
            Some(Ok(Answer::WaitApplied(reply))) if reply.digest == drain_digest => {
                Next::Save(Some(Progress { step: Step::Demote, ..p }))
            }
            Some(Ok(Answer::WaitApplied(reply))) => {
                let reason = format!(
                    "digest mismatch at LSN {drain_lsn}: {} has {drain_digest}, {} has {}",
                    p.from, p.to, reply.digest
                );
                start_roll_back(p, reason)
            }
            Some(Err(reason)) => {
                let reason = format!("{} did not reach LSN {drain_lsn}: {reason}", p.to);
                start_roll_back(p, reason)
            }
            _ if !to.reachable() => start_roll_back(p.clone(), format!("{} is unreachable ({})", p.to, to.error())),
            _ => Next::Send {
                step: Step::WaitApplied,
                node: p.to.clone(),
                request: AdminRequest::WaitApplied { lsn: drain_lsn, timeout_ms },
                timeout_ms: timeout_ms + STEP_TIMEOUT_MS,
            },
        };
    }
    // Step demote (or later, with the old primary still draining: the demote did not take).
    match memory.answer(&p.from, Kind::Demote) {
        Some(Ok(Answer::Demoted(_))) => Next::Save(Some(Progress { step: Step::Promote, ..p })),
        Some(Err(reason)) => part_way(format!("demote of {} failed: {reason}", p.from), "hotpair switchover"),
        _ if !to.reachable() => {
            start_roll_back(p.clone(), format!("{} is unreachable ({}) before its promotion", p.to, to.error()))
        }
        _ => Next::Send {
            step: Step::Demote,
            node: p.from.clone(),
            request: AdminRequest::Demote { op_id: p.op_id, epoch: p.epoch },
            timeout_ms: STEP_TIMEOUT_MS,
        },
    }
}

fn promote_target(memory: &Memory, p: &Progress, drain_lsn: Lsn) -> Next {
    match memory.answer(&p.to, Kind::Promote) {
        Some(Err(reason)) => part_way(format!("promote of {} failed: {reason}", p.to), "hotpair switchover"),
        _ => Next::Send {
            step: Step::Promote,
            node: p.to.clone(),
            request: AdminRequest::Promote { op_id: p.op_id, epoch: p.epoch, expect_lsn: Some(drain_lsn) },
            timeout_ms: STEP_TIMEOUT_MS,
        },
    }
}

/// Saves the roll-back first, so a re-run finishes it rather than drain again.
fn start_roll_back(p: Progress, reason: String) -> Next {
    Next::Save(Some(Progress { step: Step::RollBack, reason: Some(reason), ..p }))
}

fn roll_back(memory: &Memory, from: &NodeView, p: Progress) -> Next {
    let reason = p.reason.clone().unwrap_or_else(|| "the switchover was rolled back".into());
    let done = |result| Next::Finish(Finish { clear: true, result, details: Vec::new() });
    match memory.answer(&p.from, Kind::Resume) {
        Some(Ok(_)) => done(Err(Refused(format!("{reason}; rolled back: {} takes writes again", p.from)))),
        Some(Err(err)) => done(Err(PartWay {
            reason: format!("{reason}; and resuming {} failed: {err} (its drain lease will resume it)", p.from),
            resume: "hotpair status".into(),
        })),
        // Already taking writes (its lease ran out meanwhile): nothing to resume.
        None if from.is(Role::Primary) && from.epoch() == p.epoch => {
            done(Err(Refused(format!("{reason}; rolled back: {} takes writes again", p.from))))
        }
        None => Next::Send {
            step: Step::RollBack,
            node: p.from.clone(),
            request: AdminRequest::Resume { op_id: p.op_id, epoch: p.epoch },
            timeout_ms: STEP_TIMEOUT_MS,
        },
    }
}

/// The target was promoted: save that, wait for the old primary to follow it, verify.
fn after_promotion(view: &PairView, memory: &Memory, p: Progress, first_lsn: Lsn, timeout_ms: u64) -> Next {
    if p.step.rank() < Step::Reverse.rank() {
        return Next::Save(Some(Progress { step: Step::Reverse, first_lsn: Some(first_lsn), ..p }));
    }
    let new_epoch = p.epoch + 1;
    if p.step == Step::Reverse {
        return match memory.waited(Step::Reverse) {
            Some(Ok(())) => Next::Save(Some(Progress { step: Step::Verify, ..p })),
            Some(Err(reason)) => {
                let (from, to) = (view.node(&p.from), view.node(&p.to));
                if let Some(to) = to.filter(|n| !n.reachable()) {
                    return part_way(
                        format!(
                            "{} was promoted (primary of epoch {new_epoch}) but is unreachable now ({}); {} follows it once it is back",
                            p.to,
                            to.error(),
                            p.from
                        ),
                        format!("hotpair switchover (once {} is back)", p.to),
                    );
                }
                if let Some(from) = from.filter(|n| !n.reachable()) {
                    return part_way(
                        format!(
                            "{} is primary of epoch {new_epoch}, but {} is unreachable ({}); it follows once it is back",
                            p.to,
                            p.from,
                            from.error()
                        ),
                        format!("hotpair switchover (once {} is back)", p.from),
                    );
                }
                part_way(
                    format!("{} is primary, but {} did not start following it: {reason}", p.to, p.from),
                    format!("hotpair rejoin {}", p.from),
                )
            }
            None => Next::Wait {
                step: Step::Reverse,
                until: Until::Follows { node: p.from.clone(), primary: p.to.clone(), lsn: first_lsn },
                timeout_ms,
            },
        };
    }
    let Some(drain_lsn) = p.drain_lsn else {
        return part_way(
            format!("{} is primary of epoch {new_epoch}, but the drain LSN of switchover {} is unknown, so there is nothing to verify at", p.to, p.op_id),
            "hotpair verify",
        );
    };
    let details = vec![
        ("from".to_string(), json!(p.from)),
        ("to".to_string(), json!(p.to)),
        ("epoch".to_string(), json!(new_epoch)),
        ("lsn".to_string(), json!(drain_lsn)),
    ];
    match verify(view, memory, drain_lsn, false, 30_000) {
        Verdict::Next(next) => next,
        Verdict::Equal { digest, details: more } => Next::Finish(Finish {
            clear: true,
            result: Ok(format!(
                "{} is primary of epoch {new_epoch}; {} follows it; digests equal at LSN {drain_lsn} ({digest})",
                p.to, p.from
            )),
            details: details.into_iter().chain(more).collect(),
        }),
        Verdict::Failed { reason, details: more } => Next::Finish(Finish {
            clear: true,
            result: Err(PartWay { reason, resume: "hotpair verify".into() }),
            details: details.into_iter().chain(more).collect(),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Verify.

/// How a verification stands.
pub enum Verdict {
    Next(Next),
    Equal { digest: String, details: Vec<(String, Value)> },
    Failed { reason: String, details: Vec<(String, Value)> },
}

/// Both nodes' digests at `lsn`: asks each in turn (in pair-file order), then compares.
pub fn verify(view: &PairView, memory: &Memory, lsn: Lsn, full: bool, timeout_ms: u64) -> Verdict {
    let mut answers: Vec<(String, VerifyReply)> = Vec::new();
    for node in &view.nodes {
        let asked = memory.heard.iter().rev().find_map(|h| match h {
            Heard::Reply { node: n, request: AdminRequest::Verify { lsn: l, full: f, .. }, answer, .. }
                if *n == node.name && *l == lsn && *f == full =>
            {
                Some(answer)
            }
            _ => None,
        });
        match asked {
            Some(Ok(Answer::Verified(reply))) => answers.push((node.name.clone(), reply.clone())),
            Some(Ok(other)) => {
                return Verdict::Failed {
                    reason: format!("verify on {}: unexpected answer {other:?}", node.name),
                    details: vec![],
                }
            }
            Some(Err(reason)) => {
                return Verdict::Failed { reason: format!("verify on {}: {reason}", node.name), details: vec![] }
            }
            None => {
                return Verdict::Next(Next::Send {
                    step: Step::Verify,
                    node: node.name.clone(),
                    request: AdminRequest::Verify { lsn, full, timeout_ms },
                    timeout_ms: timeout_ms + STEP_TIMEOUT_MS + if full { 600_000 } else { 0 },
                })
            }
        }
    }
    let digests: serde_json::Map<String, Value> = answers.iter().map(|(n, r)| (n.clone(), json!(r.digest))).collect();
    let equal = answers.windows(2).all(|w| w[0].1.digest == w[1].1.digest);
    let full_ok = answers.iter().all(|(_, r)| r.full.as_ref().is_some_and(|f| f.matches == Some(true)));
    let details = vec![
        ("lsn".to_string(), json!(lsn)),
        ("equal".to_string(), json!(equal)),
        ("digests".to_string(), Value::Object(digests.clone())),
        ("full".to_string(), json!(full)),
        ("full_matches".to_string(), if full { json!(full_ok) } else { Value::Null }),
    ];
    if !equal {
        return Verdict::Failed { reason: format!("digests differ at LSN {lsn}: {}", Value::Object(digests)), details };
    }
    if full && !full_ok {
        return Verdict::Failed {
            reason: "a full scan did not match its node's kept digest (see above)".into(),
            details,
        };
    }
    let digest = answers.first().map(|(_, r)| r.digest.clone()).unwrap_or_default();
    Verdict::Equal { digest, details }
}

// ---------------------------------------------------------------------------------------------
// Failover.

fn failover(view: &PairView, memory: &Memory, to: &str, force: bool) -> Next {
    let (Some(target), Some(old)) = (view.node(to), view.other(to)) else {
        return refuse(format!("{to} is not a node of this pair"));
    };
    let saved = memory.progress.clone().filter(|p| p.command == "failover" && p.to == to && current(p, view));
    let Some(p) = saved else {
        if !target.reachable() {
            return refuse(format!("{to} is unreachable ({}); cannot promote it", target.error()));
        }
        let alone = target.awaiting_peer() && !old.reachable();
        if alone && !force {
            return refuse(format!(
                "{to} is a restarted primary (epoch {}) waiting for {} to confirm it was not promoted past it, and {} is unreachable ({}): start {}; if it is lost for good and was not failed over to meanwhile, `hotpair failover --to {to} --force` gives {to} a new epoch without it (runbook procedure 13)",
                target.epoch(),
                old.name,
                old.name,
                old.error(),
                old.name
            ));
        }
        if target.is(Role::Primary) && !old.is(Role::Primary) && !alone {
            return refuse(format!("{to} is already the primary (epoch {})", target.epoch()));
        }
        if alone {
            return Next::Save(Some(Progress {
                op_id: memory.op_id,
                command: "failover".into(),
                from: old.name.clone(),
                to: to.into(),
                epoch: target.epoch(),
                step: Step::Promote,
                // What the lost peer had acknowledged, read before the new epoch resets it.
                drain_lsn: Some(target.peer_acknowledged()),
                drain_digest: None,
                first_lsn: None,
                reason: Some(ALONE.into()),
            }));
        }
        if !target.is(Role::Backup) {
            return refuse(format!("{to} is {}; only a backup can be failed over to", target.role_name()));
        }
        // Another orchestration that may be promoting the other node: two promotions from one
        // epoch would both claim the next (the simulation found it: a switchover's CLI killed
        // with its promote in flight, then a failover to the old primary).
        if let Some(other) = promoting_elsewhere(view, to, target.epoch()).filter(|_| !force) {
            return refuse(format!(
                "{} {} from {} to {} is under way (step {}) and may be promoting {}: finish it (`hotpair {}`), or add --force to fail over to {to} anyway",
                other.command,
                other.op_id,
                other.from,
                other.to,
                other.step.name(),
                other.to,
                other.command
            ));
        }
        let healthy = old.is(Role::Primary) && old.failure().is_none();
        if healthy && !force {
            return refuse(format!(
                "{} is reachable and healthy (primary of epoch {}); use switchover, or --force to fail over anyway",
                old.name,
                old.epoch()
            ));
        }
        return Next::Save(Some(Progress {
            op_id: memory.op_id,
            command: "failover".into(),
            from: old.name.clone(),
            to: to.into(),
            epoch: target.epoch(),
            step: Step::Promote,
            drain_lsn: None,
            drain_digest: None,
            first_lsn: None,
            reason: None,
        }));
    };
    let new_epoch = p.epoch + 1;
    let promotion = match memory.answer(to, Kind::Promote) {
        Some(Ok(Answer::Promoted(reply))) => Some(reply.clone()),
        Some(Err(reason)) => {
            return Next::Finish(Finish {
                clear: true,
                result: Err(Refused(format!("promote of {to} failed: {reason}"))),
                details: Vec::new(),
            })
        }
        _ if target.leads(new_epoch) => target
            .status
            .as_ref()
            .ok()
            .and_then(|s| s.promotion.as_ref())
            .map(|pr| PromoteReply::from_promotion(pr, true)),
        _ => None,
    };
    let Some(promoted) = promotion else {
        if !target.reachable() {
            return part_way(
                format!("{to} is unreachable ({}) before its promotion", target.error()),
                "hotpair failover",
            );
        }
        return Next::Send {
            step: Step::Promote,
            node: to.into(),
            request: AdminRequest::Promote { op_id: p.op_id, epoch: p.epoch, expect_lsn: None },
            timeout_ms: STEP_TIMEOUT_MS,
        };
    };
    if p.step == Step::Promote {
        return Next::Save(Some(Progress { step: Step::Fence, first_lsn: Some(promoted.first_lsn), ..p }));
    }
    if old.reachable() && memory.answer(&old.name, Kind::Fence).is_none() {
        return Next::Send {
            step: Step::Fence,
            node: old.name.clone(),
            request: AdminRequest::Fence { epoch: new_epoch, primary: to.into() },
            timeout_ms: STEP_TIMEOUT_MS,
        };
    }
    if let Some(Err(reason)) = memory.answer(&old.name, Kind::Fence) {
        let line = format!(
            "  warning: could not fence {}: {reason}; it fences itself when it hears epoch {new_epoch}",
            old.name
        );
        if let Some(next) = say_once(memory, line) {
            return next;
        }
    }
    if p.reason.as_deref() == Some(ALONE) {
        return promoted_alone(&p, &promoted, &old.name);
    }
    let details = vec![
        ("epoch".to_string(), json!(promoted.epoch)),
        ("first_lsn".to_string(), json!(promoted.first_lsn)),
        ("last_heard_lsn".to_string(), json!(promoted.last_heard_lsn)),
        ("not_received".to_string(), json!(promoted.not_received)),
        ("last_received_lsn".to_string(), json!(promoted.last_received_lsn)),
        ("to".to_string(), json!(to)),
        ("from".to_string(), json!(old.name)),
    ];
    Next::Finish(Finish {
        clear: true,
        result: Ok(format!(
            "{to} is primary of epoch {} from LSN {}; last primary LSN heard {}, about {} transaction(s) never received; run `hotpair rejoin {}` when it is back",
            promoted.epoch, promoted.first_lsn, promoted.last_heard_lsn, promoted.not_received, old.name
        )),
        details,
    })
}

/// A forced failover's mark in its progress: the target was a restarted primary promoted
/// without its peer (`drain_lsn` then holds what the peer had acknowledged).
const ALONE: &str = "restarted primary promoted without its peer";

/// The end of `failover --to <restarted primary> --force`: the new epoch, and what the lost
/// peer may hold that the new primary does not.
fn promoted_alone(p: &Progress, promoted: &PromoteReply, peer: &str) -> Next {
    let last = promoted.first_lsn.saturating_sub(1);
    let acknowledged = p.drain_lsn.unwrap_or(0);
    let details = vec![
        ("epoch".to_string(), json!(promoted.epoch)),
        ("first_lsn".to_string(), json!(promoted.first_lsn)),
        ("peer_acknowledged_lsn".to_string(), json!(acknowledged)),
        ("to".to_string(), json!(p.to)),
        ("from".to_string(), json!(peer)),
        ("forced".to_string(), json!(true)),
    ];
    Next::Finish(Finish {
        clear: true,
        result: Ok(format!(
            "{to} is primary of epoch {} from LSN {} without {peer}; {peer} had acknowledged LSN {acknowledged}. It may also hold records past LSN {last} that {to} shipped before its own fsync and lost when it went down: none of them was acknowledged to a client by {to}, and they are set aside as orphans when {peer} is rejoined. Should {peer} have been failed over to while {to} was down, its writes of that epoch are orphaned the same way. Run `hotpair rejoin {peer}` when it is back",
            promoted.epoch,
            promoted.first_lsn,
            to = p.to
        )),
        details,
    })
}

/// An unfinished orchestration of the pair that may promote a node other than `to`: a
/// switchover past its demote, or a failover to the other node — into the epoch a promotion
/// of `to` (at `epoch`) would claim. Once `to` holds a later epoch than the one that run began
/// in, it has seen that promotion happen, and its own claims the epoch after (found by `drill
/// --random 59 --witness`: a switchover killed after its promote, b following the new primary
/// a, then a killed and `failover --to b` refused until `--force`).
fn promoting_elsewhere(view: &PairView, to: &str, epoch: u64) -> Option<Progress> {
    let switchover = view.progress("switchover").ok().flatten().filter(|p| p.step.rank() >= Step::Demote.rank());
    let failover = view.progress("failover").ok().flatten();
    [switchover, failover].into_iter().flatten().find(|p| p.to != to && p.epoch >= epoch && current(p, view))
}

// ---------------------------------------------------------------------------------------------
// Rejoin.

fn rejoin(
    view: &PairView,
    memory: &Memory,
    name: &str,
    allow_full_copy: bool,
    catch_up_ms: u64,
    for_switchback: bool,
) -> Next {
    let (Some(node), Some(primary)) = (view.node(name), view.other(name)) else {
        return refuse(format!("{name} is not a node of this pair"));
    };
    let rejoined = match memory.answer(name, Kind::Rejoin) {
        Some(Ok(Answer::Rejoin(reply))) => Some(reply.clone()),
        Some(Err(reason)) => {
            return part_way(format!("rejoin of {name} failed: {reason}"), format!("hotpair rejoin {name}"))
        }
        _ => None,
    };
    let Some(rejoined) = rejoined else {
        return rejoin_before(memory, node, primary, allow_full_copy);
    };
    if for_switchback {
        return finish(Ok(String::new()));
    }
    // Catch up to the primary's position now, then verify there.
    let asked = memory.heard.iter().rev().find_map(|h| match h {
        Heard::Reply { node: n, request: AdminRequest::WaitApplied { lsn, .. }, answer, step: Step::CatchUp }
            if n == name =>
        {
            Some((*lsn, answer))
        }
        _ => None,
    });
    let target = match asked {
        None => {
            return Next::Send {
                step: Step::CatchUp,
                node: name.into(),
                request: AdminRequest::WaitApplied { lsn: primary.lsn(), timeout_ms: catch_up_ms },
                timeout_ms: catch_up_ms + STEP_TIMEOUT_MS,
            }
        }
        Some((_, Err(reason))) => {
            return part_way(format!("{name} is backup but did not catch up: {reason}"), "hotpair status")
        }
        Some((lsn, Ok(_))) => lsn,
    };
    let mut details = vec![
        ("divergence_lsn".to_string(), json!(rejoined.divergence_lsn)),
        ("orphaned".to_string(), json!(rejoined.orphaned)),
        ("orphans_file".to_string(), json!(rejoined.done.as_ref().and_then(|d| d.orphans_file.clone()))),
        ("rewound".to_string(), json!(rejoined.done.as_ref().map_or(0, |d| d.rewound))),
        ("node".to_string(), json!(name)),
        ("full_copy".to_string(), json!(rejoined.done.as_ref().is_some_and(|d| d.full_copy))),
    ];
    let estimate = failover_estimate(primary, rejoined.divergence_lsn);
    if let Some(estimate) = estimate {
        details.push(("failover_estimate".to_string(), json!(estimate)));
    }
    let (digest, more) = match verify(view, memory, target, false, 30_000) {
        Verdict::Next(next) => return next,
        Verdict::Failed { reason, details: more } => {
            return Next::Finish(Finish {
                clear: false,
                result: Err(PartWay { reason, resume: "hotpair verify".into() }),
                details: details.into_iter().chain(more).collect(),
            })
        }
        Verdict::Equal { digest, details: more } => (digest, more),
    };
    details.extend(more.into_iter().filter(|(k, _)| k != "lsn"));
    Next::Finish(Finish {
        clear: false,
        result: Ok(rejoin_outcome(name, &primary.name, &rejoined, estimate, target, &digest)),
        details,
    })
}

/// The estimate the failover printed of transactions never received, when the primary's
/// promotion began right after `divergence` (the failover this rejoin follows).
fn failover_estimate(primary: &NodeView, divergence: Lsn) -> Option<u64> {
    let promotion = primary.status.as_ref().ok()?.promotion.as_ref()?;
    (promotion.first_lsn == divergence + 1).then(|| promotion.not_received())
}

fn rejoin_outcome(
    name: &str,
    primary: &str,
    rejoined: &RejoinReply,
    estimate: Option<u64>,
    target: Lsn,
    digest: &str,
) -> String {
    let divergence = rejoined.divergence_lsn;
    let caught_up = format!("caught up, digests equal at LSN {target} ({digest})");
    let beside = estimate.map(|e| format!(" (the failover estimated about {e})")).unwrap_or_default();
    let done = rejoined.done.as_ref();
    match (done.and_then(|d| d.orphans_file.as_deref()), &rejoined.earlier) {
        (Some(file), _) => format!(
            "{name} rejoined behind {primary}: diverged after LSN {divergence}, {} orphaned transaction(s){beside} saved in {file}; {caught_up}",
            rejoined.orphaned
        ),
        (None, Some(earlier)) if earlier.orphans_file.is_some() => format!(
            "{name} rejoined behind {primary} with nothing more orphaned; an earlier rejoin (op {}) set aside {} transaction(s) past LSN {}{beside} in {}; {caught_up}",
            earlier.op_id,
            earlier.orphaned,
            earlier.divergence_lsn,
            earlier.orphans_file.as_deref().unwrap_or("?")
        ),
        (None, _) if done.is_some_and(|d| d.full_copy) => format!(
            "{name} rejoined behind {primary} by a full copy (its journals from LSN {} were gone); {caught_up}",
            rejoined.needs_from
        ),
        (None, _) => format!("{name} rejoined behind {primary} from LSN {divergence} with nothing orphaned; {caught_up}"),
    }
}

/// Preflight, acceptance of a rebuilt node, the primary's journals, the dry run, the rejoin.
fn rejoin_before(memory: &Memory, node: &NodeView, primary: &NodeView, allow_full_copy: bool) -> Next {
    let name = node.name.as_str();
    let Ok(status) = &node.status else {
        return refuse(format!("{name} is unreachable ({}); start it first (`hotpair run {name}`)", node.error()));
    };
    let Some(p) = primary.status.as_ref().ok().filter(|p| p.role == Role::Primary) else {
        return refuse(format!(
            "{} is not a reachable primary ({}); rejoin needs the current primary",
            primary.name,
            primary.status.as_ref().map_or_else(|e| e.clone(), |s| s.role.name().to_string())
        ));
    };
    // The rejoining node's own stop is lifted by the rejoin (it is asked to follow); the
    // primary's would leave it unable to catch up.
    if !p.replicating {
        return refuse(format!(
            "replication is stopped on {} (`hotpair replicate stop`); run `hotpair replicate start {}` first, or the rejoined node could not catch up",
            primary.name, primary.name
        ));
    }
    if status.role == Role::Primary && status.epoch >= p.epoch {
        return refuse(format!("{name} is primary of epoch {}, not behind {}", status.epoch, primary.name));
    }
    if let Some(next) = accept_rebuilt_node(memory, node, status, primary, p, allow_full_copy) {
        return next;
    }
    let first_available = match memory.answer(&primary.name, Kind::FirstAvailable) {
        Some(Ok(Answer::FirstAvailable(first))) => *first,
        Some(Ok(_)) | Some(Err(_)) => {
            let reason = match memory.answer(&primary.name, Kind::FirstAvailable) {
                Some(Err(reason)) => reason.clone(),
                _ => "unexpected answer".into(),
            };
            return refuse(format!("asking {} for its journals: {reason}", primary.name));
        }
        None => {
            return Next::Send {
                step: Step::Preflight,
                node: primary.name.clone(),
                request: AdminRequest::FirstAvailable,
                timeout_ms: STEP_TIMEOUT_MS,
            }
        }
    };
    let request = |dry_run, full_copy| AdminRequest::Rejoin {
        op_id: memory.op_id,
        history: p.history.clone(),
        epoch: p.epoch,
        last_lsn: p.last_lsn,
        first_available,
        dry_run,
        full_copy,
    };
    let plan = match memory.answer(name, Kind::RejoinDry) {
        Some(Ok(Answer::Rejoin(plan))) => plan.clone(),
        Some(Ok(_)) => return refuse(format!("{name} answered the rejoin's dry run unexpectedly")),
        Some(Err(reason)) => return refuse(reason.clone()),
        None => {
            return Next::Send {
                step: Step::Preflight,
                node: name.into(),
                request: request(true, false),
                timeout_ms: STEP_TIMEOUT_MS,
            }
        }
    };
    let line = format!(
        "  divergence point: LSN {}; {} orphaned transaction(s) on {name}; the primary ships from LSN {first_available}",
        plan.divergence_lsn, plan.orphaned
    );
    if let Some(next) = say_once(memory, line) {
        return next;
    }
    let full_copy = !plan.shippable;
    if full_copy && !allow_full_copy {
        return refuse(format!(
            "{}'s journals start at LSN {first_available} but {name} needs LSN {} (trimmed or lost); rerun with --allow-full-copy to copy the whole database",
            primary.name, plan.needs_from
        ));
    }
    if full_copy {
        let line =
            format!("  the journals {name} needs are gone: copying {}'s whole store (--allow-full-copy)", primary.name);
        if let Some(next) = say_once(memory, line) {
            return next;
        }
    }
    Next::Send {
        step: if full_copy { Step::FullCopy } else { Step::Rejoin },
        node: name.into(),
        request: request(false, full_copy),
        timeout_ms: 3_600_000,
    }
}

/// A node with another incarnation than the primary knows (`hotpair reinit`, or another
/// installation) is refused by the primary until the admin accepts it; `--allow-full-copy` is
/// that acceptance. A node with the known incarnation but behind what it acknowledged (a
/// restored copy) is refused here, with the way to rebuild it.
fn accept_rebuilt_node(
    memory: &Memory,
    node: &NodeView,
    status: &StatusView,
    primary: &NodeView,
    p: &StatusView,
    allow_full_copy: bool,
) -> Option<Next> {
    let name = &node.name;
    let known = p.peer_incarnation?;
    if status.incarnation != known {
        if !allow_full_copy {
            return Some(refuse(format!(
                "{name} presents incarnation {}, but {} knows it as {known}: its data directory was rebuilt (`hotpair reinit {name}`) or this is another installation; if it is the rebuilt node, rerun with --allow-full-copy",
                status.incarnation, primary.name
            )));
        }
        return match memory.answer(&primary.name, Kind::AcceptPeer) {
            Some(Ok(_)) => None,
            Some(Err(reason)) => {
                Some(refuse(format!("{} did not accept {name}'s new incarnation: {reason}", primary.name)))
            }
            None => Some(Next::Send {
                step: Step::Preflight,
                node: primary.name.clone(),
                request: AdminRequest::AcceptPeer { incarnation: status.incarnation },
                timeout_ms: STEP_TIMEOUT_MS,
            }),
        };
    }
    // A following node passed this very check at its hello (the primary refuses a restored
    // copy there): nothing to compare.
    if status.following || status.last_lsn >= p.peer.acknowledged_lsn {
        return None;
    }
    // The two numbers came from two moments of a moving pair. Read them again in an order
    // that cannot make a healthy node look behind: the primary's acknowledged LSN first, then
    // the node's last LSN (a healthy node held the acknowledged records before the ack).
    let statuses: Vec<(&String, &StatusView)> = memory
        .heard
        .iter()
        .filter_map(|h| match h {
            Heard::Reply { node: n, answer: Ok(Answer::Status(s)), .. } => Some((n, s.as_ref())),
            _ => None,
        })
        .collect();
    let acknowledged = statuses.iter().position(|(n, _)| **n == primary.name);
    let Some(first) = acknowledged else {
        return Some(Next::Send {
            step: Step::Preflight,
            node: primary.name.clone(),
            request: AdminRequest::Status,
            timeout_ms: STEP_TIMEOUT_MS,
        });
    };
    let later = statuses[first..].iter().find(|(n, _)| *n == name);
    let Some((_, later)) = later else {
        return Some(Next::Send {
            step: Step::Preflight,
            node: name.clone(),
            request: AdminRequest::Status,
            timeout_ms: STEP_TIMEOUT_MS,
        });
    };
    let acknowledged = statuses[first].1.peer.acknowledged_lsn;
    if later.last_lsn >= acknowledged || later.following {
        return None;
    }
    Some(refuse(format!(
        "{name} is at LSN {}, behind LSN {acknowledged} it already acknowledged to {} as durable: a restored copy, which {} refuses; move its directory aside and rebuild it (`hotpair reinit {name}`, then `hotpair rejoin {name} --allow-full-copy`)",
        later.last_lsn, primary.name, primary.name
    )))
}

// ---------------------------------------------------------------------------------------------
// Switchback.

fn switchback(view: &PairView, memory: &Memory, preferred: &str, timeout_ms: u64) -> Next {
    let Some(node) = view.node(preferred) else { return refuse("no preferred node") };
    let switching = memory.progress.as_ref().is_some_and(|p| p.command == "switchover" && current(p, view))
        || memory.heard.iter().any(|h| matches!(h, Heard::Reply { request: AdminRequest::Drain { .. }, .. }));
    if switching {
        return switchover(view, memory, Some(preferred), timeout_ms, timeout_ms, false);
    }
    if node.is(Role::Primary) && view.primary().is_some_and(|p| p.name == preferred) {
        return finish(Ok(format!("{preferred} is already the primary; nothing to do")));
    }
    let rejoined = matches!(memory.answer(preferred, Kind::Rejoin), Some(Ok(_)));
    if !rejoined && (!node.is(Role::Backup) || node.diverged()) {
        let line = format!("{preferred} is {}: rejoining it first", node.role_name());
        if let Some(next) = say_once(memory, line) {
            return next;
        }
        match rejoin(view, memory, preferred, false, timeout_ms, true) {
            Next::Finish(Finish { result: Ok(_), .. }) => {}
            other => return other,
        }
    }
    match memory.waited(Step::CatchUp) {
        None => Next::Wait { step: Step::CatchUp, until: Until::CloseBehind { node: preferred.into() }, timeout_ms },
        Some(Err(reason)) => refuse(format!("{preferred} did not catch up: {reason}")),
        Some(Ok(())) => switchover(view, memory, Some(preferred), timeout_ms, timeout_ms, false),
    }
}

#[cfg(test)]
mod tests;
