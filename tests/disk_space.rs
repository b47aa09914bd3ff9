//! Small real file systems. The disk-space guard: a tmpfs holds the whole pair, a ballast file
//! pushes its free space below `disk_min_free`, and then is deleted again. And `apply-error`: the
//! backup's store alone on a tiny tmpfs, so that sled itself fails to write.
//!
//! Mounting needs root (CAP_SYS_ADMIN). Without it the test says `SKIPPED` loudly and returns:
//! it does not pass by pretending.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::{Options, Pair, BACKUP, DEADLINE, NOTIFY, POLL, PRIMARY};
use hotpair::config::SyncLevel;
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// The file system the pair lives on.
const TMPFS_SIZE: &str = "64m";
const DISK_MIN_FREE: &str = "16MiB";
const DISK_MIN_FREE_BYTES: u64 = 16 * MIB;
/// What the ballast leaves free: well below the threshold, with room for logs and incidents.
const LEFT_FREE: u64 = 8 * MIB;

/// A tmpfs mounted on a fresh directory; unmounted (lazily, so a straggling process cannot
/// keep it) when dropped, before the directory itself is removed.
struct Tmpfs {
    point: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let point = tempfile::tempdir().map_err(|e| format!("no mount point: {e}"))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(point.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount exited with {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Tmpfs { point })
    }

