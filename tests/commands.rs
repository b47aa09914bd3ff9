//! The commands of issue 23 on a real pair, against a real `redis-server` as the oracle.
//!
//! - Random command sequences (strings, keys, expiry, hashes, `MULTI`/`EXEC`, errors) give the
//!   same replies and the same final data on hotpair and on Redis; then the backup's digest
//!   equals the primary's (`hotpair verify`). Short by default; `HOTPAIR_ORACLE_CASES=N` runs N
//!   cases (the long run in `docs/commands.md`).
//! - Keys with `PX 300` are gone from both nodes after expiry, and `PTTL` agrees on both nodes.
//! - `SCAN` returns every key present for the whole scan at least once under concurrent writes,
//!   and a cursor from one node continues on the other.
//! - A transaction is one journal record, and a `kill -9` of the primary during a stream of
//!   `MULTI`/`EXEC` batches never leaves half a transaction on the promoted backup.
//!
//! Redis is started by the test on a free 127.0.0.1 port (`--save "" --appendonly no`); without
//! `redis-server` the oracle test prints SKIPPED (`.ci/run` installs it).

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Pair, BACKUP, DEADLINE, POLL, PRIMARY};
use hotpair::config::SyncLevel;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use redis::Value;

// ---------------------------------------------------------------------------------------------
// The oracle.

/// A `redis-server` on a free port, killed on drop.
struct Oracle {
    child: Child,
    port: u16,
}

impl Oracle {
    /// `None` (after printing SKIPPED) when `redis-server` is not installed.
    fn start() -> Option<Oracle> {
        let port = common::free_control_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            eprintln!("SKIPPED: redis-server is not installed (.ci/run installs it)");
            return None;
        };
        let oracle = Oracle { child, port };
        let deadline = Instant::now() + DEADLINE;
        while oracle.connection().is_none() {
            assert!(Instant::now() < deadline, "redis-server did not answer on port {port}");
            std::thread::sleep(POLL);
        }
        Some(oracle)
    }

    fn connection(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).ok()?;
        let connection = client.get_connection_with_timeout(Duration::from_secs(5)).ok()?;
        connection.set_read_timeout(Some(common::REDIS_TIMEOUT)).ok()?;
        Some(connection)
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one command; the reply, or the error line as Redis words it.
fn send(connection: &mut redis::Connection, args: &[String]) -> Result<Value, String> {
    let mut command = redis::cmd(&args[0]);
    for arg in &args[1..] {
        command.arg(arg);
    }
    command.query::<Value>(connection).map_err(error_line)
}

fn error_line(error: redis::RedisError) -> String {
    format!("{} {}", error.code().unwrap_or("?"), error.detail().unwrap_or("")).trim_end().to_string()
}

const KEYS: &[&str] = &["k0", "k1", "k2", "h0", "h1"];
const FIELDS: &[&str] = &["f0", "f1", "f2"];

fn word(options: &'static [&'static str]) -> impl Strategy<Value = String> {
    proptest::sample::select(options).prop_map(str::to_string)
}

/// A value: small integers (so increments work), words, an empty string.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![(-20i64..100).prop_map(|n| n.to_string()), word(&["x", "hello", "", "1.5", " 7"])]
}

