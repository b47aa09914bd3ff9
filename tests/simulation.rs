//! A seeded simulation of the pair: the two nodes' real engines (`hotpair::engine`) and the
//! real planner (`hotpair::orchestrator::plan`), over a simulated network (loss, reordering,
//! delay), disk (what is fsynced survives a crash) and clock, with clients writing at sync level
//! `durable`, nodes crashing and restarting with what they persisted, and admin commands run at
//! random by a CLI that may die mid-operation. After **every** step it checks:
//!
//! 1. one writer per epoch: at most one node acknowledges writes in an epoch, and no two nodes
//!    take writes in the same epoch at the same moment (unless an admin forced a failover over
//!    the refusal that says it may make two primaries of one epoch: then the two are told apart
//!    by their primary, as the histories do, and nothing may be acknowledged by both);
//! 2. no acknowledged write is missing from a node that takes writes (the node that took over
//!    holds every acknowledged write of its epoch and the ones before, at the same LSN);
//! 3. two nodes that applied an LSN of an epoch applied the same record there;
//! 4. epochs never go back (a node's saved epoch);
//! 5. with a witness: never two writers at one moment, whatever their epochs — a node could
//!    acknowledge a write now when its gate is open and its write deadline (its own clock) not
//!    passed; checked after every step and where a resumed node answers its waiting writes.
//!
//! **With a witness** (`random_schedules_with_a_witness_keep_every_invariant`, 4,000 schedules;
//! `HOTPAIR_SIM_WITNESS_SCHEDULES=N` for more, `HOTPAIR_SIM_FIRST_SEED=S` to start elsewhere,
//! `HOTPAIR_SIM_WITNESS=1 HOTPAIR_SIM_SEED=S` to replay one): a simulated etcd (leader key on
//! a lease, epoch key, compare-and-set, pause key; down and back, each node cut from it),
//! each node's witness agent modelled round for round as `hotpair::witness::agent` does it,
//! the engine deciding, and three clocks (a's, b's, etcd's) drifting within the product's bound
//! (`DRIFT_PERCENT`), wall clocks stepping, nodes stopped (SIGSTOP) and resumed, ttls from 2 s
//! to 60 s. Leases use the product's own `safe_end`.
//!
//! It found four defects, fixed (docs/witness.md, "Tests"): a backup echoing a heartbeat after
//! it had decided to claim; a restarted primary writing again in its own epoch over records its
//! backup held and it had lost; an admin's late promote and a witness claim making two
//! primaries of one epoch; an admin's failover to a backup whose echo still kept the old
//! primary writing. 1,000,000 witness schedules (seeds 1–1,000,000) pass since, in 79 s.
//!
//! `cargo test --release --test simulation` runs 10,000 schedules and prints `simulated N
//! schedules`. On a failure it prints the seed, the invariant, and the schedule shrunk to the
//! steps that still break it, with every event and effect; replay it with
//! `HOTPAIR_SIM_SEED=<seed>`. A long run: `HOTPAIR_SIM_SCHEDULES=1000000`.
//!
//! To see it catch a broken rule: `HOTPAIR_SIM_SABOTAGE=forget-unapplied-at-promotion` makes a
//! promoted node drop what it received but had not applied (as an engine that started the new
//! epoch after its applied LSN rather than its last would); the test
//! `a_broken_promotion_is_caught` does exactly that and expects a violation.
//! `HOTPAIR_SIM_SABOTAGE=ack-past-deadline` makes a primary answer its waiting writes without
//! looking at its witness deadline again (`a_primary_acknowledging_past_its_witness_deadline_is_caught`).

use std::collections::BTreeMap;

use hotpair::admin::protocol::{self, StatusView};
use hotpair::engine::{
    Action, Effect, Engine, Event, Gate, Hello, HelloAnswer, Identity, Outcome, Persisted, PrimaryView, Primitive,
    Recovered, RejoinRequest, ReplayBound, Reply, TailMatch, WitnessDecision, WitnessEpoch, WitnessPolicy,
    WitnessReport, PROTOCOL_VERSION,
};
use hotpair::orchestrator::plan::{self, Command, Finish, Heard, Memory, Next};
use hotpair::orchestrator::view::{NodeView, PairView};
use hotpair::orchestrator::Step;
use hotpair::replication::wire::AdminRequest;
use hotpair::storage::digest::Digest;
use hotpair::storage::journal::{Epoch, HistoryEntry, Lsn};
use hotpair::storage::meta::Role;
use hotpair::witness::agent::{safe_end, DRIFT_PERCENT};
use uuid::Uuid;

const SCHEDULES_ENV: &str = "HOTPAIR_SIM_SCHEDULES";
const SEED_ENV: &str = "HOTPAIR_SIM_SEED";
const SABOTAGE_ENV: &str = "HOTPAIR_SIM_SABOTAGE";
const WITNESS_ENV: &str = "HOTPAIR_SIM_WITNESS";
const FIRST_SEED_ENV: &str = "HOTPAIR_SIM_FIRST_SEED";
const WITNESS_SCHEDULES_ENV: &str = "HOTPAIR_SIM_WITNESS_SCHEDULES";
const DEFAULT_SCHEDULES: u64 = 10_000;
const DEFAULT_WITNESS_SCHEDULES: u64 = 4_000;
/// Steps in one schedule with a witness (its timeouts need more steps to run out).
const WITNESS_STEPS: usize = 320;
/// How far any clock (the nodes', etcd's) may run off real time: the product's bound.
const DRIFT_PPM: u64 = DRIFT_PERCENT * 10_000;
/// The clocks' indexes in [`Witness::clock_us`]: the two nodes', then etcd's.
const ETCD: usize = 2;
/// A node's wall clock at its monotonic zero (ms).
const WALL_BASE_MS: i64 = 1_800_000_000_000;
/// Steps in one schedule.
const STEPS: usize = 220;
const NAMES: [&str; 2] = ["a", "b"];
/// The CLI's address on the simulated network.
const CLI: usize = 2;

// ---------------------------------------------------------------------------------------------
// Randomness.

#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

// ---------------------------------------------------------------------------------------------
// The schedule: what happens next, chosen by the seed. Every step can be applied to any world
// (it does nothing where it makes no sense), so a shrunk schedule still replays.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    /// Deliver the k-th deliverable message (the head of its connection): reordering.
    Deliver(usize),
    /// Lose the k-th message in flight: its connection breaks.
    Lose(usize),
    /// A node finishes the long action its engine asked for.
    Finish(usize),
    /// Time passes; both engines hear it.
    Tick(u64),
    /// A client writes to a node.
    Write(usize),
    /// A node makes what it appended durable.
    Fsync(usize),
    /// A primary ships what its backup lacks (or a heartbeat).
    Ship(usize),
    /// A backup says hello to its primary; a primary without a backup probes.
    Hello(usize),
    Crash(usize),
    Restart(usize),
    /// The admin starts a command (if none runs).
    Admin(u64),
    /// The CLI takes its next step.
    CliStep,
    /// The CLI is killed.
    CliCrash,
    // With a witness only:
    /// A node's witness agent takes its round (as every 200 ms in the product).
    Round(usize),
    /// SIGSTOP: the node does nothing while its clock runs on.
    Freeze(usize),
    /// SIGCONT: writes it was acknowledging are answered at once, before anything else runs.
    Thaw(usize),
    /// etcd goes down, or comes back (its leases then run their ttl again, as etcd does).
    EtcdToggle,
    /// A node is cut from etcd, or its link heals.
    CutToggle(usize),
    /// `hotpair witness pause`, or `resume`.
    PauseToggle,
    /// A node's wall clock steps by this many ms (NTP): only `min_interval` reads it.
    WallStep(usize, i64),
    /// A clock (a's, b's, etcd's) now runs off real time by this many ppm (within the bound).
    Drift(usize, i64),
}

fn random_op(rng: &mut Rng) -> Op {
    let node = rng.below(2) as usize;
    let k = rng.below(8) as usize;
    match rng.below(100) {
        0..=27 => Op::Deliver(k),
        28..=29 => Op::Lose(k),
        30..=39 => Op::Finish(node),
        40..=46 => Op::Tick(50 + rng.below(600)),
        47..=57 => Op::Write(node),
        58..=63 => Op::Fsync(node),
        64..=72 => Op::Ship(node),
        73..=79 => Op::Hello(node),
        80 => Op::Crash(node),
        81..=83 => Op::Restart(node),
        84..=86 => Op::Admin(rng.next()),
        87..=98 => Op::CliStep,
        _ => Op::CliCrash,
    }
}

/// A step of a schedule with a witness: the witness's own steps, time in ttl-sized leaps, or
/// any step of a pair without one.
fn random_witness_op(rng: &mut Rng, ttl_ms: u64) -> Op {
    let node = rng.below(2) as usize;
    let bound = DRIFT_PPM as i64;
    match rng.below(100) {
        0..=13 => Op::Round(node),
        14 => Op::Freeze(node),
        15..=16 => Op::Thaw(node),
        17 => Op::EtcdToggle,
        18 => Op::CutToggle(node),
        19 if rng.below(4) == 0 => Op::PauseToggle,
        19 => Op::Round(node),
        20 => Op::WallStep(node, rng.below(1_200_001) as i64 - 600_000),
        // The edges of the bound are where a timing argument breaks.
        21 => Op::Drift(
            rng.below(3) as usize,
            [-bound, bound, 0, rng.below(2 * DRIFT_PPM + 1) as i64 - bound][rng.below(4) as usize],
        ),
        22..=25 => Op::Tick(1 + rng.below(ttl_ms / 2)),
        _ => random_op(rng),
    }
}

// ---------------------------------------------------------------------------------------------
// The world.

/// One record: its LSN is its place in the log; `id` tells records apart, `writer` is the node
/// whose pipeline wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rec {
    epoch: Epoch,
    writer: usize,
    id: u64,
}

/// What a backup says in its hello (a probe when `role` is primary).
#[derive(Debug, Clone)]
struct WireHello {
    epoch: Epoch,
    role: Role,
    history: Vec<HistoryEntry>,
    last_lsn: Lsn,
    confirmed: Lsn,
    tail: Vec<u64>,
    generation: u64,
}

