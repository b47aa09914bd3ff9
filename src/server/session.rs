//! One client connection's state on the data port, and the commands that read or change it:
//! `HELLO`, `CLIENT …`, `MULTI`/`EXEC`/`DISCARD`, `WATCH`/`UNWATCH`, `PING`, `SELECT`, `COMMAND`.
//!
//! ## Transactions
//! After `MULTI` every command is queued (`+QUEUED`) until `EXEC`, except `EXEC`, `DISCARD`,
//! `MULTI`, `WATCH` and `QUIT`, as in Redis. A command that Redis refuses while queuing — an
//! unknown command, a wrong argument count by the command table, a write on a node that does not
//! take writes — answers its error and makes `EXEC` answer `-EXECABORT`. Other errors show in
//! `EXEC`'s reply at their place, and the other commands still run.
//!
//! `EXEC` hands the queued data commands to the backend as **one** transaction
//! ([`DataBackend::execute_transaction`]): on the primary one journal record, atomic on both
//! nodes, rewound as a whole. The connection's own commands in the queue are answered in place.
//!
//! ## Protocol
//! Replies are RESP2 until `HELLO 3`, then RESP3 ([`crate::resp::encode_as`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::data_port::{config_get, DataBackend};
use crate::kv::watch::{Registry, Watcher};
use crate::resp::command::CommandError;
use crate::resp::table::{self, COMMANDS};
use crate::resp::{ClientCommand, Command, ConnectionCommand, Frame, Protocol, Request};

/// The Redis version `HELLO` and `INFO` report: the release whose commands clients may assume
/// (see `docs/commands.md`, "What `redis_version` claims").
pub const REDIS_VERSION: &str = "7.2.4";

/// Most commands one `MULTI` may queue: beyond it the transaction is refused at `EXEC`.
pub const MAX_QUEUED_COMMANDS: usize = 100_000;

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// What the connection does after a request.
pub enum Outcome {
    Reply(Frame),
    /// `QUIT`: reply, then close.
    Close(Frame),
}

/// A queued command: for the backend, or for the connection itself.
enum Queued {
    Data(Command),
    Connection(ConnectionCommand),
}

pub struct Session {
    pub id: u64,
    pub peer: std::net::SocketAddr,
    /// `CLIENT SETNAME`, `HELLO … SETNAME`.
    pub name: Option<Bytes>,
    lib_name: Option<Bytes>,
    lib_version: Option<Bytes>,
    pub protocol: Protocol,
    /// `Some` between `MULTI` and `EXEC`/`DISCARD`: the queue and whether it must abort.
    multi: Option<(Vec<Queued>, bool)>,
    /// The watch of this connection, and the registry it is in.
    watch: Option<(Arc<Registry>, Arc<Watcher>)>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.unwatch();
    }
}

impl Session {
    pub fn new(peer: std::net::SocketAddr) -> Session {
        Session {
            id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
            peer,
            name: None,
            lib_name: None,
            lib_version: None,
            protocol: Protocol::Resp2,
            multi: None,
            watch: None,
        }
    }

    /// Answers one parsed request.
    pub async fn handle(&mut self, backend: &impl DataBackend, request: Result<Request, CommandError>) -> Outcome {
        if self.multi.is_some() {
            if let Some(outcome) = self.queue(backend, &request) {
                return outcome;
            }
        }
        match request {
            Err(error) => Outcome::Reply(error.to_frame()),
            Ok(Request::Data(command)) => Outcome::Reply(backend.execute(command).await),
            Ok(Request::Connection(ConnectionCommand::Quit)) => Outcome::Close(Frame::ok()),
            Ok(Request::Connection(ConnectionCommand::Exec)) => Outcome::Reply(self.exec(backend).await),
            Ok(Request::Connection(command)) => Outcome::Reply(self.answer(backend, command)),
        }
    }

    /// Inside `MULTI`: queues the request and answers `+QUEUED` (or the error that aborts the
    /// transaction); `None` for the commands that run at once even inside `MULTI`.
    fn queue(&mut self, backend: &impl DataBackend, request: &Result<Request, CommandError>) -> Option<Outcome> {
        let (queue, aborted) = self.multi.as_mut()?;
        let queued = match request {
            Ok(Request::Connection(
                ConnectionCommand::Exec
                | ConnectionCommand::Discard
                | ConnectionCommand::Multi
                | ConnectionCommand::Watch { .. }
                | ConnectionCommand::Quit,
            )) => return None,
            Err(error) if error.aborts_multi() => {
                *aborted = true;
                return Some(Outcome::Reply(error.to_frame()));
            }
            // Other argument errors of connection commands show at EXEC, like a data command's.
            Err(error) => Queued::Data(Command::Fail { error: error.clone() }),
            Ok(Request::Data(command)) => {
                if command.is_write() {
                    if let Some(refusal) = backend.write_refusal() {
                        *aborted = true;
                        return Some(Outcome::Reply(refusal));
                    }
                }
                Queued::Data(command.clone())
            }
            Ok(Request::Connection(command)) => Queued::Connection(command.clone()),
        };
        if queue.len() >= MAX_QUEUED_COMMANDS {
            *aborted = true;
            return Some(Outcome::Reply(Frame::error(format!(
                "ERR hotpair queues at most {MAX_QUEUED_COMMANDS} commands in one MULTI"
            ))));
        }
        queue.push(queued);
        Some(Outcome::Reply(Frame::simple("QUEUED")))
    }