/// One command, as words. Times to live are long (1000 s) or already past, so that the two
/// servers, a few milliseconds apart, agree on what is expired. No `DBSIZE`: it counts expired
/// keys not yet deleted, which depends on each server's own expiry cycle.
fn one_command() -> impl Strategy<Value = Vec<String>> {
    let key = || word(KEYS);
    let field = || word(FIELDS);
    let set_options = proptest::sample::subsequence(vec!["NX", "XX", "GET", "KEEPTTL", "EX 1000", "PXAT 1"], 0..3);
    prop_oneof![
        (key(), value(), set_options).prop_map(|(k, v, options)| {
            let mut args = vec!["SET".to_string(), k, v];
            args.extend(options.iter().flat_map(|o| o.split(' ')).map(str::to_string));
            args
        }),
        (word(&["SETNX", "GETSET", "APPEND", "INCRBY", "DECRBY"]), key(), value()).prop_map(|(c, k, v)| vec![c, k, v]),
        (
            word(&[
                "GET", "GETDEL", "STRLEN", "INCR", "DECR", "TTL", "PERSIST", "TYPE", "EXISTS", "HGETALL", "HLEN",
                "HKEYS", "HVALS"
            ]),
            key()
        )
            .prop_map(|(c, k)| vec![c, k]),
        (key(), word(&["PERSIST", "EX 1000", "PXAT 1"])).prop_map(|(k, o)| {
            let mut args = vec!["GETEX".to_string(), k];
            args.extend(o.split(' ').map(str::to_string));
            args
        }),
        (word(&["MGET", "DEL", "UNLINK", "EXISTS", "TOUCH"]), proptest::collection::vec(key(), 1..4))
            .prop_map(|(c, keys)| std::iter::once(c).chain(keys).collect()),
        (word(&["MSET", "MSETNX"]), proptest::collection::vec((key(), value()), 1..3))
            .prop_map(|(c, pairs)| std::iter::once(c).chain(pairs.into_iter().flat_map(|(k, v)| [k, v])).collect()),
        // GT and LT compare deadlines: absolute ones (2100-01-01 and a day later, in s and ms),
        // so that the two servers' clocks, a millisecond apart, cannot decide the comparison.
        (
            word(&["EXPIRE", "PEXPIRE", "EXPIREAT 4102444800", "PEXPIREAT 4102531200000"]),
            key(),
            word(&["", "NX", "XX"]),
        )
            .prop_map(|(c, k, o)| {
                let mut words = c.split(' ').map(str::to_string);
                let name = words.next().unwrap_or_default();
                let time = words.next().unwrap_or_else(|| "1000000".to_string());
                let mut args = vec![name, k, time];
                if !o.is_empty() {
                    args.push(o);
                }
                args
            }),
        (
            word(&["EXPIREAT", "PEXPIREAT"]),
            key(),
            word(&["4102444800", "4102531200", "-1"]),
            word(&["", "NX", "XX", "GT", "LT"])
        )
            .prop_map(|(c, k, t, o)| {
                let t = if c == "PEXPIREAT" && t != "-1" { format!("{t}000") } else { t };
                let mut args = vec![c, k, t];
                if !o.is_empty() {
                    args.push(o);
                }
                args
            }),
        (word(&["RENAME", "RENAMENX"]), key(), key()).prop_map(|(c, a, b)| vec![c, a, b]),
        (key(), proptest::collection::vec((field(), value()), 1..3)).prop_map(|(k, pairs)| ["HSET".to_string(), k]
            .into_iter()
            .chain(pairs.into_iter().flat_map(|(f, v)| [f, v]))
            .collect()),
        (word(&["HGET", "HEXISTS", "HSTRLEN", "HDEL"]), key(), field()).prop_map(|(c, k, f)| vec![c, k, f]),
        (word(&["HSETNX", "HINCRBY"]), key(), field(), value()).prop_map(|(c, k, f, v)| vec![c, k, f, v]),
        (key(), proptest::collection::vec(field(), 1..3))
            .prop_map(|(k, fields)| ["HMGET".to_string(), k].into_iter().chain(fields).collect()),
    ]
}

/// A step: one command, or a `MULTI` … `EXEC` block (sometimes with a command that aborts it).
fn step() -> impl Strategy<Value = Vec<Vec<String>>> {
    prop_oneof![
        4 => one_command().prop_map(|c| vec![c]),
        1 => (proptest::collection::vec(one_command(), 1..5), any::<bool>()).prop_map(|(body, abort)| {
            let mut block = vec![vec!["MULTI".to_string()]];
            block.extend(body);
            if abort {
                block.push(vec!["NOSUCHCOMMAND".to_string()]);
            }
            block.push(vec!["EXEC".to_string()]);
            block
        }),
    ]
}

/// Replies compared as Redis's: exact, except `TTL`-family numbers (within 2 units: the two
/// servers run the same command a moment apart).
fn same_reply(args: &[String], ours: &Result<Value, String>, theirs: &Result<Value, String>) -> bool {
    let name = args[0].to_ascii_uppercase();
    match (ours, theirs) {
        (Ok(Value::Int(a)), Ok(Value::Int(b))) if name == "TTL" || name == "PTTL" => {
            (*a < 0 || *b < 0) && a == b || (*a >= 0 && *b >= 0 && (a - b).abs() <= 2)
        }
        _ => ours == theirs,
    }
}

