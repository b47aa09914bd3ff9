//! The control port under a crowd of strangers: connections that send half a TLS ClientHello
//! and stall, reopened as fast as the node closes them, must lock out neither the admin
//! (`hotpair status`) nor the backup (a restarted backup reconnects, `durable` writes go on),
//! and must not flood the log.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Pair, BACKUP, DEADLINE, POLL, PRIMARY};
use hotpair::config::SyncLevel;

/// Stalled handshakes kept open at all times.
const STALLED: usize = 300;

/// The first bytes of a TLS ClientHello: a handshake record announcing 512 bytes, of which only
/// the start of the ClientHello comes.
const HALF_A_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x42, 0x42];

/// Keeps `STALLED` half-handshakes open on `address` from its own threads, reopening each one
/// the node closes at once.
struct Stallers {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Stallers {
    fn start(address: SocketAddr) -> Stallers {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicUsize::new(0));
        let threads = (0..4)
            .map(|_| {
                let (stop, opened) = (stop.clone(), opened.clone());
                std::thread::spawn(move || {
                    let mut held: Vec<TcpStream> = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        // Drop what the node closed (a read sees the end), then refill.
                        held.retain(|stream| {
                            let mut byte = [0u8; 1];
                            stream.set_nonblocking(true).is_ok()
                                && matches!(stream.peek(&mut byte), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
                        });
                        while held.len() < STALLED / 4 {
                            let Ok(mut stream) = TcpStream::connect(address) else { break };
                            if stream.write_all(HALF_A_CLIENT_HELLO).is_ok() {
                                opened.fetch_add(1, Ordering::Relaxed);
                                held.push(stream);
                            }
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Stallers { stop, opened, threads }
    }
}

impl Drop for Stallers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// `hotpair status --json`, and how long it took.
fn timed_status(pair: &Pair) -> (serde_json::Value, Duration) {
    let started = Instant::now();
    let status = pair.status();
    (status, started.elapsed())
}

#[test]
fn stalled_handshakes_lock_out_neither_admins_nor_the_backup() {
    let mut pair = Pair::start(SyncLevel::Durable);
    let stallers = Stallers::start(pair.control_address(PRIMARY));
    let deadline = Instant::now() + DEADLINE;
    while stallers.opened.load(Ordering::Relaxed) < STALLED {
        assert!(Instant::now() < deadline, "could not open {STALLED} connections");
        std::thread::sleep(POLL);
    }

    // The admin: status answers at once, many times over.
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let (status, took) = timed_status(&pair);
        assert_eq!(status["nodes"][PRIMARY]["reachable"], true, "{status}");
        slowest = slowest.max(took);
    }
    // Durable writes go on: the backup's session was never counted with strangers.
    let mut con = pair.redis(PRIMARY);
    for i in 0..50 {
        let _: () = redis::cmd("SET").arg(format!("k{i}")).arg(i).query(&mut con).expect("durable write");
    }
    // A restarted backup gets back in through the crowd, and writes are acknowledged again.
    pair.kill(BACKUP);
    let restarted = Instant::now();
    pair.restart(BACKUP);
    pair.wait_for("the restarted backup to reconnect", |s| s["nodes"][PRIMARY]["peer"]["connected"] == true);
    let reconnected = restarted.elapsed();
    let _: () = redis::cmd("SET").arg("after").arg("restart").query(&mut con).expect("durable write after the restart");
    let (status, took) = timed_status(&pair);
    slowest = slowest.max(took);
    let opened = stallers.opened.load(Ordering::Relaxed);
    drop(stallers);
    eprintln!(
        "{opened} stalled handshakes opened; slowest status {slowest:?}; the backup reconnected {reconnected:?} after its restart"
    );
    assert_eq!(status["nodes"][BACKUP]["reachable"], true, "{status}");
    assert!(slowest < Duration::from_secs(1), "status took {slowest:?} with {STALLED} stalled handshakes");
    assert!(reconnected < Duration::from_secs(10), "the backup took {reconnected:?} to reconnect");

    // Hundreds of refusals, a handful of log lines.
    let log = pair.log(PRIMARY);
    let lines =
        log.lines().filter(|l| l.contains("control connection refused") || l.contains("handshake slots full")).count();
    assert!(
        lines <= 10,
        "{lines} log lines for {opened} stalled handshakes:\n{}",
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
}
