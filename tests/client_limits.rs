//! What one client, or many, can make a node hold or spend on the data port — measured on real
//! `hotpair run` processes through real sockets: the peak resident memory (`VmHWM`) and the CPU
//! time (`/proc/PID/stat`) of the primary, never wall-clock time alone.
//!
//! - a huge `MGET` reply is refused naming `client_output_buffer_limit`, many of them at once are
//!   held to `max_client_memory`, and the node's memory stays far below 1 GB;
//! - the documented largest value (16 MiB) is stored and read back on both nodes;
//! - a request fed a byte at a time costs CPU in proportion to its size, and 32 such clients do
//!   not cost a `durable` write its acknowledgement nor the pair its link;
//! - idle and half-sent connections are closed after `client_idle_timeout`; partial requests of
//!   many clients are held to `max_client_memory`, and their refusals are logged once.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Options, Pair, DEADLINE, PRIMARY};
use hotpair::config::SyncLevel;
use hotpair::resp::Frame;

/// A node at rest takes well under this much memory; each bound below is relative to nothing
/// else, so that a regression shows as a failure rather than as a slightly larger number.
const MEMORY_CEILING_MIB: u64 = 600;

/// `VmHWM`: the most resident memory the process ever had, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    status_field_kib(pid, "VmHWM:") / 1024
}

fn status_field_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in status"));
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("a number of kB")
}

/// User plus system CPU time the process has used, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> = stat.rsplit_once(')').expect("stat has a comm").1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the comm.
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / per_second
}

fn encoded(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    hotpair::resp::encode(&Frame::array(args.iter().map(|a| Frame::bulk(a.to_vec())).collect()), &mut out);
    out
}

/// Reads one short reply (a status or an error) from a raw socket.
fn read_line_reply(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(common::REDIS_TIMEOUT)).expect("read timeout");
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => reply.push(byte[0]),
            Err(e) => panic!("reading a reply: {e} (so far {:?})", String::from_utf8_lossy(&reply)),
        }
    }
    String::from_utf8_lossy(&reply).into_owned()
}

/// An `MSET` of `pairs` keys with `value_bytes`-byte values: about `pairs × value_bytes` bytes
/// of request in `2 × pairs + 1` arguments, the shape whose re-parsing was quadratic.
fn large_mset(tag: &str, pairs: usize, value_bytes: usize) -> Vec<u8> {
    let keys: Vec<Vec<u8>> = (0..pairs).map(|i| format!("{tag}:{i}").into_bytes()).collect();
    let value = vec![b'v'; value_bytes];
    let mut args: Vec<&[u8]> = vec![b"MSET"];
    for key in &keys {
        args.push(key);
        args.push(&value);
    }
    encoded(&args)
}

#[test]
fn huge_mget_replies_are_refused_and_the_node_stays_small() {
    let pair = Pair::start(SyncLevel::Durable);
    let mut con = pair.redis(PRIMARY);
    let one_mb = vec![b'x'; 1_000_000];
    let almost_4mb = vec![b'y'; 3_900_000];
    let _: () = redis::cmd("SET").arg("one_mb").arg(&one_mb).query(&mut con).expect("SET 1 MB");
    let _: () = redis::cmd("SET").arg("almost_4mb").arg(&almost_4mb).query(&mut con).expect("SET 3.9 MB");

    // The two requests, each a few kB asking for gigabytes.
    for (key, count) in [("one_mb", 2000), ("almost_4mb", 400)] {
        let error = redis::cmd("MGET").arg(vec![key; count]).query::<Vec<Vec<u8>>>(&mut con).unwrap_err();
        assert!(
            error.to_string().contains("exceeds client_output_buffer_limit (67108864 bytes)"),
            "MGET {key} x{count}: {error}"
        );
    }
    // Eight clients asking at once: each is held to its own limit and all to the shared one.
    let refusals: Vec<String> = std::thread::scope(|scope| {
        let askers: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    let mut con = pair.redis(PRIMARY);
                    redis::cmd("MGET")
                        .arg(vec!["one_mb"; 2000])
                        .query::<Vec<Vec<u8>>>(&mut con)
                        .unwrap_err()
                        .to_string()
                })
            })
            .collect();
        askers.into_iter().map(|asker| asker.join().expect("asker thread")).collect()
    });
    for refusal in &refusals {
        assert!(
            refusal.contains("client_output_buffer_limit") || refusal.contains("max_client_memory"),
            "unexpected refusal: {refusal}"
        );
    }
    // The connection carries on, and a reply within the limit comes whole.
    let values: Vec<Vec<u8>> = redis::cmd("MGET").arg(vec!["one_mb"; 40]).query(&mut con).expect("MGET 40 MB");
    assert_eq!(values.len(), 40);
    assert!(values.iter().all(|v| *v == one_mb));

    let peak = peak_rss_mib(pair.pid(PRIMARY));
    eprintln!("primary's peak RSS over the MGET test: {peak} MiB");
    assert!(peak < MEMORY_CEILING_MIB, "the primary's resident memory peaked at {peak} MiB");
}

