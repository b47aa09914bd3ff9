//! The data port end to end: `serve` on 127.0.0.1:0 with an in-memory backend, driven by the
//! real `redis` crate, by raw sockets for what no client library sends, and by `redis-cli` and
//! `redis-benchmark` when they are installed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hotpair::resp::{Command, Frame, Limits};
use hotpair::server::{serve, DataBackend};
use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

/// Bound on every wait in these tests, so a bug fails a test instead of hanging it.
const TEST_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The test backend: a map behind a mutex.

#[derive(Debug, Clone)]
struct Entry {
    value: Bytes,
    expire: Option<Duration>,
}

/// Lets a test hold a `WAIT` in flight: the backend signals `entered`, then waits for `release`.
#[derive(Default)]
struct Gate {
    entered: Notify,
    release: Notify,
}

#[derive(Default)]
struct MapBackend {
    entries: Mutex<HashMap<Bytes, Entry>>,
    wait_gate: Option<Arc<Gate>>,
}

impl MapBackend {
    fn expire_of(&self, key: &str) -> Option<Duration> {
        self.entries.lock().unwrap().get(key.as_bytes()).and_then(|entry| entry.expire)
    }
}

impl DataBackend for MapBackend {
    async fn execute(&self, command: Command) -> Frame {
        if let (Command::Wait { .. }, Some(gate)) = (&command, &self.wait_gate) {
            gate.entered.notify_one();
            gate.release.notified().await;
            return Frame::Integer(0);
        }
        let mut entries = self.entries.lock().unwrap();
        let count = |n: usize| Frame::Integer(i64::try_from(n).unwrap());
        match command {
            Command::Get { key } => Frame::Bulk(entries.get(&key).map(|entry| entry.value.clone())),
            Command::Set { key, value, expiry, .. } => {
                let expire = match expiry {
                    hotpair::resp::command::SetExpiry::Until(hotpair::resp::command::Deadline::In(ms)) => {
                        Some(Duration::from_millis(ms as u64))
                    }
                    _ => None,
                };
                entries.insert(key, Entry { value, expire });
                Frame::ok()
            }
            Command::Del { keys } => count(keys.iter().filter(|key| entries.remove(*key).is_some()).count()),
            Command::Exists { keys } => count(keys.iter().filter(|key| entries.contains_key(*key)).count()),
            Command::IncrBy { key, delta } => {
                let current = match entries.get(&key) {
                    None => Some(0),
                    Some(entry) => std::str::from_utf8(&entry.value).ok().and_then(|text| text.parse::<i64>().ok()),
                };
                match current.and_then(|current| current.checked_add(delta)) {
                    Some(next) => {
                        entries.insert(key, Entry { value: Bytes::from(next.to_string()), expire: None });
                        Frame::Integer(next)
                    }
                    None => Frame::error("ERR value is not an integer or out of range"),
                }
            }
            Command::MGet { keys } => {
                Frame::array(keys.iter().map(|key| Frame::Bulk(entries.get(key).map(|e| e.value.clone()))).collect())
            }
            Command::MSet { pairs, .. } => {
                for (key, value) in pairs {
                    entries.insert(key, Entry { value, expire: None });
                }
                Frame::ok()
            }
            Command::DbSize => count(entries.len()),
            Command::Role => Frame::array(vec![Frame::bulk("master"), Frame::Integer(0), Frame::array(vec![])]),
            Command::Info { .. } => Frame::bulk("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n"),
            Command::Wait { .. } => Frame::Integer(0),
            Command::Fail { error } => error.to_frame(),
            other => Frame::error(format!("ERR the test backend does not run '{}'", other.name())),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Harness.

struct TestServer {
    address: SocketAddr,
    backend: Arc<MapBackend>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    async fn start(limits: Limits) -> TestServer {
        TestServer::start_with(MapBackend::default(), limits).await
    }

    async fn start_with(backend: MapBackend, limits: Limits) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let backend = Arc::new(backend);
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(serve(listener, Arc::clone(&backend), limits, shutdown));
        TestServer { address, backend, stop: Some(stop), task }
    }

    async fn client(&self) -> MultiplexedConnection {
        let client = redis::Client::open(format!("redis://{}/", self.address)).unwrap();
        within(client.get_multiplexed_async_connection()).await.unwrap()
    }

    async fn raw(&self) -> TcpStream {
        TcpStream::connect(self.address).await.unwrap()
    }

    /// Completes the shutdown future and waits for `serve` to return.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within(self.task).await.unwrap().unwrap();
    }
}

async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TEST_DEADLINE, future).await.expect("test deadline passed")
}

