//! The running pair end to end: two real `hotpair run` processes, driven by the real `redis`
//! crate on their data ports, by `hotpair status|replicate|journal`, and by hand-made clients on
//! the control port. Each test starts its own pair (own ports, own directory; see `common`).
//!
//! What each test proves is in its name and its first comment. Waits poll a condition against a
//! deadline (`common::DEADLINE`); nothing sleeps in place of synchronisation.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client_value, dumped_bytes, journal_dump, Options, Pair, BACKUP, DEADLINE, PRIMARY};
use hotpair::config::{PairConfig, SyncLevel};
use hotpair::replication::wire::{self, AdminRequest, Envelope, Frame, Message};
use hotpair::storage::meta::{NodeMeta, Role};
use redis::{Commands, ErrorKind, RedisResult};
use serde_json::{json, Value};

/// What the remote journal at `path` holds: LSNs in order, and each key's last client value
/// (`None` once deleted).
struct JournalContents {
    lsns: Vec<u64>,
    values: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

fn read_journal(path: &std::path::Path) -> JournalContents {
    let mut contents = JournalContents { lsns: Vec::new(), values: HashMap::new() };
    for record in journal_dump(path) {
        contents.lsns.push(record["lsn"].as_u64().expect("lsn"));
        for op in record["ops"].as_array().into_iter().flatten() {
            let after = (!op["after"].is_null()).then(|| client_value(&dumped_bytes(&op["after"])));
            contents.values.insert(dumped_bytes(&op["key"]), after);
        }
    }
    contents
}

/// LSNs must run 1, 2, 3, … with nothing missing and nothing twice.
fn assert_contiguous_from_one(lsns: &[u64], what: &str) {
    for (index, lsn) in lsns.iter().enumerate() {
        assert_eq!(*lsn, index as u64 + 1, "{what}: LSN {lsn} at position {index} (a gap or a duplicate)");
    }
}

fn node_field(status: &Value, node: &str, field: &str) -> Value {
    status["nodes"][node][field].clone()
}

/// A write on the primary is acknowledged, and (the pair being at `applied`) a GET on the
/// backup right after the acknowledgement returns it.
fn assert_pair_still_works(pair: &Pair, step: &str) {
    let key = format!("after-{step}");
    let _: () =
        pair.redis(PRIMARY).set(&key, step).unwrap_or_else(|e| panic!("after {step}: write on the primary: {e}"));
    let on_backup: Option<String> = pair.redis(BACKUP).get(&key).expect("GET on the backup");
    assert_eq!(on_backup.as_deref(), Some(step), "after {step}: the acknowledged write is not on the backup");
}

#[test]
fn writes_through_redis_reach_the_backup_with_equal_digests_and_identical_journals() {
    // SET, MSET, INCR/INCRBY, DEL and SET EX through the redis crate: the backup serves the same
    // values, both report one digest at one LSN, and after a clean stop (SIGTERM) the backup's
    // remote journal holds exactly the primary's local journal records. (`received`: the levels
    // `durable` and `applied` have tests of their own below.)
    let mut pair = Pair::start(SyncLevel::Received);
    let mut a = pair.redis(PRIMARY);
    let _: () = a.set("plain", "v1").unwrap();
    let _: () = a.set("plain", "v2").unwrap();
    let _: () = a.mset(&[("m1", "x"), ("m2", "y"), ("m3", "z")]).unwrap();
    assert_eq!(a.incr::<_, _, i64>("counter", 1).unwrap(), 1);
    assert_eq!(a.incr::<_, _, i64>("counter", 41).unwrap(), 42);
    assert_eq!(a.del::<_, i64>("m2").unwrap(), 1);
    assert_eq!(a.del::<_, i64>("never-there").unwrap(), 0);
    let _: () = redis::cmd("SET").arg("ttl").arg("lives").arg("EX").arg(3600).query(&mut a).unwrap();
    let binary: Vec<u8> = vec![0, 255, 13, 10, 128, 7];
    let _: () = a.set("binary", &binary).unwrap();
    let _: () = a.set("empty", "").unwrap();

    // WAIT (as in Redis): once it counts the backup, every write before it is readable there.
    let replicas: i64 = redis::cmd("WAIT").arg(1).arg(10_000).query(&mut a).unwrap();
    assert_eq!(replicas, 1, "WAIT did not count the backup");
    let mut b = pair.redis(BACKUP);
    assert_eq!(b.get::<_, Option<String>>("empty").unwrap().as_deref(), Some(""), "a write before WAIT is missing");
    let lsn = pair.wait_caught_up();
    let status = pair.status();
    for (node, role, local, remote) in
        [(PRIMARY, "primary", "active", "dormant"), (BACKUP, "backup", "dormant", "active")]
    {
        let fields = ["role", "epoch", "sync", "local_journal", "remote_journal"].map(|f| node_field(&status, node, f));
        assert_eq!(fields, [json!(role), json!(1), json!("received"), json!(local), json!(remote)], "{node}: {status}");
    }
    assert_eq!(status["nodes"][PRIMARY]["writes"]["accepting"], true, "{status}");
    assert_eq!(status["nodes"][BACKUP]["peer"]["connected"], true, "{status}");
    let expected: [(&str, Option<&[u8]>); 9] = [
        ("plain", Some(b"v2")),
        ("m1", Some(b"x")),
        ("m2", None),
        ("m3", Some(b"z")),
        ("counter", Some(b"42")),
        ("never-there", None),
        ("ttl", Some(b"lives")),
        ("binary", Some(&binary)),
        ("empty", Some(b"")),
    ];
    for (key, value) in expected {
        let on_backup: Option<Vec<u8>> = b.get(key).unwrap();
        let on_primary: Option<Vec<u8>> = a.get(key).unwrap();
        assert_eq!(on_backup.as_deref(), value, "backup's {key}");
        assert_eq!(on_primary, on_backup, "primary's and backup's {key}");
    }
    let dbsize = |c: &mut redis::Connection| -> i64 { redis::cmd("DBSIZE").query(c).unwrap() };
    assert_eq!((dbsize(&mut a), dbsize(&mut b)), (7, 7));

    // The same records, in the same order, on both sides (only the `journal` label differs).
    pair.stop(BACKUP);
    pair.stop(PRIMARY);
    let strip = |records: Vec<Value>| -> Vec<Value> {
        records
            .into_iter()
            .map(|mut r| {
                r.as_object_mut().expect("record object").remove("journal");
                r
            })
            .collect()
    };
    let local = strip(journal_dump(&pair.node_dir(PRIMARY).join("journal/local")));
    let remote = strip(journal_dump(&pair.node_dir(BACKUP).join("journal/remote")));
    assert_eq!(local.len() as u64, lsn, "the primary's journal ends at the LSN status reported");
    assert_eq!(local, remote, "the backup's remote journal is not the primary's local journal");
}

#[test]
fn durable_acknowledged_writes_survive_sigkill_of_both_nodes() {
    // At `durable`, every acknowledged SET is in the backup's remote journal even when both
    // processes are SIGKILLed right after the last acknowledgement; restarted, the backup serves
    // them all and the digests agree.
    const KEYS: usize = 150;
    let mut pair = Pair::start(SyncLevel::Durable);
    let mut a = pair.redis(PRIMARY);
    for i in 0..KEYS {
        let _: () = a.set(format!("key-{i}"), format!("value-{i}")).unwrap_or_else(|e| panic!("SET key-{i}: {e}"));
    }
    pair.kill(BACKUP);
    pair.kill(PRIMARY);

    let journal = read_journal(&pair.node_dir(BACKUP).join("journal/remote"));
    assert_contiguous_from_one(&journal.lsns, "backup's remote journal");
    for i in 0..KEYS {
        let kept = journal.values.get(format!("key-{i}").as_bytes());
        assert_eq!(
            kept,
            Some(&Some(format!("value-{i}").into_bytes())),
            "acknowledged key-{i} is not in the backup's remote journal"
        );
    }

    pair.restart(BACKUP);
    pair.restart(PRIMARY);
    pair.wait_ready();
    pair.wait_caught_up();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("key-{i}")).collect();
    let values: Vec<Option<String>> = pair.redis(BACKUP).mget(&keys).unwrap();
    for (i, value) in values.iter().enumerate() {
        assert_eq!(value.as_deref(), Some(format!("value-{i}").as_str()), "key-{i} on the restarted backup");
    }
}

