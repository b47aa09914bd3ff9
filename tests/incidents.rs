//! Incidents provoked for real on a running pair, as the notification command receives them
//! (a shell command appending its stdin to a file) and as `status` shows them: peer lost/back,
//! replication stopped/started, fenced, orphaned tail, lag over `lag_alert`, canary overdue
//! (a SIGSTOPped primary), a digest mismatch found by the periodic check (a backup store changed
//! behind the node's back) and by the applier (a record written over such a value), journal retention pinned by an absent backup, and a heartbeat
//! sequence gap (a client speaking as b on a's control port), a damaged closed journal segment found after a restart.
//! Disk space and apply-error: `disk_space.rs`; metrics:
//! `metrics.rs`.

mod common;

use std::time::Duration;

use common::{event, wait_notified, Options, Pair, BACKUP, NOTIFY, PRIMARY};
use hotpair::config::SyncLevel;
use serde_json::Value;

#[test]
fn peer_lost_and_back_and_replication_stopped_reach_the_command_and_status() {
    let options = Options { heartbeat: Some("100ms"), notify_command: Some(NOTIFY), ..Options::default() };
    let mut pair = Pair::start_with(SyncLevel::Async, options);
    let dir = pair.dir().to_path_buf();

    pair.kill(BACKUP);
    let lost = wait_notified(&dir, "peer-lost on the primary", event("peer-lost", PRIMARY, "open"));
    assert_eq!(lost["severity"], "critical", "{lost}");
    let status = pair.node_status(PRIMARY);
    let open: Vec<&str> = status["incidents"].as_array().unwrap().iter().filter_map(|i| i["kind"].as_str()).collect();
    assert!(open.contains(&"peer-lost"), "status shows the open incident: {status}");
    pair.restart(BACKUP);
    wait_notified(&dir, "peer back on the primary", event("peer-lost", PRIMARY, "resolved"));

    pair.hotpair_ok(&["replicate", "stop", PRIMARY]);
    wait_notified(&dir, "replication stopped", event("replication-stopped", PRIMARY, "open"));
    pair.hotpair_ok(&["replicate", "start", PRIMARY]);
    wait_notified(&dir, "replication started", event("replication-stopped", PRIMARY, "resolved"));
    let log = std::fs::read_to_string(dir.join("incidents.jsonl")).expect("the incident log exists");
    assert!(log.lines().count() >= 4, "the incident log holds every event: {log}");
}

#[test]
fn a_failed_over_primary_reports_fenced_and_the_rejoin_reports_its_orphans() {
    let options = Options { heartbeat: Some("100ms"), notify_command: Some(NOTIFY), ..Options::default() };
    let mut pair = Pair::start_with(SyncLevel::Async, options);
    let dir = pair.dir().to_path_buf();
    pair.hotpair_ok(&["replicate", "stop", PRIMARY]);
    let mut a = pair.redis(PRIMARY);
    for i in 0..5 {
        let _: () = redis::cmd("SET").arg(format!("unshipped-{i}")).arg(i).query(&mut a).expect("async write");
    }
    pair.kill(PRIMARY);
    pair.hotpair_ok(&["failover", "--to", BACKUP]);
    pair.restart(PRIMARY);
    wait_notified(&dir, "a fenced", event("fenced", PRIMARY, "open"));
    pair.hotpair_ok(&["rejoin", PRIMARY]);
    let orphans = wait_notified(&dir, "orphaned tail", event("orphaned-tail", PRIMARY, "open"));
    assert!(orphans["message"].as_str().is_some_and(|m| m.contains("5 orphaned")), "{orphans}");
}

#[test]
fn a_hanging_notification_command_does_not_slow_commits() {
    let options = Options { notify_command: Some("sleep 600"), ..Options::default() };
    let mut pair = Pair::start_with(SyncLevel::Durable, options);
    // Raise incidents continuously (the command hangs on each) while writing at `durable`.
    pair.hotpair_ok(&["replicate", "stop", BACKUP]);
    pair.hotpair_ok(&["replicate", "start", BACKUP]);
    pair.wait_caught_up();
    let mut a = pair.redis(PRIMARY);
    for i in 0..200 {
        let _: () = redis::cmd("SET").arg(format!("k{i}")).arg(i).query(&mut a).expect("durable write acknowledged");
    }
    let status = pair.node_status(PRIMARY);
    assert_eq!(status["writes"]["accepting"], true, "{status}");
}

