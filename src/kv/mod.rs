//! The key-value database on one node: what each data command does, and how a write becomes a
//! journal record and then store state.
//!
//! ## Parts
//! - [`keyspace`]: the commands' semantics over a view of the keys (no I/O).
//! - [`pipeline`]: the primary's commit pipeline: one writer at a time, LSNs in commit order,
//!   appended to the local journal, pending writes visible in an overlay.
//! - [`applier`]: the thread that applies durable records to the store, on the primary (local
//!   journal) and on the backup (remote journal, gated by what the primary confirmed).
//! - [`watch`]: `WATCH`'s registry of watched keys, touched by every commit.
//!
//! ## Invariants
//! - The journal order is the commit order, and the store holds only durable records
//!   ([`pipeline`], [`applier`]).

pub mod applier;
pub mod keyspace;
pub mod pipeline;
pub mod watch;
