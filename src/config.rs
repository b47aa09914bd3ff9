//! The pair file (`pair.toml`): one file that describes the whole pair, read by every command.
//!
//! ## Job
//! Turns `pair.toml` (format in INTERFACE.md, written by `hotpair init`) into a typed
//! [`PairConfig`]: the cluster id, the sync level and its timeout, what to do when the peer is
//! lost, the heartbeat interval, the TLS files, the two nodes in file order, notification
//! settings, resource limits, the data port's security (`[clients]`) and the monitor's thresholds.
//! [`PairConfig::locate`] finds the file (`--pair`, then `$HOTPAIR_PAIR`, then `./pair.toml`).
//!
//! Reading is two-step: the TOML is deserialized into *raw* structs that keep every value as the
//! text the admin wrote (`#[serde(deny_unknown_fields)]` everywhere), then [`PairConfig::load`]
//! validates each raw value into its typed form. That split is what lets every error name the
//! key it is about (`nodes.b.control`, `sync_timeout`, …) instead of a bare serde message.
//!
//! ## Invariants (checked at load, relied on by every caller)
//! - Unknown keys are refused, anywhere in the file, naming the key, the line and the file: a
//!   misspelt `sync_timout` must never silently fall back to a default.
//! - Exactly two nodes. The first one listed is the *preferred primary* (the one `init` makes
//!   primary and `switchback` returns to); document order is kept.
//! - Node names are 1..=32 characters of `[a-z0-9_-]`, not starting or ending with `-`: each
//!   name becomes a DNS label in the node's certificate (`<node>.<cluster>.hotpair`), and a DNS
//!   label may not start or end with a hyphen. `admin` is reserved: it is the admin's identity.
//! - The listening addresses (two control, two data, and the optional `metrics` of each node)
//!   are pairwise distinct, also counting a wildcard address (`0.0.0.0`, `::`) as clashing with
//!   any address on the same port. Port 0 is refused (the peer must know where to connect). A node's `data` defaults to its control port + 1,
//!   its `sentinel` (the Sentinel-compatible discovery port, `crate::sentinel`) to its control
//!   port + 2; a default that clashes is refused like a written address, naming the key to set.
//! - `name` (the master name clients ask the Sentinel ports for) is 1..=64 printable ASCII
//!   characters without blanks: Sentinel messages separate their fields with spaces.
//! - The two nodes' data directories differ: two nodes sharing one directory would share one
//!   journal.
//! - Every path is absolute in the result, resolved relative to the pair file's own directory
//!   (not the working directory), so a command behaves the same wherever it is run from.
//! - Durations are humantime strings (`250ms`, `5s`, `2m`), each within its key's
//!   [`DurationBounds`] (a `heartbeat = "100000000y"` used to be taken, and silently turned
//!   liveness off); the `[monitor]` intervals may instead be `"off"`.
//! - `disk_min_free` is a byte size: an integer of bytes or a string such as `"512MiB"`, `"64MB"`
//!   ([`parse_byte_size`]); `0` turns the disk-space guard off.
//!
//! ## Caveats
//! - Addresses are literal `IP:port` socket addresses; host names are not resolved.
//! - Paths are not checked for existence here (a fresh node creates its data directory; a
//!   missing certificate is reported by `tls`, which names the file).
//! - The cluster id is only read here; refusing a peer of another cluster is the job of `tls`
//!   (each cluster has its own CA, and certificates carry the cluster id).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use uuid::Uuid;

/// The master name on the Sentinel-compatible ports when the pair file has no `name`.
pub const DEFAULT_MASTER_NAME: &str = "hotpair";
/// Longest master name accepted.
pub const MAX_MASTER_NAME: usize = 64;

/// The environment variable naming the pair file when `--pair` is not given.
pub const PAIR_ENV: &str = "HOTPAIR_PAIR";
/// The pair file looked for in the working directory when neither `--pair` nor `$HOTPAIR_PAIR`.
pub const DEFAULT_PAIR_FILE: &str = "pair.toml";

/// Defaults of the optional keys.
pub const DEFAULT_SYNC: SyncLevel = SyncLevel::Durable;
pub const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(200);
pub const DEFAULT_INCIDENT_LOG: &str = "incidents.jsonl";
pub const DEFAULT_LAG_ALERT: Duration = Duration::from_secs(10);
pub const DEFAULT_LAG_ALERT_RECORDS: u64 = 100_000;
pub const DEFAULT_CANARY_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_DIGEST_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_RETENTION_ALERT: Duration = Duration::from_secs(600);
pub const DEFAULT_MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_MAX_ARGS: usize = 1024 * 1024;
pub const DEFAULT_ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_CLIENT_OUTPUT_BUFFER_LIMIT: usize = crate::resp::limits::DEFAULT_MAX_REPLY_BYTES;
pub const DEFAULT_MAX_CLIENT_MEMORY: usize = crate::resp::limits::DEFAULT_MAX_CLIENT_MEMORY;
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = crate::resp::limits::DEFAULT_IDLE_TIMEOUT;
/// Largest `max_value_bytes` accepted: a write's journal record holds a value twice (before and
/// after), and a record is at most `journal::MAX_RECORD_BODY` (64 MiB) with its key and framing.
pub const MAX_VALUE_BYTES_CAP: usize = 31 * 1024 * 1024;
/// Free space below which a node stops writing its journals (`disk_min_free`): enough that the
/// store, the metadata and the incident log still have room when the guard trips.
pub const DEFAULT_DISK_MIN_FREE: u64 = 256 * 1024 * 1024;

/// The values a duration key accepts, both ends included. Each key's bounds are in its
/// constant below, and in docs/operations.md; values outside are refused naming the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationBounds {
    pub min: Duration,
    pub max: Duration,
}

impl DurationBounds {
    const fn new(min: Duration, max: Duration) -> DurationBounds {
        DurationBounds { min, max }
    }

    /// `Err` says the range ("must be between …"), for a sentence that names the key and value.
    pub fn check(&self, value: Duration) -> Result<Duration, String> {
        if value < self.min || value > self.max {
            return Err(format!(
                "must be between {} and {}",
                humantime::format_duration(self.min),
                humantime::format_duration(self.max)
            ));
        }
        Ok(value)
    }
}

