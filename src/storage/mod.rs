//! What a node keeps on disk: the journals, the store, the metadata, and the data directory
//! that holds them. Nothing here knows about roles, peers or the network.
//!
//! ## Parts
//! - [`journal`]: the append-only, checksummed log of committed transactions (local and remote),
//!   with group commit.
//! - [`store`]: the key space in sled, always at one applied LSN with its digest.
//! - [`digest`]: the order-independent fingerprint of the whole key space.
//! - [`value`]: how one client value (string or hash, optional expiry) is laid out in the store.
//! - [`meta`]: `meta.json`, the node's identity, role, epoch and history.
//! - [`datadir`]: the data directory's lock and permissions.
//!
//! ## Invariants
//! - The store only ever holds records its journal has made durable; after a crash the node
//!   replays the journal from the store's applied LSN (see [`store`] and `kv::applier`).
//! - Every file that must survive a crash whole is replaced by write, fsync, rename, fsync of
//!   the directory.

pub mod datadir;
pub mod digest;
pub mod journal;
pub mod meta;
pub mod store;
pub mod value;
