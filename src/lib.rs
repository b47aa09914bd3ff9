//! hotpair: a hot-backup pair for a key-value database.
//!
//! Applications write to the primary over the Redis protocol. Every committed change goes into
//! the primary's local journal and is shipped into the backup's remote journal, from which the
//! backup applies it. See `docs/architecture.md` for the map; each module opens with its job and
//! its invariants.

pub mod admin;
pub mod applier;
pub mod backup;
pub mod bench;
pub mod bounded_read;
pub mod certs;
pub mod cli;
pub mod clock;
pub mod config;
pub mod datadir;
pub mod demo;
pub mod digest;
pub mod drill;
pub mod engine;
mod error;
pub mod incident;
pub mod init;
pub mod journal;
pub mod keyspace;
pub mod meta;
pub mod node;
pub mod orchestrator;
pub mod orphans;
pub mod pipeline;
pub mod protocol;
pub mod proxy;
pub mod replication;
pub mod resp;
pub mod restore;
pub mod sentinel;
pub mod server;
pub mod store;
pub mod tls;
pub mod tools;
pub mod value;
pub mod watch;
pub mod wire;
pub mod witness;

pub use digest::Digest;
pub use error::Error;
