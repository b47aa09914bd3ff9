//! The orchestrator end to end: `hotpair switchover|failover|rejoin|switchback|verify` driving
//! two real `hotpair run` processes on 127.0.0.1, with a writer on the data port (the `redis`
//! crate) recording every acknowledged write, and faults injected with SIGKILL / SIGSTOP, or by
//! killing the orchestrating CLI itself in the middle of a phase.
//!
//! What each test proves is in its name and its first comment. Waits poll a condition against a
//! deadline (`common::DEADLINE`); nothing sleeps in place of synchronisation (the writer paces
//! itself, which is load shaping, not synchronisation).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Options, Pair, BACKUP, DEADLINE, POLL, PRIMARY};
use hotpair::config::SyncLevel;
use redis::{Commands, RedisResult};
use serde_json::Value;

/// Settings that keep failure detection and refused writes quick.
fn fast() -> Options {
    Options { sync_timeout: Some("1s"), heartbeat: Some("100ms"), ..Options::default() }
}

fn other(node: &str) -> &'static str {
    if node == PRIMARY {
        BACKUP
    } else {
        PRIMARY
    }
}

// ---------------------------------------------------------------------------------------------
// Running the CLI.

/// `hotpair ARGS --json`: the exit code and the one JSON object it printed (checked against the
/// promised shape: `command`, `ok`, `exit_code`, `op_id`, `outcome`, `total_ms`, `phases`, `details`).
fn run_json(pair: &Pair, args: &[&str]) -> (i32, Value) {
    let mut full = args.to_vec();
    full.push("--json");
    let out = pair.hotpair(&full);
    let code = out.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or_else(|| {
        panic!("hotpair {full:?} (exit {code}) printed no JSON object: {stdout}{}", common::stderr(&out))
    });
    let report: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("hotpair {full:?}: not JSON ({e}): {line}"));
    assert_eq!(report["command"], args[0], "{report}");
    assert_eq!(report["exit_code"], code, "exit code and JSON disagree: {report}");
    assert_eq!(report["ok"], code == 0, "{report}");
    assert!(report["op_id"].as_str().is_some_and(|id| id.len() == 36), "op_id: {report}");
    assert!(report["outcome"].as_str().is_some_and(|o| !o.is_empty()), "outcome: {report}");
    assert!(report["total_ms"].as_f64().is_some(), "total_ms: {report}");
    assert!(report["phases"].is_array() && report["details"].is_object(), "{report}");
    (code, report)
}

fn phase_names(report: &Value) -> Vec<String> {
    report["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| {
            assert!(p["ms"].as_f64().is_some_and(|ms| ms >= 0.0), "phase without a duration: {p}");
            p["name"].as_str().expect("phase name").to_string()
        })
        .collect()
}

fn assert_phases(report: &Value, expected: &[&str]) {
    let names = phase_names(report);
    for name in expected {
        assert!(names.iter().any(|n| n == name), "phase {name} missing from {names:?}: {report}");
    }
}

/// Spawns `hotpair ARGS` with its stdout piped, to be read line by line and killed midway.
fn spawn_cli(pair: &Pair, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hotpair"))
        .arg("--pair")
        .arg(&pair.pair_file)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hotpair")
}

/// Reads the CLI's stdout until a line that starts with `prefix` (after indentation); returns
/// the lines read. Panics if the CLI ends first (the point to kill at never came).
fn read_until(child: &mut Child, prefix: &str) -> Vec<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut reader = BufReader::new(stdout);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("read the CLI's stdout");
        if n == 0 {
            let status = child.wait().expect("wait for the CLI");
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("the CLI ended ({status}) before printing `{prefix}`: {lines:?} {err}");
        }
        lines.push(line.clone());
        if line.trim_start().starts_with(prefix) {
            // Keep the pipe open (a write to a closed pipe would kill the CLI by SIGPIPE).
            child.stdout = Some(reader.into_inner());
            return lines;
        }
    }
}

fn kill_child(child: &mut Child) {
    child.kill().expect("SIGKILL the CLI");
    child.wait().expect("reap the CLI");
}

/// What the CLI wrote on stderr (its outcome line when it failed), once it has ended.
fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    err
}

/// Waits for a CLI to end by itself (its own timeouts bound it) and returns its exit code.
fn wait_child(child: &mut Child) -> i32 {
    let deadline = Instant::now() + DEADLINE + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "the CLI did not end in time");
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------------
// Looking at the pair.

/// (role, epoch) of each node, through its own status (a paused node is not asked).
fn role_of(pair: &Pair, node: &str) -> (String, u64) {
    let s = pair.node_status(node);
    (s["role"].as_str().unwrap_or("?").to_string(), s["epoch"].as_u64().expect("epoch"))
}

/// Waits until `primary` is primary taking writes, the other node is its backup following it,
/// and both see the link up.
fn wait_following(pair: &mut Pair, primary: &str) -> Value {
    let backup = other(primary);
    pair.wait_for(&format!("{primary} primary taking writes, {backup} following it"), |s| {
        let (p, b) = (&s["nodes"][primary], &s["nodes"][backup]);
        p["role"] == "primary"
            && p["writes"]["accepting"] == true
            && p["peer"]["connected"] == true
            && b["role"] == "backup"
            && b["following"] == true
            && b["peer"]["connected"] == true
            && b["epoch"] == p["epoch"]
    })
}

/// As `Pair::wait_caught_up`, for either node as primary: the backup applied the primary's
/// last LSN, with no lag left, and both report one digest there.
fn wait_caught_up_at(pair: &mut Pair, primary: &str) -> u64 {
    let backup = other(primary);
    let status = pair.wait_for(&format!("{backup} at {primary}'s LSN"), |s| {
        let (p, b) = (&s["nodes"][primary], &s["nodes"][backup]);
        let lsn = &p["lsn"];
        p["role"] == "primary"
            && b["role"] == "backup"
            && lsn.as_u64().is_some()
            && b["lsn"] == *lsn
            && b["received_lsn"] == *lsn
            && p["peer"]["applied_lsn"] == *lsn
            && p["lag_records"] == 0
            && b["lag_records"] == 0
    });
    let (p, b) = (&status["nodes"][primary], &status["nodes"][backup]);
    assert_eq!(p["digest"], b["digest"], "same LSN {}, different digests: {status}", p["lsn"]);
    p["lsn"].as_u64().expect("lsn")
}

/// One writer per epoch, by status and by actual writes: only `primary` accepts writes, and
/// a SET succeeds on it and fails on the other node.
fn assert_one_writer(pair: &Pair, primary: &str, tag: &str) {
    let status = pair.status();
    let accepting: Vec<&str> =
        [PRIMARY, BACKUP].into_iter().filter(|n| status["nodes"][n]["writes"]["accepting"] == true).collect();
    assert_eq!(accepting, [primary], "{tag}: nodes accepting writes: {status}");
    let epochs: BTreeSet<u64> = [PRIMARY, BACKUP].iter().filter_map(|n| status["nodes"][n]["epoch"].as_u64()).collect();
    assert_eq!(epochs.len(), 1, "{tag}: the nodes are in different epochs after convergence: {status}");
    for node in [PRIMARY, BACKUP] {
        let written: RedisResult<()> = pair.redis(node).set(format!("probe-{tag}-{node}"), node);
        if node == primary {
            written.unwrap_or_else(|e| panic!("{tag}: the primary {node} refused a write: {e}"));
        } else {
            assert!(written.is_err(), "{tag}: {node} (not the primary) acknowledged a write: {status}");
        }
    }
}

/// Both nodes' digests equal, through `hotpair verify [--full] --json`.
fn assert_verify_equal(pair: &Pair, full: bool) -> Value {
    let args: &[&str] = if full { &["verify", "--full"] } else { &["verify"] };
    let (code, report) = run_json(pair, args);
    assert_eq!(code, 0, "verify: {report}");
    assert_eq!(report["details"]["equal"], true, "verify: {report}");
    if full {
        assert_eq!(report["details"]["full_matches"], true, "verify --full: {report}");
    }
    report
}

/// The values of `keys` on `node` (MGET in chunks).
fn values_on(pair: &Pair, node: &str, keys: &[String]) -> Vec<Option<String>> {
    let mut connection = pair.redis(node);
    let mut values = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(500) {
        let got: Vec<Option<String>> = if chunk.len() == 1 {
            vec![connection.get(&chunk[0]).expect("GET")]
        } else {
            connection.mget(chunk).expect("MGET")
        };
        values.extend(got);
    }
    values
}

/// `PREFIX-i` holds `i` on `node`, for every i below `count` (keys written with `set(format!("PREFIX-{i}"), i)`).
fn assert_numbered_values_on(pair: &Pair, node: &str, prefix: &str, count: usize) {
    let keys: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    let values = values_on(pair, node, &keys);
    assert!(values.iter().enumerate().all(|(i, v)| v.as_deref() == Some(i.to_string().as_str())), "{values:?}");
}

