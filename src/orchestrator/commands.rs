//! One function per orchestration command. Each reads the pair, refuses (changing nothing)
//! when it is not safe, and otherwise runs its phases; see `docs/orchestrator.md`.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::view::{NodeView, PairView};
use super::{OrchestrationError, Progress, Run, Step};
use crate::config::PairConfig;
use crate::journal::Lsn;
use crate::wire::AdminRequest;

use OrchestrationError::{PartWay, Refused};

/// Free space a node needs for a switchover to be started.
const MIN_DISK_FREE: u64 = 64 * 1024 * 1024;
/// Bound on a single quick primitive (drain, demote, promote, fence).
const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a long catch-up says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// A rejoined node that applies nothing and does not follow for this long will not catch up by
/// itself (its follower reconnects within seconds): the rejoin says so instead of waiting on.
const CATCH_UP_STALL: Duration = Duration::from_secs(30);

pub struct SwitchoverOptions {
    pub to: Option<String>,
    pub timeout: Duration,
    pub max_lag: Duration,
    pub dry_run: bool,
    pub json: bool,
}

/// `hotpair switchover`: planned role swap with zero loss.
pub async fn switchover(pair: &PairConfig, options: SwitchoverOptions) -> u8 {
    let mut run = Run::new("switchover", pair, options.json);
    let result = switchover_run(&mut run, &options).await;
    run.finish(result)
}

async fn switchover_run(run: &mut Run, options: &SwitchoverOptions) -> Result<String, OrchestrationError> {
    let view = PairView::load(&run.pair).await;
    let resumed = view.progress("switchover");
    // Where a run stopped between demote and promote, both nodes are backups: finish it.
    if let Some(progress) = &resumed {
        let (from, to) = (view.node(&progress.from), view.node(&progress.to));
        if from.is_some_and(|n| n.is("backup")) && to.is_some_and(|n| n.is("backup") && n.epoch() == progress.epoch) {
            run.op_id = progress.op_id;
            run.say(format!(
                "resuming switchover {} from {} to {} at promote",
                progress.op_id, progress.from, progress.to
            ));
            return finish_switchover(run, progress.clone(), options.timeout).await;
        }
    }
    let (primary, backup) = run
        .phase(Step::Preflight, async {
            let ready = preflight(&view, options)?;
            Ok::<_, OrchestrationError>((ready.clone(), format!("{} → {}, backup healthy", ready.0.name, ready.1.name)))
        })
        .await?;
    if let Some(progress) = resumed.filter(|p| p.from == primary.name && p.to == backup.name) {
        if primary.is("draining") {
            run.op_id = progress.op_id;
            run.say(format!("resuming switchover {} (the primary is still draining)", progress.op_id));
        } else {
            run.say(format!(
                "an earlier switchover {} did not finish and was rolled back (its drain lease expired); starting again",
                progress.op_id
            ));
        }
    }
    if options.dry_run {
        run.detail("ready", true);
        return Ok(format!("ready: {} can hand over to {} (dry run, nothing changed)", primary.name, backup.name));
    }
    let epoch = primary.epoch();
    let mut progress = Progress {
        op_id: run.op_id,
        command: "switchover".into(),
        from: primary.name.clone(),
        to: backup.name.clone(),
        epoch,
        step: Step::Drain,
        drain_lsn: None,
    };
    run.save_progress(Some(&progress)).await;
    let op_id = run.op_id;
    let lease_ms = options.timeout.as_millis() as u64;
    let drained = run
        .phase(Step::Drain, async {
            let body =
                run_send(run, &primary.name, AdminRequest::Drain { op_id, epoch, lease_ms }, STEP_TIMEOUT).await?;
            let lsn = body["lsn"].as_u64().unwrap_or(0);
            Ok::<_, String>(((lsn, body["digest"].as_str().unwrap_or("").to_string()), format!("last LSN {lsn}")))
        })
        .await;
    let (drain_lsn, drain_digest) = match drained {
        Ok(drained) => drained,
        Err(reason) => {
            run.save_progress(None).await;
            return Err(Refused(format!("drain of {} failed: {reason}", primary.name)));
        }
    };
    let applied = run
        .phase(Step::WaitApplied, async {
            let request = AdminRequest::WaitApplied { lsn: drain_lsn, timeout_ms: options.timeout.as_millis() as u64 };
            let body = run_send(run, &backup.name, request, options.timeout + STEP_TIMEOUT).await?;
            let digest = body["digest"].as_str().unwrap_or("").to_string();
            Ok::<_, String>((digest, format!("{} applied LSN {drain_lsn}", backup.name)))
        })
        .await;
    let backup_digest = match applied {
        Ok(digest) => digest,
        Err(reason) => {
            let reason = format!("{} did not reach LSN {drain_lsn}: {reason}", backup.name);
            return Err(roll_back(run, &primary.name, epoch, reason).await);
        }
    };
    if backup_digest != drain_digest {
        let reason = format!(
            "digest mismatch at LSN {drain_lsn}: {} has {drain_digest}, {} has {backup_digest}",
            primary.name, backup.name
        );
        return Err(roll_back(run, &primary.name, epoch, reason).await);
    }
    progress.step = Step::Demote;
    progress.drain_lsn = Some(drain_lsn);
    run.save_progress(Some(&progress)).await;
    let demoted = run
        .phase(Step::Demote, async {
            run_send(run, &primary.name, AdminRequest::Demote { op_id, epoch }, STEP_TIMEOUT).await?;
            Ok::<_, String>(((), format!("{} is backup", primary.name)))
        })
        .await;
    if let Err(reason) = demoted {
        return Err(PartWay {
            reason: format!("demote of {} failed: {reason}", primary.name),
            resume: "hotpair switchover".into(),
        });
    }
    progress.step = Step::Promote;
    run.save_progress(Some(&progress)).await;
    finish_switchover(run, progress, options.timeout).await
}

