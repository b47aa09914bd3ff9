//! File operations of the journal: opening a segment for writing, cutting, moving and
//! removing files, and making directory entries durable.

use super::*;

/// Opens a segment to write records at their offsets (not `O_APPEND`: the file runs on past the
/// records into preallocated zeros).
pub(super) fn open_for_writing(path: &Path) -> Result<File, JournalError> {
    OpenOptions::new().write(true).open(path).map_err(|source| JournalError::Io { path: path.to_path_buf(), source })
}

/// Cuts the file at `path` to `len` bytes, durably.
pub(super) fn cut_file(path: &Path, len: u64) -> Result<(), JournalError> {
    let file = open_for_writing(path)?;
    io(path, file.set_len(len))?;
    io(path, file.sync_all())
}

pub(super) fn io<T>(path: &Path, result: std::io::Result<T>) -> Result<T, JournalError> {
    result.map_err(|source| JournalError::Io { path: path.to_path_buf(), source })
}

pub(super) fn remove_file(path: &Path) -> Result<(), JournalError> {
    io(path, std::fs::remove_file(path))
}

pub(super) fn move_file(from: &Path, to: &Path) -> Result<(), JournalError> {
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    // Another filesystem: copy, make the copy durable, then remove the original.
    io(to, std::fs::copy(from, to))?;
    io(to, File::open(to).and_then(|f| f.sync_all()))?;
    remove_file(from)
}

/// Creates `dir` (and parents) and fsyncs the parent so the new entry survives a crash.
pub(crate) fn create_dir_durably(dir: &Path) -> Result<(), JournalError> {
    if dir.is_dir() {
        return Ok(());
    }
    io(dir, crate::storage::datadir::create_private_dir(dir))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// fsyncs a directory so that created, renamed or removed entries in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    let path = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    io(path, File::open(path).and_then(|f| f.sync_all()))
}