/// Every key with its type, data and whether it has an expiry.
fn snapshot(connection: &mut redis::Connection) -> BTreeMap<String, (String, Value, bool)> {
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(connection).expect("KEYS");
    let mut out = BTreeMap::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(connection).expect("TYPE");
        let data: Value = match kind.as_str() {
            "hash" => redis::cmd("HGETALL").arg(&key).query(connection).expect("HGETALL"),
            _ => redis::cmd("GET").arg(&key).query(connection).expect("GET"),
        };
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query(connection).expect("PTTL");
        out.insert(key, (kind, data, ttl >= 0));
    }
    out
}

#[test]
fn random_command_sequences_answer_as_redis_does_and_both_nodes_agree() {
    let Some(oracle) = Oracle::start() else { return };
    let mut pair = Pair::start(SyncLevel::Durable);
    let ours = std::cell::RefCell::new(pair.redis(PRIMARY));
    let theirs = std::cell::RefCell::new(oracle.connection().expect("oracle connection"));
    let cases = std::env::var("HOTPAIR_ORACLE_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(12);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let steps = proptest::collection::vec(step(), 5..40);
    let result = runner.run(&steps, |steps| {
        let (mut ours, mut theirs) = (ours.borrow_mut(), theirs.borrow_mut());
        for connection in [&mut *ours, &mut *theirs] {
            redis::cmd("FLUSHALL").query::<()>(connection).expect("FLUSHALL");
        }
        let mut transcript = Vec::new();
        for args in steps.iter().flatten() {
            let (a, b) = (send(&mut ours, args), send(&mut theirs, args));
            transcript.push(format!("{args:?} -> {b:?}"));
            prop_assert!(
                same_reply(args, &a, &b),
                "{args:?}: hotpair {a:?}, redis {b:?}\ntranscript:\n{}",
                transcript.join("\n")
            );
        }
        let (a, b) = (snapshot(&mut ours), snapshot(&mut theirs));
        prop_assert_eq!(a, b, "final data differs\ntranscript:\n{}", transcript.join("\n"));
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    pair.wait_caught_up();
    let verified = pair.hotpair_ok(&["verify", "--full"]);
    assert!(verified.contains("equal"), "{verified}");
}

#[test]
fn keys_with_px_300_expire_on_both_nodes_and_ttl_agrees() {
    let mut pair = Pair::start(SyncLevel::Durable);
    let (mut a, mut b) = (pair.redis(PRIMARY), pair.redis(BACKUP));
    for i in 0..20 {
        let _: () = redis::cmd("SET").arg(format!("short:{i}")).arg("v").arg("PX").arg(300).query(&mut a).unwrap();
    }
    let _: () = redis::cmd("SET").arg("long").arg("v").arg("EX").arg(1000).query(&mut a).unwrap();
    pair.wait_caught_up();
    // Both nodes count the same deadline down: the journal holds the absolute time.
    let ttl_a: i64 = redis::cmd("PTTL").arg("long").query(&mut a).unwrap();
    let ttl_b: i64 = redis::cmd("PTTL").arg("long").query(&mut b).unwrap();
    assert!((ttl_a - ttl_b).abs() <= 100, "PTTL on a {ttl_a}, on b {ttl_b}");
    let at_a: i64 = redis::cmd("PEXPIRETIME").arg("long").query(&mut a).unwrap();
    let at_b: i64 = redis::cmd("PEXPIRETIME").arg("long").query(&mut b).unwrap();
    assert_eq!(at_a, at_b, "the same absolute deadline on both nodes");
    let info: String = redis::cmd("INFO").arg("keyspace").query(&mut b).unwrap();
    assert!(info.contains("db0:keys=21,expires=21,"), "{info}");
    // Gone from both: invisible at once, then deleted by the primary's active expiry.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let sizes: Vec<i64> = [&mut a, &mut b].into_iter().map(|c| redis::cmd("DBSIZE").query(c).unwrap()).collect();
        let visible: i64 = redis::cmd("EXISTS").arg("short:0").arg("short:19").query(&mut b).unwrap();
        if sizes == [1, 1] && visible == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "expired keys still counted: DBSIZE {sizes:?}, visible on b {visible}");
        std::thread::sleep(POLL);
    }
    pair.wait_caught_up();
    assert!(pair.hotpair_ok(&["verify"]).contains("equal"));
}

#[test]
fn scan_returns_every_key_present_throughout_despite_concurrent_writes() {
    let mut pair = Pair::start(SyncLevel::Async);
    let mut a = pair.redis(PRIMARY);
    let stable: Vec<String> = (0..500).map(|i| format!("stable:{i:04}")).collect();
    for chunk in stable.chunks(100) {
        let mut mset = redis::cmd("MSET");
        for key in chunk {
            mset.arg(key).arg("v");
        }
        let _: () = mset.query(&mut a).unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (client, stop) = (pair.client(PRIMARY), stop.clone());
        std::thread::spawn(move || {
            let mut connection = client.get_connection().unwrap();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 200_000 {
                let key = format!("churn:{}", i % 300);
                let command = if i % 3 == 0 { redis::cmd("DEL") } else { redis::cmd("SET") };
                let mut command = command;
                command.arg(&key);
                if i % 3 != 0 {
                    command.arg(i);
                }
                let _: Value = command.query(&mut connection).unwrap();
                i += 1;
            }
        })
    };
    for count in [1, 7, 50] {
        let mut seen = std::collections::HashSet::new();
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) =
                redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(count).query(&mut a).unwrap();
            seen.extend(keys);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let missing: Vec<&String> = stable.iter().filter(|k| !seen.contains(*k)).collect();
        assert!(
            missing.is_empty(),
            "COUNT {count}: {} stable keys never returned, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
    // A cursor handed out by one node continues on the other (as after a switchover): it
    // resumes from its key prefix there, so keys may repeat but none is missed.
    pair.wait_caught_up();
    let mut b = pair.redis(BACKUP);
    let (cursor, first): (u64, Vec<String>) =
        redis::cmd("SCAN").arg(0).arg("MATCH").arg("stable:*").arg("COUNT").arg(200).query(&mut a).unwrap();
    let mut seen: std::collections::HashSet<String> = first.into_iter().collect();
    let mut cursor = cursor;
    while cursor != 0 {
        let (next, keys): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg("stable:*").arg("COUNT").arg(200).query(&mut b).unwrap();
        seen.extend(keys);
        cursor = next;
    }
    assert_eq!(seen.len(), stable.len(), "a scan begun on a and finished on b misses keys");
}

#[test]
fn a_transaction_is_one_record_and_never_half_applied_after_kill_9() {
    let mut pair = Pair::start(SyncLevel::Async);
    let mut a = pair.redis(PRIMARY);
    let replies: (String, i64, i64) =
        redis::pipe().atomic().set("tx:a", "1").incr("tx:n", 5).hset("tx:h", "f", "v").query(&mut a).unwrap();
    assert_eq!(replies, ("OK".to_string(), 5, 1));
    pair.wait_caught_up();
    let dump = common::journal_dump(&pair.node_dir(BACKUP));
    let txn = dump
        .iter()
        .find(|r| r["ops"].as_array().is_some_and(|ops| ops.iter().any(|op| op["key"] == "tx:a")))
        .expect("the transaction's record");
    let keys: Vec<&str> = txn["ops"].as_array().unwrap().iter().map(|op| op["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["tx:a", "tx:n", "tx:h"], "one record with every key: {txn}");
    assert_eq!(txn["commands"], serde_json::json!([["INCRBY", "tx:n", "5"]]), "{txn}");

    // A stream of transactions, each writing the same counter into five keys; kill -9 midway.
    let writer = {
        let client = pair.client(PRIMARY);
        std::thread::spawn(move || {
            let mut connection = client.get_connection().unwrap();
            for i in 1..=100_000u64 {
                let mut pipe = redis::pipe();
                pipe.atomic();
                for k in 0..5 {
                    pipe.set(format!("inv:{k}"), i).ignore();
                }
                pipe.hset("inv:h", "i", i).ignore();
                if pipe.query::<()>(&mut connection).is_err() {
                    return i;
                }
            }
            0
        })
    };
    pair.wait_for("some transactions applied on the backup", |s| s["nodes"][BACKUP]["lsn"].as_u64().unwrap_or(0) > 500);
    pair.kill(PRIMARY);
    let stopped_at = writer.join().unwrap();
    assert!(stopped_at > 0, "the writer never saw the primary die");
    pair.hotpair_ok(&["failover", "--to", BACKUP, "--force"]);
    let mut b = pair.redis(BACKUP);
    let values: Vec<Option<u64>> =
        redis::cmd("MGET").arg("inv:0").arg("inv:1").arg("inv:2").arg("inv:3").arg("inv:4").query(&mut b).unwrap();
    let hash: Option<u64> = redis::cmd("HGET").arg("inv:h").arg("i").query(&mut b).unwrap();
    assert!(
        values.iter().all(|v| *v == hash && v.is_some()),
        "half a transaction on the promoted backup: {values:?}, hash {hash:?}"
    );
}

#[test]
fn an_orphaned_transaction_is_one_orphans_line_and_is_rewound_whole() {
    // Shipping stopped, one EXEC on a (three keys, an increment), a killed, b promoted, a
    // rejoined: a's orphans file holds that EXEC as one line with every key and the increment
    // as sent, and none of its keys survive on a.
    let options = common::Options { sync_timeout: Some("1s"), heartbeat: Some("100ms"), ..Default::default() };
    let mut pair = Pair::start_with(SyncLevel::Async, options);
    let _: () = redis::cmd("SET").arg("tx:2").arg(10).query(&mut pair.redis(PRIMARY)).unwrap();
    pair.wait_caught_up();
    pair.hotpair_ok(&["replicate", "stop", PRIMARY]);
    pair.wait_for("both sides to see the link down", |s| {
        s["nodes"][PRIMARY]["peer"]["connected"] == false && s["nodes"][BACKUP]["peer"]["connected"] == false
    });
    let replies: (String, i64, i64) = redis::pipe()
        .atomic()
        .set("tx:1", "a")
        .incr("tx:2", 5)
        .hset("tx:3", "f", "v")
        .query(&mut pair.redis(PRIMARY))
        .unwrap();
    assert_eq!(replies, ("OK".to_string(), 15, 1));
    pair.kill(PRIMARY);
    pair.hotpair_ok(&["failover", "--to", BACKUP]);
    pair.restart(PRIMARY);
    pair.hotpair_ok(&["rejoin", PRIMARY]);
    let dir = pair.node_dir(PRIMARY).join("orphans");
    let lines: Vec<serde_json::Value> = std::fs::read_dir(&dir)
        .expect("a's orphans directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "jsonl"))
        .flat_map(|path| {
            std::fs::read_to_string(path).expect("orphans file").lines().map(str::to_string).collect::<Vec<_>>()
        })
        .map(|line| serde_json::from_str(&line).expect("an orphans line is JSON"))
        .collect();
    assert_eq!(lines.len(), 1, "one orphaned transaction, one line: {lines:?}");
    let keys: Vec<&str> = lines[0]["ops"].as_array().unwrap().iter().map(|op| op["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["tx:1", "tx:2", "tx:3"], "{}", lines[0]);
    assert_eq!(lines[0]["commands"], serde_json::json!([["INCRBY", "tx:2", "5"]]), "{}", lines[0]);
    assert_eq!(lines[0]["ops"][2]["after"]["data"]["hash"], serde_json::json!([["f", "v"]]), "{}", lines[0]);
    pair.wait_for("a following b again", |s| s["nodes"][PRIMARY]["role"] == "backup");
    let mut a = pair.redis(PRIMARY);
    let left: (Option<String>, Option<String>, i64) =
        redis::pipe().get("tx:1").get("tx:2").exists("tx:3").query(&mut a).unwrap();
    assert_eq!(left, (None, Some("10".to_string()), 0), "the orphaned EXEC was not rewound whole");
}

/// Bounded wait used where a condition is polled on the data port rather than in `status`.
#[allow(dead_code)]
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
        std::thread::sleep(POLL);
    }
}
