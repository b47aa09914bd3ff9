//! Playbooks: the TOML file a drill runs (format in INTERFACE.md and `docs/drills.md`).
//!
//! ## Job
//! Turns playbook text into a typed [`Playbook`]: the pair to drill (settings for a pair the
//! drill spawns, or `[attach] pair = "…"`), the steps in order, each a typed [`Action`], and the
//! expectations judged at the end.
//!
//! ## Invariants
//! - Nothing is defaulted silently from a typo: an unknown key anywhere (top level, `[attach]`,
//!   a `[[step]]`, `[expect]`) or an unknown verb is refused, and the error names the key or verb
//!   and, inside a step, the step's number (1-based, in file order) and verb.
//! - Every value is checked here (durations parse, counts are above zero, node names are names),
//!   so that a running drill never stops half-way over a typo it could have caught before
//!   spawning anything. Whether a node name belongs to the pair is checked by
//!   [`Playbook::check_nodes`] once the pair is known.
//! - Steps that need the drill to own the node processes or the link between them (`kill`,
//!   `pause`, `resume`, `restart`, `partition`, `heal`, `delay`, `corrupt-tail`) are refused on
//!   an attached pair, at parse time.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{check_node_name, PeerLossPolicy, SyncLevel};

/// Settings of a pair the drill spawns; `None` keeps what `hotpair init` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairSettings {
    pub sync: SyncLevel,
    pub sync_timeout: Option<Duration>,
    pub on_peer_loss: Option<PeerLossPolicy>,
    pub heartbeat: Option<Duration>,
    /// The spawned pair requires `AUTH` on its data ports (`hotpair init --client-password`).
    pub client_password: bool,
    /// The spawned pair's data ports speak TLS (`hotpair init --client-tls`).
    pub client_tls: bool,
    /// `[witness]`: the drill runs its own etcd and gives the pair a `[witness]` table.
    pub witness: Option<WitnessSettings>,
}

/// A playbook's `[witness]` table: the pair's `[witness]` keys the drill writes (the endpoints
/// are the drill's own etcd, reached by each node through a fault proxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessSettings {
    pub ttl: Duration,
    /// `"automatic"` or `"observe"`.
    pub failover: String,
    pub min_interval: Option<Duration>,
}

/// Which link `partition` cuts and `heal` restores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// The link between the two nodes (`from = "peer"`, the default).
    Peer,
    /// A node's link to the drill's etcd (`from = "witness"`); `None`: both nodes'.
    Witness { node: Option<String> },
}

impl Default for PairSettings {
    fn default() -> Self {
        PairSettings {
            sync: crate::config::DEFAULT_SYNC,
            sync_timeout: None,
            on_peer_loss: None,
            heartbeat: None,
            client_password: false,
            client_tls: false,
            witness: None,
        }
    }
}

/// Which pair the drill runs against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A fresh pair in a temporary directory, owned (processes, ports, link) by the drill.
    Spawn(PairSettings),
    /// A running pair described by this pair file (relative to the playbook's directory).
    Attach { pair: PathBuf },
}

/// How the workload's clients reach the primary (`[workload] connect`, or a step's `connect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Connect {
    /// To the nodes' data ports; on a refusal or a broken connection, to the other node.
    #[default]
    Direct,
    /// As a Sentinel-aware client library: ask the nodes' Sentinel ports where the primary
    /// is, and ask again on a refusal or a broken connection.
    Sentinel,
    /// Through a `hotpair proxy` the drill runs: one address, never changed.
    Proxy,
}

impl Connect {
    pub fn name(self) -> &'static str {
        match self {
            Connect::Direct => "direct",
            Connect::Sentinel => "sentinel",
            Connect::Proxy => "proxy",
        }
    }

    fn parse(text: &str) -> Option<Connect> {
        [Connect::Direct, Connect::Sentinel, Connect::Proxy].into_iter().find(|c| c.name() == text)
    }
}

/// The client workload's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadSpec {
    pub clients: u32,
    /// Writes per second, all clients together.
    pub rate: f64,
    /// Keys, all clients together (each client owns `keys / clients`, at least one).
    pub keys: u64,
    pub value_size: usize,
    /// How long a client waits for a reply before calling the write unknown.
    pub request_timeout: Duration,
    /// A gap without acknowledgements longer than this (while writes are attempted) is an
    /// outage window; default: 3 × the per-client interval, at least 100 ms.
    pub outage_threshold: Option<Duration>,
    /// How the clients reach the primary: the outage windows are what such an application sees.
    pub connect: Connect,
}

/// How `partition` cuts the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionMode {
    /// Packets vanish: connections stay open and carry nothing; new ones are accepted and
    /// black-holed. The nodes notice only through their heartbeats, as in a real partition.
    Drop,
    /// Connections are closed at once and new ones are closed as soon as they are accepted.
    Reset,
}

/// One step's verb with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Workload(WorkloadSpec),
    StopWorkload,
    Sleep(Duration),
    Kill {
        node: String,
    },
    Pause {
        node: String,
    },
    Resume {
        node: String,
    },
    Restart {
        node: String,
    },
    Partition {
        mode: PartitionMode,
        delay: Option<Duration>,
        link: Link,
    },
    /// `None`: every link the drill cut.
    Heal {
        link: Option<Link>,
    },
    KillWitness,
    StartWitness,
    PauseWitness,
    ResumeWitness,
    Delay {
        delay: Duration,
    },
    Switchover {
        to: Option<String>,
        timeout: Option<Duration>,
        max_lag: Option<Duration>,
    },
    Failover {
        to: String,
        force: bool,
    },
    Rejoin {
        node: String,
        allow_full_copy: bool,
    },
    Switchback {
        timeout: Option<Duration>,
    },
    ReplicateStop {
        node: Option<String>,
    },
    ReplicateStart {
        node: Option<String>,
    },
    ReopenLog {
        node: Option<String>,
    },
    WaitCaughtUp {
        timeout: Duration,
    },
    /// Until `node` is primary and takes writes, by itself (an automatic failover).
    WaitPrimary {
        node: String,
        timeout: Duration,
    },
    Verify {
        full: bool,
    },
    CorruptTail {
        node: String,
        bytes: u64,
    },
    TrimJournal {
        node: String,
    },
}

