//! Node metadata: who this data directory is and where it stands, kept durably in `meta.json`.
//!
//! ## Job
//! Holds the node's identity (cluster id, node name, and the *incarnation* id minted when this
//! data directory was created — a restored copy or second installation keeps the name but is
//! told apart by the peer), its role, its epoch and the pair's history, the peer's last
//! acknowledged position, and the progress of any orchestration in flight.
//!
//! ## Invariants
//! - Saved crash-safely: write `meta.json.tmp`, fsync it, rename over `meta.json`, fsync the
//!   directory. A reader sees the old or the new file, never a mix.
//! - Versioned: a file of another `format_version` is refused with a message naming both.
//! - The epoch never goes down, and the history only grows (checked at save).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::storage::journal::{Epoch, HistoryEntry, Lsn};

pub const META_FILE: &str = "meta.json";
pub const META_FORMAT_VERSION: u32 = 1;

/// A node's role. Which role follows which is the engine's (`crate::engine::role`); this is
/// only the persisted name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Primary,
    Backup,
    Draining,
    Fenced,
    Rejoining,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
            Role::Draining => "draining",
            Role::Fenced => "fenced",
            Role::Rejoining => "rejoining",
        }
    }
}

/// The peer's position as it last acknowledged it to us.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerPosition {
    pub incarnation: Uuid,
    pub epoch: Epoch,
    pub durable_lsn: Lsn,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeMeta {
    pub format_version: u32,
    pub cluster: Uuid,
    pub node: String,
    pub incarnation: Uuid,
    pub role: Role,
    pub epoch: Epoch,
    pub history: Vec<HistoryEntry>,
    pub peer: Option<PeerPosition>,
    /// The orchestration step in flight, as the orchestrator wrote it; `None` when idle.
    pub orchestration: Option<serde_json::Value>,
    /// `hotpair replicate stop` holds across restarts until `replicate start`. Left out of the
    /// file while false, so files written without a stop read the same in older builds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replication_stopped: bool,
    /// This node's last promotion (the failover's estimate of what it never received), once
    /// it was promoted; left out of the file until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<crate::engine::Promotion>,
    /// This node's last rejoin and the orphans file it wrote, once it was rejoined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejoined: Option<crate::engine::Rejoined>,
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("node metadata {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "node metadata {} is missing: {} is not a node's data directory, or what it held was lost; for a node whose data was lost, move the directory aside, run `hotpair reinit NODE`, start it, then `hotpair rejoin NODE --allow-full-copy` (docs/runbook.md procedure 4)",
        path.display(),
        path.parent().map_or_else(|| path.display(), |d| d.display())
    )]
    Missing { path: PathBuf },
    #[error("node metadata {} is damaged: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
    #[error("node metadata {} has format version {found}; this build reads version {META_FORMAT_VERSION}", path.display())]
    Version { path: PathBuf, found: u32 },
    #[error("node metadata {} already exists; refusing to overwrite it", path.display())]
    Exists { path: PathBuf },
    #[error("refusing to save node metadata: {0}")]
    Regression(String),
}

impl NodeMeta {
    /// Metadata for a new data directory, with a fresh incarnation id.
    pub fn new(cluster: Uuid, node: &str, role: Role, epoch: Epoch, history: Vec<HistoryEntry>) -> NodeMeta {
        NodeMeta {
            format_version: META_FORMAT_VERSION,
            cluster,
            node: node.to_string(),
            incarnation: Uuid::new_v4(),
            role,
            epoch,
            history,
            peer: None,
            orchestration: None,
            replication_stopped: false,
            promotion: None,
            rejoined: None,
        }
    }

    /// What the engine keeps of this metadata.
    pub fn persisted(&self) -> crate::engine::Persisted {
        crate::engine::Persisted {
            role: self.role,
            epoch: self.epoch,
            history: self.history.clone(),
            promotion: self.promotion.clone(),
            rejoined: self.rejoined.clone(),
        }
    }

