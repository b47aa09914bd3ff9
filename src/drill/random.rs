//! `hotpair drill --random SEED [--steps N]`: a random fault schedule over a workload, written as
//! a playbook and run like one.
//!
//! ## Job
//! [`schedule`] turns a seed into playbook text: a pair at `durable` under a steady write load
//! goes through `N` *episodes*, each a fault and its repair, drawn at random — SIGKILL of the
//! backup or of the primary (then failover, restart, rejoin), SIGSTOP of either node, a
//! partition of the link (packets dropped or connections reset), a restart of either node, a
//! planned switchover, a switchback — and an orchestration command is now and then SIGKILLed
//! mid-way (`kill_after`) and run again, as an admin would. After each episode the drill waits
//! until the backup caught up. At the end the workload stops, the pair is verified in full, and
//! the oracle judges: no acknowledged write lost, equal digests.
//!
//! ## Invariants
//! - The same seed and step count give the same text, byte for byte: the generator reads no
//!   clock and no environment, only its own [`SplitMix64`]. The text is printed before the run,
//!   so any schedule can be replayed as a playbook (`hotpair drill FILE`) or by its seed.
//! - Every step is valid where the schedule puts it: the generator tracks which node is primary,
//!   and every episode ends with both nodes up, the link whole, and the backup caught up. A
//!   failing drill is the pair's failure, not the schedule's.
//! - The text goes through [`Playbook::parse`], like any playbook: one parser, one meaning.

use std::fmt::Write as _;
use std::path::Path;

use super::playbook::{Playbook, PlaybookError};

/// Episodes when `--steps` is not given.
pub const DEFAULT_EPISODES: u32 = 8;
/// Most episodes one schedule may have (a day of drilling at a few seconds each).
pub const MAX_EPISODES: u32 = 10_000;
/// The pair's preferred primary and its backup, as `hotpair init` names them for a drill.
const PREFERRED: &str = "a";
const OTHER: &str = "b";
/// How long each episode's wait for the backup to catch up may take.
const CATCH_UP: &str = "30s";

/// A small, well-mixed PRNG (SplitMix64): enough to draw a schedule, and stable across builds
/// and platforms, which a seed must be.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.next_u64() % n == 0
    }

    fn millis(&mut self, low: u64, high: u64) -> String {
        format!("{}ms", self.between(low, high))
    }
}

/// The fault episodes, each with its weight in the draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Episode {
    KillBackup,
    KillPrimaryAndFailOver,
    PauseBackup,
    PausePrimary,
    Partition,
    RestartBackup,
    RestartPrimary,
    Switchover,
    Switchback,
    /// With a witness: SIGKILL of the primary, the backup takes over by itself, the old
    /// primary restarted rejoins by itself.
    KillPrimaryAutomatic,
    /// With a witness: SIGSTOP of the primary past the ttl, the backup takes over, the old
    /// primary resumed fences and rejoins by itself.
    FreezePrimaryPastTtl,
    /// With a witness: etcd SIGKILLed for a while, then started again.
    KillWitness,
    /// With a witness: one node cut from etcd for a while.
    PartitionFromWitness,
}

const EPISODES: &[(Episode, u64)] = &[
    (Episode::KillBackup, 2),
    (Episode::KillPrimaryAndFailOver, 3),
    (Episode::PauseBackup, 1),
    (Episode::PausePrimary, 1),
    (Episode::Partition, 2),
    (Episode::RestartBackup, 1),
    (Episode::RestartPrimary, 1),
    (Episode::Switchover, 3),
    (Episode::Switchback, 1),
];

/// Added to [`EPISODES`] when the schedule has a witness.
const WITNESS_EPISODES: &[(Episode, u64)] = &[
    (Episode::KillPrimaryAutomatic, 3),
    (Episode::FreezePrimaryPastTtl, 2),
    (Episode::KillWitness, 2),
    (Episode::PartitionFromWitness, 2),
];
/// The witness's ttl in a random drill: short, so that a takeover costs seconds.
const WITNESS_TTL_S: u64 = 2;

/// Which node plays which part right now.
struct Roles {
    primary: &'static str,
    backup: &'static str,
}

impl Roles {
    fn swap(&mut self) {
        std::mem::swap(&mut self.primary, &mut self.backup);
    }
}

