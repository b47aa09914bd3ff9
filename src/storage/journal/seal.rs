//! Seals: what a closed segment holds, written beside it when it is closed, so that opening a
//! journal does not read every segment.
//!
//! ## Job
//! Reading every segment whole at open, to find where each ends and to check every record's
//! CRC, would make a restart as slow as the journal is long (a backup may keep gigabytes). A closed segment never changes again (records are never rewritten in place),
//! so when the writer closes one it writes `NNNN.hpj.seal` next to it: the segment's first and
//! last LSN, its epoch, its length, and the CRC32C of all its bytes (kept up to date as the
//! records were written, so sealing reads nothing back). At open, a closed segment whose seal
//! agrees with its file (same length, same header, same first LSN) is taken from the seal, and
//! only its header is read; the last segment is always read whole (a torn tail can only be
//! there), and a closed segment without a valid seal is read whole and sealed then.
//!
//! ## What is traded, and how damage is still found
//! A flipped bit in a *closed* segment is no longer found at open. It is found
//! - whenever the records are read: every reader checks every record's CRC, and damage is an
//!   error that names the file and the offset (catch-up, rejoin, `verify`, `journal verify`);
//! - by [`super::Journal::check_sealed`], which reads each sealed segment once and compares its
//!   CRC32C with the seal's; a node runs it in the background after it starts serving (the
//!   journal check, `node::journal_check`), at the disk's pace, and raises an incident on damage.
//!
//! A seal is only ever a shortcut: a missing, torn or disagreeing seal costs one full read of
//! its segment, never a wrong answer about where the segment ends — the length in the seal
//! must equal the file's, and the header must match the name.
//!
//! ## Format (48 bytes, little-endian)
//! ```text
//! 0   8  magic "HPJSEAL1"
//! 8   8  first LSN (= the segment header's)
//! 16  8  last LSN (0: the segment holds no record)
//! 24  8  epoch (the segment header's)
//! 32  8  length of the segment file in bytes
//! 40  4  CRC32C of the segment file's bytes [0, length)
//! 44  4  CRC32C of bytes 0..44 of this seal
//! ```

use std::path::{Path, PathBuf};

use super::record::{Epoch, Lsn};
use super::JournalError;

const MAGIC: &[u8; 8] = b"HPJSEAL1";
/// Bytes in a seal file.
pub const SEAL_LEN: usize = 48;

/// What a closed segment holds, as its writer recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    pub first_lsn: Lsn,
    pub last_lsn: Option<Lsn>,
    pub epoch: Epoch,
    pub bytes: u64,
    pub crc: u32,
}

impl Seal {
    pub fn encode(&self) -> [u8; SEAL_LEN] {
        let mut out = [0u8; SEAL_LEN];
        out[0..8].copy_from_slice(MAGIC);
        out[8..16].copy_from_slice(&self.first_lsn.to_le_bytes());
        out[16..24].copy_from_slice(&self.last_lsn.unwrap_or(0).to_le_bytes());
        out[24..32].copy_from_slice(&self.epoch.to_le_bytes());
        out[32..40].copy_from_slice(&self.bytes.to_le_bytes());
        out[40..44].copy_from_slice(&self.crc.to_le_bytes());
        let own = crc32c::crc32c(&out[..44]);
        out[44..48].copy_from_slice(&own.to_le_bytes());
        out
    }

    /// `None` for anything that is not a whole, self-consistent seal.
    pub fn decode(bytes: &[u8]) -> Option<Seal> {
        if bytes.len() != SEAL_LEN || &bytes[0..8] != MAGIC {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
        if crc32c::crc32c(&bytes[..44]) != u32_at(44) {
            return None;
        }
        let last = u64_at(16);
        let first_lsn = u64_at(8);
        if last != 0 && last < first_lsn {
            return None;
        }
        Some(Seal {
            first_lsn,
            last_lsn: (last != 0).then_some(last),
            epoch: u64_at(24),
            bytes: u64_at(32),
            crc: u32_at(40),
        })
    }
}

/// Where the seal of `segment` lives: beside it, `NNNN.hpj.seal`.
pub fn path_of(segment: &Path) -> PathBuf {
    let mut name = segment.file_name().unwrap_or_default().to_os_string();
    name.push(".seal");
    segment.with_file_name(name)
}

/// Reads the seal of `segment`; `None` if there is none or it is not valid.
pub fn read(segment: &Path) -> Option<Seal> {
    std::fs::read(path_of(segment)).ok().and_then(|bytes| Seal::decode(&bytes))
}

/// Writes the seal of `segment` durably enough: the file is written and fsynced under a
/// temporary name, then renamed. The caller fsyncs the directory (a lost rename only costs the
/// next open a full read of the segment).
pub fn write(segment: &Path, seal: &Seal) -> Result<(), JournalError> {
    use std::io::Write;
    let path = path_of(segment);
    let tmp = path.with_extension("seal.tmp");
    let io = |source| JournalError::Io { path: path.clone(), source };
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(&seal.encode()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

/// Removes the seal of `segment`, if any (before the segment is cut or moved).
pub fn remove(segment: &Path) -> Result<(), JournalError> {
    let path = path_of(segment);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(JournalError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_round_trips_and_any_flipped_bit_voids_it() {
        let seal = Seal { first_lsn: 101, last_lsn: Some(250), epoch: 3, bytes: 1 << 20, crc: 0xdead_beef };
        let bytes = seal.encode();
        assert_eq!(Seal::decode(&bytes), Some(seal));
        for bit in 0..SEAL_LEN * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(Seal::decode(&flipped), None, "bit {bit}");
        }
        assert_eq!(Seal::decode(&bytes[..SEAL_LEN - 1]), None);
        let empty = Seal { last_lsn: None, ..seal };
        assert_eq!(Seal::decode(&empty.encode()), Some(empty));
    }

    #[test]
    fn the_seal_sits_beside_its_segment() {
        assert_eq!(path_of(Path::new("/j/00000000000000000042.hpj")), Path::new("/j/00000000000000000042.hpj.seal"));
    }
}