const MILLISECOND: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
/// `sync_timeout`: a commit waits at least a few milliseconds and at most an hour.
pub const SYNC_TIMEOUT_BOUNDS: DurationBounds = DurationBounds::new(Duration::from_millis(10), HOUR);
/// `heartbeat`: the peer is declared lost after 10 heartbeats (at least 1 s) of silence, so a
/// minute between heartbeats already means ten minutes before a lost peer is noticed.
pub const HEARTBEAT_BOUNDS: DurationBounds = DurationBounds::new(Duration::from_millis(10), Duration::from_secs(60));
/// `on_peer_loss = "degrade-after:…"`: at once (`0s`) up to an hour.
pub const DEGRADE_AFTER_BOUNDS: DurationBounds = DurationBounds::new(Duration::ZERO, HOUR);
/// `[limits] admin_idle_timeout`.
pub const ADMIN_IDLE_TIMEOUT_BOUNDS: DurationBounds = DurationBounds::new(Duration::from_millis(100), DAY);
/// `[monitor] lag_alert`, `canary_interval`, `digest_interval`.
pub const MONITOR_INTERVAL_BOUNDS: DurationBounds = DurationBounds::new(Duration::from_millis(100), DAY);
/// `[monitor] retention_alert`.
pub const RETENTION_ALERT_BOUNDS: DurationBounds =
    DurationBounds::new(Duration::from_millis(100), Duration::from_secs(30 * 24 * 3600));
/// The orchestration commands' `--timeout` and `--max-lag` (and the same playbook keys).
pub const COMMAND_TIMEOUT_BOUNDS: DurationBounds = DurationBounds::new(MILLISECOND, DAY);

/// A CLI duration flag: a humantime string within `bounds` (for clap's `value_parser`).
pub fn parse_bounded_duration(text: &str, bounds: DurationBounds) -> Result<Duration, String> {
    let value = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. 250ms, 5s or 2m"))?;
    bounds.check(value).map_err(|range| format!("{text:?} is out of range: it {range}"))
}

/// `--timeout` of the orchestration commands.
pub fn parse_command_timeout(text: &str) -> Result<Duration, String> {
    parse_bounded_duration(text, COMMAND_TIMEOUT_BOUNDS)
}

/// The one name a node may not have: the admin certificate's identity uses it.
pub const RESERVED_NODE_NAME: &str = "admin";
/// Longest node name accepted.
pub const MAX_NODE_NAME: usize = 32;

/// When a commit is acknowledged to the client. Ordered from weakest to strongest, so
/// `level >= SyncLevel::Durable` reads as "at least durable on the peer".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncLevel {
    /// The local journal is durable; nothing is waited for on the peer.
    Async,
    /// The record is in the peer's memory.
    Received,
    /// The record is in the peer's remote journal, fsynced.
    Durable,
    /// The record is applied and visible on the peer.
    Applied,
}

impl SyncLevel {
    pub const ALL: [SyncLevel; 4] = [SyncLevel::Async, SyncLevel::Received, SyncLevel::Durable, SyncLevel::Applied];

    pub fn name(self) -> &'static str {
        match self {
            SyncLevel::Async => "async",
            SyncLevel::Received => "received",
            SyncLevel::Durable => "durable",
            SyncLevel::Applied => "applied",
        }
    }
}

impl fmt::Display for SyncLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A value that is not one of the accepted spellings; the message says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(pub String);

impl FromStr for SyncLevel {
    type Err = BadValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SyncLevel::ALL
            .into_iter()
            .find(|level| level.name() == s)
            .ok_or_else(|| BadValue(format!("{s:?} is not a sync level; use async, received, durable or applied")))
    }
}

/// What a primary does with commits when it loses its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerLossPolicy {
    /// Commits wait (up to `sync_timeout`, then fail) until the peer is back: no acknowledged
    /// write can be lost, at the price of availability.
    Block,
    /// After this long without the peer, commits are acknowledged on the local journal alone.
    /// Degrading is an incident, never silent.
    DegradeAfter(Duration),
}

impl fmt::Display for PeerLossPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerLossPolicy::Block => f.write_str("block"),
            PeerLossPolicy::DegradeAfter(after) => write!(f, "degrade-after:{}", humantime::format_duration(*after)),
        }
    }
}

impl FromStr for PeerLossPolicy {
    type Err = BadValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "block" {
            return Ok(PeerLossPolicy::Block);
        }
        if let Some(after) = s.strip_prefix("degrade-after:") {
            let after = humantime::parse_duration(after.trim()).map_err(|e| {
                BadValue(format!("{s:?} has a bad duration after `degrade-after:` ({e}); write e.g. degrade-after:10s"))
            })?;
            return DEGRADE_AFTER_BOUNDS
                .check(after)
                .map(PeerLossPolicy::DegradeAfter)
                .map_err(|range| BadValue(format!("{s:?}: the time after `degrade-after:` {range}")));
        }
        Err(BadValue(format!(
            "{s:?} is not a peer-loss policy; use block or degrade-after:<duration> (e.g. degrade-after:10s)"
        )))
    }
}

impl serde::Serialize for PeerLossPolicy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeerLossPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One node of the pair, with every path absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub name: String,
    /// Control port: mutual TLS, replication and admin requests.
    pub control: SocketAddr,
    /// Data port: RESP for applications.
    pub data: SocketAddr,
    /// Where the *peer* dials this node's control port (default: `control`). A drill points it
    /// at a proxy it controls to cut or delay the node-to-node link; admin traffic goes direct.
    pub peer_via: SocketAddr,
    /// Where the node serves Prometheus metrics (`GET /metrics`, plain HTTP); `None`: no endpoint.
    pub metrics: Option<SocketAddr>,
    /// The Sentinel-compatible discovery port (`crate::sentinel`; default: control port + 2):
    /// Sentinel-aware clients ask it where the primary is and hear `+switch-master` there.
    pub sentinel: SocketAddr,
    /// The node's data directory (journals, store, `meta.json`).
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The data port's TLS certificate and key (`[clients] tls = true`): valid for the data
    /// address, so that Redis clients checking the host name accept it. `None` when unset.
    pub data_cert: Option<PathBuf>,
    pub data_key: Option<PathBuf>,
}

/// Whether TLS clients of the data port must show a certificate (Redis's `tls-auth-clients`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertificates {
    /// None is asked for (`"no"`, the default): `redis-cli --tls --cacert ca.pem` works.
    No,
    /// One is asked for and checked against the pair's CA if given (`"optional"`).
    Optional,
    /// One from the pair's CA is required (`"yes"`).
    Required,
}