/// The schedule's playbook text for `seed` and `episodes`.
pub fn schedule(seed: u64, episodes: u32) -> String {
    schedule_with(seed, episodes, false)
}

/// The schedule's playbook text; `witness`: the pair gets the drill's etcd as its witness and
/// the draw also holds the witness episodes (a different schedule from the same seed).
pub fn schedule_with(seed: u64, episodes: u32, witness: bool) -> String {
    let mut rng = SplitMix64::new(seed);
    let mut out = String::new();
    let flag = if witness { " --witness" } else { "" };
    let _ =
        writeln!(out, "# generated by `hotpair drill --random {seed} --steps {episodes}{flag}`; replay with either");
    let _ = writeln!(out, "# that command or `hotpair drill FILE` on this text.");
    let _ = writeln!(out, "name = \"random drill: seed {seed}, {episodes} episodes{flag}\"");
    out.push_str("sync = \"durable\"\nsync_timeout = \"2s\"\nheartbeat = \"100ms\"\n");
    if witness {
        // A new primary whose old one is dead takes writes at once (the automatic failover's
        // point); min_interval 0s: one schedule may fail over automatically many times.
        out.push_str("on_peer_loss = \"degrade-after:0s\"\n");
        let _ = writeln!(out, "[witness]\nttl = \"{WITNESS_TTL_S}s\"\nmin_interval = \"0s\"\n");
    }
    step(
        &mut out,
        "workload",
        &[("clients", "4".into()), ("rate", "300".into()), ("keys", "2000".into()), ("value_size", "64".into())],
    );
    pause(&mut out, &mut rng);
    let mut roles = Roles { primary: PREFERRED, backup: OTHER };
    for number in 1..=episodes {
        let episode = draw(&mut rng, &roles, witness);
        let _ = writeln!(out, "\n# episode {number}: {episode:?} (primary {}, backup {})", roles.primary, roles.backup);
        write_episode(&mut out, &mut rng, &mut roles, episode);
        step(&mut out, "wait-caught-up", &[("timeout", quoted(CATCH_UP))]);
        pause(&mut out, &mut rng);
    }
    out.push_str("\n# the end: every acknowledged write on the pair, the same data on both nodes\n");
    step(&mut out, "stop-workload", &[]);
    step(&mut out, "wait-caught-up", &[("timeout", quoted(CATCH_UP))]);
    step(&mut out, "verify", &[("full", "true".into())]);
    out.push_str("\n[expect]\nlost_acknowledged = 0\ndigests_equal = true\nmin_acknowledged = 1\n");
    if witness {
        out.push_str("single_writer = true\n");
    }
    out
}

/// The schedule for `seed`, parsed: what `hotpair drill --random` runs.
pub fn playbook(seed: u64, episodes: u32) -> Result<(String, Playbook), PlaybookError> {
    playbook_with(seed, episodes, false)
}

/// [`playbook`], with the witness or without.
pub fn playbook_with(seed: u64, episodes: u32, witness: bool) -> Result<(String, Playbook), PlaybookError> {
    let text = schedule_with(seed, episodes, witness);
    let book = Playbook::parse(&text, Path::new(&format!("random-{seed}.toml")))?;
    Ok((text, book))
}

fn draw(rng: &mut SplitMix64, roles: &Roles, witness: bool) -> Episode {
    let extra = if witness { WITNESS_EPISODES } else { &[] };
    let allowed: Vec<(Episode, u64)> = EPISODES
        .iter()
        .chain(extra)
        .copied()
        .filter(|(episode, _)| *episode != Episode::Switchback || roles.primary != PREFERRED)
        .collect();
    let total: u64 = allowed.iter().map(|(_, weight)| weight).sum();
    let mut pick = rng.next_u64() % total;
    for (episode, weight) in &allowed {
        if pick < *weight {
            return *episode;
        }
        pick -= weight;
    }
    allowed[0].0
}

