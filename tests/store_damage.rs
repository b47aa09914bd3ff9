//! A store sled cannot recover (issue 18, item 7): a damaged segment of a real sled log made
//! sled panic while recovering ("tried to serialize Uninitialized": exit 101 and a
//! backtrace). The node must exit 1 with one sentence naming the store and what to do — and
//! doing what it says must work: fail over, move the directory aside, reinit, rejoin with a
//! full copy.

mod common;

use std::time::Instant;

use common::{Options, Pair, BACKUP, DEADLINE, POLL, PRIMARY};
use hotpair::config::SyncLevel;
use redis::Commands;

/// sled's log segments (its default segment size): the damage goes into the second one.
const SLED_SEGMENT: usize = 512 * 1024;
/// A sled 0.34 segment header: CRC, LSN, highest stable LSN.
const SLED_SEGMENT_HEADER: usize = 20;
const KEYS: usize = 60_000;

#[test]
fn a_damaged_store_stops_the_node_with_what_to_do_and_that_works() {
    let options = Options { monitor: Some("canary_interval = \"off\""), ..Options::default() };
    let mut pair = Pair::start_with(SyncLevel::Durable, options);
    let mut a = pair.redis(PRIMARY);
    for chunk in 0..KEYS / 500 {
        let mut mset = redis::cmd("MSET");
        for i in chunk * 500..(chunk + 1) * 500 {
            mset.arg(format!("key-{i}")).arg(format!("{i:0>100}"));
        }
        let () = mset.query(&mut a).expect("MSET");
    }
    pair.wait_caught_up();
    drop(a);
    pair.stop(PRIMARY);

    // A misdirected write: the header of sled's first log segment written over the second's,
    // so two segments claim one place in the log. (Random bit flips are not used here: sled
    // often recovers from them by cutting its log back, and the node then replays the rest
    // from its journals, which is right but not what this test is about.)
    let db = pair.node_dir(PRIMARY).join("store/db");
    let mut bytes = std::fs::read(&db).expect("read sled's log");
    assert!(bytes.len() > 3 * SLED_SEGMENT, "the store is only {} bytes", bytes.len());
    let (first, second) = bytes.split_at_mut(SLED_SEGMENT);
    second[..SLED_SEGMENT_HEADER].copy_from_slice(&first[..SLED_SEGMENT_HEADER]);
    std::fs::write(&db, &bytes).expect("write the damaged log");

    let out = pair.hotpair_bounded(&["run", PRIMARY]);
    let stderr = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let store = pair.node_dir(PRIMARY).join("store");
    for needle in [
        format!("store {} is damaged", store.display()),
        "hotpair reinit a".to_string(),
        "hotpair rejoin a --allow-full-copy".to_string(),
    ] {
        assert!(stderr.contains(&needle), "the refusal does not say {needle:?}: {stderr}");
    }
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace") && !stderr.contains("thread '"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");

    // What it says to do, as an admin would.
    pair.hotpair_ok(&["failover", "--to", BACKUP]);
    let dir = pair.node_dir(PRIMARY);
    std::fs::rename(&dir, dir.with_extension("damaged")).expect("move a's directory aside");
    pair.hotpair_ok(&["reinit", PRIMARY]);
    pair.restart(PRIMARY);
    // b never learned a's incarnation while it was a's backup, so it may take the rebuilt a as
    // its backup at once (and a catches up from b's journals), or refuse it as a second
    // installation. Wait until one or the other has happened: the rejoin's preflight compares
    // a's LSN with what b holds it to, read a moment apart, and refused a node still catching
    // up as "a restored copy" (seen once; an orchestrator race, reported, not fixed here).
    pair.wait_for("the rebuilt a caught up with b, or refused by it", |s| {
        let (a, b) = (&s["nodes"][PRIMARY], &s["nodes"][BACKUP]);
        let refused = b["incidents"].as_array().is_some_and(|i| i.iter().any(|i| i["kind"] == "second-installation"));
        refused || (a["following"] == true && a["lsn"] == b["lsn"] && b["lag_records"] == 0)
    });
    pair.hotpair_ok(&["rejoin", PRIMARY, "--allow-full-copy"]);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = pair.status();
        let (a, b) = (&status["nodes"][PRIMARY], &status["nodes"][BACKUP]);
        if a["role"] == "backup" && a["lsn"] == b["lsn"] && a["digest"] == b["digest"] && b["lag_records"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "a did not catch up after the rejoin: {status}");
        std::thread::sleep(POLL);
    }
    let mut a = pair.redis(PRIMARY);
    for i in (0..KEYS).step_by(997) {
        let value: Option<String> = a.get(format!("key-{i}")).expect("GET on the rebuilt a");
        assert_eq!(value, Some(format!("{i:0>100}")), "key-{i} on the rebuilt a");
    }
}