fn open_kinds(status: &Value) -> Vec<String> {
    status["incidents"].as_array().into_iter().flatten().filter_map(|i| i["kind"].as_str().map(String::from)).collect()
}

#[test]
fn a_backup_further_behind_than_lag_alert_raises_lag_high_until_it_catches_up() {
    let options =
        Options { notify_command: Some(NOTIFY), monitor: Some("lag_alert_records = 20"), ..Options::default() };
    let mut pair = Pair::start_with(SyncLevel::Async, options);
    let dir = pair.dir().to_path_buf();
    pair.hotpair_ok(&["replicate", "stop", PRIMARY]);
    let mut a = pair.redis(PRIMARY);
    for i in 0..50 {
        let _: () = redis::cmd("SET").arg(format!("lag-{i}")).arg(i).query(&mut a).expect("async write");
    }
    let lag = wait_notified(&dir, "lag-high on the primary", event("lag-high", PRIMARY, "open"));
    assert!(lag["message"].as_str().is_some_and(|m| m.contains("record(s)")), "{lag}");
    assert!(open_kinds(&pair.node_status(PRIMARY)).contains(&"lag-high".to_string()));
    pair.hotpair_ok(&["replicate", "start", PRIMARY]);
    wait_notified(&dir, "lag-high resolved", event("lag-high", PRIMARY, "resolved"));
    pair.wait_caught_up();
}

#[test]
fn a_write_the_backup_has_not_applied_for_longer_than_lag_alert_raises_lag_high() {
    // The time criterion: one write, and a backup (SIGSTOPped, its session still up for the
    // 10 s silence limit) that does not apply it. lag_ms is the age of that commit.
    let options = Options {
        heartbeat: Some("1s"),
        notify_command: Some(NOTIFY),
        monitor: Some("lag_alert = \"300ms\"\nlag_alert_records = 1000000"),
        ..Options::default()
    };
    let mut pair = Pair::start_with(SyncLevel::Async, options);
    let dir = pair.dir().to_path_buf();
    pair.pause(BACKUP);
    let mut a = pair.redis(PRIMARY);
    let _: () = redis::cmd("SET").arg("late").arg("1").query(&mut a).expect("async write");
    let lag = wait_notified(&dir, "lag-high by time", event("lag-high", PRIMARY, "open"));
    let status = pair.node_status(PRIMARY);
    pair.resume(BACKUP);
    assert!(lag["message"].as_str().is_some_and(|m| m.contains("ms behind")), "{lag}");
    assert!(status["lag_ms"].as_u64() >= Some(300), "{status}");
    wait_notified(&dir, "lag-high resolved", event("lag-high", PRIMARY, "resolved"));
}

#[test]
fn a_hung_primary_makes_the_canary_overdue_on_the_backup_and_it_clears_on_resume() {
    // Heartbeats every second give a 10 s silence limit, so the session stays up while the
    // primary is stopped: only the canary can tell that nothing flows.
    let options = Options {
        heartbeat: Some("1s"),
        notify_command: Some(NOTIFY),
        monitor: Some("canary_interval = \"200ms\""),
        ..Options::default()
    };
    let mut pair = Pair::start_with(SyncLevel::Durable, options);
    let dir = pair.dir().to_path_buf();
    let status = pair.wait_for_node(BACKUP, "two canaries", |s| s["canary"]["received"].as_u64() >= Some(2));
    let delay = status["canary"]["last_delay_ms"].as_u64().expect("a canary delay");
    assert!(delay < 1000, "a canary took {delay} ms on an idle local pair: {status}");
    pair.pause(PRIMARY);
    let overdue = wait_notified(&dir, "canary overdue on the backup", event("canary-overdue", BACKUP, "open"));
    pair.resume(PRIMARY);
    assert!(overdue["message"].as_str().is_some_and(|m| m.contains("no canary")), "{overdue}");
    wait_notified(&dir, "canary back", event("canary-overdue", BACKUP, "resolved"));
}

