//! Running shipped playbooks as a test suite (`tests/playbooks.rs`, `tests/witness_drills.rs`):
//! one `hotpair drill` after another — not in parallel: each measures write outages from the
//! clients' side, and two pairs fighting over 2 cores would measure the machine, not the pair.

use std::path::PathBuf;
use std::process::Command;

/// The playbooks in `playbooks/` whose file stem `wanted` accepts, sorted by name.
pub fn playbooks(wanted: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("playbooks");
    let mut books: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("playbooks/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .filter(|p| p.file_stem().is_some_and(|s| wanted(&s.to_string_lossy())))
        .collect();
    books.sort();
    books
}

/// Drills every playbook of `books`; `check(name, report)` looks further into the JSON report
/// of each that passed. Panics listing the failed ones (`what` names them), whose pairs'
/// directories are then kept.
pub fn drill_all(books: &[PathBuf], what: &str, check: impl Fn(&str, &serde_json::Value)) {
    let work = tempfile::tempdir().expect("temp dir");
    let mut failed = Vec::new();
    for book in books {
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
            continue;
        }
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).expect("the report")).expect("report JSON");
        check(&name, &report);
    }
    if !failed.is_empty() {
        let kept = work.keep();
        panic!("{what} failed (their pairs' directories are kept in {}):\n{}", kept.display(), failed.join("\n\n"));
    }
}
