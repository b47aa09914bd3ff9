//! Applications follow the primary: real client libraries and real processes through switchover,
//! switchback, kill -9 + failover, and fencing (docs/clients.md).
//!
//! - redis-py's `Sentinel([...]).master_for("hotpair")`, ioredis with its `sentinels` option
//!   and the Rust `redis` crate's `SentinelClient` each keep writing through a switchover, a
//!   switchback and a kill -9 of the primary followed by `failover`, with one client made once
//!   (no reconfiguration), and no acknowledged write is lost.
//! - A plain client through `hotpair proxy` sees not one error across 20 planned switchovers
//!   under load (one connection per thread, one of them pipelining), and loses nothing.
//! - The data port closes its clients when the node is demoted or fenced; a fenced old primary
//!   never answers `ROLE` (or `INFO replication`) with master, before or after a restart, and
//!   its Sentinel port names the new primary.
//!
//! redis-py and ioredis are installed by `.ci/run` (pip, and npm into `target/npm`); a test
//! installs them itself if they are missing and prints SKIPPED only if that fails.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_control_port, Pair, BACKUP, DEADLINE, POLL, PRIMARY};
use hotpair::config::SyncLevel;
use redis::Commands;

/// Acknowledged writes a client must add after each role change before the next one.
const PROGRESS: u64 = 40;

/// What a writing client did.
#[derive(Debug, Default)]
struct Summary {
    client: String,
    attempts: u64,
    acked: Vec<u64>,
    errors: BTreeMap<String, u64>,
}

/// A client application writing `PREFIX:SEQ = SEQ` in a loop while the test changes roles.
trait Writer {
    /// Acknowledged writes so far.
    fn acked(&self) -> u64;
    /// Stops it and returns what it did.
    fn finish(self: Box<Self>) -> Summary;
    fn describe(&self) -> String;
}

/// Waits until `writer` has `more` acknowledged writes than `since`; returns the new count.
fn wait_progress(writer: &dyn Writer, since: u64, more: u64, what: &str) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let acked = writer.acked();
        if acked >= since + more {
            return acked;
        }
        assert!(Instant::now() < deadline, "{what}: {} stalled at {acked} acknowledged writes", writer.describe());
        std::thread::sleep(POLL);
    }
}

/// Checks that every acknowledged write is on `node` with its value.
fn assert_nothing_lost(pair: &Pair, node: &str, prefix: &str, summary: &Summary) {
    assert!(!summary.acked.is_empty(), "{} acknowledged nothing", summary.client);
    let mut connection = pair.redis(node);
    for chunk in summary.acked.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|seq| format!("{prefix}:{seq}")).collect();
        let values: Vec<Option<u64>> = connection.mget(&keys).expect("MGET the acknowledged keys");
        for (seq, value) in chunk.iter().zip(values) {
            assert_eq!(value, Some(*seq), "{}: acknowledged write {prefix}:{seq} is lost on {node}", summary.client);
        }
    }
}

/// Switchover, switchback, kill -9 of the primary + failover (+ restart and rejoin of the old
/// primary): the client keeps writing through each, and nothing it was told is written is
/// lost. Ends with b primary.
fn follow_every_role_change(pair: &mut Pair, mut writer: Box<dyn Writer>, prefix: &str) {
    let mut acked = wait_progress(writer.as_ref(), 0, PROGRESS, "before any role change");
    pair.hotpair_ok(&["switchover"]);
    acked = wait_progress(writer.as_ref(), acked, PROGRESS, "after the switchover to b");
    pair.hotpair_ok(&["switchback"]);
    acked = wait_progress(writer.as_ref(), acked, PROGRESS, "after the switchback to a");
    kill_and_fail_over(pair);
    wait_progress(writer.as_ref(), acked, PROGRESS, "after kill -9 of a, failover to b and a's rejoin");
    let summary = std::mem::replace(&mut writer, Box::new(Finished)).finish();
    eprintln!(
        "{}: {} attempts, {} acknowledged, errors {:?}",
        summary.client,
        summary.attempts,
        summary.acked.len(),
        summary.errors
    );
    assert_nothing_lost(pair, BACKUP, prefix, &summary);
}