async fn query<T: redis::FromRedisValue>(
    connection: &mut MultiplexedConnection,
    args: &[&str],
) -> redis::RedisResult<T> {
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    within(command.query_async(connection)).await
}

/// The server's error line for a command, as the client saw it.
async fn refusal(connection: &mut MultiplexedConnection, args: &[&str]) -> String {
    match query::<redis::Value>(connection, args).await {
        Err(error) => format!("{} {}", error.code().unwrap_or("?"), error.detail().unwrap_or("")),
        Ok(value) => panic!("{args:?}: expected an error, got {value:?}"),
    }
}

/// Sends `request` and reads until the server closes the connection.
async fn exchange_until_closed(stream: &mut TcpStream, request: &[u8]) -> Vec<u8> {
    stream.write_all(request).await.unwrap();
    let mut reply = Vec::new();
    within(stream.read_to_end(&mut reply)).await.unwrap();
    reply
}

/// Sends `request` and reads exactly `expected.len()` bytes back.
async fn exchange(stream: &mut TcpStream, request: &[u8], expected: &[u8]) {
    stream.write_all(request).await.unwrap();
    let mut reply = vec![0; expected.len()];
    within(stream.read_exact(&mut reply)).await.unwrap();
    assert_eq!(reply.escape_ascii().to_string(), expected.escape_ascii().to_string());
}

// ---------------------------------------------------------------------------------------------
// Commands through the redis crate.

#[tokio::test]
async fn strings_and_counters_work_through_the_redis_crate() {
    let server = TestServer::start(Limits::default()).await;
    let mut con = server.client().await;

    let _: () = query(&mut con, &["SET", "greeting", "hello"]).await.unwrap();
    assert_eq!(query::<String>(&mut con, &["GET", "greeting"]).await.unwrap(), "hello");
    assert_eq!(query::<Option<String>>(&mut con, &["GET", "missing"]).await.unwrap(), None);

    let _: () = query(&mut con, &["SET", "session", "s", "EX", "30"]).await.unwrap();
    assert_eq!(server.backend.expire_of("session"), Some(Duration::from_secs(30)));
    let _: () = query(&mut con, &["set", "token", "t", "px", "1500"]).await.unwrap();
    assert_eq!(server.backend.expire_of("token"), Some(Duration::from_millis(1500)));

    assert_eq!(query::<i64>(&mut con, &["EXISTS", "greeting", "missing", "session"]).await.unwrap(), 2);
    assert_eq!(query::<i64>(&mut con, &["DEL", "greeting", "missing"]).await.unwrap(), 1);
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "greeting"]).await.unwrap(), 0);

    assert_eq!(query::<i64>(&mut con, &["INCR", "hits"]).await.unwrap(), 1);
    assert_eq!(query::<i64>(&mut con, &["INCRBY", "hits", "41"]).await.unwrap(), 42);
    assert_eq!(query::<i64>(&mut con, &["INCRBY", "hits", "-2"]).await.unwrap(), 40);

    let _: () = query(&mut con, &["MSET", "a", "1", "b", "2"]).await.unwrap();
    let values: Vec<Option<String>> = query(&mut con, &["MGET", "a", "nope", "b"]).await.unwrap();
    assert_eq!(values, vec![Some("1".into()), None, Some("2".into())]);
    assert_eq!(query::<i64>(&mut con, &["DBSIZE"]).await.unwrap(), 5);

    server.stop().await;
}

