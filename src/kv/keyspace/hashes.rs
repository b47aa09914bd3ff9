//! Hash commands. A hash is one stored value (fields in insertion order, see [`crate::storage::value`]):
//! a field write rewrites the whole value, and its record carries the whole hash before and
//! after. Cheap for the small hashes sessions and caches keep; for a hash of N fields every
//! write costs O(N) bytes in the journal (`docs/commands.md`, "Store layout").

use bytes::Bytes;

use super::{format_float, glob, lookup, rejected, Writer, WRONGTYPE};
use crate::kv::pipeline::CommitError;
use crate::resp::command::{parse_float, Command};
use crate::resp::frame::parse_integer;
use crate::resp::Frame;
use crate::storage::value::{Data, StoredValue};

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

pub(super) fn execute(view: &mut impl Writer, command: Command, now: u64) -> Result<Frame, CommitError> {
    match command {
        Command::HSet { key, pairs, reply_ok } => {
            let (mut fields, expires_at_ms) = hash_or_empty(view, &key, now)?;
            let mut added = 0;
            for (field, value) in pairs {
                added += i64::from(set_field(&mut fields, &field, value.to_vec()));
            }
            store(view, &key, fields, expires_at_ms);
            Ok(if reply_ok { Frame::ok() } else { Frame::Integer(added) })
        }
        Command::HSetNx { key, field, value } => {
            let (mut fields, expires_at_ms) = hash_or_empty(view, &key, now)?;
            if position(&fields, &field).is_some() {
                return Ok(Frame::Integer(0));
            }
            fields.push((field.to_vec(), value.to_vec()));
            store(view, &key, fields, expires_at_ms);
            Ok(Frame::Integer(1))
        }
        Command::HGet { key, field } => {
            let fields = hash_or_empty(view, &key, now)?.0;
            Ok(position(&fields, &field).map_or_else(Frame::null, |i| Frame::bulk(fields[i].1.clone())))
        }
        Command::HMGet { key, fields: wanted } => hmget(view, &key, &wanted, now, None),
        Command::HGetAll { key } => {
            let fields = hash_or_empty(view, &key, now)?.0;
            Ok(Frame::Map(fields.into_iter().map(|(f, v)| (Frame::bulk(f), Frame::bulk(v))).collect()))
        }
        Command::HDel { key, fields: doomed } => {
            let (mut fields, expires_at_ms) = hash_or_empty(view, &key, now)?;
            let before = fields.len();
            fields.retain(|(field, _)| !doomed.iter().any(|d| d.as_ref() == field.as_slice()));
            let removed = (before - fields.len()) as i64;
            if removed > 0 {
                store(view, &key, fields, expires_at_ms);
            }
            Ok(Frame::Integer(removed))
        }
        Command::HExists { key, field } => {
            Ok(Frame::Integer(i64::from(position(&hash_or_empty(view, &key, now)?.0, &field).is_some())))
        }
        Command::HLen { key } => Ok(Frame::Integer(hash_or_empty(view, &key, now)?.0.len() as i64)),
        Command::HKeys { key, values } => {
            let fields = hash_or_empty(view, &key, now)?.0;
            let pick = |(f, v): (Vec<u8>, Vec<u8>)| Frame::bulk(if values { v } else { f });
            Ok(Frame::array(fields.into_iter().map(pick).collect()))
        }
        Command::HStrLen { key, field } => {
            let fields = hash_or_empty(view, &key, now)?.0;
            Ok(Frame::Integer(position(&fields, &field).map_or(0, |i| fields[i].1.len() as i64)))
        }
        Command::HIncrBy { key, field, delta } => {
            let (mut fields, expires_at_ms) = hash_or_empty(view, &key, now)?;
            let old = match position(&fields, &field) {
                None => 0,
                Some(i) => parse_integer(&fields[i].1).ok_or_else(|| rejected("ERR hash value is not an integer"))?,
            };
            let new = old.checked_add(delta).ok_or_else(|| rejected("ERR increment or decrement would overflow"))?;
            set_field(&mut fields, &field, new.to_string().into_bytes());
            store(view, &key, fields, expires_at_ms);
            view.note(vec![b"HINCRBY".to_vec(), key.to_vec(), field.to_vec(), delta.to_string().into_bytes()]);
            Ok(Frame::Integer(new))
        }
        Command::HIncrByFloat { key, field, delta } => {
            let (mut fields, expires_at_ms) = hash_or_empty(view, &key, now)?;
            let old = match position(&fields, &field) {
                None => 0.0,
                Some(i) => parse_float(&fields[i].1).ok_or_else(|| rejected("ERR hash value is not a float"))?,
            };
            let new = old + delta;
            if !new.is_finite() {
                return Err(rejected("ERR increment would produce NaN or Infinity"));
            }
            let text = format_float(new);
            set_field(&mut fields, &field, text.clone().into_bytes());
            store(view, &key, fields, expires_at_ms);
            view.note(vec![b"HINCRBYFLOAT".to_vec(), key.to_vec(), field.to_vec(), format_float(delta).into_bytes()]);
            Ok(Frame::bulk(text))
        }
        Command::HScan { key, options } => {
            let fields = hash_or_empty(view, &key, now)?.0;
            let mut items = Vec::new();
            for (field, value) in fields {
                if options.pattern.as_deref().is_none_or(|pattern| glob::matches(pattern, &field)) {
                    items.push(Frame::bulk(field));
                    items.push(Frame::bulk(value));
                }
            }
            Ok(Frame::array(vec![Frame::bulk("0"), Frame::array(items)]))
        }
        other => Err(rejected(format!("ERR internal: '{}' is not a hash command", other.name()))),
    }
}