#[test]
fn the_periodic_digest_check_finds_a_backup_store_changed_behind_its_back() {
    let options =
        Options { notify_command: Some(NOTIFY), monitor: Some("digest_interval = \"300ms\""), ..Options::default() };
    let (pair, mut a, _) = pair_with_a_damaged_backup_value(SyncLevel::Durable, options);
    let dir = pair.dir().to_path_buf();
    let found = wait_notified(&dir, "digest mismatch on the backup", event("digest-mismatch", BACKUP, "open"));
    assert_eq!(found["severity"], "critical", "{found}");
    assert!(found["message"].as_str().is_some_and(|m| m.contains("periodic digest check")), "{found}");
    assert!(open_kinds(&pair.node_status(BACKUP)).contains(&"digest-mismatch".to_string()));
    // The primary is not affected.
    let _: () = redis::cmd("SET").arg("after").arg("1").query(&mut a).expect("the primary keeps working");
}

#[test]
fn an_absent_backup_pinning_the_journal_past_retention_alert_is_reported() {
    let options =
        Options { notify_command: Some(NOTIFY), monitor: Some("retention_alert = \"300ms\""), ..Options::default() };
    let mut pair = Pair::start_with(SyncLevel::Async, options);
    let dir = pair.dir().to_path_buf();
    pair.kill(BACKUP);
    let mut a = pair.redis(PRIMARY);
    let _: () = redis::cmd("SET").arg("kept-for-b").arg("1").query(&mut a).expect("async write without the backup");
    let pinned = wait_notified(&dir, "retention pinned", event("retention-pinned", PRIMARY, "open"));
    assert!(pinned["message"].as_str().is_some_and(|m| m.contains("keeps")), "{pinned}");
    pair.restart(BACKUP);
    wait_notified(&dir, "retention released", event("retention-pinned", PRIMARY, "resolved"));
    pair.wait_caught_up();
}

#[test]
fn heartbeats_missing_from_the_backups_sequence_raise_heartbeat_gap_on_the_primary() {
    // Over one TCP session heartbeats cannot get lost, so a gap means the peer skipped
    // sequence numbers (a bug, or a replayed or spliced session). Played for real: b is killed,
    // and a client with b's certificate and incarnation says hello on a's control port, as b
    // would, then sends heartbeats 1, 2 and 6.
    use hotpair::replication::wire::{self, AdminRequest, Envelope, Frame, Message};
    use hotpair::storage::meta::{NodeMeta, Role};
    let options = Options { notify_command: Some(NOTIFY), ..Options::default() };
    let mut pair = Pair::start_with(SyncLevel::Async, options);
    let dir = pair.dir().to_path_buf();
    pair.kill(BACKUP);
    let gone = pair.wait_for_node(PRIMARY, "the primary to see b gone", |s| s["peer"]["connected"] == false);
    // b's position as a knows it: a hello from further back would be refused as a restored copy.
    let last_lsn = gone["peer"]["durable_lsn"].as_u64().expect("the durable LSN b acknowledged");
    let meta = NodeMeta::load(&pair.node_dir(BACKUP)).expect("b's metadata");
    let client = hotpair::tls::node_client_config(&pair.config, BACKUP).expect("b's client config");
    let address = pair.config.node(PRIMARY).expect("a").control;
    let name = hotpair::tls::server_name(&pair.config, PRIMARY);
    let config = pair.config.clone();
    let envelope = |message| Frame::Message(Envelope { from: BACKUP.into(), epoch: meta.epoch, message });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let gaps = runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(address).await.expect("connect to a's control port");
        let mut stream = tokio_rustls::TlsConnector::from(client).connect(name, tcp).await.expect("TLS as b");
        let hello = Message::Hello {
            protocol: hotpair::engine::PROTOCOL_VERSION,
            cluster: config.cluster,
            incarnation: meta.incarnation,
            role: Role::Backup,
            history: meta.history.clone(),
            last_lsn,
            confirmed_lsn: last_lsn,
            tail_crcs: Vec::new(),
            last_crc: None,
            config_digest: None,
        };
        wire::write_frame(&mut stream, &envelope(hello)).await.expect("send hello");
        match wire::read_frame(&mut stream).await.expect("an answer to hello") {
            Some(Frame::Message(Envelope { message: Message::Welcome { .. }, .. })) => {}
            other => panic!("a did not welcome b's hello: {other:?}"),
        }
        for seq in [1, 2, 6] {
            let heartbeat =
                Message::Heartbeat { seq, time_ms: hotpair::clock::now_ms(), last_lsn: 0, head_lsn: 0, echo_ms: 0 };
            wire::write_frame(&mut stream, &envelope(heartbeat)).await.expect("send a heartbeat");
        }
        // Keep the session open (reading what a ships) until a counts the gap.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let status =
                hotpair::admin::client::request(&config, PRIMARY, AdminRequest::Status).await.expect("a's status");
            let gaps = status["peer"]["heartbeat_gaps"].as_u64().unwrap_or(0);
            if gaps > 0 {
                break gaps;
            }
            assert!(tokio::time::Instant::now() < deadline, "a never counted the gap: {status}");
            let _ = tokio::time::timeout(Duration::from_millis(20), wire::read_frame(&mut stream)).await;
        }
    });
    assert_eq!(gaps, 3, "heartbeats 3, 4 and 5 are missing");
    let gap = wait_notified(&dir, "heartbeat gap on the primary", event("heartbeat-gap", PRIMARY, "open"));
    assert!(gap["message"].as_str().is_some_and(|m| m.contains("3 heartbeat(s)")), "{gap}");
}

