//! Opening a journal directory: every segment checked for identity and continuity (a sealed
//! one from its seal, the last one read whole), and a torn tail cut.

use super::*;

/// Opens every segment of `dir`, checking identity and continuity, and cuts a torn tail of the
/// last one. A closed segment with a valid seal is taken from it (only its header is read); the
/// last segment, and any closed one without a seal, is read and checked whole (and sealed, so
/// the next open need not). Returns the live segments and the CRC32C of the last one's bytes.
pub(super) fn recover(
    dir: &Path,
    identity: &JournalIdentity,
) -> Result<(Vec<SegmentInfo>, Recovery, u32), JournalError> {
    let files = segment::list(dir)?;
    let mut recovery = Recovery { segments: files.len(), ..Recovery::default() };
    let mut segments: Vec<SegmentInfo> = Vec::new();
    let mut last_crc = 0;
    let mut sealed_now = false;
    for (index, (named_lsn, path)) in files.iter().enumerate() {
        let is_last = index + 1 == files.len();
        if !is_last {
            if let Some((info, crc)) = open_sealed(path, *named_lsn, identity, &mut recovery)? {
                check_continuity(segments.last(), &info)?;
                recovery.records += info.last_lsn.map_or(0, |last| last + 1 - info.first_lsn);
                recovery.sealed += 1;
                segments.push(info);
                last_crc = crc;
                continue;
            }
        }
        let bytes = std::fs::read(path).map_err(|source| JournalError::Io { path: path.clone(), source })?;
        recovery.bytes_read += bytes.len() as u64;
        if is_last && bytes.len() < SEGMENT_HEADER_LEN {
            // Created but never made durable: the crash came before the header's fsync.
            tracing::warn!(path = %path.display(), bytes = bytes.len(), "removing a segment whose header was never completed");
            remove_file(path)?;
            if let Some(previous) = segments.last() {
                // The sealed segment before it is the active one again: it will grow.
                seal::remove(&previous.path)?;
                recovery.sealed -= 1;
            }
            sync_dir(dir)?;
            recovery.segments -= 1;
            continue;
        }
        let scanned = segment::scan(path, &bytes, is_last, |_| Ok(()))?;
        check_identity(path, &scanned.header, identity)?;
        if scanned.header.first_lsn != *named_lsn {
            return Err(JournalError::Corrupt {
                path: path.clone(),
                offset: 28,
                reason: format!("header says first LSN {}, file name says {named_lsn}", scanned.header.first_lsn),
            });
        }
        let info = SegmentInfo {
            path: path.clone(),
            first_lsn: scanned.header.first_lsn,
            last_lsn: scanned.last_lsn,
            bytes: scanned.valid_len,
            epoch: scanned.header.epoch,
            archived: false,
        };
        check_continuity(segments.last(), &info)?;
        if let Tail::Torn { offset, bytes: torn, reason } = &scanned.tail {
            tracing::warn!(path = %path.display(), offset, bytes = torn, %reason, "cutting a torn tail back to the last whole record");
            cut_file(path, *offset)?;
            recovery.cut = Some((path.clone(), *offset, *torn, reason.clone()));
        }
        if let Tail::Zeroed { offset, bytes: zeros } = &scanned.tail {
            // Space the writer preallocated and had not reached: nothing was lost.
            tracing::info!(path = %path.display(), offset, bytes = zeros, "cutting the preallocated end of the last segment");
            cut_file(path, *offset)?;
            recovery.zeroed = Some((path.clone(), *offset, *zeros));
        }
        recovery.records += scanned.record_count;
        let crc = crc32c::crc32c(&bytes[..scanned.valid_len as usize]);
        if is_last {
            last_crc = crc;
        } else {
            // A closed segment from before seals existed (or whose seal was lost): seal it now.
            let sealed =
                Seal { first_lsn: info.first_lsn, last_lsn: info.last_lsn, epoch: info.epoch, bytes: info.bytes, crc };
            match seal::write(path, &sealed) {
                Ok(()) => sealed_now = true,
                Err(err) => tracing::warn!(path = %path.display(), %err, "could not seal a closed journal segment"),
            }
        }
        segments.push(info);
    }
    if sealed_now {
        sync_dir(dir)?;
    }
    Ok((segments, recovery, last_crc))
}

