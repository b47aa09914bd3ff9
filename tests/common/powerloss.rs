//! Power cuts for tests: the reading side of `tests/powerloss/shim.c`.
//!
//! A node started with [`Shim::env`] logs, before each change to its data directory, how to
//! undo it, and marks each fsync. [`Shim::cut_power`] SIGKILLs nothing itself: the caller kills
//! the process (its page cache survives, so the log is whole), then this undoes, newest first,
//! every change no later fsync made durable. What is left is what a power cut at that instant
//! could leave: every fsynced byte and name, nothing else (the strict POSIX model; see the
//! shim's header).
//!
//! Log records: `u32 len` (of what follows), `u8 kind`, fields little-endian. A record cut
//! short by the kill is ignored: its change had not started.

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const DATA: u8 = 1;
const SIZE: u8 = 2;
const SYNC: u8 = 3;
const CREATE: u8 = 4;
const RENAME: u8 = 5;
const UNLINK: u8 = 6;
const MKDIR: u8 = 7;
const DIRSYNC: u8 = 8;

/// Set to build and run the tests with a journal that skips its fsyncs (see
/// `hotpair::storage::journal::SKIP_FSYNC_ENV`): the power-loss tests must then fail.
pub const SKIP_FSYNC_ENV: &str = "HOTPAIR_TEST_SKIP_FSYNC";

/// The compiled shim.
pub struct Shim {
    pub library: PathBuf,
}

impl Shim {
    /// Compiles the shim with the system C compiler (present wherever Rust links), or `None`
    /// after saying SKIPPED when there is none.
    pub fn build() -> Option<Shim> {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/powerloss/shim.c");
        let library = Path::new(env!("CARGO_TARGET_TMPDIR")).join("powercut-shim.so");
        let built = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&library)
            .arg(&source)
            .args(["-ldl", "-lpthread"])
            .output();
        match built {
            Ok(out) if out.status.success() => Some(Shim { library }),
            Ok(out) => panic!("the power-cut shim does not compile:\n{}", String::from_utf8_lossy(&out.stderr)),
            Err(e) => {
                eprintln!("SKIPPED: no C compiler to build the power-cut shim: {e}");
                println!("SKIPPED: no C compiler to build the power-cut shim: {e}");
                None
            }
        }
    }

    /// The environment that makes a node log its changes under `root` into `log.<pid>`.
    pub fn env(&self, root: &Path, log: &Path) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), self.library.display().to_string()),
            ("HOTPAIR_POWERCUT_ROOT".into(), root.display().to_string()),
            ("HOTPAIR_POWERCUT_LOG".into(), log.display().to_string()),
        ]
    }
}

/// What a power cut took away.
#[derive(Debug, Default)]
pub struct Cut {
    /// Changes undone (writes, truncations, names).
    pub undone: usize,
    /// Changes the cut kept (covered by an fsync).
    pub kept: usize,
}

#[derive(Debug)]
enum Change {
    Data { ino: u64, offset: u64, old: Vec<u8> },
    Size { ino: u64, old: u64 },
    Sync { ino: u64, upto: u64 },
    DirSync { ino: u64, upto: u64 },
    Names { kind: u8, dir: u64, ino: u64, name: String, dir2: u64, name2: String, replaced: u64, stashed: String },
}