/// kill -9 of a (the primary), `failover --to b`; then a is restarted and rejoined, since at
/// `durable` (with `on_peer_loss = block`) b acknowledges nothing until it has a backup again.
fn kill_and_fail_over(pair: &mut Pair) {
    pair.kill(PRIMARY);
    pair.hotpair_ok(&["failover", "--to", BACKUP]);
    pair.restart(PRIMARY);
    pair.hotpair_ok(&["rejoin", PRIMARY]);
}

/// A placeholder left behind by `finish`.
struct Finished;

impl Writer for Finished {
    fn acked(&self) -> u64 {
        0
    }
    fn finish(self: Box<Self>) -> Summary {
        Summary::default()
    }
    fn describe(&self) -> String {
        "a finished writer".into()
    }
}

fn sentinels(pair: &Pair) -> String {
    pair.config.nodes.iter().map(|n| n.sentinel.to_string()).collect::<Vec<_>>().join(",")
}

// ---------------------------------------------------------------------------------------------
// Writers in other processes: redis-py and ioredis, the scripts in tests/clients/.

struct ScriptWriter {
    name: &'static str,
    child: Child,
    progress: PathBuf,
    stop: PathBuf,
    out: PathBuf,
}

impl ScriptWriter {
    /// Starts `program args…` with the writer scripts' common arguments, files in `dir`.
    fn start(name: &'static str, mut command: Command, pair: &Pair, prefix: &str) -> ScriptWriter {
        let dir = pair.dir().join(format!("writer-{name}"));
        std::fs::create_dir_all(&dir).expect("writer directory");
        let (progress, stop, out) = (dir.join("progress"), dir.join("stop"), dir.join("out.json"));
        command
            .args(["--sentinels", &sentinels(pair), "--name", "hotpair", "--prefix", prefix])
            .arg("--progress")
            .arg(&progress)
            .arg("--stop")
            .arg(&stop)
            .arg("--out")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        let child = command.spawn().unwrap_or_else(|e| panic!("starting the {name} writer: {e}"));
        ScriptWriter { name, child, progress, stop, out }
    }
}

impl Writer for ScriptWriter {
    fn acked(&self) -> u64 {
        std::fs::read_to_string(&self.progress).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
    }

    fn finish(mut self: Box<Self>) -> Summary {
        std::fs::write(&self.stop, b"stop").expect("write the stop file");
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "the {} writer did not stop", self.name);
            std::thread::sleep(POLL);
        };
        assert!(status.success(), "the {} writer failed: {status}", self.name);
        let text = std::fs::read_to_string(&self.out).expect("the writer's summary");
        let json: serde_json::Value = serde_json::from_str(&text).expect("the writer's summary is JSON");
        Summary {
            client: self.name.to_string(),
            attempts: json["attempts"].as_u64().unwrap_or(0),
            acked: json["acked"].as_array().expect("acked").iter().filter_map(|v| v.as_u64()).collect(),
            errors: json["errors"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
                .unwrap_or_default(),
        }
    }

    fn describe(&self) -> String {
        format!("the {} writer", self.name)
    }
}

