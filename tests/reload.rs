//! `hotpair reload` against real nodes: the sync level switched on both with no restart and no
//! failed write under a steady writer; a reload that moves a node is refused naming the key and
//! changes nothing; a config drift fixed in the file and reloaded is resolved.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{event, wait_notified, Options, Pair, BACKUP, NOTIFY, PRIMARY};
use hotpair::config::SyncLevel;
use redis::Commands;
use serde_json::Value;

fn fast() -> Options {
    Options { sync_timeout: Some("2s"), heartbeat: Some("100ms"), ..Options::default() }
}

fn digest(status: &Value, node: &str) -> String {
    status["nodes"][node]["config_digest"].as_str().unwrap_or_default().to_string()
}

fn sync_of(status: &Value, node: &str) -> String {
    status["nodes"][node]["sync"].as_str().unwrap_or_default().to_string()
}

/// Replaces `what` (which must be there) in the pair file.
fn edit(pair: &Pair, what: &str, with: &str) {
    let text = std::fs::read_to_string(&pair.pair_file).expect("read the pair file");
    assert!(text.contains(what), "the pair file has no {what:?}:\n{text}");
    std::fs::write(&pair.pair_file, text.replacen(what, with, 1)).expect("write the pair file");
}

/// One client writing to the primary without pause, counting acknowledged and failed writes.
struct SteadyWriter {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    thread: std::thread::JoinHandle<()>,
}

impl SteadyWriter {
    fn start(pair: &Pair) -> SteadyWriter {
        let mut connection = pair.redis(PRIMARY);
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, a, f) = (stop.clone(), acked.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            let mut i = 0u64;
            while !s.load(Ordering::SeqCst) {
                match connection.set::<_, _, ()>(format!("steady-{i}"), i) {
                    Ok(()) => drop(a.fetch_add(1, Ordering::SeqCst)),
                    Err(err) => f.lock().unwrap().push(format!("steady-{i}: {err}")),
                }
                i += 1;
            }
        });
        SteadyWriter { stop, acked, failed, thread }
    }

    /// Waits until `more` writes past now were acknowledged (the writer kept going).
    fn wait_more(&self, more: u64) {
        let target = self.acked.load(Ordering::SeqCst) + more;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.acked.load(Ordering::SeqCst) < target {
            assert!(Instant::now() < deadline, "the writer stalled: {:?}", self.failed.lock().unwrap());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops; the number of acknowledged writes and every failure.
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("writer thread");
        let failed = self.failed.lock().unwrap().clone();
        (self.acked.load(Ordering::SeqCst), failed)
    }
}

#[test]
fn reload_switches_the_sync_level_on_both_nodes_under_a_steady_writer_with_no_failed_write() {
    let mut pair = Pair::start_with(SyncLevel::Durable, fast());
    let before = pair.status();
    let writer = SteadyWriter::start(&pair);
    writer.wait_more(200);

    edit(&pair, "sync = \"durable\"", "sync = \"async\"");
    let out = pair.hotpair_ok(&["reload"]);
    assert!(out.contains("sync"), "the outcome names what changed: {out}");
    let status = pair.status();
    for node in [PRIMARY, BACKUP] {
        assert_eq!(sync_of(&status, node), "async", "{node} runs async after the reload: {status}");
        assert_ne!(digest(&status, node), digest(&before, node), "{node}'s config_digest is the new file's");
    }
    assert_eq!(digest(&status, PRIMARY), digest(&status, BACKUP), "{status}");
    writer.wait_more(200);

    // In force, not only shown: with the backup stopped, a write at `async` is acknowledged at
    // once (at `durable` it would wait for the backup and fail after sync_timeout).
    pair.pause(BACKUP);
    let mut probe = pair.redis(PRIMARY);
    let started = Instant::now();
    probe.set::<_, _, ()>("while-backup-stopped", "1").expect("an async write needs no backup");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    pair.resume(BACKUP);
    pair.wait_for("the backup following again", |s| {
        s["nodes"][PRIMARY]["peer"]["connected"] == true && s["nodes"][BACKUP]["following"] == true
    });
    writer.wait_more(200);

    edit(&pair, "sync = \"async\"", "sync = \"durable\"");
    pair.hotpair_ok(&["reload"]);
    let status = pair.status();
    for node in [PRIMARY, BACKUP] {
        assert_eq!(sync_of(&status, node), "durable", "{node} runs durable again: {status}");
        assert_eq!(digest(&status, node), digest(&before, node), "the file is the first one again");
    }
    writer.wait_more(200);
    let (acked, failed) = writer.finish();
    assert!(failed.is_empty(), "no write failed across two reloads ({acked} acknowledged): {failed:?}");

    // And at `durable` again, a write with the backup stopped is not acknowledged.
    pair.pause(BACKUP);
    let refused = probe.set::<_, _, ()>("durable-without-backup", "1");
    pair.resume(BACKUP);
    let err = refused.expect_err("at durable a write waits for the stopped backup and fails");
    assert!(err.to_string().contains("sync level durable"), "{err}");
    let lsn = pair.wait_caught_up();
    assert!(lsn >= acked, "the backup caught up to LSN {lsn}");
}