/// `[clients]`: the data port's security (`server::auth`, `tls::data_server_config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientsConfig {
    /// The default user's password (Redis `requirepass`); then `AUTH` is required.
    pub password_file: Option<PathBuf>,
    /// Named users, one per line: `NAME readwrite|readonly PASSWORD`; then `AUTH` is required.
    pub users_file: Option<PathBuf>,
    /// The data port speaks TLS with each node's `data_cert`.
    pub tls: bool,
    pub tls_auth_clients: ClientCertificates,
}

impl Default for ClientsConfig {
    fn default() -> Self {
        ClientsConfig { password_file: None, users_file: None, tls: false, tls_auth_clients: ClientCertificates::No }
    }
}

impl ClientsConfig {
    /// Whether clients must `AUTH` before anything else.
    pub fn requires_auth(&self) -> bool {
        self.password_file.is_some() || self.users_file.is_some()
    }
}

/// The pair's TLS files other than the nodes' own certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The pair's private CA certificate: the only trust anchor for either side.
    pub ca: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyConfig {
    /// Shell commands; each is given every incident as JSON on stdin.
    pub commands: Vec<String>,
    /// Where incidents are appended, one JSON object per line.
    pub incident_log: PathBuf,
}

/// Resource limits of the data port (optional `[limits]` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest value (and largest RESP bulk string) accepted; default 16 MiB.
    pub max_value_bytes: usize,
    /// Most client connections open at once on the data port; default 1024.
    pub max_connections: usize,
    /// Most arguments in one RESP command (e.g. `MSET`); default 1 Mi.
    pub max_args: usize,
    /// An admin connection that sends no request for this long is closed; default 5 minutes.
    /// (The orchestrator keeps one per node for a run and reconnects if it was closed.)
    pub admin_idle_timeout: Duration,
    /// Largest reply a data-port client is sent (Redis's `client-output-buffer-limit`): a larger
    /// one is replaced by an error naming this key; default 64 MiB. At least `max_value_bytes`
    /// plus a little, so that `GET` of the largest value works.
    pub client_output_buffer_limit: usize,
    /// Most memory all data-port clients' partial requests and unwritten replies may hold
    /// together (Redis's `maxmemory-clients`); default 256 MiB.
    pub max_client_memory: usize,
    /// A data-port client with no request and no reply progress for this long is closed
    /// (Redis's `timeout`); default 5 minutes; `None` (`"off"`) never.
    pub client_idle_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_args: DEFAULT_MAX_ARGS,
            admin_idle_timeout: DEFAULT_ADMIN_IDLE_TIMEOUT,
            client_output_buffer_limit: DEFAULT_CLIENT_OUTPUT_BUFFER_LIMIT,
            max_client_memory: DEFAULT_MAX_CLIENT_MEMORY,
            client_idle_timeout: Some(DEFAULT_CLIENT_IDLE_TIMEOUT),
        }
    }
}

impl Limits {
    /// The data port's limits: these, with the request limit derived from `max_value_bytes`
    /// (`max_value_bytes` + 1 MiB, `resp::limits::REQUEST_OVERHEAD_BYTES`).
    pub fn data_port(&self) -> crate::resp::Limits {
        crate::resp::Limits {
            max_args: self.max_args,
            max_connections: self.max_connections,
            max_reply_bytes: self.client_output_buffer_limit,
            max_client_memory: self.max_client_memory,
            idle_timeout: self.client_idle_timeout,
            ..crate::resp::Limits::default()
        }
        .with_max_value_bytes(self.max_value_bytes)
    }
}

/// `[monitor]`: when the nodes raise the incidents that watch the pair (see `node::monitor`).
/// A `None` interval is switched off (`"off"` in the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorConfig {
    /// A backup further behind than this (time since the oldest record it lacks) is an incident.
    pub lag_alert: Duration,
    /// ... or further behind than this many records.
    pub lag_alert_records: u64,
    /// The primary writes a canary record this often; the backup expects one within twice it.
    pub canary_interval: Option<Duration>,
    /// The backup recomputes its digest from the stored data this often.
    pub digest_interval: Option<Duration>,
    /// A primary whose backup has been gone this long keeps journal segments for it: an incident.
    pub retention_alert: Duration,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            lag_alert: DEFAULT_LAG_ALERT,
            lag_alert_records: DEFAULT_LAG_ALERT_RECORDS,
            canary_interval: Some(DEFAULT_CANARY_INTERVAL),
            digest_interval: Some(DEFAULT_DIGEST_INTERVAL),
            retention_alert: DEFAULT_RETENTION_ALERT,
        }
    }
}

/// The whole pair file, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairConfig {
    /// The pair file itself, absolute.
    pub path: PathBuf,
    pub cluster: Uuid,
    /// The master name the Sentinel-compatible ports answer for (`name`, default "hotpair").
    pub name: String,
    pub sync: SyncLevel,
    pub sync_timeout: Duration,
    pub on_peer_loss: PeerLossPolicy,
    pub heartbeat: Duration,
    pub tls: TlsFiles,
    /// Exactly two, in file order; the first is the preferred primary.
    pub nodes: Vec<NodeConfig>,
    pub notify: NotifyConfig,
    pub limits: Limits,
    /// `[clients]`: the data port's security; all off when the table is absent.
    pub clients: ClientsConfig,
    pub monitor: MonitorConfig,
    /// Bytes that must stay free on a node's data directory's file system; below it the primary
    /// refuses writes and the backup stops receiving (`crate::node::disk`). `0`: no guard.
    pub disk_min_free: u64,
    /// SHA-256 of the pair file's bytes, hex: what `status` shows as `config_digest` and the
    /// hello compares (two nodes running different pair files: `config-drift`).
    pub digest: String,
    /// `[witness]`: automatic failover through etcd (`crate::witness`); `None`: manual only.
    pub witness: Option<WitnessConfig>,
}

/// `[witness] failover`: act, or only say what would be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailoverMode {
    Automatic,
    Observe,
}

impl FailoverMode {
    pub fn name(self) -> &'static str {
        match self {
            FailoverMode::Automatic => "automatic",
            FailoverMode::Observe => "observe",
        }
    }
}