#[tokio::test]
async fn connection_and_node_commands_answer_as_redis_does() {
    let server = TestServer::start(Limits::default()).await;
    let mut con = server.client().await;

    assert_eq!(query::<String>(&mut con, &["PING"]).await.unwrap(), "PONG");
    assert_eq!(query::<String>(&mut con, &["PING", "hi there"]).await.unwrap(), "hi there");
    assert_eq!(query::<String>(&mut con, &["ECHO", "bin\r\nary"]).await.unwrap(), "bin\r\nary");
    let _: () = query(&mut con, &["SELECT", "0"]).await.unwrap();
    let _: () = query(&mut con, &["CLIENT", "SETNAME", "tester"]).await.unwrap();
    assert_eq!(query::<String>(&mut con, &["CLIENT", "GETNAME"]).await.unwrap(), "tester");
    assert_eq!(query::<Vec<String>>(&mut con, &["CONFIG", "GET", "save"]).await.unwrap(), vec!["save", ""]);
    let docs: Vec<redis::Value> = query(&mut con, &["COMMAND", "DOCS"]).await.unwrap();
    assert_eq!(
        docs.len(),
        2 * query::<usize>(&mut con, &["COMMAND", "COUNT"]).await.unwrap(),
        "name and doc per command"
    );
    let role: redis::Value = query(&mut con, &["ROLE"]).await.unwrap();
    assert!(matches!(role, redis::Value::Array(ref items) if items.len() == 3), "{role:?}");
    assert!(query::<String>(&mut con, &["INFO", "replication"]).await.unwrap().contains("role:master"));
    assert_eq!(query::<i64>(&mut con, &["WAIT", "1", "100"]).await.unwrap(), 0);

    assert_eq!(refusal(&mut con, &["SELECT", "1"]).await, "ERR DB index is out of range (hotpair has only database 0)");
    assert_eq!(refusal(&mut con, &["GET"]).await, "ERR wrong number of arguments for 'get' command");
    assert_eq!(refusal(&mut con, &["FOO", "bar"]).await, "ERR unknown command 'FOO', with args beginning with: 'bar' ");
    assert_eq!(refusal(&mut con, &["INCRBY", "n", "x"]).await, "ERR value is not an integer or out of range");
    assert_eq!(refusal(&mut con, &["SET", "k", "v", "EX"]).await, "ERR syntax error");
    assert_eq!(refusal(&mut con, &["SET", "k", "v", "NX", "XX"]).await, "ERR syntax error");
    let _: () = query(&mut con, &["SET", "word", "abc"]).await.unwrap();
    assert_eq!(refusal(&mut con, &["INCR", "word"]).await, "ERR value is not an integer or out of range");
    // Refusals leave the connection usable.
    assert_eq!(query::<String>(&mut con, &["PING"]).await.unwrap(), "PONG");

    server.stop().await;
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let server = TestServer::start(Limits::default()).await;
    let mut con = server.client().await;

    let mut pipe = redis::pipe();
    for i in 0..200 {
        pipe.cmd("SET").arg(format!("key:{i}")).arg(i).ignore();
        pipe.cmd("INCR").arg(format!("key:{i}"));
    }
    pipe.cmd("GET").arg("key:199").cmd("DBSIZE");
    let (counters, last, size): (Vec<i64>, String, i64) = {
        let mut values: Vec<redis::Value> = within(pipe.query_async(&mut con)).await.unwrap();
        let size = redis::from_redis_value(&values.pop().unwrap()).unwrap();
        let last = redis::from_redis_value(&values.pop().unwrap()).unwrap();
        (values.iter().map(|value| redis::from_redis_value(value).unwrap()).collect(), last, size)
    };
    assert_eq!(counters, (1..=200).collect::<Vec<i64>>());
    assert_eq!(last, "200");
    assert_eq!(size, 200);

    // The same on a raw socket, in one write, mixing multi-bulk and inline requests.
    let mut raw = server.raw().await;
    exchange(
        &mut raw,
        b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$2\r\n10\r\nINCR x\r\nGET x\r\n\r\nPING\r\n*1\r\n$4\r\nPING\r\n",
        b"+OK\r\n:11\r\n$2\r\n11\r\n+PONG\r\n+PONG\r\n",
    )
    .await;
    // A request split across writes is answered once whole.
    raw.write_all(b"*2\r\n$3\r\nGET\r\n$1").await.unwrap();
    exchange(&mut raw, b"\r\nx\r\n", b"$2\r\n11\r\n").await;

    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Limits and protocol errors: only the offender is disconnected.

#[tokio::test]
async fn an_oversized_value_is_refused_and_other_clients_carry_on() {
    let limits = Limits { max_value_bytes: 1024, ..Limits::default() };
    let server = TestServer::start(limits).await;
    let mut offender = server.client().await;
    let mut bystander = server.client().await;

    let huge = "v".repeat(64 * 1024);
    let error = within(redis::cmd("SET").arg("big").arg(&huge).query_async::<()>(&mut offender)).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("Protocol error: bulk length 65536 exceeds max_value_bytes (1024)"),
        "unexpected error: {text}"
    );

    let fits = "v".repeat(1024);
    let _: () = query(&mut bystander, &["SET", "small", &fits]).await.unwrap();
    assert_eq!(query::<String>(&mut bystander, &["GET", "small"]).await.unwrap(), fits);
    assert_eq!(query::<i64>(&mut bystander, &["EXISTS", "big"]).await.unwrap(), 0);

    // The same on a raw socket: the reply, then the connection closes.
    let mut raw = server.raw().await;
    let mut request = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5000\r\n".to_vec();
    request.extend(std::iter::repeat_n(b'x', 5000));
    request.extend_from_slice(b"\r\n");
    let reply = exchange_until_closed(&mut raw, &request).await;
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "-ERR Protocol error: bulk length 5000 exceeds max_value_bytes (1024) (at byte 20 of the request)\r\n"
    );
    server.stop().await;
}

