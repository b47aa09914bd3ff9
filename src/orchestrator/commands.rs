//! One function per orchestration command. Each runs the planner's steps ([`super::plan`]):
//! saves progress, sends primitives (reading each reply as its typed struct), waits, says
//! what the planner says, and ends where the planner ends; see `docs/orchestrator.md`.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::plan::{self, Answer, Command, Finish, Heard, Memory, Next, Until, Verdict};
use super::{OrchestrationError, Run, Step};
use crate::config::PairConfig;
use crate::replication::wire::AdminRequest;
use crate::storage::journal::Lsn;

use OrchestrationError::Refused;

/// How often a long catch-up says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// A rejoined node that applies nothing and does not follow for this long will not catch up by
/// itself (its follower reconnects within seconds): the rejoin says so instead of waiting on.
const CATCH_UP_STALL: Duration = Duration::from_secs(30);
/// How often a wait looks at the pair again.
const POLL: Duration = Duration::from_millis(20);

pub struct SwitchoverOptions {
    pub to: Option<String>,
    pub timeout: Duration,
    pub max_lag: Duration,
    pub dry_run: bool,
    pub json: bool,
}

/// `hotpair switchover`: planned role swap with zero loss.
pub async fn switchover(pair: &PairConfig, options: SwitchoverOptions) -> u8 {
    let command = Command::Switchover {
        to: options.to,
        timeout_ms: millis(options.timeout),
        max_lag_ms: millis(options.max_lag),
        dry_run: options.dry_run,
    };
    execute("switchover", pair, options.json, command).await
}

/// `hotpair failover --to NODE [--force]`.
pub async fn failover(pair: &PairConfig, to: &str, force: bool, json: bool) -> u8 {
    execute("failover", pair, json, Command::Failover { to: to.into(), force }).await
}

/// `hotpair rejoin NODE [--allow-full-copy]`.
pub async fn rejoin(pair: &PairConfig, node: &str, allow_full_copy: bool, json: bool) -> u8 {
    let command = Command::Rejoin { node: node.into(), allow_full_copy, catch_up_ms: 600_000 };
    execute("rejoin", pair, json, command).await
}

/// `hotpair switchback`: back to the pair file's preferred primary.
pub async fn switchback(pair: &PairConfig, timeout: Duration, json: bool) -> u8 {
    let preferred = pair.preferred_primary().name.clone();
    execute("switchback", pair, json, Command::Switchback { preferred, timeout_ms: millis(timeout) }).await
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

async fn execute(name: &'static str, pair: &PairConfig, json: bool, command: Command) -> u8 {
    let mut run = Run::new(name, pair, json);
    let result = drive(&mut run, &command).await;
    run.finish(result)
}

/// The progress record a command resumes from.
fn progress_kind(command: &Command) -> Option<&'static str> {
    match command {
        Command::Switchover { .. } | Command::Switchback { .. } => Some("switchover"),
        Command::Failover { .. } => Some("failover"),
        Command::Rejoin { .. } => None,
    }
}

/// Runs the planner's steps until it finishes.
async fn drive(run: &mut Run, command: &Command) -> Result<String, OrchestrationError> {
    let view = run.look().await;
    let progress = match progress_kind(command) {
        Some(kind) => view.progress(kind).map_err(Refused)?,
        None => None,
    };
    let mut memory = Memory::new(run.op_id, progress);
    let mut view = Some(view);
    // The preflight phase lasts until the first step that changes something, or the end.
    let mut preflight = Some(Instant::now());
    loop {
        let now = match view.take() {
            Some(view) => view,
            None => run.look().await,
        };
        let next = plan::plan(command, &now, &memory);
        let checking = matches!(&next, Next::Send { step: Step::Preflight, .. } | Next::Say(_));
        if let Some(started) = preflight.filter(|_| !checking) {
            let failed = matches!(&next, Next::Finish(Finish { result: Err(_), .. }));
            let note = if failed { "FAILED" } else { "the pair can go ahead" };
            run.record_phase(Step::Preflight, started.elapsed(), note);
            preflight = None;
        }
        match next {
            Next::Save(progress) => {
                run.save_progress(progress.as_ref()).await;
                if let Some(progress) = &progress {
                    run.op_id = progress.op_id;
                }
                memory.progress = progress;
            }
            Next::Say(line) => {
                run.say(&line);
                memory.heard.push(Heard::Said(line));
            }
            Next::Send { step, node, request, timeout_ms } => {
                let answer = send(run, step, &node, request.clone(), Duration::from_millis(timeout_ms)).await;
                memory.heard.push(Heard::Reply { step, node, request, answer });
            }
            Next::Wait { step, until, timeout_ms } => {
                let started = Instant::now();
                let result = wait(run, &until, Duration::from_millis(timeout_ms)).await;
                let note = match (&result, &until) {
                    (Err(_), _) => "FAILED".to_string(),
                    (Ok(()), Until::Follows { node, primary, .. }) => format!("{node} follows {primary}"),
                    (Ok(()), Until::CloseBehind { node }) => format!("{node} caught up"),
                };
                run.record_phase(step, started.elapsed(), &note);
                memory.heard.push(Heard::Waited { step, result });
            }
            Next::Finish(Finish { clear, result, details }) => {
                if clear {
                    run.save_progress(None).await;
                }
                for (key, value) in details {
                    run.detail(&key, value);
                }
                if result.is_ok() && progress_kind(command) == Some("switchover") && run.phases_ms(&[Step::Drain]) > 0.0
                {
                    // Writes are refused from the drain until the promote: the outage window.
                    let outage = run.phases_ms(&[Step::Drain, Step::WaitApplied, Step::Demote, Step::Promote]);
                    run.detail("write_outage_ms", outage);
                }
                return result;
            }
        }
    }
}

