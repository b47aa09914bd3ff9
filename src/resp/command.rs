//! Requests: a parsed frame turned into a typed command, or into the exact error Redis would give.
//!
//! Commands split by who answers them. [`Command`] is what the backend executes: the data and the
//! node's state. [`ConnectionCommand`] is answered by the connection itself (`PING`, `SELECT 0`,
//! `QUIT`, `HELLO`, `CLIENT …`, `MULTI`/`EXEC`/`WATCH` …), so the backend never sees it directly
//! and a node answers it whatever its role.
//!
//! Times to live are kept as the client gave them (relative or absolute, in milliseconds): the
//! primary turns a relative one into an absolute deadline with the timestamp of the record that
//! commits it, so that the journal holds absolute times only.

use std::time::Duration;

use bytes::Bytes;

use super::frame::{parse_integer, quote, Frame, ProtocolError, ProtocolErrorKind};
use super::table;

/// Longest command name quoted back in an error, as Redis does.
const QUOTED_NAME_BYTES: usize = 128;

/// `SCAN`'s default `COUNT`, as Redis.
pub const DEFAULT_SCAN_COUNT: usize = 10;

/// A point in time for an expiry: relative to the commit (`In`) or absolute (`At`), both in ms.
/// `In` may be zero or negative (`EXPIRE k -1`), which deletes the key as Redis does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    In(i64),
    At(i64),
}

impl Deadline {
    /// The absolute time in ms for a commit at `now_ms`; `None` if it does not fit an i64.
    pub fn resolve(self, now_ms: u64) -> Option<i64> {
        match self {
            Deadline::In(ms) => (now_ms as i64).checked_add(ms),
            Deadline::At(ms) => Some(ms),
        }
    }
}

/// What `SET` does with the key's time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetExpiry {
    /// No option: the key loses any time to live it had.
    Clear,
    /// `KEEPTTL`.
    Keep,
    /// `EX`, `PX`, `EXAT`, `PXAT` (and `SETEX`, `PSETEX`).
    Until(Deadline),
}

/// `NX` / `XX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Always,
    IfAbsent,
    IfPresent,
}

/// How `SET` and its relatives answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetReply {
    /// `+OK`, or null when a condition failed (`SET`, `SETEX`, `PSETEX`).
    Status,
    /// `1` if set, `0` if not (`SETNX`).
    Flag,
    /// The old value, or null (`SET … GET`, `GETSET`).
    Old,
}

/// `EXPIRE`'s `NX | XX | GT | LT` (XX may go with GT or LT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExpireCondition {
    /// Only if the key has no expiry.
    pub nx: bool,
    /// Only if the key has an expiry.
    pub xx: bool,
    /// Only if the new expiry is later (no expiry counts as infinite).
    pub gt: bool,
    /// Only if the new expiry is sooner.
    pub lt: bool,
}

/// What `TTL` and its relatives answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlForm {
    /// `TTL`: seconds left.
    Seconds,
    /// `PTTL`: milliseconds left.
    Milliseconds,
    /// `EXPIRETIME`: Unix time in seconds.
    UnixSeconds,
    /// `PEXPIRETIME`: Unix time in milliseconds.
    UnixMilliseconds,
}

/// `GETEX`'s option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetExpiry {
    Unchanged,
    Persist,
    Until(Deadline),
}

/// `SCAN`/`HSCAN` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOptions {
    pub cursor: u64,
    pub pattern: Option<Bytes>,
    pub count: usize,
    /// `TYPE` (`SCAN` only), lowercased.
    pub type_name: Option<String>,
}

