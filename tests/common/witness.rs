//! A throwaway etcd witness for pair tests, a pair that uses it, and a client that writes to
//! whichever node takes writes (shared by `witness_failover.rs` and `witness_tls.rs`).
//!
//! Without an etcd executable, [`etcd_or_skip`] prints SKIPPED and the test returns.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hotpair::config::SyncLevel;
use hotpair::drill::etcd::LocalEtcd;
use redis::Commands as _;
use serde_json::Value;

use super::{Options, Pair, BACKUP, DEADLINE, POLL, PRIMARY};

/// The witness ttl of every pair here: the outcomes are stated at ttl 3s.
pub const TTL_S: u64 = 3;

pub struct Witness {
    pub etcd: LocalEtcd,
    pub runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

/// A plain-http etcd, or `None` (and SKIPPED printed) without an etcd executable.
pub fn etcd_or_skip(name: &str) -> Option<Witness> {
    start_or_skip(name, false)
}

/// An etcd serving https only and requiring a client certificate ([`LocalEtcd::start_tls`]).
pub fn etcd_tls_or_skip(name: &str) -> Option<Witness> {
    start_or_skip(name, true)
}

fn start_or_skip(name: &str, tls: bool) -> Option<Witness> {
    if LocalEtcd::executable().is_none() {
        eprintln!("SKIPPED {name}: no etcd executable (apt-get install etcd-server)");
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let started = if tls {
        runtime.block_on(LocalEtcd::start_tls(dir.path()))
    } else {
        runtime.block_on(LocalEtcd::start(dir.path()))
    };
    let etcd = started.unwrap_or_else(|e| panic!("start etcd: {e}"));
    Some(Witness { etcd, runtime, _dir: dir })
}

/// The `[witness]` table of a pair using `witness` (with its CA and client certificate when it
/// serves https), failover automatic, ttl [`TTL_S`].
pub fn witness_table(witness: &Witness) -> String {
    let mut table =
        format!("[witness]\netcd = [\"{}\"]\nfailover = \"automatic\"\nttl = \"{TTL_S}s\"\n", witness.etcd.endpoint());
    if let Some(certs) = witness.etcd.certs() {
        for (key, path) in [("ca", &certs.ca), ("cert", &certs.client_cert), ("key", &certs.client_key)] {
            table.push_str(&format!("{key} = \"{}\"\n", path.display()));
        }
    }
    table
}

pub fn pair_with(witness: &Witness, sync: SyncLevel) -> Pair {
    pair_with_options(witness, sync, Options::default())
}

/// A pair with `witness` as its witness, once the primary holds the leader key's lease.
pub fn pair_with_options(witness: &Witness, sync: SyncLevel, options: Options) -> Pair {
    let pair = Pair::start_with(sync, Options { append: Some(witness_table(witness)), ..options });
    pair.wait_for_node(PRIMARY, "the primary holding the witness lease", |s| s["witness"]["holds_lease"] == true);
    pair
}

pub fn role(status: &Value) -> &str {
    status["role"].as_str().unwrap_or("?")
}

/// An acknowledged write.
#[derive(Debug, Clone)]
pub struct Acked {
    pub key: String,
    pub value: String,
    /// The node that acknowledged it.
    pub node: &'static str,
    /// When the acknowledgement arrived, and how long after the write was sent.
    pub at: Instant,
    pub took: Duration,
}

/// A write that failed (not acknowledged): when, on which node, and the error.
#[derive(Debug, Clone)]
pub struct Failed {
    pub at: Instant,
    pub node: &'static str,
    pub error: String,
}

/// One client writing distinct keys to whichever node takes them: it tries the node it wrote to
/// last, and the other one when that fails. Remembers every acknowledged write, with the node
/// and the time, and every failed one.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    failed: Arc<Mutex<Vec<Failed>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(pair: &Pair) -> Writer {
        let clients = [(PRIMARY, pair.client(PRIMARY)), (BACKUP, pair.client(BACKUP))];
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
        let failed: Arc<Mutex<Vec<Failed>>> = Arc::default();
        let (stop2, acked2, failed2) = (stop.clone(), acked.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            let mut target = 0usize;
            let mut connection: Option<redis::Connection> = None;
            let mut i = 0u64;
            while !stop2.load(Ordering::SeqCst) {
                if connection.is_none() {
                    connection = clients[target].1.get_connection_with_timeout(Duration::from_millis(500)).ok();
                    if let Some(c) = &connection {
                        let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
                        let _ = c.set_write_timeout(Some(Duration::from_secs(3)));
                    }
                }
                let (key, value) = (format!("k{i}"), format!("v{i}"));
                i += 1;
                let sent = Instant::now();
                let result = match connection.as_mut() {
                    Some(c) => c.set::<_, _, ()>(&key, &value).map_err(|e| e.to_string()),
                    None => Err("could not connect".to_string()),
                };
                let node = clients[target].0;
                match result {
                    Ok(()) => {
                        let at = Instant::now();
                        acked2.lock().unwrap().push(Acked { key, value, node, at, took: at - sent });
                    }
                    Err(error) => {
                        failed2.lock().unwrap().push(Failed { at: Instant::now(), node, error });
                        connection = None;
                        target = 1 - target;
                        // Not a synchronisation: only keeps a refused client from spinning.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        });
        Writer { stop, acked, failed, thread: Some(thread) }
    }

    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    pub fn wait_count(&self, target: usize, what: &str) {
        let deadline = Instant::now() + DEADLINE;
        while self.count() < target {
            assert!(
                Instant::now() < deadline,
                "{what}: only {} writes acknowledged, waiting for {target}",
                self.count()
            );
            std::thread::sleep(POLL);
        }
    }

    pub fn first_on(&self, node: &str, after: Instant) -> Option<Instant> {
        self.acked.lock().unwrap().iter().find(|w| w.node == node && w.at > after).map(|w| w.at)
    }

    pub fn failures(&self) -> Vec<Failed> {
        self.failed.lock().unwrap().clone()
    }

    /// Stops the client: every acknowledged write, and every failed one.
    pub fn finish_all(mut self) -> (Vec<Acked>, Vec<Failed>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("writer thread");
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        let failed = std::mem::take(&mut *self.failed.lock().unwrap());
        (acked, failed)
    }

    /// Stops the client: every acknowledged write.
    pub fn finish(self) -> Vec<Acked> {
        self.finish_all().0
    }
}

/// Every acknowledged write is on `node`.
pub fn assert_all_on(pair: &Pair, node: &str, acked: &[Acked]) {
    let mut redis = pair.redis(node);
    let expected: BTreeMap<&str, &str> = acked.iter().map(|w| (w.key.as_str(), w.value.as_str())).collect();
    let keys: Vec<&str> = expected.keys().copied().collect();
    let mut lost = BTreeMap::new();
    for chunk in keys.chunks(500) {
        let values: Vec<Option<String>> = redis.mget(chunk).expect("MGET");
        for (key, value) in chunk.iter().zip(values) {
            if value.as_deref() != Some(expected[key]) {
                lost.insert(key.to_string(), (expected[key].to_string(), value));
            }
        }
    }
    assert!(lost.is_empty(), "{} acknowledged write(s) lost or changed on {node}: {lost:?}", lost.len());
}