/// Undoes a drain: the primary takes writes again, the progress record goes.
async fn roll_back(run: &Run, primary: &str, epoch: u64, reason: String) -> OrchestrationError {
    let resumed = run_send(run, primary, AdminRequest::Resume { op_id: run.op_id, epoch }, STEP_TIMEOUT).await;
    run.save_progress(None).await;
    match resumed {
        Ok(_) => Refused(format!("{reason}; rolled back: {primary} takes writes again")),
        Err(err) => PartWay {
            reason: format!("{reason}; and resuming {primary} failed: {err} (its drain lease will resume it)"),
            resume: "hotpair switchover".into(),
        },
    }
}

/// Checks a switchover can start; returns (primary, backup).
fn preflight(view: &PairView, options: &SwitchoverOptions) -> Result<(NodeView, NodeView), OrchestrationError> {
    for node in &view.nodes {
        if !node.reachable() {
            return Err(Refused(format!(
                "{} is unreachable ({}); a switchover needs both nodes",
                node.name,
                node.error()
            )));
        }
    }
    let primary = view.primary().ok_or_else(|| Refused("no node is primary; use failover or rejoin".into()))?.clone();
    let backup = view.other(&primary.name).cloned().ok_or_else(|| Refused("the pair has one node".into()))?;
    if let Some(to) = &options.to {
        if *to == primary.name {
            return Err(Refused(format!("{to} is already the primary")));
        }
        if *to != backup.name {
            return Err(Refused(format!("{to} is not a node of this pair")));
        }
    }
    if !backup.is("backup") {
        return Err(Refused(format!(
            "{} is {}, not a healthy backup; rejoin it first",
            backup.name,
            backup.role().unwrap_or("?")
        )));
    }
    if backup.diverged() {
        return Err(Refused(format!(
            "{} has diverged from the primary; run `hotpair rejoin {}`",
            backup.name, backup.name
        )));
    }
    if let Some(failure) = backup.failure().or_else(|| primary.failure()) {
        return Err(Refused(format!("a node has failed: {failure}")));
    }
    if !primary.peer_connected() {
        return Err(Refused(format!(
            "{} is not connected to {}: the backup is not following",
            backup.name, primary.name
        )));
    }
    let lag_ms = backup.lag_ms();
    if Duration::from_millis(lag_ms) > options.max_lag {
        return Err(Refused(format!(
            "{} is {lag_ms} ms behind, more than --max-lag {}",
            backup.name,
            humantime::format_duration(options.max_lag)
        )));
    }
    for node in [&primary, &backup] {
        if node.disk_free().is_some_and(|free| free < MIN_DISK_FREE) {
            return Err(Refused(format!("{} has less than {} MiB free", node.name, MIN_DISK_FREE >> 20)));
        }
    }
    Ok((primary, backup))
}