#[test]
fn applied_level_makes_each_acknowledged_write_visible_on_the_backup_at_once() {
    // At `applied`, a GET on the backup right after the acknowledgement sees the write: no
    // polling, no waiting.
    let pair = Pair::start(SyncLevel::Applied);
    let (mut a, mut b) = (pair.redis(PRIMARY), pair.redis(BACKUP));
    for i in 0..100 {
        let value = format!("v{i}");
        let _: () = a.set("hot", &value).unwrap();
        let seen: Option<String> = b.get("hot").unwrap();
        assert_eq!(seen.as_deref(), Some(value.as_str()), "write {i} acknowledged but not visible on the backup");
        let count: i64 = a.incr("count", 1).unwrap();
        let seen: Option<i64> = b.get("count").unwrap();
        assert_eq!(seen, Some(count), "INCR {i} acknowledged but not visible on the backup");
    }
    let _: () = a.mset(&[("x", "1"), ("y", "2")]).unwrap();
    let seen: (Option<String>, Option<String>) = (b.get("x").unwrap(), b.get("y").unwrap());
    assert_eq!(seen, (Some("1".into()), Some("2".into())));
    let _: i64 = a.del("x").unwrap();
    assert_eq!(b.exists::<_, i64>("x").unwrap(), 0, "DEL acknowledged but the backup still has x");
}

