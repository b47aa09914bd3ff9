//! The data port's protocol: RESP2, the Redis serialization protocol, with no I/O.
//!
//! ## Job
//! Applications talk to a node's data port with any Redis client (`redis-cli`, `redis-benchmark`,
//! the `redis` crate). This module turns the bytes they send into typed requests and replies back
//! into bytes, in three layers that know nothing of each other's insides:
//!
//! 1. [`frame`]: bytes ↔ [`Frame`]. [`parse`] tells an *incomplete* request (read more) from an
//!    *invalid* one (answer and hang up); [`encode`] writes a reply.
//! 2. [`command`]: a request frame → [`Request`], either a [`Command`] for the backend or a
//!    [`ConnectionCommand`] the connection answers itself — or a [`CommandError`] worded exactly as
//!    Redis words it (`ERR wrong number of arguments for 'get' command`).
//! 3. The handler, outside this module: `server::data_port` runs connections and hands each
//!    [`Command`] to the backend.
//!
//! ## Invariants
//! - Nothing here panics on any input; every malformed byte sequence is an error value.
//! - An encoded frame parses back to itself, and every strict prefix of it parses as incomplete.
//! - A request's size is known to fit the [`Limits`] before memory is set aside for it: declared
//!   lengths and counts are checked first, and arrays reserve only what the bytes present could fill.
//! - Two kinds of refusal: a [`ProtocolError`] means the byte stream cannot be trusted any more
//!   (the server replies `-ERR Protocol error: …` and closes that connection only); a
//!   [`CommandError`] refuses one well-formed request and the connection carries on.
//!
//! ## Limits
//! See [`Limits`]: `max_value_bytes` (1 MiB), `max_args` (4096), `max_inline_bytes` (64 KiB),
//! `max_request_bytes` (4 MiB) and `max_connections` (512), plus [`frame::MAX_NESTING_DEPTH`].
//! Every error for a broken limit names the limit and its value.
//!
//! ## Protocols
//! Requests are RESP2 (RESP3 clients send the same arrays of bulk strings). Replies are RESP2
//! until a connection says `HELLO 3`; then [`encode_as`] writes RESP3's null, maps and sets.
//! [`table`] lists every command with its arity and flags (`COMMAND`, and `MULTI`'s checks).

pub mod command;
pub mod frame;
pub mod limits;
pub mod table;

pub use command::{request_arguments, ClientCommand, Command, CommandError, ConnectionCommand, Request};
pub use frame::{encode, encode_as, parse, Frame, Protocol, ProtocolError, ProtocolErrorKind};
pub use limits::Limits;
