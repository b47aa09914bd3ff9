//! `hotpair drill` end to end: small playbooks run by the real binary against pairs it spawns.
//!
//! Each test writes its playbook into a temporary directory and runs `hotpair drill` on it; the
//! drill spawns (and kills at the end) its own pair on its own ports. Only steps the running pair
//! supports today are used (no orchestration commands). What each test proves is in its name and
//! its first comment.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn drill(dir: &Path, playbook: &str) -> (Output, Option<Value>, PathBuf) {
    let book = dir.join("book.toml");
    std::fs::write(&book, playbook).expect("write the playbook");
    let report = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_hotpair"))
        .arg("drill")
        .arg(&book)
        .arg("--report")
        .arg(&report)
        // The drill keeps its pair's directory under the temporary directory: here, the
        // test's own, so that it goes with it.
        .env("TMPDIR", dir)
        .output()
        .expect("run hotpair drill");
    let json = std::fs::read_to_string(&report).ok().map(|t| serde_json::from_str(&t).expect("the report is JSON"));
    (out, json, report)
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn expectation<'a>(report: &'a Value, key: &str) -> &'a Value {
    report["expectations"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["key"] == key))
        .unwrap_or_else(|| panic!("no expectation {key} in {report}"))
}

#[test]
fn a_backup_crash_under_load_loses_no_acknowledged_write() {
    // At `durable`, SIGKILL the backup under load, restart it and wait until it caught up: the
    // drill passes, every acknowledged write is there, the digests agree, and the report (JSON
    // and SVG) holds every step.
    let dir = tempfile::tempdir().unwrap();
    let (out, report, path) = drill(
        dir.path(),
        r#"
name = "backup crash"
sync = "durable"
heartbeat = "100ms"

[[step]]
do = "workload"
clients = 4
rate = 300
keys = 100
value_size = 40

[[step]]
do = "sleep"
for = "500ms"

[[step]]
do = "kill"
node = "b"

[[step]]
do = "sleep"
for = "300ms"

[[step]]
do = "restart"
node = "b"

[[step]]
do = "wait-caught-up"
timeout = "20s"

[[step]]
do = "stop-workload"

[expect]
lost_acknowledged = 0
digests_equal = true
min_acknowledged = 50
"#,
    );
    assert!(out.status.success(), "{}", show(&out));
    let report = report.expect("a JSON report");
    assert_eq!(report["passed"], true);
    assert_eq!(report["steps"].as_array().unwrap().len(), 7);
    assert!(report["steps"].as_array().unwrap().iter().all(|s| s["result"] == "passed"), "{report}");
    assert_eq!(report["workload"]["lost"], 0);
    assert!(report["workload"]["acknowledged"].as_u64().unwrap() >= 50);
    assert_eq!(report["workload"]["keys_checked"], 100);
    assert_eq!(expectation(&report, "lost_acknowledged")["verdict"], "PASS");
    assert_eq!(report["digests"]["equal"], true);
    // The backup went down and came back: both show among the role changes.
    let changes = report["role_changes"].as_array().unwrap();
    assert!(changes.iter().any(|c| c["node"] == "b" && c["role"] == "down"), "{changes:?}");
    let svg = std::fs::read_to_string(path.with_extension("svg")).expect("the SVG timeline");
    assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.contains(">kill<"), "{svg}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("verdict: PASS"), "{stdout}");
}