/// Promote, reverse replication, verify: the part of a switchover after the old primary was
/// demoted (also where a re-run resumes).
async fn finish_switchover(run: &mut Run, progress: Progress, timeout: Duration) -> Result<String, OrchestrationError> {
    let (op_id, epoch, drain_lsn) = (progress.op_id, progress.epoch, progress.drain_lsn);
    let promoted = run
        .phase(Step::Promote, async {
            let body = run_send(
                run,
                &progress.to,
                AdminRequest::Promote { op_id, epoch, expect_lsn: drain_lsn },
                STEP_TIMEOUT,
            )
            .await?;
            let note = format!("{} is primary of epoch {} from LSN {}", progress.to, body["epoch"], body["first_lsn"]);
            Ok::<_, String>((body, note))
        })
        .await
        .map_err(|reason| PartWay {
            reason: format!("promote of {} failed: {reason}", progress.to),
            resume: "hotpair switchover".into(),
        })?;
    run.save_progress(None).await;
    // Writes are refused from the drain until the promote: the orchestrator's outage window.
    run.detail("write_outage_ms", run.phases_ms(&[Step::Drain, Step::WaitApplied, Step::Demote, Step::Promote]));
    let new_epoch = promoted["epoch"].as_u64().unwrap_or(epoch + 1);
    run.detail("from", &progress.from);
    run.detail("to", &progress.to);
    run.detail("epoch", new_epoch);
    run.detail("lsn", drain_lsn);
    let pair = run.pair.clone();
    let (to, from) = (progress.to.clone(), progress.from.clone());
    let first_lsn = promoted["first_lsn"].as_u64().unwrap_or(0);
    let reversed = run
        .phase(Step::Reverse, async {
            // Replication has reversed once the old primary follows and applied the new epoch's
            // first record.
            wait_for(timeout, || async {
                let view = PairView::load(&pair).await;
                let primary = view.node(&to).is_some_and(|n| n.is("primary") && n.peer_connected());
                let backup =
                    view.node(&from).is_some_and(|n| n.is("backup") && n.following() && n.applied_lsn() >= first_lsn);
                primary && backup
            })
            .await
            .map(|_| ((), format!("{} follows {}", progress.from, progress.to)))
        })
        .await;
    if let Err(reason) = reversed {
        return Err(PartWay {
            reason: format!("{} is primary, but {} did not start following it: {reason}", progress.to, progress.from),
            resume: format!("hotpair rejoin {}", progress.from),
        });
    }
    let verified = verify_phase(run, drain_lsn.unwrap_or(0), false, timeout).await;
    match verified {
        Ok(digest) => Ok(format!(
            "{} is primary of epoch {new_epoch}; {} follows it; digests equal at LSN {} ({digest})",
            progress.to,
            progress.from,
            drain_lsn.unwrap_or(0)
        )),
        Err(reason) => Err(PartWay { reason, resume: "hotpair verify".into() }),
    }
}

/// Sends a primitive as part of `run`.
async fn run_send(run: &Run, node: &str, request: AdminRequest, timeout: Duration) -> Result<Value, String> {
    run.send(node, request, timeout).await
}

