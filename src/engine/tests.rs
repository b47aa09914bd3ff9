//! Unit tests of the engine: its purity (imports), and the orderings every step must keep.
//! Scenarios are in the transcripts (`tests/transcripts/`); random schedules in the simulation.

use super::*;

/// Paths the engine may not use: I/O, threads, clocks, async runtimes, the node.
const FORBIDDEN: [&str; 13] = [
    "std::fs",
    "std::io",
    "std::net",
    "std::thread",
    "std::time",
    "std::process",
    "std::env",
    "std::sync",
    "tokio",
    "Instant",
    "SystemTime",
    "crate::clock",
    "crate::node",
];

/// The crate paths the engine may use: plain data types.
const ALLOWED_CRATE_PATHS: [&str; 6] = [
    "crate::storage::journal::{Epoch, HistoryEntry, Lsn}",
    "crate::storage::journal::{HistoryEntry, Lsn}",
    "crate::storage::journal::HistoryEntry",
    "crate::storage::journal::Epoch",
    "crate::storage::meta::Role",
    "crate::storage::digest::Digest",
];

#[test]
fn the_engine_imports_no_io_thread_or_clock() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN {
                assert!(!code.contains(word), "{}:{}: the engine uses {word}: {line}", path.display(), number + 1);
            }
            if let Some(path_used) = code.trim().strip_prefix("use crate::") {
                let used = format!("crate::{}", path_used.trim_end_matches(';'));
                assert!(
                    ALLOWED_CRATE_PATHS.contains(&used.as_str()),
                    "{}:{}: the engine imports {used}; only plain data types are allowed",
                    path.display(),
                    number + 1
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} engine files found in {}", dir.display());
}

fn history(entries: &[(Epoch, Lsn, &str)]) -> Vec<HistoryEntry> {
    entries.iter().map(|&(epoch, first_lsn, p)| HistoryEntry { epoch, first_lsn, primary: p.into() }).collect()
}

fn engine(node: &str, role: Role, last_lsn: Lsn) -> (Engine, Vec<Effect>) {
    let peer = if node == "a" { "b" } else { "a" };
    let mut engine = Engine::new(Identity { node: node.into(), peer: peer.into(), cluster: Uuid::nil() });
    let persisted = Persisted { role, epoch: 1, history: history(&[(1, 1, "a")]), promotion: None, rejoined: None };
    let effects = engine.step(Event::Restarted(Recovered { persisted, last_lsn, met_peer: last_lsn > 0 }));
    (engine, effects)
}

fn position(effects: &[Effect], wanted: impl Fn(&Effect) -> bool) -> Option<usize> {
    effects.iter().position(wanted)
}

/// Persist before announce, and a closing gate before the save.
fn assert_ordered(effects: &[Effect]) {
    let save = position(effects, |e| matches!(e, Effect::Save(_)));
    let publish = position(effects, |e| matches!(e, Effect::Publish(_)));
    let opens = position(effects, |e| matches!(e, Effect::Writes(Gate::Open)));
    let closes = position(effects, |e| matches!(e, Effect::Writes(Gate::Refusing(_))));
    if let Some(save) = save {
        assert!(publish.is_none_or(|p| p > save), "published before saved: {effects:?}");
        assert!(opens.is_none_or(|o| o > save), "opened before saved: {effects:?}");
        assert!(closes.is_none_or(|c| c < save), "closed after saved: {effects:?}");
    }
}

#[test]
fn a_restarted_primary_waits_for_its_peer_and_a_fresh_one_does_not() {
    let (fresh, effects) = engine("a", Role::Primary, 0);
    assert_eq!(fresh.state().gate, Gate::Open, "{effects:?}");
    let (restarted, effects) = engine("a", Role::Primary, 10);
    assert!(matches!(restarted.state().gate, Gate::Refusing(WriteRefusal::AwaitingPeer { .. })), "{effects:?}");
    assert!(effects.contains(&Effect::StartPipeline { first_lsn: 11, epoch: 1, epoch_start: false }));
}

