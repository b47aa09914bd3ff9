//! A node's data directory guarded as a whole (issue 18, items 1 and 9): one process per node,
//! taken before any file is touched; read-only tools that write nothing; a directory others can
//! write refused; everything the node creates private to its owner.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{Pair, Writers, BACKUP, DEADLINE, POLL, PRIMARY};
use hotpair::config::SyncLevel;
use redis::Commands;

/// Every file under `dir`: relative path → (mode, contents).
type Snapshot = BTreeMap<PathBuf, (u32, Vec<u8>)>;

fn snapshot(dir: &Path) -> Snapshot {
    fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
        for entry in std::fs::read_dir(dir).expect("read the data directory") {
            let path = entry.expect("directory entry").path();
            let metadata = std::fs::symlink_metadata(&path).expect("metadata");
            let relative = path.strip_prefix(root).expect("under the root").to_path_buf();
            if metadata.is_dir() {
                out.insert(relative.clone(), (metadata.permissions().mode(), Vec::new()));
                walk(root, &path, out);
            } else {
                out.insert(relative, (metadata.permissions().mode(), std::fs::read(&path).expect("read a file")));
            }
        }
    }
    let mut out = Snapshot::new();
    walk(dir, dir, &mut out);
    out
}

/// The first difference between two snapshots, for a readable failure.
fn first_difference(before: &Snapshot, after: &Snapshot) -> Option<String> {
    for (path, (mode, bytes)) in before {
        match after.get(path) {
            None => return Some(format!("{} disappeared", path.display())),
            Some((m, _)) if m != mode => return Some(format!("{} mode {mode:o} -> {m:o}", path.display())),
            Some((_, b)) if b != bytes => {
                return Some(format!("{} changed: {} bytes -> {} bytes", path.display(), bytes.len(), b.len()))
            }
            Some(_) => {}
        }
    }
    after.keys().find(|p| !before.contains_key(*p)).map(|p| format!("{} appeared", p.display()))
}

/// Runs `hotpair --pair P ARGS` to its end (bounded); its exit status and stderr.
fn run_to_end(pair: &Pair, args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = pair.hotpair_bounded(args);
    (out.status, common::stderr(&out))
}

fn assert_all_on(pair: &Pair, node: &str, acknowledged: &BTreeMap<String, String>) {
    let keys: Vec<&String> = acknowledged.keys().collect();
    let values: Vec<Option<String>> = pair.redis(node).mget(&keys).unwrap();
    for ((key, expected), value) in acknowledged.iter().zip(values) {
        assert_eq!(value.as_ref(), Some(expected), "acknowledged {key} is not on {node}");
    }
}