#[derive(Debug, Clone)]
enum Body {
    Hello(WireHello),
    Answer {
        answer: HelloAnswer,
        epoch: Epoch,
        history: Vec<HistoryEntry>,
    },
    /// `sent`: the primary's clock when it sent this (a heartbeat's time).
    Batch {
        first: Lsn,
        recs: Vec<Rec>,
        durable: Lsn,
        last: Lsn,
        sent: u64,
    },
    /// `echo`: the `sent` of the last batch the backup received (the witness's failsafe).
    Ack {
        durable: Lsn,
        echo: u64,
    },
    Admin {
        request: AdminRequest,
    },
    Reply {
        body: Result<serde_json::Value, String>,
    },
}

#[derive(Debug, Clone)]
struct Msg {
    conn: u64,
    to: usize,
    body: Body,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sabotage {
    None,
    ForgetUnappliedAtPromotion,
    /// A primary acknowledges a commit without looking at its witness deadline again.
    AckPastDeadline,
}

impl Sabotage {
    const ALL: [(&'static str, Sabotage); 2] = [
        ("forget-unapplied-at-promotion", Sabotage::ForgetUnappliedAtPromotion),
        ("ack-past-deadline", Sabotage::AckPastDeadline),
    ];

    fn name(self) -> Option<&'static str> {
        Sabotage::ALL.iter().find(|(_, s)| *s == self).map(|(name, _)| *name)
    }
}

/// What a world is made of besides its schedule.
#[derive(Clone, Copy, Debug)]
struct Setup {
    sabotage: Sabotage,
    /// `[witness]`, or none (the pair fails over only by admin commands).
    witness: Option<WitnessPolicy>,
}

#[derive(Clone)]
struct Node {
    index: usize,
    up: bool,
    engine: Engine,
    // What survives a crash.
    meta: Persisted,
    progress: Option<serde_json::Value>,
    log: Vec<Rec>,
    durable: usize,
    applied: Lsn,
    known_peer: bool,
    saved_ack: (Epoch, Lsn),
    replicating: bool,
    // What does not.
    role: Role,
    gate: Gate,
    pipeline: Option<Epoch>,
    applier: bool,
    held: bool,
    follow: Option<u64>,
    ship: Option<(u64, Lsn, bool)>,
    peer_durable: Lsn,
    confirmed: Lsn,
    heard_last: Lsn,
    pending: bool,
    running: Option<u64>,
    queue: Vec<(u64, AdminRequest)>,
    waiters: Vec<(u64, AdminRequest)>,
    writes: Vec<(Lsn, u64)>,
    /// The hello in flight: its connection and the engine generation it was sent under.
    hello_out: Option<(u64, u64)>,
    diverged: bool,
    /// The witness's write deadline, this node's clock (`u64::MAX`: none).
    deadline: u64,
    /// On a backup: its clock when the last batch from its primary arrived, and that batch's
    /// `sent` (echoed back). On a primary: the latest `sent` its backup echoed.
    heard_at: u64,
    heard_sent: u64,
    echoed: u64,
    /// Its clock when its last session following a primary ended (0: none since its start).
    followed_until: u64,
}

impl Node {
    fn name(&self) -> &'static str {
        NAMES[self.index]
    }

    fn new(index: usize) -> Node {
        let engine = Engine::new(identity(index));
        let role = if index == 0 { Role::Primary } else { Role::Backup };
        let meta = Persisted {
            role,
            epoch: 1,
            history: vec![HistoryEntry { epoch: 1, first_lsn: 1, primary: "a".into() }],
            promotion: None,
            rejoined: None,
        };
        Node {
            index,
            up: false,
            engine,
            meta,
            progress: None,
            log: Vec::new(),
            durable: 0,
            applied: 0,
            known_peer: false,
            saved_ack: (0, 0),
            replicating: true,
            role,
            gate: Gate::Closed,
            pipeline: None,
            applier: false,
            held: false,
            follow: None,
            ship: None,
            peer_durable: 0,
            confirmed: 0,
            heard_last: 0,
            pending: false,
            running: None,
            queue: Vec::new(),
            waiters: Vec::new(),
            writes: Vec::new(),
            hello_out: None,
            diverged: false,
            deadline: u64::MAX,
            heard_at: 0,
            heard_sent: 0,
            echoed: 0,
            followed_until: 0,
        }
    }

    fn last(&self) -> Lsn {
        self.log.len() as Lsn
    }

    fn digest(&self, lsn: Lsn) -> Digest {
        let ids = self.log.iter().take(lsn as usize).map(|r| r.id);
        Digest(ids.fold(0u128, |h, id| h.wrapping_mul(1_000_003).wrapping_add(id as u128)))
    }

    /// What this node, as primary, holds its peer to have acknowledged durably in its epoch.
    fn acknowledged(&self) -> Lsn {
        let heard = if self.pipeline.is_some() { self.peer_durable.min(self.durable as Lsn) } else { 0 };
        let saved = if self.saved_ack.0 == self.meta.epoch { self.saved_ack.1 } else { 0 };
        heard.max(saved)
    }

    fn status(&self) -> StatusView {
        let state = self.engine.state();
        let writer = self.pipeline.is_some();
        StatusView {
            node: self.name().into(),
            role: self.role,
            epoch: state.epoch,
            lsn: if writer { self.last() } else { self.applied },
            last_lsn: self.last(),
            applied_lsn: self.applied,
            digest: self.digest(self.applied).to_hex(),
            lag_records: 0,
            lag_ms: 0,
            remote_journal: if self.diverged { "diverged" } else { "active" }.into(),
            replicating: self.replicating,
            following: self.follow.is_some(),
            awaiting_peer: state.awaiting_peer,
            failure: None,
            writes: writer
                .then(|| protocol::WritesView { accepting: self.gate == Gate::Open, reason: self.gate.refusal() }),
            history: state.history.clone(),
            incarnation: Uuid::from_u128(self.index as u128 + 100),
            peer_incarnation: self.known_peer.then(|| Uuid::from_u128(101 - self.index as u128)),
            peer: protocol::PeerView {
                name: NAMES[1 - self.index].into(),
                connected: self.ship.is_some() || self.follow.is_some(),
                acknowledged_lsn: self.acknowledged(),
            },
            disk_free_bytes: None,
            orchestration: self.progress.clone(),
            promotion: state.promotion.clone(),
            rejoined: state.rejoined.clone(),
        }
    }
}

fn identity(index: usize) -> Identity {
    Identity { node: NAMES[index].into(), peer: NAMES[1 - index].into(), cluster: Uuid::nil() }
}

// ---------------------------------------------------------------------------------------------
// The witness: etcd, the nodes' agents, and clocks that drift.

/// etcd as the agents use it: a leader key on a lease, an epoch key, a pause key. Its clock is
/// [`Witness::clock_us`]`[ETCD]`.
#[derive(Clone, Default, Debug)]
struct Etcd {
    down: bool,
    cut: [bool; 2],
    /// The leader key: its holder, epoch and lease.
    leader: Option<(usize, Epoch, u64)>,
    /// Leases: id → when they run out (etcd's clock, ms).
    leases: BTreeMap<u64, u64>,
    /// The epoch key and its revision.
    epoch_key: Option<(WitnessEpoch, u64)>,
    revision: u64,
    next_lease: u64,
    paused: bool,
}

impl Etcd {
    /// Drops leases run out by `now_ms` and the leader key on them.
    fn expire(&mut self, now_ms: u64) {
        self.leases.retain(|_, until| *until > now_ms);
        if self.leader.is_some_and(|(_, _, lease)| !self.leases.contains_key(&lease)) {
            self.leader = None;
        }
    }

    fn grant(&mut self, now_ms: u64, ttl_ms: u64) -> u64 {
        self.next_lease += 1;
        self.leases.insert(self.next_lease, now_ms + ttl_ms);
        self.next_lease
    }

    /// A keepalive: whether the lease was still there.
    fn keep_alive(&mut self, lease: u64, now_ms: u64, ttl_ms: u64) -> bool {
        self.leases.get_mut(&lease).map(|until| *until = now_ms + ttl_ms).is_some()
    }

    fn revoke(&mut self, lease: u64) {
        self.leases.remove(&lease);
        if self.leader.is_some_and(|(_, _, l)| l == lease) {
            self.leader = None;
        }
    }

    /// The agents' transaction: if the leader key is absent and the epoch key is as read
    /// (`seen`: its revision, `None`: absent), put both.
    fn put_if(&mut self, seen: Option<u64>, leader: (usize, Epoch, u64), epoch: WitnessEpoch) -> bool {
        let as_read = self.epoch_key.as_ref().map(|(_, revision)| *revision) == seen;
        if self.leader.is_some() || !as_read || !self.leases.contains_key(&leader.2) {
            return false;
        }
        self.revision += 1;
        self.leader = Some(leader);
        self.epoch_key = Some((epoch, self.revision));
        true
    }
}

/// A node's witness agent (what it keeps between rounds; lost in a crash).
#[derive(Clone, Default, Debug)]
struct Agent {
    /// The lease it holds and its safe end (its clock).
    held: Option<(u64, u64)>,
    last_renew: Option<u64>,
    paused: bool,
    last_rejoin: Option<u64>,
}

#[derive(Clone, Debug)]
struct Witness {
    policy: WitnessPolicy,
    etcd: Etcd,
    agents: [Agent; 2],
    /// Each clock's rate off real time (ppm): a's, b's, etcd's.
    skew_ppm: [i64; 3],
    /// Each clock's reading (µs).
    clock_us: [u64; 3],
    /// Each node's wall clock minus its monotonic one (ms), stepped by NTP.
    wall_offset_ms: [i64; 2],
    frozen: [bool; 2],
    /// What a frozen node's engine will hear when it runs again.
    deferred: [Vec<Event>; 2],
    /// Claims won, rejoins the agents started.
    takeovers: u64,
    rejoins: u64,
    /// Restarted primaries that went on alone in a new epoch.
    alone: u64,
}