fn write_episode(out: &mut String, rng: &mut SplitMix64, roles: &mut Roles, episode: Episode) {
    let (primary, backup) = (roles.primary, roles.backup);
    match episode {
        Episode::KillBackup => {
            step(out, "kill", &[("node", quoted(backup))]);
            sleep(out, rng.millis(50, 1500));
            step(out, "restart", &[("node", quoted(backup))]);
        }
        Episode::KillPrimaryAndFailOver => {
            step(out, "kill", &[("node", quoted(primary))]);
            sleep(out, rng.millis(0, 500));
            orchestration(out, rng, "failover", &[("to", quoted(backup))]);
            roles.swap();
            sleep(out, rng.millis(0, 1000));
            step(out, "restart", &[("node", quoted(primary))]);
            orchestration(out, rng, "rejoin", &[("node", quoted(primary))]);
        }
        Episode::PauseBackup => {
            step(out, "pause", &[("node", quoted(backup))]);
            sleep(out, rng.millis(100, 1500));
            step(out, "resume", &[("node", quoted(backup))]);
        }
        Episode::PausePrimary => {
            step(out, "pause", &[("node", quoted(primary))]);
            sleep(out, rng.millis(100, 800));
            step(out, "resume", &[("node", quoted(primary))]);
        }
        Episode::Partition => {
            let mode = if rng.one_in(2) { "drop" } else { "reset" };
            step(out, "partition", &[("mode", quoted(mode))]);
            sleep(out, rng.millis(200, 1500));
            step(out, "heal", &[]);
        }
        Episode::RestartBackup => step(out, "restart", &[("node", quoted(backup))]),
        Episode::RestartPrimary => step(out, "restart", &[("node", quoted(primary))]),
        Episode::Switchover => {
            orchestration(out, rng, "switchover", &[("to", quoted(backup))]);
            roles.swap();
        }
        Episode::Switchback => {
            orchestration(out, rng, "switchback", &[]);
            *roles = Roles { primary: PREFERRED, backup: OTHER };
        }
        Episode::KillPrimaryAutomatic => {
            step(out, "kill", &[("node", quoted(primary))]);
            step(out, "wait-primary", &[("node", quoted(backup)), ("timeout", quoted(CATCH_UP))]);
            roles.swap();
            sleep(out, rng.millis(0, 1000));
            step(out, "restart", &[("node", quoted(primary))]);
        }
        Episode::FreezePrimaryPastTtl => {
            step(out, "pause", &[("node", quoted(primary))]);
            step(out, "wait-primary", &[("node", quoted(backup)), ("timeout", quoted(CATCH_UP))]);
            roles.swap();
            sleep(out, rng.millis(0, 1000));
            step(out, "resume", &[("node", quoted(primary))]);
        }
        Episode::KillWitness => {
            step(out, "kill-witness", &[]);
            sleep(out, rng.millis(200, 2 * WITNESS_TTL_S * 1000));
            step(out, "start-witness", &[]);
        }
        Episode::PartitionFromWitness => {
            let node = if rng.one_in(2) { primary } else { backup };
            step(out, "partition", &[("from", quoted("witness")), ("node", quoted(node))]);
            sleep(out, rng.millis(200, 2 * WITNESS_TTL_S * 1000));
            step(out, "heal", &[("from", quoted("witness"))]);
        }
    }
}

/// An orchestration step; one time in three its command is SIGKILLed mid-way and run again.
fn orchestration(out: &mut String, rng: &mut SplitMix64, verb: &str, keys: &[(&str, String)]) {
    let mut keys = keys.to_vec();
    if rng.one_in(3) {
        keys.push(("kill_after", quoted(&rng.millis(0, 400))));
    }
    step(out, verb, &keys);
}

/// A short quiet spell of workload between episodes.
fn pause(out: &mut String, rng: &mut SplitMix64) {
    sleep(out, rng.millis(200, 800));
}

fn sleep(out: &mut String, duration: String) {
    step(out, "sleep", &[("for", quoted(&duration))]);
}

fn step(out: &mut String, verb: &str, keys: &[(&str, String)]) {
    let _ = writeln!(out, "[[step]]\ndo = \"{verb}\"");
    for (key, value) in keys {
        let _ = writeln!(out, "{key} = {value}");
    }
}

fn quoted(text: &str) -> String {
    format!("\"{text}\"")
}