/// Every verb with the keys it takes (besides `do`), in the order the docs list them.
pub const VERBS: &[(&str, &[&str])] = &[
    ("workload", &["clients", "rate", "keys", "value_size", "request_timeout", "outage_threshold", "connect"]),
    ("stop-workload", &[]),
    ("sleep", &["for"]),
    ("kill", &["node"]),
    ("pause", &["node"]),
    ("resume", &["node"]),
    ("restart", &["node"]),
    ("partition", &["mode", "delay", "from", "node"]),
    ("heal", &["from", "node"]),
    ("kill-witness", &[]),
    ("start-witness", &[]),
    ("pause-witness", &[]),
    ("resume-witness", &[]),
    ("delay", &["delay"]),
    ("switchover", &["to", "timeout", "max_lag", "expect_refused", "kill_after"]),
    ("failover", &["to", "force", "expect_refused", "kill_after"]),
    ("rejoin", &["node", "allow_full_copy", "expect_refused", "kill_after"]),
    ("switchback", &["timeout", "expect_refused", "kill_after"]),
    ("replicate-stop", &["node", "expect_refused"]),
    ("replicate-start", &["node", "expect_refused"]),
    ("reopen-log", &["node", "expect_refused"]),
    ("wait-caught-up", &["timeout"]),
    ("wait-primary", &["node", "timeout"]),
    ("verify", &["full", "expect_refused"]),
    ("corrupt-tail", &["node", "bytes"]),
    ("trim-journal", &["node"]),
];

/// Verbs that need the drill to own the processes or the link.
const OWNED_ONLY: &[&str] = &[
    "kill",
    "pause",
    "resume",
    "restart",
    "partition",
    "heal",
    "delay",
    "corrupt-tail",
    "trim-journal",
    "kill-witness",
    "start-witness",
    "pause-witness",
    "resume-witness",
];
/// Verbs that need the playbook's `[witness]` (the drill's own etcd).
const WITNESS_ONLY: &[&str] = &["kill-witness", "start-witness", "pause-witness", "resume-witness"];
/// Keys of a playbook's `[witness]` table.
const WITNESS_KEYS: &[&str] = &["ttl", "failover", "min_interval"];

/// Default `wait-caught-up` deadline.
pub const DEFAULT_CATCH_UP: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// 1-based, in file order.
    pub number: usize,
    pub verb: &'static str,
    pub action: Action,
    /// The step passes only if its command exits 1 (refused, nothing changed).
    pub expect_refused: bool,
    /// The command is SIGKILLed this long after it started (if still running), then run again
    /// until it has done its job: an admin's CLI killed mid-command, and the admin re-running it.
    pub kill_after: Option<Duration>,
}

/// `[expect]`: each `None` is not judged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expectations {
    /// At most this many acknowledged writes lost.
    pub lost_acknowledged: Option<u64>,
    /// No write-outage window longer than this.
    pub max_write_outage: Option<Duration>,
    /// At most this many orphaned transactions (sum over `rejoin` steps).
    pub max_orphaned: Option<u64>,
    /// Whether both nodes must end with equal digests at one LSN.
    pub digests_equal: Option<bool>,
    /// At least this many acknowledged writes (a drill whose workload never wrote proves nothing).
    pub min_acknowledged: Option<u64>,
    /// `true`: every lost acknowledged write is accounted for by an orphaned transaction
    /// (lost ≤ orphaned): at `async`/`received` loss is allowed, but never silent.
    pub lost_reported: Option<bool>,
    /// At most this many writes the application saw fail (failed or unknown outcome).
    pub max_failed_writes: Option<u64>,
    /// `true`: never two writers — the writer handoffs the clients can prove are at most the
    /// epoch changes seen (`workload::writer_handoffs`).
    pub single_writer: Option<bool>,
    /// At most this many epoch changes seen over the drill (`0`: no failover, no switchover).
    pub max_epoch_changes: Option<u64>,
}

pub const EXPECT_KEYS: &[&str] = &[
    "lost_acknowledged",
    "max_write_outage",
    "max_orphaned",
    "digests_equal",
    "min_acknowledged",
    "lost_reported",
    "max_failed_writes",
    "single_writer",
    "max_epoch_changes",
];
const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "sync",
    "sync_timeout",
    "on_peer_loss",
    "heartbeat",
    "client_password",
    "client_tls",
    "witness",
    "attach",
    "workload",
    "step",
    "expect",
];
/// Keys of the top-level `[workload]` table: defaults for every workload step.
const WORKLOAD_TABLE_KEYS: &[&str] = &["connect"];
/// The longest duration a playbook may give any key.
const PLAYBOOK_DURATION_MAX: Duration = Duration::from_secs(24 * 3600);
const PAIR_SETTING_KEYS: &[&str] =
    &["sync", "sync_timeout", "on_peer_loss", "heartbeat", "client_password", "client_tls", "witness"];

#[derive(Debug, Clone, PartialEq)]
pub struct Playbook {
    pub path: PathBuf,
    pub name: String,
    pub target: Target,
    pub steps: Vec<Step>,
    pub expect: Expectations,
}

/// A playbook that cannot be run; the message names the file, the step and the key.
#[derive(Debug, thiserror::Error)]
pub enum PlaybookError {
    #[error("cannot read playbook {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("playbook {} {location}: {message}", path.display())]
    Toml { path: PathBuf, location: String, message: String },
    #[error("playbook {}: {}{message}", path.display(), where_(*step, key.as_deref()))]
    Invalid { path: PathBuf, step: Option<usize>, key: Option<String>, message: String },
}

