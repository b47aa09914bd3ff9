//! A running pair of real `hotpair run` processes on 127.0.0.1, for end-to-end tests.
//!
//! [`Pair::start`] runs `hotpair init` in a temporary directory on free ports, optionally edits
//! the pair file, spawns both nodes (stdout and stderr appended to `<node>.log` in that
//! directory) and waits — by polling `hotpair status --json` against a deadline, never by
//! sleeping — until both answer, the backup follows and the primary takes writes.
//!
//! Each `Pair` owns its ports, its directory and its children: tests are independent and may run
//! in parallel. Dropping a `Pair` SIGKILLs whatever still runs; if the test is failing, the tail
//! of each node's log is printed first, so a failure shows what the nodes said.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

pub mod powerloss;
pub mod witness;

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hotpair::config::{PairConfig, SyncLevel};
use redis::Commands as _;
use serde_json::Value;

/// Bound on every wait: a bug fails a test with a message instead of hanging it.
pub const DEADLINE: Duration = Duration::from_secs(20);
/// Interval between two looks at a condition that is being waited for.
pub const POLL: Duration = Duration::from_millis(20);
/// Read and write timeout of the redis connections: a hung node fails the test.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(15);
/// The primary and the backup of a fresh pair (the first node listed starts as primary).
pub const PRIMARY: &str = "a";
pub const BACKUP: &str = "b";
/// Ports are picked below Linux's default ephemeral range (32768..), so that no outgoing
/// connection of any process on the machine gets one as its source port meanwhile.
/// Set this variable to keep each pair's directory (pair file, node logs, data) after the test.
pub const KEEP_ENV: &str = "HOTPAIR_TEST_KEEP";
/// Attempts at starting a pair when a node could not bind its ports (another process took one
/// between our check and the node's bind).
const START_ATTEMPTS: u32 = 3;

/// What to change in the pair file `init` wrote (`None`: keep init's value).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub sync_timeout: Option<&'static str>,
    pub on_peer_loss: Option<&'static str>,
    pub heartbeat: Option<&'static str>,
    /// A `[notify]` command, `{dir}` replaced by the pair's directory.
    pub notify_command: Option<&'static str>,
    /// Lines of a `[monitor]` table, e.g. `canary_interval = "200ms"`.
    pub monitor: Option<&'static str>,
    /// Lines of a `[limits]` table, e.g. `admin_idle_timeout = "300ms"`.
    pub limits: Option<&'static str>,
    /// Give each node a `metrics` address on a free 127.0.0.1 port ([`Pair::metrics_address`]).
    pub metrics: bool,
    /// `disk_min_free` (init does not write the key; it is added).
    pub disk_min_free: Option<&'static str>,
    /// Where to make the pair's directory (a small file system, say); default the system temp dir.
    pub parent_dir: Option<PathBuf>,
    /// More arguments to `hotpair init`, e.g. `--client-password`.
    pub init_args: &'static [&'static str],
    /// Text replacements in the pair file init wrote: (what, with what); each must match.
    pub replace: &'static [(&'static str, &'static str)],
    /// Files to write (mode 0600) in the pair's directory before the nodes start: (name, text).
    pub files: &'static [(&'static str, &'static str)],
    /// Text appended to the pair file (a whole table, e.g. `[witness]` with a test's etcd).
    pub append: Option<String>,
}

pub struct Pair {
    dir: tempfile::TempDir,
    pub pair_file: PathBuf,
    pub config: PairConfig,
    children: HashMap<String, Child>,
    /// Extra environment of each node's next start ([`Pair::set_env`]).
    env: HashMap<String, Vec<(String, String)>>,
}

impl Pair {
    /// A fresh pair at `sync`, both nodes running and connected.
    pub fn start(sync: SyncLevel) -> Pair {
        Pair::start_with(sync, Options::default())
    }