#[test]
fn an_expectation_that_cannot_hold_fails_the_drill() {
    // The oracle's self-test: SIGKILL the primary under load and demand an outage of at most
    // 1 ms. The outage is real (the primary is gone until its restart), so the drill must fail
    // with exit 1 and say which expectation failed — while the ones that held still pass.
    let dir = tempfile::tempdir().unwrap();
    let (out, report, _) = drill(
        dir.path(),
        r#"
sync = "durable"
heartbeat = "100ms"

[[step]]
do = "workload"
clients = 2
rate = 200
keys = 20

[[step]]
do = "sleep"
for = "300ms"

[[step]]
do = "kill"
node = "a"

[[step]]
do = "sleep"
for = "400ms"

[[step]]
do = "restart"
node = "a"

[[step]]
do = "wait-caught-up"
timeout = "20s"

[[step]]
do = "stop-workload"

[expect]
max_write_outage = "1ms"
lost_acknowledged = 0
"#,
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let report = report.expect("a JSON report even when the drill fails");
    assert_eq!(report["passed"], false);
    let outage = expectation(&report, "max_write_outage");
    assert_eq!(outage["verdict"], "FAIL", "{outage}");
    assert!(report["max_write_outage_ms"].as_f64().unwrap() >= 300.0, "{report}");
    assert!(!report["outages"].as_array().unwrap().is_empty());
    assert_eq!(expectation(&report, "lost_acknowledged")["verdict"], "PASS");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAIL") && stdout.contains("verdict: FAIL"), "{stdout}");
}

#[test]
fn a_partition_at_async_delays_the_backup_and_heals() {
    // Cut the link (packets dropped, through the drill's proxy) at `async`: the primary keeps
    // acknowledging, the backup falls behind; after the heal it catches up with equal digests.
    let dir = tempfile::tempdir().unwrap();
    let (out, report, _) = drill(
        dir.path(),
        r#"
sync = "async"
heartbeat = "100ms"

[[step]]
do = "workload"
clients = 2
rate = 200
keys = 50

[[step]]
do = "partition"

[[step]]
do = "sleep"
for = "1s"

[[step]]
do = "heal"

[[step]]
do = "wait-caught-up"
timeout = "20s"

[[step]]
do = "stop-workload"

[expect]
lost_acknowledged = 0
max_write_outage = "900ms"
digests_equal = true
"#,
    );
    assert!(out.status.success(), "{}", show(&out));
    let report = report.unwrap();
    assert_eq!(report["workload"]["failed"], 0, "{report}");
}

#[test]
fn a_failing_step_aborts_the_rest_and_the_drill() {
    // Killing a node that is not running fails the step; the steps after it are skipped, the
    // report is still written, and the drill exits 1 even with no expectations.
    let dir = tempfile::tempdir().unwrap();
    let (out, report, _) = drill(
        dir.path(),
        "[[step]]\ndo = \"kill\"\nnode = \"b\"\n[[step]]\ndo = \"kill\"\nnode = \"b\"\n[[step]]\ndo = \"sleep\"\nfor = \"1ms\"\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let report = report.unwrap();
    let results: Vec<&str> =
        report["steps"].as_array().unwrap().iter().map(|s| s["result"].as_str().unwrap()).collect();
    assert_eq!(results, ["passed", "failed", "skipped"]);
    assert_eq!(report["aborted_at_step"], 2);
}

#[test]
fn playbook_errors_name_the_step_and_the_key() {
    // A misspelt key or an unknown verb is refused before anything is spawned: exit 2, and the
    // message names the step number and the key.
    let dir = tempfile::tempdir().unwrap();
    for (text, must_say) in [
        ("[[step]]\ndo = \"sleep\"\nfor = \"1s\"\n[[step]]\ndo = \"kill\"\nnod = \"a\"\n", ["step 2", "`nod`"]),
        ("[[step]]\ndo = \"explode\"\n", ["step 1", "\"explode\""]),
        ("[[step]]\ndo = \"heal\"\n[expect]\nlost_acked = 0\n", ["expect.lost_acked", "[expect] takes"]),
        ("[[step]]\ndo = \"kill\"\nnode = \"c\"\n", ["step 1", "no node \"c\""]),
    ] {
        let (out, report, _) = drill(dir.path(), text);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}\n{}", show(&out));
        for words in must_say {
            assert!(stderr.contains(words), "{text}: {stderr:?} should say {words:?}");
        }
        assert!(report.is_none(), "nothing ran, so no report");
    }
}

/// Runs `hotpair drill --random SEED --steps N` with the drill's files in `dir`.
fn random_drill(dir: &Path, seed: u64, episodes: u32) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hotpair"))
        .args(["drill", "--random", &seed.to_string(), "--steps", &episodes.to_string(), "--report"])
        .arg(dir.join(format!("random-{seed}.json")))
        .env("TMPDIR", dir)
        .output()
        .expect("run hotpair drill --random")
}

/// Seeds CI runs on every change: each passed many times (docs/drills.md). Long runs over many
/// seeds: `HOTPAIR_RANDOM_DRILLS=FIRST..LAST` (and `HOTPAIR_RANDOM_DRILL_STEPS`, default 8).
const CI_SEEDS: &[u64] = &[3, 12];
const CI_EPISODES: u32 = 4;

#[test]
fn random_fault_schedules_lose_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let (seeds, episodes): (Vec<u64>, u32) = match std::env::var("HOTPAIR_RANDOM_DRILLS") {
        Ok(range) => {
            let (first, last) = range.split_once("..").expect("HOTPAIR_RANDOM_DRILLS=FIRST..LAST");
            let steps = std::env::var("HOTPAIR_RANDOM_DRILL_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
            ((first.parse().unwrap()..=last.parse().unwrap()).collect(), steps)
        }
        Err(_) => (CI_SEEDS.to_vec(), CI_EPISODES),
    };
    let mut failed = Vec::new();
    for seed in seeds {
        let out = random_drill(dir.path(), seed, episodes);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&format!("random drill, seed {seed}")), "the seed is printed: {}", show(&out));
        assert!(stdout.contains("----- end of schedule -----"), "the schedule is printed: {}", show(&out));
        if !out.status.success() {
            eprintln!("seed {seed} FAILED:\n{}", show(&out));
            failed.push(seed);
        }
    }
    assert!(
        failed.is_empty(),
        "random drills failed for seeds {failed:?} (replay: hotpair drill --random SEED --steps {episodes})"
    );
}

#[test]
fn a_random_schedule_is_printed_and_replays_as_a_playbook() {
    // The printed schedule is a playbook: the same text run with `hotpair drill FILE` parses
    // (checked here without running it: a playbook that names a node the pair lacks is refused
    // before anything is spawned, so a parse error would show as exit 2).
    let text = hotpair::drill::random::schedule(42, 6);
    let book = hotpair::drill::playbook::Playbook::parse(&text, Path::new("random-42.toml")).expect("parses");
    assert_eq!(book.steps, hotpair::drill::random::playbook(42, 6).unwrap().1.steps);
    let out =
        Command::new(env!("CARGO_BIN_EXE_hotpair")).args(["drill", "--random", "1", "--steps", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_hotpair")).args(["drill", "x.toml", "--random", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a playbook and --random together: {}", show(&out));
}