    /// The tmpfs, or `None` after saying `SKIPPED` loudly (on stdout and stderr) when this
    /// process may not mount one.
    fn mount_or_skip(size: &str) -> Option<Tmpfs> {
        match Tmpfs::mount(size) {
            Ok(tmpfs) => Some(tmpfs),
            Err(reason) => {
                eprintln!("SKIPPED: cannot mount tmpfs: {reason}");
                println!("SKIPPED: cannot mount tmpfs: {reason}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.point.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        match Command::new("umount").arg("-l").arg(self.point.path()).status() {
            Ok(status) if status.success() => {}
            other => eprintln!("could not unmount the test tmpfs at {}: {other:?}", self.point.path().display()),
        }
    }
}

/// Waits until the notification command has received a `disk-low` event of `node` in `state`.
fn wait_notified(dir: &Path, node: &str, state: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let found = common::notified(dir)
            .into_iter()
            .find(|e| e["kind"] == "disk-low" && e["node"] == node && e["state"] == state);
        if let Some(event) = found {
            return event;
        }
        assert!(
            Instant::now() < deadline,
            "no disk-low {state} notification from {node}; got {:?}",
            common::notified(dir)
        );
        std::thread::sleep(POLL);
    }
}

/// Writes zeros into `path` until the file system has about `left` bytes free.
fn fill(path: &Path, left: u64) -> u64 {
    let free = hotpair::node::disk::free_bytes(path.parent().expect("ballast in a directory")).expect("statvfs");
    assert!(free > left + 2 * DISK_MIN_FREE_BYTES, "the fresh pair left only {free} bytes on the tmpfs");
    let size = free - left;
    let mut file = std::fs::File::create(path).expect("create the ballast");
    let chunk = vec![0u8; MIB as usize];
    let mut written = 0;
    while written < size {
        let n = (size - written).min(MIB) as usize;
        file.write_all(&chunk[..n]).expect("write the ballast");
        written += n as u64;
    }
    written
}

fn set(connection: &mut redis::Connection, key: &str, value: &str) -> redis::RedisResult<()> {
    redis::cmd("SET").arg(key).arg(value).query(connection)
}

#[test]
fn low_disk_refuses_writes_stops_the_backup_and_both_resume_when_space_returns() {
    let Some(tmpfs) = Tmpfs::mount_or_skip(TMPFS_SIZE) else {
        return;
    };
    let options = Options {
        heartbeat: Some("100ms"),
        sync_timeout: Some("2s"),
        notify_command: Some(NOTIFY),
        disk_min_free: Some(DISK_MIN_FREE),
        parent_dir: Some(tmpfs.path().to_path_buf()),
        ..Options::default()
    };
    let mut pair = Pair::start_with(SyncLevel::Durable, options);
    let dir = pair.dir().to_path_buf();
    assert_eq!(pair.config.disk_min_free, DISK_MIN_FREE_BYTES);
    let mut acknowledged: Vec<(String, String)> = Vec::new();
    let mut a = pair.redis(PRIMARY);
    for i in 0..50 {
        let (key, value) = (format!("before-{i}"), format!("v{i}"));
        set(&mut a, &key, &value).expect("write before the disk fills");
        acknowledged.push((key, value));
    }

    // A writer keeps going while the disk fills: whatever it got acknowledged must survive.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, mut connection) = (stop.clone(), pair.redis(PRIMARY));
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut refused = 0u32;
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let (key, value) = (format!("during-{i}"), format!("w{i}"));
                match set(&mut connection, &key, &value) {
                    Ok(()) => acked.push((key, value)),
                    // Refused, or not acknowledged in time: either way not counted.
                    Err(_) => refused += 1,
                }
            }
            (acked, refused)
        })
    };

    let ballast = dir.parent().expect("pair dir on the tmpfs").join("ballast");
    let filled = fill(&ballast, LEFT_FREE);
    let low = pair.wait_for_node(PRIMARY, "the primary to see its disk low", |s| s["disk_low"] == true);
    assert_eq!(low["disk_min_free"], DISK_MIN_FREE_BYTES, "{low}");
    assert!(low["disk_free_bytes"].as_u64().is_some_and(|f| f < DISK_MIN_FREE_BYTES), "{low}");
    assert_eq!(low["writes"]["accepting"], false, "{low}");
    stop.store(true, Ordering::SeqCst);
    let (during, refused) = writer.join().expect("the writer thread");
    eprintln!("ballast {} MiB; while filling: {} writes acknowledged, {refused} refused", filled / MIB, during.len());
    acknowledged.extend(during);

    // Writes get the clear error; reads still work.
    let err = set(&mut a, "refused", "x").expect_err("a write below disk_min_free is refused");
    let message = err.to_string();
    assert!(
        message.contains("disk space low on node a") && message.contains("disk_min_free"),
        "the error says what is wrong: {message}"
    );
    let (key, value) = &acknowledged[0];
    let read: Option<String> = redis::cmd("GET").arg(key).query(&mut a).expect("a read while the disk is low");
    assert_eq!(read.as_deref(), Some(value.as_str()));

    // The backup stops receiving; both nodes tell the notification command.
    pair.wait_for_node(BACKUP, "the backup to stop following", |s| s["disk_low"] == true && s["following"] == false);
    for node in [PRIMARY, BACKUP] {
        let event = wait_notified(&dir, node, "open");
        assert_eq!(event["severity"], "critical", "{event}");
        assert!(event["message"].as_str().is_some_and(|m| m.contains("disk_min_free")), "{event}");
    }
    let status = pair.node_status(PRIMARY);
    let open: Vec<&str> = status["incidents"].as_array().unwrap().iter().filter_map(|i| i["kind"].as_str()).collect();
    assert!(open.contains(&"disk-low"), "status shows the open incident: {status}");

    // Space returns: writes resume and the backup follows again, with no admin action.
    std::fs::remove_file(&ballast).expect("delete the ballast");
    let started = Instant::now();
    pair.wait_ready();
    let resumed = started.elapsed();
    for i in 0..50 {
        let (key, value) = (format!("after-{i}"), format!("v{i}"));
        set(&mut a, &key, &value).expect("write after space returned");
        acknowledged.push((key, value));
    }
    eprintln!("writes resumed {} ms after the ballast was deleted", resumed.as_millis());
    for node in [PRIMARY, BACKUP] {
        wait_notified(&dir, node, "resolved");
    }

    // Nothing acknowledged was harmed, on either node, and both hold the same data.
    pair.wait_caught_up();
    let mut b = pair.redis(BACKUP);
    for (key, value) in &acknowledged {
        for (node, connection) in [(PRIMARY, &mut a), (BACKUP, &mut b)] {
            let read: Option<String> = redis::cmd("GET").arg(key).query(connection).expect("read back");
            assert_eq!(read.as_deref(), Some(value.as_str()), "acknowledged {key} on {node}");
        }
    }
    drop(pair);
    drop(tmpfs);
}

