//! The planner step by step: each test is a situation (both nodes' status, the saved progress,
//! what the run heard) and the step the planner must take. The defects of the fault campaign
//! (issue 21) are here as the situations they came from.

use super::*;
use crate::admin::protocol::{PeerView, WritesView};
use crate::storage::journal::HistoryEntry;

const OP: u128 = 7;
const EARLIER: u128 = 3;

fn history(entries: &[(u64, Lsn, &str)]) -> Vec<HistoryEntry> {
    entries.iter().map(|&(epoch, first_lsn, p)| HistoryEntry { epoch, first_lsn, primary: p.into() }).collect()
}

/// A node's status: `role` in `epoch` with `history`, at `lsn`.
fn node(name: &str, role: Role, epoch: u64, history: Vec<HistoryEntry>, lsn: Lsn) -> NodeView {
    let peer = if name == "a" { "b" } else { "a" };
    let writer = matches!(role, Role::Primary | Role::Draining);
    NodeView {
        name: name.into(),
        status: Ok(StatusView {
            node: name.into(),
            role,
            epoch,
            lsn,
            last_lsn: lsn,
            applied_lsn: lsn,
            digest: "d".into(),
            lag_records: 0,
            lag_ms: 0,
            remote_journal: if writer { "dormant" } else { "active" }.into(),
            replicating: true,
            following: role == Role::Backup,
            awaiting_peer: false,
            failure: None,
            writes: writer.then(|| WritesView { accepting: role == Role::Primary, reason: None }),
            history,
            incarnation: Uuid::from_u128(if name == "a" { 100 } else { 200 }),
            peer_incarnation: Some(Uuid::from_u128(if name == "a" { 200 } else { 100 })),
            peer: PeerView { name: peer.into(), connected: true, acknowledged_lsn: 0 },
            disk_free_bytes: Some(1 << 40),
            orchestration: None,
            promotion: None,
            rejoined: None,
        }),
    }
}

fn down(name: &str) -> NodeView {
    NodeView { name: name.into(), status: Err(format!("cannot reach {name}: connection refused")) }
}

fn pair(a: NodeView, b: NodeView) -> PairView {
    PairView { nodes: vec![a, b] }
}

fn one() -> Vec<HistoryEntry> {
    history(&[(1, 1, "a")])
}

fn two() -> Vec<HistoryEntry> {
    history(&[(1, 1, "a"), (2, 41, "b")])
}

fn progress(op: u128, step: Step, drain: Option<Lsn>) -> Progress {
    Progress {
        op_id: Uuid::from_u128(op),
        command: "switchover".into(),
        from: "a".into(),
        to: "b".into(),
        epoch: 1,
        step,
        drain_lsn: drain,
        drain_digest: drain.map(|_| "d".to_string()),
        first_lsn: None,
        reason: None,
    }
}

fn switchover_to_b() -> Command {
    Command::Switchover { to: Some("b".into()), timeout_ms: 3000, max_lag_ms: 1000, dry_run: false }
}

fn plain_switchover() -> Command {
    Command::Switchover { to: None, timeout_ms: 3000, max_lag_ms: 1000, dry_run: false }
}

fn memory(progress: Option<Progress>) -> Memory {
    Memory::new(Uuid::from_u128(OP), progress)
}

fn reply(step: Step, node: &str, request: AdminRequest, answer: Result<Answer, String>) -> Heard {
    Heard::Reply { step, node: node.into(), request, answer }
}

#[test]
fn a_switchover_saves_its_progress_before_it_drains() {
    let view = pair(node("a", Role::Primary, 1, one(), 40), node("b", Role::Backup, 1, one(), 40));
    let Next::Save(Some(saved)) = plan(&switchover_to_b(), &view, &memory(None)) else { panic!("no save first") };
    assert_eq!((saved.step, saved.from.as_str(), saved.to.as_str(), saved.epoch), (Step::Drain, "a", "b", 1));
    let next = plan(&switchover_to_b(), &view, &memory(Some(saved)));
    assert!(matches!(next, Next::Send { step: Step::Drain, ref node, .. } if node == "a"), "{next:?}");
}