/// A pair holding 20 keys, whose backup was restarted after one stored value was changed
/// behind its back; with a connection to the primary and the damaged key.
fn pair_with_a_damaged_backup_value(sync: SyncLevel, options: Options) -> (Pair, redis::Connection, String) {
    let mut pair = Pair::start_with(sync, options);
    let mut a = pair.redis(PRIMARY);
    for i in 0..20 {
        let _: () = redis::cmd("SET").arg(format!("k{i}")).arg(format!("v{i}")).query(&mut a).expect("write");
    }
    pair.wait_caught_up();
    let key = corrupt_one_stored_value(&mut pair, BACKUP);
    pair.restart(BACKUP);
    (pair, a, key)
}

/// Stops `node`, changes one stored value in its sled store without going through the journal
/// (nor updating the digest), and returns that key. The caller restarts the node.
fn corrupt_one_stored_value(pair: &mut Pair, node: &str) -> String {
    pair.stop(node);
    let db = sled::open(pair.node_dir(node).join("store")).expect("open the store");
    let (key, mut value) =
        db.scan_prefix(b"d").next().expect("a stored pair").map(|(k, v)| (k, v.to_vec())).expect("read a stored pair");
    *value.last_mut().expect("a non-empty value") ^= 0x01;
    db.insert(&key, value).expect("write the damaged value");
    db.flush().expect("flush sled");
    String::from_utf8(key[1..].to_vec()).expect("a text key")
}

#[test]
fn a_record_applied_over_a_damaged_value_is_a_digest_mismatch_and_the_applier_stops() {
    // The per-record check: the backup's incremental digest takes the old term from the stored
    // value, so a record that overwrites a value damaged behind its back gives a digest that
    // differs from the primary's. The applier stops before that record.
    let options =
        Options { notify_command: Some(NOTIFY), monitor: Some("digest_interval = \"off\""), ..Options::default() };
    let (pair, mut a, key) = pair_with_a_damaged_backup_value(SyncLevel::Async, options);
    let dir = pair.dir().to_path_buf();
    let _: () = redis::cmd("SET").arg(&key).arg("new").query(&mut a).expect("overwrite the damaged key");
    let found = wait_notified(&dir, "digest mismatch from the applier", event("digest-mismatch", BACKUP, "open"));
    assert!(found["message"].as_str().is_some_and(|m| m.contains("digest mismatch at LSN")), "{found}");
    let status = pair.node_status(BACKUP);
    assert!(status["failure"].as_str().is_some_and(|f| f.contains("digest mismatch")), "{status}");
}

