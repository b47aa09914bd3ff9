//! The bounds of the data port: every one named, with its default and what happens when it is hit.

/// Default for [`Limits::max_value_bytes`]: 1 MiB. Redis allows 512 MiB; a journaled pair ships
/// every value twice (local journal, then the peer), so large blobs belong elsewhere.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Default for [`Limits::max_args`]: 4096 arguments, so `MSET` of 2047 pairs. It also bounds the
/// fan-out of `MGET`/`DEL`/`EXISTS`.
pub const DEFAULT_MAX_ARGS: usize = 4096;

/// Default for [`Limits::max_inline_bytes`]: 64 KiB, as Redis (`PROTO_INLINE_MAX_SIZE`).
pub const DEFAULT_MAX_INLINE_BYTES: usize = 64 * 1024;

/// Default for [`Limits::max_request_bytes`]: 4 MiB. One request is at most one transaction, and
/// a transaction's journal record holds before- and after-images, so this keeps it far below the
/// journal's 64 MiB `MAX_RECORD_BODY`.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Default for [`Limits::max_connections`]: 512 clients. With [`DEFAULT_MAX_REQUEST_BYTES`] that
/// bounds the memory held in read buffers to about 2 GiB in the worst case.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

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
    /// Largest single request, in bytes as received. This is what bounds a connection's read
    /// buffer: a frame still incomplete at this size is refused.
    pub max_request_bytes: usize,
    /// Most clients connected at once. One more is answered `-ERR max number of clients reached`
    /// and disconnected.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_args: DEFAULT_MAX_ARGS,
            max_inline_bytes: DEFAULT_MAX_INLINE_BYTES,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}