#[test]
fn the_backup_applies_the_last_write_soon_after_writes_stop() {
    // Below `applied` the primary leaves the confirmation of a batch to the next batch, and
    // tells the backup on its own only when none follows (replication::CONFIRM_DELAY). With
    // heartbeats and canaries far apart, nothing else would confirm the last write: it must
    // still reach the backup's store within a few seconds, not at the next heartbeat.
    let options = Options { heartbeat: Some("30s"), monitor: Some("canary_interval = \"off\""), ..Options::default() };
    let pair = Pair::start_with(SyncLevel::Durable, options);
    let (mut a, mut b) = (pair.redis(PRIMARY), pair.redis(BACKUP));
    for i in 0..20 {
        let value = format!("v{i}");
        let _: () = a.set("last", &value).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let seen: Option<String> = b.get("last").unwrap();
            if seen.as_deref() == Some(value.as_str()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "write {i} acknowledged at durable but not applied on the backup in 5 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn durable_writes_fail_unacknowledged_while_replication_is_stopped() {
    // At `durable` with shipping stopped, a SET answers an error that says it was NOT
    // acknowledged, after sync_timeout and not long after; the pair resumes on `replicate start`.
    let mut pair = Pair::start_with(SyncLevel::Durable, Options { sync_timeout: Some("500ms"), ..Options::default() });
    let mut a = pair.redis(PRIMARY);
    let _: () = a.set("before", "1").unwrap();
    pair.hotpair_ok(&["replicate", "stop"]);
    pair.wait_for("both sides to see the link down", |s| {
        s["nodes"][PRIMARY]["peer"]["connected"] == false && s["nodes"][BACKUP]["peer"]["connected"] == false
    });

    let started = Instant::now();
    let refused: RedisResult<()> = a.set("during", "2");
    let elapsed = started.elapsed();
    let err = refused.expect_err("a durable write was acknowledged with replication stopped");
    let message = err.to_string();
    assert!(message.contains("NOT acknowledged") && message.contains("500ms"), "unexpected refusal: {message}");
    assert!(message.contains("the backup is not connected"), "the refusal must say why: {message}");
    assert!(elapsed >= Duration::from_millis(500), "refused after {elapsed:?}, before sync_timeout");
    assert!(elapsed < Duration::from_secs(3), "refused only after {elapsed:?}");

    // The stop holds across a restart of the backup: it does not reconnect by itself.
    pair.stop(BACKUP);
    pair.restart(BACKUP);
    let b_status = pair.node_status(BACKUP);
    assert_eq!(b_status["replicating"], false, "replicate stop did not survive b's restart: {b_status}");
    assert_eq!(b_status["following"], false, "{b_status}");

    pair.hotpair_ok(&["replicate", "start"]);
    pair.wait_ready();
    let _: () = a.set("after", "3").unwrap();
    pair.wait_caught_up();
    // The refused write is in the primary's journal: it was shipped once the link came back.
    let mut b = pair.redis(BACKUP);
    let values: Vec<Option<String>> = b.mget(&["before", "during", "after"]).unwrap();
    assert_eq!(values, [Some("1".into()), Some("2".into()), Some("3".into())]);
}

#[test]
fn backup_catches_up_after_replicate_start_with_no_gap() {
    // Shipping stopped, 10,000 keys written at `async`, both journals' segments closed
    // (`replicate reopen-log`), shipping started: the backup catches up to the primary's LSN
    // with a contiguous remote journal across its segments, every key, and the same digest.
    const WRITERS: usize = 40;
    const KEYS_PER_WRITER: usize = 250;
    let mut pair = Pair::start(SyncLevel::Async);
    let _: () = pair.redis(PRIMARY).set("seed", "s").unwrap();
    let before = pair.wait_caught_up();
    pair.hotpair_ok(&["replicate", "stop"]);
    pair.wait_for("both sides to see the link down", |s| {
        s["nodes"][PRIMARY]["peer"]["connected"] == false && s["nodes"][BACKUP]["peer"]["connected"] == false
    });

    // Many connections so that group commit shares the fsyncs; each pipelines its keys.
    std::thread::scope(|scope| {
        for w in 0..WRITERS {
            let mut connection = pair.redis(PRIMARY);
            scope.spawn(move || {
                let mut pipe = redis::pipe();
                for k in 0..KEYS_PER_WRITER {
                    pipe.set(format!("bulk-{w}-{k}"), format!("{w}:{k}")).ignore();
                }
                let _: () = pipe.query(&mut connection).unwrap_or_else(|e| panic!("writer {w}: {e}"));
            });
        }
    });
    let status = pair.status();
    let written = node_field(&status, PRIMARY, "lsn").as_u64().expect("primary lsn");
    assert!(written >= before + (WRITERS * KEYS_PER_WRITER) as u64, "primary at {written}: {status}");
    assert_eq!(node_field(&status, BACKUP, "lsn"), before, "the backup moved while shipping was stopped: {status}");
    assert_eq!(node_field(&status, BACKUP, "received_lsn"), before, "{status}");

    // Both nodes close their journal segment: the catch-up lands in a fresh remote segment.
    pair.hotpair_ok(&["replicate", "reopen-log"]);
    pair.hotpair_ok(&["replicate", "start"]);
    let caught_up = pair.wait_caught_up();
    assert_eq!(caught_up, written);
    let segments = journal_segments(&pair.node_dir(BACKUP).join("journal/remote"));
    assert!(segments >= 2, "the backup's remote journal has {segments} segment(s) after reopen-log");

    let journal = read_journal(&pair.node_dir(BACKUP).join("journal/remote"));
    assert_contiguous_from_one(&journal.lsns, "backup's remote journal");
    assert_eq!(journal.lsns.last().copied(), Some(written));
    let keys: Vec<String> =
        (0..WRITERS).flat_map(|w| (0..KEYS_PER_WRITER).map(move |k| format!("bulk-{w}-{k}"))).collect();
    let values: Vec<Option<String>> = pair.redis(BACKUP).mget(&keys).unwrap();
    for (key, value) in keys.iter().zip(&values) {
        let (w, k) = key.trim_start_matches("bulk-").split_once('-').expect("key shape");
        assert_eq!(value.as_deref(), Some(format!("{w}:{k}").as_str()), "{key} on the backup");
    }
}

// ---------------------------------------------------------------------------------------------
// Refusals. Control-port clients are made by hand from the pair's (or another pair's) files.

/// Bound on one hand-made control-port exchange.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(15);

/// What a control-port exchange came to. (The texts are read through `Debug`, in failure messages.)
#[allow(dead_code)]
#[derive(Debug)]
enum Exchange {
    /// The TLS handshake failed on our side.
    HandshakeFailed(String),
    /// The node answered with a frame.
    Answered(Frame),
    /// The node closed the connection (or reset it / sent a TLS alert) without a frame.
    Closed(String),
}

/// Connects to `node`'s control port with `client`, sends `frames`, and reads one answer.
fn control_exchange(pair: &Pair, node: &str, client: Arc<rustls::ClientConfig>, frames: Vec<Frame>) -> Exchange {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let address = pair.control_address(node);
    let name = hotpair::tls::server_name(&pair.config, node);
    runtime.block_on(async move {
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(address).await.expect("connect to the control port");
            let mut stream = match tokio_rustls::TlsConnector::from(client).connect(name, tcp).await {
                Ok(stream) => stream,
                Err(err) => return Exchange::HandshakeFailed(err.to_string()),
            };
            for frame in &frames {
                if let Err(err) = wire::write_frame(&mut stream, frame).await {
                    return Exchange::Closed(format!("write: {err}"));
                }
            }
            match wire::read_frame(&mut stream).await {
                Ok(Some(frame)) => Exchange::Answered(frame),
                Ok(None) => Exchange::Closed("end of stream".into()),
                Err(err) => Exchange::Closed(err.to_string()),
            }
        };
        tokio::time::timeout(EXCHANGE_LIMIT, exchange).await.expect("the control port neither answered nor closed")
    })
}

fn hello(pair: &Pair, incarnation: uuid::Uuid, last_lsn: u64) -> Frame {
    let meta = NodeMeta::load(&pair.node_dir(BACKUP)).expect("backup meta");
    Frame::Message(Envelope {
        from: BACKUP.into(),
        epoch: meta.epoch,
        message: Message::Hello {
            protocol: hotpair::engine::PROTOCOL_VERSION,
            cluster: pair.config.cluster,
            incarnation,
            role: Role::Backup,
            history: meta.history,
            last_lsn,
            confirmed_lsn: last_lsn,
            tail_crcs: Vec::new(),
            last_crc: None,
            config_digest: None,
        },
    })
}

fn admin_status_request() -> Frame {
    Frame::Message(Envelope {
        from: "admin".into(),
        epoch: 0,
        message: Message::Admin { request: AdminRequest::Status },
    })
}

/// Sends raw bytes, closes our side, and returns everything the server sent until it closed.
fn raw_exchange(address: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(EXCHANGE_LIMIT)).expect("read timeout");
    // The server may close before reading everything (a TLS alert): a failed write is fine.
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(err) => panic!("{address} neither answered nor closed: {err}"),
    }
    answer
}