/// Sends one primitive as phase `step` (printed unless it is part of the preflight) and reads
/// its reply as the typed struct the request calls for.
async fn send(run: &Run, step: Step, node: &str, request: AdminRequest, timeout: Duration) -> Result<Answer, String> {
    let started = Instant::now();
    let sent = run.send(node, request.clone(), timeout);
    let body = match step {
        Step::CatchUp => {
            let primary = run.pair.peer_of(node).map(|p| p.name.clone()).unwrap_or_default();
            let target = match &request {
                AdminRequest::WaitApplied { lsn, .. } => *lsn,
                _ => 0,
            };
            with_catch_up_progress(run, node, &primary, target, sent).await
        }
        Step::FullCopy => with_copy_progress(run, node, sent).await,
        _ => sent.await,
    };
    let answer = body.and_then(|body| plan::answer_of(node, &request, body));
    if step != Step::Preflight {
        let note = match &answer {
            Ok(answer) => note(node, answer),
            Err(_) => "FAILED".to_string(),
        };
        run.record_phase(step, started.elapsed(), &note);
    }
    if let (Step::Verify, Ok(Answer::Verified(reply))) = (step, &answer) {
        if let Some(full) = &reply.full {
            run.say(format!(
                "    {node}: full scan at LSN {} = {} ({} keys): {}",
                full.at_lsn.map_or("-".to_string(), |l| l.to_string()),
                full.digest.as_deref().unwrap_or("-"),
                full.keys.map_or("-".to_string(), |k| k.to_string()),
                match full.matches {
                    Some(true) => "matches the kept digest".to_string(),
                    Some(false) => "DOES NOT match the kept digest".to_string(),
                    None => full.note.clone().unwrap_or_else(|| "not checked".into()),
                }
            ));
        }
    }
    answer
}

/// What a phase line says after its duration.
fn note(node: &str, answer: &Answer) -> String {
    match answer {
        Answer::Drained(reply) => format!("last LSN {}", reply.lsn),
        Answer::WaitApplied(reply) => format!("{node} applied LSN {}", reply.applied_lsn),
        Answer::Demoted(_) => format!("{node} is backup"),
        Answer::Promoted(reply) => format!("{node} is primary of epoch {} from LSN {}", reply.epoch, reply.first_lsn),
        Answer::Fenced(reply) => format!("{node} is {}", reply.role.name()),
        Answer::Resumed(_) => format!("{node} takes writes again"),
        Answer::Rejoin(reply) => match reply.done.as_ref().and_then(|d| d.orphans_file.as_deref()) {
            Some(file) => format!(
                "{} orphaned transaction(s) saved in {file}, {} rewound",
                reply.orphaned,
                reply.done.as_ref().map_or(0, |d| d.rewound)
            ),
            None => match reply.earlier.as_ref().and_then(|e| e.orphans_file.as_deref()) {
                Some(file) => format!("nothing more orphaned (an earlier rejoin saved {file})"),
                None => "nothing orphaned".to_string(),
            },
        },
        Answer::Verified(reply) => format!("{node} digest {} at LSN {}", reply.digest, reply.lsn),
        Answer::FirstAvailable(first) => format!("journals from LSN {first}"),
        Answer::Accepted => "accepted".into(),
        Answer::Status(status) => format!("{node} is {}", status.role.name()),
    }
}