/// `[witness]`, validated (docs/witness.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessConfig {
    /// etcd client endpoints, `http://host:port` or `https://host:port`.
    pub etcd: Vec<String>,
    pub failover: FailoverMode,
    /// The leader key's lease; whole seconds (etcd's leases are).
    pub ttl: Duration,
    /// `async`/`received` pairs: the backup takes over only if it was at most this far behind.
    pub max_lag: Option<Duration>,
    /// No second automatic failover sooner than this after the last one.
    pub min_interval: Duration,
    /// TLS to `https` endpoints: the CA that signed etcd's certificate, and an optional client
    /// certificate and key.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// `[witness] ttl` default.
pub const DEFAULT_WITNESS_TTL: Duration = Duration::from_secs(5);
/// `[witness] min_interval` default.
pub const DEFAULT_WITNESS_MIN_INTERVAL: Duration = Duration::from_secs(300);
/// `[witness] ttl`: etcd grants leases of at least about 2 s (1.5 election timeouts) and whole
/// seconds only; past a minute automatic failover is slower than a human with a pager.
pub const WITNESS_TTL_BOUNDS: DurationBounds = DurationBounds::new(Duration::from_secs(2), Duration::from_secs(60));
/// `[witness] max_lag`.
pub const WITNESS_MAX_LAG_BOUNDS: DurationBounds = DurationBounds::new(Duration::ZERO, HOUR);
/// `[witness] min_interval`: `0s` turns the flapping guard off.
pub const WITNESS_MIN_INTERVAL_BOUNDS: DurationBounds =
    DurationBounds::new(Duration::ZERO, Duration::from_secs(7 * 24 * 3600));

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read pair file {}: {source}; give --pair FILE, set {PAIR_ENV}, or create one with `hotpair init --dir DIR`",
        path.display()
    )]
    Read { path: PathBuf, source: std::io::Error },
    #[error("pair file {} {location}: {message}", path.display())]
    Parse { path: PathBuf, location: String, message: String },
    #[error("pair file {}: `{key}` {reason}", path.display())]
    Invalid { path: PathBuf, key: String, reason: String },
    #[error("pair file {}: no node is named {name:?} (its nodes are {})", path.display(), known.join(" and "))]
    UnknownNode { path: PathBuf, name: String, known: Vec<String> },
}

impl ConfigError {
    /// The key the error is about, when it is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw file shape: every value as written, every table closed to unknown keys.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPair {
    cluster: Option<String>,
    name: Option<String>,
    sync: Option<String>,
    sync_timeout: Option<String>,
    on_peer_loss: Option<String>,
    heartbeat: Option<String>,
    tls: Option<RawTls>,
    nodes: Option<OrderedNodes>,
    notify: Option<RawNotify>,
    limits: Option<RawLimits>,
    clients: Option<RawClients>,
    monitor: Option<RawMonitor>,
    /// An integer of bytes or a size string; any other TOML type is refused naming the key.
    disk_min_free: Option<toml::Value>,
    witness: Option<RawWitness>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWitness {
    etcd: Option<Vec<String>>,
    failover: Option<String>,
    ttl: Option<String>,
    max_lag: Option<String>,
    min_interval: Option<String>,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Option<String>,
    admin_cert: Option<String>,
    admin_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    control: Option<String>,
    data: Option<String>,
    peer_via: Option<String>,
    metrics: Option<String>,
    sentinel: Option<String>,
    dir: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    data_cert: Option<String>,
    data_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClients {
    password_file: Option<String>,
    users_file: Option<String>,
    tls: Option<bool>,
    tls_auth_clients: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    commands: Option<Vec<String>>,
    incident_log: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMonitor {
    lag_alert: Option<String>,
    lag_alert_records: Option<u64>,
    canary_interval: Option<String>,
    digest_interval: Option<String>,
    retention_alert: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_value_bytes: Option<u64>,
    max_connections: Option<u64>,
    max_args: Option<u64>,
    admin_idle_timeout: Option<String>,
    /// Byte sizes: an integer of bytes or a string such as `"64MiB"`.
    client_output_buffer_limit: Option<toml::Value>,
    max_client_memory: Option<toml::Value>,
    client_idle_timeout: Option<String>,
}

/// `[nodes.*]` in document order: the TOML parser keeps tables in the order it met them and
/// hands them to `visit_map` in that order, so no ordered-map feature is needed.
#[derive(Debug)]
struct OrderedNodes(Vec<(String, RawNode)>);

impl<'de> Deserialize<'de> for OrderedNodes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodesVisitor;
        impl<'de> Visitor<'de> for NodesVisitor {
            type Value = OrderedNodes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of nodes, each one written as [nodes.NAME]")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedNodes, A::Error> {
                let mut nodes = Vec::new();
                while let Some((name, node)) = map.next_entry::<String, RawNode>()? {
                    nodes.push((name, node));
                }
                Ok(OrderedNodes(nodes))
            }
        }
        deserializer.deserialize_map(NodesVisitor)
    }
}

// ---------------------------------------------------------------------------------------------