/// A command the backend executes. Keys and values are binary-safe.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `GET key`: bulk string, or null when absent.
    Get { key: Bytes },
    /// `SET key value [NX|XX] [GET] [EX|PX|EXAT|PXAT t | KEEPTTL]`, and `SETEX`, `PSETEX`,
    /// `SETNX`, `GETSET`.
    Set { key: Bytes, value: Bytes, expiry: SetExpiry, condition: Condition, reply: SetReply },
    /// `GETDEL key`.
    GetDel { key: Bytes },
    /// `GETEX key [EX|PX|EXAT|PXAT t | PERSIST]`.
    GetEx { key: Bytes, expiry: GetExpiry },
    /// `APPEND key value`: the new length.
    Append { key: Bytes, value: Bytes },
    /// `STRLEN key`.
    StrLen { key: Bytes },
    /// `INCR`, `DECR`, `INCRBY`, `DECRBY`: the new value. `name` is the command as sent, for the
    /// journal's client commands.
    IncrBy { key: Bytes, delta: i64 },
    /// `INCRBYFLOAT key increment`: the new value as a bulk string.
    IncrByFloat { key: Bytes, delta: f64 },
    /// `MGET key…`: one bulk string or null per key.
    MGet { keys: Vec<Bytes> },
    /// `MSET key value […]` (`+OK`) and `MSETNX` (`1` if all were set, `0` if none was): one
    /// transaction; the last of a repeated key wins.
    MSet { pairs: Vec<(Bytes, Bytes)>, only_if_none_exist: bool },
    /// `DEL key…` and `UNLINK key…`: how many existed.
    Del { keys: Vec<Bytes> },
    /// `EXISTS key…` and `TOUCH key…`: how many of the keys exist (a key named twice counts twice).
    Exists { keys: Vec<Bytes> },
    /// `EXPIRE`, `PEXPIRE`, `EXPIREAT`, `PEXPIREAT`: `1` if the expiry was set (or the key was
    /// deleted because the time has passed), `0` otherwise.
    Expire { key: Bytes, deadline: Deadline, condition: ExpireCondition, command: &'static str },
    /// `TTL`, `PTTL`, `EXPIRETIME`, `PEXPIRETIME`: `-2` when absent, `-1` without expiry.
    Ttl { key: Bytes, form: TtlForm },
    /// `PERSIST key`: `1` if an expiry was removed.
    Persist { key: Bytes },
    /// `TYPE key`: `string`, `hash` or `none`.
    Type { key: Bytes },
    /// `RENAME` (`+OK`) and `RENAMENX` (`1`/`0`).
    Rename { from: Bytes, to: Bytes, only_if_absent: bool },
    /// `SCAN cursor [MATCH p] [COUNT n] [TYPE t]`.
    Scan { options: ScanOptions },
    /// `KEYS pattern`.
    Keys { pattern: Bytes },
    /// `RANDOMKEY`.
    RandomKey,
    /// `FLUSHALL` and `FLUSHDB` (`ASYNC`/`SYNC` accepted; always done at once).
    FlushAll,
    /// `DBSIZE`: number of keys.
    DbSize,
    /// `HSET key f v […]` (number of new fields) and `HMSET` (`+OK`).
    HSet { key: Bytes, pairs: Vec<(Bytes, Bytes)>, reply_ok: bool },
    /// `HSETNX key field value`.
    HSetNx { key: Bytes, field: Bytes, value: Bytes },
    /// `HGET key field`.
    HGet { key: Bytes, field: Bytes },
    /// `HMGET key field…`.
    HMGet { key: Bytes, fields: Vec<Bytes> },
    /// `HGETALL key`: a map (RESP3) or flat field/value array (RESP2).
    HGetAll { key: Bytes },
    /// `HDEL key field…`: how many were removed; the key goes with its last field.
    HDel { key: Bytes, fields: Vec<Bytes> },
    /// `HEXISTS key field`.
    HExists { key: Bytes, field: Bytes },
    /// `HLEN key`.
    HLen { key: Bytes },
    /// `HKEYS key` (`values` false) and `HVALS key` (`values` true).
    HKeys { key: Bytes, values: bool },
    /// `HSTRLEN key field`.
    HStrLen { key: Bytes, field: Bytes },
    /// `HINCRBY key field delta`.
    HIncrBy { key: Bytes, field: Bytes, delta: i64 },
    /// `HINCRBYFLOAT key field delta`.
    HIncrByFloat { key: Bytes, field: Bytes, delta: f64 },
    /// `HSCAN key cursor [MATCH p] [COUNT n]`: every field in one reply, cursor 0 (as Redis does
    /// for a small hash).
    HScan { key: Bytes, options: ScanOptions },
    /// `ROLE`: as Redis, e.g. `["master", offset, [[host, port, offset]…]]` or
    /// `["slave", host, port, state, offset]`.
    Role,
    /// `INFO [section…]`: a bulk string of `# Section` headers and `field:value` lines. Sections
    /// are lowercased; none means the default set.
    Info { sections: Vec<String> },
    /// `WAIT numreplicas timeout`: how many replicas have everything this node committed so far.
    /// `timeout` is `None` for Redis's `0`, which means "block until they have".
    Wait { replicas: u64, timeout: Option<Duration> },
    /// A command whose arguments failed a check that Redis makes when it runs the command, not
    /// when it queues it: inside `MULTI` it is queued and answers this error at `EXEC`.
    Fail { error: CommandError },
}

