//! String commands: `GET`, `SET` and its relatives, `GETDEL`, `GETEX`, `APPEND`, `STRLEN`,
//! the increments, `MGET`, `MSET`, `MSETNX`.

use bytes::Bytes;

use super::{format_float, lookup, rejected, string_of, Writer};
use crate::kv::pipeline::CommitError;
use crate::resp::command::{Command, Condition, GetExpiry, SetExpiry, SetReply};
use crate::resp::frame::parse_integer;
use crate::resp::Frame;
use crate::storage::value::{Data, StoredValue};

pub(super) fn execute(view: &mut impl Writer, command: Command, now: u64) -> Result<Frame, CommitError> {
    match command {
        Command::Get { key } => Ok(match lookup(view, &key, now)? {
            None => Frame::null(),
            Some(value) => Frame::bulk(string_of(value)?.0),
        }),
        Command::Set { key, value, expiry, condition, reply } => set(view, key, value, expiry, condition, reply, now),
        Command::GetDel { key } => {
            let Some(value) = lookup(view, &key, now)? else { return Ok(Frame::null()) };
            let (data, _) = string_of(value)?;
            view.delete(key.to_vec());
            Ok(Frame::bulk(data))
        }
        Command::GetEx { key, expiry } => get_ex(view, key, expiry, now),
        Command::Append { key, value } => {
            let (mut data, expires_at_ms) = match lookup(view, &key, now)? {
                None => (Vec::new(), None),
                Some(existing) => string_of(existing)?,
            };
            data.extend_from_slice(&value);
            let len = data.len() as i64;
            view.put(key.to_vec(), StoredValue::string(data, expires_at_ms).encode());
            Ok(Frame::Integer(len))
        }
        Command::StrLen { key } => Ok(Frame::Integer(match lookup(view, &key, now)? {
            None => 0,
            Some(value) => string_of(value)?.0.len() as i64,
        })),
        Command::IncrBy { key, delta } => {
            let (old, expires_at_ms) = match lookup(view, &key, now)? {
                None => (0, None),
                Some(value) => {
                    let (data, expires_at_ms) = string_of(value)?;
                    let old =
                        parse_integer(&data).ok_or_else(|| rejected("ERR value is not an integer or out of range"))?;
                    (old, expires_at_ms)
                }
            };
            let new = old.checked_add(delta).ok_or_else(|| rejected("ERR increment or decrement would overflow"))?;
            view.put(key.to_vec(), StoredValue::string(new.to_string().into_bytes(), expires_at_ms).encode());
            view.note(vec![b"INCRBY".to_vec(), key.to_vec(), delta.to_string().into_bytes()]);
            Ok(Frame::Integer(new))
        }
        Command::IncrByFloat { key, delta } => {
            let (old, expires_at_ms) = match lookup(view, &key, now)? {
                None => (0.0, None),
                Some(value) => {
                    let (data, expires_at_ms) = string_of(value)?;
                    let old = crate::resp::command::parse_float(&data)
                        .ok_or_else(|| rejected("ERR value is not a valid float"))?;
                    (old, expires_at_ms)
                }
            };
            let new = old + delta;
            if !new.is_finite() {
                return Err(rejected("ERR increment would produce NaN or Infinity"));
            }
            let text = format_float(new);
            view.put(key.to_vec(), StoredValue::string(text.clone().into_bytes(), expires_at_ms).encode());
            view.note(vec![b"INCRBYFLOAT".to_vec(), key.to_vec(), format_float(delta).into_bytes()]);
            Ok(Frame::bulk(text))
        }
        Command::MGet { keys } => mget(view, &keys, now, None),
        Command::MSet { pairs, only_if_none_exist } => {
            if only_if_none_exist {
                for (key, _) in &pairs {
                    if lookup(view, key, now)?.is_some() {
                        return Ok(Frame::Integer(0));
                    }
                }
            }
            for (key, value) in pairs {
                view.put(key.to_vec(), StoredValue::string(value.to_vec(), None).encode());
            }
            Ok(if only_if_none_exist { Frame::Integer(1) } else { Frame::ok() })
        }
        other => Err(rejected(format!("ERR internal: '{}' is not a string command", other.name()))),
    }
}