impl Drop for ScriptWriter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn succeeds(command: &mut Command) -> bool {
    command.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Whether redis-py is importable, installing it with pip if it is not.
fn redis_py_available() -> bool {
    let importable = || succeeds(Command::new("python3").args(["-c", "import redis.sentinel"]));
    if importable() {
        return true;
    }
    eprintln!("redis-py is missing: installing it with pip");
    let _ = succeeds(Command::new("python3").args(["-m", "pip", "install", "--quiet", "redis"]));
    importable()
}

/// Where ioredis is installed (`target/npm/node_modules`), installing it with npm if needed.
fn ioredis_modules() -> Option<PathBuf> {
    let prefix = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/npm");
    let modules = prefix.join("node_modules");
    let installed = || modules.join("ioredis/package.json").exists();
    if !installed() {
        eprintln!("ioredis is missing: installing it with npm into {}", prefix.display());
        let _ = std::fs::create_dir_all(&prefix);
        let _ = succeeds(
            Command::new("npm")
                .args(["install", "--no-save", "--no-audit", "--no-fund", "--prefix"])
                .arg(&prefix)
                .arg("ioredis"),
        );
    }
    (installed() && succeeds(Command::new("node").arg("--version"))).then_some(modules)
}

#[test]
fn redis_py_sentinel_client_keeps_writing_through_switchover_switchback_and_failover() {
    if !redis_py_available() {
        eprintln!("SKIPPED: python3 with redis-py is not available and could not be installed (pip install redis)");
        return;
    }
    let mut pair = Pair::start(SyncLevel::Durable);
    let mut command = Command::new("python3");
    command.arg(clients_dir().join("redis_py_writer.py"));
    let writer = ScriptWriter::start("redis-py", command, &pair, "py");
    follow_every_role_change(&mut pair, Box::new(writer), "py");
}

#[test]
fn ioredis_sentinel_client_keeps_writing_through_switchover_switchback_and_failover() {
    let Some(modules) = ioredis_modules() else {
        eprintln!("SKIPPED: node with ioredis is not available and could not be installed (npm install ioredis)");
        return;
    };
    let mut pair = Pair::start(SyncLevel::Durable);
    let mut command = Command::new("node");
    command.env("NODE_PATH", &modules).arg(clients_dir().join("ioredis_writer.js"));
    let writer = ScriptWriter::start("ioredis", command, &pair, "js");
    follow_every_role_change(&mut pair, Box::new(writer), "js");
}

// ---------------------------------------------------------------------------------------------
// Writers in this process: the Rust `redis` crate, through Sentinel or through the proxy.

/// Threads writing with the `redis` crate; `connect` makes (or remakes) a connection.
struct ThreadWriter {
    name: String,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Summary>>,
}

impl ThreadWriter {
    /// `threads` writers; writer `t` writes `PREFIX-t:SEQ`, `pipeline` SETs per round trip.
    fn start(
        name: &str,
        prefix: &str,
        threads: usize,
        pipeline: impl Fn(usize) -> usize,
        connect: impl Fn() -> redis::RedisResult<redis::Connection> + Send + Sync + 'static,
    ) -> ThreadWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let connect = Arc::new(connect);
        let handles = (0..threads)
            .map(|t| {
                let (stop, acked, connect) = (stop.clone(), acked.clone(), connect.clone());
                let prefix = format!("{prefix}-{t}");
                let depth = pipeline(t).max(1);
                let name = format!("{name} thread {t}");
                std::thread::spawn(move || write_loop(&name, &prefix, depth, &stop, &acked, connect.as_ref()))
            })
            .collect();
        ThreadWriter { name: name.to_string(), stop, acked, threads: handles }
    }
}