#[test]
fn a_drained_primary_resumes_when_its_lease_runs_out_but_not_while_it_is_demoted() {
    let (mut a, _) = engine("a", Role::Primary, 0);
    let op_id = Uuid::from_u128(1);
    let effects = a.step(Event::Admin(Primitive::Drain { op_id, epoch: 1, lease_ms: 100, now_ms: 1000 }));
    assert_ordered(&effects);
    assert_eq!(effects.last(), Some(&Effect::Run(Action::FinishInFlight)));
    a.step(Event::Done(Outcome::InFlightFinished { lsn: 5, digest: crate::storage::digest::Digest(7) }));
    assert!(a.step(Event::Tick { now_ms: 1099 }).is_empty(), "the lease is not over yet");
    // A demote under way holds the lease.
    assert_eq!(a.step(Event::Admin(Primitive::Demote { op_id, epoch: 1 })), vec![Effect::Run(Action::StopPipeline)]);
    assert!(a.step(Event::Tick { now_ms: 5000 }).is_empty(), "the lease ran out under a demote");
    let effects = a.step(Event::Done(Outcome::Failed { reason: "disk".into(), applied_unconfirmed: false }));
    assert!(matches!(effects.last(), Some(Effect::Reply(Reply::Refused(_)))));
    let effects = a.step(Event::Tick { now_ms: 5001 });
    assert_ordered(&effects);
    assert_eq!(a.state().role, Role::Primary, "{effects:?}");
    assert_eq!(a.state().gate, Gate::Open);
}

#[test]
fn a_higher_epoch_closes_the_gate_before_anything_else_even_during_a_drain() {
    let (mut a, _) = engine("a", Role::Primary, 0);
    let op_id = Uuid::from_u128(1);
    a.step(Event::Admin(Primitive::Drain { op_id, epoch: 1, lease_ms: 100, now_ms: 0 }));
    // The fence arrives while the drain's long action runs (the window a lock once skipped).
    let effects = a.step(Event::ProbeAnswered { epoch: 2, leader: Some("b".into()), last_lsn: Some(3), our_last: 5 });
    assert!(
        matches!(effects.first(), Some(Effect::Writes(Gate::Refusing(WriteRefusal::Fenced { .. })))),
        "{effects:?}"
    );
    assert_ordered(&effects);
    assert_eq!(a.state().role, Role::Fenced);
    // The drain's outcome now finds a fenced node: refused, and the lease cannot resume it.
    let effects = a.step(Event::Done(Outcome::InFlightFinished { lsn: 5, digest: crate::storage::digest::Digest(0) }));
    assert!(matches!(effects.last(), Some(Effect::Reply(Reply::Refused(_)))), "{effects:?}");
    assert!(a.step(Event::Tick { now_ms: 1000 }).is_empty());
    assert_eq!(a.state().role, Role::Fenced);
}

#[test]
fn a_welcome_to_a_hello_sent_before_a_role_change_is_refused() {
    let (mut b, _) = engine("b", Role::Backup, 5);
    let generation = b.state().generation;
    b.step(Event::Admin(Primitive::Promote { op_id: Uuid::from_u128(2), epoch: 1, expect_lsn: None }));
    let effects = b.step(Event::Welcomed { epoch: 1, history: history(&[(1, 1, "a")]), cut_after: None, generation });
    assert!(matches!(effects.last(), Some(Effect::Reply(Reply::Refused(_)))), "{effects:?}");
}

#[test]
fn a_promotion_refused_for_a_missing_drain_lsn_leaves_the_backup_following() {
    let (mut b, _) = engine("b", Role::Backup, 5);
    let op_id = Uuid::from_u128(2);
    b.step(Event::Admin(Primitive::Promote { op_id, epoch: 1, expect_lsn: Some(9) }));
    let effects = b.step(Event::Done(Outcome::ReceivingStopped { last_lsn: 5, heard_primary_lsn: 9 }));
    assert_eq!(effects[..2], [Effect::StartApplier, Effect::ReleaseFollower]);
    assert!(matches!(effects.last(), Some(Effect::Reply(Reply::Refused(r))) if r.contains("ended at 9")));
    assert_eq!(b.state().role, Role::Backup);
    assert!(!b.busy());
}