#[test]
fn refusals_on_both_ports_leave_the_pair_working() {
    // Garbage on the control and data ports, a certificate of another pair, the admin
    // certificate used for replication (and a node certificate for admin), a second
    // installation claiming b, writes on the backup: each is refused, and after each a write on
    // the primary is acknowledged and visible on the backup at once (`applied`).
    let pair = Pair::start(SyncLevel::Applied);
    let backup_lsn = |pair: &Pair| node_field(&pair.status(), BACKUP, "lsn");

    // 1. Bytes that are not TLS on the control ports: closed at once, not after a timeout.
    let garbage: Vec<u8> = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".iter().copied().chain((0..=255u8).rev()).collect();
    for node in [PRIMARY, BACKUP] {
        let started = Instant::now();
        let answer = raw_exchange(pair.control_address(node), &garbage);
        assert!(started.elapsed() < Duration::from_secs(5), "{node} held a garbage connection {:?}", started.elapsed());
        // At most a TLS alert record (content type 21), never anything else.
        assert!(answer.is_empty() || answer[0] == 21, "{node} answered garbage with {answer:?}");
    }
    pair.wait_log(PRIMARY, "TLS handshake failed", "the primary logs the refusal");
    assert_pair_still_works(&pair, "control-garbage");

    // 2. Garbage on the data ports: a protocol error, then the connection is closed.
    for node in [PRIMARY, BACKUP] {
        let answer = raw_exchange(pair.data_address(node), b"*2\r\n$abc\r\nxyz\r\n");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("-ERR Protocol error"), "{node} answered {text:?}");
        let answer = raw_exchange(pair.data_address(node), &(0..=255u8).chain(*b"\r\n").collect::<Vec<_>>());
        assert!(answer.starts_with(b"-"), "{node} answered binary garbage with {:?}", String::from_utf8_lossy(&answer));
    }
    assert_pair_still_works(&pair, "data-garbage");

    // 3. A node certificate of another pair (another CA, another cluster), even from a client
    //    that trusts this pair's CA: the handshake is refused by the node.
    let other_dir = tempfile::tempdir().expect("temporary directory");
    let other = pair_from_another_init(other_dir.path());
    for (node, impostor) in [(PRIMARY, BACKUP), (BACKUP, PRIMARY)] {
        let mut forged = pair.config.clone();
        let theirs = other.node(impostor).expect("other pair's node").clone();
        let slot = forged.nodes.iter_mut().find(|n| n.name == impostor).expect("our node");
        (slot.cert, slot.key) = (theirs.cert, theirs.key);
        let client = hotpair::tls::node_client_config(&forged, impostor).expect("client config");
        match control_exchange(&pair, node, client, vec![hello(&pair, uuid::Uuid::new_v4(), 0)]) {
            Exchange::HandshakeFailed(_) | Exchange::Closed(_) => {}
            answered => panic!("{node} let a certificate of another pair in: {answered:?}"),
        }
    }
    let log = pair.log(PRIMARY);
    assert!(
        log.lines().any(|l| l.contains("TLS handshake failed") && l.contains("UnknownIssuer")),
        "the primary did not log an unknown issuer"
    );
    assert_pair_still_works(&pair, "foreign-certificate");

    // 4. The admin certificate may send admin requests only; a node certificate may not send them.
    let admin = hotpair::tls::admin_client_config(&pair.config).expect("admin client config");
    for node in [PRIMARY, BACKUP] {
        match control_exchange(&pair, node, admin.clone(), vec![hello(&pair, uuid::Uuid::new_v4(), 0)]) {
            Exchange::Closed(_) => {}
            other => panic!("{node} took a hello from the admin certificate: {other:?}"),
        }
        match control_exchange(&pair, node, admin.clone(), vec![admin_status_request()]) {
            Exchange::Answered(Frame::Message(Envelope { message: Message::AdminReply { ok: true, .. }, .. })) => {}
            other => panic!("{node} refused the admin's status request: {other:?}"),
        }
    }
    let as_b = hotpair::tls::node_client_config(&pair.config, BACKUP).expect("b's client config");
    for node in [PRIMARY, BACKUP] {
        match control_exchange(&pair, node, as_b.clone(), vec![admin_status_request()]) {
            Exchange::Closed(_) => {}
            other => panic!("{node} answered an admin request made with b's node certificate: {other:?}"),
        }
    }
    assert_pair_still_works(&pair, "admin-certificate");

    // 5. b's certificate with another incarnation (a restored copy, a second installation).
    match control_exchange(&pair, PRIMARY, as_b.clone(), vec![hello(&pair, uuid::Uuid::new_v4(), 0)]) {
        Exchange::Answered(Frame::Message(Envelope { message: Message::Refused { reason, .. }, .. })) => {
            assert!(reason.contains("incarnation"), "refused for another reason: {reason}")
        }
        other => panic!("the primary did not refuse a second installation of b: {other:?}"),
    }
    let status = pair.node_status(PRIMARY);
    let open: Vec<&str> =
        status["incidents"].as_array().into_iter().flatten().filter_map(|i| i["kind"].as_str()).collect();
    assert!(open.contains(&"second-installation"), "the refusal is an incident: {open:?}");
    assert_pair_still_works(&pair, "second-installation");

    // 5b. b's own incarnation, but a position behind what b acknowledged (a restored copy).
    let incarnation = NodeMeta::load(&pair.node_dir(BACKUP)).expect("b's metadata").incarnation;
    match control_exchange(&pair, PRIMARY, as_b.clone(), vec![hello(&pair, incarnation, 0)]) {
        Exchange::Answered(Frame::Message(Envelope { message: Message::Refused { reason, .. }, .. })) => {
            assert!(reason.contains("behind LSN"), "refused for another reason: {reason}")
        }
        other => panic!("the primary did not refuse b presenting an old position: {other:?}"),
    }
    assert_pair_still_works(&pair, "restored-copy");

    // 5c. Everything right, while b's own session is live: a second connection is refused.
    let lsn = backup_lsn(&pair).as_u64().expect("b's lsn");
    match control_exchange(&pair, PRIMARY, as_b, vec![hello(&pair, incarnation, lsn)]) {
        Exchange::Answered(Frame::Message(Envelope { message: Message::Refused { reason, .. }, .. })) => {
            assert!(reason.contains("already active"), "refused for another reason: {reason}")
        }
        other => panic!("the primary took a second live connection claiming b: {other:?}"),
    }
    assert_pair_still_works(&pair, "second-connection");

    // 6. Writes on the backup answer READONLY and change nothing there.
    let lsn = backup_lsn(&pair);
    let mut b = pair.redis(BACKUP);
    let refusals: [RedisResult<()>; 4] = [
        b.set("on-backup", "x"),
        b.mset(&[("on-backup", "x")]),
        b.incr("on-backup", 1),
        b.del("after-control-garbage"),
    ];
    for refusal in refusals {
        let err = refusal.expect_err("a write on the backup succeeded");
        assert_eq!(err.kind(), ErrorKind::ReadOnly, "{err}");
    }
    assert_eq!(backup_lsn(&pair), lsn);
    assert_pair_still_works(&pair, "backup-write");
    assert_eq!(
        pair.redis(BACKUP).get::<_, Option<String>>("after-control-garbage").unwrap().as_deref(),
        Some("control-garbage")
    );
}

#[test]
fn a_peer_speaking_another_protocol_version_is_refused_naming_both() {
    // A b of an older build (protocol 1, before the hello carried a version) says hello to a:
    // refused, both versions named, and a keeps serving (the rolling upgrade's mixed moment).
    let mut pair = Pair::start(SyncLevel::Async);
    pair.kill(BACKUP);
    pair.wait_for_node(PRIMARY, "a to see b gone", |s| s["peer"]["connected"] == false);
    let incarnation = NodeMeta::load(&pair.node_dir(BACKUP)).expect("b's metadata").incarnation;
    let mut old = hello(&pair, incarnation, 0);
    if let Frame::Message(Envelope { message: Message::Hello { protocol, .. }, .. }) = &mut old {
        *protocol = 1;
    }
    let as_b = hotpair::tls::node_client_config(&pair.config, BACKUP).expect("b's client config");
    match control_exchange(&pair, PRIMARY, as_b, vec![old]) {
        Exchange::Answered(Frame::Message(Envelope { message: Message::Refused { reason, .. }, .. })) => {
            let ours = format!("protocol {}", hotpair::engine::PROTOCOL_VERSION);
            assert!(reason.contains("protocol 1") && reason.contains(&ours), "{reason}");
            assert!(reason.contains("same hotpair version"), "{reason}");
        }
        other => panic!("a did not refuse a hello of protocol 1: {other:?}"),
    }
    let _: () = pair.redis(PRIMARY).set("after-old-hello", "1").expect("a keeps taking writes");
}

#[test]
fn reaching_another_pairs_node_says_so_and_what_to_check() {
    // The admin's pair file names this pair's addresses but another pair's certificates: the
    // node's certificate is not from our CA. rustls says only `UnknownIssuer`.
    let pair = Pair::start(SyncLevel::Async);
    let other = pair_from_another_init(pair.dir());
    let crossed = PairConfig { tls: other.tls.clone(), cluster: other.cluster, ..pair.config.clone() };
    let request = hotpair::admin::client::request(&crossed, PRIMARY, hotpair::replication::wire::AdminRequest::Status);
    let err = hotpair::admin::client::block_on(request).expect("runtime").expect_err("another pair's node answered");
    assert!(err.contains("UnknownIssuer") && err.contains("another pair's node"), "{err}");
    assert!(err.contains("check the address in the pair file"), "{err}");
    // The node, for its part, logs the stranger with the same explanation.
    pair.wait_log(PRIMARY, "another pair's node", "the node explaining the foreign certificate");
}

