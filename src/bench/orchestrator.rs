//! `hotpair bench orchestrator`: Issue 4's measurements, each on real `hotpair run` processes
//! spawned on free 127.0.0.1 ports by the drill's [`DrillPair`] (`hotpair init`, one fault proxy
//! in front of each control port for the replication link, `hotpair run a|b` as children).
//! Orchestration commands run as `hotpair --pair P <command> --json` subprocesses, as an admin
//! would run them; their own phases come from the JSON.
//!
//! ## Parts
//! - **switchover**: `clients` writers at `rate` writes/s in total (sync level `--sync`,
//!   default `durable`) and `switchovers` switchovers alternating a→b→a. Each writer keeps a
//!   connection to both nodes and, on `-READONLY`/`-TRYAGAIN` or a broken connection, retries
//!   the *other* node at once; only when both nodes refused in a row does it sleep
//!   [`ROUND_PAUSE`]. The client-side outage of one switchover is the longest gap between two
//!   acknowledgements (all writers merged) that overlaps the command's run. Reported next to
//!   it: the orchestrator's drain→promote window (the sum of the `drain`, `wait-applied`,
//!   `demote` and `promote` phases) and drain→reverse (those plus `reverse`).
//! - **failover**: a pair with `on_peer_loss = "degrade-after:0s"` (under the default `block`, a
//!   primary without its backup acknowledges nothing, so there is no first write to time). The
//!   primary is SIGKILLed, `failover --to <other>` starts at once, and a prober writes to the
//!   other node from the kill on (retrying every [`PROBE_PAUSE`]) until one write is
//!   acknowledged. Then the old primary is restarted and rejoined, and the next round goes the
//!   other way.
//! - **rejoin**: for each size, a pair with sync `async` is loaded with `keys` keys by pipelined
//!   `MSET` batches of the largest size the default limits allow ([`MSET_PAIRS`]); then, per
//!   round: `replicate stop`, `divergence` single-key SETs on the primary, SIGKILL of the
//!   primary, `failover --to <backup>`, a few writes on the new primary, restart of the old one,
//!   and the timed `rejoin <old>`. The baseline is a **full copy done by a client**: every key
//!   read with pipelined `MGET` (the key names are known; there is no SCAN) from the primary of
//!   the largest size and written with `MSET` into a fresh pair, timed until the fresh primary
//!   acknowledged the last batch and until its backup caught up. (The node's own
//!   `rejoin --allow-full-copy` came later; `docs/benchmarks.md` has a by-hand timing of it.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use hotpair::config::{PeerLossPolicy, SyncLevel};
use hotpair::drill::pair::DrillPair;
use hotpair::drill::playbook::PairSettings;
use hotpair::drill::workload::RespConn;
use hotpair::resp::Frame;
use hotpair::Error;

/// Pause after both nodes refused a write in a row (so a writer does not spin a core while the
/// pair has no primary); it bounds what the client adds to an outage.
const ROUND_PAUSE: Duration = Duration::from_millis(1);
/// Pause between the failover prober's attempts.
const PROBE_PAUSE: Duration = Duration::from_millis(1);
/// Pairs per `MSET`: the default `max_args` (4096) allows `MSET` with 2047 pairs.
const MSET_PAIRS: usize = 2047;
/// `MSET`/`MGET` requests in flight per connection while loading and copying.
const PIPELINE: usize = 4;
/// Value length of the loaded keys.
const VALUE_BYTES: usize = 100;
/// Writes on the new primary after a failover, before the old one is restarted.
const WRITES_AFTER_FAILOVER: usize = 5;
const CLI_TIMEOUT: Duration = Duration::from_secs(300);
const GOAL_SWITCHOVER_MEDIAN_MS: f64 = 50.0;
const GOAL_REJOIN_RATIO: f64 = 1.5;
const GOAL_FULL_COPY_SPEEDUP: f64 = 50.0;

/// What to run: the flags of `hotpair bench orchestrator`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Parts to run (default all): switchover, failover, rejoin.
    #[arg(long, value_delimiter = ',')]
    pub parts: Vec<String>,
    #[arg(long, default_value_t = 20)]
    pub switchovers: u32,
    /// Writers during the switchovers.
    #[arg(long, default_value_t = 4)]
    pub clients: u32,
    /// Writes per second, all writers together.
    #[arg(long, default_value_t = 400.0)]
    pub rate: f64,
    /// Sync level of the switchover part's pair.
    #[arg(long, default_value = "durable")]
    pub sync: SyncLevel,
    #[arg(long, default_value_t = 5)]
    pub failovers: u32,
    /// Database sizes (keys) of the rejoin measurement; the largest is also fully copied.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000u64, 1_000_000])]
    pub rejoin_keys: Vec<u64>,
    /// Rejoins per size.
    #[arg(long, default_value_t = 3)]
    pub rejoins: u32,
    /// Transactions on the old primary that the backup never received.
    #[arg(long, default_value_t = 1000)]
    pub divergence: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    machine: Machine,
    switchover: Option<SwitchoverReport>,
    failover: Option<FailoverReport>,
    rejoin: Option<RejoinReport>,
}

#[derive(Debug, Default, Serialize)]
struct Machine {
    nproc: usize,
    loadavg_start: String,
    loadavg_end: String,
}

#[derive(Debug, Serialize)]
struct SwitchoverReport {
    pair_dir: String,
    sync: &'static str,
    clients: u32,
    rate: f64,
    runs: Vec<SwitchoverRun>,
    acknowledged: u64,
    refused: u64,
    unknown: u64,
    client_outage_ms: Stats,
    drain_to_promote_ms: Stats,
    drain_to_reverse_ms: Stats,
    command_wall_ms: Stats,
    goal: String,
    goal_met: bool,
}

