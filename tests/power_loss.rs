//! Power cuts (issue 18, item 10): every crash test before these used SIGKILL, after which the
//! page cache survives, so none could catch a missing fsync. Here each node runs under the
//! power-cut shim (`tests/powerloss/shim.c`, `tests/common/powerloss.rs`): at a random moment
//! under a `durable` write load one node — the primary or the backup — is killed and every
//! change to its data directory that no fsync covered is undone, as a power cut at that instant
//! could leave it. Then:
//! - what the node said was durable just before the cut is still in its journal (the primary's
//!   local journal up to its durable LSN, the backup's remote journal up to what it had acked);
//! - `hotpair journal verify` finds no damage (a torn last record is allowed: it is cut at open);
//! - the node restarts on those files and the pair is whole again.
//!
//! At the end every acknowledged write is on both nodes, which agree on the digest.
//!
//! A journal that skips its fsyncs (`HOTPAIR_UNSAFE_TEST_SKIP_JOURNAL_FSYNC`) must be caught:
//! `a_journal_that_skips_its_fsyncs_is_caught` runs the same cuts with it and expects a failure.
//!
//! Short by default (3 cuts); `HOTPAIR_POWER_LOSS_CUTS=N` runs N, `HOTPAIR_POWER_LOSS_SEED=S`
//! replays a run (the seed is printed).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::powerloss::{cut_power, Shim};
use common::{Pair, Writers, BACKUP, PRIMARY};
use hotpair::config::SyncLevel;
use hotpair::drill::random::SplitMix64;
use redis::Commands;

const DEFAULT_CUTS: u32 = 3;

fn cuts() -> u32 {
    std::env::var("HOTPAIR_POWER_LOSS_CUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_CUTS)
}

fn seed() -> u64 {
    let seed = std::env::var("HOTPAIR_POWER_LOSS_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("power-loss seed {seed} (HOTPAIR_POWER_LOSS_SEED={seed} replays it)");
    seed
}

/// Where node `node`'s shim writes its undo log.
fn log_of(pair: &Pair, node: &str) -> PathBuf {
    pair.dir().join(format!("powercut-{node}"))
}

/// A `durable` pair whose nodes run under the shim (and skip their journal fsyncs if asked).
fn pair_under_shim(shim: &Shim, skip_fsync: bool) -> Pair {
    let mut pair = Pair::start(SyncLevel::Durable);
    for node in [BACKUP, PRIMARY] {
        pair.stop(node);
    }
    for node in [PRIMARY, BACKUP] {
        for (key, value) in shim.env(&pair.node_dir(node), &log_of(&pair, node)) {
            pair.set_env(node, &key, Some(&value));
        }
        if skip_fsync {
            pair.set_env(node, hotpair::node::SKIP_JOURNAL_FSYNC_ENV, Some("1"));
        }
        pair.restart(node);
    }
    pair.wait_ready();
    pair
}

/// The LSNs `1..=n` a journal directory holds without a gap: `n`.
fn contiguous_end(dir: &std::path::Path) -> u64 {
    let mut end = 0;
    for record in common::journal_dump(dir) {
        match record["lsn"].as_u64() {
            Some(lsn) if lsn == end + 1 => end = lsn,
            _ => break,
        }
    }
    end
}

/// Cuts the power `count` times at random moments under load; `Err` names the first promise a
/// cut broke. Panics (through the harness) if the pair does not come back.
fn power_cuts(pair: &mut Pair, count: u32, rng: &mut SplitMix64) -> Result<BTreeMap<String, String>, String> {
    let writers = Writers::start(pair, 4);
    for cut_number in 1..=count {
        writers.wait_acked(writers.acked() + rng.between(100, 400) as usize);
        let victim = if rng.one_in(2) { PRIMARY } else { BACKUP };
        // What the victim has promised, read just before the cut: a lower bound of what it had
        // promised at the cut.
        let (journal, promised) = if victim == PRIMARY {
            ("journal/local", pair.node_status(PRIMARY)["durable_lsn"].as_u64().unwrap_or(0))
        } else {
            let acked = pair.node_status(PRIMARY)["peer"]["durable_lsn"].as_u64().unwrap_or(0);
            ("journal/remote", acked.max(pair.node_status(BACKUP)["durable_lsn"].as_u64().unwrap_or(0)))
        };
        let pid = pair.pid(victim);
        pair.kill(victim);
        let dir = pair.node_dir(victim);
        let cut = cut_power(&dir, &log_of(pair, victim), pid);
        let kept = contiguous_end(&dir.join(journal));
        eprintln!(
            "cut {cut_number}: {victim} lost {} unsynced changes (kept {}); it had promised LSN {promised}, its {journal} holds 1..={kept}",
            cut.undone, cut.kept
        );
        if kept < promised {
            let _ = writers.finish();
            return Err(format!(
                "cut {cut_number}: {victim} had called LSN {promised} durable, but after the power cut its {journal} ends at {kept}"
            ));
        }
        let verify = pair.hotpair(&["journal", "verify", dir.to_str().unwrap()]);
        if !verify.status.success() {
            let _ = writers.finish();
            return Err(format!(
                "cut {cut_number}: {victim}'s journals are damaged after the cut:\n{}",
                String::from_utf8_lossy(&verify.stdout)
            ));
        }
        pair.restart(victim);
        pair.wait_ready();
    }
    writers.wait_acked(writers.acked() + 100);
    Ok(writers.finish())
}

#[test]
fn acknowledged_writes_survive_power_cuts_of_either_node_at_durable() {
    let Some(shim) = Shim::build() else {
        return;
    };
    let mut rng = SplitMix64::new(seed());
    let mut pair = pair_under_shim(&shim, false);
    let acknowledged = power_cuts(&mut pair, cuts(), &mut rng).unwrap_or_else(|broken| panic!("{broken}"));
    pair.wait_caught_up();
    let keys: Vec<&String> = acknowledged.keys().collect();
    for node in [PRIMARY, BACKUP] {
        let mut connection = pair.redis(node);
        for chunk in keys.chunks(500) {
            let values: Vec<Option<String>> = connection.mget(chunk).expect("MGET");
            for (key, value) in chunk.iter().zip(values) {
                assert_eq!(value.as_ref(), acknowledged.get(*key), "acknowledged {key} on {node} after the cuts");
            }
        }
    }
    eprintln!("{} acknowledged writes checked on both nodes", acknowledged.len());
}

#[test]
fn a_journal_that_skips_its_fsyncs_is_caught() {
    // The same cuts with journals that call records durable without an fsync: a cut must then
    // take what was promised, and the check above must say so. If this test fails, the
    // power-loss test has gone blind.
    let Some(shim) = Shim::build() else {
        return;
    };
    let mut rng = SplitMix64::new(seed());
    let mut pair = pair_under_shim(&shim, true);
    match power_cuts(&mut pair, 4, &mut rng) {
        Err(broken) => eprintln!("caught, as it must be: {broken}"),
        Ok(acknowledged) => panic!(
            "4 power cuts of nodes whose journals skip fsync lost nothing that was promised ({} writes acknowledged): the test cannot see a missing fsync",
            acknowledged.len()
        ),
    }
}