/// The hex SHA-256 of a pair file's text.
pub fn file_digest(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl PairConfig {
    /// Reads and validates a pair file. Relative paths inside it are resolved against the
    /// file's own directory.
    pub fn load(path: &Path) -> Result<PairConfig, ConfigError> {
        let text = crate::bounded_read::read_to_string(path, crate::bounded_read::CONFIG_LIMIT)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        PairConfig::from_toml_str(&text, path)
    }

    /// Validates pair-file text as if it had been read from `path` (used by `init` to check
    /// what it is about to write, and by tests).
    pub fn from_toml_str(text: &str, path: &Path) -> Result<PairConfig, ConfigError> {
        let path =
            std::path::absolute(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let raw: RawPair = toml::from_str(text).map_err(|e| parse_error(&path, text, &e))?;
        let config = Validator { path: &path }.pair(raw)?;
        Ok(PairConfig { digest: file_digest(text), ..config })
    }

    /// The pair file to use: `--pair` if given, else `$HOTPAIR_PAIR` if set and non-empty, else
    /// `./pair.toml`.
    pub fn locate(explicit: Option<&Path>) -> PathBuf {
        if let Some(path) = explicit {
            return path.to_path_buf();
        }
        match std::env::var_os(PAIR_ENV) {
            Some(value) if !value.is_empty() => PathBuf::from(value),
            _ => PathBuf::from(DEFAULT_PAIR_FILE),
        }
    }

    pub fn node(&self, name: &str) -> Result<&NodeConfig, ConfigError> {
        self.nodes.iter().find(|n| n.name == name).ok_or_else(|| self.unknown_node(name))
    }

    /// The other node of the pair.
    pub fn peer_of(&self, name: &str) -> Result<&NodeConfig, ConfigError> {
        self.node(name)?;
        self.nodes.iter().find(|n| n.name != name).ok_or_else(|| self.unknown_node(name))
    }

    /// The first node in the file: primary of a fresh pair, target of `switchback`.
    pub fn preferred_primary(&self) -> &NodeConfig {
        // Invariant: `load` refuses any file without exactly two nodes; a PairConfig built by
        // hand with no nodes is a programming error.
        &self.nodes[0]
    }

    fn unknown_node(&self, name: &str) -> ConfigError {
        ConfigError::UnknownNode {
            path: self.path.clone(),
            name: name.to_string(),
            known: self.nodes.iter().map(|n| n.name.clone()).collect(),
        }
    }
}

/// Checks a node name: 1..=32 characters of `[a-z0-9_-]`, not starting or ending with `-`, and
/// not `admin`.
pub fn check_node_name(name: &str) -> Result<(), BadValue> {
    let ok_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if name.is_empty() || name.len() > MAX_NODE_NAME || !ok_chars || name.starts_with('-') || name.ends_with('-') {
        return Err(BadValue(format!(
            "{name:?} is not a valid node name: use 1 to {MAX_NODE_NAME} characters of a-z, 0-9, _ and -, \
             not starting or ending with -"
        )));
    }
    if name == RESERVED_NODE_NAME {
        return Err(BadValue(format!(
            "{name:?} cannot name a node: it is the admin's identity (admin.<cluster>.hotpair); pick another name"
        )));
    }
    Ok(())
}

/// Checks a master name (`name`): 1..=64 printable ASCII characters, no blanks. Returns it.
pub fn check_master_name(name: &str) -> Result<String, BadValue> {
    let printable = name.bytes().all(|b| b.is_ascii_graphic());
    if name.is_empty() || name.len() > MAX_MASTER_NAME || !printable {
        return Err(BadValue(format!(
            "is {name:?}; a master name is 1 to {MAX_MASTER_NAME} printable ASCII characters without blanks \
             (Sentinel messages separate fields with spaces)"
        )));
    }
    Ok(name.to_string())
}

/// Units of [`parse_byte_size`], matched without regard to case.
const BYTE_UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("kb", 1000),
    ("mb", 1000 * 1000),
    ("gb", 1000 * 1000 * 1000),
    ("tb", 1000 * 1000 * 1000 * 1000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
];

/// A byte size: whole digits, optional blanks, then a unit (`B`, `KB`/`MB`/`GB`/`TB` in powers
/// of 1000, `KiB`/`MiB`/`GiB`/`TiB` in powers of 1024; none means bytes). Bare `K`, `M`, `G`
/// are refused on purpose: whether they mean 1000 or 1024 is exactly what admins disagree on.
pub fn parse_byte_size(text: &str) -> Result<u64, BadValue> {
    let text = text.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let unit = unit.trim_start().to_ascii_lowercase();
    let bad = || BadValue(format!("{text:?} is not a byte size"));
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let (_, scale) = BYTE_UNITS.iter().find(|(name, _)| *name == unit).ok_or_else(bad)?;
    number.checked_mul(*scale).ok_or_else(|| BadValue(format!("{text:?} is too large")))
}

/// Two listening addresses clash when they share a port and either the same IP or a wildcard IP.
pub fn addresses_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn parse_error(path: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    let location = match err.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line_no = text[..start].bytes().filter(|&b| b == b'\n').count() + 1;
            let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
            format!("line {line_no} (`{line}`)")
        }
        None => "is not valid TOML".to_string(),
    };
    ConfigError::Parse { path: path.to_path_buf(), location, message: err.message().trim().to_string() }
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn invalid(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { path: self.path.to_path_buf(), key: key.to_string(), reason: reason.into() }
    }

    fn required<T>(&self, key: &str, value: Option<T>, hint: &str) -> Result<T, ConfigError> {
        value.ok_or_else(|| self.invalid(key, format!("is missing; {hint}")))
    }

    fn duration(
        &self,
        key: &str,
        value: Option<String>,
        default: Duration,
        bounds: DurationBounds,
    ) -> Result<Duration, ConfigError> {
        let Some(text) = value else { return Ok(default) };
        let duration = humantime::parse_duration(text.trim()).map_err(|e| {
            self.invalid(key, format!("is {text:?}, which is not a duration ({e}); write e.g. 250ms, 5s or 2m"))
        })?;
        bounds.check(duration).map_err(|range| self.invalid(key, format!("is {text:?}; it {range}")))
    }

    /// A path from the file, made absolute against the pair file's directory.
    fn file_path(&self, key: &str, value: String) -> Result<PathBuf, ConfigError> {
        if value.trim().is_empty() {
            return Err(self.invalid(key, "is empty; give a path (relative paths are relative to the pair file)"));
        }
        let base = self.path.parent().unwrap_or(Path::new("/"));
        Ok(base.join(value))
    }

    fn address(&self, key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
        let addr: SocketAddr = text.trim().parse().map_err(|_| {
            self.invalid(
                key,
                format!("is {text:?}, which is not an IP:port address; write e.g. 127.0.0.1:7401 or [::1]:7401"),
            )
        })?;
        if addr.port() == 0 {
            return Err(self.invalid(key, format!("is {text:?}; port 0 cannot be used, the peer must know the port")));
        }
        Ok(addr)
    }

    fn limit(&self, key: &str, value: Option<u64>, default: usize) -> Result<usize, ConfigError> {
        match value {
            None => Ok(default),
            Some(0) => Err(self.invalid(key, "is 0; it must be at least 1 (leave the key out for the default)")),
            Some(n) => usize::try_from(n).map_err(|_| self.invalid(key, format!("is {n}, too large for this machine"))),
        }
    }

    fn pair(&self, raw: RawPair) -> Result<PairConfig, ConfigError> {
        let cluster_text = self.required("cluster", raw.cluster, "it is the pair's id, written by `hotpair init`")?;
        let cluster = Uuid::parse_str(cluster_text.trim())
            .map_err(|e| self.invalid("cluster", format!("is {cluster_text:?}, which is not a UUID ({e})")))?;
        if cluster.is_nil() {
            return Err(self.invalid("cluster", "is the nil UUID; use the id `hotpair init` wrote"));
        }
        let name = match raw.name {
            None => DEFAULT_MASTER_NAME.to_string(),
            Some(text) => check_master_name(&text).map_err(|e| self.invalid("name", e.0))?,
        };
        let sync = match raw.sync {
            None => DEFAULT_SYNC,
            Some(text) => {
                text.trim().parse().map_err(|e: BadValue| self.invalid("sync", format!("is invalid: {e}")))?
            }
        };
        let sync_timeout =
            self.duration("sync_timeout", raw.sync_timeout, DEFAULT_SYNC_TIMEOUT, SYNC_TIMEOUT_BOUNDS)?;
        let on_peer_loss = match raw.on_peer_loss {
            None => PeerLossPolicy::Block,
            Some(text) => {
                text.trim().parse().map_err(|e: BadValue| self.invalid("on_peer_loss", format!("is invalid: {e}")))?
            }
        };
        let heartbeat = self.duration("heartbeat", raw.heartbeat, DEFAULT_HEARTBEAT, HEARTBEAT_BOUNDS)?;

        let tls_hint = "the [tls] table names ca, admin_cert and admin_key";
        let raw_tls = self.required("tls", raw.tls, tls_hint)?;
        let tls = TlsFiles {
            ca: self.file_path("tls.ca", self.required("tls.ca", raw_tls.ca, tls_hint)?)?,
            admin_cert: self
                .file_path("tls.admin_cert", self.required("tls.admin_cert", raw_tls.admin_cert, tls_hint)?)?,
            admin_key: self.file_path("tls.admin_key", self.required("tls.admin_key", raw_tls.admin_key, tls_hint)?)?,
        };

        let raw_nodes = self.required("nodes", raw.nodes, "list the two nodes as [nodes.NAME] tables")?.0;
        if raw_nodes.len() != 2 {
            let names: Vec<&str> = raw_nodes.iter().map(|(n, _)| n.as_str()).collect();
            return Err(self.invalid(
                "nodes",
                format!("lists {} node(s) ({}); a pair has exactly two", raw_nodes.len(), names.join(", ")),
            ));
        }
        let mut nodes = Vec::with_capacity(2);
        for (name, raw_node) in raw_nodes {
            nodes.push(self.node(name, raw_node)?);
        }
        self.check_nodes(&nodes)?;

        let notify = match raw.notify {
            None => NotifyConfig {
                commands: Vec::new(),
                incident_log: self.file_path("notify.incident_log", DEFAULT_INCIDENT_LOG.into())?,
            },
            Some(n) => NotifyConfig {
                commands: n.commands.unwrap_or_default(),
                incident_log: self
                    .file_path("notify.incident_log", n.incident_log.unwrap_or_else(|| DEFAULT_INCIDENT_LOG.into()))?,
            },
        };
        if let Some(i) = notify.commands.iter().position(|c| c.trim().is_empty()) {
            return Err(self.invalid(&format!("notify.commands[{i}]"), "is empty; remove it or give a command"));
        }

        let limits = self.limits(raw.limits)?;
        let clients = self.clients(raw.clients.unwrap_or_default())?;
        if clients.tls {
            for node in &nodes {
                for (key, value) in [("data_cert", &node.data_cert), ("data_key", &node.data_key)] {
                    if value.is_none() {
                        return Err(self.invalid(
                            &format!("nodes.{}.{key}", node.name),
                            "is missing; [clients] tls = true needs each node's data-port certificate and key \
                             (`hotpair init --client-tls` writes them)",
                        ));
                    }
                }
            }
        }

        let monitor = self.monitor(raw.monitor.unwrap_or_default())?;
        let witness = raw.witness.map(|w| self.witness(w, sync)).transpose()?;

        Ok(PairConfig {
            path: self.path.to_path_buf(),
            cluster,
            name,
            sync,
            sync_timeout,
            on_peer_loss,
            heartbeat,
            tls,
            nodes,
            notify,
            limits,
            clients,
            monitor,
            disk_min_free: self.byte_size("disk_min_free", raw.disk_min_free, DEFAULT_DISK_MIN_FREE)?,
            digest: String::new(),
            witness,
        })
    }

    fn witness(&self, raw: RawWitness, sync: SyncLevel) -> Result<WitnessConfig, ConfigError> {
        let hint = "list etcd's client endpoints, e.g. etcd = [\"http://10.0.0.3:2379\"] (docs/witness.md)";
        let etcd = self.required("witness.etcd", raw.etcd, hint)?;
        if etcd.is_empty() {
            return Err(self.invalid("witness.etcd", format!("is empty; {hint}")));
        }
        for (i, endpoint) in etcd.iter().enumerate() {
            let https = crate::witness::etcd::check_endpoint(endpoint)
                .map_err(|reason| self.invalid(&format!("witness.etcd[{i}]"), reason))?;
            if https && raw.ca.is_none() {
                return Err(self.invalid(
                    &format!("witness.etcd[{i}]"),
                    format!("is {endpoint:?}, an https endpoint, but [witness] names no `ca` to check its certificate"),
                ));
            }
        }
        let failover = match raw.failover.as_deref().map(str::trim) {
            None | Some("automatic") => FailoverMode::Automatic,
            Some("observe") => FailoverMode::Observe,
            Some(other) => {
                return Err(self.invalid(
                    "witness.failover",
                    format!("is {other:?}; use \"automatic\" or \"observe\" (decide and report, change nothing)"),
                ))
            }
        };
        let ttl = self.duration("witness.ttl", raw.ttl.clone(), DEFAULT_WITNESS_TTL, WITNESS_TTL_BOUNDS)?;
        if ttl.subsec_nanos() != 0 {
            return Err(self.invalid(
                "witness.ttl",
                format!(
                    "is {:?}; etcd's leases are whole seconds: write e.g. \"3s\" or \"5s\"",
                    raw.ttl.unwrap_or_default()
                ),
            ));
        }
        let max_lag = match raw.max_lag {
            None => None,
            Some(_) if sync >= SyncLevel::Durable => {
                return Err(self.invalid(
                    "witness.max_lag",
                    format!("is set, but sync = \"{sync}\" loses no acknowledged write in a failover; remove it (it is for async and received pairs)"),
                ))
            }
            Some(text) => Some(self.duration("witness.max_lag", Some(text), Duration::ZERO, WITNESS_MAX_LAG_BOUNDS)?),
        };
        let min_interval = self.duration(
            "witness.min_interval",
            raw.min_interval,
            DEFAULT_WITNESS_MIN_INTERVAL,
            WITNESS_MIN_INTERVAL_BOUNDS,
        )?;
        if raw.cert.is_some() != raw.key.is_some() {
            let missing = if raw.cert.is_some() { "witness.key" } else { "witness.cert" };
            return Err(self.invalid(missing, "is missing; a client certificate for etcd needs both `cert` and `key`"));
        }
        Ok(WitnessConfig {
            etcd,
            failover,
            ttl,
            max_lag,
            min_interval,
            ca: raw.ca.map(|p| self.file_path("witness.ca", p)).transpose()?,
            cert: raw.cert.map(|p| self.file_path("witness.cert", p)).transpose()?,
            key: raw.key.map(|p| self.file_path("witness.key", p)).transpose()?,
        })
    }

    fn limits(&self, raw: Option<RawLimits>) -> Result<Limits, ConfigError> {
        let Some(l) = raw else { return Ok(Limits::default()) };
        let max_value_bytes = self.limit("limits.max_value_bytes", l.max_value_bytes, DEFAULT_MAX_VALUE_BYTES)?;
        if max_value_bytes > MAX_VALUE_BYTES_CAP {
            return Err(self.invalid(
                "limits.max_value_bytes",
                format!(
                    "is {max_value_bytes}; the most is {MAX_VALUE_BYTES_CAP} (a write's journal record holds the old \
                     and the new value, and records are at most 64 MiB)"
                ),
            ));
        }
        let size = |key: &str, value: Option<toml::Value>, default: usize| -> Result<usize, ConfigError> {
            let bytes = self.byte_size(key, value, default as u64)?;
            usize::try_from(bytes).map_err(|_| self.invalid(key, format!("is {bytes}, too large for this machine")))
        };
        let client_output_buffer_limit = size(
            "limits.client_output_buffer_limit",
            l.client_output_buffer_limit,
            DEFAULT_CLIENT_OUTPUT_BUFFER_LIMIT,
        )?;
        // `GET` of the largest value: the value, its `$n` line and CRLF.
        let largest_reply = max_value_bytes + 64;
        if client_output_buffer_limit < largest_reply {
            return Err(self.invalid(
                "limits.client_output_buffer_limit",
                format!(
                    "is {client_output_buffer_limit}; it must be at least max_value_bytes + 64 ({largest_reply}) so \
                     that the largest value can be read"
                ),
            ));
        }
        let max_client_memory = size("limits.max_client_memory", l.max_client_memory, DEFAULT_MAX_CLIENT_MEMORY)?;
        let largest_request = max_value_bytes + crate::resp::limits::REQUEST_OVERHEAD_BYTES;
        let least = largest_request.max(client_output_buffer_limit);
        if max_client_memory < least {
            return Err(self.invalid(
                "limits.max_client_memory",
                format!(
                    "is {max_client_memory}; it must hold the largest request (max_value_bytes + 1 MiB) and the \
                     largest reply (client_output_buffer_limit): at least {least}"
                ),
            ));
        }
        Ok(Limits {
            max_value_bytes,
            max_connections: self.limit("limits.max_connections", l.max_connections, DEFAULT_MAX_CONNECTIONS)?,
            max_args: self.limit("limits.max_args", l.max_args, DEFAULT_MAX_ARGS)?,
            admin_idle_timeout: self.duration(
                "limits.admin_idle_timeout",
                l.admin_idle_timeout,
                DEFAULT_ADMIN_IDLE_TIMEOUT,
                ADMIN_IDLE_TIMEOUT_BOUNDS,
            )?,
            client_output_buffer_limit,
            max_client_memory,
            client_idle_timeout: self.interval(
                "limits.client_idle_timeout",
                l.client_idle_timeout,
                DEFAULT_CLIENT_IDLE_TIMEOUT,
            )?,
        })
    }

    fn clients(&self, raw: RawClients) -> Result<ClientsConfig, ConfigError> {
        let tls_auth_clients = match raw.tls_auth_clients.as_deref().map(str::trim) {
            None | Some("no") => ClientCertificates::No,
            Some("optional") => ClientCertificates::Optional,
            Some("yes") => ClientCertificates::Required,
            Some(other) => {
                return Err(self.invalid(
                    "clients.tls_auth_clients",
                    format!("is {other:?}; use \"no\", \"optional\" or \"yes\" (as Redis's tls-auth-clients)"),
                ))
            }
        };
        let tls = raw.tls.unwrap_or(false);
        if tls_auth_clients != ClientCertificates::No && !tls {
            return Err(self.invalid("clients.tls_auth_clients", "needs `tls = true` in [clients]"));
        }
        Ok(ClientsConfig {
            password_file: raw.password_file.map(|p| self.file_path("clients.password_file", p)).transpose()?,
            users_file: raw.users_file.map(|p| self.file_path("clients.users_file", p)).transpose()?,
            tls,
            tls_auth_clients,
        })
    }

    fn monitor(&self, raw: RawMonitor) -> Result<MonitorConfig, ConfigError> {
        let lag_alert_records = match raw.lag_alert_records {
            None => DEFAULT_LAG_ALERT_RECORDS,
            Some(0) => return Err(self.invalid("monitor.lag_alert_records", "is 0; it must be at least 1")),
            Some(n) => n,
        };
        Ok(MonitorConfig {
            lag_alert: self.duration("monitor.lag_alert", raw.lag_alert, DEFAULT_LAG_ALERT, MONITOR_INTERVAL_BOUNDS)?,
            lag_alert_records,
            canary_interval: self.interval("monitor.canary_interval", raw.canary_interval, DEFAULT_CANARY_INTERVAL)?,
            digest_interval: self.interval("monitor.digest_interval", raw.digest_interval, DEFAULT_DIGEST_INTERVAL)?,
            retention_alert: self.duration(
                "monitor.retention_alert",
                raw.retention_alert,
                DEFAULT_RETENTION_ALERT,
                RETENTION_ALERT_BOUNDS,
            )?,
        })
    }

    /// A duration that may also be `"off"` (`None`).
    fn interval(&self, key: &str, value: Option<String>, default: Duration) -> Result<Option<Duration>, ConfigError> {
        match value {
            Some(text) if text.trim() == "off" => Ok(None),
            other => self.duration(key, other, default, MONITOR_INTERVAL_BOUNDS).map(Some),
        }
    }

    fn byte_size(&self, key: &str, value: Option<toml::Value>, default: u64) -> Result<u64, ConfigError> {
        let hint = "write a number of bytes or a size such as \"512MiB\", \"1GiB\", \"64MB\" (0 turns it off)";
        match value {
            None => Ok(default),
            Some(toml::Value::Integer(n)) => {
                u64::try_from(n).map_err(|_| self.invalid(key, format!("is {n}, which is negative; {hint}")))
            }
            Some(toml::Value::String(text)) => {
                parse_byte_size(&text).map_err(|e| self.invalid(key, format!("is invalid: {e}; {hint}")))
            }
            Some(other) => Err(self.invalid(key, format!("is {other}, which is not a byte size; {hint}"))),
        }
    }

    fn node(&self, name: String, raw: RawNode) -> Result<NodeConfig, ConfigError> {
        let key = |field: &str| format!("nodes.{name}.{field}");
        check_node_name(&name).map_err(|e| self.invalid(&format!("nodes.{name}"), e.0))?;
        let control_text =
            self.required(&key("control"), raw.control, "give the control address, e.g. 127.0.0.1:7401")?;
        let control = self.address(&key("control"), &control_text)?;
        let data = match raw.data {
            Some(text) => self.address(&key("data"), &text)?,
            None => {
                let port = control.port().checked_add(1).ok_or_else(|| {
                    self.invalid(
                        &key("data"),
                        "is missing and the control port + 1 is not a port; give `data` explicitly",
                    )
                })?;
                SocketAddr::new(control.ip(), port)
            }
        };
        let peer_via = match raw.peer_via {
            Some(text) => self.address(&key("peer_via"), &text)?,
            None => control,
        };
        let metrics = raw.metrics.map(|text| self.address(&key("metrics"), &text)).transpose()?;
        let sentinel = match raw.sentinel {
            Some(text) => self.address(&key("sentinel"), &text)?,
            None => {
                let port = control.port().checked_add(2).ok_or_else(|| {
                    self.invalid(
                        &key("sentinel"),
                        "is missing and the control port + 2 is not a port; give `sentinel` explicitly",
                    )
                })?;
                SocketAddr::new(control.ip(), port)
            }
        };
        let hint = "give a path relative to the pair file";
        Ok(NodeConfig {
            dir: self.file_path(&key("dir"), self.required(&key("dir"), raw.dir, hint)?)?,
            cert: self.file_path(&key("cert"), self.required(&key("cert"), raw.cert, hint)?)?,
            key: self.file_path(&key("key"), self.required(&key("key"), raw.key, hint)?)?,
            data_cert: raw.data_cert.map(|p| self.file_path(&key("data_cert"), p)).transpose()?,
            data_key: raw.data_key.map(|p| self.file_path(&key("data_key"), p)).transpose()?,
            name,
            control,
            data,
            peer_via,
            metrics,
            sentinel,
        })
    }

    fn check_nodes(&self, nodes: &[NodeConfig]) -> Result<(), ConfigError> {
        let mut addresses = Vec::new();
        for node in nodes {
            addresses.push((format!("nodes.{}.control", node.name), node.control));
            addresses.push((format!("nodes.{}.data", node.name), node.data));
            addresses.push((format!("nodes.{}.sentinel", node.name), node.sentinel));
            if let Some(metrics) = node.metrics {
                addresses.push((format!("nodes.{}.metrics", node.name), metrics));
            }
        }
        for (i, (key_a, a)) in addresses.iter().enumerate() {
            for (key_b, b) in &addresses[i + 1..] {
                if addresses_clash(*a, *b) {
                    return Err(self.invalid(
                        key_b,
                        format!("is {b}, which clashes with `{key_a}` ({a}); every listening address must differ"),
                    ));
                }
            }
        }
        if let [first, second] = nodes {
            if first.dir == second.dir {
                return Err(self.invalid(
                    &format!("nodes.{}.dir", second.name),
                    format!(
                        "is {}, the same as node {}'s; each node needs its own data directory",
                        second.dir.display(),
                        first.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_levels_and_policies_round_trip() {
        for level in SyncLevel::ALL {
            assert_eq!(level.to_string().parse::<SyncLevel>().unwrap(), level);
        }
        assert!(SyncLevel::Async < SyncLevel::Applied);
        assert!("fast".parse::<SyncLevel>().unwrap_err().0.contains("durable"));
        assert_eq!("block".parse::<PeerLossPolicy>().unwrap(), PeerLossPolicy::Block);
        let p: PeerLossPolicy = "degrade-after:1m 30s".parse().unwrap();
        assert_eq!(p, PeerLossPolicy::DegradeAfter(Duration::from_secs(90)));
        assert_eq!(p.to_string().parse::<PeerLossPolicy>().unwrap(), p);
        assert!("degrade-after:soon".parse::<PeerLossPolicy>().is_err());
        assert!("never".parse::<PeerLossPolicy>().is_err());
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("0").unwrap(), 0);
        assert_eq!(parse_byte_size("4096").unwrap(), 4096);
        assert_eq!(parse_byte_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_byte_size(" 1 GiB ").unwrap(), 1 << 30);
        assert_eq!(parse_byte_size("64MB").unwrap(), 64_000_000);
        assert_eq!(parse_byte_size("10kib").unwrap(), 10240);
        for bad in ["", "MiB", "1.5GiB", "-1", "12M", "5 parsecs", "99999999999999999999TiB", "1TiB2"] {
            assert!(parse_byte_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn node_names() {
        for ok in ["a", "node_1", "x-y", "_a", &"z".repeat(32)] {
            check_node_name(ok).unwrap();
        }
        for bad in ["", "A", "a.b", "-a", "a-", "é", "admin", &"z".repeat(33)] {
            assert!(check_node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wildcard_addresses_clash() {
        let p = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(addresses_clash(p("0.0.0.0:7401"), p("127.0.0.1:7401")));
        assert!(!addresses_clash(p("127.0.0.2:7401"), p("127.0.0.1:7401")));
        assert!(!addresses_clash(p("127.0.0.1:7402"), p("127.0.0.1:7401")));
    }
}
