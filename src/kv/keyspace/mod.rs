//! The key space's commands: what each data command reads, writes and answers, over a view of
//! the keys. No I/O and no node here: the primary runs a write inside its commit pipeline's
//! transaction ([`crate::kv::pipeline::Txn`] is a [`Writer`]), any node runs a read over its store
//! (and, on the primary, the writes not yet applied).
//!
//! ## Invariants
//! - A command either writes everything it means to or nothing: an error reply (`WRONGTYPE`,
//!   `ERR value is not an integer…`) is found before its first write, and [`execute`] undoes
//!   any writes of a command that fails anyway, so inside `EXEC` the other commands still run.
//! - Expired keys are absent to every command from the moment they expire (`now_ms`), on every
//!   node; a write over an expired key sees no old value.
//! - Times to live become absolute deadlines here, with the commit's own timestamp, so the
//!   journal holds absolute times only and every node expires a key at the same moment.
//! - Writes whose after-images do not say what the client asked for (increments, flushes) note
//!   the command as sent ([`Writer::note`]); the journal keeps it for orphans files and dumps.

mod glob;
mod hashes;
pub mod scan;
mod strings;

pub use glob::matches as glob_matches;
pub use scan::{ScanCursors, ScanStart};

use crate::kv::pipeline::CommitError;
use crate::resp::command::Command;
use crate::resp::Frame;
use crate::storage::journal::ClientCommand;
use crate::storage::value::{Data, StoredValue};

/// A key and its stored bytes.
pub type StoredPair = (Vec<u8>, Vec<u8>);

/// Keys in order from a scan, and where the next slice starts (`None`: the key space ends here).
#[derive(Debug, Default)]
pub struct ScanSlice {
    pub pairs: Vec<StoredPair>,
    /// The last key examined, if more may follow it.
    pub next_after: Option<Vec<u8>>,
}

/// What a command can read: stored bytes by key, in key order, and the key count.
pub trait View {
    /// The stored bytes of `key` (expired or not).
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, CommitError>;
    /// About `limit` keys from `start` in key order (writes not yet applied included).
    fn scan(&self, start: &ScanStart, limit: usize) -> Result<ScanSlice, CommitError>;
    /// Keys stored, expired ones included (what `DBSIZE` answers, as Redis does).
    fn key_count(&self) -> Result<u64, CommitError>;
}

/// A view that also takes writes: one transaction.
pub trait Writer: View {
    fn put(&mut self, key: Vec<u8>, stored: Vec<u8>);
    fn delete(&mut self, key: Vec<u8>);
    /// Keeps a client command with the transaction's record (see the module docs).
    fn note(&mut self, command: ClientCommand);
    /// A point to undo back to.
    fn savepoint(&self) -> Savepoint;
    /// Forgets every write and note since `savepoint`.
    fn rollback(&mut self, savepoint: Savepoint);
}

/// How many writes and notes a transaction had at some point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Savepoint {
    pub writes: usize,
    pub notes: usize,
}

/// What every command needs besides the view.
pub struct Context<'a> {
    /// The commit's timestamp (writes) or the reader's clock (reads).
    pub now_ms: u64,
    pub cursors: &'a ScanCursors,
    /// Most bytes of before-images a `FLUSHALL` may put in one record.
    pub max_flush_bytes: usize,
    /// The bound on a reply that gathers many values (`MGET`, `HMGET`, `KEYS`), checked while it
    /// is built; `None`: unbounded (tests, and paths whose replies are small).
    pub reply_limit: Option<crate::server::memory::ReplyLimit<'a>>,
}

impl Context<'_> {
    /// A budget for one reply, if replies are bounded.
    pub(crate) fn reply_budget(&self) -> Option<crate::server::memory::ReplyBudget> {
        self.reply_limit.as_ref().map(crate::server::memory::ReplyLimit::budget)
    }
}

/// Charges `bytes` to `budget`; the refusal to answer instead when it is spent.
pub(crate) fn charge(budget: &mut Option<crate::server::memory::ReplyBudget>, bytes: usize) -> Result<(), Frame> {
    match budget {
        Some(budget) => budget.charge(bytes),
        None => Ok(()),
    }
}