    pub fn start_with(sync: SyncLevel, options: Options) -> Pair {
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut pair = Pair::init(sync, &options);
            match pair.spawn_both() {
                Ok(()) => {
                    pair.wait_ready();
                    return pair;
                }
                Err(failure) => last_failure = failure,
            }
        }
        panic!("could not start a pair in {START_ATTEMPTS} attempts; last: {last_failure}");
    }

    /// Starts both nodes of a pair that already exists in `dir` (made by `hotpair restore`, say)
    /// and waits until it is ready, as [`Pair::start`] does.
    pub fn start_existing(dir: tempfile::TempDir, pair_file: PathBuf) -> Pair {
        let config = PairConfig::load(&pair_file).expect("the pair file loads");
        let mut pair = Pair { dir, pair_file, config, children: HashMap::new(), env: HashMap::new() };
        pair.spawn_both().unwrap_or_else(|failure| panic!("starting the existing pair: {failure}"));
        pair.wait_ready();
        pair
    }

    fn init(sync: SyncLevel, options: &Options) -> Pair {
        let dir = match &options.parent_dir {
            Some(parent) => tempfile::tempdir_in(parent),
            None => tempfile::tempdir(),
        }
        .expect("temporary directory");
        let (a, b) = (free_control_port(), free_control_port());
        let nodes = format!("{PRIMARY}=127.0.0.1:{a},{BACKUP}=127.0.0.1:{b}");
        let out = Command::new(env!("CARGO_BIN_EXE_hotpair"))
            .args(["init", "--dir"])
            .arg(dir.path())
            .args(["--nodes", &nodes, "--sync", sync.name()])
            .args(options.init_args)
            .output()
            .expect("run hotpair init");
        assert!(out.status.success(), "hotpair init failed: {}", String::from_utf8_lossy(&out.stderr));
        let pair_file = dir.path().join("pair.toml");
        let mut text = std::fs::read_to_string(&pair_file).expect("read pair.toml");
        for (key, value) in [
            ("sync_timeout", options.sync_timeout),
            ("on_peer_loss", options.on_peer_loss),
            ("heartbeat", options.heartbeat),
        ] {
            if let Some(value) = value {
                text = set_top_level_key(&text, key, value);
            }
        }
        if let Some(size) = options.disk_min_free {
            // A top-level key must come before the first table.
            text = text.replacen("\n[tls]\n", &format!("\ndisk_min_free = \"{size}\"\n\n[tls]\n"), 1);
            assert!(text.contains("disk_min_free"), "no [tls] table to put disk_min_free before:\n{text}");
        }
        if let Some(command) = options.notify_command {
            let command = command.replace("{dir}", &dir.path().display().to_string());
            let escaped = command.replace('\\', "\\\\").replace('"', "\\\"");
            text = text.replace("commands = []", &format!("commands = [\"{escaped}\"]"));
        }
        if let Some(lines) = options.monitor {
            text.push_str(&format!("\n[monitor]\n{lines}\n"));
        }
        if let Some(lines) = options.limits {
            text.push_str(&format!("\n[limits]\n{lines}\n"));
        }
        if options.metrics {
            for node in [PRIMARY, BACKUP] {
                let table = format!("[nodes.{node}]\n");
                assert!(text.contains(&table), "pair.toml has no {table}");
                let port = free_control_port();
                text = text.replacen(&table, &format!("{table}metrics = \"127.0.0.1:{port}\"\n"), 1);
            }
        }
        if let Some(extra) = &options.append {
            text.push_str(&format!("\n{extra}\n"));
        }
        for (what, with) in options.replace {
            assert!(text.contains(what), "pair.toml has no {what:?} to replace:\n{text}");
            text = text.replacen(what, with, 1);
        }
        for (name, contents) in options.files {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join(name);
            std::fs::write(&path, contents).expect("write a file for the pair");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
        }
        std::fs::write(&pair_file, text).expect("write pair.toml");
        let config = PairConfig::load(&pair_file).expect("the edited pair file loads");
        Pair { dir, pair_file, config, children: HashMap::new(), env: HashMap::new() }
    }

    /// Spawns both nodes and waits until both answer `status`. `Err` if a node died at start
    /// because its port was taken (the caller tries again on other ports).
    fn spawn_both(&mut self) -> Result<(), String> {
        for node in [PRIMARY, BACKUP] {
            self.spawn(node);
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            for node in [PRIMARY, BACKUP] {
                if let Some(status) = self.exited(node) {
                    let log = self.log(node);
                    if log.contains("binding the") {
                        return Err(format!("{node} could not bind ({status}): {log}"));
                    }
                    panic!("node {node} exited at start ({status}):\n{log}");
                }
            }
            let status = self.status();
            if [PRIMARY, BACKUP].iter().all(|n| status["nodes"][n]["reachable"] == true) {
                return Ok(());
            }
            assert!(Instant::now() < deadline, "the nodes did not answer status in time: {status}");
            std::thread::sleep(POLL);
        }
    }

    /// Starts `node`'s process (it must not be running), without waiting for it to answer.
    pub fn spawn(&mut self, node: &str) {
        assert!(!self.children.contains_key(node), "{node} is already running");
        let log_path = self.log_path(node);
        let mut log = OpenOptions::new().create(true).append(true).open(&log_path).expect("open the node log");
        let _ = writeln!(log, "===== hotpair run {node} =====");
        let child = Command::new(env!("CARGO_BIN_EXE_hotpair"))
            .arg("--pair")
            .arg(&self.pair_file)
            .args(["run", node])
            .env("HOTPAIR_LOG", "hotpair=info")
            .env("NO_COLOR", "1")
            .envs(self.env.get(node).into_iter().flatten().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn hotpair run");
        self.children.insert(node.to_string(), child);
    }

    /// The exit status of `node` if its process has ended (it is then forgotten).
    fn exited(&mut self, node: &str) -> Option<std::process::ExitStatus> {
        let status = self.children.get_mut(node)?.try_wait().expect("try_wait")?;
        self.children.remove(node);
        Some(status)
    }

    /// Waits until both nodes answer, the backup's link to the primary is up, the primary sees
    /// its backup and takes writes. Returns that status.
    pub fn wait_ready(&mut self) -> Value {
        self.wait_for("both nodes up, the backup connected, the primary accepting writes", |s| {
            let (a, b) = (&s["nodes"][PRIMARY], &s["nodes"][BACKUP]);
            a["reachable"] == true
                && b["reachable"] == true
                && b["peer"]["connected"] == true
                && a["peer"]["connected"] == true
                && a["writes"]["accepting"] == true
        })
    }

    /// Polls `status --json` until `condition` holds; panics with the last status and the logs
    /// at the deadline, or as soon as a node that should be running has died.
    pub fn wait_for(&mut self, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let status = self.status();
            if condition(&status) {
                return status;
            }
            for node in [PRIMARY, BACKUP] {
                if let Some(exit) = self.exited(node) {
                    panic!("waiting for {what}: node {node} died ({exit})\nlast status: {status}");
                }
            }
            assert!(Instant::now() < deadline, "waiting for {what}: not within {DEADLINE:?}\nlast status: {status}");
            std::thread::sleep(POLL);
        }
    }

    /// Waits until the backup has applied everything the primary committed — by its own status
    /// and by the acks the primary holds, with no lag left on either side — then returns that
    /// LSN after checking that both report the same digest there.
    pub fn wait_caught_up(&mut self) -> u64 {
        let status = self.wait_for("the backup at the primary's LSN", |s| {
            let (a, b) = (&s["nodes"][PRIMARY], &s["nodes"][BACKUP]);
            let lsn = &a["lsn"];
            a["reachable"] == true
                && b["reachable"] == true
                && lsn.as_u64().is_some()
                && b["lsn"] == *lsn
                && b["received_lsn"] == *lsn
                && b["durable_lsn"] == *lsn
                && a["peer"]["applied_lsn"] == *lsn
                && a["lag_records"] == 0
                && b["lag_records"] == 0
        });
        let (a, b) = (&status["nodes"][PRIMARY], &status["nodes"][BACKUP]);
        assert_eq!(a["digest"], b["digest"], "same LSN {}, different digests: {status}", a["lsn"]);
        a["lsn"].as_u64().expect("lsn is a number")
    }

    /// `hotpair status --json` for both nodes.
    pub fn status(&self) -> Value {
        let out = self.hotpair(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("status --json is not JSON ({e}): {}{}", String::from_utf8_lossy(&out.stdout), stderr(&out))
        })
    }

    /// Runs `hotpair --pair <this pair> ARGS`.
    pub fn hotpair(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hotpair"))
            .arg("--pair")
            .arg(&self.pair_file)
            .args(args)
            .output()
            .expect("run hotpair")
    }

    /// Runs `hotpair --pair <this pair> ARGS` (stdin closed), which must end within
    /// [`DEADLINE`]: a command that would run on (a node that should have refused to start)
    /// is killed and fails the test.
    pub fn hotpair_bounded(&self, args: &[&str]) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hotpair"))
            .arg("--pair")
            .arg(&self.pair_file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hotpair");
        // Drained as they come, so that a command with much to say never waits on a full pipe.
        let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                bytes
            })
        };
        let out_reader = drain(Box::new(child.stdout.take().expect("stdout piped")));
        let err_reader = drain(Box::new(child.stderr.take().expect("stderr piped")));
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let err = err_reader.join().unwrap_or_default();
                panic!("hotpair {args:?} did not end within {DEADLINE:?}: {}", String::from_utf8_lossy(&err));
            }
            std::thread::sleep(POLL);
        };
        let stdout = out_reader.join().expect("stdout reader");
        let stderr = err_reader.join().expect("stderr reader");
        Output { status, stdout, stderr }
    }

    /// Runs `hotpair --pair <this pair> ARGS` and checks it succeeded.
    pub fn hotpair_ok(&self, args: &[&str]) -> String {
        let out = self.hotpair(args);
        assert!(out.status.success(), "hotpair {args:?} failed: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGKILL: the process gets no chance to sync or flush anything.
    pub fn kill(&mut self, node: &str) {
        let mut child = self.children.remove(node).unwrap_or_else(|| panic!("{node} is not running"));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap the killed node");
    }

    /// SIGTERM, then waits for a clean exit (status 0).
    pub fn stop(&mut self, node: &str) {
        let status = self.terminate(node);
        assert!(status.success(), "{node} exited with {status} after SIGTERM:\n{}", self.log(node));
    }

    /// SIGTERM, then waits (up to [`DEADLINE`], else panics) for the process to end, however.
    pub fn terminate(&mut self, node: &str) -> std::process::ExitStatus {
        self.signal(node, libc::SIGTERM);
        let mut child = self.children.remove(node).unwrap_or_else(|| panic!("{node} is not running"));
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{node} did not stop within {DEADLINE:?} of SIGTERM:\n{}", self.log(node));
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGSTOP: the process stays, its sockets stay open, and it answers nothing (a hung node,
    /// or one cut off by a partition that drops packets).
    pub fn pause(&mut self, node: &str) {
        self.signal(node, libc::SIGSTOP);
        // kill(2) returns before the process has stopped; a request sent right after could
        // still be served. Wait until the kernel shows it stopped (state T in /proc).
        let pid = self.children.get(node).map(Child::id).unwrap_or_else(|| panic!("{node} is not running"));
        let deadline = Instant::now() + DEADLINE;
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state follows the command name in parentheses, which may itself hold spaces.
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
            if state == Some("T") {
                return;
            }
            assert!(Instant::now() < deadline, "{node} did not stop after SIGSTOP: {stat}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGCONT after [`Pair::pause`].
    pub fn resume(&mut self, node: &str) {
        self.signal(node, libc::SIGCONT);
    }

    fn signal(&self, node: &str, signal: libc::c_int) {
        let child = self.children.get(node).unwrap_or_else(|| panic!("{node} is not running"));
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid; the child is not reaped yet, so the pid is ours.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signal {signal} to {node}");
    }

    /// One node's status through the admin client (does not wait for the other node, which may
    /// be paused: `status` would spend its whole timeout on it).
    pub fn node_status(&self, node: &str) -> Value {
        hotpair::admin::client::block_on(hotpair::admin::client::request(
            &self.config,
            node,
            hotpair::replication::wire::AdminRequest::Status,
        ))
        .expect("runtime")
        .unwrap_or_else(|e| panic!("status of {node}: {e}"))
    }

    /// Polls one node's status until `condition` holds (see [`Pair::wait_for`]).
    pub fn wait_for_node(&self, node: &str, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let status = self.node_status(node);
            if condition(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {what}: not within {DEADLINE:?}\nlast status of {node}: {status}"
            );
            std::thread::sleep(POLL);
        }
    }

    /// Starts `node` again on the same directory and waits until it answers `status` (not until
    /// the pair is whole again: see [`Pair::wait_ready`]).
    pub fn restart(&mut self, node: &str) {
        self.spawn(node);
        let node_name = node.to_string();
        self.wait_for(&format!("{node} to answer after its restart"), |s| s["nodes"][&node_name]["reachable"] == true);
    }

    /// Sets (`Some`) or clears (`None`) an environment variable for `node`'s next starts.
    pub fn set_env(&mut self, node: &str, key: &str, value: Option<&str>) {
        let vars = self.env.entry(node.to_string()).or_default();
        vars.retain(|(k, _)| k != key);
        if let Some(value) = value {
            vars.push((key.to_string(), value.to_string()));
        }
    }

    /// The process id of `node`'s running process.
    pub fn pid(&self, node: &str) -> u32 {
        self.children.get(node).map(Child::id).unwrap_or_else(|| panic!("{node} is not running"))
    }

    pub fn is_running(&self, node: &str) -> bool {
        self.children.contains_key(node)
    }

    /// A redis client for `node`'s data port, with the default user's password when the pair
    /// has one (plain TCP only: the `redis` crate is built without TLS here).
    pub fn client(&self, node: &str) -> redis::Client {
        let password = match self.client_password() {
            Some(password) => format!(":{password}@"),
            None => String::new(),
        };
        redis::Client::open(format!("redis://{password}{}/", self.data_address(node))).expect("redis URL")
    }

    /// The data ports' default password (`[clients] password_file`), if the pair has one.
    pub fn client_password(&self) -> Option<String> {
        let path = self.config.clients.password_file.as_ref()?;
        let password = hotpair::server::auth::read_password(path).expect("read the password file");
        Some(String::from_utf8(password).expect("init writes a hex password"))
    }

    /// A fresh connection to `node`'s data port, with timeouts.
    pub fn redis(&self, node: &str) -> redis::Connection {
        let connection =
            self.client(node).get_connection_with_timeout(REDIS_TIMEOUT).expect("connect to the data port");
        connection.set_read_timeout(Some(REDIS_TIMEOUT)).expect("read timeout");
        connection.set_write_timeout(Some(REDIS_TIMEOUT)).expect("write timeout");
        connection
    }

    pub fn data_address(&self, node: &str) -> SocketAddr {
        self.config.node(node).expect("node of this pair").data
    }

    /// `node`'s metrics address (the pair must be started with `Options::metrics`).
    pub fn metrics_address(&self, node: &str) -> SocketAddr {
        self.config.node(node).expect("node of this pair").metrics.expect("the pair was started with metrics")
    }

    pub fn control_address(&self, node: &str) -> SocketAddr {
        self.config.node(node).expect("node of this pair").control
    }

    /// The node's data directory (journals, store, meta).
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.config.node(node).expect("node of this pair").dir.clone()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}.log"))
    }

    /// Everything `node` wrote on stdout and stderr, over all its runs.
    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.log_path(node)).unwrap_or_default()
    }

    /// Waits until `node`'s log contains `needle` (a node logs after it has answered, so the
    /// line may come a moment after what caused it).
    pub fn wait_log(&self, node: &str, needle: &str, what: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self.log(node).contains(needle) {
            assert!(Instant::now() < deadline, "{what}: {node} never logged {needle:?}");
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os(KEEP_ENV).is_some() {
            eprintln!("{KEEP_ENV}: keeping {}", self.dir.path().display());
            // Leak the directory on purpose: the variable asks to look at it afterwards.
            let _ = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temporary directory")).keep();
        }
        if std::thread::panicking() {
            for node in [PRIMARY, BACKUP] {
                let log = self.log(node);
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("----- last lines of node {node}'s log -----");
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Clients writing distinct keys at the pair's sync level, remembering what was acknowledged.
pub struct Writers {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<BTreeMap<String, String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Writers {
    /// `count` clients writing `w<client>-<i>` keys to the primary, each on its own thread.
    pub fn start(pair: &Pair, count: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
        let threads = (0..count)
            .map(|w| {
                let client = pair.client(PRIMARY);
                let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
                std::thread::spawn(move || {
                    let mut connection = None;
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        if connection.is_none() {
                            connection = client.get_connection_with_timeout(REDIS_TIMEOUT).ok();
                        }
                        let Some(c) = connection.as_mut() else { continue };
                        let (key, value) = (format!("w{w}-{i}"), format!("value-{w}-{i}"));
                        // A failed write is unknown, not acknowledged: it is not checked.
                        match c.set::<_, _, ()>(&key, &value) {
                            Ok(()) => drop(acknowledged.lock().unwrap().insert(key, value)),
                            Err(_) => connection = None,
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Writers { stop, acknowledged, threads }
    }

    pub fn acked(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    pub fn wait_acked(&self, target: usize) {
        let deadline = Instant::now() + DEADLINE;
        while self.acked() < target {
            assert!(Instant::now() < deadline, "only {} writes acknowledged, waiting for {target}", self.acked());
            std::thread::sleep(POLL);
        }
    }

    /// Stops the clients; every write acknowledged, key → value.
    pub fn finish(self) -> BTreeMap<String, String> {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().expect("writer thread");
        }
        Arc::try_unwrap(self.acknowledged).expect("writers joined").into_inner().unwrap()
    }
}

/// A control port P with P, P + 1 and P + 2 (data and Sentinel ports) free on 127.0.0.1, never handed out
/// twice by this process — the drill's own chooser, so tests and drills share one rule.
pub fn free_control_port() -> u16 {
    hotpair::drill::pair::free_control_port().unwrap_or_else(|e| panic!("{e}"))
}

/// Replaces the line `key = …` at the top level of a pair file.
fn set_top_level_key(text: &str, key: &str, value: &str) -> String {
    let prefix = format!("{key} =");
    let mut found = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with(&prefix) {
                found = true;
                format!("{key} = \"{value}\"")
            } else {
                line.to_string()
            }
        })
        .collect();
    assert!(found, "pair.toml has no top-level `{key}` line:\n{text}");
    lines.join("\n") + "\n"
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every record of a journal directory, through `hotpair journal dump PATH --json`.
pub fn journal_dump(path: &Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_hotpair"))
        .args(["journal", "dump"])
        .arg(path)
        .arg("--json")
        .output()
        .expect("run hotpair journal dump");
    assert!(out.status.success(), "journal dump {} failed: {}", path.display(), stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("journal dump line is not JSON ({e}): {line}"))
        })
        .collect()
}

/// Bytes as `journal dump --json` prints them: a string when UTF-8, else `{"hex": "…"}`.
pub fn dumped_bytes(value: &Value) -> Vec<u8> {
    if let Some(text) = value.as_str() {
        return text.as_bytes().to_vec();
    }
    let hex = value["hex"].as_str().unwrap_or_else(|| panic!("not dumped bytes: {value}"));
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit")).collect()
}

/// The client's string in a stored value (`hotpair::storage::value` format: tag, optional expiry, data).
pub fn client_value(stored: &[u8]) -> Vec<u8> {
    match hotpair::storage::value::StoredValue::decode(stored).expect("a stored value").data {
        hotpair::storage::value::Data::String(bytes) => bytes,
        other => panic!("not a string value: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Notifications: a `[notify]` command that appends each incident event to a file.

/// A notification command for [`Options::notify_command`]: every event, one JSON line, in
/// `notified.jsonl` in the pair's directory.
pub const NOTIFY: &str = "cat >> {dir}/notified.jsonl";

pub fn notified(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("notified.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("notification is not JSON ({e}): {l}")))
        .collect()
}

/// Waits until the notification command has received an event matching `what`.
pub fn wait_notified(dir: &Path, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(event) = notified(dir).into_iter().find(|e| matches(e)) {
            return event;
        }
        assert!(Instant::now() < deadline, "no notification for {what}; got {:?}", notified(dir));
        std::thread::sleep(POLL);
    }
}

pub fn event(kind: &'static str, node: &'static str, state: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["kind"] == kind && e["node"] == node && e["state"] == state
}