#[test]
fn a_restarted_primary_promoted_alone_takes_the_next_epoch_after_its_last_lsn() {
    let (mut a, _) = engine("a", Role::Primary, 10);
    let op_id = Uuid::from_u128(2);
    let effects = a.step(Event::Admin(Primitive::Promote { op_id, epoch: 1, expect_lsn: None }));
    assert_eq!(effects.last(), Some(&Effect::Run(Action::FinishInFlight)), "{effects:?}");
    let effects = a.step(Event::Done(Outcome::InFlightFinished { lsn: 10, digest: crate::storage::digest::Digest(7) }));
    assert_eq!(effects.last(), Some(&Effect::Run(Action::StopPipeline)), "{effects:?}");
    let effects = a.step(Event::Done(Outcome::PipelineStopped));
    assert_ordered(&effects);
    assert!(effects.contains(&Effect::StartPipeline { first_lsn: 11, epoch: 2, epoch_start: true }), "{effects:?}");
    assert!(effects.iter().any(|e| matches!(e, Effect::Incident { kind: Alarm::ForcedPromotion, .. })), "{effects:?}");
    assert!(matches!(effects.last(), Some(Effect::Reply(Reply::Promoted { already: false, .. }))), "{effects:?}");
    assert_eq!(a.state().gate, Gate::Open);
    assert_eq!(a.state().history, history(&[(1, 1, "a"), (2, 11, "a")]));
    // A primary taking writes is never promoted again: only one waiting for its peer is.
    let effects = a.step(Event::Admin(Primitive::Promote { op_id, epoch: 2, expect_lsn: None }));
    assert!(matches!(effects.last(), Some(Effect::Reply(Reply::Refused(_)))), "{effects:?}");
}

// ---------------------------------------------------------------------------------------------
// The witness.

const POLICY: WitnessPolicy =
    WitnessPolicy { automatic: true, ttl_ms: 3000, max_lag_ms: Some(1000), min_interval_ms: 60_000 };

fn witnessed(node: &str, role: Role, last_lsn: Lsn, policy: WitnessPolicy) -> Engine {
    let peer = if node == "a" { "b" } else { "a" };
    let mut engine = Engine::new(Identity { node: node.into(), peer: peer.into(), cluster: Uuid::nil() });
    engine.set_witness(Some(policy));
    let persisted = Persisted { role, epoch: 1, history: history(&[(1, 1, "a")]), promotion: None, rejoined: None };
    engine.step(Event::Restarted(Recovered { persisted, last_lsn, met_peer: last_lsn > 0 }));
    if role == Role::Backup {
        // Its first round as a backup: the silence a takeover needs counts from here.
        engine.step(Event::Witness(WitnessReport::Watcher {
            now_ms: 0,
            wall_ms: 0,
            reachable: true,
            leader_present: true,
            epoch_key: None,
            primary_silent_ms: 0,
            lag_ms: 0,
        }));
    }
    engine
}

fn key(epoch: Epoch, node: &str, at_ms: u64, automatic: bool) -> Option<WitnessEpoch> {
    Some(WitnessEpoch { epoch, node: node.into(), at_ms, automatic })
}

fn holder(now_ms: u64, epoch_key: Option<WitnessEpoch>, lease: Option<u64>, backed: Option<u64>) -> Event {
    Event::Witness(WitnessReport::Holder {
        now_ms,
        reachable: true,
        epoch_key,
        lease_until_ms: lease,
        backed_until_ms: backed,
        promised_until_ms: 0,
    })
}

fn watcher(leader_present: bool, silent: u64, lag: u64, epoch_key: Option<WitnessEpoch>) -> Event {
    watcher_at(10_000, leader_present, silent, lag, epoch_key)
}

fn watcher_at(now_ms: u64, leader_present: bool, silent: u64, lag: u64, epoch_key: Option<WitnessEpoch>) -> Event {
    Event::Witness(WitnessReport::Watcher {
        now_ms,
        wall_ms: 1_000_000,
        reachable: true,
        leader_present,
        epoch_key,
        primary_silent_ms: silent,
        lag_ms: lag,
    })
}