#[test]
fn a_reload_that_moves_a_node_is_refused_naming_the_key_and_changes_nothing() {
    let pair = Pair::start_with(SyncLevel::Durable, fast());
    let before = pair.status();
    let data = pair.data_address(BACKUP).to_string();
    let moved = format!("127.0.0.1:{}", common::free_control_port());
    // Also a live change in the same file: a refusal must not take even that one.
    edit(&pair, "sync = \"durable\"", "sync = \"async\"");
    edit(&pair, &format!("data = \"{data}\""), &format!("data = \"{moved}\""));
    let out = pair.hotpair(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "refused with nothing changed: {}", common::stderr(&out));
    let err = common::stderr(&out);
    assert!(err.contains("nodes.b.data"), "the refusal names the key: {err}");
    assert!(err.contains("restart"), "and says what takes it: {err}");
    let status = pair.status();
    for node in [PRIMARY, BACKUP] {
        assert_eq!(digest(&status, node), digest(&before, node), "{node} runs the old file: {status}");
        assert_eq!(sync_of(&status, node), "durable", "{status}");
    }
    // Nothing half-done: the pair still takes writes at durable.
    pair.redis(PRIMARY).set::<_, _, ()>("after-refusal", "1").expect("a write after the refusal");
}

#[test]
fn nodes_on_different_pair_files_drift_and_a_fixed_file_plus_reload_resolves_it() {
    let options = Options { notify_command: Some(NOTIFY), ..fast() };
    let mut pair = Pair::start_with(SyncLevel::Durable, options);
    let dir = pair.dir().to_path_buf();
    // b restarted from an edited file while a runs the old one: two digests, a drift.
    pair.kill(BACKUP);
    edit(&pair, "sync_timeout = \"2s\"", "sync_timeout = \"3s\"");
    pair.restart(BACKUP);
    wait_notified(&dir, "config-drift on a", event("config-drift", PRIMARY, "open"));
    let status = pair.status();
    assert_ne!(digest(&status, PRIMARY), digest(&status, BACKUP), "{status}");

    // The file (now the same for both) reloaded: a takes the new sync_timeout live.
    let out = pair.hotpair_ok(&["reload"]);
    assert!(out.contains("sync_timeout"), "a's change is named: {out}");
    assert!(out.contains("both run"), "{out}");
    wait_notified(&dir, "config-drift resolved on a", event("config-drift", PRIMARY, "resolved"));
    let status = pair.status();
    assert_eq!(digest(&status, PRIMARY), digest(&status, BACKUP), "{status}");
    for node in [PRIMARY, BACKUP] {
        let open = status["nodes"][node]["incidents"].as_array().cloned().unwrap_or_default();
        assert!(!open.iter().any(|i| i["kind"] == "config-drift"), "{node}: {status}");
    }
    // A second reload of an unchanged file changes nothing and says so.
    let out = pair.hotpair_ok(&["reload"]);
    assert!(out.contains("nothing changed"), "{out}");
}

#[test]
fn reload_rereads_the_client_password_file_so_a_rotated_password_takes_effect_with_no_restart() {
    let options = Options { init_args: &["--client-password"], ..fast() };
    let pair = Pair::start_with(SyncLevel::Durable, options);
    let old = pair.client_password().expect("init wrote a password");
    let mut already = pair.redis(PRIMARY);
    let path = pair.config.clients.password_file.clone().expect("a password file");
    std::fs::write(&path, "a-new-password-1234\n").expect("write the new password");
    let out = pair.hotpair_ok(&["reload"]);
    assert!(out.contains("nothing changed in its pair file"), "pair.toml itself did not change: {out}");

    for node in [PRIMARY, BACKUP] {
        let address = pair.data_address(node);
        let with_old = redis::Client::open(format!("redis://:{old}@{address}/")).unwrap();
        let refused = with_old.get_connection_with_timeout(Duration::from_secs(5));
        assert!(refused.is_err(), "{node} no longer takes the old password");
        let with_new = redis::Client::open(format!("redis://:a-new-password-1234@{address}/")).unwrap();
        let mut connection = with_new.get_connection_with_timeout(Duration::from_secs(5)).expect("the new one works");
        let _: Option<String> = connection.get("any").expect("a read with the new password");
    }
    // A connection authenticated before the reload stays so (Redis' `CONFIG SET requirepass`).
    already.set::<_, _, ()>("after-rotation", "1").expect("an open session keeps working");
}

#[test]
fn a_reloaded_heartbeat_is_taken_by_the_running_sessions_at_their_next_tick() {
    let mut pair = Pair::start_with(SyncLevel::Durable, fast());
    let gap = |s: &Value, node: &str| s["nodes"][node]["peer"]["last_heartbeat_ms_ago"].as_u64();
    edit(&pair, "heartbeat = \"100ms\"", "heartbeat = \"1500ms\"");
    let out = pair.hotpair_ok(&["reload"]);
    assert!(out.contains("heartbeat"), "{out}");
    // At 100 ms the last heartbeat is never 700 ms old; at 1.5 s it soon is, on both sides of
    // the session that was running before the reload (no reconnect: still connected).
    for node in [PRIMARY, BACKUP] {
        pair.wait_for(&format!("{node} hearing heartbeats 1.5 s apart"), |s| {
            gap(s, node).is_some_and(|ms| ms > 700) && s["nodes"][node]["peer"]["connected"] == true
        });
    }
    let status = pair.status();
    for node in [PRIMARY, BACKUP] {
        let open = status["nodes"][node]["incidents"].as_array().cloned().unwrap_or_default();
        assert!(!open.iter().any(|i| i["kind"] == "peer-lost"), "no session ended: {status}");
    }
}
