//! Network servers of a node: the data port, and what the control port (replication and admin,
//! mutual TLS, in `node::control`) shares with it to stay available to the people it serves
//! when strangers misbehave.
//!
//! - [`data_port`]: the RESP server; [`auth`] its users, [`memory`] the budget of its clients'
//!   buffers.
//! - [`handshake`]: the control port's TLS handshakes, in slots that strangers cannot fill.
//! - [`throttle`]: per-source limits on log lines and password guesses.
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

pub mod auth;
pub mod data_port;
pub mod handshake;
pub mod memory;
pub mod session;
pub mod throttle;

pub use data_port::{serve, serve_with, DataBackend, ServeOptions};