impl Witness {
    fn new(policy: WitnessPolicy) -> Witness {
        Witness {
            policy,
            etcd: Etcd::default(),
            agents: [Agent::default(), Agent::default()],
            skew_ppm: [0; 3],
            clock_us: [0; 3],
            wall_offset_ms: [0; 2],
            frozen: [false; 2],
            deferred: [Vec::new(), Vec::new()],
            takeovers: 0,
            rejoins: 0,
            alone: 0,
        }
    }

    fn etcd_ms(&self) -> u64 {
        self.clock_us[ETCD] / 1000
    }

    /// `dt` ms of real time pass.
    fn advance(&mut self, dt: u64) {
        for (clock, skew) in self.clock_us.iter_mut().zip(self.skew_ppm) {
            *clock += (dt as i64 * (1_000_000 + skew) / 1_000) as u64;
        }
    }
}

/// The simulated admin CLI running one command.
#[derive(Clone)]
struct Cli {
    command: Command,
    memory: Memory,
    awaiting: Option<(u64, Step, String, AdminRequest, u64)>,
    waiting: Option<(Step, plan::Until, u64)>,
}

/// An acknowledged write.
#[derive(Clone, Debug)]
struct Acked {
    lsn: Lsn,
    id: u64,
    epoch: Epoch,
    node: usize,
}

#[derive(Clone)]
struct World {
    now: u64,
    nodes: [Node; 2],
    net: Vec<Msg>,
    next_conn: u64,
    next_id: u64,
    cli: Option<Cli>,
    acked: Vec<Acked>,
    writer_of: BTreeMap<Epoch, usize>,
    epochs_seen: [Epoch; 2],
    sabotage: Sabotage,
    trace: Option<Vec<String>>,
    commands_done: u64,
    /// The long action each node's engine waits for.
    pending_action: [Option<Action>; 2],
    /// A model assertion that failed while applying a step.
    violation: Option<String>,
    /// An admin forced a failover: two promotions may then claim one epoch until the two
    /// primaries hear each other (nothing is acknowledged meanwhile: each needs the other).
    forced: bool,
    witness: Option<Witness>,
}

impl World {
    fn new(setup: Setup, tracing: bool) -> World {
        let sabotage = setup.sabotage;
        let mut world = World {
            now: 0,
            nodes: [Node::new(0), Node::new(1)],
            net: Vec::new(),
            next_conn: 1,
            next_id: 1,
            cli: None,
            acked: Vec::new(),
            writer_of: BTreeMap::new(),
            epochs_seen: [1, 1],
            sabotage,
            trace: tracing.then(Vec::new),
            commands_done: 0,
            pending_action: [None, None],
            violation: None,
            forced: false,
            witness: setup.witness.map(Witness::new),
        };
        world.restart(0);
        world.restart(1);
        world
    }

