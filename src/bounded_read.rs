//! Reading a small file that an admin named (the pair file, a certificate, a key, a password
//! file, a playbook, `meta.json`) with a bound on its size and on its kind.
//!
//! ## Job
//! [`read`] returns the whole file, or an error that says what is wrong with it in words an
//! admin can act on: it is a directory, it is not a file one can read to its end (a FIFO or a
//! socket, on which a plain read would wait forever), or it is larger than the bound (`cert =
//! "/dev/zero"` used to be read until memory ran out: 23.8 GB).
//!
//! ## Invariants
//! - Never reads more than `limit + 1` bytes, whatever the file is.
//! - Never blocks on opening: the file is opened with `O_NONBLOCK` (which changes nothing for a
//!   regular file) and its kind is checked before any read.
//! - Errors are `std::io::Error`s whose message is a sentence fragment ("is a directory"), so
//!   callers keep their own error types, which name the file and what it is for.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Bound on a certificate, key or password file: a PEM bundle of hundreds of certificates.
pub const CREDENTIAL_LIMIT: u64 = 1024 * 1024;
/// Bound on the pair file and on a playbook.
pub const CONFIG_LIMIT: u64 = 1024 * 1024;
/// Bound on `meta.json`, whose history grows by one short entry per epoch.
pub const META_LIMIT: u64 = 16 * 1024 * 1024;

/// The whole of `path`, refusing a directory, a FIFO or socket, and anything over `limit` bytes.
pub fn read(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_dir() {
        return Err(invalid("is a directory, not a file"));
    }
    if kind.is_fifo() || kind.is_socket() {
        return Err(invalid("is a FIFO or a socket, not a file that can be read to its end"));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(invalid(&format!("is larger than {limit} bytes, the most such a file may hold")));
    }
    Ok(bytes)
}

/// [`read`], as UTF-8 text.
pub fn read_to_string(path: &Path, limit: u64) -> std::io::Result<String> {
    String::from_utf8(read(path, limit)?).map_err(|_| invalid("is not UTF-8 text"))
}

fn invalid(message: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_directories_fifos_and_large_files_are_refused_without_reading_them_whole() {
        let err = read(Path::new("/dev/zero"), 4096).unwrap_err().to_string();
        assert!(err.contains("larger than 4096 bytes"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path(), 4096).unwrap_err().to_string().contains("is a directory"));
        let fifo = dir.path().join("fifo");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        assert!(read(&fifo, 4096).unwrap_err().to_string().contains("FIFO"));
        let file = dir.path().join("file");
        std::fs::write(&file, vec![b'x'; 4096]).unwrap();
        assert_eq!(read(&file, 4096).unwrap().len(), 4096);
        assert!(read(&file, 4095).is_err());
        assert_eq!(read(Path::new("/dev/null"), 10).unwrap(), b"");
    }
}