/// Runs `hotpair init` in `dir` (never started) and loads its pair file.
fn pair_from_another_init(dir: &std::path::Path) -> PairConfig {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hotpair"))
        .args(["init", "--dir"])
        .arg(dir.join("other"))
        .args(["--nodes", "a=127.0.0.1:1,b=127.0.0.1:4"])
        .output()
        .expect("run hotpair init");
    assert!(out.status.success(), "{}", common::stderr(&out));
    PairConfig::load(&dir.join("other/pair.toml")).expect("other pair file")
}

// ---------------------------------------------------------------------------------------------
// Restarts.

/// Cuts every record past `lsn` from the journal in `dir`, as a power loss takes what was
/// written but not fsynced: the segment files past it go, the one holding it ends after it.
fn cut_journal_after(dir: &std::path::Path, lsn: u64) {
    let entries = hotpair::storage::journal::read_dir_from(dir, lsn + 1).expect("read the primary's journal");
    let mut first_cut: Option<(std::path::PathBuf, u64)> = None;
    for entry in entries {
        let entry = entry.expect("a whole record");
        if entry.record.lsn > lsn {
            first_cut = Some((entry.path, entry.offset));
            break;
        }
    }
    let (path, offset) = first_cut.expect("records past the durable LSN to cut");
    for segment in std::fs::read_dir(dir).expect("list the journal") {
        let segment = segment.expect("a journal entry").path();
        if segment.file_name() > path.file_name() {
            std::fs::remove_file(&segment).expect("remove a later segment");
        }
    }
    let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open the segment");
    file.set_len(offset).expect("cut the segment");
}

/// Writes `acked-0..count` (acknowledged), then restarts the primary with `delay_env` set
/// and writes `key` from a thread, waiting until the backup holds that record while the primary
/// has not fsynced it. Returns the primary's durable LSN then, and the writer's thread.
fn ship_an_unconfirmed_write(
    pair: &mut Pair,
    count: i64,
    delay_env: &str,
    delay: &str,
    key: &'static str,
) -> (u64, std::thread::JoinHandle<RedisResult<()>>) {
    let mut a = pair.redis(PRIMARY);
    for i in 0..count {
        let _: () = a.set(format!("acked-{i}"), i).expect("acknowledged before the crash");
    }
    pair.wait_caught_up();
    drop(a);
    pair.stop(PRIMARY);
    pair.set_env(PRIMARY, delay_env, Some(delay));
    pair.restart(PRIMARY);
    pair.wait_ready();
    let writer = {
        let mut a = pair.redis(PRIMARY);
        std::thread::spawn(move || -> RedisResult<()> { a.set(key, "never acknowledged") })
    };
    let shipped = pair.wait_for("the backup to hold a record the primary has not fsynced", |s| {
        let (a, b) = (&s["nodes"][PRIMARY], &s["nodes"][BACKUP]);
        let (durable, last) = (a["durable_lsn"].as_u64(), a["last_lsn"].as_u64());
        durable.is_some() && last > durable && b["received_lsn"].as_u64() >= last
    });
    let durable = node_field(&shipped, PRIMARY, "durable_lsn").as_u64().expect("durable LSN");
    (durable, writer)
}

/// With the restarted primary taking writes: writes `after-0..count`, waits until the backup
/// caught up, and checks that the backup dropped the record `key` and follows without a
/// divergence, every acknowledged write on both nodes and `key` on neither.
fn assert_followed_again_without(pair: &mut Pair, count: i64, key: &str) {
    let mut a = pair.redis(PRIMARY);
    for i in 0..count {
        let _: () = a.set(format!("after-{i}"), i).expect("a write after the restart");
    }
    pair.wait_caught_up();
    assert!(pair.log(BACKUP).contains("dropped records the primary shipped before its fsync"), "{}", pair.log(BACKUP));
    let status = pair.status();
    assert_eq!(node_field(&status, BACKUP, "diverged_at"), Value::Null, "{status}");
    let mut b = pair.redis(BACKUP);
    for (node, connection) in [(PRIMARY, &mut a), (BACKUP, &mut b)] {
        let lost: Option<String> = connection.get(key).expect("GET the lost key");
        assert_eq!(lost, None, "{node} holds the write the primary lost");
        for i in 0..count {
            let acked: Option<i64> = connection.get(format!("acked-{i}")).expect("GET acked");
            let after: Option<i64> = connection.get(format!("after-{i}")).expect("GET after");
            assert_eq!((acked, after), (Some(i), Some(i)), "{node}, key {i}");
        }
    }
}

#[test]
fn a_primary_that_lost_records_it_had_shipped_is_followed_again_without_them() {
    // Records ship before the primary's fsync. Hold the primary's fsync back (it calls each
    // one done 5 s late), write a key, wait until the backup holds it, then SIGKILL the primary
    // and cut that record from its journal, as a power loss would. The backup must not have
    // applied the record (its primary never confirmed it), the write was never acknowledged,
    // and when the primary restarts without it the backup drops it and follows again: no
    // divergence, no rejoin, equal digests, every acknowledged write on both. Until then the
    // restarted primary takes no writes, though its probe finds the backup. (The next test
    // reaches the same state with a plain kill -9.)
    let mut pair = Pair::start(SyncLevel::Durable);
    let (durable, writer) =
        ship_an_unconfirmed_write(&mut pair, 50, hotpair::node::SIMULATED_FSYNC_DELAY_ENV, "5s", "lost");
    let lost: Option<String> = pair.redis(BACKUP).get("lost").expect("GET on the backup");
    assert_eq!(lost, None, "the backup applied a record its primary had not confirmed (primary durable at {durable})");
    pair.kill(PRIMARY);
    let written = writer.join().expect("the writer thread");
    assert!(written.is_err(), "the write was acknowledged before the primary's fsync was done");

    let local = hotpair::node::journal_dir(&pair.node_dir(PRIMARY), hotpair::storage::journal::JournalKind::Local);
    cut_journal_after(&local, durable);
    pair.set_env(PRIMARY, hotpair::node::SIMULATED_FSYNC_DELAY_ENV, None);
    // First with b answering probes but not following: a's probe sees b holding more than a
    // does, so a must not take writes (they would reuse the LSNs b holds) until b's hello.
    pair.hotpair_ok(&["replicate", "stop", BACKUP]);
    pair.restart(PRIMARY);
    // A condition that must stay false: give the probe (every 500 ms) several chances.
    std::thread::sleep(Duration::from_millis(2000));
    let status = pair.status();
    assert_eq!(status["nodes"][PRIMARY]["writes"]["accepting"], false, "released by a probe: {status}");
    pair.hotpair_ok(&["replicate", "start", BACKUP]);
    pair.wait_ready();
    assert_followed_again_without(&mut pair, 50, "lost");
}