/// Every (key, value) in `acked` reads back from `node`.
fn assert_acked_on(pair: &Pair, node: &str, acked: &[(String, String)], tag: &str) {
    let keys: Vec<String> = acked.iter().map(|(k, _)| k.clone()).collect();
    let values = values_on(pair, node, &keys);
    let lost: Vec<&String> = acked
        .iter()
        .zip(&values)
        .filter(|((_, v), got)| got.as_deref() != Some(v.as_str()))
        .map(|((k, _), _)| k)
        .collect();
    assert!(
        lost.is_empty(),
        "{tag}: {} of {} acknowledged writes missing on {node}: {lost:?}",
        lost.len(),
        acked.len()
    );
}

// ---------------------------------------------------------------------------------------------
// A light write load that follows the primary.

struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, String)>>>,
    handle: Option<JoinHandle<()>>,
}

impl Load {
    /// One connection writing fresh keys `PREFIX-i` to whichever node takes them (it moves to
    /// the other node on any error), about 200 a second; acknowledged writes are recorded.
    fn start(pair: &Pair, prefix: &str) -> Load {
        let addresses: [SocketAddr; 2] = [pair.data_address(PRIMARY), pair.data_address(BACKUP)];
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (stop2, acked2, prefix) = (stop.clone(), acked.clone(), prefix.to_string());
        let handle = std::thread::spawn(move || {
            let mut target = 0;
            let mut connection: Option<redis::Connection> = None;
            let mut i = 0u64;
            while !stop2.load(Ordering::SeqCst) {
                if connection.is_none() {
                    let client = redis::Client::open(format!("redis://{}/", addresses[target])).expect("URL");
                    match client.get_connection_with_timeout(Duration::from_secs(1)) {
                        Ok(c) => {
                            c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
                            c.set_write_timeout(Some(Duration::from_secs(5))).expect("timeout");
                            connection = Some(c);
                        }
                        Err(_) => {
                            target ^= 1;
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    }
                }
                let (key, value) = (format!("{prefix}-{i}"), format!("value-{i}"));
                i += 1;
                let written: RedisResult<()> = connection.as_mut().expect("connection").set(&key, &value);
                match written {
                    Ok(()) => acked2.lock().unwrap().push((key, value)),
                    Err(_) => {
                        connection = None;
                        target ^= 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Load { stop, acked, handle: Some(handle) }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn acked(&self) -> Vec<(String, String)> {
        self.acked.lock().unwrap().clone()
    }

    /// Waits until `more` writes beyond those acknowledged now are acknowledged.
    fn wait_more(&self, more: usize, what: &str) {
        let target = self.count() + more;
        let deadline = Instant::now() + DEADLINE;
        while self.count() < target {
            assert!(
                Instant::now() < deadline,
                "{what}: the writer got only {} of {target} acknowledgements",
                self.count()
            );
            std::thread::sleep(POLL);
        }
    }

    fn stop(mut self) -> Vec<(String, String)> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().expect("running").join().expect("the writer thread panicked");
        self.acked()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Switchover.

/// One switchover to `to` through the CLI: exit 0, every phase reported, roles and epoch swapped.
fn switchover_to(pair: &mut Pair, to: &str, epoch_before: u64) -> Value {
    let (code, report) = run_json(pair, &["switchover", "--to", to, "--timeout", "5s"]);
    assert_eq!(code, 0, "switchover to {to}: {report}");
    assert_phases(&report, &["preflight", "drain", "wait-applied", "demote", "promote", "reverse", "verify"]);
    assert_eq!(report["details"]["to"], to, "{report}");
    assert_eq!(report["details"]["from"], other(to), "{report}");
    assert_eq!(report["details"]["epoch"], epoch_before + 1, "{report}");
    assert_eq!(role_of(pair, to), ("primary".to_string(), epoch_before + 1));
    assert_eq!(role_of(pair, other(to)), ("backup".to_string(), epoch_before + 1));
    report
}

#[test]
fn switchover_both_ways_under_load_loses_no_acknowledged_write() {
    // At `durable`, with a writer running: a → b then b → a. Each switchover exits 0 with all its
    // phases, swaps roles and raises the epoch by one; every write acknowledged before it reads
    // back from the new primary; at the end verify says equal and nothing acknowledged is lost.
    let mut pair = Pair::start_with(SyncLevel::Durable, fast());
    let load = Load::start(&pair, "so");
    load.wait_more(30, "before the first switchover");

    switchover_to(&mut pair, BACKUP, 1);
    assert_acked_on(&pair, BACKUP, &load.acked(), "after a → b");
    wait_following(&mut pair, BACKUP);
    load.wait_more(30, "writes on b");

    switchover_to(&mut pair, PRIMARY, 2);
    assert_acked_on(&pair, PRIMARY, &load.acked(), "after b → a");
    wait_following(&mut pair, PRIMARY);
    load.wait_more(30, "writes on a again");
    let acked = load.stop();

    wait_caught_up_at(&mut pair, PRIMARY);
    assert_verify_equal(&pair, false);
    assert_acked_on(&pair, PRIMARY, &acked, "at the end, primary");
    assert_acked_on(&pair, BACKUP, &acked, "at the end, backup");
    assert_one_writer(&pair, PRIMARY, "end");
}

// ---------------------------------------------------------------------------------------------
// 2. Switchover refusals.

/// a primary and b backup in epoch 1, a still taking writes.
fn assert_unchanged(pair: &Pair, tag: &str) {
    assert_eq!(role_of(pair, PRIMARY), ("primary".to_string(), 1), "{tag}: a changed");
    assert_eq!(role_of(pair, BACKUP), ("backup".to_string(), 1), "{tag}: b changed");
    let status = pair.node_status(PRIMARY);
    assert_eq!(status["writes"]["accepting"], true, "{tag}: a does not take writes: {status}");
    assert!(status["orchestration"].is_null(), "{tag}: a refused run left progress behind: {status}");
}

#[test]
fn switchover_refusals_change_nothing() {
    // Each refusal exits 1 and leaves roles, epochs and writes as they were: `--to` the current
    // primary; replication stopped (the backup is not connected); the backup paused by SIGSTOP.
    // `--dry-run` reports readiness (exit 0) and changes nothing either.
    let mut pair = Pair::start_with(SyncLevel::Async, fast());
    let _: () = pair.redis(PRIMARY).set("k", "1").unwrap();
    pair.wait_caught_up();

    let (code, report) = run_json(&pair, &["switchover", "--to", PRIMARY]);
    assert_eq!(code, 1, "--to the primary: {report}");
    assert!(report["outcome"].as_str().unwrap().contains("already the primary"), "{report}");
    assert_unchanged(&pair, "--to the primary");

    let (code, report) = run_json(&pair, &["switchover", "--dry-run"]);
    assert_eq!(code, 0, "--dry-run: {report}");
    assert_eq!(report["details"]["ready"], true, "{report}");
    assert!(report["outcome"].as_str().unwrap().contains("dry run"), "{report}");
    assert_eq!(phase_names(&report), ["preflight"], "a dry run ran more than preflight: {report}");
    assert_unchanged(&pair, "--dry-run");
    let _: () = pair.redis(PRIMARY).set("after-dry-run", "1").expect("a takes writes after the dry run");

    pair.hotpair_ok(&["replicate", "stop"]);
    pair.wait_for("both sides to see the link down", |s| {
        s["nodes"][PRIMARY]["peer"]["connected"] == false && s["nodes"][BACKUP]["peer"]["connected"] == false
    });
    let (code, report) = run_json(&pair, &["switchover"]);
    assert_eq!(code, 1, "replication stopped: {report}");
    assert!(report["outcome"].as_str().unwrap().contains("not connected"), "{report}");
    assert_unchanged(&pair, "replication stopped");
    pair.hotpair_ok(&["replicate", "start"]);
    pair.wait_ready();

    pair.pause(BACKUP);
    let (code, report) = run_json(&pair, &["switchover"]);
    pair.resume(BACKUP);
    assert_eq!(code, 1, "backup paused: {report}");
    let named = format!("{BACKUP} is unreachable");
    assert!(report["outcome"].as_str().unwrap().contains(&named), "the refusal does not name b: {report}");
    assert_unchanged(&pair, "backup paused");
    pair.wait_ready();
    let _: () = pair.redis(PRIMARY).set("after-pause", "1").unwrap();
    pair.wait_caught_up();
}

// ---------------------------------------------------------------------------------------------
// 3. Failover and fencing.

#[test]
fn failover_refuses_a_healthy_primary_and_forced_failover_fences_it() {
    // failover --to b while a is healthy: exit 1, nothing changed. With --force: exit 0, b is
    // primary of epoch 2 and a is fenced (status says so, a SET on it errors). After rejoin a
    // follows b, and the write taken before the failover is still there.
    let mut pair = Pair::start_with(SyncLevel::Durable, fast());
    let _: () = pair.redis(PRIMARY).set("before", "1").unwrap();
    pair.wait_caught_up();

    let (code, report) = run_json(&pair, &["failover", "--to", BACKUP]);
    assert_eq!(code, 1, "failover with a healthy primary: {report}");
    assert!(report["outcome"].as_str().unwrap().contains("--force"), "{report}");
    assert_eq!(role_of(&pair, PRIMARY), ("primary".to_string(), 1));
    assert_eq!(role_of(&pair, BACKUP), ("backup".to_string(), 1));
    let _: () = pair.redis(PRIMARY).set("still", "1").expect("a still takes writes after the refusal");

    let (code, report) = run_json(&pair, &["failover", "--to", BACKUP, "--force"]);
    assert_eq!(code, 0, "forced failover: {report}");
    assert_phases(&report, &["preflight", "promote", "fence"]);
    assert_eq!(report["details"]["epoch"], 2, "{report}");
    assert_eq!(role_of(&pair, BACKUP), ("primary".to_string(), 2));
    assert_eq!(role_of(&pair, PRIMARY).0, "fenced");
    let refused: RedisResult<()> = pair.redis(PRIMARY).set("on-fenced", "x");
    assert!(refused.is_err(), "the fenced old primary acknowledged a write");

    let (code, report) = run_json(&pair, &["rejoin", PRIMARY]);
    assert_eq!(code, 0, "rejoin a: {report}");
    wait_following(&mut pair, BACKUP);
    let _: () = pair.redis(BACKUP).set("after", "2").expect("b takes writes with a following");
    wait_caught_up_at(&mut pair, BACKUP);
    for node in [PRIMARY, BACKUP] {
        let values = values_on(&pair, node, &["before".into(), "still".into(), "after".into(), "on-fenced".into()]);
        assert_eq!(values, [Some("1".into()), Some("1".into()), Some("2".into()), None], "{node}");
    }
    assert_one_writer(&pair, BACKUP, "after rejoin");
    assert_verify_equal(&pair, false);
}

/// How long the slow link of [`welcome_in_flight`] holds every chunk, each way.
const LINK_DELAY: Duration = Duration::from_millis(1500);

/// Puts a proxy that holds every chunk [`LINK_DELAY`] on b's link to a, lets a write `lag`
/// records b does not have, starts replication and returns once a has welcomed b: the welcome
/// (and the records after it) reach b `LINK_DELAY` after the returned instant. The proxy lives on
/// the returned runtime.
fn welcome_in_flight(pair: &mut Pair, lag: usize) -> (tokio::runtime::Runtime, hotpair::drill::proxy::Proxy, Instant) {
    let (runtime, proxy) = proxy_on_the_link(pair);
    let mut a = pair.redis(PRIMARY);
    for i in 0..lag {
        let _: () = a.set(format!("lag-{i}"), i).unwrap();
    }
    proxy.set_delay(LINK_DELAY);

    let welcomed_before = pair.log(PRIMARY).matches("backup connected; shipping").count();
    pair.hotpair_ok(&["replicate", "start"]);
    let deadline = Instant::now() + DEADLINE;
    while pair.log(PRIMARY).matches("backup connected; shipping").count() == welcomed_before {
        assert!(Instant::now() < deadline, "a never welcomed b through the slow link");
        std::thread::sleep(Duration::from_millis(5));
    }
    (runtime, proxy, Instant::now())
}

/// Restarts b so that it dials a through a fault proxy (a's `peer_via`), with replication
/// stopped on both nodes; `replicate start` resumes it through the proxy. The proxy lives on the
/// returned runtime.
fn proxy_on_the_link(pair: &mut Pair) -> (tokio::runtime::Runtime, hotpair::drill::proxy::Proxy) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime for the proxy");
    let proxy = runtime
        .block_on(hotpair::drill::proxy::Proxy::start(pair.control_address(PRIMARY)))
        .expect("start the proxy in front of a's control port");
    // b reads `peer_via` at its start; `replicate stop` holds across that start.
    pair.hotpair_ok(&["replicate", "stop"]);
    pair.wait_for("both sides to see the link down", |s| {
        s["nodes"][PRIMARY]["peer"]["connected"] == false && s["nodes"][BACKUP]["peer"]["connected"] == false
    });
    pair.stop(BACKUP);
    let text = std::fs::read_to_string(&pair.pair_file).expect("read pair.toml");
    let table = format!("[nodes.{PRIMARY}]\n");
    assert!(text.contains(&table), "pair.toml has no {table}");
    let via = format!("{table}peer_via = \"{}\"\n", proxy.listen_address());
    std::fs::write(&pair.pair_file, text.replacen(&table, &via, 1)).expect("write pair.toml");
    pair.restart(BACKUP);
    (runtime, proxy)
}

#[test]
fn a_rejoin_whose_node_cannot_reach_the_primary_says_so_instead_of_waiting_out_its_limit() {
    // b's link to a is cut (packets dropped) and a takes 10 writes b never gets. `rejoin b` gets
    // through its rejoin phase (admin traffic goes direct), but b cannot follow: the catch-up
    // gives up after 30 s without progress (not the 10 min limit), exit 3, naming what is wrong.
    // Once the link heals, b follows and catches up by itself.
    let mut pair = Pair::start_with(SyncLevel::Async, fast());
    let (_runtime, proxy) = proxy_on_the_link(&mut pair);
    pair.hotpair_ok(&["replicate", "start"]);
    pair.wait_ready();
    proxy.partition(hotpair::drill::proxy::PartitionMode::Drop);
    pair.wait_for_node(BACKUP, "b to see its session gone", |s| s["following"] == false);
    let mut a = pair.redis(PRIMARY);
    for i in 0..10 {
        let _: () = a.set(format!("cut-{i}"), i).unwrap();
    }

    let started = Instant::now();
    let (code, report) = run_json(&pair, &["rejoin", BACKUP]);
    assert_eq!(code, 3, "a rejoin that cannot catch up stops part-way: {report}");
    let outcome = report["outcome"].as_str().unwrap();
    assert!(outcome.contains("did not catch up") && outcome.contains("is not following a"), "{report}");
    assert!(started.elapsed() < Duration::from_secs(90), "gave up only after {:?}", started.elapsed());

    proxy.heal();
    wait_following(&mut pair, PRIMARY);
    wait_caught_up_at(&mut pair, PRIMARY);
    assert_numbered_values_on(&pair, BACKUP, "cut", 10);
}

#[test]
fn a_backup_promoted_while_its_hello_is_in_flight_does_not_follow_on_the_late_welcome() {
    // a's welcome to b's hello is still on the slow link when `failover --to b --force` promotes
    // b. The new primary refuses it: it never shows `following`, and takes writes.
    let mut pair = Pair::start_with(SyncLevel::Async, fast());
    let (_runtime, _proxy, welcomed) = welcome_in_flight(&mut pair, 10);
    let (code, report) = run_json(&pair, &["failover", "--to", BACKUP, "--force"]);
    assert_eq!(code, 0, "forced failover: {report}");
    assert!(welcomed.elapsed() < LINK_DELAY, "the failover outlasted the welcome's trip: {report}");
    assert_eq!(role_of(&pair, BACKUP), ("primary".to_string(), 2));
    // Past the welcome's arrival and the old primary's close of that session (one more trip).
    while welcomed.elapsed() < LINK_DELAY * 3 {
        let status = pair.node_status(BACKUP);
        assert_eq!(status["role"], "primary", "{status}");
        assert_ne!(status["following"], true, "the new primary follows the old one: {status}");
        std::thread::sleep(POLL);
    }
    let log = pair.log(BACKUP);
    assert!(
        log.contains("its records are refused") || log.contains("not following"),
        "b never refused the late welcome"
    );
    let _: () = pair.redis(BACKUP).set("after", "2").expect("the new primary takes writes");
}

#[test]
fn a_welcome_that_arrives_after_a_rejoin_began_is_dropped_and_the_backup_still_catches_up() {
    // a's welcome to b's hello (b 20 records behind) is still on the slow link when `rejoin b`
    // runs. The welcome was computed from what b held before the rejoin, so b drops that session
    // rather than follow on it, reconnects, and catches up: every record, equal digests. (A
    // session that followed on such a welcome while the rejoin rewound b once had the records it
    // received rewound as a divergence, and the primary then refused b as a restored copy.)
    let mut pair = Pair::start_with(SyncLevel::Async, fast());
    let (_runtime, proxy, _welcomed) = welcome_in_flight(&mut pair, 20);
    let rejoin = std::thread::scope(|scope| {
        let rejoin = scope.spawn(|| run_json(&pair, &["rejoin", BACKUP]));
        pair.wait_log(BACKUP, "during the hello; not following", "b to drop the welcome a rejoin overtook");
        proxy.set_delay(Duration::ZERO);
        rejoin.join().expect("the rejoin thread")
    });
    let (code, report) = rejoin;
    assert_eq!(code, 0, "rejoin of a lagging backup with its welcome in flight: {report}");
    assert_eq!(report["details"]["rewound"], 0, "nothing b holds is off a's history: {report}");
    wait_following(&mut pair, PRIMARY);
    assert_numbered_values_on(&pair, BACKUP, "lag", 20);
    assert_verify_equal(&pair, false);
}

#[test]
fn failover_after_sigkill_and_the_restarted_old_primary_fences_itself() {
    // SIGKILL the primary; failover --to b succeeds (exit 0, epoch 2) and keeps every write
    // acknowledged at `durable`. The old primary, restarted, learns of epoch 2 and fences itself:
    // status says `fenced` and a SET on it errors; b keeps taking writes.
    let mut pair = Pair::start_with(SyncLevel::Durable, fast());
    let load = Load::start(&pair, "fo");
    load.wait_more(30, "before the kill");
    pair.kill(PRIMARY);
    let acked = load.stop();

    let (code, report) = run_json(&pair, &["failover", "--to", BACKUP]);
    assert_eq!(code, 0, "failover after SIGKILL: {report}");
    assert_eq!(report["details"]["epoch"], 2, "{report}");
    assert_eq!(role_of(&pair, BACKUP), ("primary".to_string(), 2));
    assert_acked_on(&pair, BACKUP, &acked, "after the failover");

    pair.restart(PRIMARY);
    pair.wait_for_node(PRIMARY, "the restarted old primary to fence itself", |s| s["role"] == "fenced");
    let refused: RedisResult<()> = pair.redis(PRIMARY).set("on-old", "x");
    assert!(refused.is_err(), "the restarted old primary acknowledged a write");
    let status = pair.status();
    assert_eq!(status["nodes"][BACKUP]["role"], "primary", "{status}");
    assert_ne!(status["nodes"][PRIMARY]["writes"]["accepting"], true, "{status}");
    assert_eq!(pair.redis(BACKUP).get::<_, Option<String>>("on-old").unwrap(), None);
    // The new primary heard the primary of the superseded epoch probe: a stale-primary
    // incident (a node to rejoin), not a split-brain.
    let incidents = status["nodes"][BACKUP]["incidents"].as_array().cloned().unwrap_or_default();
    assert!(incidents.iter().any(|i| i["kind"] == "stale-primary"), "no stale-primary incident on b: {incidents:?}");
    assert!(!incidents.iter().any(|i| i["kind"] == "split-brain"), "a split-brain incident on b: {incidents:?}");
}

#[test]
fn both_nodes_down_and_only_the_primary_back_a_forced_failover_to_it_resumes_writes() {
    // kill -9 both; only a comes back, and waits for b's word (TRYAGAIN). Without --force the
    // failover names the way out; with it a takes epoch 2 alone and writes resume, every
    // acknowledged write kept. b, back later, never takes writes: it rejoins behind a. (At
    // `durable` a write needs the backup: degrade-after lets a acknowledge without it.)
    let options = Options { notify_command: Some(common::NOTIFY), on_peer_loss: Some("degrade-after:300ms"), ..fast() };
    let mut pair = Pair::start_with(SyncLevel::Durable, options);
    let load = Load::start(&pair, "both");
    load.wait_more(30, "before the kills");
    pair.kill(BACKUP);
    pair.kill(PRIMARY);
    let acked = load.stop();
    pair.restart(PRIMARY);
    pair.wait_for_node(PRIMARY, "a waiting for b", |s| s["awaiting_peer"] == true);
    let waiting: RedisResult<()> = pair.redis(PRIMARY).set("while-waiting", "x");
    assert!(waiting.is_err(), "a restarted primary took a write before its peer's word");

    let (code, report) = run_json(&pair, &["failover", "--to", PRIMARY]);
    assert_eq!(code, 1, "failover without --force: {report}");
    let outcome = report["outcome"].as_str().unwrap_or_default();
    assert!(outcome.contains("--force") && outcome.contains("waiting for b"), "{report}");

    let (code, report) = run_json(&pair, &["failover", "--to", PRIMARY, "--force"]);
    assert_eq!(code, 0, "forced failover to the restarted primary: {report}");
    assert_eq!(report["details"]["epoch"], 2, "{report}");
    assert_eq!(report["details"]["forced"], true, "{report}");
    let outcome = report["outcome"].as_str().unwrap_or_default();
    assert!(outcome.contains("had acknowledged LSN") && outcome.contains("hotpair rejoin b"), "{report}");
    assert_eq!(role_of(&pair, PRIMARY), ("primary".to_string(), 2));
    let _: () = pair.redis(PRIMARY).set("after-force", "1").expect("writes resume on a");
    assert_acked_on(&pair, PRIMARY, &acked, "after the forced failover");
    let forced =
        common::wait_notified(pair.dir(), "forced-promotion on a", common::event("forced-promotion", PRIMARY, "open"));
    assert_eq!(forced["severity"], "critical", "{forced}");

    // b comes back in epoch 1: it never takes writes; it follows a, or, if it holds records a
    // lost, is refused as diverged until rejoined.
    pair.restart(BACKUP);
    let status = pair.wait_for("b following a, or diverged", |s| {
        let b = &s["nodes"][BACKUP];
        (b["role"] == "backup" && b["epoch"] == 2 && b["following"] == true) || b["remote_journal"] == "diverged"
    });
    assert_ne!(status["nodes"][BACKUP]["writes"]["accepting"], true, "{status}");
    let refused: RedisResult<()> = pair.redis(BACKUP).set("on-b", "x");
    assert!(refused.is_err(), "the old backup took a write");
    if status["nodes"][BACKUP]["remote_journal"] == "diverged" {
        pair.hotpair_ok(&["rejoin", BACKUP]);
    }
    wait_following(&mut pair, PRIMARY);
    assert_one_writer(&pair, PRIMARY, "after b is back");
    common::wait_notified(
        pair.dir(),
        "forced-promotion resolved",
        common::event("forced-promotion", PRIMARY, "resolved"),
    );
    assert_eq!(pair.redis(BACKUP).get::<_, Option<String>>("after-force").unwrap().as_deref(), Some("1"));
}

// ---------------------------------------------------------------------------------------------
// 4. Rejoin with an orphaned tail (the async-mode failover of Issue 4).

/// Every transaction in the node's orphans files: LSN → (key, after-image data) of each op.
fn orphans(pair: &Pair, node: &str) -> BTreeMap<u64, Vec<(String, Option<String>)>> {
    let dir = pair.node_dir(node).join("orphans");
    let mut found = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(&dir) else { return found };
    for entry in entries {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "jsonl") {
            continue;
        }
        for line in std::fs::read_to_string(&path).expect("read the orphans file").lines() {
            let record: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: {e}: {line}", path.display()));
            let ops = record["ops"]
                .as_array()
                .expect("ops")
                .iter()
                .map(|op| {
                    (op["key"].as_str().expect("key").to_string(), op["after"]["data"].as_str().map(str::to_string))
                })
                .collect();
            found.insert(record["lsn"].as_u64().expect("lsn"), ops);
        }
    }
    found
}

/// Shipping stopped on the primary a, `n` writes `orphan-i = o-i` there at `async` (journalled,
/// never shipped), a SIGKILLed, b failed over to. Returns the LSNs of those writes.
fn orphan_tail_then_failover(pair: &mut Pair, n: u64) -> Vec<u64> {
    let _: () = pair.redis(PRIMARY).set("base", "0").unwrap();
    let base = pair.wait_caught_up();
    pair.hotpair_ok(&["replicate", "stop", PRIMARY]);
    pair.wait_for("both sides to see the link down", |s| {
        s["nodes"][PRIMARY]["peer"]["connected"] == false && s["nodes"][BACKUP]["peer"]["connected"] == false
    });
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.set(format!("orphan-{i}"), format!("o-{i}")).ignore();
    }
    let _: () = pipe.query(&mut pair.redis(PRIMARY)).expect("async writes with shipping stopped");
    let status = pair.node_status(PRIMARY);
    assert_eq!(status["lsn"], base + n, "one LSN per write: {status}");
    assert_eq!(pair.node_status(BACKUP)["lsn"], base, "the backup moved with shipping stopped");
    pair.kill(PRIMARY);
    let (code, report) = run_json(pair, &["failover", "--to", BACKUP]);
    assert_eq!(code, 0, "failover: {report}");
    (base + 1..=base + n).collect()
}

#[test]
fn rejoin_after_async_failover_saves_exactly_the_unshipped_tail_as_orphans() {
    // Writes on a that never reached b are exactly the transactions in a's orphans file (LSNs,
    // keys, after-images); after rejoin a's data equals b's (verify --full and key by key), the
    // orphaned keys are gone from a (or hold b's value), and a follows b as its backup.
    const N: u64 = 7;
    const M: u64 = 5;
    let mut pair = Pair::start_with(SyncLevel::Async, fast());
    let lsns = orphan_tail_then_failover(&mut pair, N);
    let mut b = pair.redis(BACKUP);
    for j in 0..M {
        let _: () = b.set(format!("new-{j}"), format!("n-{j}")).unwrap();
    }
    // b writes one of the orphaned keys too: a must end with b's value, not its own.
    let _: () = b.set("orphan-0", "from-b").unwrap();

    pair.restart(PRIMARY);
    let (code, report) = run_json(&pair, &["rejoin", PRIMARY]);
    assert_eq!(code, 0, "rejoin: {report}");
    assert_phases(&report, &["preflight", "rejoin", "catch-up", "verify"]);
    assert_eq!(report["details"]["divergence_lsn"], lsns[0] - 1, "{report}");
    assert_eq!(report["details"]["orphaned"], N, "{report}");
    let file = PathBuf::from(report["details"]["orphans_file"].as_str().expect("an orphans file"));
    assert!(
        file.starts_with(pair.node_dir(PRIMARY).join("orphans")),
        "orphans file {} not under a/orphans",
        file.display()
    );

    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the orphans file {} is not private", file.display());
    let saved = orphans(&pair, PRIMARY);
    let expected: BTreeMap<u64, Vec<(String, Option<String>)>> =
        lsns.iter().enumerate().map(|(i, lsn)| (*lsn, vec![(format!("orphan-{i}"), Some(format!("o-{i}")))])).collect();
    assert_eq!(saved, expected, "the orphans file is not exactly the unshipped tail");

    wait_following(&mut pair, BACKUP);
    let _: () = b.set("after-rejoin", "yes").unwrap();
    wait_caught_up_at(&mut pair, BACKUP);
    assert_verify_equal(&pair, true);
    let mut keys: Vec<String> = vec!["base".into(), "after-rejoin".into()];
    keys.extend((0..N).map(|i| format!("orphan-{i}")));
    keys.extend((0..M).map(|j| format!("new-{j}")));
    let on_a = values_on(&pair, PRIMARY, &keys);
    assert_eq!(on_a, values_on(&pair, BACKUP, &keys), "a and b differ after the rejoin");
    assert_eq!(on_a[2].as_deref(), Some("from-b"));
    assert!(on_a[3..2 + N as usize].iter().all(Option::is_none), "orphaned keys still on a: {on_a:?}");
    let dbsize = |node| -> i64 { redis::cmd("DBSIZE").query(&mut pair.redis(node)).unwrap() };
    assert_eq!(dbsize(PRIMARY), dbsize(BACKUP));
    assert_one_writer(&pair, BACKUP, "after the rejoin");
}

// ---------------------------------------------------------------------------------------------
// 5. Switchback.

#[test]
fn switchback_rejoins_and_returns_to_the_preferred_primary() {
    // After a SIGKILL of a and a failover to b (epoch 2), with a restarted and writes on b:
    // switchback rejoins a, switches over, and a (first in the pair file) is primary of epoch 3
    // with b following; every write taken by b is on a.
    let mut pair = Pair::start_with(SyncLevel::Async, fast());
    let _: () = pair.redis(PRIMARY).set("on-a", "1").unwrap();
    pair.wait_caught_up();
    pair.kill(PRIMARY);
    let (code, report) = run_json(&pair, &["failover", "--to", BACKUP]);
    assert_eq!(code, 0, "failover: {report}");
    let mut b = pair.redis(BACKUP);
    let keys: Vec<String> = (0..20).map(|i| format!("on-b-{i}")).collect();
    for key in &keys {
        let _: () = b.set(key, "b").unwrap();
    }
    pair.restart(PRIMARY);

    let (code, report) = run_json(&pair, &["switchback", "--timeout", "5s"]);
    assert_eq!(code, 0, "switchback: {report}");
    assert_phases(&report, &["rejoin", "catch-up", "drain", "promote", "reverse"]);
    assert_eq!(role_of(&pair, PRIMARY), ("primary".to_string(), 3));
    assert_eq!(role_of(&pair, BACKUP), ("backup".to_string(), 3));
    wait_following(&mut pair, PRIMARY);
    assert!(values_on(&pair, PRIMARY, &keys).iter().all(|v| v.as_deref() == Some("b")), "b's writes missing on a");
    assert_eq!(pair.redis(PRIMARY).get::<_, Option<String>>("on-a").unwrap().as_deref(), Some("1"));
    assert_one_writer(&pair, PRIMARY, "after switchback");
    wait_caught_up_at(&mut pair, PRIMARY);
    assert_verify_equal(&pair, false);
}

// ---------------------------------------------------------------------------------------------
// 6. Rejoin when the journal range is gone.

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("journal directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "hpj"))
        .collect();
    found.sort();
    found
}

/// b behind a by records that are only in a's older local segments, which are then deleted
/// (a stopped meanwhile); both restarted, shipping started.
fn lose_the_journal_range(pair: &mut Pair) {
    let _: () = pair.redis(PRIMARY).set("seed", "0").unwrap();
    pair.wait_caught_up();
    pair.hotpair_ok(&["replicate", "stop"]);
    pair.wait_for("both sides to see the link down", |s| {
        s["nodes"][PRIMARY]["peer"]["connected"] == false && s["nodes"][BACKUP]["peer"]["connected"] == false
    });
    let mut a = pair.redis(PRIMARY);
    for i in 0..20 {
        let _: () = a.set(format!("gone-{i}"), i).unwrap();
    }
    pair.hotpair_ok(&["replicate", "reopen-log", PRIMARY]);
    let _: () = a.set("newest", "1").unwrap();
    drop(a);
    pair.stop(BACKUP);
    pair.stop(PRIMARY);
    let local = pair.node_dir(PRIMARY).join("journal/local");
    let all = segments(&local);
    assert!(all.len() >= 2, "reopen-log left {} segment(s)", all.len());
    for old in &all[..all.len() - 1] {
        std::fs::remove_file(old).expect("delete an old segment");
    }
    pair.restart(PRIMARY);
    pair.restart(BACKUP);
    pair.hotpair_ok(&["replicate", "start"]);
}

#[test]
fn rejoin_refuses_when_the_needed_journal_range_is_gone() {
    // The records b needs are gone from a's journals: `rejoin b` exits 1, names
    // --allow-full-copy, and changes nothing (b stays backup of epoch 1, a primary).
    let mut pair = Pair::start_with(SyncLevel::Async, fast());
    lose_the_journal_range(&mut pair);
    let (code, report) = run_json(&pair, &["rejoin", BACKUP]);
    assert_eq!(code, 1, "rejoin with the journal range gone: {report}");
    assert!(report["outcome"].as_str().unwrap().contains("--allow-full-copy"), "{report}");
    assert_eq!(role_of(&pair, BACKUP), ("backup".to_string(), 1));
    assert_eq!(role_of(&pair, PRIMARY), ("primary".to_string(), 1));
}

#[test]
fn rejoin_with_allow_full_copy_rebuilds_the_backup_when_the_journal_range_is_gone() {
    // As above, with --allow-full-copy: exit 0, b follows a with every key and equal digests.
    let mut pair = Pair::start_with(SyncLevel::Async, fast());
    lose_the_journal_range(&mut pair);
    let (code, report) = run_json(&pair, &["rejoin", BACKUP, "--allow-full-copy"]);
    assert_eq!(code, 0, "rejoin --allow-full-copy: {report}");
    assert_eq!(report["details"]["full_copy"], true, "{report}");
    wait_following(&mut pair, PRIMARY);
    wait_caught_up_at(&mut pair, PRIMARY);
    assert_numbered_values_on(&pair, BACKUP, "gone", 20);
    assert_verify_equal(&pair, true);
}

#[test]
fn a_backup_whose_data_directory_is_lost_is_rebuilt_by_reinit_and_rejoin() {
    // b's disk is replaced: `reinit b` refuses while b's directory still holds anything, then
    // makes an empty one (a new incarnation). a refuses the new b as a second installation
    // until `rejoin b --allow-full-copy` accepts it; b then catches up with every write.
    let mut pair = Pair::start_with(SyncLevel::Durable, fast());
    let mut a = pair.redis(PRIMARY);
    for i in 0..50 {
        let _: () = a.set(format!("kept-{i}"), i).unwrap();
    }
    pair.wait_caught_up();
    pair.kill(BACKUP);
    let out = pair.hotpair(&["reinit", BACKUP]);
    assert_eq!(out.status.code(), Some(1), "reinit over a live directory: {}", common::stderr(&out));
    assert!(common::stderr(&out).contains("not empty"), "{}", common::stderr(&out));
    std::fs::remove_dir_all(pair.node_dir(BACKUP)).expect("lose b's data directory");
    pair.hotpair_ok(&["reinit", BACKUP]);
    pair.restart(BACKUP);

    let (code, report) = run_json(&pair, &["rejoin", BACKUP]);
    assert_eq!(code, 1, "rejoin of a rebuilt node without --allow-full-copy: {report}");
    assert!(report["outcome"].as_str().is_some_and(|o| o.contains("--allow-full-copy")), "{report}");
    rejoin_rebuilt_backup(&mut pair, &mut a);
    assert_numbered_values_on(&pair, BACKUP, "kept", 50);
    assert_verify_equal(&pair, true);
    let status = pair.node_status(PRIMARY);
    let open: Vec<&str> =
        status["incidents"].as_array().into_iter().flatten().filter_map(|i| i["kind"].as_str()).collect();
    assert!(!open.contains(&"second-installation"), "accepting b closes the incident: {open:?}");
}

#[test]
fn a_backup_restored_from_an_old_copy_is_refused_though_its_incarnation_is_right() {
    // A copy of b's directory taken early comes back after b acknowledged 200 more durable
    // writes: same incarnation, older position. a refuses it as a second installation, also
    // after both were SIGKILLed (the acknowledged position is saved, not only held in memory),
    // and the restarted a takes no writes on the restored copy's word. reinit + rejoin
    // --allow-full-copy rebuild b with every acknowledged write.
    let mut pair = Pair::start_with(SyncLevel::Durable, fast());
    let mut a = pair.redis(PRIMARY);
    for i in 0..10 {
        let _: () = a.set(format!("early-{i}"), i).unwrap();
    }
    pair.wait_caught_up();
    pair.stop(BACKUP);
    let copy = pair.dir().join("b-copy");
    copy_dir(&pair.node_dir(BACKUP), &copy);
    pair.restart(BACKUP);
    pair.wait_ready();
    let mut a = pair.redis(PRIMARY);
    for i in 0..200 {
        let _: () = a.set(format!("late-{i}"), i).expect("a durable write b acknowledges");
    }
    pair.kill(BACKUP);
    pair.wait_for_node(PRIMARY, "a to see b gone", |s| s["peer"]["connected"] == false);
    pair.kill(PRIMARY);
    std::fs::remove_dir_all(pair.node_dir(BACKUP)).expect("remove b's directory");
    copy_dir(&copy, &pair.node_dir(BACKUP));
    pair.restart(PRIMARY);
    pair.restart(BACKUP);

    let refused = pair.wait_for_node(PRIMARY, "a to refuse the restored b", |s| {
        s["incidents"].as_array().into_iter().flatten().any(|i| i["kind"] == "second-installation")
    });
    let incident =
        refused["incidents"].as_array().unwrap().iter().find(|i| i["kind"] == "second-installation").unwrap();
    assert!(incident["message"].as_str().is_some_and(|m| m.contains("behind LSN")), "{incident}");
    assert_eq!(refused["peer"]["connected"], false, "the restored b is not a's backup: {refused}");
    let mut a = pair.redis(PRIMARY);
    let write: RedisResult<()> = a.set("on-the-copy's-word", "1");
    assert!(write.is_err(), "the restarted a must not take writes on the restored copy's confirmation");
    // A plain rejoin of the restored copy is refused up front, saying what it is.
    let (code, report) = run_json(&pair, &["rejoin", BACKUP]);
    assert_eq!(code, 1, "rejoin of a restored copy: {report}");
    assert!(report["outcome"].as_str().is_some_and(|o| o.contains("restored copy")), "{report}");

    pair.kill(BACKUP);
    std::fs::remove_dir_all(pair.node_dir(BACKUP)).expect("lose the restored copy");
    pair.hotpair_ok(&["reinit", BACKUP]);
    pair.restart(BACKUP);
    rejoin_rebuilt_backup(&mut pair, &mut a);
    assert_numbered_values_on(&pair, BACKUP, "late", 200);
    assert_verify_equal(&pair, true);
}

/// `rejoin b --allow-full-copy` of a rebuilt b: it succeeds, b follows a, and a takes a durable
/// write with it and b catches up.
fn rejoin_rebuilt_backup(pair: &mut Pair, a: &mut redis::Connection) {
    let (code, report) = run_json(pair, &["rejoin", BACKUP, "--allow-full-copy"]);
    assert_eq!(code, 0, "rejoin --allow-full-copy of the rebuilt b: {report}");
    wait_following(pair, PRIMARY);
    let _: () = a.set("after", "1").expect("a takes durable writes with the rebuilt b");
    wait_caught_up_at(pair, PRIMARY);
}

// ---------------------------------------------------------------------------------------------
// A full copy cut off by a SIGKILL resumes where it stopped.

/// Keys of a [`FILL_VALUE_BYTES`]-byte value each: about 60 MB, fifteen copy batches — more than
/// can be in flight (socket buffers, the receiver's queue) when a test cuts the copy at a
/// quarter, so that killing the sender then leaves the copy unfinished.
const FILL_KEYS: usize = 60_000;
const FILL_VALUE_BYTES: usize = 1000;

/// a holds FILL_KEYS keys `fill-i`, only in its store (its journal keeps only the records since)
/// and a writer goes on writing under `load`; b is a rebuilt (empty) node whose copy writes
/// each batch 300 ms late
/// (`HOTPAIR_SIMULATED_COPY_DELAY`), and a `rejoin b --allow-full-copy` has begun. Returns once
/// b has stored part of the copy, not all of it, with the running rejoin CLI.
fn a_copy_under_way(pair: &mut Pair) -> (Child, Load) {
    let mut a = pair.redis(PRIMARY);
    let value = "v".repeat(FILL_VALUE_BYTES);
    for chunk in (0..FILL_KEYS).collect::<Vec<_>>().chunks(1000) {
        let pairs: Vec<(String, &str)> = chunk.iter().map(|i| (format!("fill-{i}"), value.as_str())).collect();
        let _: () = a.mset(&pairs).unwrap();
    }
    pair.wait_caught_up();
    pair.kill(BACKUP);
    std::fs::remove_dir_all(pair.node_dir(BACKUP)).expect("lose b's data directory");
    pair.hotpair_ok(&["reinit", BACKUP]);
    // And a keeps only its newest segment, so that the rebuilt b can only be copied.
    pair.hotpair_ok(&["replicate", "reopen-log", PRIMARY]);
    pair.stop(PRIMARY);
    let local = pair.node_dir(PRIMARY).join("journal/local");
    let all = segments(&local);
    for old in &all[..all.len() - 1] {
        std::fs::remove_file(old).expect("delete an old segment");
    }
    pair.restart(PRIMARY);
    pair.set_env(BACKUP, "HOTPAIR_SIMULATED_COPY_DELAY", Some("300ms"));
    pair.restart(BACKUP);
    let load = Load::start(pair, "during");
    let rejoin = spawn_cli(pair, &["rejoin", BACKUP, "--allow-full-copy", "--json"]);
    let total = FILL_KEYS as u64;
    pair.wait_for_node(BACKUP, "b to store part of the copy", |s| {
        s["full_copy"]["pairs"].as_u64().is_some_and(|done| done > 0 && done < total / 4)
    });
    // a takes writes while it is being copied (they reach b as records redone after the pairs).
    load.wait_more(5, "writes during the copy");
    (rejoin, load)
}

/// After the cut: a plain rejoin is refused (it would build on a partial store), `rejoin
/// --allow-full-copy` resumes from b's checkpoint (b's log says where), and b ends with every
/// key and every write acknowledged before, during and after the copy, digests equal.
fn resume_the_copy(pair: &mut Pair, load: Load) {
    let (code, report) = run_json(pair, &["rejoin", BACKUP]);
    assert_eq!(code, 1, "a plain rejoin over a cut-off copy: {report}");
    assert!(report["outcome"].as_str().is_some_and(|o| o.contains("--allow-full-copy")), "{report}");
    let status = pair.node_status(BACKUP);
    let resumed_at = status["full_copy"]["pairs"].as_u64().expect("b reports the copy it holds");
    assert!(resumed_at > 0, "b kept the pairs stored before the kill: {status}");
    let (code, report) = run_json(pair, &["rejoin", BACKUP, "--allow-full-copy"]);
    assert_eq!(code, 0, "the resumed copy: {report}");
    // Where it resumed (b's log): at least where b said it stood (batches queued before the cut
    // may have been stored after that status).
    let log = pair.log(BACKUP);
    let resumed: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("full copy: receiving"))
        .filter_map(|l| l.split("resumed_at=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(
        resumed.last().is_some_and(|&at| at >= resumed_at && at < FILL_KEYS as u64),
        "b's log shows the copy resuming at pair {resumed_at} or later, not from the start: {resumed:?}"
    );
    wait_following(pair, PRIMARY);
    load.wait_more(10, "writes after the resumed copy");
    let acked = load.stop();
    wait_caught_up_at(pair, PRIMARY);
    let keys: Vec<String> = (0..FILL_KEYS).map(|i| format!("fill-{i}")).collect();
    let value = "v".repeat(FILL_VALUE_BYTES);
    let missing = values_on(pair, BACKUP, &keys).iter().filter(|v| v.as_deref() != Some(value.as_str())).count();
    assert_eq!(missing, 0, "fill keys missing or wrong on b after the resumed copy");
    assert_acked_on(pair, BACKUP, &acked, "after the resumed copy");
    assert_verify_equal(pair, true);
}

#[test]
fn a_full_copy_cut_off_by_killing_the_receiver_resumes_where_it_stopped() {
    let mut pair = Pair::start_with(SyncLevel::Async, fast());
    let (mut rejoin, load) = a_copy_under_way(&mut pair);
    pair.kill(BACKUP);
    assert_ne!(wait_child(&mut rejoin), 0, "the rejoin whose node was killed fails");
    pair.set_env(BACKUP, "HOTPAIR_SIMULATED_COPY_DELAY", None);
    pair.restart(BACKUP);
    resume_the_copy(&mut pair, load);
}

#[test]
fn a_full_copy_cut_off_by_killing_the_sender_resumes_where_it_stopped() {
    let mut pair = Pair::start_with(SyncLevel::Async, fast());
    let (mut rejoin, load) = a_copy_under_way(&mut pair);
    pair.kill(PRIMARY);
    assert_ne!(wait_child(&mut rejoin), 0, "the rejoin whose primary was killed fails");
    pair.restart(PRIMARY);
    resume_the_copy(&mut pair, load);
}

/// `cp -a`: a node's data directory as a backup tool would copy it.
fn copy_dir(from: &Path, to: &Path) {
    let out = Command::new("cp").arg("-a").arg(from).arg(to).output().expect("run cp");
    assert!(out.status.success(), "cp -a {from:?} {to:?}: {}", String::from_utf8_lossy(&out.stderr));
}

// ---------------------------------------------------------------------------------------------
// 7. Crash matrix.

/// After a fault and its recovery: `primary` is the one writer, the backup follows, every
/// acknowledged write so far is on the primary, and the digests agree.
fn assert_converged(pair: &mut Pair, load: &Load, primary: &str, tag: &str) {
    wait_following(pair, primary);
    load.wait_more(10, tag);
    assert_one_writer(pair, primary, tag);
    assert_acked_on(pair, primary, &load.acked(), tag);
    wait_caught_up_at(pair, primary);
}

#[test]
fn killing_the_cli_mid_switchover_then_rerunning_converges() {
    // SIGKILL `hotpair switchover` right after it prints its drain, wait-applied and demote
    // phases; each time a re-run finishes the job (exit 0, the roles swapped). Once more after
    // drain with no re-run: the drain lease (3s) expires and the old primary takes writes again
    // in the same epoch. Under a durable writer: one writer, nothing acknowledged lost.
    let mut pair = Pair::start_with(SyncLevel::Durable, fast());
    let load = Load::start(&pair, "cli");
    load.wait_more(20, "start");
    let mut primary = PRIMARY;
    let mut epoch = 1;
    for point in ["drain", "wait-applied", "demote"] {
        let target = other(primary);
        let mut cli = spawn_cli(&pair, &["switchover", "--to", target, "--timeout", "3s"]);
        read_until(&mut cli, point);
        kill_child(&mut cli);
        // The killed run may have got as far as promote: then the re-run finds nothing to do.
        let (code, report) = run_json(&pair, &["switchover", "--to", target, "--timeout", "5s"]);
        let done_already = code == 1 && report["outcome"].as_str().unwrap().contains("already the primary");
        assert!(code == 0 || done_already, "re-run after killing the CLI at {point}: {report}");
        primary = target;
        epoch += 1;
        assert_eq!(role_of(&pair, primary), ("primary".to_string(), epoch), "after {point}");
        assert_converged(&mut pair, &load, primary, point);
    }

    let mut cli = spawn_cli(&pair, &["switchover", "--timeout", "3s"]);
    read_until(&mut cli, "drain");
    kill_child(&mut cli);
    assert_eq!(pair.node_status(primary)["role"], "draining", "the drain did not take");
    pair.wait_for_node(primary, "the drain lease to expire", |s| {
        s["role"] == "primary" && s["writes"]["accepting"] == true
    });
    assert_eq!(role_of(&pair, primary), ("primary".to_string(), epoch), "the lease expiry changed the epoch");
    assert_converged(&mut pair, &load, primary, "lease expired");
    let acked = load.stop();
    assert_acked_on(&pair, primary, &acked, "end");
    assert_verify_equal(&pair, false);
}

#[test]
fn sigkill_of_the_primary_right_after_drain_then_rerun_converges() {
    // SIGKILL the primary a as soon as the switchover prints its drain phase; the CLI fails
    // (exit 1 or 3). a restarted, `hotpair switchover` again converges: b primary of epoch 2, a
    // following, one writer, nothing acknowledged lost, equal digests.
    let mut pair = Pair::start_with(SyncLevel::Durable, fast());
    let load = Load::start(&pair, "pk");
    load.wait_more(20, "start");
    let mut cli = spawn_cli(&pair, &["switchover", "--timeout", "3s"]);
    read_until(&mut cli, "drain");
    pair.kill(PRIMARY);
    let code = wait_child(&mut cli);
    assert!(code == 1 || code == 3, "the switchover with its primary killed exited {code}");
    pair.restart(PRIMARY);
    // Restarted, a drops the dead drain and is primary again (its lease died with it); once b
    // follows it again, the same command is run again.
    wait_following(&mut pair, PRIMARY);
    assert_eq!(role_of(&pair, PRIMARY), ("primary".to_string(), 1));
    let (code, report) = run_json(&pair, &["switchover", "--timeout", "5s"]);
    assert_eq!(code, 0, "re-run: {report}");
    assert_converged(&mut pair, &load, BACKUP, "after the re-run");
    let acked = load.stop();
    assert_acked_on(&pair, BACKUP, &acked, "end");
    assert_verify_equal(&pair, false);
}

#[test]
fn sigkill_of_the_new_primary_right_after_promote_converges_on_its_restart() {
    // SIGKILL b as soon as the switchover prints its promote phase; the CLI fails part-way
    // (exit 3). b restarted: it is primary of epoch 2 and a follows it; one writer, nothing
    // acknowledged lost, equal digests.
    let mut pair = Pair::start_with(SyncLevel::Durable, fast());
    let load = Load::start(&pair, "np");
    load.wait_more(20, "start");
    let mut cli = spawn_cli(&pair, &["switchover", "--timeout", "3s"]);
    read_until(&mut cli, "promote");
    pair.kill(BACKUP);
    let code = wait_child(&mut cli);
    assert_eq!(code, 3, "the switchover with its new primary killed");
    // The message says the new primary is the node that is gone (once it blamed a instead).
    let said = stderr_of(&mut cli);
    assert!(said.contains("b was promoted") && said.contains("unreachable"), "exit 3 message: {said}");
    pair.restart(BACKUP);
    assert_converged(&mut pair, &load, BACKUP, "after b's restart");
    assert_eq!(role_of(&pair, BACKUP), ("primary".to_string(), 2));
    let acked = load.stop();
    assert_acked_on(&pair, BACKUP, &acked, "end");
    assert_verify_equal(&pair, false);
}

#[test]
fn killing_the_rejoining_node_mid_rejoin_then_rerunning_converges() {
    // The orphaned-tail scenario; SIGKILL a when `rejoin a` has saved its orphans file (the
    // rewind of its 3,000 orphaned transactions comes next), restart it, re-run rejoin: exit 0,
    // a follows b, the orphans files hold exactly the unshipped tail, and the data is equal.
    const N: u64 = 3000;
    let mut pair = Pair::start_with(SyncLevel::Async, fast());
    let lsns = orphan_tail_then_failover(&mut pair, N);
    let _: () = pair.redis(BACKUP).set("new", "1").unwrap();
    pair.restart(PRIMARY);
    let mut cli = spawn_cli(&pair, &["rejoin", PRIMARY]);
    read_until(&mut cli, "divergence point");
    // The orphans file is saved (fsynced, renamed into place) before the rewind starts: kill a
    // as soon as it appears, in the middle of the rewind.
    let dir = pair.node_dir(PRIMARY).join("orphans");
    let deadline = Instant::now() + DEADLINE;
    while !std::fs::read_dir(&dir)
        .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "jsonl"))))
    {
        assert!(cli.try_wait().expect("try_wait").is_none(), "the rejoin ended before its orphans file appeared");
        assert!(Instant::now() < deadline, "no orphans file within {DEADLINE:?}");
        std::thread::sleep(Duration::from_micros(200));
    }
    pair.kill(PRIMARY);
    let code = wait_child(&mut cli);
    assert_ne!(code, 0, "rejoin reported success with its node killed");
    pair.restart(PRIMARY);
    let (code, report) = run_json(&pair, &["rejoin", PRIMARY]);
    assert_eq!(code, 0, "re-run of rejoin: {report}");
    let saved: Vec<u64> = orphans(&pair, PRIMARY).into_keys().collect();
    assert_eq!(saved, lsns, "orphans after the interrupted rejoin");
    wait_following(&mut pair, BACKUP);
    wait_caught_up_at(&mut pair, BACKUP);
    assert_one_writer(&pair, BACKUP, "after the rejoin");
    assert_verify_equal(&pair, true);
    let keys: Vec<String> = (0..N).map(|i| format!("orphan-{i}")).chain(["new".to_string()]).collect();
    assert_eq!(values_on(&pair, PRIMARY, &keys), values_on(&pair, BACKUP, &keys));
}

#[test]
fn switchover_refuses_a_backup_further_behind_than_max_lag() {
    // Shipping stopped while 20,000 records are written at `async`, then started: while the
    // backup is still thousands of records behind, `switchover --max-lag 1ms --dry-run` (and the
    // real one) must refuse (exit 1, naming --max-lag) and change nothing.
    let mut pair = Pair::start_with(SyncLevel::Async, fast());
    let _: () = pair.redis(PRIMARY).set("seed", "0").unwrap();
    pair.wait_caught_up();
    pair.hotpair_ok(&["replicate", "stop"]);
    pair.wait_for("both sides to see the link down", |s| {
        s["nodes"][PRIMARY]["peer"]["connected"] == false && s["nodes"][BACKUP]["peer"]["connected"] == false
    });
    std::thread::scope(|scope| {
        for w in 0..20 {
            let mut connection = pair.redis(PRIMARY);
            scope.spawn(move || {
                let mut pipe = redis::pipe();
                for k in 0..1000 {
                    pipe.set(format!("lag-{w}-{k}"), k).ignore();
                }
                let _: () = pipe.query(&mut connection).unwrap_or_else(|e| panic!("writer {w}: {e}"));
            });
        }
    });
    pair.hotpair_ok(&["replicate", "start"]);
    let status = pair.wait_for("b connected and far behind", |s| {
        let (a, b) = (&s["nodes"][PRIMARY], &s["nodes"][BACKUP]);
        a["peer"]["connected"] == true && b["peer"]["connected"] == true && b["lag_records"].as_u64() > Some(2000)
    });
    let (code, report) = run_json(&pair, &["switchover", "--max-lag", "1ms", "--dry-run"]);
    assert_eq!(
        code, 1,
        "dry run with b {} records behind: {report}\nstatus then: {status}",
        status["nodes"][BACKUP]["lag_records"]
    );
    assert!(report["outcome"].as_str().unwrap().contains("--max-lag"), "{report}");
    assert_unchanged(&pair, "max-lag");
}

#[test]
fn a_switchover_cli_killed_after_the_promotion_is_finished_by_a_plain_rerun() {
    // SIGKILL `switchover --to b` right after it printed its promote phase, then run a plain
    // `hotpair switchover`: it must finish the switchover under way (b primary of epoch 2, a
    // following, progress cleared), not start a second one back to a (the fault campaign saw
    // epoch 3 with a primary again, 3 of 3 tries). Under a durable writer: nothing lost.
    let mut pair = Pair::start_with(SyncLevel::Durable, fast());
    let load = Load::start(&pair, "rerun");
    load.wait_more(20, "start");
    let mut cli = spawn_cli(&pair, &["switchover", "--to", BACKUP, "--timeout", "5s"]);
    read_until(&mut cli, "promote");
    kill_child(&mut cli);
    let (code, report) = run_json(&pair, &["switchover", "--timeout", "5s"]);
    assert_eq!(code, 0, "the plain re-run: {report}");
    assert_eq!(role_of(&pair, BACKUP), ("primary".to_string(), 2), "the re-run swapped the roles back: {report}");
    assert_eq!(report["details"]["to"], BACKUP, "{report}");
    assert_eq!(report["details"]["epoch"], 2, "{report}");
    assert_converged(&mut pair, &load, BACKUP, "after the re-run");
    let status = pair.status();
    for node in [PRIMARY, BACKUP] {
        assert!(status["nodes"][node]["orchestration"].is_null(), "progress left on {node}: {status}");
    }
    let acked = load.stop();
    assert_acked_on(&pair, BACKUP, &acked, "end");
    assert_verify_equal(&pair, false);
}

#[test]
fn a_rejoin_cli_killed_after_the_orphans_file_was_saved_names_the_file_on_rerun() {
    // SIGKILL the `rejoin a` CLI (not the node) as soon as a has saved its orphans file: a
    // finishes its rejoin by itself. The re-run finds nothing more to undo, and must still name
    // the file holding the writes set aside (it once reported "nothing orphaned").
    const N: u64 = 2000;
    let mut pair = Pair::start_with(SyncLevel::Async, fast());
    let lsns = orphan_tail_then_failover(&mut pair, N);
    pair.restart(PRIMARY);
    let mut cli = spawn_cli(&pair, &["rejoin", PRIMARY]);
    read_until(&mut cli, "divergence point");
    let dir = pair.node_dir(PRIMARY).join("orphans");
    let deadline = Instant::now() + DEADLINE;
    let file = loop {
        let found = std::fs::read_dir(&dir).ok().and_then(|mut d| {
            d.find_map(|e| e.ok().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "jsonl")))
        });
        if let Some(file) = found {
            break file;
        }
        assert!(cli.try_wait().expect("try_wait").is_none(), "the rejoin ended before its orphans file appeared");
        assert!(Instant::now() < deadline, "no orphans file within {DEADLINE:?}");
        std::thread::sleep(Duration::from_micros(200));
    };
    kill_child(&mut cli);
    pair.wait_for_node(PRIMARY, "a to finish its rejoin by itself", |s| s["role"] == "backup");
    let (code, report) = run_json(&pair, &["rejoin", PRIMARY]);
    assert_eq!(code, 0, "the re-run: {report}");
    let outcome = report["outcome"].as_str().unwrap();
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(outcome.contains(&name) && outcome.contains(&format!("{N} transaction(s)")), "{outcome}");
    let saved: Vec<u64> = orphans(&pair, PRIMARY).into_keys().collect();
    assert_eq!(saved, lsns, "the orphans file is not the unshipped tail");
    wait_following(&mut pair, BACKUP);
    assert_verify_equal(&pair, false);
}