#[derive(Debug, Serialize)]
struct SwitchoverRun {
    to: String,
    ok: bool,
    exit_code: Option<i32>,
    outcome: String,
    command_wall_ms: f64,
    total_ms: f64,
    phases: Vec<(String, f64)>,
    drain_to_promote_ms: f64,
    drain_to_reverse_ms: f64,
    client_outage_ms: f64,
    /// The longest gap's start and end, relative to the command's start.
    gap_from_ms: f64,
    gap_to_ms: f64,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Stats {
    n: usize,
    median: f64,
    max: f64,
    min: f64,
}

impl Stats {
    fn of(values: &[f64]) -> Stats {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Stats::default();
        }
        let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
        Stats { n: v.len(), median, max: v[v.len() - 1], min: v[0] }
    }
}

#[derive(Debug, Serialize)]
struct FailoverReport {
    pair_dir: String,
    on_peer_loss: String,
    runs: Vec<FailoverRun>,
    detection_ms: Stats,
    failover_command_wall_ms: Stats,
    failover_total_ms: Stats,
    kill_to_first_write_ms: Stats,
}

#[derive(Debug, Serialize)]
struct FailoverRun {
    killed: String,
    to: String,
    ok: bool,
    outcome: String,
    /// SIGKILL to the failover command's start (immediate here: no detector).
    detection_ms: f64,
    command_wall_ms: f64,
    total_ms: f64,
    phases: Vec<(String, f64)>,
    /// SIGKILL to the first write acknowledged by the new primary.
    kill_to_first_write_ms: f64,
    probe_attempts: u64,
    rejoin_ok: bool,
}

#[derive(Debug, Serialize)]
struct RejoinReport {
    divergence: u64,
    sizes: Vec<RejoinSize>,
    ratio_largest_to_smallest: Option<f64>,
    ratio_goal: String,
    ratio_goal_met: Option<bool>,
    full_copy: Option<FullCopy>,
    speedup_vs_full_copy: Option<f64>,
    speedup_goal: String,
    speedup_goal_met: Option<bool>,
}

#[derive(Debug, Serialize)]
struct RejoinSize {
    keys: u64,
    pair_dir: String,
    load_seconds: f64,
    load_keys_per_second: f64,
    backup_caught_up_seconds: f64,
    runs: Vec<RejoinRun>,
    rejoin_total_ms: Stats,
}

#[derive(Debug, Serialize)]
struct RejoinRun {
    node: String,
    ok: bool,
    outcome: String,
    divergent_writes_acknowledged: u64,
    orphaned: Value,
    command_wall_ms: f64,
    total_ms: f64,
    phases: Vec<(String, f64)>,
}

#[derive(Debug, Serialize)]
struct FullCopy {
    what: String,
    keys: u64,
    /// Until the fresh pair's primary acknowledged the last MSET.
    primary_acked_seconds: f64,
    /// Until the fresh pair's backup had applied everything as well.
    backup_caught_up_seconds: f64,
    keys_per_second: f64,
}

/// The CLI's entry point.
pub fn main(options: Options) -> Result<u8, Error> {
    for part in &options.parts {
        if !["switchover", "failover", "rejoin"].contains(&part.as_str()) {
            return Err(Error::Usage(format!("unknown part {part:?}: use switchover, failover, rejoin")));
        }
    }
    if options.switchovers == 0
        || options.clients == 0
        || !(options.rate.is_finite() && options.rate > 0.0)
        || options.rejoins == 0
    {
        return Err(Error::Usage("--switchovers, --clients, --rate and --rejoins must be above 0".into()));
    }
    let exe = std::env::current_exe()
        .map_err(|source| Error::Io { context: "finding the hotpair executable".into(), source })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| Error::Io { context: "starting the async runtime".into(), source })?;
    let report = runtime.block_on(run_all(&options, exe))?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    if options.json {
        println!("{}", serde_json::to_string(&report).map_err(|e| Error::Failed(format!("encoding: {e}")))?);
    } else {
        print!("{}", table(&report));
    }
    Ok(0)
}

async fn run_all(options: &Options, exe: std::path::PathBuf) -> Result<Report, Error> {
    let wants = |p: &str| options.parts.is_empty() || options.parts.iter().any(|x| x == p);
    let mut report = Report {
        machine: Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
        },
        ..Report::default()
    };
    if wants("switchover") {
        report.switchover = Some(switchover_part(options, exe.clone()).await?);
    }
    if wants("failover") {
        report.failover = Some(failover_part(options, exe.clone()).await?);
    }
    if wants("rejoin") {
        report.rejoin = Some(rejoin_part(options, exe).await?);
    }
    report.machine.loadavg_end = loadavg();
    Ok(report)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string()
}

fn progress(line: &str) {
    eprintln!("[bench orchestrator] {line}");
}