impl Command {
    /// The command's name as Redis spells it in errors (lowercase).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Get { .. } => "get",
            Command::Set { .. } => "set",
            Command::GetDel { .. } => "getdel",
            Command::GetEx { .. } => "getex",
            Command::Append { .. } => "append",
            Command::StrLen { .. } => "strlen",
            Command::IncrBy { .. } => "incrby",
            Command::IncrByFloat { .. } => "incrbyfloat",
            Command::MGet { .. } => "mget",
            Command::MSet { .. } => "mset",
            Command::Del { .. } => "del",
            Command::Exists { .. } => "exists",
            Command::Expire { .. } => "expire",
            Command::Ttl { .. } => "ttl",
            Command::Persist { .. } => "persist",
            Command::Type { .. } => "type",
            Command::Rename { .. } => "rename",
            Command::Scan { .. } => "scan",
            Command::Keys { .. } => "keys",
            Command::RandomKey => "randomkey",
            Command::FlushAll => "flushall",
            Command::DbSize => "dbsize",
            Command::HSet { .. } => "hset",
            Command::HSetNx { .. } => "hsetnx",
            Command::HGet { .. } => "hget",
            Command::HMGet { .. } => "hmget",
            Command::HGetAll { .. } => "hgetall",
            Command::HDel { .. } => "hdel",
            Command::HExists { .. } => "hexists",
            Command::HLen { .. } => "hlen",
            Command::HKeys { .. } => "hkeys",
            Command::HStrLen { .. } => "hstrlen",
            Command::HIncrBy { .. } => "hincrby",
            Command::HIncrByFloat { .. } => "hincrbyfloat",
            Command::HScan { .. } => "hscan",
            Command::Role => "role",
            Command::Info { .. } => "info",
            Command::Wait { .. } => "wait",
            Command::Fail { .. } => "fail",
        }
    }

    /// Whether the command may change data: refused on a backup (`-READONLY`) or a draining
    /// primary (`-TRYAGAIN`), and run through the commit pipeline on a primary.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Command::Set { .. }
                | Command::GetDel { .. }
                | Command::GetEx { expiry: GetExpiry::Persist | GetExpiry::Until(_), .. }
                | Command::Append { .. }
                | Command::IncrBy { .. }
                | Command::IncrByFloat { .. }
                | Command::MSet { .. }
                | Command::Del { .. }
                | Command::Expire { .. }
                | Command::Persist { .. }
                | Command::Rename { .. }
                | Command::FlushAll
                | Command::HSet { .. }
                | Command::HSetNx { .. }
                | Command::HDel { .. }
                | Command::HIncrBy { .. }
                | Command::HIncrByFloat { .. }
        )
    }
}

/// `CLIENT` subcommands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCommand {
    /// `CLIENT SETINFO attribute value`: `+OK`; `LIB-NAME`/`LIB-VER` show in `CLIENT INFO`.
    SetInfo { attribute: Bytes, value: Bytes },
    /// `CLIENT SETNAME name`: `+OK`; the name lives as long as the connection.
    SetName { name: Bytes },
    /// `CLIENT GETNAME`: the name, or null.
    GetName,
    /// `CLIENT ID`: this connection's id.
    Id,
    /// `CLIENT INFO`: one line about this connection, as Redis words it.
    Info,
    /// `CLIENT NO-EVICT on|off`, `CLIENT NO-TOUCH on|off`: `+OK` (hotpair evicts nothing and
    /// keeps no access times).
    Accept,
    /// `CLIENT TRACKING off` (`+OK`); `on` is refused: hotpair does no client-side caching.
    TrackingOff,
}