    async fn exec(&mut self, backend: &impl DataBackend) -> Frame {
        let Some((queue, aborted)) = self.multi.take() else {
            return Frame::error("ERR EXEC without MULTI");
        };
        let watcher = self.watch.as_ref().map(|(_, watcher)| watcher.clone());
        if aborted {
            self.unwatch();
            return Frame::error("EXECABORT Transaction discarded because of previous errors.");
        }
        let data: Vec<Command> =
            queue.iter().filter_map(|q| if let Queued::Data(c) = q { Some(c.clone()) } else { None }).collect();
        let reply = if data.is_empty() && watcher.as_ref().is_none_or(|w| !w.is_dirty()) {
            Frame::array(Vec::new())
        } else {
            backend.execute_transaction(data, watcher).await
        };
        self.unwatch();
        let Frame::Array(Some(data_replies)) = reply else {
            // Aborted by WATCH (null) or refused whole (an error): nothing ran.
            return reply;
        };
        let mut data_replies = data_replies.into_iter();
        let mut replies = Vec::with_capacity(queue.len());
        for queued in queue {
            replies.push(match queued {
                Queued::Data(_) => data_replies.next().unwrap_or_else(|| Frame::error("ERR internal: reply missing")),
                Queued::Connection(command) => self.answer(backend, command),
            });
        }
        Frame::array(replies)
    }

    /// Answers what the connection answers by itself.
    fn answer(&mut self, backend: &impl DataBackend, command: ConnectionCommand) -> Frame {
        match command {
            ConnectionCommand::Ping { message: None } => Frame::simple("PONG"),
            ConnectionCommand::Ping { message: Some(message) } | ConnectionCommand::Echo { message } => {
                Frame::Bulk(Some(message))
            }
            ConnectionCommand::Select | ConnectionCommand::Quit => Frame::ok(),
            ConnectionCommand::CommandInfo { names } => command_info(names),
            ConnectionCommand::CommandDocs { names } => command_docs(&names),
            ConnectionCommand::CommandCount => Frame::Integer(COMMANDS.len() as i64),
            ConnectionCommand::CommandList => Frame::array(COMMANDS.iter().map(|c| Frame::bulk(c.name)).collect()),
            ConnectionCommand::ConfigGet { patterns } => config_get(&patterns),
            ConnectionCommand::Client(command) => self.client(command),
            ConnectionCommand::Hello { protocol, auth: _, name } => self.hello(backend, protocol, name),
            // The connection answers AUTH (`data_port`, `server::auth`) before the session sees it.
            ConnectionCommand::Auth { .. } => Frame::error("ERR internal: AUTH reached the session"),
            ConnectionCommand::Multi => {
                if self.multi.is_some() {
                    return Frame::error("ERR MULTI calls can not be nested");
                }
                self.multi = Some((Vec::new(), false));
                Frame::ok()
            }
            ConnectionCommand::Discard => {
                if self.multi.take().is_none() {
                    return Frame::error("ERR DISCARD without MULTI");
                }
                self.unwatch();
                Frame::ok()
            }
            ConnectionCommand::Watch { keys } => {
                if self.multi.is_some() {
                    return Frame::error("ERR WATCH inside MULTI is not allowed");
                }
                let watcher = self.watch.as_ref().map_or_else(|| Arc::new(Watcher::default()), |(_, w)| w.clone());
                if let Some(registry) = backend.watch(&watcher, &keys) {
                    self.watch = Some((registry, watcher));
                }
                Frame::ok()
            }
            ConnectionCommand::Unwatch => {
                self.unwatch();
                Frame::ok()
            }
            // Answered in `handle`; here only if queued, where Redis never queues them.
            ConnectionCommand::Exec => Frame::error("ERR EXEC without MULTI"),
        }
    }

    fn unwatch(&mut self) {
        if let Some((registry, watcher)) = self.watch.take() {
            registry.unwatch(&watcher);
        }
    }