/// Polls `check` until it holds or `timeout` passes.
async fn wait_for<F, Fut>(timeout: Duration, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("not within {}", humantime::format_duration(timeout)));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Both nodes' digests at `lsn`; `Ok(digest)` when they agree.
async fn verify_phase(run: &Run, lsn: Lsn, full: bool, timeout: Duration) -> Result<String, String> {
    let names: Vec<String> = run.pair.nodes.iter().map(|n| n.name.clone()).collect();
    let answers = run
        .phase(Step::Verify, async {
            let mut answers = Vec::new();
            for name in &names {
                let request = AdminRequest::Verify { lsn, full, timeout_ms: timeout.as_millis() as u64 };
                let body = run
                    .send(name, request, timeout + STEP_TIMEOUT + full_scan_time(full))
                    .await
                    .map_err(|e| format!("verify on {name}: {e}"))?;
                answers.push((name.clone(), body));
            }
            let digests: Vec<&str> = answers.iter().map(|(_, b)| b["digest"].as_str().unwrap_or("?")).collect();
            let equal = digests.windows(2).all(|w| w[0] == w[1]);
            let note = if equal { format!("equal at LSN {lsn}") } else { format!("MISMATCH at LSN {lsn}") };
            Ok::<_, String>((answers, note))
        })
        .await?;
    let mut digests = serde_json::Map::new();
    let mut full_ok = true;
    for (name, body) in &answers {
        digests.insert(name.clone(), body["digest"].clone());
        if full {
            let matches = &body["full"]["matches"];
            full_ok &= *matches == true;
            run.say(format!(
                "    {name}: full scan at LSN {} = {} ({} keys): {}",
                body["full"]["at_lsn"],
                body["full"]["digest"].as_str().unwrap_or("-"),
                body["full"]["keys"],
                match matches {
                    Value::Bool(true) => "matches the kept digest".to_string(),
                    Value::Bool(false) => "DOES NOT match the kept digest".to_string(),
                    _ => body["full"]["note"].as_str().unwrap_or("not checked").to_string(),
                }
            ));
        }
    }
    let first = answers.first().map(|(_, b)| b["digest"].as_str().unwrap_or("?").to_string()).unwrap_or_default();
    let equal = answers.iter().all(|(_, b)| b["digest"].as_str() == Some(&first));
    run.detail("lsn", lsn);
    run.detail("equal", equal);
    run.detail("digests", &digests);
    run.detail("full", full);
    run.detail("full_matches", full.then_some(full_ok));
    if !equal {
        return Err(format!("digests differ at LSN {lsn}: {}", Value::Object(digests)));
    }
    if full && !full_ok {
        return Err("a full scan did not match its node's kept digest (see above)".into());
    }
    Ok(first)
}

fn full_scan_time(full: bool) -> Duration {
    if full {
        Duration::from_secs(600)
    } else {
        Duration::ZERO
    }
}

/// `hotpair failover --to NODE [--force]`.
pub async fn failover(pair: &PairConfig, to: &str, force: bool, json: bool) -> u8 {
    let mut run = Run::new("failover", pair, json);
    let result = failover_run(&mut run, to, force).await;
    run.finish(result)
}

async fn failover_run(run: &mut Run, to: &str, force: bool) -> Result<String, OrchestrationError> {
    let view = PairView::load(&run.pair).await;
    let target = view.node(to).cloned().ok_or_else(|| Refused(format!("{to} is not a node of this pair")))?;
    let old = view.other(to).cloned().ok_or_else(|| Refused("the pair has one node".into()))?;
    let (target, old) = run
        .phase(Step::Preflight, async {
            if !target.reachable() {
                return Err(Refused(format!("{to} is unreachable ({}); cannot promote it", target.error())));
            }
            if target.is("primary") && !old.is("primary") {
                return Err(Refused(format!("{to} is already the primary (epoch {})", target.epoch())));
            }
            if !target.is("backup") {
                return Err(Refused(format!(
                    "{to} is {}; only a backup can be failed over to",
                    target.role().unwrap_or("?")
                )));
            }
            let healthy = old.reachable() && old.is("primary") && old.failure().is_none();
            if healthy && !force {
                return Err(Refused(format!(
                    "{} is reachable and healthy (primary of epoch {}); use switchover, or --force to fail over anyway",
                    old.name,
                    old.epoch()
                )));
            }
            let note = if old.reachable() {
                format!("{} is {} (forced)", old.name, old.role().unwrap_or("?"))
            } else {
                format!("{} is unreachable", old.name)
            };
            Ok(((target.clone(), old.clone()), note))
        })
        .await?;
    let epoch = target.epoch();
    let progress = Progress {
        op_id: run.op_id,
        command: "failover".into(),
        from: old.name.clone(),
        to: to.into(),
        epoch,
        step: Step::Promote,
        drain_lsn: None,
    };
    run.save_progress(Some(&progress)).await;
    let op_id = run.op_id;
    let promoted = run
        .phase(Step::Promote, async {
            let body =
                run_send(run, to, AdminRequest::Promote { op_id, epoch, expect_lsn: None }, STEP_TIMEOUT).await?;
            let note = format!("{to} is primary of epoch {} from LSN {}", body["epoch"], body["first_lsn"]);
            Ok::<_, String>((body, note))
        })
        .await
        .map_err(|reason| Refused(format!("promote of {to} failed: {reason}")))?;
    run.save_progress(None).await;
    let new_epoch = promoted["epoch"].as_u64().unwrap_or(epoch + 1);
    if old.reachable() {
        let fenced = run
            .phase(Step::Fence, async {
                let body = run_send(
                    run,
                    &old.name,
                    AdminRequest::Fence { epoch: new_epoch, primary: to.into() },
                    STEP_TIMEOUT,
                )
                .await?;
                Ok::<_, String>(((), format!("{} is {}", old.name, body["role"].as_str().unwrap_or("?"))))
            })
            .await;
        if let Err(reason) = fenced {
            run.say(format!(
                "  warning: could not fence {}: {reason}; it fences itself when it hears epoch {new_epoch}",
                old.name
            ));
        }
    }
    for key in ["epoch", "first_lsn", "last_heard_lsn", "not_received", "last_received_lsn"] {
        run.detail(key, &promoted[key]);
    }
    run.detail("to", to);
    run.detail("from", &old.name);
    Ok(format!(
        "{to} is primary of epoch {new_epoch} from LSN {}; last primary LSN heard {}, about {} transactions never received; run `hotpair rejoin {}` when it is back",
        promoted["first_lsn"], promoted["last_heard_lsn"], promoted["not_received"], old.name
    ))
}