#[test]
fn the_drain_reply_goes_into_the_progress_with_its_digest_before_the_wait() {
    let view = pair(node("a", Role::Draining, 1, one(), 40), node("b", Role::Backup, 1, one(), 38));
    let mut m = memory(Some(progress(OP, Step::Drain, None)));
    let drained = Answer::Drained(DrainReply { lsn: 40, digest: "d40".into(), lease_ms: 3000 });
    m.heard.push(reply(
        Step::Drain,
        "a",
        AdminRequest::Drain { op_id: Uuid::from_u128(OP), epoch: 1, lease_ms: 3000 },
        Ok(drained),
    ));
    let Next::Save(Some(saved)) = plan(&switchover_to_b(), &view, &m) else { panic!() };
    assert_eq!(
        (saved.step, saved.drain_lsn, saved.drain_digest.as_deref()),
        (Step::WaitApplied, Some(40), Some("d40"))
    );
}

#[test]
fn defect_a_rerun_after_the_promotion_finishes_the_switchover_instead_of_swapping_back() {
    // The CLI was killed right after the promotion (before it saved step reverse): b leads
    // epoch 2, a follows it, both still hold progress at step promote. A plain re-run must
    // finish this switchover (reverse, verify), not start a new one back to a.
    let mut a = node("a", Role::Backup, 2, two(), 45);
    let b = node("b", Role::Primary, 2, two(), 45);
    if let Ok(s) = &mut a.status {
        s.following = true;
    }
    let view = pair(a, b);
    let m = memory(Some(progress(EARLIER, Step::Promote, Some(40))));
    let Next::Save(Some(saved)) = plan(&plain_switchover(), &view, &m) else { panic!("it did not go on") };
    assert_eq!((saved.step, saved.first_lsn, saved.op_id), (Step::Reverse, Some(41), Uuid::from_u128(EARLIER)));
    let next = plan(&plain_switchover(), &view, &memory(Some(saved.clone())));
    assert!(matches!(next, Next::Wait { step: Step::Reverse, .. }), "{next:?}");
    let mut m = memory(Some(saved));
    m.heard.push(Heard::Waited { step: Step::Reverse, result: Ok(()) });
    let Next::Save(Some(saved)) = plan(&plain_switchover(), &view, &m) else { panic!() };
    assert_eq!(saved.step, Step::Verify);
    // Verify at the drain LSN on both, then clear the progress and report success.
    let mut m = memory(Some(saved));
    for name in ["a", "b"] {
        let next = plan(&plain_switchover(), &view, &m);
        let Next::Send { step: Step::Verify, node, request, .. } = next else { panic!("{next:?}") };
        assert_eq!(node, name);
        assert!(matches!(request, AdminRequest::Verify { lsn: 40, .. }));
        let verified = VerifyReply { lsn: 40, digest: "d".into(), source: "store".into(), applied_lsn: 45, full: None };
        m.heard.push(reply(Step::Verify, name, request, Ok(Answer::Verified(verified))));
    }
    let Next::Finish(Finish { clear: true, result: Ok(line), .. }) = plan(&plain_switchover(), &view, &m) else {
        panic!()
    };
    assert!(line.contains("b is primary of epoch 2"), "{line}");
}