pub(crate) const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

/// Runs `command` against `view`; the reply. A command's own error is an error reply (its writes
/// undone); `Err` only for a failure of the store or journal, which fails the whole transaction.
pub fn execute<W: Writer>(view: &mut W, command: Command, context: &Context<'_>) -> Result<Frame, CommitError> {
    let savepoint = view.savepoint();
    match dispatch(view, command, context) {
        Ok(frame) => Ok(frame),
        Err(CommitError::Rejected(line)) => {
            view.rollback(savepoint);
            Ok(Frame::Error(line))
        }
        Err(other) => Err(other),
    }
}

fn dispatch<W: Writer>(view: &mut W, command: Command, cx: &Context<'_>) -> Result<Frame, CommitError> {
    let now = cx.now_ms;
    match command {
        // Replies that gather many values are bounded while they are built.
        Command::MGet { keys } => strings::mget(view, &keys, now, cx.reply_budget()),
        Command::HMGet { key, fields } => hashes::hmget(view, &key, &fields, now, cx.reply_budget()),
        Command::Get { .. }
        | Command::Set { .. }
        | Command::GetDel { .. }
        | Command::GetEx { .. }
        | Command::Append { .. }
        | Command::StrLen { .. }
        | Command::IncrBy { .. }
        | Command::IncrByFloat { .. }
        | Command::MSet { .. } => strings::execute(view, command, now),
        Command::HSet { .. }
        | Command::HSetNx { .. }
        | Command::HGet { .. }
        | Command::HGetAll { .. }
        | Command::HDel { .. }
        | Command::HExists { .. }
        | Command::HLen { .. }
        | Command::HKeys { .. }
        | Command::HStrLen { .. }
        | Command::HIncrBy { .. }
        | Command::HIncrByFloat { .. }
        | Command::HScan { .. } => hashes::execute(view, command, now),
        Command::Del { keys } => del(view, keys, now),
        Command::Exists { keys } => {
            let mut count = 0;
            for key in keys {
                count += i64::from(lookup(view, &key, now)?.is_some());
            }
            Ok(Frame::Integer(count))
        }
        Command::Expire { key, deadline, condition, command } => {
            let at = deadline
                .resolve(now)
                .ok_or_else(|| rejected(format!("ERR invalid expire time in '{command}' command")))?;
            expire(view, key.to_vec(), at, condition, now)
        }
        Command::Ttl { key, form } => ttl(view, &key, form, now),
        Command::Persist { key } => {
            let Some(value) = lookup(view, &key, now)? else { return Ok(Frame::Integer(0)) };
            if value.expires_at_ms.is_none() {
                return Ok(Frame::Integer(0));
            }
            view.put(key.to_vec(), StoredValue { expires_at_ms: None, ..value }.encode());
            Ok(Frame::Integer(1))
        }
        Command::Type { key } => {
            Ok(Frame::simple(lookup(view, &key, now)?.map_or("none", |value| value.data.type_name())))
        }
        Command::Rename { from, to, only_if_absent } => rename(view, &from, &to, only_if_absent, now),
        Command::Scan { options } => {
            let start = cx.cursors.start(options.cursor);
            let slice = view.scan(&start, options.count)?;
            let mut keys = Vec::new();
            for (key, stored) in slice.pairs {
                let Some(value) = live(&stored, now)? else { continue };
                let type_ok = options.type_name.as_deref().is_none_or(|wanted| wanted == value.data.type_name());
                let pattern_ok = options.pattern.as_deref().is_none_or(|pattern| glob::matches(pattern, &key));
                if type_ok && pattern_ok {
                    keys.push(Frame::bulk(key));
                }
            }
            let cursor = slice.next_after.map_or(0, |last| cx.cursors.cursor_after(&last));
            Ok(Frame::array(vec![Frame::bulk(cursor.to_string()), Frame::array(keys)]))
        }
        Command::Keys { pattern } => {
            let (mut keys, mut budget, mut refusal) = (Vec::new(), cx.reply_budget(), None);
            for_each_stored(view, |key, stored| {
                if refusal.is_none() && glob::matches(&pattern, key) && live(stored, now)?.is_some() {
                    match charge(&mut budget, key.len() + 16) {
                        Ok(()) => keys.push(Frame::bulk(key.to_vec())),
                        Err(refused) => refusal = Some(refused),
                    }
                }
                Ok(())
            })?;
            Ok(refusal.unwrap_or_else(|| Frame::array(keys)))
        }
        Command::RandomKey => random_key(view, now),
        Command::FlushAll => flush_all(view, cx.max_flush_bytes),
        Command::DbSize => Ok(Frame::Integer(view.key_count()? as i64)),
        Command::Fail { error } => Err(rejected(error.to_string())),
        Command::Role | Command::Info { .. } | Command::Wait { .. } => {
            Err(rejected(format!("ERR internal: '{}' is not a key-space command", command.name())))
        }
    }
}