#[test]
fn a_primary_killed_before_writing_a_record_it_shipped_is_followed_again_without_it() {
    // A primary ships a group from memory before its journal writes it. Hold the write back
    // (HOTPAIR_SIMULATED_LOCAL_WRITE_DELAY), write a key, wait until the backup holds it, and
    // SIGKILL the primary: the record is in no file of the primary, yet the backup holds it.
    // Nothing is cut by hand. The restarted primary must have the backup drop it and follow.
    let options = Options { monitor: Some("canary_interval = \"off\""), ..Options::default() };
    let mut pair = Pair::start_with(SyncLevel::Durable, options);
    let (durable, writer) =
        ship_an_unconfirmed_write(&mut pair, 20, hotpair::node::SIMULATED_WRITE_DELAY_ENV, "20s", "unwritten");
    pair.kill(PRIMARY);
    assert!(writer.join().expect("the writer thread").is_err(), "the write was acknowledged before it was written");
    let local = hotpair::node::journal_dir(&pair.node_dir(PRIMARY), hotpair::storage::journal::JournalKind::Local);
    let in_files: Vec<u64> = hotpair::storage::journal::read_dir_from(&local, durable + 1)
        .expect("read the primary's journal")
        .map(|entry| entry.expect("a whole record").record.lsn)
        .collect();
    assert!(
        in_files.is_empty(),
        "the primary's journal holds LSNs {in_files:?} past {durable}: the write was not held back"
    );

    pair.set_env(PRIMARY, hotpair::node::SIMULATED_WRITE_DELAY_ENV, None);
    pair.restart(PRIMARY);
    pair.wait_ready();
    assert_followed_again_without(&mut pair, 20, "unwritten");
}

#[test]
fn a_drain_that_runs_out_leaves_a_restarted_primary_waiting_for_its_backup() {
    // A restarted primary takes no writes until its backup's word (invariant 2). A switchover's
    // drain on it, whose lease then runs out, ends the drain's own refusal only: with the
    // backup down the primary still refuses writes, and takes them once the backup is back.
    let mut pair = Pair::start(SyncLevel::Async);
    let _: () = pair.redis(PRIMARY).set("before", "1").expect("a write before the restart");
    pair.wait_caught_up();
    pair.stop(BACKUP);
    pair.kill(PRIMARY);
    pair.restart(PRIMARY);
    let epoch = pair.node_status(PRIMARY)["epoch"].as_u64().expect("epoch");
    let drain = AdminRequest::Drain { op_id: uuid::Uuid::new_v4(), epoch, lease_ms: 200 };
    hotpair::admin::client::block_on(hotpair::admin::client::request(&pair.config, PRIMARY, drain))
        .expect("runtime")
        .expect("the restarted primary drains");
    let status = pair.wait_for_node(PRIMARY, "the drain lease to run out", |s| s["role"] == "primary");
    let writes = &status["writes"];
    assert_eq!(writes["accepting"], false, "the lease's end let a restarted primary take writes: {status}");
    assert!(writes["reason"].as_str().is_some_and(|r| r.contains("restarted primary waits")), "{status}");
    pair.restart(BACKUP);
    pair.wait_ready();
    let _: () = pair.redis(PRIMARY).set("after", "1").expect("a write once the backup confirmed");
    pair.wait_caught_up();
}

#[test]
fn restarted_primary_refuses_writes_until_its_backup_confirms_then_ships_from_its_files() {
    // SIGKILL and restart the primary while the backup is held off (`replicate stop b`) and
    // behind by 3,000 records spread over several journal segments, and is stopped too (SIGSTOP:
    // it cannot answer the primary's probe): the primary serves reads but answers TRYAGAIN to
    // writes; once b runs again it confirms it is not in a higher epoch, is let go, catches up
    // from the journal files (the restarted primary holds none of those records in memory) with
    // no gap, and writes are taken and replicated again.
    const SEGMENTS: usize = 3;
    const WRITERS: usize = 10;
    const KEYS_PER_WRITER: usize = 100;
    let mut pair = Pair::start(SyncLevel::Async);
    let _: () = pair.redis(PRIMARY).set("old", "1").unwrap();
    let before = pair.wait_caught_up();
    pair.hotpair_ok(&["replicate", "stop", BACKUP]);
    pair.wait_for("the primary to see its backup gone", |s| s["nodes"][PRIMARY]["peer"]["connected"] == false);
    let mut keys = Vec::new();
    for segment in 0..SEGMENTS {
        std::thread::scope(|scope| {
            for w in 0..WRITERS {
                let mut connection = pair.redis(PRIMARY);
                scope.spawn(move || {
                    let mut pipe = redis::pipe();
                    for k in 0..KEYS_PER_WRITER {
                        pipe.set(format!("behind-{segment}-{w}-{k}"), k).ignore();
                    }
                    let _: () = pipe.query(&mut connection).unwrap_or_else(|e| panic!("writer {w}: {e}"));
                });
            }
        });
        keys.extend((0..WRITERS).flat_map(|w| (0..KEYS_PER_WRITER).map(move |k| format!("behind-{segment}-{w}-{k}"))));
        pair.hotpair_ok(&["replicate", "reopen-log", PRIMARY]);
    }
    let status = pair.status();
    assert_eq!(node_field(&status, BACKUP, "lsn"), before, "the backup is not behind: {status}");
    pair.pause(BACKUP);
    pair.kill(PRIMARY);
    pair.restart(PRIMARY);

    let status = pair.status();
    let writes = &status["nodes"][PRIMARY]["writes"];
    assert_eq!(writes["accepting"], false, "a restarted primary takes writes before its peer confirmed: {status}");
    assert!(writes["reason"].as_str().is_some_and(|r| r.contains("confirm")), "{status}");
    let mut a = pair.redis(PRIMARY);
    let err = a.set::<_, _, ()>("new", "2").expect_err("a restarted primary acknowledged a write alone");
    assert_eq!(err.kind(), ErrorKind::TryAgain, "{err}");
    assert_eq!(a.get::<_, Option<String>>("old").unwrap().as_deref(), Some("1"), "reads are served meanwhile");
    assert_eq!(a.get::<_, Option<String>>("behind-0-0-0").unwrap().as_deref(), Some("0"));

    pair.resume(BACKUP);
    pair.hotpair_ok(&["replicate", "start", BACKUP]);
    pair.wait_ready();
    let _: () = a.set("new", "2").unwrap();
    let lsn = pair.wait_caught_up();
    let journal = read_journal(&pair.node_dir(BACKUP).join("journal/remote"));
    assert_contiguous_from_one(&journal.lsns, "backup's remote journal");
    assert_eq!(journal.lsns.last().copied(), Some(lsn));
    let segments = journal_segments(&pair.node_dir(PRIMARY).join("journal/local"));
    assert!(segments > SEGMENTS, "the primary's journal has only {segments} segments");
    let mut b = pair.redis(BACKUP);
    let values: Vec<Option<String>> = b.mget(&keys).unwrap();
    for (key, value) in keys.iter().zip(values) {
        let k = key.rsplit('-').next().expect("key shape");
        assert_eq!(value.as_deref(), Some(k), "{key} on the backup");
    }
    let values: Vec<Option<String>> = b.mget(&["old", "new"]).unwrap();
    assert_eq!(values, [Some("1".into()), Some("2".into())]);
}