#[tokio::test]
async fn requests_beyond_max_args_or_max_request_bytes_are_refused() {
    let limits = Limits { max_args: 4, max_request_bytes: 256, ..Limits::default() };
    let server = TestServer::start(limits).await;
    let mut con = server.client().await;

    let mut raw = server.raw().await;
    let reply = exchange_until_closed(&mut raw, b"*5\r\n").await;
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "-ERR Protocol error: array of 5 elements exceeds max_args (4) (at byte 0 of the request)\r\n"
    );

    let mut raw = server.raw().await;
    let reply = exchange_until_closed(&mut raw, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$250\r\n").await;
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "-ERR Protocol error: request exceeds max_request_bytes (256) (at byte 0 of the request)\r\n"
    );
    assert_eq!(query::<String>(&mut con, &["PING"]).await.unwrap(), "PONG");
    server.stop().await;
}

#[tokio::test]
async fn garbage_gets_a_protocol_error_and_the_server_keeps_serving() {
    let server = TestServer::start(Limits::default()).await;
    let mut con = server.client().await;

    let cases: [(&[u8], &str); 4] = [
        (b"*2\r\n$abc\r\n", "invalid bulk length 'abc' (at byte 4 of the request)"),
        (b"*1\r\n%oops\r\n", "unknown frame type '%' (at byte 4 of the request)"),
        (b"*1\r\n:1\r\n", "request element 0 is an integer; expected a bulk string"),
        (b"set k \"unterminated\r\n", "unbalanced quotes in inline request (at byte 0 of the request)"),
    ];
    for (garbage, reason) in cases {
        let mut raw = server.raw().await;
        let reply = String::from_utf8_lossy(&exchange_until_closed(&mut raw, garbage).await).into_owned();
        assert!(reply.starts_with("-ERR Protocol error: ") && reply.ends_with("\r\n"), "{reply:?}");
        assert!(reply.contains(reason.split(" (at").next().unwrap()), "{reply:?} does not say {reason:?}");
    }
    // Commands sent before the garbage in the same write are still answered.
    let mut raw = server.raw().await;
    let reply = exchange_until_closed(&mut raw, b"PING\r\n*1\r\n$x\r\nPING\r\n").await;
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "+PONG\r\n-ERR Protocol error: invalid bulk length 'x' (at byte 4 of the request)\r\n"
    );

    let _: () = query(&mut con, &["SET", "still", "here"]).await.unwrap();
    assert_eq!(query::<String>(&mut con, &["GET", "still"]).await.unwrap(), "here");
    server.stop().await;
}

#[tokio::test]
async fn quit_answers_ok_and_closes() {
    let server = TestServer::start(Limits::default()).await;
    let mut raw = server.raw().await;
    let reply = exchange_until_closed(&mut raw, b"PING\r\nQUIT\r\nPING\r\n").await;
    assert_eq!(String::from_utf8_lossy(&reply), "+PONG\r\n+OK\r\n");
    server.stop().await;
}