/// An error reply that undoes the command's writes.
pub(crate) fn rejected(line: impl Into<String>) -> CommitError {
    CommitError::Rejected(line.into())
}

/// The live value of `key`, if any.
pub(crate) fn lookup(view: &impl View, key: &[u8], now_ms: u64) -> Result<Option<StoredValue>, CommitError> {
    match view.get(key)? {
        None => Ok(None),
        Some(stored) => live(&stored, now_ms),
    }
}

/// Decodes stored bytes; `None` when expired.
pub(crate) fn live(stored: &[u8], now_ms: u64) -> Result<Option<StoredValue>, CommitError> {
    let value = StoredValue::decode(stored)
        .ok_or_else(|| rejected("ERR stored value is damaged (unknown format tag)".to_string()))?;
    Ok(value.is_live(now_ms).then_some(value))
}

/// Calls `each` for every stored pair, in key order, a slice at a time.
fn for_each_stored(
    view: &impl View,
    mut each: impl FnMut(&[u8], &[u8]) -> Result<(), CommitError>,
) -> Result<(), CommitError> {
    let mut start = ScanStart::Beginning;
    loop {
        let slice = view.scan(&start, 1024)?;
        for (key, stored) in &slice.pairs {
            each(key, stored)?;
        }
        match slice.next_after {
            Some(last) => start = ScanStart::After(last),
            None => return Ok(()),
        }
    }
}

fn del(view: &mut impl Writer, keys: Vec<bytes::Bytes>, now: u64) -> Result<Frame, CommitError> {
    let mut deleted = 0;
    for key in keys {
        if let Some(stored) = view.get(&key)? {
            // An expired key is removed too, but not counted: for the client it was gone.
            if live(&stored, now)?.is_some() {
                deleted += 1;
            }
            view.delete(key.to_vec());
        }
    }
    Ok(Frame::Integer(deleted))
}

fn expire(
    view: &mut impl Writer,
    key: Vec<u8>,
    at: i64,
    condition: crate::resp::command::ExpireCondition,
    now: u64,
) -> Result<Frame, CommitError> {
    let Some(value) = lookup(view, &key, now)? else { return Ok(Frame::Integer(0)) };
    let current = value.expires_at_ms.map(|ms| ms as i64);
    let refused = (condition.nx && current.is_some())
        || (condition.xx && current.is_none())
        || (condition.gt && current.is_none_or(|current| at <= current))
        || (condition.lt && current.is_some_and(|current| at >= current));
    if refused {
        return Ok(Frame::Integer(0));
    }
    if at <= now as i64 {
        view.delete(key);
    } else {
        view.put(key, StoredValue { expires_at_ms: Some(at as u64), ..value }.encode());
    }
    Ok(Frame::Integer(1))
}