/// Undoes, in the files under `root`, every change of process `pid`'s log (`log.<pid>`) that no
/// fsync covers. The process must be dead.
pub fn cut_power(root: &Path, log: &Path, pid: u32) -> Cut {
    let log_file = PathBuf::from(format!("{}.{pid}", log.display()));
    let stash = PathBuf::from(format!("{}.stash", log.display()));
    let bytes = std::fs::read(&log_file).unwrap_or_else(|e| panic!("power-cut log {}: {e}", log_file.display()));
    let changes = parse(&bytes);
    let mut synced: HashMap<u64, u64> = HashMap::new();
    let mut dir_synced: HashMap<u64, u64> = HashMap::new();
    for (_, change) in &changes {
        match change {
            Change::Sync { ino, upto } => {
                let e = synced.entry(*ino).or_default();
                *e = (*e).max(*upto);
            }
            Change::DirSync { ino, upto } => {
                let e = dir_synced.entry(*ino).or_default();
                *e = (*e).max(*upto);
            }
            _ => {}
        }
    }
    let durable = |position: u64, ino: u64, map: &HashMap<u64, u64>| map.get(&ino).is_some_and(|&upto| position < upto);
    let mut paths = Inodes::scan(root, &stash);
    let mut cut = Cut::default();
    for (position, change) in changes.iter().rev() {
        let position = *position;
        match change {
            Change::Sync { .. } | Change::DirSync { .. } => {}
            Change::Data { ino, offset, old } => {
                if durable(position, *ino, &synced) {
                    cut.kept += 1;
                    continue;
                }
                if let Some(path) = paths.get(*ino) {
                    let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open to undo a write");
                    file.write_all_at(old, *offset).expect("undo a write");
                }
                cut.undone += 1;
            }
            Change::Size { ino, old } => {
                if durable(position, *ino, &synced) {
                    cut.kept += 1;
                    continue;
                }
                if let Some(path) = paths.get(*ino) {
                    let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open to undo a size");
                    file.set_len(*old).expect("undo a size change");
                }
                cut.undone += 1;
            }
            Change::Names { kind, dir, ino, name, dir2, name2, replaced, stashed } => {
                // A name is durable once the directory holding it was fsynced after it.
                let holder = if *kind == RENAME { *dir2 } else { *dir };
                if durable(position, holder, &dir_synced) {
                    cut.kept += 1;
                    continue;
                }
                cut.undone += 1;
                let Some(dir_path) = paths.get(*dir) else { continue };
                match *kind {
                    CREATE => {
                        let path = dir_path.join(name);
                        if ino_of(&path) == Some(*ino) {
                            std::fs::remove_file(&path).expect("undo a create");
                            paths.forget(*ino);
                        }
                    }
                    MKDIR => {
                        let path = dir_path.join(name);
                        if ino_of(&path) == Some(*ino) {
                            std::fs::remove_dir_all(&path).expect("undo a mkdir");
                            paths = Inodes::scan(root, &stash);
                        }
                    }
                    UNLINK => {
                        let path = dir_path.join(name);
                        std::fs::rename(stash.join(stashed), &path).expect("undo an unlink");
                        paths.set(*ino, path);
                    }
                    RENAME => {
                        let Some(to_dir) = paths.get(*dir2) else { continue };
                        let (from, to) = (dir_path.join(name), to_dir.join(name2));
                        if ino_of(&to) == Some(*ino) {
                            std::fs::rename(&to, &from).expect("undo a rename");
                            paths.set(*ino, from);
                        }
                        if *replaced != 0 {
                            std::fs::rename(stash.join(stashed), &to).expect("put back what a rename replaced");
                            paths.set(*replaced, to);
                        }
                    }
                    other => panic!("unknown name change {other}"),
                }
            }
        }
    }
    cut
}

fn parse(bytes: &[u8]) -> Vec<(u64, Change)> {
    let mut changes = Vec::new();
    let mut at = 0usize;
    while at + 5 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if at + 4 + len > bytes.len() {
            break; // cut short by the kill: its change never started
        }
        let kind = bytes[at + 4];
        let body = &bytes[at + 5..at + 4 + len];
        let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().unwrap());
        let change = match kind {
            DATA => {
                let n = u32::from_le_bytes(body[16..20].try_into().unwrap()) as usize;
                Change::Data { ino: u64_at(0), offset: u64_at(8), old: body[20..20 + n].to_vec() }
            }
            SIZE => Change::Size { ino: u64_at(0), old: u64_at(8) },
            SYNC => Change::Sync { ino: u64_at(0), upto: u64_at(8) },
            DIRSYNC => Change::DirSync { ino: u64_at(0), upto: u64_at(8) },
            CREATE | RENAME | UNLINK | MKDIR => {
                let mut i = 32;
                let mut text = || {
                    let n = u16::from_le_bytes(body[i..i + 2].try_into().unwrap()) as usize;
                    let s = String::from_utf8_lossy(&body[i + 2..i + 2 + n]).into_owned();
                    i += 2 + n;
                    s
                };
                let (name, name2, stashed) = (text(), text(), text());
                Change::Names {
                    kind,
                    dir: u64_at(0),
                    ino: u64_at(8),
                    dir2: u64_at(16),
                    replaced: u64_at(24),
                    name,
                    name2,
                    stashed,
                }
            }
            other => panic!("power-cut log: unknown record kind {other} at {at}"),
        };
        changes.push((at as u64, change));
        at += 4 + len;
    }
    changes
}

fn ino_of(path: &Path) -> Option<u64> {
    std::fs::symlink_metadata(path).ok().map(|m| m.ino())
}

/// Where each inode under the root (or in the stash) is now.
struct Inodes(HashMap<u64, PathBuf>);

impl Inodes {
    fn scan(root: &Path, stash: &Path) -> Inodes {
        fn walk(dir: &Path, out: &mut HashMap<u64, PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
                out.insert(meta.ino(), path.clone());
                if meta.is_dir() {
                    walk(&path, out);
                }
            }
        }
        let mut map = HashMap::new();
        if let Ok(meta) = std::fs::metadata(root) {
            map.insert(meta.ino(), root.to_path_buf());
        }
        walk(stash, &mut map);
        // The root's own entries win over a stashed link to the same inode.
        walk(root, &mut map);
        Inodes(map)
    }

    fn get(&self, ino: u64) -> Option<PathBuf> {
        self.0.get(&ino).cloned()
    }

    fn set(&mut self, ino: u64, path: PathBuf) {
        self.0.insert(ino, path);
    }

    fn forget(&mut self, ino: u64) {
        self.0.remove(&ino);
    }
}