/// Leaves a half-written record at the end of the newest segment in `dir`, as a crash in the
/// middle of writing the next record would: a header announcing 100 body bytes, and 20 of them.
/// (Cutting into the last *whole* record would model a lost fsync, not a crash: that record may
/// already have been acknowledged as durable.)
fn tear_a_record_being_written(dir: &std::path::Path) {
    let mut segments: Vec<_> = std::fs::read_dir(dir)
        .expect("journal directory")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "hpj"))
        .collect();
    segments.sort();
    let last = segments.last().expect("a segment file");
    // The killed node's segment runs on into preallocated zeros: the record being written when
    // it died starts where its records end.
    let bytes = std::fs::read(last).expect("read the last segment");
    let records_end = hotpair::storage::journal::segment::scan(last, &bytes, true, |_| Ok(())).expect("scan").valid_len;
    let file = std::fs::OpenOptions::new().write(true).open(last).expect("open the last segment");
    let mut partial = 100u32.to_le_bytes().to_vec();
    partial.extend_from_slice(&[0xA5; 4 + 20]);
    std::os::unix::fs::FileExt::write_all_at(&file, &partial, records_end).expect("write a half-written record");
}

/// How many segment files `hotpair journal ls PATH --json` lists.
fn journal_segments(path: &std::path::Path) -> usize {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hotpair"))
        .args(["journal", "ls"])
        .arg(path)
        .arg("--json")
        .output()
        .expect("run hotpair journal ls");
    assert!(out.status.success(), "{}", common::stderr(&out));
    let listing: Value = serde_json::from_slice(&out.stdout).expect("journal ls --json is JSON");
    listing.as_array().into_iter().flatten().map(|j| j["segments"].as_array().map_or(0, Vec::len)).sum()
}

#[test]
fn degrade_after_acknowledges_without_the_peer_and_says_so() {
    // on_peer_loss = degrade-after:300ms: with shipping stopped, a durable write is acknowledged
    // on the primary alone once the peer has been gone that long (not after sync_timeout), and
    // status says the pair is degraded; when the link is back the flag clears and the write
    // reaches the backup.
    let options =
        Options { sync_timeout: Some("10s"), on_peer_loss: Some("degrade-after:300ms"), ..Options::default() };
    let mut pair = Pair::start_with(SyncLevel::Durable, options);
    let mut a = pair.redis(PRIMARY);
    let _: () = a.set("before", "1").unwrap();
    assert_eq!(node_field(&pair.status(), PRIMARY, "degraded"), false);
    pair.hotpair_ok(&["replicate", "stop"]);
    pair.wait_for("both sides to see the link down", |s| {
        s["nodes"][PRIMARY]["peer"]["connected"] == false && s["nodes"][BACKUP]["peer"]["connected"] == false
    });
    let started = Instant::now();
    let _: () = a.set("alone", "2").expect("degrade-after did not acknowledge without the peer");
    assert!(started.elapsed() < Duration::from_secs(5), "acknowledged only after {:?}", started.elapsed());
    let status = pair.status();
    assert_eq!(node_field(&status, PRIMARY, "degraded"), true, "degrading is never silent");
    let open: Vec<&str> = status["nodes"][PRIMARY]["incidents"]
        .as_array()
        .expect("status lists incidents")
        .iter()
        .filter_map(|i| i["kind"].as_str())
        .collect();
    assert!(open.contains(&"sync-degraded"), "no sync-degraded incident open on the primary: {open:?}");

    pair.hotpair_ok(&["replicate", "start"]);
    pair.wait_ready();
    pair.wait_for("the degraded flag to clear", |s| s["nodes"][PRIMARY]["degraded"] == false);
    let _: () = a.set("after", "3").unwrap();
    pair.wait_caught_up();
    let values: Vec<Option<String>> = pair.redis(BACKUP).mget(&["before", "alone", "after"]).unwrap();
    assert_eq!(values, [Some("1".into()), Some("2".into()), Some("3".into())]);
}

#[test]
fn restarted_backup_resumes_from_its_durable_position_under_load() {
    // Writers keep committing at `durable` while the backup is SIGKILLed, a record is left
    // half-written at the end of its remote journal, and it is restarted: it cuts the torn
    // record, resumes from the
    // last whole one — no LSN twice, none missing — every acknowledged write is on it, and the
    // digests agree. No write fails meanwhile: they wait (on_peer_loss = block) and go through.
    const WRITERS: usize = 4;
    const ACKED_BEFORE_KILL: usize = 200;
    const ACKED_AFTER_RESTART: usize = 200;
    let mut pair = Pair::start(SyncLevel::Durable);
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut connection = pair.redis(PRIMARY);
            let (stop, acknowledged, failed) = (stop.clone(), acknowledged.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let (key, value) = (format!("w{w}-{i}"), format!("value-{w}-{i}"));
                    match connection.set::<_, _, ()>(&key, &value) {
                        Ok(()) => {
                            acknowledged.lock().unwrap().insert(key, value);
                        }
                        // Not acknowledged: unknown whether it survives; not checked below.
                        Err(err) => failed.lock().unwrap().push(format!("{key}: {err}")),
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let acked = || acknowledged.lock().unwrap().len();
    let wait_acked = |target: usize| {
        let deadline = Instant::now() + DEADLINE;
        while acked() < target {
            assert!(Instant::now() < deadline, "only {} writes acknowledged, waiting for {target}", acked());
            assert!(writers.iter().all(|w| !w.is_finished()), "a writer died");
            std::thread::sleep(common::POLL);
        }
    };

    wait_acked(ACKED_BEFORE_KILL);
    pair.kill(BACKUP);
    let at_kill = acked();
    // A record half-written at the kill: the restarted backup must cut it at open and ask
    // for everything after its last whole record.
    let remote = pair.node_dir(BACKUP).join("journal/remote");
    let kept = read_journal(&remote);
    assert_contiguous_from_one(&kept.lsns, "the killed backup's remote journal");
    let torn = kept.lsns.last().expect("the backup kept records before the kill") + 1;
    tear_a_record_being_written(&remote);
    pair.restart(BACKUP);
    wait_acked(at_kill + ACKED_AFTER_RESTART);
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.join().expect("writer thread");
    }

    let lsn = pair.wait_caught_up();
    let journal = read_journal(&pair.node_dir(BACKUP).join("journal/remote"));
    assert_contiguous_from_one(&journal.lsns, "the restarted backup's remote journal");
    assert_eq!(journal.lsns.last().copied(), Some(lsn));
    let acknowledged = acknowledged.lock().unwrap().clone();
    let keys: Vec<&String> = acknowledged.keys().collect();
    let values: Vec<Option<String>> = pair.redis(BACKUP).mget(&keys).unwrap();
    for ((key, expected), value) in acknowledged.iter().zip(values) {
        assert_eq!(value.as_ref(), Some(expected), "acknowledged {key} is not on the backup");
    }
    let failed = failed.lock().unwrap();
    assert!(failed.is_empty(), "writes failed while the backup restarted within sync_timeout: {failed:?}");
    // b followed twice, the second time from the end of what its journal kept.
    let log = pair.log(BACKUP);
    let starts: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("following the primary"))
        .map(|l| {
            let field = l.split_whitespace().find_map(|w| w.strip_prefix("start_lsn=")).expect("start_lsn field");
            field.parse().expect("start_lsn is a number")
        })
        .collect();
    assert_eq!(starts, [1, torn], "where b started following, run by run (LSN {torn} was half-written)");
    assert!(log.contains("cut a torn journal tail at open"), "the backup did not report the torn tail");
}