#[test]
fn a_second_run_of_a_live_node_exits_naming_its_pid_and_changes_no_byte() {
    // Under write load at `durable`, `hotpair run a` beside the live a: it must stop at a's
    // lock before opening anything (it used to open a's journals, trimming the active segment
    // under the live writer: `journal verify` then said DAMAGED and a refused to restart).
    // Both nodes are frozen while the files are compared, so the live writers cannot change
    // them; whatever the second process did is all that could.
    let mut pair = Pair::start(SyncLevel::Durable);
    let writers = Writers::start(&pair, 4);
    writers.wait_acked(300);
    pair.pause(PRIMARY);
    pair.pause(BACKUP);
    let before = snapshot(&pair.node_dir(PRIMARY));
    let (status, stderr) = run_to_end(&pair, &["run", PRIMARY]);
    let after = snapshot(&pair.node_dir(PRIMARY));
    pair.resume(BACKUP);
    pair.resume(PRIMARY);
    assert!(!status.success(), "a second `run a` succeeded: {stderr}");
    assert_eq!(first_difference(&before, &after), None, "the refused `run a` changed a's files: {stderr}");
    let pid = pair.pid(PRIMARY).to_string();
    assert!(
        stderr.contains("node a is already running") && stderr.contains(&format!("pid {pid}")),
        "the refusal does not say a runs as pid {pid}: {stderr}"
    );
    assert!(stderr.contains("stop it first") && stderr.contains("LOCK"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let acked_at_refusal = writers.acked();
    writers.wait_acked(acked_at_refusal + 200);
    let acknowledged = writers.finish();
    pair.wait_caught_up();
    pair.stop(PRIMARY);
    let verify = pair.hotpair(&["journal", "verify", pair.node_dir(PRIMARY).to_str().unwrap()]);
    assert!(verify.status.success(), "a's journal after the refused run: {}", common::stderr(&verify));
    pair.restart(PRIMARY);
    pair.wait_ready();
    pair.wait_caught_up();
    assert_all_on(&pair, PRIMARY, &acknowledged);
    assert_all_on(&pair, BACKUP, &acknowledged);
}

#[test]
fn reinit_of_a_live_node_is_refused_and_changes_nothing() {
    let mut pair = Pair::start(SyncLevel::Durable);
    let _: () = pair.redis(PRIMARY).set("k", "v").unwrap();
    pair.pause(BACKUP);
    let before = snapshot(&pair.node_dir(BACKUP));
    let (status, stderr) = run_to_end(&pair, &["reinit", BACKUP]);
    let after = snapshot(&pair.node_dir(BACKUP));
    pair.resume(BACKUP);
    assert!(!status.success(), "reinit of a live node succeeded: {stderr}");
    assert!(stderr.contains("refusing to rebuild b"), "{stderr}");
    assert_eq!(first_difference(&before, &after), None, "the refused reinit changed b's files");
}

#[test]
fn journal_tools_write_nothing_into_a_killed_nodes_journals() {
    // A node killed under load leaves its active segment ending in preallocated zeros (and
    // maybe a torn record): `journal ls|dump|verify` report them and cut nothing; only the
    // node's own next start does.
    let mut pair = Pair::start(SyncLevel::Durable);
    let writers = Writers::start(&pair, 4);
    writers.wait_acked(300);
    pair.kill(PRIMARY);
    let acknowledged = writers.finish();
    let dir = pair.node_dir(PRIMARY);
    let before = snapshot(&dir);
    let local = before
        .iter()
        .filter(|(p, _)| p.starts_with("journal/local") && p.extension().is_some_and(|e| e == "hpj"))
        .map(|(_, (_, bytes))| bytes.len())
        .max()
        .expect("a local segment");
    assert!(
        local >= usize::try_from(hotpair::storage::journal::PREALLOCATE_BYTES).unwrap(),
        "no preallocated end to cut: {local} bytes"
    );
    for args in [["ls"].as_slice(), &["dump", "--json"], &["verify"], &["verify", "--json"]] {
        let mut full = vec!["journal"];
        full.extend_from_slice(args);
        full.push(dir.to_str().unwrap());
        let (status, stderr) = run_to_end(&pair, &full);
        assert!(status.success(), "hotpair {full:?}: {stderr}");
        assert_eq!(first_difference(&before, &snapshot(&dir)), None, "hotpair {full:?} changed a's files");
    }
    pair.restart(PRIMARY);
    pair.wait_ready();
    pair.wait_caught_up();
    assert_all_on(&pair, PRIMARY, &acknowledged);
}

#[test]
fn a_data_directory_others_can_write_is_refused_naming_the_fix() {
    let mut pair = Pair::start(SyncLevel::Durable);
    pair.stop(BACKUP);
    let dir = pair.node_dir(BACKUP);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let before = snapshot(&dir);
    let (status, stderr) = run_to_end(&pair, &["run", BACKUP]);
    assert!(!status.success(), "b started on a directory anyone can write: {stderr}");
    assert!(stderr.contains(&format!("chmod 700 {}", dir.display())), "{stderr}");
    assert_eq!(first_difference(&before, &snapshot(&dir)), None, "the refused start changed b's files");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    pair.restart(BACKUP);
    pair.wait_ready();
}

#[test]
fn everything_a_node_creates_is_private_to_its_owner() {
    // Journals, store, meta.json and their directories, the lock, the incident log, the keys.
    let mut pair = Pair::start(SyncLevel::Durable);
    let mut a = pair.redis(PRIMARY);
    for i in 0..50 {
        let _: () = a.set(format!("k{i}"), "v").unwrap();
    }
    pair.wait_caught_up();
    pair.stop(BACKUP);
    // The primary reports its lost backup into the incident log, which it creates.
    let log = pair.dir().join("incidents.jsonl");
    let deadline = Instant::now() + DEADLINE;
    while !log.exists() {
        assert!(Instant::now() < deadline, "no incident log");
        std::thread::sleep(POLL);
    }
    pair.stop(PRIMARY);
    let mut checked = 0;
    for node in [PRIMARY, BACKUP] {
        let dir = pair.node_dir(node);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
        for (path, (mode, _)) in snapshot(&dir) {
            assert_eq!(mode & 0o077, 0, "{}/{} has mode {:o}", dir.display(), path.display(), mode & 0o777);
            checked += 1;
        }
        assert!(snapshot(&dir).keys().any(|p| p.starts_with("store")), "no store in {}", dir.display());
    }
    assert!(checked > 10, "only {checked} entries checked");
    for file in [log, pair.dir().join("tls/a.key"), pair.dir().join("tls/admin.key"), pair.dir().join("tls/ca.key")] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
}

#[test]
fn a_node_whose_data_directory_was_emptied_says_to_reinit_and_rejoin_it() {
    // An empty disk mounted where b's data was: the refusal names the directory and the way
    // back (it once said only `meta.json: No such file or directory`).
    let mut pair = Pair::start(SyncLevel::Async);
    pair.kill(BACKUP);
    let dir = pair.node_dir(BACKUP);
    std::fs::rename(&dir, pair.dir().join("b.lost")).expect("move b's directory aside");
    std::fs::create_dir(&dir).expect("an empty directory");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
    let (status, stderr) = run_to_end(&pair, &["run", BACKUP]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("hotpair reinit b") && stderr.contains("hotpair rejoin b --allow-full-copy"), "{stderr}");
    assert!(stderr.contains(&dir.display().to_string()), "{stderr}");
}
