//! A node's data directory as a whole: which process may use it, and who else may touch it.
//!
//! ## Job
//! - [`DataDirLock`]: the node's exclusive lock, a file `LOCK` in the data directory held with
//!   `flock(2)` and naming the holder's pid. Every command that writes into a node's data
//!   directory (`run`, `reinit`) takes it **before it opens any other file there**: a second
//!   `hotpair run a` beside a live `a` used to open (and trim) a's live journal before sled's
//!   own lock stopped it. Like PostgreSQL's `postmaster.pid`, the file names the holder; unlike
//!   it, the lock is the kernel's, so a `kill -9` leaves no stale lock behind (the kernel drops
//!   a `flock` with the last descriptor of the holder, and the descriptor is close-on-exec, so
//!   a notification command the node spawned does not keep it).
//! - [`check_permissions`]: a node refuses a data directory that its group or others can write
//!   (anyone who can write it can rewrite the journals: the truth of the pair), naming the fix.
//! - [`restrict_new_files`]: the node process creates everything it creates (journals, store,
//!   `meta.json`, orphans files, incident log) readable and writable by its owner only, as
//!   PostgreSQL does with `umask(077)`; [`create_private_dir`] and [`PRIVATE_FILE_MODE`] do
//!   the same for code that makes files and directories outside a node process (`init`, tests).
//!
//! ## Invariants
//! - Taking the lock writes nothing when it fails: the file is opened without truncation, and
//!   only its holder rewrites it with its own pid.
//! - The lock lives as long as the [`DataDirLock`] value; a node keeps it for its whole life.
//! - The read-only offline tools (`journal ls|dump|verify`) take no lock and write nothing.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The lock file's name in a node's data directory.
pub const LOCK_FILE: &str = "LOCK";
/// Mode of every file a node creates in its data directory (and of `init`'s private keys).
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of every directory a node creates (and of `init`'s node and certificate directories).
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Permission bits that must be clear on a data directory: written by the group or others.
const FOREIGN_WRITE_BITS: u32 = 0o022;
/// Most of the lock file read back to name its holder (a pid and a newline).
const LOCK_READ_LIMIT: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "node {node} is already running (pid {}, lock {}); stop it first",
        holder.map_or_else(|| "unknown".to_string(), |pid| pid.to_string()),
        path.display()
    )]
    AlreadyRunning { node: String, holder: Option<u32>, path: PathBuf },
    #[error("data directory {} of node {node} does not exist; create it with `hotpair init` (new pair) or `hotpair reinit {node}` (a node whose directory was lost)", dir.display())]
    Missing { node: String, dir: PathBuf },
    #[error("data directory {} of node {node} is not a directory", dir.display())]
    NotADirectory { node: String, dir: PathBuf },
    #[error(
        "data directory {} of node {node} can be written by {who} (mode {mode:04o}): anyone who can write it can rewrite the journals; run `chmod 700 {}` and start the node again",
        dir.display(), dir.display()
    )]
    Writable { node: String, dir: PathBuf, mode: u32, who: &'static str },
    #[error("lock file {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// A node's exclusive lock on its data directory, held until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    /// Holding the descriptor is holding the lock.
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes node `node`'s lock on `dir` (which must exist), or says who holds it.
    pub fn acquire(dir: &Path, node: &str) -> Result<DataDirLock, DataDirError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| DataDirError::Io { path: path.clone(), source };
        // No truncation at open: a refused process must leave the holder's pid in place.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PRIVATE_FILE_MODE)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock(2) on a descriptor this function owns; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(DataDirError::AlreadyRunning { node: node.to_string(), holder: holder(&file), path });
            }
            return Err(io(err));
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DataDirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pid a lock file names, when it names one (its holder may be writing it right now).
fn holder(file: &File) -> Option<u32> {
    let mut text = String::new();
    file.take(LOCK_READ_LIMIT).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Refuses a data directory that is missing, not a directory, or writable by its group or by
/// others, naming the fix. Reads only the directory's own metadata.
pub fn check_permissions(dir: &Path, node: &str) -> Result<(), DataDirError> {
    let metadata = match std::fs::metadata(dir) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(DataDirError::Missing { node: node.to_string(), dir: dir.to_path_buf() })
        }
        Err(source) => return Err(DataDirError::Io { path: dir.to_path_buf(), source }),
    };
    if !metadata.is_dir() {
        return Err(DataDirError::NotADirectory { node: node.to_string(), dir: dir.to_path_buf() });
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & FOREIGN_WRITE_BITS != 0 {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "its group and others",
            (true, false) => "its group",
            _ => "others",
        };
        return Err(DataDirError::Writable { node: node.to_string(), dir: dir.to_path_buf(), mode, who });
    }
    Ok(())
}

/// From now on this process creates files and directories for its owner only (`umask 077`):
/// sled, the journals, `meta.json`, orphans files and the incident log all inherit it.
pub fn restrict_new_files() {
    // SAFETY: umask(2) only sets the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Creates `dir` and any missing parents, each new one with mode 0700 (an existing one is left
/// as it is).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(PRIVATE_DIR_MODE).create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let lock = DataDirLock::acquire(dir.path(), "a").unwrap();
        let before = std::fs::read(lock.path()).unwrap();
        assert_eq!(String::from_utf8_lossy(&before).trim(), std::process::id().to_string());
        let err = DataDirLock::acquire(dir.path(), "a").unwrap_err().to_string();
        assert!(err.contains("node a is already running") && err.contains(&std::process::id().to_string()), "{err}");
        assert_eq!(std::fs::read(lock.path()).unwrap(), before, "a refused lock rewrote the holder's file");
        drop(lock);
        DataDirLock::acquire(dir.path(), "a").unwrap();
    }

    #[test]
    fn a_directory_others_can_write_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_permissions(dir.path(), "a").unwrap_err().to_string();
        assert!(err.contains("chmod 700") && err.contains("its group and others"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        check_permissions(dir.path(), "a").unwrap();
        let missing = dir.path().join("gone");
        assert!(matches!(check_permissions(&missing, "a"), Err(DataDirError::Missing { .. })));
    }
}