#[test]
fn failover_estimates_what_the_backup_never_received_and_rejoin_reports_the_real_count() {
    // The backup has heard how far the primary got (batches and heartbeats carry the primary's
    // last LSN) but received only part of it when the primary dies: a catch-up of 20,000
    // records over a slow link, cut by a partition. The failover's estimate of transactions never
    // received must come from what the backup heard (it always said 0), and the rejoin must
    // print the real count beside it: here they are equal.
    const N: usize = 20_000;
    // No canary records: they take LSNs but are no transactions, and the counts are compared.
    // A 500 ms heartbeat lets the backup wait ~5 s for a batch on the slow link below.
    let quiet = Options { monitor: Some("canary_interval = \"1h\""), heartbeat: Some("500ms"), ..fast() };
    let mut pair = Pair::start_with(SyncLevel::Async, quiet);
    let _: () = pair.redis(PRIMARY).set("base", "0").unwrap();
    let base = pair.wait_caught_up();
    let (runtime, proxy) = proxy_on_the_link(&mut pair);
    let mut a = pair.redis(PRIMARY);
    for chunk in 0..N / 1000 {
        let mut pipe = redis::pipe();
        for i in 0..1000 {
            // ~250 bytes a record: ~5 MB of catch-up, five batches of 1 MB.
            pipe.set(format!("far-{chunk}-{i}"), format!("{i:0>200}")).ignore();
        }
        let _: () = pipe.query(&mut a).expect("async writes with shipping stopped");
    }
    let last = pair.node_status(PRIMARY)["lsn"].as_u64().expect("a's last LSN");
    assert_eq!(last, base + N as u64, "one LSN per write");
    // A slow link (~5 MB of catch-up at 1 MB/s) holds most of the catch-up in flight for
    // seconds after its first batch arrives, however slowly this test polls.
    proxy.set_bandwidth(Some(1_000_000));
    pair.hotpair_ok(&["replicate", "start"]);
    // Cut the link as soon as the catch-up has begun: what is in flight is lost.
    let deadline = Instant::now() + DEADLINE;
    let received = loop {
        let received = pair.node_status(BACKUP)["received_lsn"].as_u64().unwrap_or(0);
        if received > base {
            proxy.partition(hotpair::drill::proxy::PartitionMode::Drop);
            break received;
        }
        assert!(Instant::now() < deadline, "the catch-up never began");
        std::thread::sleep(Duration::from_micros(500));
    };
    pair.kill(PRIMARY);
    drop(proxy);
    drop(runtime);
    let (code, report) = run_json(&pair, &["failover", "--to", BACKUP]);
    assert_eq!(code, 0, "failover: {report}");
    let estimate = report["details"]["not_received"].as_u64().expect("not_received");
    let received_at_promotion = report["details"]["last_received_lsn"].as_u64().expect("last_received_lsn");
    assert_eq!(report["details"]["last_heard_lsn"], last, "the backup heard the primary's last LSN: {report}");
    assert!(received_at_promotion >= received && received_at_promotion < last, "{report}");
    assert_eq!(estimate, last - received_at_promotion, "{report}");
    assert!(report["outcome"].as_str().unwrap().contains(&format!("about {estimate} transaction(s)")), "{report}");

    pair.restart(PRIMARY);
    let (code, report) = run_json(&pair, &["rejoin", PRIMARY]);
    assert_eq!(code, 0, "rejoin: {report}");
    assert_eq!(report["details"]["orphaned"], estimate, "the real count differs from the estimate: {report}");
    assert_eq!(report["details"]["failover_estimate"], estimate, "{report}");
    let outcome = report["outcome"].as_str().unwrap();
    assert!(outcome.contains(&format!("the failover estimated about {estimate}")), "{outcome}");
}