    /// Takes what the engine saves.
    pub fn adopt(&mut self, persisted: &crate::engine::Persisted) {
        self.role = persisted.role;
        self.epoch = persisted.epoch;
        self.history = persisted.history.clone();
        self.promotion = persisted.promotion.clone();
        self.rejoined = persisted.rejoined.clone();
    }

    /// Writes metadata into a directory that must not have any yet.
    pub fn create(&self, dir: &Path) -> Result<(), MetaError> {
        let path = dir.join(META_FILE);
        if path.exists() {
            return Err(MetaError::Exists { path });
        }
        write_atomically(dir, self)
    }

    pub fn load(dir: &Path) -> Result<NodeMeta, MetaError> {
        let path = dir.join(META_FILE);
        let text =
            crate::bounded_read::read_to_string(&path, crate::bounded_read::META_LIMIT).map_err(
                |source| match source.kind() {
                    std::io::ErrorKind::NotFound => MetaError::Missing { path: path.clone() },
                    _ => MetaError::Io { path: path.clone(), source },
                },
            )?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| MetaError::Damaged { path: path.clone(), reason: e.to_string() })?;
        let found = value.get("format_version").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        if found != META_FORMAT_VERSION {
            return Err(MetaError::Version { path, found });
        }
        serde_json::from_value(value).map_err(|e| MetaError::Damaged { path, reason: e.to_string() })
    }

    /// Saves over the existing metadata, refusing to lower the epoch or shorten the history.
    pub fn save(&self, dir: &Path) -> Result<(), MetaError> {
        if let Ok(previous) = NodeMeta::load(dir) {
            if self.epoch < previous.epoch {
                return Err(MetaError::Regression(format!(
                    "epoch would go from {} down to {}",
                    previous.epoch, self.epoch
                )));
            }
            if self.history.len() < previous.history.len() {
                return Err(MetaError::Regression("history would lose entries".into()));
            }
        }
        write_atomically(dir, self)
    }

    /// The epoch that LSN `lsn` was written in, according to the history.
    pub fn epoch_of(&self, lsn: Lsn) -> Option<Epoch> {
        self.history.iter().rev().find(|h| h.first_lsn <= lsn).map(|h| h.epoch)
    }
}

fn write_atomically(dir: &Path, meta: &NodeMeta) -> Result<(), MetaError> {
    let path = dir.join(META_FILE);
    let tmp = dir.join(format!("{META_FILE}.tmp"));
    let io = |source| MetaError::Io { path: path.clone(), source };
    let text = serde_json::to_string_pretty(meta)
        .map_err(|e| MetaError::Damaged { path: path.clone(), reason: e.to_string() })?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(crate::storage::datadir::PRIVATE_FILE_MODE)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.write_all(b"\n").map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeMeta {
        NodeMeta::new(
            Uuid::new_v4(),
            "a",
            Role::Primary,
            1,
            vec![HistoryEntry { epoch: 1, first_lsn: 1, primary: "a".into() }],
        )
    }

    #[test]
    fn round_trips_and_refuses_overwrite_and_regression() {
        let dir = tempfile::tempdir().unwrap();
        let mut meta = sample();
        meta.create(dir.path()).unwrap();
        assert!(matches!(meta.create(dir.path()), Err(MetaError::Exists { .. })));
        assert_eq!(NodeMeta::load(dir.path()).unwrap(), meta);
        meta.epoch = 2;
        meta.history.push(HistoryEntry { epoch: 2, first_lsn: 10, primary: "b".into() });
        meta.save(dir.path()).unwrap();
        assert_eq!(meta.epoch_of(9), Some(1));
        assert_eq!(meta.epoch_of(10), Some(2));
        let mut older = meta.clone();
        older.epoch = 1;
        assert!(matches!(older.save(dir.path()), Err(MetaError::Regression(_))));
    }

    #[test]
    fn damage_and_other_versions_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(META_FILE), "{\"format_version\": 9}").unwrap();
        assert!(matches!(NodeMeta::load(dir.path()), Err(MetaError::Version { found: 9, .. })));
        std::fs::write(dir.path().join(META_FILE), "{not json").unwrap();
        let err = NodeMeta::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("meta.json") && err.contains("damaged"), "{err}");
    }
}