fn decision(effects: &[Effect]) -> Option<&WitnessDecision> {
    effects.iter().find_map(|e| match e {
        Effect::Reply(Reply::Witness(d)) => Some(d),
        _ => None,
    })
}

fn incident(effects: &[Effect], kind: Alarm) -> bool {
    effects.iter().any(|e| matches!(e, Effect::Incident { kind: k, .. } if *k == kind))
}

#[test]
fn a_primary_with_a_witness_writes_only_while_its_lease_or_its_backup_covers_it() {
    let mut a = witnessed("a", Role::Primary, 0, POLICY);
    assert!(
        matches!(a.state().gate, Gate::Refusing(WriteRefusal::NoWitness { .. })),
        "no lease yet: {:?}",
        a.state().gate
    );
    let effects = a.step(holder(100, key(1, "a", 0, false), Some(2000), None));
    assert!(effects.contains(&Effect::WriteDeadline(Some(2000))), "{effects:?}");
    assert_eq!(a.state().gate, Gate::Open, "{effects:?}");
    assert_ordered(&effects);
    // The lease's safe end passes with nothing renewed and no backup: writes stop, said once.
    let effects = a.step(Event::Tick { now_ms: 2000 });
    assert!(
        matches!(effects.first(), Some(Effect::Writes(Gate::Refusing(WriteRefusal::NoWitness { .. })))),
        "{effects:?}"
    );
    assert!(incident(&effects, Alarm::WitnessLost), "{effects:?}");
    assert!(a.step(Event::Tick { now_ms: 2100 }).is_empty());
    // The backup's echo covers us again: writes go on.
    let effects = a.step(holder(2200, None, None, Some(4000)));
    assert_eq!(a.state().gate, Gate::Open, "{effects:?}");
    let effects = a.step(holder(2400, None, Some(5000), Some(4000)));
    assert!(
        effects.iter().any(|e| matches!(e, Effect::ResolveIncident { kind: Alarm::WitnessLost, .. })),
        "{effects:?}"
    );
    // etcd down while the backup acknowledges: writes go on (failsafe), and it is said once.
    let effects = a.step(holder(5100, None, None, Some(7000)));
    assert_eq!(a.state().gate, Gate::Open, "{effects:?}");
    assert!(incident(&effects, Alarm::WitnessLost), "{effects:?}");
    assert!(!incident(&a.step(holder(5300, None, None, Some(7200))), Alarm::WitnessLost));
}

#[test]
fn a_newer_witness_epoch_fences_a_primary_first_and_asks_for_a_rejoin() {
    let mut a = witnessed("a", Role::Primary, 10, POLICY);
    let effects = a.step(holder(100, key(2, "b", 5, true), None, None));
    assert!(
        matches!(effects.first(), Some(Effect::Writes(Gate::Refusing(WriteRefusal::Fenced { .. })))),
        "{effects:?}"
    );
    assert_ordered(&effects);
    assert_eq!(a.state().role, Role::Fenced);
    assert_eq!(decision(&effects), Some(&WitnessDecision::Rejoin));
    // The witness gives our own epoch to the other node (its claim beside an admin's promotion
    // of ours): its primary is the one; ours fences.
    let mut a = witnessed("a", Role::Primary, 10, POLICY);
    let effects = a.step(holder(100, key(1, "b", 5, true), Some(2500), None));
    assert_eq!(a.state().role, Role::Fenced, "{effects:?}");
    assert_eq!(decision(&effects), Some(&WitnessDecision::Rejoin));
    // Observe mode: said, not done.
    let mut a = witnessed("a", Role::Primary, 10, WitnessPolicy { automatic: false, ..POLICY });
    let effects = a.step(holder(100, key(2, "b", 5, true), None, None));
    assert_eq!(decision(&effects), Some(&WitnessDecision::Nothing));
    assert!(incident(&effects, Alarm::WouldAct), "{effects:?}");
}

