//! Requests: a parsed frame turned into a typed command, or into the exact error Redis would give.
//!
//! Commands split by who answers them. [`Command`] is what the backend executes: the data and the
//! node's state. [`ConnectionCommand`] is answered by the connection itself (`PING`, `SELECT 0`,
//! `QUIT`, and what clients send at start-up), so the backend never sees it and a node answers it
//! whatever its role.

use std::time::Duration;

use bytes::Bytes;

use super::frame::{parse_integer, quote, Frame, ProtocolError, ProtocolErrorKind};

/// Longest command name quoted back in an error, as Redis does.
const QUOTED_NAME_BYTES: usize = 128;

/// A command the backend executes. Keys and values are binary-safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `GET key`: bulk string, or null when absent.
    Get { key: Bytes },
    /// `SET key value [EX seconds | PX milliseconds]`: `+OK`. `expire` is a time to live counted
    /// from when the backend applies it (never zero).
    Set { key: Bytes, value: Bytes, expire: Option<Duration> },
    /// `DEL key…`: how many existed.
    Del { keys: Vec<Bytes> },
    /// `EXISTS key…`: how many of the keys exist (a key named twice counts twice).
    Exists { keys: Vec<Bytes> },
    /// `INCR key` (delta 1) and `INCRBY key delta`: the new value, or
    /// `-ERR value is not an integer or out of range` when the stored value or result is not an i64.
    IncrBy { key: Bytes, delta: i64 },
    /// `MGET key…`: one bulk string or null per key.
    MGet { keys: Vec<Bytes> },
    /// `MSET key value [key value …]`: `+OK`; all pairs in one transaction; the last of a repeated
    /// key wins.
    MSet { pairs: Vec<(Bytes, Bytes)> },
    /// `DBSIZE`: number of keys.
    DbSize,
    /// `ROLE`: as Redis, e.g. `["master", offset, [[host, port, offset]…]]` or
    /// `["slave", host, port, state, offset]`.
    Role,
    /// `INFO [section…]`: a bulk string of `# Section` headers and `field:value` lines. Sections
    /// are lowercased; none means the default set.
    Info { sections: Vec<String> },
    /// `WAIT numreplicas timeout`: how many replicas have everything this node committed so far.
    /// `timeout` is `None` for Redis's `0`, which means "block until they have".
    Wait { replicas: u64, timeout: Option<Duration> },
}

impl Command {
    /// The command's name as Redis spells it in errors (lowercase).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Get { .. } => "get",
            Command::Set { .. } => "set",
            Command::Del { .. } => "del",
            Command::Exists { .. } => "exists",
            Command::IncrBy { .. } => "incrby",
            Command::MGet { .. } => "mget",
            Command::MSet { .. } => "mset",
            Command::DbSize => "dbsize",
            Command::Role => "role",
            Command::Info { .. } => "info",
            Command::Wait { .. } => "wait",
        }
    }

    /// Whether the command changes data: refused on a backup (`-READONLY`) or a draining primary
    /// (`-TRYAGAIN`).
    pub fn is_write(&self) -> bool {
        matches!(self, Command::Set { .. } | Command::Del { .. } | Command::IncrBy { .. } | Command::MSet { .. })
    }
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
    /// `COMMAND`, `COMMAND DOCS …`, `COMMAND INFO …`: an empty array. `redis-cli` asks for
    /// `COMMAND DOCS` at start-up for its hints and works without them.
    CommandDocs,
    /// `COMMAND COUNT`: 0, consistent with the empty `COMMAND DOCS`.
    CommandCount,
    /// `CONFIG GET parameter…`: name/value pairs for the few parameters clients ask about
    /// (`redis-benchmark` asks for `save` and `appendonly` at start-up).
    ConfigGet { patterns: Vec<Bytes> },
    /// `CLIENT SETINFO attribute value`: `+OK`, ignored (the `redis` crate sends it at start-up,
    /// and ignores the answer).
    ClientSetInfo,
    /// `CLIENT SETNAME name`: `+OK`; the name lives as long as the connection.
    ClientSetName { name: Bytes },
    /// `CLIENT GETNAME`: the name, or null.
    ClientGetName,
    /// `AUTH [username] password`: `+OK`, `-WRONGPASS …`, or the refusal Redis gives when no
    /// password is configured (`server::auth`).
    Auth { username: Option<Bytes>, password: Bytes },
    /// `HELLO [2 [AUTH username password] [SETNAME name]]`: authenticates and names the
    /// connection as the options say, then answers the server's description. Protocol 3 is
    /// refused with `-NOPROTO` before any option is looked at, as Redis checks the version first.
    Hello { auth: Option<(Bytes, Bytes)>, setname: Option<Bytes> },
}