fn where_(step: Option<usize>, key: Option<&str>) -> String {
    match (step, key) {
        (Some(step), Some(key)) => format!("step {step}, key `{key}`: "),
        (Some(step), None) => format!("step {step}: "),
        (None, Some(key)) => format!("key `{key}`: "),
        (None, None) => String::new(),
    }
}

impl PlaybookError {
    /// The step the error is about (1-based), if any.
    pub fn step(&self) -> Option<usize> {
        match self {
            PlaybookError::Invalid { step, .. } => *step,
            _ => None,
        }
    }

    /// The key the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            PlaybookError::Invalid { key, .. } => key.as_deref(),
            _ => None,
        }
    }
}

impl Playbook {
    pub fn load(path: &Path) -> Result<Playbook, PlaybookError> {
        let text = crate::bounded_read::read_to_string(path, crate::bounded_read::CONFIG_LIMIT)
            .map_err(|source| PlaybookError::Read { path: path.to_path_buf(), source })?;
        Playbook::parse(&text, path)
    }

    /// Parses playbook text as if read from `path` (used for messages and to resolve
    /// `[attach] pair`).
    pub fn parse(text: &str, path: &Path) -> Result<Playbook, PlaybookError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
        Parser { path }.playbook(table)
    }

    /// Checks that every node a step names belongs to the pair (`names`).
    pub fn check_nodes(&self, names: &[String]) -> Result<(), PlaybookError> {
        for step in &self.steps {
            let (key, node) = match &step.action {
                Action::Kill { node }
                | Action::Pause { node }
                | Action::Resume { node }
                | Action::Restart { node }
                | Action::Rejoin { node, .. }
                | Action::CorruptTail { node, .. }
                | Action::TrimJournal { node }
                | Action::WaitPrimary { node, .. }
                | Action::Partition { link: Link::Witness { node: Some(node) }, .. }
                | Action::Heal { link: Some(Link::Witness { node: Some(node) }) } => ("node", Some(node)),
                Action::Failover { to, .. } => ("to", Some(to)),
                Action::Switchover { to, .. } => ("to", to.as_ref()),
                Action::ReplicateStop { node } | Action::ReplicateStart { node } | Action::ReopenLog { node } => {
                    ("node", node.as_ref())
                }
                _ => continue,
            };
            if let Some(node) = node {
                if !names.contains(node) {
                    return Err(PlaybookError::Invalid {
                        path: self.path.clone(),
                        step: Some(step.number),
                        key: Some(key.into()),
                        message: format!("the pair has no node {node:?} (its nodes are {})", names.join(" and ")),
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether any step starts a workload.
    pub fn has_workload(&self) -> bool {
        self.steps.iter().any(|s| matches!(s.action, Action::Workload(_)))
    }
}

fn toml_error(path: &Path, text: &str, err: &toml::de::Error) -> PlaybookError {
    let location = match err.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line_no = text[..start].bytes().filter(|&b| b == b'\n').count() + 1;
            format!("line {line_no} (`{}`)", text.lines().nth(line_no - 1).unwrap_or("").trim())
        }
        None => "is not valid TOML".into(),
    };
    PlaybookError::Toml { path: path.to_path_buf(), location, message: err.message().trim().to_string() }
}

struct Parser<'a> {
    path: &'a Path,
}

/// One table being read: which keys were used, so the rest can be refused.
struct Fields<'t> {
    table: &'t toml::Table,
    step: Option<usize>,
    /// Prefix for key names in messages (`expect.`, `attach.`).
    prefix: &'static str,
}

impl Parser<'_> {
    fn invalid(&self, step: Option<usize>, key: Option<String>, message: impl Into<String>) -> PlaybookError {
        PlaybookError::Invalid { path: self.path.to_path_buf(), step, key, message: message.into() }
    }

    fn playbook(&self, table: toml::Table) -> Result<Playbook, PlaybookError> {
        self.refuse_unknown(&table, TOP_KEYS, None, "", "a playbook's top level takes")?;
        let top = Fields { table: &table, step: None, prefix: "" };
        let name = self.string(&top, "name")?.unwrap_or_else(|| {
            self.path.file_stem().map_or_else(|| "drill".into(), |s| s.to_string_lossy().into_owned())
        });
        let _description = self.string(&top, "description")?;

        let target = match table.get("attach") {
            Some(attach) => {
                if let Some(key) = PAIR_SETTING_KEYS.iter().find(|k| table.contains_key(**k)) {
                    return Err(self.invalid(
                        None,
                        Some((*key).into()),
                        "an attached pair keeps its own settings; remove the key or the [attach] table",
                    ));
                }
                let attach = attach.as_table().ok_or_else(|| {
                    self.invalid(None, Some("attach".into()), "must be a table: [attach] pair = \"…\"")
                })?;
                self.refuse_unknown(attach, &["pair"], None, "attach.", "[attach] takes")?;
                let fields = Fields { table: attach, step: None, prefix: "attach." };
                let pair = self
                    .string(&fields, "pair")?
                    .ok_or_else(|| self.invalid(None, Some("attach.pair".into()), "is missing; name the pair file"))?;
                let base = self.path.parent().unwrap_or(Path::new("."));
                Target::Attach { pair: base.join(pair) }
            }
            None => {
                let mut settings = PairSettings::default();
                if let Some(text) = self.string(&top, "sync")? {
                    settings.sync = text
                        .parse()
                        .map_err(|e: crate::config::BadValue| self.invalid(None, Some("sync".into()), e.0))?;
                }
                settings.sync_timeout = self.duration(&top, "sync_timeout")?;
                settings.heartbeat = self.duration(&top, "heartbeat")?;
                settings.client_password = self.boolean(&top, "client_password")?.unwrap_or(false);
                settings.client_tls = self.boolean(&top, "client_tls")?.unwrap_or(false);
                if let Some(text) = self.string(&top, "on_peer_loss")? {
                    settings.on_peer_loss =
                        Some(text.parse().map_err(|e: crate::config::BadValue| {
                            self.invalid(None, Some("on_peer_loss".into()), e.0)
                        })?);
                }
                settings.witness = match table.get("witness") {
                    None => None,
                    Some(toml::Value::Table(witness)) => Some(self.witness(witness)?),
                    Some(_) => {
                        return Err(self.invalid(
                            None,
                            Some("witness".into()),
                            "must be a table: [witness] ttl = \"3s\"",
                        ))
                    }
                };
                Target::Spawn(settings)
            }
        };

        let default_connect = match table.get("workload") {
            None => Connect::Direct,
            Some(toml::Value::Table(workload)) => {
                self.refuse_unknown(workload, WORKLOAD_TABLE_KEYS, None, "workload.", "[workload] takes")?;
                let fields = Fields { table: workload, step: None, prefix: "workload." };
                self.connect(&fields)?.unwrap_or_default()
            }
            Some(_) => {
                return Err(self.invalid(None, Some("workload".into()), "must be a table: [workload] connect = \"…\""))
            }
        };
        let mut steps = Vec::new();
        match table.get("step") {
            None => {}
            Some(toml::Value::Array(items)) => {
                for (index, item) in items.iter().enumerate() {
                    let number = index + 1;
                    let step = item.as_table().ok_or_else(|| {
                        self.invalid(Some(number), None, "must be a table; write each step as [[step]] do = \"…\"")
                    })?;
                    steps.push(self.step(number, step, &target, default_connect)?);
                }
            }
            Some(_) => return Err(self.invalid(None, Some("step".into()), "must be an array of [[step]] tables")),
        }
        if steps.is_empty() {
            return Err(self.invalid(None, Some("step".into()), "the playbook has no [[step]]; a drill needs steps"));
        }

        let expect = match table.get("expect") {
            None => Expectations::default(),
            Some(toml::Value::Table(expect)) => self.expectations(expect)?,
            Some(_) => return Err(self.invalid(None, Some("expect".into()), "must be a table: [expect]")),
        };
        Ok(Playbook { path: self.path.to_path_buf(), name, target, steps, expect })
    }

    fn refuse_unknown(
        &self,
        table: &toml::Table,
        allowed: &[&str],
        step: Option<usize>,
        prefix: &str,
        what: &str,
    ) -> Result<(), PlaybookError> {
        if let Some(key) = table.keys().find(|k| !allowed.contains(&k.as_str())) {
            let list = if allowed.is_empty() { "no keys".to_string() } else { allowed.join(", ") };
            return Err(self.invalid(step, Some(format!("{prefix}{key}")), format!("unknown key; {what} {list}")));
        }
        Ok(())
    }

    fn step(
        &self,
        number: usize,
        table: &toml::Table,
        target: &Target,
        default_connect: Connect,
    ) -> Result<Step, PlaybookError> {
        let fields = Fields { table, step: Some(number), prefix: "" };
        let verb_text = self.string(&fields, "do")?.ok_or_else(|| {
            self.invalid(
                Some(number),
                Some("do".into()),
                "is missing; every step says what it does, e.g. do = \"kill\"",
            )
        })?;
        let Some(&(verb, keys)) = VERBS.iter().find(|(v, _)| *v == verb_text) else {
            let known: Vec<&str> = VERBS.iter().map(|(v, _)| *v).collect();
            return Err(self.invalid(
                Some(number),
                Some("do".into()),
                format!("unknown verb {verb_text:?}; the verbs are {}", known.join(", ")),
            ));
        };
        let mut allowed: Vec<&str> = vec!["do"];
        allowed.extend_from_slice(keys);
        self.refuse_unknown(table, &allowed, Some(number), "", &format!("`{verb}` takes"))?;
        if matches!(target, Target::Attach { .. }) && OWNED_ONLY.contains(&verb) {
            return Err(self.invalid(
                Some(number),
                Some("do".into()),
                format!("`{verb}` needs a pair the drill spawns (it owns the processes and the link); remove [attach]"),
            ));
        }
        let has_witness = matches!(target, Target::Spawn(PairSettings { witness: Some(_), .. }));
        if WITNESS_ONLY.contains(&verb) && !has_witness {
            return Err(self.invalid(
                Some(number),
                Some("do".into()),
                format!("`{verb}` needs the playbook's [witness] table (the drill then runs its own etcd)"),
            ));
        }
        let node = |required: bool| -> Result<Option<String>, PlaybookError> {
            let node = self.string(&fields, "node")?;
            if required && node.is_none() {
                return Err(self.invalid(
                    Some(number),
                    Some("node".into()),
                    format!("is missing; `{verb}` needs a node"),
                ));
            }
            if let Some(name) = &node {
                check_node_name(name).map_err(|e| self.invalid(Some(number), Some("node".into()), e.0))?;
            }
            Ok(node)
        };
        let required_node = || -> Result<String, PlaybookError> {
            node(true)?.ok_or_else(|| self.invalid(Some(number), Some("node".into()), "is missing"))
        };
        let action = match verb {
            "workload" => {
                let clients = self.count(&fields, "clients")?.unwrap_or(4);
                let clients = u32::try_from(clients)
                    .ok()
                    .filter(|c| *c <= 1024)
                    .ok_or_else(|| self.invalid(Some(number), Some("clients".into()), "is more than 1024"))?;
                let rate = self.float(&fields, "rate")?.unwrap_or(500.0);
                if !(rate > 0.0 && rate <= 1_000_000.0) {
                    return Err(self.invalid(Some(number), Some("rate".into()), "must be above 0 and at most 1000000"));
                }
                let keys = self.count(&fields, "keys")?.unwrap_or(1000);
                let value_size = self.count(&fields, "value_size")?.unwrap_or(64);
                if value_size > 1024 * 1024 {
                    return Err(self.invalid(Some(number), Some("value_size".into()), "is more than 1 MiB"));
                }
                Action::Workload(WorkloadSpec {
                    clients,
                    rate,
                    keys,
                    value_size: value_size as usize,
                    request_timeout: self.duration(&fields, "request_timeout")?.unwrap_or(Duration::from_secs(2)),
                    outage_threshold: self.duration(&fields, "outage_threshold")?,
                    connect: self.connect(&fields)?.unwrap_or(default_connect),
                })
            }
            "stop-workload" => Action::StopWorkload,
            "sleep" => Action::Sleep(self.duration(&fields, "for")?.ok_or_else(|| {
                self.invalid(Some(number), Some("for".into()), "is missing; write e.g. for = \"2s\"")
            })?),
            "kill" => Action::Kill { node: required_node()? },
            "pause" => Action::Pause { node: required_node()? },
            "resume" => Action::Resume { node: required_node()? },
            "restart" => Action::Restart { node: required_node()? },
            "partition" => {
                let mode = match self.string(&fields, "mode")?.as_deref() {
                    None | Some("drop") => PartitionMode::Drop,
                    Some("reset") => PartitionMode::Reset,
                    Some(other) => {
                        return Err(self.invalid(
                            Some(number),
                            Some("mode".into()),
                            format!("is {other:?}; use \"drop\" (silence) or \"reset\" (connections closed)"),
                        ))
                    }
                };
                let link = self.link(&fields, has_witness)?.unwrap_or(Link::Peer);
                Action::Partition { mode, delay: self.duration(&fields, "delay")?, link }
            }
            "heal" => Action::Heal { link: self.link(&fields, has_witness)? },
            "kill-witness" => Action::KillWitness,
            "start-witness" => Action::StartWitness,
            "pause-witness" => Action::PauseWitness,
            "resume-witness" => Action::ResumeWitness,
            "delay" => Action::Delay {
                delay: self.duration(&fields, "delay")?.ok_or_else(|| {
                    self.invalid(Some(number), Some("delay".into()), "is missing; write e.g. delay = \"50ms\"")
                })?,
            },
            "switchover" => Action::Switchover {
                to: self.node_key(&fields, "to")?,
                timeout: self.duration(&fields, "timeout")?,
                max_lag: self.duration(&fields, "max_lag")?,
            },
            "failover" => Action::Failover {
                to: self.node_key(&fields, "to")?.ok_or_else(|| {
                    self.invalid(Some(number), Some("to".into()), "is missing; failover needs the node to promote")
                })?,
                force: self.boolean(&fields, "force")?.unwrap_or(false),
            },
            "rejoin" => Action::Rejoin {
                node: required_node()?,
                allow_full_copy: self.boolean(&fields, "allow_full_copy")?.unwrap_or(false),
            },
            "switchback" => Action::Switchback { timeout: self.duration(&fields, "timeout")? },
            "replicate-stop" => Action::ReplicateStop { node: node(false)? },
            "replicate-start" => Action::ReplicateStart { node: node(false)? },
            "reopen-log" => Action::ReopenLog { node: node(false)? },
            "wait-caught-up" => {
                Action::WaitCaughtUp { timeout: self.duration(&fields, "timeout")?.unwrap_or(DEFAULT_CATCH_UP) }
            }
            "wait-primary" => Action::WaitPrimary {
                node: required_node()?,
                timeout: self.duration(&fields, "timeout")?.unwrap_or(DEFAULT_CATCH_UP),
            },
            "verify" => Action::Verify { full: self.boolean(&fields, "full")?.unwrap_or(false) },
            "corrupt-tail" => {
                Action::CorruptTail { node: required_node()?, bytes: self.count(&fields, "bytes")?.unwrap_or(8) }
            }
            "trim-journal" => Action::TrimJournal { node: required_node()? },
            other => {
                return Err(self.invalid(Some(number), Some("do".into()), format!("verb {other:?} is not handled")))
            }
        };
        let expect_refused = self.boolean(&fields, "expect_refused")?.unwrap_or(false);
        let kill_after = self.duration(&fields, "kill_after")?;
        if expect_refused && kill_after.is_some() {
            return Err(self.invalid(
                Some(number),
                Some("kill_after".into()),
                "cannot go with expect_refused: a killed command says nothing about a refusal",
            ));
        }
        Ok(Step { number, verb, action, expect_refused, kill_after })
    }

    fn expectations(&self, table: &toml::Table) -> Result<Expectations, PlaybookError> {
        self.refuse_unknown(table, EXPECT_KEYS, None, "expect.", "[expect] takes")?;
        let fields = Fields { table, step: None, prefix: "expect." };
        let whole = |key: &str| -> Result<Option<u64>, PlaybookError> {
            match table.get(key) {
                None => Ok(None),
                Some(toml::Value::Integer(n)) if *n >= 0 => Ok(Some(*n as u64)),
                Some(other) => Err(self.invalid(
                    None,
                    Some(format!("expect.{key}")),
                    format!("is {other}; it must be a whole number, 0 or more"),
                )),
            }
        };
        Ok(Expectations {
            lost_acknowledged: whole("lost_acknowledged")?,
            max_write_outage: self.duration(&fields, "max_write_outage")?,
            max_orphaned: whole("max_orphaned")?,
            digests_equal: self.boolean(&fields, "digests_equal")?,
            min_acknowledged: whole("min_acknowledged")?,
            lost_reported: self.boolean(&fields, "lost_reported")?,
            max_failed_writes: whole("max_failed_writes")?,
            single_writer: self.boolean(&fields, "single_writer")?,
            max_epoch_changes: whole("max_epoch_changes")?,
        })
    }

    /// `[witness]`: `ttl` (default 3s), `failover` (default automatic), `min_interval`.
    fn witness(&self, table: &toml::Table) -> Result<WitnessSettings, PlaybookError> {
        self.refuse_unknown(table, WITNESS_KEYS, None, "witness.", "[witness] takes")?;
        let fields = Fields { table, step: None, prefix: "witness." };
        let ttl = self.duration(&fields, "ttl")?.unwrap_or(Duration::from_secs(3));
        if ttl.subsec_nanos() != 0 || !(2..=60).contains(&ttl.as_secs()) {
            return Err(self.invalid(None, Some("witness.ttl".into()), "must be whole seconds from 2s to 60s"));
        }
        let failover = self.string(&fields, "failover")?.unwrap_or_else(|| "automatic".into());
        if failover != "automatic" && failover != "observe" {
            return Err(self.invalid(
                None,
                Some("witness.failover".into()),
                format!("is {failover:?}; use \"automatic\" or \"observe\""),
            ));
        }
        Ok(WitnessSettings { ttl, failover, min_interval: self.duration(&fields, "min_interval")? })
    }

    /// `from = "peer" | "witness"` with `node` (witness only; absent: both nodes).
    fn link(&self, fields: &Fields<'_>, has_witness: bool) -> Result<Option<Link>, PlaybookError> {
        let node = self.node_key(fields, "node")?;
        let link = match self.string(fields, "from")?.as_deref() {
            None if node.is_none() => return Ok(None),
            None | Some("witness") => {
                if !has_witness {
                    return Err(self.invalid(
                        fields.step,
                        Some("from".into()),
                        "cuts a node from the witness, but the playbook has no [witness] table",
                    ));
                }
                Link::Witness { node }
            }
            Some("peer") if node.is_none() => Link::Peer,
            Some("peer") => {
                return Err(self.invalid(
                    fields.step,
                    Some("node".into()),
                    "goes with from = \"witness\" only; the peer link joins both nodes",
                ))
            }
            Some(other) => {
                return Err(self.invalid(
                    fields.step,
                    Some("from".into()),
                    format!("is {other:?}; use \"peer\" (the link between the nodes) or \"witness\""),
                ))
            }
        };
        Ok(Some(link))
    }

    fn key_name(fields: &Fields<'_>, key: &str) -> String {
        format!("{}{key}", fields.prefix)
    }

    fn string(&self, fields: &Fields<'_>, key: &str) -> Result<Option<String>, PlaybookError> {
        match fields.table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.invalid(
                fields.step,
                Some(Self::key_name(fields, key)),
                format!("is {other}; it must be a string (in quotes)"),
            )),
        }
    }

    /// `connect = "direct" | "sentinel" | "proxy"`.
    fn connect(&self, fields: &Fields<'_>) -> Result<Option<Connect>, PlaybookError> {
        let Some(text) = self.string(fields, "connect")? else { return Ok(None) };
        Connect::parse(&text).map(Some).ok_or_else(|| {
            self.invalid(
                fields.step,
                Some(Self::key_name(fields, "connect")),
                format!("is {text:?}; use \"direct\", \"sentinel\" or \"proxy\""),
            )
        })
    }

    fn node_key(&self, fields: &Fields<'_>, key: &str) -> Result<Option<String>, PlaybookError> {
        let node = self.string(fields, key)?;
        if let Some(name) = &node {
            check_node_name(name).map_err(|e| self.invalid(fields.step, Some(Self::key_name(fields, key)), e.0))?;
        }
        Ok(node)
    }

    fn duration(&self, fields: &Fields<'_>, key: &str) -> Result<Option<Duration>, PlaybookError> {
        let Some(text) = self.string(fields, key)? else { return Ok(None) };
        let invalid = |reason: String| self.invalid(fields.step, Some(Self::key_name(fields, key)), reason);
        let value = humantime::parse_duration(text.trim())
            .map_err(|e| invalid(format!("is {text:?}, which is not a duration ({e}); write e.g. 250ms, 5s or 2m")))?;
        // No drill waits longer than a day; a larger value is a typo that would hang it.
        if value > PLAYBOOK_DURATION_MAX {
            let max = humantime::format_duration(PLAYBOOK_DURATION_MAX);
            return Err(invalid(format!("is {text:?}; it must be at most {max}")));
        }
        Ok(Some(value))
    }

    fn boolean(&self, fields: &Fields<'_>, key: &str) -> Result<Option<bool>, PlaybookError> {
        match fields.table.get(key) {
            None => Ok(None),
            Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
            Some(other) => Err(self.invalid(
                fields.step,
                Some(Self::key_name(fields, key)),
                format!("is {other}; it must be true or false"),
            )),
        }
    }

    /// A whole number above zero.
    fn count(&self, fields: &Fields<'_>, key: &str) -> Result<Option<u64>, PlaybookError> {
        match fields.table.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(n)) if *n > 0 => Ok(Some(*n as u64)),
            Some(other) => Err(self.invalid(
                fields.step,
                Some(Self::key_name(fields, key)),
                format!("is {other}; it must be a whole number above 0"),
            )),
        }
    }

    fn float(&self, fields: &Fields<'_>, key: &str) -> Result<Option<f64>, PlaybookError> {
        match fields.table.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(n)) => Ok(Some(*n as f64)),
            Some(toml::Value::Float(f)) => Ok(Some(*f)),
            Some(other) => Err(self.invalid(
                fields.step,
                Some(Self::key_name(fields, key)),
                format!("is {other}; it must be a number"),
            )),
        }
    }
}

