//! Online backup and point-in-time restore with real processes: `hotpair backup` under a write
//! load, then `hotpair restore` to an LSN and to a time, each compared key by key with a ledger
//! of the writes the clients had acknowledged (mapped to their LSNs and timestamps through the
//! primary's journal); the restored pair starts, takes writes, and the two pairs refuse each
//! other's certificates.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::{client_value, dumped_bytes, free_control_port, journal_dump, stderr, Pair, DEADLINE, POLL};
use hotpair::config::{PairConfig, SyncLevel};
use redis::Commands;
use serde_json::Value;

/// Keys written before the workload, so that the backup's scan takes a while.
const PRELOAD_KEYS: usize = 30_000;
const PRELOAD_VALUE: usize = 200;
/// Workload clients, each writing only its own keys (so it knows what a DEL removes).
const CLIENTS: usize = 4;
const KEYS_PER_CLIENT: usize = 150;

/// One acknowledged write: the key, the value it set (`None`: a DEL), and for a DEL the value
/// it removed (which makes the DEL findable in the journal).
#[derive(Debug, Clone)]
struct Write {
    key: String,
    value: Option<String>,
    removed: Option<String>,
    acked_at_ms: u64,
}

fn now_ms() -> u64 {
    hotpair::clock::now_ms()
}

fn hotpair(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hotpair")).args(args).output().expect("run hotpair")
}

/// Clients that write until stopped, recording every acknowledged write.
struct Workload {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    ledger: Arc<Mutex<Vec<Write>>>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl Workload {
    fn start(pair: &Pair) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let ledger = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for client in 0..CLIENTS {
            let mut redis = pair.redis(common::PRIMARY);
            let (stop, acked, ledger) = (stop.clone(), acked.clone(), ledger.clone());
            threads.push(std::thread::spawn(move || {
                let mut held: HashMap<String, String> = HashMap::new();
                let mut failed = 0;
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let key = format!("w:{client}:{}", (seq * 7919) as usize % KEYS_PER_CLIENT);
                    let delete = seq % 7 == 0 && held.contains_key(&key);
                    let (result, write) = if delete {
                        let removed = held.get(&key).cloned();
                        let result: redis::RedisResult<i64> = redis.del(&key);
                        (result.map(|_| ()), Write { key: key.clone(), value: None, removed, acked_at_ms: 0 })
                    } else {
                        let value = format!("c{client}-s{seq}");
                        let result: redis::RedisResult<()> = redis.set(&key, &value);
                        (result, Write { key: key.clone(), value: Some(value), removed: None, acked_at_ms: 0 })
                    };
                    match result {
                        Ok(()) => {
                            let write = Write { acked_at_ms: now_ms(), ..write };
                            match &write.value {
                                Some(value) => held.insert(key, value.clone()),
                                None => held.remove(&key),
                            };
                            ledger.lock().unwrap().push(write);
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => failed += 1,
                    }
                }
                failed
            }));
        }
        Workload { stop, acked, ledger, threads }
    }

    /// Waits (with a deadline) until `more` further writes were acknowledged.
    fn wait_for_more(&self, more: u64) {
        let target = self.acked.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + DEADLINE;
        while self.acked.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "the workload made no progress");
            std::thread::sleep(POLL);
        }
    }

    /// Stops the clients; returns the ledger and how many writes failed.
    fn stop(self) -> (Vec<Write>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let failed = self.threads.into_iter().map(|t| t.join().expect("client thread")).sum();
        let ledger = Arc::try_unwrap(self.ledger).expect("threads joined").into_inner().unwrap();
        (ledger, failed)
    }
}

/// Where each write landed in the journal: LSN and timestamp, by (key, after-image) for a SET
/// and (key, before-image) for a DEL; and every record's (LSN, timestamp) in order.
struct JournalMap {
    set_at: HashMap<(String, String), u64>,
    del_at: HashMap<(String, String), u64>,
    stamps: Vec<(u64, u64)>,
}