fn write_loop(
    name: &str,
    prefix: &str,
    depth: usize,
    stop: &AtomicBool,
    acked: &AtomicU64,
    connect: &dyn Fn() -> redis::RedisResult<redis::Connection>,
) -> Summary {
    let mut summary = Summary { client: name.to_string(), ..Summary::default() };
    let mut connection: Option<redis::Connection> = None;
    let error = |summary: &mut Summary, e: &redis::RedisError| {
        let text = e.to_string();
        *summary.errors.entry(text.chars().take(100).collect()).or_default() += 1;
    };
    while !stop.load(Ordering::Relaxed) {
        let conn = match connection.as_mut() {
            Some(conn) => conn,
            None => match connect() {
                Ok(conn) => {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    connection.insert(conn)
                }
                Err(e) => {
                    error(&mut summary, &e);
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            },
        };
        let first = summary.attempts + 1;
        summary.attempts += depth as u64;
        let mut pipe = redis::pipe();
        for seq in first..first + depth as u64 {
            pipe.cmd("SET").arg(format!("{prefix}:{seq}")).arg(seq).ignore();
        }
        match pipe.query::<()>(conn) {
            Ok(()) => {
                summary.acked.extend(first..first + depth as u64);
                acked.fetch_add(depth as u64, Ordering::Relaxed);
            }
            Err(e) => {
                error(&mut summary, &e);
                if e.is_io_error() || e.is_connection_dropped() || e.kind() == redis::ErrorKind::ReadOnly {
                    connection = None;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    summary
}

impl Writer for ThreadWriter {
    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    fn finish(self: Box<Self>) -> Summary {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Summary { client: self.name.clone(), ..Summary::default() };
        for thread in self.threads {
            let summary = thread.join().expect("a writer thread panicked");
            total.attempts += summary.attempts;
            for (error, count) in summary.errors {
                *total.errors.entry(format!("{}: {error}", summary.client)).or_default() += count;
            }
            // Keys carry the thread: keep them apart by encoding the thread in the high bits.
            let thread: u64 = summary.client.rsplit(' ').next().and_then(|t| t.parse().ok()).unwrap_or(0);
            total.acked.extend(summary.acked.into_iter().map(|seq| (thread << 40) | seq));
        }
        total
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// Checks the acknowledged writes of a [`ThreadWriter`] (thread in the high bits of each).
fn assert_thread_writes_kept(pair: &Pair, node: &str, prefix: &str, summary: &Summary) {
    let mut by_thread: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for tagged in &summary.acked {
        by_thread.entry(tagged >> 40).or_default().push(tagged & ((1 << 40) - 1));
    }
    for (thread, acked) in by_thread {
        let part = Summary { client: format!("{} thread {thread}", summary.client), acked, ..Summary::default() };
        assert_nothing_lost(pair, node, &format!("{prefix}-{thread}"), &part);
    }
}

#[test]
fn rust_redis_sentinel_client_keeps_writing_through_switchover_switchback_and_failover() {
    let mut pair = Pair::start(SyncLevel::Durable);
    let addresses: Vec<String> = pair.config.nodes.iter().map(|n| format!("redis://{}/", n.sentinel)).collect();
    let writer = ThreadWriter::start(
        "redis crate SentinelClient",
        "rs",
        1,
        |_| 1,
        move || {
            // Made once per connection, as the crate's own pool does: it asks the Sentinels.
            let mut client = redis::sentinel::SentinelClient::build(
                addresses.clone(),
                "hotpair".to_string(),
                None,
                redis::sentinel::SentinelServerType::Master,
            )?;
            client.get_connection()
        },
    );
    let mut acked = wait_progress(&writer, 0, PROGRESS, "before any role change");
    pair.hotpair_ok(&["switchover"]);
    acked = wait_progress(&writer, acked, PROGRESS, "after the switchover to b");
    pair.hotpair_ok(&["switchback"]);
    acked = wait_progress(&writer, acked, PROGRESS, "after the switchback to a");
    kill_and_fail_over(&mut pair);
    wait_progress(&writer, acked, PROGRESS, "after kill -9 of a, failover to b and a's rejoin");
    let summary = Box::new(writer).finish();
    eprintln!(
        "{}: {} attempts, {} acknowledged, errors {:?}",
        summary.client,
        summary.attempts,
        summary.acked.len(),
        summary.errors
    );
    assert_thread_writes_kept(&pair, BACKUP, "rs", &summary);
}

// ---------------------------------------------------------------------------------------------
// hotpair proxy.

/// A `hotpair proxy` process for `pair`, killed when dropped.
struct Proxy {
    child: Child,
    address: SocketAddr,
}

impl Proxy {
    fn start(pair: &Pair) -> Proxy {
        let address = SocketAddr::from(([127, 0, 0, 1], free_control_port()));
        let log = std::fs::File::create(pair.dir().join("proxy.log")).expect("proxy log");
        let child = Command::new(env!("CARGO_BIN_EXE_hotpair"))
            .arg("--pair")
            .arg(&pair.pair_file)
            .args(["proxy", "--listen", &address.to_string()])
            .env("HOTPAIR_LOG", "hotpair=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn hotpair proxy");
        let proxy = Proxy { child, address };
        // Ready once a write through it is acknowledged.
        let deadline = Instant::now() + DEADLINE;
        loop {
            let written = redis::Client::open(format!("redis://{address}/"))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .and_then(|mut c| c.set::<_, _, ()>("proxy-ready", 1));
            if written.is_ok() {
                return proxy;
            }
            assert!(Instant::now() < deadline, "the proxy did not take a write within {DEADLINE:?}: {written:?}");
            std::thread::sleep(POLL);
        }
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://{}/", self.address))?.get_connection_with_timeout(Duration::from_secs(2))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_plain_client_through_the_proxy_sees_no_error_across_20_switchovers_under_load() {
    let pair = Pair::start(SyncLevel::Durable);
    let proxy = Proxy::start(&pair);
    let address = proxy.address;
    // Four connections made once; thread 3 pipelines 8 SETs per round trip. Any error counts,
    // a broken connection included: the client is never told to reconnect.
    let writer = ThreadWriter::start(
        "plain client via proxy",
        "px",
        4,
        |t| if t == 3 { 8 } else { 1 },
        move || redis::Client::open(format!("redis://{address}/"))?.get_connection_with_timeout(Duration::from_secs(2)),
    );
    let mut acked = wait_progress(&writer, 0, PROGRESS, "before any switchover");
    for round in 1..=20 {
        pair.hotpair_ok(&["switchover"]);
        acked = wait_progress(&writer, acked, PROGRESS, &format!("after switchover {round}"));
    }
    let summary = Box::new(writer).finish();
    eprintln!("{}: {} attempts, {} acknowledged", summary.client, summary.attempts, summary.acked.len());
    assert!(summary.errors.is_empty(), "errors through the proxy: {:?}", summary.errors);
    assert_eq!(summary.attempts, summary.acked.len() as u64);
    // 20 switchovers from a: a is primary again.
    assert_thread_writes_kept(&pair, PRIMARY, "px", &summary);
    drop(proxy.connection());
}

// ---------------------------------------------------------------------------------------------
// Connection hand-off and the truth of ROLE.

/// A raw client connection to `address` that has been answered once (so it is open).
fn open_client(address: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    stream.write_all(b"PING\r\n").expect("PING");
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).expect("PONG");
    assert_eq!(&reply, b"+PONG\r\n");
    stream
}

/// Waits until the server closes `stream` without being asked anything.
fn assert_closed_by_server(mut stream: TcpStream, what: &str) {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("{what}: the client connection was not closed by the server ({other:?})"),
    }
}

fn role_of(pair: &Pair, node: &str) -> redis::RedisResult<String> {
    let mut connection = pair.client(node).get_connection_with_timeout(Duration::from_secs(2))?;
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut connection)?;
    match role.first() {
        Some(redis::Value::BulkString(bytes)) => Ok(String::from_utf8_lossy(bytes).into_owned()),
        other => panic!("ROLE answered {other:?}"),
    }
}

fn info_role(pair: &Pair, node: &str) -> String {
    let info: String = redis::cmd("INFO").arg("replication").query(&mut pair.redis(node)).expect("INFO replication");
    info.lines().find_map(|l| l.strip_prefix("role:")).unwrap_or("?").trim().to_string()
}

fn sentinel_names(pair: &Pair, node: &str) -> Option<SocketAddr> {
    let sentinel = pair.config.node(node).expect("node").sentinel;
    let mut connection = redis::Client::open(format!("redis://{sentinel}/"))
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .expect("connect to the Sentinel port");
    let answer: Option<(String, u16)> =
        redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg("hotpair").query(&mut connection).expect("SENTINEL");
    answer.map(|(ip, port)| SocketAddr::new(ip.parse().expect("ip"), port))
}

#[test]
fn demoted_and_fenced_primaries_close_their_clients_and_never_say_master() {
    let mut pair = Pair::start(SyncLevel::Durable);
    let (a_data, b_data) = (pair.data_address(PRIMARY), pair.data_address(BACKUP));
    assert_eq!(sentinel_names(&pair, PRIMARY), Some(a_data));
    assert_eq!(sentinel_names(&pair, BACKUP), Some(a_data));

    // A planned switchover: a's clients are closed at its demotion; b's stay open.
    let on_a = open_client(a_data);
    let on_b = open_client(b_data);
    pair.hotpair_ok(&["switchover"]);
    assert_closed_by_server(on_a, "demoted by a switchover");
    let mut on_b = on_b;
    on_b.write_all(b"PING\r\n").expect("PING b");
    let mut reply = [0u8; 7];
    on_b.read_exact(&mut reply).expect("b's client stays open");
    assert_eq!((role_of(&pair, PRIMARY).unwrap(), role_of(&pair, BACKUP).unwrap()), ("slave".into(), "master".into()));
    let refused: redis::RedisResult<()> = pair.redis(PRIMARY).set("k", "v");
    let refused = refused.expect_err("a write on the backup");
    assert_eq!(refused.kind(), redis::ErrorKind::ReadOnly, "{refused}");
    assert!(refused.to_string().contains("You can't write against a read only replica."), "{refused}");

    // A forced failover back to a fences b, which was healthy: its clients are closed, and it
    // says slave, its Sentinel port names a.
    let on_b = open_client(b_data);
    pair.hotpair_ok(&["failover", "--to", PRIMARY, "--force"]);
    assert_closed_by_server(on_b, "fenced by a forced failover");
    pair.wait_for_node(BACKUP, "b fenced", |s| s["role"] == "fenced");
    assert_eq!(role_of(&pair, BACKUP).unwrap(), "slave");
    assert_eq!(info_role(&pair, BACKUP), "slave");
    assert_eq!(sentinel_names(&pair, BACKUP), Some(a_data), "a fenced node names the new primary");
    assert_eq!(sentinel_names(&pair, PRIMARY), Some(a_data));

    // Rejoin b, then kill -9 a (the primary), fail over to b, and restart a: from its first
    // answer on, a never says master; its Sentinel port never names itself; it ends fenced.
    pair.hotpair_ok(&["rejoin", BACKUP]);
    pair.wait_for("b following a again", |s| {
        s["nodes"][BACKUP]["role"] == "backup" && s["nodes"][PRIMARY]["peer"]["connected"] == true
    });
    pair.kill(PRIMARY);
    pair.hotpair_ok(&["failover", "--to", BACKUP]);
    // Started without waiting for it to answer: ROLE is asked from its first answer on.
    pair.spawn(PRIMARY);
    let deadline = Instant::now() + DEADLINE;
    let mut answers = 0;
    loop {
        if let Ok(role) = role_of(&pair, PRIMARY) {
            answers += 1;
            assert_eq!(role, "slave", "the restarted old primary answered ROLE {role}");
            let named = sentinel_names(&pair, PRIMARY);
            assert_ne!(named, Some(a_data), "the restarted old primary's Sentinel port named itself");
        }
        if pair.status()["nodes"][PRIMARY]["role"] == "fenced" {
            break;
        }
        assert!(Instant::now() < deadline, "a was not fenced after its restart");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(role_of(&pair, PRIMARY).unwrap(), "slave");
    assert_eq!(sentinel_names(&pair, PRIMARY), Some(b_data));
    eprintln!("ROLE asked {answers} times while a restarted and was fenced");
}