#[tokio::test]
async fn clients_beyond_max_connections_are_turned_away() {
    let server = TestServer::start(Limits { max_connections: 2, ..Limits::default() }).await;
    let mut first = server.client().await;
    let mut second = server.client().await;
    // Both have been answered, so both hold a connection slot.
    assert_eq!(query::<String>(&mut first, &["PING"]).await.unwrap(), "PONG");
    assert_eq!(query::<String>(&mut second, &["PING"]).await.unwrap(), "PONG");

    let mut third = server.raw().await;
    let mut reply = Vec::new();
    within(third.read_to_end(&mut reply)).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&reply), "-ERR max number of clients reached\r\n");
    assert_eq!(query::<String>(&mut second, &["PING"]).await.unwrap(), "PONG");

    // QUIT frees a slot once the server has closed that connection; poll until it has.
    let _: () = query(&mut first, &["QUIT"]).await.unwrap();
    drop(first);
    within(async {
        loop {
            let mut attempt = server.raw().await;
            attempt.write_all(b"PING\r\n").await.unwrap();
            let mut reply = [0u8; 7];
            if attempt.read_exact(&mut reply).await.is_ok() && &reply == b"+PONG\r\n" {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Shutdown.

#[tokio::test]
async fn shutdown_lets_in_flight_commands_finish_then_closes_everything() {
    let gate = Arc::new(Gate::default());
    let backend = MapBackend { wait_gate: Some(Arc::clone(&gate)), ..MapBackend::default() };
    let server = TestServer::start_with(backend, Limits::default()).await;
    let address = server.address;
    let mut busy = server.client().await;
    let mut idle = server.raw().await;
    exchange(&mut idle, b"PING\r\n", b"+PONG\r\n").await;

    let in_flight = tokio::spawn(async move { query::<i64>(&mut busy, &["WAIT", "1", "0"]).await });
    within(gate.entered.notified()).await;

    let stop = tokio::spawn(server.stop());
    // `serve` cannot return while WAIT is executing; let it run up to that point.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!stop.is_finished(), "serve returned while a command was in flight");
    gate.release.notify_one();

    assert_eq!(within(in_flight).await.unwrap().unwrap(), 0, "the in-flight command was answered");
    within(stop).await.unwrap();
    // The idle client was disconnected, and nobody new gets in.
    let mut rest = Vec::new();
    within(idle.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
    assert!(TcpStream::connect(address).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// The real tools.

fn installed(tool: &str) -> bool {
    let found = std::process::Command::new(tool).arg("--version").output().is_ok_and(|out| out.status.success());
    if !found {
        println!("SKIPPED: {tool} is not installed (apt-get install redis-tools)");
    }
    found
}

async fn run_tool(tool: &str, args: &[&str], stdin: &[u8]) -> (bool, String) {
    let mut child = tokio::process::Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let output = within(child.wait_with_output()).await.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[tokio::test]
async fn redis_benchmark_and_redis_cli_work_unchanged() {
    if !installed("redis-benchmark") || !installed("redis-cli") {
        return;
    }
    let server = TestServer::start(Limits::default()).await;
    let port = server.address.port().to_string();

    for pipeline in ["1", "16"] {
        let args = ["-h", "127.0.0.1", "-p", &port, "-t", "set,get", "-n", "2000", "-c", "10", "-P", pipeline, "-q"];
        let (ok, output) = run_tool("redis-benchmark", &args, b"").await;
        let lines: Vec<&str> = output.split(['\r', '\n']).filter(|line| !line.trim().is_empty()).collect();
        println!("redis-benchmark -P {pipeline}: {lines:?}");
        assert!(ok, "redis-benchmark failed: {output}");
        for test in ["SET:", "GET:"] {
            assert!(
                lines.iter().any(|line| line.starts_with(test) && line.contains("requests per second")),
                "{output}"
            );
        }
        assert!(!output.contains("WARNING") && !output.contains("Error") && !output.contains("ERR"), "{output}");
    }
    assert!(server.backend.entries.lock().unwrap().contains_key(&b"key:__rand_int__"[..]));

    let (ok, output) = run_tool("redis-cli", &["-h", "127.0.0.1", "-p", &port, "ping"], b"").await;
    assert!(ok && output.trim() == "PONG", "{output}");
    let (ok, output) = run_tool("redis-cli", &["-h", "127.0.0.1", "-p", &port, "set", "from-cli", "yes"], b"").await;
    assert!(ok && output.trim() == "OK", "{output}");
    // Commands on stdin: redis-cli asks for COMMAND DOCS first in this mode.
    let (ok, output) = run_tool("redis-cli", &["-h", "127.0.0.1", "-p", &port], b"get from-cli\ndbsize\n").await;
    assert!(ok, "{output}");
    assert_eq!(output.lines().collect::<Vec<_>>(), ["yes", "2"]);
    server.stop().await;
}