/// `hotpair rejoin NODE [--allow-full-copy]`.
pub async fn rejoin(pair: &PairConfig, node: &str, allow_full_copy: bool, json: bool) -> u8 {
    let mut run = Run::new("rejoin", pair, json);
    let result = rejoin_run(&mut run, node, allow_full_copy, Duration::from_secs(600)).await;
    run.finish(result)
}

async fn rejoin_run(
    run: &mut Run,
    name: &str,
    allow_full_copy: bool,
    catch_up_limit: Duration,
) -> Result<String, OrchestrationError> {
    let view = PairView::load(&run.pair).await;
    let node = view.node(name).cloned().ok_or_else(|| Refused(format!("{name} is not a node of this pair")))?;
    let primary = view.other(name).cloned().ok_or_else(|| Refused("the pair has one node".into()))?;
    let pair = run.pair.clone();
    let first_available = run
        .phase(Step::Preflight, async {
            if !node.reachable() {
                return Err(Refused(format!(
                    "{name} is unreachable ({}); start it first (`hotpair run {name}`)",
                    node.error()
                )));
            }
            if !primary.reachable() || !primary.is("primary") {
                return Err(Refused(format!(
                    "{} is not a reachable primary ({}); rejoin needs the current primary",
                    primary.name,
                    primary.role().map_or_else(|| primary.error(), str::to_string)
                )));
            }
            // The rejoining node's own stop is lifted by the rejoin (it is asked to follow); the
            // primary's would leave it unable to catch up.
            if !primary.replicating() {
                return Err(Refused(format!(
                    "replication is stopped on {} (`hotpair replicate stop`); run `hotpair replicate start {}` first, or the rejoined node could not catch up",
                    primary.name, primary.name
                )));
            }
            if node.is("primary") && node.epoch() >= primary.epoch() {
                return Err(Refused(format!(
                    "{name} is primary of epoch {}, not behind {}",
                    node.epoch(),
                    primary.name
                )));
            }
            accept_rebuilt_node(&pair, &node, &primary, allow_full_copy).await?;
            let body = crate::admin::request(&pair, &primary.name, AdminRequest::FirstAvailable)
                .await
                .map_err(|e| Refused(format!("asking {} for its journals: {e}", primary.name)))?;
            let first = body["first_available"].as_u64().unwrap_or(1);
            Ok((first, format!("{} is primary of epoch {}, journals from LSN {first}", primary.name, primary.epoch())))
        })
        .await?;
    let op_id = run.op_id;
    let rejoin_request = |dry_run, full_copy| AdminRequest::Rejoin {
        op_id,
        history: primary.history(),
        epoch: primary.epoch(),
        last_lsn: primary.last_lsn(),
        first_available,
        dry_run,
        full_copy,
    };
    let plan = run_send(run, name, rejoin_request(true, false), STEP_TIMEOUT).await.map_err(Refused)?;
    let divergence = plan["divergence_lsn"].as_u64().unwrap_or(0);
    run.say(format!(
        "  divergence point: LSN {divergence}; {} orphaned transaction(s) on {name}; the primary ships from LSN {first_available}",
        plan["orphaned"]
    ));
    let full_copy = plan["shippable"] != true;
    if full_copy && !allow_full_copy {
        return Err(Refused(format!(
            "{}'s journals start at LSN {first_available} but {name} needs LSN {} (trimmed or lost); rerun with --allow-full-copy to copy the whole database",
            primary.name, plan["needs_from"]
        )));
    }
    if full_copy {
        run.say(format!(
            "  the journals {name} needs are gone: copying {}'s whole store (--allow-full-copy)",
            primary.name
        ));
    }
    let step = if full_copy { Step::FullCopy } else { Step::Rejoin };
    let rejoined = run
        .phase(step, async {
            let request = run_send(run, name, rejoin_request(false, full_copy), Duration::from_secs(3600));
            let body = if full_copy { with_copy_progress(run, name, request).await? } else { request.await? };
            let note = match body["orphans_file"].as_str() {
                Some(file) => {
                    format!("{} orphaned transaction(s) saved in {file}, {} rewound", body["orphaned"], body["rewound"])
                }
                None => "nothing orphaned".to_string(),
            };
            Ok::<_, String>((body, note))
        })
        .await
        .map_err(|reason| PartWay {
            reason: format!("rejoin of {name} failed: {reason}"),
            resume: format!("hotpair rejoin {name}"),
        })?;
    for key in ["divergence_lsn", "orphaned", "orphans_file", "rewound"] {
        run.detail(key, &rejoined[key]);
    }
    run.detail("node", name);
    run.detail("full_copy", full_copy);
    let target = PairView::load(&run.pair).await.node(&primary.name).map_or(primary.lsn(), NodeView::lsn);
    let caught_up = run
        .phase(Step::CatchUp, async {
            let request = AdminRequest::WaitApplied { lsn: target, timeout_ms: catch_up_limit.as_millis() as u64 };
            let request = run_send(run, name, request, catch_up_limit + STEP_TIMEOUT);
            let body = with_catch_up_progress(run, name, &primary.name, target, request).await?;
            Ok::<_, String>(((), format!("{name} applied LSN {}", body["applied_lsn"])))
        })
        .await;
    if let Err(reason) = caught_up {
        return Err(PartWay {
            reason: format!("{name} is backup but did not catch up: {reason}"),
            resume: "hotpair status".into(),
        });
    }
    let digest = verify_phase(run, target, false, Duration::from_secs(30))
        .await
        .map_err(|reason| PartWay { reason, resume: "hotpair verify".into() })?;
    Ok(match rejoined["orphans_file"].as_str() {
        Some(file) => format!(
            "{name} rejoined behind {}: diverged after LSN {divergence}, {} orphaned transaction(s) saved in {file}; caught up, digests equal at LSN {target} ({digest})",
            primary.name, rejoined["orphaned"]
        ),
        None if full_copy => format!(
            "{name} rejoined behind {} by a full copy (its journals from LSN {} were gone); caught up, digests equal at LSN {target} ({digest})",
            primary.name, plan["needs_from"]
        ),
        None => format!(
            "{name} rejoined behind {} from LSN {divergence} with nothing orphaned; caught up, digests equal at LSN {target} ({digest})",
            primary.name
        ),
    })
}