#[test]
fn a_flipped_bit_in_a_closed_journal_segment_is_found_after_a_restart_while_the_node_serves() {
    // An open reads only the last segment whole (closed ones are taken from their seals), so
    // the node starts and serves; the check it makes once after start reads the sealed segment
    // and raises journal-damaged naming the file. A bit flipped in the closed segment of a's
    // local journal, a stopped meanwhile.
    let options = Options { notify_command: Some(NOTIFY), ..Options::default() };
    let mut pair = Pair::start_with(SyncLevel::Async, options);
    let dir = pair.dir().to_path_buf();
    let mut a = pair.redis(PRIMARY);
    for i in 0..200 {
        let _: () = redis::Commands::set(&mut a, format!("before-{i}"), "x".repeat(100)).unwrap();
    }
    pair.hotpair_ok(&["replicate", "reopen-log", PRIMARY]);
    let _: () = redis::Commands::set(&mut a, "after", "1").unwrap();
    drop(a);
    pair.wait_caught_up();
    pair.stop(PRIMARY);
    let local = pair.node_dir(PRIMARY).join("journal/local");
    let mut closed: Vec<std::path::PathBuf> = std::fs::read_dir(&local)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hpj"))
        .collect();
    closed.sort();
    let segment = closed.first().expect("a closed segment").clone();
    assert!(hotpair::storage::journal::seal::path_of(&segment).exists(), "the closed segment is sealed");
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&segment, bytes).unwrap();
    pair.restart(PRIMARY);
    let raised =
        wait_notified(&dir, "journal-damaged on the restarted primary", event("journal-damaged", PRIMARY, "open"));
    assert_eq!(raised["severity"], "critical", "{raised}");
    let message = raised["message"].as_str().unwrap_or_default();
    assert!(message.contains(&segment.display().to_string()), "the incident names the file: {message}");
    // It serves meanwhile: reads answer.
    let mut a = pair.redis(PRIMARY);
    let got: Option<String> = redis::Commands::get(&mut a, "after").unwrap();
    assert_eq!(got.as_deref(), Some("1"));
}

/// Waits until every event `node` raised so far has reached the notification command
/// (`incidents_pending` in its status is what its notifier has not delivered yet).
fn flush_notifications(pair: &Pair, node: &'static str) {
    pair.wait_for_node(node, "every incident event delivered", |s| s["incidents_pending"] == 0);
}

#[test]
fn a_planned_switchover_and_switchback_raise_no_critical_incident_but_a_killed_backup_does() {
    let options = Options { heartbeat: Some("100ms"), notify_command: Some(NOTIFY), ..Options::default() };
    let mut pair = Pair::start_with(SyncLevel::Durable, options);
    let dir = pair.dir().to_path_buf();
    let writers = common::Writers::start(&pair, 2);
    writers.wait_acked(50);
    pair.hotpair_ok(&["switchover", "--to", BACKUP]);
    pair.hotpair_ok(&["switchback"]);
    let acked = writers.acked();
    writers.wait_acked(acked + 50);
    drop(writers.finish());
    pair.wait_caught_up();
    flush_notifications(&pair, PRIMARY);
    flush_notifications(&pair, BACKUP);
    let events = common::notified(&dir);
    let critical: Vec<&Value> = events.iter().filter(|e| e["severity"] == "critical").collect();
    assert!(critical.is_empty(), "planned work paged someone: {critical:?}\nall events: {events:?}");
    // Whatever the switchover opened is closed again: status lists no incident.
    let text = pair.hotpair_ok(&["status"]);
    assert!(!text.contains("INCIDENT"), "{text}");

    // A real loss is still critical, and plain `status` says so.
    let before = events.len();
    pair.kill(BACKUP);
    let lost = wait_notified(&dir, "a critical peer-lost on the primary", |e| {
        event("peer-lost", PRIMARY, "open")(e) && e["severity"] == "critical"
    });
    assert!(common::notified(&dir).len() > before, "{lost}");
    let text = String::from_utf8_lossy(&pair.hotpair(&["status"]).stdout).into_owned();
    assert!(text.contains("INCIDENT peer-lost (critical, open)"), "{text}");
}