/// Bounds `--steps`.
pub fn check_episodes(episodes: u32) -> Result<u32, String> {
    if episodes == 0 || episodes > MAX_EPISODES {
        return Err(format!("--steps {episodes}: give 1 to {MAX_EPISODES} episodes"));
    }
    Ok(episodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::playbook::Action;

    #[test]
    fn a_seed_gives_one_schedule_that_parses_and_another_seed_another() {
        for seed in 0..200 {
            let (text, book) = playbook(seed, 12).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(text, schedule(seed, 12), "seed {seed} is not deterministic");
            book.check_nodes(&[PREFERRED.into(), OTHER.into()]).unwrap();
            assert!(matches!(book.steps.first().map(|s| &s.action), Some(Action::Workload(_))));
            assert!(matches!(book.steps.last().map(|s| &s.action), Some(Action::Verify { full: true })));
            assert_eq!(book.expect.lost_acknowledged, Some(0));
            assert_eq!(book.expect.digests_equal, Some(true));
        }
        assert_ne!(schedule(1, 12), schedule(2, 12));
    }

    #[test]
    fn every_episode_ends_healed_with_the_roles_the_schedule_tracks() {
        // Replays each schedule's steps on the same model the generator used: a kill is always
        // followed by a restart of that node before the next episode, a pause by a resume, a
        // partition by a heal, and every failover/switchover names the node that is backup.
        for seed in 0..300 {
            let (_, book) = playbook(seed, 20).unwrap();
            let mut primary = PREFERRED.to_string();
            let mut down: Option<String> = None;
            let mut paused: Option<String> = None;
            let mut cut = false;
            let mut kinds = std::collections::BTreeSet::new();
            for step in &book.steps {
                kinds.insert(step.verb);
                let backup = if primary == PREFERRED { OTHER } else { PREFERRED }.to_string();
                match &step.action {
                    Action::Kill { node } => down = Some(node.clone()),
                    Action::Restart { node } => {
                        assert!(down.is_none() || down.as_ref() == Some(node), "seed {seed}");
                        down = None;
                    }
                    Action::Pause { node } => paused = Some(node.clone()),
                    Action::Resume { node } => {
                        assert_eq!(paused.as_ref(), Some(node), "seed {seed}");
                        paused = None;
                    }
                    Action::Partition { .. } => cut = true,
                    Action::Heal { .. } => cut = false,
                    Action::Failover { to, .. } | Action::Switchover { to: Some(to), .. } => {
                        assert_eq!(*to, backup, "seed {seed}: promotes the backup");
                        primary = to.clone();
                    }
                    Action::Switchback { .. } => primary = PREFERRED.into(),
                    Action::WaitCaughtUp { .. } => {
                        assert!(down.is_none() && paused.is_none() && !cut, "seed {seed}: caught up while broken");
                    }
                    _ => {}
                }
            }
            assert!(down.is_none() && paused.is_none() && !cut, "seed {seed} ends broken");
            if seed == 299 {
                assert!(kinds.len() >= 10, "few kinds of step over 20 episodes: {kinds:?}");
            }
        }
    }

    #[test]
    fn a_witness_schedule_draws_witness_faults_and_judges_single_writer() {
        let mut verbs = std::collections::BTreeSet::new();
        for seed in 0..100 {
            let (text, book) = playbook_with(seed, 12, true).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(text, schedule_with(seed, 12, true), "seed {seed} is not deterministic");
            book.check_nodes(&[PREFERRED.into(), OTHER.into()]).unwrap();
            assert_eq!(book.expect.single_writer, Some(true));
            let mut primary = PREFERRED.to_string();
            for step in &book.steps {
                verbs.insert(step.verb);
                let backup = if primary == PREFERRED { OTHER } else { PREFERRED }.to_string();
                match &step.action {
                    Action::WaitPrimary { node, .. } => {
                        assert_eq!(*node, backup, "seed {seed}: waits for the backup to take over");
                        primary = node.clone();
                    }
                    Action::Failover { to, .. } | Action::Switchover { to: Some(to), .. } => primary = to.clone(),
                    Action::Switchback { .. } => primary = PREFERRED.into(),
                    _ => {}
                }
            }
        }
        for verb in ["wait-primary", "kill-witness", "start-witness"] {
            assert!(verbs.contains(verb), "no {verb} in 100 witness schedules: {verbs:?}");
        }
        assert_ne!(schedule_with(1, 12, true), schedule(1, 12));
    }

    #[test]
    fn some_commands_are_killed_mid_way() {
        let killed = (0..50).filter(|&seed| schedule(seed, 8).contains("kill_after")).count();
        assert!(killed > 25, "only {killed} of 50 schedules kill a command");
    }
}