    fn say(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            trace.push(line());
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn conn(&mut self) -> u64 {
        self.next_conn += 1;
        self.next_conn
    }

    fn send(&mut self, conn: u64, to: usize, body: Body) {
        self.net.push(Msg { conn, to, body });
    }

    /// Node `n`'s monotonic clock (ms): real time without a witness.
    fn clock(&self, n: usize) -> u64 {
        self.witness.as_ref().map_or(self.now, |w| w.clock_us[n] / 1000)
    }

    fn wall(&self, n: usize) -> u64 {
        let offset = self.witness.as_ref().map_or(0, |w| w.wall_offset_ms[n]);
        (WALL_BASE_MS + self.clock(n) as i64 + offset) as u64
    }

    /// Whether node `n` is stopped (SIGSTOP); the CLI never is.
    fn frozen(&self, n: usize) -> bool {
        n < 2 && self.witness.as_ref().is_some_and(|w| w.frozen[n])
    }

    // -----------------------------------------------------------------------------------------
    // Steps.

    fn apply(&mut self, op: Op) {
        match op {
            Op::Deliver(k) => self.deliver(k),
            Op::Lose(k) => {
                if !self.net.is_empty() {
                    let conn = self.net[k % self.net.len()].conn;
                    self.say(|| format!("  lost a message on connection {conn}"));
                    self.close(conn);
                }
            }
            Op::Finish(n) => self.finish(n),
            Op::Tick(dt) => {
                self.now += dt;
                if let Some(w) = &mut self.witness {
                    w.advance(dt);
                }
                for n in 0..2 {
                    if self.nodes[n].up && !self.frozen(n) {
                        let now_ms = self.clock(n);
                        self.step(n, Event::Tick { now_ms });
                    }
                }
            }
            Op::Write(n) => self.write(n),
            Op::Fsync(n) => {
                let frozen = self.frozen(n);
                let node = &mut self.nodes[n];
                if node.up && !frozen {
                    node.durable = node.log.len();
                    if node.pipeline.is_some() {
                        node.applied = node.durable as Lsn;
                    }
                }
            }
            Op::Ship(n) => self.ship(n),
            Op::Hello(n) => self.hello(n),
            Op::Crash(n) => self.crash(n),
            Op::Restart(n) => {
                if !self.nodes[n].up {
                    self.restart(n);
                }
            }
            Op::Admin(choice) => self.admin(choice),
            Op::CliStep => self.cli_step(),
            Op::CliCrash => {
                if self.cli.take().is_some() {
                    self.say(|| "  the CLI is killed".into());
                }
            }
            Op::Round(n) => self.round(n),
            Op::Freeze(n) => self.freeze(n),
            Op::Thaw(n) => self.thaw(n),
            Op::EtcdToggle => {
                if let Some(w) = &mut self.witness {
                    w.etcd.down = !w.etcd.down;
                    if !w.etcd.down {
                        // A new etcd leader gives every lease its whole ttl again.
                        let (now, ttl) = (w.etcd_ms(), w.policy.ttl_ms);
                        w.etcd.leases.values_mut().for_each(|until| *until = (*until).max(now + ttl));
                    }
                }
            }
            Op::CutToggle(n) => {
                if let Some(w) = &mut self.witness {
                    w.etcd.cut[n] = !w.etcd.cut[n];
                }
            }
            Op::PauseToggle => {
                if let Some(w) = self.witness.as_mut().filter(|w| !w.etcd.down) {
                    w.etcd.paused = !w.etcd.paused;
                }
            }
            Op::WallStep(n, ms) => {
                if let Some(w) = &mut self.witness {
                    w.wall_offset_ms[n] += ms;
                }
            }
            Op::Drift(clock, ppm) => {
                if let Some(w) = &mut self.witness {
                    w.skew_ppm[clock] = ppm;
                }
            }
        }
        self.settle();
    }

    /// What follows every step: appliers apply, commits are acknowledged, waiters answered.
    fn settle(&mut self) {
        for n in 0..2 {
            let frozen = self.frozen(n);
            let clock = self.clock(n);
            let ignore_deadline = self.sabotage == Sabotage::AckPastDeadline;
            let node = &mut self.nodes[n];
            if !node.up || frozen {
                continue;
            }
            if node.applier {
                let up_to = node.confirmed.min(node.last());
                node.applied = node.applied.max(up_to);
            }
            // Acknowledge a commit once durable here and on the backup (sync level `durable`),
            // and only within the witness's deadline, looked at again at this moment.
            let (durable, peer) = (node.durable as Lsn, node.peer_durable);
            let running = node.pipeline.is_some() && (clock < node.deadline || ignore_deadline);
            let mut waiting = Vec::new();
            for (lsn, id) in std::mem::take(&mut node.writes) {
                let Some(rec) = node.log.get(lsn as usize - 1).filter(|r| r.id == id) else { continue };
                if durable >= lsn && peer >= lsn && running {
                    self.acked.push(Acked { lsn, id, epoch: rec.epoch, node: n });
                } else {
                    waiting.push((lsn, id));
                }
            }
            self.nodes[n].writes = waiting;
            self.answer_waiters(n);
        }
    }

    fn deliver(&mut self, k: usize) {
        // The heads of the connections: within a connection, messages keep their order.
        let mut heads = Vec::new();
        for (i, msg) in self.net.iter().enumerate() {
            if !self.net[..i].iter().any(|m| m.conn == msg.conn) && !self.frozen(msg.to) {
                heads.push(i);
            }
        }
        if heads.is_empty() {
            return;
        }
        let msg = self.net.remove(heads[k % heads.len()]);
        if msg.to == CLI {
            return self.cli_reply(msg);
        }
        let n = msg.to;
        if !self.nodes[n].up {
            return;
        }
        match msg.body {
            Body::Hello(hello) => self.on_hello(n, msg.conn, hello),
            Body::Answer { answer, epoch, history } => self.on_answer(n, msg.conn, answer, epoch, history),
            Body::Batch { first, recs, durable, last, sent } => {
                self.on_batch(n, msg.conn, first, recs, durable, last, sent)
            }
            Body::Ack { durable, echo } => {
                let node = &mut self.nodes[n];
                let Some((conn, next, acked)) = node.ship else { return };
                if conn != msg.conn {
                    return;
                }
                node.echoed = node.echoed.max(echo);
                node.peer_durable = node.peer_durable.max(durable);
                let capped = node.peer_durable.min(node.durable as Lsn);
                let epoch = node.meta.epoch;
                if node.saved_ack.0 != epoch || node.saved_ack.1 < capped {
                    node.saved_ack = (epoch, capped);
                }
                node.ship = Some((conn, next, true));
                if !acked {
                    self.step(n, Event::PeerAcked);
                }
            }
            Body::Admin { request } => self.on_admin(n, msg.conn, request),
            Body::Reply { .. } => {}
        }
    }

    /// Closes a connection on both ends.
    fn close(&mut self, conn: u64) {
        self.net.retain(|m| m.conn != conn);
        for n in 0..2 {
            let clock = self.clock(n);
            let node = &mut self.nodes[n];
            let mut lost = false;
            if node.follow == Some(conn) {
                node.follow = None;
                node.followed_until = clock;
                lost = true;
            }
            if node.ship.is_some_and(|(c, _, _)| c == conn) {
                node.ship = None;
                lost = true;
            }
            if node.hello_out.is_some_and(|(c, _)| c == conn) {
                node.hello_out = None;
            }
            if lost && node.up {
                self.step(n, Event::PeerLost);
            }
        }
    }

    fn close_sessions(&mut self, n: usize) {
        let node = &self.nodes[n];
        let conns: Vec<u64> =
            node.follow.into_iter().chain(node.ship.map(|s| s.0)).chain(node.hello_out.map(|h| h.0)).collect();
        for conn in conns {
            self.close(conn);
        }
    }

    fn write(&mut self, n: usize) {
        let node = &self.nodes[n];
        if !node.up || node.gate != Gate::Open || self.frozen(n) {
            return;
        }
        let Some(epoch) = node.pipeline else { return };
        let id = self.id();
        let node = &mut self.nodes[n];
        node.log.push(Rec { epoch, writer: n, id });
        let lsn = node.last();
        node.writes.push((lsn, id));
    }

    fn ship(&mut self, n: usize) {
        let node = &self.nodes[n];
        let Some((conn, next, acked)) = node.ship.filter(|_| node.up && !self.frozen(n)) else { return };
        let recs: Vec<Rec> = node.log.iter().skip((next as usize).saturating_sub(1)).copied().collect();
        let (durable, last, sent) = (node.durable as Lsn, node.last(), self.clock(n));
        let to = 1 - n;
        self.nodes[n].ship = Some((conn, last + 1, acked));
        self.send(conn, to, Body::Batch { first: next, recs, durable, last, sent });
    }

    fn hello(&mut self, n: usize) {
        let node = &self.nodes[n];
        let busy = node.hello_out.is_some() || node.follow.is_some() || node.ship.is_some();
        if !node.up || busy || self.frozen(n) {
            return;
        }
        let backup = node.role == Role::Backup && node.replicating && !node.held;
        let probe = matches!(node.role, Role::Primary | Role::Draining);
        if !backup && !probe {
            return;
        }
        let state = node.engine.state();
        let confirmed = node.confirmed.max(node.applied);
        let tail = if backup { node.log.iter().skip(confirmed as usize).map(|r| r.id).collect() } else { Vec::new() };
        let hello = WireHello {
            epoch: state.epoch,
            role: node.role,
            history: state.history.clone(),
            last_lsn: node.last(),
            confirmed,
            tail,
            generation: state.generation,
        };
        let conn = self.conn();
        self.nodes[n].hello_out = Some((conn, hello.generation));
        self.send(conn, 1 - n, Body::Hello(hello));
    }

    fn on_hello(&mut self, n: usize, conn: u64, hello: WireHello) {
        let node = &self.nodes[n];
        let matched = hello
            .tail
            .iter()
            .enumerate()
            .take_while(|(i, id)| node.log.get(hello.confirmed as usize + i).is_some_and(|r| r.id == **id))
            .count() as u64;
        let event = Hello {
            from: NAMES[1 - n].into(),
            protocol: PROTOCOL_VERSION,
            cluster: Uuid::nil(),
            incarnation: Uuid::from_u128(101 - n as u128),
            epoch: hello.epoch,
            role: hello.role,
            history: hello.history,
            last_lsn: hello.last_lsn,
            tail: TailMatch {
                confirmed_lsn: hello.confirmed,
                matched,
                all_matched: matched == hello.tail.len() as u64,
            },
            known_incarnation: node.known_peer.then(|| Uuid::from_u128(101 - n as u128)),
            acknowledged: node.acknowledged(),
            our_last: node.last(),
            replicating: node.replicating,
        };
        let Some(Reply::Hello(answer)) = self.step(n, Event::Hello(event)) else { return };
        let mut answer = answer;
        if let HelloAnswer::Welcome { start_lsn, .. } = &answer {
            let node = &self.nodes[n];
            if node.ship.is_some() || node.pipeline.is_none() {
                answer = HelloAnswer::Refused { reason: "a session is already active, or no pipeline".into() };
            } else {
                self.nodes[n].ship = Some((conn, *start_lsn, false));
                self.step(n, Event::PeerBack);
            }
        }
        let state = self.nodes[n].engine.state();
        let (epoch, history) = (state.epoch, state.history.clone());
        self.send(conn, 1 - n, Body::Answer { answer, epoch, history });
    }

    fn on_answer(&mut self, n: usize, conn: u64, answer: HelloAnswer, epoch: Epoch, history: Vec<HistoryEntry>) {
        let Some((_, hello_generation)) = self.nodes[n].hello_out.filter(|(c, _)| *c == conn) else { return };
        self.nodes[n].hello_out = None;
        match answer {
            HelloAnswer::Welcome { cut_after, .. } => {
                // The role lock: no session starts while a primitive runs.
                if self.nodes[n].running.is_some() {
                    return self.close(conn);
                }
                let event = Event::Welcomed { epoch, history, cut_after, generation: hello_generation };
                match self.drive(n, event) {
                    Some(Reply::Follow) => {
                        self.nodes[n].follow = Some(conn);
                        self.step(n, Event::PeerBack);
                    }
                    _ => self.close(conn),
                }
            }
            HelloAnswer::Standing { epoch, last_lsn, leader } => {
                let our_last = self.nodes[n].last();
                self.step(n, Event::ProbeAnswered { epoch, leader, last_lsn: Some(last_lsn), our_last });
                self.close(conn);
            }
            HelloAnswer::Diverged { .. } => {
                self.nodes[n].diverged = true;
                self.close(conn);
            }
            HelloAnswer::Refused { .. } => {
                // A refusal carries the sender's epoch: a probe learns a higher one from it.
                if matches!(self.nodes[n].role, Role::Primary | Role::Draining) {
                    let our_last = self.nodes[n].last();
                    self.step(n, Event::ProbeAnswered { epoch, leader: None, last_lsn: None, our_last });
                }
                self.close(conn);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_batch(&mut self, n: usize, conn: u64, first: Lsn, recs: Vec<Rec>, durable: Lsn, last: Lsn, sent: u64) {
        let clock = self.clock(n);
        let node = &mut self.nodes[n];
        if node.follow != Some(conn) {
            return;
        }
        node.heard_at = clock;
        if node.engine.may_echo() {
            node.heard_sent = node.heard_sent.max(sent);
        }
        for (i, rec) in recs.iter().enumerate() {
            let lsn = first + i as Lsn;
            if lsn <= node.last() {
                continue;
            }
            if lsn != node.last() + 1 {
                return self.close(conn);
            }
            node.log.push(*rec);
        }
        node.durable = node.log.len();
        node.confirmed = node.confirmed.max(durable);
        node.heard_last = node.heard_last.max(last);
        let (ack, echo) = (node.last(), node.heard_sent);
        self.send(conn, 1 - n, Body::Ack { durable: ack, echo });
    }

    fn crash(&mut self, n: usize) {
        if !self.nodes[n].up {
            return;
        }
        self.say(|| format!("  {} crashes", NAMES[n]));
        if let Some(w) = &mut self.witness {
            // kill -9 ends a stopped process too; its lease lives on in etcd until it runs out.
            w.frozen[n] = false;
            w.deferred[n].clear();
            w.agents[n] = Agent::default();
        }
        self.close_sessions(n);
        self.net.retain(|m| m.to != n);
        let node = &mut self.nodes[n];
        node.up = false;
        node.log.truncate(node.durable);
        node.applied = node.applied.min(node.durable as Lsn);
        node.writes.clear();
    }

    fn restart(&mut self, n: usize) {
        self.pending_action[n] = None;
        let mut fresh = World::fresh_node(&self.nodes[n]);
        if let Some(w) = &self.witness {
            fresh.engine.set_witness(Some(w.policy));
        }
        fresh.heard_at = self.clock(n);
        self.nodes[n] = fresh;
        let node = &mut self.nodes[n];
        node.up = true;
        node.confirmed = node.applied;
        let recovered = Recovered { persisted: node.meta.clone(), last_lsn: node.last(), met_peer: node.known_peer };
        self.say(|| format!("  {} restarts", NAMES[n]));
        self.step(n, Event::Restarted(recovered));
    }

    /// A node as it comes back: its durable state, nothing else.
    fn fresh_node(old: &Node) -> Node {
        let mut node = Node::new(old.index);
        node.meta = old.meta.clone();
        node.progress = old.progress.clone();
        node.log = old.log.clone();
        node.durable = old.durable;
        node.applied = old.applied;
        node.known_peer = old.known_peer;
        node.saved_ack = old.saved_ack;
        node.replicating = old.replicating;
        node.role = old.meta.role;
        node
    }

    // -----------------------------------------------------------------------------------------
    // The engine and its effects.

    /// Steps node `n`'s engine and applies the effects; returns its reply. A long action waits
    /// for `Op::Finish`.
    fn step(&mut self, n: usize, event: Event) -> Option<Reply> {
        if let Some(w) = self.witness.as_mut().filter(|w| w.frozen[n]) {
            // A stopped process hears it when it runs again (a tick then is a new one).
            if !matches!(event, Event::Tick { .. }) {
                w.deferred[n].push(event);
            }
            return None;
        }
        self.say(|| format!("  {} < {}", NAMES[n], short(&event)));
        let effects = self.nodes[n].engine.step(event);
        self.effects(n, effects)
    }

    /// Steps and carries out any long action at once (the follower's welcome).
    fn drive(&mut self, n: usize, event: Event) -> Option<Reply> {
        let mut reply = self.step(n, event);
        while self.nodes[n].pending {
            let outcome = self.outcome(n);
            self.nodes[n].pending = false;
            reply = self.step(n, Event::Done(outcome));
        }
        reply
    }

    fn effects(&mut self, n: usize, effects: Vec<Effect>) -> Option<Reply> {
        let mut reply = None;
        for effect in effects {
            self.say(|| format!("  {}   {effect}", NAMES[n]));
            match effect {
                Effect::Save(persisted) => {
                    let node = &mut self.nodes[n];
                    if persisted.epoch < node.meta.epoch {
                        let went = format!(
                            "{}'s saved epoch went back from {} to {}",
                            node.name(),
                            node.meta.epoch,
                            persisted.epoch
                        );
                        self.violation.get_or_insert(went);
                    }
                    self.nodes[n].meta = persisted;
                }
                Effect::Publish(role) => {
                    self.nodes[n].role = role;
                    let node = &self.nodes[n];
                    let ends_follow = role != Role::Backup && node.follow.is_some();
                    let ends_ship = !matches!(role, Role::Primary | Role::Draining) && node.ship.is_some();
                    if ends_follow || ends_ship || node.hello_out.is_some() {
                        self.close_sessions(n);
                    }
                }
                Effect::Writes(gate) => self.nodes[n].gate = gate,
                Effect::Replay(bound) => {
                    let node = &mut self.nodes[n];
                    let up_to = match bound {
                        ReplayBound::Everything => node.last(),
                        ReplayBound::Settled => {
                            let epoch_start = node.meta.history.last().map_or(0, |h| h.first_lsn.saturating_sub(1));
                            node.applied.max(epoch_start).min(node.last())
                        }
                    };
                    node.applied = node.applied.max(up_to);
                }
                Effect::StartPipeline { first_lsn, epoch, epoch_start } => {
                    let node = &mut self.nodes[n];
                    if self.sabotage == Sabotage::ForgetUnappliedAtPromotion {
                        node.log.truncate(first_lsn as usize - 1);
                        node.durable = node.durable.min(node.log.len());
                    }
                    if first_lsn != node.last() + 1 {
                        let gap = format!(
                            "{} starts its pipeline at LSN {first_lsn} with {} records",
                            node.name(),
                            node.last()
                        );
                        self.violation.get_or_insert(gap);
                    }
                    let node = &mut self.nodes[n];
                    node.pipeline = Some(epoch);
                    if epoch_start {
                        let id = self.id();
                        self.nodes[n].log.push(Rec { epoch, writer: n, id });
                    }
                }
                Effect::StartApplier => self.nodes[n].applier = true,
                Effect::ReleaseFollower => self.nodes[n].held = false,
                Effect::ResumeReplication => self.nodes[n].replicating = true,
                Effect::ForgetPeerAcks => {
                    let node = &mut self.nodes[n];
                    node.peer_durable = 0;
                    node.heard_last = 0;
                }
                Effect::ClearDiverged => self.nodes[n].diverged = false,
                Effect::RememberPeer { .. } => self.nodes[n].known_peer = true,
                Effect::WriteDeadline(deadline) => self.nodes[n].deadline = deadline.unwrap_or(u64::MAX),
                Effect::Incident { .. } | Effect::ResolveIncident { .. } | Effect::Note(_) => {}
                Effect::Run(action) => {
                    self.nodes[n].pending = true;
                    self.pending_action[n] = Some(action);
                }
                Effect::Reply(answer) => reply = Some(answer),
            }
        }
        if let Some(answer) = &reply {
            self.reply_primitive(n, answer);
        }
        reply
    }

    /// A node finishes its long action.
    fn finish(&mut self, n: usize) {
        if !self.nodes[n].up || !self.nodes[n].pending || self.frozen(n) {
            return;
        }
        let outcome = self.outcome(n);
        self.nodes[n].pending = false;
        self.step(n, Event::Done(outcome));
    }

    fn outcome(&mut self, n: usize) -> Outcome {
        let action = self.pending_action[n].take().expect("a pending action");
        let sabotage = self.sabotage;
        if let Action::StopReceiving = action {
            self.nodes[n].held = true;
            if let Some(conn) = self.nodes[n].follow {
                self.close(conn);
            }
        }
        let node = &mut self.nodes[n];
        match action {
            Action::FinishInFlight => {
                node.durable = node.log.len();
                node.applied = node.last();
                Outcome::InFlightFinished { lsn: node.last(), digest: node.digest(node.last()) }
            }
            Action::StopPipeline => {
                node.durable = node.log.len();
                node.applied = node.last();
                node.pipeline = None;
                node.writes.clear();
                Outcome::PipelineStopped
            }
            Action::StopReceiving => {
                node.applier = false;
                Outcome::ReceivingStopped { last_lsn: node.last(), heard_primary_lsn: node.heard_last }
            }
            Action::ReplayReceived => {
                if sabotage == Sabotage::ForgetUnappliedAtPromotion {
                    return Outcome::Replayed { last_lsn: node.applied, applied_lsn: node.applied };
                }
                node.applied = node.last();
                Outcome::Replayed { last_lsn: node.last(), applied_lsn: node.applied }
            }
            Action::CountOrphans { divergence } => {
                Outcome::OrphansCounted { orphaned: node.last().saturating_sub(divergence) }
            }
            Action::Resynchronize { divergence, primary, .. } => {
                node.pipeline = None;
                node.applier = false;
                node.writes.clear();
                let orphaned = node.last().saturating_sub(divergence);
                let rewound = node.applied.saturating_sub(divergence);
                node.log.truncate(divergence as usize);
                node.durable = node.durable.min(node.log.len());
                node.applied = node.applied.min(divergence);
                let settled = primary.history.last().map_or(0, |h| h.first_lsn.saturating_sub(1)).max(node.applied);
                node.applied = node.applied.max(settled.min(divergence));
                node.confirmed = node.applied;
                let file = (orphaned > 0).then(|| format!("{}/orphans/{divergence}", node.name()));
                Outcome::Resynchronized { orphans_file: file, orphaned, rewound }
            }
            Action::PrepareToFollow { cut_after } => {
                if let Some(cut) = cut_after {
                    if node.applied > cut {
                        node.diverged = true;
                        return Outcome::Failed {
                            reason: format!("applied past the cut {cut}"),
                            applied_unconfirmed: false,
                        };
                    }
                    node.log.truncate(cut as usize);
                    node.durable = node.durable.min(node.log.len());
                }
                node.applier = true;
                node.confirmed = node.applied;
                Outcome::FollowPrepared
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // The witness agents (`hotpair::witness::agent`, modelled step for step).

    fn freeze(&mut self, n: usize) {
        if let Some(w) = self.witness.as_mut().filter(|_| self.nodes[n].up) {
            w.frozen[n] = true;
        }
    }

    /// SIGCONT: what was waiting to be acknowledged is answered first (the deadline is looked
    /// at again then), then the node hears what happened meanwhile, then a tick.
    fn thaw(&mut self, n: usize) {
        let Some(w) = self.witness.as_mut().filter(|w| w.frozen[n]) else { return };
        w.frozen[n] = false;
        let deferred = std::mem::take(&mut w.deferred[n]);
        self.say(|| format!("  {} resumes", NAMES[n]));
        self.settle();
        if let Err(violation) = self.one_writer_now() {
            self.violation.get_or_insert(violation);
        }
        for event in deferred {
            self.step(n, event);
        }
        let now_ms = self.clock(n);
        self.step(n, Event::Tick { now_ms });
    }

    /// The safe end of a lease or an echo counted from `sent_ms` (this node's clock).
    fn safe_end(&self, sent_ms: u64) -> u64 {
        safe_end(sent_ms, self.witness.as_ref().map_or(0, |w| w.policy.ttl_ms))
    }

    /// etcd as node `n` sees it now (`None`: unreachable), its expired leases gone.
    fn etcd(&mut self, n: usize) -> Option<&mut Etcd> {
        let w = self.witness.as_mut()?;
        let now = w.etcd_ms();
        w.etcd.expire(now);
        (!w.etcd.down && !w.etcd.cut[n]).then_some(&mut w.etcd)
    }

    fn agent(&mut self, n: usize) -> &mut Agent {
        &mut self.witness.as_mut().expect("a witness world").agents[n]
    }

    fn round(&mut self, n: usize) {
        if self.witness.is_none() || !self.nodes[n].up || self.frozen(n) {
            return;
        }
        if let Some(paused) = self.etcd(n).map(|e| e.paused) {
            if paused != self.agent(n).paused {
                self.agent(n).paused = paused;
                self.step(n, Event::Witness(WitnessReport::Paused(paused)));
            }
        }
        match self.nodes[n].role {
            Role::Primary | Role::Draining => self.hold(n),
            Role::Backup => {
                self.release(n);
                self.watch(n);
            }
            Role::Fenced => {
                self.release(n);
                self.hold(n);
            }
            Role::Rejoining => self.release(n),
        }
    }

    fn release(&mut self, n: usize) {
        if let Some((lease, _)) = self.agent(n).held.take() {
            if let Some(etcd) = self.etcd(n) {
                etcd.revoke(lease);
            }
        }
    }

    /// The primary's round (a fenced node's too: it only reads).
    fn hold(&mut self, n: usize) {
        let ours = self.nodes[n].engine.state().epoch;
        let fenced = self.nodes[n].role == Role::Fenced;
        let reachable = self.etcd(n).is_some();
        let epoch = self.etcd(n).and_then(|e| e.epoch_key.clone());
        if !fenced && reachable && epoch.as_ref().is_none_or(|(e, _)| e.epoch <= ours) {
            if self.agent(n).held.is_some() {
                self.renew(n);
            } else {
                self.acquire(n, ours, epoch.as_ref());
            }
        }
        let node = &self.nodes[n];
        let backed = (node.ship.is_some() && node.echoed > 0).then(|| self.safe_end(node.echoed));
        let ttl = self.witness.as_ref().map_or(0, |w| w.policy.ttl_ms);
        let promised = if node.followed_until == 0 { 0 } else { node.followed_until + ttl };
        let report = WitnessReport::Holder {
            now_ms: self.clock(n),
            reachable,
            epoch_key: epoch.as_ref().map(|(e, _)| e.clone()),
            lease_until_ms: self.agent(n).held.map(|(_, until)| until),
            backed_until_ms: backed,
            promised_until_ms: promised,
        };
        match self.step(n, Event::Witness(report)) {
            Some(Reply::Witness(WitnessDecision::Rejoin)) => self.rejoin(n),
            Some(Reply::Witness(WitnessDecision::PromoteAlone { epoch: next })) => self.go_alone(n, next, epoch),
            _ => {}
        }
    }

    /// A restarted primary whose peer stays silent raises the epoch key under its lease, then
    /// starts that epoch alone.
    fn go_alone(&mut self, n: usize, next: Epoch, epoch: Option<(WitnessEpoch, u64)>) {
        let Some((lease, _)) = self.agent(n).held else { return };
        let wall = self.wall(n);
        let Some(etcd) = self.etcd(n) else { return };
        let ours = epoch.as_ref().is_some_and(|(e, _)| e.epoch == next && e.node == NAMES[n]);
        if !ours {
            let as_read = epoch.as_ref().map(|(_, revision)| *revision);
            if as_read.is_none() || etcd.epoch_key.as_ref().map(|(_, revision)| *revision) != as_read {
                return;
            }
            etcd.revision += 1;
            etcd.leader = Some((n, next, lease));
            let value = WitnessEpoch { epoch: next, node: NAMES[n].into(), at_ms: wall, automatic: false };
            etcd.epoch_key = Some((value, etcd.revision));
        }
        self.say(|| format!("  {} raised the witness to epoch {next}: it goes on alone", NAMES[n]));
        if let Some(w) = &mut self.witness {
            w.alone += 1;
        }
        let op_id = Uuid::from_u128(u128::from(self.id()));
        self.drive(n, Event::Witness(WitnessReport::Raised { op_id, epoch: next }));
    }

    /// Renews the lease every ttl/4.
    fn renew(&mut self, n: usize) {
        let (clock, ttl) = (self.clock(n), self.witness.as_ref().map_or(0, |w| w.policy.ttl_ms));
        let agent = self.agent(n).clone();
        let Some((lease, _)) = agent.held else { return };
        if agent.last_renew.is_some_and(|at| clock < at + ttl / 4) {
            return;
        }
        let etcd_now = self.witness.as_ref().map_or(0, Witness::etcd_ms);
        let alive = self.etcd(n).is_some_and(|e| e.keep_alive(lease, etcd_now, ttl));
        let until = self.safe_end(clock);
        let agent = self.agent(n);
        if alive {
            (agent.held, agent.last_renew) = (Some((lease, until)), Some(clock));
        } else {
            agent.held = None;
        }
    }

    /// Takes the leader key for our epoch if absent and the epoch key still as read; or adopts
    /// our own key from before a restart; or raises the epoch key over an older holder.
    fn acquire(&mut self, n: usize, ours: Epoch, epoch: Option<&(WitnessEpoch, u64)>) {
        let (clock, wall) = (self.clock(n), self.wall(n));
        let w = self.witness.as_ref().expect("a witness world");
        let (etcd_now, ttl) = (w.etcd_ms(), w.policy.ttl_ms);
        let until = self.safe_end(clock);
        let Some(etcd) = self.etcd(n) else { return };
        let lease = etcd.grant(etcd_now, ttl);
        let value = match epoch {
            Some((e, _)) if e.epoch == ours => e.clone(),
            _ => WitnessEpoch { epoch: ours, node: NAMES[n].into(), at_ms: wall, automatic: false },
        };
        if etcd.put_if(epoch.map(|(_, revision)| *revision), (n, ours, lease), value) {
            let agent = self.agent(n);
            (agent.held, agent.last_renew) = (Some((lease, until)), Some(clock));
            return;
        }
        etcd.revoke(lease);
        let leader = etcd.leader;
        match leader {
            // Our own key from before a restart: adopt it.
            Some((holder, e, lease)) if holder == n && e == ours && etcd.keep_alive(lease, etcd_now, ttl) => {
                let agent = self.agent(n);
                (agent.held, agent.last_renew) = (Some((lease, until)), Some(clock));
            }
            Some((_, e, _)) if e < ours => {
                if let Some((_, revision)) = epoch.filter(|(e, _)| e.epoch < ours) {
                    if etcd.epoch_key.as_ref().is_some_and(|(_, r)| r == revision) {
                        etcd.revision += 1;
                        let value = WitnessEpoch { epoch: ours, node: NAMES[n].into(), at_ms: wall, automatic: false };
                        etcd.epoch_key = Some((value, etcd.revision));
                    }
                }
            }
            _ => {}
        }
    }

    /// The backup's round: report what it sees; claim the next epoch if the engine says so.
    fn watch(&mut self, n: usize) {
        let reachable = self.etcd(n).is_some();
        let leader_present = self.etcd(n).is_none_or(|e| e.leader.is_some());
        let epoch = self.etcd(n).and_then(|e| e.epoch_key.clone());
        let report = WitnessReport::Watcher {
            now_ms: self.clock(n),
            wall_ms: self.wall(n),
            reachable,
            leader_present,
            epoch_key: epoch.as_ref().map(|(e, _)| e.clone()),
            primary_silent_ms: self.clock(n).saturating_sub(self.nodes[n].heard_at),
            lag_ms: 0,
        };
        if let Some(Reply::Witness(WitnessDecision::Claim { epoch: next, .. })) = self.step(n, Event::Witness(report)) {
            self.claim(n, next, epoch.as_ref());
        }
    }

    fn claim(&mut self, n: usize, next: Epoch, epoch: Option<&(WitnessEpoch, u64)>) {
        let (clock, wall) = (self.clock(n), self.wall(n));
        let w = self.witness.as_ref().expect("a witness world");
        let (etcd_now, ttl) = (w.etcd_ms(), w.policy.ttl_ms);
        let until = self.safe_end(clock);
        let Some(etcd) = self.etcd(n) else { return };
        let lease = etcd.grant(etcd_now, ttl);
        let value = WitnessEpoch { epoch: next, node: NAMES[n].into(), at_ms: wall, automatic: true };
        if !etcd.put_if(epoch.map(|(_, revision)| *revision), (n, next, lease), value) {
            return etcd.revoke(lease);
        }
        self.say(|| format!("  {} claims epoch {next} in the witness", NAMES[n]));
        let agent = self.agent(n);
        (agent.held, agent.last_renew) = (Some((lease, until)), Some(clock));
        let op_id = Uuid::from_u128(u128::from(self.id()));
        let claimed = WitnessReport::Claimed { op_id, epoch: next, lease_until_ms: until };
        // The agent drives the promotion to its end before its next round, as the node does.
        match self.drive(n, Event::Witness(claimed)) {
            Some(Reply::Refused(_)) => self.release(n),
            _ => {
                if let Some(w) = &mut self.witness {
                    w.takeovers += 1;
                }
            }
        }
    }

    /// Rejoins behind the peer as `hotpair rejoin` does (the agent runs the same orchestration),
    /// at most every 3 s and when no admin command runs.
    fn rejoin(&mut self, n: usize) {
        let clock = self.clock(n);
        if self.cli.is_some() || self.agent(n).last_rejoin.is_some_and(|at| clock < at + 3000) {
            return;
        }
        self.agent(n).last_rejoin = Some(clock);
        if let Some(w) = &mut self.witness {
            w.rejoins += 1;
        }
        self.say(|| format!("  {}'s agent rejoins it", NAMES[n]));
        self.start_command(Command::Rejoin { node: NAMES[n].into(), allow_full_copy: false, catch_up_ms: 5000 });
    }

    // -----------------------------------------------------------------------------------------
    // Admin requests on a node.

    fn on_admin(&mut self, n: usize, conn: u64, request: AdminRequest) {
        let node = &mut self.nodes[n];
        let body = match &request {
            AdminRequest::Status => Ok(serde_json::to_value(node.status()).unwrap()),
            AdminRequest::SetProgress { progress } => {
                node.progress = progress.clone();
                Ok(protocol::body(&protocol::SetProgressReply { saved: true }))
            }
            AdminRequest::FirstAvailable => Ok(protocol::body(&protocol::FirstAvailableReply { first_available: 1 })),
            AdminRequest::WaitApplied { .. } | AdminRequest::Verify { .. } => {
                node.waiters.push((conn, request));
                return self.answer_waiters(n);
            }
            _ => {
                if node.running.is_some() {
                    node.queue.push((conn, request));
                } else {
                    self.run_primitive(n, conn, request);
                }
                return;
            }
        };
        self.send(conn, CLI, Body::Reply { body });
    }

    fn answer_waiters(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        let mut answers = Vec::new();
        let mut waiting = Vec::new();
        for (conn, request) in std::mem::take(&mut node.waiters) {
            let lsn = match &request {
                AdminRequest::WaitApplied { lsn, .. } | AdminRequest::Verify { lsn, .. } => *lsn,
                _ => continue,
            };
            if node.applied < lsn || !node.up {
                waiting.push((conn, request));
                continue;
            }
            let body = match &request {
                AdminRequest::WaitApplied { .. } => protocol::body(&protocol::WaitAppliedReply {
                    applied_lsn: node.applied,
                    digest: node.digest(node.applied).to_hex(),
                }),
                _ => protocol::body(&protocol::VerifyReply {
                    lsn,
                    digest: node.digest(lsn).to_hex(),
                    source: "store".into(),
                    applied_lsn: node.applied,
                    full: None,
                }),
            };
            answers.push((conn, body));
        }
        node.waiters = waiting;
        for (conn, body) in answers {
            self.send(conn, CLI, Body::Reply { body: Ok(body) });
        }
    }

    fn run_primitive(&mut self, n: usize, conn: u64, request: AdminRequest) {
        let now_ms = self.clock(n);
        let our_last = self.nodes[n].last();
        let primitive = match request {
            AdminRequest::Drain { op_id, epoch, lease_ms } => Primitive::Drain { op_id, epoch, lease_ms, now_ms },
            AdminRequest::Resume { op_id, epoch } => Primitive::Resume { op_id, epoch },
            AdminRequest::Demote { op_id, epoch } => Primitive::Demote { op_id, epoch },
            AdminRequest::Promote { op_id, epoch, expect_lsn } => Primitive::Promote { op_id, epoch, expect_lsn },
            AdminRequest::Fence { epoch, primary } => Primitive::Fence { epoch, primary },
            AdminRequest::Rejoin { op_id, history, epoch, last_lsn, first_available, dry_run, full_copy } => {
                let primary = PrimaryView { history, epoch, last_lsn, first_available };
                Primitive::Rejoin(RejoinRequest { op_id, primary, dry_run, full_copy, our_last })
            }
            other => {
                let body = Err(format!("{other:?} is not simulated"));
                return self.send(conn, CLI, Body::Reply { body });
            }
        };
        self.nodes[n].running = Some(conn);
        self.step(n, Event::Admin(primitive));
    }

    /// The engine answered the primitive that runs on node `n`: reply, and start the next one.
    fn reply_primitive(&mut self, n: usize, answer: &Reply) {
        let node = &self.nodes[n];
        let Some(conn) = node.running else { return };
        let body = match answer {
            Reply::Refused(reason) => Err(reason.clone()),
            Reply::Drained { lsn, digest, lease_ms } => {
                Ok(protocol::body(&protocol::DrainReply { lsn: *lsn, digest: digest.to_hex(), lease_ms: *lease_ms }))
            }
            Reply::Resumed { was_draining } => Ok(protocol::body(&protocol::ResumeReply { resumed: *was_draining })),
            Reply::Demoted { already } => Ok(protocol::body(&protocol::DemoteReply {
                lsn: node.last(),
                applied_lsn: node.applied,
                digest: node.digest(node.applied).to_hex(),
                already: *already,
            })),
            Reply::Promoted { promotion, already } => {
                Ok(protocol::body(&protocol::PromoteReply::from_promotion(promotion, *already)))
            }
            Reply::Fenced { role, epoch } => Ok(protocol::body(&protocol::FenceReply { role: *role, epoch: *epoch })),
            Reply::RejoinPlanned(p) | Reply::Rejoined { plan: p, .. } => {
                let done = match answer {
                    Reply::Rejoined { orphans_file, rewound, full_copy, .. } => Some(protocol::RejoinDone {
                        orphans_file: orphans_file.clone(),
                        rewound: *rewound,
                        full_copy: *full_copy,
                    }),
                    _ => None,
                };
                Ok(protocol::body(&protocol::RejoinReply {
                    node: node.name().into(),
                    divergence_lsn: p.divergence_lsn,
                    orphaned: p.orphaned,
                    needs_from: p.needs_from,
                    primary_first_available: p.primary_first_available,
                    shippable: p.shippable,
                    earlier: p.earlier.clone(),
                    done,
                }))
            }
            Reply::Hello(_) | Reply::Follow | Reply::Witness(_) => return,
        };
        self.nodes[n].running = None;
        self.send(conn, CLI, Body::Reply { body });
        if !self.nodes[n].queue.is_empty() {
            let (conn, request) = self.nodes[n].queue.remove(0);
            self.run_primitive(n, conn, request);
        }
    }

    // -----------------------------------------------------------------------------------------
    // The CLI.

    fn view(&self) -> PairView {
        let nodes = (0..2)
            .map(|n| {
                let node = &self.nodes[n];
                let status = if node.up { Ok(node.status()) } else { Err(format!("cannot reach {}", node.name())) };
                NodeView { name: node.name().into(), status }
            })
            .collect();
        PairView { nodes }
    }

    fn admin(&mut self, choice: u64) {
        if self.cli.is_some() {
            return;
        }
        let node = NAMES[(choice % 2) as usize].to_string();
        let command = match (choice / 2) % 6 {
            0 | 1 => {
                let to = (choice % 3 == 0).then(|| node.clone());
                Command::Switchover {
                    to,
                    timeout_ms: 300 + (choice / 12) % 3000,
                    max_lag_ms: 1_000_000,
                    dry_run: false,
                }
            }
            2 => Command::Failover { to: node, force: choice % 5 == 0 },
            3 | 4 => Command::Rejoin { node, allow_full_copy: false, catch_up_ms: 5000 },
            _ => Command::Switchback { preferred: "a".into(), timeout_ms: 3000 },
        };
        self.start_command(command);
    }

    /// The CLI (or a node's witness agent, which runs the same orchestration) starts a command.
    fn start_command(&mut self, command: Command) {
        let view = self.view();
        let progress = match &command {
            Command::Switchover { .. } | Command::Switchback { .. } => view.progress("switchover").ok().flatten(),
            Command::Failover { .. } => view.progress("failover").ok().flatten(),
            Command::Rejoin { .. } => None,
        };
        let op_id = Uuid::from_u128(u128::from(self.id()));
        self.say(|| format!("  admin runs {command:?}"));
        self.forced |= matches!(command, Command::Failover { force: true, .. });
        self.cli = Some(Cli { command, memory: Memory::new(op_id, progress), awaiting: None, waiting: None });
    }

    fn cli_step(&mut self) {
        let Some(mut cli) = self.cli.take() else { return };
        if let Some((_, step, node, request, deadline)) = cli.awaiting.clone() {
            if self.now >= deadline {
                let answer = Err(format!("{node} did not answer in time"));
                cli.memory.heard.push(Heard::Reply { step, node, request, answer });
                cli.awaiting = None;
            }
            self.cli = Some(cli);
            return;
        }
        let view = self.view();
        if let Some((step, until, deadline)) = cli.waiting.clone() {
            if until.holds(&view) {
                cli.memory.heard.push(Heard::Waited { step, result: Ok(()) });
                cli.waiting = None;
            } else if self.now >= deadline {
                cli.memory.heard.push(Heard::Waited { step, result: Err("not in time".into()) });
                cli.waiting = None;
            }
            self.cli = Some(cli);
            return;
        }
        let next = plan::plan(&cli.command, &view, &cli.memory);
        self.say(|| format!("  cli: {}", short_next(&next)));
        match next {
            Next::Save(progress) => {
                let value = progress.as_ref().map(|p| serde_json::to_value(p).unwrap());
                for node in self.nodes.iter_mut().filter(|n| n.up) {
                    node.progress = value.clone();
                }
                cli.memory.progress = progress;
            }
            Next::Say(line) => cli.memory.heard.push(Heard::Said(line)),
            Next::Send { step, node, request, timeout_ms } => {
                let n = NAMES.iter().position(|name| *name == node).expect("a node");
                if !self.nodes[n].up {
                    let answer = Err(format!("cannot reach {node}"));
                    cli.memory.heard.push(Heard::Reply { step, node, request, answer });
                } else {
                    let conn = self.conn();
                    self.send(conn, n, Body::Admin { request: request.clone() });
                    cli.awaiting = Some((conn, step, node, request, self.now + timeout_ms));
                }
            }
            Next::Wait { step, until, timeout_ms } => cli.waiting = Some((step, until, self.now + timeout_ms)),
            Next::Finish(Finish { clear, result, .. }) => {
                if clear {
                    for node in self.nodes.iter_mut().filter(|n| n.up) {
                        node.progress = None;
                    }
                }
                self.commands_done += 1;
                self.say(|| format!("  cli: finished: {result:?}"));
                return;
            }
        }
        self.cli = Some(cli);
    }

    fn cli_reply(&mut self, msg: Msg) {
        let Some(cli) = &mut self.cli else { return };
        let Some((conn, step, node, request, _)) = cli.awaiting.clone() else { return };
        if conn != msg.conn {
            return;
        }
        let Body::Reply { body } = msg.body else { return };
        let answer = body.and_then(|body| plan::answer_of(&node, &request, body));
        cli.memory.heard.push(Heard::Reply { step, node, request, answer });
        cli.awaiting = None;
    }

    // -----------------------------------------------------------------------------------------
    // The invariants.

    /// Invariant 5 at this moment (also checked where a resumed node answers its writes).
    fn one_writer_now(&self) -> Result<(), String> {
        if self.witness.is_none() || self.forced {
            return Ok(());
        }
        let ignore_deadline = self.sabotage == Sabotage::AckPastDeadline;
        let could = |n: usize| {
            let node = &self.nodes[n];
            let in_time = self.clock(n) < node.deadline || ignore_deadline;
            node.up && node.gate == Gate::Open && node.pipeline.is_some() && in_time
        };
        if !(could(0) && could(1)) {
            return Ok(());
        }
        let (a, b) = (&self.nodes[0], &self.nodes[1]);
        Err(format!(
            "never two writers: a (epoch {:?}, deadline {}, clock {}) and b (epoch {:?}, deadline {}, clock {}) could both acknowledge a write now",
            a.pipeline,
            a.deadline,
            self.clock(0),
            b.pipeline,
            b.deadline,
            self.clock(1)
        ))
    }

    fn check(&mut self) -> Result<(), String> {
        if let Some(violation) = self.violation.take() {
            return Err(violation);
        }
        // 1. One writer per epoch: whoever acknowledged a write of an epoch is its only writer.
        for w in &self.acked {
            let writer = *self.writer_of.entry(w.epoch).or_insert(w.node);
            if writer != w.node {
                return Err(format!(
                    "one writer per epoch: {} and {} both acknowledged writes in epoch {}",
                    NAMES[writer], NAMES[w.node], w.epoch
                ));
            }
        }
        let open: Vec<&Node> =
            self.nodes.iter().filter(|n| n.up && n.gate == Gate::Open && n.pipeline.is_some()).collect();
        if open.len() == 2 && open[0].pipeline == open[1].pipeline && !self.forced {
            return Err(format!("one writer per epoch: both nodes take writes in epoch {:?}", open[0].pipeline));
        }
        // 2. No acknowledged write is missing from a node that takes writes.
        for node in &open {
            let epoch = node.pipeline.unwrap_or(0);
            for w in self.acked.iter().filter(|w| w.epoch <= epoch) {
                if node.log.get(w.lsn as usize - 1).map(|r| r.id) != Some(w.id) {
                    return Err(format!(
                        "acknowledged write lost: {} takes writes in epoch {epoch} without the write acknowledged by {} at LSN {} (epoch {})",
                        node.name(),
                        NAMES[w.node],
                        w.lsn,
                        w.epoch
                    ));
                }
            }
        }
        // 3. Same LSN, same record, on both nodes' stores.
        let (a, b) = (&self.nodes[0], &self.nodes[1]);
        for node in [a, b] {
            if node.applied > node.last() {
                return Err(format!("{} applied LSN {} past its log ({})", node.name(), node.applied, node.last()));
            }
        }
        // At the same (epoch, LSN): a failover leaves the old primary a tail of its own epoch at
        // LSNs the new one writes in the next, until it is rejoined. A forced failover may make
        // two primaries of one epoch (the admin overrode the refusal that says so); their epochs
        // are then told apart by their primary, as the nodes' histories do.
        // With a witness, an admin's promotion that comes late (a switchover's promote sent
        // before, delivered after, a witness claim of the same epoch) makes a second primary of
        // that epoch too; it takes no write (the witness names the other, invariant 5) and
        // fences itself at its agent's next round.
        let by_primary = self.forced || self.witness.is_some();
        let both = a.applied.min(b.applied) as usize;
        let same_epoch = |x: &Rec, y: &Rec| x.epoch == y.epoch && (!by_primary || x.writer == y.writer);
        let differ = |i: usize| same_epoch(&a.log[i], &b.log[i]) && a.log[i].id != b.log[i].id;
        if let Some(lsn) = (0..both).find(|&i| differ(i)) {
            return Err(format!(
                "same LSN, same record: a and b applied different records at LSN {} of epoch {}",
                lsn + 1,
                a.log[lsn].epoch
            ));
        }
        // 5. With a witness, never two writers at one moment, whatever their epochs: a node
        //    could acknowledge a write now if its gate is open and its deadline (its clock) not
        //    passed — a stopped node too, as it would the moment it runs again.
        self.one_writer_now()?;
        // 4. Epochs never go back.
        for (node, seen) in self.nodes.iter().zip(self.epochs_seen.iter_mut()) {
            let epoch = node.meta.epoch;
            if epoch < *seen {
                return Err(format!("{}'s epoch went back from {seen} to {epoch}", node.name()));
            }
            *seen = epoch;
        }
        Ok(())
    }
}

fn short(event: &Event) -> String {
    let text = format!("{event:?}");
    if text.len() > 160 {
        format!("{}…", &text[..160])
    } else {
        text
    }
}

fn short_next(next: &Next) -> String {
    match next {
        Next::Save(p) => format!("save progress {:?}", p.as_ref().map(|p| (p.op_id.as_u128(), p.step, p.drain_lsn))),
        Next::Send { step, node, request, .. } => format!("{} → {node}: {request:?}", step.name()),
        Next::Wait { step, until, .. } => format!("{} until {until:?}", step.name()),
        Next::Say(line) => format!("say {line}"),
        Next::Finish(f) => format!("finish {:?}", f.result),
    }
}

// ---------------------------------------------------------------------------------------------
// Running schedules.

/// A failed schedule: the step at which an invariant broke, and why.
struct Failure {
    step: usize,
    reason: String,
}

/// The `[witness]` a seed's world has: ttls from etcd's least to the pair file's most (the
/// longer the ttl, the more clock drift counts), flapping guards from none to minutes.
fn witness_policy(seed: u64) -> WitnessPolicy {
    WitnessPolicy {
        automatic: true,
        ttl_ms: [2_000, 3_000, 5_000, 30_000, 60_000][(seed % 5) as usize],
        max_lag_ms: None,
        min_interval_ms: [0, 5_000, 300_000][(seed / 5 % 3) as usize],
    }
}

fn schedule(seed: u64, witness: Option<WitnessPolicy>) -> Vec<Op> {
    let mut rng = Rng(seed);
    match witness {
        None => (0..STEPS).map(|_| random_op(&mut rng)).collect(),
        Some(policy) => (0..WITNESS_STEPS).map(|_| random_witness_op(&mut rng, policy.ttl_ms)).collect(),
    }
}

fn run(ops: &[Op], setup: Setup, tracing: bool) -> (Result<(), Failure>, World) {
    let mut world = World::new(setup, tracing);
    for (step, op) in ops.iter().enumerate() {
        world.say(|| format!("{step:>4} {op:?}"));
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.apply(*op)));
        match applied {
            Ok(()) => {}
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
                return (Err(Failure { step, reason: format!("panic: {}", what.unwrap_or_default()) }), world);
            }
        }
        if let Err(reason) = world.check() {
            return (Err(Failure { step, reason }), world);
        }
    }
    (Ok(()), world)
}

/// The shortest sub-schedule found that still fails (delta debugging over chunks).
fn shrink(ops: &[Op], setup: Setup) -> Vec<Op> {
    let mut ops = ops.to_vec();
    if let (Err(failure), _) = run(&ops, setup, false) {
        ops.truncate(failure.step + 1);
    }
    let mut chunk = ops.len() / 2;
    let mut attempts = 0;
    while chunk >= 1 && attempts < 4000 {
        let mut i = 0;
        let mut removed = false;
        while i < ops.len() && attempts < 4000 {
            let mut candidate = ops.clone();
            candidate.drain(i..(i + chunk).min(candidate.len()));
            attempts += 1;
            if let (Err(failure), _) = run(&candidate, setup, false) {
                candidate.truncate(failure.step + 1);
                ops = candidate;
                removed = true;
            } else {
                i += chunk;
            }
        }
        if !removed {
            chunk /= 2;
        }
    }
    ops
}

fn sabotage_from_env() -> Sabotage {
    match std::env::var(SABOTAGE_ENV) {
        Err(_) => Sabotage::None,
        Ok(name) => Sabotage::ALL.iter().find(|(n, _)| *n == name).map(|(_, s)| *s).unwrap_or_else(|| {
            let names: Vec<&str> = Sabotage::ALL.iter().map(|(n, _)| *n).collect();
            panic!("{SABOTAGE_ENV}={name:?}: the sabotages are: {}", names.join(", "))
        }),
    }
}

/// What a run of many schedules did.
#[derive(Default, Debug)]
struct Tally {
    schedules: u64,
    commands: u64,
    takeovers: u64,
    rejoins: u64,
    alone: u64,
}

/// Runs `count` schedules from `first_seed` on (with a witness if `witness`); the first
/// failure, shrunk and traced.
fn simulate(first_seed: u64, count: u64, sabotage: Sabotage, witness: bool) -> Result<Tally, String> {
    let mut tally = Tally::default();
    for seed in first_seed..first_seed + count {
        let setup = Setup { sabotage, witness: witness.then(|| witness_policy(seed)) };
        let ops = schedule(seed, setup.witness);
        let (result, world) = run(&ops, setup, false);
        tally.schedules += 1;
        tally.commands += world.commands_done;
        if let Some(w) = &world.witness {
            tally.takeovers += w.takeovers;
            tally.rejoins += w.rejoins;
            tally.alone += w.alone;
        }
        if let Err(failure) = result {
            let shrunk = shrink(&ops, setup);
            let (again, world) = run(&shrunk, setup, true);
            let reason = again.err().map_or(failure.reason.clone(), |f| f.reason);
            let trace = world.trace.unwrap_or_default().join("\n");
            let env = [
                sabotage.name().map(|name| format!(" {SABOTAGE_ENV}={name}")),
                witness.then(|| format!(" {WITNESS_ENV}=1")),
            ]
            .into_iter()
            .flatten()
            .collect::<String>();
            return Err(format!(
                "seed {seed}: {} (at step {} of the full schedule; {setup:?})\nreplay: {SEED_ENV}={seed}{} cargo test --release --test simulation -- --nocapture\nshrunk to {} steps:\n{trace}\n=> {reason}",
                failure.reason,
                failure.step,
                env,
                shrunk.len()
            ));
        }
    }
    Ok(tally)
}

/// The seeds to run: one (`HOTPAIR_SIM_SEED`) or `count` from 1 (`count_env` overrides).
fn seeds(count_env: &str, default: u64) -> (u64, u64) {
    match std::env::var(SEED_ENV) {
        Ok(seed) => (seed.parse().expect("HOTPAIR_SIM_SEED is a number"), 1),
        Err(_) => (
            std::env::var(FIRST_SEED_ENV).map_or(1, |n| n.parse().expect("HOTPAIR_SIM_FIRST_SEED is a number")),
            std::env::var(count_env).map_or(default, |n| n.parse().expect("a number")),
        ),
    }
}

#[test]
fn random_schedules_keep_every_invariant() {
    if std::env::var_os(SEED_ENV).is_some() && std::env::var_os(WITNESS_ENV).is_some() {
        return; // replaying a seed of the witness's schedules
    }
    let (first, count) = seeds(SCHEDULES_ENV, DEFAULT_SCHEDULES);
    match simulate(first, count, sabotage_from_env(), false) {
        Ok(t) => println!("simulated {} schedules ({} admin commands ran to their end)", t.schedules, t.commands),
        Err(report) => panic!("{report}"),
    }
}

#[test]
fn random_schedules_with_a_witness_keep_every_invariant() {
    if std::env::var_os(SEED_ENV).is_some() && std::env::var_os(WITNESS_ENV).is_none() {
        return; // replaying a seed of the schedules without a witness
    }
    let (first, count) = seeds(WITNESS_SCHEDULES_ENV, DEFAULT_WITNESS_SCHEDULES);
    match simulate(first, count, sabotage_from_env(), true) {
        Ok(t) => {
            println!(
                "simulated {} schedules with a witness: {} automatic failovers, {} automatic rejoins, {} restarted primaries went on alone, {} admin commands ran to their end",
                t.schedules, t.takeovers, t.rejoins, t.alone, t.commands
            );
            assert!(
                t.schedules < 100 || t.takeovers > t.schedules / 10,
                "the witness schedules rarely fail over: {t:?}"
            );
        }
        Err(report) => panic!("{report}"),
    }
}

#[test]
fn a_broken_promotion_is_caught() {
    // A promotion that starts the new epoch after what the node applied, dropping what it
    // received but had not applied: acknowledged writes are lost, and the simulation says so.
    let report =
        simulate(1, 3000, Sabotage::ForgetUnappliedAtPromotion, false).expect_err("the sabotage went unnoticed");
    assert!(report.contains("acknowledged write lost") || report.contains("same LSN"), "{report}");
    assert!(report.contains("replay: HOTPAIR_SIM_SEED="), "{report}");
}

#[test]
fn a_primary_acknowledging_past_its_witness_deadline_is_caught() {
    // A primary frozen past its lease that answers its waiting writes on SIGCONT without
    // looking at its deadline again: the backup has taken over by then.
    let report = simulate(1, 3000, Sabotage::AckPastDeadline, true).expect_err("the sabotage went unnoticed");
    assert!(report.contains("two writers") || report.contains("one writer per epoch"), "{report}");
    assert!(report.contains("HOTPAIR_SIM_WITNESS=1"), "{report}");
}