/// The fields and expiry of the live hash at `key` (none for a missing key); `WRONGTYPE` for a
/// string.
fn hash_or_empty(view: &impl Writer, key: &[u8], now: u64) -> Result<(Fields, Option<u64>), CommitError> {
    match lookup(view, key, now)? {
        None => Ok((Vec::new(), None)),
        Some(StoredValue { expires_at_ms, data: Data::Hash(fields) }) => Ok((fields, expires_at_ms)),
        Some(_) => Err(rejected(WRONGTYPE)),
    }
}

fn position(fields: &Fields, field: &[u8]) -> Option<usize> {
    fields.iter().position(|(name, _)| name.as_slice() == field)
}

/// Sets `field`; whether it is new.
fn set_field(fields: &mut Fields, field: &Bytes, value: Vec<u8>) -> bool {
    match position(fields, field) {
        Some(i) => {
            fields[i].1 = value;
            false
        }
        None => {
            fields.push((field.to_vec(), value));
            true
        }
    }
}

/// Writes the hash back; an empty hash is no key at all.
fn store(view: &mut impl Writer, key: &[u8], fields: Fields, expires_at_ms: Option<u64>) {
    if fields.is_empty() {
        view.delete(key.to_vec());
    } else {
        view.put(key.to_vec(), StoredValue { expires_at_ms, data: Data::Hash(fields) }.encode());
    }
}

/// `HMGET`: one value or null per field asked. With a `budget`, it stops as soon as the reply
/// would pass it (a field named a million times is a million copies of its value).
pub(super) fn hmget(
    view: &impl Writer,
    key: &[u8],
    wanted: &[Bytes],
    now: u64,
    mut budget: Option<crate::server::memory::ReplyBudget>,
) -> Result<Frame, CommitError> {
    let fields = hash_or_empty(view, key, now)?.0;
    let mut values = Vec::with_capacity(wanted.len());
    for field in wanted {
        let value = position(&fields, field).map_or_else(Frame::null, |i| Frame::bulk(fields[i].1.clone()));
        if let Err(refusal) = super::charge(&mut budget, crate::resp::encoded_len(&value) + 8) {
            return Ok(refusal);
        }
        values.push(value);
    }
    Ok(Frame::array(values))
}