/// A node with another incarnation than the primary knows (its data directory was rebuilt with
/// `hotpair reinit`, or it is another installation) is refused by the primary until the admin
/// accepts it; `--allow-full-copy` is that acceptance, since such a node starts empty. A node
/// with the known incarnation but behind what it acknowledged (a restored copy) is refused
/// here, with the way to rebuild it.
async fn accept_rebuilt_node(
    pair: &PairConfig,
    node: &NodeView,
    primary: &NodeView,
    allow_full_copy: bool,
) -> Result<(), OrchestrationError> {
    let (Some(theirs), Some(known)) = (node.incarnation(), primary.peer_incarnation()) else {
        return Ok(());
    };
    let name = &node.name;
    if theirs == known {
        // Same installation, but behind what it acknowledged: a restored copy, which the primary
        // refuses; without this check the catch-up phase would wait for it in vain.
        let acknowledged = primary.peer_acknowledged_lsn();
        if node.last_lsn() < acknowledged {
            return Err(Refused(format!(
                "{name} is at LSN {}, behind LSN {acknowledged} it already acknowledged to {} as durable: a restored copy, which {} refuses; move its directory aside and rebuild it (`hotpair reinit {name}`, then `hotpair rejoin {name} --allow-full-copy`)",
                node.last_lsn(),
                primary.name,
                primary.name
            )));
        }
        return Ok(());
    }
    if !allow_full_copy {
        return Err(Refused(format!(
            "{name} presents incarnation {theirs}, but {} knows it as {known}: its data directory was rebuilt (`hotpair reinit {name}`) or this is another installation; if it is the rebuilt node, rerun with --allow-full-copy",
            primary.name
        )));
    }
    let incarnation = theirs.parse().map_err(|e| Refused(format!("{name}'s incarnation {theirs:?}: {e}")))?;
    crate::admin::request(pair, &primary.name, AdminRequest::AcceptPeer { incarnation })
        .await
        .map_err(|e| Refused(format!("{} did not accept {name}'s new incarnation: {e}", primary.name)))?;
    Ok(())
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
    let request = crate::admin::request(&run.pair, node, AdminRequest::Status);
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

/// `hotpair switchback`: back to the pair file's preferred primary.
pub async fn switchback(pair: &PairConfig, timeout: Duration, json: bool) -> u8 {
    let mut run = Run::new("switchback", pair, json);
    let result = switchback_run(&mut run, timeout).await;
    run.finish(result)
}

async fn switchback_run(run: &mut Run, timeout: Duration) -> Result<String, OrchestrationError> {
    let preferred = run.pair.preferred_primary().name.clone();
    let view = PairView::load(&run.pair).await;
    let node = view.node(&preferred).cloned().ok_or_else(|| Refused("no preferred node".into()))?;
    if node.is("primary") && view.primary().is_some_and(|p| p.name == preferred) {
        return Ok(format!("{preferred} is already the primary; nothing to do"));
    }
    let needs_rejoin = !node.is("backup") || node.diverged();
    if needs_rejoin {
        run.say(format!("{preferred} is {}: rejoining it first", node.role().unwrap_or("unreachable")));
        rejoin_run(run, &preferred, false, timeout).await?;
    }
    let pair = run.pair.clone();
    let caught = run
        .phase(Step::CatchUp, async {
            wait_for(timeout, || async {
                let view = PairView::load(&pair).await;
                let (Some(p), Some(b)) = (view.primary(), view.node(&preferred)) else { return false };
                b.is("backup") && p.peer_connected() && b.applied_lsn() + 64 >= p.lsn()
            })
            .await
            .map(|_| ((), format!("{preferred} caught up")))
        })
        .await;
    caught.map_err(|reason| Refused(format!("{preferred} did not catch up: {reason}")))?;
    let options = SwitchoverOptions { to: Some(preferred), timeout, max_lag: timeout, dry_run: false, json: true };
    switchover_run(run, &options).await
}

/// `hotpair verify [--full]`.
pub async fn verify(pair: &PairConfig, full: bool, json: bool) -> u8 {
    let run = Run::new("verify", pair, json);
    let result = async {
        let view = PairView::load(&run.pair).await;
        let primary = view.primary().cloned().ok_or_else(|| Refused("no reachable primary".into()))?;
        if let Some(down) = view.nodes.iter().find(|n| !n.reachable()) {
            return Err(Refused(format!("{} is unreachable ({})", down.name, down.error())));
        }
        let lsn = primary.lsn();
        let digest = verify_phase(&run, lsn, full, Duration::from_secs(30)).await.map_err(Refused)?;
        Ok(format!("digests equal at LSN {lsn}: {digest}{}", if full { "; full scans match" } else { "" }))
    }
    .await;
    run.finish(result)
}