#[test]
fn a_restarted_primary_whose_peer_stays_silent_goes_on_alone_in_a_new_epoch() {
    let mut a = witnessed("a", Role::Primary, 10, POLICY);
    assert!(a.state().awaiting_peer);
    // Holding the key is not enough at once: its peer may answer (a restart for an upgrade).
    let effects = a.step(holder(100, key(1, "a", 0, false), Some(2500), None));
    assert_eq!(decision(&effects), Some(&WitnessDecision::Nothing));
    assert!(matches!(a.state().gate, Gate::Refusing(_)), "{effects:?}");
    let effects = a.step(holder(3099, key(1, "a", 0, false), Some(5500), None));
    assert_eq!(decision(&effects), Some(&WitnessDecision::Nothing), "not a ttl yet");
    // A ttl of silence: raise the witness's epoch key, then start epoch 2 after LSN 10 — its
    // peer's records past 10, if any, are of epoch 1 and set aside at its rejoin.
    let effects = a.step(holder(3100, key(1, "a", 0, false), Some(5500), None));
    assert_eq!(decision(&effects), Some(&WitnessDecision::PromoteAlone { epoch: 2 }));
    // A restart between the raise and the promotion: the raised key is ours, not a fence.
    let mut again = witnessed("a", Role::Primary, 10, POLICY);
    let effects = again.step(holder(100, key(2, "a", 0, false), Some(2500), None));
    assert_eq!(again.state().role, Role::Primary, "{effects:?}");
    let effects = again.step(holder(3100, key(2, "a", 0, false), Some(5500), None));
    assert_eq!(decision(&effects), Some(&WitnessDecision::PromoteAlone { epoch: 2 }));
    // The promotion, as `failover --force`'s.
    let op_id = Uuid::from_u128(4);
    let effects = a.step(Event::Witness(WitnessReport::Raised { op_id, epoch: 2 }));
    assert_eq!(effects, vec![Effect::Run(Action::FinishInFlight)]);
    a.step(Event::Done(Outcome::InFlightFinished { lsn: 10, digest: crate::storage::digest::Digest(7) }));
    let effects = a.step(Event::Done(Outcome::PipelineStopped));
    assert_ordered(&effects);
    assert!(incident(&effects, Alarm::ForcedPromotion), "{effects:?}");
    assert_eq!((a.state().epoch, a.state().gate.clone()), (2, Gate::Open), "{effects:?}");
    assert_eq!(a.state().history.last().map(|h| h.first_lsn), Some(11));
    // Someone else's newer epoch still fences.
    let mut b_ahead = witnessed("a", Role::Primary, 10, POLICY);
    b_ahead.step(holder(100, key(2, "b", 0, true), None, None));
    assert_eq!(b_ahead.state().role, Role::Fenced);
}

#[test]
fn a_backup_claims_the_next_epoch_only_when_every_condition_holds() {
    let mut b = witnessed("b", Role::Backup, 10, POLICY);
    let seen = key(1, "a", 0, false);
    assert_eq!(decision(&b.step(watcher(true, 9000, 0, seen.clone()))), Some(&WitnessDecision::Nothing), "lease held");
    assert_eq!(
        decision(&b.step(watcher(false, 2999, 0, seen.clone()))),
        Some(&WitnessDecision::Nothing),
        "heard within the ttl"
    );
    let effects = b.step(watcher(false, 3000, 1500, seen.clone()));
    assert_eq!(decision(&effects), Some(&WitnessDecision::Nothing), "too far behind");
    assert!(incident(&effects, Alarm::FailoverSuppressed), "{effects:?}");
    assert!(!incident(&b.step(watcher(false, 3200, 1500, seen.clone())), Alarm::FailoverSuppressed), "said once");
    let recent = key(1, "a", 990_000, true);
    let effects = b.step(watcher(false, 3000, 0, recent));
    assert!(incident(&effects, Alarm::FailoverSuppressed), "min_interval: {effects:?}");
    let effects = b.step(watcher(false, 3000, 0, key(3, "a", 0, false)));
    assert_eq!(decision(&effects), Some(&WitnessDecision::Nothing), "the witness is ahead of us");
    b.step(Event::Witness(WitnessReport::Paused(true)));
    assert_eq!(decision(&b.step(watcher(false, 3000, 0, seen.clone()))), Some(&WitnessDecision::Nothing), "paused");
    b.step(Event::Witness(WitnessReport::Paused(false)));
    assert_eq!(
        decision(&b.step(watcher(false, 3000, 0, seen.clone()))),
        Some(&WitnessDecision::Claim { epoch: 2, silent_ms: 3000 })
    );
    // The claim won: the same promotion as `hotpair failover`'s.
    let op_id = Uuid::from_u128(9);
    let effects = b.step(Event::Witness(WitnessReport::Claimed { op_id, epoch: 2, lease_until_ms: 12_000 }));
    assert_eq!(effects.last(), Some(&Effect::Run(Action::StopReceiving)), "{effects:?}");
    b.step(Event::Done(Outcome::ReceivingStopped { last_lsn: 10, heard_primary_lsn: 10 }));
    let effects = b.step(Event::Done(Outcome::Replayed { last_lsn: 10, applied_lsn: 10 }));
    assert_ordered(&effects);
    assert_eq!(
        (b.state().role, b.state().epoch, b.state().gate.clone()),
        (Role::Primary, 2, Gate::Open),
        "{effects:?}"
    );
    // Observe mode never claims.
    let mut b = witnessed("b", Role::Backup, 10, WitnessPolicy { automatic: false, ..POLICY });
    let effects = b.step(watcher(false, 3000, 0, seen));
    assert_eq!(decision(&effects), Some(&WitnessDecision::Nothing));
    assert!(incident(&effects, Alarm::WouldAct), "{effects:?}");
}

