//! The pair a drill runs against: spawned (owned) or attached.
//!
//! ## Job
//! [`DrillPair::spawn`] makes a fresh pair in a new temporary directory: picks free ports on
//! 127.0.0.1, runs `hotpair init` through the current executable, starts one fault [`Proxy`]
//! per node in front of its control port, edits `pair.toml` (the playbook's settings, and each
//! node's `peer_via` = its proxy), spawns `hotpair run a` and `hotpair run b` as children (their
//! stdout and stderr appended to `<node>.log` in the directory), and waits against a deadline
//! until both answer, the backup follows and the primary takes writes.
//! [`DrillPair::attach`] only loads a pair file: nothing is owned, so the fault steps are refused
//! (at playbook parse time).
//!
//! It then offers the process faults (`kill` = SIGKILL, `pause` = SIGSTOP, `resume` = SIGCONT,
//! `restart`), the link faults through the proxies, `corrupt-tail`, and status polling through
//! the admin client.
//!
//! ## Invariants
//! - Every address is on 127.0.0.1; node ports come from below the ephemeral range, proxies bind
//!   port 0.
//! - Children never outlive the drill: dropping a [`DrillPair`] SIGKILLs (after SIGCONT) every
//!   child still running, also when the drill ends in an error.
//! - A node the drill did not stop but that has exited is noticed ([`DrillPair::reap`]) and its
//!   log tail is shown.
//! - The directory is kept after the drill (its path is printed): logs, journals and the report.

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::etcd::LocalEtcd;
use super::playbook::{Link, PairSettings, PartitionMode, WitnessSettings};
use super::proxy::Proxy;
use super::DrillError;
use crate::config::PairConfig;

/// Bound on waiting for a node to come up.
pub const START_DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(25);
/// Node ports are picked from here: below Linux's default ephemeral range (32768..), so no
/// outgoing connection takes one meanwhile.
const PORTS: std::ops::Range<u16> = 20_000..32_000;
const START_ATTEMPTS: u32 = 3;
/// How long one node's status may take when polling (a paused node must not stall a poll).
const STATUS_TIMEOUT: Duration = Duration::from_millis(1500);

pub struct DrillPair {
    pub config: PairConfig,
    pub pair_file: PathBuf,
    /// The spawned pair's directory; for an attached pair, the pair file's directory.
    pub dir: PathBuf,
    /// Whether the drill spawned (and owns) the nodes.
    pub owned: bool,
    exe: PathBuf,
    children: HashMap<String, Child>,
    paused: Vec<String>,
    /// One proxy per node, in front of its control port (spawned pairs only).
    proxies: BTreeMap<String, Proxy>,
    /// The drill's own etcd, when the playbook has a `[witness]` table.
    etcd: Option<LocalEtcd>,
    /// One proxy per node between it and `etcd` (the node's `witness_etcd`).
    witness_proxies: BTreeMap<String, Proxy>,
}

impl DrillPair {
    pub fn attach(pair_file: &Path, exe: PathBuf) -> Result<DrillPair, DrillError> {
        let config = PairConfig::load(pair_file)?;
        let dir = config.path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Ok(DrillPair {
            pair_file: config.path.clone(),
            config,
            dir,
            owned: false,
            exe,
            children: HashMap::new(),
            paused: Vec::new(),
            proxies: BTreeMap::new(),
            etcd: None,
            witness_proxies: BTreeMap::new(),
        })
    }