/// A command the connection answers by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionCommand {
    /// `PING [message]`: `+PONG`, or the message as a bulk string.
    Ping { message: Option<Bytes> },
    /// `ECHO message`.
    Echo { message: Bytes },
    /// `SELECT 0`: `+OK` (any other index is refused while parsing).
    Select,
    /// `QUIT`: `+OK`, then the server closes the connection.
    Quit,
    /// `COMMAND` (every command), `COMMAND INFO name…`.
    CommandInfo { names: Option<Vec<Bytes>> },
    /// `COMMAND DOCS [name…]`.
    CommandDocs { names: Vec<Bytes> },
    /// `COMMAND COUNT`.
    CommandCount,
    /// `COMMAND LIST`.
    CommandList,
    /// `CONFIG GET parameter…`: name/value pairs for the few parameters clients ask about
    /// (`redis-benchmark` asks for `save` and `appendonly` at start-up).
    ConfigGet { patterns: Vec<Bytes> },
    /// `CLIENT …`.
    Client(ClientCommand),
    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`. `AUTH` is parsed and kept for the
    /// data port's authentication to check.
    Hello { protocol: Option<i64>, auth: Option<(Bytes, Bytes)>, name: Option<Bytes> },
    /// `MULTI`.
    Multi,
    /// `EXEC`.
    Exec,
    /// `DISCARD`.
    Discard,
    /// `WATCH key…`.
    Watch { keys: Vec<Bytes> },
    /// `UNWATCH`.
    Unwatch,
}

/// What a client asked for, sorted by who answers it.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// For the backend.
    Data(Command),
    /// For the connection.
    Connection(ConnectionCommand),
}

/// A well-formed request the server refuses; the connection carries on. `Display` is the whole
/// error line as Redis words it, code first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("ERR unknown command '{name}', with args beginning with: {args}")]
    UnknownCommand { name: String, args: String },
    #[error("ERR wrong number of arguments for '{command}' command")]
    WrongArity { command: &'static str },
    #[error("ERR value is not an integer or out of range")]
    NotAnInteger,
    #[error("ERR value is not a valid float")]
    NotAFloat,
    #[error("ERR value is out of range, must be positive")]
    NotPositive,
    #[error("ERR timeout is negative")]
    NegativeTimeout,
    #[error("ERR syntax error")]
    Syntax,
    #[error("ERR invalid expire time in '{command}' command")]
    InvalidExpireTime { command: &'static str },
    #[error("ERR invalid cursor")]
    InvalidCursor,
    #[error("ERR Unsupported option {option}")]
    UnsupportedExpireOption { option: String },
    #[error("ERR NX and XX, GT or LT options at the same time are not compatible")]
    NxWithOthers,
    #[error("ERR GT and LT options at the same time are not compatible")]
    GtWithLt,
    #[error("ERR DB index is out of range (hotpair has only database 0)")]
    DbIndexOutOfRange,
    #[error("ERR unknown subcommand '{subcommand}'. Try {command} HELP.")]
    UnknownSubcommand { command: &'static str, subcommand: String },
    #[error("NOPROTO unsupported protocol version")]
    NoProto,
    #[error("ERR Protocol version is not an integer or out of range")]
    BadProtocolVersion,
    #[error("ERR Syntax error in HELLO option '{option}'")]
    HelloSyntax { option: String },
    #[error("ERR hotpair does not do client-side caching (CLIENT TRACKING on)")]
    NoTracking,
}

impl CommandError {
    /// The error reply.
    pub fn to_frame(&self) -> Frame {
        Frame::Error(self.to_string())
    }

    /// Whether Redis finds this error when the command is queued inside `MULTI` (an unknown
    /// command, a wrong argument count by the command table), which aborts the transaction;
    /// the others are found when the command runs.
    pub fn aborts_multi(&self) -> bool {
        matches!(self, CommandError::UnknownCommand { .. } | CommandError::WrongArity { .. })
    }
}

/// The arguments of a request frame: an array of bulk strings, the command name first. An empty
/// array (or blank inline line) gives no arguments, which a server skips as Redis does.
///
/// Anything else is a protocol error: clients never send it, so the stream cannot be trusted.
pub fn request_arguments(frame: Frame) -> Result<Vec<Bytes>, ProtocolError> {
    let not_a_request = |kind| ProtocolError { offset: 0, kind };
    let items = match frame {
        Frame::Array(Some(items)) => items,
        other => return Err(not_a_request(ProtocolErrorKind::NotAnArray { found: other.type_name() })),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item {
            Frame::Bulk(Some(argument)) => Ok(argument),
            other => Err(not_a_request(ProtocolErrorKind::NotBulkString { index, found: other.type_name() })),
        })
        .collect()
}

impl Request {
    /// Turns a request's arguments (command name first, as [`request_arguments`] gives them)
    /// into a request. Names and options are case-insensitive.
    ///
    /// An unknown command or an argument count the command table refuses is an `Err`; so is any
    /// other bad argument of a command the connection answers. A data command whose arguments
    /// fail a check Redis makes at run time is `Ok(Command::Fail)` (see [`Command::Fail`]).
    pub fn parse(arguments: &[Bytes]) -> Result<Request, CommandError> {
        let Some((name, args)) = arguments.split_first() else {
            return Err(CommandError::UnknownCommand { name: String::new(), args: String::new() });
        };
        let Some(spec) = table::lookup(name) else {
            return Err(CommandError::UnknownCommand { name: quote_name(name), args: quoted_args(args) });
        };
        if !spec.arity_fits(arguments.len()) {
            return Err(CommandError::WrongArity { command: spec.name });
        }
        match parse_connection(spec.name, args)? {
            Some(command) => Ok(Request::Connection(command)),
            None => Ok(Request::Data(parse_data(spec.name, args).unwrap_or_else(|error| Command::Fail { error }))),
        }
    }
}

/// The first arguments of an unknown command as Redis quotes them: `'a' 'b' ` (each followed by
/// a space).
fn quoted_args(args: &[Bytes]) -> String {
    args.iter().take(8).map(|arg| format!("'{}' ", quote_name(arg))).collect()
}

fn parse_connection(name: &str, args: &[Bytes]) -> Result<Option<ConnectionCommand>, CommandError> {
    let command = match name {
        "ping" => match args {
            [] => ConnectionCommand::Ping { message: None },
            [message] => ConnectionCommand::Ping { message: Some(message.clone()) },
            _ => return Err(CommandError::WrongArity { command: "ping" }),
        },
        "echo" => ConnectionCommand::Echo { message: args[0].clone() },
        "select" => match integer(&args[0])? {
            0 => ConnectionCommand::Select,
            _ => return Err(CommandError::DbIndexOutOfRange),
        },
        "quit" => ConnectionCommand::Quit,
        "command" => parse_command_introspection(args)?,
        "config" => parse_config(args)?,
        "client" => ConnectionCommand::Client(parse_client(args)?),
        "hello" => parse_hello(args)?,
        "multi" => ConnectionCommand::Multi,
        "exec" => ConnectionCommand::Exec,
        "discard" => ConnectionCommand::Discard,
        "watch" => ConnectionCommand::Watch { keys: args.to_vec() },
        "unwatch" => ConnectionCommand::Unwatch,
        _ => return Ok(None),
    };
    Ok(Some(command))
}

/// A data command; the argument count already fits the command table.
fn parse_data(name: &'static str, args: &[Bytes]) -> Result<Command, CommandError> {
    let key = || args[0].clone();
    let keys = || args.to_vec();
    Ok(match name {
        "get" => Command::Get { key: key() },
        "set" => parse_set(args)?,
        "setex" | "psetex" => {
            let unit = if name == "setex" { 1000 } else { 1 };
            let deadline = expire_amount(&args[1], unit, false, name)?;
            Command::Set {
                key: key(),
                value: args[2].clone(),
                expiry: SetExpiry::Until(deadline),
                condition: Condition::Always,
                reply: SetReply::Status,
            }
        }
        "setnx" => Command::Set {
            key: key(),
            value: args[1].clone(),
            expiry: SetExpiry::Clear,
            condition: Condition::IfAbsent,
            reply: SetReply::Flag,
        },
        "getset" => Command::Set {
            key: key(),
            value: args[1].clone(),
            expiry: SetExpiry::Clear,
            condition: Condition::Always,
            reply: SetReply::Old,
        },
        "getdel" => Command::GetDel { key: key() },
        "getex" => Command::GetEx { key: key(), expiry: parse_getex(&args[1..])? },
        "append" => Command::Append { key: key(), value: args[1].clone() },
        "strlen" => Command::StrLen { key: key() },
        "incr" => Command::IncrBy { key: key(), delta: 1 },
        "decr" => Command::IncrBy { key: key(), delta: -1 },
        "incrby" => Command::IncrBy { key: key(), delta: integer(&args[1])? },
        "decrby" => {
            let delta = integer(&args[1])?;
            Command::IncrBy {
                key: key(),
                delta: delta.checked_neg().ok_or(CommandError::Syntax).map_err(|_| CommandError::NotAnInteger)?,
            }
        }
        "incrbyfloat" => Command::IncrByFloat { key: key(), delta: float(&args[1])? },
        "mget" => Command::MGet { keys: keys() },
        "mset" | "msetnx" => {
            if args.len() % 2 != 0 {
                return Err(CommandError::WrongArity { command: name });
            }
            // chunks_exact(2) yields slices of exactly two, so both indexes exist.
            let pairs = args.chunks_exact(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect();
            Command::MSet { pairs, only_if_none_exist: name == "msetnx" }
        }
        "del" | "unlink" => Command::Del { keys: keys() },
        "exists" | "touch" => Command::Exists { keys: keys() },
        "expire" | "pexpire" | "expireat" | "pexpireat" => {
            let unit = if name.starts_with('p') { 1 } else { 1000 };
            let deadline = expire_amount(&args[1], unit, name.ends_with("at"), name)?;
            Command::Expire { key: key(), deadline, condition: parse_expire_condition(&args[2..])?, command: name }
        }
        "ttl" => Command::Ttl { key: key(), form: TtlForm::Seconds },
        "pttl" => Command::Ttl { key: key(), form: TtlForm::Milliseconds },
        "expiretime" => Command::Ttl { key: key(), form: TtlForm::UnixSeconds },
        "pexpiretime" => Command::Ttl { key: key(), form: TtlForm::UnixMilliseconds },
        "persist" => Command::Persist { key: key() },
        "type" => Command::Type { key: key() },
        "rename" | "renamenx" => {
            Command::Rename { from: key(), to: args[1].clone(), only_if_absent: name == "renamenx" }
        }
        "scan" => Command::Scan { options: parse_scan(&args[0], &args[1..], true)? },
        "keys" => Command::Keys { pattern: key() },
        "randomkey" => Command::RandomKey,
        "flushall" | "flushdb" => {
            match args {
                [] => {}
                [mode] if matches!(mode.to_ascii_uppercase().as_slice(), b"ASYNC" | b"SYNC") => {}
                _ => return Err(CommandError::Syntax),
            }
            Command::FlushAll
        }
        "dbsize" => Command::DbSize,
        "hset" | "hmset" => {
            if args.len() % 2 != 1 {
                return Err(CommandError::WrongArity { command: name });
            }
            let pairs = args[1..].chunks_exact(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect();
            Command::HSet { key: key(), pairs, reply_ok: name == "hmset" }
        }
        "hsetnx" => Command::HSetNx { key: key(), field: args[1].clone(), value: args[2].clone() },
        "hget" => Command::HGet { key: key(), field: args[1].clone() },
        "hmget" => Command::HMGet { key: key(), fields: args[1..].to_vec() },
        "hgetall" => Command::HGetAll { key: key() },
        "hdel" => Command::HDel { key: key(), fields: args[1..].to_vec() },
        "hexists" => Command::HExists { key: key(), field: args[1].clone() },
        "hlen" => Command::HLen { key: key() },
        "hkeys" => Command::HKeys { key: key(), values: false },
        "hvals" => Command::HKeys { key: key(), values: true },
        "hstrlen" => Command::HStrLen { key: key(), field: args[1].clone() },
        "hincrby" => Command::HIncrBy { key: key(), field: args[1].clone(), delta: integer(&args[2])? },
        "hincrbyfloat" => Command::HIncrByFloat { key: key(), field: args[1].clone(), delta: float(&args[2])? },
        "hscan" => Command::HScan { key: key(), options: parse_scan(&args[1], &args[2..], false)? },
        "role" => Command::Role,
        "info" => Command::Info { sections: args.iter().map(|s| String::from_utf8_lossy(s).to_lowercase()).collect() },
        "wait" => {
            let replicas = u64::try_from(integer(&args[0])?).map_err(|_| CommandError::NotPositive)?;
            let timeout = match integer(&args[1])? {
                0 => None,
                milliseconds => {
                    Some(Duration::from_millis(u64::try_from(milliseconds).map_err(|_| CommandError::NegativeTimeout)?))
                }
            };
            Command::Wait { replicas, timeout }
        }
        // Every name of the table is handled above or in `parse_connection`.
        other => return Err(CommandError::UnknownCommand { name: other.to_string(), args: String::new() }),
    })
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`, in any order.
fn parse_set(args: &[Bytes]) -> Result<Command, CommandError> {
    let (key, value) = (args[0].clone(), args[1].clone());
    let mut expiry = SetExpiry::Clear;
    let mut condition = Condition::Always;
    let mut reply = SetReply::Status;
    // As Redis: an option may be repeated (the last value wins), but not combined with one it
    // excludes (NX with XX, KEEPTTL or another unit with EX …).
    let mut expiry_option: Option<Vec<u8>> = None;
    let mut options = args[2..].iter();
    while let Some(option) = options.next() {
        let upper = option.to_ascii_uppercase();
        let compatible = expiry_option.as_ref().is_none_or(|seen| *seen == upper);
        match upper.as_slice() {
            b"NX" if condition != Condition::IfPresent => condition = Condition::IfAbsent,
            b"XX" if condition != Condition::IfAbsent => condition = Condition::IfPresent,
            b"GET" => reply = SetReply::Old,
            b"KEEPTTL" if compatible => expiry = SetExpiry::Keep,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if compatible => {
                let unit = if upper[0] == b'E' { 1000 } else { 1 };
                let amount = options.next().ok_or(CommandError::Syntax)?;
                expiry = SetExpiry::Until(expire_amount(amount, unit, upper.ends_with(b"AT"), "set")?);
            }
            _ => return Err(CommandError::Syntax),
        }
        if !matches!(upper.as_slice(), b"NX" | b"XX" | b"GET") {
            expiry_option = Some(upper);
        }
    }
    Ok(Command::Set { key, value, expiry, condition, reply })
}