fn map_journal(node_dir: &Path) -> JournalMap {
    let mut map = JournalMap { set_at: HashMap::new(), del_at: HashMap::new(), stamps: Vec::new() };
    let mut records: Vec<Value> = journal_dump(node_dir);
    records.sort_by_key(|r| r["lsn"].as_u64());
    records.dedup_by_key(|r| r["lsn"].as_u64());
    for record in &records {
        let lsn = record["lsn"].as_u64().unwrap();
        map.stamps.push((lsn, record["timestamp_ms"].as_u64().unwrap()));
        for op in record["ops"].as_array().into_iter().flatten() {
            let key = String::from_utf8(dumped_bytes(&op["key"])).unwrap();
            let image = |side: &str| {
                (!op[side].is_null()).then(|| String::from_utf8(client_value(&dumped_bytes(&op[side]))).unwrap())
            };
            match (image("after"), image("before")) {
                (Some(after), _) => map.set_at.insert((key, after), lsn),
                (None, Some(before)) => map.del_at.insert((key, before), lsn),
                (None, None) => None,
            };
        }
    }
    map
}

impl JournalMap {
    fn lsn_of(&self, write: &Write) -> u64 {
        let found = match (&write.value, &write.removed) {
            (Some(value), _) => self.set_at.get(&(write.key.clone(), value.clone())),
            (None, Some(removed)) => self.del_at.get(&(write.key.clone(), removed.clone())),
            (None, None) => None,
        };
        *found.unwrap_or_else(|| panic!("acknowledged write {write:?} is not in the primary's journal"))
    }

    /// The last LSN stamped at or before `time_ms`, before the first one stamped after it.
    fn lsn_at_time(&self, time_ms: u64) -> u64 {
        self.stamps.iter().take_while(|(_, ts)| *ts <= time_ms).last().map_or(0, |(lsn, _)| *lsn)
    }
}

/// The state at `lsn` by the ledger: for each key the last acknowledged write at or before it.
fn expected_at(ledger: &[(u64, Write)], lsn: u64) -> BTreeMap<String, Option<String>> {
    let mut state = BTreeMap::new();
    for (at, write) in ledger {
        if *at <= lsn {
            state.insert(write.key.clone(), write.value.clone());
        }
    }
    state
}

/// Compares a running node's data with the ledger's state, key by key, and its key count.
fn assert_state(pair: &Pair, node: &str, expected: &BTreeMap<String, Option<String>>, what: &str) {
    let mut redis = pair.redis(node);
    let keys: Vec<&String> = expected.keys().collect();
    for chunk in keys.chunks(500) {
        let got: Vec<Option<String>> = redis.mget(chunk).expect("MGET");
        for (key, value) in chunk.iter().zip(got) {
            assert_eq!(&value, &expected[*key], "{what}: key {key} on {node}");
        }
    }
    let present = expected.values().filter(|v| v.is_some()).count() as i64;
    let dbsize: i64 = redis::cmd("DBSIZE").query(&mut redis).expect("DBSIZE");
    assert_eq!(dbsize, present, "{what}: {node} holds other keys than the ledger says");
}

/// `hotpair restore` into a new temporary directory on free ports; returns the directory, the
/// pair file and the JSON outcome.
fn restore(backup: &Path, extra: &[&str]) -> (tempfile::TempDir, PathBuf, Value) {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("restored");
    let nodes = format!("a=127.0.0.1:{},b=127.0.0.1:{}", free_control_port(), free_control_port());
    let mut args =
        vec!["restore", backup.to_str().unwrap(), "--dir", dir.to_str().unwrap(), "--nodes", &nodes, "--json"];
    args.extend_from_slice(extra);
    let out = hotpair(&args);
    assert!(out.status.success(), "restore {extra:?} failed: {}", stderr(&out));
    let outcome: Value = serde_json::from_slice(&out.stdout).expect("restore --json prints JSON");
    (parent, dir.join("pair.toml"), outcome)
}