    /// A fresh pair, both nodes running and connected.
    pub async fn spawn(settings: &PairSettings, exe: PathBuf) -> Result<DrillPair, DrillError> {
        let mut last = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let mut pair = DrillPair::init(settings, exe.clone()).await?;
            match pair.start_both().await {
                Ok(()) => return Ok(pair),
                Err(StartFailure::PortTaken(why)) => {
                    tracing::warn!(attempt, %why, "a node could not bind its port; trying other ports");
                    last = why;
                }
                Err(StartFailure::Other(e)) => return Err(e),
            }
        }
        Err(DrillError::Setup(format!("could not start the pair in {START_ATTEMPTS} attempts; last: {last}")))
    }

    async fn init(settings: &PairSettings, exe: PathBuf) -> Result<DrillPair, DrillError> {
        let dir = make_temp_dir()?;
        let (a, b) = (free_control_port()?, free_control_port()?);
        let controls = [("a", SocketAddr::from(([127, 0, 0, 1], a))), ("b", SocketAddr::from(([127, 0, 0, 1], b)))];
        let nodes = format!("a={},b={}", controls[0].1, controls[1].1);
        let security = [("--client-password", settings.client_password), ("--client-tls", settings.client_tls)];
        let out = tokio::process::Command::new(&exe)
            .args(["init", "--dir"])
            .arg(&dir)
            .args(["--nodes", &nodes, "--sync", settings.sync.name()])
            .args(security.iter().filter(|(_, on)| *on).map(|(flag, _)| *flag))
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|source| DrillError::Io { context: format!("running {} init", exe.display()), source })?;
        if !out.status.success() {
            return Err(DrillError::Setup(format!("hotpair init failed: {}", String::from_utf8_lossy(&out.stderr))));
        }
        let pair_file = dir.join(crate::admin::init::PAIR_FILE);
        let mut text = std::fs::read_to_string(&pair_file)
            .map_err(|source| DrillError::Io { context: format!("reading {}", pair_file.display()), source })?;
        let quoted = |s: String| toml::Value::String(s).to_string();
        let human = |d: Duration| quoted(humantime::format_duration(d).to_string());
        if let Some(d) = settings.sync_timeout {
            text = set_top_level_key(&text, "sync_timeout", &human(d));
        }
        if let Some(d) = settings.heartbeat {
            text = set_top_level_key(&text, "heartbeat", &human(d));
        }
        if let Some(policy) = settings.on_peer_loss {
            text = set_top_level_key(&text, "on_peer_loss", &quoted(policy.to_string()));
        }
        let mut proxies = BTreeMap::new();
        for (name, control) in controls {
            let proxy = Proxy::start(control)
                .await
                .map_err(|source| DrillError::Io { context: format!("starting the proxy for {name}"), source })?;
            text = set_node_key(&text, name, "peer_via", &quoted(proxy.listen_address().to_string()));
            proxies.insert(name.to_string(), proxy);
        }
        let (etcd, witness_proxies) = match &settings.witness {
            None => (None, BTreeMap::new()),
            Some(witness) => {
                let (etcd, proxies, edited) = start_witness(&dir, witness, text).await?;
                text = edited;
                (Some(etcd), proxies)
            }
        };
        std::fs::write(&pair_file, &text)
            .map_err(|source| DrillError::Io { context: format!("writing {}", pair_file.display()), source })?;
        let config = PairConfig::load(&pair_file)?;
        Ok(DrillPair {
            config,
            pair_file,
            dir,
            owned: true,
            exe,
            children: HashMap::new(),
            paused: Vec::new(),
            proxies,
            etcd,
            witness_proxies,
        })
    }

    async fn start_both(&mut self) -> Result<(), StartFailure> {
        for node in self.names() {
            self.spawn_node(&node).map_err(StartFailure::Other)?;
        }
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            for node in self.names() {
                if let Some(status) = self.reap(&node) {
                    let log = self.log_tail(&node, 30);
                    if log.contains("binding the") {
                        return Err(StartFailure::PortTaken(format!("{node} exited ({status}): {log}")));
                    }
                    return Err(StartFailure::Other(DrillError::Setup(format!(
                        "node {node} exited at start ({status}); its log ({}):\n{log}",
                        self.log_path(&node).display()
                    ))));
                }
            }
            let status = self.status().await;
            if self.ready(&status) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StartFailure::Other(DrillError::Setup(format!(
                    "the pair was not up within {START_DEADLINE:?} (both reachable, the backup connected, the \
                     primary taking writes); last status: {status}\n{}",
                    self.logs_for_failure()
                ))));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Both reachable, each sees its peer, one of them a primary taking writes.
    fn ready(&self, status: &Value) -> bool {
        let nodes = self.names();
        nodes.iter().all(|n| status["nodes"][n]["reachable"] == true && status["nodes"][n]["peer"]["connected"] == true)
            && nodes
                .iter()
                .any(|n| status["nodes"][n]["role"] == "primary" && status["nodes"][n]["writes"]["accepting"] == true)
    }

    /// The node names in pair-file order.
    pub fn names(&self) -> Vec<String> {
        self.config.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Each node's data port with the TLS and password the pair file asks for.
    pub fn data_endpoints(&self) -> Result<Vec<super::client::DataEndpoint>, crate::Error> {
        super::client::DataEndpoint::of_pair(&self.config)
    }

    pub fn data_addresses(&self) -> Vec<SocketAddr> {
        self.config.nodes.iter().map(|n| n.data).collect()
    }

    pub fn exe(&self) -> &Path {
        &self.exe
    }

    fn log_path(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.log"))
    }

    fn spawn_node(&mut self, node: &str) -> Result<(), DrillError> {
        if self.children.contains_key(node) {
            return Err(DrillError::Step(format!("node {node} is already running")));
        }
        let log_path = self.log_path(node);
        let io = |source| DrillError::Io { context: format!("opening {}", log_path.display()), source };
        let mut log = OpenOptions::new().create(true).append(true).open(&log_path).map_err(io)?;
        let _ = writeln!(log, "===== hotpair run {node} (drill) =====");
        let stdout = log.try_clone().map_err(io)?;
        let child = Command::new(&self.exe)
            .arg("--pair")
            .arg(&self.pair_file)
            .args(["run", node])
            .env("HOTPAIR_LOG", std::env::var("HOTPAIR_DRILL_NODE_LOG").unwrap_or_else(|_| "hotpair=info".into()))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .map_err(|source| DrillError::Io { context: format!("spawning hotpair run {node}"), source })?;
        tracing::info!(node, pid = child.id(), "node started");
        self.children.insert(node.to_string(), child);
        Ok(())
    }

    /// The exit status of `node` if its process has ended (it is then forgotten).
    pub fn reap(&mut self, node: &str) -> Option<std::process::ExitStatus> {
        let status = self.children.get_mut(node)?.try_wait().ok()??;
        self.children.remove(node);
        self.paused.retain(|n| n != node);
        Some(status)
    }

    /// Nodes that exited although the drill did not stop them, with their exit status.
    pub fn reap_all(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for node in self.names() {
            if let Some(status) = self.reap(&node) {
                out.push((node, status.to_string()));
            }
        }
        out
    }

    pub fn is_running(&self, node: &str) -> bool {
        self.children.contains_key(node)
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self, node: &str) -> Result<String, DrillError> {
        let mut child = self.children.remove(node).ok_or_else(|| self.not_running(node))?;
        self.paused.retain(|n| n != node);
        let pid = child.id();
        child.kill().map_err(|source| DrillError::Io { context: format!("SIGKILL to {node}"), source })?;
        let _ = child.wait();
        Ok(format!("SIGKILL to {node} (pid {pid})"))
    }

    pub fn pause(&mut self, node: &str) -> Result<String, DrillError> {
        self.signal(node, libc::SIGSTOP)?;
        self.paused.push(node.to_string());
        Ok(format!("SIGSTOP to {node}"))
    }

    pub fn resume(&mut self, node: &str) -> Result<String, DrillError> {
        self.signal(node, libc::SIGCONT)?;
        self.paused.retain(|n| n != node);
        Ok(format!("SIGCONT to {node}"))
    }

    fn signal(&self, node: &str, signal: libc::c_int) -> Result<(), DrillError> {
        let child = self.children.get(node).ok_or_else(|| self.not_running(node))?;
        let pid = libc::pid_t::try_from(child.id())
            .map_err(|_| DrillError::Step(format!("pid {} of {node} does not fit pid_t", child.id())))?;
        // SAFETY: kill(2) on our own child's pid; the child is not reaped yet, so the pid is ours.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(DrillError::Io {
                context: format!("signal {signal} to {node}"),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn not_running(&self, node: &str) -> DrillError {
        DrillError::Step(format!("node {node} is not running (kill, pause and resume need a running node)"))
    }

    /// Stops `node` cleanly (SIGTERM) if it runs, starts it again and waits until it answers.
    pub async fn restart(&mut self, node: &str) -> Result<String, DrillError> {
        let mut note = String::new();
        if let Some(mut child) = self.children.remove(node) {
            if self.paused.iter().any(|n| n == node) {
                let _ = self.signal_pid(&child, libc::SIGCONT);
                self.paused.retain(|n| n != node);
            }
            let _ = self.signal_pid(&child, libc::SIGTERM);
            let deadline = Instant::now() + START_DEADLINE;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    note = format!("stopped ({status}), ");
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    note = "did not stop on SIGTERM, killed, ".into();
                    break;
                }
                tokio::time::sleep(POLL).await;
            }
        }
        self.spawn_node(node)?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.reap(node) {
                return Err(DrillError::Step(format!(
                    "{node} exited right after its restart ({status}):\n{}",
                    self.log_tail(node, 30)
                )));
            }
            if self.node_status(node).await["reachable"] == true {
                return Ok(format!("{note}started {node}, answering after {} ms", started.elapsed().as_millis()));
            }
            if started.elapsed() >= START_DEADLINE {
                return Err(DrillError::Step(format!(
                    "{node} did not answer within {START_DEADLINE:?} of its restart:\n{}",
                    self.log_tail(node, 30)
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn signal_pid(&self, child: &Child, signal: libc::c_int) -> Result<(), ()> {
        let pid = libc::pid_t::try_from(child.id()).map_err(|_| ())?;
        // SAFETY: kill(2) on our own unreaped child.
        if unsafe { libc::kill(pid, signal) } == 0 {
            Ok(())
        } else {
            Err(())
        }
    }

    pub fn partition(&self, mode: PartitionMode, delay: Option<Duration>, link: &Link) -> Result<String, DrillError> {
        let (proxies, what) = self.link_proxies(link)?;
        for proxy in proxies {
            if let Some(delay) = delay {
                proxy.set_delay(delay);
            }
            proxy.partition(mode);
        }
        Ok(format!(
            "{what} cut ({})",
            if mode == PartitionMode::Drop { "packets dropped" } else { "connections reset" }
        ))
    }

    /// Heals `link`, or (`None`) every link the drill can cut.
    pub fn heal(&self, link: Option<&Link>) -> Result<String, DrillError> {
        let Some(link) = link else {
            self.require_proxies()?;
            for proxy in self.proxies.values().chain(self.witness_proxies.values()) {
                proxy.heal();
            }
            return Ok(if self.witness_proxies.is_empty() { "link healed" } else { "every link healed" }.into());
        };
        let (proxies, what) = self.link_proxies(link)?;
        for proxy in proxies {
            proxy.heal();
        }
        Ok(format!("{what} healed"))
    }

    /// The proxies carrying `link`, and its name for a summary.
    fn link_proxies(&self, link: &Link) -> Result<(Vec<&Proxy>, String), DrillError> {
        match link {
            Link::Peer => {
                self.require_proxies()?;
                Ok((self.proxies.values().collect(), "link".into()))
            }
            Link::Witness { node } => {
                if self.witness_proxies.is_empty() {
                    return Err(DrillError::Step("the pair has no drill-run witness to cut a node from".into()));
                }
                match node {
                    None => Ok((self.witness_proxies.values().collect(), "both nodes' links to the witness".into())),
                    Some(node) => {
                        let proxy = self.witness_proxies.get(node).ok_or_else(|| {
                            DrillError::Step(format!("the pair has no node {node} with a link to the witness"))
                        })?;
                        Ok((vec![proxy], format!("{node}'s link to the witness")))
                    }
                }
            }
        }
    }

    fn witness_mut(&mut self) -> Result<&mut LocalEtcd, DrillError> {
        self.etcd.as_mut().ok_or_else(|| DrillError::Step("the pair has no drill-run witness (etcd)".into()))
    }

    /// SIGKILL to the drill's etcd.
    pub fn kill_witness(&mut self) -> Result<String, DrillError> {
        let etcd = self.witness_mut()?;
        if !etcd.is_running() {
            return Err(DrillError::Step("the witness (etcd) is not running".into()));
        }
        etcd.kill();
        Ok("SIGKILL to the witness (etcd)".into())
    }

    /// Starts the drill's etcd again on its ports and data (killing it first if it runs) and
    /// waits until it answers.
    pub async fn start_witness(&mut self) -> Result<String, DrillError> {
        let etcd = self.witness_mut()?;
        let note = if etcd.is_running() { "was running: killed, " } else { "" };
        let started = Instant::now();
        etcd.restart().await?;
        Ok(format!("{note}witness (etcd) answering after {} ms", started.elapsed().as_millis()))
    }

    pub fn pause_witness(&mut self) -> Result<String, DrillError> {
        self.witness_mut()?.freeze();
        Ok("SIGSTOP to the witness (etcd)".into())
    }

    pub fn resume_witness(&mut self) -> Result<String, DrillError> {
        self.witness_mut()?.resume();
        Ok("SIGCONT to the witness (etcd)".into())
    }

    pub fn delay(&self, delay: Duration) -> Result<String, DrillError> {
        self.require_proxies()?;
        for proxy in self.proxies.values() {
            proxy.set_delay(delay);
        }
        Ok(format!("link delay {} each way", humantime::format_duration(delay)))
    }

    fn require_proxies(&self) -> Result<(), DrillError> {
        if self.proxies.is_empty() {
            return Err(DrillError::Step("the link has no proxy (an attached pair): cannot cut it".into()));
        }
        Ok(())
    }

    /// Damages the last `bytes` bytes of `node`'s newest local journal segment (the node must
    /// be down): each byte is inverted, so the record fails its CRC.
    pub fn corrupt_tail(&self, node: &str, bytes: u64) -> Result<String, DrillError> {
        if self.is_running(node) {
            return Err(DrillError::Step(format!("corrupt-tail needs node {node} down; kill it first")));
        }
        let _lock = self.lock_down_node(node)?;
        let dir = self.config.node(node)?.dir.join("journal").join("local");
        let io = |context: String| move |source| DrillError::Io { context, source };
        let newest = std::fs::read_dir(&dir)
            .map_err(io(format!("listing {}", dir.display())))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "hpj"))
            .max()
            .ok_or_else(|| DrillError::Step(format!("{} holds no journal segment", dir.display())))?;
        let mut data = std::fs::read(&newest).map_err(io(format!("reading {}", newest.display())))?;
        // A killed node's segment runs on into preallocated zeros: damage its last *records*.
        let records_end = crate::storage::journal::segment::scan(&newest, &data, true, |_| Ok(()))
            .map_or(data.len(), |scanned| scanned.valid_len as usize);
        let n = (bytes as usize).min(records_end);
        for byte in &mut data[records_end - n..records_end] {
            *byte = !*byte;
        }
        std::fs::write(&newest, &data).map_err(io(format!("writing {}", newest.display())))?;
        Ok(format!("inverted the last {n} bytes of the records in {}", newest.display()))
    }

    /// The node's own lock on its data directory, held while a step changes its files: no
    /// process of the node may run meanwhile, not even one this drill did not start.
    fn lock_down_node(&self, node: &str) -> Result<crate::storage::datadir::DataDirLock, DrillError> {
        let dir = &self.config.node(node)?.dir;
        crate::storage::datadir::DataDirLock::acquire(dir, node).map_err(|e| DrillError::Step(e.to_string()))
    }

    /// Removes every local journal segment of `node` but the newest (the node must be down):
    /// what trimming or archiving closed segments leaves behind, so that a peer needing that
    /// range finds it gone.
    pub fn trim_journal(&self, node: &str) -> Result<String, DrillError> {
        if self.is_running(node) {
            return Err(DrillError::Step(format!("trim-journal needs node {node} down; kill it first")));
        }
        let _lock = self.lock_down_node(node)?;
        let dir = self.config.node(node)?.dir.join("journal").join("local");
        let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|source| DrillError::Io { context: format!("listing {}", dir.display()), source })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "hpj"))
            .collect();
        segments.sort();
        if segments.len() < 2 {
            return Err(DrillError::Step(format!(
                "{} holds {} segment(s): nothing to trim (run reopen-log first)",
                dir.display(),
                segments.len()
            )));
        }
        let newest = segments.pop().unwrap_or_default(); // Invariant: at least two segments (checked above).
        for segment in &segments {
            std::fs::remove_file(segment)
                .map_err(|source| DrillError::Io { context: format!("removing {}", segment.display()), source })?;
        }
        Ok(format!("removed {} segment(s) of {node}'s local journal, kept {}", segments.len(), newest.display()))
    }

    /// `{"nodes": {...}}` with every node's status; a node that does not answer within the
    /// poll timeout shows `reachable: false`.
    pub async fn status(&self) -> Value {
        pair_status(&self.config).await
    }

    pub async fn node_status(&self, node: &str) -> Value {
        node_status(&self.config, node).await
    }

    /// The last `lines` lines of `node`'s log.
    pub fn log_tail(&self, node: &str, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path(node)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Both logs' tails, for a failure message (spawned pairs only).
    pub fn logs_for_failure(&self) -> String {
        if !self.owned {
            return String::new();
        }
        self.names()
            .iter()
            .map(|n| format!("----- last lines of {} -----\n{}", self.log_path(n).display(), self.log_tail(n, 25)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for DrillPair {
    fn drop(&mut self) {
        for (node, child) in &mut self.children {
            if self.paused.contains(node) {
                let _ = signal_pid_raw(child.id(), libc::SIGCONT);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal_pid_raw(pid: u32, signal: libc::c_int) -> Option<()> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: kill(2) on our own unreaped child.
    (unsafe { libc::kill(pid, signal) } == 0).then_some(())
}

/// `{"nodes": {...}}` for both nodes of `config`, asked at the same time (a paused node must
/// not double the wait).
pub async fn pair_status(config: &PairConfig) -> Value {
    let mut nodes = serde_json::Map::new();
    // Invariant: a loaded PairConfig has exactly two nodes.
    let (a, b) = (&config.nodes[0].name, &config.nodes[1].name);
    let (status_a, status_b) = tokio::join!(node_status(config, a), node_status(config, b));
    nodes.insert(a.clone(), status_a);
    nodes.insert(b.clone(), status_b);
    serde_json::json!({ "nodes": nodes })
}

/// One node's status, or `reachable: false` with the reason.
pub async fn node_status(config: &PairConfig, node: &str) -> Value {
    let request = crate::admin::client::request(config, node, crate::replication::wire::AdminRequest::Status);
    match tokio::time::timeout(STATUS_TIMEOUT, request).await {
        Ok(Ok(value)) => value,
        Ok(Err(error)) => serde_json::json!({ "reachable": false, "error": error }),
        Err(_) => serde_json::json!({ "reachable": false, "error": "no answer in time" }),
    }
}

/// Starts the drill's etcd under `dir` and one fault proxy per node in front of it, and adds
/// the `[witness]` table (the real endpoint, for `hotpair witness`) and each node's
/// `witness_etcd` (its proxy) to the pair file's `text`.
async fn start_witness(
    dir: &Path,
    witness: &WitnessSettings,
    mut text: String,
) -> Result<(LocalEtcd, BTreeMap<String, Proxy>, String), DrillError> {
    let etcd = LocalEtcd::start(&dir.join("etcd")).await?;
    let quoted = |s: String| toml::Value::String(s).to_string();
    let mut proxies = BTreeMap::new();
    for name in ["a", "b"] {
        let proxy = Proxy::start(etcd.client_address())
            .await
            .map_err(|source| DrillError::Io { context: format!("starting the witness proxy for {name}"), source })?;
        text = set_node_key(
            &text,
            name,
            "witness_etcd",
            &format!("[{}]", quoted(format!("http://{}", proxy.listen_address()))),
        );
        proxies.insert(name.to_string(), proxy);
    }
    text.push_str(&format!(
        "\n[witness]\netcd = [{}]\nfailover = {}\nttl = {}\n",
        quoted(etcd.endpoint()),
        quoted(witness.failover.clone()),
        quoted(humantime::format_duration(witness.ttl).to_string())
    ));
    if let Some(d) = witness.min_interval {
        text.push_str(&format!("min_interval = {}\n", quoted(humantime::format_duration(d).to_string())));
    }
    Ok((etcd, proxies, text))
}

enum StartFailure {
    PortTaken(String),
    Other(DrillError),
}

/// A new directory under the system's temporary directory, kept after the drill.
fn make_temp_dir() -> Result<PathBuf, DrillError> {
    let base = std::env::temp_dir();
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
    for n in 0..100u32 {
        let dir = base.join(format!("hotpair-drill-{}-{stamp}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(DrillError::Io { context: format!("creating {}", dir.display()), source }),
        }
    }
    Err(DrillError::Setup(format!("could not create a new directory under {}", base.display())))
}

/// A control port P with P, P + 1 and P + 2 (control, data, Sentinel) free on 127.0.0.1; never
/// the same one twice per process.
pub fn free_control_port() -> Result<u16, DrillError> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = PORTS.end - PORTS.start;
    // Start where the process id points, so drills (and tests) running at once begin far apart.
    let _ = NEXT.compare_exchange(
        0,
        (std::process::id() % u32::from(span / 3)) as u16 * 3,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span / 3 {
        let port = PORTS.start + NEXT.fetch_add(3, Ordering::SeqCst) % span;
        if port + 2 < PORTS.end && (port..=port + 2).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return Ok(port);
        }
    }
    Err(DrillError::Setup(format!("no three consecutive free ports on 127.0.0.1 in {PORTS:?}")))
}

/// Replaces the top-level line `key = …`, or adds it before the first table.
pub fn set_top_level_key(text: &str, key: &str, value: &str) -> String {
    let prefix = format!("{key} =");
    let line = format!("{key} = {value}");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let first_table = lines.iter().position(|l| l.trim_start().starts_with('[')).unwrap_or(lines.len());
    match lines[..first_table].iter().position(|l| l.starts_with(&prefix)) {
        Some(i) => lines[i] = line,
        None => lines.insert(first_table, line),
    }
    lines.join("\n") + "\n"
}

/// Sets `key = value` in the `[nodes.NODE]` table (replacing it if present).
pub fn set_node_key(text: &str, node: &str, key: &str, value: &str) -> String {
    let header = format!("[nodes.{node}]");
    let prefix = format!("{key} =");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if let Some(start) = lines.iter().position(|l| l.trim() == header) {
        let end = lines[start + 1..]
            .iter()
            .position(|l| l.trim_start().starts_with('['))
            .map_or(lines.len(), |i| start + 1 + i);
        match lines[start + 1..end].iter().position(|l| l.starts_with(&prefix)) {
            Some(i) => lines[start + 1 + i] = format!("{key} = {value}"),
            None => lines.insert(start + 1, format!("{key} = {value}")),
        }
    }
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_file_edits_keep_everything_else() {
        let text = "# c\ncluster = \"x\"\nsync = \"durable\"\n\n[tls]\nca = \"a\"\n\n[nodes.a]\ncontrol = \"1\"\n\n[nodes.b]\ncontrol = \"2\"\n";
        let edited = set_top_level_key(text, "sync", "\"async\"");
        assert!(edited.contains("sync = \"async\"\n") && !edited.contains("durable"));
        let edited = set_top_level_key(&edited, "heartbeat", "\"50ms\"");
        assert!(edited.find("heartbeat").unwrap() < edited.find("[tls]").unwrap());
        let edited = set_node_key(&edited, "b", "peer_via", "\"127.0.0.1:9\"");
        let b = edited.find("[nodes.b]").unwrap();
        assert!(edited[b..].contains("peer_via = \"127.0.0.1:9\""));
        assert!(!edited[..b].contains("peer_via"));
        assert!(edited.starts_with("# c\n"));
    }
}
