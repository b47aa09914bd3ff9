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

/// The error a line gets, whether at parse time or (for a data command) when it runs.
fn error_line(line: &str) -> String {
    match request(line) {
        Err(error) | Ok(Request::Data(Command::Fail { error })) => error.to_string(),
        other => panic!("{line}: expected an error, got {other:?}"),
    }
}

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn set(key: &str, value: &str, expiry: SetExpiry, condition: Condition, reply: SetReply) -> Command {
    Command::Set { key: b(key), value: b(value), expiry, condition, reply }
}

#[test]
fn data_commands_parse_case_insensitively() {
    assert_eq!(command("get k"), Command::Get { key: b("k") });
    assert_eq!(command("GeT k"), Command::Get { key: b("k") });
    assert_eq!(command("SET k v"), set("k", "v", SetExpiry::Clear, Condition::Always, SetReply::Status));
    assert_eq!(
        command("set k v ex 10 nx get"),
        set("k", "v", SetExpiry::Until(Deadline::In(10_000)), Condition::IfAbsent, SetReply::Old)
    );
    assert_eq!(
        command("SET k v PXAT 1500 XX KEEPTTL").clone(),
        Command::Fail { error: CommandError::Syntax },
        "KEEPTTL with PXAT"
    );
    assert_eq!(
        command("SET k v PX 5 PX 6"),
        set("k", "v", SetExpiry::Until(Deadline::In(6)), Condition::Always, SetReply::Status)
    );
    assert_eq!(
        command("SETEX k 2 v"),
        set("k", "v", SetExpiry::Until(Deadline::In(2000)), Condition::Always, SetReply::Status)
    );
    assert_eq!(command("SETNX k v"), set("k", "v", SetExpiry::Clear, Condition::IfAbsent, SetReply::Flag));
    assert_eq!(command("GETSET k v"), set("k", "v", SetExpiry::Clear, Condition::Always, SetReply::Old));
    assert_eq!(command("GETEX k EXAT 7"), Command::GetEx { key: b("k"), expiry: GetExpiry::Until(Deadline::At(7000)) });
    assert_eq!(command("DEL a b"), Command::Del { keys: vec![b("a"), b("b")] });
    assert_eq!(command("UNLINK a"), Command::Del { keys: vec![b("a")] });
    assert_eq!(command("TOUCH a a"), Command::Exists { keys: vec![b("a"), b("a")] });
    assert_eq!(command("DECR n"), Command::IncrBy { key: b("n"), delta: -1 });
    assert_eq!(command("DECRBY n -5"), Command::IncrBy { key: b("n"), delta: 5 });
    assert_eq!(command("INCRBYFLOAT n 1.5"), Command::IncrByFloat { key: b("n"), delta: 1.5 });
    assert_eq!(
        command("MSETNX a 1 b 2"),
        Command::MSet { pairs: vec![(b("a"), b("1")), (b("b"), b("2"))], only_if_none_exist: true }
    );
    assert_eq!(
        command("PEXPIRE k 100 XX GT"),
        Command::Expire {
            key: b("k"),
            deadline: Deadline::In(100),
            condition: ExpireCondition { xx: true, gt: true, ..Default::default() },
            command: "pexpire"
        }
    );
    assert_eq!(command("PEXPIRETIME k"), Command::Ttl { key: b("k"), form: TtlForm::UnixMilliseconds });
    assert_eq!(
        command("SCAN 0 MATCH user:* COUNT 100 TYPE Hash"),
        Command::Scan {
            options: ScanOptions { cursor: 0, pattern: Some(b("user:*")), count: 100, type_name: Some("hash".into()) }
        }
    );
    assert_eq!(command("FLUSHDB ASYNC"), Command::FlushAll);
    assert_eq!(command("HMSET h a 1"), Command::HSet { key: b("h"), pairs: vec![(b("a"), b("1"))], reply_ok: true });
    assert_eq!(command("HVALS h"), Command::HKeys { key: b("h"), values: true });
    assert_eq!(command("INFO Replication"), Command::Info { sections: vec!["replication".into()] });
    assert_eq!(command("WAIT 1 0"), Command::Wait { replicas: 1, timeout: None });
    assert_eq!(command("WAIT 1 250"), Command::Wait { replicas: 1, timeout: Some(Duration::from_millis(250)) });
    assert!(command("MSET a 1").is_write() && !command("MGET a").is_write());
    assert!(!command("GETEX k").is_write() && command("GETEX k PERSIST").is_write());
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
    assert_eq!(connection("COMMAND DOCS"), ConnectionCommand::CommandDocs { names: vec![] });
    assert_eq!(connection("COMMAND"), ConnectionCommand::CommandInfo { names: None });
    assert_eq!(connection("COMMAND COUNT"), ConnectionCommand::CommandCount);
    assert_eq!(connection("CONFIG GET save"), ConnectionCommand::ConfigGet { patterns: vec![b("save")] });
    assert_eq!(
        connection("CLIENT SETINFO LIB-NAME redis-rs"),
        ConnectionCommand::Client(ClientCommand::SetInfo { attribute: b("LIB-NAME"), value: b("redis-rs") })
    );
    assert_eq!(connection("client setname me"), ConnectionCommand::Client(ClientCommand::SetName { name: b("me") }));
    assert_eq!(connection("CLIENT NO-EVICT on"), ConnectionCommand::Client(ClientCommand::Accept));
    assert_eq!(connection("CLIENT TRACKING off"), ConnectionCommand::Client(ClientCommand::TrackingOff));
    assert_eq!(
        connection("HELLO 3 AUTH default secret SETNAME app"),
        ConnectionCommand::Hello { protocol: Some(3), auth: Some((b("default"), b("secret"))), name: Some(b("app")) }
    );
    assert_eq!(connection("MULTI"), ConnectionCommand::Multi);
    assert_eq!(connection("WATCH a b"), ConnectionCommand::Watch { keys: vec![b("a"), b("b")] });
}

