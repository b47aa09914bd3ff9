//! Automatic failover through an etcd witness, end to end: a real etcd on 127.0.0.1 (Debian's
//! `etcd-server`, which `.ci/run` installs), two real `hotpair run` nodes, real faults (kill -9,
//! SIGSTOP, etcd killed). Without an etcd executable each test prints SKIPPED.
//!
//! What must show (issue 20): a killed primary's backup takes writes with no admin command
//! within ttl + 1 s and loses no acknowledged write at `durable`; the old primary, restarted,
//! rejoins by itself; a primary frozen past its lease acknowledges nothing after it resumes and
//! rejoins by itself; a freeze of a third of the ttl, or etcd down for a minute (hung, then
//! dead), changes nothing and (etcd down) fails no write.

mod common;

use std::time::{Duration, Instant};

use common::witness::{assert_all_on, etcd_or_skip, pair_with, pair_with_options, role, Writer, TTL_S};
use common::{event, wait_notified, Options, BACKUP, DEADLINE, NOTIFY, POLL, PRIMARY};
use hotpair::config::SyncLevel;
use redis::Commands as _;
use serde_json::Value;

#[test]
fn a_killed_primary_is_replaced_within_ttl_plus_a_second_and_rejoins_by_itself() {
    let Some(witness) = etcd_or_skip("a_killed_primary_is_replaced_within_ttl_plus_a_second_and_rejoins_by_itself")
    else {
        return;
    };
    // A new primary whose peer is dead acknowledges at `durable` only once it degrades: at
    // once here, as an automatic failover that must take writes within ttl + 1 s needs.
    let options = Options { on_peer_loss: Some("degrade-after:0s"), ..Options::default() };
    let mut pair = pair_with_options(&witness, SyncLevel::Durable, options);
    let writer = Writer::start(&pair);
    writer.wait_count(300, "load before the kill");
    let killed = Instant::now();
    pair.kill(PRIMARY);
    pair.wait_for_node(BACKUP, "b promoted by itself", |s| role(s) == "primary" && s["epoch"] == 2);
    let deadline = Instant::now() + DEADLINE;
    let first = loop {
        if let Some(at) = writer.first_on(BACKUP, killed) {
            break at;
        }
        assert!(Instant::now() < deadline, "no write acknowledged by b after the kill: {}", pair.node_status(BACKUP));
        std::thread::sleep(POLL);
    };
    let took = first.duration_since(killed);
    eprintln!("first write acknowledged by the new primary {took:?} after kill -9 (ttl {TTL_S}s)");
    assert!(
        took <= Duration::from_secs(TTL_S + 1),
        "first write on the new primary {took:?} after the kill; at most ttl + 1 s"
    );
    let count = writer.count();
    writer.wait_count(count + 100, "load on the new primary");
    let acked = writer.finish();
    assert_all_on(&pair, BACKUP, &acked);
    let incidents = pair.node_status(BACKUP).to_string();
    assert!(incidents.contains("auto-failover"), "b reports the automatic failover: {incidents}");

    // The old primary, restarted, rejoins behind b by itself: no admin command.
    pair.spawn(PRIMARY);
    pair.wait_for("a rejoined by itself as b's backup", |s| {
        let (a, b) = (&s["nodes"][PRIMARY], &s["nodes"][BACKUP]);
        role(a) == "backup" && a["epoch"] == 2 && role(b) == "primary" && b["peer"]["connected"] == true
    });
    let log = pair.log(PRIMARY);
    assert!(!log.contains("full copy"), "the rejoin was not a full copy:\n{log}");
    let lsn = pair.wait_for("a caught up with b", |s| {
        s["nodes"][PRIMARY]["lsn"] == s["nodes"][BACKUP]["lsn"]
            && s["nodes"][PRIMARY]["digest"] == s["nodes"][BACKUP]["digest"]
    });
    assert_eq!(lsn["nodes"][PRIMARY]["digest"], lsn["nodes"][BACKUP]["digest"]);
    assert_all_on(&pair, PRIMARY, &acked);
    drop(witness);
}