#[test]
fn defect_a_stale_progress_record_never_leads_to_a_promotion_without_the_drain_lsn() {
    // b was killed right after a saved step demote; b's own record is still at step drain.
    // Whichever record the re-run holds, it must not promote b without the drain LSN.
    let view = pair(node("a", Role::Backup, 1, one(), 40), node("b", Role::Backup, 1, one(), 40));
    let stale = memory(Some(progress(EARLIER, Step::Drain, None)));
    let next = plan(&switchover_to_b(), &view, &stale);
    assert!(matches!(next, Next::Finish(Finish { result: Err(OrchestrationError::PartWay { .. }), .. })), "{next:?}");
    // With a's record (the most advanced one, which `PairView::progress` picks), it resumes at
    // promote with expect_lsn.
    let mut a = node("a", Role::Backup, 1, one(), 40);
    if let Ok(s) = &mut a.status {
        s.orchestration = Some(serde_json::to_value(progress(EARLIER, Step::Promote, Some(40))).unwrap());
    }
    let mut b = node("b", Role::Backup, 1, one(), 40);
    if let Ok(s) = &mut b.status {
        s.orchestration = Some(serde_json::to_value(progress(EARLIER, Step::Drain, None)).unwrap());
    }
    let view = pair(a, b);
    let found = view.progress("switchover").unwrap();
    assert_eq!(found.as_ref().map(|p| p.step), Some(Step::Promote));
    let m = memory(found);
    let Next::Say(line) = plan(&switchover_to_b(), &view, &m) else { panic!() };
    assert!(line.contains("resuming switchover"), "{line}");
    let mut m = m;
    m.heard.push(Heard::Said(line));
    let next = plan(&switchover_to_b(), &view, &m);
    assert!(
        matches!(
            next,
            Next::Send { step: Step::Promote, request: AdminRequest::Promote { expect_lsn: Some(40), .. }, .. }
        ),
        "{next:?}"
    );
}

#[test]
fn defect_a_lease_that_runs_out_mid_switchover_rolls_back_with_a_clear_message() {
    // This run drained a and saved step demote; the lease ran out meanwhile (b was slow):
    // a is primary again in epoch 1. No demote: the progress is cleared and the message says
    // what happened. Exit 1: nothing changed.
    let view = pair(node("a", Role::Primary, 1, one(), 44), node("b", Role::Backup, 1, one(), 40));
    let next = plan(&switchover_to_b(), &view, &memory(Some(progress(OP, Step::Demote, Some(40)))));
    let Next::Finish(Finish { clear: true, result: Err(err), .. }) = next else { panic!("{next:?}") };
    assert_eq!(err.exit_code(), 1);
    assert!(err.to_string().contains("drain lease") && err.to_string().contains("a takes writes again"), "{err}");
}

#[test]
fn a_failed_wait_is_rolled_back_and_the_roll_back_is_saved_first() {
    let view = pair(node("a", Role::Draining, 1, one(), 40), node("b", Role::Backup, 1, one(), 30));
    let mut m = memory(Some(progress(OP, Step::WaitApplied, Some(40))));
    m.heard.push(reply(
        Step::WaitApplied,
        "b",
        AdminRequest::WaitApplied { lsn: 40, timeout_ms: 3000 },
        Err("b applied only LSN 30 of 40".into()),
    ));
    let Next::Save(Some(saved)) = plan(&switchover_to_b(), &view, &m) else { panic!() };
    assert_eq!(saved.step, Step::RollBack);
    let next = plan(&switchover_to_b(), &view, &memory(Some(saved.clone())));
    assert!(matches!(next, Next::Send { step: Step::RollBack, request: AdminRequest::Resume { .. }, .. }), "{next:?}");
    let mut m = memory(Some(saved));
    let resume = AdminRequest::Resume { op_id: Uuid::from_u128(OP), epoch: 1 };
    m.heard.push(reply(Step::RollBack, "a", resume, Ok(Answer::Resumed(ResumeReply { resumed: true }))));
    let Next::Finish(Finish { clear: true, result: Err(err), .. }) = plan(&switchover_to_b(), &view, &m) else {
        panic!()
    };
    assert!(err.to_string().contains("rolled back") && err.to_string().contains("LSN 30 of 40"), "{err}");
}

#[test]
fn defect_the_part_way_message_names_a_new_primary_that_is_unreachable() {
    let view = pair(node("a", Role::Backup, 2, two(), 40), down("b"));
    let mut saved = progress(OP, Step::Reverse, Some(40));
    saved.first_lsn = Some(41);
    let mut m = memory(Some(saved));
    m.heard.push(Heard::Waited { step: Step::Reverse, result: Err("not within 3s".into()) });
    let Next::Finish(Finish { result: Err(err), .. }) = plan(&switchover_to_b(), &view, &m) else { panic!() };
    assert_eq!(err.exit_code(), 3);
    assert!(err.to_string().contains("b was promoted") && err.to_string().contains("unreachable"), "{err}");
}