/// `GETEX`'s options: at most one of `EX|PX|EXAT|PXAT t` and `PERSIST`.
fn parse_getex(options: &[Bytes]) -> Result<GetExpiry, CommandError> {
    let mut expiry = GetExpiry::Unchanged;
    let mut seen: Option<Vec<u8>> = None;
    let mut options = options.iter();
    while let Some(option) = options.next() {
        let upper = option.to_ascii_uppercase();
        // The same option again is accepted (the last value wins), as Redis does.
        if seen.as_ref().is_some_and(|seen| *seen != upper) {
            return Err(CommandError::Syntax);
        }
        seen = Some(upper.clone());
        expiry = match upper.as_slice() {
            b"PERSIST" => GetExpiry::Persist,
            upper @ (b"EX" | b"PX" | b"EXAT" | b"PXAT") => {
                let unit = if upper[0] == b'E' { 1000 } else { 1 };
                let amount = options.next().ok_or(CommandError::Syntax)?;
                GetExpiry::Until(expire_amount(amount, unit, upper.ends_with(b"AT"), "getex")?)
            }
            _ => return Err(CommandError::Syntax),
        };
    }
    Ok(expiry)
}

/// An expiry amount in `unit` ms. `SET`/`GETEX`/`SETEX` refuse zero or less (`strict`), as Redis
/// does; `EXPIRE` and its relatives accept any value whose milliseconds fit (a time already
/// passed deletes the key).
fn expire_amount(text: &[u8], unit: i64, absolute: bool, command: &'static str) -> Result<Deadline, CommandError> {
    let amount = integer(text)?;
    let strict = !command.contains("expire");
    if strict && amount <= 0 {
        return Err(CommandError::InvalidExpireTime { command });
    }
    let ms = amount.checked_mul(unit).ok_or(CommandError::InvalidExpireTime { command })?;
    Ok(if absolute { Deadline::At(ms) } else { Deadline::In(ms) })
}