#[test]
fn a_paused_peer_is_noticed_by_its_silence_and_the_pair_recovers() {
    // SIGSTOP keeps a node's sockets open while it answers nothing, as a hung node or a
    // partition that drops packets would. The other side must notice by the missing acks and
    // heartbeats (not wait for TCP): the primary marks its backup gone, so degrade-after
    // acknowledges on its own instead of failing every write at sync_timeout; the backup marks
    // its primary gone. After SIGCONT the link is re-established and nothing is missing.
    let options = Options {
        sync_timeout: Some("10s"),
        on_peer_loss: Some("degrade-after:300ms"),
        heartbeat: Some("100ms"),
        ..Options::default()
    };
    let mut pair = Pair::start_with(SyncLevel::Durable, options);
    let mut a = pair.redis(PRIMARY);
    let _: () = a.set("before", "1").unwrap();

    pair.pause(BACKUP);
    let started = Instant::now();
    let _: () = a.set("while-b-paused", "2").expect("a write failed while the backup was paused");
    assert!(started.elapsed() < Duration::from_secs(5), "acknowledged only after {:?}", started.elapsed());
    let status = pair.node_status(PRIMARY);
    assert_eq!(
        (&status["peer"]["connected"], &status["degraded"]),
        (&Value::Bool(false), &Value::Bool(true)),
        "{status}"
    );
    pair.resume(BACKUP);
    pair.wait_ready();
    pair.wait_for("the degraded flag to clear", |s| s["nodes"][PRIMARY]["degraded"] == false);

    pair.pause(PRIMARY);
    pair.wait_for_node(BACKUP, "the backup to notice its primary is silent", |s| s["peer"]["connected"] == false);
    pair.resume(PRIMARY);
    pair.wait_ready();
    let _: () = a.set("after", "3").unwrap();
    pair.wait_caught_up();
    let values: Vec<Option<String>> = pair.redis(BACKUP).mget(&["before", "while-b-paused", "after"]).unwrap();
    assert_eq!(values, [Some("1".into()), Some("2".into()), Some("3".into())]);
}

#[test]
fn an_idle_admin_connection_is_closed_and_a_busy_one_is_not() {
    // `[limits] admin_idle_timeout = "400ms"`: a connection that asks for the status every
    // 100 ms for a second stays open; once it says nothing, the node closes it, not before the
    // timeout, and the pair goes on answering new admin connections.
    let idle = Duration::from_millis(400);
    let options = Options { limits: Some("admin_idle_timeout = \"400ms\""), ..Options::default() };
    let pair = Pair::start_with(SyncLevel::Durable, options);
    let admin = hotpair::tls::admin_client_config(&pair.config).expect("admin client config");
    let address = pair.control_address(PRIMARY);
    let name = hotpair::tls::server_name(&pair.config, PRIMARY);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (idle_for, end) = runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(address).await.expect("connect to a's control port");
        let mut stream = tokio_rustls::TlsConnector::from(admin).connect(name, tcp).await.expect("TLS as admin");
        let mut quiet = Instant::now();
        for i in 0..10 {
            if i > 0 {
                // Pacing the requests (the load under test), not waiting for anything.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            quiet = Instant::now();
            wire::write_frame(&mut stream, &admin_status_request()).await.expect("send a status request");
            match wire::read_frame(&mut stream).await {
                Ok(Some(Frame::Message(Envelope { message: Message::AdminReply { ok: true, .. }, .. }))) => {}
                other => panic!("request {i} on a busy admin connection: {other:?}"),
            }
        }
        let end = tokio::time::timeout(DEADLINE, wire::read_frame(&mut stream)).await;
        (quiet.elapsed(), end.expect("the idle admin connection was not closed within the deadline"))
    });
    assert!(matches!(end, Ok(None)), "the node ends an idle connection cleanly: {end:?}");
    assert!(idle_for >= idle, "closed after {idle_for:?} of silence, before admin_idle_timeout {idle:?}");
    assert_eq!(pair.node_status(PRIMARY)["role"], "primary", "new admin connections are still served");
}

#[test]
fn expired_keys_are_deleted_through_the_journal_on_both_nodes() {
    // 300 keys with a 50 ms time to live and 50 without: the primary's active expiry deletes
    // the 300 through the journal (in more than one transaction), so DBSIZE falls to the live
    // keys on both nodes, the backup's remote journal holds the deletions, and the digests
    // agree. A key that expired and was SET again without a time to live is kept.
    let mut pair = Pair::start(SyncLevel::Durable);
    let mut a = pair.redis(PRIMARY);
    for i in 0..300 {
        let _: () = redis::cmd("SET").arg(format!("exp-{i}")).arg("v").arg("PX").arg(50).query(&mut a).unwrap();
    }
    for i in 0..50 {
        let _: () = a.set(format!("keep-{i}"), "v").unwrap();
    }
    let _: () = redis::cmd("SET").arg("again").arg("old").arg("PX").arg(1).query(&mut a).unwrap();
    let _: () = a.set("again", "new").unwrap();
    let live = 51;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let size: i64 = redis::cmd("DBSIZE").query(&mut a).unwrap();
        if size == live {
            break;
        }
        assert!(Instant::now() < deadline, "DBSIZE on the primary is still {size}, not {live}");
        std::thread::sleep(common::POLL);
    }
    let expired = pair.node_status(PRIMARY)["expired_keys"].as_u64().expect("expired_keys in status");
    assert!(expired >= 300, "status says {expired} keys were deleted by active expiry");
    pair.wait_caught_up();
    let size: i64 = redis::cmd("DBSIZE").query(&mut pair.redis(BACKUP)).unwrap();
    assert_eq!(size, live, "the backup applied the deletions");
    assert_eq!(pair.redis(BACKUP).get::<_, Option<String>>("again").unwrap().as_deref(), Some("new"));
    let journal = read_journal(&pair.node_dir(BACKUP).join("journal/remote"));
    for i in 0..300 {
        let key = format!("exp-{i}").into_bytes();
        assert_eq!(journal.values.get(&key), Some(&None), "exp-{i} is deleted in the backup's remote journal");
    }
    assert!((0..50).all(|i| journal.values.get(format!("keep-{i}").as_bytes()).is_some_and(Option::is_some)));
}
