//! Network servers of a node. So far the data port; the control port (replication and admin,
//! mutual TLS) joins it here.
//!
//! ## Job
//! Carry bytes between sockets and the node: accept clients within their limits, run one task
//! per connection, hand typed requests to the node and write its replies back, and stop cleanly
//! when told.
//!
//! ## Invariants
//! - A server never decides anything about data or roles: the data port hands every
//!   [`crate::resp::Command`] to a [`DataBackend`], whose reply frame (including `-READONLY`,
//!   `-TRYAGAIN`) goes back unchanged.
//! - Every resource a client can make the server hold is bounded ([`crate::resp::Limits`] and the
//!   constants in [`data_port`]).
//! - Shutdown is a future passed in; `serve` returns only after every connection task has ended.

pub mod data_port;
pub mod session;

pub use data_port::{serve, DataBackend};
