//! One line of text per effect, as the transcripts (`tests/transcripts/`) and the simulation's
//! failure reports print them. Short ids (`#7`) stand for UUIDs below 2^32, which is what tests
//! use; others print whole.

use std::fmt;

use uuid::Uuid;

use super::effect::{Action, Effect, Gate, HelloAnswer, RejoinPlan, Reply};
use super::event::{Persisted, Promotion, Rejoined};
use crate::storage::journal::HistoryEntry;

/// `#7` for a small id, the UUID otherwise.
pub fn id(uuid: &Uuid) -> String {
    let n = uuid.as_u128();
    if n < 1 << 32 {
        format!("#{n}")
    } else {
        uuid.to_string()
    }
}

/// `[1@1:a 2@41:b]`: epoch @ first LSN : primary.
pub fn history(history: &[HistoryEntry]) -> String {
    let entries: Vec<String> = history.iter().map(|h| format!("{}@{}:{}", h.epoch, h.first_lsn, h.primary)).collect();
    format!("[{}]", entries.join(" "))
}

fn promotion(p: &Promotion) -> String {
    format!(
        "(op {} epoch {} from {}, received {}, heard {})",
        id(&p.op_id),
        p.epoch,
        p.first_lsn,
        p.last_received_lsn,
        p.last_heard_lsn
    )
}

fn rejoined(r: &Rejoined) -> String {
    format!(
        "(op {} epoch {} after {}, {} orphaned{})",
        id(&r.op_id),
        r.epoch,
        r.divergence_lsn,
        r.orphaned,
        r.orphans_file.as_ref().map(|f| format!(" in {f}")).unwrap_or_default()
    )
}

fn persisted(p: &Persisted) -> String {
    let mut line = format!("role={} epoch={} history={}", p.role.name(), p.epoch, history(&p.history));
    if let Some(p) = &p.promotion {
        line.push_str(&format!(" promotion={}", promotion(p)));
    }
    if let Some(r) = &p.rejoined {
        line.push_str(&format!(" rejoined={}", rejoined(r)));
    }
    line
}

fn plan(p: &RejoinPlan) -> String {
    let mut line = format!(
        "divergence={} orphaned={} needs-from={} primary-first={} shippable={}",
        p.divergence_lsn, p.orphaned, p.needs_from, p.primary_first_available, p.shippable
    );
    if let Some(earlier) = &p.earlier {
        line.push_str(&format!(" earlier={}", rejoined(earlier)));
    }
    line
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gate::Closed => write!(f, "closed"),
            Gate::Open => write!(f, "open"),
            Gate::Refusing(why) => write!(f, "refuse: {why}"),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::FinishInFlight => write!(f, "finish-in-flight"),
            Action::StopPipeline => write!(f, "stop-pipeline"),
            Action::StopReceiving => write!(f, "stop-receiving"),
            Action::ReplayReceived => write!(f, "replay-received"),
            Action::CountOrphans { divergence } => write!(f, "count-orphans after={divergence}"),
            Action::Resynchronize { op_id, divergence, primary, full_copy } => write!(
                f,
                "resynchronize op={} after={divergence} primary-epoch={} primary-history={}{}",
                id(op_id),
                primary.epoch,
                history(&primary.history),
                if *full_copy { " full-copy" } else { "" }
            ),
            Action::PrepareToFollow { cut_after: Some(lsn) } => write!(f, "prepare-to-follow cut-after={lsn}"),
            Action::PrepareToFollow { cut_after: None } => write!(f, "prepare-to-follow"),
        }
    }
}

impl fmt::Display for HelloAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HelloAnswer::Welcome { start_lsn, cut_after: Some(cut) } => {
                write!(f, "welcome start={start_lsn} cut-after={cut}")
            }
            HelloAnswer::Welcome { start_lsn, cut_after: None } => write!(f, "welcome start={start_lsn}"),
            HelloAnswer::Standing { epoch, last_lsn, leader: Some(leader) } => {
                write!(f, "standing epoch={epoch} last={last_lsn} leader={leader}")
            }
            HelloAnswer::Standing { epoch, last_lsn, leader: None } => {
                write!(f, "standing epoch={epoch} last={last_lsn}")
            }
            HelloAnswer::Diverged { at_lsn, history: h } => write!(f, "diverged at={at_lsn} history={}", history(h)),
            HelloAnswer::Refused { reason } => write!(f, "refused: {reason}"),
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Drained { lsn, digest, lease_ms } => {
                write!(f, "drained lsn={lsn} digest={:x} lease={lease_ms}ms", digest.0)
            }
            Reply::Resumed { was_draining } => write!(f, "resumed was-draining={was_draining}"),
            Reply::Demoted { already } => write!(f, "demoted already={already}"),
            Reply::Promoted { promotion: p, already } => write!(
                f,
                "promoted epoch={} first={} received={} heard={} not-received={} already={already}",
                p.epoch,
                p.first_lsn,
                p.last_received_lsn,
                p.last_heard_lsn,
                p.not_received()
            ),
            Reply::Fenced { role, epoch } => write!(f, "fence-answer role={} epoch={epoch}", role.name()),
            Reply::RejoinPlanned(p) => write!(f, "rejoin-plan {}", plan(p)),
            Reply::Rejoined { plan: p, orphans_file, rewound, full_copy } => write!(
                f,
                "rejoined {} rewound={rewound} file={} full-copy={full_copy}",
                plan(p),
                orphans_file.as_deref().unwrap_or("-")
            ),
            Reply::Refused(reason) => write!(f, "refused: {reason}"),
            Reply::Hello(answer) => write!(f, "hello {answer}"),
            Reply::Follow => write!(f, "follow"),
            Reply::Witness(decision) => write!(f, "witness {}", format!("{decision:?}").to_lowercase()),
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Effect::Save(p) => write!(f, "save {}", persisted(p)),
            Effect::Publish(role) => write!(f, "publish {}", role.name()),
            Effect::Writes(gate) => write!(f, "writes {gate}"),
            Effect::Replay(bound) => write!(f, "replay remote={}", format!("{bound:?}").to_lowercase()),
            Effect::StartPipeline { first_lsn, epoch, epoch_start } => write!(
                f,
                "start-pipeline first={first_lsn} epoch={epoch}{}",
                if *epoch_start { " epoch-start" } else { "" }
            ),
            Effect::StartApplier => write!(f, "start-applier"),
            Effect::ReleaseFollower => write!(f, "release-follower"),
            Effect::ResumeReplication => write!(f, "resume-replication"),
            Effect::ForgetPeerAcks => write!(f, "forget-peer-acks"),
            Effect::ClearDiverged => write!(f, "clear-diverged"),
            Effect::RememberPeer { incarnation } => write!(f, "remember-peer incarnation={}", id(incarnation)),
            Effect::Incident { kind, message } => {
                write!(f, "incident {}: {message}", format!("{kind:?}").to_lowercase())
            }
            Effect::ResolveIncident { kind, message } => {
                write!(f, "resolve {}: {message}", format!("{kind:?}").to_lowercase())
            }
            Effect::WriteDeadline(Some(ms)) => write!(f, "write-deadline {ms}"),
            Effect::WriteDeadline(None) => write!(f, "write-deadline none"),
            Effect::Note(text) => write!(f, "note: {text}"),
            Effect::Run(action) => write!(f, "run {action}"),
            Effect::Reply(reply) => write!(f, "reply {reply}"),
        }
    }
}