#[test]
fn a_primary_frozen_past_its_lease_acknowledges_nothing_after_it_resumes_and_rejoins() {
    let Some(witness) =
        etcd_or_skip("a_primary_frozen_past_its_lease_acknowledges_nothing_after_it_resumes_and_rejoins")
    else {
        return;
    };
    let mut pair = pair_with(&witness, SyncLevel::Async);
    let mut old = pair.redis(PRIMARY);
    let _: () = old.set("before", "1").expect("a write before the freeze");
    pair.pause(PRIMARY);
    // A write sent to the frozen primary sits in its socket until it resumes.
    let in_flight = std::thread::spawn(move || {
        let result = old.set::<_, _, ()>("during", "1");
        (old, result)
    });
    pair.wait_for_node(BACKUP, "b promoted while a is frozen", |s| role(s) == "primary" && s["epoch"] == 2);
    let mut fresh = pair.redis(BACKUP);
    let _: () = fresh.set("on-b", "1").expect("b takes writes");
    pair.resume(PRIMARY);
    let (mut old, result) = in_flight.join().expect("the in-flight writer");
    assert!(result.is_err(), "the write in flight during the freeze was acknowledged in the old epoch");
    // Every write to a after SIGCONT fails, until (and after) it has rejoined as backup.
    let deadline = Instant::now() + DEADLINE;
    let mut tries = 0;
    loop {
        tries += 1;
        let attempt = old.set::<_, _, ()>(format!("after-{tries}"), "1");
        assert!(attempt.is_err(), "write {tries} after SIGCONT was acknowledged by the old primary");
        let a = pair.node_status(PRIMARY);
        if role(&a) == "backup" && a["epoch"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "a did not rejoin by itself: {a}");
        if let Ok(reconnected) = pair.client(PRIMARY).get_connection_with_timeout(Duration::from_secs(1)) {
            old = reconnected;
        }
        std::thread::sleep(POLL);
    }
    pair.wait_for("a following b again", |s| s["nodes"][BACKUP]["peer"]["connected"] == true);
    let mut redis = pair.redis(PRIMARY);
    let during: Option<String> = redis.get("during").expect("GET");
    assert_eq!(during, None, "the write of the frozen primary is not in the new epoch's data");
    drop(witness);
}

#[test]
fn a_freeze_of_a_third_of_the_ttl_causes_no_failover() {
    let Some(witness) = etcd_or_skip("a_freeze_of_a_third_of_the_ttl_causes_no_failover") else {
        return;
    };
    let mut pair = pair_with(&witness, SyncLevel::Durable);
    // A freeze of a third of the ttl: the injected fault's length, not a wait for anything.
    pair.pause(PRIMARY);
    std::thread::sleep(Duration::from_millis(TTL_S * 1000 / 3));
    pair.resume(PRIMARY);
    pair.wait_ready();
    let mut redis = pair.redis(PRIMARY);
    let _: () = redis.set("after-freeze", "1").expect("a takes writes after a short freeze");
    let status = pair.status();
    assert_eq!(role(&status["nodes"][PRIMARY]), "primary", "{status}");
    assert_eq!(status["nodes"][BACKUP]["epoch"], 1, "no failover after a short freeze: {status}");
    drop(witness);
}

/// How long etcd is down in [`etcd_down_for_a_minute_causes_no_failover_and_no_write_failure`]:
/// the outcome is stated for a minute.
const OUTAGE: Duration = Duration::from_secs(60);

fn open_incidents(status: &Value) -> Vec<String> {
    status["incidents"].as_array().into_iter().flatten().filter_map(|i| i["kind"].as_str().map(String::from)).collect()
}

