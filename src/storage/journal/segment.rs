//! Reading one segment file: header check, record walk, and the torn-tail rule.
//!
//! ## The torn-tail rule
//! Only the *last* segment of a journal may end in a torn record: bytes written by a writer that
//! was cut off before its fsync. Anything that fails to decode is a torn tail only if no valid
//! record with a later LSN follows it; if one does, the bytes in between are damage in the middle
//! of the journal, and that is an error naming the file and the offset — never a silent skip.
//! A flipped bit in the very last record cannot be told from a torn write and is cut back too;
//! at sync level `durable` or above the peer's remote journal still holds that record.
//!
//! ## Preallocated space
//! The writer zero-fills the active segment ahead of its records (see `writer::fill`, "Preallocation"),
//! so the last segment of a journal whose writer did not close it may end in zero bytes. Where a
//! torn tail would be allowed, a tail that is *entirely* zero is that space, not a torn write:
//! [`Tail::Zeroed`]. A zero byte anywhere else is judged like any other byte.

use std::path::{Path, PathBuf};

use super::format::{self, DecodeError, SegmentHeader, FRAME_HEADER_LEN, MIN_BODY_LEN, SEGMENT_HEADER_LEN};
use super::record::Lsn;
use super::JournalError;

/// What the end of a segment looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// The last record ends exactly at the end of the file.
    Clean,
    /// From `offset` to the end of the file, `bytes` bytes are a torn write.
    Torn { offset: u64, bytes: u64, reason: String },
    /// From `offset` to the end of the file, `bytes` bytes are all zero: preallocated space the
    /// writer had not reached yet.
    Zeroed { offset: u64, bytes: u64 },
}

/// The result of walking one segment.
#[derive(Debug, Clone)]
pub struct Scanned {
    pub header: SegmentHeader,
    pub record_count: u64,
    pub last_lsn: Option<Lsn>,
    /// Bytes up to the end of the last whole record (header included).
    pub valid_len: u64,
    pub tail: Tail,
}

/// One whole record found by a scan: where it starts and its framed bytes.
pub struct Frame<'a> {
    pub offset: u64,
    pub lsn: Lsn,
    pub bytes: &'a [u8],
}

/// Walks `bytes` (a whole segment file read from `path`), calling `visit` for every whole record
/// in order. With `allow_torn_tail`, a torn end is reported in [`Scanned::tail`]; without it, it is
/// an error. LSNs must start at the header's first LSN and rise by one.
pub fn scan(
    path: &Path,
    bytes: &[u8],
    allow_torn_tail: bool,
    mut visit: impl FnMut(Frame<'_>) -> Result<(), JournalError>,
) -> Result<Scanned, JournalError> {
    let header = SegmentHeader::decode(bytes).map_err(|err| match err {
        DecodeError::Incomplete => {
            corrupt(path, 0, format!("segment header is {} bytes, expected {SEGMENT_HEADER_LEN}", bytes.len()))
        }
        DecodeError::Invalid(reason) => corrupt(path, 0, reason),
    })?;
    let mut pos = SEGMENT_HEADER_LEN;
    let mut expected = header.first_lsn;
    let mut record_count = 0;
    let tail = loop {
        if pos == bytes.len() {
            break Tail::Clean;
        }
        let failure = match format::check_frame(&bytes[pos..]) {
            Ok(len) => {
                let lsn = format::peek_lsn(&bytes[pos..]).unwrap_or_default();
                if lsn != expected {
                    return Err(corrupt(path, pos as u64, format!("record has LSN {lsn}, expected {expected}")));
                }
                visit(Frame { offset: pos as u64, lsn, bytes: &bytes[pos..pos + len] })?;
                record_count += 1;
                expected += 1;
                pos += len;
                continue;
            }
            Err(DecodeError::Incomplete) => "record is cut off by the end of the file".to_string(),
            Err(DecodeError::Invalid(reason)) => reason,
        };
        if allow_torn_tail && bytes[pos..].iter().all(|&b| b == 0) {
            break Tail::Zeroed { offset: pos as u64, bytes: (bytes.len() - pos) as u64 };
        }
        if allow_torn_tail && !valid_record_follows(bytes, pos, expected) {
            break Tail::Torn { offset: pos as u64, bytes: (bytes.len() - pos) as u64, reason: failure };
        }
        return Err(corrupt(path, pos as u64, failure));
    };
    Ok(Scanned {
        last_lsn: (record_count > 0).then(|| expected - 1),
        header,
        record_count,
        valid_len: pos as u64,
        tail,
    })
}

/// Whether a whole, CRC-valid record with an LSN at or after `expected` starts anywhere after
/// `from`. Only LSN-plausible offsets pay for a CRC check, so this stays cheap on a short tail.
fn valid_record_follows(bytes: &[u8], from: usize, expected: Lsn) -> bool {
    let min_frame = FRAME_HEADER_LEN + MIN_BODY_LEN;
    let max_lsn = expected.saturating_add((bytes.len() / min_frame) as u64 + 1);
    (from + 1..bytes.len().saturating_sub(min_frame - 1)).any(|offset| {
        format::peek_lsn(&bytes[offset..]).is_some_and(|lsn| lsn >= expected && lsn <= max_lsn)
            && format::check_frame(&bytes[offset..]).is_ok()
    })
}

fn corrupt(path: &Path, offset: u64, reason: String) -> JournalError {
    JournalError::Corrupt { path: path.to_path_buf(), offset, reason }
}

/// Segment file name for a first LSN: 20 zero-padded digits, so names sort as LSNs do.
pub fn file_name(first_lsn: Lsn) -> String {
    format!("{first_lsn:020}.hpj")
}

/// The first LSN a segment file name stands for, or `None` if it is not a segment name.
pub fn parse_file_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(".hpj")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment files of a directory, sorted by first LSN. A missing directory has none.
pub fn list(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>, JournalError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(JournalError::Io { path: dir.to_path_buf(), source }),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| JournalError::Io { path: dir.to_path_buf(), source })?;
        if let Some(lsn) = entry.file_name().to_str().and_then(parse_file_name) {
            found.push((lsn, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// A multiple of the page size of every Linux machine this runs on (4 KB on x86-64; 16 or 64 KB
/// on some ARM kernels): the kernel keeps a page only partly in a range it is told to drop, so
/// ranges dropped one after another start and end on these boundaries.
const CACHE_PAGE_BYTES: u64 = 64 * 1024;

/// `offset` rounded down to a [`CACHE_PAGE_BYTES`] boundary.
pub(crate) fn cache_page_floor(offset: u64) -> u64 {
    offset / CACHE_PAGE_BYTES * CACHE_PAGE_BYTES
}

/// Tells the kernel the cached pages of `len` bytes of `file` from `offset` (`len` 0: to the
/// end) are not needed (`posix_fadvise(POSIX_FADV_DONTNEED)`). Advice only: dirty pages are
/// not dropped, nothing is lost, and a failure is ignored. Why the journal drops its pages:
/// `writer::fill`, "Dropping the cache behind".
pub(crate) fn drop_from_cache(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for as long as `file` is borrowed; the call reads no memory.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_sort_as_lsns() {
        assert_eq!(file_name(42), "00000000000000000042.hpj");
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_file_name("42.hpj"), None);
        assert_eq!(parse_file_name("0000000000000000004x.hpj"), None);
    }
}