fn set(
    view: &mut impl Writer,
    key: Bytes,
    value: Bytes,
    expiry: SetExpiry,
    condition: Condition,
    reply: SetReply,
    now: u64,
) -> Result<Frame, CommitError> {
    let old = lookup(view, &key, now)?;
    let old_expiry = old.as_ref().and_then(|old| old.expires_at_ms);
    // `SET … GET` on another type fails whole, before anything is written.
    let old_data = match (reply, old) {
        (SetReply::Old, Some(old)) => Some(string_of(old)?.0),
        (_, old) => old.map(|_| Vec::new()),
    };
    let exists = old_data.is_some();
    let allowed = match condition {
        Condition::Always => true,
        Condition::IfAbsent => !exists,
        Condition::IfPresent => exists,
    };
    let answer = |done: bool, old_data: Option<Vec<u8>>| match reply {
        SetReply::Status if done => Frame::ok(),
        SetReply::Status => Frame::null(),
        SetReply::Flag => Frame::Integer(i64::from(done)),
        SetReply::Old => old_data.map_or_else(Frame::null, Frame::bulk),
    };
    if !allowed {
        return Ok(answer(false, old_data));
    }
    let expires_at_ms = match expiry {
        SetExpiry::Clear => None,
        SetExpiry::Keep => old_expiry,
        SetExpiry::Until(deadline) => {
            let at = deadline.resolve(now).ok_or_else(|| rejected("ERR invalid expire time in 'set' command"))?;
            if at <= now as i64 {
                // Already past (EXAT/PXAT in the past): set and expired at once, as Redis does.
                view.delete(key.to_vec());
                return Ok(answer(true, old_data));
            }
            Some(at as u64)
        }
    };
    view.put(key.to_vec(), StoredValue::string(value.to_vec(), expires_at_ms).encode());
    Ok(answer(true, old_data))
}

fn get_ex(view: &mut impl Writer, key: Bytes, expiry: GetExpiry, now: u64) -> Result<Frame, CommitError> {
    let Some(value) = lookup(view, &key, now)? else { return Ok(Frame::null()) };
    let (data, expires_at_ms) = string_of(value)?;
    match expiry {
        GetExpiry::Unchanged => {}
        GetExpiry::Persist => {
            if expires_at_ms.is_some() {
                view.put(key.to_vec(), StoredValue::string(data.clone(), None).encode());
            }
        }
        GetExpiry::Until(deadline) => {
            let at = deadline.resolve(now).ok_or_else(|| rejected("ERR invalid expire time in 'getex' command"))?;
            if at <= now as i64 {
                view.delete(key.to_vec());
            } else {
                view.put(key.to_vec(), StoredValue::string(data.clone(), Some(at as u64)).encode());
            }
        }
    }
    Ok(Frame::bulk(data))
}

/// `MGET`: one value or null per key. With a `budget`, it stops as soon as the reply would pass
/// it and answers the refusal instead, so a short request cannot build a reply of gigabytes.
pub(super) fn mget(
    view: &impl Writer,
    keys: &[Bytes],
    now: u64,
    mut budget: Option<crate::server::memory::ReplyBudget>,
) -> Result<Frame, CommitError> {
    let mut values = Vec::with_capacity(keys.len());
    for key in keys {
        // MGET answers null for a key of another type, not WRONGTYPE.
        let value = match lookup(view, key, now)?.map(|value| value.data) {
            Some(Data::String(data)) => Frame::bulk(data),
            _ => Frame::null(),
        };
        // The value and its `$n` line; the array's own header is a few bytes.
        if let Err(refusal) = super::charge(&mut budget, crate::resp::encoded_len(&value) + 8) {
            return Ok(refusal);
        }
        values.push(value);
    }
    Ok(Frame::array(values))
}