#[test]
fn a_switchover_to_the_other_node_waits_for_the_one_under_way() {
    let view = pair(node("a", Role::Draining, 1, one(), 40), node("b", Role::Backup, 1, one(), 40));
    let to_a = Command::Switchover { to: Some("a".into()), timeout_ms: 3000, max_lag_ms: 1000, dry_run: false };
    let next = plan(&to_a, &view, &memory(Some(progress(EARLIER, Step::WaitApplied, Some(40)))));
    assert!(matches!(next, Next::Finish(Finish { result: Err(OrchestrationError::Refused(_)), .. })), "{next:?}");
}

#[test]
fn a_progress_record_from_an_older_epoch_is_ignored() {
    // Epoch 5 now: a switchover saved at epoch 1 is long over.
    let five = history(&[(1, 1, "a"), (5, 90, "a")]);
    let view = pair(node("a", Role::Primary, 5, five.clone(), 99), node("b", Role::Backup, 5, five, 99));
    let Next::Save(Some(saved)) =
        plan(&switchover_to_b(), &view, &memory(Some(progress(EARLIER, Step::Reverse, Some(3)))))
    else {
        panic!()
    };
    assert_eq!((saved.op_id, saved.epoch, saved.step), (Uuid::from_u128(OP), 5, Step::Drain));
}

#[test]
fn a_failover_reports_the_estimate_and_a_rerun_finishes_it() {
    let view = pair(down("a"), node("b", Role::Backup, 1, one(), 40));
    let failover = Command::Failover { to: "b".into(), force: false };
    let Next::Save(Some(saved)) = plan(&failover, &view, &memory(None)) else { panic!() };
    let mut m = memory(Some(saved.clone()));
    let next = plan(&failover, &view, &m);
    let Next::Send { request, .. } = next else { panic!("{next:?}") };
    assert!(matches!(request, AdminRequest::Promote { expect_lsn: None, .. }));
    let reply_body = PromoteReply {
        epoch: 2,
        first_lsn: 41,
        last_received_lsn: 40,
        last_heard_lsn: 52,
        not_received: 12,
        already: false,
    };
    m.heard.push(reply(Step::Promote, "b", request, Ok(Answer::Promoted(reply_body))));
    let Next::Save(Some(fence)) = plan(&failover, &view, &m) else { panic!() };
    assert_eq!(fence.step, Step::Fence);
    m.progress = Some(fence);
    let Next::Finish(Finish { clear: true, result: Ok(line), .. }) = plan(&failover, &view, &m) else { panic!() };
    assert!(line.contains("about 12 transaction(s) never received"), "{line}");
}