#[test]
fn the_largest_documented_value_is_stored_and_read_back_on_both_nodes() {
    let mut pair = Pair::start(SyncLevel::Durable);
    let mut con = pair.redis(PRIMARY);
    let largest = hotpair::config::DEFAULT_MAX_VALUE_BYTES;
    let value: Vec<u8> = (0..largest).map(|i| (i % 251) as u8).collect();
    let _: () = redis::cmd("SET").arg("largest").arg(&value).query(&mut con).expect("SET of max_value_bytes");
    let read: Vec<u8> = redis::cmd("GET").arg("largest").query(&mut con).expect("GET on the primary");
    assert!(read == value, "the primary returned {} bytes, not the value written", read.len());
    pair.wait_caught_up();
    let read: Vec<u8> =
        redis::cmd("GET").arg("largest").query(&mut pair.redis(common::BACKUP)).expect("GET on the backup");
    assert!(read == value, "the backup returned {} bytes, not the value written", read.len());

    // One byte more is refused, naming the limit, before the value is read.
    let mut raw = TcpStream::connect(pair.data_address(PRIMARY)).expect("connect");
    raw.write_all(format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n", largest + 1).as_bytes()).expect("send");
    let reply = read_line_reply(&mut raw);
    assert_eq!(
        reply,
        format!(
            "-ERR Protocol error: bulk length {} exceeds max_value_bytes ({largest}) (at byte 22 of the request)\r\n",
            largest + 1
        )
    );
}

/// Sends `request` except its last `tail` bytes at once, then the tail one byte per write,
/// pacing the writes by `pace` (the dribble itself, not a wait for anything); then reads the
/// reply line.
fn dribble(address: SocketAddr, request: &[u8], tail: usize, pace: Duration) -> String {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let split = request.len() - tail;
    stream.write_all(&request[..split]).expect("send the head");
    for byte in &request[split..] {
        stream.write_all(std::slice::from_ref(byte)).expect("send a byte");
        std::thread::sleep(pace);
    }
    read_line_reply(&mut stream)
}

/// ~3.85 MB in 8001 arguments: the shape of the request, whose re-parsing on every read
/// copied every argument again.
fn dribbled_request(tag: &str) -> Vec<u8> {
    large_mset(tag, 4000, 950)
}

#[test]
fn a_request_fed_a_byte_at_a_time_costs_cpu_in_proportion_to_its_size() {
    let pair = Pair::start(SyncLevel::Durable);
    let (pid, address) = (pair.pid(PRIMARY), pair.data_address(PRIMARY));
    // What the request costs sent at once (reading it, committing it, shipping it) ...
    let cpu_before = cpu_seconds(pid);
    assert_eq!(dribble(address, &dribbled_request("once"), 0, Duration::ZERO), "+OK\r\n");
    let at_once = cpu_seconds(pid) - cpu_before;
    // ... and with its last 2000 bytes one per write, paced over a couple of seconds.
    let (cpu_before, started) = (cpu_seconds(pid), Instant::now());
    let request = dribbled_request("dribbled");
    assert_eq!(dribble(address, &request, 2000, Duration::from_micros(700)), "+OK\r\n");
    let (dribbled, wall) = (cpu_seconds(pid) - cpu_before, started.elapsed());
    eprintln!(
        "{} bytes: {at_once:.3} s of the primary's CPU sent at once, {dribbled:.3} s with the last 2000 a byte at a time over {wall:?}",
        request.len()
    );
    // Re-parsing the buffered request on every read kept a core busy for the whole dribble
    // (35.8 ms of CPU per byte); parsing each byte once adds a read's cost per byte. The bound
    // is generous for a loaded machine: a tenth of the dribble's wall time, plus 100 ms.
    let extra = dribbled - at_once;
    assert!(
        extra < 0.1 * wall.as_secs_f64() + 0.1,
        "dribbling 2000 bytes over {wall:?} cost the primary {extra:.3} s more CPU than sending them at once"
    );
}

#[test]
fn dribbling_clients_cost_durable_writes_neither_their_acknowledgement_nor_the_link() {
    let pair = Pair::start(SyncLevel::Durable);
    let (pid, address) = (pair.pid(PRIMARY), pair.data_address(PRIMARY));
    let stop = Arc::new(AtomicBool::new(false));
    let sent_heads = Arc::new(std::sync::Barrier::new(33));
    let request = Arc::new(dribbled_request("slow"));
    let dribblers: Vec<_> = (0..32)
        .map(|i| {
            let (stop, request, sent_heads) = (stop.clone(), request.clone(), sent_heads.clone());
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(address).expect("connect");
                stream.set_nodelay(true).expect("nodelay");
                // All but 4 kB at once, then a byte at a time; the last byte never comes.
                let split = request.len() - 4096;
                stream.write_all(&request[..split]).expect("send the head");
                sent_heads.wait();
                let mut sent = split;
                while !stop.load(Ordering::Relaxed) && sent < request.len() - 1 {
                    if stream.write_all(&request[sent..=sent]).is_err() {
                        break;
                    }
                    sent += 1;
                    // The dribble's pace: one byte per client every 5 ms.
                    std::thread::sleep(Duration::from_millis(5 + i % 3));
                }
                stream
            })
        })
        .collect();
    sent_heads.wait();

    // Durable writes, one every 5 ms, for four seconds while the 32 clients dribble.
    let mut con = pair.redis(PRIMARY);
    let (cpu_before, started) = (cpu_seconds(pid), Instant::now());
    let (mut slowest, mut writes) = (Duration::ZERO, 0);
    while started.elapsed() < Duration::from_secs(4) {
        let write_started = Instant::now();
        let written: redis::RedisResult<()> = redis::cmd("SET").arg(format!("w{writes}")).arg("v").query(&mut con);
        if let Err(error) = written {
            panic!("durable write {writes} failed while clients dribbled: {error}");
        }
        slowest = slowest.max(write_started.elapsed());
        writes += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let (cpu, wall) = (cpu_seconds(pid) - cpu_before, started.elapsed());
    stop.store(true, Ordering::Relaxed);
    let streams: Vec<TcpStream> = dribblers.into_iter().map(|d| d.join().expect("dribbler")).collect();
    eprintln!(
        "{writes} durable writes beside 32 dribbling clients over {wall:?}: slowest {slowest:?}, primary's CPU {cpu:.3} s"
    );
    // Re-parsing kept the data port's worker busy the whole time; now the dribble costs a read
    // per byte and the node is mostly idle between writes.
    assert!(cpu < 0.5 * wall.as_secs_f64(), "the primary used {cpu:.3} s of CPU in {wall:?}");
    // Liveness, generously: re-parsing let 38 writes through in four seconds, paced for 800.
    assert!(writes >= 100, "only {writes} durable writes in {wall:?}");
    let status = pair.status();
    assert_eq!(status["nodes"][PRIMARY]["peer"]["connected"], true, "{status}");
    let incidents = std::fs::read_to_string(&pair.config.notify.incident_log).unwrap_or_default();
    assert!(!incidents.contains("peer-lost"), "the pair lost its link while clients dribbled:\n{incidents}");
    drop(streams);
}