/// The verbs, for docs and messages.
pub fn verb_names() -> BTreeSet<&'static str> {
    VERBS.iter().map(|(v, _)| *v).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Playbook, PlaybookError> {
        Playbook::parse(text, Path::new("/drills/test.toml"))
    }

    #[test]
    fn the_interface_example_parses() {
        let text = r#"
name = "unplanned failover under load"
sync = "durable"

[[step]]
do = "workload"
clients = 8
rate = 2000
keys = 10000
value_size = 100

[[step]]
do = "sleep"
for = "2s"

[[step]]
do = "kill"
node = "a"

[[step]]
do = "failover"
to = "b"

[[step]]
do = "rejoin"
node = "a"
expect_refused = true

[[step]]
do = "verify"
full = true

[expect]
lost_acknowledged = 0
max_write_outage = "3s"
digests_equal = true
"#;
        let p = parse(text).unwrap();
        assert_eq!(p.name, "unplanned failover under load");
        assert_eq!(p.target, Target::Spawn(PairSettings { sync: SyncLevel::Durable, ..Default::default() }));
        assert_eq!(p.steps.len(), 6);
        assert!(matches!(&p.steps[0].action, Action::Workload(w) if w.clients == 8 && w.rate == 2000.0));
        assert_eq!(p.steps[1].action, Action::Sleep(Duration::from_secs(2)));
        assert_eq!(p.steps[3].action, Action::Failover { to: "b".into(), force: false });
        assert!(p.steps[4].expect_refused);
        assert_eq!(p.steps[5].action, Action::Verify { full: true });
        assert_eq!(p.expect.lost_acknowledged, Some(0));
        assert_eq!(p.expect.max_write_outage, Some(Duration::from_secs(3)));
        assert_eq!(p.expect.digests_equal, Some(true));
        assert!(p.check_nodes(&["a".into(), "b".into()]).is_ok());
        let err = p.check_nodes(&["x".into(), "y".into()]).unwrap_err();
        assert_eq!((err.step(), err.key()), (Some(3), Some("node")));
    }

    #[test]
    fn unknown_keys_and_verbs_name_the_key_and_the_step() {
        let err = parse("[[step]]\ndo = \"sleep\"\nfor = \"1s\"\n[[step]]\ndo = \"kill\"\nnod = \"a\"\n").unwrap_err();
        assert_eq!((err.step(), err.key()), (Some(2), Some("nod")), "{err}");
        assert!(err.to_string().contains("step 2, key `nod`"), "{err}");

        let err = parse("[[step]]\ndo = \"explode\"\n").unwrap_err();
        assert_eq!((err.step(), err.key()), (Some(1), Some("do")));
        assert!(err.to_string().contains("\"explode\""), "{err}");

        let err = parse("synk = \"durable\"\n[[step]]\ndo = \"heal\"\n").unwrap_err();
        assert_eq!((err.step(), err.key()), (None, Some("synk")), "{err}");

        let err = parse("[[step]]\ndo = \"heal\"\n[expect]\nlost_acked = 0\n").unwrap_err();
        assert_eq!(err.key(), Some("expect.lost_acked"), "{err}");

        let err = parse("[[step]]\ndo = \"sleep\"\n").unwrap_err();
        assert_eq!((err.step(), err.key()), (Some(1), Some("for")), "{err}");

        let err = parse("[[step]]\ndo = \"sleep\"\nfor = \"soon\"\n").unwrap_err();
        assert_eq!(err.key(), Some("for"), "{err}");

        let err = parse("[[step]]\ndo = \"kill\"\n").unwrap_err();
        assert_eq!((err.step(), err.key()), (Some(1), Some("node")), "{err}");

        let err = parse("[[step]]\ndo = \"kill\"\nnode = \"a\"\nexpect_refused = true\n").unwrap_err();
        assert_eq!(err.key(), Some("expect_refused"), "{err}");

        let err = parse("[[step]]\ndo = \"workload\"\nclients = 0\n").unwrap_err();
        assert_eq!(err.key(), Some("clients"), "{err}");

        let err = parse("sync = \"fast\"\n[[step]]\ndo = \"heal\"\n").unwrap_err();
        assert_eq!(err.key(), Some("sync"), "{err}");

        assert!(matches!(parse("[[step]\n"), Err(PlaybookError::Toml { .. })));
        assert_eq!(parse("name = \"x\"\n").unwrap_err().key(), Some("step"));
    }

    #[test]
    fn every_shipped_playbook_parses_and_says_what_it_proves() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|x| x == "toml") {
                let p = Playbook::load(&path).unwrap_or_else(|e| panic!("{e}"));
                p.check_nodes(&["a".into(), "b".into()]).unwrap();
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(text.starts_with("# Proves:"), "{} must open with what it proves", path.display());
                count += 1;
            }
        }
        assert!(count >= 8, "{count} playbooks");
    }

    #[test]
    fn workloads_say_how_they_connect() {
        let p = parse(
            "[workload]\nconnect = \"sentinel\"\n[[step]]\ndo = \"workload\"\n[[step]]\ndo = \"stop-workload\"\n\
             [[step]]\ndo = \"workload\"\nconnect = \"proxy\"\n[expect]\nmax_failed_writes = 0\n",
        )
        .unwrap();
        assert!(matches!(&p.steps[0].action, Action::Workload(w) if w.connect == Connect::Sentinel));
        assert!(matches!(&p.steps[2].action, Action::Workload(w) if w.connect == Connect::Proxy));
        assert_eq!(p.expect.max_failed_writes, Some(0));
        let p = parse("[[step]]\ndo = \"workload\"\n").unwrap();
        assert!(matches!(&p.steps[0].action, Action::Workload(w) if w.connect == Connect::Direct));
        let err = parse("[workload]\nconnect = \"carrier-pigeon\"\n[[step]]\ndo = \"heal\"\n").unwrap_err();
        assert_eq!(err.key(), Some("workload.connect"), "{err}");
        let err = parse("[workload]\nclients = 3\n[[step]]\ndo = \"heal\"\n").unwrap_err();
        assert_eq!(err.key(), Some("workload.clients"), "{err}");
        let err = parse("[[step]]\ndo = \"workload\"\nconnect = \"sentinels\"\n").unwrap_err();
        assert_eq!((err.step(), err.key()), (Some(1), Some("connect")), "{err}");
    }

    #[test]
    fn attach_refuses_pair_settings_and_owned_steps() {
        let p = parse("[attach]\npair = \"../pair.toml\"\n[[step]]\ndo = \"verify\"\n").unwrap();
        assert_eq!(p.target, Target::Attach { pair: PathBuf::from("/drills/../pair.toml") });
        let err = parse("sync = \"async\"\n[attach]\npair = \"p.toml\"\n[[step]]\ndo = \"verify\"\n").unwrap_err();
        assert_eq!(err.key(), Some("sync"));
        let err = parse("[attach]\npair = \"p.toml\"\n[[step]]\ndo = \"kill\"\nnode = \"a\"\n").unwrap_err();
        assert_eq!((err.step(), err.key()), (Some(1), Some("do")));
        let err = parse("[attach]\npear = \"p.toml\"\n[[step]]\ndo = \"verify\"\n").unwrap_err();
        assert_eq!(err.key(), Some("attach.pear"));
    }

    #[test]
    fn settings_and_optional_params() {
        let p = parse(
            "sync = \"async\"\nsync_timeout = \"1s\"\non_peer_loss = \"degrade-after:2s\"\nheartbeat = \"50ms\"\n\
             [[step]]\ndo = \"partition\"\nmode = \"reset\"\ndelay = \"20ms\"\n\
             [[step]]\ndo = \"wait-caught-up\"\n[[step]]\ndo = \"switchover\"\nto = \"b\"\nmax_lag = \"1s\"\n",
        )
        .unwrap();
        let Target::Spawn(settings) = &p.target else { panic!("spawned") };
        assert_eq!(settings.sync, SyncLevel::Async);
        assert_eq!(settings.on_peer_loss, Some(PeerLossPolicy::DegradeAfter(Duration::from_secs(2))));
        assert_eq!(settings.heartbeat, Some(Duration::from_millis(50)));
        assert_eq!(
            p.steps[0].action,
            Action::Partition { mode: PartitionMode::Reset, delay: Some(Duration::from_millis(20)), link: Link::Peer }
        );
        assert_eq!(p.steps[1].action, Action::WaitCaughtUp { timeout: DEFAULT_CATCH_UP });
        assert_eq!(
            p.steps[2].action,
            Action::Switchover { to: Some("b".into()), timeout: None, max_lag: Some(Duration::from_secs(1)) }
        );
        assert_eq!(p.name, "test");
    }

    #[test]
    fn witness_steps_need_the_witness_table_and_name_what_they_cut() {
        let p = parse(
            "[witness]\nttl = \"2s\"\nmin_interval = \"0s\"\n\
             [[step]]\ndo = \"kill-witness\"\n[[step]]\ndo = \"start-witness\"\n\
             [[step]]\ndo = \"partition\"\nfrom = \"witness\"\nnode = \"a\"\n\
             [[step]]\ndo = \"heal\"\nfrom = \"witness\"\n[[step]]\ndo = \"heal\"\n\
             [[step]]\ndo = \"wait-primary\"\nnode = \"b\"\ntimeout = \"5s\"\n\
             [expect]\nsingle_writer = true\nmax_epoch_changes = 1\n",
        )
        .unwrap();
        let Target::Spawn(settings) = &p.target else { panic!("spawned") };
        assert_eq!(
            settings.witness,
            Some(WitnessSettings {
                ttl: Duration::from_secs(2),
                failover: "automatic".into(),
                min_interval: Some(Duration::ZERO)
            })
        );
        assert_eq!(p.steps[0].action, Action::KillWitness);
        assert_eq!(
            p.steps[2].action,
            Action::Partition {
                mode: PartitionMode::Drop,
                delay: None,
                link: Link::Witness { node: Some("a".into()) }
            }
        );
        assert_eq!(p.steps[3].action, Action::Heal { link: Some(Link::Witness { node: None }) });
        assert_eq!(p.steps[4].action, Action::Heal { link: None });
        assert_eq!(p.steps[5].action, Action::WaitPrimary { node: "b".into(), timeout: Duration::from_secs(5) });
        assert_eq!((p.expect.single_writer, p.expect.max_epoch_changes), (Some(true), Some(1)));
        assert!(p.check_nodes(&["a".into(), "b".into()]).is_ok());
        let err = p.check_nodes(&["x".into(), "b".into()]).unwrap_err();
        assert_eq!((err.step(), err.key()), (Some(3), Some("node")));

        // Without [witness]: refused before anything starts, naming the step.
        let err = parse("[[step]]\ndo = \"kill-witness\"\n").unwrap_err();
        assert_eq!((err.step(), err.key()), (Some(1), Some("do")));
        assert!(err.to_string().contains("[witness]"), "{err}");
        let err = parse("[[step]]\ndo = \"partition\"\nfrom = \"witness\"\n").unwrap_err();
        assert_eq!((err.step(), err.key()), (Some(1), Some("from")));
        let err = parse("[witness]\n[[step]]\ndo = \"partition\"\nfrom = \"peer\"\nnode = \"a\"\n").unwrap_err();
        assert_eq!(err.key(), Some("node"));
        let err = parse("[witness]\n[[step]]\ndo = \"heal\"\nfrom = \"etcd\"\n").unwrap_err();
        assert_eq!(err.key(), Some("from"));
        for (table, key) in [
            ("ttl = \"2500ms\"", "witness.ttl"),
            ("ttl = \"1s\"", "witness.ttl"),
            ("failover = \"auto\"", "witness.failover"),
            ("etcd = []", "witness.etcd"),
        ] {
            let err = parse(&format!("[witness]\n{table}\n[[step]]\ndo = \"verify\"\n")).unwrap_err();
            assert_eq!(err.key(), Some(key), "{table}: {err}");
        }
        let err = parse("[attach]\npair = \"p.toml\"\n[witness]\n[[step]]\ndo = \"verify\"\n").unwrap_err();
        assert_eq!(err.key(), Some("witness"));
    }
}