    fn client(&mut self, command: ClientCommand) -> Frame {
        match command {
            ClientCommand::SetInfo { attribute, value } => {
                if attribute.eq_ignore_ascii_case(b"LIB-NAME") {
                    self.lib_name = Some(value);
                } else {
                    self.lib_version = Some(value);
                }
                Frame::ok()
            }
            ClientCommand::SetName { name } => {
                if name.iter().any(|&b| b <= b' ' || b > b'~') {
                    return Frame::error("ERR Client names cannot contain spaces, newlines or special characters.");
                }
                self.name = (!name.is_empty()).then_some(name);
                Frame::ok()
            }
            ClientCommand::GetName => Frame::Bulk(self.name.clone()),
            ClientCommand::Id => Frame::Integer(self.id as i64),
            ClientCommand::Info => Frame::bulk(self.info_line()),
            ClientCommand::Accept | ClientCommand::TrackingOff => Frame::ok(),
        }
    }

    /// `CLIENT INFO`'s line: the fields Redis gives that mean something here.
    fn info_line(&self) -> String {
        let text =
            |value: &Option<Bytes>| value.as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
        let (multi, queued) = self.multi.as_ref().map_or((-1, 0), |(queue, _)| (queue.len() as i64, queue.len()));
        format!(
            "id={} addr={} laddr= fd=0 name={} age=0 idle=0 flags={} db=0 sub=0 psub=0 ssub=0 multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem={} obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=client|info user=default redir=-1 resp={} lib-name={} lib-ver={}\n",
            self.id,
            self.peer,
            text(&self.name),
            if self.multi.is_some() { "x" } else { "N" },
            multi,
            queued,
            if self.protocol == Protocol::Resp3 { 3 } else { 2 },
            text(&self.lib_name),
            text(&self.lib_version),
        )
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`. Credentials are not checked here:
    /// the data port's authentication (when the pair file asks for it) does that before.
    fn hello(&mut self, backend: &impl DataBackend, protocol: Option<i64>, name: Option<Bytes>) -> Frame {
        match protocol {
            None => {}
            Some(2) => self.protocol = Protocol::Resp2,
            Some(3) => self.protocol = Protocol::Resp3,
            Some(_) => return CommandError::NoProto.to_frame(),
        }
        if let Some(name) = name {
            if let error @ Frame::Error(_) = self.client(ClientCommand::SetName { name }) {
                return error;
            }
        }
        let proto = if self.protocol == Protocol::Resp3 { 3 } else { 2 };
        Frame::Map(vec![
            (Frame::bulk("server"), Frame::bulk("redis")),
            (Frame::bulk("version"), Frame::bulk(REDIS_VERSION)),
            (Frame::bulk("proto"), Frame::Integer(proto)),
            (Frame::bulk("id"), Frame::Integer(self.id as i64)),
            (Frame::bulk("mode"), Frame::bulk("standalone")),
            (Frame::bulk("role"), Frame::bulk(backend.role_name())),
            (Frame::bulk("modules"), Frame::array(Vec::new())),
        ])
    }
}

/// `COMMAND` / `COMMAND INFO name…`: Redis 7's ten-field entry per command (ACL categories,
/// tips, key specs and subcommands empty).
fn command_info(names: Option<Vec<Bytes>>) -> Frame {
    let entry = |spec: &table::CommandSpec| {
        Frame::array(vec![
            Frame::bulk(spec.name),
            Frame::Integer(spec.arity),
            Frame::Set(spec.flags.iter().map(|flag| Frame::simple(*flag)).collect()),
            Frame::Integer(spec.first_key),
            Frame::Integer(spec.last_key),
            Frame::Integer(spec.step),
            Frame::Set(Vec::new()),
            Frame::Set(Vec::new()),
            Frame::array(Vec::new()),
            Frame::array(Vec::new()),
        ])
    };
    match names {
        None => Frame::array(COMMANDS.iter().map(entry).collect()),
        Some(names) => {
            Frame::array(names.iter().map(|name| table::lookup(name).map_or_else(Frame::null, entry)).collect())
        }
    }
}

/// `COMMAND DOCS [name…]`: name → summary and group.
fn command_docs(names: &[Bytes]) -> Frame {
    let doc = |spec: &table::CommandSpec| {
        (
            Frame::bulk(spec.name),
            Frame::Map(vec![
                (Frame::bulk("summary"), Frame::bulk(spec.summary)),
                (Frame::bulk("group"), Frame::bulk(spec.group)),
            ]),
        )
    };
    let specs: Vec<&table::CommandSpec> = if names.is_empty() {
        COMMANDS.iter().collect()
    } else {
        names.iter().filter_map(|n| table::lookup(n)).collect()
    };
    Frame::Map(specs.into_iter().map(doc).collect())
}