#[test]
fn a_backup_store_that_cannot_be_written_raises_apply_error_and_the_primary_goes_on() {
    // The backup's store alone on a 4 MiB tmpfs (its journal and data directory stay on the
    // big disk, so the disk guard does not step in): applying fails for real in sled, the
    // applier stops, and `apply-error` reaches the notification command and status.
    let Some(tmpfs) = Tmpfs::mount_or_skip("4m") else {
        return;
    };
    let options = Options { notify_command: Some(NOTIFY), ..Options::default() };
    let mut pair = Pair::start_with(SyncLevel::Async, options);
    let dir = pair.dir().to_path_buf();
    pair.stop(BACKUP);
    let store = pair.node_dir(BACKUP).join("store");
    for entry in std::fs::read_dir(&store).expect("list b's store") {
        let entry = entry.expect("a store entry");
        let copied = Command::new("cp").arg("-a").arg(entry.path()).arg(tmpfs.path()).status().expect("run cp");
        assert!(copied.success(), "copy {} to the tmpfs", entry.path().display());
    }
    std::fs::remove_dir_all(&store).expect("remove b's store");
    std::os::unix::fs::symlink(tmpfs.path(), &store).expect("b's store → the tmpfs");
    pair.restart(BACKUP);

    let mut a = pair.redis(PRIMARY);
    let value = "x".repeat(64 * 1024);
    let found = (0..400).find_map(|i| {
        set(&mut a, &format!("big-{i}"), &value).expect("the primary acknowledges at async");
        common::notified(&dir).into_iter().find(|e| e["kind"] == "apply-error" && e["node"] == BACKUP)
    });
    let event = match found {
        Some(event) => event,
        None => {
            let deadline = Instant::now() + DEADLINE;
            loop {
                let found =
                    common::notified(&dir).into_iter().find(|e| e["kind"] == "apply-error" && e["node"] == BACKUP);
                if let Some(event) = found {
                    break event;
                }
                assert!(Instant::now() < deadline, "no apply-error from b; got {:?}", common::notified(&dir));
                std::thread::sleep(POLL);
            }
        }
    };
    assert_eq!(event["severity"], "critical", "{event}");
    let message = event["message"].as_str().unwrap_or_default();
    assert!(message.contains("cannot apply") && message.contains("No space left"), "{event}");
    let status = pair.node_status(BACKUP);
    assert!(status["failure"].as_str().is_some(), "status names the failure: {status}");
    set(&mut a, "after", "1").expect("the primary goes on");
    // b must let go of the tmpfs before it is unmounted.
    pair.kill(BACKUP);
}

#[test]
fn a_journal_that_cannot_preallocate_still_takes_every_record() {
    // The journal zero-fills 1 MiB ahead of its records; on a 512 KiB file system that fails
    // part-way. Preallocation is only a speed-up: the records still go in, durably.
    let Some(tmpfs) = Tmpfs::mount_or_skip("512k") else {
        return;
    };
    use hotpair::storage::journal::{Journal, JournalIdentity, JournalKind, JournalOptions, Op, Record, RecordBody};
    let identity = JournalIdentity { cluster: [3; 16], node: "a".into(), kind: JournalKind::Local };
    let dir = tmpfs.path().join("journal");
    let record = |lsn: u64| Record {
        lsn,
        epoch: 1,
        timestamp_ms: lsn,
        digest_after: hotpair::Digest(u128::from(lsn)),
        body: RecordBody::Txn {
            ops: vec![Op { key: format!("k{lsn}").into_bytes(), before: None, after: Some(vec![7; 100]) }],
            commands: Vec::new(),
        },
    };
    {
        let (journal, _) = Journal::open(&dir, identity.clone(), JournalOptions::default()).expect("open on the tmpfs");
        for lsn in 1..=500 {
            journal.append(&record(lsn)).expect("append");
        }
        journal.sync_to(500).expect("every record durable without preallocation");
        let active = std::fs::read_dir(&dir).expect("list").next().expect("a segment").expect("entry").path();
        let len = std::fs::metadata(&active).expect("stat").len();
        assert!(
            len < hotpair::storage::journal::PREALLOCATE_BYTES,
            "the tmpfs held a full preallocation ({len} bytes)?"
        );
    }
    let (journal, recovery) = Journal::open(&dir, identity, JournalOptions::default()).expect("reopen");
    assert_eq!(recovery.cut, None);
    let lsns: Vec<u64> = journal.read_from(1).expect("read").map(|e| e.expect("entry").record.lsn).collect();
    assert_eq!(lsns, (1..=500).collect::<Vec<_>>());
}