fn ms(origin: Instant) -> f64 {
    origin.elapsed().as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------------
// Subprocesses and status

/// What one `hotpair … --json` run answered.
struct CliResult {
    code: Option<i32>,
    json: Value,
    wall_ms: f64,
    stderr: String,
}

impl CliResult {
    fn ok(&self) -> bool {
        self.code == Some(0) && self.json["ok"] != false
    }

    fn outcome(&self) -> String {
        match self.json["outcome"].as_str() {
            Some(text) => text.to_string(),
            None => self.stderr.lines().next().unwrap_or("").to_string(),
        }
    }

    fn phases(&self) -> Vec<(String, f64)> {
        self.json["phases"]
            .as_array()
            .map(|p| {
                p.iter()
                    .map(|p| (p["name"].as_str().unwrap_or("?").to_string(), p["ms"].as_f64().unwrap_or(f64::NAN)))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn total_ms(&self) -> f64 {
        self.json["total_ms"].as_f64().unwrap_or(f64::NAN)
    }

    fn phase_sum(&self, names: &[&str]) -> f64 {
        let phases = self.phases();
        if !names.iter().all(|n| phases.iter().any(|(p, _)| p == n)) {
            return f64::NAN;
        }
        phases.iter().filter(|(p, _)| names.contains(&p.as_str())).map(|(_, ms)| ms).sum()
    }
}

async fn cli(pair: &DrillPair, args: &[&str]) -> Result<CliResult, Error> {
    let started = Instant::now();
    let child = tokio::process::Command::new(pair.exe())
        .arg("--pair")
        .arg(&pair.pair_file)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CLI_TIMEOUT, child)
        .await
        .map_err(|_| Error::Failed(format!("`hotpair {}` did not end in time", args.join(" "))))?
        .map_err(|source| Error::Io { context: format!("running hotpair {}", args.join(" ")), source })?;
    let wall_ms = ms(started);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok().filter(Value::is_object))
        .unwrap_or(Value::Null);
    Ok(CliResult { code: out.status.code(), json, wall_ms, stderr: String::from_utf8_lossy(&out.stderr).into() })
}

async fn cli_checked(pair: &DrillPair, args: &[&str]) -> Result<CliResult, Error> {
    let result = cli(pair, args).await?;
    if !result.ok() {
        return Err(Error::Failed(format!(
            "`hotpair {}` failed (exit {:?}): {}\n{}",
            args.join(" "),
            result.code,
            result.outcome(),
            pair.logs_for_failure()
        )));
    }
    Ok(result)
}

fn primary_of(status: &Value) -> Option<String> {
    hotpair::drill::primary_of(status)
}

/// Waits until a primary answers and the other node (a backup) has applied its LSN.
async fn wait_caught_up(pair: &DrillPair, limit: Duration) -> Result<(String, String), Error> {
    let started = Instant::now();
    loop {
        let status = pair.status().await;
        if let Some(primary) = primary_of(&status) {
            let backup = pair.names().into_iter().find(|n| *n != primary).unwrap_or_default();
            let p = pair.node_status(&primary).await;
            let b = pair.node_status(&backup).await;
            let (pl, bl) = (p["lsn"].as_u64().unwrap_or(u64::MAX), b["lsn"].as_u64().unwrap_or(0));
            if p["role"] == "primary"
                && b["role"] == "backup"
                && b["remote_journal"] != "diverged"
                && bl >= pl
                && p["peer"]["connected"] == true
            {
                return Ok((primary, backup));
            }
        }
        if started.elapsed() > limit {
            return Err(Error::Failed(format!("the backup did not catch up within {limit:?}; last status {status}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn index_of(pair: &DrillPair, node: &str) -> usize {
    pair.names().iter().position(|n| n == node).unwrap_or(0)
}

fn set_frame(key: &str, value: &[u8]) -> Frame {
    Frame::array(vec![
        Frame::bulk(Bytes::from_static(b"SET")),
        Frame::bulk(Bytes::from(key.as_bytes().to_vec())),
        Frame::bulk(Bytes::from(value.to_vec())),
    ])
}

fn is_ok(frame: &Frame) -> bool {
    matches!(frame, Frame::Simple(text) if text == "OK")
}

// ---------------------------------------------------------------------------------------------
// Part 1: switchover under load

/// One writer's record: the times (ms since `origin`) of its acknowledgements, and its counts.
#[derive(Default)]
struct WriterLog {
    acks: Vec<f64>,
    refused: u64,
    unknown: u64,
    rounds_paused: u64,
}

async fn writer(
    id: u32,
    nodes: Arc<Vec<SocketAddr>>,
    interval: Duration,
    origin: Instant,
    mut stop: watch::Receiver<bool>,
) -> WriterLog {
    let mut log = WriterLog::default();
    let mut conns: Vec<Option<RespConn>> = nodes.iter().map(|_| None).collect();
    let mut node = 0usize;
    let mut seq = 0u64;
    let mut next = tokio::time::Instant::now() + interval.mul_f64(f64::from(id) / 8.0);
    let value = vec![b'v'; VALUE_BYTES];
    loop {
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep_until(next) => {}
        }
        if *stop.borrow() {
            break;
        }
        // One write: try the current node, then at once the other; pause only after both refused.
        let key = format!("bench:w{id}:k{}", seq % 1000);
        seq += 1;
        let request = set_frame(&key, &value);
        let mut refusals_in_a_row = 0;
        loop {
            if *stop.borrow() {
                break;
            }
            if conns[node].is_none() {
                conns[node] = RespConn::connect(nodes[node], Duration::from_secs(1)).await.ok();
            }
            let reply = match conns[node].as_mut() {
                Some(conn) => tokio::time::timeout(Duration::from_secs(10), conn.request(&request)).await,
                None => Ok(Err(std::io::Error::other("connect failed"))),
            };
            match reply {
                Ok(Ok(frame)) if is_ok(&frame) => {
                    log.acks.push(ms(origin));
                    break;
                }
                Ok(Ok(Frame::Error(_))) => log.refused += 1,
                Ok(Ok(_)) => log.refused += 1,
                Ok(Err(_)) | Err(_) => {
                    log.unknown += 1;
                    conns[node] = None;
                }
            }
            node = (node + 1) % nodes.len();
            refusals_in_a_row += 1;
            if refusals_in_a_row % 2 == 0 {
                log.rounds_paused += 1;
                tokio::time::sleep(ROUND_PAUSE).await;
            }
        }
        next += interval;
        let now = tokio::time::Instant::now();
        if next < now {
            next = now;
        }
    }
    log
}

/// The longest gap between consecutive acknowledgements that overlaps `[from, to]`.
fn longest_gap(acks: &[f64], from: f64, to: f64) -> (f64, f64) {
    let mut best = (from, from);
    for w in acks.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b >= from && a <= to && b - a > best.1 - best.0 {
            best = (a, b);
        }
    }
    best
}

async fn switchover_part(options: &Options, exe: std::path::PathBuf) -> Result<SwitchoverReport, Error> {
    progress(&format!("switchover: spawning a pair (sync {})", options.sync.name()));
    let settings = PairSettings { sync: options.sync, ..PairSettings::default() };
    let pair = DrillPair::spawn(&settings, exe).await.map_err(Error::from)?;
    progress(&format!("switchover: pair in {}", pair.dir.display()));
    wait_caught_up(&pair, Duration::from_secs(30)).await?;
    let origin = Instant::now();
    let (stop, _) = watch::channel(false);
    let nodes = Arc::new(pair.data_addresses());
    let interval = Duration::from_secs_f64(f64::from(options.clients) / options.rate);
    let tasks: Vec<_> = (0..options.clients)
        .map(|id| tokio::spawn(writer(id, nodes.clone(), interval, origin, stop.subscribe())))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut windows = Vec::new();
    let mut results = Vec::new();
    for i in 0..options.switchovers {
        let (primary, backup) = wait_caught_up(&pair, Duration::from_secs(60)).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let from = ms(origin);
        let result = cli(&pair, &["switchover", "--to", &backup, "--json"]).await?;
        let to = ms(origin);
        progress(&format!(
            "switchover {}/{}: {primary} → {backup}: exit {:?}, {:.1} ms wall",
            i + 1,
            options.switchovers,
            result.code,
            result.wall_ms
        ));
        windows.push((from, to));
        results.push((backup, result));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = stop.send(true);
    let mut acks = Vec::new();
    let (mut refused, mut unknown, mut paused) = (0, 0, 0);
    for task in tasks {
        let log = task.await.map_err(|e| Error::Failed(format!("a writer task failed: {e}")))?;
        acks.extend(log.acks);
        refused += log.refused;
        unknown += log.unknown;
        paused += log.rounds_paused;
    }
    acks.sort_by(f64::total_cmp);
    progress(&format!("switchover: {} writes acknowledged, {refused} refused, {paused} paused rounds", acks.len()));
    let mut runs = Vec::new();
    for ((from, to), (node, result)) in windows.into_iter().zip(results) {
        let (gap_from, gap_to) = longest_gap(&acks, from, to);
        runs.push(SwitchoverRun {
            to: node,
            ok: result.ok(),
            exit_code: result.code,
            outcome: result.outcome(),
            command_wall_ms: result.wall_ms,
            total_ms: result.total_ms(),
            phases: result.phases(),
            drain_to_promote_ms: result.phase_sum(&["drain", "wait-applied", "demote", "promote"]),
            drain_to_reverse_ms: result.phase_sum(&["drain", "wait-applied", "demote", "promote", "reverse"]),
            client_outage_ms: gap_to - gap_from,
            gap_from_ms: gap_from - from,
            gap_to_ms: gap_to - from,
        });
    }
    let verify = cli(&pair, &["verify", "--json"]).await?;
    progress(&format!("switchover: verify: {}", verify.outcome()));
    let pick = |f: fn(&SwitchoverRun) -> f64| runs.iter().filter(|r| r.ok).map(f).collect::<Vec<_>>();
    let client = Stats::of(&pick(|r| r.client_outage_ms));
    Ok(SwitchoverReport {
        pair_dir: pair.dir.display().to_string(),
        sync: options.sync.name(),
        clients: options.clients,
        rate: options.rate,
        acknowledged: acks.len() as u64,
        refused,
        unknown,
        client_outage_ms: client,
        drain_to_promote_ms: Stats::of(&pick(|r| r.drain_to_promote_ms)),
        drain_to_reverse_ms: Stats::of(&pick(|r| r.drain_to_reverse_ms)),
        command_wall_ms: Stats::of(&pick(|r| r.command_wall_ms)),
        goal: format!("median client-side write outage under {GOAL_SWITCHOVER_MEDIAN_MS} ms"),
        goal_met: client.n == runs.len() && client.median < GOAL_SWITCHOVER_MEDIAN_MS,
        runs,
    })
}

// ---------------------------------------------------------------------------------------------
// Part 2: failover

async fn failover_part(options: &Options, exe: std::path::PathBuf) -> Result<FailoverReport, Error> {
    progress("failover: spawning a pair (sync durable, on_peer_loss degrade-after:0s)");
    let settings =
        PairSettings { on_peer_loss: Some(PeerLossPolicy::DegradeAfter(Duration::ZERO)), ..PairSettings::default() };
    let mut pair = DrillPair::spawn(&settings, exe).await.map_err(Error::from)?;
    progress(&format!("failover: pair in {}", pair.dir.display()));
    let mut runs = Vec::new();
    for i in 0..options.failovers {
        let (primary, backup) = wait_caught_up(&pair, Duration::from_secs(60)).await?;
        // Some data first, so that the backup has something to apply.
        load_keys(pair.data_addresses()[index_of(&pair, &primary)], &format!("fo{i}"), 2000).await?;
        wait_caught_up(&pair, Duration::from_secs(60)).await?;
        let address = pair.data_addresses()[index_of(&pair, &backup)];
        let mut conn = RespConn::connect(address, Duration::from_secs(1)).await.map_err(failed_io("probe"))?;
        pair.kill(&primary).map_err(Error::from)?;
        let killed = Instant::now();
        let command = {
            let args = ["failover", "--to", backup.as_str(), "--json"];
            let detection_ms = ms(killed);
            let pair_ref = &pair;
            let prober = async {
                let mut attempts = 0u64;
                let request = set_frame("bench:failover-probe", b"x");
                loop {
                    attempts += 1;
                    match conn.request(&request).await {
                        Ok(frame) if is_ok(&frame) => return Ok((ms(killed), attempts)),
                        Ok(_) => tokio::time::sleep(PROBE_PAUSE).await,
                        Err(e) => return Err(Error::Failed(format!("the probe lost its connection to {backup}: {e}"))),
                    }
                    if killed.elapsed() > Duration::from_secs(60) {
                        return Err(Error::Failed("no write acknowledged within 60 s of the kill".into()));
                    }
                }
            };
            let (result, probe) = tokio::join!(cli(pair_ref, &args), prober);
            (detection_ms, result?, probe?)
        };
        let (detection_ms, result, (first_write_ms, probe_attempts)) = command;
        progress(&format!(
            "failover {}/{}: kill {primary}, failover to {backup}: exit {:?}, first write at {first_write_ms:.1} ms",
            i + 1,
            options.failovers,
            result.code
        ));
        pair.restart(&primary).await.map_err(Error::from)?;
        let rejoin = cli(&pair, &["rejoin", &primary, "--json"]).await?;
        if !rejoin.ok() {
            progress(&format!("failover: rejoin of {primary} failed: {}", rejoin.outcome()));
        }
        runs.push(FailoverRun {
            killed: primary,
            to: backup,
            ok: result.ok(),
            outcome: result.outcome(),
            detection_ms,
            command_wall_ms: result.wall_ms,
            total_ms: result.total_ms(),
            phases: result.phases(),
            kill_to_first_write_ms: first_write_ms,
            probe_attempts,
            rejoin_ok: rejoin.ok(),
        });
        if !rejoin.ok() {
            break;
        }
    }
    let pick = |f: fn(&FailoverRun) -> f64| runs.iter().filter(|r| r.ok).map(f).collect::<Vec<_>>();
    Ok(FailoverReport {
        pair_dir: pair.dir.display().to_string(),
        on_peer_loss: "degrade-after:0s".into(),
        detection_ms: Stats::of(&pick(|r| r.detection_ms)),
        failover_command_wall_ms: Stats::of(&pick(|r| r.command_wall_ms)),
        failover_total_ms: Stats::of(&pick(|r| r.total_ms)),
        kill_to_first_write_ms: Stats::of(&pick(|r| r.kill_to_first_write_ms)),
        runs,
    })
}

fn failed_io(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Failed(format!("{what}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Loading and copying

fn key(prefix: &str, i: u64) -> String {
    format!("bench:{prefix}:{i:08}")
}

fn mset_frame(pairs: impl Iterator<Item = (String, Bytes)>) -> Frame {
    let mut args = vec![Frame::bulk(Bytes::from_static(b"MSET"))];
    for (k, v) in pairs {
        args.push(Frame::bulk(Bytes::from(k.into_bytes())));
        args.push(Frame::bulk(v));
    }
    Frame::array(args)
}

fn value_of(i: u64) -> Bytes {
    let mut v = format!("v{i}:").into_bytes();
    v.resize(VALUE_BYTES, b'x');
    Bytes::from(v)
}

/// Sends `frames` over `conn` with up to [`PIPELINE`] in flight, handing each reply to
/// `on_reply`; an error reply ends it with an error.
async fn pipelined(conn: &mut RespConn, frames: Vec<Frame>, mut on_reply: impl FnMut(Frame)) -> Result<(), Error> {
    let mut in_flight = 0usize;
    let mut frames = frames.into_iter().peekable();
    while frames.peek().is_some() || in_flight > 0 {
        while in_flight < PIPELINE {
            let Some(frame) = frames.next() else { break };
            conn.send(std::slice::from_ref(&frame)).await.map_err(failed_io("sending"))?;
            in_flight += 1;
        }
        let reply = conn.read_frame().await.map_err(failed_io("reading a reply"))?;
        in_flight -= 1;
        if let Frame::Error(e) = &reply {
            return Err(Error::Failed(format!("the server answered an error: {e}")));
        }
        on_reply(reply);
    }
    Ok(())
}

/// Writes `count` keys `bench:{prefix}:{i}` by MSET batches of [`MSET_PAIRS`], two connections.
async fn load_keys(address: SocketAddr, prefix: &str, count: u64) -> Result<(), Error> {
    let connections = 2u64;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut conn = RespConn::connect(address, Duration::from_secs(2)).await.map_err(failed_io("connecting"))?;
            let batches: Vec<u64> = (0..count).step_by(MSET_PAIRS).collect();
            // Frames are built 16 batches at a time, to bound memory.
            for group in batches.iter().skip(c as usize).step_by(connections as usize).collect::<Vec<_>>().chunks(16) {
                let frames = group
                    .iter()
                    .map(|&&start| {
                        let end = (start + MSET_PAIRS as u64).min(count);
                        mset_frame((start..end).map(|i| (key(&prefix, i), value_of(i))))
                    })
                    .collect();
                pipelined(&mut conn, frames, |_| {}).await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| Error::Failed(format!("a loader task failed: {e}")))??;
    }
    Ok(())
}

/// Copies `count` keys `bench:{prefix}:{i}` from `source` to `target`: pipelined MGETs of
/// [`MSET_PAIRS`] keys, each answer written back as one MSET. Returns the keys copied.
async fn copy_keys(source: SocketAddr, target: SocketAddr, prefix: &str, count: u64) -> Result<u64, Error> {
    let mut from = RespConn::connect(source, Duration::from_secs(2)).await.map_err(failed_io("connecting"))?;
    let mut to = RespConn::connect(target, Duration::from_secs(2)).await.map_err(failed_io("connecting"))?;
    let mut copied = 0u64;
    let starts: Vec<u64> = (0..count).step_by(MSET_PAIRS).collect();
    for group in starts.chunks(PIPELINE) {
        let mut names = Vec::new();
        let frames = group
            .iter()
            .map(|&start| {
                let end = (start + MSET_PAIRS as u64).min(count);
                let keys: Vec<String> = (start..end).map(|i| key(prefix, i)).collect();
                let mut args = vec![Frame::bulk(Bytes::from_static(b"MGET"))];
                args.extend(keys.iter().map(|k| Frame::bulk(Bytes::from(k.clone().into_bytes()))));
                names.push(keys);
                Frame::array(args)
            })
            .collect();
        let mut answers = Vec::new();
        pipelined(&mut from, frames, |reply| answers.push(reply)).await?;
        let mut writes = Vec::new();
        for (keys, answer) in names.into_iter().zip(answers) {
            let Frame::Array(Some(values)) = answer else {
                return Err(Error::Failed(format!("MGET answered {answer:?}")));
            };
            let pairs: Vec<(String, Bytes)> = keys
                .into_iter()
                .zip(values)
                .filter_map(|(k, v)| match v {
                    Frame::Bulk(Some(v)) => Some((k, v)),
                    _ => None,
                })
                .collect();
            copied += pairs.len() as u64;
            if !pairs.is_empty() {
                writes.push(mset_frame(pairs.into_iter()));
            }
        }
        pipelined(&mut to, writes, |_| {}).await?;
    }
    Ok(copied)
}

// ---------------------------------------------------------------------------------------------
// Part 3: rejoin

async fn rejoin_part(options: &Options, exe: std::path::PathBuf) -> Result<RejoinReport, Error> {
    let mut sizes = Vec::new();
    let mut full_copy = None;
    let largest = options.rejoin_keys.iter().copied().max().unwrap_or(0);
    for &keys in &options.rejoin_keys {
        progress(&format!("rejoin: spawning a pair (sync async) for {keys} keys"));
        let settings = PairSettings { sync: SyncLevel::Async, ..PairSettings::default() };
        let mut pair = DrillPair::spawn(&settings, exe.clone()).await.map_err(Error::from)?;
        progress(&format!("rejoin: pair in {}", pair.dir.display()));
        let (primary, _) = wait_caught_up(&pair, Duration::from_secs(30)).await?;
        let started = Instant::now();
        load_keys(pair.data_addresses()[index_of(&pair, &primary)], "db", keys).await?;
        let load_seconds = started.elapsed().as_secs_f64();
        progress(&format!("rejoin: loaded {keys} keys in {load_seconds:.1} s; waiting for the backup"));
        wait_caught_up(&pair, Duration::from_secs(1800)).await?;
        let backup_caught_up_seconds = started.elapsed().as_secs_f64();
        let mut runs = Vec::new();
        for round in 0..options.rejoins {
            let run = rejoin_round(&mut pair, options.divergence, round).await?;
            progress(&format!(
                "rejoin {keys} keys, round {}: {} ok={} total {:.1} ms ({})",
                round + 1,
                run.node,
                run.ok,
                run.total_ms,
                phases_text(&run.phases)
            ));
            let ok = run.ok;
            runs.push(run);
            if !ok {
                break;
            }
        }
        if keys == largest {
            progress(&format!("full copy baseline: copying {keys} keys into a fresh pair"));
            full_copy = Some(full_copy_baseline(&pair, keys, exe.clone()).await?);
        }
        let totals: Vec<f64> = runs.iter().filter(|r| r.ok).map(|r| r.total_ms).collect();
        sizes.push(RejoinSize {
            keys,
            pair_dir: pair.dir.display().to_string(),
            load_seconds,
            load_keys_per_second: keys as f64 / load_seconds,
            backup_caught_up_seconds,
            rejoin_total_ms: Stats::of(&totals),
            runs,
        });
    }
    let smallest = sizes.iter().min_by_key(|s| s.keys);
    let biggest = sizes.iter().max_by_key(|s| s.keys);
    let ratio = match (smallest, biggest) {
        (Some(s), Some(b)) if s.keys != b.keys && s.rejoin_total_ms.n > 0 && b.rejoin_total_ms.n > 0 => {
            Some(b.rejoin_total_ms.median / s.rejoin_total_ms.median)
        }
        _ => None,
    };
    let speedup = match (&full_copy, biggest) {
        (Some(copy), Some(b)) if b.rejoin_total_ms.n > 0 => {
            Some(copy.primary_acked_seconds * 1000.0 / b.rejoin_total_ms.median)
        }
        _ => None,
    };
    Ok(RejoinReport {
        divergence: options.divergence,
        sizes,
        ratio_largest_to_smallest: ratio,
        ratio_goal: format!("largest/smallest median rejoin total ≤ {GOAL_REJOIN_RATIO}"),
        ratio_goal_met: ratio.map(|r| r <= GOAL_REJOIN_RATIO),
        full_copy,
        speedup_vs_full_copy: speedup,
        speedup_goal: format!(
            "rejoin at least {GOAL_FULL_COPY_SPEEDUP}x faster than the full copy (its primary-acknowledged time)"
        ),
        speedup_goal_met: speedup.map(|s| s >= GOAL_FULL_COPY_SPEEDUP),
    })
}

/// One divergence and its rejoin; the roles swap each round.
async fn rejoin_round(pair: &mut DrillPair, divergence: u64, round: u32) -> Result<RejoinRun, Error> {
    // `replicate stop` without a node stops both, and a stopped node keeps refusing to ship
    // after it is promoted: start both, then stop only the primary.
    cli_checked(pair, &["replicate", "start"]).await?;
    let (primary, backup) = wait_caught_up(pair, Duration::from_secs(600)).await?;
    cli_checked(pair, &["replicate", "stop", &primary]).await?;
    let address = pair.data_addresses()[index_of(pair, &primary)];
    let mut conn = RespConn::connect(address, Duration::from_secs(2)).await.map_err(failed_io("connecting"))?;
    let frames: Vec<Frame> =
        (0..divergence).map(|i| set_frame(&key(&format!("div{round}"), i), &value_of(i))).collect();
    let mut acknowledged = 0u64;
    for chunk in frames.chunks(64) {
        pipelined(&mut conn, chunk.to_vec(), |reply| acknowledged += u64::from(is_ok(&reply))).await?;
    }
    drop(conn);
    pair.kill(&primary).map_err(Error::from)?;
    cli_checked(pair, &["failover", "--to", &backup, "--json"]).await?;
    let address = pair.data_addresses()[index_of(pair, &backup)];
    let mut conn = RespConn::connect(address, Duration::from_secs(2)).await.map_err(failed_io("connecting"))?;
    let frames: Vec<Frame> =
        (0..WRITES_AFTER_FAILOVER as u64).map(|i| set_frame(&key(&format!("new{round}"), i), b"after")).collect();
    pipelined(&mut conn, frames, |_| {}).await?;
    pair.restart(&primary).await.map_err(Error::from)?;
    let result = cli(pair, &["rejoin", &primary, "--json"]).await?;
    let _ = cli(pair, &["replicate", "start"]).await;
    Ok(RejoinRun {
        node: primary,
        ok: result.ok(),
        outcome: result.outcome(),
        divergent_writes_acknowledged: acknowledged,
        orphaned: result.json["details"]["orphaned"].clone(),
        command_wall_ms: result.wall_ms,
        total_ms: result.total_ms(),
        phases: result.phases(),
    })
}

async fn full_copy_baseline(source_pair: &DrillPair, keys: u64, exe: std::path::PathBuf) -> Result<FullCopy, Error> {
    let (source, _) = wait_caught_up(source_pair, Duration::from_secs(600)).await?;
    let source_address = source_pair.data_addresses()[index_of(source_pair, &source)];
    let settings = PairSettings { sync: SyncLevel::Async, ..PairSettings::default() };
    let target_pair = DrillPair::spawn(&settings, exe).await.map_err(Error::from)?;
    let (target, _) = wait_caught_up(&target_pair, Duration::from_secs(30)).await?;
    let target_address = target_pair.data_addresses()[index_of(&target_pair, &target)];
    let started = Instant::now();
    let copied = copy_keys(source_address, target_address, "db", keys).await?;
    let primary_acked_seconds = started.elapsed().as_secs_f64();
    wait_caught_up(&target_pair, Duration::from_secs(1800)).await?;
    let backup_caught_up_seconds = started.elapsed().as_secs_f64();
    progress(&format!(
        "full copy: {copied} keys, primary acknowledged after {primary_acked_seconds:.1} s, backup caught up after {backup_caught_up_seconds:.1} s"
    ));
    Ok(FullCopy {
        what: "client-side copy: pipelined MGET of every key (known names) from the current primary, each answer \
               written as one MSET to a fresh pair's primary (sync async)"
            .into(),
        keys: copied,
        primary_acked_seconds,
        backup_caught_up_seconds,
        keys_per_second: copied as f64 / primary_acked_seconds,
    })
}

// ---------------------------------------------------------------------------------------------
// The table

fn table(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let m = &report.machine;
    let _ = writeln!(out, "machine: {} cores; loadavg at start {}, at end {}", m.nproc, m.loadavg_start, m.loadavg_end);
    let stat = |s: &Stats| format!("{:>9.1} {:>9.1} {:>9.1}", s.median, s.min, s.max);
    if let Some(s) = &report.switchover {
        let _ = writeln!(
            out,
            "\nswitchover under load ({} clients, {} writes/s, sync {}; pair {})",
            s.clients, s.rate, s.sync, s.pair_dir
        );
        let _ = writeln!(
            out,
            "  {:>3} {:>3} {:>5} {:>10} {:>10} {:>10} {:>10}  gap (from command start)",
            "#", "to", "ok", "client", "drain→pro", "drain→rev", "wall"
        );
        for (i, r) in s.runs.iter().enumerate() {
            let _ = writeln!(
                out,
                "  {:>3} {:>3} {:>5} {:>10.1} {:>10.1} {:>10.1} {:>10.1}  {:.1}..{:.1} ms",
                i + 1,
                r.to,
                r.ok,
                r.client_outage_ms,
                r.drain_to_promote_ms,
                r.drain_to_reverse_ms,
                r.command_wall_ms,
                r.gap_from_ms,
                r.gap_to_ms
            );
        }
        let _ = writeln!(out, "  {:<34} {:>9} {:>9} {:>9}", "ms", "median", "min", "max");
        let _ = writeln!(out, "  {:<34} {}", "client-side write outage", stat(&s.client_outage_ms));
        let _ = writeln!(out, "  {:<34} {}", "orchestrator drain→promote", stat(&s.drain_to_promote_ms));
        let _ = writeln!(out, "  {:<34} {}", "orchestrator drain→reverse", stat(&s.drain_to_reverse_ms));
        let _ = writeln!(out, "  {:<34} {}", "switchover command (wall)", stat(&s.command_wall_ms));
        let _ =
            writeln!(out, "  writes: {} acknowledged, {} refused, {} unknown", s.acknowledged, s.refused, s.unknown);
        let _ = writeln!(out, "  goal: {}: {}", s.goal, if s.goal_met { "MET" } else { "MISSED" });
    }
    if let Some(f) = &report.failover {
        let _ =
            writeln!(out, "\nfailover (SIGKILL of the primary; on_peer_loss {}; pair {})", f.on_peer_loss, f.pair_dir);
        for (i, r) in f.runs.iter().enumerate() {
            let _ = writeln!(
                out,
                "  {:>3} kill {} → {}: ok {}, detection {:.2} ms, command {:.1} ms wall ({:.1} ms own), first write {:.1} ms after the kill; phases (ms): {}",
                i + 1,
                r.killed,
                r.to,
                r.ok,
                r.detection_ms,
                r.command_wall_ms,
                r.total_ms,
                r.kill_to_first_write_ms,
                phases_text(&r.phases)
            );
        }
        let _ = writeln!(out, "  {:<34} {:>9} {:>9} {:>9}", "ms", "median", "min", "max");
        let _ = writeln!(out, "  {:<34} {}", "detection (kill → command start)", stat(&f.detection_ms));
        let _ = writeln!(out, "  {:<34} {}", "failover command (wall)", stat(&f.failover_command_wall_ms));
        let _ = writeln!(out, "  {:<34} {}", "failover command (own total)", stat(&f.failover_total_ms));
        let _ = writeln!(out, "  {:<34} {}", "kill → first acknowledged write", stat(&f.kill_to_first_write_ms));
    }
    if let Some(r) = &report.rejoin {
        let _ = writeln!(out, "\nrejoin after a {}-transaction divergence (sync async)", r.divergence);
        for s in &r.sizes {
            let _ = writeln!(
                out,
                "  {} keys: loaded in {:.1} s ({:.0} keys/s), backup caught up after {:.1} s; pair {}",
                s.keys, s.load_seconds, s.load_keys_per_second, s.backup_caught_up_seconds, s.pair_dir
            );
            for run in &s.runs {
                let _ = writeln!(
                    out,
                    "    rejoin {}: ok {}, total {:.1} ms (wall {:.1}), orphaned {}, phases (ms): {}",
                    run.node,
                    run.ok,
                    run.total_ms,
                    run.command_wall_ms,
                    run.orphaned,
                    phases_text(&run.phases)
                );
            }
            let _ = writeln!(
                out,
                "    median {:.1} ms, min {:.1}, max {:.1}",
                s.rejoin_total_ms.median, s.rejoin_total_ms.min, s.rejoin_total_ms.max
            );
        }
        if let Some(ratio) = r.ratio_largest_to_smallest {
            let _ = writeln!(
                out,
                "  ratio largest/smallest: {ratio:.2} (goal: {}): {}",
                r.ratio_goal,
                verdict(r.ratio_goal_met)
            );
        }
        if let Some(copy) = &r.full_copy {
            let _ = writeln!(
                out,
                "  full copy baseline ({}): {} keys, {:.1} s until the primary acknowledged ({:.0} keys/s), {:.1} s until its backup caught up",
                copy.what, copy.keys, copy.primary_acked_seconds, copy.keys_per_second, copy.backup_caught_up_seconds
            );
        }
        if let Some(speedup) = r.speedup_vs_full_copy {
            let _ = writeln!(
                out,
                "  rejoin vs full copy: {speedup:.0}x (goal: {}): {}",
                r.speedup_goal,
                verdict(r.speedup_goal_met)
            );
        }
    }
    out
}

fn phases_text(phases: &[(String, f64)]) -> String {
    phases.iter().map(|(name, ms)| format!("{name} {ms:.1}")).collect::<Vec<_>>().join(", ")
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "MET",
        Some(false) => "MISSED",
        None => "not measured",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_overlapping_the_window() {
        let acks = [0.0, 10.0, 20.0, 100.0, 110.0, 300.0];
        assert_eq!(longest_gap(&acks, 25.0, 105.0), (20.0, 100.0));
        // A longer gap outside the window does not count.
        assert_eq!(longest_gap(&acks, 0.0, 15.0), (0.0, 10.0));
        assert_eq!(longest_gap(&acks, 105.0, 120.0), (110.0, 300.0));
        let s = Stats::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max, s.n), (2.5, 1.0, 10.0, 4));
    }
}