/// Looks at the pair until `until` holds or `timeout` passes.
async fn wait(run: &Run, until: &Until, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if until.holds(&run.look().await) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("not within {}", humantime::format_duration(timeout)));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Awaits `request` while printing the full copy's progress from `node`'s status each second.
async fn with_copy_progress(
    run: &Run,
    node: &str,
    request: impl std::future::Future<Output = Result<Value, String>>,
) -> Result<Value, String> {
    tokio::pin!(request);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    loop {
        tokio::select! {
            result = &mut request => return result,
            _ = ticker.tick() => {
                if let Some(status) = status_of(run, node).await {
                    let copy = &status["full_copy"];
                    if let (Some(done), Some(total)) = (copy["pairs"].as_u64(), copy["total"].as_u64()) {
                        let percent = (done * 100).checked_div(total).unwrap_or(100);
                        run.say(format!("    full copy: {done}/{total} keys ({percent}%)"));
                    }
                }
            }
        }
    }
}

/// Waits for a rejoined node's catch-up (`request`), saying every [`PROGRESS_EVERY`] how far it
/// got. It gives up early when the node has applied nothing for [`CATCH_UP_STALL`] and is not
/// following: a catch-up that cannot start is then reported within a minute, with the
/// primary's open incidents (which say why it refuses the node, if it does), rather than at the
/// end of the whole limit.
async fn with_catch_up_progress(
    run: &Run,
    node: &str,
    primary: &str,
    target: Lsn,
    request: impl std::future::Future<Output = Result<Value, String>>,
) -> Result<Value, String> {
    tokio::pin!(request);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let (mut applied, mut moved, mut said) = (None, Instant::now(), Instant::now());
    loop {
        tokio::select! {
            result = &mut request => return result,
            _ = ticker.tick() => {
                let Some(status) = status_of(run, node).await else { continue };
                let now = status["applied_lsn"].as_u64();
                if now != applied {
                    (applied, moved) = (now, Instant::now());
                }
                if said.elapsed() >= PROGRESS_EVERY {
                    said = Instant::now();
                    let secs = started.elapsed().as_secs();
                    run.say(format!("    catch-up: {node} applied LSN {} of {target} ({secs} s)", now.unwrap_or(0)));
                }
                if status["following"] != true && moved.elapsed() >= CATCH_UP_STALL {
                    let incidents = match status_of(run, primary).await {
                        Some(status) => open_incidents(primary, &status),
                        None => format!("; {primary} does not answer status"),
                    };
                    return Err(format!(
                        "{node} applied nothing for {} and is not following {primary}{incidents}",
                        humantime::format_duration(CATCH_UP_STALL)
                    ));
                }
            }
        }
    }
}

/// A node's own status, or `None` if it does not answer within a second or two.
async fn status_of(run: &Run, node: &str) -> Option<Value> {
    let request = crate::admin::client::request(&run.pair, node, AdminRequest::Status);
    tokio::time::timeout(Duration::from_secs(2), request).await.ok()?.ok()
}

/// "; open incidents on a: kind: message; …" from node `name`'s status, or nothing if it has none.
fn open_incidents(name: &str, status: &Value) -> String {
    let incidents: Vec<String> = status["incidents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| format!("{}: {}", i["kind"].as_str().unwrap_or("?"), i["message"].as_str().unwrap_or("")))
        .collect();
    if incidents.is_empty() {
        return String::new();
    }
    format!("; open incidents on {name}: {}", incidents.join("; "))
}

/// `hotpair verify [--full]`: both nodes' digests at the primary's last LSN.
pub async fn verify(pair: &PairConfig, full: bool, json: bool) -> u8 {
    let run = Run::new("verify", pair, json);
    let result = async {
        let view = run.look().await;
        let primary = view.primary().cloned().ok_or_else(|| Refused("no reachable primary".into()))?;
        if let Some(down) = view.nodes.iter().find(|n| !n.reachable()) {
            return Err(Refused(format!("{} is unreachable ({})", down.name, down.error())));
        }
        let lsn = primary.lsn();
        let mut memory = Memory::new(run.op_id, None);
        loop {
            match plan::verify(&view, &memory, lsn, full, 30_000) {
                Verdict::Next(Next::Send { step, node, request, timeout_ms }) => {
                    let answer = send(&run, step, &node, request.clone(), Duration::from_millis(timeout_ms)).await;
                    memory.heard.push(Heard::Reply { step, node, request, answer });
                }
                Verdict::Next(_) => {
                    return Err(Refused("verify planned something other than a request (a bug)".into()))
                }
                Verdict::Equal { digest, details } => {
                    details.into_iter().for_each(|(k, v)| run.detail(&k, v));
                    let full = if full { "; full scans match" } else { "" };
                    return Ok(format!("digests equal at LSN {lsn}: {digest}{full}"));
                }
                Verdict::Failed { reason, details } => {
                    details.into_iter().for_each(|(k, v)| run.detail(&k, v));
                    return Err(Refused(reason));
                }
            }
        }
    }
    .await;
    run.finish(result)
}