/// `EXPIRE`'s `NX | XX | GT | LT`, with Redis's checks of which go together.
fn parse_expire_condition(options: &[Bytes]) -> Result<ExpireCondition, CommandError> {
    let mut condition = ExpireCondition::default();
    for option in options {
        match option.to_ascii_uppercase().as_slice() {
            b"NX" => condition.nx = true,
            b"XX" => condition.xx = true,
            b"GT" => condition.gt = true,
            b"LT" => condition.lt = true,
            _ => return Err(CommandError::UnsupportedExpireOption { option: String::from_utf8_lossy(option).into() }),
        }
    }
    if condition.nx && (condition.xx || condition.gt || condition.lt) {
        return Err(CommandError::NxWithOthers);
    }
    if condition.gt && condition.lt {
        return Err(CommandError::GtWithLt);
    }
    Ok(condition)
}

/// `cursor [MATCH p] [COUNT n] [TYPE t]` (`TYPE` for `SCAN` only).
fn parse_scan(cursor: &[u8], options: &[Bytes], with_type: bool) -> Result<ScanOptions, CommandError> {
    let cursor = std::str::from_utf8(cursor).ok().and_then(|text| text.parse::<u64>().ok());
    let mut scan = ScanOptions {
        cursor: cursor.ok_or(CommandError::InvalidCursor)?,
        pattern: None,
        count: DEFAULT_SCAN_COUNT,
        type_name: None,
    };
    let mut options = options.iter();
    while let Some(option) = options.next() {
        let value = options.next().ok_or(CommandError::Syntax)?;
        match option.to_ascii_uppercase().as_slice() {
            b"MATCH" => scan.pattern = Some(value.clone()),
            b"COUNT" => {
                let count = integer(value)?;
                if count < 1 {
                    return Err(CommandError::Syntax);
                }
                scan.count = usize::try_from(count).unwrap_or(usize::MAX);
            }
            b"TYPE" if with_type => scan.type_name = Some(String::from_utf8_lossy(value).to_lowercase()),
            _ => return Err(CommandError::Syntax),
        }
    }
    Ok(scan)
}

