//! The witness playbooks (`playbooks/witness-*.toml`) run as drills: each spawns a pair with the
//! drill's own etcd on 127.0.0.1 (one fault proxy per node in front of it), injects its faults
//! (kill -9 and SIGSTOP of the primary, both nodes killed, etcd killed, a node cut from etcd, the
//! primary cut from both its backup and etcd) and must hold every
//! expectation: no acknowledged write lost at `durable`, never two writers, no failover where
//! none is due, the old primary rejoining by itself. Without an etcd executable (Debian's
//! `etcd-server`, which `.ci/run` installs) the test prints SKIPPED.
//!
//! They run one after another (the drills measure outages and time to the first write: two at
//! once on 2 cores would measure the machine). `tests/playbooks.rs` leaves them to this test.

use std::process::Command;

mod drill_suite;

use hotpair::drill::etcd::LocalEtcd;

/// The tests here take turns: two drills at once on 2 cores would measure the machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn every_witness_playbook_holds_its_expectations() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if LocalEtcd::executable().is_none() {
        eprintln!(
            "SKIPPED every_witness_playbook_holds_its_expectations: no etcd executable (apt-get install etcd-server)"
        );
        return;
    }
    let books = drill_suite::playbooks(|name| name.starts_with("witness-"));
    assert!(books.len() >= 6, "expected the six witness playbooks, found {books:?}");
    drill_suite::drill_all(&books, "witness playbooks", |name, report| {
        // What each playbook is for must show in its report, not only in its verdict.
        let expectation = |key: &str| {
            report["expectations"]
                .as_array()
                .and_then(|all| all.iter().find(|e| e["key"] == key))
                .map(|e| e["verdict"].clone())
        };
        assert_eq!(expectation("single_writer"), Some("PASS".into()), "{name}: never two writers: {report}");
        if name == "witness-auto-failover" {
            let kill = &report["kill_to_first_write"][0];
            assert!(kill["ms"].as_f64().is_some(), "{name}: b took writes after the kill: {kill}");
            eprintln!("{name}: first write on b {} ms after kill -9 (ttl 3s)", kill["ms"]);
        }
    });
}

/// Random schedules with the witness (`hotpair drill --random SEED --witness`): manual and
/// automatic failovers, freezes past the ttl, etcd killed, nodes cut from etcd, switchovers,
/// with 0 acknowledged writes lost at `durable`, equal digests and never two writers. Long runs:
/// `HOTPAIR_RANDOM_WITNESS_DRILLS=FIRST..LAST` (and `HOTPAIR_RANDOM_DRILL_STEPS`, default 8).
#[test]
fn random_witness_schedules_lose_nothing_and_never_have_two_writers() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if LocalEtcd::executable().is_none() {
        eprintln!("SKIPPED random_witness_schedules_lose_nothing_and_never_have_two_writers: no etcd executable");
        return;
    }
    let (seeds, episodes): (Vec<u64>, u32) = match std::env::var("HOTPAIR_RANDOM_WITNESS_DRILLS") {
        Ok(range) => {
            let (first, last) = range.split_once("..").expect("HOTPAIR_RANDOM_WITNESS_DRILLS=FIRST..LAST");
            let steps = std::env::var("HOTPAIR_RANDOM_DRILL_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
            ((first.parse().unwrap()..=last.parse().unwrap()).collect(), steps)
        }
        // Seed 21: a freeze past the ttl, a kill -9 repaired automatically, the primary and the
        // backup each cut from etcd. The long run over seeds 1..140 (10 episodes) is in
        // docs/benchmarks.md ("Random witness drills over many seeds").
        Err(_) => (vec![21], 5),
    };
    let work = tempfile::tempdir().expect("temp dir");
    let mut failed = Vec::new();
    for seed in seeds {
        let out = Command::new(env!("CARGO_BIN_EXE_hotpair"))
            .args(["drill", "--random", &seed.to_string(), "--steps", &episodes.to_string(), "--witness", "--report"])
            .arg(work.path().join(format!("random-{seed}.json")))
            .env("TMPDIR", work.path())
            .output()
            .expect("run hotpair drill --random --witness");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("[witness]"), "the schedule has the witness: {stdout}");
        if !out.status.success() {
            eprintln!("seed {seed} FAILED:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
            failed.push(seed);
        }
    }
    if !failed.is_empty() {
        let kept = work.keep();
        panic!(
            "random witness drills failed for seeds {failed:?} (replay: hotpair drill --random SEED --steps {episodes} --witness; directories in {})",
            kept.display()
        );
    }
}
