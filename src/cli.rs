//! Command-line definitions (clap derive) and the dispatcher that turns a parsed command into
//! library calls, printed output and an exit code. `main.rs` calls [`run`], and [`run_with`] for
//! `hotpair bench`, whose arguments and code live in the binary (`src/bench/`), not the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::admin::init::NodeSpecs;
use crate::config::SyncLevel;
use crate::Error;

#[derive(Debug, Parser)]
#[command(name = "hotpair", version, about = "A hot-backup pair for a key-value database")]
pub struct Cli {
    /// The pair file (default: $HOTPAIR_PAIR, then ./pair.toml).
    #[arg(long, global = true)]
    pub pair: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Creates a new pair in DIR: pair.toml, a private CA with a certificate and key for each node
    /// and the admin (DIR/tls/), and a data directory per node. Refuses if DIR already holds one.
    Init {
        /// Directory to create the pair in (made if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The two nodes as NAME=CONTROL_ADDRESS; the first starts as primary. Each node's data
        /// (RESP) port is its control port + 1, its Sentinel port (for applications) + 2.
        #[arg(long, default_value = crate::admin::init::DEFAULT_NODES)]
        nodes: NodeSpecs,
        /// When a commit is acknowledged: async, received, durable or applied.
        #[arg(long, default_value_t = SyncLevel::Durable)]
        sync: SyncLevel,
        /// Require AUTH on the data ports: writes a random password to DIR/clients.pass (mode
        /// 0600) and `[clients] password_file` (`redis-cli -a "$(cat DIR/clients.pass)"`).
        #[arg(long)]
        client_password: bool,
        /// Serve the data ports over TLS: a certificate per node from the pair's CA
        /// (DIR/tls/<node>.data.pem), one for applications (DIR/tls/app.client.pem) and
        /// `[clients] tls = true` (`redis-cli --tls --cacert DIR/tls/ca.pem`).
        #[arg(long)]
        client_tls: bool,
    },
    /// Makes a new, empty data directory for NODE of this pair after its own was lost (disk
    /// replaced). Refuses unless the directory is missing or empty. Then start the node and run
    /// `hotpair rejoin NODE --allow-full-copy`, which makes the peer accept it and rebuilds it
    Reinit {
        /// The node's name in the pair file.
        node: String,
    },
    /// Runs one node in the foreground until SIGINT/SIGTERM (clean shutdown, journal synced).
    Run {
        /// The node's name in the pair file.
        node: String,
    },
    /// A primary-following proxy for clients without Sentinel support (redis-cli,
    /// redis-benchmark, legacy applications): forwards each client connection to the current
    /// primary, learns role changes from the nodes' Sentinel ports, and holds requests during a
    /// planned switchover instead of failing them (docs/clients.md). Runs until SIGINT/SIGTERM.
    Proxy {
        /// Address to accept clients on, e.g. 127.0.0.1:6379.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// How long a request may wait for a primary (a switchover, a failover) before it is
        /// answered -TRYAGAIN (never executed).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        hold_timeout: std::time::Duration,
        /// Most clients at once; one more is refused.
        #[arg(long, default_value_t = crate::proxy::DEFAULT_MAX_CONNECTIONS)]
        max_connections: usize,
        /// Worker threads. One keeps each request on one thread (the lowest added latency);
        /// more serve more clients at once.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Client certificate to present to data ports that ask for one ([clients]
        /// tls_auth_clients); default: tls/app.client.pem beside the pair's CA, if present.
        #[arg(long, requires = "client_key")]
        client_cert: Option<PathBuf>,
        /// The key of --client-cert.
        #[arg(long, requires = "client_cert")]
        client_key: Option<PathBuf>,
    },
    /// Both nodes at a glance: role, epoch, LSNs, lag, sync level, journals, peer link.
    Status {
        #[arg(long)]
        json: bool,
        /// Refresh every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Start or stop shipping to the backup, or close the current journal segment.
    Replicate {
        #[arg(value_enum)]
        action: ReplicateAction,
        /// The node to ask (default: both). reopen-log closes the segment of the journal the node
        /// is writing: its local journal on the primary, its remote journal on the backup.
        node: Option<String>,
    },
    /// Planned role swap with zero data loss: drain, wait until the backup applied everything,
    /// demote, promote, reverse replication, verify. Refuses (changing nothing) when the backup
    /// is not healthy or lags more than --max-lag. Re-running it after an interruption resumes.
    Switchover {
        /// The node to promote (default: the backup).
        #[arg(long)]
        to: Option<String>,
        /// Bound on waiting for the backup; also the drain lease (the primary resumes by itself).
        #[arg(long, default_value = "30s", value_parser = crate::config::parse_command_timeout)]
        timeout: std::time::Duration,
        /// Refuse when the backup is further behind than this.
        #[arg(long, default_value = "1s", value_parser = crate::config::parse_command_timeout)]
        max_lag: std::time::Duration,
        /// Print the readiness report and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// The primary is lost: promote NODE after it applied all it received. Refuses while the
    /// primary is reachable and healthy unless --force. Prints how many transactions it missed.
    /// With --force, NODE may also be a restarted primary whose backup is gone for good (it
    /// waits for the backup's word): it takes a new epoch alone (runbook procedure 13).
    Failover {
        #[arg(long)]
        to: String,
        /// Fail over although the primary is reachable and healthy, or another orchestration
        /// may be promoting the other node; or promote a restarted primary without its backup.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Catch-up + resynchronize NODE behind the current primary: save and undo its orphaned
    /// tail, then replay the primary's journal into it. Prints the divergence point and the
    /// orphans file.
    Rejoin {
        node: String,
        /// Allow a full copy when the journals needed are gone (not built yet: refused).
        #[arg(long)]
        allow_full_copy: bool,
        #[arg(long)]
        json: bool,
    },
    /// Rejoin the pair file's preferred primary if needed, wait until it caught up, and switch
    /// over back to it.
    Switchback {
        #[arg(long, default_value = "30s", value_parser = crate::config::parse_command_timeout)]
        timeout: std::time::Duration,
        #[arg(long)]
        json: bool,
    },
    /// Both nodes re-read their pair file and take what can change live, with no restart.
    ///
    /// Each node re-reads the pair file it was started with (and the client password and
    /// users files) and takes what can change live: sync, sync_timeout,
    /// on_peer_loss, heartbeat, disk_min_free, notify, monitor alerts, some limits, client
    /// passwords. Checked on both nodes first: a key that needs a restart (addresses,
    /// directories, certificates, cluster, names) is refused by name and nothing changes
    /// (exit 1). Exit 3: applied on one node only; run `hotpair reload` again. The full list of
    /// keys: docs/runbook.md, procedure 14.
    Reload {
        #[arg(long)]
        json: bool,
    },
    /// Compares both nodes' digests at one LSN; --full also recomputes each from the stored data.
    Verify {
        #[arg(long)]
        full: bool,
        #[arg(long)]
        json: bool,
    },
    /// Online backup of one node: a copy of its store and the journal records that make it
    /// consistent, with a manifest (cluster, node, LSN, digest, history, the journal's time
    /// range). Writes never stop. Back up the backup node where you can. OUT must be new or empty.
    Backup {
        /// The node to back up (its name in the pair file).
        node: String,
        /// The directory to write the backup into (made if missing; must be empty).
        #[arg(long)]
        out: PathBuf,
        /// Also copy the journal records from this LSN on (as far back as the node still holds
        /// them), so that the backup alone restores to points before its consistent LSN.
        #[arg(long)]
        journal_from: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Makes a NEW pair (new cluster id, CA and certificates, as `init` does) whose first node
    /// holds the data of BACKUP's pair as of a point in time, and whose second node holds the
    /// same copy. The recovery from a logical mistake (a FLUSHDB, a bad deploy). Without
    /// --to-lsn or --to-time it replays as far as the journals reach. Nothing of the old pair is
    /// changed.
    Restore {
        /// A directory written by `hotpair backup`.
        backup: PathBuf,
        /// Where to make the new pair (made if missing; must be empty).
        #[arg(long)]
        dir: PathBuf,
        /// The new pair's two nodes as NAME=CONTROL_ADDRESS (as for init); the first is primary.
        #[arg(long)]
        nodes: NodeSpecs,
        /// Stop after this LSN (its state exactly).
        #[arg(long, conflicts_with = "to_time")]
        to_lsn: Option<u64>,
        /// Stop before the first record stamped after this time: RFC 3339 in UTC
        /// (2026-12-05T10:31:02Z) or @<milliseconds since 1970>.
        #[arg(long, value_parser = crate::admin::journal_tools::parse_time)]
        to_time: Option<u64>,
        /// More journals to replay from (repeatable): a node's data directory, another backup,
        /// a journal directory, or the archive of trimmed segments. They reach further back
        /// (to LSN 1: points before the backup) or further on (after it) than the backup's own.
        #[arg(long = "journal")]
        journals: Vec<PathBuf>,
        /// The new pair's sync level (default: the old pair's).
        #[arg(long)]
        sync: Option<SyncLevel>,
        #[arg(long)]
        json: bool,
    },
    /// Certificate rotation: new identities from the pair's CA, taken by the running nodes
    /// without a restart; the old certificates are refused from then on.
    Certs {
        #[command(subcommand)]
        action: CertsAction,
    },
    /// What a rejoin set aside (the orphans file it names): show it, or re-apply chosen
    /// transactions as new writes on the current primary.
    Orphans {
        #[command(subcommand)]
        action: OrphansAction,
    },
    /// The etcd witness of automatic failover (`[witness]`, docs/witness.md): show what etcd
    /// holds (leader, epoch, pause), or pause and resume automatic decisions for maintenance.
    Witness {
        #[command(subcommand)]
        action: WitnessAction,
    },
    /// Offline journal tools on a node's journal directory (nothing is changed).
    Journal {
        #[command(subcommand)]
        action: JournalAction,
    },
    /// Shows the durable core at work: group commit, store apply, rewind, recovery.
    Demo {
        /// Directory to work in (default: a new temporary directory, removed afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Transactions to commit.
        #[arg(long, default_value_t = 20_000)]
        records: u64,
        /// Concurrent committers sharing the group commit.
        #[arg(long, default_value_t = 16)]
        committers: u64,
    },
    /// Runs a scripted drill (a playbook) against a pair it spawns or attaches to; exit 0 only if
    /// every expectation held. With --random SEED, a random fault schedule instead (printed first,
    /// so that it can be replayed).
    Drill {
        /// The playbook (TOML; see docs/drills.md).
        #[arg(required_unless_present = "random", conflicts_with = "random")]
        playbook: Option<PathBuf>,
        /// Run a random schedule of faults (kill -9, SIGSTOP, partition, restarts, switchover,
        /// failover, rejoin, switchback, a CLI killed mid-command) drawn from this seed.
        #[arg(long)]
        random: Option<u64>,
        /// Episodes (a fault and its repair) in the random schedule.
        #[arg(long, requires = "random", default_value_t = crate::drill::random::DEFAULT_EPISODES)]
        steps: u32,
        /// With --random: the pair gets an etcd witness (ttl 2s) run by the drill, and the
        /// schedule also draws witness faults (kill -9 or SIGSTOP of the primary repaired by
        /// automatic failover, etcd killed, a node cut from etcd); judged also by single_writer.
        #[arg(long, requires = "random")]
        witness: bool,
        /// Where to write the JSON report (the SVG timeline goes next to it, as .svg).
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Test helper: appends records with group commit forever, printing each durable LSN.
    #[command(hide = true)]
    AppendLoop {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 8)]
        committers: u64,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ReplicateAction {
    Start,
    Stop,
    ReopenLog,
}

#[derive(Debug, Subcommand)]
pub enum WitnessAction {
    /// The leader key (who holds the lease, in which epoch), the epoch key and the pause.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// No automatic failover or rejoin until `resume` (kept in etcd: holds across restarts).
    Pause,
    /// Automatic decisions again, as `[witness] failover` says.
    Resume,
}

#[derive(Debug, Subcommand)]
pub enum OrphansAction {
    /// Each orphaned transaction, oldest first: LSN, epoch, commit time, and per key the value
    /// before and after it.
    Show {
        file: PathBuf,
        /// The file's JSON lines, oldest first.
        #[arg(long)]
        json: bool,
    },
    /// Re-applies chosen transactions, in their order, as new writes through the current
    /// primary's data port. Refuses (writing nothing) when a key changed since the orphan's
    /// before-image, unless --force; skips a transaction already there. Safe to run again.
    Apply {
        file: PathBuf,
        /// A transaction to re-apply, by its LSN in the file (repeatable).
        #[arg(long = "lsn")]
        lsns: Vec<u64>,
        /// Every transaction in the file.
        #[arg(long, conflicts_with = "lsns")]
        all: bool,
        /// Print what would be sent, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write the orphan's values even over keys that changed since.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertsAction {
    /// New key and certificate for each identity asked (default: both nodes and the admin),
    /// signed by the pair's CA; the files the pair file names are replaced, running nodes take
    /// them at their next connection, and accept only them from then on (a stolen key is dead).
    /// With --ca: start a CA rotation (a new CA bundled with the old one; then rotate every
    /// identity and run `certs finish-ca`).
    Rotate {
        /// A node to renew (repeatable).
        #[arg(long = "node")]
        nodes: Vec<String>,
        /// Renew the admin's certificate.
        #[arg(long)]
        admin: bool,
        /// Start a CA rotation: a new CA key and certificate, trusted beside the old one.
        #[arg(long, conflicts_with_all = ["nodes", "admin"])]
        ca: bool,
        /// The CA's private key (default: ca.key next to the pair file's CA certificate).
        #[arg(long)]
        ca_key: Option<PathBuf>,
    },
    /// Ends a CA rotation once every identity was renewed: only the new CA stays trusted and the
    /// old CA key is removed.
    FinishCa {
        #[arg(long)]
        ca_key: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum JournalAction {
    /// Lists the segments with their LSN ranges, sizes and state.
    Ls {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Prints the records, from an LSN on.
    Dump {
        path: PathBuf,
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long)]
        json: bool,
    },
    /// Checks every segment and record, and a node's two journals together as one history
    /// (no LSN missing between them); exits 1 if anything is damaged.
    Verify {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The LSN of a time: the last record stamped at or before TIME (what `restore --to-time`
    /// stops after). PATH: a node's data directory, a backup, or a journal directory.
    FindTime {
        path: PathBuf,
        /// RFC 3339 in UTC (2026-12-05T10:31:02Z) or @<milliseconds since 1970>.
        #[arg(value_parser = crate::admin::journal_tools::parse_time)]
        time: u64,
        #[arg(long)]
        json: bool,
    },
}

/// Runs a parsed command; prints errors as one sentence and returns the exit code.
pub fn run(cli: Cli) -> ExitCode {
    run_with(|| dispatch(cli.pair, cli.command))
}

/// Runs `command` as [`run`] runs a parsed one: with logging set up, an error printed as one
/// sentence, and the exit code. `main.rs` runs `hotpair bench` (outside the library) through it.
pub fn run_with(command: impl FnOnce() -> Result<u8, Error>) -> ExitCode {
    init_tracing();
    match command() {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("hotpair: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HOTPAIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colour codes only for a terminal: a node's stderr is usually a log file that admins grep.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

fn dispatch(pair: Option<PathBuf>, command: Command) -> Result<u8, Error> {
    let load_pair = || crate::config::PairConfig::load(&crate::config::PairConfig::locate(pair.as_deref()));
    match command {
        Command::Run { node } => crate::node::run(load_pair()?, &node).map(|_| 0),
        Command::Proxy { listen, hold_timeout, max_connections, threads, client_cert, client_key } => {
            if max_connections == 0 || threads == 0 {
                return Err(Error::Usage("--max-connections and --threads must be at least 1".into()));
            }
            let client_identity =
                client_cert.zip(client_key).map(|(cert, key)| crate::tls::ClientIdentityFiles { cert, key });
            let options = crate::proxy::Options { listen, hold_timeout, max_connections, threads, client_identity };
            crate::proxy::main(load_pair()?, options).map(|_| 0)
        }
        Command::Reinit { node } => {
            print!("{}", crate::admin::init::reinit(&load_pair()?, &node)?);
            Ok(0)
        }
        Command::Status { json, watch } => status(&load_pair()?, json, watch),
        Command::Replicate { action, node } => replicate(&load_pair()?, action, node),
        Command::Switchover { to, timeout, max_lag, dry_run, json } => {
            let options = crate::orchestrator::commands::SwitchoverOptions { to, timeout, max_lag, dry_run, json };
            crate::admin::client::block_on(crate::orchestrator::switchover(&load_pair()?, options))
        }
        Command::Failover { to, force, json } => {
            crate::admin::client::block_on(crate::orchestrator::failover(&load_pair()?, &to, force, json))
        }
        Command::Rejoin { node, allow_full_copy, json } => {
            crate::admin::client::block_on(crate::orchestrator::rejoin(&load_pair()?, &node, allow_full_copy, json))
        }
        Command::Switchback { timeout, json } => {
            crate::admin::client::block_on(crate::orchestrator::switchback(&load_pair()?, timeout, json))
        }
        Command::Verify { full, json } => {
            crate::admin::client::block_on(crate::orchestrator::verify(&load_pair()?, full, json))
        }
        Command::Reload { json } => crate::admin::client::block_on(crate::orchestrator::reload(&load_pair()?, json)),
        Command::Init { dir, nodes, sync, client_password, client_tls } => {
            let options = crate::admin::init::InitOptions { client_password, client_tls };
            let report = crate::admin::init::init_with(&dir, &nodes, sync, options)?;
            print!("{}", report.text());
            Ok(0)
        }
        Command::Journal { action } => journal(action),
        Command::Witness { action } => {
            let action = match action {
                WitnessAction::Show { json } => crate::witness::command::Action::Show { json },
                WitnessAction::Pause => crate::witness::command::Action::Pause,
                WitnessAction::Resume => crate::witness::command::Action::Resume,
            };
            print!("{}", crate::witness::command::main(&load_pair()?, action)?);
            Ok(0)
        }
        Command::Orphans { action: OrphansAction::Show { file, json } } => {
            print!("{}", crate::admin::orphans::show(&file, json)?);
            Ok(0)
        }
        Command::Orphans { action: OrphansAction::Apply { file, lsns, all, dry_run, force } } => {
            let options = crate::admin::orphans::ApplyOptions { lsns, all, dry_run, force };
            print!("{}", crate::admin::orphans::apply(&load_pair()?, &file, &options)?);
            Ok(0)
        }
        Command::Certs { action: CertsAction::Rotate { nodes, admin, ca, ca_key } } => {
            let options = crate::admin::certs::RotateOptions { nodes, admin, ca, ca_key };
            print!("{}", crate::admin::certs::rotate(&load_pair()?, &options)?);
            Ok(0)
        }
        Command::Certs { action: CertsAction::FinishCa { ca_key } } => {
            print!("{}", crate::admin::certs::finish_ca(&load_pair()?, ca_key)?);
            Ok(0)
        }
        Command::Backup { node, out, journal_from, json } => crate::admin::backup::main(
            &load_pair()?,
            &crate::admin::backup::BackupOptions { node, out, journal_from, json },
        ),
        Command::Restore { backup, dir, nodes, to_lsn, to_time, journals, sync, json } => {
            let target = match (to_lsn, to_time) {
                (Some(lsn), _) => crate::admin::restore::Target::Lsn(lsn),
                (None, Some(ms)) => crate::admin::restore::Target::Time(ms),
                (None, None) => crate::admin::restore::Target::Latest,
            };
            let options = crate::admin::restore::RestoreOptions { backup, dir, nodes, target, journals, sync, json };
            crate::admin::restore::main(&options)
        }
        Command::Demo { dir, records, committers } => crate::admin::demo::run(dir, records, committers).map(|_| 0),
        Command::Drill { playbook, random: Some(seed), steps, witness, report } => {
            debug_assert!(playbook.is_none(), "clap refuses a playbook with --random");
            crate::drill::main_random(seed, steps, witness, report)
        }
        Command::Drill { playbook, random: None, report, .. } => match playbook {
            Some(playbook) => crate::drill::main(&playbook, report),
            None => Err(Error::Usage("give a playbook, or --random SEED".into())),
        },
        Command::AppendLoop { dir, committers } => crate::admin::demo::append_loop(&dir, committers).map(|_| 0),
    }
}

fn status(pair: &crate::config::PairConfig, json: bool, watch: bool) -> Result<u8, Error> {
    loop {
        let status = crate::admin::client::block_on(crate::admin::client::status(pair))?;
        if json {
            println!("{status}");
        } else {
            if watch {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", crate::admin::client::render_status(&status));
        }
        if !watch {
            let all_reachable = status["nodes"].as_object().is_some_and(|n| n.values().all(|v| v["reachable"] == true));
            return Ok(if all_reachable { 0 } else { 1 });
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

fn replicate(pair: &crate::config::PairConfig, action: ReplicateAction, node: Option<String>) -> Result<u8, Error> {
    use crate::replication::wire::AdminRequest;
    let request = match action {
        ReplicateAction::Start => AdminRequest::ReplicateStart,
        ReplicateAction::Stop => AdminRequest::ReplicateStop,
        ReplicateAction::ReopenLog => AdminRequest::ReopenLog,
    };
    let targets: Vec<String> = match node {
        Some(node) => vec![node],
        None => pair.nodes.iter().map(|n| n.name.clone()).collect(),
    };
    let mut failed = false;
    for target in targets {
        match crate::admin::client::block_on(crate::admin::client::request(pair, &target, request.clone()))? {
            Ok(body) => println!("{target}: {body}"),
            Err(reason) => {
                eprintln!("hotpair: {reason}");
                failed = true;
            }
        }
    }
    Ok(u8::from(failed))
}

fn journal(action: JournalAction) -> Result<u8, Error> {
    match action {
        JournalAction::Ls { path, json } => {
            require_dir(&path)?;
            print!("{}", crate::admin::journal_tools::ls(&path, json)?);
            Ok(0)
        }
        JournalAction::Dump { path, from, json } => {
            require_dir(&path)?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            crate::admin::journal_tools::dump(&path, from, json, &mut out)?;
            std::io::Write::flush(&mut out)?;
            Ok(0)
        }
        JournalAction::Verify { path, json } => {
            require_dir(&path)?;
            let report = crate::admin::journal_tools::verify(&path)?;
            if json {
                println!("{}", report.json);
            } else {
                print!("{}", report.text);
            }
            Ok(if report.damaged { 1 } else { 0 })
        }
        JournalAction::FindTime { path, time, json } => {
            require_dir(&path)?;
            let (text, found) = crate::admin::journal_tools::find_time_report(&path, time, json)?;
            print!("{text}");
            Ok(if found { 0 } else { 1 })
        }
    }
}

fn require_dir(path: &std::path::Path) -> Result<(), Error> {
    if path.is_dir() {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{} is not a directory (give a node's data directory or a journal directory)",
            path.display()
        )))
    }
}