#[test]
fn idle_and_half_sent_connections_are_closed_after_client_idle_timeout() {
    let options = Options { limits: Some("client_idle_timeout = \"1s\""), ..Options::default() };
    let pair = Pair::start_with(SyncLevel::Durable, options);
    let address = pair.data_address(PRIMARY);
    // A client that sends a request every 300 ms is never idle for a second.
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (stop, mut con) = (stop.clone(), pair.redis(PRIMARY));
        std::thread::spawn(move || {
            let mut pings = 0;
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(redis::cmd("PING").query::<String>(&mut con).expect("a busy client's PING"), "PONG");
                pings += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
            pings
        })
    };
    let idle = TcpStream::connect(address).expect("connect");
    let mut half = TcpStream::connect(address).expect("connect");
    half.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000\r\nonly part of it").expect("send half a request");
    let started = Instant::now();
    for mut stream in [idle, half] {
        stream.set_read_timeout(Some(DEADLINE)).expect("read timeout");
        let mut buffer = [0u8; 64];
        // The node closes it: end of stream (or a reset), not a timeout of ours.
        match stream.read(&mut buffer) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => {
                panic!("expected the node to close an idle connection, got {other:?} after {:?}", started.elapsed())
            }
        }
    }
    let waited = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let pings = busy.join().expect("the busy client kept its connection");
    assert!(waited >= Duration::from_millis(900), "closed after {waited:?}, before the timeout");
    assert!(pings >= 3, "the busy client sent {pings} PINGs");
}