#[test]
fn a_backup_counts_the_silence_a_takeover_needs_from_when_it_became_one() {
    // A node that led for long, then became a backup (a switchover, a rejoin), last heard "a
    // primary" long ago: that is no lost primary. Its count starts at its first round as backup.
    let seen = key(1, "b", 0, false);
    let mut b = witnessed("b", Role::Primary, 10, POLICY);
    b.step(holder(100, seen.clone(), Some(2500), None));
    let op_id = Uuid::from_u128(3);
    b.step(Event::Admin(Primitive::Drain { op_id, epoch: 1, lease_ms: 5000, now_ms: 200 }));
    b.step(Event::Done(Outcome::InFlightFinished { lsn: 10, digest: crate::storage::digest::Digest(7) }));
    assert_eq!(b.step(Event::Admin(Primitive::Demote { op_id, epoch: 1 })), vec![Effect::Run(Action::StopPipeline)]);
    b.step(Event::Done(Outcome::PipelineStopped));
    assert_eq!(b.state().role, Role::Backup);
    let decide = |b: &mut Engine, now: u64| decision(&b.step(watcher_at(now, false, 60_000, 0, seen.clone()))).cloned();
    assert_eq!(decide(&mut b, 50_000), Some(WitnessDecision::Nothing), "just became a backup");
    assert_eq!(decide(&mut b, 52_999), Some(WitnessDecision::Nothing), "a backup for less than the ttl");
    assert_eq!(decide(&mut b, 53_000), Some(WitnessDecision::Claim { epoch: 2, silent_ms: 3000 }));
    // Heard within the ttl: the agent's own count still rules.
    let effects = b.step(watcher_at(60_000, false, 2999, 0, seen));
    assert_eq!(decision(&effects), Some(&WitnessDecision::Nothing), "{effects:?}");
}

#[test]
fn a_promoted_backup_writes_on_its_own_lease_only_once_its_echo_promise_is_kept() {
    // It echoed its old primary until its session ended at 1000 (ttl 3000): that primary may
    // write on that echo until about 4000, so our own lease counts from then on.
    let mut a = witnessed("a", Role::Primary, 0, POLICY);
    let report = |now_ms| {
        Event::Witness(WitnessReport::Holder {
            now_ms,
            reachable: true,
            epoch_key: key(1, "a", 0, false),
            lease_until_ms: Some(9000),
            backed_until_ms: None,
            promised_until_ms: 4000,
        })
    };
    let effects = a.step(report(3999));
    assert!(matches!(a.state().gate, Gate::Refusing(WriteRefusal::NoWitness { .. })), "{effects:?}");
    let effects = a.step(report(4000));
    assert_eq!(a.state().gate, Gate::Open, "{effects:?}");
}