#[test]
fn an_old_primary_restarted_after_a_failover_is_a_stale_primary_and_its_rejoin_resolves_fenced() {
    let options = Options { heartbeat: Some("100ms"), notify_command: Some(NOTIFY), ..Options::default() };
    let mut pair = Pair::start_with(SyncLevel::Durable, options);
    let dir = pair.dir().to_path_buf();
    let _: () = redis::cmd("SET").arg("before").arg("1").query(&mut pair.redis(PRIMARY)).expect("write");
    pair.wait_caught_up();
    pair.kill(PRIMARY);
    pair.hotpair_ok(&["failover", "--to", BACKUP]);
    pair.restart(PRIMARY);
    let stale = wait_notified(&dir, "stale-primary on b", event("stale-primary", BACKUP, "open"));
    assert_eq!(stale["severity"], "warning", "{stale}");
    let message = stale["message"].as_str().unwrap_or_default();
    assert!(message.contains("hotpair rejoin a") && message.contains("fences itself"), "{stale}");
    let fenced = wait_notified(&dir, "a fenced", event("fenced", PRIMARY, "open"));
    assert_eq!(fenced["severity"], "critical", "{fenced}");

    pair.hotpair_ok(&["rejoin", PRIMARY]);
    let resolved = wait_notified(&dir, "fenced resolved by the rejoin", event("fenced", PRIMARY, "resolved"));
    assert!(resolved["message"].as_str().is_some_and(|m| m.contains("backup of epoch 2")), "{resolved}");
    wait_notified(&dir, "stale-primary resolved", event("stale-primary", BACKUP, "resolved"));
    assert!(
        !common::notified(&dir).iter().any(|e| e["kind"] == "split-brain"),
        "a restarted old primary is not a split-brain: {:?}",
        common::notified(&dir)
    );
    let status = pair.node_status(PRIMARY);
    assert!(!open_kinds(&status).contains(&"fenced".to_string()), "{status}");
}

#[test]
fn nodes_running_different_pair_files_show_their_digests_and_a_config_drift_incident() {
    let options = Options { heartbeat: Some("100ms"), notify_command: Some(NOTIFY), ..Options::default() };
    let mut pair = Pair::start_with(SyncLevel::Durable, options);
    let dir = pair.dir().to_path_buf();
    let status = pair.status();
    let digest = |s: &Value, n: &str| s["nodes"][n]["config_digest"].as_str().map(String::from);
    assert!(digest(&status, PRIMARY).is_some_and(|d| d.len() == 64), "{status}");
    assert_eq!(digest(&status, PRIMARY), digest(&status, BACKUP), "{status}");

    // b restarted from an edited pair file, a still runs the old one.
    pair.kill(BACKUP);
    let text = std::fs::read_to_string(&pair.pair_file).expect("pair file");
    let edited = text.replacen("sync_timeout = \"", "sync_timeout = \"7", 1);
    assert_ne!(edited, text, "the pair file has a sync_timeout");
    std::fs::write(&pair.pair_file, edited).expect("edit the pair file");
    pair.restart(BACKUP);
    for node in [PRIMARY, BACKUP] {
        let drift = wait_notified(&dir, "config-drift", event("config-drift", node, "open"));
        assert!(drift["message"].as_str().is_some_and(|m| m.contains("restart the node")), "{drift}");
    }
    let status = pair.status();
    assert_ne!(digest(&status, PRIMARY), digest(&status, BACKUP), "{status}");
    let text = pair.hotpair_ok(&["status"]);
    assert!(text.contains("INCIDENT config-drift"), "{text}");
    let short = |n: &str| digest(&status, n).map(|d| d[..12].to_string()).unwrap_or_default();
    assert!(text.contains(&format!("pair file {}", short(PRIMARY))), "{text}");
    assert!(text.contains(&format!("pair file {}", short(BACKUP))), "{text}");

    // a restarted from the same file: b hears the same digest and the drift is resolved.
    pair.terminate(PRIMARY);
    pair.restart(PRIMARY);
    wait_notified(&dir, "config-drift resolved on b", event("config-drift", BACKUP, "resolved"));
    let status = pair.status();
    assert_eq!(digest(&status, PRIMARY), digest(&status, BACKUP), "{status}");
}