/// `COMMAND [INFO|DOCS|COUNT|LIST …]`.
fn parse_command_introspection(args: &[Bytes]) -> Result<ConnectionCommand, CommandError> {
    let Some((subcommand, rest)) = args.split_first() else {
        return Ok(ConnectionCommand::CommandInfo { names: None });
    };
    match subcommand.to_ascii_uppercase().as_slice() {
        b"DOCS" => Ok(ConnectionCommand::CommandDocs { names: rest.to_vec() }),
        b"INFO" => Ok(ConnectionCommand::CommandInfo { names: Some(rest.to_vec()) }),
        b"COUNT" if rest.is_empty() => Ok(ConnectionCommand::CommandCount),
        b"COUNT" => Err(CommandError::WrongArity { command: "command|count" }),
        // `LIST [FILTERBY …]`: the filters are not supported; every command is listed.
        b"LIST" => Ok(ConnectionCommand::CommandList),
        _ => Err(CommandError::UnknownSubcommand { command: "COMMAND", subcommand: quote_name(subcommand) }),
    }
}

/// `CONFIG GET parameter…`; every other subcommand is refused.
fn parse_config(args: &[Bytes]) -> Result<ConnectionCommand, CommandError> {
    let (subcommand, rest) = (&args[0], &args[1..]);
    match subcommand.to_ascii_uppercase().as_slice() {
        b"GET" if rest.is_empty() => Err(CommandError::WrongArity { command: "config|get" }),
        b"GET" => Ok(ConnectionCommand::ConfigGet { patterns: rest.to_vec() }),
        _ => Err(CommandError::UnknownSubcommand { command: "CONFIG", subcommand: quote_name(subcommand) }),
    }
}

