//! The crate-level error: one enum that every layer's error converts into, and the exit code
//! the CLI gives each. Layers keep their own typed errors; this only joins them at the edge.

use crate::admin::init::InitError;
use crate::config::ConfigError;
use crate::storage::datadir::DataDirError;
use crate::storage::journal::JournalError;
use crate::storage::meta::MetaError;
use crate::storage::store::StoreError;
use crate::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Init(#[from] InitError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(
        "node {node} cannot start: {source}. Its journals are not affected. Rebuild it from its peer: move {} aside (keep it to inspect), run `hotpair reinit {node}`, start it, then `hotpair rejoin {node} --allow-full-copy` (fail over to the peer first if {node} was the primary)",
        dir.display()
    )]
    StoreDamaged { node: String, dir: std::path::PathBuf, source: StoreError },
    #[error(transparent)]
    Backup(#[from] crate::admin::backup::BackupError),
    #[error(transparent)]
    Restore(#[from] crate::admin::restore::RestoreError),
    #[error(transparent)]
    Certs(#[from] crate::admin::certs::CertsError),
    #[error(transparent)]
    Orphans(#[from] crate::admin::orphans::OrphansError),
    #[error(transparent)]
    Clients(#[from] crate::server::auth::AuthFileError),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Self {
        Error::Io { context: "I/O".into(), source }
    }
}

impl Error {
    /// Exit codes as INTERFACE.md promises: 1 refused or failed with nothing changed, 2 usage.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Init(e) if e.is_usage() => 2,
            Error::Orphans(e) => e.exit_code(),
            _ => 1,
        }
    }
}
