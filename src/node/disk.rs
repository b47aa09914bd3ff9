//! The disk-space guard: stop writing journals before the file system fills, not after.
//!
//! ## Job
//! Measures the free space of the node's data directory ([`free_bytes`], `statvfs`) every
//! [`CHECK_INTERVAL`] and publishes it as [`DiskSpace`] on `Node::disk`. While it is *low*
//! (below the pair file's `disk_min_free`):
//! - the primary answers every write on the data port with [`DiskSpace::refusal`] (reads go on);
//! - the backup ends its follower session and opens no new one (`follow.rs`), so nothing more is
//!   appended to its remote journal; the primary then sees its backup gone and blocks or
//!   degrades per `on_peer_loss`, as for any lost backup;
//! - a `disk-low` incident is open. When space returns all of this undoes itself.
//!
//! ## Invariants
//! - Nothing acknowledged is touched: the guard only refuses *new* writes before they reach the
//!   pipeline; commits already appended finish or fail on their own.
//! - Low is entered below `disk_min_free` and left only at or above [`resume_threshold`] (a
//!   margin above it), so a disk hovering at the threshold does not flap writes and incidents.
//!
//! ## Caveats
//! - It is a guard, not a reservation: writes faster than `disk_min_free` per
//!   [`CHECK_INTERVAL`] could still fill the disk between two looks. A journal write that fails
//!   (ENOSPC included) fails the journal for good, as any write error does (`journal::writer`).
//! - Free space is what an unprivileged process may use (`f_bavail`), not the root reserve.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::Node;
use crate::node::incident::{Kind, Severity};
use crate::Error;

/// How often free space is measured. One `statvfs` is a few microseconds.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// The data directory's free space as last measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskSpace {
    /// `None` until measured, or while measuring fails.
    pub free_bytes: Option<u64>,
    /// Below `disk_min_free` (and not yet back above [`resume_threshold`]).
    pub low: bool,
}

impl DiskSpace {
    /// The state after measuring `free` bytes, coming from `self`, with threshold `min_free`.
    pub fn next(self, free: Option<u64>, min_free: u64) -> DiskSpace {
        let Some(free) = free else {
            // Cannot tell: keep the last verdict rather than guess either way.
            return DiskSpace { free_bytes: None, low: self.low };
        };
        let low = if self.low { free < resume_threshold(min_free) } else { free < min_free };
        DiskSpace { free_bytes: Some(free), low: min_free > 0 && low }
    }

    /// The error a write gets while space is low (a whole RESP error line, `ERR` prefix).
    pub fn refusal(&self, node: &str, min_free: u64) -> Option<String> {
        self.low.then(|| {
            format!(
                "ERR disk space low on node {node}: {} free, below disk_min_free {}; \
                 writes are refused until space returns and then resume by themselves (reads still work)",
                self.free_bytes.map_or_else(|| "unknown".to_string(), format_bytes),
                format_bytes(min_free)
            )
        })
    }
}

/// Free space at which a low disk counts as recovered: `min_free` plus an eighth of it.
pub fn resume_threshold(min_free: u64) -> u64 {
    min_free.saturating_add(min_free / 8)
}

/// Bytes available to unprivileged users on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: `statvfs` is plain old data; all-zero bytes are a valid value of it.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `stat` is a properly
    // sized, writable struct the call only writes into.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The field types differ between platforms (u32/u64), hence the widening casts.
    #[allow(clippy::unnecessary_cast)]
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// `12.3 MiB`, for messages.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Measures once, publishes the result and raises or resolves `disk-low` on a change.
/// Also called right after a write failed, so a full disk is seen without waiting for a tick.
pub fn check(node: &Node) -> DiskSpace {
    let min_free = node.pair().disk_min_free;
    let measured = match free_bytes(&node.config.dir) {
        Ok(free) => Some(free),
        Err(err) => {
            tracing::warn!(dir = %node.config.dir.display(), %err, "cannot measure free disk space");
            None
        }
    };
    let before = *node.disk.borrow();
    let now = before.next(measured, min_free);
    node.disk.send_replace(now);
    let dir = node.config.dir.display();
    match (before.low, now.low) {
        (false, true) => {
            let free = now.free_bytes.map_or_else(|| "unknown".to_string(), format_bytes);
            let message = format!(
                "disk space low in {dir}: {free} free, below disk_min_free {}; the primary refuses writes \
                 and the backup stops receiving until it is back above {}",
                format_bytes(min_free),
                format_bytes(resume_threshold(min_free))
            );
            node.incidents.raise(Kind::DiskLow, Severity::Critical, message);
        }
        (true, false) => {
            let free = now.free_bytes.map_or_else(|| "unknown".to_string(), format_bytes);
            node.incidents.resolve(Kind::DiskLow, format!("disk space back in {dir}: {free} free"));
        }
        _ => {}
    }
    now
}

/// Measures every [`CHECK_INTERVAL`] until shutdown.
pub async fn run(node: Arc<Node>) -> Result<(), Error> {
    let mut shutdown = node.shutdown.subscribe();
    loop {
        check(&node);
        tokio::select! {
            biased;
            _ = shutdown.changed() => return Ok(()),
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn low_below_the_threshold_and_back_only_past_the_margin() {
        let min = 16 * MIB;
        let ok = DiskSpace::default().next(Some(20 * MIB), min);
        assert!(!ok.low);
        let low = ok.next(Some(15 * MIB), min);
        assert!(low.low);
        assert!(low.next(Some(17 * MIB), min).low, "inside the margin: still low");
        assert!(low.next(None, min).low, "unmeasurable: keeps the verdict");
        assert!(!low.next(Some(18 * MIB), min).low, "past min + 1/8: back");
        assert!(!DiskSpace::default().next(Some(0), 0).low, "0 turns the guard off");
    }

    #[test]
    fn the_refusal_names_the_node_the_space_and_the_key() {
        let low = DiskSpace { free_bytes: Some(12 * MIB + MIB / 3), low: true };
        let message = low.refusal("a", 256 * MIB).unwrap();
        assert!(message.starts_with("ERR disk space low on node a: 12.3 MiB free"), "{message}");
        assert!(message.contains("disk_min_free 256.0 MiB"), "{message}");
        assert_eq!(DiskSpace { free_bytes: Some(0), low: false }.refusal("a", 1), None);
        assert_eq!(format_bytes(512), "512 B");
    }

    #[test]
    fn free_bytes_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }
}