fn ttl(view: &impl View, key: &[u8], form: crate::resp::command::TtlForm, now: u64) -> Result<Frame, CommitError> {
    use crate::resp::command::TtlForm;
    let Some(value) = lookup(view, key, now)? else { return Ok(Frame::Integer(-2)) };
    let Some(at) = value.expires_at_ms else { return Ok(Frame::Integer(-1)) };
    let left = at.saturating_sub(now) as i64;
    Ok(Frame::Integer(match form {
        TtlForm::Seconds => (left + 500) / 1000,
        TtlForm::Milliseconds => left,
        TtlForm::UnixSeconds => (at / 1000) as i64,
        TtlForm::UnixMilliseconds => at as i64,
    }))
}

fn rename(
    view: &mut impl Writer,
    from: &[u8],
    to: &[u8],
    only_if_absent: bool,
    now: u64,
) -> Result<Frame, CommitError> {
    let Some(value) = lookup(view, from, now)? else { return Err(rejected("ERR no such key")) };
    if from == to {
        return Ok(if only_if_absent { Frame::Integer(0) } else { Frame::ok() });
    }
    if only_if_absent && lookup(view, to, now)?.is_some() {
        return Ok(Frame::Integer(0));
    }
    view.delete(from.to_vec());
    view.put(to.to_vec(), value.encode());
    Ok(if only_if_absent { Frame::Integer(1) } else { Frame::ok() })
}

/// A random live key: the first key at or after a random probe (wrapping round), up to a few
/// probes past expired keys. Keys after long gaps in the key order come up more often than
/// others; Redis's pick is not uniform either.
fn random_key(view: &impl View, now: u64) -> Result<Frame, CommitError> {
    const PROBES: usize = 16;
    for _ in 0..PROBES {
        let probe = uuid::Uuid::new_v4().as_bytes()[..8].to_vec();
        let mut slice = view.scan(&ScanStart::AtOrAfter(probe), 1)?;
        if slice.pairs.is_empty() {
            slice = view.scan(&ScanStart::Beginning, 1)?;
        }
        let Some((key, stored)) = slice.pairs.into_iter().next() else { return Ok(Frame::null()) };
        if live(&stored, now)?.is_some() {
            return Ok(Frame::bulk(key));
        }
    }
    // Mostly expired keys: the first live one in key order, if any.
    let mut found = None;
    for_each_stored(view, |key, stored| {
        if found.is_none() && live(stored, now)?.is_some() {
            found = Some(key.to_vec());
        }
        Ok(())
    })?;
    Ok(found.map_or_else(Frame::null, Frame::bulk))
}

/// Deletes every key in one transaction (one record, every key's before-image in it), or
/// refuses before writing anything when the before-images would pass `max_bytes`.
fn flush_all(view: &mut impl Writer, max_bytes: usize) -> Result<Frame, CommitError> {
    let mut keys = Vec::new();
    let mut bytes = 0usize;
    for_each_stored(view, |key, stored| {
        bytes += key.len() * 2 + stored.len() + 16;
        if bytes > max_bytes {
            return Err(rejected(format!(
                "ERR FLUSHALL would journal more than {} MiB of before-images in one record (hotpair's record limit); delete keys in batches (SCAN + UNLINK) first",
                max_bytes >> 20
            )));
        }
        keys.push(key.to_vec());
        Ok(())
    })?;
    for key in keys {
        view.delete(key);
    }
    view.note(vec![b"FLUSHALL".to_vec()]);
    Ok(Frame::ok())
}

/// The data of a live string key; `WRONGTYPE` for another type.
pub(crate) fn string_of(value: StoredValue) -> Result<(Vec<u8>, Option<u64>), CommitError> {
    match value.data {
        Data::String(bytes) => Ok((bytes, value.expires_at_ms)),
        Data::Hash(_) => Err(rejected(WRONGTYPE)),
    }
}

/// Formats a float result as `INCRBYFLOAT` answers it: no exponent, no trailing zeros. Redis
/// computes in `long double` and prints 17 decimals; hotpair computes in `f64` and prints the
/// shortest text that reads back as the same number, so the last digits may differ from Redis
/// (`0.1 + 0.2` is `0.30000000000000004` here, `0.3` there). See `docs/commands.md`.
pub(crate) fn format_float(value: f64) -> String {
    let text = format!("{value}");
    if text == "-0" {
        "0".to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests;
