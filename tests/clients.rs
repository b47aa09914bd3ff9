//! Real client libraries, unchanged, against a real pair: Django's `RedisCache` backend and
//! redis-py (RESP3 by default since redis-py 8). Each runs a Python script from
//! `tests/clients/` against the primary; afterwards both nodes' digests must be equal.
//!
//! Needs `python3` with the `django` and `redis` packages (`.ci/run` installs them with pip);
//! without them the tests print SKIPPED.

mod common;

use std::process::Command;

use common::{Pair, BACKUP, PRIMARY};
use hotpair::config::SyncLevel;

/// Whether `python3` can import `modules`; prints SKIPPED when it cannot.
fn python_with(modules: &str) -> bool {
    let ok =
        Command::new("python3").args(["-c", &format!("import {modules}")]).output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: python3 with {modules} is not installed (.ci/run installs them with pip)");
    }
    ok
}

/// Runs `tests/clients/SCRIPT` against `node`'s data port; panics with its output unless it
/// printed `ok`.
fn run_script(pair: &Pair, script: &str, node: &str) {
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let out =
        Command::new("python3").arg(&path).arg(pair.data_address(node).to_string()).output().expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "{script} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn djangos_redis_cache_runs_unchanged_and_both_nodes_agree() {
    if !python_with("django, redis") {
        return;
    }
    let mut pair = Pair::start(SyncLevel::Durable);
    run_script(&pair, "django_cache.py", PRIMARY);
    pair.wait_caught_up();
    let verified = pair.hotpair_ok(&["verify", "--full"]);
    assert!(verified.contains("equal"), "{verified}");
}

#[test]
fn a_redis_py_transactional_pipeline_is_one_journal_transaction() {
    if !python_with("redis") {
        return;
    }
    let mut pair = Pair::start(SyncLevel::Durable);
    run_script(&pair, "redis_py.py", PRIMARY);
    pair.wait_caught_up();
    for node in [PRIMARY, BACKUP] {
        let dump = common::journal_dump(&pair.node_dir(node));
        let keys_of = |record: &serde_json::Value| -> Vec<String> {
            record["ops"].as_array().map_or_else(Vec::new, |ops| {
                ops.iter().map(|op| op["key"].as_str().unwrap_or_default().to_string()).collect()
            })
        };
        let with_a: Vec<Vec<String>> =
            dump.iter().map(keys_of).filter(|keys| keys.contains(&"py:a".to_string())).collect();
        assert_eq!(
            with_a,
            vec![vec!["py:a", "py:n", "py:h"]],
            "node {node}: the pipeline is one record with its three keys"
        );
    }
    assert!(pair.hotpair_ok(&["verify", "--full"]).contains("equal"));
}