#[test]
fn refusals_read_as_redis_words_them() {
    assert_eq!(error_line("GET"), "ERR wrong number of arguments for 'get' command");
    assert_eq!(error_line("GET a b"), "ERR wrong number of arguments for 'get' command");
    assert_eq!(error_line("FOO bar"), "ERR unknown command 'FOO', with args beginning with: 'bar' ");
    assert_eq!(error_line("INCRBY n 1.5"), "ERR value is not an integer or out of range");
    assert_eq!(error_line("INCRBY n 99999999999999999999"), "ERR value is not an integer or out of range");
    assert_eq!(error_line("INCRBYFLOAT n x"), "ERR value is not a valid float");
    assert_eq!(error_line("SET k v EX"), "ERR syntax error");
    assert_eq!(error_line("SET k v FOO"), "ERR syntax error");
    assert_eq!(error_line("SET k v EX 1 PX 1"), "ERR syntax error");
    assert_eq!(error_line("SET k v NX XX"), "ERR syntax error");
    assert_eq!(error_line("SET k v EX ten"), "ERR value is not an integer or out of range");
    assert_eq!(error_line("SET k v EX 0"), "ERR invalid expire time in 'set' command");
    assert_eq!(error_line("SET k v PX -1"), "ERR invalid expire time in 'set' command");
    assert_eq!(error_line("SET k v EX 9223372036854776"), "ERR invalid expire time in 'set' command");
    assert_eq!(error_line("SETEX k 0 v"), "ERR invalid expire time in 'setex' command");
    assert_eq!(error_line("EXPIRE k 10 FOO"), "ERR Unsupported option FOO");
    assert_eq!(error_line("EXPIRE k 10 NX GT"), "ERR NX and XX, GT or LT options at the same time are not compatible");
    assert_eq!(error_line("EXPIRE k 10 GT LT"), "ERR GT and LT options at the same time are not compatible");
    assert_eq!(error_line("EXPIRE k 99999999999999999"), "ERR invalid expire time in 'expire' command");
    assert_eq!(error_line("SCAN x"), "ERR invalid cursor");
    assert_eq!(error_line("SCAN 0 COUNT 0"), "ERR syntax error");
    assert_eq!(error_line("HSET h f v f2"), "ERR wrong number of arguments for 'hset' command");
    assert_eq!(error_line("HSET h f"), "ERR wrong number of arguments for 'hset' command");
    assert_eq!(error_line("MSET a"), "ERR wrong number of arguments for 'mset' command");
    assert_eq!(error_line("MSET a 1 b"), "ERR wrong number of arguments for 'mset' command");
    assert_eq!(error_line("DEL"), "ERR wrong number of arguments for 'del' command");
    assert_eq!(error_line("SELECT 1"), "ERR DB index is out of range (hotpair has only database 0)");
    assert_eq!(error_line("SELECT x"), "ERR value is not an integer or out of range");
    assert_eq!(error_line("WAIT 1 -1"), "ERR timeout is negative");
    assert_eq!(error_line("WAIT -1 0"), "ERR value is out of range, must be positive");
    assert_eq!(error_line("PING a b"), "ERR wrong number of arguments for 'ping' command");
    assert_eq!(error_line("CONFIG SET save x"), "ERR unknown subcommand 'SET'. Try CONFIG HELP.");
    assert_eq!(error_line("HELLO x"), "ERR Protocol version is not an integer or out of range");
    assert_eq!(error_line("HELLO 2 foo"), "ERR Syntax error in HELLO option 'foo'");
    // Only unknown commands and arity errors abort a MULTI when queued.
    assert!(request("FOO").unwrap_err().aborts_multi());
    assert!(!CommandError::Syntax.aborts_multi());
}

#[test]
fn client_bytes_in_errors_are_escaped_and_short() {
    let name = Bytes::from(vec![b'\r'; 1000]);
    match Request::parse(&[name]) {
        Err(CommandError::UnknownCommand { name, .. }) => assert!(name.len() < 200 && !name.contains('\r')),
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
