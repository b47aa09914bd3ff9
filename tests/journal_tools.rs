//! The offline journal tools on a real pair's node directories: `journal verify` reads a node's
//! local and remote journals (split by epoch at every switchover) as one history, with counts
//! that agree with `journal ls`, and still finds real damage with its file and offset;
//! `journal find-time` gives the LSN of a time.

mod common;

use std::process::Command;

use common::{journal_dump, stderr, Pair};
use hotpair::config::SyncLevel;
use redis::Commands;
use serde_json::Value;

fn hotpair(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hotpair")).args(args).output().expect("run hotpair")
}

fn now_ms() -> u64 {
    hotpair::clock::now_ms()
}

fn verify_json(dir: &std::path::Path) -> (Option<i32>, Value) {
    let out = hotpair(&["journal", "verify", "--json", dir.to_str().unwrap()]);
    (out.status.code(), serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out))))
}

#[test]
fn verify_after_switchovers_reads_both_journals_as_one_history_and_still_finds_damage() {
    let mut pair = Pair::start(SyncLevel::Durable);
    let write = |pair: &Pair, node: &str, prefix: &str| {
        let mut redis = pair.redis(node);
        for i in 0..5 {
            let () = redis.set(format!("{prefix}{i}"), "v").unwrap();
        }
    };
    write(&pair, "a", "first");
    pair.hotpair_ok(&["switchover", "--to", "b"]);
    write(&pair, "b", "second");
    pair.hotpair_ok(&["switchback"]);
    write(&pair, "a", "third");
    let last = pair.wait_caught_up();
    pair.stop("a");
    pair.stop("b");

    for node in ["a", "b"] {
        let dir = pair.node_dir(node);
        let out = hotpair(&["journal", "verify", dir.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(0), "{node}: {text}{}", stderr(&out));
        assert!(!text.contains("DAMAGED") && !text.contains("gone"), "{node}: {text}");
        assert!(text.contains(&format!("one history: LSN 1..{last}, {last} records")), "{node}: {text}");
        assert!(text.contains("epochs: 1 from LSN 1 (a), 2 from LSN"), "{node}: {text}");
        // Each journal's count is what `journal ls` counts in its segments.
        let (_, verify) = verify_json(&dir);
        let ls: Value =
            serde_json::from_slice(&hotpair(&["journal", "ls", "--json", dir.to_str().unwrap()]).stdout).unwrap();
        for (checked, listed) in verify["journals"].as_array().unwrap().iter().zip(ls.as_array().unwrap()) {
            let segments: u64 =
                listed["segments"].as_array().unwrap().iter().map(|s| s["records"].as_u64().unwrap()).sum();
            assert_eq!(
                checked["records"].as_u64(),
                Some(segments),
                "{node} {}: verify and ls agree",
                checked["journal"]
            );
        }
        let total: u64 = verify["journals"].as_array().unwrap().iter().map(|j| j["records"].as_u64().unwrap()).sum();
        assert_eq!(total, last, "{node}: the two journals together hold each LSN once: {verify}");
        assert_eq!(verify["history"]["last_lsn"].as_u64(), Some(last));
    }

    // Real damage: one flipped bit in a record of a's remote journal (b's epoch) that is
    // followed by more records, so it cannot pass for a torn tail.
    let dir = pair.node_dir("a");
    let remote = dir.join("journal").join("remote");
    let records = journal_dump(&remote);
    let victim = records.iter().find(|r| r["kind"] == "txn").expect("b's epoch wrote transactions");
    let entry = hotpair::storage::journal::read_dir_from(&remote, victim["lsn"].as_u64().unwrap())
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let mut bytes = std::fs::read(&entry.path).unwrap();
    bytes[entry.offset as usize + 8 + 20] ^= 0x10;
    std::fs::write(&entry.path, &bytes).unwrap();
    let out = hotpair(&["journal", "verify", dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&entry.path.display().to_string()) && text.contains(&format!("offset {}", entry.offset)),
        "{text}"
    );
    assert!(text.contains("verify: DAMAGED"), "{text}");
    // The other node's journals are untouched and still whole.
    assert_eq!(verify_json(&pair.node_dir("b")).0, Some(0));
}

#[test]
fn find_time_names_the_last_record_at_or_before_a_time() {
    let pair = Pair::start(SyncLevel::Durable);
    let mut redis = pair.redis(common::PRIMARY);
    let () = redis.set("before", "1").unwrap();
    let between = now_ms();
    // The next record must be stamped after `between`: wait for the clock to move on.
    while now_ms() <= between {
        std::thread::yield_now();
    }
    let () = redis.set("after", "1").unwrap();
    let dir = pair.node_dir(common::PRIMARY);
    let records = journal_dump(&dir);
    let expected = records
        .iter()
        .filter(|r| r["timestamp_ms"].as_u64().unwrap() <= between)
        .map(|r| r["lsn"].as_u64().unwrap())
        .max()
        .unwrap();
    let out = hotpair(&["journal", "find-time", dir.to_str().unwrap(), &format!("@{between}"), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let point: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(point["lsn"].as_u64(), Some(expected), "{point}");
    assert_eq!(point["next_lsn"].as_u64(), Some(expected + 1), "{point}");
    // RFC 3339 works as well, and a time before the first record finds nothing (exit 1).
    let out = hotpair(&["journal", "find-time", dir.to_str().unwrap(), "2001-01-01T00:00:00Z"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no record at or before 2001-01-01T00:00:00"), "{:?}", out);
    let out = hotpair(&["journal", "find-time", dir.to_str().unwrap(), "yesterday"]);
    assert_eq!(out.status.code(), Some(2), "a bad time is a usage error");
}
