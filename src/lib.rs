//! hotpair: a hot-backup pair for a key-value database.
//!
//! Applications write to the primary over the Redis protocol. Every committed change goes into
//! the primary's local journal and is shipped into the backup's remote journal, from which the
//! backup applies it. See `docs/architecture.md` for the map; each module opens with its job and
//! its invariants.

pub mod admin;
pub mod bounded_read;
pub mod cli;
pub mod clock;
pub mod config;
pub mod drill;
pub mod engine;
mod error;
pub mod kv;
pub mod node;
pub mod orchestrator;
pub mod proxy;
pub mod replication;
pub mod resp;
pub mod sentinel;
pub mod server;
pub mod storage;
pub mod tls;
pub mod witness;

pub use error::Error;
pub use storage::digest::Digest;