#[test]
fn etcd_down_for_a_minute_causes_no_failover_and_no_write_failure() {
    let Some(mut witness) = etcd_or_skip("etcd_down_for_a_minute_causes_no_failover_and_no_write_failure") else {
        return;
    };
    let options = Options { notify_command: Some(NOTIFY), ..Options::default() };
    let mut pair = pair_with_options(&witness, SyncLevel::Durable, options);
    let dir = pair.dir().to_path_buf();
    let writer = Writer::start(&pair);
    writer.wait_count(200, "load before the outage");

    // The outage: etcd first hangs (SIGSTOP: every call runs into its timeout), then dies
    // (SIGKILL: every connection refused), one minute in all by the wall clock. Its length is
    // the fault under test; meanwhile the test watches that nothing changes.
    let down = Instant::now();
    witness.etcd.freeze();
    let mut killed = false;
    let mut lost_seen = false;
    while down.elapsed() < OUTAGE {
        if !killed && down.elapsed() >= OUTAGE / 2 {
            witness.etcd.kill();
            killed = true;
        }
        let status = pair.status();
        for (node, role_now) in [(PRIMARY, "primary"), (BACKUP, "backup")] {
            let s = &status["nodes"][node];
            assert!(
                role(s) == role_now && s["epoch"] == 1,
                "{node} changed with etcd down ({:?}): {s}",
                down.elapsed()
            );
        }
        assert_eq!(status["nodes"][PRIMARY]["writes"]["accepting"], true, "a stopped taking writes: {status}");
        let failures = writer.failures();
        assert!(failures.is_empty(), "{} write(s) failed with etcd down: {:?}", failures.len(), &failures[..1]);
        lost_seen |= open_incidents(&status["nodes"][PRIMARY]).iter().any(|k| k == "witness-lost");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(lost_seen, "a never showed `witness-lost` open in its status while etcd was down");
    let lost = wait_notified(&dir, "witness-lost raised by a", event("witness-lost", PRIMARY, "open"));
    assert!(lost["message"].as_str().is_some_and(|m| m.contains("failsafe")), "{lost}");

    witness.runtime.block_on(witness.etcd.restart()).expect("etcd back");
    let back = Instant::now();
    wait_notified(&dir, "witness-lost resolved on a", event("witness-lost", PRIMARY, "resolved"));
    let a = pair.wait_for_node(PRIMARY, "a holding the lease again", |s| s["witness"]["holds_lease"] == true);
    eprintln!("a held the witness lease again {:?} after etcd came back", back.elapsed());
    assert!(!open_incidents(&a).iter().any(|k| k == "witness-lost"), "witness-lost still open: {a}");
    let count = writer.count();
    writer.wait_count(count + 100, "load after etcd came back");
    let (acked, failed) = writer.finish_all();
    assert!(failed.is_empty(), "{} write(s) failed: {:?}", failed.len(), &failed[..1]);

    let during: Vec<_> = acked.iter().filter(|w| w.at > down && w.at < back).collect();
    assert!(during.len() > 100, "only {} writes acknowledged in the minute etcd was down", during.len());
    assert!(during.iter().all(|w| w.node == PRIMARY), "a write went to b: no failover may have happened");
    let mut took: Vec<Duration> = during.iter().map(|w| w.took).collect();
    took.sort();
    eprintln!(
        "etcd down {OUTAGE:?}: {} writes at durable, 0 failed; latency median {:?}, p99 {:?}, max {:?}",
        took.len(),
        took[took.len() / 2],
        took[took.len() * 99 / 100],
        took[took.len() - 1]
    );
    let status = pair.status();
    assert_eq!(role(&status["nodes"][PRIMARY]), "primary", "{status}");
    assert_eq!(role(&status["nodes"][BACKUP]), "backup", "{status}");
    assert_eq!(status["nodes"][PRIMARY]["epoch"], 1, "no failover while etcd was down: {status}");
    assert_eq!(status["nodes"][BACKUP]["epoch"], 1, "no failover while etcd was down: {status}");
    assert!(!pair.node_status(BACKUP).to_string().contains("auto-failover"));
    assert_all_on(&pair, PRIMARY, &acked);
    pair.wait_caught_up();
    assert_all_on(&pair, BACKUP, &acked);
}

#[test]
fn witness_show_pause_and_resume_hold_and_release_an_automatic_failover() {
    let Some(witness) = etcd_or_skip("witness_show_pause_and_resume_hold_and_release_an_automatic_failover") else {
        return;
    };
    let mut pair = pair_with(&witness, SyncLevel::Async);
    let shown = pair.hotpair_ok(&["witness", "show"]);
    assert!(shown.contains("leader: a (epoch 1)") && shown.contains("mode: automatic"), "{shown}");
    let shown: Value = serde_json::from_str(&pair.hotpair_ok(&["witness", "show", "--json"])).expect("JSON");
    assert_eq!(shown["leader"]["node"], "a", "{shown}");
    assert_eq!(shown["paused"], false, "{shown}");

    pair.hotpair_ok(&["witness", "pause"]);
    pair.wait_for_node(BACKUP, "b sees the pause", |s| s["witness"]["paused"] == true);
    pair.kill(PRIMARY);
    // The lease runs out and a is silent: b holds back and says why.
    let b = pair.wait_for_node(BACKUP, "b reporting the suppressed takeover", |s| {
        s["incidents"].as_array().is_some_and(|all| {
            all.iter().any(|i| {
                i["kind"] == "failover-suppressed" && i["message"].as_str().is_some_and(|m| m.contains("paused"))
            })
        })
    });
    assert_eq!(role(&b), "backup", "paused: no takeover: {b}");
    let shown = pair.hotpair_ok(&["witness", "show"]);
    assert!(shown.contains("leader: none") && shown.contains("paused"), "{shown}");

    pair.hotpair_ok(&["witness", "resume"]);
    pair.wait_for_node(BACKUP, "b takes over once resumed", |s| role(s) == "primary" && s["epoch"] == 2);
    let shown = pair.hotpair_ok(&["witness", "show"]);
    assert!(shown.contains("leader: b (epoch 2)") && shown.contains("(automatic failover)"), "{shown}");
    drop(witness);
}

#[test]
fn a_switchover_with_a_witness_hands_the_leader_key_to_the_new_primary() {
    let Some(witness) = etcd_or_skip("a_switchover_with_a_witness_hands_the_leader_key_to_the_new_primary") else {
        return;
    };
    let pair = pair_with(&witness, SyncLevel::Durable);
    let mut redis = pair.redis(PRIMARY);
    let _: () = redis.set("before", "1").expect("a write on a");
    // a has led for longer than the ttl before it is demoted: a demoted node must count the
    // silence a takeover needs from its demotion, not from when it last heard a primary, or
    // it may claim the next epoch in the gap between letting the leader key go and b taking
    // it (`drill --random 5 --witness` once ended with the old primary promoted again). The
    // gap is a few milliseconds: this exercises it, it cannot force it. The wait is the
    // scenario's length, not a wait for anything to happen.
    std::thread::sleep(Duration::from_secs(TTL_S) + Duration::from_millis(500));
    pair.hotpair_ok(&["switchover", "--to", BACKUP]);
    let b = pair.wait_for_node(BACKUP, "b holding the witness lease after the switchover", |s| {
        role(s) == "primary" && s["witness"]["holds_lease"] == true && s["writes"]["accepting"] == true
    });
    assert_eq!(b["epoch"], 2, "{b}");
    let mut redis = pair.redis(BACKUP);
    let _: () = redis.set("after", "1").expect("b takes writes after the switchover");
    let a = pair.node_status(PRIMARY);
    assert_eq!(role(&a), "backup", "{a}");
    assert_eq!(a["witness"]["holds_lease"], false, "the old primary let the key go: {a}");
    let shown = pair.hotpair_ok(&["witness", "show"]);
    assert!(shown.contains("leader: b (epoch 2)") && !shown.contains("(automatic failover)"), "{shown}");
    // `status` shows the witness on each node: mode, reachable, leader, the lease.
    let status = pair.hotpair_ok(&["status"]);
    assert!(status.contains("witness automatic: reachable, leader b (epoch 2), holds the lease"), "{status}");
    pair.wait_for_node(PRIMARY, "a seeing b as the leader", |s| s["witness"]["leader"]["node"] == "b");
    // For longer than a ttl after the switchover nobody takes over: epoch 2 stays b's.
    let quiet_until = Instant::now() + Duration::from_secs(TTL_S + 1);
    while Instant::now() < quiet_until {
        let (a, b) = (pair.node_status(PRIMARY), pair.node_status(BACKUP));
        assert_eq!((role(&a), role(&b)), ("backup", "primary"), "a second role change after the switchover:\n{a}\n{b}");
        assert_eq!(b["epoch"], 2, "{b}");
        std::thread::sleep(POLL);
    }
    drop(witness);
}

#[test]
fn a_primary_restarted_alone_goes_on_in_a_new_epoch_once_its_peer_stays_silent_for_a_ttl() {
    let Some(witness) =
        etcd_or_skip("a_primary_restarted_alone_goes_on_in_a_new_epoch_once_its_peer_stays_silent_for_a_ttl")
    else {
        return;
    };
    let options = Options { on_peer_loss: Some("degrade-after:0s"), ..Options::default() };
    let mut pair = pair_with_options(&witness, SyncLevel::Durable, options);
    let mut redis = pair.redis(PRIMARY);
    let _: () = redis.set("before", "1").expect("a write before both go down");
    // Both nodes down: the backup first, then the primary.
    pair.kill(BACKUP);
    pair.kill(PRIMARY);
    pair.restart(PRIMARY);
    // Its peer is gone, so only the witness can say nobody was promoted past it; and its peer
    // may hold records it shipped before the crash and lost: it goes on in a new epoch.
    let a = pair.wait_for_node(PRIMARY, "a taking writes again without its peer", |s| {
        role(s) == "primary" && s["witness"]["holds_lease"] == true && s["writes"]["accepting"] == true
    });
    assert_eq!(a["epoch"], 2, "{a}");
    let shown = pair.hotpair_ok(&["witness", "show"]);
    assert!(shown.contains("leader: a (epoch 2)"), "{shown}");
    let mut redis = pair.redis(PRIMARY);
    let _: () = redis.set("after", "1").expect("a takes writes alone");
    let before: Option<String> = redis.get("before").expect("GET");
    assert_eq!(before.as_deref(), Some("1"));
    drop(witness);
}