/// A pair file that names `addresses`' nodes but the TLS files of `tls`: what a client holding
/// one pair's certificates sees when it reaches the other pair's nodes.
fn cross(addresses: &PairConfig, tls: &PairConfig) -> PairConfig {
    PairConfig { tls: tls.tls.clone(), cluster: tls.cluster, ..addresses.clone() }
}

fn status_of(pair: &PairConfig, node: &str) -> Result<Value, String> {
    hotpair::admin::client::block_on(hotpair::admin::client::request(
        pair,
        node,
        hotpair::replication::wire::AdminRequest::Status,
    ))
    .unwrap()
}

#[test]
fn backup_under_load_restores_to_an_lsn_and_a_time_exactly_into_a_pair_of_its_own() {
    let mut pair = Pair::start(SyncLevel::Durable);
    let mut preload_ledger = Vec::new();
    {
        let mut redis = pair.redis(common::PRIMARY);
        let filler = "x".repeat(PRELOAD_VALUE);
        for batch in (0..PRELOAD_KEYS).collect::<Vec<_>>().chunks(500) {
            let pairs: Vec<(String, String)> =
                batch.iter().map(|i| (format!("p:{i}"), format!("{i}{filler}"))).collect();
            let () = redis.mset(&pairs).expect("MSET");
            let at = now_ms();
            preload_ledger.extend(pairs.into_iter().map(|(key, value)| Write {
                key,
                value: Some(value),
                removed: None,
                acked_at_ms: at,
            }));
        }
    }
    let workload = Workload::start(&pair);
    workload.wait_for_more(300);
    // A time inside the history before the backup: restored from an empty store and the journal.
    let early_time = now_ms();
    workload.wait_for_more(300);

    let backups = tempfile::tempdir().unwrap();
    let backup = backups.path().join("b1");
    let acked_before = workload.acked.load(Ordering::Relaxed);
    let out = pair.hotpair(&["backup", common::BACKUP, "--out", backup.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    let acked_during = workload.acked.load(Ordering::Relaxed) - acked_before;
    assert!(String::from_utf8_lossy(&out.stderr).contains("store copied"), "progress is shown: {}", stderr(&out));
    let manifest: Value = serde_json::from_slice(&out.stdout).expect("backup --json prints the manifest");
    let (scan_from, consistent) =
        (manifest["store"]["scan_started_lsn"].as_u64().unwrap(), manifest["consistent_lsn"].as_u64().unwrap());
    assert!(acked_during > 0, "writes went on during the backup");
    assert!(consistent > scan_from, "writes landed during the scan, so the copy needed the journal: {manifest}");
    assert_eq!(manifest["journal"]["last_lsn"].as_u64(), Some(consistent), "{manifest}");
    assert_eq!(manifest["node"], common::BACKUP);

    workload.wait_for_more(300);
    let (workload_ledger, failed) = workload.stop();
    assert_eq!(failed, 0, "no write failed");
    pair.wait_caught_up();

    let map = map_journal(&pair.node_dir(common::PRIMARY));
    let mut ledger: Vec<(u64, Write)> =
        preload_ledger.into_iter().chain(workload_ledger).map(|w| (map.lsn_of(&w), w)).collect();
    ledger.sort_by_key(|(lsn, _)| *lsn);
    // Acknowledged before the early time means stamped before it: the ledger agrees with the clock.
    let early_lsn = map.lsn_at_time(early_time);
    for (lsn, write) in &ledger {
        if write.acked_at_ms <= early_time {
            assert!(*lsn <= early_lsn, "{write:?} acknowledged before {early_time} is at LSN {lsn} > {early_lsn}");
        }
    }
    assert!(early_lsn < scan_from, "the early time lies before the backup");

    // 1. To an LSN after the backup: its copy plus the primary's journal.
    let late =
        ledger.iter().map(|(lsn, _)| *lsn).filter(|&lsn| lsn > consistent).nth(150).expect("writes after the backup");
    let a_dir = pair.node_dir(common::PRIMARY);
    let (keep, pair_file, outcome) =
        restore(&backup, &["--to-lsn", &late.to_string(), "--journal", a_dir.to_str().unwrap()]);
    assert_eq!((outcome["lsn"].as_u64(), outcome["from"].as_str()), (Some(late), Some("copy")), "{outcome}");
    let mut restored = Pair::start_existing(keep, pair_file);
    let expected = expected_at(&ledger, late);
    assert_state(&restored, "a", &expected, "restored to an LSN");
    restored.wait_caught_up();
    assert_state(&restored, "b", &expected, "the seeded second node");

    // The new pair takes writes, and the two pairs refuse each other's certificates.
    let () = restored.redis("a").set("after-restore", "1").expect("the restored pair takes writes");
    restored.wait_caught_up();
    let () = pair.redis(common::PRIMARY).set("old-pair", "still here").expect("the old pair is untouched");
    assert_ne!(restored.config.cluster, pair.config.cluster, "a new cluster id");
    for node in ["a", "b"] {
        let err = status_of(&cross(&restored.config, &pair.config), node).expect_err("old certificates refused");
        assert!(err.contains("TLS"), "{err}");
        let err = status_of(&cross(&pair.config, &restored.config), node).expect_err("new certificates refused");
        assert!(err.contains("TLS"), "{err}");
        status_of(&restored.config, node).expect("its own admin certificate works");
    }
    drop(restored);

    // 2. To a time before the backup: an empty store and the journal from LSN 1.
    let time = hotpair::admin::backup::format_time(Some(early_time));
    let (_keep, pair_file, outcome) = restore(&backup, &["--to-time", &time, "--journal", a_dir.to_str().unwrap()]);
    assert_eq!((outcome["lsn"].as_u64(), outcome["from"].as_str()), (Some(early_lsn), Some("empty")), "{outcome}");
    let restored = Pair::start_existing(_keep, pair_file);
    assert_state(&restored, "a", &expected_at(&ledger, early_lsn), "restored to a time");
    drop(restored);

    // 3. The backup alone: the store at its consistent LSN.
    let (_keep, pair_file, outcome) = restore(&backup, &[]);
    assert_eq!(outcome["lsn"].as_u64(), Some(consistent), "{outcome}");
    assert_eq!(outcome["digest"], manifest["digest"]);
    let restored = Pair::start_existing(_keep, pair_file);
    assert_state(&restored, "a", &expected_at(&ledger, consistent), "restored from the backup alone");
}

#[test]
fn a_damaged_or_insufficient_backup_is_refused_and_leaves_nothing_behind() {
    let pair = Pair::start(SyncLevel::Durable);
    {
        let mut redis = pair.redis(common::PRIMARY);
        for i in 0..50 {
            let () = redis.set(format!("k{i}"), "v".repeat(64)).unwrap();
        }
    }
    let backups = tempfile::tempdir().unwrap();
    let backup = backups.path().join("b1");
    pair.hotpair_ok(&["backup", common::PRIMARY, "--out", backup.to_str().unwrap()]);
    // A backup never goes into a directory that holds something.
    let out = pair.hotpair(&["backup", common::PRIMARY, "--out", backup.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));

    let nodes = format!("a=127.0.0.1:{},b=127.0.0.1:{}", free_control_port(), free_control_port());
    let target = backups.path().join("new");
    let run = |extra: &[&str]| {
        let mut args = vec!["restore", backup.to_str().unwrap(), "--dir", target.to_str().unwrap(), "--nodes", &nodes];
        args.extend_from_slice(extra);
        hotpair(&args)
    };
    // Before the backup's consistent point, with no journal from LSN 1: refused, named.
    let out = run(&["--to-lsn", "3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("before this backup's consistent point"), "{}", stderr(&out));
    assert!(!target.exists(), "a refused restore makes nothing");
    // Past what the journals hold.
    let out = run(&["--to-lsn", "1000000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("past the last record"), "{}", stderr(&out));

    // One flipped bit in the store copy: found, named with its file and offset, nothing kept.
    let store = backup.join("store.pairs");
    let mut bytes = std::fs::read(&store).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x08;
    std::fs::write(&store, &bytes).unwrap();
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(message.contains("store.pairs is damaged at offset 16") && message.contains("CRC"), "{message}");
    assert!(!target.exists(), "a failed restore removes what it wrote");

    // A backup without its manifest (it did not finish) is not a backup.
    std::fs::remove_file(backup.join("manifest.json")).unwrap();
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not a finished hotpair backup"), "{}", stderr(&out));
}

#[test]
fn archived_segments_or_a_backup_with_its_journal_reach_back_before_the_backup() {
    let mut pair = Pair::start(SyncLevel::Durable);
    {
        let mut a = pair.redis(common::PRIMARY);
        for i in 0..20 {
            let () = a.set(format!("early:{i}"), i).unwrap();
        }
    }
    let early = pair.wait_caught_up();
    pair.hotpair_ok(&["replicate", "reopen-log", common::PRIMARY]);
    {
        let mut a = pair.redis(common::PRIMARY);
        for i in 0..20 {
            let () = a.set(format!("late:{i}"), i).unwrap();
        }
    }
    pair.wait_caught_up();
    let backups = tempfile::tempdir().unwrap();
    let (plain, whole) = (backups.path().join("plain"), backups.path().join("whole"));
    pair.hotpair_ok(&["backup", common::PRIMARY, "--out", plain.to_str().unwrap()]);
    pair.hotpair_ok(&["backup", common::PRIMARY, "--out", whole.to_str().unwrap(), "--journal-from", "1"]);
    pair.stop(common::PRIMARY);
    pair.stop(common::BACKUP);

    // Trim a's local journal below the late writes into an archive, as `Journal::trim_below`
    // does with an archive directory.
    let a_dir = pair.node_dir(common::PRIMARY);
    let archive = backups.path().join("archive");
    {
        let identity = hotpair::storage::journal::JournalIdentity {
            cluster: *pair.config.cluster.as_bytes(),
            node: common::PRIMARY.into(),
            kind: hotpair::storage::journal::JournalKind::Local,
        };
        let options =
            hotpair::storage::journal::JournalOptions { archive_dir: Some(archive.clone()), ..Default::default() };
        let (journal, _) =
            hotpair::storage::journal::Journal::open(&a_dir.join("journal/local"), identity, options).unwrap();
        assert!(!journal.trim_below(early + 1).unwrap().is_empty(), "a closed segment was archived");
    }
    let expected: BTreeMap<String, Option<String>> =
        (0..20).flat_map(|i| [(format!("early:{i}"), Some(i.to_string())), (format!("late:{i}"), None)]).collect();

    // The plain backup and a's trimmed journals do not reach back: refused, named.
    let nodes = format!("a=127.0.0.1:{},b=127.0.0.1:{}", free_control_port(), free_control_port());
    let target = backups.path().join("refused");
    let out = hotpair(&[
        "restore",
        plain.to_str().unwrap(),
        "--dir",
        target.to_str().unwrap(),
        "--nodes",
        &nodes,
        "--to-lsn",
        &early.to_string(),
        "--journal",
        a_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("journals from LSN 1"), "{}", stderr(&out));

    // With the archive they do; and a backup taken with --journal-from 1 does on its own.
    for (backup, extra) in
        [(&plain, vec!["--journal", archive.to_str().unwrap(), "--journal", a_dir.to_str().unwrap()]), (&whole, vec![])]
    {
        let mut args = vec!["--to-lsn".to_string(), early.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (keep, pair_file, outcome) = restore(backup, &args);
        assert_eq!((outcome["lsn"].as_u64(), outcome["from"].as_str()), (Some(early), Some("empty")), "{outcome}");
        let restored = Pair::start_existing(keep, pair_file);
        assert_state(&restored, "a", &expected, "restored before the backup");
    }
}
