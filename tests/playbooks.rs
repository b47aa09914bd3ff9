//! Every playbook shipped in `playbooks/` runs as CI's drill suite: each spawns a real pair,
//! injects its faults, runs the orchestration commands, and must end with every expectation
//! held (exit 0). A playbook whose verdict fails fails this test with the drill's own report.
//!
//! They run one after another, not in parallel: each measures write outages from the clients'
//! side, and two pairs fighting over 2 cores would measure the machine, not the pair.
//! The witness playbooks (`witness-*.toml`, which need etcd) run in `tests/witness_drills.rs`.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn every_shipped_playbook_holds_its_expectations() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("playbooks");
    let mut books: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("playbooks/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .filter(|p| !p.file_stem().is_some_and(|s| s.to_string_lossy().starts_with("witness-")))
        .collect();
    books.sort();
    assert!(books.len() >= 8, "expected at least the 8 playbooks Issue 5 names, found {books:?}");
    let work = tempfile::tempdir().expect("temp dir");
    let mut failed = Vec::new();
    for book in &books {
        let name = book.file_stem().unwrap_or_default().to_string_lossy().to_string();
        let report = work.path().join(format!("{name}.json"));
        let started = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_hotpair"))
            .arg("drill")
            .arg(book)
            .arg("--report")
            .arg(&report)
            // The drill keeps its pair's directory (logs, journals) under the temporary
            // directory: here, the test's own, removed unless a playbook failed.
            .env("TMPDIR", work.path())
            .output()
            .expect("run hotpair drill");
        eprintln!("{name}: exit {:?} in {:.1}s", out.status.code(), started.elapsed().as_secs_f64());
        if !out.status.success() {
            failed.push(format!(
                "{name}: exit {:?}\n{}\n{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    if !failed.is_empty() {
        let kept = work.keep();
        panic!("playbooks failed (their pairs' directories are kept in {}):\n{}", kept.display(), failed.join("\n\n"));
    }
}