/// A distinct value of `bytes` bytes for key `i`, so that a mixed-up value shows.
fn big_value(i: usize, bytes: usize) -> String {
    let stamp = format!("value-{i}-");
    stamp.repeat(bytes / stamp.len() + 1)[..bytes].to_string()
}

#[test]
fn sigterm_ends_a_node_whose_store_hit_a_full_disk_and_the_journals_rebuild_it() {
    // disk_min_free = 0 turns the guard off: the pair writes until the tmpfs is full and sled
    // fails. sled 0.34 then never finished a flush, and SIGTERM left the node waiting in
    // Store::flush for good (over 90 s, even after space was freed). Each node must now end
    // within the deadline; once space is back both restart, every acknowledged write is there
    // and the digests agree.
    let Some(tmpfs) = Tmpfs::mount_or_skip(TMPFS_SIZE) else {
        return;
    };
    let options = Options {
        disk_min_free: Some("0"),
        sync_timeout: Some("2s"),
        parent_dir: Some(tmpfs.path().to_path_buf()),
        ..Options::default()
    };
    let mut pair = Pair::start_with(SyncLevel::Durable, options);
    let ballast = pair.dir().parent().expect("pair dir on the tmpfs").join("ballast");
    fill(&ballast, 12 * MIB);
    let mut a = pair.redis(PRIMARY);
    let mut acknowledged = Vec::new();
    let mut refusal = None;
    for i in 0..200 {
        let value = big_value(i, 256 * 1024);
        match set(&mut a, &format!("big-{i}"), &value) {
            Ok(()) => acknowledged.push((format!("big-{i}"), value)),
            Err(err) => {
                refusal = Some(err.to_string());
                break;
            }
        }
    }
    let refusal = refusal.expect("12 MiB filled without a write failing");
    eprintln!("{} writes acknowledged, then: {refusal}", acknowledged.len());
    drop(a);

    for node in [PRIMARY, BACKUP] {
        let started = Instant::now();
        let status = pair.terminate(node);
        eprintln!("{node} ended {} ms after SIGTERM with {status}", started.elapsed().as_millis());
        let log = pair.log(node);
        assert!(!log.contains("panicked"), "{node}: {log}");
        if !status.success() {
            let last = log.lines().last().unwrap_or_default();
            assert!(last.contains("journals"), "{node} says why it exited non-zero: {last}");
        }
    }

    std::fs::remove_file(&ballast).expect("delete the ballast");
    pair.restart(PRIMARY);
    pair.restart(BACKUP);
    pair.wait_ready();
    pair.wait_caught_up();
    for node in [PRIMARY, BACKUP] {
        let mut connection = pair.redis(node);
        for (key, value) in &acknowledged {
            let read: Option<String> = redis::cmd("GET").arg(key).query(&mut connection).expect("read back");
            assert!(read.as_deref() == Some(value.as_str()), "acknowledged {key} is not intact on {node}");
        }
    }
    drop(pair);
    drop(tmpfs);
}