/// What a client asked for, sorted by who answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    #[error("ERR unknown command '{name}'")]
    UnknownCommand { name: String },
    #[error("ERR wrong number of arguments for '{command}' command")]
    WrongArity { command: &'static str },
    #[error("ERR value is not an integer or out of range")]
    NotAnInteger,
    #[error("ERR value is out of range, must be positive")]
    NotPositive,
    #[error("ERR timeout is negative")]
    NegativeTimeout,
    #[error("ERR syntax error")]
    Syntax,
    #[error("ERR invalid expire time in '{command}' command")]
    InvalidExpireTime { command: &'static str },
    #[error("ERR the {option} option of '{command}' is not supported by hotpair")]
    UnsupportedOption { command: &'static str, option: String },
    #[error("ERR DB index is out of range (hotpair has only database 0)")]
    DbIndexOutOfRange,
    #[error("ERR unknown subcommand '{subcommand}' for '{command}'")]
    UnknownSubcommand { command: &'static str, subcommand: String },
    #[error("NOPROTO hotpair speaks RESP2 only; connect without HELLO")]
    NoProto,
    #[error("ERR Protocol version is not an integer or out of range")]
    BadProtocolVersion,
    #[error("ERR Syntax error in HELLO option '{option}'")]
    HelloSyntax { option: String },
}

impl CommandError {
    /// The error reply.
    pub fn to_frame(&self) -> Frame {
        Frame::Error(self.to_string())
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
    pub fn parse(arguments: &[Bytes]) -> Result<Request, CommandError> {
        let Some((name, args)) = arguments.split_first() else {
            return Err(CommandError::UnknownCommand { name: String::new() });
        };
        let data = |command| Ok(Request::Data(command));
        let connection = |command| Ok(Request::Connection(command));
        let upper = name.to_ascii_uppercase();
        match upper.as_slice() {
            b"GET" => {
                let [key] = exactly("get", args)?;
                data(Command::Get { key })
            }
            b"SET" => parse_set(args).map(Request::Data),
            b"DEL" => data(Command::Del { keys: at_least_one("del", args)? }),
            b"EXISTS" => data(Command::Exists { keys: at_least_one("exists", args)? }),
            b"INCR" => {
                let [key] = exactly("incr", args)?;
                data(Command::IncrBy { key, delta: 1 })
            }
            b"INCRBY" => {
                let [key, delta] = exactly("incrby", args)?;
                data(Command::IncrBy { key, delta: integer(&delta)? })
            }
            b"MGET" => data(Command::MGet { keys: at_least_one("mget", args)? }),
            b"MSET" => {
                if args.is_empty() || args.len() % 2 != 0 {
                    return Err(CommandError::WrongArity { command: "mset" });
                }
                // chunks_exact(2) yields slices of exactly two, so both indexes exist.
                let pairs = args.chunks_exact(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect();
                data(Command::MSet { pairs })
            }
            b"DBSIZE" => {
                let [] = exactly("dbsize", args)?;
                data(Command::DbSize)
            }
            b"ROLE" => {
                let [] = exactly("role", args)?;
                data(Command::Role)
            }
            b"INFO" => {
                let sections = args.iter().map(|section| String::from_utf8_lossy(section).to_lowercase()).collect();
                data(Command::Info { sections })
            }
            b"WAIT" => {
                let [replicas, timeout] = exactly("wait", args)?;
                let replicas = u64::try_from(integer(&replicas)?).map_err(|_| CommandError::NotPositive)?;
                let timeout = match integer(&timeout)? {
                    0 => None,
                    milliseconds => Some(Duration::from_millis(
                        u64::try_from(milliseconds).map_err(|_| CommandError::NegativeTimeout)?,
                    )),
                };
                data(Command::Wait { replicas, timeout })
            }
            b"PING" => match args {
                [] => connection(ConnectionCommand::Ping { message: None }),
                [message] => connection(ConnectionCommand::Ping { message: Some(message.clone()) }),
                _ => Err(CommandError::WrongArity { command: "ping" }),
            },
            b"ECHO" => {
                let [message] = exactly("echo", args)?;
                connection(ConnectionCommand::Echo { message })
            }
            b"SELECT" => {
                let [index] = exactly("select", args)?;
                match integer(&index)? {
                    0 => connection(ConnectionCommand::Select),
                    _ => Err(CommandError::DbIndexOutOfRange),
                }
            }
            b"QUIT" => connection(ConnectionCommand::Quit),
            b"COMMAND" => parse_command_introspection(args).map(Request::Connection),
            b"CONFIG" => parse_config(args).map(Request::Connection),
            b"CLIENT" => parse_client(args).map(Request::Connection),
            b"AUTH" => match args {
                [password] => connection(ConnectionCommand::Auth { username: None, password: password.clone() }),
                [username, password] => {
                    connection(ConnectionCommand::Auth { username: Some(username.clone()), password: password.clone() })
                }
                [] => Err(CommandError::WrongArity { command: "auth" }),
                _ => Err(CommandError::Syntax),
            },
            // RESP3 clients ask with HELLO 3 first and fall back to RESP2 when refused.
            b"HELLO" => parse_hello(args).map(Request::Connection),
            _ => Err(CommandError::UnknownCommand { name: quote_name(name) }),
        }
    }
}

/// `SET key value [EX seconds | PX milliseconds]`.
fn parse_set(args: &[Bytes]) -> Result<Command, CommandError> {
    let [key, value, options @ ..] = args else {
        return Err(CommandError::WrongArity { command: "set" });
    };
    let mut expire = None;
    let mut options = options.iter();
    while let Some(option) = options.next() {
        let upper = option.to_ascii_uppercase();
        let unit_milliseconds = match upper.as_slice() {
            b"EX" => 1000,
            b"PX" => 1,
            b"NX" | b"XX" | b"GET" | b"KEEPTTL" | b"EXAT" | b"PXAT" => {
                return Err(CommandError::UnsupportedOption {
                    command: "set",
                    option: String::from_utf8_lossy(&upper).into_owned(),
                })
            }
            _ => return Err(CommandError::Syntax),
        };
        // EX and PX together, or twice, is a syntax error in Redis too.
        if expire.is_some() {
            return Err(CommandError::Syntax);
        }
        let amount = integer(options.next().ok_or(CommandError::Syntax)?)?;
        // As Redis: positive, and not so large that the deadline in milliseconds would overflow.
        if amount <= 0 || amount > i64::MAX / 1000 {
            return Err(CommandError::InvalidExpireTime { command: "set" });
        }
        let milliseconds = amount.unsigned_abs() * unit_milliseconds;
        expire = Some(Duration::from_millis(milliseconds));
    }
    Ok(Command::Set { key: key.clone(), value: value.clone(), expire })
}

/// `HELLO [protover [AUTH username password] [SETNAME clientname]]`, checked in Redis's order:
/// the version first, then the options.
fn parse_hello(args: &[Bytes]) -> Result<ConnectionCommand, CommandError> {
    let Some((version, options)) = args.split_first() else {
        return Ok(ConnectionCommand::Hello { auth: None, setname: None });
    };
    match integer(version).map_err(|_| CommandError::BadProtocolVersion)? {
        2 => {}
        _ => return Err(CommandError::NoProto),
    }
    let (mut auth, mut setname) = (None, None);
    let mut rest = options;
    while let Some((option, tail)) = rest.split_first() {
        match (option.to_ascii_uppercase().as_slice(), tail) {
            (b"AUTH", [username, password, tail @ ..]) => {
                auth = Some((username.clone(), password.clone()));
                rest = tail;
            }
            (b"SETNAME", [name, tail @ ..]) => {
                setname = Some(name.clone());
                rest = tail;
            }
            _ => return Err(CommandError::HelloSyntax { option: quote_name(option) }),
        }
    }
    Ok(ConnectionCommand::Hello { auth, setname })
}

/// `COMMAND [DOCS|INFO|COUNT …]`.
fn parse_command_introspection(args: &[Bytes]) -> Result<ConnectionCommand, CommandError> {
    let Some(subcommand) = args.first() else {
        return Ok(ConnectionCommand::CommandDocs);
    };
    match subcommand.to_ascii_uppercase().as_slice() {
        b"DOCS" | b"INFO" => Ok(ConnectionCommand::CommandDocs),
        b"COUNT" if args.len() == 1 => Ok(ConnectionCommand::CommandCount),
        b"COUNT" => Err(CommandError::WrongArity { command: "command|count" }),
        _ => Err(CommandError::UnknownSubcommand { command: "command", subcommand: quote_name(subcommand) }),
    }
}

/// `CONFIG GET parameter…`; every other subcommand is refused.
fn parse_config(args: &[Bytes]) -> Result<ConnectionCommand, CommandError> {
    let Some((subcommand, rest)) = args.split_first() else {
        return Err(CommandError::WrongArity { command: "config" });
    };
    match subcommand.to_ascii_uppercase().as_slice() {
        b"GET" if rest.is_empty() => Err(CommandError::WrongArity { command: "config|get" }),
        b"GET" => Ok(ConnectionCommand::ConfigGet { patterns: rest.to_vec() }),
        _ => Err(CommandError::UnknownSubcommand { command: "config", subcommand: quote_name(subcommand) }),
    }
}

/// `CLIENT SETINFO|SETNAME|GETNAME`.
fn parse_client(args: &[Bytes]) -> Result<ConnectionCommand, CommandError> {
    let Some((subcommand, rest)) = args.split_first() else {
        return Err(CommandError::WrongArity { command: "client" });
    };
    match (subcommand.to_ascii_uppercase().as_slice(), rest) {
        (b"SETINFO", [_attribute, _value]) => Ok(ConnectionCommand::ClientSetInfo),
        (b"SETINFO", _) => Err(CommandError::WrongArity { command: "client|setinfo" }),
        (b"SETNAME", [name]) => Ok(ConnectionCommand::ClientSetName { name: name.clone() }),
        (b"SETNAME", _) => Err(CommandError::WrongArity { command: "client|setname" }),
        (b"GETNAME", []) => Ok(ConnectionCommand::ClientGetName),
        (b"GETNAME", _) => Err(CommandError::WrongArity { command: "client|getname" }),
        _ => Err(CommandError::UnknownSubcommand { command: "client", subcommand: quote_name(subcommand) }),
    }
}

/// Exactly `N` arguments, or Redis's arity error.
fn exactly<const N: usize>(command: &'static str, args: &[Bytes]) -> Result<[Bytes; N], CommandError> {
    <&[Bytes; N]>::try_from(args).cloned().map_err(|_| CommandError::WrongArity { command })
}

fn at_least_one(command: &'static str, args: &[Bytes]) -> Result<Vec<Bytes>, CommandError> {
    if args.is_empty() {
        return Err(CommandError::WrongArity { command });
    }
    Ok(args.to_vec())
}

fn integer(text: &[u8]) -> Result<i64, CommandError> {
    parse_integer(text).ok_or(CommandError::NotAnInteger)
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
mod tests {
    use super::*;

    fn request(line: &str) -> Result<Request, CommandError> {
        let arguments: Vec<Bytes> = line.split(' ').map(|word| Bytes::copy_from_slice(word.as_bytes())).collect();
        Request::parse(&arguments)
    }

    fn command(line: &str) -> Command {
        match request(line) {
            Ok(Request::Data(command)) => command,
            other => panic!("{line}: expected a data command, got {other:?}"),
        }
    }

    fn error_line(line: &str) -> String {
        match request(line) {
            Err(error) => error.to_string(),
            other => panic!("{line}: expected an error, got {other:?}"),
        }
    }

    fn b(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    #[test]
    fn data_commands_parse_case_insensitively() {
        assert_eq!(command("get k"), Command::Get { key: b("k") });
        assert_eq!(command("GeT k"), Command::Get { key: b("k") });
        assert_eq!(command("SET k v"), Command::Set { key: b("k"), value: b("v"), expire: None });
        assert_eq!(
            command("set k v ex 10"),
            Command::Set { key: b("k"), value: b("v"), expire: Some(Duration::from_secs(10)) }
        );
        assert_eq!(
            command("SET k v PX 1500"),
            Command::Set { key: b("k"), value: b("v"), expire: Some(Duration::from_millis(1500)) }
        );
        assert_eq!(command("DEL a b"), Command::Del { keys: vec![b("a"), b("b")] });
        assert_eq!(command("EXISTS a a"), Command::Exists { keys: vec![b("a"), b("a")] });
        assert_eq!(command("INCR n"), Command::IncrBy { key: b("n"), delta: 1 });
        assert_eq!(command("INCRBY n -5"), Command::IncrBy { key: b("n"), delta: -5 });
        assert_eq!(command("MGET a b"), Command::MGet { keys: vec![b("a"), b("b")] });
        assert_eq!(command("MSET a 1 b 2"), Command::MSet { pairs: vec![(b("a"), b("1")), (b("b"), b("2"))] });
        assert_eq!(command("DBSIZE"), Command::DbSize);
        assert_eq!(command("ROLE"), Command::Role);
        assert_eq!(command("INFO Replication"), Command::Info { sections: vec!["replication".into()] });
        assert_eq!(command("WAIT 1 0"), Command::Wait { replicas: 1, timeout: None });
        assert_eq!(command("WAIT 1 250"), Command::Wait { replicas: 1, timeout: Some(Duration::from_millis(250)) });
        assert!(command("MSET a 1").is_write() && !command("MGET a").is_write());
    }

    #[test]
    fn connection_commands_parse() {
        let connection = |line| match request(line) {
            Ok(Request::Connection(command)) => command,
            other => panic!("{line}: expected a connection command, got {other:?}"),
        };
        assert_eq!(connection("PING"), ConnectionCommand::Ping { message: None });
        assert_eq!(connection("ping hi"), ConnectionCommand::Ping { message: Some(b("hi")) });
        assert_eq!(connection("ECHO hi"), ConnectionCommand::Echo { message: b("hi") });
        assert_eq!(connection("SELECT 0"), ConnectionCommand::Select);
        assert_eq!(connection("QUIT"), ConnectionCommand::Quit);
        assert_eq!(connection("COMMAND DOCS"), ConnectionCommand::CommandDocs);
        assert_eq!(connection("COMMAND"), ConnectionCommand::CommandDocs);
        assert_eq!(connection("COMMAND COUNT"), ConnectionCommand::CommandCount);
        assert_eq!(connection("CONFIG GET save"), ConnectionCommand::ConfigGet { patterns: vec![b("save")] });
        assert_eq!(connection("CLIENT SETINFO LIB-NAME redis-rs"), ConnectionCommand::ClientSetInfo);
        assert_eq!(connection("client setname me"), ConnectionCommand::ClientSetName { name: b("me") });
        assert_eq!(connection("CLIENT GETNAME"), ConnectionCommand::ClientGetName);
        assert_eq!(connection("AUTH pw"), ConnectionCommand::Auth { username: None, password: b("pw") });
        assert_eq!(connection("auth app pw"), ConnectionCommand::Auth { username: Some(b("app")), password: b("pw") });
        assert_eq!(connection("HELLO"), ConnectionCommand::Hello { auth: None, setname: None });
        assert_eq!(
            connection("hello 2 auth default pw setname me"),
            ConnectionCommand::Hello { auth: Some((b("default"), b("pw"))), setname: Some(b("me")) }
        );
    }

    #[test]
    fn refusals_read_as_redis_words_them() {
        assert_eq!(error_line("GET"), "ERR wrong number of arguments for 'get' command");
        assert_eq!(error_line("GET a b"), "ERR wrong number of arguments for 'get' command");
        assert_eq!(error_line("FOO bar"), "ERR unknown command 'FOO'");
        assert_eq!(error_line("INCRBY n 1.5"), "ERR value is not an integer or out of range");
        assert_eq!(error_line("INCRBY n 99999999999999999999"), "ERR value is not an integer or out of range");
        assert_eq!(error_line("SET k v EX"), "ERR syntax error");
        assert_eq!(error_line("SET k v FOO"), "ERR syntax error");
        assert_eq!(error_line("SET k v EX 1 PX 1"), "ERR syntax error");
        assert_eq!(error_line("SET k v EX ten"), "ERR value is not an integer or out of range");
        assert_eq!(error_line("SET k v EX 0"), "ERR invalid expire time in 'set' command");
        assert_eq!(error_line("SET k v PX -1"), "ERR invalid expire time in 'set' command");
        assert_eq!(error_line("SET k v EX 9223372036854776"), "ERR invalid expire time in 'set' command");
        assert_eq!(error_line("SET k v nx"), "ERR the NX option of 'set' is not supported by hotpair");
        assert_eq!(error_line("MSET a"), "ERR wrong number of arguments for 'mset' command");
        assert_eq!(error_line("MSET a 1 b"), "ERR wrong number of arguments for 'mset' command");
        assert_eq!(error_line("DEL"), "ERR wrong number of arguments for 'del' command");
        assert_eq!(error_line("SELECT 1"), "ERR DB index is out of range (hotpair has only database 0)");
        assert_eq!(error_line("SELECT x"), "ERR value is not an integer or out of range");
        assert_eq!(error_line("WAIT 1 -1"), "ERR timeout is negative");
        assert_eq!(error_line("WAIT -1 0"), "ERR value is out of range, must be positive");
        assert_eq!(error_line("PING a b"), "ERR wrong number of arguments for 'ping' command");
        assert_eq!(error_line("CONFIG SET save x"), "ERR unknown subcommand 'SET' for 'config'");
        assert_eq!(error_line("HELLO 3"), "NOPROTO hotpair speaks RESP2 only; connect without HELLO");
        assert_eq!(error_line("HELLO 3 AUTH default pw"), "NOPROTO hotpair speaks RESP2 only; connect without HELLO");
        assert_eq!(error_line("HELLO two"), "ERR Protocol version is not an integer or out of range");
        assert_eq!(error_line("HELLO 2 AUTH default"), "ERR Syntax error in HELLO option 'AUTH'");
        assert_eq!(error_line("AUTH"), "ERR wrong number of arguments for 'auth' command");
        assert_eq!(error_line("AUTH a b c"), "ERR syntax error");
    }

    #[test]
    fn client_bytes_in_errors_are_escaped_and_short() {
        let name = Bytes::from(vec![b'\r'; 1000]);
        match Request::parse(&[name]) {
            Err(CommandError::UnknownCommand { name }) => assert!(name.len() < 200 && !name.contains('\r')),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn request_frames_must_be_arrays_of_bulk_strings() {
        let args = request_arguments(Frame::array(vec![Frame::bulk(&b"PING"[..])])).unwrap();
        assert_eq!(args, vec![b("PING")]);
        assert_eq!(request_arguments(Frame::array(vec![])).unwrap(), Vec::<Bytes>::new());
        let error = request_arguments(Frame::array(vec![Frame::bulk(&b"GET"[..]), Frame::Integer(1)])).unwrap_err();
        assert_eq!(error.kind, ProtocolErrorKind::NotBulkString { index: 1, found: "an integer" });
        let error = request_arguments(Frame::ok()).unwrap_err();
        assert_eq!(error.kind, ProtocolErrorKind::NotAnArray { found: "a simple string" });
    }
}
