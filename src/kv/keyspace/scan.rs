//! `SCAN` cursors: integers (as every client expects) that say where the last call stopped.
//!
//! ## Cursor layout
//! ```text
//! bits 63..32  the first 4 bytes of the last key examined (zero-padded, big-endian)
//! bits 31..0   a tag (never 0) naming the exact key in this node's cursor table
//! ```
//! The store is ordered, so a scan walks keys in order and resumes *after* the last key it
//! examined: every key present for the whole scan is returned at least once (Redis's promise),
//! whatever was written or deleted meanwhile.
//!
//! The node keeps the last [`MAX_CURSORS`] cursors it handed out (about [`MAX_CURSOR_BYTES`] of
//! keys at most). A cursor it no longer holds — evicted, or issued by the other node before a
//! switchover, or before a restart — is resumed from its 4-byte prefix instead: from the first
//! key at or after it. Nothing is missed that way (every key after the last one returned is at
//! or after its prefix); some keys may be returned again, which SCAN allows. A tag from another
//! node that happens to name a key here is used only if that key has the cursor's prefix, and
//! tags are drawn at random per node to make even that unlikely.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Cursors kept per node.
pub const MAX_CURSORS: usize = 16_384;
/// Key bytes kept for cursors per node, at most (older cursors are dropped first).
pub const MAX_CURSOR_BYTES: usize = 16 * 1024 * 1024;
const PREFIX_BYTES: usize = 4;

/// Where a scan resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStart {
    Beginning,
    /// Strictly after this key.
    After(Vec<u8>),
    /// At or after this key.
    AtOrAfter(Vec<u8>),
}

/// The cursor table of one node.
pub struct ScanCursors {
    inner: Mutex<Table>,
}

struct Table {
    next_tag: u32,
    keys: HashMap<u32, Vec<u8>>,
    order: VecDeque<u32>,
    bytes: usize,
}

impl Default for ScanCursors {
    fn default() -> Self {
        // A random start, so that two nodes (or two runs) hand out different tags.
        let start = (uuid::Uuid::new_v4().as_u128() as u32).max(1);
        ScanCursors {
            inner: Mutex::new(Table { next_tag: start, keys: HashMap::new(), order: VecDeque::new(), bytes: 0 }),
        }
    }
}

impl ScanCursors {
    /// Where a scan with `cursor` resumes.
    pub fn start(&self, cursor: u64) -> ScanStart {
        if cursor == 0 {
            return ScanStart::Beginning;
        }
        let prefix = ((cursor >> 32) as u32).to_be_bytes();
        let tag = cursor as u32;
        let table = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(key) = table.keys.get(&tag).filter(|key| padded_prefix(key) == prefix) {
            return ScanStart::After(key.clone());
        }
        // Trailing zeros may be padding: resuming at the shorter prefix never skips a key.
        let len = prefix.iter().rposition(|&byte| byte != 0).map_or(0, |last| last + 1);
        ScanStart::AtOrAfter(prefix[..len].to_vec())
    }

    /// A cursor that resumes after `last_key`.
    pub fn cursor_after(&self, last_key: &[u8]) -> u64 {
        let mut table = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tag = table.next_tag;
        table.next_tag = table.next_tag.wrapping_add(1).max(1);
        if let Some(old) = table.keys.insert(tag, last_key.to_vec()) {
            table.bytes -= old.len();
        } else {
            table.order.push_back(tag);
        }
        table.bytes += last_key.len();
        while table.order.len() > MAX_CURSORS || (table.bytes > MAX_CURSOR_BYTES && table.order.len() > 1) {
            let Some(oldest) = table.order.pop_front() else { break };
            if let Some(old) = table.keys.remove(&oldest) {
                table.bytes -= old.len();
            }
        }
        (u64::from(u32::from_be_bytes(padded_prefix(last_key))) << 32) | u64::from(tag)
    }
}

fn padded_prefix(key: &[u8]) -> [u8; PREFIX_BYTES] {
    let mut prefix = [0u8; PREFIX_BYTES];
    let len = key.len().min(PREFIX_BYTES);
    prefix[..len].copy_from_slice(&key[..len]);
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_resumes_after_its_key_here_and_from_its_prefix_elsewhere() {
        let here = ScanCursors::default();
        let cursor = here.cursor_after(b"user:1234");
        assert_ne!(cursor, 0);
        assert_eq!(here.start(cursor), ScanStart::After(b"user:1234".to_vec()));
        // Another node (or this one after a restart) does not hold the tag.
        let elsewhere = ScanCursors::default();
        assert_eq!(elsewhere.start(cursor), ScanStart::AtOrAfter(b"user".to_vec()));
        // Short keys and keys with zero bytes: the padding is dropped.
        let short = here.cursor_after(b"ab");
        assert_eq!(elsewhere.start(short), ScanStart::AtOrAfter(b"ab".to_vec()));
        assert_eq!(here.start(0), ScanStart::Beginning);
    }

    #[test]
    fn the_table_is_bounded() {
        let cursors = ScanCursors::default();
        let first = cursors.cursor_after(b"k0");
        for i in 0..MAX_CURSORS + 10 {
            cursors.cursor_after(format!("k{i}").as_bytes());
        }
        assert_eq!(cursors.start(first), ScanStart::AtOrAfter(b"k0".to_vec()));
        assert!(cursors.inner.lock().unwrap().order.len() <= MAX_CURSORS);
    }
}