/// The `CLIENT` subcommands clients and frameworks send when they connect.
fn parse_client(args: &[Bytes]) -> Result<ClientCommand, CommandError> {
    let (subcommand, rest) = (&args[0], &args[1..]);
    let on_off = |value: &Bytes| matches!(value.to_ascii_uppercase().as_slice(), b"ON" | b"OFF");
    match (subcommand.to_ascii_uppercase().as_slice(), rest) {
        (b"SETINFO", [attribute, value]) => {
            match attribute.to_ascii_uppercase().as_slice() {
                b"LIB-NAME" | b"LIB-VER" => {}
                _ => {
                    return Err(CommandError::UnknownSubcommand {
                        command: "CLIENT",
                        subcommand: format!("SETINFO {}", quote_name(attribute)),
                    })
                }
            }
            Ok(ClientCommand::SetInfo { attribute: attribute.clone(), value: value.clone() })
        }
        (b"SETINFO", _) => Err(CommandError::WrongArity { command: "client|setinfo" }),
        (b"SETNAME", [name]) => Ok(ClientCommand::SetName { name: name.clone() }),
        (b"SETNAME", _) => Err(CommandError::WrongArity { command: "client|setname" }),
        (b"GETNAME", []) => Ok(ClientCommand::GetName),
        (b"GETNAME", _) => Err(CommandError::WrongArity { command: "client|getname" }),
        (b"ID", []) => Ok(ClientCommand::Id),
        (b"ID", _) => Err(CommandError::WrongArity { command: "client|id" }),
        (b"INFO", []) => Ok(ClientCommand::Info),
        (b"INFO", _) => Err(CommandError::WrongArity { command: "client|info" }),
        (b"NO-EVICT" | b"NO-TOUCH", [value]) if on_off(value) => Ok(ClientCommand::Accept),
        (b"NO-EVICT" | b"NO-TOUCH", [_]) => Err(CommandError::Syntax),
        (b"NO-EVICT", _) => Err(CommandError::WrongArity { command: "client|no-evict" }),
        (b"NO-TOUCH", _) => Err(CommandError::WrongArity { command: "client|no-touch" }),
        (b"TRACKING", [value, ..]) if value.eq_ignore_ascii_case(b"OFF") => Ok(ClientCommand::TrackingOff),
        (b"TRACKING", [value, ..]) if value.eq_ignore_ascii_case(b"ON") => Err(CommandError::NoTracking),
        (b"TRACKING", [_, ..]) => Err(CommandError::Syntax),
        (b"TRACKING", _) => Err(CommandError::WrongArity { command: "client|tracking" }),
        _ => Err(CommandError::UnknownSubcommand { command: "CLIENT", subcommand: quote_name(subcommand) }),
    }
}

/// `HELLO [protover [AUTH username password] [SETNAME clientname]]`. The protocol version is
/// checked by the connection (2 and 3 are spoken).
fn parse_hello(args: &[Bytes]) -> Result<ConnectionCommand, CommandError> {
    let Some((protocol, options)) = args.split_first() else {
        return Ok(ConnectionCommand::Hello { protocol: None, auth: None, name: None });
    };
    let protocol = parse_integer(protocol).ok_or(CommandError::BadProtocolVersion)?;
    let (mut auth, mut name) = (None, None);
    let mut index = 0;
    while index < options.len() {
        let option = &options[index];
        let remaining = options.len() - index - 1;
        match option.to_ascii_uppercase().as_slice() {
            b"AUTH" if remaining >= 2 => {
                auth = Some((options[index + 1].clone(), options[index + 2].clone()));
                index += 3;
            }
            b"SETNAME" if remaining >= 1 => {
                name = Some(options[index + 1].clone());
                index += 2;
            }
            _ => return Err(CommandError::HelloSyntax { option: quote_name(option) }),
        }
    }
    Ok(ConnectionCommand::Hello { protocol: Some(protocol), auth, name })
}

fn integer(text: &[u8]) -> Result<i64, CommandError> {
    parse_integer(text).ok_or(CommandError::NotAnInteger)
}

/// A float as Redis reads one (`strtold`): no spaces, not NaN.
pub fn parse_float(text: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(text).ok()?;
    if text.is_empty()
        || text.starts_with(|c: char| c.is_ascii_whitespace())
        || text.ends_with(|c: char| c.is_ascii_whitespace())
    {
        return None;
    }
    text.parse::<f64>().ok().filter(|value| !value.is_nan())
}

fn float(text: &[u8]) -> Result<f64, CommandError> {
    parse_float(text).ok_or(CommandError::NotAFloat)
}

/// A client-supplied name, made safe to put in an error line.
fn quote_name(name: &[u8]) -> String {
    let shown = &name[..name.len().min(QUOTED_NAME_BYTES)];
    if shown.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        String::from_utf8_lossy(shown).into_owned()
    } else {
        quote(shown)
    }
}

#[cfg(test)]
mod tests;