#[test]
fn defect_a_moving_pair_is_not_taken_for_a_restored_copy() {
    // b's status was read a moment before a's: b's last LSN 90 is behind the 95 a says b
    // acknowledged. The planner reads them again in order before it judges.
    let mut a = node("a", Role::Primary, 1, one(), 100);
    if let Ok(s) = &mut a.status {
        s.peer.acknowledged_lsn = 95;
    }
    let mut b = node("b", Role::Backup, 1, one(), 90);
    if let Ok(s) = &mut b.status {
        s.following = false;
    }
    let view = pair(a.clone(), b);
    let rejoin = Command::Rejoin { node: "b".into(), allow_full_copy: false, catch_up_ms: 1000 };
    let mut m = memory(None);
    let next = plan(&rejoin, &view, &m);
    let Next::Send { node: first, request: AdminRequest::Status, .. } = next else { panic!("{next:?}") };
    assert_eq!(first, "a", "the primary's acknowledged LSN is read first");
    m.heard.push(reply(
        Step::Preflight,
        "a",
        AdminRequest::Status,
        Ok(Answer::Status(Box::new(a.status.clone().unwrap()))),
    ));
    let Next::Send { node: second, .. } = plan(&rejoin, &view, &m) else { panic!() };
    assert_eq!(second, "b");
    let mut later = node("b", Role::Backup, 1, one(), 101).status.unwrap();
    later.following = false;
    m.heard.push(reply(Step::Preflight, "b", AdminRequest::Status, Ok(Answer::Status(Box::new(later)))));
    let next = plan(&rejoin, &view, &m);
    assert!(matches!(next, Next::Send { request: AdminRequest::FirstAvailable, .. }), "{next:?}");
    // A node really behind is still refused, with the way to rebuild it.
    m.heard.pop();
    let mut behind = node("b", Role::Backup, 1, one(), 90).status.unwrap();
    behind.following = false;
    m.heard.push(reply(Step::Preflight, "b", AdminRequest::Status, Ok(Answer::Status(Box::new(behind)))));
    let Next::Finish(Finish { result: Err(err), .. }) = plan(&rejoin, &view, &m) else { panic!() };
    assert!(err.to_string().contains("restored copy"), "{err}");
}

#[test]
fn a_failover_is_refused_while_a_switchover_may_be_promoting_the_other_node() {
    // Found by the simulation: a switchover's CLI killed with b's promote in flight (a demoted,
    // both backups), then `failover --to a`: both promotions would claim epoch 2.
    let mut a = node("a", Role::Backup, 1, one(), 40);
    if let Ok(s) = &mut a.status {
        s.orchestration = Some(serde_json::to_value(progress(EARLIER, Step::Promote, Some(40))).unwrap());
    }
    let view = pair(a, node("b", Role::Backup, 1, one(), 40));
    let to_a = Command::Failover { to: "a".into(), force: false };
    let Next::Finish(Finish { result: Err(err), .. }) = plan(&to_a, &view, &memory(None)) else { panic!() };
    assert!(err.to_string().contains("may be promoting b") && err.to_string().contains("--force"), "{err}");
    // Forced, it goes ahead (the admin was told what it risks).
    let forced = Command::Failover { to: "a".into(), force: true };
    assert!(matches!(plan(&forced, &view, &memory(None)), Next::Save(Some(_))));
    // A failover to the switchover's own target is no conflict: the promotions are one.
    let to_b = Command::Failover { to: "b".into(), force: false };
    assert!(matches!(plan(&to_b, &view, &memory(None)), Next::Save(Some(_))));
}

#[test]
fn a_switchover_whose_promotion_the_target_has_seen_does_not_hold_a_failover_up() {
    // `drill --random 59 --witness`: a switchover a -> b killed after b's promote (record at
    // step reverse, epoch 1), a already following b in epoch 2, then b killed. A failover to a
    // claims epoch 3, not b's 2: no conflict, and refusing it left the pair without a writer.
    let mut a = node("a", Role::Backup, 2, two(), 60);
    if let Ok(s) = &mut a.status {
        s.orchestration = Some(serde_json::to_value(progress(EARLIER, Step::Reverse, Some(40))).unwrap());
    }
    let view = pair(a, down("b"));
    let to_a = Command::Failover { to: "a".into(), force: false };
    let next = plan(&to_a, &view, &memory(None));
    assert!(matches!(&next, Next::Save(Some(p)) if p.command == "failover" && p.epoch == 2), "{next:?}");
    // The same record with a still in epoch 1 (it never saw b promoted) is refused as before.
    let mut a = node("a", Role::Backup, 1, one(), 40);
    if let Ok(s) = &mut a.status {
        s.orchestration = Some(serde_json::to_value(progress(EARLIER, Step::Reverse, Some(40))).unwrap());
    }
    let next = plan(&to_a, &pair(a, down("b")), &memory(None));
    let Next::Finish(Finish { result: Err(err), .. }) = next else { panic!("{next:?}") };
    assert!(err.to_string().contains("may be promoting b"), "{err}");
}