/// A closed segment as its seal describes it, if the seal is there and agrees with the file
/// (length, header identity, first LSN, epoch); `None` means "read it whole". Reads the header.
fn open_sealed(
    path: &Path,
    named_lsn: Lsn,
    identity: &JournalIdentity,
    recovery: &mut Recovery,
) -> Result<Option<(SegmentInfo, u32)>, JournalError> {
    let Some(sealed) = seal::read(path) else {
        return Ok(None);
    };
    let len = std::fs::metadata(path).map_err(|source| JournalError::Io { path: path.to_path_buf(), source })?.len();
    if sealed.bytes != len || sealed.first_lsn != named_lsn || len < SEGMENT_HEADER_LEN as u64 {
        return Ok(None);
    }
    let header = reader::read_header(path)?;
    recovery.bytes_read += SEGMENT_HEADER_LEN as u64;
    check_identity(path, &header, identity)?;
    if header.first_lsn != named_lsn || header.epoch != sealed.epoch {
        return Ok(None);
    }
    let info = SegmentInfo {
        path: path.to_path_buf(),
        first_lsn: sealed.first_lsn,
        last_lsn: sealed.last_lsn,
        bytes: sealed.bytes,
        epoch: sealed.epoch,
        archived: false,
    };
    Ok(Some((info, sealed.crc)))
}

/// The segment after `previous` must start where it ends, or past it at an epoch gap.
fn check_continuity(previous: Option<&SegmentInfo>, next: &SegmentInfo) -> Result<(), JournalError> {
    if let Some(prev) = previous {
        let expected = prev.last_lsn.map_or(prev.first_lsn, |l| l + 1);
        if next.first_lsn != expected && !is_epoch_gap(Some(prev), expected, next.first_lsn, next.epoch) {
            return Err(JournalError::Gap { path: next.path.clone(), expected, found: next.first_lsn });
        }
    }
    Ok(())
}

/// CRC32C of the first `len` bytes of the file at `path` (a segment cut by a truncation).
pub(super) fn crc_of_file(path: &Path, len: u64) -> Result<u32, JournalError> {
    use std::io::Read;
    let file = File::open(path).map_err(|source| JournalError::Io { path: path.to_path_buf(), source })?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file.take(len));
    let mut crc = 0;
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut chunk).map_err(|source| JournalError::Io { path: path.to_path_buf(), source })?;
        if n == 0 {
            return Ok(crc);
        }
        crc = crc32c::crc32c_append(crc, &chunk[..n]);
    }
}

fn check_identity(path: &Path, header: &SegmentHeader, identity: &JournalIdentity) -> Result<(), JournalError> {
    if header.cluster != identity.cluster || header.node != identity.node || header.kind != identity.kind {
        return Err(JournalError::Foreign {
            path: path.to_path_buf(),
            found: format!(
                "{} journal of node {} in cluster {}",
                header.kind.name(),
                header.node,
                hex(&header.cluster)
            ),
            expected: format!(
                "{} journal of node {} in cluster {}",
                identity.kind.name(),
                identity.node,
                hex(&identity.cluster)
            ),
        });
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The byte offset just past record `lsn` in the segment at `path` (the header's end if `lsn` is
/// before the segment's first record).
pub(super) fn offset_after(path: &Path, lsn: Lsn) -> Result<u64, JournalError> {
    let bytes = std::fs::read(path).map_err(|source| JournalError::Io { path: path.to_path_buf(), source })?;
    let mut end = SEGMENT_HEADER_LEN as u64;
    // The segment may be the active one, which ends in preallocated zeros.
    segment::scan(path, &bytes, true, |frame| {
        if frame.lsn <= lsn {
            end = frame.offset + frame.bytes.len() as u64;
        }
        Ok(())
    })?;
    Ok(end)
}
