//! The bounds of the data port: every one named, with its default and what happens when it is hit.
//!
//! The pair file's `[limits]` table sets them (`config::Limits::data_port`); the defaults here
//! are the pair file's defaults.

use std::time::Duration;

/// Default for [`Limits::max_value_bytes`]: 16 MiB. Redis allows 512 MiB; a journaled pair ships
/// every value twice (local journal, then the peer), and a write's journal record holds the
/// value before and after, within the journal's 64 MiB `MAX_RECORD_BODY`.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;

/// What a request may hold beside its largest value: the command name, the key, options and
/// framing. [`Limits::max_request_bytes`] is `max_value_bytes` plus this.
pub const REQUEST_OVERHEAD_BYTES: usize = 1024 * 1024;

/// Default for [`Limits::max_args`]: 1 Mi arguments, so `MSET` of half a million pairs. It also
/// bounds the fan-out of `MGET`/`DEL`/`EXISTS`.
pub const DEFAULT_MAX_ARGS: usize = 1024 * 1024;

/// Default for [`Limits::max_inline_bytes`]: 64 KiB, as Redis (`PROTO_INLINE_MAX_SIZE`).
pub const DEFAULT_MAX_INLINE_BYTES: usize = 64 * 1024;

/// Default for [`Limits::max_connections`]: 1024 clients.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Default for [`Limits::max_reply_bytes`] (`client_output_buffer_limit`): 64 MiB, four of the
/// largest values.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// Default for [`Limits::max_client_memory`]: 256 MiB for every client's buffers together.
pub const DEFAULT_MAX_CLIENT_MEMORY: usize = 256 * 1024 * 1024;

/// Default for [`Limits::idle_timeout`] (`client_idle_timeout`): 5 minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The bounds the data port enforces. Each one, when exceeded, gives an error that names it.
///
/// A client that exceeds one of the first four has sent a request the server will not read to the
/// end, so that is a protocol error: the client gets `-ERR Protocol error: … exceeds <limit> (<n>)`
/// and its connection is closed; every other connection carries on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest bulk string (key, value or any argument), in bytes. Checked against the declared
    /// length before a byte of it is buffered.
    pub max_value_bytes: usize,
    /// Most elements in one array (a request's command name plus its arguments).
    pub max_args: usize,
    /// Longest line, in bytes: an inline command (as telnet or `redis-cli` piped input sends) or
    /// any header line (`*n`, `$n`, `+…`) of a RESP frame.
    pub max_inline_bytes: usize,
    /// Largest single request, in bytes as received: `max_value_bytes` +
    /// [`REQUEST_OVERHEAD_BYTES`] unless set otherwise ([`Limits::with_max_value_bytes`]). This is
    /// what bounds a connection's read buffer: a request still incomplete at this size is refused.
    pub max_request_bytes: usize,
    /// Most clients connected at once. One more is answered `-ERR max number of clients reached`
    /// and disconnected.
    pub max_connections: usize,
    /// Largest reply a connection holds for its client (`client_output_buffer_limit`). A reply
    /// that would be larger is not sent: the client gets `-ERR reply … exceeds
    /// client_output_buffer_limit …` instead and the connection carries on. Replies are written
    /// before more requests are read, so a connection never holds more than this plus one batch.
    pub max_reply_bytes: usize,
    /// Most memory all connections' buffers may hold together (partial requests and replies not
    /// yet written), beyond a small allowance each (`server::memory`). A reply that would take it
    /// further answers `-OOM …`; a request still arriving that would closes its connection.
    pub max_client_memory: usize,
    /// A connection with no request and no progress of its replies for this long is closed
    /// (Redis's `timeout`); `None` never closes one. It also reclaims half-sent requests.
    pub idle_timeout: Option<Duration>,
}

impl Limits {
    /// These limits with `max_value_bytes` set and `max_request_bytes` derived from it.
    pub fn with_max_value_bytes(self, max_value_bytes: usize) -> Limits {
        Limits { max_value_bytes, max_request_bytes: max_value_bytes.saturating_add(REQUEST_OVERHEAD_BYTES), ..self }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_args: DEFAULT_MAX_ARGS,
            max_inline_bytes: DEFAULT_MAX_INLINE_BYTES,
            max_request_bytes: DEFAULT_MAX_VALUE_BYTES + REQUEST_OVERHEAD_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            max_client_memory: DEFAULT_MAX_CLIENT_MEMORY,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        }
    }
}
