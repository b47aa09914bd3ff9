//! Every playbook shipped in `playbooks/` runs as CI's drill suite: each spawns a real pair,
//! injects its faults, runs the orchestration commands, and must end with every expectation
//! held (exit 0). A playbook whose verdict fails fails this test with the drill's own report.
//!
//! They run one after another, not in parallel: each measures write outages from the clients'
//! side, and two pairs fighting over 2 cores would measure the machine, not the pair.
//! The witness playbooks (`witness-*.toml`, which need etcd) run in `tests/witness_drills.rs`.

mod drill_suite;

#[test]
fn every_shipped_playbook_holds_its_expectations() {
    let books = drill_suite::playbooks(|name| !name.starts_with("witness-"));
    assert!(books.len() >= 8, "expected at least the 8 playbooks Issue 5 names, found {books:?}");
    drill_suite::drill_all(&books, "playbooks", |_, _| {});
}