#[test]
fn partial_requests_of_many_clients_are_held_to_max_client_memory_and_logged_once() {
    let pair = Pair::start(SyncLevel::Durable);
    let address = pair.data_address(PRIMARY);
    // 200 clients each send all but the last byte of a 4 MB value: 800 MB if all were kept.
    let head = {
        let mut head = b"*3\r\n$3\r\nSET\r\n$4\r\nhalf\r\n$4000000\r\n".to_vec();
        head.extend(std::iter::repeat_n(b'p', 3_999_999));
        Arc::new(head)
    };
    let senders: Vec<_> = (0..200)
        .map(|_| {
            let head = head.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(address).expect("connect");
                // A client the node refuses sees its write fail or its reply arrive.
                let _ = stream.write_all(&head);
                stream
            })
        })
        .collect();
    let mut streams: Vec<TcpStream> = senders.into_iter().map(|s| s.join().expect("sender")).collect();
    let mut refused = 0;
    for stream in &mut streams {
        stream.set_read_timeout(Some(Duration::from_millis(50))).expect("read timeout");
        let mut reply = [0u8; 256];
        if let Ok(read) = stream.read(&mut reply) {
            let text = String::from_utf8_lossy(&reply[..read]);
            if read > 0 {
                assert!(text.contains("max_client_memory"), "unexpected reply: {text}");
                refused += 1;
            }
        }
    }
    let peak = peak_rss_mib(pair.pid(PRIMARY));
    eprintln!("200 partial 4 MB requests: {refused} refused; primary's peak RSS {peak} MiB");
    assert!(refused > 0, "every partial request was kept");
    assert!(peak < MEMORY_CEILING_MIB, "the primary's resident memory peaked at {peak} MiB");
    // The node still serves, and said so once, not once per client.
    assert_eq!(redis::cmd("PING").query::<String>(&mut pair.redis(PRIMARY)).expect("PING"), "PONG");
    let lines = pair.log(PRIMARY).lines().filter(|l| l.contains("does not fit")).count();
    assert!((1..=2).contains(&lines), "{lines} log lines for {refused} refusals");
    drop(streams);
}

#[test]
fn garbage_connections_are_logged_once_per_source_not_once_each() {
    let pair = Pair::start(SyncLevel::Durable);
    for _ in 0..300 {
        let mut raw = TcpStream::connect(pair.data_address(PRIMARY)).expect("connect");
        raw.write_all(b"*2\r\n$abc\r\n").expect("send garbage");
        assert!(read_line_reply(&mut raw).starts_with("-ERR Protocol error: invalid bulk length"));
    }
    let lines = pair.log(PRIMARY).lines().filter(|l| l.contains("protocol error")).count();
    assert_eq!(lines, 1, "300 garbage connections from one address make one log line a minute");
}
